//! The dry run of a start (`POST .../executions/plan`): the decisions of a
//! start (`decide::prepare`, the same function), written nowhere, and for
//! each step what will happen to it and why.
//!
//! Steps are predicted in dependency order, each with what is known before
//! anything runs: parameters, the outputs of reused steps, the outputs of
//! cache entries that predicted hits will hand on, the outputs of Pass steps
//! whose inputs are known (their resolved arguments), the outcome of
//! Conditions it evaluated, and the JSON files (`Std:JsonGet`) in the
//! artifacts of steps whose outputs are known. A cached step whose
//! key can be computed from those is a `CacheHit` when a usable entry
//! exists, computed as the worker computes it (`content::step_key`, the same
//! hashing of `CacheInputs`, the same expiry and artifacts checks). What
//! depends on a step that runs cannot be known: such a step is
//! `RunUnlessUnchanged` when it may still be reused (early cut-off) or hit
//! the cache, else `Run`. Conditions whose inputs are known are evaluated,
//! so the steps of the branch they will not take are `Skip`. A step with a
//! Failed or Stopped trigger (and what runs only after it) is
//! `RunIfTriggered`: the plan cannot foresee failures.

use std::{collections::HashMap, sync::Arc};

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    decide::{prepare, Prepared, Settings, StepPlan},
    definitions::Definitions,
    hashing::{InputHashes, MAX_PASSES},
    known::KnownNow,
    plan_iterations::{ForEachContext, IterationPlan},
    request::{StartError, StartRequest},
    start::load_definition,
};
use crate::{
    content,
    domain::{
        cache::{CacheRule, CacheUse},
        condition::evaluate_conditions,
        definition::{Definition, Step, StepKind, Trigger},
        duration::cache_valid_since,
        expr::{evaluate, uses_per_execution_value},
        json_list, Issue,
    },
    ids::Arns,
    store::{
        cache, executions,
        pipelines::{self, PipelineHead},
        secrets, selective, StoreError,
    },
};

#[derive(Debug, Serialize)]
pub struct StepVerdict {
    pub step_name: String,
    /// `Run`, `RunUnlessUnchanged`, `RunIfBranchTaken`, `RunIfTriggered`,
    /// `Reuse`, `CacheHit` or `Skip`.
    pub verdict: &'static str,
    pub reason: String,
    /// What changed, for a step that runs because of a change
    /// (`parameter Epochs: 10 -> 12`, `downstream of Train`).
    pub changes: Vec<String>,
    pub source_execution_arn: Option<String>,
    /// For a ForEach that runs: its iterations, in compact form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<IterationPlan>,
}

#[derive(Debug, Serialize)]
pub struct ExecutionPlan {
    pub steps: Vec<StepVerdict>,
    pub source_execution_arn: Option<String>,
    pub errors: Vec<Issue>,
}

impl ExecutionPlan {
    pub fn failed(message: String, issues: Vec<Issue>) -> ExecutionPlan {
        let errors = if issues.is_empty() {
            vec![Issue::new("", message)]
        } else {
            issues
        };
        ExecutionPlan {
            steps: Vec::new(),
            source_execution_arn: None,
            errors,
        }
    }
}

/// The plan of a start. It decides as the start does (`prepare`, in passes
/// whose hashes are made between them, `InputHashes`), then predicts each
/// step holding a pooled connection only for each query: no connection is
/// held, and no transaction open, while it hashes.
pub async fn plan_execution(
    pool: &PgPool,
    arns: &Arns,
    settings: &Settings,
    definitions: &Definitions,
    pipeline_name: &str,
    req: &StartRequest,
) -> Result<ExecutionPlan, StoreError> {
    let hashes = InputHashes::new(settings);
    let mut pass = 1;
    let (pipeline, definition, prepared) = loop {
        // A transaction that is never committed: nothing a plan does is kept.
        let mut tx = pool.begin().await?;
        let decided = decide(&mut tx, arns, definitions, pipeline_name, req, &hashes).await;
        tx.rollback().await?;
        let decided = match decided? {
            Ok(decided) => decided,
            Err(failed) => return Ok(failed),
        };
        if !hashes.has_pending() || pass >= MAX_PASSES || !hashes.hash_pending().await {
            break decided;
        }
        pass += 1;
    };
    let reused: Vec<Uuid> = prepared
        .plans
        .values()
        .filter_map(|p| match p {
            StepPlan::Reuse { step_run, .. } => Some(*step_run),
            _ => None,
        })
        .collect();
    let reused_properties = selective::run_properties(&mut *pool.acquire().await?, &reused).await?;
    let rule = CacheRule::for_start(req.cache_mode, req.selective_execution.is_some());
    let mut predictor = Predictor {
        pool,
        arns,
        settings,
        pipeline: &pipeline,
        parameters: &prepared.parameters,
        rule,
        known: HashMap::new(),
        verdicts: HashMap::new(),
        outcomes: HashMap::new(),
        hashes: &hashes,
        source_execution: prepared.source_execution,
    };
    for name in definition.dag.topological_order() {
        let Some(step) = definition.step(&name) else { continue };
        let plan = prepared.plans.get(&name).cloned().unwrap_or_else(StepPlan::run);
        let verdict = predictor.verdict(&definition, step, plan, &reused_properties).await?;
        predictor.verdicts.insert(name, verdict);
    }
    let steps = definition
        .steps
        .iter()
        .filter_map(|s| predictor.verdicts.remove(&s.name))
        .collect();
    Ok(ExecutionPlan {
        steps,
        source_execution_arn: prepared.source_arn,
        errors: Vec::new(),
    })
}

/// One pass of the start's decisions, in `conn`'s transaction: the
/// pipeline, its definition and what the start would do; or the plan of a
/// start that would be refused.
async fn decide(
    conn: &mut PgConnection,
    arns: &Arns,
    definitions: &Definitions,
    pipeline_name: &str,
    req: &StartRequest,
    hashes: &InputHashes<'_>,
) -> Result<Result<(PipelineHead, Arc<Definition>, Prepared), ExecutionPlan>, StoreError> {
    let pipeline = pipelines::head_in(conn, pipeline_name, req.pipeline_version).await?;
    // A start with a token already used starts nothing: say so, as the
    // start would answer.
    if let Some(token) = &req.client_request_token {
        if let Some(existing) = executions::find_by_token(conn, pipeline.id, token).await? {
            let arn = arns.execution(&pipeline.name, existing.id);
            let message = if existing.request_hash.as_deref() == Some(req.request_hash.as_str()) {
                format!(
                    "client_request_token {token:?} was already used for execution {arn} with this request; \
                     a start returns that execution and starts nothing"
                )
            } else {
                format!(
                    "client_request_token {token:?} was already used for execution {arn} with a different \
                     request body; a start is refused"
                )
            };
            let issue = Issue::new("/client_request_token", message.clone());
            return Ok(Err(ExecutionPlan::failed(message, vec![issue])));
        }
    }
    let refused = |e: StartError| match e {
        StartError::Invalid { message, issues } => Ok(Err(ExecutionPlan::failed(message, issues))),
        StartError::Store(e) => Err(e),
    };
    let definition = match load_definition(conn, definitions, &pipeline).await {
        Ok(d) => d,
        Err(e) => return refused(e),
    };
    match prepare(conn, arns, &pipeline, &definition, req, hashes).await {
        Ok(prepared) => Ok(Ok((pipeline, definition, prepared))),
        Err(e) => refused(e),
    }
}

/// What the plan knows as it walks the steps in dependency order.
struct Predictor<'a> {
    /// Each query takes a connection and gives it back: none is held while
    /// hashing.
    pool: &'a PgPool,
    arns: &'a Arns,
    settings: &'a Settings,
    pipeline: &'a PipelineHead,
    parameters: &'a serde_json::Map<String, Value>,
    /// What the cache does for the steps that run.
    rule: CacheRule,
    /// The property documents known before anything runs, by step.
    known: HashMap<String, Value>,
    verdicts: HashMap<String, StepVerdict>,
    /// The outcome of each Condition whose inputs are known.
    outcomes: HashMap<String, bool>,
    /// The plan's hashes: all of its hashing shares one time budget.
    hashes: &'a InputHashes<'a>,
    /// The selective source, whose ForEach iterations are compared item by item.
    source_execution: Option<Uuid>,
}

/// What the cache will do for a step that runs.
enum Prediction {
    Hit {
        arn: String,
        properties: Value,
    },
    /// Its key cannot be known before it runs: why.
    MayHit(String),
    Miss(String),
}

fn verdict(step: &Step, verdict: &'static str, reason: String, changes: Vec<String>) -> StepVerdict {
    StepVerdict {
        step_name: step.name.clone(),
        verdict,
        reason,
        changes,
        source_execution_arn: None,
        iterations: None,
    }
}

impl Predictor<'_> {
    /// The dependencies of `step` that run again (not reused, not skipped),
    /// as a reason names them: `Train has`, `Train and Prep have`.
    fn rerunning_upstream(&self, step: &Step) -> String {
        let names: Vec<&str> = step
            .depends_on
            .iter()
            .filter(|d| {
                self.verdicts
                    .get(*d)
                    .is_some_and(|v| v.verdict != "Reuse" && v.verdict != "Skip")
            })
            .map(String::as_str)
            .collect();
        match names.as_slice() {
            [] => "its upstream has".to_string(),
            [one] => format!("{one} has"),
            [rest @ .., last] => format!("{} and {last} have", rest.join(", ")),
        }
    }

    async fn verdict(
        &mut self,
        definition: &Definition,
        step: &Step,
        plan: StepPlan,
        reused_properties: &HashMap<Uuid, Value>,
    ) -> Result<StepVerdict, StoreError> {
        let (why, cutoff) = match plan {
            StepPlan::Reuse {
                step_run,
                source_execution_arn,
                why,
            } => {
                let properties = reused_properties.get(&step_run).cloned().unwrap_or(Value::Null);
                self.learn(step, properties);
                return Ok(StepVerdict {
                    source_execution_arn: Some(source_execution_arn),
                    ..verdict(step, "Reuse", why, Vec::new())
                });
            }
            StepPlan::Skip { reason, why } => {
                return Ok(verdict(step, "Skip", format!("{why} ({reason})"), Vec::new()))
            }
            StepPlan::Run { why, cutoff } => (why, cutoff),
        };
        if let Some(reason) = self.not_reached(step) {
            return Ok(verdict(step, "Skip", reason, why));
        }
        let gate = match self.trigger_gate(step) {
            Ok(gate) => gate,
            Err(reason) => return Ok(verdict(step, "Skip", reason, why)),
        };
        let branch = self.undecided_branch(definition, step).or_else(|| {
            step.depends_on
                .iter()
                .find(|d| self.verdicts.get(*d).is_some_and(|v| v.verdict == "RunIfBranchTaken"))
                .map(|d| format!("{d:?} runs"))
        });
        let mut out = if cutoff.is_some() {
            let upstream = self.rerunning_upstream(step);
            verdict(
                step,
                "RunUnlessUnchanged",
                format!(
                    "runs unless, once {upstream} run, its inputs equal those of its run in the source \
                     execution (early cut-off)"
                ),
                why,
            )
        } else {
            let runs = if why.is_empty() {
                "runs".to_string()
            } else {
                why.join("; ")
            };
            match self.predict(step).await? {
                Prediction::Hit { arn, properties } => {
                    if branch.is_none() {
                        self.learn(step, properties);
                    }
                    StepVerdict {
                        source_execution_arn: Some(arn),
                        ..verdict(
                            step,
                            "CacheHit",
                            "a usable cache entry with the same key exists".into(),
                            why,
                        )
                    }
                }
                Prediction::MayHit(maybe) => verdict(step, "RunUnlessUnchanged", format!("{runs}; {maybe}"), why),
                Prediction::Miss(miss) => verdict(step, "Run", format!("{runs}; {miss}"), why),
            }
        };
        if let Some(spec) = step.for_each.as_deref() {
            let iterations = self.plan_iterations(&step.name, spec).await?;
            if out.verdict == "Run" && iterations.hedged() {
                out.verdict = "RunUnlessUnchanged";
                out.reason = format!("{}; {}", out.reason, iterations.reason);
            }
            out.iterations = Some(iterations);
        }
        if out.verdict == "Run" && step.kind == StepKind::Condition && branch.is_none() {
            self.evaluate_condition(step);
        }
        if step.kind == StepKind::Pass && out.verdict != "CacheHit" && branch.is_none() && gate.is_none() {
            self.learn_pass(step);
        }
        if gate.is_some() && out.verdict == "CacheHit" {
            // Its outputs reach the steps after it only if it runs.
            self.known.remove(&step.name);
        }
        if let Some(gate) = gate {
            out.verdict = "RunIfTriggered";
            out.reason = format!("{gate}; then it {}", out.reason);
        }
        if let Some(branch) = branch {
            // It runs (or hits, or is reused after all) only if a branch is
            // taken that the plan cannot know yet.
            out.verdict = "RunIfBranchTaken";
            out.reason = format!("only if {branch}; then it {}", out.reason);
        }
        Ok(out)
    }

    async fn plan_iterations(
        &mut self,
        name: &str,
        spec: &crate::domain::definition::for_each::ForEachSpec,
    ) -> Result<IterationPlan, StoreError> {
        // Field by field: the connection is borrowed apart from what is known.
        let known = KnownNow {
            parameters: self.parameters,
            known: &self.known,
            pipeline_name: &self.pipeline.name,
            arns: self.arns,
            secret_digests: HashMap::new(),
            max_outputs_bytes: self.settings.max_outputs_bytes,
        };
        let cx = ForEachContext {
            settings: self.settings,
            known: &known,
            pipeline_id: self.pipeline.id,
            rule: self.rule,
            source: self.source_execution,
            max_items: self.settings.for_each_max_items,
            hashes: self.hashes,
        };
        super::plan_iterations::plan(self.pool, &cx, name, spec).await
    }

    /// Records the outputs a step will have, for the steps after it.
    fn learn(&mut self, step: &Step, properties: Value) {
        if step.kind == StepKind::Condition {
            if let Some(outcome) = properties.get("Outcome").and_then(Value::as_bool) {
                self.outcomes.insert(step.name.clone(), outcome);
            }
        }
        self.known.insert(step.name.clone(), properties);
    }

    /// Why a step will never run although it was planned to: it is in the
    /// branch its Condition will not take, or below a skipped step. Worded
    /// as the execution will report it.
    fn not_reached(&self, step: &Step) -> Option<String> {
        if let Some(branch) = &step.branch {
            if let Some(outcome) = self.outcomes.get(&branch.condition) {
                if *outcome != branch.if_branch {
                    return Some(format!(
                        "condition {:?} will take the other branch (ConditionNotMet)",
                        branch.condition
                    ));
                }
            }
        }
        // A step with triggers is judged by `trigger_gate` instead.
        if !step.triggers.is_empty() {
            return None;
        }
        step.depends_on
            .iter()
            .find(|d| self.verdicts.get(*d).is_some_and(|v| v.verdict == "Skip"))
            .map(|d| format!("{d:?} will not run (UpstreamNotRun)"))
    }

    /// For a step with triggers (SPEC 8, 2.3), or below one whose run the
    /// plan cannot foresee: `Ok(Some(why))` when it runs only if upstream
    /// steps end as its triggers ask (`runs only if "Train" ends Failed`);
    /// `Err(why)` when the plan knows a trigger will not be met (an
    /// upstream reused or served from the cache succeeds; a skipped one
    /// is Skipped).
    fn trigger_gate(&self, step: &Step) -> Result<Option<String>, String> {
        let mut unknown = Vec::new();
        for dep in &step.depends_on {
            let trigger = step.trigger_on(dep);
            let seen = self.verdicts.get(dep).map(|v| v.verdict);
            let status = match seen {
                Some("Reuse" | "CacheHit") => Some("Succeeded"),
                Some("Skip") => Some("Skipped"),
                _ => None,
            };
            match status {
                Some(status) if !trigger.met_by(status) => {
                    return Err(format!(
                        "{dep:?} will end {status}; its trigger {} runs this step only if it {} (TriggerNotMet)",
                        trigger.as_str(),
                        trigger.needs()
                    ))
                }
                Some(_) => {}
                None if matches!(trigger, Trigger::Failed | Trigger::Stopped) => {
                    unknown.push(format!("{dep:?} {}", trigger.needs()));
                }
                None if seen == Some("RunIfTriggered") && trigger == Trigger::Completed => {
                    unknown.push(format!("{dep:?} runs (and succeeds)"));
                }
                None => {}
            }
        }
        Ok((!unknown.is_empty()).then(|| format!("runs only if {}", unknown.join(" and "))))
    }

    /// The nearest enclosing Condition whose outcome is not known yet, as
    /// `condition "Gate" takes the IfSteps branch`.
    fn undecided_branch(&self, definition: &Definition, step: &Step) -> Option<String> {
        let mut cur = step;
        while let Some(branch) = &cur.branch {
            if !self.outcomes.contains_key(&branch.condition) {
                let side = if branch.if_branch { "IfSteps" } else { "ElseSteps" };
                return Some(format!("condition {:?} takes the {side} branch", branch.condition));
            }
            cur = definition.step(&branch.condition)?;
        }
        None
    }

    /// A Pass step's outputs are its resolved arguments: known now when
    /// what they use is (reused or early cut-off alike give the same
    /// outputs, since a cut-off compares exactly these arguments).
    fn learn_pass(&mut self, step: &Step) {
        if !uses_per_execution_value(&step.arguments).is_empty()
            || step.depends_on.iter().any(|d| !self.known.contains_key(d))
        {
            return;
        }
        let resolved = evaluate(&step.arguments, &self.resolver(HashMap::new()));
        if let Ok(outputs) = resolved {
            self.learn(step, serde_json::json!({ "Outputs": outputs }));
        }
    }

    fn evaluate_condition(&mut self, step: &Step) {
        if !uses_per_execution_value(&step.arguments).is_empty() {
            return;
        }
        let resolver = self.resolver(HashMap::new());
        if let Ok(resolved) = evaluate(&step.arguments, &resolver) {
            if let Ok(outcome) = evaluate_conditions(&resolved["Conditions"]) {
                // Its properties, as the worker will record them.
                self.learn(step, serde_json::json!({ "Outcome": outcome }));
            }
        }
    }

    fn resolver(&self, secret_digests: HashMap<String, String>) -> KnownNow<'_> {
        KnownNow {
            parameters: self.parameters,
            known: &self.known,
            pipeline_name: &self.pipeline.name,
            arns: self.arns,
            secret_digests,
            max_outputs_bytes: self.settings.max_outputs_bytes,
        }
    }

    async fn predict(&mut self, step: &Step) -> Result<Prediction, StoreError> {
        match self.rule.for_step(step.caching_enabled()) {
            CacheUse::Uncached => return Ok(Prediction::Miss("it does not use the cache".into())),
            CacheUse::Disabled | CacheUse::Bypassed => {
                return Ok(Prediction::Miss("the cache is not looked up in this start".into()))
            }
            CacheUse::LookUp => {}
        }
        let per_execution = uses_per_execution_value(&step.arguments);
        if !per_execution.is_empty() {
            return Ok(Prediction::Miss(format!(
                "it uses {}, which differs in every execution, so it never hits the cache",
                per_execution.join(" and ")
            )));
        }
        let unknown: Vec<String> = step
            .depends_on
            .iter()
            .filter(|d| !self.known.contains_key(*d))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            let any_entry =
                cache::nearest_entry(&mut *self.pool.acquire().await?, self.pipeline.id, &step.name).await?;
            return Ok(match any_entry {
                Some(_) => Prediction::MayHit(format!(
                    "cached, so it is served from the cache if what {} produce matches an entry",
                    json_list(&unknown)
                )),
                None => Prediction::Miss("the cache holds no entry for it".into()),
            });
        }
        let used: Vec<String> = crate::domain::secrets::env_secrets(&step.arguments)
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        let secret_digests = if used.is_empty() {
            HashMap::new()
        } else {
            secrets::sealed(&mut *self.pool.acquire().await?, &used)
                .await?
                .into_iter()
                .map(|row| (row.name, row.digest))
                .collect()
        };
        let resolved = match evaluate(&step.arguments, &self.resolver(secret_digests)) {
            Ok(r) => r,
            Err(e) => return Ok(Prediction::Miss(format!("its arguments cannot be resolved: {e}"))),
        };
        let key = match self.hashes.step_key(step.kind, &step.arguments, &resolved).await {
            Ok(Some(k)) => k,
            Ok(None) => {
                return Ok(Prediction::MayHit(
                    "its CacheInputs were not hashed: the plan's hashing took longer than \
                     worker.cache_input_timeout_seconds"
                        .into(),
                ))
            }
            Err(e) => return Ok(Prediction::Miss(format!("its cache key cannot be computed: {e}"))),
        };
        let expire_after = step.cache.and_then(|c| c.expire_after);
        let earliest = cache_valid_since(expire_after, self.settings.cache_cap, Utc::now());
        let entries = cache::entries_with_key(
            &mut *self.pool.acquire().await?,
            self.pipeline.id,
            &step.name,
            &key.key,
            20,
        )
        .await?;
        for entry in entries {
            if content::usable(&entry, earliest).is_ok() {
                return Ok(Prediction::Hit {
                    arn: self.arns.execution(&entry.pipeline_name, entry.execution_id),
                    properties: entry.properties.unwrap_or_else(|| Value::Object(Default::default())),
                });
            }
        }
        Ok(Prediction::Miss("no usable cache entry has its key".into()))
    }
}
