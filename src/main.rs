//! The `stepwise` binary: parses the command line, loads configuration,
//! sets up logging, then hands over to the library.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use stepwise::{
    app::{self, App},
    cli,
    config::{Config, LogFormat, Overrides},
    executor::supervisor,
    telemetry,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "stepwise",
    version,
    about = "Pipeline orchestration with selective execution and step caching"
)]
struct Cli {
    /// A TOML file layered over the defaults (config/default.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the REST API (port 0 picks a free one).
    #[arg(long, global = true, env = "STEPWISE_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Directory for step logs, artifacts and scratch space.
    #[arg(long, global = true, env = "STEPWISE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<CliLogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum CliLogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, workers and maintenance (the default).
    Serve,
    /// Run workers and maintenance only, against the same database.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI document.
    Openapi,
    /// Drive a running stepwise over HTTP and report throughput and latency.
    Bench(stepwise::bench::BenchArgs),
    /// Pipelines on a server (a client command, like run, executions, logs).
    #[command(subcommand)]
    Pipeline(cli::PipelineCommand),
    /// Start an execution; with --wait, follow it and exit with how it ended
    /// (0 Succeeded, 1 Failed, 3 Stopped, 4 refused, 5 server unreachable).
    Run(cli::RunArgs),
    /// List, describe, stop and retry executions.
    #[command(subcommand)]
    Executions(cli::ExecutionsCommand),
    /// Print a step's log; --follow streams it as it is written.
    Logs(cli::LogsArgs),
    /// Manage API tokens, directly in the database (run it where the
    /// service's configuration is).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (the only time it is shown).
    Create {
        /// A name to know it by (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// viewer, operator, editor or admin; each includes the one before.
        #[arg(long, value_parser = ["viewer", "operator", "editor", "admin"])]
        role: String,
    },
    /// List tokens: name, role, created, last used, revoked.
    List,
    /// Revoke the active token with this name, at once.
    Revoke { name: String },
    /// Print a new random token without storing it (for
    /// STEPWISE_AUTH__ADMIN_TOKEN).
    Generate,
}

fn main() -> anyhow::Result<()> {
    // The step supervisor, started by each worker pool: plain threads, no
    // async runtime, no flags.
    if std::env::args_os().nth(1).is_some_and(|a| a == supervisor::SUBCOMMAND) {
        std::process::exit(supervisor::main());
    }
    run()
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        print!("{}", stepwise::api::OPENAPI_YAML);
        return Ok(());
    }
    // The bench and the client commands talk to a running server: they
    // need no configuration.
    let command = match cli.command {
        Some(Command::Bench(args)) => return stepwise::bench::run(&args).await,
        Some(Command::Pipeline(command)) => std::process::exit(cli::exit_code(cli::pipeline(command)).await),
        Some(Command::Run(args)) => std::process::exit(cli::exit_code(cli::run(args)).await),
        Some(Command::Executions(command)) => std::process::exit(cli::exit_code(cli::executions(command)).await),
        Some(Command::Logs(args)) => std::process::exit(cli::exit_code(cli::logs(args)).await),
        other => other,
    };
    if let Some(Command::Token(TokenCommand::Generate)) = &command {
        println!("{}", stepwise::engine::tokens::generate());
        return Ok(());
    }
    let overrides = Overrides {
        config_file: cli.config.clone(),
        listen: cli.listen,
        data_dir: cli.data_dir.clone(),
        log_format: cli.log_format.map(|f| match f {
            CliLogFormat::Text => LogFormat::Text,
            CliLogFormat::Json => LogFormat::Json,
        }),
    };
    let config = Config::load(&overrides)?;
    let redactor = config.redactor();
    telemetry::init(&config.log, redactor.clone());
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let shutdown = shutdown_on_signal();
    let result = match command.unwrap_or(Command::Serve) {
        Command::Serve => App::build(config).await?.run(shutdown).await,
        Command::Worker => app::run_workers(config, shutdown).await,
        Command::Migrate => {
            app::connect_and_migrate(&config).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Token(command) => token_command(&config, command).await,
        Command::Openapi
        | Command::Bench(_)
        | Command::Pipeline(_)
        | Command::Run(_)
        | Command::Executions(_)
        | Command::Logs(_) => unreachable!("handled before configuration is loaded"),
    };
    // The error is printed here, not by the runtime, so that it is scrubbed
    // of the database URL's credentials like every log line.
    if let Err(e) = result {
        eprintln!("Error: {}", redactor.scrub(&format!("{e:#}")));
        std::process::exit(1);
    }
    Ok(())
}

async fn token_command(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    use stepwise::engine::tokens;
    let db = app::connect_and_migrate(config).await?;
    match command {
        TokenCommand::Create { name, role } => {
            stepwise::domain::auth::check_token_name(&name).map_err(anyhow::Error::msg)?;
            let role = role.parse().map_err(anyhow::Error::msg)?;
            let (row, token) = tokens::create(&db, &name, role).await?;
            eprintln!("created token {:?} with role {}; it is shown once:", row.name, row.role);
            println!("{token}");
        }
        TokenCommand::List => {
            let rows = tokens::list(&db).await?;
            println!(
                "{:<24} {:<9} {:<20} {:<20} REVOKED",
                "NAME", "ROLE", "CREATED", "LAST USED"
            );
            let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("-".to_string(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            };
            for row in rows {
                println!(
                    "{:<24} {:<9} {:<20} {:<20} {}",
                    row.name,
                    row.role,
                    time(Some(row.created_at)),
                    time(row.last_used_at),
                    time(row.revoked_at)
                );
            }
        }
        TokenCommand::Revoke { name } => {
            tokens::revoke(&db, &name).await?;
            eprintln!("revoked token {name:?}");
        }
        TokenCommand::Generate => unreachable!("handled before configuration is loaded"),
    }
    Ok(())
}

/// One token for the whole process, cancelled on SIGTERM or SIGINT. A
/// second signal while the process drains exits at once, with status 130
/// (SIGINT) or 143 (SIGTERM) as a shell reports a process killed by it:
/// running steps are not waited for nor handed back, their leases expire
/// and other workers rescue them.
fn shutdown_on_signal() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let cancel = token.clone();
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::spawn(async move {
        let mut next_signal = async || -> (&str, i32) {
            tokio::select! {
                _ = interrupt.recv() => ("SIGINT", 130),
                _ = term.recv() => ("SIGTERM", 143),
            }
        };
        let (first, _) = next_signal().await;
        tracing::info!(signal = first, "shutdown requested; a second signal exits at once");
        cancel.cancel();
        let (second, status) = next_signal().await;
        tracing::warn!(signal = second, status, "second signal: exiting now without draining");
        std::process::exit(status);
    });
    token
}
