//! Periodic work every process does: rescue steps whose worker was lost
//! (expired lease), time out Callback steps, and end executions whose steps
//! have all ended but whose finish check was lost. Concurrent runs in
//! several processes are safe because every completion is fenced by attempt
//! and every finish is checked again under the execution's lock.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::engine;

pub async fn run(db: PgPool, every: Duration, shutdown: CancellationToken) {
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
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
