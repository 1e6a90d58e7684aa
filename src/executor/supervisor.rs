//! The step supervisor: `stepwise supervise`, one small process of our own
//! binary beside each worker process, so that no process of a step outlives
//! its attempt, whatever happens to the worker.
//!
//! The worker starts it once (by path, in a process group of its own) and
//! talks to it over two pipes, one JSON line per message: [`Request`]s on
//! its stdin (start a step's command, stop one), [`Event`]s on its stdout
//! (started with its pid, could not start and why, ended and how). For each
//! command the supervisor:
//!
//! - starts it in a new process group (the group id is the recorded pid),
//!   with stdout and stderr on a pipe it copies into a [`BoundedLog`], so the
//!   log file never outgrows `worker.max_log_bytes`;
//! - sees the leader exit with `waitid(WNOWAIT)`, so the leader is still a
//!   zombie and its pid, the group id, cannot be reused, SIGKILLs the group
//!   (background children of a successful step go too), then reaps it;
//! - on a stop request (stop, timeout), SIGTERMs the group and SIGKILLs it
//!   after the grace period, or at once when the leader is gone.
//!
//! When its stdin closes (the worker ended, or died, even by SIGKILL, since
//! the kernel closes the pipe), it ends every group it holds the same way
//! and exits. Being one process per worker rather than one per step, it
//! costs nothing per step but the command's own spawn (which it does with
//! `posix_spawn`).
//!
//! A parent-death signal was not used: it needs `unsafe` (`pre_exec` with
//! `prctl`, which also forces `fork` instead of `posix_spawn`), and it only
//! reaches the direct child, not its group. A process that leaves its group
//! (`setsid`, a daemon) is out of reach; run untrusted code in a container.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufRead, Read, Write},
    os::{fd::AsFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::OFlag,
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::{
        signal::{killpg, Signal},
        wait::{waitid, Id, WaitPidFlag},
    },
    unistd::{pipe2, Pid},
};
use serde::{Deserialize, Serialize};

use super::{log::BoundedLog, mask::Masker, run_as::StepUser};

/// The subcommand name; `main` dispatches on it before parsing flags.
pub const SUBCOMMAND: &str = "supervise";

/// What the worker asks.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Spawn(Spawn),
    /// SIGTERM the step's group, SIGKILL it after its grace period.
    Stop {
        id: u64,
    },
}

/// One command to run, with everything it runs with. Its `Debug` shows
/// the names of environment variables, not their values (secrets).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Spawn {
    pub id: u64,
    pub log: PathBuf,
    pub max_log_bytes: u64,
    pub grace_ms: u64,
    pub cwd: PathBuf,
    pub arg0: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Values replaced by `***` in the log (the secrets the step received).
    #[serde(default)]
    pub mask: Vec<String>,
    /// Run as this user (`worker.run_as_user`), or as the supervisor's own.
    #[serde(default)]
    pub user: Option<StepUser>,
}

impl std::fmt::Debug for Spawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Spawn")
            .field("id", &self.id)
            .field("log", &self.log)
            .field("program", &self.program)
            .field("env", &env)
            .field("mask", &format_args!("{} values", self.mask.len()))
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What the supervisor tells the worker about step `id`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: u64,
    pub report: Report,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// The command runs; `pid` is also its process group id.
    Started { pid: i32 },
    /// The command could not be started.
    SpawnFailed { kind: SpawnError, message: String },
    /// The command ended (the leader; its group is gone too).
    Ended { code: Option<i32>, signal: Option<i32> },
    /// The supervisor failed, or is gone.
    Fault { message: String },
}

impl Report {
    /// Whether nothing more comes for the step after this.
    pub fn is_last(&self) -> bool {
        !matches!(self, Report::Started { .. })
    }
}

/// Why a command could not start: the first four are the step's own
/// mistakes, `Other` (EAGAIN, ENOMEM, ...) is the service's.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SpawnError {
    NotFound,
    PermissionDenied,
    NotExecutable,
    WorkingDirectory,
    Other,
}

type Out = Arc<Mutex<std::io::Stdout>>;

/// A running command's group and grace period.
struct Running {
    group: Pid,
    grace: Duration,
}

/// The running commands by step id; the condvar is notified whenever one
/// is removed. A group is only signalled under this lock, and removed under
/// it before its leader is reaped, so no signal can reach a reused pid.
type Table = Arc<(Mutex<HashMap<u64, Running>>, Condvar)>;

/// Entry point of `stepwise supervise`; returns the process exit code.
pub fn main() -> i32 {
    if std::env::args_os()
        .nth(2)
        .is_some_and(|a| a == super::run_as::CHECK_ARG)
    {
        return super::run_as::check_capabilities();
    }
    let out: Out = Arc::new(Mutex::new(std::io::stdout()));
    let table: Table = Arc::default();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Request>(&line) {
            Ok(Request::Spawn(spawn)) => start(spawn, &out, &table),
            Ok(Request::Stop { id }) => stop(id, &table),
            // Not the line itself, nor serde's message, which may quote a
            // value: a request's environment holds secrets.
            Err(e) => eprintln!(
                "stepwise {SUBCOMMAND}: ignoring a request line of {} bytes that is not a request ({:?} error at column {}; workers start this, not people)",
                line.len(),
                e.classify(),
                e.column()
            ),
        }
    }
    // The worker closed the pipe, or died: end every step still running.
    end_all(&table);
    0
}

fn send(out: &Out, id: u64, report: Report) {
    let mut line = serde_json::to_vec(&Event { id, report }).expect("an event serialises");
    line.push(b'\n');
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    // The worker is gone if this fails; its steps are ended all the same.
    let _ = out.write_all(&line).and_then(|_| out.flush());
}

fn start(spawn_req: Spawn, out: &Out, table: &Table) {
    let id = spawn_req.id;
    let log = match OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&spawn_req.log)
    {
        Ok(f) => f,
        Err(e) => {
            let message = format!("cannot create the log file {}: {e}", spawn_req.log.display());
            return send(out, id, Report::Fault { message });
        }
    };
    let (child, reader) = match spawn(&spawn_req) {
        Ok(c) => c,
        Err(report) => return send(out, id, report),
    };
    let pid = child.id() as i32;
    let running = Running {
        group: Pid::from_raw(pid),
        grace: Duration::from_millis(spawn_req.grace_ms),
    };
    table.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id, running);
    send(out, id, Report::Started { pid });
    let log = MaskedLog {
        log: BoundedLog::new(log, spawn_req.max_log_bytes),
        masker: Masker::new(&spawn_req.mask),
    };
    let (out, table) = (out.clone(), table.clone());
    std::thread::spawn(move || watch(id, child, reader, log, &out, &table));
}

/// The log of a step with its secret values masked before they are written.
struct MaskedLog {
    log: BoundedLog,
    masker: Masker,
}

impl MaskedLog {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.log.write(&self.masker.push(data))
    }

    /// Writes out what is written so far; bytes held back because they may
    /// begin a secret stay held until more output or the end.
    fn flush(&mut self) -> std::io::Result<()> {
        self.log.flush()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let rest = self.masker.finish();
        self.log.write(&rest)?;
        self.log.flush()
    }
}

/// Waits for the leader, ends its group, reaps it, reports.
fn watch(id: u64, mut child: Child, reader: File, mut log: MaskedLog, out: &Out, table: &Table) {
    let finishing = Arc::new(AtomicBool::new(false));
    let pump = {
        let finishing = finishing.clone();
        std::thread::spawn(move || pump(reader, &mut log, &finishing))
    };
    let group = Pid::from_raw(child.id() as i32);
    // WNOWAIT: the leader stays a zombie, so the group id stays ours.
    while waitid(Id::Pid(group), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) == Err(Errno::EINTR) {}
    {
        let (lock, cvar) = &**table;
        let mut running = lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = killpg(group, Signal::SIGKILL);
        running.remove(&id);
        cvar.notify_all();
    }
    let status = child.wait();
    finishing.store(true, Ordering::SeqCst);
    let _ = pump.join();
    let report = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            Report::Ended {
                code: status.code(),
                signal: status.signal(),
            }
        }
        Err(e) => Report::Fault {
            message: format!("waiting for the command failed: {e}"),
        },
    };
    send(out, id, report);
}

/// SIGTERM now, SIGKILL after the grace period unless the leader is gone
/// by then (its group is SIGKILLed by [`watch`] at once when it goes).
fn stop(id: u64, table: &Table) {
    let (group, grace) = {
        let running = table.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = running.get(&id) else { return };
        let _ = killpg(r.group, Signal::SIGTERM);
        (r.group, r.grace)
    };
    let table = table.clone();
    std::thread::spawn(move || {
        let (lock, cvar) = &*table;
        let still = |t: &mut HashMap<u64, Running>| t.get(&id).is_some_and(|r| r.group == group);
        let running = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (mut running, _) = cvar
            .wait_timeout_while(running, grace, |t| still(t))
            .unwrap_or_else(|e| e.into_inner());
        if still(&mut running) {
            let _ = killpg(group, Signal::SIGKILL);
        }
    });
}

/// Ends every running group: SIGTERM, SIGKILL after the longest grace
/// period, then waits (bounded) for their leaders to be reaped.
fn end_all(table: &Table) {
    let (lock, cvar) = &**table;
    let running = lock.lock().unwrap_or_else(|e| e.into_inner());
    let grace = running.values().map(|r| r.grace).max().unwrap_or_default();
    for r in running.values() {
        let _ = killpg(r.group, Signal::SIGTERM);
    }
    let (running, _) = cvar
        .wait_timeout_while(running, grace, |t| !t.is_empty())
        .unwrap_or_else(|e| e.into_inner());
    for r in running.values() {
        let _ = killpg(r.group, Signal::SIGKILL);
    }
    let _ = cvar.wait_timeout_while(running, Duration::from_secs(5), |t| !t.is_empty());
}

/// Starts the command in a new process group with its output on a pipe.
fn spawn(args: &Spawn) -> Result<(Child, File), Report> {
    if !args.cwd.is_dir() {
        return Err(Report::SpawnFailed {
            kind: SpawnError::WorkingDirectory,
            message: format!("the working directory {} is not a directory", args.cwd.display()),
        });
    }
    let fault = |e: Errno| Report::Fault {
        message: format!("cannot create the output pipe: {e}"),
    };
    let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(fault)?;
    let write2 = write.try_clone().map_err(|e| Report::Fault {
        message: format!("cannot duplicate the output pipe: {e}"),
    })?;
    let mut command = Command::new(&args.program);
    command
        .arg0(&args.arg0)
        .args(&args.args)
        .current_dir(&args.cwd)
        .env_clear()
        .envs(args.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(write2))
        // Its own group, so every process it starts can be ended with it.
        .process_group(0);
    if let Some(user) = args.user {
        // The standard library also drops the supplementary groups.
        command.uid(user.uid).gid(user.gid);
    }
    let spawned = command.spawn();
    // Our copies of the write end must close, or the pipe never ends.
    drop(command);
    match spawned {
        Ok(child) => Ok((child, File::from(read))),
        Err(e) => {
            let kind = match (e.kind(), e.raw_os_error()) {
                (std::io::ErrorKind::NotFound, _) => SpawnError::NotFound,
                (std::io::ErrorKind::PermissionDenied, _) => SpawnError::PermissionDenied,
                (_, Some(code)) if code == Errno::ENOEXEC as i32 => SpawnError::NotExecutable,
                _ => SpawnError::Other,
            };
            Err(Report::SpawnFailed {
                kind,
                message: e.to_string(),
            })
        }
    }
}

/// Copies the command's output into the log until every writer has closed
/// the pipe, or shortly after `finishing` when a process outside our reach
/// still holds it.
fn pump(reader: File, log: &mut MaskedLog, finishing: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut finish_by: Option<Instant> = None;
    loop {
        let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) => {
                let _ = log.flush();
                if finishing.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            Err(Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        match (&reader).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if log.write(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        if finishing.load(Ordering::SeqCst) {
            let by = *finish_by.get_or_insert_with(|| Instant::now() + Duration::from_secs(1));
            if Instant::now() >= by {
                break;
            }
        }
    }
    let _ = log.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_json_line_each() {
        let spawn = Spawn {
            id: 3,
            log: "/d/log.txt".into(),
            max_log_bytes: 1024,
            grace_ms: 1500,
            cwd: "/w".into(),
            arg0: "sh".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hi".into()],
            env: vec![("A".into(), "1".into())],
            mask: vec!["hunter2".into()],
            user: Some(StepUser { uid: 65534, gid: 65534 }),
        };
        assert!(!format!("{spawn:?}").contains("hunter2"));
        let line = serde_json::to_string(&Request::Spawn(spawn.clone())).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), Request::Spawn(spawn));
        let event = Event {
            id: 3,
            report: Report::Ended {
                code: Some(0),
                signal: None,
            },
        };
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
        assert!(!Report::Started { pid: 1 }.is_last());
    }

    #[test]
    fn a_masked_log_holds_no_secret_whatever_the_chunks_and_truncation() {
        let secret = "p4ss-w0rd-v4lue";
        let mut output = Vec::new();
        for i in 0..200 {
            output.extend(format!("line {i} {secret} and {}\n", &secret[..i % secret.len()]).as_bytes());
        }
        for chunk in [1, 7, 64, 4096] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("log");
            let mut log = MaskedLog {
                log: BoundedLog::new(File::create(&path).unwrap(), 512),
                masker: Masker::new([secret]),
            };
            for piece in output.chunks(chunk) {
                log.write(piece).unwrap();
                log.flush().unwrap();
            }
            log.finish().unwrap();
            let written = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            assert!(!written.contains(secret), "chunk {chunk}: {written}");
            assert!(written.contains("line 0 *** and \n"), "chunk {chunk}: {written}");
            assert!(written.contains("bytes omitted"), "chunk {chunk}");
            assert!(written.len() <= 512);
        }
    }
}
