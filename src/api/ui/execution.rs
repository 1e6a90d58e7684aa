//! One execution: its DAG with each step's status (colour, glyph and
//! words), badges for reused steps, cache hits and skips, a table of the
//! steps, and the panel of the step picked (`?step=NAME`): attempts,
//! errors, properties, cache key components and miss reason, and its log.
//! The page's script follows the execution's event stream and the log.

use std::collections::HashMap;

use axum::{
    extract::{RawQuery, State},
    response::{IntoResponse, Redirect, Response},
};
use maud::{html, Markup};
use serde_json::Value;

use super::{
    field, form_pairs,
    graph::{Graph, Node},
    layout, may,
    pages::{duration, enc, execution_link, icon, short_arn, status_badge, when},
    svg::{self, Deco},
    UiResult, Who,
};
use crate::{
    api::{extract::Path, AppState},
    engine,
    store::{self, executions::ExecutionRow, steps::StepRunRow},
};

/// What the page knows of one drawn step.
#[derive(Default)]
struct Shown<'a> {
    run: Option<&'a StepRunRow>,
    /// The statuses of a ForEach body step's iterations.
    iterations: Vec<&'a str>,
}

/// `Parent[3].Body` as (`Parent`, `Body`).
fn iteration_of(name: &str) -> Option<(&str, &str)> {
    let (parent, rest) = name.split_once('[')?;
    let (_, body) = rest.split_once("].")?;
    Some((parent, body))
}

/// The status that stands for a body step's iterations.
fn summary(statuses: &[&str]) -> &'static str {
    let any = |s: &str| statuses.contains(&s);
    if statuses.is_empty() {
        "Pending"
    } else if any("Executing") || any("Starting") || any("Stopping") {
        "Executing"
    } else if any("Failed") {
        "Failed"
    } else if any("Pending") {
        "Pending"
    } else if statuses.iter().all(|s| *s == "Skipped") {
        "Skipped"
    } else if any("Stopped") {
        "Stopped"
    } else {
        "Succeeded"
    }
}

fn deco(execution: &ExecutionRow, node: &Node, shown: Option<&Shown>) -> Deco {
    let href = Some(format!(
        "/ui/executions/{}?step={}#panel",
        execution.id,
        enc(&node.name)
    ));
    let run = shown.and_then(|s| s.run);
    let iterations = shown.map(|s| s.iterations.as_slice()).unwrap_or_default();
    let (status, mut detail) = match run {
        Some(run) => (run.status.as_str(), run.status.clone()),
        None if !iterations.is_empty() => {
            let done = iterations.iter().filter(|s| **s == "Succeeded").count();
            (
                summary(iterations),
                format!("{done}/{} iterations done", iterations.len()),
            )
        }
        None => ("Pending", "Pending".to_string()),
    };
    let mut class = format!("st-{status}");
    let mut aria = format!("step {}: {status}", node.name);
    if let Some(run) = run {
        if run.reused_from.is_some() {
            class.push_str(" reused");
            detail.push_str(" · reused");
            aria.push_str(", reused from another execution");
        } else if run.cache_hit.is_some() {
            class.push_str(" cache-hit");
            detail.push_str(" · cache hit");
            aria.push_str(", outputs from the cache");
        }
        if let Some(reason) = &run.skip_reason {
            detail.push_str(&format!(" · {reason}"));
            aria.push_str(&format!(" ({reason})"));
        }
    }
    if !iterations.is_empty() && run.is_some() {
        detail.push_str(&format!(" · {} iterations", iterations.len()));
    }
    Deco {
        class,
        icon: icon(status),
        detail,
        href,
        aria,
    }
}

/// The execution page.
pub async fn page(
    State(state): State<AppState>,
    who: Who,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
) -> UiResult<Response> {
    let pairs = form_pairs(query.unwrap_or_default().as_bytes());
    let execution = state.find_execution(&reference).await?;
    let definition = {
        let mut conn = state.db.acquire().await?;
        store::executions::definition(&mut conn, execution.id).await?
    };
    let runs = store::steps::list(&state.db, execution.id).await?;
    // The list holds a ForEach, not its iterations: their statuses are
    // counted per body step.
    let counts = store::steps::iteration_counts(&state.db, execution.id).await?;
    let graph = Graph::from_definition(&definition);
    let mut shown: HashMap<&str, Shown> = HashMap::new();
    for run in &runs {
        match iteration_of(&run.step_name) {
            Some((_, body)) => shown.entry(body).or_default().iterations.push(&run.status),
            None => shown.entry(&run.step_name).or_default().run = Some(run),
        }
    }
    for (_, body, status, count) in &counts {
        let entry = shown.entry(body.as_str()).or_default();
        entry
            .iterations
            .extend(std::iter::repeat_n(status.as_str(), (*count).max(0) as usize));
    }
    let decos = svg::decorate(&graph, |node| deco(&execution, node, shown.get(node.name.as_str())));
    let dag = svg::render(graph, decos).await;
    let picked = match field(&pairs, "step") {
        Some(step) => Some(panel(&state, &execution, step).await?),
        None => None,
    };
    let body = html! {
        (header(&state, &who, &execution))
        div class="execution-body" {
            section aria-labelledby="graph" class="graph" {
                h2 id="graph" { "Graph" }
                p class="legend" aria-hidden="true" {
                    @for s in ["Pending", "Executing", "Succeeded", "Failed", "Skipped", "Stopped"] {
                        (status_badge(s)) " "
                    }
                    span class="badge reused" { "reused" } " " span class="badge cache-hit" { "cache hit" }
                }
                div class="dag-wrap" { (dag) }
            }
            @if let Some(panel) = picked {
                (panel)
            }
        }
        section aria-labelledby="steps" {
            h2 id="steps" { "Steps" }
            (steps_table(&state, &execution, &runs))
        }
    };
    Ok(super::page(layout(
        &format!("Execution {}", execution.id),
        Some(&who),
        body,
    )))
}

fn header(state: &AppState, who: &Who, e: &ExecutionRow) -> Markup {
    let live = !e.is_terminal();
    let source = e
        .selective_execution
        .as_ref()
        .and_then(|s| s.get("source_execution_arn"))
        .and_then(Value::as_str);
    html! {
        p { a href=(format!("/ui/pipelines/{}", enc(&e.pipeline_name))) { "← " (e.pipeline_name) } }
        div id="execution" data-id=(e.id) data-live=(live) {
            h1 { "Execution " (e.display_name.clone().unwrap_or_else(|| e.id.to_string())) }
            dl class="facts" {
                dt { "Status" } dd id="execution-status" aria-live="polite" { (status_badge(&e.status)) }
                dt { "Pipeline version" } dd { "v" (e.pipeline_version) }
                dt { "Created" } dd { (when(&e.created_at)) }
                dt { "Duration" } dd { (duration(e.started_at, e.ended_at)) }
                @if let Some(reason) = &e.failure_reason { dt { "Failure" } dd class="error" { (reason) } }
                @if e.selective_execution.is_some() {
                    dt { "Selective" } dd {
                        span class="badge selective" { "selective" }
                        @if let Some(arn) = source {
                            " from "
                            @match execution_link(state, arn) {
                                Some(href) => a href=(href) { (short_arn(arn)) },
                                None => (arn),
                            }
                        }
                    }
                }
            }
            div class="actions" {
                @if live && may(who, "POST", "/ui/executions/{execution}/stop") {
                    form method="post" action=(format!("/ui/executions/{}/stop", e.id)) {
                        button type="submit" class="danger" { "Stop" }
                    }
                }
                @if matches!(e.status.as_str(), "Failed" | "Stopped") && may(who, "POST", "/ui/executions/{execution}/retry") {
                    form method="post" action=(format!("/ui/executions/{}/retry", e.id)) {
                        button type="submit" { "Retry" }
                    }
                }
            }
        }
    }
}

/// Badges of one run: reused from, cache hit, skipped, with links.
fn badges(state: &AppState, run: &StepRunRow) -> Markup {
    let source = |v: &Option<Value>| {
        v.as_ref()
            .and_then(|v| v.get("source_execution_arn"))
            .and_then(Value::as_str)
            .map(|arn| (arn.to_string(), execution_link(state, arn)))
    };
    html! {
        @if let Some((arn, href)) = source(&run.reused_from) {
            span class="badge reused" {
                "reused from "
                @match href { Some(href) => a class="source" href=(href) { (short_arn(&arn)) }, None => (arn) }
            }
            @if let Some(reason) = run.reused_from.as_ref().and_then(|r| r.get("reason")).and_then(Value::as_str) {
                " " span class="reason" { "(" (reason) ")" }
            }
        }
        @if let Some((arn, href)) = source(&run.cache_hit) {
            span class="badge cache-hit" {
                "cache hit from "
                @match href { Some(href) => a class="source" href=(href) { (short_arn(&arn)) }, None => (arn) }
            }
        }
        @if let Some(reason) = &run.skip_reason {
            span class="badge skipped" { "skipped: " (reason) }
        }
    }
}

fn steps_table(state: &AppState, e: &ExecutionRow, runs: &[StepRunRow]) -> Markup {
    html! {
        table class="steps" {
            thead { tr {
                th scope="col" { "Step" } th scope="col" { "Type" } th scope="col" { "Status" }
                th scope="col" { "Attempts" } th scope="col" { "Duration" } th scope="col" { "Notes" }
            } }
            tbody {
                @for run in runs {
                    tr data-step=(run.step_name) {
                        td { a href=(format!("/ui/executions/{}?step={}#panel", e.id, enc(&run.step_name))) { (run.step_name) } }
                        td { (run.step_type) }
                        td class="step-status" { (status_badge(&run.status)) }
                        td { (run.attempt) }
                        td { (duration(run.started_at, run.ended_at)) }
                        td { (badges(state, run)) @if let Some(f) = &run.failure_reason { span class="error" { (f) } } }
                    }
                }
            }
        }
    }
}

fn json_block(label: &str, value: &Value) -> Markup {
    html! { pre class="json" tabindex="0" aria-label=(label) { (serde_json::to_string_pretty(value).unwrap_or_default()) } }
}

/// The panel of one step.
async fn panel(state: &AppState, e: &ExecutionRow, step: &str) -> UiResult<Markup> {
    let run = store::steps::get_by_name(&state.db, e.id, step).await?;
    let attempts = if run.reused_from.is_some() && run.attempt == 0 {
        Vec::new()
    } else {
        store::steps::attempts(&state.db, run.id).await?
    };
    let log_url = format!("/v1/executions/{}/steps/{}/logs?follow=true", e.id, enc(&run.step_name));
    Ok(html! {
        aside id="panel" class="panel" aria-labelledby="panel-title" tabindex="-1" {
            h2 id="panel-title" { "Step " (run.step_name) }
            p { (status_badge(&run.status)) " " (run.step_type) " " (badges(state, &run)) }
            @if let Some(reason) = &run.failure_reason {
                p class="error" { (run.error_type.clone().unwrap_or_default()) " " (reason) }
            }
            h3 { "Attempts" }
            @if attempts.is_empty() {
                p { "No attempt in this execution." }
            } @else {
                table {
                    thead { tr { th scope="col" { "#" } th scope="col" { "Status" } th scope="col" { "Exit code" } th scope="col" { "Error" } th scope="col" { "Duration" } } }
                    tbody {
                        @for a in &attempts {
                            tr {
                                td { (a.attempt) }
                                td { (status_badge(&a.status)) }
                                td { (a.exit_code.map(|c| c.to_string()).unwrap_or_default()) }
                                td { (a.error_type.clone().unwrap_or_default()) " " (a.failure_reason.clone().unwrap_or_default()) }
                                td { (duration(Some(a.started_at), a.ended_at)) }
                            }
                        }
                    }
                }
            }
            @if let Some(properties) = &run.properties {
                h3 { "Properties" }
                (json_block("properties", properties))
            }
            @if let Some(status) = &run.cache_status {
                h3 { "Cache" }
                dl class="facts" {
                    dt { "Status" } dd { (status) }
                    @if let Some(key) = &run.cache_key { dt { "Key" } dd { code { (key) } } }
                    @if let Some(reason) = &run.cache_miss_reason { dt { "Miss reason" } dd class="miss-reason" { (reason) } }
                }
                @if let Some(components) = &run.cache_components {
                    details {
                        summary { "Key components" }
                        (json_block("cache key components", components))
                    }
                }
            }
            h3 { "Log" }
            pre id="log" class="log" tabindex="0" aria-label="log" aria-live="polite" data-log-url=(log_url) {}
        }
    })
}

/// Stops the execution, then shows it.
pub async fn stop(State(state): State<AppState>, Path(reference): Path<String>) -> UiResult<Response> {
    let row = state.find_execution(&reference).await?;
    let row = engine::stop_execution(&state.db, row.id).await?;
    Ok(Redirect::to(&format!("/ui/executions/{}", row.id)).into_response())
}

/// Retries the execution in place, then shows it.
pub async fn retry(State(state): State<AppState>, Path(reference): Path<String>) -> UiResult<Response> {
    let row = state.find_execution(&reference).await?;
    let row = engine::retry_execution(&state.db, row.id).await?;
    Ok(Redirect::to(&format!("/ui/executions/{}", row.id)).into_response())
}
