//! The one function that decides what a start does (`prepare`): the
//! effective parameters and, for every step, whether it runs, is reused
//! from the source execution or is skipped, and why. The start writes what
//! it decides; the plan reports it and writes nothing.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::request::{resolve_parameters, StartError, StartRequest};
use crate::{
    config::Config,
    content::inputs,
    domain::{definition::Definition, duration::ExpireAfter, Issue},
    ids::Arns,
    store::{
        executions::{NewStepRun, ReusedStep},
        pipelines::PipelineHead,
    },
};

/// What becomes of one step when the execution is created. A plain start
/// runs every step; selective execution reuses or skips some.
#[derive(Debug, Clone, PartialEq)]
pub enum StepPlan {
    Run {
        /// Why it runs, for people: what changed (`parameter Epochs: 10 ->
        /// 12`), `selected`, `downstream of Train`. Empty in a plain start.
        why: Vec<String>,
        /// Early cut-off: the run of the source execution whose outputs the
        /// step takes after all if, once it is runnable, its resolved inputs
        /// equal that run's.
        cutoff: Option<CutOff>,
    },
    /// Succeeded at once with the outputs of `step_run` (of the source
    /// execution, or the run that the source itself reused).
    Reuse {
        step_run: Uuid,
        source_execution_arn: String,
        why: String,
    },
    Skip {
        reason: String,
        why: String,
    },
}

impl StepPlan {
    pub fn run() -> StepPlan {
        StepPlan::Run {
            why: Vec::new(),
            cutoff: None,
        }
    }
}

/// The source run an early cut-off compares with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutOff {
    pub step_run: Uuid,
    pub execution: Uuid,
}

/// What a start writes: a row for every step that runs or is skipped, and
/// for every reused step a reference to the run whose outputs it reuses
/// (not a copy: see migration 0004).
#[derive(Debug, Default)]
pub struct NewSteps {
    pub runs: Vec<NewStepRun>,
    pub reused: Vec<ReusedStep>,
    /// The handlers among `runs` (steps with a trigger other than
    /// Completed) and their trigger maps; empty for most definitions.
    pub handlers: Vec<(String, serde_json::Value)>,
}

/// Builds the rows of every step of `definition` following `plan` (a step
/// missing from `plan` runs).
pub fn new_steps(definition: &Definition, plan: &dyn Fn(&str) -> StepPlan) -> NewSteps {
    let plans: HashMap<&str, StepPlan> = definition
        .steps
        .iter()
        .map(|s| (s.name.as_str(), plan(&s.name)))
        .collect();
    let mut new = NewSteps::default();
    for (position, step) in definition.steps.iter().enumerate() {
        let (status, skip_reason, cutoff) = match &plans[step.name.as_str()] {
            StepPlan::Run { cutoff, .. } => ("Pending", None, *cutoff),
            StepPlan::Skip { reason, .. } => ("Skipped", Some(reason.clone()), None),
            StepPlan::Reuse { step_run, .. } => {
                new.reused.push(ReusedStep {
                    step_name: step.name.clone(),
                    step_run: *step_run,
                    position: position as i32,
                });
                continue;
            }
        };
        if let Some(triggers) = step.triggers_json() {
            new.handlers.push((step.name.clone(), triggers));
        }
        let remaining = step
            .depends_on
            .iter()
            .filter(|d| !matches!(plans.get(d.as_str()), Some(StepPlan::Reuse { .. })))
            .count();
        new.runs.push(NewStepRun {
            id: Uuid::now_v7(),
            step_name: step.name.clone(),
            step_type: step.kind.as_str().to_string(),
            position: position as i32,
            status: status.into(),
            skip_reason,
            arguments: step.arguments.clone(),
            retry_policies: serde_json::to_value(&step.retry_policies).expect("policies serialize"),
            cache_config: step
                .cache
                .map(|c| serde_json::to_value(c).expect("cache config serializes")),
            dependencies: step.depends_on.clone(),
            dependents: definition.dag.children(&step.name),
            remaining_deps: remaining as i32,
            branch_of: step.branch.as_ref().map(|b| b.condition.clone()),
            branch_if: step.branch.as_ref().map(|b| b.if_branch),
            cutoff_run: cutoff.map(|c| c.step_run),
            cutoff_execution: cutoff.map(|c| c.execution),
            member: None,
        });
    }
    new
}

/// What the server's configuration brings to a decision.
#[derive(Clone)]
pub struct Settings {
    /// How much hashing `CacheInputs` may do (`worker.cache_input_*`).
    pub inputs: inputs::Limits,
    /// `cache.max_expire_after`.
    pub cache_cap: ExpireAfter,
    /// `worker.max_outputs_bytes`: the largest artifacts file `Std:JsonGet`
    /// reads.
    pub max_outputs_bytes: u64,
    /// `worker.for_each_max_items`.
    pub for_each_max_items: usize,
    /// A test's hold on hashing (`Config::hash_probe`).
    pub probe: crate::config::HashProbe,
}

impl Settings {
    /// The limits for hashing the next step's `CacheInputs` while deciding a
    /// start that began hashing at `started`: all of a start's hashing
    /// together gets one `worker.cache_input_timeout_seconds`, so a start
    /// of many steps cannot take that long once per step. `None` once it is
    /// spent.
    pub fn inputs_left(&self, started: std::time::Instant) -> Option<inputs::Limits> {
        let left = self.inputs.timeout.checked_sub(started.elapsed())?;
        (!left.is_zero()).then_some(inputs::Limits {
            max_bytes: self.inputs.max_bytes,
            timeout: left,
        })
    }

    pub fn from_config(config: &Config) -> Settings {
        Settings {
            inputs: inputs::Limits {
                max_bytes: config.worker.cache_input_max_bytes,
                timeout: std::time::Duration::from_secs(config.worker.cache_input_timeout_seconds),
            },
            cache_cap: config.cache.max_expire_after,
            max_outputs_bytes: config.worker.max_outputs_bytes,
            for_each_max_items: config.worker.for_each_max_items,
            probe: config.hash_probe.clone(),
        }
    }
}

/// The effective parameters, the step plan and the recorded selective
/// request of a start.
pub struct Prepared {
    pub parameters: serde_json::Map<String, Value>,
    pub plans: HashMap<String, StepPlan>,
    pub steps: NewSteps,
    pub selective: Option<Value>,
    pub source_arn: Option<String>,
    /// The selective source execution (whose ForEach iterations a ForEach
    /// of this start is compared with, item by item).
    pub source_execution: Option<Uuid>,
}

/// Everything a start decides before writing: parameters and, for a
/// selective execution, which steps run, are reused or skipped. The plan
/// endpoint calls this too, without writing.
pub async fn prepare(
    conn: &mut PgConnection,
    arns: &Arns,
    pipeline: &PipelineHead,
    definition: &Definition,
    req: &StartRequest,
    hashes: &super::hashing::InputHashes<'_>,
) -> Result<Prepared, StartError> {
    let Some(selective_request) = &req.selective_execution else {
        let parameters = resolve_parameters(definition, &req.parameters)?;
        let steps = new_steps(definition, &|_| StepPlan::run());
        check_secrets(conn, definition, &steps).await?;
        return Ok(Prepared {
            parameters,
            plans: definition
                .steps
                .iter()
                .map(|s| (s.name.clone(), StepPlan::run()))
                .collect(),
            steps,
            selective: None,
            source_arn: None,
            source_execution: None,
        });
    };
    let planned = super::selective::plan(conn, arns, pipeline, definition, req, selective_request, hashes).await?;
    let steps = new_steps(definition, &|name| {
        planned.plans.get(name).cloned().unwrap_or_else(StepPlan::run)
    });
    check_secrets(conn, definition, &steps).await?;
    Ok(Prepared {
        parameters: planned.parameters,
        source_arn: planned.source.as_ref().map(|s| s.arn.clone()),
        source_execution: planned.source.as_ref().map(|s| s.execution.id),
        plans: planned.plans,
        steps,
        selective: Some(planned.record),
    })
}

/// Refuses a start whose steps that will run use a secret that does not
/// exist, naming each (a secret deleted later fails its step at run time).
async fn check_secrets(conn: &mut PgConnection, definition: &Definition, steps: &NewSteps) -> Result<(), StartError> {
    let uses: Vec<(&str, String, String)> = steps
        .runs
        .iter()
        .filter(|r| r.status == "Pending" && r.step_type == "Command")
        .flat_map(|r| {
            crate::domain::secrets::env_secrets(&r.arguments)
                .into_iter()
                .map(|(var, name)| (r.step_name.as_str(), var, name))
        })
        .collect();
    if uses.is_empty() {
        return Ok(());
    }
    let mut names: Vec<String> = uses.iter().map(|(_, _, n)| n.clone()).collect();
    names.sort();
    names.dedup();
    let existing = crate::store::secrets::existing(conn, &names).await?;
    let issues: Vec<Issue> = uses
        .iter()
        .filter(|(_, _, name)| !existing.contains(name))
        .map(|(step, var, name)| {
            let pointer = definition.step(step).map(|s| s.pointer.clone()).unwrap_or_default();
            let push = crate::domain::pointer_push;
            let at = push(&push(&push(&pointer, "Arguments"), "Env"), var);
            Issue::new(at, format!("step {step} uses secret {name:?}, which does not exist"))
        })
        .collect();
    let missing: Vec<&String> = names.iter().filter(|n| !existing.contains(n)).collect();
    match missing.as_slice() {
        [] => Ok(()),
        [one] => Err(StartError::invalid(format!("secret {one:?} does not exist"), issues)),
        many => {
            let list: Vec<String> = many.iter().map(|n| format!("{n:?}")).collect();
            Err(StartError::invalid(
                format!("secrets {} do not exist", list.join(", ")),
                issues,
            ))
        }
    }
}
