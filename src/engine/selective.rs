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
    decide::{CutOff, Settings, StepPlan},
    hashing::{Hashed, InputHashes},
    known::KnownNow,
    request::{resolve_parameters, SelectiveRequest, StartError, StartRequest},
};
use crate::{
    content::artifacts,
    domain::{
        cache::CacheRule,
        definition::{parse_definition, Definition, Step, StepKind},
        expr::{self, evaluate},
        json_list,
        selective::{self, SelectedSteps, Selection, SourceStep, SOURCE_EXECUTION_PATH},
        Issue,
    },
    ids::Arns,
    store::{
        executions::{self, ExecutionRow},
        pipelines::PipelineHead,
        retention,
        selective::{self as store, RunFacts, SourceRun},
        StoreError,
    },
};

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

/// What the `"changed"` selection needs besides the definitions.
struct Context<'a> {
    pipeline: &'a PipelineHead,
    arns: &'a Arns,
    parameters: &'a Map<String, Value>,
    settings: &'a Settings,
    /// The start's hashes of `CacheInputs`, made with no connection held.
    hashes: &'a InputHashes<'a>,
}

/// The `"changed"` selection: steps whose definition changed
/// (`selective::changes`), whose `CacheInputs` content differs from what
/// the source's run recorded, or whose outputs in the source are gone, and
/// everything downstream of them.
async fn changed_selection(
    conn: &mut PgConnection,
    definition: &Definition,
    source: &Source,
    context: &Context<'_>,
) -> Result<Chosen, StartError> {
    let snapshot = executions::definition(conn, source.execution.id).await?;
    let mut changed = match parse_definition(&snapshot) {
        Ok(source_definition) => {
            let source_params = source.execution.parameters.as_object().cloned().unwrap_or_default();
            selective::changes(
                definition,
                context.parameters,
                &source_definition,
                &source_params,
                &source.summaries(),
            )
        }
        // A snapshot that no longer validates: everything counts as changed.
        Err(_) => definition
            .steps
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    vec!["the source's definition no longer validates".into()],
                )
            })
            .collect(),
    };
    compare_with_origins(conn, definition, source, context, &mut changed).await?;
    // The files a ForEach's body reads are hashed per iteration when it
    // runs: such a ForEach runs, and each iteration whose item and inputs
    // (those files' content included) are unchanged is reused from the
    // source then (`engine::for_each`).
    for step in &definition.steps {
        let reads_files = step.for_each.as_deref().is_some_and(|f| {
            f.body.iter().any(|b| {
                b.arguments
                    .get("CacheInputs")
                    .is_some_and(|c| c.as_array().is_some_and(|l| !l.is_empty()))
            })
        });
        if reads_files && !changed.contains_key(&step.name) {
            changed.insert(
                step.name.clone(),
                vec![
                    "its body reads files (CacheInputs): its iterations are compared with the source's item by item"
                        .into(),
                ],
            );
        }
    }
    let candidates: Vec<(&Step, &SourceRun)> = definition
        .steps
        .iter()
        .filter(|s| !changed.contains_key(&s.name))
        .filter_map(|s| source.succeeded(&s.name).map(|r| (s, r)))
        .collect();
    let ids: Vec<Uuid> = candidates.iter().map(|(_, r)| r.id).collect();
    let facts = store::run_facts(conn, &ids).await?;
    // `CacheInputs` may name other steps' outputs: they are resolved with
    // the outputs those steps had in the source. An upstream step that is
    // reused hands on exactly these; one that runs again makes the step
    // downstream of it anyway, and early cut-off compares it then.
    // Only the outputs such references name are loaded: a property
    // document can be large, and most pipelines have no such reference.
    let named: BTreeSet<String> = candidates
        .iter()
        .flat_map(|(step, _)| {
            let inputs = json!([
                step.arguments.get("CacheInputs"),
                step.arguments.get("WorkingDirectory")
            ]);
            expr::find_references(&inputs, "", &mut Vec::new())
                .into_iter()
                .filter_map(|found| found.step().map(str::to_string))
        })
        .collect();
    let read: Vec<&SourceRun> = named.iter().filter_map(|name| source.succeeded(name)).collect();
    let read_ids: Vec<Uuid> = read.iter().map(|r| r.id).collect();
    let mut by_id = if read_ids.is_empty() {
        HashMap::new()
    } else {
        store::run_properties(conn, &read_ids).await?
    };
    let outputs: HashMap<String, Value> = read
        .iter()
        .filter_map(|r| by_id.remove(&r.id).map(|p| (r.step_name.clone(), p)))
        .collect();
    for (step, run) in candidates {
        let mut why = Vec::new();
        let facts = facts.get(&run.id);
        if let Some(gone) = facts.and_then(outputs_gone) {
            why.push(format!("its outputs in the source are gone: {gone}"));
        }
        why.extend(input_changes(step, facts, context, &outputs).await);
        if !why.is_empty() {
            changed.insert(step.name.clone(), why);
        }
    }
    let mut downstream = selective::downstream_of(definition, &changed);
    // A step on the branch that a reused Condition did not take cannot run,
    // edited or not: selecting it would only have rule 9 refuse the start.
    let would_run: BTreeSet<String> = changed.keys().chain(downstream.keys()).cloned().collect();
    let summaries = source.summaries();
    let mut held = BTreeMap::new();
    for step in &definition.steps {
        if !would_run.contains(&step.name) {
            continue;
        }
        if let Some(why) = selective::held_by_reused_condition(definition, step, &summaries, &would_run) {
            let mut what = changed.remove(&step.name).unwrap_or_default();
            if let Some(from) = downstream.remove(&step.name) {
                what.push(format!("downstream of {from}"));
            }
            held.insert(step.name.clone(), format!("{} ({why})", what.join("; ")));
        }
    }
    let names: Vec<String> = changed.keys().chain(downstream.keys()).cloned().collect();
    let selection = if names.is_empty() {
        Selection {
            others: definition.steps.iter().map(|s| s.name.clone()).collect(),
            ..Selection::default()
        }
    } else {
        selective::select(definition, &names).map_err(invalid_all)?
    };
    let mut why = changed;
    for (step, from) in &downstream {
        why.insert(step.clone(), vec![format!("downstream of {from}")]);
    }
    Ok(Chosen {
        selection,
        why,
        downstream_only: downstream.into_keys().collect(),
        held,
    })
}

/// How many executions, besides the source, whose runs the source reused
/// are compared with; the steps reused from any further one count as
/// changed.
const ORIGINS_COMPARED: usize = 20;

/// A step the source reused (it was not selected there) holds the outputs
/// of a run of an older execution, made by that execution's definition and
/// parameters: it is compared with those, not with the source's.
async fn compare_with_origins(
    conn: &mut PgConnection,
    definition: &Definition,
    source: &Source,
    context: &Context<'_>,
    changed: &mut BTreeMap<String, Vec<String>>,
) -> Result<(), StartError> {
    let succeeded: Vec<&SourceRun> = source
        .runs
        .values()
        .filter(|r| r.status == selective::SUCCEEDED)
        .collect();
    let ids: Vec<Uuid> = succeeded.iter().map(|r| r.id).collect();
    let origins = store::run_executions(conn, &ids).await?;
    let mut by_origin: BTreeMap<Uuid, Vec<&str>> = BTreeMap::new();
    for run in succeeded {
        match origins.get(&run.id) {
            Some(origin) if *origin != source.execution.id => {
                by_origin.entry(*origin).or_default().push(&run.step_name)
            }
            _ => {}
        }
    }
    let summaries = source.summaries();
    for (i, (origin, steps)) in by_origin.into_iter().enumerate() {
        let arn = context.arns.execution(&context.pipeline.name, origin);
        let note = format!("its outputs in the source were reused from execution {arn}");
        let compared = match i < ORIGINS_COMPARED {
            true => origin_definition(conn, origin).await?.map(|(before, before_params)| {
                selective::changes(definition, context.parameters, &before, &before_params, &summaries)
            }),
            false => None,
        };
        for step in steps {
            match compared.as_ref().map(|c| c.get(step)) {
                // Unchanged since the run that made its outputs.
                Some(None) => {
                    changed.remove(step);
                }
                Some(Some(why)) => {
                    let mut why = why.clone();
                    why.push(note.clone());
                    changed.insert(step.to_string(), why);
                }
                None => {
                    changed.insert(step.to_string(), vec![format!("{note}, which was not compared")]);
                }
            }
        }
    }
    Ok(())
}

/// The definition and parameters an execution ran with, when it still
/// exists and its definition still validates.
async fn origin_definition(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<(Definition, Map<String, Value>)>, StoreError> {
    let execution = match executions::get(conn, id).await {
        Ok(e) => e,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let snapshot = match executions::definition(conn, id).await {
        Ok(s) => s,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let parameters = execution.parameters.as_object().cloned().unwrap_or_default();
    Ok(parse_definition(&snapshot).ok().map(|d| (d, parameters)))
}

/// What is wrong with a run's artifacts directory, if it is gone or emptied.
fn outputs_gone(facts: &RunFacts) -> Option<String> {
    let uri = facts.artifacts_uri.as_deref()?;
    artifacts::missing(uri, facts.artifact_entries.unwrap_or(0).max(0) as u64)
}

/// How the content of a Command step's `CacheInputs` differs from what its
/// run in the source recorded: `CacheInputs train.py: content changed`.
/// Hashed as the worker will hash them, between passes with no connection
/// held (`InputHashes`).
async fn input_changes(
    step: &Step,
    facts: Option<&RunFacts>,
    context: &Context<'_>,
    source_outputs: &HashMap<String, Value>,
) -> Vec<String> {
    if step.kind != StepKind::Command {
        return Vec::new();
    }
    let declared = step.arguments.get("CacheInputs");
    if declared.is_none_or(|v| v.as_array().is_some_and(Vec::is_empty)) {
        return Vec::new();
    }
    let Some(recorded) = facts.and_then(|f| f.input_hashes.as_ref()).and_then(Value::as_object) else {
        return vec!["CacheInputs: the source's run recorded no content to compare with".into()];
    };
    let resolver = KnownNow {
        parameters: context.parameters,
        known: source_outputs,
        pipeline_name: &context.pipeline.name,
        arns: context.arns,
        secret_digests: HashMap::new(),
        max_outputs_bytes: context.settings.max_outputs_bytes,
    };
    let wanted = json!({
        "CacheInputs": declared,
        "WorkingDirectory": step.arguments.get("WorkingDirectory"),
    });
    let Ok(resolved) = evaluate(&wanted, &resolver) else {
        return vec![
            "CacheInputs: they use outputs of steps that did not succeed in the source, so their content is \
             compared when the step runs"
                .into(),
        ];
    };
    let paths: Vec<String> = resolved["CacheInputs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let working_directory = resolved["WorkingDirectory"].as_str();
    let hashes = match context.hashes.get(working_directory, &paths) {
        Hashed::Done(Ok(h)) => h,
        Hashed::Done(Err(message)) => return vec![format!("CacheInputs: {message}")],
        Hashed::NotHashed => {
            return vec![
                "CacheInputs: not compared, hashing the start's inputs took longer than \
                 worker.cache_input_timeout_seconds"
                    .into(),
            ]
        }
    };
    let mut why = Vec::new();
    for (path, hash) in &hashes {
        match recorded.get(path).and_then(Value::as_str) {
            Some(before) if before == hash => {}
            Some(_) => why.push(format!("CacheInputs {path}: content changed")),
            None => why.push(format!("CacheInputs {path}: not read by the source's run")),
        }
    }
    why
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
