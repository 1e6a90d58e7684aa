//! The random pipelines: a seeded generator and the DAG of Command, Pass,
//! Callback, Condition, ForEach and Fail steps a round runs, as a
//! definition.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
};

use serde_json::{json, Value};

use crate::BACKGROUND_SLEEP;

// ---------------------------------------------------------------------------
// Seeded randomness (SplitMix64: small, and the only source of choices).

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn range(&mut self, low: usize, high_inclusive: usize) -> usize {
        low + self.below(high_inclusive - low + 1)
    }

    /// Index chosen by weight.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.next() % total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        unreachable!()
    }
}

// ---------------------------------------------------------------------------
// The DAG a round runs.

#[derive(Debug, Clone)]
pub enum Kind {
    Command {
        sleep_ms: u64,
        /// Exits non-zero on attempt 1.
        fail_first: bool,
        /// A `Command.FAILED` retry policy (2 attempts).
        retry_policy: bool,
        /// Leaves a background `sleep` behind (it must not outlive the step).
        background: bool,
        /// Written as `Outputs.n`; Conditions compare it.
        n: i64,
    },
    Pass,
    Callback {
        /// Answered with failure on attempt 1.
        fail_first: bool,
    },
    Condition {
        /// The Command step whose `Outputs.n` is compared.
        left: String,
        right: i64,
        if_steps: Vec<Spec>,
        else_steps: Vec<Spec>,
    },
    Fail,
    /// A ForEach over `items` literal items (0, 1, ...) whose body is
    /// Command steps (each depending on the one before): iteration `i`'s
    /// steps are `Name[i].Body`.
    ForEach {
        items: usize,
        max_concurrency: usize,
        body: Vec<Spec>,
    },
}

/// What a round's faults need its pipeline to have.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub callback: bool,
    pub for_each: bool,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub kind: Kind,
    pub depends_on: Vec<String>,
    /// Data dependencies: steps whose `v` output this step reads.
    pub inputs: Vec<String>,
}

/// The property path holding a step's `v` value.
pub fn v_path(kind: &Kind) -> Option<&'static str> {
    match kind {
        Kind::Command { .. } | Kind::Pass => Some("Outputs"),
        Kind::Callback { .. } => Some("OutputParameters"),
        _ => None,
    }
}

pub fn generate_dag(rng: &mut Rng, needs: Needs) -> Vec<Spec> {
    let mut specs = generate_steps(rng);
    let has = |specs: &[Spec], f: fn(&Kind) -> bool| specs.iter().any(|s| f(&s.kind));
    if needs.callback && !has(&specs, |k| matches!(k, Kind::Callback { .. })) {
        specs.push(Spec {
            name: format!("S{}", specs.len()),
            kind: Kind::Callback {
                fail_first: rng.chance(25),
            },
            depends_on: vec![],
            inputs: vec![],
        });
    }
    if needs.for_each {
        // The ForEach's faults need it to expand and end: it waits for S0
        // (so that the harness is in place before it expands), and nothing
        // else fails the execution first.
        let s0 = "S0".to_string();
        match specs.iter_mut().find(|s| matches!(s.kind, Kind::ForEach { .. })) {
            Some(f) => {
                if !f.depends_on.contains(&s0) && !f.inputs.contains(&s0) {
                    f.depends_on.push(s0);
                }
            }
            None => specs.push(Spec {
                name: format!("S{}", specs.len()),
                kind: for_each_kind(rng, &format!("S{}", specs.len())),
                depends_on: vec![s0],
                inputs: vec![],
            }),
        }
        for spec in specs.iter_mut() {
            never_fails(spec);
        }
    }
    specs
}

/// `spec` (and the steps of its branches) made to succeed: no Command
/// or Callback fails its first attempt, a Fail step becomes a Pass.
fn never_fails(spec: &mut Spec) {
    match &mut spec.kind {
        Kind::Command {
            fail_first,
            retry_policy,
            ..
        } => {
            *fail_first = false;
            *retry_policy = false;
        }
        Kind::Callback { fail_first } => *fail_first = false,
        Kind::Fail => spec.kind = Kind::Pass,
        Kind::Condition {
            if_steps, else_steps, ..
        } => {
            for s in if_steps.iter_mut().chain(else_steps.iter_mut()) {
                never_fails(s);
            }
        }
        Kind::ForEach { body, .. } => {
            for s in body.iter_mut() {
                never_fails(s);
            }
        }
        Kind::Pass => {}
    }
}

/// A ForEach `name` of 2 to 4 items, 1 to all of them at once, whose body
/// is one or two Command steps (`<name>a`, `<name>b`: step names are unique
/// across the definition, body steps included).
pub fn for_each_kind(rng: &mut Rng, name: &str) -> Kind {
    let items = rng.range(2, 4);
    let body = (0..rng.range(1, 2))
        .map(|k| Spec {
            name: format!("{name}{}", ["a", "b"][k]),
            kind: command_kind(rng),
            depends_on: if k == 0 { vec![] } else { vec![format!("{name}a")] },
            inputs: vec![],
        })
        .collect();
    Kind::ForEach {
        items,
        max_concurrency: rng.range(1, items),
        body,
    }
}

fn generate_steps(rng: &mut Rng) -> Vec<Spec> {
    let count = rng.range(3, 7);
    let with_fail_step = rng.chance(12);
    let mut specs: Vec<Spec> = Vec::new();
    for i in 0..count {
        let name = format!("S{i}");
        let commands: Vec<String> = specs
            .iter()
            .filter(|s| matches!(s.kind, Kind::Command { .. }))
            .map(|s| s.name.clone())
            .collect();
        // Command, Pass, Callback, Condition, Fail, ForEach.
        let weights = [
            50,
            12,
            16,
            if commands.is_empty() { 0 } else { 14 },
            if with_fail_step && i > 0 { 8 } else { 0 },
            10,
        ];
        let choice = if i == 0 { 0 } else { rng.weighted(&weights) };
        // Up to two dependencies among earlier top-level steps.
        let mut depends_on = Vec::new();
        let mut inputs = Vec::new();
        if !specs.is_empty() {
            for _ in 0..rng.below(3) {
                let dep = &specs[rng.below(specs.len())];
                if depends_on.contains(&dep.name) || inputs.contains(&dep.name) {
                    continue;
                }
                if v_path(&dep.kind).is_some() && choice <= 1 && rng.chance(70) {
                    inputs.push(dep.name.clone());
                } else {
                    depends_on.push(dep.name.clone());
                }
            }
        }
        let kind = match choice {
            0 => command_kind(rng),
            1 => {
                // A Pass step carries at most one value through.
                inputs.truncate(1);
                Kind::Pass
            }
            2 => Kind::Callback {
                fail_first: rng.chance(25),
            },
            3 => {
                let left = commands[rng.below(commands.len())].clone();
                let branch = |rng: &mut Rng, tag: &str| -> Vec<Spec> {
                    (0..rng.range(1, 2))
                        .map(|k| {
                            let kind = match rng.weighted(&[70, 20, 10]) {
                                0 => command_kind(rng),
                                1 => Kind::Pass,
                                _ => Kind::Fail,
                            };
                            Spec {
                                name: format!("{name}{tag}{k}"),
                                kind,
                                depends_on: vec![],
                                inputs: vec![],
                            }
                        })
                        .collect()
                };
                let if_steps = branch(rng, "i");
                let else_steps = branch(rng, "e");
                Kind::Condition {
                    left,
                    right: rng.below(2) as i64,
                    if_steps,
                    else_steps,
                }
            }
            4 => Kind::Fail,
            _ => for_each_kind(rng, &name),
        };
        specs.push(Spec {
            name,
            kind,
            depends_on,
            inputs,
        });
    }
    specs
}

pub fn command_kind(rng: &mut Rng) -> Kind {
    let fail_first = rng.chance(20);
    Kind::Command {
        sleep_ms: [100, 300, 600, 1200, 2500][rng.below(5)],
        fail_first,
        retry_policy: fail_first && rng.chance(50),
        background: rng.chance(20),
        n: rng.below(2) as i64,
    }
}

/// The step's definition. Command steps append to `<dir>/<step>.log`:
/// `start E S A T PID INPUTS`, `bg E S A PID`, `end E S A T ok|fail`
/// (T in nanoseconds since the epoch).
pub fn step_json(spec: &Spec, dir: &Path, callbacks: &HashSet<String>) -> Value {
    // The expression reading dependency `d`'s `v` value.
    let get_v = |d: &String| {
        let path = if callbacks.contains(d) {
            "OutputParameters"
        } else {
            "Outputs"
        };
        json!({"Get": format!("Steps.{d}.{path}.v")})
    };
    let mut step = match &spec.kind {
        Kind::Command {
            sleep_ms,
            fail_first,
            retry_policy,
            background,
            n,
        } => {
            let inputs = if spec.inputs.is_empty() {
                "-".to_string()
            } else {
                spec.inputs
                    .iter()
                    .map(|d| format!("{d}=$IN_{d}"))
                    .collect::<Vec<_>>()
                    .join(";")
            };
            let id = "$STEPWISE_EXECUTION_ID $STEPWISE_STEP_NAME $STEPWISE_ATTEMPT";
            let mut script = format!(
                "F={dir}/$STEPWISE_STEP_NAME.log\necho \"start {id} $(date +%s%N) $$ {inputs}\" >> \"$F\"\n",
                dir = dir.display()
            );
            if *background {
                script.push_str(&format!(
                    "sleep {BACKGROUND_SLEEP} </dev/null >/dev/null 2>&1 &\necho \"bg {id} $!\" >> \"$F\"\n"
                ));
            }
            script.push_str(&format!("sleep {}\n", *sleep_ms as f64 / 1000.0));
            if *fail_first {
                script.push_str(&format!(
                    "if [ \"$STEPWISE_ATTEMPT\" = 1 ]; then echo \"end {id} $(date +%s%N) fail\" >> \"$F\"; exit 3; fi\n"
                ));
            }
            script.push_str(&format!(
                "printf '{{\"v\": \"%s-%s-%s\", \"n\": {n}}}' \"$STEPWISE_STEP_NAME\" \"$STEPWISE_ATTEMPT\" \"$$\" > \"$STEPWISE_OUTPUTS\"\n\
                 echo \"end {id} $(date +%s%N) ok\" >> \"$F\"\n"
            ));
            let env: serde_json::Map<String, Value> =
                spec.inputs.iter().map(|d| (format!("IN_{d}"), get_v(d))).collect();
            let mut step = json!({"Name": spec.name, "Type": "Command", "Arguments": {"Shell": script, "Env": env}});
            if *retry_policy {
                step["RetryPolicies"] =
                    json!([{"ExceptionType": ["Command.FAILED"], "IntervalSeconds": 1, "MaxAttempts": 2}]);
            }
            step
        }
        Kind::Pass => {
            let v = match spec.inputs.first() {
                Some(d) => get_v(d),
                None => json!(format!("pass-{}", spec.name)),
            };
            json!({"Name": spec.name, "Type": "Pass", "Arguments": {"v": v}})
        }
        Kind::Callback { .. } => json!({"Name": spec.name, "Type": "Callback", "Arguments": {
            "OutputParameters": [{"OutputName": "v", "OutputType": "String"}]}}),
        Kind::Condition {
            left,
            right,
            if_steps,
            else_steps,
        } => json!({"Name": spec.name, "Type": "Condition", "Arguments": {
            "Conditions": [{"Type": "Equals", "LeftValue": {"Get": format!("Steps.{left}.Outputs.n")}, "RightValue": right}],
            "IfSteps": if_steps.iter().map(|s| step_json(s, dir, callbacks)).collect::<Vec<_>>(),
            "ElseSteps": else_steps.iter().map(|s| step_json(s, dir, callbacks)).collect::<Vec<_>>()}}),
        Kind::Fail => json!({"Name": spec.name, "Type": "Fail", "Arguments": {
            "ErrorMessage": format!("the Fail step {} ran", spec.name)}}),
        Kind::ForEach {
            items,
            max_concurrency,
            body,
        } => json!({"Name": spec.name, "Type": "ForEach", "Arguments": {
            "IterableItems": (0..*items).collect::<Vec<_>>(),
            "MaxConcurrency": max_concurrency,
            "ForEachBody": body.iter().map(|s| step_json(s, dir, callbacks)).collect::<Vec<_>>()}}),
    };
    if !spec.depends_on.is_empty() {
        step["DependsOn"] = json!(spec.depends_on);
    }
    step
}

pub fn definition(specs: &[Spec], dir: &Path) -> Value {
    let callbacks: HashSet<String> = specs
        .iter()
        .filter(|s| matches!(s.kind, Kind::Callback { .. }))
        .map(|s| s.name.clone())
        .collect();
    json!({"Version": "2020-12-01", "Steps": specs.iter().map(|s| step_json(s, dir, &callbacks)).collect::<Vec<_>>()})
}

/// One line per round log: `S1:Command(300ms,ff,retry,bg)<-S0` and so on.
pub fn describe(specs: &[Spec]) -> String {
    pub fn one(s: &Spec) -> String {
        let kind = match &s.kind {
            Kind::Command {
                sleep_ms,
                fail_first,
                retry_policy,
                background,
                n,
            } => {
                let mut flags = vec![format!("{sleep_ms}ms"), format!("n={n}")];
                if *fail_first {
                    flags.push("fail-first".into());
                }
                if *retry_policy {
                    flags.push("retry".into());
                }
                if *background {
                    flags.push("bg".into());
                }
                format!("Command({})", flags.join(","))
            }
            Kind::Pass => "Pass".into(),
            Kind::Callback { fail_first } => format!("Callback({})", if *fail_first { "fail-first" } else { "" }),
            Kind::Condition {
                left,
                right,
                if_steps,
                else_steps,
            } => format!(
                "Condition({left}.n=={right} ? [{}] : [{}])",
                if_steps.iter().map(one).collect::<Vec<_>>().join(" "),
                else_steps.iter().map(one).collect::<Vec<_>>().join(" ")
            ),
            Kind::Fail => "Fail".into(),
            Kind::ForEach {
                items,
                max_concurrency,
                body,
            } => format!(
                "ForEach({items} items, {max_concurrency} at once, [{}])",
                body.iter().map(one).collect::<Vec<_>>().join(" ")
            ),
        };
        let mut deps: Vec<String> = s.inputs.iter().map(|d| format!("{d}.v")).collect();
        deps.extend(s.depends_on.iter().cloned());
        if deps.is_empty() {
            format!("{}:{kind}", s.name)
        } else {
            format!("{}:{kind}<-{}", s.name, deps.join(","))
        }
    }
    specs.iter().map(one).collect::<Vec<_>>().join(" ")
}

/// Every step, branch steps and ForEach iteration steps (`F[i].Body`)
/// included, by name.
pub fn all_specs(specs: &[Spec]) -> BTreeMap<String, Spec> {
    let mut all = BTreeMap::new();
    for spec in specs {
        all.insert(spec.name.clone(), spec.clone());
        match &spec.kind {
            Kind::Condition {
                if_steps, else_steps, ..
            } => {
                for s in if_steps.iter().chain(else_steps) {
                    all.insert(s.name.clone(), s.clone());
                }
            }
            Kind::ForEach { items, body, .. } => {
                for i in 0..*items {
                    for s in body {
                        let name = format!("{}[{i}].{}", spec.name, s.name);
                        all.insert(name.clone(), Spec { name, ..s.clone() });
                    }
                }
            }
            _ => {}
        }
    }
    all
}

/// The round's first ForEach step, if it has one.
pub fn first_for_each(specs: &[Spec]) -> Option<&Spec> {
    specs.iter().find(|s| matches!(s.kind, Kind::ForEach { .. }))
}
