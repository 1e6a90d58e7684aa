//! The command-line client: `stepwise pipeline apply`, `run`, `executions`
//! and `logs`, talking to a server over its REST API like any client.
//!
//! Exit codes (also in the README): 0 done (the execution Succeeded); 1 the
//! execution Failed; 2 a bad command line or local file; 3 the execution
//! was Stopped (or is still stopping); 4 the server refused the request
//! (a 4xx: invalid, not found, not allowed, or a plan with errors); 5 the
//! server could not be reached or failed (5xx).

mod client;
mod follow;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

pub use client::{Client, ClientError, ServerArgs};

pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_STOPPED: i32 = 3;
pub const EXIT_REFUSED: i32 = 4;
pub const EXIT_UNAVAILABLE: i32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Lines for people.
    Human,
    /// One JSON document on stdout, for scripts (progress goes to stderr).
    Json,
}

/// What every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum PipelineCommand {
    /// Create the pipeline, or update it when its definition changed; does
    /// nothing when it did not (safe to run on every commit).
    Apply {
        name: String,
        /// The definition (JSON); `-` reads standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The pipeline to start.
    pub name: String,
    /// A parameter value (repeatable); the server converts it to the
    /// parameter's type.
    #[arg(short = 'p', long = "parameter", value_name = "KEY=VALUE")]
    pub parameters: Vec<String>,
    /// Run only these steps, reusing the others' outputs from the source
    /// execution (repeatable, or several after one --select).
    #[arg(long = "select", value_name = "STEP", num_args = 1.., conflicts_with = "changed")]
    pub select: Vec<String>,
    /// Run only the steps whose definition changed since the source
    /// execution, and what depends on them.
    #[arg(long)]
    pub changed: bool,
    /// The execution (ARN or id) whose outputs a selective run reuses; by
    /// default the latest succeeded one.
    #[arg(long, value_name = "ARN")]
    pub source: Option<String>,
    /// Print what would run (run, reuse, cache hit, skip) and start nothing.
    #[arg(long, conflicts_with_all = ["wait", "logs"])]
    pub plan: bool,
    /// Follow the execution until it ends; the exit code says how it ended.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: print the steps' logs as they are written.
    #[arg(long, requires = "wait")]
    pub logs: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum ExecutionsCommand {
    /// A pipeline's executions, newest first.
    List {
        pipeline: String,
        /// Only those with this status.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One execution and its steps.
    Describe {
        /// Execution ARN or id.
        execution: String,
        /// Wait until it ends; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a running execution.
    Stop {
        execution: String,
        /// Wait until it has stopped.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Retry a Failed or Stopped execution in place.
    Retry {
        execution: String,
        /// Wait until it ends; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Execution ARN or id.
    pub execution: String,
    pub step: String,
    /// Keep printing as the step writes, until it ends.
    #[arg(long)]
    pub follow: bool,
    /// An earlier attempt (default: the latest).
    #[arg(long, conflicts_with = "follow")]
    pub attempt: Option<i32>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs a client command and returns the process's exit code; errors are
/// printed here.
pub async fn exit_code<F>(command: F) -> i32
where
    F: std::future::Future<Output = anyhow::Result<i32>>,
{
    match command.await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<ClientError>() {
                Some(ClientError::Api { status, .. }) if status.is_client_error() => EXIT_REFUSED,
                Some(_) => EXIT_UNAVAILABLE,
                None => EXIT_USAGE,
            }
        }
    }
}

pub async fn pipeline(command: PipelineCommand) -> anyhow::Result<i32> {
    let PipelineCommand::Apply { name, file, client } = command;
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
    };
    let definition: Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", file.display()))?;
    let api = Client::new(&client.server)?;
    let current = match api.get(&["v1", "pipelines", &name]).await {
        Ok(pipeline) => Some(pipeline),
        Err(ClientError::Api { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => None,
        Err(e) => return Err(e.into()),
    };
    let (action, pipeline) = match current {
        None => {
            let body = json!({"name": name, "definition": definition});
            let created = api
                .json(api.request(Method::POST, &["v1", "pipelines"]).json(&body))
                .await?;
            ("created", created)
        }
        // The server keeps a definition as the object it was given (a
        // string form parsed): equal objects mean nothing changed.
        Some(p) if same_definition(&p["definition"], &definition) => ("unchanged", p),
        Some(_) => {
            let body = json!({"definition": definition});
            let updated = api
                .json(api.request(Method::PUT, &["v1", "pipelines", &name]).json(&body))
                .await?;
            ("updated", updated)
        }
    };
    match client.output {
        Output::Json => println!("{}", json!({"action": action, "pipeline": pipeline})),
        Output::Human => println!(
            "pipeline {name} {action} (version {})",
            pipeline["version"].as_i64().unwrap_or(0)
        ),
    }
    Ok(0)
}

fn same_definition(stored: &Value, given: &Value) -> bool {
    match given {
        Value::String(text) => serde_json::from_str::<Value>(text).is_ok_and(|v| &v == stored),
        other => other == stored,
    }
}

/// The start request `run` sends.
fn start_body(args: &RunArgs) -> anyhow::Result<Value> {
    let mut parameters = Map::new();
    for pair in &args.parameters {
        let Some((key, value)) = pair.split_once('=') else {
            anyhow::bail!("-p {pair:?} must be KEY=VALUE");
        };
        parameters.insert(key.to_string(), Value::String(value.to_string()));
    }
    let mut body = json!({"parameters": parameters});
    let selected = if args.changed {
        Some(json!("changed"))
    } else if !args.select.is_empty() {
        Some(json!(args.select))
    } else {
        None
    };
    match (selected, &args.source) {
        (Some(selected), source) => {
            body["selective_execution"] = json!({"selected_steps": selected});
            if let Some(source) = source {
                body["selective_execution"]["source_execution"] = json!(source);
            }
        }
        (None, Some(_)) => anyhow::bail!("--source needs --select or --changed"),
        (None, None) => {}
    }
    Ok(body)
}

pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let mut body = start_body(&args)?;
    let api = Client::new(&args.client.server)?;
    let output = args.client.output;
    // The first run of a pipeline has nothing to compare with: in CI, where
    // --changed runs on every commit, that is a full run, not an error.
    if args.changed && args.source.is_none() && !has_finished_execution(&api, &args.name).await? {
        follow::Say::new(output).line("no finished execution to compare with: every step runs");
        body.as_object_mut()
            .expect("the body is an object")
            .remove("selective_execution");
    }
    if args.plan {
        let request = api.request(Method::POST, &["v1", "pipelines", &args.name, "executions", "plan"]);
        let plan = api.json(request.json(&body)).await?;
        print_plan(&plan, output);
        let refused = plan["errors"].as_array().is_some_and(|e| !e.is_empty());
        return Ok(if refused { EXIT_REFUSED } else { 0 });
    }
    let request = api.request(Method::POST, &["v1", "pipelines", &args.name, "executions"]);
    let execution = api.json(request.json(&body)).await?;
    let arn = execution["execution_arn"].as_str().unwrap_or_default().to_string();
    if !args.wait {
        match output {
            Output::Json => println!("{execution}"),
            Output::Human => println!("started {arn}"),
        }
        return Ok(0);
    }
    let say = follow::Say::new(output);
    say.line(&format!("started {arn}"));
    let id = execution["execution_id"].as_str().unwrap_or_default().to_string();
    let last = follow::follow_run(&api, &id, args.logs, &say).await?;
    Ok(finish(&last, output))
}

/// Whether pipeline `name` has an execution that ended (the source a
/// `"changed"` selection compares with by default).
async fn has_finished_execution(api: &Client, name: &str) -> Result<bool, ClientError> {
    for status in ["Succeeded", "Failed", "Stopped"] {
        let request = api
            .request(Method::GET, &["v1", "pipelines", name, "executions"])
            .query(&[("status", status), ("limit", "1")]);
        let list = api.json(request).await?;
        if list["executions"].as_array().is_some_and(|e| !e.is_empty()) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn print_plan(plan: &Value, output: Output) {
    if output == Output::Json {
        println!("{plan}");
        return;
    }
    if let Some(source) = plan["source_execution_arn"].as_str() {
        println!("source: {source}");
    }
    for step in plan["steps"].as_array().into_iter().flatten() {
        println!(
            "{:<18} {:<24} {}",
            step["verdict"].as_str().unwrap_or(""),
            step["step_name"].as_str().unwrap_or(""),
            step["reason"].as_str().unwrap_or("")
        );
        // What changed, when the reason does not already say it.
        let reason = step["reason"].as_str().unwrap_or("");
        for change in step["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !reason.contains(change) {
                println!("{:<18} {:<24}   changed: {change}", "", "");
            }
        }
    }
    for issue in plan["errors"].as_array().into_iter().flatten() {
        let path = issue["path"].as_str().unwrap_or("");
        println!(
            "error: {path}{}{}",
            if path.is_empty() { "" } else { ": " },
            issue["message"].as_str().unwrap_or("")
        );
    }
}

/// Prints an ended execution and returns its exit code.
fn finish(execution: &Value, output: Output) -> i32 {
    let status = execution["status"].as_str().unwrap_or("");
    match output {
        Output::Json => println!("{execution}"),
        Output::Human => {
            let arn = execution["execution_arn"].as_str().unwrap_or("");
            match execution["failure_reason"].as_str() {
                Some(reason) if status != "Succeeded" => println!("execution {status}: {reason}\n  {arn}"),
                _ => println!("execution {status}\n  {arn}"),
            }
        }
    }
    status_code(status)
}

/// The exit code of an execution in `status`.
pub fn status_code(status: &str) -> i32 {
    match status {
        "Succeeded" => 0,
        "Failed" => EXIT_FAILED,
        _ => EXIT_STOPPED,
    }
}

pub async fn executions(command: ExecutionsCommand) -> anyhow::Result<i32> {
    match command {
        ExecutionsCommand::List {
            pipeline,
            status,
            limit,
            client,
        } => {
            let api = Client::new(&client.server)?;
            let mut request = api
                .request(Method::GET, &["v1", "pipelines", &pipeline, "executions"])
                .query(&[("limit", limit.to_string())]);
            if let Some(status) = &status {
                request = request.query(&[("status", status)]);
            }
            let list = api.json(request).await?;
            if client.output == Output::Json {
                println!("{list}");
                return Ok(0);
            }
            println!("{:<36}  {:<9}  {:<20}  FAILURE", "EXECUTION", "STATUS", "CREATED");
            for e in list["executions"].as_array().into_iter().flatten() {
                println!(
                    "{:<36}  {:<9}  {:<20}  {}",
                    e["execution_id"].as_str().unwrap_or(""),
                    e["status"].as_str().unwrap_or(""),
                    e["created_at"].as_str().unwrap_or("").get(..19).unwrap_or(""),
                    e["failure_reason"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        ExecutionsCommand::Describe {
            execution,
            wait,
            client,
        } => {
            let api = Client::new(&client.server)?;
            let row = if wait {
                follow::wait_until_ended(&api, &execution).await?
            } else {
                api.get(&["v1", "executions", &execution]).await?
            };
            describe(&api, &row, client.output).await?;
            Ok(if wait {
                status_code(row["status"].as_str().unwrap_or(""))
            } else {
                0
            })
        }
        ExecutionsCommand::Stop {
            execution,
            wait,
            client,
        } => act(&execution, "stop", wait, &client).await,
        ExecutionsCommand::Retry {
            execution,
            wait,
            client,
        } => act(&execution, "retry", wait, &client).await,
    }
}

/// `stop` or `retry`, then with `wait` the execution's end: 0 when a stop
/// ended Stopped, otherwise the code of how it ended.
async fn act(execution: &str, action: &str, wait: bool, client: &ClientArgs) -> anyhow::Result<i32> {
    let api = Client::new(&client.server)?;
    let row = api
        .json(api.request(Method::POST, &["v1", "executions", execution, action]))
        .await?;
    if !wait {
        match client.output {
            Output::Json => println!("{row}"),
            Output::Human => println!(
                "execution {}\n  {}",
                row["status"].as_str().unwrap_or(""),
                row["execution_arn"].as_str().unwrap_or("")
            ),
        }
        return Ok(0);
    }
    let row = follow::wait_until_ended(&api, execution).await?;
    let code = finish(&row, client.output);
    Ok(if action == "stop" && row["status"] == "Stopped" {
        0
    } else {
        code
    })
}

/// Prints an execution with its steps.
async fn describe(api: &Client, row: &Value, output: Output) -> anyhow::Result<()> {
    let id = row["execution_id"].as_str().unwrap_or_default();
    let steps = api.all_steps(id).await?;
    if output == Output::Json {
        println!("{}", json!({"execution": row, "steps": steps}));
        return Ok(());
    }
    println!("{}", row["execution_arn"].as_str().unwrap_or(""));
    println!("  status:   {}", row["status"].as_str().unwrap_or(""));
    if let Some(reason) = row["failure_reason"].as_str() {
        println!("  failure:  {reason}");
    }
    println!(
        "  pipeline: {} version {}",
        row["pipeline_name"].as_str().unwrap_or(""),
        row["pipeline_version"]
    );
    println!("  created:  {}", row["created_at"].as_str().unwrap_or(""));
    for step in &steps {
        println!("  {}", follow::step_summary(step));
    }
    Ok(())
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<i32> {
    let api = Client::new(&args.server)?;
    if args.follow {
        follow::follow_step_log(&api, &args.execution, &args.step, None, &follow::RawOut).await?;
        return Ok(0);
    }
    let mut request = api.request(
        Method::GET,
        &["v1", "executions", &args.execution, "steps", &args.step, "logs"],
    );
    if let Some(attempt) = args.attempt {
        request = request.query(&[("attempt", attempt)]);
    }
    let bytes = api
        .send(request)
        .await?
        .bytes()
        .await
        .map_err(|e| ClientError::Unreachable(format!("reading the log failed: {e}")))?;
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&bytes)?;
    stdout.flush()?;
    Ok(0)
}
