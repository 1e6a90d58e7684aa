//! The core API flow, run with the client progenitor generates from
//! openapi.yaml (build.rs; CI: .ci/clients). Uses only the generated, typed
//! API. Prints each check; exits non-zero at the first that fails.
//!
//! Usage: STEPWISE_URL=http://127.0.0.1:8080 STEPWISE_TOKEN=... stepwise-rust-flow

use std::{
    collections::{BTreeMap, HashMap},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use serde_json::{Map, Value};

#[allow(clippy::all, dead_code, unused_imports)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/stepwise_client.rs"));
}

use generated::{types, Client};

/// How long a describe waits for the execution to end; the HTTP client's
/// timeout must be longer, or it gives up on the long poll.
const WAIT_SECONDS: i32 = 60;

type ApiError = progenitor_client::Error<types::ErrorResponse>;

fn check(condition: bool, what: impl AsRef<str>) -> Result<()> {
    if !condition {
        bail!("{}", what.as_ref());
    }
    println!("ok: {}", what.as_ref());
    Ok(())
}

/// The typed error of a call that must fail with `status` and `code`.
fn expect_error<T: std::fmt::Debug>(result: Result<T, ApiError>, status: u16, code: types::ErrorCode) -> Result<()> {
    match result {
        Err(progenitor_client::Error::ErrorResponse(response)) => {
            let (got_status, body) = (response.status().as_u16(), response.into_inner());
            check(
                got_status == status && body.error.code == code,
                format!(
                    "{status} is a typed ErrorResponse with code {code}: {}",
                    body.error.message
                ),
            )
        }
        other => Err(anyhow!("expected a {status} {code} error, got {other:?}")),
    }
}

fn pipelines() -> Map<String, Value> {
    let text = include_str!("../../pipelines.json");
    serde_json::from_str(text).expect("pipelines.json")
}

fn definition(value: &Value) -> types::Definition {
    types::Definition(value.as_object().expect("a definition is an object").clone())
}

fn parameters(values: &[(&str, types::ParameterValue)]) -> types::ParameterValues {
    types::ParameterValues(
        values
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<HashMap<_, _>>(),
    )
}

fn ended(status: types::ExecutionStatus) -> bool {
    use types::ExecutionStatus::*;
    matches!(status, Succeeded | Failed | Stopped)
}

struct Flow {
    client: Client,
    train: String,
    gate: String,
    defs: Map<String, Value>,
}

impl Flow {
    /// Long polls until the execution ends.
    async fn wait(&self, id: &uuid::Uuid) -> Result<types::Execution> {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            let execution = self
                .client
                .describe_execution()
                .execution(id.to_string())
                .wait_seconds(WAIT_SECONDS)
                .send()
                .await?
                .into_inner();
            if ended(execution.status) {
                return Ok(execution);
            }
        }
        bail!("execution {id} did not end in 300 s")
    }

    async fn steps(&self, id: &uuid::Uuid) -> Result<BTreeMap<String, types::StepRun>> {
        let listed = self
            .client
            .list_steps()
            .execution(id.to_string())
            .send()
            .await?
            .into_inner();
        Ok(listed.steps.into_iter().map(|s| (s.step_name.clone(), s)).collect())
    }

    async fn start(&self, name: &str, body: types::StartExecutionRequest) -> Result<types::Execution> {
        let response = self.client.start_execution().name(name).body(body).send().await?;
        check(
            response.status().as_u16() == 201,
            format!("started an execution of {name} (201)"),
        )?;
        Ok(response.into_inner())
    }

    /// The token of the waiting Approve step, once it waits. After a retry,
    /// the step's metadata shows the cancelled token of the stopped attempt
    /// until the new attempt waits: `previous` is skipped.
    async fn waiting_token(&self, id: &uuid::Uuid, previous: Option<uuid::Uuid>) -> Result<uuid::Uuid> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let steps = self.steps(id).await?;
            let step = &steps["Approve"];
            let token = step.metadata.callback.as_ref().and_then(|c| c.token);
            if let (types::StepStatus::Executing, Some(token)) = (step.status, token) {
                if Some(token) != previous {
                    return Ok(token);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("the Callback step never waited")
    }

    async fn pipelines(&self) -> Result<()> {
        let created = self
            .client
            .create_pipeline()
            .body(types::CreatePipelineRequest {
                name: self.train.as_str().try_into()?,
                definition: definition(&self.defs["train"]),
                description: None,
                display_name: None,
                max_parallel_steps: None,
            })
            .send()
            .await?
            .into_inner();
        check(
            created.version.get() == 1,
            format!("created pipeline {}, version 1", self.train),
        )?;
        let mut changed = self.defs["train"].clone();
        changed["Steps"][2]["Arguments"]["epochs"] = serde_json::json!({"Get": "Parameters.Epochs"});
        let updated = self
            .client
            .update_pipeline()
            .name(self.train.as_str())
            .body(types::UpdatePipelineRequest {
                definition: definition(&changed),
                description: Some("with epochs".into()),
                display_name: None,
                max_parallel_steps: None,
            })
            .send()
            .await?
            .into_inner();
        check(
            updated.version.get() == 2 && updated.description.as_deref() == Some("with epochs"),
            "updated it: version 2",
        )?;
        let described = self
            .client
            .describe_pipeline()
            .name(self.train.as_str())
            .send()
            .await?
            .into_inner();
        let steps = &described.definition.context("describe has the definition")?["Steps"];
        check(
            !steps[2]["Arguments"]["epochs"].is_null(),
            "its definition is the new one",
        )?;
        self.client
            .create_pipeline()
            .body(types::CreatePipelineRequest {
                name: self.gate.as_str().try_into()?,
                definition: definition(&self.defs["gate"]),
                description: None,
                display_name: None,
                max_parallel_steps: None,
            })
            .send()
            .await?;
        check(true, format!("created pipeline {}", self.gate))
    }

    async fn runs(&self) -> Result<Vec<types::Execution>> {
        use types::{CacheStatus, ParameterValue::Int64};
        let with_epochs = |n: i64| types::StartExecutionRequest {
            parameters: Some(parameters(&[("Epochs", Int64(n))])),
            ..Default::default()
        };
        let first = self.start(&self.train, with_epochs(12)).await?;
        check(
            first.status == types::ExecutionStatus::Executing,
            "started with parameters Epochs=12",
        )?;
        let first = self.wait(&first.execution_id).await?;
        check(
            first.status == types::ExecutionStatus::Succeeded,
            format!("long poll: {} Succeeded", first.execution_arn),
        )?;
        check(
            matches!(first.parameters.0["Epochs"], Int64(12)),
            "its effective parameters have Epochs=12",
        )?;
        let steps = self.steps(&first.execution_id).await?;
        check(steps.len() == 3, "listed its three steps")?;
        let train = &steps["Train"];
        let properties = train.properties.as_ref().context("Train has properties")?;
        check(
            properties.outputs.as_ref().map(|o| &o["accuracy"]) == Some(&serde_json::json!(0.93)),
            "Train's properties: Outputs.accuracy = 0.93",
        )?;
        check(properties.exit_code == Some(0), "Train's properties: ExitCode = 0")?;
        let command = train.metadata.command.as_ref().context("Train has command metadata")?;
        check(command.exit_code == Some(0), "Train's metadata: command.exit_code = 0")?;
        let cache = train.cache.as_ref().context("Train has cache facts")?;
        check(
            cache.status == CacheStatus::Miss && train.cache_hit.is_none(),
            "Train's cache status: miss",
        )?;
        let log = self
            .client
            .get_step_logs()
            .execution(first.execution_arn.as_str())
            .step("Train")
            .send()
            .await?
            .into_inner();
        let bytes: Vec<bytes::Bytes> = log.into_inner().try_collect().await?;
        let log = String::from_utf8(bytes.concat())?;
        check(
            log.contains("training for 12 epochs"),
            "read Train's log (execution by ARN)",
        )?;

        let second = self.start(&self.train, with_epochs(12)).await?;
        let second = self.wait(&second.execution_id).await?;
        let detail = self
            .client
            .describe_step()
            .execution(second.execution_id.to_string())
            .step("Train")
            .send()
            .await?
            .into_inner();
        let cache = detail.cache.as_ref().context("Train has cache facts")?;
        check(
            cache.status == CacheStatus::Hit,
            "the same start again: Train's cache status is hit",
        )?;
        let hit = detail.cache_hit.as_ref().context("a hit has cache_hit")?;
        check(
            hit.source_execution_arn == first.execution_arn,
            "its cache_hit names the first execution",
        )?;
        check(cache.components.is_some(), "its cache details carry the key components")?;

        let selective = self
            .start(
                &self.train,
                types::StartExecutionRequest {
                    selective_execution: Some(types::SelectiveExecutionRequest {
                        selected_steps: types::SelectedSteps::StepNames(types::StepNames(vec!["Report".into()])),
                        source_execution: Some(first.execution_arn.as_str().try_into()?),
                        inherit_parameters: false,
                    }),
                    ..Default::default()
                },
            )
            .await?;
        let selective = self.wait(&selective.execution_id).await?;
        check(
            selective.status == types::ExecutionStatus::Succeeded,
            "selective start of Report by source ARN Succeeded",
        )?;
        let record = selective.selective_execution.as_ref().context("it is selective")?;
        check(
            record.source_execution_arn.as_deref() == Some(first.execution_arn.as_str()),
            "it records its source",
        )?;
        let steps = self.steps(&selective.execution_id).await?;
        let reused = steps["Train"].reused_from.as_ref().context("Train was reused")?;
        check(
            reused.source_execution_arn == first.execution_arn,
            "Train was reused from the source",
        )?;
        check(
            steps["Report"].reused_from.is_none() && steps["Report"].attempt_count == 1,
            "Report ran",
        )?;

        let changed_since_first = |n: i64| -> Result<types::StartExecutionRequest> {
            Ok(types::StartExecutionRequest {
                parameters: Some(parameters(&[("Epochs", Int64(n))])),
                selective_execution: Some(types::SelectiveExecutionRequest {
                    selected_steps: types::SelectedSteps::ChangedSteps(types::ChangedSteps::Changed),
                    source_execution: Some(first.execution_id.to_string().try_into()?),
                    inherit_parameters: false,
                }),
                ..Default::default()
            })
        };
        let plan = self
            .client
            .plan_execution()
            .name(self.train.as_str())
            .body(changed_since_first(14)?)
            .send()
            .await?
            .into_inner();
        let verdicts: BTreeMap<_, _> = plan.steps.iter().map(|s| (s.step_name.as_str(), s.verdict)).collect();
        check(
            plan.errors.is_empty() && verdicts["Prepare"] == types::PlanVerdict::Reuse,
            format!("plan of \"changed\" with Epochs=14: {verdicts:?}"),
        )?;
        check(
            matches!(
                verdicts["Train"],
                types::PlanVerdict::Run | types::PlanVerdict::RunUnlessUnchanged
            ),
            "the plan runs Train",
        )?;
        let changed = self.start(&self.train, changed_since_first(14)?).await?;
        let changed = self.wait(&changed.execution_id).await?;
        check(
            changed.status == types::ExecutionStatus::Succeeded,
            "selective start with \"changed\" and Epochs=14 Succeeded",
        )?;
        let steps = self.steps(&changed.execution_id).await?;
        check(
            steps["Prepare"].reused_from.is_some() && steps["Train"].reused_from.is_none(),
            "Prepare reused, Train ran",
        )?;
        Ok(vec![first, second, selective, changed])
    }

    async fn callback(&self) -> Result<()> {
        let execution = self.start(&self.gate, types::StartExecutionRequest::default()).await?;
        let id = execution.execution_id;
        let token = self.waiting_token(&id, None).await?;
        check(
            true,
            "the Callback step waits; its token is typed in metadata.callback.token",
        )?;
        let stopped = self
            .client
            .stop_execution()
            .execution(execution.execution_arn.as_str())
            .send()
            .await?
            .into_inner();
        check(
            matches!(
                stopped.status,
                types::ExecutionStatus::Stopping | types::ExecutionStatus::Stopped
            ),
            format!("stopped it by ARN: {}", stopped.status),
        )?;
        let stopped = self.wait(&id).await?;
        check(stopped.status == types::ExecutionStatus::Stopped, "it is Stopped")?;
        expect_error(
            self.client.stop_execution().execution(id.to_string()).send().await,
            409,
            types::ErrorCode::Conflict,
        )?;
        let retried = self
            .client
            .retry_execution()
            .execution(id.to_string())
            .send()
            .await?
            .into_inner();
        check(
            retried.status == types::ExecutionStatus::Executing,
            "retried it: Executing again",
        )?;
        let new_token = self.waiting_token(&id, Some(token)).await?;
        check(true, "the retried Callback waits with a new token")?;
        let reported = self
            .client
            .report_callback_success()
            .token(new_token)
            .body(types::CallbackSuccessRequest {
                output_parameters: Some(parameters(&[("score", types::ParameterValue::Number(0.5))])),
            })
            .send()
            .await?
            .into_inner();
        check(
            reported.status == types::CallbackOutcome::Succeeded,
            "completed the callback",
        )?;
        let done = self.wait(&id).await?;
        check(
            done.status == types::ExecutionStatus::Succeeded,
            "the execution Succeeded",
        )?;
        let steps = self.steps(&id).await?;
        let outputs = steps["Use"].properties.as_ref().and_then(|p| p.outputs.clone());
        check(outputs == Some(serde_json::json!({"score": 0.5})), "Use read score 0.5")?;
        expect_error(
            self.client
                .report_callback_success()
                .token(new_token)
                .body(types::CallbackSuccessRequest::default())
                .send()
                .await,
            409,
            types::ErrorCode::Conflict,
        )
    }

    async fn paging_and_errors(&self, started: &[types::Execution]) -> Result<()> {
        let purged = self
            .client
            .purge_cache()
            .name(self.train.as_str())
            .send()
            .await?
            .into_inner();
        check(
            purged.deleted >= 2,
            format!("purged the cache: {} entries", purged.deleted),
        )?;
        let (mut seen, mut next_token, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let mut request = self.client.list_executions().name(self.train.as_str()).limit(3u32);
            if let Some(token) = &next_token {
                request = request.next_token(token.as_str());
            }
            let page = request.send().await?.into_inner();
            seen.extend(page.executions.iter().map(|e| e.execution_id));
            pages += 1;
            match page.next_token {
                Some(token) => next_token = Some(token),
                None => break,
            }
        }
        let expected: Vec<_> = started.iter().rev().map(|e| e.execution_id).collect();
        check(
            seen == expected && pages == 2,
            format!(
                "paged through {} executions, newest first, in {pages} pages",
                seen.len()
            ),
        )?;
        expect_error(
            self.client
                .start_execution()
                .name(self.train.as_str())
                .body(types::StartExecutionRequest {
                    parameters: Some(parameters(&[("Nope", types::ParameterValue::Int64(1))])),
                    ..Default::default()
                })
                .send()
                .await,
            400,
            types::ErrorCode::ValidationError,
        )?;
        expect_error(
            self.client.describe_pipeline().name("no-such-pipeline").send().await,
            404,
            types::ErrorCode::NotFound,
        )?;
        expect_error(
            self.client
                .create_pipeline()
                .body(types::CreatePipelineRequest {
                    name: self.train.as_str().try_into()?,
                    definition: definition(&self.defs["train"]),
                    description: None,
                    display_name: None,
                    max_parallel_steps: None,
                })
                .send()
                .await,
            409,
            types::ErrorCode::Conflict,
        )
    }
}

async fn run() -> Result<()> {
    let url = std::env::var("STEPWISE_URL").context("STEPWISE_URL")?;
    let token = std::env::var("STEPWISE_TOKEN").context("STEPWISE_TOKEN")?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(15))
        // Longer than wait_seconds, or the long poll times out in the client
        // (progenitor's own client gives up after 15 s).
        .timeout(Duration::from_secs(WAIT_SECONDS as u64 + 30))
        .build()?;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let flow = Flow {
        client: Client::new_with_client(&url, http),
        train: format!("rs-train-{suffix}"),
        gate: format!("rs-gate-{suffix}"),
        defs: pipelines(),
    };
    flow.pipelines().await?;
    let started = flow.runs().await?;
    flow.callback().await?;
    flow.paging_and_errors(&started).await?;
    println!("rust flow: every check passed");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
