//! The plan never lies: over random pipelines (chains and diamonds of Pass
//! and Command steps, some cached, reading parameters and upstream
//! outputs), random histories (runs with other parameters, edits of a
//! step), and random requests (a plain start, "changed", a hand selection),
//! the verdict the plan gives each step is what the started execution then
//! does with it. The seed is printed; replay one with
//! `STEPWISE_PLAN_SEED=<seed>`.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{definition_with, TestApp};

/// A small deterministic generator (xorshift64*), so a seed replays a case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One step of a generated pipeline.
#[derive(Clone, Debug)]
struct Gen {
    command: bool,
    cached: bool,
    deps: Vec<usize>,
    reads_parameter: bool,
    /// A literal that an edit changes.
    salt: u64,
}

fn step_json(i: usize, step: &Gen) -> Value {
    let name = format!("S{i}");
    let mut value = json!(step.salt);
    if step.reads_parameter {
        value = json!({"Std:Join": {"On": "-", "Values": [step.salt, {"Get": "Parameters.P"}]}});
    }
    let upstream: Vec<Value> = step
        .deps
        .iter()
        .map(|d| json!({"Get": format!("Steps.S{d}.Outputs.v")}))
        .collect();
    let mut s = if step.command {
        let mut env = serde_json::Map::new();
        env.insert("V".into(), value);
        for (k, u) in upstream.into_iter().enumerate() {
            env.insert(format!("U{k}"), u);
        }
        json!({"Name": name, "Type": "Command", "Arguments": {
            "Shell": "echo \"{\\\"v\\\": \\\"$V\\\"}\" > $STEPWISE_OUTPUTS",
            "Env": env}})
    } else {
        json!({"Name": name, "Type": "Pass", "Arguments": {"v": value, "u": upstream}})
    };
    let deps: Vec<String> = step.deps.iter().map(|d| format!("S{d}")).collect();
    if !deps.is_empty() {
        s["DependsOn"] = json!(deps);
    }
    if step.cached {
        s["CacheConfig"] = json!({"Enabled": true, "ExpireAfter": "P1D"});
    }
    s
}

/// A Condition after the generated steps, on the parameter or on the last
/// step's output: `GI` runs when it is "a", `GE` and `GE2` (below it)
/// otherwise.
fn condition(after: usize, salt: u64, on_output: bool) -> Value {
    // On the parameter, the plan decides it; on a Command step's output it
    // cannot until that step has run.
    let left = if on_output {
        json!({"Std:Join": {"On": "", "Values": [{"Get": format!("Steps.S{after}.Outputs.v")}]}})
    } else {
        json!({"Get": "Parameters.P"})
    };
    json!({"Name": "G", "Type": "Condition", "DependsOn": [format!("S{after}")], "Arguments": {
        "Conditions": [{"Type": "Equals", "LeftValue": left, "RightValue": "a"}],
        "IfSteps": [{"Name": "GI", "Type": "Pass", "Arguments": {"v": salt},
                     "CacheConfig": {"Enabled": true, "ExpireAfter": "P1D"}}],
        "ElseSteps": [{"Name": "GE", "Type": "Pass", "Arguments": {"v": {"Get": "Parameters.P"}}},
                      {"Name": "GE2", "Type": "Pass", "DependsOn": ["GE"], "Arguments": {"u": {"Get": "Steps.GE.Outputs.v"}},
                       "CacheConfig": {"Enabled": true, "ExpireAfter": "P1D"}}]}})
}

fn definition(steps: &[Gen], with_condition: bool) -> Value {
    let mut all: Vec<Value> = steps.iter().enumerate().map(|(i, s)| step_json(i, s)).collect();
    if with_condition {
        all.push(condition(steps.len() - 1, steps[0].salt, steps[0].salt % 2 == 1));
    }
    definition_with(
        json!([{"Name": "P", "Type": "String", "DefaultValue": "a"}]),
        Value::Array(all),
    )
}

fn generate(rng: &mut Rng) -> Vec<Gen> {
    let n = 2 + rng.below(5) as usize;
    (0..n)
        .map(|i| Gen {
            command: rng.chance(35),
            cached: rng.chance(60),
            deps: (0..i).filter(|_| rng.chance(45)).collect(),
            reads_parameter: rng.chance(40),
            salt: rng.below(3),
        })
        .collect()
}

fn parameter(rng: &mut Rng) -> Value {
    let value = ["a", "b"][rng.below(2) as usize];
    json!({ "P": value })
}

/// Checks the plan's verdict of every step against what the execution did.
fn check(plan: &Value, steps: &[Value], case: &str) {
    for entry in plan["steps"].as_array().unwrap() {
        let name = entry["step_name"].as_str().unwrap();
        let step = steps
            .iter()
            .find(|s| s["step_name"] == name)
            .unwrap_or_else(|| panic!("{case}: {name} not in the execution"));
        let reused = !step["reused_from"].is_null();
        let cutoff = step["reused_from"]["reason"] == "inputs unchanged after upstream re-ran";
        let hit = step["cache"]["status"] == "hit";
        let status = step["status"].as_str().unwrap();
        let ok = match entry["verdict"].as_str().unwrap() {
            "Reuse" => reused && !cutoff,
            "CacheHit" => hit && status == "Succeeded",
            "Skip" => status == "Skipped",
            "Run" => status == "Succeeded" && !hit && !reused,
            "RunUnlessUnchanged" => status == "Succeeded" && (cutoff || !reused),
            "RunIfBranchTaken" => (status == "Succeeded" && (cutoff || !reused)) || status == "Skipped",
            other => panic!("{case}: unknown verdict {other}"),
        };
        assert!(
            ok,
            "{case}: step {name} was planned {entry} but the execution did {step}"
        );
    }
}

async fn run_to_end(app: &TestApp, body: &Value) -> String {
    let id = app.start("p", body.clone()).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    id
}

#[sqlx::test]
async fn the_plan_equals_what_the_start_does(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let seed: u64 = std::env::var("STEPWISE_PLAN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("plan property seed: {seed} (replay with STEPWISE_PLAN_SEED={seed})");
    let mut rng = Rng(seed);
    let mut created = false;
    let mut compared = 0;
    for round in 0..14 {
        let mut steps = generate(&mut rng);
        let gate = rng.chance(50);
        let body = json!({"definition": definition(&steps, gate)});
        if created {
            app.put("/v1/pipelines/p", &body).await.expect(200);
        } else {
            app.post(
                "/v1/pipelines",
                &json!({"name": "p", "definition": definition(&steps, gate)}),
            )
            .await
            .expect(201);
            created = true;
        }
        // A history: one or two runs with random parameters.
        for _ in 0..1 + rng.below(2) {
            run_to_end(&app, &json!({"parameters": parameter(&mut rng)})).await;
        }
        // Maybe an edit of one step.
        if rng.chance(50) {
            let i = rng.below(steps.len() as u64) as usize;
            steps[i].salt += 10;
            app.put("/v1/pipelines/p", &json!({"definition": definition(&steps, gate)}))
                .await
                .expect(200);
        }
        let mut request = json!({"parameters": parameter(&mut rng)});
        match rng.below(3) {
            0 => {}
            1 => request["selective_execution"] = json!({"selected_steps": "changed"}),
            _ => {
                let i = rng.below(steps.len() as u64);
                request["selective_execution"] = json!({"selected_steps": [format!("S{i}")]});
            }
        }
        if rng.chance(30) {
            request["cache_mode"] = json!("use");
        }
        let case = format!("seed {seed} round {round}: {} with {request}", definition(&steps, gate));
        let plan = app.post("/v1/pipelines/p/executions/plan", &request).await;
        let plan = plan.expect(200).clone();
        if !plan["errors"].as_array().unwrap().is_empty() {
            let start = app.post("/v1/pipelines/p/executions", &request).await;
            assert_eq!(start.status, 400, "{case}: the plan had errors {plan}");
            continue;
        }
        let id = run_to_end(&app, &request).await;
        check(&plan, &app.steps(&id).await, &case);
        compared += 1;
    }
    assert!(
        compared >= 7,
        "seed {seed}: only {compared} of 14 rounds started; the generator is too strict"
    );
}
