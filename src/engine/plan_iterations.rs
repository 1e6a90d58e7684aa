//! The plan of a ForEach, iteration by iteration, in compact form: how many
//! iterations are reused from the source execution, served from the cache,
//! may be either once what they read is known, or run, with the items that
//! (may) run. It pairs items with the source's iterations by the function
//! the expansion uses (`domain::for_each::match_items`), and predicts each
//! body step as the worker will decide it: its key computed now
//! (`content::step_key`) against the key its run in the source recorded
//! (early cut-off), then against the cache, under the same rule
//! (`domain::cache::CacheRule`) as a top-level step.

use std::collections::HashMap;

use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::{decide::Settings, hashing::InputHashes, known::KnownNow};
use crate::{
    content,
    domain::{
        cache::{CacheRule, CacheUse},
        definition::{for_each::ForEachSpec, Step},
        duration::cache_valid_since,
        expr::{evaluate, uses_per_execution_value, ExecutionVar, Resolver},
        for_each::{items_of, match_items},
    },
    store::{cache, for_each as store, selective, StoreError},
};

/// How many items a plan lists by name.
const LISTED: usize = 20;

#[derive(Debug, Serialize)]
pub struct IterationPlan {
    /// The number of items, when they are known before anything runs.
    pub items: Option<usize>,
    /// Iterations whose every body step takes its outputs from the source.
    pub reuse: usize,
    /// Iterations of which no body step runs, and at least one is served
    /// from the cache (the others reused).
    pub cache_hit: usize,
    /// Iterations whose keys are known only once something they read has
    /// run: each runs unless it is then reused or served from the cache.
    pub run_unless_unchanged: usize,
    /// Iterations that run (at least one body step runs).
    pub run: usize,
    /// The first items that run or may run, with why.
    pub runs: Vec<IterationRun>,
    pub reason: String,
    /// The items are not known now, and its iterations may be reused or
    /// served from the cache once they are.
    #[serde(skip)]
    pub maybe_unknown: bool,
}

impl IterationPlan {
    /// The verdict of the ForEach itself, when it runs: hedged, as a
    /// top-level step's, when none of its iterations surely runs and some
    /// may not.
    pub fn hedged(&self) -> bool {
        self.run == 0 && (self.run_unless_unchanged > 0 || self.maybe_unknown)
    }
}

#[derive(Debug, Serialize)]
pub struct IterationRun {
    pub index: usize,
    pub item: Value,
    /// `Run`, or `RunUnlessUnchanged` when it may yet be reused or hit.
    pub verdict: &'static str,
    pub reason: String,
}

/// The resolver of a body step in one iteration: the plan's knowledge, the
/// item, and the outputs its siblings are predicted to have.
struct InIteration<'a> {
    known: &'a KnownNow<'a>,
    item: &'a Value,
    index: usize,
    siblings: &'a HashMap<String, Value>,
}

impl Resolver for InIteration<'_> {
    fn parameter(&self, name: &str) -> Option<Value> {
        self.known.parameter(name)
    }
    fn execution_var(&self, var: ExecutionVar) -> Value {
        self.known.execution_var(var)
    }
    fn step_properties(&self, step: &str) -> Option<Value> {
        self.siblings
            .get(step)
            .cloned()
            .or_else(|| self.known.step_properties(step))
    }
    fn artifact_json(&self, step: &str, file: &str) -> Result<Value, String> {
        match self.siblings.get(step) {
            Some(p) => crate::content::artifacts::read_json(Some(p), step, file, self.known.max_outputs_bytes),
            None => self.known.artifact_json(step, file),
        }
    }
    fn secret(&self, name: &str) -> Result<Value, String> {
        self.known.secret(name)
    }
    fn current_item(&self) -> Option<(Value, usize)> {
        Some((self.item.clone(), self.index))
    }
}

/// What the plan of a ForEach needs besides its spec.
pub struct ForEachContext<'a> {
    pub settings: &'a Settings,
    pub known: &'a KnownNow<'a>,
    pub pipeline_id: Uuid,
    /// What the cache does for the ForEach's iterations: the rule of the
    /// start's steps that run (an iteration of a selected ForEach is
    /// selected, SPEC 9).
    pub rule: CacheRule,
    /// The selective source, whose iterations are compared item by item.
    pub source: Option<Uuid>,
    pub max_items: usize,
    /// The plan's hashes: all of its hashing shares one budget.
    pub hashes: &'a InputHashes<'a>,
}

/// What becomes of one iteration: every body step takes its outputs from
/// the source (`Reuse`), none runs and one at least is served from the
/// cache (`CacheHit`), one may be reused or hit once what it reads is known
/// (`Maybe`), or one runs.
enum Fate {
    Reuse,
    CacheHit,
    Maybe(String),
    Run(String),
}

/// The iterations of ForEach `name` that will run, given what the plan
/// knows and the source execution (if any).
pub async fn plan(
    pool: &PgPool,
    cx: &ForEachContext<'_>,
    name: &str,
    spec: &ForEachSpec,
) -> Result<IterationPlan, StoreError> {
    let mut out = IterationPlan {
        items: None,
        reuse: 0,
        cache_hit: 0,
        run_unless_unchanged: 0,
        run: 0,
        runs: Vec::new(),
        reason: String::new(),
        maybe_unknown: false,
    };
    let source_iterations = match cx.source {
        Some(source) => match store::run_in(&mut *pool.acquire().await?, source, name).await? {
            Some((_, execution)) => store::source_iterations(&mut *pool.acquire().await?, execution, name).await?,
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    let mut lookup = Lookup {
        cx,
        any_entry: HashMap::new(),
    };
    let items = match evaluate(&spec.items, cx.known).and_then(|v| items_of(v, cx.max_items)) {
        Ok(items) => items,
        Err(e) => {
            let may = !source_iterations.is_empty() || lookup.may_hit_any(pool, spec).await?;
            out.reason = match may {
                true => format!(
                    "its items are known only once it runs ({e}); each iteration runs unless it is \
                     reused from the source or served from the cache then"
                ),
                false => format!("its items are known only once it runs ({e})"),
            };
            out.maybe_unknown = may;
            return Ok(out);
        }
    };
    // Paired exactly as the expansion pairs them.
    let pairs = match_items(&items, &super::for_each::source_view(&source_iterations));
    let run_ids: Vec<Uuid> = source_iterations
        .iter()
        .flat_map(|it| it.runs.as_object().into_iter().flat_map(|m| m.values()))
        .filter_map(|v| v.as_str().and_then(|s| s.parse().ok()))
        .collect();
    let outputs = selective::run_properties(&mut *pool.acquire().await?, &run_ids).await?;
    out.items = Some(items.len());
    let order = body_order(spec);
    for (i, item) in items.iter().enumerate() {
        let paired = pairs[i].and_then(|j| source_iterations.iter().find(|it| it.iteration.max(0) as usize == j));
        let from_source = paired.map(|it| InIterationSource {
            keys: &it.keys,
            runs: &it.runs,
            outputs: &outputs,
        });
        let fate = iteration(pool, &mut lookup, &order, item, i, from_source.as_ref()).await?;
        let (verdict, reason) = match fate {
            Fate::Reuse => {
                out.reuse += 1;
                continue;
            }
            Fate::CacheHit => {
                out.cache_hit += 1;
                continue;
            }
            Fate::Maybe(why) => {
                out.run_unless_unchanged += 1;
                ("RunUnlessUnchanged", why)
            }
            Fate::Run(why) => {
                out.run += 1;
                ("Run", why)
            }
        };
        let reason = match (paired, cx.source) {
            (Some(_), _) => reason,
            (None, None) => reason,
            (None, Some(_)) => format!("no iteration of the source ran this item and succeeded; {reason}"),
        };
        if out.runs.len() < LISTED {
            out.runs.push(IterationRun {
                index: i,
                item: item.clone(),
                verdict,
                reason,
            });
        }
    }
    out.reason = format!(
        "of {} iterations, {} reuse their outputs from the source, {} are served from the cache, {} run \
         unless what they read turns out unchanged, {} run",
        items.len(),
        out.reuse,
        out.cache_hit,
        out.run_unless_unchanged,
        out.run
    );
    Ok(out)
}

/// The body steps in an order where each comes after the siblings it
/// depends on (the order written, where that already is one).
fn body_order(spec: &ForEachSpec) -> Vec<&Step> {
    let mut done: Vec<&Step> = Vec::with_capacity(spec.body.len());
    while done.len() < spec.body.len() {
        let before = done.len();
        for body in &spec.body {
            let placed = |n: &str| done.iter().any(|d| d.name == n);
            let ready = body.depends_on.iter().all(|d| placed(d) || spec.body_step(d).is_none());
            if !placed(&body.name) && ready {
                done.push(body);
            }
        }
        if done.len() == before {
            // A cycle cannot pass validation; keep the written order.
            return spec.body.iter().collect();
        }
    }
    done
}

struct InIterationSource<'a> {
    keys: &'a Value,
    runs: &'a Value,
    outputs: &'a HashMap<Uuid, Value>,
}

impl InIterationSource<'_> {
    /// The outputs of body step `name`'s run in the source, when its key
    /// there is `key`.
    fn same(&self, name: &str, key: &str) -> Option<Value> {
        if self.keys.get(name).and_then(Value::as_str) != Some(key) {
            return None;
        }
        let run = self.runs.get(name).and_then(Value::as_str)?.parse::<Uuid>().ok();
        Some(run.and_then(|r| self.outputs.get(&r)).cloned().unwrap_or(Value::Null))
    }

    fn has_run(&self, name: &str) -> bool {
        self.runs.get(name).is_some()
    }
}

/// The cache lookups of a ForEach's plan.
struct Lookup<'a> {
    cx: &'a ForEachContext<'a>,
    /// Whether the cache holds any entry of a body step, by name.
    any_entry: HashMap<String, bool>,
}

impl Lookup<'_> {
    fn looks_up(&self, body: &Step) -> bool {
        self.cx.rule.for_step(body.caching_enabled()) == CacheUse::LookUp
    }

    /// Whether body step `body` may be served from the cache once its key
    /// is known: it looks up, and the cache holds an entry of it.
    async fn may_hit(&mut self, pool: &PgPool, body: &Step) -> Result<bool, StoreError> {
        if !self.looks_up(body) {
            return Ok(false);
        }
        if let Some(any) = self.any_entry.get(&body.name) {
            return Ok(*any);
        }
        let any = cache::nearest_entry(&mut *pool.acquire().await?, self.cx.pipeline_id, &body.name)
            .await?
            .is_some();
        self.any_entry.insert(body.name.clone(), any);
        Ok(any)
    }

    async fn may_hit_any(&mut self, pool: &PgPool, spec: &ForEachSpec) -> Result<bool, StoreError> {
        for body in &spec.body {
            if self.may_hit(pool, body).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The outputs of a usable entry with `key`, if one exists.
    async fn hit(&mut self, pool: &PgPool, body: &Step, key: &str) -> Result<Option<Value>, StoreError> {
        if !self.looks_up(body) {
            return Ok(None);
        }
        let expire_after = body.cache.and_then(|c| c.expire_after);
        let earliest = cache_valid_since(expire_after, self.cx.settings.cache_cap, Utc::now());
        let entries =
            cache::entries_with_key(&mut *pool.acquire().await?, self.cx.pipeline_id, &body.name, key, 20).await?;
        for entry in entries {
            if content::usable(&entry, earliest).is_ok() {
                return Ok(Some(entry.properties.unwrap_or_else(|| json!({}))));
            }
        }
        Ok(None)
    }
}

/// The fate of one iteration, body step by body step, as the worker will
/// decide each: early cut-off against its run in the source when the
/// iteration is paired (`executor::cutoff`), then the cache.
async fn iteration(
    pool: &PgPool,
    lookup: &mut Lookup<'_>,
    order: &[&Step],
    item: &Value,
    index: usize,
    source: Option<&InIterationSource<'_>>,
) -> Result<Fate, StoreError> {
    let mut siblings: HashMap<String, Value> = HashMap::new();
    let mut maybe: Option<String> = None;
    let mut hits = 0;
    for body in order {
        let may_cutoff = source.is_some_and(|s| s.has_run(&body.name));
        if !body.kind.is_cacheable() {
            return Ok(Fate::Run(format!(
                "its {} step {} always runs",
                body.kind.as_str(),
                body.name
            )));
        }
        if !uses_per_execution_value(&body.arguments).is_empty() {
            return Ok(Fate::Run(format!(
                "{} uses a value that differs in every execution",
                body.name
            )));
        }
        let resolver = InIteration {
            known: lookup.cx.known,
            item,
            index,
            siblings: &siblings,
        };
        let resolved = match evaluate(&body.arguments, &resolver) {
            Ok(r) => r,
            Err(e) => {
                if !may_cutoff && !lookup.may_hit(pool, body).await? {
                    return Ok(Fate::Run(format!(
                        "{} runs: its inputs are known only once it runs",
                        body.name
                    )));
                }
                maybe.get_or_insert(format!(
                    "{} runs unless, once what it reads is known, it is reused or served from the cache ({e})",
                    body.name
                ));
                continue;
            }
        };
        // No connection is held here: the pool's are each given back.
        let key = match lookup.cx.hashes.step_key(body.kind, &body.arguments, &resolved).await {
            Ok(Some(k)) => k,
            Ok(None) => {
                maybe.get_or_insert(format!(
                    "the inputs of {} were not hashed: the plan's hashing took longer than \
                     worker.cache_input_timeout_seconds",
                    body.name
                ));
                continue;
            }
            Err(e) => return Ok(Fate::Run(format!("the key of {} cannot be computed: {e}", body.name))),
        };
        if let Some(outputs) = source.and_then(|s| s.same(&body.name, &key.key)) {
            siblings.insert(body.name.clone(), outputs);
            continue;
        }
        if let Some(outputs) = lookup.hit(pool, body, &key.key).await? {
            hits += 1;
            siblings.insert(body.name.clone(), outputs);
            continue;
        }
        let why = match (source, may_cutoff) {
            (Some(_), true) => format!("the inputs of {} differ from its run in the source", body.name),
            (Some(_), false) => format!("{} did not run in the source's iteration", body.name),
            (None, _) => format!("{} runs", body.name),
        };
        let why = match lookup.looks_up(body) {
            true => format!("{why}; no usable cache entry has its key"),
            false if body.caching_enabled() => format!("{why}; the cache is not looked up"),
            false => why,
        };
        return Ok(Fate::Run(why));
    }
    Ok(match (maybe, hits) {
        (Some(why), _) => Fate::Maybe(why),
        (None, 0) => Fate::Reuse,
        (None, _) => Fate::CacheHit,
    })
}
