//! Command steps: a process in its own process group, with the
//! `STEPWISE_*` environment contract (SPEC 2.7), stdout and stderr captured
//! to one bounded log per attempt, outputs read from `$STEPWISE_OUTPUTS`, and
//! SIGTERM-then-SIGKILL of the whole group on timeout or stop.
//!
//! The process is started through the step supervisor (`stepwise supervise`,
//! see [`super::supervisor`]): it owns the process group, kills it when the
//! command ends (so background children do not outlive a successful step),
//! when the worker closes its stdin (stop, timeout) and when the worker dies,
//! and bounds the log file on disk.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio_util::sync::CancellationToken;

use super::{
    artifacts_uri,
    log::read_log_bounded,
    supervisor::{self, Report, SpawnError},
    StepContext,
};
use crate::{config::Config, domain::definition::CommandArgs, engine::StepOutcome};

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

type ReportLines = Lines<BufReader<tokio::process::ChildStdout>>;

pub async fn run(ctx: &StepContext<'_>, args: &CommandArgs, stop: CancellationToken) -> (StepOutcome, Option<Vec<u8>>) {
    let step = ctx.step;
    let worker = &ctx.config.worker;
    let dirs = AttemptDirs::new(&ctx.config.data_dir, step.execution_id, &step.step_name, step.attempt);
    for dir in [&dirs.work, &dirs.artifacts] {
        if let Err(e) = tokio::fs::create_dir_all(dir).await {
            let message = format!("cannot create {}: {e}", dir.display());
            return (StepOutcome::failed(SERVICE_FAULT, message), None);
        }
    }
    let mut command = match supervised_command(ctx, args, &dirs) {
        Ok(c) => c,
        Err(outcome) => return (outcome, None),
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = format!(
                "cannot start the step supervisor {}: {e}",
                supervisor_program(ctx.config)
            );
            return (StepOutcome::failed(SERVICE_FAULT, message), None);
        }
    };
    let stdin = child.stdin.take();
    let mut reports = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let program = display_program(args);
    let group = match next_report(&mut reports).await {
        Report::Started { pid } => Pid::from_raw(pid),
        other => {
            let _ = child.wait().await;
            let log = read_log_bounded(&dirs.log, worker.max_log_bytes).await;
            return (not_started(other, &program), log);
        }
    };
    let timeout = args.timeout_seconds.map(Duration::from_secs);
    let ended = tokio::select! {
        report = next_report(&mut reports) => ended_by(report),
        _ = sleep_or_forever(timeout) => Ended::TimedOut,
        _ = stop.cancelled() => Ended::Stopped,
    };
    if let Ended::Lost(message) = &ended {
        // The supervisor is gone (killed?): end the group it recorded, as a
        // last resort.
        tracing::warn!(step.name = %step.step_name, error = %message, "lost the step supervisor; killing the step's process group");
        let _ = killpg(group, Signal::SIGKILL);
    } else if !matches!(ended, Ended::Exited { .. }) {
        // Closing its stdin asks the supervisor to end the group: SIGTERM,
        // then SIGKILL after the grace period.
        drop(stdin);
        let grace = Duration::from_secs(worker.kill_grace_seconds);
        let last = tokio::time::timeout(grace + Duration::from_secs(10), next_report(&mut reports)).await;
        if last.is_err() {
            tracing::warn!(step.name = %step.step_name, "the step supervisor did not end the step in time; killing it");
            let _ = killpg(group, Signal::SIGKILL);
            let _ = child.start_kill();
        }
    }
    let _ = child.wait().await;
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
    (outcome, log)
}

/// The supervisor command that runs the step's program.
fn supervised_command(
    ctx: &StepContext<'_>,
    args: &CommandArgs,
    dirs: &AttemptDirs,
) -> Result<tokio::process::Command, StepOutcome> {
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
    let (arg0, program, rest): (&str, PathBuf, Vec<String>) = match (&args.command, &args.shell) {
        (Some(argv), _) if !argv.is_empty() => (&argv[0], program_path(&argv[0], child_path), argv[1..].to_vec()),
        (_, Some(script)) => ("sh", program_path("sh", child_path), vec!["-c".into(), script.clone()]),
        _ => return Err(StepOutcome::failed(super::INPUT_ERROR, "Command is empty")),
    };
    let supervised = supervisor::Args {
        log: dirs.log.clone(),
        max_log_bytes: ctx.config.worker.max_log_bytes,
        grace: Duration::from_secs(ctx.config.worker.kill_grace_seconds),
        cwd: args
            .working_directory
            .as_deref()
            .map(PathBuf::from)
            .unwrap_or(dirs.work.clone()),
        arg0: arg0.into(),
        program: program.into(),
        args: rest.into_iter().map(Into::into).collect(),
    };
    let mut command = tokio::process::Command::new(supervisor_program(ctx.config));
    command
        .arg0("stepwise")
        .arg(supervisor::SUBCOMMAND)
        .args(supervised.to_argv());
    // The supervisor passes its environment on to the command unchanged.
    command.env_clear();
    command.envs(env);
    command
        .env("STEPWISE_OUTPUTS", &dirs.outputs)
        .env("STEPWISE_ARTIFACTS", &dirs.artifacts)
        .env("STEPWISE_EXECUTION_ARN", ctx.execution_arn())
        .env("STEPWISE_EXECUTION_ID", step.execution_id.to_string())
        .env("STEPWISE_PIPELINE_NAME", &step.pipeline_name)
        .env("STEPWISE_STEP_NAME", &step.step_name)
        .env("STEPWISE_ATTEMPT", step.attempt.to_string());
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own group: a Ctrl-C meant for the worker does not reach it,
        // and it stays behind to end the step if the worker dies. Not
        // kill_on_drop: dropping it closes its stdin, which ends the step.
        .process_group(0);
    Ok(command)
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

async fn next_report(lines: &mut ReportLines) -> Report {
    match lines.next_line().await {
        Ok(Some(line)) => serde_json::from_str(&line).unwrap_or_else(|e| Report::Fault {
            message: format!("the step supervisor sent {line:?}: {e}"),
        }),
        Ok(None) => Report::Fault {
            message: "the step supervisor ended without a report".into(),
        },
        Err(e) => Report::Fault {
            message: format!("reading the step supervisor's report failed: {e}"),
        },
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
    StepOutcome::Succeeded {
        properties: json!({
            "Outputs": outputs,
            "ExitCode": exit_code.unwrap_or(0),
            "ArtifactsUri": artifacts_uri(&dirs.artifacts),
        }),
        metadata: json!({ "command": { "exit_code": exit_code } }),
        exit_code,
    }
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
        Err(e) => Err(format!("$STEPWISE_OUTPUTS is not valid JSON: {e}")),
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
