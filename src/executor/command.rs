//! Command steps: a process in its own process group, with the
//! `STEPWISE_*` environment contract (SPEC 2.7), stdout and stderr captured
//! to one bounded log per attempt, outputs read from `$STEPWISE_OUTPUTS`, and
//! SIGTERM-then-SIGKILL of the whole group on timeout or stop.
//!
//! The process is started by the worker pool's step supervisor
//! (`stepwise supervise`, see [`super::supervisor`]): it owns the process
//! group, kills it when the command ends (so background children do not
//! outlive a successful step), on stop and timeout, and when the worker
//! dies, and bounds the log file on disk.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{
    artifacts_uri,
    log::read_log_bounded,
    supervisor::{Report, Spawn, SpawnError},
    StepContext,
};
use crate::{config::Config, domain::definition::CommandArgs, domain::outcome::StepOutcome};

pub use super::log::read_log;

const SERVICE_FAULT: &str = "Step.SERVICE_FAULT";

/// The files and directories of one attempt under the data dir.
pub struct AttemptDirs {
    pub run: PathBuf,
    pub work: PathBuf,
    pub outputs: PathBuf,
    pub log: PathBuf,
    pub artifacts: PathBuf,
}

impl AttemptDirs {
    pub fn new(data_dir: &Path, execution_id: uuid::Uuid, step: &str, attempt: i32) -> AttemptDirs {
        let run = data_dir
            .join("runs")
            .join(execution_id.to_string())
            .join(step)
            .join(format!("attempt-{attempt}"));
        AttemptDirs {
            work: run.join("work"),
            outputs: run.join("outputs.json"),
            log: run.join("log.txt"),
            artifacts: data_dir
                .join("artifacts")
                .join(execution_id.to_string())
                .join(step)
                .join(format!("attempt-{attempt}")),
            run,
        }
    }
}

enum Ended {
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The supervisor failed or went away without saying how the command ended.
    Lost(String),
    TimedOut,
    Stopped,
}

/// Runs the command; `mask` are the secret values the step received, which
/// the supervisor replaces by `***` in the log.
pub async fn run(
    ctx: &StepContext<'_>,
    args: &CommandArgs,
    mask: Vec<String>,
    stop: CancellationToken,
) -> (StepOutcome, Option<Vec<u8>>) {
    let step = ctx.step;
    let worker = &ctx.config.worker;
    let dirs = AttemptDirs::new(&ctx.config.data_dir, step.execution_id, &step.step_name, step.attempt);
    for dir in [&dirs.work, &dirs.artifacts] {
        if let Err(e) = tokio::fs::create_dir_all(dir).await {
            let message = format!("cannot create {}: {e}", dir.display());
            return (StepOutcome::failed(SERVICE_FAULT, message), None);
        }
    }
    let prepared = ctx.supervisor.step_user().and_then(|user| match user {
        Some(user) => super::run_as::prepare(user, &dirs.work, &dirs.artifacts, &dirs.outputs),
        None => Ok(()),
    });
    if let Err(message) = prepared {
        return (StepOutcome::failed(SERVICE_FAULT, message), None);
    }
    let request = match spawn_request(ctx, args, &dirs, mask) {
        Ok(r) => r,
        Err(outcome) => return (outcome, None),
    };
    let mut supervised = match ctx.supervisor.spawn(request).await {
        Ok(s) => s,
        Err(message) => return (StepOutcome::failed(SERVICE_FAULT, message), None),
    };
    let program = display_program(args);
    let group = match supervised.next_report().await {
        Report::Started { pid } => Pid::from_raw(pid),
        other => {
            let log = read_log_bounded(&dirs.log, worker.max_log_bytes).await;
            return (not_started(other, &program), log);
        }
    };
    let timeout = args.timeout_seconds.map(Duration::from_secs);
    let ship = super::log::ship_while_running(ctx.db, step.id, step.attempt, &dirs.log, worker.max_log_bytes);
    let ended = tokio::select! {
        report = supervised.next_report() => ended_by(report),
        _ = sleep_or_forever(timeout) => Ended::TimedOut,
        _ = stop.cancelled() => Ended::Stopped,
        // The log's shipping ends only when the attempt has already ended.
        _ = async { ship.await; std::future::pending::<()>().await } => unreachable!("pending never completes"),
    };
    if let Ended::Lost(message) = &ended {
        // The supervisor is gone (killed?): end the group it recorded, as a
        // last resort.
        tracing::warn!(step.name = %step.step_name, error = %message, "lost the step supervisor; killing the step's process group");
        let _ = killpg(group, Signal::SIGKILL);
    } else if !matches!(ended, Ended::Exited { .. }) {
        // SIGTERM to the group, SIGKILL after the grace period.
        supervised.stop();
        let grace = Duration::from_secs(worker.kill_grace_seconds);
        let last = tokio::time::timeout(grace + Duration::from_secs(10), supervised.next_report()).await;
        if last.is_err() {
            tracing::warn!(step.name = %step.step_name, "the step supervisor did not end the step in time; killing its group");
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
    let log = read_log_bounded(&dirs.log, worker.max_log_bytes).await;
    let outcome = match ended {
        Ended::TimedOut => StepOutcome::Failed {
            error_type: "Command.TIMEOUT".into(),
            message: format!(
                "the command ran longer than TimeoutSeconds ({}s) and was ended",
                args.timeout_seconds.unwrap_or(0)
            ),
            metadata: json!({}),
            exit_code: None,
            by_fail_step: false,
        },
        Ended::Stopped => StepOutcome::Stopped {
            message: "the execution was stopped; the process group was ended".into(),
        },
        Ended::Lost(message) => StepOutcome::failed(SERVICE_FAULT, message),
        Ended::Exited { code, signal } => exit_outcome(code, signal, &dirs, worker.max_outputs_bytes).await,
    };
    // The outputs file may hold a secret's value: it goes with the scratch,
    // off the path of the step's report.
    remove_scratch(dirs);
    (outcome, log)
}

/// Once the process group has ended, its scratch working directory and its
/// outputs file have served their purpose (outputs are read, artifacts live
/// elsewhere): removing them now keeps a step that fills its working
/// directory from growing the disk with every run. The log file stays (the
/// API reads it when the database has no log for the attempt) until
/// retention removes the execution. It runs in the background: the step's
/// report does not wait for it (a process that dies first leaves the scratch
/// for retention).
fn remove_scratch(dirs: AttemptDirs) {
    tokio::task::spawn_blocking(move || {
        for result in [std::fs::remove_dir_all(&dirs.work), std::fs::remove_file(&dirs.outputs)] {
            match result {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(directory = %dirs.run.display(), error = %e, "could not remove a step's scratch files");
                }
                _ => {}
            }
        }
    });
}

/// What the supervisor is asked to run: the program found on the child's
/// PATH, the `STEPWISE_*` contract in its environment.
fn spawn_request(
    ctx: &StepContext<'_>,
    args: &CommandArgs,
    dirs: &AttemptDirs,
    mask: Vec<String>,
) -> Result<Spawn, StepOutcome> {
    let step = ctx.step;
    let mut env: Vec<(String, String)> = ctx
        .config
        .worker
        .pass_through_env
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
        .collect();
    env.extend(args.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let child_path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let (arg0, program, rest) = match (&args.command, &args.shell) {
        (Some(argv), _) if !argv.is_empty() => {
            (argv[0].clone(), program_path(&argv[0], child_path), argv[1..].to_vec())
        }
        (_, Some(script)) => (
            "sh".to_string(),
            program_path("sh", child_path),
            vec!["-c".into(), script.clone()],
        ),
        _ => return Err(StepOutcome::failed(super::INPUT_ERROR, "Command is empty")),
    };
    let path = |p: &Path| p.display().to_string();
    env.extend([
        ("STEPWISE_OUTPUTS".to_string(), path(&dirs.outputs)),
        ("STEPWISE_ARTIFACTS".to_string(), path(&dirs.artifacts)),
        ("STEPWISE_EXECUTION_ARN".to_string(), ctx.execution_arn()),
        ("STEPWISE_EXECUTION_ID".to_string(), step.execution_id.to_string()),
        ("STEPWISE_PIPELINE_NAME".to_string(), step.pipeline_name.clone()),
        ("STEPWISE_STEP_NAME".to_string(), step.step_name.clone()),
        ("STEPWISE_ATTEMPT".to_string(), step.attempt.to_string()),
    ]);
    Ok(Spawn {
        id: 0,
        log: dirs.log.clone(),
        max_log_bytes: ctx.config.worker.max_log_bytes,
        grace_ms: ctx.config.worker.kill_grace_seconds * 1000,
        cwd: args
            .working_directory
            .as_deref()
            .map(PathBuf::from)
            .unwrap_or(dirs.work.clone()),
        arg0,
        program,
        args: rest,
        env,
        mask,
        // Set by the supervisor handle, which knows worker.run_as_user.
        user: None,
    })
}

/// The program that supervises steps: `worker.supervisor_program`, or this
/// very binary (by `/proc/self/exe`, which still works after an upgrade
/// replaced the file).
pub fn supervisor_program(config: &Config) -> String {
    match config.worker.supervisor_program.as_str() {
        "" => "/proc/self/exe".to_string(),
        path => path.to_string(),
    }
}

fn ended_by(report: Report) -> Ended {
    match report {
        Report::Ended { code, signal } => Ended::Exited { code, signal },
        Report::Fault { message } => Ended::Lost(message),
        other => Ended::Lost(format!("the step supervisor sent {other:?} after starting the command")),
    }
}

fn display_program(args: &CommandArgs) -> String {
    match &args.command {
        Some(argv) if !argv.is_empty() => argv[0].clone(),
        _ => "sh".into(),
    }
}

/// The outcome of a command that could not be started. A program that is
/// missing, not executable or not a program, and a missing working
/// directory, are the step's own errors (`Command.FAILED`, retried only if
/// its policy says so); anything else (EAGAIN, ENOMEM, a broken supervisor)
/// is the service's.
fn not_started(report: Report, program: &str) -> StepOutcome {
    let (kind, message) = match report {
        Report::SpawnFailed { kind, message } => (kind, message),
        Report::Fault { message } => return StepOutcome::failed(SERVICE_FAULT, message),
        other => {
            let message = format!("the step supervisor sent {other:?} before starting the command");
            return StepOutcome::failed(SERVICE_FAULT, message);
        }
    };
    let failed = |message: String| StepOutcome::Failed {
        error_type: "Command.FAILED".into(),
        message,
        metadata: json!({ "command": { "exit_code": null } }),
        exit_code: None,
        by_fail_step: false,
    };
    match kind {
        SpawnError::NotFound => failed(format!("program not found: {program}")),
        SpawnError::PermissionDenied => failed(format!("permission denied: cannot execute {program}")),
        SpawnError::NotExecutable => failed(format!("cannot execute {program}: {message}")),
        SpawnError::WorkingDirectory => failed(message),
        SpawnError::Other => StepOutcome::failed(SERVICE_FAULT, format!("could not start {program:?}: {message}")),
    }
}

/// The program to spawn: a bare name is looked up on the PATH the child
/// will have, as `execvp` in the child would. Spawning by path lets the
/// standard library use `posix_spawn` (a vfork) instead of `fork`, whose
/// page-table copy grows with this process's memory and cost milliseconds
/// per step; a bare name with a changed environment always forks. A name
/// not found stays bare, so the spawn reports the error as before.
fn program_path(program: &str, child_path: Option<&str>) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    // execvp's search path when PATH is unset.
    let search = child_path.unwrap_or("/bin:/usr/bin");
    which::which_in(program, Some(search), "/").unwrap_or_else(|_| PathBuf::from(program))
}

async fn sleep_or_forever(timeout: Option<Duration>) {
    match timeout {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn exit_outcome(
    exit_code: Option<i32>,
    signal: Option<i32>,
    dirs: &AttemptDirs,
    max_outputs: u64,
) -> StepOutcome {
    let command_failed = |message: String| StepOutcome::Failed {
        error_type: "Command.FAILED".into(),
        message,
        metadata: json!({ "command": { "exit_code": exit_code } }),
        exit_code,
        by_fail_step: false,
    };
    if exit_code != Some(0) {
        let message = match (exit_code, signal) {
            (Some(code), _) => format!("the command exited with code {code}"),
            (None, Some(signal)) => format!("the command was killed by signal {signal}"),
            _ => "the command failed".to_string(),
        };
        return command_failed(message);
    }
    let outputs = match read_outputs(&dirs.outputs, max_outputs).await {
        Ok(v) => v,
        Err(message) => return command_failed(message),
    };
    let artifact_entries = count_entries(&dirs.artifacts, ARTIFACT_ENTRIES_COUNTED).await;
    StepOutcome::Succeeded {
        properties: json!({
            "Outputs": outputs,
            "ExitCode": exit_code.unwrap_or(0),
            "ArtifactsUri": artifacts_uri(&dirs.artifacts),
        }),
        // The count lets a later cache hit tell an artifacts directory the
        // step left empty from one emptied since (`cache::missing_artifacts`).
        metadata: json!({ "command": { "exit_code": exit_code, "artifact_entries": artifact_entries } }),
        exit_code,
        key: None,
    }
}

use crate::content::artifacts::ARTIFACT_ENTRIES_COUNTED;

/// The number of entries directly in `dir`, up to `cap` (0 if unreadable).
async fn count_entries(dir: &Path, cap: usize) -> usize {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return 0;
    };
    let mut count = 0;
    while count < cap {
        match entries.next_entry().await {
            Ok(Some(_)) => count += 1,
            _ => break,
        }
    }
    count
}

/// The JSON object in `$STEPWISE_OUTPUTS`, `{}` when the file was not written.
async fn read_outputs(path: &Path, max_bytes: u64) -> Result<Value, String> {
    let metadata = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(json!({})),
        Err(e) => return Err(format!("cannot read $STEPWISE_OUTPUTS: {e}")),
    };
    if !metadata.is_file() {
        // A FIFO or a device would block or never end.
        return Err("$STEPWISE_OUTPUTS must be a regular file".into());
    }
    if metadata.len() > max_bytes {
        return Err(format!(
            "$STEPWISE_OUTPUTS holds {} bytes, more than the limit of {max_bytes} (worker.max_outputs_bytes)",
            metadata.len()
        ));
    }
    let text = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read $STEPWISE_OUTPUTS: {e}"))?;
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(&text) {
        Ok(Value::Object(map)) => {
            let outputs = Value::Object(map);
            match super::nul_at(&outputs) {
                // PostgreSQL's jsonb cannot hold U+0000: refuse it here, as
                // the step's own error, rather than fail to store it.
                Some(at) => Err(format!(
                    "$STEPWISE_OUTPUTS holds a NUL character (\\u0000) in {at}, which cannot be stored; \
                     encode binary data (base64) or write it to $STEPWISE_ARTIFACTS"
                )),
                None => Ok(outputs),
            }
        }
        Ok(other) => Err(format!(
            "$STEPWISE_OUTPUTS must hold a JSON object, got {}",
            crate::domain::type_name(&other)
        )),
        Err(e) => Err(format!(
            "$STEPWISE_OUTPUTS is not valid JSON: {}",
            crate::domain::json_syntax_error(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::program_path;

    #[test]
    fn a_bare_name_is_found_on_the_childs_path_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("stepwise-test-tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let child_path = format!("/nonexistent:{}", dir.path().display());
        assert_eq!(program_path("stepwise-test-tool", Some(&child_path)), tool);
        // Not on our PATH, and not found without the child's.
        assert_eq!(
            program_path("stepwise-test-tool", None),
            std::path::PathBuf::from("stepwise-test-tool")
        );
    }

    #[test]
    fn paths_stay_as_given_and_unset_path_searches_bin() {
        assert_eq!(
            program_path("./run.sh", Some("/usr/bin")),
            std::path::PathBuf::from("./run.sh")
        );
        assert_eq!(program_path("/bin/echo", None), std::path::PathBuf::from("/bin/echo"));
        let sh = program_path("sh", None);
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
    }
}
