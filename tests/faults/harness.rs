//! The harness: the `stepwise` processes it runs, its API client (every
//! answer recorded), its view of the database, and the triggers faults
//! wait for.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStderr, Command},
    sync::watch,
};
use uuid::Uuid;

use crate::{dag::Kind, round::Round, HARNESS_APP, LEASE_SECONDS, TRIGGER_LIMIT, WORKERS};
use std::sync::Arc;

// ---------------------------------------------------------------------------
/// The admin token of the fault suite's server (`auth.admin_token`).
pub const TOKEN: &str = "sw_fault_suite_token_0123456789abcdef";

// Processes.

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub pid: i32,
    pub worker_id: Option<Uuid>,
    pub base_url: Option<String>,
    pub paused: bool,
}

impl Proc {
    pub async fn spawn(name: String, serve: bool, env: &Env) -> Proc {
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
            .env("STEPWISE_AUTH__ADMIN_TOKEN", TOKEN)
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
        tokio::spawn(follow_stderr(stderr, log_path, name.clone(), ready_tx));
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

    pub fn signal(&mut self, signal: Signal) {
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
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Copies a process's log to its file (and to stderr with
/// `STEPWISE_TEST_WORKER_LOGS`), and reports its worker id and address
/// once it logs them.
async fn follow_stderr(
    stderr: ChildStderr,
    log_path: PathBuf,
    tag: String,
    ready_tx: watch::Sender<(Option<Uuid>, Option<String>)>,
) {
    let echo = std::env::var_os("STEPWISE_TEST_WORKER_LOGS").is_some();
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
}

pub struct Env {
    pub url: String,
    pub data_dir: PathBuf,
    pub logs: PathBuf,
}

// ---------------------------------------------------------------------------
// The API, every answer recorded.

#[derive(Debug, Clone)]
pub struct Call {
    pub round: usize,
    pub what: String,
    pub status: u16,
    pub body: String,
    pub at: Instant,
}

pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub calls: Mutex<Vec<Call>>,
    pub round: std::sync::atomic::AtomicUsize,
}

impl Api {
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
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

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
}

// ---------------------------------------------------------------------------
// The run.

pub struct Harness {
    pub env: Env,
    pub db: PgPool,
    pub api: Arc<Api>,
    pub serve: Proc,
    pub workers: Vec<Proc>,
    pub spawned: usize,
    /// Violations found, each prefixed with its round and seed.
    pub violations: Vec<String>,
    /// 503s seen right after backends were terminated: reported, not failed.
    pub notes: Vec<String>,
    pub terminated_at: Vec<Instant>,
    /// Every directory steps wrote to, for the final process sweep.
    pub effect_dirs: Vec<PathBuf>,
    /// Workers that were ever paused: their steps' processes run on while
    /// they are frozen, so "outlived its attempt" is not judged for them.
    pub ever_paused: HashSet<Uuid>,
    /// Per fault kind (`inject::KINDS`): how often it was planned and how
    /// often it fired (found its trigger and was applied).
    pub fault_counts: std::collections::BTreeMap<&'static str, FaultCount>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FaultCount {
    pub planned: usize,
    pub fired: usize,
}

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct StepRow {
    pub id: Uuid,
    pub execution_id: Uuid,
    pub step_name: String,
    pub step_type: String,
    pub status: String,
    pub attempt: i32,
    pub dependencies: Vec<String>,
    pub properties: Option<Value>,
    pub lease_owner: Option<Uuid>,
    pub callback_token: Option<Uuid>,
}

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct AttemptRow {
    pub step_run_id: Uuid,
    pub attempt: i32,
    pub status: String,
    pub error_type: Option<String>,
    pub worker_id: Option<Uuid>,
    pub started_at_us: i64,
    pub ended_at_us: Option<i64>,
}

pub async fn step_rows(db: &PgPool, executions: &[Uuid]) -> Vec<StepRow> {
    sqlx::query_as(
        "select id, execution_id, step_name, step_type, status, attempt, dependencies, properties, lease_owner, \
         callback_token from step_runs where execution_id = any($1) order by execution_id, position, step_name",
    )
    .bind(executions)
    .fetch_all(db)
    .await
    .expect("step rows")
}

pub async fn attempt_rows(db: &PgPool, executions: &[Uuid]) -> Vec<AttemptRow> {
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

pub async fn execution_statuses(db: &PgPool, executions: &[Uuid]) -> HashMap<Uuid, (String, bool)> {
    let rows: Vec<(Uuid, String, bool)> =
        sqlx::query_as("select id, status, failed_by_fail_step from executions where id = any($1)")
            .bind(executions)
            .fetch_all(db)
            .await
            .expect("execution rows");
    rows.into_iter().map(|(id, s, f)| (id, (s, f))).collect()
}

pub fn unfinished(status: &str) -> bool {
    matches!(status, "Pending" | "Starting" | "Executing" | "Stopping")
}

pub fn is_terminal(status: &str) -> bool {
    matches!(status, "Succeeded" | "Failed" | "Stopped")
}

/// Polls `probe` until it yields a value or `limit` passes.
pub async fn poll<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
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
    pub async fn spawn_worker(&mut self) {
        self.spawned += 1;
        let name = format!("worker{}", self.spawned);
        let worker = Proc::spawn(name, false, &self.env).await;
        self.workers.push(worker);
    }

    pub fn pause_worker(&mut self, index: usize) {
        if let Some(id) = self.workers[index].worker_id {
            self.ever_paused.insert(id);
        }
        self.workers[index].signal(Signal::SIGSTOP);
    }

    pub fn live_unpaused(&self) -> Vec<usize> {
        (0..self.workers.len()).filter(|i| !self.workers[*i].paused).collect()
    }

    /// Resumes paused workers and brings the pool back to `WORKERS`.
    /// Returns the processes that had exited by themselves.
    pub async fn heal(&mut self) -> Vec<String> {
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
    pub async fn running_command(&self, executions: &[Uuid]) -> Option<(usize, StepRow)> {
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
    pub async fn running_long_command(&self, round: &Round) -> Option<(usize, StepRow)> {
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

    pub async fn attempt_ended(&self, step_run: Uuid, attempt: i32, limit: Duration) -> bool {
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

    pub async fn process_ended(&self, round: &Round, step: &StepRow, limit: Duration) -> bool {
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
    pub async fn expire_leases_of(&self, worker: Uuid) -> Result<u64, sqlx::Error> {
        sqlx::query("update step_runs set lease_expires_at = now() - interval '1 second' where lease_owner = $1")
            .bind(worker)
            .execute(&self.db)
            .await
            .map(|r| r.rows_affected())
    }

    /// Transactions left open for more than 3 s by a process that stopped
    /// talking (a paused worker), and what they block.
    pub async fn frozen_transactions(&self) -> Vec<String> {
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
    pub async fn check_frozen(&mut self, round: &Round, worker: Uuid) {
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

    pub async fn terminate_backends(&mut self) -> i64 {
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

    pub async fn start_execution(&mut self, round: &mut Round) {
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

    pub async fn ended_attempts(&self, executions: &[Uuid]) -> i64 {
        ended_count(&self.db, executions).await
    }
}

pub async fn ended_count(db: &PgPool, executions: &[Uuid]) -> i64 {
    sqlx::query_scalar(
        "select count(*) from step_attempts a join step_runs s on s.id = a.step_run_id \
         where s.execution_id = any($1) and a.ended_at is not null",
    )
    .bind(executions)
    .fetch_one(db)
    .await
    .unwrap_or(0)
}
