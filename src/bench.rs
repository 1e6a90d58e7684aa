//! `stepwise bench`: a load generator that drives a *running* stepwise over
//! its REST API, like any client would, and reports what a user feels.
//!
//! It creates its own pipeline (`bench-<shape>-<uuid8>`) of N no-op steps in
//! a chain, a fan-out or a diamond, starts M executions of it at once, waits
//! for them to end and reads the step timestamps back. From those it derives
//! wall time and throughput (client-side), step start latency (server-side:
//! a step's `started_at` minus the latest `ended_at` of its dependencies,
//! which is the scheduler's reaction time) and, from a probe that keeps
//! calling describe-execution every 10 ms during the run, API latency under load. With
//! `--selective` it also times the start request of a selective execution of
//! one step against the plain start of a one-step pipeline, which shows what
//! selective planning costs. The bench only talks HTTP, so it measures the
//! server exactly as deployed; it deletes its own pipelines at the end and
//! touches nothing else.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Options of `stepwise bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The server to drive and the token (editor role or above: the bench
    /// creates pipelines), as for every client command.
    #[command(flatten)]
    pub server: crate::cli::ServerArgs,
    /// Shape of the pipeline: a chain, N independent steps, one root, N-2
    /// parallel middles and one sink, or a ForEach over N items whose body
    /// is two steps (the second after the first), so 2N steps run.
    #[arg(long, value_enum, default_value_t = Shape::Chain)]
    pub shape: Shape,
    /// Number of steps in the pipeline.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// The pipeline's `max_parallel_steps` (none by default).
    #[arg(long)]
    pub max_parallel_steps: Option<u32>,
    /// For `--shape foreach`: its MaxConcurrency.
    #[arg(long, default_value_t = 50)]
    pub max_concurrency: u32,
    /// Number of executions started at once.
    #[arg(long, default_value_t = 1)]
    pub executions: usize,
    /// What each step does: `pass` (no process) or `command` (runs `true`).
    #[arg(long, value_enum, default_value_t = StepType::Pass)]
    pub step_type: StepType,
    /// Also time the start of a selective execution of the last step.
    #[arg(long)]
    pub selective: bool,
    /// Runs per start-latency measurement (`--selective`).
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// Sample this process's memory (/proc/PID/status) during the run.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Chain,
    Fanout,
    Diamond,
    Foreach,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepType {
    Pass,
    Command,
}

/// Longest a single execution may take before the bench gives up on it.
const EXECUTION_TIMEOUT: Duration = Duration::from_secs(900);

/// The `p`-th percentile (0..=100) of ascending `sorted` values, by the
/// nearest-rank method: the smallest value with at least p% of values at or
/// below it. `None` for no values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p99 and max of a sample, in milliseconds.
#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Summary {
    pub fn of(mut ms: Vec<f64>) -> Summary {
        ms.sort_by(f64::total_cmp);
        Summary {
            count: ms.len(),
            p50_ms: percentile(&ms, 50.0),
            p99_ms: percentile(&ms, 99.0),
            max_ms: ms.last().copied(),
        }
    }
}

/// The pipeline under test: step names and, per step, its dependencies.
struct Plan {
    names: Vec<String>,
    deps: Vec<Vec<usize>>,
}

impl Plan {
    fn new(shape: Shape, n: usize) -> Plan {
        let names = (0..n).map(|i| format!("S{i:05}")).collect();
        let deps = (0..n)
            .map(|i| match shape {
                Shape::Chain if i > 0 => vec![i - 1],
                Shape::Diamond if i > 0 && i < n - 1 => vec![0],
                Shape::Diamond if i > 0 => (1..n - 1).collect(),
                _ => vec![],
            })
            .collect();
        Plan { names, deps }
    }

    /// The definition document. A Pass step with a single dependency reads
    /// its predecessor's output (a data dependency, so expression
    /// resolution is part of what is measured); every other edge is a
    /// `DependsOn`.
    fn definition(&self, step_type: StepType) -> Value {
        let steps: Vec<Value> = self
            .names
            .iter()
            .zip(&self.deps)
            .enumerate()
            .map(|(i, (name, deps))| {
                let mut step = match step_type {
                    StepType::Command => {
                        json!({"Name": name, "Type": "Command", "Arguments": {"Command": ["true"]}})
                    }
                    StepType::Pass => json!({"Name": name, "Type": "Pass", "Arguments": {"i": i}}),
                };
                match (step_type, deps.as_slice()) {
                    (_, []) => {}
                    (StepType::Pass, [d]) => {
                        let get = format!("Steps.{}.Outputs.i", self.names[*d]);
                        step["Arguments"]["prev"] = json!({ "Get": get });
                    }
                    _ => {
                        let on: Vec<&str> = deps.iter().map(|d| self.names[*d].as_str()).collect();
                        step["DependsOn"] = json!(on);
                    }
                }
                step
            })
            .collect();
        json!({"Version": "2020-12-01", "Steps": steps})
    }
}

/// A ForEach over `items` items, its body two steps: `A`, then `B`, which
/// reads `A`'s outputs (Pass) or depends on it (Command).
fn for_each_definition(items: usize, max_concurrency: u32, step_type: StepType) -> Value {
    let body = match step_type {
        StepType::Pass => json!([
            {"Name": "A", "Type": "Pass", "Arguments": {"item": {"Get": "ForEach.CurrentItem"}}},
            {"Name": "B", "Type": "Pass", "Arguments": {"prev": {"Get": "Steps.A.Outputs.item"}}}
        ]),
        StepType::Command => json!([
            {"Name": "A", "Type": "Command", "Arguments": {"Command": ["true"]}},
            {"Name": "B", "Type": "Command", "DependsOn": ["A"], "Arguments": {"Command": ["true"]}}
        ]),
    };
    json!({"Version": "2020-12-01", "Steps": [{"Name": "F", "Type": "ForEach", "Arguments": {
        "IterableItems": (0..items).collect::<Vec<_>>(),
        "MaxConcurrency": max_concurrency,
        "ForEachBody": body}}]})
}

#[derive(Deserialize)]
struct ExecutionView {
    execution_id: String,
    execution_arn: String,
    status: String,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
}

impl ExecutionView {
    fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "Succeeded" | "Failed" | "Stopped")
    }
}

#[derive(Deserialize)]
struct StepView {
    step_name: String,
    reused_from: Option<Value>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct StepList {
    steps: Vec<StepView>,
    next_token: Option<String>,
}

/// A thin JSON client that turns non-2xx answers into errors carrying the
/// server's `error.message`.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("{method} {path}: reading the body"))?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("{method} {path} answered {status}: {message}");
        }
        Ok((status, value))
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> anyhow::Result<T> {
        let (_, v) = self.call(Method::GET, path, None).await?;
        serde_json::from_value(v).with_context(|| format!("GET {path}: unexpected answer"))
    }

    /// Every step of an execution: the list pages, so follow `next_token`.
    async fn steps(&self, id: &str) -> anyhow::Result<Vec<StepView>> {
        let mut steps = Vec::new();
        let mut path = format!("/v1/executions/{id}/steps?limit=1000");
        loop {
            let page: StepList = self.get(&path).await?;
            steps.extend(page.steps);
            match page.next_token {
                Some(token) => path = format!("/v1/executions/{id}/steps?limit=1000&next_token={token}"),
                None => return Ok(steps),
            }
        }
    }

    async fn create_pipeline(&self, name: &str, definition: Value, max_parallel: Option<u32>) -> anyhow::Result<()> {
        let body = json!({"name": name, "definition": definition, "description": "created by stepwise bench",
                          "max_parallel_steps": max_parallel});
        self.call(Method::POST, "/v1/pipelines", Some(&body)).await.map(|_| ())
    }

    async fn start(&self, pipeline: &str, body: &Value) -> anyhow::Result<ExecutionView> {
        let path = format!("/v1/pipelines/{pipeline}/executions");
        let (_, v) = self.call(Method::POST, &path, Some(body)).await?;
        serde_json::from_value(v).context("start: unexpected answer")
    }

    /// Long-polls until the execution ends; returns it and when the client
    /// learned that it ended.
    async fn wait(&self, id: &str) -> anyhow::Result<(ExecutionView, Instant)> {
        let deadline = Instant::now() + EXECUTION_TIMEOUT;
        loop {
            let e: ExecutionView = self.get(&format!("/v1/executions/{id}?wait_seconds=60")).await?;
            if e.is_terminal() {
                return Ok((e, Instant::now()));
            }
            if Instant::now() > deadline {
                bail!("execution {id} still {} after {EXECUTION_TIMEOUT:?}", e.status);
            }
        }
    }
}

/// What the bench reports; `--json` prints exactly this.
#[derive(Serialize)]
pub struct Report {
    pub url: String,
    pub shape: Shape,
    pub step_type: StepType,
    pub steps: usize,
    pub executions: usize,
    pub pipeline: String,
    /// First start request sent to last execution seen ended, client-side.
    pub wall_ms: f64,
    /// First `created_at` to last `ended_at`, from the server's timestamps.
    pub server_wall_ms: Option<f64>,
    pub steps_per_second: f64,
    /// wall / (steps × executions); for a chain with one execution this is
    /// the per-step overhead of the scheduler.
    pub ms_per_step: f64,
    pub start_request: Summary,
    pub step_start_latency: Summary,
    /// `ended_at` minus `started_at` of every step: claim to completion.
    pub step_run_time: Summary,
    pub describe_latency: Summary,
    pub statuses: HashMap<String, usize>,
    pub failures: Vec<String>,
    pub selective: Option<SelectiveReport>,
    pub server_rss: Option<RssReport>,
}

#[derive(Serialize)]
pub struct SelectiveReport {
    pub repeat: usize,
    /// Median client-side time of the selective start request (POST → 201).
    pub selective_start_median_ms: Option<f64>,
    /// Median time from that POST until the selective execution ended.
    pub selective_run_median_ms: Option<f64>,
    /// Steps of the first selective execution that were reused from the
    /// source rather than run (expected: all but the selected one).
    pub reused_steps: Option<usize>,
    /// Median time of a plain start of a one-step Pass pipeline.
    pub plain_start_median_ms: Option<f64>,
    pub ratio: Option<f64>,
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct RssReport {
    pub pid: u32,
    /// Largest VmRSS seen while sampling.
    pub peak_rss_mib: f64,
    /// The kernel's high-water mark (VmHWM) at the end: the peak over the
    /// server's whole life, not only this run.
    pub hwm_mib: f64,
}

/// Runs the bench and prints the report. Fails when the server cannot be
/// driven or when any execution did not succeed.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.steps == 0 || args.executions == 0 || args.repeat == 0 {
        bail!("--steps, --executions and --repeat must be at least 1");
    }
    if args.shape == Shape::Diamond && args.steps < 3 {
        bail!("a diamond needs at least 3 steps");
    }
    let headers = args.server.headers()?;
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .default_headers(headers)
            .build()?,
        base: args.server.url.trim_end_matches('/').to_owned(),
    };
    client
        .call(Method::GET, "/healthz", None)
        .await
        .with_context(|| format!("no stepwise answering at {}", client.base))?;

    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let shape_name = format!("{:?}", args.shape).to_lowercase();
    let pipeline = format!("bench-{shape_name}-{tag}");
    let plan = Plan::new(args.shape, args.steps);
    let definition = match args.shape {
        Shape::Foreach => for_each_definition(args.steps, args.max_concurrency, args.step_type),
        _ => plan.definition(args.step_type),
    };
    client
        .create_pipeline(&pipeline, definition, args.max_parallel_steps)
        .await?;

    let done = CancellationToken::new();
    let rss = args.server_pid.map(|pid| tokio::spawn(sample_rss(pid, done.clone())));

    // Load: M concurrent starts, then M concurrent long polls.
    let t0 = Instant::now();
    let starts = join_all((0..args.executions).map(|_| {
        let client = client.clone();
        let pipeline = pipeline.clone();
        async move {
            let t = Instant::now();
            let e = client.start(&pipeline, &json!({})).await?;
            Ok::<_, anyhow::Error>((e, ms(t.elapsed())))
        }
    }))
    .await
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>()?;
    let ids: Vec<String> = starts.iter().map(|(e, _)| e.execution_id.clone()).collect();
    let probe = tokio::spawn(probe_describe(client.clone(), ids.clone(), done.clone()));
    let ended = join_all(ids.iter().map(|id| client.wait(id)))
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let wall = ended.iter().map(|(_, at)| *at).max().expect("at least one execution") - t0;
    done.cancel();
    let describe_ms = probe.await?;
    let server_rss = match rss {
        Some(handle) => handle.await?,
        None => None,
    };

    let mut statuses = HashMap::new();
    let mut failures = Vec::new();
    let mut step_latency = Vec::new();
    let mut step_run = Vec::new();
    for (e, _) in &ended {
        *statuses.entry(e.status.clone()).or_insert(0) += 1;
        if e.status != "Succeeded" {
            failures.push(format!(
                "{} ended {}: {}",
                e.execution_arn,
                e.status,
                e.failure_reason.as_deref().unwrap_or("no reason given")
            ));
        }
        let steps = client.steps(&e.execution_id).await?;
        step_latency.extend(start_latencies(&plan, e, &steps));
        step_run.extend(
            steps
                .iter()
                .filter_map(|s| Some(chrono_ms(s.ended_at? - s.started_at?))),
        );
    }
    let server_wall_ms = {
        let first = ended.iter().map(|(e, _)| e.created_at).min();
        let last = ended.iter().filter_map(|(e, _)| e.ended_at).max();
        first.zip(last).map(|(a, b)| chrono_ms(b - a))
    };

    let selective = if args.selective && failures.is_empty() {
        let source = &ended.last().expect("at least one execution").0;
        Some(measure_selective(&client, &pipeline, source, plan.names.last().unwrap(), tag, args.repeat).await?)
    } else {
        None
    };

    // Only our own pipelines, and only when nothing of theirs can be running.
    // A failed run is kept so it can be inspected.
    if failures.is_empty() {
        let _ = client
            .call(Method::DELETE, &format!("/v1/pipelines/{pipeline}"), None)
            .await;
    }

    // A ForEach runs its two body steps per item (the ForEach itself aside).
    let per_execution = if args.shape == Shape::Foreach {
        2 * args.steps
    } else {
        args.steps
    };
    let total_steps = (per_execution * args.executions) as f64;
    let report = Report {
        url: client.base.clone(),
        shape: args.shape,
        step_type: args.step_type,
        steps: args.steps,
        executions: args.executions,
        pipeline,
        wall_ms: ms(wall),
        server_wall_ms,
        steps_per_second: total_steps / wall.as_secs_f64(),
        ms_per_step: ms(wall) / total_steps,
        start_request: Summary::of(starts.iter().map(|(_, t)| *t).collect()),
        step_start_latency: Summary::of(step_latency),
        step_run_time: Summary::of(step_run),
        describe_latency: Summary::of(describe_ms),
        statuses,
        failures,
        selective,
        server_rss,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if !report.failures.is_empty() {
        bail!(
            "{} of {} executions did not succeed",
            report.failures.len(),
            report.executions
        );
    }
    Ok(())
}

/// For every step that started: `started_at` minus the latest `ended_at` of
/// its dependencies, or minus the execution's `started_at` for a root.
fn start_latencies(plan: &Plan, execution: &ExecutionView, steps: &[StepView]) -> Vec<f64> {
    let by_name: HashMap<&str, &StepView> = steps.iter().map(|s| (s.step_name.as_str(), s)).collect();
    let mut out = Vec::new();
    for (name, deps) in plan.names.iter().zip(&plan.deps) {
        let Some(started) = by_name.get(name.as_str()).and_then(|s| s.started_at) else {
            continue;
        };
        let ready = if deps.is_empty() {
            execution.started_at
        } else {
            deps.iter()
                .map(|d| by_name.get(plan.names[*d].as_str()).and_then(|s| s.ended_at))
                .collect::<Option<Vec<_>>>()
                .and_then(|ends| ends.into_iter().max())
        };
        if let Some(ready) = ready {
            out.push(chrono_ms(started - ready));
        }
    }
    out
}

/// Sends a describe request every `PROBE_INTERVAL`, round-robin over the
/// executions, until `done`; returns each request's latency. Paced, like a
/// dashboard or CI job polling, so the probe measures the load rather than
/// adding to it (a tight loop took a third of this 2-core machine's CPU).
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

async fn probe_describe(client: Client, ids: Vec<String>, done: CancellationToken) -> Vec<f64> {
    let mut out = Vec::new();
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    for id in ids.iter().cycle() {
        ticks.tick().await;
        if done.is_cancelled() {
            break;
        }
        let t = Instant::now();
        if client
            .call(Method::GET, &format!("/v1/executions/{id}"), None)
            .await
            .is_ok()
        {
            out.push(ms(t.elapsed()));
        }
    }
    out
}

/// Times, one at a time so the server stays usable, `repeat` selective starts
/// of `step` against `source`, then `repeat` plain starts of a one-step
/// pipeline. A refused selective start is reported, not fatal.
async fn measure_selective(
    client: &Client,
    pipeline: &str,
    source: &ExecutionView,
    step: &str,
    tag: &str,
    repeat: usize,
) -> anyhow::Result<SelectiveReport> {
    let body = json!({"selective_execution": {
        "source_execution": source.execution_arn,
        "selected_steps": [step],
    }});
    let mut selective_start = Vec::new();
    let mut selective_run = Vec::new();
    let mut reused_steps = None;
    let mut error = None;
    for _ in 0..repeat {
        let t = Instant::now();
        match client.start(pipeline, &body).await {
            Ok(e) => {
                selective_start.push(ms(t.elapsed()));
                let (e, at) = client.wait(&e.execution_id).await?;
                selective_run.push(ms(at - t));
                if reused_steps.is_none() {
                    let steps = client.steps(&e.execution_id).await?;
                    reused_steps = Some(steps.iter().filter(|s| s.reused_from.is_some()).count());
                }
                if e.status != "Succeeded" {
                    error = Some(format!(
                        "a selective execution ended {}: {:?}",
                        e.status, e.failure_reason
                    ));
                    break;
                }
            }
            Err(e) => {
                error = Some(format!("{e:#}"));
                break;
            }
        }
    }

    let single = format!("bench-single-{tag}");
    let definition = json!({"Version": "2020-12-01", "Steps": [{"Name": "S", "Type": "Pass", "Arguments": {}}]});
    client.create_pipeline(&single, definition, None).await?;
    let mut plain_start = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        let e = client.start(&single, &json!({})).await?;
        plain_start.push(ms(t.elapsed()));
        let (e, _) = client.wait(&e.execution_id).await?;
        if e.status != "Succeeded" {
            return Err(anyhow!("plain execution of {single} ended {}", e.status));
        }
    }
    let _ = client
        .call(Method::DELETE, &format!("/v1/pipelines/{single}"), None)
        .await;

    let selective_start_median_ms = median(selective_start);
    let plain_start_median_ms = median(plain_start);
    Ok(SelectiveReport {
        repeat,
        selective_start_median_ms,
        selective_run_median_ms: median(selective_run),
        reused_steps,
        plain_start_median_ms,
        ratio: selective_start_median_ms.zip(plain_start_median_ms).map(|(s, p)| s / p),
        error,
    })
}

/// Samples VmRSS every 50 ms until `done`; `None` if the process cannot be read.
async fn sample_rss(pid: u32, done: CancellationToken) -> Option<RssReport> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let mut peak_kib = 0u64;
    let mut hwm_kib = 0u64;
    let mut readable = false;
    loop {
        if let Ok(status) = tokio::fs::read_to_string(&path).await {
            readable = true;
            peak_kib = peak_kib.max(status_kib(&status, "VmRSS:").unwrap_or(0));
            hwm_kib = hwm_kib.max(status_kib(&status, "VmHWM:").unwrap_or(0));
        }
        if done.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = done.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    readable.then(|| RssReport {
        pid,
        peak_rss_mib: peak_kib as f64 / 1024.0,
        hwm_mib: hwm_kib as f64 / 1024.0,
    })
}

/// The kB value of a `/proc/PID/status` line such as `VmRSS:  1234 kB`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn chrono_ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().map_or(f64::NAN, |us| us as f64 / 1000.0)
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"))
}

fn print_table(r: &Report) {
    let mut rows: Vec<(String, String)> = vec![
        ("pipeline".into(), r.pipeline.clone()),
        ("wall time (client)".into(), format!("{:.1} ms", r.wall_ms)),
        (
            "wall time (server timestamps)".into(),
            r.server_wall_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
        ),
        ("steps per second".into(), format!("{:.1}", r.steps_per_second)),
        ("ms per step (wall / steps)".into(), format!("{:.2} ms", r.ms_per_step)),
    ];
    for (label, s) in [
        ("start request", &r.start_request),
        ("step start latency", &r.step_start_latency),
        ("step run time", &r.step_run_time),
        ("describe latency (under load)", &r.describe_latency),
    ] {
        rows.push((
            format!("{label} p50 / p99 / max"),
            format!(
                "{} / {} / {}  (n={})",
                fmt_ms(s.p50_ms),
                fmt_ms(s.p99_ms),
                fmt_ms(s.max_ms),
                s.count
            ),
        ));
    }
    if let Some(s) = &r.selective {
        rows.push((
            format!("selective start of 1 step, median of {}", s.repeat),
            fmt_ms(s.selective_start_median_ms),
        ));
        rows.push(("selective run to end, median".into(), fmt_ms(s.selective_run_median_ms)));
        if let Some(n) = s.reused_steps {
            rows.push((
                "steps reused by the selective run".into(),
                format!("{n} of {}", r.steps),
            ));
        }
        rows.push((
            "plain start, 1-step pipeline, median".into(),
            fmt_ms(s.plain_start_median_ms),
        ));
        rows.push((
            "selective / plain start".into(),
            s.ratio.map_or("-".into(), |v| format!("{v:.2}x")),
        ));
        if let Some(e) = &s.error {
            rows.push(("selective error".into(), e.clone()));
        }
    }
    if let Some(m) = &r.server_rss {
        rows.push((
            format!("server memory (pid {})", m.pid),
            format!("peak RSS {:.1} MiB, VmHWM {:.1} MiB", m.peak_rss_mib, m.hwm_mib),
        ));
    }
    let mut statuses: Vec<_> = r.statuses.iter().map(|(k, v)| format!("{v} {k}")).collect();
    statuses.sort();
    rows.push(("executions".into(), statuses.join(", ")));
    for f in &r.failures {
        rows.push(("FAILED".into(), f.clone()));
    }

    println!(
        "stepwise bench: {:?} of {} {:?} steps x {} execution(s) at {}",
        r.shape, r.steps, r.step_type, r.executions, r.url
    );
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("  {k:<width$}  {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_of_nothing_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        let few = [1.0, 2.0, 3.0];
        assert_eq!(percentile(&few, 50.0), Some(2.0));
        assert_eq!(percentile(&few, 99.0), Some(3.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn summary_sorts_its_sample() {
        let s = Summary::of(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(
            (s.count, s.p50_ms, s.p99_ms, s.max_ms),
            (4, Some(2.0), Some(10.0), Some(10.0))
        );
    }

    #[test]
    fn shapes_have_the_expected_edges() {
        let chain = Plan::new(Shape::Chain, 3);
        assert_eq!(chain.deps, vec![vec![], vec![0], vec![1]]);
        let fanout = Plan::new(Shape::Fanout, 3);
        assert!(fanout.deps.iter().all(Vec::is_empty));
        let diamond = Plan::new(Shape::Diamond, 4);
        assert_eq!(diamond.deps, vec![vec![], vec![0], vec![0], vec![1, 2]]);
    }

    #[test]
    fn pass_chain_uses_data_dependencies() {
        let def = Plan::new(Shape::Chain, 2).definition(StepType::Pass);
        assert_eq!(
            def["Steps"][1]["Arguments"]["prev"],
            json!({"Get": "Steps.S00000.Outputs.i"})
        );
        let def = Plan::new(Shape::Diamond, 4).definition(StepType::Command);
        assert_eq!(def["Steps"][3]["DependsOn"], json!(["S00001", "S00002"]));
        assert_eq!(def["Steps"][1]["DependsOn"], json!(["S00000"]));
    }

    #[test]
    fn reads_proc_status_values() {
        let status = "Name:\tstepwise\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }
}
