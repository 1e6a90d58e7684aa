//! Command steps: a process in its own process group, with the
//! `STEPWISE_*` environment contract (SPEC 2.7), stdout and stderr captured
//! to one log per attempt, outputs read from `$STEPWISE_OUTPUTS`, and
//! SIGTERM-then-SIGKILL of the whole group on timeout or stop.

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
use tokio::{io::AsyncReadExt, process::Child};
use tokio_util::sync::CancellationToken;

use super::{artifacts_uri, StepContext};
use crate::{domain::definition::CommandArgs, engine::StepOutcome};

/// Largest log kept per attempt; the tail is kept, where errors are.
const MAX_LOG_BYTES: u64 = 1024 * 1024;

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
    Exited(std::process::ExitStatus),
    TimedOut,
    Stopped,
}

pub async fn run(ctx: &StepContext<'_>, args: &CommandArgs, stop: CancellationToken) -> (StepOutcome, Option<Vec<u8>>) {
    let step = ctx.step;
    let dirs = AttemptDirs::new(&ctx.config.data_dir, step.execution_id, &step.step_name, step.attempt);
    for dir in [&dirs.work, &dirs.artifacts] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            let message = format!("cannot create {}: {e}", dir.display());
            return (StepOutcome::failed("Step.SERVICE_FAULT", message), None);
        }
    }
    let log_file = match std::fs::File::create(&dirs.log) {
        Ok(f) => f,
        Err(e) => {
            let message = format!("cannot create the log file {}: {e}", dirs.log.display());
            return (StepOutcome::failed("Step.SERVICE_FAULT", message), None);
        }
    };

    let mut env: Vec<(String, String)> = ctx
        .config
        .worker
        .pass_through_env
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
        .collect();
    env.extend(args.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let child_path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let mut command = match (&args.command, &args.shell) {
        (Some(argv), _) if !argv.is_empty() => {
            let mut c = tokio::process::Command::new(program_path(&argv[0], child_path));
            c.arg0(&argv[0]).args(&argv[1..]);
            c
        }
        (_, Some(script)) => {
            let mut c = tokio::process::Command::new(program_path("sh", child_path));
            c.arg0("sh").arg("-c").arg(script);
            c
        }
        _ => return (StepOutcome::failed(super::INPUT_ERROR, "Command is empty"), None),
    };
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
    command.current_dir(
        args.working_directory
            .as_deref()
            .map(PathBuf::from)
            .unwrap_or(dirs.work.clone()),
    );
    let stderr = match log_file.try_clone() {
        Ok(f) => f,
        Err(e) => return (StepOutcome::failed("Step.SERVICE_FAULT", e.to_string()), None),
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(stderr))
        // Its own group, so timeout and stop end every process it started.
        .process_group(0)
        .kill_on_drop(true);

    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let what = args
                .command
                .as_ref()
                .map(|a| a[0].clone())
                .unwrap_or_else(|| "sh".into());
            let message = format!("could not start {what:?}: {e}");
            return (
                StepOutcome::failed("Step.SERVICE_FAULT", message),
                read_log(&dirs.log).await,
            );
        }
    };
    let timeout = args.timeout_seconds.map(Duration::from_secs);
    let ended = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => Ended::Exited(status),
            Err(e) => return (StepOutcome::failed("Step.SERVICE_FAULT", format!("waiting for the process failed: {e}")), None),
        },
        _ = sleep_or_forever(timeout) => Ended::TimedOut,
        _ = stop.cancelled() => Ended::Stopped,
    };
    let grace = Duration::from_secs(ctx.config.worker.kill_grace_seconds);
    let ended = match ended {
        Ended::Exited(status) => {
            // Whatever it left running in its group goes with it.
            signal_group(&child, Signal::SIGKILL);
            Ended::Exited(status)
        }
        other => {
            terminate(&mut child, grace).await;
            other
        }
    };
    let log = read_log(&dirs.log).await;
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
        Ended::Exited(status) => exit_outcome(status, &dirs, ctx.config.worker.max_outputs_bytes).await,
    };
    (outcome, log)
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

fn signal_group(child: &Child, signal: Signal) {
    if let Some(pid) = child.id() {
        // ESRCH (the group is already gone) is fine.
        let _ = killpg(Pid::from_raw(pid as i32), signal);
    }
}

/// SIGTERM to the group, SIGKILL after `grace`, then reap the child so no
/// zombie is left.
async fn terminate(child: &mut Child, grace: Duration) {
    signal_group(child, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal_group(child, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Children of the leader that ignored SIGTERM.
    if let Some(pid) = child.id() {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

async fn exit_outcome(status: std::process::ExitStatus, dirs: &AttemptDirs, max_outputs: u64) -> StepOutcome {
    use std::os::unix::process::ExitStatusExt;
    let exit_code = status.code();
    let command_failed = |message: String| StepOutcome::Failed {
        error_type: "Command.FAILED".into(),
        message,
        metadata: json!({ "command": { "exit_code": exit_code } }),
        exit_code,
        by_fail_step: false,
    };
    if !status.success() {
        let message = match (exit_code, status.signal()) {
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
        Ok(Value::Object(map)) => Ok(Value::Object(map)),
        Ok(other) => Err(format!(
            "$STEPWISE_OUTPUTS must hold a JSON object, got {}",
            crate::domain::type_name(&other)
        )),
        Err(e) => Err(format!("$STEPWISE_OUTPUTS is not valid JSON: {e}")),
    }
}

/// The captured log as the bytes the process wrote, keeping the last
/// `MAX_LOG_BYTES`.
pub async fn read_log(path: &Path) -> Option<Vec<u8>> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let len = file.metadata().await.ok()?.len();
    let mut buf = Vec::new();
    if len > MAX_LOG_BYTES {
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(len - MAX_LOG_BYTES)).await.ok()?;
    }
    file.read_to_end(&mut buf).await.ok()?;
    Some(buf)
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
