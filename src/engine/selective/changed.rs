//! The `"changed"` selection (SPEC 5, beyond SageMaker; SPEC 8): which
//! steps differ from the source execution (their definition, parameters,
//! `CacheInputs` content, or outputs gone), compared with the run that made
//! each reused output, and everything downstream of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{invalid_all, Chosen, Source};
use crate::{
    content::artifacts,
    domain::{
        definition::{parse_definition, Definition, Step, StepKind},
        expr::{self, evaluate},
        selective::{self, Selection},
    },
    engine::{
        decide::Settings,
        hashing::{Hashed, InputHashes},
        known::KnownNow,
        request::StartError,
    },
    ids::Arns,
    store::{
        executions,
        pipelines::PipelineHead,
        selective::{self as store, RunFacts, SourceRun},
        StoreError,
    },
};

/// What the `"changed"` selection needs besides the definitions.
pub(super) struct Context<'a> {
    pub(super) pipeline: &'a PipelineHead,
    pub(super) arns: &'a Arns,
    pub(super) parameters: &'a Map<String, Value>,
    pub(super) settings: &'a Settings,
    /// The start's hashes of `CacheInputs`, made with no connection held.
    pub(super) hashes: &'a InputHashes<'a>,
}

/// The `"changed"` selection: steps whose definition changed
/// (`selective::changes`), whose `CacheInputs` content differs from what
/// the source's run recorded, or whose outputs in the source are gone, and
/// everything downstream of them.
pub(super) async fn changed_selection(
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
pub(super) fn outputs_gone(facts: &RunFacts) -> Option<String> {
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
