//! Step caching at run time (SPEC 4): compute the key of a step from its
//! resolved arguments (and the content of its `CacheInputs`), look for a
//! recent entry with the same key, and record the decision with an
//! explanation when it misses.

use chrono::Utc;
use serde_json::{json, Value};

use super::StepContext;
use crate::{
    content::Unusable,
    domain::outcome::StepOutcome,
    domain::{
        cache::{explain_difference, CacheKey, CacheMode, CacheRule, CacheUse},
        definition::{CacheConfig, StepKind},
        duration::cache_valid_since,
    },
    store::{
        cache::{self, Entry, KeyRecord},
        steps::ClaimedStep,
        StoreResult,
    },
};

pub enum Decision {
    /// The step does not use the cache: its key is recorded with its
    /// success.
    Uncached,
    Run,
    Hit(StepOutcome),
}

/// What the cache does for a claimed step: the rule the plan follows too.
fn rule_of(step: &ClaimedStep) -> CacheRule {
    CacheRule {
        // The column holds only what `CacheMode::as_str` wrote; a value it
        // cannot read looks nothing up rather than serve a hit.
        mode: step.cache_mode.parse().unwrap_or(CacheMode::Off),
        selected: step.selected,
        asked_to_use: step.cache_lookup,
    }
}

/// Decides whether the claimed step runs or is served from the cache, given
/// its key (`content::step_key`), which it records.
/// `config` is the step's `CacheConfig` as stored, read once by the caller.
pub async fn decide(
    ctx: &StepContext<'_>,
    kind: StepKind,
    key: &CacheKey,
    config: Option<CacheConfig>,
) -> StoreResult<Decision> {
    let step = ctx.step;
    let cached = config.is_some_and(|c| c.enabled) && kind.is_cacheable();
    let status = match rule_of(step).for_step(cached) {
        CacheUse::Uncached => return Ok(Decision::Uncached),
        CacheUse::Disabled => "disabled",
        CacheUse::Bypassed => "bypassed",
        CacheUse::LookUp => "miss",
    };
    let Some(config) = config else {
        return Ok(Decision::Uncached);
    };
    let warnings = json!(key.warnings);
    let mut record = KeyRecord {
        key: &key.key,
        components: &key.components,
        status,
        miss_reason: None,
        warnings: &warnings,
        hit: None,
    };
    if status != "miss" {
        cache::record(ctx.db, step.id, step.attempt, &record).await?;
        return Ok(Decision::Run);
    }

    let mut conn = ctx.db.acquire().await?;
    let earliest = cache_valid_since(config.expire_after, ctx.config.cache.max_expire_after, Utc::now());
    let candidates = cache::entries_with_key(&mut conn, step.pipeline_id, step.cache_name(), &key.key, 20).await?;
    let mut expired_entry: Option<&Entry> = None;
    let mut artifacts_gone: Option<(&Entry, String)> = None;
    for entry in &candidates {
        match crate::content::usable(entry, earliest) {
            Ok(()) => {}
            Err(Unusable::Expired) => {
                expired_entry.get_or_insert(entry);
                continue;
            }
            Err(Unusable::ArtifactsGone(missing)) => {
                artifacts_gone.get_or_insert((entry, missing));
                continue;
            }
        }
        let hit = json!({
            "source_execution_arn": ctx.arns.execution(&entry.pipeline_name, entry.execution_id),
            "source_step_run_id": entry.id,
        });
        record.status = "hit";
        record.hit = Some(&hit);
        cache::record(ctx.db, step.id, step.attempt, &record).await?;
        return Ok(Decision::Hit(StepOutcome::Succeeded {
            properties: entry.properties.clone().unwrap_or(json!({})),
            metadata: entry.metadata.clone(),
            exit_code: None,
            key: None,
        }));
    }

    let reason = if let Some((entry, path)) = artifacts_gone {
        format!(
            "the entry from execution {} has lost its artifacts ({path})",
            entry.execution_id
        )
    } else if let Some(entry) = expired_entry {
        format!(
            "the entry from execution {} (ended {}) is older than ExpireAfter (at most cache.max_expire_after)",
            entry.execution_id,
            entry.ended_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        )
    } else {
        match cache::nearest_entry(&mut conn, step.pipeline_id, step.cache_name()).await? {
            None => format!(
                "no earlier cache entry for step {:?} in this pipeline",
                step.cache_name()
            ),
            Some(previous) => {
                let before = previous.cache_components.clone().unwrap_or(Value::Null);
                match explain_difference(&key.components, &before) {
                    Some(diff) => format!("differs from the entry of execution {}: {diff}", previous.execution_id),
                    None => format!("the entry of execution {} is no longer usable", previous.execution_id),
                }
            }
        }
    };
    record.miss_reason = Some(&reason);
    cache::record(ctx.db, step.id, step.attempt, &record).await?;
    Ok(Decision::Run)
}
