//! The HTTP server loop. `axum::serve` has no connection cap, no idle
//! timeout and waits for every connection on shutdown however long it lives,
//! so the API is served here with hyper's HTTP/1 connection directly:
//!
//! - at most `api.max_connections` connections are served at once: a
//!   connection is accepted only with a free slot, so beyond the cap clients
//!   wait in the listen backlog (the cap never fails open and never costs a
//!   file descriptor);
//! - a connection that sends no complete request head for
//!   `api.idle_timeout_seconds` is closed (hyper's header read timeout, which
//!   runs whenever a connection waits for a request: idle keep-alive
//!   connections and slow clients alike; a response being streamed is not
//!   affected);
//! - on shutdown the listener closes at once, idle connections close, the
//!   requests in flight get `api.shutdown_grace_seconds` to finish (event
//!   streams and long polls end by themselves as the shutdown token fires),
//!   then whatever is left is dropped.

use std::{io, sync::Arc, time::Duration};

use axum::{body::Body, extract::Request, Router};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::config::ApiConfig;

/// The bounds of the server loop, from `[api]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Limits {
    pub fn from_config(api: &ApiConfig) -> Limits {
        Limits {
            max_connections: api.max_connections,
            idle_timeout: Duration::from_secs(api.idle_timeout_seconds),
            shutdown_grace: Duration::from_secs(api.shutdown_grace_seconds),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then drains as the
/// module doc says. Returns once every connection has ended.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    // Fired when the grace period is over: connections still open are dropped.
    let hard_stop = CancellationToken::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let mut acceptor = Acceptor {
        listener,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        max: limits.max_connections,
        last_warning: None,
    };
    while let Some((stream, slot)) = acceptor.next(&shutdown).await {
        let service = router.clone();
        let builder = builder.clone();
        let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
        connections.spawn(async move {
            serve_connection(&builder, stream, service, &shutdown, &hard_stop).await;
            drop(slot);
        });
    }
    drop(acceptor);
    connections.close();
    let open = connections.len();
    if open > 0 {
        tracing::info!(
            connections = open,
            grace_seconds = limits.shutdown_grace.as_secs(),
            "draining connections"
        );
    }
    if tokio::time::timeout(limits.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "connections still open after the shutdown grace period; closing them"
        );
        hard_stop.cancel();
        connections.wait().await;
    }
}

/// Accepts connections while a slot is free.
struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    /// When the cap was last reported, so a flood logs once a minute.
    last_warning: Option<tokio::time::Instant>,
}

impl Acceptor {
    /// The next connection with the slot it holds, or None once `shutdown` fired.
    async fn next(&mut self, shutdown: &CancellationToken) -> Option<(TcpStream, OwnedSemaphorePermit)> {
        loop {
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    self.warn_full();
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        slot = self.slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    }
                }
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => return Some((stream, slot)),
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or similar: wait rather than spin.
                    tracing::error!(error = %e, "accepting a connection failed; retrying shortly");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    fn warn_full(&mut self) {
        let now = tokio::time::Instant::now();
        if self.last_warning.is_none_or(|at| now - at >= Duration::from_secs(60)) {
            self.last_warning = Some(now);
            tracing::warn!(
                max_connections = self.max,
                "connection limit reached (api.max_connections); new connections wait until one closes"
            );
        }
    }
}

/// Errors of one connection that says nothing about the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    builder: &hyper::server::conn::http1::Builder,
    stream: TcpStream,
    router: Router,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) {
    let service = router.map_request(|request: Request<Incoming>| request.map(Body::new));
    let service = TowerToHyperService::new(service);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            // Closes the connection now if it is idle, after the response
            // in flight otherwise.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                _ = hard_stop.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        // Clients that go away, idle time-outs and malformed requests: routine.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
