//! Selective execution (SPEC 5): resolve the source execution, check the
//! selection against it, and decide for every step whether it runs, is
//! reused from the source, or is skipped. Pure rules live in
//! `domain::selective`; this module loads what they need.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::start::{resolve_parameters, SelectiveRequest, StartError, StepPlan};
use crate::{
    domain::{
        definition::{parse_definition, Definition},
        json_list,
        selective::{self, SelectedSteps, Selection, SourceStep, SOURCE_EXECUTION_PATH},
        Issue,
    },
    ids::Arns,
    store::{
        executions::{self, ExecutionRow},
        pipelines::PipelineHead,
        retention, StoreError,
    },
};

/// One step of the source execution: what the rules need, not its outputs
/// (a reusing execution refers to them by `id`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceRun {
    /// The step run that produced the outputs: the source's own, or the one
    /// the source itself reused.
    pub id: Uuid,
    pub step_name: String,
    pub status: String,
    /// A Condition step's `Outcome`.
    pub outcome: Option<bool>,
}

pub struct Source {
    pub execution: ExecutionRow,
    /// The source's definition snapshot, loaded only for "changed".
    pub definition: Option<Value>,
    pub arn: String,
    pub runs: HashMap<String, SourceRun>,
}

impl Source {
    fn summaries(&self) -> HashMap<String, SourceStep> {
        let definition = self.definition.as_ref().and_then(|d| parse_definition(d).ok());
        self.runs
            .values()
            .map(|r| {
                let step = SourceStep {
                    status: r.status.clone(),
                    outcome: r.outcome,
                    raw: definition
                        .as_ref()
                        .and_then(|d| d.step(&r.step_name))
                        .map(|s| s.raw.clone()),
                };
                (r.step_name.clone(), step)
            })
            .collect()
    }
}

/// The outcome of planning a selective start.
pub struct SelectivePlan {
    pub parameters: Map<String, Value>,
    pub plans: HashMap<String, StepPlan>,
    pub selection: Selection,
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

pub async fn plan(
    conn: &mut PgConnection,
    arns: &Arns,
    pipeline: &PipelineHead,
    definition: &Definition,
    given_parameters: &Map<String, Value>,
    request: &SelectiveRequest,
    cache_lookup: bool,
) -> Result<SelectivePlan, StartError> {
    let mut source = match &request.source_execution {
        Some(reference) => Some(load_source(conn, arns, pipeline, reference).await?),
        None => None,
    };
    if source.is_none() && matches!(request.selected_steps, SelectedSteps::Changed) {
        let latest: Option<Uuid> = sqlx::query_scalar(
            "select id from executions where pipeline_id = $1 and status in ('Succeeded', 'Failed', 'Stopped') \
             order by created_at desc limit 1",
        )
        .bind(pipeline.id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(latest) = latest else {
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

    let selection = match named {
        Some(selection) => selection,
        None => {
            let source = source.as_ref().expect("a source was found above");
            let snapshot = executions::definition(conn, source.execution.id).await?;
            let source_definition = parse_definition(&snapshot);
            let changed: Vec<String> = match source_definition {
                Ok(source_definition) => {
                    let source_params = source.execution.parameters.as_object().cloned().unwrap_or_default();
                    selective::changed_steps(
                        definition,
                        &parameters,
                        &source_definition,
                        &source_params,
                        &source.summaries(),
                    )
                    .into_iter()
                    .collect()
                }
                // A snapshot that no longer validates: treat everything as changed.
                Err(_) => definition.steps.iter().map(|s| s.name.clone()).collect(),
            };
            if changed.is_empty() {
                Selection {
                    selected: BTreeSet::new(),
                    upstream: BTreeSet::new(),
                    downstream: BTreeSet::new(),
                    others: definition.steps.iter().map(|s| s.name.clone()).collect(),
                }
            } else {
                selective::select(definition, &changed).map_err(invalid_all)?
            }
        }
    };

    if source.is_none() && !selection.upstream.is_empty() {
        source = Some(pick_source(conn, arns, pipeline, &selection, false).await?);
    }

    if let Some(source) = &source {
        let summaries = source.summaries();
        let mut issues = selective::check_upstream(&selection, &summaries, &source.arn);
        issues.extend(selective::check_branches(definition, &selection, &summaries));
        if !issues.is_empty() {
            return Err(invalid_all(issues));
        }
    }

    let mut plans = HashMap::new();
    for step in &definition.steps {
        let name = &step.name;
        let plan = if selection.selected.contains(name) {
            StepPlan::Run
        } else if selection.downstream.contains(name) {
            StepPlan::Skip {
                reason: "NotSelected".into(),
            }
        } else {
            match source.as_ref().and_then(|s| s.runs.get(name).map(|r| (s, r))) {
                Some((source, run)) if run.status == "Succeeded" => StepPlan::Reuse {
                    step_run: run.id,
                    source_execution_arn: source.arn.clone(),
                },
                _ => StepPlan::Skip {
                    reason: "NotSelected".into(),
                },
            }
        };
        plans.insert(name.clone(), plan);
    }

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
        selection,
        source,
        record,
    })
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
            for (name, value) in values {
                if definition.parameter(name).is_some() {
                    merged.insert(name.clone(), value.clone());
                }
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
    let runs: Vec<SourceRun> = sqlx::query_as(
        "select id, step_name, status, \
           case when jsonb_typeof(properties -> 'Outcome') = 'boolean' then (properties ->> 'Outcome')::boolean end \
           as outcome from execution_steps \
         where execution_id = $1",
    )
    .bind(execution.id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Source {
        definition: None,
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
    let picked: Option<Uuid> = sqlx::query_scalar(
        "select e.id from executions e where e.pipeline_id = $1 and e.status in ('Succeeded', 'Failed', 'Stopped') \
         and (select count(*) from execution_steps s where s.execution_id = e.id and s.step_name = any($2) \
              and s.status = 'Succeeded') = cardinality($2) \
         order by e.created_at desc limit 1",
    )
    .bind(pipeline.id)
    .bind(&upstream)
    .fetch_optional(&mut *conn)
    .await?;
    match picked {
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
