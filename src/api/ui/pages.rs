//! Pipelines: the list; one pipeline with its versions, its DAG, its
//! executions (filtered by status) and the plan form; one version's
//! definition; the diff between two versions.

use axum::{
    extract::{RawQuery, State},
    response::Response,
};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde_json::Value;
use similar::{ChangeTag, TextDiff};

use super::{
    field, form_pairs,
    graph::Graph,
    layout, may, page,
    svg::{self, Deco},
    UiError, UiResult, Who,
};
use crate::{
    api::{error::ApiError, extract::Path, AppState},
    store::{self, executions::ExecutionRow},
};

const STATUSES: [&str; 5] = ["Executing", "Stopping", "Succeeded", "Failed", "Stopped"];

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A glyph for a status, so that it reads without colour.
pub fn icon(status: &str) -> &'static str {
    match status {
        "Succeeded" => "✔",
        "Failed" => "✖",
        "Executing" | "Starting" => "▶",
        "Stopping" | "Stopped" => "■",
        "Skipped" => "⤼",
        "Pending" => "○",
        _ => "•",
    }
}

pub fn when(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `1m 05s`, or `-` when it has not started.
pub fn duration(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> String {
    let Some(start) = start else { return "-".into() };
    let end = end.unwrap_or_else(Utc::now);
    let seconds = (end - start).num_milliseconds().max(0) as f64 / 1000.0;
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        let whole = seconds as u64;
        format!("{}m {:02}s", whole / 60, whole % 60)
    }
}

pub fn status_badge(status: &str) -> Markup {
    html! { span class=(format!("status st-{status}")) { span aria-hidden="true" { (icon(status)) " " } (status) } }
}

/// The UI page of the execution an ARN names, if it parses.
pub fn execution_link(state: &AppState, arn: &str) -> Option<String> {
    state
        .arns
        .parse_execution(arn)
        .ok()
        .map(|parsed| format!("/ui/executions/{}", parsed.id))
}

/// Every pipeline.
pub async fn pipelines(State(state): State<AppState>, who: Who) -> UiResult<Response> {
    let rows = store::pipelines::list(&state.db, None, None, 1000).await?;
    Ok(page(layout(
        "Pipelines",
        Some(&who),
        html! {
            h1 { "Pipelines" }
            @if rows.is_empty() {
                p { "No pipelines yet. Create one with " code { "POST /v1/pipelines" } " (see the README)." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Latest version" } th scope="col" { "Updated" } th scope="col" { "Description" } } }
                    tbody {
                        @for p in &rows {
                            tr {
                                td { a href=(format!("/ui/pipelines/{}", enc(&p.name))) { (p.name) } }
                                td { (p.version) }
                                td { (when(&p.updated_at)) }
                                td { (p.description.clone().unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        },
    )))
}

/// A query's version number, if given.
fn version_param(pairs: &[(String, String)], key: &str) -> UiResult<Option<i32>> {
    match field(pairs, key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse::<i32>().ok().filter(|v| *v >= 1).map(Some).ok_or_else(|| {
            UiError(ApiError::invalid(
                format!("?{key}"),
                format!("{key} must be a positive integer, got {v:?}"),
            ))
        }),
    }
}

/// One pipeline: versions, the DAG of one, executions, and the plan form.
pub async fn pipeline(
    State(state): State<AppState>,
    who: Who,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> UiResult<Response> {
    let pairs = form_pairs(query.unwrap_or_default().as_bytes());
    let version = version_param(&pairs, "version")?;
    let status = field(&pairs, "status").filter(|s| !s.is_empty());
    if let Some(status) = status {
        if !STATUSES.contains(&status) {
            return Err(UiError(ApiError::invalid(
                "?status",
                format!("unknown status {status:?}; one of {STATUSES:?}"),
            )));
        }
    }
    let latest = store::pipelines::get(&state.db, &name, None).await?;
    let shown = match version {
        Some(v) if v != latest.version => store::pipelines::get(&state.db, &name, Some(v)).await?,
        _ => latest.clone(),
    };
    let versions = store::pipelines::list_versions(&state.db, &name, None, 1000).await?;
    let executions = store::executions::list(&state.db, latest.id, status, None, 100).await?;
    let graph = Graph::from_definition(&shown.definition);
    let picks = super::plan::form(&name, &graph, &executions);
    let decos = svg::decorate(&graph, |node| Deco {
        class: format!("kind-{}", node.kind),
        icon: "□",
        detail: node.kind.clone(),
        href: None,
        aria: format!("step {} ({})", node.name, node.kind),
    });
    let dag = svg::render(graph, decos).await;
    let base = format!("/ui/pipelines/{}", enc(&name));
    let can_start = may(&who, "POST", "/ui/pipelines/{name}/start");
    let body = html! {
        h1 { "Pipeline " (name) }
        @if let Some(d) = &latest.description { p { (d) } }
        section aria-labelledby="versions" {
            h2 id="versions" { "Versions" }
            table {
                thead { tr { th scope="col" { "Version" } th scope="col" { "Created" } th scope="col" { "Definition" } th scope="col" { "Diff" } } }
                tbody {
                    @for v in &versions {
                        tr {
                            td { a href=(format!("{base}?version={}", v.version)) aria-current=[(v.version == shown.version).then_some("true")] { "v" (v.version) } }
                            td { (when(&v.created_at)) }
                            td { a href=(format!("{base}/versions/{}", v.version)) { "definition" } }
                            td { @if v.version > 1 { a href=(format!("{base}/diff?from={}&to={}", v.version - 1, v.version)) { "v" (v.version - 1) " → v" (v.version) } } }
                        }
                    }
                }
            }
        }
        section aria-labelledby="graph" {
            h2 id="graph" { "Graph of version " (shown.version) }
            div class="dag-wrap" { (dag) }
        }
        section aria-labelledby="executions" {
            h2 id="executions" { "Executions" }
            form method="get" action=(base) class="inline" {
                label for="status" { "Status" }
                select id="status" name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s) selected[status == Some(s)] { (s) } }
                }
                button type="submit" { "Filter" }
            }
            (executions_table(&state, &executions))
        }
        @if can_start {
            (picks)
        }
    };
    Ok(page(layout(&format!("Pipeline {name}"), Some(&who), body)))
}

fn executions_table(state: &AppState, rows: &[ExecutionRow]) -> Markup {
    html! {
        @if rows.is_empty() {
            p { "No executions." }
        } @else {
            table class="executions" {
                thead { tr {
                    th scope="col" { "Execution" } th scope="col" { "Status" } th scope="col" { "Version" }
                    th scope="col" { "Created" } th scope="col" { "Duration" } th scope="col" { "Selective" }
                } }
                tbody {
                    @for e in rows {
                        @let source = e.selective_execution.as_ref().and_then(|s| s.get("source_execution_arn")).and_then(Value::as_str);
                        tr {
                            td { a href=(format!("/ui/executions/{}", e.id)) { (e.display_name.clone().unwrap_or_else(|| e.id.to_string())) } }
                            td { (status_badge(&e.status)) }
                            td { "v" (e.pipeline_version) }
                            td { (when(&e.created_at)) }
                            td { (duration(e.started_at, e.ended_at)) }
                            td {
                                @if e.selective_execution.is_some() {
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
                    }
                }
            }
        }
    }
}

/// The execution id at the end of an ARN.
pub fn short_arn(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

fn pretty(definition: &Value) -> String {
    let document = match definition {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| definition.clone()),
        other => other.clone(),
    };
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

/// One version's definition.
pub async fn version(
    State(state): State<AppState>,
    who: Who,
    Path((name, version)): Path<(String, String)>,
) -> UiResult<Response> {
    let version: i32 = version.parse().ok().filter(|v| *v >= 1).ok_or_else(|| {
        UiError(ApiError::invalid(
            "/version",
            format!("version must be a positive integer, got {version:?}"),
        ))
    })?;
    let row = store::pipelines::get(&state.db, &name, Some(version)).await?;
    let body = html! {
        p { a href=(format!("/ui/pipelines/{}", enc(&name))) { "← " (name) } }
        h1 { (name) " version " (version) }
        pre class="definition" tabindex="0" aria-label="definition" { (pretty(&row.definition)) }
    };
    Ok(page(layout(&format!("{name} v{version}"), Some(&who), body)))
}

/// The differences between two versions' definitions, line by line.
pub async fn diff(
    State(state): State<AppState>,
    who: Who,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> UiResult<Response> {
    let pairs = form_pairs(query.unwrap_or_default().as_bytes());
    let latest = store::pipelines::get(&state.db, &name, None).await?;
    let to = version_param(&pairs, "to")?.unwrap_or(latest.version);
    let from = version_param(&pairs, "from")?.unwrap_or((to - 1).max(1));
    let old = pretty(&store::pipelines::get(&state.db, &name, Some(from)).await?.definition);
    let new = pretty(&store::pipelines::get(&state.db, &name, Some(to)).await?.definition);
    let diff = TextDiff::from_lines(&old, &new);
    let groups = diff.grouped_ops(3);
    let body = html! {
        p { a href=(format!("/ui/pipelines/{}", enc(&name))) { "← " (name) } }
        h1 { (name) ": version " (from) " → " (to) }
        form method="get" class="inline" {
            label for="from" { "From" } input id="from" name="from" type="number" min="1" value=(from);
            label for="to" { "To" } input id="to" name="to" type="number" min="1" value=(to);
            button type="submit" { "Compare" }
        }
        @if groups.is_empty() {
            p { "The two definitions are the same." }
        } @else {
            pre class="diff" tabindex="0" aria-label="differences" {
                @for group in &groups {
                    span class="hunk" { "@@\n" }
                    @for op in group {
                        @for change in diff.iter_changes(op) {
                            @match change.tag() {
                                ChangeTag::Delete => del { "- " (change.value()) },
                                ChangeTag::Insert => ins { "+ " (change.value()) },
                                ChangeTag::Equal => span { "  " (change.value()) },
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(layout(&format!("{name} v{from} → v{to}"), Some(&who), body)))
}
