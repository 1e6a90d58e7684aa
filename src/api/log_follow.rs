//! `GET /v1/executions/{execution}/steps/{step}/logs?follow=true`: an
//! attempt's log streamed as it reaches the database (workers write a
//! running attempt's log there about once a second, see
//! `executor::log::ship_while_running`), so any API process can serve it
//! whichever machine runs the step.
//!
//! Bounded: the stream ends when the attempt has ended and its last bytes
//! were sent, after `api.max_wait_seconds` (the client asks again with
//! `offset`), or when the server shuts down. Between reads it holds no
//! database connection and waits for the log's notification (or the
//! step's end), with a slow fallback poll for a missed one.

use std::{convert::Infallible, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::header,
    response::{IntoResponse, Response},
};
use futures::stream;
use tokio::{sync::broadcast, time::Instant};
use uuid::Uuid;

use super::AppState;
use crate::{
    executor::log::end_of_marker,
    notify::{self, Notice},
    store,
};

/// The longest wait for a notification before reading again anyway.
const FALLBACK_POLL: Duration = Duration::from_secs(5);
/// How much of what was sent is remembered to find the place again in a
/// log that was rewritten (a bounded log keeps its head and latest tail).
const TAIL_KEPT: usize = 256;

/// What to follow.
pub struct Follow {
    pub execution_id: Uuid,
    pub step_run_id: Uuid,
    pub step: String,
    /// A given attempt; by default the latest, or the next one when the
    /// step waits to start (not started yet, or queued for a retry).
    pub attempt: Option<i32>,
    /// Bytes the client already has.
    pub offset: u64,
}

struct Following {
    state: AppState,
    follow: Follow,
    notices: broadcast::Receiver<Notice>,
    deadline: Instant,
    sent: usize,
    tail: Vec<u8>,
    done: bool,
}

/// The streaming response.
pub fn stream(state: AppState, follow: Follow) -> Response {
    let deadline = Instant::now() + Duration::from_secs(state.config.api.max_wait_seconds.max(1));
    let following = Following {
        notices: state.notifier.subscribe(),
        sent: usize::try_from(follow.offset).unwrap_or(usize::MAX),
        state,
        follow,
        deadline,
        tail: Vec::new(),
        done: false,
    };
    let body = stream::unfold(following, |mut f| async move {
        let chunk = f.next_chunk().await?;
        Some((Ok::<_, Infallible>(Bytes::from(chunk)), f))
    });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}

impl Following {
    /// The next bytes to send; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.done || Instant::now() >= self.deadline || self.state.stopping.is_cancelled() {
                return None;
            }
            let attempt = match self.follow.attempt {
                Some(attempt) => attempt,
                None => {
                    let row = store::steps::get_by_name(&self.state.db, self.follow.execution_id, &self.follow.step)
                        .await
                        .ok()?;
                    if matches!(row.status.as_str(), "Pending" | "Starting") {
                        // Not started yet, or queued for a retry: wait for
                        // the attempt to come.
                        self.wait().await;
                        continue;
                    } else if row.attempt >= 1 {
                        self.follow.attempt = Some(row.attempt);
                        row.attempt
                    } else {
                        return None;
                    }
                }
            };
            let (log, ended) =
                match store::steps::attempt_log_state(&self.state.db, self.follow.step_run_id, attempt).await {
                    Ok(Some(state)) => state,
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading a followed log failed; ending the stream");
                        return None;
                    }
                };
            self.done = ended;
            let new = self.take_new(&log.unwrap_or_default());
            if !new.is_empty() {
                return Some(new);
            }
            if ended {
                return None;
            }
            self.wait().await;
        }
    }

    async fn wait(&mut self) {
        let stopping = self.state.stopping.clone();
        let deadline = self.deadline;
        tokio::select! {
            _ = stopping.cancelled() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = notify::step_changed(&mut self.notices, self.follow.execution_id, self.follow.step_run_id, FALLBACK_POLL) => {}
        }
    }

    /// What `log` holds beyond what was sent.
    fn take_new(&mut self, log: &[u8]) -> Vec<u8> {
        let new = new_bytes(log, self.sent, &self.tail);
        if let Some(new) = &new {
            self.sent = log.len();
            self.tail = log[log.len().saturating_sub(TAIL_KEPT)..].to_vec();
            return new.clone();
        }
        Vec::new()
    }
}

/// The bytes of `log` after the `sent` already sent (whose last bytes were
/// `tail`), or `None` when it has nothing new. A bounded log that was
/// rewritten (its middle left out) no longer holds what was sent at the
/// same place: the new bytes are those after `tail` if it is still there,
/// else a note and everything after the log's marker.
fn new_bytes(log: &[u8], sent: usize, tail: &[u8]) -> Option<Vec<u8>> {
    if log.len() >= sent && log[..sent].ends_with(tail) {
        return (log.len() > sent).then(|| log[sent..].to_vec());
    }
    if !tail.is_empty() {
        if let Some(at) = log.windows(tail.len()).rposition(|w| w == tail) {
            let rest = &log[at + tail.len()..];
            return (!rest.is_empty()).then(|| rest.to_vec());
        }
    }
    if log.len() < sent && tail.is_empty() && end_of_marker(log).is_none() {
        // A reconnect with an offset beyond what is stored: nothing yet.
        return None;
    }
    let after = end_of_marker(log).unwrap_or(0);
    let mut out =
        b"\n[... part of the log was left out while following (it outgrew worker.max_log_bytes) ...]\n".to_vec();
    out.extend_from_slice(&log[after..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::log::marker;

    #[test]
    fn new_bytes_follow_growth_and_rewrites() {
        assert_eq!(new_bytes(b"abc", 0, b""), Some(b"abc".to_vec()));
        assert_eq!(new_bytes(b"abc", 3, b"abc"), None);
        assert_eq!(new_bytes(b"abcdef", 3, b"abc"), Some(b"def".to_vec()));
        // Rewritten: head, marker, tail still holding what was last sent.
        let rewritten = [b"ab".as_slice(), marker(10).as_bytes(), b"xyzdefghi"].concat();
        assert_eq!(new_bytes(&rewritten, 6, b"def"), Some(b"ghi".to_vec()));
        // Rewritten past what was sent: a note, then everything after the marker.
        let far = [b"ab".as_slice(), marker(99).as_bytes(), b"uvw"].concat();
        let out = new_bytes(&far, 6, b"def").unwrap();
        assert!(out.ends_with(b"left out while following (it outgrew worker.max_log_bytes) ...]\nuvw"));
        // A reconnect from an offset the stored log has not reached yet.
        assert_eq!(new_bytes(b"ab", 5, b""), None);
    }
}
