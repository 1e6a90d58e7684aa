//! The worker's side of the step supervisor ([`super::supervisor`]): one
//! `stepwise supervise` process per worker pool, started on the first
//! command step and again if it ever goes away. Requests are written by one
//! task, events are read by another and routed to the step they name.
//!
//! Dropping the last handle closes the supervisor's stdin, which ends every
//! step it still runs; so does this process's death. Not `kill_on_drop`:
//! a killed supervisor could not end the steps.

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    sync::mpsc,
};

use super::{
    run_as::StepUser,
    supervisor::{Event, Report, Request, Spawn, SUBCOMMAND},
};

/// Starts commands under the supervisor. One per worker pool.
pub struct Supervisor {
    program: String,
    /// `worker.run_as_user`, resolved; an error fails every command step
    /// rather than run it as the service's own user.
    user: Result<Option<StepUser>, String>,
    helper: tokio::sync::Mutex<Option<Arc<Helper>>>,
    next_id: AtomicU64,
}

struct Helper {
    requests: mpsc::UnboundedSender<Vec<u8>>,
    steps: Mutex<HashMap<u64, mpsc::UnboundedSender<Report>>>,
    alive: AtomicBool,
}

/// One command started under the supervisor. Dropped before its end, it
/// asks the supervisor to stop the command.
pub struct SupervisedStep {
    id: u64,
    events: mpsc::UnboundedReceiver<Report>,
    helper: Arc<Helper>,
    ended: bool,
}

impl Supervisor {
    /// `program` is the stepwise binary to run as `stepwise supervise`;
    /// `run_as_user` is `worker.run_as_user`.
    pub fn new(program: String, run_as_user: &str) -> Supervisor {
        Supervisor {
            program,
            user: super::run_as::resolve(run_as_user),
            helper: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    /// Asks the supervisor to start `spawn` (its `id` is assigned here).
    pub async fn spawn(&self, mut spawn: Spawn) -> Result<SupervisedStep, String> {
        spawn.user = self.step_user()?;
        let helper = self.helper().await?;
        spawn.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = mpsc::unbounded_channel();
        helper.steps.lock().unwrap().insert(spawn.id, tx);
        if !helper.alive.load(Ordering::SeqCst) {
            // It went away between the check and the insert: nothing would
            // ever answer this step.
            helper.steps.lock().unwrap().remove(&spawn.id);
            return Err("the step supervisor exited".into());
        }
        let step = SupervisedStep {
            id: spawn.id,
            events,
            helper: helper.clone(),
            ended: false,
        };
        helper.send(&Request::Spawn(spawn))?;
        Ok(step)
    }

    /// Who command steps run as (`None`: the service's own user).
    pub fn step_user(&self) -> Result<Option<StepUser>, String> {
        self.user.clone()
    }

    async fn helper(&self) -> Result<Arc<Helper>, String> {
        let mut slot = self.helper.lock().await;
        if let Some(helper) = slot.as_ref().filter(|h| h.alive.load(Ordering::SeqCst)) {
            return Ok(helper.clone());
        }
        let helper = Helper::start(&self.program)?;
        *slot = Some(helper.clone());
        Ok(helper)
    }
}

impl Helper {
    fn start(program: &str) -> Result<Arc<Helper>, String> {
        let mut command = tokio::process::Command::new(program);
        command
            .arg0("stepwise")
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // It needs nothing from the environment, and a step running as
            // the same user could read its /proc/<pid>/environ.
            .env_clear()
            // Its own group: a Ctrl-C meant for the worker does not reach
            // it, and it stays behind to end the steps if the worker dies.
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start the step supervisor {program}: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (requests, mut to_write) = mpsc::unbounded_channel::<Vec<u8>>();
        let helper = Arc::new(Helper {
            requests,
            steps: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
        });
        tokio::spawn(async move {
            while let Some(line) = to_write.recv().await {
                if stdin.write_all(&line).await.is_err() {
                    break;
                }
            }
            // Dropping stdin here tells the supervisor to end its steps.
        });
        let weak = Arc::downgrade(&helper);
        tokio::spawn(async move {
            route_events(stdout, &weak).await;
            if let Some(helper) = weak.upgrade() {
                helper.alive.store(false, Ordering::SeqCst);
                for (_, tx) in helper.steps.lock().unwrap().drain() {
                    let message = "the step supervisor exited".to_string();
                    let _ = tx.send(Report::Fault { message });
                }
            }
            let _ = child.wait().await;
        });
        Ok(helper)
    }

    fn send(&self, request: &Request) -> Result<(), String> {
        let mut line = serde_json::to_vec(request).map_err(|e| format!("cannot encode a request: {e}"))?;
        line.push(b'\n');
        self.requests
            .send(line)
            .map_err(|_| "the step supervisor is gone".to_string())
    }
}

async fn route_events(stdout: tokio::process::ChildStdout, helper: &Weak<Helper>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let event: Event = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, line, "the step supervisor sent an unreadable event");
                continue;
            }
        };
        let Some(helper) = helper.upgrade() else { return };
        let tx = helper.steps.lock().unwrap().get(&event.id).cloned();
        if let Some(tx) = tx {
            let _ = tx.send(event.report);
        }
    }
}

impl SupervisedStep {
    /// The next event of this command (a `Fault` if the supervisor is gone).
    pub async fn next_report(&mut self) -> Report {
        let report = self.events.recv().await.unwrap_or_else(|| Report::Fault {
            message: "the step supervisor exited".into(),
        });
        self.ended |= report.is_last();
        report
    }

    /// SIGTERM to the command's group now, SIGKILL after the grace period.
    pub fn stop(&self) {
        let _ = self.helper.send(&Request::Stop { id: self.id });
    }
}

impl Drop for SupervisedStep {
    fn drop(&mut self) {
        self.helper.steps.lock().unwrap().remove(&self.id);
        if !self.ended {
            self.stop();
        }
    }
}
