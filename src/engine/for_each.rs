//! ForEach steps. A worker claims a ForEach like any step and resolves its
//! items; `expand` then writes, under the execution's lock, one step run per
//! body step per item (`F[i].Body`) and drops the ForEach's lease: it waits
//! for its iterations, holding no worker. `MaxConcurrency` is kept by slots
//! (`slot_wait`): an iteration's rows are queued only once it holds one, and
//! each iteration that ends hands its slot on (`after_step`). When no
//! iteration is left to run, `settle` ends the ForEach with the outcome of
//! its iterations, through the same transitions as any step.
//!
//! Item-level reuse: when the execution has a selective source, each item
//! is paired with an iteration of the source's run of this ForEach that ran
//! the same item and succeeded (`domain::for_each::match_items`). Each body
//! step of a paired iteration is an early cut-off candidate of its run
//! there: once runnable it takes that run's outputs if its key is unchanged
//! (`executor::cutoff`), and runs otherwise.

use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    complete::{apply_failure, apply_stop, apply_success},
    finish_if_done_by_id, retrying, StepOutcome,
};
use crate::{
    domain::{
        definition::{for_each::selector_of, parse_definition},
        for_each::{self as rules, iteration_step_name, Counts, SourceIteration},
    },
    store::{
        executions::{self, Member, NewStepRun},
        for_each as store, steps,
        transitions::{self, LockedStep, Success},
        StoreResult,
    },
};

/// The most bytes the property document of a ForEach (all its iterations'
/// outputs) may take.
pub const MAX_PROPERTIES_BYTES: usize = 64 << 20;

/// How an expansion went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expanded {
    /// The iterations are written; the ForEach waits for them.
    Waiting,
    /// The attempt is no longer current, or the execution is stopping: the
    /// worker reports it as any step it could not finish.
    Stale,
    /// The ForEach cannot make its iterations: it fails with this outcome.
    Failed(String),
}

/// Writes the iterations of ForEach step run `id` (attempt `attempt`) for
/// `items`, and queues those that may start.
pub async fn expand(pool: &PgPool, id: Uuid, attempt: i32, items: &[Value]) -> StoreResult<Expanded> {
    retrying(|| expand_once(pool, id, attempt, items)).await
}

async fn expand_once(pool: &PgPool, id: Uuid, attempt: i32, items: &[Value]) -> StoreResult<Expanded> {
    let mut tx = pool.begin().await?;
    let Some(locked) = transitions::lock_with_execution(&mut tx, id).await? else {
        return Ok(Expanded::Stale);
    };
    let step = &locked.step;
    if step.attempt != attempt || step.status != "Executing" || locked.execution_status != "Executing" {
        return Ok(Expanded::Stale);
    }
    // This attempt has made its iterations already (a repeated report): it
    // waits for them; a second set of rows would collide with the first.
    if step.metadata.get("for_each").is_some() {
        return Ok(Expanded::Waiting);
    }
    let execution = executions::get(&mut tx, step.execution_id).await?;
    if let Some(reason) = &execution.failure_reason {
        return Ok(Expanded::Failed(format!(
            "its iterations were not started: the execution is failing ({reason})"
        )));
    }
    let document = executions::definition(&mut tx, step.execution_id).await?;
    let definition = match parse_definition(&document) {
        Ok(d) => d,
        Err(issues) => {
            let first = issues.first().map(|i| i.to_string()).unwrap_or_default();
            return Ok(Expanded::Failed(format!(
                "the execution's definition no longer validates: {first}"
            )));
        }
    };
    let Some(spec) = definition.for_each(&step.step_name) else {
        return Ok(Expanded::Failed(format!(
            "the execution's definition has no ForEach step {:?}",
            step.step_name
        )));
    };
    let source = match store::source_run(&mut tx, step.execution_id, &step.step_name).await? {
        Some((_, source_execution)) => {
            let iterations = store::source_iterations(&mut tx, source_execution, &step.step_name).await?;
            Some((source_execution, iterations))
        }
        None => None,
    };
    let pairs = match &source {
        Some((_, iterations)) => rules::match_items(items, &source_view(iterations)),
        None => vec![None; items.len()],
    };
    let rows = iteration_rows(step, spec, items, &pairs, source.as_ref());
    executions::insert_step_runs(&mut tx, step.execution_id, step.pipeline_id, &rows).await?;
    let paired = pairs.iter().filter(|p| p.is_some()).count();
    let metadata = json!({"for_each": {
        "items": items.len(),
        "max_concurrency": spec.max_concurrency,
        "compared_with_source": paired,
    }});
    if !store::begin_waiting(&mut tx, id, attempt, &metadata).await? {
        return Ok(Expanded::Stale);
    }
    let detail = json!({"iterations": items.len(), "compared_with_source": paired});
    executions::record_event(
        &mut tx,
        step.execution_id,
        Some(&step.step_name),
        "Executing",
        Some(detail),
    )
    .await?;
    store::fill_slots(&mut tx, step.execution_id, &step.step_name).await?;
    let mut queued = steps::promote_ready(&mut tx, step.execution_id, locked.execution_max_parallel_steps).await?;
    queued += settle(&mut tx, step.execution_id).await?;
    if queued == 0 {
        finish_if_done_by_id(&mut tx, step.execution_id).await?;
    }
    steps::notify(&mut tx, step.execution_id, queued > 0).await?;
    tx.commit().await?;
    Ok(Expanded::Waiting)
}

/// The source's iterations as the pairing (`match_items`) reads them.
pub(super) fn source_view(iterations: &[store::SourceIteration]) -> Vec<SourceIteration> {
    iterations
        .iter()
        .map(|it| SourceIteration {
            index: it.iteration.max(0) as usize,
            item: it.item.clone().unwrap_or(Value::Null),
            succeeded: it.succeeded,
        })
        .collect()
}

/// The rows of every body step of every item, with their dependencies
/// inside their iteration, their slot, and the source run each is compared
/// with.
fn iteration_rows(
    step: &crate::store::steps::StepRunRow,
    spec: &crate::domain::definition::for_each::ForEachSpec,
    items: &[Value],
    pairs: &[Option<usize>],
    source: Option<&(Uuid, Vec<store::SourceIteration>)>,
) -> Vec<NewStepRun> {
    let body_names: Vec<&str> = spec.body.iter().map(|b| b.name.as_str()).collect();
    let mut rows = Vec::with_capacity(items.len() * spec.body.len());
    for (i, item) in items.iter().enumerate() {
        let source_runs = pairs[i].and_then(|j| {
            let (execution, iterations) = source?;
            let it = iterations.iter().find(|it| it.iteration.max(0) as usize == j)?;
            Some((*execution, &it.runs))
        });
        for (b, body) in spec.body.iter().enumerate() {
            let local = |d: &String| body_names.contains(&d.as_str());
            let dependencies: Vec<String> = body
                .depends_on
                .iter()
                .map(|d| {
                    if local(d) {
                        iteration_step_name(&step.step_name, i, d)
                    } else {
                        d.clone()
                    }
                })
                .collect();
            let dependents: Vec<String> = spec
                .body
                .iter()
                .filter(|o| o.depends_on.contains(&body.name))
                .map(|o| iteration_step_name(&step.step_name, i, &o.name))
                .collect();
            let cutoff = source_runs.and_then(|(execution, runs)| {
                let run = runs.get(&body.name)?.as_str()?.parse::<Uuid>().ok()?;
                Some((run, execution))
            });
            rows.push(NewStepRun {
                id: Uuid::now_v7(),
                step_name: iteration_step_name(&step.step_name, i, &body.name),
                step_type: body.kind.as_str().to_string(),
                position: step.position,
                status: "Pending".into(),
                skip_reason: None,
                arguments: body.arguments.clone(),
                retry_policies: serde_json::to_value(&body.retry_policies).unwrap_or_else(|_| json!([])),
                cache_config: body.cache.and_then(|c| serde_json::to_value(c).ok()),
                remaining_deps: body.depends_on.iter().filter(|d| local(d)).count() as i32,
                dependencies,
                dependents,
                branch_of: None,
                branch_if: None,
                cutoff_run: cutoff.map(|c| c.0),
                cutoff_execution: cutoff.map(|c| c.1),
                member: Some(Member {
                    parent: step.step_name.clone(),
                    iteration: i as i32,
                    item: item.clone(),
                    local_name: body.name.clone(),
                    body_index: b as i32,
                    slot_wait: true,
                }),
            });
        }
    }
    rows
}

/// What handing on an iteration's slot did.
pub(super) struct HandedOn {
    /// Steps queued.
    pub queued: u64,
    /// The ForEach may have nothing left to run: `settle` must look.
    pub may_settle: bool,
}

/// After a step of a ForEach iteration ended for good: when its iteration
/// has ended, its slot goes to the next waiting one, whose ready steps are
/// queued. A step outside any iteration hands on nothing.
pub(super) async fn after_step(conn: &mut PgConnection, locked: &LockedStep) -> StoreResult<HandedOn> {
    let step = &locked.step;
    let (Some(parent), Some(iteration)) = (&step.parent, step.iteration) else {
        return Ok(HandedOn {
            queued: 0,
            may_settle: false,
        });
    };
    if locked.execution_status != "Executing" {
        return Ok(HandedOn {
            queued: 0,
            may_settle: true,
        });
    }
    let unbounded = locked.execution_max_parallel_steps.is_none();
    let (closed, slots, mut queued) =
        store::hand_on_slot(conn, step.execution_id, parent, iteration, unbounded).await?;
    if slots > 0 && !unbounded {
        queued = steps::promote_ready(conn, step.execution_id, locked.execution_max_parallel_steps).await? as i64;
    }
    Ok(HandedOn {
        queued: queued.max(0) as u64,
        // An iteration that handed its slot on leaves a running one behind.
        may_settle: closed && slots == 0,
    })
}

/// Ends every ForEach of the execution that has no iteration left to run.
/// Returns how many steps that queued (their dependents). Ending one may
/// skip the waiting iterations of another (a failure), so it looks again.
pub(super) async fn settle(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<u64> {
    let mut queued = 0;
    for _ in 0..1000 {
        let settled = store::settled(conn, execution_id).await?;
        if settled.is_empty() {
            break;
        }
        for s in settled {
            queued += conclude(conn, s.id).await?;
        }
    }
    Ok(queued)
}

/// Ends ForEach `id` with the outcome of its iterations.
async fn conclude(conn: &mut PgConnection, id: Uuid) -> StoreResult<u64> {
    let Some(locked) = transitions::lock_with_execution(conn, id).await? else {
        return Ok(0);
    };
    let step = &locked.step;
    let iterations = store::ended_iterations(conn, step.execution_id, &step.step_name).await?;
    let counts = iterations.iter().fold(Counts::default(), |c, it| Counts {
        total: c.total + it.total,
        succeeded: c.succeeded + it.succeeded,
        failed: c.failed + it.failed,
        stopped: c.stopped + it.stopped,
    });
    let items = iterations.len();
    let all_succeeded = counts.succeeded == counts.total;
    let outcome = if all_succeeded {
        let outputs: Vec<Value> = iterations.into_iter().map(|it| it.outputs).collect();
        succeeded(outputs, &step.arguments, counts)
    } else if step.status == "Stopping" {
        StepOutcome::Stopped {
            message: format!(
                "the execution was stopped; {} of {} iteration steps had succeeded",
                counts.succeeded, counts.total
            ),
        }
    } else {
        let first = store::first_unsuccessful(conn, step.execution_id, &step.step_name).await?;
        let why = match first {
            Some((name, status, reason, error_type)) => {
                let error = error_type.map(|e| format!("{e}: ")).unwrap_or_default();
                format!(
                    "step {name:?} {}: {error}{}",
                    status.to_lowercase(),
                    reason.unwrap_or_default()
                )
            }
            None => "an iteration did not succeed".into(),
        };
        StepOutcome::Failed {
            error_type: "ForEach.ITERATION_FAILED".into(),
            message: format!(
                "{} of {} iteration steps succeeded ({} failed, {} stopped); first: {why}",
                counts.succeeded, counts.total, counts.failed, counts.stopped
            ),
            metadata: json!({"for_each": rules::summary("Failed", items, counts)}),
            exit_code: None,
            by_fail_step: false,
        }
    };
    let effect = match &outcome {
        StepOutcome::Succeeded {
            properties, metadata, ..
        } => {
            let success = Success {
                id,
                attempt: step.attempt,
                properties,
                metadata,
                exit_code: None,
                log: None,
                key: None,
            };
            apply_success(conn, &locked, &success).await?
        }
        StepOutcome::Failed { .. } => apply_failure(conn, &locked, &outcome, None).await?,
        StepOutcome::Stopped { message } => apply_stop(conn, &locked, message, None).await?,
    };
    Ok(effect.map_or(0, |e| e.queued))
}

fn succeeded(outputs: Vec<Value>, arguments: &Value, counts: Counts) -> StepOutcome {
    let items = outputs.len();
    let selector = selector_of(arguments);
    let properties = rules::properties(outputs, selector.as_ref(), counts).and_then(|doc| {
        let size = serde_json::to_vec(&doc).map_or(0, |b| b.len());
        if size > MAX_PROPERTIES_BYTES {
            Err(format!(
                "the outputs of its {items} iterations take {size} bytes; at most {MAX_PROPERTIES_BYTES} fit in \
                 its property document (write large results to artifacts instead)"
            ))
        } else {
            Ok(doc)
        }
    });
    match properties {
        Ok(properties) => StepOutcome::Succeeded {
            metadata: json!({"for_each": rules::summary("Succeeded", items, counts)}),
            properties,
            exit_code: None,
            key: None,
        },
        // The executor's `INPUT_ERROR`: deterministic, so no retry policy names it.
        Err(message) => StepOutcome::failed("Step.INPUT_ERROR", message),
    }
}

/// A retry of the execution (SPEC 3.4): each ForEach that had made its
/// iterations waits for them again, under a new attempt, instead of making
/// them anew; its reset iterations queue for slots again.
pub(super) async fn reopen(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<()> {
    let reopened = store::reopen(conn, execution_id).await?;
    for parent in reopened {
        store::fill_slots(conn, execution_id, &parent).await?;
    }
    Ok(())
}
