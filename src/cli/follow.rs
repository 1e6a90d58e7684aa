//! Following from the command line: an execution's events (steps as they
//! start, reuse and cache hits, failures with their reason), step logs as
//! they are written, and long polls repeated until an execution ends.

use std::{
    collections::BTreeSet,
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::{header, Method};
use serde_json::Value;
use tokio::task::JoinSet;

use super::{Client, ClientError, Output};

/// Silence longer than this prints a progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// One long poll's `wait_seconds`.
const POLL_ROUND_SECONDS: u64 = 60;
/// How long the last log lines are waited for once the execution ended.
const LOG_DRAIN: Duration = Duration::from_secs(30);
/// Logs followed at once by `run --logs` (one connection each); the others
/// wait their turn and then read what was written.
const MAX_LOG_FOLLOWERS: usize = 16;
/// The longest one log-following request may take.
const FOLLOW_ROUND_LIMIT: Duration = Duration::from_secs(600);
/// Lost connections tolerated in a row before giving up.
const MAX_RECONNECTS: u32 = 30;

/// Where progress and log lines go: stdout for people, stderr when stdout
/// carries the JSON document.
#[derive(Clone)]
pub struct Say {
    output: Output,
    lock: Arc<Mutex<()>>,
}

impl Say {
    pub fn new(output: Output) -> Say {
        Say {
            output,
            lock: Arc::new(Mutex::new(())),
        }
    }

    pub fn line(&self, text: &str) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.output {
            Output::Human => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
            Output::Json => eprintln!("{text}"),
        }
    }

    /// A progress line: always on stderr.
    pub fn progress(&self, text: &str) {
        eprintln!("{text}");
    }
}

/// Where a followed log goes.
pub trait LogOut: Send + Sync {
    fn write(&self, bytes: &[u8]);
    /// The followed attempt changed (a retry).
    fn attempt(&self, attempt: i32);
    fn finish(&self) {}
}

/// The log's bytes as they are, to stdout (`stepwise logs --follow`).
pub struct RawOut;

impl LogOut for RawOut {
    fn write(&self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }

    fn attempt(&self, attempt: i32) {
        eprintln!("--- attempt {attempt} ---");
    }
}

/// Whole lines, each prefixed with the step's name (`run --logs`).
pub struct PrefixOut {
    step: String,
    say: Say,
    partial: Mutex<Vec<u8>>,
}

impl PrefixOut {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        self.say
            .line(&format!("  {} | {}", self.step, text.trim_end_matches('\r')));
    }
}

impl LogOut for PrefixOut {
    fn write(&self, bytes: &[u8]) {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        partial.extend_from_slice(bytes);
        while let Some(at) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=at).collect();
            self.emit(&line[..line.len() - 1]);
        }
    }

    fn attempt(&self, _: i32) {}

    fn finish(&self) {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        if !partial.is_empty() {
            let line = std::mem::take(&mut *partial);
            self.emit(&line);
        }
    }
}

/// Follows the log of `step`: from `attempt` only (until that attempt
/// ends) or, without one, the latest attempt and the next ones of a
/// retried step until the step ends. Each request streams for at most the
/// server's `api.max_wait_seconds`; the next one goes on from the bytes
/// received.
pub async fn follow_step_log(
    api: &Client,
    execution: &str,
    step: &str,
    only_attempt: Option<i32>,
    out: &dyn LogOut,
) -> Result<(), ClientError> {
    let mut attempt = only_attempt;
    let mut offset: u64 = 0;
    let mut failures = 0;
    loop {
        let started = Instant::now();
        // The server ends a stream after its api.max_wait_seconds (300 by
        // default); a connection silent for longer than this is lost.
        let mut request = api
            .request(Method::GET, &["v1", "executions", execution, "steps", step, "logs"])
            .query(&[("follow", "true")])
            .timeout(FOLLOW_ROUND_LIMIT);
        if let Some(attempt) = attempt {
            request = request.query(&[("attempt", attempt.to_string()), ("offset", offset.to_string())]);
        }
        let mut received = 0;
        match api.send(request).await {
            Ok(response) => {
                let mut body = response.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let Ok(chunk) = chunk else { break };
                    out.write(&chunk);
                    received += chunk.len();
                    offset += chunk.len() as u64;
                }
                failures = 0;
            }
            Err(ClientError::Unreachable(message)) if failures < MAX_RECONNECTS => {
                failures += 1;
                eprintln!("following the log of {step}: {message}; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => return Err(e),
        }
        let now = match api.get(&["v1", "executions", execution, "steps", step]).await {
            Ok(now) => now,
            // The server went away between two rounds: the next request
            // waits for it.
            Err(ClientError::Unreachable(_)) => continue,
            Err(e) => return Err(e),
        };
        let status = now["status"].as_str().unwrap_or("");
        let count = now["attempt_count"].as_i64().unwrap_or(0) as i32;
        match status {
            "Executing" | "Stopping" => match attempt {
                Some(a) if a == count => {}
                _ if only_attempt.is_some() => break,
                Some(_) | None => {
                    if attempt.is_some() {
                        out.attempt(count);
                        offset = 0;
                    }
                    attempt = Some(count);
                }
            },
            "Pending" | "Starting" if only_attempt.is_none() => {
                if attempt.is_some() {
                    offset = 0;
                }
                attempt = None;
            }
            _ => break,
        }
        // A round that ended at once with nothing new (a step between
        // states): do not ask again in a tight loop.
        if received == 0 && started.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    out.finish();
    Ok(())
}

/// One line about a step, for `executions describe`.
pub fn step_summary(step: &Value) -> String {
    let name = step["step_name"].as_str().unwrap_or("");
    let status = step["status"].as_str().unwrap_or("");
    let mut line = format!("{name:<24} {status:<10}");
    if let Some(reason) = step["skip_reason"].as_str() {
        match step["metadata"]["trigger"]["not_met"].as_str() {
            Some(why) => line.push_str(&format!(" ({reason}: {why})")),
            None => line.push_str(&format!(" ({reason})")),
        }
    }
    if let Some(from) = step["reused_from"].as_object() {
        line.push_str(&format!(" reused from {}", source_of(from)));
    }
    if let Some(hit) = step["cache_hit"].as_object() {
        line.push_str(&format!(" cache hit from {}", source_of(hit)));
    }
    if let Some(reason) = step["failure_reason"].as_str() {
        let error_type = step["error_type"].as_str().unwrap_or("");
        line.push_str(&format!(" {error_type}: {reason}"));
    }
    line
}

fn source_of(object: &serde_json::Map<String, Value>) -> String {
    ["source_execution_arn", "execution_arn"]
        .iter()
        .find_map(|k| object.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| Value::Object(object.clone()).to_string())
}

/// What a follower knows of the run.
struct Run<'a> {
    api: &'a Client,
    id: &'a str,
    say: &'a Say,
    logs: bool,
    running: BTreeSet<String>,
    followers: JoinSet<()>,
    follower_slots: Arc<tokio::sync::Semaphore>,
    started: Instant,
}

/// Follows execution `id` through its events until it ends, printing each
/// step's progress (and with `logs`, its log lines), and returns the ended
/// execution.
pub async fn follow_run(api: &Client, id: &str, logs: bool, say: &Say) -> anyhow::Result<Value> {
    let mut run = Run {
        api,
        id,
        say,
        logs,
        running: BTreeSet::new(),
        followers: JoinSet::new(),
        follower_slots: Arc::new(tokio::sync::Semaphore::new(MAX_LOG_FOLLOWERS)),
        started: Instant::now(),
    };
    let mut last_event: Option<String> = None;
    let mut failures = 0;
    loop {
        let mut request = api
            .request(Method::GET, &["v1", "executions", id, "events"])
            .header(header::ACCEPT, "text/event-stream");
        if let Some(last) = &last_event {
            request = request.header("Last-Event-ID", last);
        }
        let response = match api.send(request).await {
            Ok(r) => r,
            Err(ClientError::Unreachable(message)) if failures < MAX_RECONNECTS => {
                failures += 1;
                say.progress(&format!("following the execution: {message}; trying again"));
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        failures = 0;
        if run.read_events(response, &mut last_event).await? {
            break;
        }
        // The stream ended early (a server shutting down, a lost
        // connection): go on from the last event unless it has ended.
        match api.get(&["v1", "executions", id]).await {
            Ok(now) if is_terminal(&now) => break,
            Ok(_) | Err(ClientError::Unreachable(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let drain = async { while run.followers.join_next().await.is_some() {} };
    if tokio::time::timeout(LOG_DRAIN, drain).await.is_err() {
        run.followers.abort_all();
    }
    Ok(api.get(&["v1", "executions", id]).await?)
}

fn is_terminal(execution: &Value) -> bool {
    matches!(execution["status"].as_str(), Some("Succeeded" | "Failed" | "Stopped"))
}

impl Run<'_> {
    /// Reads one event stream; true once the execution's final event came.
    async fn read_events(
        &mut self,
        response: reqwest::Response,
        last_event: &mut Option<String>,
    ) -> anyhow::Result<bool> {
        let mut events = response.bytes_stream().eventsource();
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                _ = tokio::time::sleep(PROGRESS_EVERY) => {
                    self.progress();
                    continue;
                }
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(_)) | None => return Ok(false),
            };
            if !event.id.is_empty() {
                *last_event = Some(event.id.clone());
            }
            if event.event == "shutdown" {
                return Ok(false);
            }
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            if self.on_event(&data).await? {
                return Ok(true);
            }
        }
    }

    fn progress(&self) {
        let running = if self.running.is_empty() {
            "no step running".to_string()
        } else {
            format!(
                "running: {}",
                self.running.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        let minutes = self.started.elapsed().as_secs() / 60;
        self.say
            .progress(&format!("still waiting after {minutes} min; {running}"));
    }

    /// Prints one event; true when it ended the execution.
    async fn on_event(&mut self, event: &Value) -> anyhow::Result<bool> {
        let status = event["status"].as_str().unwrap_or("");
        let detail = &event["detail"];
        let Some(step) = event["step_name"].as_str() else {
            if status == "Executing" && detail["reused_steps"].as_u64().unwrap_or(0) > 0 {
                self.print_reused().await?;
            }
            return Ok(matches!(status, "Succeeded" | "Failed" | "Stopped"));
        };
        let text = |s: &str| detail[s].as_str().unwrap_or("").to_string();
        let line = match status {
            "Executing" if detail["waiting_for_callback"] == true => Some("waiting for its callback".to_string()),
            "Executing" if detail.get("iterations").is_some() => {
                let compared = detail["compared_with_source"].as_u64().unwrap_or(0);
                Some(if compared > 0 {
                    format!(
                        "{} iterations ({compared} compared with the source, item by item)",
                        detail["iterations"]
                    )
                } else {
                    format!("{} iterations", detail["iterations"])
                })
            }
            "Executing" if detail["retried_iterations"] == true => {
                Some("waiting for its iterations again (retry)".to_string())
            }
            "Executing" => {
                self.running.insert(step.to_string());
                let attempt = detail["attempt"].as_i64().unwrap_or(1) as i32;
                if self.logs {
                    self.follow_log(step, attempt);
                }
                Some(if attempt > 1 {
                    format!("started (attempt {attempt})")
                } else {
                    "started".to_string()
                })
            }
            "Starting" if detail.get("retry_in_seconds").is_some() => {
                self.running.remove(step);
                Some(format!(
                    "attempt {} failed: {}: {}; retrying in {}s",
                    detail["attempt"],
                    text("error_type"),
                    text("failure_reason"),
                    detail["retry_in_seconds"]
                ))
            }
            "Starting" if detail["released_at_shutdown"] == true => {
                self.running.remove(step);
                Some("released by a worker shutting down; it starts again".to_string())
            }
            "Starting" => None,
            "Succeeded" => {
                self.running.remove(step);
                Some(
                    match (detail["cache_hit"].as_object(), detail["reused_from"].as_object()) {
                        (Some(hit), _) => format!("succeeded (cache hit: the outputs of {})", source_of(hit)),
                        (None, Some(from)) => format!(
                            "reused (the outputs of {}: {})",
                            source_of(from),
                            from.get("reason").and_then(Value::as_str).unwrap_or("unchanged")
                        ),
                        (None, None) => "succeeded".to_string(),
                    },
                )
            }
            "Failed" | "Stopped" => {
                self.running.remove(step);
                let reason = text("failure_reason");
                Some(if reason.is_empty() {
                    status.to_lowercase()
                } else {
                    format!("{}: {}: {reason}", status.to_lowercase(), text("error_type"))
                })
            }
            // A trigger not met says which (`"Train" ended Succeeded; ...`).
            "Skipped" if !text("reason").is_empty() => {
                Some(format!("skipped ({}: {})", text("skip_reason"), text("reason")))
            }
            "Skipped" => Some(format!("skipped ({})", text("skip_reason"))),
            other => Some(other.to_lowercase()),
        };
        if let Some(line) = line {
            self.say.line(&format!("{step}: {line}"));
        }
        Ok(false)
    }

    async fn print_reused(&self) -> anyhow::Result<()> {
        let steps = self.api.all_steps(self.id).await?;
        // Reused at the start: no attempt here. (A step reused later by early
        // cut-off made one, and its own event says so.)
        let at_start = |step: &Value| step["attempt_count"].as_i64() == Some(0);
        for step in steps.iter().filter(|s| at_start(s)) {
            if let Some(from) = step["reused_from"].as_object() {
                let name = step["step_name"].as_str().unwrap_or("");
                self.say
                    .line(&format!("{name}: reused (the outputs of {})", source_of(from)));
            }
        }
        Ok(())
    }

    fn follow_log(&mut self, step: &str, attempt: i32) {
        let (api, id) = (self.api.clone(), self.id.to_string());
        let out = PrefixOut {
            step: step.to_string(),
            say: self.say.clone(),
            partial: Mutex::new(Vec::new()),
        };
        let step = step.to_string();
        let slots = self.follower_slots.clone();
        self.followers.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else { return };
            match follow_step_log(&api, &id, &step, Some(attempt), &out).await {
                // Reused while it ran (early cut-off): it has no log here.
                Err(e) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => {}
                Err(e) => eprintln!("following the log of {step}: {e}"),
                Ok(()) => {}
            }
        });
    }
}

/// Long polls execution `execution` in rounds until it ends, with a
/// progress line after each round that found it still running.
pub async fn wait_until_ended(api: &Client, execution: &str) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut failures = 0;
    let mut round = POLL_ROUND_SECONDS;
    loop {
        let request = api
            .request(Method::GET, &["v1", "executions", execution])
            .query(&[("wait_seconds", round)])
            .timeout(Duration::from_secs(round + 30));
        let row = match api.send(request).await {
            Ok(response) => response
                .json::<Value>()
                .await
                .map_err(|e| ClientError::Unreachable(format!("reading the answer failed: {e}")))?,
            Err(ClientError::Unreachable(message)) if failures < MAX_RECONNECTS => {
                failures += 1;
                eprintln!("waiting for the execution: {message}; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            // A server whose api.max_wait_seconds is below the round.
            Err(ClientError::Api {
                status, ref message, ..
            }) if status == reqwest::StatusCode::BAD_REQUEST && message.contains("wait_seconds") && round > 1 => {
                round /= 2;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        failures = 0;
        if is_terminal(&row) {
            return Ok(row);
        }
        eprintln!(
            "still waiting after {} min; the execution is {}",
            started.elapsed().as_secs() / 60,
            row["status"].as_str().unwrap_or("")
        );
    }
}
