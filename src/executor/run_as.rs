//! `worker.run_as_user`: command steps run as another user, with its
//! primary group and no supplementary groups, so they cannot read the
//! service's files nor `/proc/<pid>/environ` of stepwise processes. The
//! step supervisor switches users when it starts a command, which needs
//! CAP_SETUID and CAP_SETGID in the supervisor only (root, or file
//! capabilities on `worker.supervisor_program`); [`check`] proves at start
//! that it holds them, by asking the supervisor program itself.
//!
//! The attempt's working directory and artifacts directory are given to
//! the user, and its outputs file is created for it; the attempt directory
//! holding the log stays the service's, so a step cannot swap the log or
//! the outputs file for a link to a file only the service may read.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use nix::unistd::{chown, Gid, Uid, User};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Who a command runs as.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepUser {
    pub uid: u32,
    pub gid: u32,
}

/// The argument of `stepwise supervise` that only checks the capabilities.
pub const CHECK_ARG: &str = "check-run-as-user";

/// The user `worker.run_as_user` names (a name or a numeric uid), `None`
/// when it is empty.
pub fn resolve(name: &str) -> Result<Option<StepUser>, String> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(None);
    }
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    match found {
        Ok(Some(user)) => Ok(Some(StepUser {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        Ok(None) => Err(format!("worker.run_as_user: there is no user {name:?} on this machine")),
        Err(e) => Err(format!("worker.run_as_user: cannot look up the user {name:?}: {e}")),
    }
}

/// At start, when `worker.run_as_user` is set and this process runs steps:
/// the user exists, can reach the data directory, and the supervisor
/// program can switch to it.
pub async fn check(config: &Config) -> anyhow::Result<()> {
    if config.worker.concurrency == 0 {
        return Ok(());
    }
    let Some(user) = resolve(&config.worker.run_as_user).map_err(anyhow::Error::msg)? else {
        return Ok(());
    };
    searchable(&config.data_dir, user).map_err(|e| anyhow::anyhow!("worker.run_as_user: {e}"))?;
    let program = super::command::supervisor_program(config);
    let output = tokio::process::Command::new(&program)
        .arg0("stepwise")
        .args([super::supervisor::SUBCOMMAND, CHECK_ARG])
        .env_clear()
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .map_err(|_| anyhow::anyhow!("worker.run_as_user: the step supervisor {program} did not answer in 30s"))?
        .map_err(|e| anyhow::anyhow!("worker.run_as_user: cannot start the step supervisor {program}: {e}"))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!("worker.run_as_user: {}", said.trim());
    }
    Ok(())
}

/// Run in the supervisor (`stepwise supervise check-run-as-user`): whether
/// this process may switch users. Returns the process exit code.
pub fn check_capabilities() -> i32 {
    // CAP_SETGID is bit 6, CAP_SETUID bit 7 of the effective set.
    const NEEDED: u64 = (1 << 6) | (1 << 7);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if effective & NEEDED == NEEDED {
        return 0;
    }
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    eprintln!(
        "the step supervisor ({exe}, uid {}) cannot switch users: it needs CAP_SETUID and CAP_SETGID; run \
         stepwise as root, or give worker.supervisor_program those file capabilities \
         (setcap cap_setuid,cap_setgid+ep), or leave worker.run_as_user empty",
        Uid::effective()
    );
    1
}

/// Whether every directory down to `dir` lets `user` through (its owner,
/// group or other search bit; supplementary groups are dropped).
fn searchable(dir: &Path, user: StepUser) -> Result<(), String> {
    let mut path = PathBuf::new();
    for part in dir.components() {
        path.push(part);
        let meta = std::fs::metadata(&path).map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
        let mode = meta.mode();
        let bit = if meta.uid() == user.uid {
            0o100
        } else if meta.gid() == user.gid {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Err(format!(
                "uid {} cannot reach the data directory {}: {} is not searchable by it \
                 (chmod o+x, or give it to that user's group)",
                user.uid,
                dir.display(),
                path.display()
            ));
        }
    }
    Ok(())
}

/// Gives the step user what it writes: the working and artifacts
/// directories, and an empty outputs file.
pub fn prepare(user: StepUser, work: &Path, artifacts: &Path, outputs: &Path) -> Result<(), String> {
    let owner = (Some(Uid::from_raw(user.uid)), Some(Gid::from_raw(user.gid)));
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(outputs)
        .map_err(|e| format!("cannot create {}: {e}", outputs.display()))?;
    for path in [work, artifacts, outputs] {
        chown(path, owner.0, owner.1)
            .map_err(|e| format!("cannot give {} to uid {}: {e}", path.display(), user.uid))?;
    }
    Ok(())
}
