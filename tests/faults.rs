//! Fault injection: random DAGs of Command, Pass, Condition, Fail and
//! Callback steps run by real `stepwise worker` processes (and one
//! `stepwise serve` for the API) while the test pauses workers past their
//! lease (SIGSTOP/SIGCONT), kills them (SIGKILL) and starts new ones,
//! terminates the service's database backends, and races stop, retry and
//! callback reports. Afterwards every invariant of issue 9 is checked from
//! the database and from side-effect files the Command steps write:
//!
//! - **Order**: a step starts only after each dependency committed
//!   Succeeded, and reads that commit's outputs; a step that committed
//!   Succeeded never runs again.
//! - **Termination**: every execution ends (Succeeded, Failed or Stopped)
//!   within a bound once the faults stop.
//! - **History**: attempt numbers of a step are 1..n, each used once, each
//!   recorded with an end; at most one Succeeded attempt, the last.
//! - **Fenced**: an API action that lost a race gets 409, never a 200 that
//!   did not take effect, never a 5xx.
//! - **No escaping processes**: no process a step started outlives the run.
//!
//! Randomness comes only from the seed (`STEPWISE_FAULT_SEED`, printed at
//! start; round `r` uses seed + r, so `STEPWISE_FAULT_SEED=<round seed>
//! STEPWISE_FAULT_ROUNDS=1` replays one round). Faults are set up by
//! conditions observed in the database and side-effect files (a step is
//! running on worker W, its process has ended, its attempt was rescued), and
//! every wait polls a condition under a deadline. Which step a fault hits
//! still depends on timing; the fault plan does not.
//!
//! Knobs: `STEPWISE_FAULT_ROUNDS` (default 6), `STEPWISE_FAULT_BUDGET_SECONDS`
//! (no new round starts after it, default 150), `STEPWISE_FAULT_KEEP=1`
//! (keep the side-effect files and process logs), `STEPWISE_TEST_WORKER_LOGS=1`
//! (echo the processes' logs).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::watch,
};
use uuid::Uuid;

/// The harness's own connections carry this name and are spared when the
/// service's backends are terminated.
const HARNESS_APP: &str = "stepwise-faults";
const LEASE_SECONDS: &str = "2";
const WORKERS: usize = 2;
/// How long a fault waits for its trigger before it is skipped.
const TRIGGER_LIMIT: Duration = Duration::from_secs(8);
/// How long executions may take to end once the faults stopped.
const TERMINATION_LIMIT: Duration = Duration::from_secs(40);
/// A whole round, faults, termination and checks included.
const ROUND_LIMIT: Duration = Duration::from_secs(150);
/// The argument of the background `sleep` some steps leave behind: a
/// process with this command line that is still alive escaped its step.
const BACKGROUND_SLEEP: &str = "2999";

// ---------------------------------------------------------------------------
// Seeded randomness (SplitMix64: small, and the only source of choices).

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn range(&mut self, low: usize, high_inclusive: usize) -> usize {
        low + self.below(high_inclusive - low + 1)
    }

    /// Index chosen by weight.
    fn weighted(&mut self, weights: &[u64]) -> usize {
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
enum Kind {
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
}

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    kind: Kind,
    depends_on: Vec<String>,
    /// Data dependencies: steps whose `v` output this step reads.
    inputs: Vec<String>,
}

/// The property path holding a step's `v` value.
fn v_path(kind: &Kind) -> Option<&'static str> {
    match kind {
        Kind::Command { .. } | Kind::Pass => Some("Outputs"),
        Kind::Callback { .. } => Some("OutputParameters"),
        _ => None,
    }
}

fn generate_dag(rng: &mut Rng) -> Vec<Spec> {
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
        // Command, Pass, Callback, Condition, Fail.
        let weights = [
            50,
            12,
            16,
            if commands.is_empty() { 0 } else { 14 },
            if with_fail_step && i > 0 { 8 } else { 0 },
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
            _ => Kind::Fail,
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

fn command_kind(rng: &mut Rng) -> Kind {
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
fn step_json(spec: &Spec, dir: &Path, callbacks: &HashSet<String>) -> Value {
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
    };
    if !spec.depends_on.is_empty() {
        step["DependsOn"] = json!(spec.depends_on);
    }
    step
}

fn definition(specs: &[Spec], dir: &Path) -> Value {
    let callbacks: HashSet<String> = specs
        .iter()
        .filter(|s| matches!(s.kind, Kind::Callback { .. }))
        .map(|s| s.name.clone())
        .collect();
    json!({"Version": "2020-12-01", "Steps": specs.iter().map(|s| step_json(s, dir, &callbacks)).collect::<Vec<_>>()})
}

/// One line per round log: `S1:Command(300ms,ff,retry,bg)<-S0` and so on.
fn describe(specs: &[Spec]) -> String {
    fn one(s: &Spec) -> String {
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

/// Every step, branch steps included, by name.
fn all_specs(specs: &[Spec]) -> BTreeMap<String, Spec> {
    let mut all = BTreeMap::new();
    for spec in specs {
        all.insert(spec.name.clone(), spec.clone());
        if let Kind::Condition {
            if_steps, else_steps, ..
        } = &spec.kind
        {
            for s in if_steps.iter().chain(else_steps) {
                all.insert(s.name.clone(), s.clone());
            }
        }
    }
    all
}

// ---------------------------------------------------------------------------
// The fault plan.

#[derive(Debug, Clone, Copy)]
enum PauseHow {
    /// The step's process ends while its worker is paused; then its lease is
    /// expired in SQL and the worker resumed while the harness runs the
    /// rescuer: the late report races the rescue.
    ReportRacesRescue,
    /// The lease is expired in SQL and the rescue awaited before resuming:
    /// the late report is stale. With `others_paused`, every other worker is
    /// paused too until the resumed one has claimed the rescued step again.
    RescuedFirst { others_paused: bool },
    /// No SQL: the lease runs out by itself, then the worker resumes.
    NaturalExpiry,
}

#[derive(Debug, Clone, Copy)]
/// What a success report of a waiting callback is raced against.
enum CallbackRace {
    /// A failure report of the same token.
    Failure,
    /// A stop of its execution.
    Stop,
    /// Its time-out (deadline set in the past, the time-out handler run).
    Timeout,
    /// A second success report.
    Twice,
}

#[derive(Debug, Clone)]
enum Fault {
    Pause(PauseHow),
    Kill {
        after_process_end: bool,
        expire_lease: bool,
    },
    Terminate {
        times: usize,
    },
    /// Concurrent stops of the newest execution, with a callback report of
    /// one of its waiting callbacks when there is one.
    Stop {
        twice: bool,
    },
    Callback {
        step: String,
        race: CallbackRace,
    },
    /// SIGTERM to a worker running a (preferably long) step: it must exit 0
    /// within its grace periods and hand the step back under a new attempt.
    Shutdown,
}

fn generate_faults(rng: &mut Rng, specs: &[Spec]) -> Vec<Fault> {
    let callbacks: Vec<String> = specs
        .iter()
        .filter(|s| matches!(s.kind, Kind::Callback { .. }))
        .map(|s| s.name.clone())
        .collect();
    (0..rng.range(2, 4))
        .map(|_| {
            let weights = [30, 15, 20, 15, if callbacks.is_empty() { 0 } else { 20 }, 10];
            match rng.weighted(&weights) {
                0 => Fault::Pause(match rng.below(3) {
                    0 => PauseHow::ReportRacesRescue,
                    1 => PauseHow::RescuedFirst {
                        others_paused: rng.chance(50),
                    },
                    _ => PauseHow::NaturalExpiry,
                }),
                1 => Fault::Kill {
                    after_process_end: rng.chance(50),
                    expire_lease: rng.chance(50),
                },
                2 => Fault::Terminate { times: rng.range(1, 4) },
                3 => Fault::Stop { twice: rng.chance(50) },
                5 => Fault::Shutdown,
                _ => Fault::Callback {
                    step: callbacks[rng.below(callbacks.len())].clone(),
                    race: [
                        CallbackRace::Failure,
                        CallbackRace::Stop,
                        CallbackRace::Timeout,
                        CallbackRace::Twice,
                    ][rng.below(4)],
                },
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Processes.

struct Proc {
    name: String,
    child: Child,
    pid: i32,
    worker_id: Option<Uuid>,
    base_url: Option<String>,
    paused: bool,
}

impl Proc {
    async fn spawn(name: String, serve: bool, env: &Env) -> Proc {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stepwise"));
        // The service refuses STEPWISE_ variables it does not know, such as
        // this test's own knobs.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("STEPWISE_") {
                command.env_remove(key);
            }
        }
        if serve {
            command.args(["serve", "--listen", "127.0.0.1:0"]);
            command.env("STEPWISE_WORKER__CONCURRENCY", "0");
        } else {
            command.arg("worker");
            command.env("STEPWISE_WORKER__CONCURRENCY", "3");
        }
        command
            .env("STEPWISE_DATABASE_URL", &env.url)
            .env("STEPWISE_DATA_DIR", &env.data_dir)
            .env("STEPWISE_DATABASE__MAX_CONNECTIONS", "4")
            .env("STEPWISE_WORKER__LEASE_SECONDS", LEASE_SECONDS)
            // A paused process's open transaction is ended by the server after
            // this; `check_frozen` sees any that outlives it (3 s).
            .env("STEPWISE_DATABASE__IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", "1")
            .env("STEPWISE_WORKER__KILL_GRACE_SECONDS", "1")
            .env("STEPWISE_WORKER__SHUTDOWN_GRACE_SECONDS", "1")
            .env("STEPWISE_WORKER__POLL_INTERVAL_MS", "500")
            .env("RUST_LOG", "stepwise=info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the stepwise binary starts");
        let pid = child.id().expect("a running child") as i32;
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, mut ready_rx) = watch::channel((None::<Uuid>, None::<String>));
        let log_path = env.logs.join(format!("{name}.log"));
        let echo = std::env::var_os("STEPWISE_TEST_WORKER_LOGS").is_some();
        let tag = name.clone();
        tokio::spawn(async move {
            let mut log = std::fs::File::create(log_path).ok();
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("worker pool started") {
                    let id = line
                        .split("worker.id=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|id| Uuid::parse_str(id).ok());
                    ready_tx.send_modify(|r| r.0 = id);
                }
                if line.contains("stepwise API listening") {
                    let address = line
                        .split("address=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .map(|a| format!("http://{a}"));
                    ready_tx.send_modify(|r| r.1 = address);
                }
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                if echo {
                    eprintln!("[{tag}] {line}");
                }
            }
        });
        let ready = tokio::time::timeout(
            Duration::from_secs(60),
            ready_rx.wait_for(|r| if serve { r.1.is_some() } else { r.0.is_some() }),
        )
        .await
        .ok()
        .and_then(|r| r.ok().map(|r| r.clone()));
        let Some(ready) = ready else {
            let log = std::fs::read_to_string(env.logs.join(format!("{name}.log"))).unwrap_or_default();
            panic!("{name} did not start: {log}");
        };
        Proc {
            name,
            child,
            pid,
            worker_id: ready.0,
            base_url: ready.1,
            paused: false,
        }
    }

    fn signal(&mut self, signal: Signal) {
        // A process that is gone already is found by `exited` (reported).
        let _ = kill(Pid::from_raw(self.pid), signal);
        match signal {
            Signal::SIGSTOP => self.paused = true,
            Signal::SIGCONT => self.paused = false,
            _ => {}
        }
    }

    /// The exit status when the process ended (by itself: the harness
    /// removes the workers it kills).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

struct Env {
    url: String,
    data_dir: PathBuf,
    logs: PathBuf,
}

// ---------------------------------------------------------------------------
// The API, every answer recorded.

#[derive(Debug, Clone)]
struct Call {
    round: usize,
    what: String,
    status: u16,
    body: String,
    at: Instant,
}

struct Api {
    base: String,
    client: reqwest::Client,
    calls: Mutex<Vec<Call>>,
    round: std::sync::atomic::AtomicUsize,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request = self.client.request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let (status, text) = match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap_or_default())
            }
            // Recorded as status 0: the service did not answer at all.
            Err(e) => (0, format!("transport error: {e}")),
        };
        self.calls.lock().unwrap().push(Call {
            round: self.round.load(std::sync::atomic::Ordering::SeqCst),
            what: format!("{method} {path}"),
            status,
            body: text.chars().take(400).collect(),
            at: Instant::now(),
        });
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
}

// ---------------------------------------------------------------------------
// Side effects written by Command steps.

#[derive(Debug, Clone)]
struct Start {
    step: String,
    attempt: i32,
    at_ns: i128,
    pid: i32,
    inputs: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Effects {
    /// (execution, step) -> starts in file order.
    starts: HashMap<(Uuid, String), Vec<Start>>,
    /// (execution, step, attempt) -> (end time, ok).
    ends: HashMap<(Uuid, String, i32), (i128, bool)>,
    /// Background children: (execution, step, attempt, pid).
    background: Vec<(Uuid, String, i32, i32)>,
}

fn read_effects(dir: &Path) -> Effects {
    let mut effects = Effects::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return effects;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let parse = || -> Option<(Uuid, String, i32)> {
                Some((
                    Uuid::parse_str(f.get(1)?).ok()?,
                    f.get(2)?.to_string(),
                    f.get(3)?.parse().ok()?,
                ))
            };
            let Some((execution, step, attempt)) = parse() else {
                continue;
            };
            match f[0] {
                "start" if f.len() >= 7 => {
                    let inputs = if f[6] == "-" {
                        BTreeMap::new()
                    } else {
                        f[6].split(';')
                            .filter_map(|kv| kv.split_once('='))
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect()
                    };
                    effects
                        .starts
                        .entry((execution, step.clone()))
                        .or_default()
                        .push(Start {
                            step,
                            attempt,
                            at_ns: f[4].parse().unwrap_or(0),
                            pid: f[5].parse().unwrap_or(0),
                            inputs,
                        });
                }
                "bg" if f.len() >= 5 => effects
                    .background
                    .push((execution, step, attempt, f[4].parse().unwrap_or(0))),
                "end" if f.len() >= 6 => {
                    effects
                        .ends
                        .insert((execution, step, attempt), (f[4].parse().unwrap_or(0), f[5] == "ok"));
                }
                _ => {}
            }
        }
    }
    effects
}

/// Whether `pid` is alive (not a zombie) and its command line contains
/// `marker` (so a reused pid is not mistaken for ours).
fn alive_with(pid: i32, marker: &str) -> bool {
    if pid <= 0 || kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let state_ok = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X")
    });
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    state_ok && cmdline.contains(marker)
}

// ---------------------------------------------------------------------------
// The run.

struct Harness {
    env: Env,
    db: PgPool,
    api: Arc<Api>,
    serve: Proc,
    workers: Vec<Proc>,
    spawned: usize,
    /// Violations found, each prefixed with its round and seed.
    violations: Vec<String>,
    /// 503s seen right after backends were terminated: reported, not failed.
    notes: Vec<String>,
    terminated_at: Vec<Instant>,
    /// Every directory steps wrote to, for the final process sweep.
    effect_dirs: Vec<PathBuf>,
    /// Workers that were ever paused: their steps' processes run on while
    /// they are frozen, so "outlived its attempt" is not judged for them.
    ever_paused: HashSet<Uuid>,
}

/// A callback answer the harness sent: token, attempt, what, HTTP status.
#[derive(Debug, Clone)]
struct Answer {
    step_run: Uuid,
    attempt: i32,
    success: bool,
    status: u16,
    what: String,
}

/// State of one round shared with its callback answerer.
#[derive(Default)]
struct RoundShared {
    /// Callback step names the answerer leaves alone (a race is set up on them).
    /// Counted: one per race still to come on that step.
    reserved: HashMap<String, usize>,
    /// Tokens already answered by the answerer.
    answered: HashSet<Uuid>,
    answers: Vec<Answer>,
}

impl RoundShared {
    fn unreserve(&mut self, step: &str) {
        if let Some(count) = self.reserved.get_mut(step) {
            *count -= 1;
            if *count == 0 {
                self.reserved.remove(step);
            }
        }
    }
}

struct Round {
    index: usize,
    seed: u64,
    specs: Vec<Spec>,
    all: BTreeMap<String, Spec>,
    pipeline: String,
    dir: PathBuf,
    executions: Vec<Uuid>,
    /// Executions a stop answered 200 for, not retried since.
    expect_stopped: HashSet<Uuid>,
    retries_left: HashMap<Uuid, usize>,
    /// Executions whose retries race a stop.
    retry_with_stop: HashSet<Uuid>,
    shared: Arc<Mutex<RoundShared>>,
    log: Vec<String>,
}

impl Round {
    fn violation(&self, h: &mut Harness, what: String) {
        h.violations
            .push(format!("round {} (seed {}): {what}", self.index, self.seed));
    }
}

#[derive(sqlx::FromRow, Debug, Clone)]
struct StepRow {
    id: Uuid,
    execution_id: Uuid,
    step_name: String,
    step_type: String,
    status: String,
    attempt: i32,
    dependencies: Vec<String>,
    properties: Option<Value>,
    lease_owner: Option<Uuid>,
    callback_token: Option<Uuid>,
}

#[derive(sqlx::FromRow, Debug, Clone)]
struct AttemptRow {
    step_run_id: Uuid,
    attempt: i32,
    status: String,
    error_type: Option<String>,
    worker_id: Option<Uuid>,
    started_at_us: i64,
    ended_at_us: Option<i64>,
}

async fn step_rows(db: &PgPool, executions: &[Uuid]) -> Vec<StepRow> {
    sqlx::query_as(
        "select id, execution_id, step_name, step_type, status, attempt, dependencies, properties, lease_owner, \
         callback_token from step_runs where execution_id = any($1) order by execution_id, position, step_name",
    )
    .bind(executions)
    .fetch_all(db)
    .await
    .expect("step rows")
}

async fn attempt_rows(db: &PgPool, executions: &[Uuid]) -> Vec<AttemptRow> {
    sqlx::query_as(
        "select a.step_run_id, a.attempt, a.status, a.error_type, a.worker_id, \
           (extract(epoch from a.started_at) * 1000000)::int8 as started_at_us, \
           (extract(epoch from a.ended_at) * 1000000)::int8 as ended_at_us \
         from step_attempts a join step_runs s on s.id = a.step_run_id where s.execution_id = any($1) \
         order by a.step_run_id, a.attempt",
    )
    .bind(executions)
    .fetch_all(db)
    .await
    .expect("attempt rows")
}

async fn execution_statuses(db: &PgPool, executions: &[Uuid]) -> HashMap<Uuid, (String, bool)> {
    let rows: Vec<(Uuid, String, bool)> =
        sqlx::query_as("select id, status, failed_by_fail_step from executions where id = any($1)")
            .bind(executions)
            .fetch_all(db)
            .await
            .expect("execution rows");
    rows.into_iter().map(|(id, s, f)| (id, (s, f))).collect()
}

fn unfinished(status: &str) -> bool {
    matches!(status, "Pending" | "Starting" | "Executing" | "Stopping")
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "Succeeded" | "Failed" | "Stopped")
}

/// Polls `probe` until it yields a value or `limit` passes.
async fn poll<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

impl Harness {
    async fn spawn_worker(&mut self) {
        self.spawned += 1;
        let name = format!("worker{}", self.spawned);
        let worker = Proc::spawn(name, false, &self.env).await;
        self.workers.push(worker);
    }

    fn pause_worker(&mut self, index: usize) {
        if let Some(id) = self.workers[index].worker_id {
            self.ever_paused.insert(id);
        }
        self.workers[index].signal(Signal::SIGSTOP);
    }

    fn live_unpaused(&self) -> Vec<usize> {
        (0..self.workers.len()).filter(|i| !self.workers[*i].paused).collect()
    }

    /// Resumes paused workers and brings the pool back to `WORKERS`.
    /// Returns the processes that had exited by themselves.
    async fn heal(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        if let Some(status) = self.serve.exited() {
            exited.push(format!("the serve process exited by itself: {status}"));
        }
        self.workers.retain_mut(|w| match w.exited() {
            Some(status) => {
                exited.push(format!("{} ({:?}) exited by itself: {status}", w.name, w.worker_id));
                false
            }
            None => true,
        });
        for w in self.workers.iter_mut().filter(|w| w.paused) {
            w.signal(Signal::SIGCONT);
        }
        while self.workers.len() < WORKERS {
            self.spawn_worker().await;
        }
        exited
    }

    /// A Command step of `executions` running on an unpaused worker:
    /// (worker index, step row).
    async fn running_command(&self, executions: &[Uuid]) -> Option<(usize, StepRow)> {
        let owners: HashMap<Uuid, usize> = self
            .live_unpaused()
            .into_iter()
            .filter_map(|i| Some((self.workers[i].worker_id?, i)))
            .collect();
        let db = self.db.clone();
        poll(TRIGGER_LIMIT, || {
            let db = db.clone();
            let owners = owners.clone();
            async move {
                let rows = step_rows(&db, executions).await;
                let found = rows
                    .iter()
                    .filter(|s| s.status == "Executing" && s.step_type == "Command")
                    .find_map(|s| Some((*owners.get(&s.lease_owner?)?, s.clone())));
                match found {
                    Some(found) => Some(Some(found)),
                    // Nothing left that could trigger it.
                    None if !rows.iter().any(|s| unfinished(&s.status)) => Some(None),
                    None => None,
                }
            }
        })
        .await
        .flatten()
    }

    /// `running_command`, preferably a long step (so that a process left
    /// running, or one a shutdown must end, is seen).
    async fn running_long_command(&self, round: &Round) -> Option<(usize, StepRow)> {
        let found = self.running_command(&round.executions).await?;
        let long = |name: &str| matches!(round.all.get(name).map(|s| &s.kind), Some(Kind::Command { sleep_ms, .. }) if *sleep_ms >= 1200);
        if long(&found.1.step_name) {
            return Some(found);
        }
        let db = self.db.clone();
        let preferred = poll(Duration::from_secs(3), || {
            let db = db.clone();
            let executions = round.executions.clone();
            async move {
                step_rows(&db, &executions)
                    .await
                    .into_iter()
                    .find(|s| s.status == "Executing" && long(&s.step_name) && s.lease_owner.is_some())
            }
        })
        .await;
        let preferred = preferred.and_then(|p| {
            let w = self
                .workers
                .iter()
                .position(|w| w.worker_id == p.lease_owner && !w.paused)?;
            Some((w, p))
        });
        Some(preferred.unwrap_or(found))
    }

    async fn attempt_ended(&self, step_run: Uuid, attempt: i32, limit: Duration) -> bool {
        let db = self.db.clone();
        poll(limit, || {
            let db = db.clone();
            async move {
                let ended: Option<bool> = sqlx::query_scalar(
                    "select ended_at is not null from step_attempts where step_run_id = $1 and attempt = $2",
                )
                .bind(step_run)
                .bind(attempt)
                .fetch_optional(&db)
                .await
                .ok()
                .flatten();
                ended.filter(|e| *e)
            }
        })
        .await
        .is_some()
    }

    async fn process_ended(&self, round: &Round, step: &StepRow, limit: Duration) -> bool {
        let path = round.dir.join(format!("{}.log", step.step_name));
        let needle = format!("end {} {} {} ", step.execution_id, step.step_name, step.attempt);
        poll(limit, || {
            let found = std::fs::read_to_string(&path).is_ok_and(|t| t.lines().any(|l| l.starts_with(&needle)));
            async move { found.then_some(()) }
        })
        .await
        .is_some()
    }

    /// Expires `worker`'s leases in SQL. Fails (lock time-out) when a frozen
    /// process holds the rows.
    async fn expire_leases_of(&self, worker: Uuid) -> Result<u64, sqlx::Error> {
        sqlx::query("update step_runs set lease_expires_at = now() - interval '1 second' where lease_owner = $1")
            .bind(worker)
            .execute(&self.db)
            .await
            .map(|r| r.rows_affected())
    }

    /// Transactions left open for more than 3 s by a process that stopped
    /// talking (a paused worker), and what they block.
    async fn frozen_transactions(&self) -> Vec<String> {
        let rows: Vec<(i32, String, f64, Option<String>)> = sqlx::query_as(
            "select b.pid, left(b.query, 140), extract(epoch from now() - b.state_change)::float8, \
               (select string_agg(left(w.query, 100), ' | ') from pg_stat_activity w \
                where b.pid = any(pg_blocking_pids(w.pid))) \
             from pg_stat_activity b where b.datname = current_database() and b.state = 'idle in transaction' \
               and now() - b.state_change > interval '3 seconds'",
        )
        .fetch_all(&self.db)
        .await
        .unwrap_or_default();
        rows.into_iter()
            .filter_map(|(pid, query, idle, blocked)| {
                Some(format!(
                    "backend {pid} idle in transaction for {idle:.1}s after `{query}` blocks `{}`",
                    blocked?
                ))
            })
            .collect()
    }

    /// Before a paused worker is resumed: nothing may be stuck behind it.
    async fn check_frozen(&mut self, round: &Round, worker: Uuid) {
        for frozen in self.frozen_transactions().await {
            round.violation(
                self,
                format!(
                    "Termination (liveness): while worker {worker} was paused, its open transaction blocked others \
                     longer than database.idle_in_transaction_timeout_seconds (1 s) allows: {frozen}"
                ),
            );
        }
    }

    async fn terminate_backends(&mut self) -> i64 {
        self.terminated_at.push(Instant::now());
        sqlx::query_scalar(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = current_database() \
             and pid <> pg_backend_pid() and application_name <> $1",
        )
        .bind(HARNESS_APP)
        .fetch_one(&self.db)
        .await
        .expect("terminate")
    }

    async fn start_execution(&mut self, round: &mut Round) {
        let (status, body) = self
            .api
            .post(&format!("/v1/pipelines/{}/executions", round.pipeline), &json!({}))
            .await;
        match body["execution_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(id) if status == 201 => {
                round.executions.push(id);
                round.retries_left.insert(id, 2);
            }
            _ => round.violation(self, format!("starting an execution answered {status} {body}")),
        }
    }

    async fn apply(&mut self, round: &mut Round, fault: &Fault) {
        match fault.clone() {
            Fault::Pause(how) => self.pause(round, how).await,
            Fault::Kill {
                after_process_end,
                expire_lease,
            } => {
                let found = if after_process_end {
                    self.running_command(&round.executions).await
                } else {
                    self.running_long_command(round).await
                };
                let Some((w, step)) = found else {
                    round.log.push("kill: no trigger".into());
                    return;
                };
                if after_process_end {
                    // The result exists but is never reported.
                    self.workers[w].signal(Signal::SIGSTOP);
                    self.process_ended(round, &step, Duration::from_secs(5)).await;
                }
                let id = self.workers[w].worker_id.unwrap();
                self.workers[w].kill().await;
                self.workers.remove(w);
                if expire_lease {
                    self.expire_leases_of(id).await.expect("a dead worker's leases expire");
                }
                self.spawn_worker().await;
                round.log.push(format!(
                    "kill: {} running {} (attempt {})",
                    id, step.step_name, step.attempt
                ));
            }
            Fault::Shutdown => {
                let Some((w, step)) = self.running_long_command(round).await else {
                    round.log.push("shutdown: no trigger".into());
                    return;
                };
                let id = self.workers[w].worker_id.unwrap();
                self.workers[w].signal(Signal::SIGTERM);
                // Shutdown grace 1 s, kill grace 1 s, then the release.
                let limit = Duration::from_secs(10);
                let exit = tokio::time::timeout(limit, self.workers[w].child.wait()).await;
                let mut worker = self.workers.remove(w);
                match exit {
                    Ok(Ok(status)) if status.success() => {}
                    Ok(ref other) => round.violation(
                        self,
                        format!("Shutdown: worker {id} exited with {other:?} after SIGTERM"),
                    ),
                    Err(_) => {
                        round.violation(
                            self,
                            format!(
                                "Shutdown: worker {id} did not exit within {}s of SIGTERM",
                                limit.as_secs()
                            ),
                        );
                        worker.kill().await;
                    }
                }
                self.spawn_worker().await;
                round.log.push(format!(
                    "shutdown: {id} running {} (attempt {}): {exit:?}",
                    step.step_name, step.attempt
                ));
            }
            Fault::Terminate { times } => {
                for _ in 0..times {
                    let ended_before = self.ended_attempts(&round.executions).await;
                    let n = self.terminate_backends().await;
                    round.log.push(format!("terminate: {n} backends"));
                    // Wait for progress (or time) before the next one.
                    let db = self.db.clone();
                    let executions = round.executions.clone();
                    poll(Duration::from_secs(3), || {
                        let db = db.clone();
                        let executions = executions.clone();
                        async move {
                            let now = ended_count(&db, &executions).await;
                            (now > ended_before).then_some(())
                        }
                    })
                    .await;
                }
            }
            Fault::Stop { twice } => {
                let Some(&execution) = round.executions.last() else {
                    return;
                };
                // Trigger: a step of it is running or waiting.
                let db = self.db.clone();
                let waiting = poll(TRIGGER_LIMIT, || {
                    let db = db.clone();
                    async move {
                        let rows = step_rows(&db, &[execution]).await;
                        rows.iter().any(|s| s.status == "Executing").then_some(rows)
                    }
                })
                .await;
                let Some(rows) = waiting else {
                    round.log.push("stop: no trigger".into());
                    return;
                };
                let callback = rows
                    .into_iter()
                    .find(|s| s.status == "Executing" && s.callback_token.is_some() && s.step_type == "Callback");
                let reserved = round.shared.lock().unwrap().reserved.clone();
                let callback = callback.filter(|s| !reserved.contains_key(&s.step_name));
                let stop_path = format!("/v1/executions/{execution}/stop");
                let api = self.api.clone();
                let empty = json!({});
                let stops = async {
                    let first = api.post(&stop_path, &empty);
                    if twice {
                        let (a, b) = tokio::join!(first, api.post(&stop_path, &empty));
                        vec![a.0, b.0]
                    } else {
                        vec![first.await.0]
                    }
                };
                let report = async {
                    match &callback {
                        Some(s) => Some(self.report_callback(round, s, true).await),
                        None => None,
                    }
                };
                let (stops, report) = tokio::join!(stops, report);
                if stops.contains(&200) {
                    round.expect_stopped.insert(execution);
                }
                round.log.push(format!("stop: {stops:?} callback {report:?}"));
            }
            Fault::Callback { step, race } => {
                let db = self.db.clone();
                let executions = round.executions.clone();
                let name = step.clone();
                let waiting = poll(TRIGGER_LIMIT, || {
                    let db = db.clone();
                    let executions = executions.clone();
                    let name = name.clone();
                    async move {
                        step_rows(&db, &executions)
                            .await
                            .into_iter()
                            .find(|s| s.step_name == name && s.status == "Executing" && s.callback_token.is_some())
                    }
                })
                .await;
                let Some(row) = waiting else {
                    round.log.push(format!("callback race on {step}: no trigger"));
                    round.shared.lock().unwrap().unreserve(&step);
                    return;
                };
                let success = self.report_callback(round, &row, true);
                let other = async {
                    match race {
                        CallbackRace::Failure => {
                            format!("{:?}", self.report_callback(round, &row, false).await)
                        }
                        CallbackRace::Twice => format!("{:?}", self.report_callback(round, &row, true).await),
                        CallbackRace::Stop => {
                            let (status, _) = self
                                .api
                                .post(&format!("/v1/executions/{}/stop", row.execution_id), &json!({}))
                                .await;
                            format!("stop {status}")
                        }
                        CallbackRace::Timeout => {
                            sqlx::query(
                                "update step_runs set callback_deadline = now() - interval '1 second' \
                                 where id = $1 and attempt = $2",
                            )
                            .bind(row.id)
                            .bind(row.attempt)
                            .execute(&self.db)
                            .await
                            .expect("deadline set");
                            match stepwise::engine::expire_callbacks(&self.db).await {
                                Ok(n) => format!("timeout handler expired {n}"),
                                Err(e) => format!("timeout handler error {e}"),
                            }
                        }
                    }
                };
                let (success, other) = tokio::join!(success, other);
                if matches!(race, CallbackRace::Stop) && other == "stop 200" {
                    round.expect_stopped.insert(row.execution_id);
                }
                round.shared.lock().unwrap().unreserve(&step);
                round
                    .log
                    .push(format!("callback race {race:?} on {step}: success {success} / {other}"));
            }
        }
    }

    async fn pause(&mut self, round: &mut Round, how: PauseHow) {
        let Some((w, step)) = self.running_command(&round.executions).await else {
            round.log.push("pause: no trigger".into());
            return;
        };
        let worker_id = self.workers[w].worker_id.unwrap();
        self.pause_worker(w);
        let mut note = format!(
            "pause {how:?}: {} running {} attempt {}",
            worker_id, step.step_name, step.attempt
        );
        match how {
            PauseHow::ReportRacesRescue => {
                let ended = self.process_ended(round, &step, Duration::from_secs(5)).await;
                let expired = self.expire_leases_of(worker_id).await;
                self.check_frozen(round, worker_id).await;
                note.push_str(&format!(" expired {expired:?}"));
                self.workers[w].signal(Signal::SIGCONT);
                let rescued = stepwise::engine::rescue_expired_leases(&self.db).await;
                note.push_str(&format!(" process ended {ended}, harness rescue {rescued:?}"));
            }
            PauseHow::RescuedFirst { others_paused } => {
                let expired = self.expire_leases_of(worker_id).await;
                let rescued = self.attempt_ended(step.id, step.attempt, Duration::from_secs(10)).await;
                self.check_frozen(round, worker_id).await;
                note.push_str(&format!(" expired {expired:?}"));
                let others: Vec<usize> = if others_paused { self.live_unpaused() } else { vec![] };
                for o in &others {
                    self.pause_worker(*o);
                }
                self.workers[w].signal(Signal::SIGCONT);
                if others_paused {
                    // Until the resumed worker claimed its rescued step again
                    // (or it went elsewhere: another execution's maintenance).
                    let db = self.db.clone();
                    let reclaimed = poll(Duration::from_secs(5), || {
                        let db = db.clone();
                        async move {
                            let owner: Option<Option<Uuid>> =
                                sqlx::query_scalar("select lease_owner from step_runs where id = $1 and attempt > $2")
                                    .bind(step.id)
                                    .bind(step.attempt)
                                    .fetch_optional(&db)
                                    .await
                                    .ok()
                                    .flatten();
                            owner.flatten().filter(|o| *o == worker_id)
                        }
                    })
                    .await;
                    note.push_str(&format!(" re-claimed by the same worker: {}", reclaimed.is_some()));
                    for o in others {
                        self.workers[o].signal(Signal::SIGCONT);
                    }
                }
                note.push_str(&format!(" rescued {rescued}"));
            }
            PauseHow::NaturalExpiry => {
                let rescued = self.attempt_ended(step.id, step.attempt, Duration::from_secs(15)).await;
                self.check_frozen(round, worker_id).await;
                self.workers[w].signal(Signal::SIGCONT);
                note.push_str(&format!(" rescued {rescued}"));
            }
        }
        round.log.push(note);
    }

    async fn ended_attempts(&self, executions: &[Uuid]) -> i64 {
        ended_count(&self.db, executions).await
    }

    /// Reports a callback for `row`'s token; records the answer.
    async fn report_callback(&self, round: &Round, row: &StepRow, success: bool) -> u16 {
        report_callback(&self.api, &round.shared, row, success).await
    }
}

async fn ended_count(db: &PgPool, executions: &[Uuid]) -> i64 {
    sqlx::query_scalar(
        "select count(*) from step_attempts a join step_runs s on s.id = a.step_run_id \
         where s.execution_id = any($1) and a.ended_at is not null",
    )
    .bind(executions)
    .fetch_one(db)
    .await
    .unwrap_or(0)
}

async fn report_callback(api: &Api, shared: &Mutex<RoundShared>, row: &StepRow, success: bool) -> u16 {
    let token = row.callback_token.expect("a waiting callback has a token");
    let (what, body) = if success {
        (
            "success",
            json!({"output_parameters": {"v": format!("{}-{}", row.step_name, row.attempt)}}),
        )
    } else {
        (
            "failure",
            json!({"failure_reason": format!("{} rejected", row.step_name)}),
        )
    };
    let (status, _) = api.post(&format!("/v1/callbacks/{token}/{what}"), &body).await;
    let mut shared = shared.lock().unwrap();
    // A 503 (the database just cut off) took no effect: answer again, as a
    // client is told to.
    if status != 503 {
        shared.answered.insert(token);
    }
    shared.answers.push(Answer {
        step_run: row.id,
        attempt: row.attempt,
        success,
        status,
        what: format!("{what} for {} attempt {}", row.step_name, row.attempt),
    });
    status
}

/// Answers every waiting callback of the round that is not reserved: failure
/// on attempt 1 of a step that fails first, success otherwise.
async fn answer_callbacks(
    api: Arc<Api>,
    db: PgPool,
    shared: Arc<Mutex<RoundShared>>,
    executions: Arc<Mutex<Vec<Uuid>>>,
    fail_first: HashSet<String>,
    stop: tokio_util::sync::CancellationToken,
) {
    while !stop.is_cancelled() {
        let ids = executions.lock().unwrap().clone();
        let rows = step_rows(&db, &ids).await;
        for row in rows {
            if row.step_type != "Callback" || row.status != "Executing" {
                continue;
            }
            let Some(token) = row.callback_token else { continue };
            {
                let shared = shared.lock().unwrap();
                if shared.reserved.contains_key(&row.step_name) || shared.answered.contains(&token) {
                    continue;
                }
            }
            let success = !(row.attempt == 1 && fail_first.contains(&row.step_name));
            report_callback(&api, &shared, &row, success).await;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Runs a round: create its pipeline, start an execution before each fault
/// and apply the fault, heal, drive every execution to its end, check.
async fn run_round(h: &mut Harness, index: usize, seed: u64, root: &Path) {
    let started = Instant::now();
    h.api.round.store(index, std::sync::atomic::Ordering::SeqCst);
    let mut rng = Rng(seed);
    let specs = generate_dag(&mut rng);
    let faults = generate_faults(&mut rng, &specs);
    let retry_races: Vec<bool> = faults.iter().map(|_| rng.chance(30)).collect();
    let dir = root.join(format!("round{index}"));
    std::fs::create_dir_all(&dir).unwrap();
    h.effect_dirs.push(dir.clone());
    let all = all_specs(&specs);
    let mut round = Round {
        index,
        seed,
        pipeline: format!("faults-{index}"),
        all,
        specs,
        dir,
        executions: vec![],
        expect_stopped: HashSet::new(),
        retries_left: HashMap::new(),
        retry_with_stop: HashSet::new(),
        shared: Default::default(),
        log: vec![],
    };
    let definition = definition(&round.specs, &round.dir);
    let (status, body) = h
        .api
        .post(
            "/v1/pipelines",
            &json!({"name": round.pipeline, "definition": definition}),
        )
        .await;
    assert_eq!(
        status, 201,
        "round {index} (seed {seed}): pipeline rejected: {body}\n{definition:#}"
    );
    eprintln!(
        "round {index} seed {seed}: {}\n  faults {faults:?}",
        describe(&round.specs)
    );

    let fail_first: HashSet<String> = round
        .all
        .values()
        .filter(|s| matches!(s.kind, Kind::Callback { fail_first: true }))
        .map(|s| s.name.clone())
        .collect();
    let answered_executions = Arc::new(Mutex::new(Vec::<Uuid>::new()));
    let stop_answering = tokio_util::sync::CancellationToken::new();
    for fault in &faults {
        if let Fault::Callback { step, .. } = fault {
            *round.shared.lock().unwrap().reserved.entry(step.clone()).or_default() += 1;
        }
    }
    let answerer = tokio::spawn(answer_callbacks(
        h.api.clone(),
        h.db.clone(),
        round.shared.clone(),
        answered_executions.clone(),
        fail_first,
        stop_answering.clone(),
    ));

    for (fault, retry_race) in faults.iter().zip(retry_races) {
        h.start_execution(&mut round).await;
        if retry_race {
            round.retry_with_stop.extend(round.executions.last().copied());
        }
        *answered_executions.lock().unwrap() = round.executions.clone();
        h.apply(&mut round, fault).await;
    }
    round.shared.lock().unwrap().reserved.clear();
    for exit in h.heal().await {
        round.violation(h, format!("a process crashed: {exit}"));
    }

    // Drive: answer callbacks (the answerer), retry what failed or stopped
    // (two concurrent retries: at most one may win), until all ended.
    let deadline = Instant::now() + TERMINATION_LIMIT;
    let mut first_terminal: HashMap<Uuid, String> = HashMap::new();
    loop {
        let statuses = execution_statuses(&h.db, &round.executions).await;
        let mut all_done = true;
        for id in round.executions.clone() {
            let (status, by_fail_step) = statuses.get(&id).cloned().unwrap_or_default();
            if !is_terminal(&status) {
                all_done = false;
                continue;
            }
            first_terminal.entry(id).or_insert_with(|| status.clone());
            if round.expect_stopped.remove(&id) && status != "Stopped" {
                round.violation(
                    h,
                    format!("execution {id}: a stop was answered 200 but the execution ended {status}"),
                );
            }
            let left = round.retries_left.get(&id).copied().unwrap_or(0);
            if status != "Succeeded" && left > 0 {
                round.retries_left.insert(id, left - 1);
                let path = format!("/v1/executions/{id}/retry");
                let empty = json!({});
                let stop_path = format!("/v1/executions/{id}/stop");
                let with_stop = round.retry_with_stop.remove(&id);
                let stop = async {
                    if with_stop {
                        Some(h.api.post(&stop_path, &empty).await.0)
                    } else {
                        None
                    }
                };
                let (a, b, stop) = tokio::join!(h.api.post(&path, &empty), h.api.post(&path, &empty), stop);
                let wins = [a.0, b.0].iter().filter(|s| **s == 200).count();
                // A stop can only win after a retry did; with one retry won,
                // the stop came after it and the execution must end Stopped.
                // With two, the stop may have come between them: legitimate.
                if stop == Some(200) && wins == 1 {
                    round.expect_stopped.insert(id);
                }
                if stop == Some(200) && wins == 0 {
                    round.violation(
                        h,
                        format!("execution {id}: a stop of a {status} execution answered 200"),
                    );
                }
                if stop.is_some_and(|s| !matches!(s, 200 | 409)) {
                    round.violation(h, format!("execution {id}: a stop racing a retry answered {stop:?}"));
                }
                round.log.push(format!(
                    "retry {id} ({status}, by Fail step {by_fail_step}): {} {}{}",
                    a.0,
                    b.0,
                    stop.map(|s| format!(", racing stop {s}")).unwrap_or_default()
                ));
                if wins > 1 && stop != Some(200) {
                    round.violation(h, format!("execution {id}: two concurrent retries both answered 200"));
                }
                if by_fail_step && wins > 0 {
                    round.violation(
                        h,
                        format!("execution {id}: retry of a run failed by a Fail step answered 200"),
                    );
                }
                if wins == 0 && !by_fail_step {
                    round.violation(
                        h,
                        format!(
                            "execution {id}: retry of a {status} execution refused twice: {} {}",
                            a.0, b.0
                        ),
                    );
                }
                if wins > 0 {
                    first_terminal.remove(&id);
                    all_done = false;
                }
            }
        }
        if all_done {
            break;
        }
        if Instant::now() > deadline {
            let rows = step_rows(&h.db, &round.executions).await;
            for id in &round.executions {
                let (status, _) = statuses.get(id).cloned().unwrap_or_default();
                if !is_terminal(&status) {
                    let steps: Vec<String> = rows
                        .iter()
                        .filter(|s| s.execution_id == *id)
                        .map(|s| format!("{}={}#{}", s.step_name, s.status, s.attempt))
                        .collect();
                    // What the unfinished steps look like, for the report.
                    let detail: Vec<String> = sqlx::query_scalar(
                        "select row_to_json(x)::text from (select s.step_name, s.status, s.attempt, s.lease_owner, \
                           s.lease_expires_at - now() as lease_left, s.callback_token, s.available_at - now() as due_in, \
                           (select json_agg(a.*) from (select attempt, status, error_type, failure_reason, worker_id, \
                              started_at, ended_at from step_attempts where step_run_id = s.id) a) as attempts \
                         from step_runs s where s.execution_id = $1 \
                           and s.status in ('Pending', 'Starting', 'Executing', 'Stopping')) x",
                    )
                    .bind(id)
                    .fetch_all(&h.db)
                    .await
                    .unwrap_or_default();
                    round.violation(
                        h,
                        format!(
                            "Termination: execution {id} still {status} {}s after the faults stopped; steps {}; \
                             unfinished: {}",
                            TERMINATION_LIMIT.as_secs(),
                            steps.join(" "),
                            detail.join(" ")
                        ),
                    );
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_answering.cancel();
    let _ = answerer.await;

    check_round(h, &round).await;
    // Every execution and its steps can be read back (a 5xx is reported by check_calls).
    for id in &round.executions {
        h.api.get(&format!("/v1/executions/{id}")).await;
        h.api.get(&format!("/v1/executions/{id}/steps")).await;
    }
    let statuses = execution_statuses(&h.db, &round.executions).await;
    let outcome: Vec<String> = round
        .executions
        .iter()
        .map(|id| statuses.get(id).map(|s| s.0.clone()).unwrap_or_default())
        .collect();
    eprintln!(
        "round {index} seed {seed}: {:.1}s, executions {outcome:?}\n  {}",
        started.elapsed().as_secs_f64(),
        round.log.join("\n  ")
    );
}

/// Every invariant, from the database and the side-effect files.
async fn check_round(h: &mut Harness, round: &Round) {
    let rows = step_rows(&h.db, &round.executions).await;
    let attempts = attempt_rows(&h.db, &round.executions).await;
    let statuses = execution_statuses(&h.db, &round.executions).await;
    let effects = read_effects(&round.dir);
    let by_key: HashMap<(Uuid, String), &StepRow> = rows
        .iter()
        .map(|r| ((r.execution_id, r.step_name.clone()), r))
        .collect();
    let mut attempts_of: HashMap<Uuid, Vec<&AttemptRow>> = HashMap::new();
    for a in &attempts {
        attempts_of.entry(a.step_run_id).or_default().push(a);
    }
    let mut violations = Vec::new();

    for row in &rows {
        let label = format!("execution {} step {}", row.execution_id, row.step_name);
        let (execution_status, _) = statuses.get(&row.execution_id).cloned().unwrap_or_default();
        let own = attempts_of.get(&row.id).cloned().unwrap_or_default();
        // Termination: an ended execution has no unfinished step.
        if is_terminal(&execution_status)
            && matches!(row.status.as_str(), "Pending" | "Starting" | "Executing" | "Stopping")
        {
            violations.push(format!(
                "Termination: {label} is {} in a {execution_status} execution",
                row.status
            ));
        }
        // History: attempts 1..n, n = the step's attempt; each ended.
        let numbers: Vec<i32> = own.iter().map(|a| a.attempt).collect();
        let expected: Vec<i32> = (1..=row.attempt).collect();
        if numbers != expected {
            violations.push(format!(
                "History: {label} has attempts {numbers:?}, expected {expected:?} (step attempt {})",
                row.attempt
            ));
        }
        for a in &own {
            if a.ended_at_us.is_none() && is_terminal(&execution_status) {
                violations.push(format!(
                    "History: {label} attempt {} ({}) has no end",
                    a.attempt, a.status
                ));
            }
        }
        let succeeded: Vec<&&AttemptRow> = own.iter().filter(|a| a.status == "Succeeded").collect();
        if succeeded.len() > 1 {
            violations.push(format!(
                "Order: {label} committed Succeeded in attempts {:?} (ran again after succeeding)",
                succeeded.iter().map(|a| a.attempt).collect::<Vec<_>>()
            ));
        }
        if let Some(first) = succeeded.first() {
            if first.attempt != row.attempt || row.status != "Succeeded" {
                violations.push(format!(
                    "Order: {label} succeeded in attempt {} but is now {} at attempt {} (attempts: {})",
                    first.attempt,
                    row.status,
                    row.attempt,
                    own.iter()
                        .map(|a| format!(
                            "{}:{}:{}",
                            a.attempt,
                            a.status,
                            a.error_type.clone().unwrap_or_default()
                        ))
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
        }
        if row.status == "Succeeded" && succeeded.is_empty() {
            violations.push(format!(
                "History: {label} is Succeeded but no attempt is (attempts {:?})",
                own.iter().map(|a| (a.attempt, a.status.clone())).collect::<Vec<_>>()
            ));
        }
        let spec = round.all.get(&row.step_name);
        let starts = effects
            .starts
            .get(&(row.execution_id, row.step_name.clone()))
            .cloned()
            .unwrap_or_default();
        // History (side effects): an attempt number starts at most once, and
        // every start is a recorded attempt that ended.
        let mut seen = BTreeSet::new();
        for s in &starts {
            if !seen.insert(s.attempt) {
                violations.push(format!(
                    "History: {label} attempt {} started twice (number reused)",
                    s.attempt
                ));
            }
            match own.iter().find(|a| a.attempt == s.attempt) {
                None => violations.push(format!(
                    "History: {label} attempt {} ran (pid {}) but is not recorded",
                    s.attempt, s.pid
                )),
                Some(a) if (a.started_at_us as i128) * 1000 > s.at_ns => violations.push(format!(
                    "History: {label} attempt {} ran (pid {}) {:.3}s before the attempt was recorded as started",
                    s.attempt,
                    s.pid,
                    ((a.started_at_us as i128) * 1000 - s.at_ns) as f64 / 1e9
                )),
                Some(_) => {}
            }
        }
        // Order: a step that committed Succeeded never runs again.
        if let Some(first) = succeeded.first() {
            for s in starts.iter().filter(|s| s.attempt > first.attempt) {
                violations.push(format!(
                    "Order: {label} ran attempt {} (pid {}) after attempt {} committed Succeeded",
                    s.attempt, s.pid, first.attempt
                ));
            }
            // A succeeded Command step's outputs are those of the attempt
            // that succeeded, written by a process that ran it to the end.
            if matches!(spec.map(|s| &s.kind), Some(Kind::Command { .. })) && row.status == "Succeeded" {
                let v = row
                    .properties
                    .as_ref()
                    .and_then(|p| p["Outputs"]["v"].as_str())
                    .unwrap_or("")
                    .to_string();
                let ran_ok: Vec<String> = starts
                    .iter()
                    .filter(|s| s.attempt == first.attempt)
                    .filter(|s| {
                        effects
                            .ends
                            .get(&(row.execution_id, row.step_name.clone(), s.attempt))
                            .is_some_and(|e| e.1)
                    })
                    .map(|s| format!("{}-{}-{}", row.step_name, s.attempt, s.pid))
                    .collect();
                if !ran_ok.contains(&v) {
                    violations.push(format!(
                        "Order: {label} Succeeded in attempt {} with outputs v={v:?}, but the runs of that attempt \
                         that ended well wrote {ran_ok:?}",
                        first.attempt
                    ));
                }
            }
        }
        // Order: each start comes after every dependency committed Succeeded
        // (its attempt's end in the database) and reads that commit's value.
        for s in &starts {
            for dep in &row.dependencies {
                let Some(d) = by_key.get(&(row.execution_id, dep.clone())) else {
                    continue; // a reused step (not in step_runs): none here
                };
                let d_attempts = attempts_of.get(&d.id).cloned().unwrap_or_default();
                let d_success = d_attempts.iter().find(|a| a.status == "Succeeded");
                match d_success.and_then(|a| a.ended_at_us) {
                    None => violations.push(format!(
                        "Order: {label} attempt {} started (pid {}) but its dependency {dep} never succeeded ({})",
                        s.attempt, s.pid, d.status
                    )),
                    Some(ended_us) if (ended_us as i128) * 1000 > s.at_ns => violations.push(format!(
                        "Order: {label} attempt {} started {:.3}s before its dependency {dep} committed Succeeded",
                        s.attempt,
                        ((ended_us as i128) * 1000 - s.at_ns) as f64 / 1e9
                    )),
                    Some(_) => {}
                }
                if let Some(value) = s.inputs.get(dep) {
                    let path = round.all.get(dep).and_then(|sp| v_path(&sp.kind)).unwrap_or("Outputs");
                    let committed = d.properties.as_ref().and_then(|p| p[path]["v"].as_str()).unwrap_or("");
                    if value != committed {
                        violations.push(format!(
                            "Order: {label} attempt {} read {dep}'s v={value:?} but {dep} committed v={committed:?}",
                            s.attempt
                        ));
                    }
                }
            }
        }
        // A Callback's committed value is the one reported for its attempt.
        if matches!(spec.map(|s| &s.kind), Some(Kind::Callback { .. })) && row.status == "Succeeded" {
            let v = row
                .properties
                .as_ref()
                .and_then(|p| p["OutputParameters"]["v"].as_str())
                .unwrap_or("");
            if v != format!("{}-{}", row.step_name, row.attempt) {
                violations.push(format!(
                    "Fenced: {label} Succeeded at attempt {} with OutputParameters.v={v:?}",
                    row.attempt
                ));
            }
        }
    }

    // No escaping processes: a process whose attempt ended without success
    // (rescued, stopped, failed) does not run on past that end, unless its
    // worker was frozen by the harness.
    for a in &attempts {
        if a.status == "Succeeded" || a.worker_id.is_some_and(|w| h.ever_paused.contains(&w)) {
            continue;
        }
        let (Some(ended_us), Some(row)) = (a.ended_at_us, rows.iter().find(|r| r.id == a.step_run_id)) else {
            continue;
        };
        let ended_ns = ended_us as i128 * 1000;
        if let Some((at, ok)) = effects.ends.get(&(row.execution_id, row.step_name.clone(), a.attempt)) {
            if *at > ended_ns + 1_500_000_000 {
                violations.push(format!(
                    "No escaping processes: execution {} step {} attempt {} ended {} ({}) but its process ran on \
                     and ended ({}) {:.2}s later",
                    row.execution_id,
                    row.step_name,
                    a.attempt,
                    a.status,
                    a.error_type.clone().unwrap_or_default(),
                    if *ok { "ok" } else { "fail" },
                    (*at - ended_ns) as f64 / 1e9
                ));
            }
        }
    }

    // Fenced: a 200 callback report took effect; concurrent reports of one
    // token cannot both win.
    let answers = round.shared.lock().unwrap().answers.clone();
    let mut wins: HashMap<(Uuid, i32), Vec<String>> = HashMap::new();
    for a in &answers {
        // 503 is judged with every other call in `check_calls`.
        if !matches!(a.status, 200 | 404 | 409 | 503) {
            violations.push(format!("Fenced: callback {} answered {}", a.what, a.status));
        }
        if a.status != 200 {
            continue;
        }
        wins.entry((a.step_run, a.attempt)).or_default().push(a.what.clone());
        let recorded = attempts
            .iter()
            .find(|r| r.step_run_id == a.step_run && r.attempt == a.attempt);
        let expected = if a.success { "Succeeded" } else { "Failed" };
        match recorded {
            Some(r) if r.status == expected => {}
            other => violations.push(format!(
                "Fenced: callback {} answered 200 but the attempt ended {:?} ({:?})",
                a.what,
                other.map(|r| r.status.clone()),
                other.and_then(|r| r.error_type.clone())
            )),
        }
    }
    for ((_, _), what) in wins.iter().filter(|(_, w)| w.len() > 1) {
        violations.push(format!(
            "Fenced: one callback attempt accepted {} reports: {what:?}",
            what.len()
        ));
    }
    for v in violations {
        round.violation(h, v);
    }
}

/// API answers: never a 5xx (503 right after a backend termination is noted,
/// not failed), never no answer.
fn check_calls(h: &mut Harness, seeds: &HashMap<usize, u64>) {
    let calls = h.api.calls.lock().unwrap().clone();
    for c in calls {
        if c.status >= 500 || c.status == 0 {
            let near_terminate = h
                .terminated_at
                .iter()
                .any(|t| c.at >= *t && c.at.duration_since(*t) < Duration::from_secs(5));
            let line = format!(
                "round {} (seed {}): Fenced: {} answered {}: {}",
                c.round,
                seeds.get(&c.round).copied().unwrap_or(0),
                c.what,
                c.status,
                c.body
            );
            if c.status == 503 && near_terminate {
                h.notes.push(line);
            } else {
                h.violations.push(line);
            }
        }
    }
}

/// No process a step started is alive: step shells and their background
/// children, given a moment to be reaped.
async fn check_processes(h: &mut Harness, seeds: &HashMap<usize, u64>) {
    let mut suspects = Vec::new();
    for (index, dir) in h.effect_dirs.iter().enumerate() {
        let effects = read_effects(dir);
        let marker = dir.display().to_string();
        for starts in effects.starts.values() {
            for s in starts {
                suspects.push((
                    index,
                    format!("step {} attempt {} shell", s.step, s.attempt),
                    s.pid,
                    marker.clone(),
                ));
            }
        }
        for (execution, step, attempt, pid) in &effects.background {
            suspects.push((
                index,
                format!("background child of execution {execution} step {step} attempt {attempt}"),
                *pid,
                format!("sleep {BACKGROUND_SLEEP}"),
            ));
        }
    }
    let alive = |suspects: &Vec<(usize, String, i32, String)>| -> Vec<(usize, String, i32, String)> {
        suspects
            .iter()
            .filter(|(_, _, pid, marker)| alive_with(*pid, marker))
            .cloned()
            .collect()
    };
    let mut left = alive(&suspects);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = alive(&left);
    }
    // Grouped per round: one line per kind, with a count and examples.
    let mut grouped: BTreeMap<(usize, bool), Vec<String>> = BTreeMap::new();
    for (round, what, pid, _) in &left {
        grouped
            .entry((*round, what.starts_with("background")))
            .or_default()
            .push(format!("{what} (pid {pid})"));
    }
    for ((round, background), list) in grouped {
        h.violations.push(format!(
            "round {round} (seed {}): No escaping processes: {} {} still alive after the run, e.g. {}",
            seeds.get(&round).copied().unwrap_or(0),
            list.len(),
            if background {
                "background children"
            } else {
                "step shells"
            },
            list.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    // Leave nothing behind either way.
    for (_, _, pid, _) in left {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.trim().parse().ok())
}

#[sqlx::test]
async fn invariants_hold_under_faults(db: PgPool) {
    let seed = env_u64("STEPWISE_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000_007
    });
    let rounds = env_u64("STEPWISE_FAULT_ROUNDS").unwrap_or(6) as usize;
    let budget = Duration::from_secs(env_u64("STEPWISE_FAULT_BUDGET_SECONDS").unwrap_or(150));
    eprintln!("fault injection: STEPWISE_FAULT_SEED={seed} STEPWISE_FAULT_ROUNDS={rounds}");
    let started = Instant::now();

    // A lock wait of the harness ends: a paused worker may hold row locks.
    let options = db
        .connect_options()
        .as_ref()
        .clone()
        .application_name(HARNESS_APP)
        .options([("lock_timeout", "4s")]);
    let harness_db = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(options)
        .await
        .expect("harness pool");
    let url = {
        let name: String = sqlx::query_scalar("select current_database()")
            .fetch_one(&harness_db)
            .await
            .unwrap();
        let o = db.connect_options();
        format!("postgres://postgres@{}:{}/{name}", o.get_host(), o.get_port())
    };
    // The test's own pool is not used again (its connections may be terminated).
    db.close().await;
    let root = tempfile::Builder::new().prefix("stepwise-faults-").tempdir().unwrap();
    let data_dir = root.path().join("data");
    let logs = root.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let env = Env { url, data_dir, logs };
    let serve = Proc::spawn("serve".into(), true, &env).await;
    let api = Arc::new(Api {
        base: serve.base_url.clone().expect("serve's address"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        calls: Mutex::new(vec![]),
        round: Default::default(),
    });
    let mut h = Harness {
        env,
        db: harness_db,
        api,
        serve,
        workers: vec![],
        spawned: 0,
        violations: vec![],
        notes: vec![],
        terminated_at: vec![],
        effect_dirs: vec![],
        ever_paused: HashSet::new(),
    };
    assert!(h.heal().await.is_empty(), "the processes start");

    let mut seeds = HashMap::new();
    for index in 0..rounds {
        if started.elapsed() > budget {
            eprintln!("time budget spent: {index} of {rounds} rounds ran");
            break;
        }
        let round_seed = seed.wrapping_add(index as u64);
        seeds.insert(index, round_seed);
        // A round that hangs (the harness waiting on a lock or an answer)
        // fails, and the next starts from healed processes.
        let limit = ROUND_LIMIT;
        if tokio::time::timeout(limit, run_round(&mut h, index, round_seed, root.path()))
            .await
            .is_err()
        {
            h.violations.push(format!(
                "round {index} (seed {round_seed}): the round did not finish within {}s",
                limit.as_secs()
            ));
            h.heal().await;
        }
    }
    check_calls(&mut h, &seeds);
    check_processes(&mut h, &seeds).await;

    for w in h.workers.iter_mut() {
        if w.paused {
            w.signal(Signal::SIGCONT);
        }
        w.kill().await;
    }
    h.serve.kill().await;
    h.db.close().await;
    eprintln!(
        "fault injection: seed {seed}, {} rounds in {:.1}s, {} violations, {} notes",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        h.violations.len(),
        h.notes.len()
    );
    for n in &h.notes {
        eprintln!("note: {n}");
    }
    if !h.violations.is_empty() || std::env::var_os("STEPWISE_FAULT_KEEP").is_some() {
        let kept = root.keep();
        eprintln!("side effects and process logs kept in {}", kept.display());
    }
    assert!(
        h.violations.is_empty(),
        "STEPWISE_FAULT_SEED={seed}: {} invariant violations:\n{}",
        h.violations.len(),
        h.violations.join("\n")
    );
}
