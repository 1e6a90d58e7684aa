//! Periodic work every process does: rescue steps whose worker was lost
//! (expired lease) and time out Callback steps. Concurrent runs in several
//! processes are safe because every completion is fenced by attempt.

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
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
