//! Retention (`retention.executions_days`), so that a long-running service
//! does not fill its disk: old ended executions that nothing uses any more
//! are removed from the database (step runs, attempts with their logs,
//! events) and then their directories under the data dir (scratch run
//! directories, logs, artifacts). Maintenance runs it every
//! `retention.interval_seconds`; tests call [`run`] directly.
//!
//! Files are removed only after the rows' transaction committed, so a crash
//! in between leaves directories without an execution: every run also
//! sweeps those ([`sweep_orphans`]), which covers a deleted pipeline's too.
//! Several processes may run all of this at once: the store hands each
//! execution to one of them, and a directory already gone is not an error.

use std::{io::ErrorKind, path::Path, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::{
    config::Config,
    domain::duration::ExpireAfter,
    store::{self, retention, StoreResult},
};

/// Executions removed per transaction, so no run holds locks for long.
const BATCH: i64 = 100;
/// Batches per run; what is left waits for the next run.
const BATCHES_PER_RUN: usize = 20;
/// Tombstones (which let a start say its source was removed) are kept this
/// many days, then removed too.
pub const TOMBSTONE_DAYS: i64 = 90;
/// Execution ids checked against the database at once by the sweep.
const SWEEP_CHUNK: usize = 500;
/// A cache entry is kept this long past the cap, so that a lookup that
/// judged it fresh a moment ago finds its artifacts, and its hit (which
/// then protects it) has time to be recorded.
const ENTRY_MARGIN: TimeDelta = TimeDelta::hours(1);
/// The data dir's per-execution trees (see `executor::command::AttemptDirs`).
const EXECUTION_TREES: [&str; 2] = ["runs", "artifacts"];

/// What a run applies.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// 0 keeps every execution (the orphan sweep still runs).
    pub executions_days: u32,
    /// `cache.max_expire_after`: entries younger than this are in use.
    pub max_expire_after: ExpireAfter,
}

impl Policy {
    pub fn from_config(config: &Config) -> Policy {
        Policy {
            executions_days: config.retention.executions_days,
            max_expire_after: config.cache.max_expire_after,
        }
    }
}

/// What a run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub executions: usize,
    /// Directories of removed executions (`runs/<id>`, `artifacts/<id>`).
    pub directories: usize,
    /// Directories of executions that no longer existed.
    pub orphan_directories: usize,
    pub tombstones: u64,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        *self == Report::default()
    }
}

/// One retention run at `now`: removes what `policy` allows, then the
/// orphan directories, and logs what it removed.
pub async fn run(pool: &sqlx::PgPool, data_dir: &Path, policy: Policy, now: DateTime<Utc>) -> StoreResult<Report> {
    let mut report = Report::default();
    if let Some(ended_before) = cut_off(policy.executions_days, now) {
        let entries_since = policy.max_expire_after.earliest_valid(now) - ENTRY_MARGIN;
        for _ in 0..BATCHES_PER_RUN {
            let removed = super::retrying(|| {
                retention::remove_batch(pool, ended_before, entries_since, policy.executions_days, BATCH)
            })
            .await?;
            report.executions += removed.len();
            report.directories += remove_execution_dirs(data_dir, &removed).await;
            if (removed.len() as i64) < BATCH {
                break;
            }
        }
    }
    report.orphan_directories = sweep_orphans(pool, data_dir).await?;
    report.tombstones = retention::prune_tombstones(pool, now - TimeDelta::days(TOMBSTONE_DAYS), 10_000).await?;
    if !report.is_empty() {
        tracing::info!(
            executions = report.executions,
            directories = report.directories,
            orphan_directories = report.orphan_directories,
            tombstones = report.tombstones,
            retention.executions_days = policy.executions_days,
            "retention removed old executions and their files"
        );
    }
    Ok(report)
}

/// The end time before which executions are removed; none keeps all.
fn cut_off(days: u32, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if days == 0 {
        return None;
    }
    now.checked_sub_signed(TimeDelta::try_days(i64::from(days))?)
}

/// Removes the directories of executions `ids` (already deleted from the
/// database). Returns how many it removed; a failure is logged, and the
/// sweep tries again on the next run.
pub async fn remove_execution_dirs(data_dir: &Path, ids: &[Uuid]) -> usize {
    let mut removed = 0;
    for id in ids {
        for tree in EXECUTION_TREES {
            if remove_dir(&data_dir.join(tree).join(id.to_string())).await {
                removed += 1;
            }
        }
    }
    removed
}

/// Removes a directory tree; true when it existed and is gone.
async fn remove_dir(dir: &Path) -> bool {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(directory = %dir.display(), error = %e, "could not remove an execution's directory");
            false
        }
    }
}

/// Removes `runs/<id>` and `artifacts/<id>` directories whose execution no
/// longer exists (its pipeline was deleted, or a crash came between a
/// removal's commit and its files). Names that are not execution ids are
/// left alone. A directory is created only for an execution that exists,
/// so one whose id is unknown is never about to be used.
pub async fn sweep_orphans(pool: &sqlx::PgPool, data_dir: &Path) -> StoreResult<usize> {
    let mut removed = 0;
    for tree in EXECUTION_TREES {
        let root = data_dir.join(tree);
        let mut entries = match tokio::fs::read_dir(&root).await {
            Ok(entries) => entries,
            Err(e) => {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(directory = %root.display(), error = %e, "could not list the data directory");
                }
                continue;
            }
        };
        let mut chunk = Vec::with_capacity(SWEEP_CHUNK);
        loop {
            let next = match entries.next_entry().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(directory = %root.display(), error = %e, "could not list the data directory");
                    None
                }
            };
            let done = next.is_none();
            if let Some(id) = next.and_then(|e| e.file_name().to_str().and_then(|n| Uuid::parse_str(n).ok())) {
                chunk.push(id);
            }
            if chunk.len() == SWEEP_CHUNK || (done && !chunk.is_empty()) {
                let existing = store::retention::existing(pool, &chunk).await?;
                for id in chunk.drain(..).filter(|id| !existing.contains(id)) {
                    if remove_dir(&root.join(id.to_string())).await {
                        removed += 1;
                    }
                }
            }
            if done {
                break;
            }
        }
    }
    Ok(removed)
}

/// Deletes a pipeline (see `store::pipelines::delete`), then the files of
/// its executions.
pub async fn delete_pipeline(pool: &sqlx::PgPool, data_dir: &Path, name: &str) -> StoreResult<()> {
    let executions = store::pipelines::delete(pool, name).await?;
    let directories = remove_execution_dirs(data_dir, &executions).await;
    tracing::info!(
        pipeline = %name,
        executions = executions.len(),
        directories,
        "deleted a pipeline and its executions' files"
    );
    Ok(())
}

/// The interval between two runs of maintenance's retention.
pub fn interval(config: &Config) -> Duration {
    Duration::from_secs(config.retention.interval_seconds)
}
