//! What a claimed step does. Expressions in its arguments are evaluated
//! against the execution (parameters, execution variables, upstream property
//! documents), then the step type runs: a process for Command, nothing but
//! evaluation for Pass, Condition and Fail, a wait for Callback.

pub mod cache;
pub mod command;

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::Config,
    domain::{
        condition::evaluate_conditions,
        definition::{CallbackArgs, CommandArgs, StepKind},
        expr::{evaluate, ExecutionVar, Resolver},
    },
    engine::StepOutcome,
    ids::Arns,
    store::steps::ClaimedStep,
};

/// The error type of a step whose inputs could not be resolved at run time
/// (a path absent from the actual outputs, a value of the wrong kind). It is
/// deterministic, so no retry policy can name it.
pub const INPUT_ERROR: &str = "Step.INPUT_ERROR";

/// Everything a step needs to resolve its arguments.
pub struct StepContext<'a> {
    pub db: &'a sqlx::PgPool,
    pub step: &'a ClaimedStep,
    pub arns: &'a Arns,
    pub config: &'a Config,
}

impl StepContext<'_> {
    pub fn execution_arn(&self) -> String {
        self.arns.execution(&self.step.pipeline_name, self.step.execution_id)
    }

    fn started_at(&self) -> DateTime<Utc> {
        self.step.execution_started_at
    }
}

impl Resolver for StepContext<'_> {
    fn parameter(&self, name: &str) -> Option<Value> {
        self.step.parameters.get(name).cloned()
    }

    fn execution_var(&self, var: ExecutionVar) -> Value {
        match var {
            ExecutionVar::PipelineExecutionId => json!(self.step.execution_id.to_string()),
            ExecutionVar::PipelineExecutionArn => json!(self.execution_arn()),
            ExecutionVar::PipelineName => json!(self.step.pipeline_name),
            ExecutionVar::PipelineArn => json!(self.arns.pipeline(&self.step.pipeline_name)),
            ExecutionVar::StartDateTime => json!(self.started_at().to_rfc3339_opts(SecondsFormat::Millis, true)),
            ExecutionVar::CurrentDateTime => json!(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)),
        }
    }

    fn step_properties(&self, step: &str) -> Option<Value> {
        self.step.upstream.get(step).cloned()
    }

    fn artifact_json(&self, step: &str, file: &str) -> Result<Value, String> {
        let properties = self
            .step
            .upstream
            .get(step)
            .ok_or_else(|| format!("step {step:?} has no properties in this execution"))?;
        let uri = properties
            .get("ArtifactsUri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("step {step:?} has no ArtifactsUri"))?;
        let path = artifacts_path(uri).join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {file:?} from the artifacts of step {step:?}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{file:?} in the artifacts of step {step:?} is not JSON: {e}"))
    }
}

/// The directory an `ArtifactsUri` names (a `file://` prefix is accepted).
pub fn artifacts_path(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri))
}

/// `ArtifactsUri` is the directory's absolute path: what a downstream
/// command can use directly (`cat "$DATA/train.csv"`), on any machine that
/// mounts the shared data directory at the same place.
pub fn artifacts_uri(dir: &Path) -> String {
    dir.display().to_string()
}

/// What running a step produced.
pub enum Run {
    Done {
        outcome: StepOutcome,
        log: Option<Vec<u8>>,
    },
    /// A Callback step now waits for its token.
    WaitForCallback {
        token: Uuid,
        timeout_seconds: Option<u64>,
        url: Option<String>,
        arguments: Value,
    },
}

fn done(outcome: StepOutcome) -> Run {
    Run::Done { outcome, log: None }
}

/// Runs one claimed attempt. `stop` fires when the execution is stopped or
/// the lease is lost.
pub async fn run(ctx: &StepContext<'_>, stop: CancellationToken) -> Run {
    let arguments = match evaluate(&ctx.step.arguments, ctx) {
        Ok(v) => v,
        Err(message) => return done(StepOutcome::failed(INPUT_ERROR, message)),
    };
    if let Some(kind) = StepKind::parse(&ctx.step.step_type).filter(|k| k.is_cacheable()) {
        match cache::decide(ctx, kind, &arguments).await {
            Ok(cache::Decision::Run) => {}
            Ok(cache::Decision::Hit(outcome) | cache::Decision::Fail(outcome)) => return done(outcome),
            Err(e) => {
                return done(StepOutcome::failed(
                    "Step.SERVICE_FAULT",
                    format!("the cache lookup failed: {e}"),
                ))
            }
        }
    }
    match ctx.step.step_type.as_str() {
        "Pass" => done(StepOutcome::Succeeded {
            properties: json!({ "Outputs": arguments }),
            metadata: json!({}),
            exit_code: None,
        }),
        "Condition" => match evaluate_conditions(&arguments["Conditions"]) {
            Ok(outcome) => done(StepOutcome::Succeeded {
                properties: json!({ "Outcome": outcome }),
                metadata: json!({ "condition": { "outcome": outcome } }),
                exit_code: None,
            }),
            Err(message) => done(StepOutcome::failed(INPUT_ERROR, message)),
        },
        "Fail" => {
            let message = match arguments.get("ErrorMessage") {
                None | Some(Value::Null) => format!("Fail step {:?} ended the execution", ctx.step.step_name),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            done(StepOutcome::Failed {
                error_type: "Fail".into(),
                metadata: json!({ "fail": { "error_message": message } }),
                message,
                exit_code: None,
                by_fail_step: true,
            })
        }
        "Callback" => match CallbackArgs::from_resolved(&arguments) {
            Ok(args) => Run::WaitForCallback {
                token: Uuid::new_v4(),
                timeout_seconds: args.timeout_seconds,
                url: args.url,
                arguments,
            },
            Err(message) => done(StepOutcome::failed(INPUT_ERROR, message)),
        },
        "Command" => match CommandArgs::from_resolved(&arguments) {
            Ok(args) => {
                let (outcome, log) = command::run(ctx, &args, stop).await;
                Run::Done { outcome, log }
            }
            Err(message) => done(StepOutcome::failed(INPUT_ERROR, message)),
        },
        other => done(StepOutcome::failed(INPUT_ERROR, format!("unknown step type {other:?}"))),
    }
}

/// Checks reported callback outputs against the declared `OutputParameters`,
/// converting strings for numeric and boolean types as parameters do.
pub fn check_callback_outputs(declared: &Value, given: &Map<String, Value>) -> Result<Value, Vec<String>> {
    let args = CallbackArgs::from_resolved(declared).map_err(|e| vec![e])?;
    let mut problems = Vec::new();
    let mut out = Map::new();
    for (name, kind) in &args.output_parameters {
        let Some(value) = given.get(name) else {
            problems.push(format!("output parameter {name:?} ({}) is missing", kind.as_str()));
            continue;
        };
        let parameter = crate::domain::params::Parameter {
            name: name.clone(),
            kind: *kind,
            default: None,
            enum_values: None,
        };
        match crate::domain::params::coerce(&parameter, value) {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err(e) => problems.push(e),
        }
    }
    for name in given.keys() {
        if !args.output_parameters.iter().any(|(n, _)| n == name) {
            let declared: Vec<&str> = args.output_parameters.iter().map(|(n, _)| n.as_str()).collect();
            problems.push(format!(
                "output parameter {name:?} is not declared; declared: {declared:?}"
            ));
        }
    }
    if problems.is_empty() {
        Ok(Value::Object(out))
    } else {
        Err(problems)
    }
}
