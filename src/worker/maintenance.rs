//! Periodic work every process does: rescue steps whose worker was lost
//! (expired lease), time out Callback steps, and end executions whose steps
//! have all ended but whose finish check was lost. Concurrent runs in
//! several processes are safe because every completion is fenced by attempt
//! and every finish is checked again under the execution's lock. Every
//! `retention.interval_seconds` (and once at start) it runs retention,
//! which is safe to run in several processes at once too.

use std::{path::PathBuf, time::Duration};

use chrono::Utc;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::{self, retention};

/// What maintenance needs for retention.
pub struct RetentionTask {
    pub data_dir: PathBuf,
    pub policy: retention::Policy,
    pub every: Duration,
}

pub async fn run(db: PgPool, every: Duration, retention: RetentionTask, shutdown: CancellationToken) {
    let mut next_retention = Instant::now();
    loop {
        if let Err(e) = engine::rescue_expired_leases(&db).await {
            tracing::warn!(error = %e, "rescuing expired leases failed");
        }
        if let Err(e) = engine::expire_callbacks(&db).await {
            tracing::warn!(error = %e, "expiring callbacks failed");
        }
        match engine::repair_open_executions(&db).await {
            Ok(0) => {}
            Ok(repaired) => tracing::warn!(repaired, "ended executions left open by a lost finish check"),
            Err(e) => tracing::warn!(error = %e, "repairing open executions failed"),
        }
        if Instant::now() >= next_retention {
            // Logs what it removed.
            if let Err(e) = retention::run(&db, &retention.data_dir, retention.policy, Utc::now()).await {
                tracing::warn!(error = %e, "retention failed");
            }
            next_retention = Instant::now() + retention.every;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
