//! Early cut-off: a step that `"changed"` selected only because an upstream
//! step changed is compared, once runnable, with its run in the source
//! execution. When its resolved inputs equal that run's (the upstream ran
//! again and produced the same outputs), it takes that run's outputs instead
//! of running, and says so in `reused_from`.
//!
//! Inputs are compared by key (`domain::cache::key_of`). An upstream's
//! artifacts directory is a new path in every run, so where the step reads
//! one, the two directories are compared by content: equal content counts
//! as the same path.

use std::time::Duration;

use serde_json::{json, Value};

use super::StepContext;
use crate::{
    content::{artifacts::missing_artifacts, inputs},
    domain::outcome::StepOutcome,
    domain::{
        cache::{explain_difference, key_of, CacheKey},
        definition::StepKind,
    },
    store::{steps, StoreResult},
};

/// Why a reused step was reused, in its `reused_from`.
pub const REASON: &str = "inputs unchanged after upstream re-ran";
/// Why a step of a ForEach iteration was reused (item-level reuse).
pub const ITEM_REASON: &str = "same item and inputs as its iteration in the source execution";

pub enum CutOff {
    /// Not a candidate.
    None,
    /// Its inputs equal the source run's: these are its outputs.
    Reused(StepOutcome),
    /// It runs: why it could not be reused, for its metadata.
    Runs(Value),
}

pub async fn check(ctx: &StepContext<'_>, kind: StepKind, key: &CacheKey) -> StoreResult<CutOff> {
    let step = ctx.step;
    let (Some(run), Some(execution)) = (step.cutoff_run, step.cutoff_execution) else {
        return Ok(CutOff::None);
    };
    let source_arn = ctx.arns.execution(&step.pipeline_name, execution);
    let runs = |why: String| {
        CutOff::Runs(json!({
            "source_execution_arn": source_arn,
            "source_step_run_id": run,
            "reused": false,
            "reason": why,
        }))
    };
    let dependencies = step.dependency_names();
    let Some(source) = steps::cutoff_source(ctx.db, run, &dependencies).await? else {
        return Ok(runs("its run in the source execution no longer exists".into()));
    };
    let Some(mut before) = source.cache_components.clone() else {
        return Ok(runs(
            "its run in the source execution recorded no inputs to compare with".into(),
        ));
    };
    // One budget for all the comparing a step does, as for its CacheInputs:
    // past it, what is left uncompared counts as different and it runs.
    let started = std::time::Instant::now();
    let budget = Duration::from_secs(ctx.config.worker.cache_input_timeout_seconds);
    for dependency in &dependencies {
        let Some(left) = budget.checked_sub(started.elapsed()).filter(|d| !d.is_zero()) else {
            break;
        };
        let limits = inputs::Limits {
            max_bytes: ctx.config.worker.cache_input_max_bytes,
            timeout: left,
        };
        let now = step.upstream.get(dependency).and_then(artifacts_uri);
        let then = source.upstream.get(dependency).and_then(artifacts_uri);
        if let (Some(now), Some(then)) = (now, then) {
            if now != then && same_content(now, then, limits).await {
                replace_text(&mut before, then, now);
            }
        }
    }
    if key_of(kind, &before) != key.key {
        let difference = explain_difference(&key.components, &before).unwrap_or_else(|| "its key differs".into());
        return Ok(runs(format!(
            "its inputs differ from its run in the source: {difference}"
        )));
    }
    if source.status != "Succeeded" {
        return Ok(runs(format!("its run in the source is {}", source.status)));
    }
    if let Some(gone) = missing_artifacts(source.properties.as_ref(), &source.metadata) {
        return Ok(runs(format!("its outputs in the source are gone: {gone}")));
    }
    let reason = if step.parent.is_some() { ITEM_REASON } else { REASON };
    let reused_from = json!({
        "source_execution_arn": source_arn,
        "source_step_run_id": run,
        "reason": reason,
    });
    if !steps::record_reuse(ctx.db, step.id, step.attempt, &reused_from, (&key.key, &key.components)).await? {
        // The attempt is no longer current; its report will be dropped too.
        return Ok(runs("the attempt lost its lease".into()));
    }
    Ok(CutOff::Reused(StepOutcome::Succeeded {
        properties: source.properties.unwrap_or_else(|| json!({})),
        metadata: source.metadata,
        exit_code: None,
        key: None,
    }))
}

fn artifacts_uri(properties: &Value) -> Option<&str> {
    properties.get("ArtifactsUri").and_then(Value::as_str)
}

/// Whether two directories hold the same content, hashed as `CacheInputs`
/// are, within one budget for both (anything unreadable is not the same).
async fn same_content(a: &str, b: &str, limits: inputs::Limits) -> bool {
    let [a, b] = [a, b].map(|p| crate::content::artifacts::artifacts_path(p).display().to_string());
    match inputs::hash_inputs(None, &[a.clone(), b.clone()], limits).await {
        Ok(hashes) => hashes.get(&a).is_some_and(|x| hashes.get(&b) == Some(x)),
        Err(_) => false,
    }
}

/// Replaces `from` with `to` in every string of `v`, object keys included:
/// the content hashes of `CacheInputs` are keyed by path, and a path under
/// the upstream's artifacts directory is new in every run.
fn replace_text(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s.contains(from) => *s = s.replace(from, to),
        Value::Array(a) => a.iter_mut().for_each(|c| replace_text(c, from, to)),
        Value::Object(m) => {
            *m = std::mem::take(m)
                .into_iter()
                .map(|(k, mut c)| {
                    replace_text(&mut c, from, to);
                    (if k.contains(from) { k.replace(from, to) } else { k }, c)
                })
                .collect();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_text_reaches_every_string() {
        let mut v = json!({"Command": ["cat", "/d/1/data.csv"], "Env": {"D": "/d/1"}, "n": 1,
                           "CacheInputs": {"/d/1": "h1", "/d/1/x.csv": "h2", "/e": "h3"}});
        replace_text(&mut v, "/d/1", "/d/2");
        assert_eq!(
            v,
            json!({"Command": ["cat", "/d/2/data.csv"], "Env": {"D": "/d/2"}, "n": 1,
                   "CacheInputs": {"/d/2": "h1", "/d/2/x.csv": "h2", "/e": "h3"}})
        );
    }
}
