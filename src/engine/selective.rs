//! Selective execution (SPEC 5): resolve the source execution, check the
//! selection against it, and decide for every step whether it runs, is
//! reused from the source, or is skipped, and why. Pure rules live in
//! `domain::selective`; this module loads what they need (SQL in
//! `store::selective`, file content through `content`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    decide::{CutOff, StepPlan},
    hashing::InputHashes,
    request::{resolve_parameters, SelectiveRequest, StartError, StartRequest},
};
use crate::{
    domain::{
        cache::CacheRule,
        definition::Definition,
        json_list,
        selective::{self, SelectedSteps, Selection, SourceStep, SOURCE_EXECUTION_PATH},
        Issue,
    },
    ids::Arns,
    store::{
        executions::{self, ExecutionRow},
        pipelines::PipelineHead,
        retention,
        selective::{self as store, SourceRun},
        StoreError,
    },
};

mod changed;

use changed::{changed_selection, outputs_gone, Context};

/// Why a reused step is reused, with `"changed"` and with a hand selection.
const UNCHANGED: &str = "unchanged since the source execution";
const NOT_SELECTED: &str = "not selected; reused from the source execution";

pub struct Source {
    pub execution: ExecutionRow,
    pub arn: String,
    pub runs: HashMap<String, SourceRun>,
}

impl Source {
    fn summaries(&self) -> HashMap<String, SourceStep> {
        self.runs
            .values()
            .map(|r| {
                let step = SourceStep {
                    status: r.status.clone(),
                    outcome: r.outcome,
                    raw: None,
                };
                (r.step_name.clone(), step)
            })
            .collect()
    }

    /// The run of `step` in the source, if it succeeded there.
    fn succeeded(&self, step: &str) -> Option<&SourceRun> {
        self.runs.get(step).filter(|r| r.status == selective::SUCCEEDED)
    }
}

/// The outcome of planning a selective start.
pub struct SelectivePlan {
    pub parameters: Map<String, Value>,
    pub plans: HashMap<String, StepPlan>,
    pub source: Option<Source>,
    /// What the execution records as its `selective_execution`.
    pub record: Value,
}

fn invalid(path: &str, message: String) -> StartError {
    StartError::invalid(message.clone(), vec![Issue::new(path, message)])
}

fn invalid_all(issues: Vec<Issue>) -> StartError {
    let message = if issues.len() <= 5 {
        issues.iter().map(|i| i.message.as_str()).collect::<Vec<_>>().join("; ")
    } else {
        format!(
            "the selective execution is invalid: {} problems, see details",
            issues.len()
        )
    };
    StartError::invalid(message, issues)
}

/// What the selection is and why each selected step is in it.
struct Chosen {
    selection: Selection,
    /// Why each selected step runs.
    why: BTreeMap<String, Vec<String>>,
    /// Selected only because an upstream step changed: early cut-off may
    /// still reuse it.
    downstream_only: BTreeSet<String>,
    /// Changed, but on the branch a reused Condition does not take: not
    /// selected, and why (what changed, and which Condition holds it).
    held: BTreeMap<String, String>,
}

pub async fn plan(
    conn: &mut PgConnection,
    arns: &Arns,
    pipeline: &PipelineHead,
    definition: &Definition,
    start: &StartRequest,
    request: &SelectiveRequest,
    hashes: &InputHashes<'_>,
) -> Result<SelectivePlan, StartError> {
    let settings = hashes.settings();
    let given_parameters = &start.parameters;
    // SPEC 5 rule 7: selected steps look up the cache only when asked to.
    let cache_lookup = CacheRule::for_start(start.cache_mode, true).asked_to_use;
    let mut source = match &request.source_execution {
        Some(reference) => Some(load_source(conn, arns, pipeline, reference).await?),
        None => None,
    };
    if source.is_none() && matches!(request.selected_steps, SelectedSteps::Changed) {
        let Some(latest) = store::latest_ended(conn, pipeline.id).await? else {
            return Err(invalid(
                SOURCE_EXECUTION_PATH,
                format!("selected_steps \"changed\" compares against a source execution, and pipeline {:?} has no finished execution", pipeline.name),
            ));
        };
        source = Some(load_source(conn, arns, pipeline, &latest.to_string()).await?);
    }

    // A hand selection does not depend on parameters, so it is known before
    // the source is picked (rule 5), and the source before its parameters are
    // inherited (rule 10).
    let named = match &request.selected_steps {
        SelectedSteps::Names(names) => Some(selective::select(definition, names).map_err(invalid_all)?),
        SelectedSteps::Changed => None,
    };
    if source.is_none() {
        if let Some(selection) = &named {
            if !selection.upstream.is_empty() || request.inherit_parameters {
                source = Some(pick_source(conn, arns, pipeline, selection, request.inherit_parameters).await?);
            }
        }
    }

    let parameters = effective_parameters(
        definition,
        given_parameters,
        source.as_ref(),
        request.inherit_parameters,
    )?;

    let chosen = match named {
        Some(selection) => {
            let why = selection
                .selected
                .iter()
                .map(|s| (s.clone(), vec!["selected".to_string()]))
                .collect();
            Chosen {
                selection,
                why,
                downstream_only: BTreeSet::new(),
                held: BTreeMap::new(),
            }
        }
        None => {
            let source = source.as_ref().expect("a source was found above");
            let context = Context {
                pipeline,
                arns,
                parameters: &parameters,
                settings,
                hashes,
            };
            changed_selection(conn, definition, source, &context).await?
        }
    };
    let selection = &chosen.selection;

    if source.is_none() && !selection.upstream.is_empty() {
        source = Some(pick_source(conn, arns, pipeline, selection, false).await?);
    }

    let bystanders = match &source {
        Some(source) => {
            let by_hand = matches!(request.selected_steps, SelectedSteps::Names(_));
            check_source(conn, definition, selection, source, by_hand).await?
        }
        None => BTreeMap::new(),
    };

    let plans = step_plans(
        definition,
        &chosen,
        source.as_ref(),
        &request.selected_steps,
        &bystanders,
    );

    let requested = match &request.selected_steps {
        SelectedSteps::Names(names) => json!(names),
        SelectedSteps::Changed => json!("changed"),
    };
    let record = json!({
        "source_execution": request.source_execution,
        "source_execution_arn": source.as_ref().map(|s| s.arn.clone()),
        "requested_steps": requested,
        "selected_steps": selection.selected,
        "inherit_parameters": request.inherit_parameters,
        "cache_lookup": cache_lookup,
    });
    Ok(SelectivePlan {
        parameters,
        plans,
        source,
        record,
    })
}

/// What becomes of each step, given the selection and the source.
fn step_plans(
    definition: &Definition,
    chosen: &Chosen,
    source: Option<&Source>,
    requested: &SelectedSteps,
    gone: &BTreeMap<String, String>,
) -> HashMap<String, StepPlan> {
    let selection = &chosen.selection;
    let reuse_why = match requested {
        SelectedSteps::Changed => UNCHANGED,
        SelectedSteps::Names(_) => NOT_SELECTED,
    };
    let mut plans = HashMap::new();
    for step in &definition.steps {
        let name = &step.name;
        let plan = if selection.selected.contains(name) {
            let cutoff = match source {
                Some(source) if chosen.downstream_only.contains(name) && step.kind.is_cacheable() => {
                    source.succeeded(name).map(|run| CutOff {
                        step_run: run.id,
                        execution: source.execution.id,
                    })
                }
                _ => None,
            };
            StepPlan::Run {
                why: chosen.why.get(name).cloned().unwrap_or_default(),
                cutoff,
            }
        } else if let Some(why) = chosen.held.get(name) {
            StepPlan::Skip {
                reason: "NotSelected".into(),
                why: format!("not selected: {why}"),
            }
        } else if selection.downstream.contains(name) {
            StepPlan::Skip {
                reason: "NotSelected".into(),
                why: "not selected, and downstream of a selected step".into(),
            }
        } else if let Some(gone) = gone.get(name) {
            StepPlan::Skip {
                reason: "NotSelected".into(),
                why: format!("not selected, and it cannot be reused: its artifacts directory {gone}"),
            }
        } else {
            match source.and_then(|s| s.succeeded(name).map(|r| (s, r))) {
                Some((source, run)) => StepPlan::Reuse {
                    step_run: run.id,
                    source_execution_arn: source.arn.clone(),
                    why: reuse_why.into(),
                },
                None => StepPlan::Skip {
                    reason: "NotSelected".into(),
                    why: "not selected, and it did not succeed in the source execution".into(),
                },
            }
        };
        plans.insert(name.clone(), plan);
    }
    plans
}

/// Checks the selection against the source (rules 3 and 9) and, with a
/// hand selection, that every step of U still has its outputs. Returns the
/// other steps that would be reused but whose outputs are gone, with what
/// is gone: they are Skipped (NotSelected), never a refusal (SPEC 9).
async fn check_source(
    conn: &mut PgConnection,
    definition: &Definition,
    selection: &Selection,
    source: &Source,
    by_hand: bool,
) -> Result<BTreeMap<String, String>, StartError> {
    let summaries = source.summaries();
    let mut issues = selective::check_upstream(selection, &summaries, &source.arn);
    issues.extend(selective::check_branches(definition, selection, &summaries));
    let mut bystanders = BTreeMap::new();
    if issues.is_empty() && by_hand {
        for (step, gone) in outputs_gone_of(conn, definition, selection, source).await? {
            if selection.upstream.contains(&step) {
                issues.push(Issue::new(
                    selective::SELECTED_STEPS_PATH,
                    format!(
                        "step {step:?} cannot be reused from execution {}: its artifacts directory {gone}; select \
                         it so it runs again, or use \"changed\"",
                        source.arn
                    ),
                ));
            } else {
                bystanders.insert(step, gone);
            }
        }
    }
    if issues.is_empty() {
        Ok(bystanders)
    } else {
        Err(invalid_all(issues))
    }
}

/// The steps that would be reused (those of U and the others) whose
/// artifacts are gone, with what is wrong with them.
async fn outputs_gone_of(
    conn: &mut PgConnection,
    definition: &Definition,
    selection: &Selection,
    source: &Source,
) -> Result<Vec<(String, String)>, StoreError> {
    let reused: Vec<&SourceRun> = definition
        .steps
        .iter()
        .filter(|s| selection.upstream.contains(&s.name) || selection.others.contains(&s.name))
        .filter_map(|s| source.succeeded(&s.name))
        // Only a Command step leaves an artifacts directory.
        .filter(|r| r.step_type == "Command")
        .collect();
    if reused.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = reused.iter().map(|r| r.id).collect();
    let facts = store::run_facts(conn, &ids).await?;
    Ok(reused
        .into_iter()
        .filter_map(|run| Some((run.step_name.clone(), outputs_gone(facts.get(&run.id)?)?)))
        .collect())
}

/// Rule 10: defaults (or, inheriting, the source's values for parameters
/// the definition still has) overridden by the request.
fn effective_parameters(
    definition: &Definition,
    given: &Map<String, Value>,
    source: Option<&Source>,
    inherit: bool,
) -> Result<Map<String, Value>, StartError> {
    let mut merged = Map::new();
    if inherit {
        let Some(source) = source else {
            return Err(invalid(
                "/selective_execution/inherit_parameters",
                "inherit_parameters needs a source execution, and none was found".into(),
            ));
        };
        if let Some(values) = source.execution.parameters.as_object() {
            let mut issues = Vec::new();
            for (name, value) in values {
                let Some(parameter) = definition.parameter(name) else {
                    continue;
                };
                if given.contains_key(name) {
                    continue;
                }
                // The definition may have changed the parameter since: say
                // the value was inherited, not sent.
                if let Err(why) = crate::domain::params::coerce(parameter, value) {
                    issues.push(Issue::new(
                        "/selective_execution/inherit_parameters",
                        format!(
                            "parameter {name} inherited from source execution {} does not fit the definition \
                             any more ({why}); give {name} in parameters, or drop inherit_parameters",
                            source.arn
                        ),
                    ));
                    continue;
                }
                merged.insert(name.clone(), value.clone());
            }
            if !issues.is_empty() {
                return Err(invalid_all(issues));
            }
        }
    }
    for (name, value) in given {
        merged.insert(name.clone(), value.clone());
    }
    resolve_parameters(definition, &merged)
}

/// Rule 4: the source is an ended execution of the same pipeline.
async fn load_source(
    conn: &mut PgConnection,
    arns: &Arns,
    pipeline: &PipelineHead,
    reference: &str,
) -> Result<Source, StartError> {
    let parsed = arns
        .parse_execution(reference)
        .map_err(|m| invalid(SOURCE_EXECUTION_PATH, format!("source_execution: {m}")))?;
    // Held until the start commits, so retention cannot remove the source
    // while its runs are being reused.
    if !retention::source_for_share(conn, parsed.id).await? {
        return Err(missing_source(conn, pipeline, reference, parsed.id).await?);
    }
    let execution = match executions::get(conn, parsed.id).await {
        Ok(e) => e,
        Err(StoreError::NotFound(_)) => return Err(missing_source(conn, pipeline, reference, parsed.id).await?),
        Err(e) => return Err(e.into()),
    };
    if execution.pipeline_id != pipeline.id {
        return Err(invalid(
            SOURCE_EXECUTION_PATH,
            format!(
                "source execution {reference} belongs to pipeline {}, not {}; a selective execution reuses \
                 only executions of the pipeline it starts",
                execution.pipeline_name, pipeline.name
            ),
        ));
    }
    // The execution is of this pipeline, but the ARN names another: the
    // client built the ARN wrongly, which is worth saying rather than guessing.
    if let Some(named) = parsed.pipeline.as_deref().filter(|p| *p != execution.pipeline_name) {
        return Err(invalid(
            SOURCE_EXECUTION_PATH,
            format!(
                "source execution {reference} names pipeline {named}, but execution {} is of pipeline {}; \
                 its ARN is {}",
                execution.id,
                execution.pipeline_name,
                arns.execution(&execution.pipeline_name, execution.id)
            ),
        ));
    }
    if !execution.is_terminal() {
        return Err(invalid(
            SOURCE_EXECUTION_PATH,
            format!(
                "source execution {reference} is {}; it must have ended (Succeeded, Failed or Stopped)",
                execution.status
            ),
        ));
    }
    let runs = store::source_runs(conn, execution.id).await?;
    Ok(Source {
        arn: arns.execution(&execution.pipeline_name, execution.id),
        execution,
        runs: runs.into_iter().map(|r| (r.step_name.clone(), r)).collect(),
    })
}

/// The error for a source that does not exist: removed by retention (its
/// tombstone says when and under which setting), or never was.
async fn missing_source(
    conn: &mut PgConnection,
    pipeline: &PipelineHead,
    reference: &str,
    id: Uuid,
) -> Result<StartError, StoreError> {
    let message = match retention::tombstone(conn, id).await? {
        Some(t) if t.pipeline_id == pipeline.id => format!(
            "source execution {reference} was removed by retention on {} (retention.executions_days = {}); \
             choose a newer source execution",
            t.removed_at.format("%Y-%m-%d"),
            t.executions_days
        ),
        _ => format!("source execution {reference} does not exist"),
    };
    Ok(invalid(SOURCE_EXECUTION_PATH, message))
}

/// Rule 5: the most recent ended execution in which every step of U
/// succeeded (with U empty, the most recent ended one: a source is then
/// needed only because the request inherits its parameters).
async fn pick_source(
    conn: &mut PgConnection,
    arns: &Arns,
    pipeline: &PipelineHead,
    selection: &Selection,
    for_inherit: bool,
) -> Result<Source, StartError> {
    let upstream: Vec<String> = selection.upstream.iter().cloned().collect();
    match store::latest_with_succeeded(conn, pipeline.id, &upstream).await? {
        Some(id) => load_source(conn, arns, pipeline, &id.to_string()).await,
        None if upstream.is_empty() && for_inherit => Err(invalid(
            "/selective_execution/inherit_parameters",
            format!(
                "inherit_parameters takes the parameters of a source execution, and pipeline {} has no finished \
                 execution; give source_execution or drop inherit_parameters",
                pipeline.name
            ),
        )),
        None => Err(invalid(
            SOURCE_EXECUTION_PATH,
            format!(
                "The selected steps {} have dependencies on {} and no execution of pipeline {} has them all succeeded",
                json_list(&selection.selected),
                json_list(&upstream),
                pipeline.name
            ),
        )),
    }
}
