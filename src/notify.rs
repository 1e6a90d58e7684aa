//! One `LISTEN` connection per process, fanned out in-process: workers wake
//! on `stepwise_work`, stop requests arrive on `stepwise_stop`, and event
//! streams and long polls follow `stepwise_execution`, and log followers
//! `stepwise_log` (a running step's log reached the database). A notification can be
//! missed while the connection is re-established, so every consumer also
//! polls; notifications only make things prompt.

use std::time::Duration;

use sqlx::{postgres::PgListener, PgPool};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub const WORK: &str = "stepwise_work";
pub const STOP: &str = "stepwise_stop";
pub const EXECUTION: &str = "stepwise_execution";
/// Payload: the step run whose running log was written.
pub const LOG: &str = "stepwise_log";

#[derive(Debug, Clone)]
pub struct Notice {
    pub channel: String,
    pub payload: String,
}

#[derive(Clone)]
pub struct Notifier {
    sender: broadcast::Sender<Notice>,
}

impl Notifier {
    pub fn new() -> Notifier {
        let (sender, _) = broadcast::channel(4096);
        Notifier { sender }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
    }

    /// Wakes local subscribers without a round trip through PostgreSQL.
    pub fn publish_local(&self, channel: &str, payload: &str) {
        let _ = self.sender.send(Notice {
            channel: channel.to_string(),
            payload: payload.to_string(),
        });
    }

    /// Listens until `shutdown`, reconnecting after errors.
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.listen(&pool, &shutdown).await {
                tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    async fn listen(&self, pool: &PgPool, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen_all([WORK, STOP, EXECUTION, LOG]).await?;
        // Anything that happened while we were not listening: wake everyone.
        self.publish_local(WORK, "");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                received = listener.try_recv() => match received? {
                    Some(n) => self.publish_local(n.channel(), n.payload()),
                    None => {
                        // The connection dropped and was re-established.
                        self.publish_local(WORK, "");
                    }
                },
            }
        }
    }
}

/// Waits until a notice about `execution_id` arrives, or `limit` passes
/// (a missed notification then costs at most `limit`).
pub async fn execution_changed(notices: &mut broadcast::Receiver<Notice>, execution_id: uuid::Uuid, limit: Duration) {
    let id = execution_id.to_string();
    let wake = async {
        loop {
            match notices.recv().await {
                Ok(n) if n.channel == EXECUTION && n.payload == id => return,
                Ok(_) => continue,
                // Lagged or closed: look again rather than miss a change.
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(limit, wake).await;
}

/// Waits until a notice about step run `step_run_id` (its log written) or
/// its execution (the step ended) arrives, or `limit` passes.
pub async fn step_changed(
    notices: &mut broadcast::Receiver<Notice>,
    execution_id: uuid::Uuid,
    step_run_id: uuid::Uuid,
    limit: Duration,
) {
    let (execution, step) = (execution_id.to_string(), step_run_id.to_string());
    let wake = async {
        loop {
            match notices.recv().await {
                Ok(n) if n.channel == LOG && n.payload == step => return,
                Ok(n) if n.channel == EXECUTION && n.payload == execution => return,
                Ok(_) => continue,
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(limit, wake).await;
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new()
    }
}
