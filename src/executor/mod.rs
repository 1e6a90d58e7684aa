//! What a claimed step does. Expressions in its arguments are evaluated
//! against the execution (parameters, execution variables, upstream property
//! documents), then the step type runs: a process for Command, nothing but
//! evaluation for Pass, Condition and Fail, a wait for Callback, removal of
//! artifacts directories for Cleanup.

pub mod cache;
pub mod cleanup;
pub mod command;
pub mod cutoff;
pub mod log;
pub mod mask;
pub mod run_as;
pub mod secrets;
pub mod supervised;
pub mod supervisor;

use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::Config,
    content::inputs,
    domain::outcome::{RunKey, StepOutcome},
    domain::{
        condition::evaluate_conditions,
        definition::{CallbackArgs, CommandArgs, StepKind},
        expr::{evaluate, ExecutionVar, Resolver},
        PathToken,
    },
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
    /// Runs Command steps' processes (one per worker pool).
    pub supervisor: &'a supervised::Supervisor,
    /// Opens the secrets a Command step's Env uses.
    pub keyring: &'a crate::secrets::Keyring,
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
        crate::content::artifacts::read_json(
            self.step.upstream.get(step),
            step,
            file,
            self.config.worker.max_outputs_bytes,
        )
    }

    fn current_item(&self) -> Option<(Value, usize)> {
        let item = self.step.item.clone()?;
        Some((item, self.step.iteration?.max(0) as usize))
    }

    fn secret(&self, name: &str) -> Result<Value, String> {
        // `secrets::WithSecrets` resolves the secrets a step loaded.
        Err(format!(
            "Secrets.{name}: secrets are only available in a Command step's Env"
        ))
    }
}

/// Where a JSON value holds a NUL character (U+0000, in a string or a key),
/// which PostgreSQL's `jsonb` and `text` refuse: `Outputs.x`, `[2]`, ...
pub fn nul_at(value: &Value) -> Option<String> {
    let path = crate::domain::nul_path(value)?;
    if path.is_empty() {
        return Some("the value".into());
    }
    let mut at = String::new();
    for token in path {
        match token {
            PathToken::Index(i) => at.push_str(&format!("[{i}]")),
            PathToken::Key(k) => {
                if !at.is_empty() {
                    at.push('.');
                }
                at.push_str(&k.replace('\0', "\\u0000"));
            }
        }
    }
    Some(at)
}

pub use crate::content::artifacts::artifacts_path;

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
        /// The SageMaker SDK's `SqsQueueUrl`, shown in the step's metadata.
        sqs_queue_url: Option<String>,
        arguments: Value,
    },
    /// A ForEach resolved its items: its iterations are to be made.
    Expand {
        items: Vec<Value>,
    },
}

fn done(outcome: StepOutcome) -> Run {
    Run::Done { outcome, log: None }
}

/// Runs one claimed attempt. `stop` fires when the execution is stopped or
/// the lease is lost. What it returns can always be stored: a NUL character
/// (which PostgreSQL refuses in `jsonb` and `text`) in properties fails the
/// step, in a message it is escaped.
pub async fn run(ctx: &StepContext<'_>, stop: CancellationToken) -> Run {
    if ctx.config.worker.fault_panic_step.as_deref() == Some(ctx.step.step_name.as_str()) && ctx.step.attempt == 1 {
        // The test-only fault point (`worker.fault_panic_step`), armed only
        // by a test's own Config.
        panic!("injected fault: step {} panics", ctx.step.step_name);
    }
    match run_step(ctx, stop).await {
        Run::Done { outcome, log } => Run::Done {
            outcome: storable(outcome, &ctx.step.step_type),
            log,
        },
        waiting => waiting,
    }
}

fn storable(outcome: StepOutcome, step_type: &str) -> StepOutcome {
    match outcome {
        StepOutcome::Succeeded {
            properties, metadata, ..
        } if nul_at(&properties).is_some() || nul_at(&metadata).is_some() => {
            let at = nul_at(&properties).map_or("its metadata".to_string(), |at| format!("Properties {at}"));
            let error_type = if step_type == "Command" {
                "Command.FAILED"
            } else {
                INPUT_ERROR
            };
            let message = format!("the step produced a NUL character (\\u0000) in {at}, which cannot be stored");
            StepOutcome::failed(error_type, message)
        }
        StepOutcome::Failed {
            error_type,
            message,
            metadata,
            exit_code,
            by_fail_step,
        } => StepOutcome::Failed {
            error_type,
            message: message.replace('\0', "\\u0000"),
            metadata: if nul_at(&metadata).is_some() {
                json!({})
            } else {
                metadata
            },
            exit_code,
            by_fail_step,
        },
        StepOutcome::Stopped { message } => StepOutcome::Stopped {
            message: message.replace('\0', "\\u0000"),
        },
        other => other,
    }
}

async fn run_step(ctx: &StepContext<'_>, stop: CancellationToken) -> Run {
    if ctx.step.step_type == StepKind::ForEach.as_str() {
        return for_each_items(ctx);
    }
    let secrets = match secrets::StepSecrets::load(ctx).await {
        Ok(s) => s,
        Err(outcome) => return done(outcome),
    };
    let resolver = secrets::WithSecrets { ctx, secrets: &secrets };
    // Secrets stand as markers (name and keyed digest) in `arguments`, which
    // the cache key is computed from; only `revealed` holds their values.
    let arguments = match evaluate(&ctx.step.arguments, &resolver) {
        Ok(v) => v,
        Err(message) => return done(StepOutcome::failed(INPUT_ERROR, message)),
    };
    let revealed = match secrets.reveal(&ctx.step.arguments, &arguments) {
        Ok(v) => v,
        Err(message) => return done(StepOutcome::failed(INPUT_ERROR, message)),
    };
    if let Some(at) = nul_at(&arguments) {
        // Neither a process nor the database (cache components, Pass
        // outputs) can take it.
        let message = format!("the resolved Arguments hold a NUL character (\\u0000) in {at}");
        return done(StepOutcome::failed(INPUT_ERROR, message));
    }
    let mut keyed_run = Keyed::Runs { note: None, key: None };
    if let Some(kind) = StepKind::parse(&ctx.step.step_type).filter(|k| k.is_cacheable()) {
        keyed_run = keyed(ctx, kind, &arguments, &revealed).await;
    }
    let (note, key) = match keyed_run {
        Keyed::Decided(outcome) => return done(outcome),
        Keyed::Runs { note, key } => (note, key),
    };
    match run_by_type(ctx, &arguments, &revealed, &secrets, stop).await {
        Run::Done { mut outcome, log } => {
            if let Some(note) = note {
                outcome = outcome.with_metadata("early_cutoff", note);
            }
            if let StepOutcome::Succeeded { key: recorded, .. } = &mut outcome {
                *recorded = key.map(Box::new);
            }
            Run::Done { outcome, log }
        }
        waiting => waiting,
    }
}

/// A ForEach resolves its `IterableItems` (its Selector is read when it
/// ends, its body by each iteration).
fn for_each_items(ctx: &StepContext<'_>) -> Run {
    let items = ctx.step.arguments.get("IterableItems").cloned().unwrap_or(Value::Null);
    let resolved =
        evaluate(&items, ctx).and_then(|v| crate::domain::for_each::items_of(v, ctx.config.worker.for_each_max_items));
    match resolved {
        Ok(items) => match nul_at(&Value::Array(items.clone())) {
            Some(at) => done(StepOutcome::failed(
                INPUT_ERROR,
                format!("the items hold a NUL character (\\u0000) in {at}, which cannot be stored"),
            )),
            None => Run::Expand { items },
        },
        Err(message) => done(StepOutcome::failed(INPUT_ERROR, message)),
    }
}

/// What the key of a cacheable step decided.
enum Keyed {
    /// Reused (early cut-off), served from the cache, or failed.
    Decided(StepOutcome),
    /// It runs; with why an early cut-off did not reuse it, and the key to
    /// record with its success when the cache did not record it.
    Runs { note: Option<Value>, key: Option<RunKey> },
}

/// Computes the key of a cacheable step, which every run records, and
/// decides with it: early cut-off first, then the cache.
async fn keyed(ctx: &StepContext<'_>, kind: StepKind, arguments: &Value, revealed: &Value) -> Keyed {
    let limits = inputs::Limits {
        max_bytes: ctx.config.worker.cache_input_max_bytes,
        timeout: std::time::Duration::from_secs(ctx.config.worker.cache_input_timeout_seconds),
    };
    let config = ctx
        .step
        .cache_config
        .clone()
        .and_then(|c| serde_json::from_value::<crate::domain::definition::CacheConfig>(c).ok());
    let uses_cache = config.is_some_and(|c| c.enabled);
    let key = match crate::content::step_key(kind, &ctx.step.arguments, arguments, revealed, limits).await {
        Ok(key) => key,
        // A step that does not use the cache runs as it would without a
        // key (its `CacheInputs` serve only `"changed"`): a cut-off that
        // cannot compare lets it run, and says why.
        Err(message) if !uses_cache => {
            let note = ctx
                .step
                .cutoff_run
                .zip(ctx.step.cutoff_execution)
                .map(|(run, execution)| {
                    json!({
                        "source_execution_arn": ctx.arns.execution(&ctx.step.pipeline_name, execution),
                        "source_step_run_id": run,
                        "reused": false,
                        "reason": format!("its inputs cannot be compared with its run in the source: {message}"),
                    })
                });
            return Keyed::Runs { note, key: None };
        }
        Err(message) => return Keyed::Decided(StepOutcome::failed(INPUT_ERROR, message)),
    };
    let fault = |e: crate::store::StoreError| {
        Keyed::Decided(StepOutcome::failed(
            "Step.SERVICE_FAULT",
            format!("the cache lookup failed: {e}"),
        ))
    };
    let note = match cutoff::check(ctx, kind, &key).await {
        Ok(cutoff::CutOff::Reused(outcome)) => return Keyed::Decided(outcome),
        Ok(cutoff::CutOff::Runs(note)) => Some(note),
        Ok(cutoff::CutOff::None) => None,
        Err(e) => return fault(e),
    };
    match cache::decide(ctx, kind, &key, config).await {
        Ok(cache::Decision::Uncached) => Keyed::Runs {
            note,
            key: Some(RunKey {
                key: key.key,
                components: key.components,
            }),
        },
        Ok(cache::Decision::Run) => Keyed::Runs { note, key: None },
        Ok(cache::Decision::Hit(outcome)) => Keyed::Decided(outcome),
        Err(e) => fault(e),
    }
}

async fn run_by_type(
    ctx: &StepContext<'_>,
    arguments: &Value,
    revealed: &Value,
    secrets: &secrets::StepSecrets,
    stop: CancellationToken,
) -> Run {
    match ctx.step.step_type.as_str() {
        "Pass" => done(StepOutcome::Succeeded {
            properties: json!({ "Outputs": arguments }),
            metadata: json!({}),
            exit_code: None,
            key: None,
        }),
        "Condition" => match evaluate_conditions(&arguments["Conditions"]) {
            Ok(outcome) => done(StepOutcome::Succeeded {
                properties: json!({ "Outcome": outcome }),
                metadata: json!({ "condition": { "outcome": outcome } }),
                exit_code: None,
                key: None,
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
        "Cleanup" => done(cleanup::run(ctx, arguments).await),
        "Callback" => match CallbackArgs::from_resolved(arguments) {
            Ok(args) => Run::WaitForCallback {
                token: Uuid::new_v4(),
                timeout_seconds: args.timeout_seconds,
                url: args.url,
                sqs_queue_url: args.sqs_queue_url,
                arguments: arguments.clone(),
            },
            Err(message) => done(StepOutcome::failed(INPUT_ERROR, message)),
        },
        "Command" => match CommandArgs::from_resolved(revealed) {
            Ok(args) => {
                let (outcome, log) = command::run(ctx, &args, secrets.values(), stop).await;
                Run::Done {
                    outcome: secrets.masker().outcome(outcome),
                    log,
                }
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
        if let Some(at) = nul_at(value) {
            problems.push(format!(
                "output parameter {name:?} holds a NUL character (\\u0000) in {at}, which cannot be stored"
            ));
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_at_names_where_a_nul_sits() {
        assert_eq!(nul_at(&json!({"a": [1, "x"], "b": {"c": "ok"}})), None);
        assert_eq!(nul_at(&json!({"a": [1, "x\u{0}"]})).as_deref(), Some("a[1]"));
        assert_eq!(nul_at(&json!({"b": {"c\u{0}": 1}})).as_deref(), Some("b.c\\u0000"));
        assert_eq!(nul_at(&json!("\u{0}")).as_deref(), Some("the value"));
    }

    #[test]
    fn outcomes_are_made_storable() {
        let nul = StepOutcome::Succeeded {
            properties: json!({"Outputs": {"x": "\u{0}"}}),
            metadata: json!({}),
            exit_code: Some(0),
            key: None,
        };
        match storable(nul, "Command") {
            StepOutcome::Failed {
                error_type, message, ..
            } => {
                assert_eq!(error_type, "Command.FAILED");
                assert!(message.contains("Properties Outputs.x"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match storable(StepOutcome::failed("Command.FAILED", "bad \u{0} name"), "Command") {
            StepOutcome::Failed { message, .. } => assert_eq!(message, "bad \\u0000 name"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn callback_outputs_with_a_nul_are_refused() {
        let declared = json!({"OutputParameters": [{"OutputName": "s", "OutputType": "String"}]});
        let given = json!({"s": "a\u{0}"});
        let problems = check_callback_outputs(&declared, given.as_object().unwrap()).unwrap_err();
        assert!(problems[0].contains("NUL character"), "{problems:?}");
    }
}
