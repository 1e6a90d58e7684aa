//! The step supervisor: `stepwise supervise ...`, a small process of our own
//! binary between a worker and each Command step, so that no process of a
//! step outlives its attempt, whatever happens to the worker.
//!
//! The worker starts it (by path, so with `posix_spawn`) in a process group
//! of its own, with a pipe as its stdin and another as its stdout. The
//! supervisor becomes a child subreaper (orphans of the step are re-parented
//! to it, not to init), starts the command in a new process group whose id
//! it records (the command's pid) and reports on stdout, one JSON line each:
//! [`Report::Started`] (or why it could not start), then how it ended.
//!
//! - The command's stdout and stderr go through a pipe the supervisor reads
//!   into a [`BoundedLog`], so the log file never outgrows
//!   `worker.max_log_bytes`.
//! - When the leader exits, the supervisor sees it with `waitid(WNOWAIT)`,
//!   so the leader is still a zombie and its pid, the group id, cannot be
//!   reused; SIGKILLs the group (background children of a successful step
//!   go too), reaps the leader, then kills and reaps whatever descendants
//!   were re-parented to it (those that left the group).
//! - When its stdin closes (the worker asks it to end the step on stop or
//!   timeout by closing the pipe, or the worker died, even by SIGKILL), it
//!   SIGTERMs the group, waits up to the grace period for the leader, then
//!   SIGKILLs the group and the descendants as above.
//!
//! A parent-death signal was not used: it needs `unsafe` (`pre_exec` with
//! `prctl`, which also forces `fork` instead of `posix_spawn`), and it only
//! reaches the direct child, not its group.

use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::{fd::AsFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::OFlag,
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::{
        signal::{kill, killpg, Signal},
        wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus},
    },
    unistd::{pipe2, Pid},
};
use serde::{Deserialize, Serialize};

use super::log::BoundedLog;

/// The subcommand name; `main` dispatches on it before parsing flags, so a
/// step's environment (`STEPWISE_*` variables) cannot disturb it.
pub const SUBCOMMAND: &str = "supervise";

/// What the supervisor tells the worker, one JSON line each.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// The command runs; `pid` is also its process group id.
    Started { pid: i32 },
    /// The command could not be started.
    SpawnFailed { kind: SpawnError, message: String },
    /// The command ended (the leader; its group is gone too).
    Ended { code: Option<i32>, signal: Option<i32> },
    /// The supervisor itself failed.
    Fault { message: String },
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

/// The supervisor's arguments, positional: `LOG MAX_LOG_BYTES GRACE_MS CWD
/// ARG0 PROGRAM [ARGS...]`. The environment is the command's.
pub struct Args {
    pub log: PathBuf,
    pub max_log_bytes: u64,
    pub grace: Duration,
    pub cwd: PathBuf,
    pub arg0: OsString,
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl Args {
    /// The arguments after the subcommand, as the worker passes them.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            self.log.clone().into(),
            self.max_log_bytes.to_string().into(),
            self.grace.as_millis().to_string().into(),
            self.cwd.clone().into(),
            self.arg0.clone(),
            self.program.clone(),
        ];
        v.extend(self.args.iter().cloned());
        v
    }

    fn parse(mut argv: impl Iterator<Item = OsString>) -> Result<Args, String> {
        let mut next = |what: &str| argv.next().ok_or_else(|| format!("missing {what}"));
        let log = PathBuf::from(next("LOG")?);
        let number = |s: OsString, what: &str| {
            s.to_str()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| format!("{what} is not a number"))
        };
        let max_log_bytes = number(next("MAX_LOG_BYTES")?, "MAX_LOG_BYTES")?;
        let grace = Duration::from_millis(number(next("GRACE_MS")?, "GRACE_MS")?);
        let cwd = PathBuf::from(next("CWD")?);
        let arg0 = next("ARG0")?;
        let program = next("PROGRAM")?;
        Ok(Args {
            log,
            max_log_bytes,
            grace,
            cwd,
            arg0,
            program,
            args: argv.collect(),
        })
    }
}

/// Entry point of `stepwise supervise`; returns the process exit code.
pub fn main(argv: impl Iterator<Item = OsString>) -> i32 {
    let args = match Args::parse(argv) {
        Ok(a) => a,
        Err(m) => {
            eprintln!("stepwise {SUBCOMMAND}: {m} (this subcommand is started by workers, not by hand)");
            return 2;
        }
    };
    supervise(&args, &mut std::io::stdout());
    0
}

fn send(out: &mut impl Write, report: &Report) {
    let mut line = serde_json::to_vec(report).expect("a report serialises");
    line.push(b'\n');
    // The worker is gone if this fails; the step is ended all the same.
    let _ = out.write_all(&line).and_then(|_| out.flush());
}

enum Event {
    Exited,
    StdinClosed,
}

fn supervise(args: &Args, out: &mut impl Write) {
    // Orphans of the step become our children, so none escapes unreaped.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let log = match OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&args.log)
    {
        Ok(f) => f,
        Err(e) => {
            let message = format!("cannot create the log file {}: {e}", args.log.display());
            return send(out, &Report::Fault { message });
        }
    };
    let mut child = match spawn(args) {
        Ok(c) => c,
        Err(report) => return send(out, &report),
    };
    let pid = child.0.id() as i32;
    send(out, &Report::Started { pid });
    let group = Pid::from_raw(pid);

    let (tx, rx) = mpsc::channel();
    let stdin_tx = tx.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = stdin_tx.send(Event::StdinClosed);
    });
    std::thread::spawn(move || {
        // WNOWAIT: the leader stays a zombie, so the group id stays ours.
        while waitid(Id::Pid(group), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) == Err(Errno::EINTR) {}
        let _ = tx.send(Event::Exited);
    });
    let finishing = Arc::new(AtomicBool::new(false));
    let pump = {
        let finishing = finishing.clone();
        let reader = child.1.take().expect("the pipe's read end");
        let mut log = BoundedLog::new(log, args.max_log_bytes);
        std::thread::spawn(move || pump(reader, &mut log, &finishing))
    };

    if let Ok(Event::StdinClosed) = rx.recv() {
        let _ = killpg(group, Signal::SIGTERM);
        if !matches!(rx.recv_timeout(args.grace), Ok(Event::Exited)) {
            let _ = killpg(group, Signal::SIGKILL);
            while let Ok(Event::StdinClosed) = rx.recv() {}
        }
    }
    // The leader has exited and is not reaped yet: end the rest of its group.
    let _ = killpg(group, Signal::SIGKILL);
    let status = child.0.wait();
    kill_descendants();
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
    send(out, &report);
}

/// Starts the command in a new process group with its output on a pipe.
fn spawn(args: &Args) -> Result<(std::process::Child, Option<File>), Report> {
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
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(write2))
        // Its own group, so every process it starts can be ended with it.
        .process_group(0);
    let spawned = command.spawn();
    // Our copies of the write end must close, or the pipe never ends.
    drop(command);
    match spawned {
        Ok(child) => Ok((child, Some(File::from(read)))),
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
fn pump(reader: File, log: &mut BoundedLog, finishing: &AtomicBool) {
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
    let _ = log.flush();
}

/// Kills and reaps every remaining child of this process: processes of the
/// step that left its group were re-parented to us (we are a subreaper).
fn kill_descendants() {
    for _ in 0..100 {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Err(_) => return, // ECHILD: none left
            Ok(WaitStatus::StillAlive) => {
                for pid in children() {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                let _ = waitpid(Pid::from_raw(-1), None);
            }
            Ok(_) => {} // reaped one; look again
        }
    }
}

/// This process's children, from `/proc/self/task/*/children`.
fn children() -> Vec<Pid> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|s| s.parse().ok())
                    .map(Pid::from_raw),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let args = Args {
            log: "/d/log.txt".into(),
            max_log_bytes: 1024,
            grace: Duration::from_millis(1500),
            cwd: "/w".into(),
            arg0: "sh".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hi".into()],
        };
        let parsed = Args::parse(args.to_argv().into_iter()).unwrap();
        assert_eq!(parsed.to_argv(), args.to_argv());
        assert!(Args::parse(vec![OsString::from("/log")].into_iter()).is_err());
    }

    #[test]
    fn reports_are_one_json_line_each() {
        let mut out = Vec::new();
        send(&mut out, &Report::Started { pid: 7 });
        send(
            &mut out,
            &Report::Ended {
                code: Some(0),
                signal: None,
            },
        );
        let lines: Vec<Report> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0], Report::Started { pid: 7 });
        assert_eq!(
            lines[1],
            Report::Ended {
                code: Some(0),
                signal: None
            }
        );
    }
}
