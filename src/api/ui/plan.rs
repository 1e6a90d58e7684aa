//! Plan before you run: the form on a pipeline page (everything, the
//! steps ticked, or "changed", against a source execution), the plan drawn
//! on the DAG with each step's verdict and reason, and the start. The plan
//! and the start are the engine's own (`engine::plan`, `engine::start`),
//! decided by the same code as the REST API's.

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    response::{IntoResponse, Redirect, Response},
};
use maud::{html, Markup};
use serde_json::{json, Value};

use super::{
    field, form_pairs,
    graph::Graph,
    layout,
    pages::{enc, execution_link, short_arn, status_badge},
    svg::{self, Deco},
    UiError, UiResult, Who,
};
use crate::{
    api::{error::ApiError, executions::StartBody, extract::parse_json, extract::Path, AppState},
    engine::{
        decide::Settings,
        plan::{self, StepVerdict},
        start,
    },
    store::executions::ExecutionRow,
};

/// The plan form of a pipeline page.
pub fn form(name: &str, graph: &Graph, executions: &[ExecutionRow]) -> Markup {
    html! {
        section aria-labelledby="plan" {
            h2 id="plan" { "Plan a run" }
            form method="get" action=(format!("/ui/pipelines/{}/plan", enc(name))) class="plan-form" {
                fieldset {
                    legend { "What to run" }
                    div { input type="radio" id="mode-all" name="mode" value="all" checked; label for="mode-all" { "Every step (a full run)" } }
                    div { input type="radio" id="mode-changed" name="mode" value="changed"; label for="mode-changed" { "What changed since the source execution (\"changed\")" } }
                    div { input type="radio" id="mode-steps" name="mode" value="steps"; label for="mode-steps" { "The steps ticked below; the others are reused from the source" } }
                }
                fieldset class="step-picks" {
                    legend { "Steps" }
                    @for node in graph.nodes.iter().filter(|n| n.group.is_none()) {
                        div {
                            input type="checkbox" id=(format!("pick-{}", node.name)) name="step" value=(node.name);
                            label for=(format!("pick-{}", node.name)) { (node.name) }
                        }
                    }
                }
                div {
                    label for="source" { "Source execution" }
                    select id="source" name="source" {
                        option value="" { "the latest that succeeded" }
                        @for e in executions.iter().filter(|e| e.is_terminal()) {
                            option value=(e.id) { (e.id) " (" (e.status) ")" }
                        }
                    }
                }
                button type="submit" { "Plan" }
            }
        }
    }
}

/// The start request the form's fields describe.
fn start_body(pairs: &[(String, String)]) -> UiResult<StartBody> {
    let source = field(pairs, "source").filter(|s| !s.is_empty());
    let steps: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "step")
        .map(|(_, v)| v.as_str())
        .collect();
    let body = match field(pairs, "mode").unwrap_or("all") {
        "all" => json!({}),
        "changed" => json!({"selective_execution": {"selected_steps": "changed", "source_execution": source}}),
        "steps" if steps.is_empty() => {
            return Err(UiError(ApiError::invalid(
                "?step",
                "tick at least one step to run, or choose a full run or \"changed\"",
            )))
        }
        "steps" => json!({"selective_execution": {"selected_steps": steps, "source_execution": source}}),
        other => {
            return Err(UiError(ApiError::invalid(
                "?mode",
                format!("mode must be all, changed or steps, got {other:?}"),
            )))
        }
    };
    let body = strip_nulls(body);
    Ok(parse_json(body.to_string().as_bytes())?)
}

/// Drops null members (no source execution means "the latest").
fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}

fn verdict_icon(verdict: &str) -> &'static str {
    match verdict {
        "Run" => "▶",
        "RunUnlessUnchanged" => "◐",
        "RunIfBranchTaken" => "⑂",
        "Reuse" => "↺",
        "CacheHit" => "⚡",
        "Skip" => "⤼",
        _ => "•",
    }
}

/// The plan of a start, drawn on the DAG, with the button that starts it.
pub async fn plan(
    State(state): State<AppState>,
    who: Who,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> UiResult<Response> {
    let pairs = form_pairs(query.unwrap_or_default().as_bytes());
    let request = start_body(&pairs)?.into_request()?;
    let settings = Settings::from_config(&state.config);
    let planned = plan::plan_execution(&state.db, &state.arns, &settings, &state.definitions, &name, &request).await?;
    let pipeline = crate::store::pipelines::get(&state.db, &name, None).await?;
    let graph = Graph::from_definition(&pipeline.definition);
    let verdict_of = |step: &str| -> Option<&StepVerdict> { planned.steps.iter().find(|v| v.step_name == step) };
    let decos = svg::decorate(&graph, |node| match verdict_of(&node.name) {
        Some(v) => Deco {
            class: format!("v-{}", v.verdict),
            icon: verdict_icon(v.verdict),
            detail: v.verdict.to_string(),
            href: None,
            aria: format!("step {}: {}, {}", node.name, v.verdict, v.reason),
        },
        None => Deco {
            class: "v-none".into(),
            icon: "•",
            detail: "not planned".into(),
            href: None,
            aria: format!("step {}: not planned", node.name),
        },
    });
    let dag = svg::render(graph, decos).await;
    let body = html! {
        p { a href=(format!("/ui/pipelines/{}", enc(&name))) { "← " (name) } }
        h1 { "Plan for " (name) }
        @if !planned.errors.is_empty() {
            div class="error" role="alert" {
                p { "A start with these choices would be refused:" }
                ul { @for e in &planned.errors { li { @if !e.path.is_empty() { code { (e.path) } ": " } (e.message) } } }
            }
        }
        @if let Some(arn) = &planned.source_execution_arn {
            p { "Source execution: "
                @match execution_link(&state, arn) { Some(href) => a href=(href) { (short_arn(arn)) }, None => (arn) } }
        }
        div class="dag-wrap" { (dag) }
        @if !planned.steps.is_empty() { table class="plan" {
            thead { tr { th scope="col" { "Step" } th scope="col" { "Verdict" } th scope="col" { "Reason" } th scope="col" { "Changes" } } }
            tbody {
                @for v in &planned.steps {
                    tr data-step=(v.step_name) {
                        td { (v.step_name) }
                        td { span class=(format!("verdict v-{}", v.verdict)) { span aria-hidden="true" { (verdict_icon(v.verdict)) " " } (v.verdict) } }
                        td { (v.reason) }
                        td { @for c in &v.changes { div { (c) } } }
                    }
                }
            }
        } }
        @if planned.errors.is_empty() {
            form method="post" action=(format!("/ui/pipelines/{}/start", enc(&name))) {
                @for (k, v) in pairs.iter().filter(|(k, _)| matches!(k.as_str(), "mode" | "step" | "source")) {
                    input type="hidden" name=(k) value=(v);
                }
                button type="submit" class="primary" { "Start this run" }
            }
        }
        p class="hint" { "A plan is what the start would do now; " (status_badge("Executing")) " executions may change it." }
    };
    Ok(super::page(layout(&format!("Plan {name}"), Some(&who), body)))
}

/// Starts the run the form describes and shows it.
pub async fn start(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> UiResult<Response> {
    let pairs = form_pairs(&body);
    let request = start_body(&pairs)?.into_request()?;
    let settings = Settings::from_config(&state.config);
    let (row, _) =
        start::start_execution(&state.db, &state.arns, &settings, &state.definitions, &name, &request).await?;
    tracing::info!(execution.id = %row.id, pipeline = %name, "execution started from the web UI");
    Ok(Redirect::to(&format!("/ui/executions/{}", row.id)).into_response())
}
