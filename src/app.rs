//! `App::build` connects, migrates and binds; `App::run` serves the API and
//! runs the workers and maintenance until the shutdown token fires.
//! `run_workers` is the same without the API (`stepwise worker`). Tests
//! build the same `App` on port 0.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, AppState},
    config::{redact_url, Config},
    engine::{self, definitions::Definitions},
    executor,
    ids::Arns,
    notify::Notifier,
    secrets::Keyring,
    store,
    worker::{self, WorkerPool},
};

pub struct App {
    listener: TcpListener,
    state: AppState,
}

impl App {
    /// Prepares the data directory and checks `worker.run_as_user`, then
    /// connects to the configured database (creating and migrating it) and
    /// binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let config = prepare(config).await?;
        let pool = connect_and_migrate(&config).await?;
        App::bind(config, pool).await
    }

    /// Binds the listener over an existing pool (already migrated).
    pub async fn build_with_pool(config: Config, pool: PgPool) -> anyhow::Result<App> {
        App::bind(prepare(config).await?, pool).await
    }

    async fn bind(config: Config, pool: PgPool) -> anyhow::Result<App> {
        let keyring = load_keyring(&config)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        crate::engine::tokens::bootstrap(&pool, &config).await?;
        let state = AppState {
            allowed_hosts: api::auth::AllowedHosts::from_config(&config),
            diagnosis: store::diagnosis::Diagnosis::new(pool.clone()),
            db: pool,
            arns: Arns::new(&config.arn),
            definitions: Definitions::new(config.api.definition_cache_bytes),
            config: Arc::new(config),
            notifier: Notifier::new(),
            stopping: CancellationToken::new(),
            keyring,
        };
        Ok(App { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves the API and runs workers until `shutdown` is cancelled, then
    /// drains in-flight requests (within `api.shutdown_grace_seconds`) and
    /// running steps.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let address = self.local_addr();
        warn_if_few_file_descriptors(&self.state.config);
        let mut state = self.state;
        state.stopping = shutdown.clone();
        tracing::info!(%address, "stepwise API listening");
        let background = spawn_background(&state.db, &state.config, &state.notifier, &state.keyring, &shutdown);
        let limits = api::server::Limits::from_config(&state.config.api);
        api::server::serve(self.listener, api::router(state), limits, shutdown).await;
        tracing::info!("API stopped");
        background.wait().await;
        Ok(())
    }
}

/// The connection caps are only as good as the open-file limit under them:
/// says so at start when the HTTP and database connections alone could
/// exhaust it (each step also needs a few descriptors for its pipes and log).
fn warn_if_few_file_descriptors(config: &Config) {
    use nix::sys::resource::{getrlimit, Resource};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let needed = config.api.max_connections as u64
        + u64::from(config.database.max_connections)
        + 4 * config.worker.concurrency as u64
        + 64;
    if needed > soft {
        tracing::warn!(
            open_file_limit = soft,
            api.max_connections = config.api.max_connections,
            database.max_connections = config.database.max_connections,
            worker.concurrency = config.worker.concurrency,
            "the open-file limit (ulimit -n) is below what these caps may need ({needed}); raise it or lower api.max_connections"
        );
    }
}

/// Workers and maintenance only, for extra machines (`stepwise worker`).
pub async fn run_workers(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = prepare(config).await?;
    let pool = connect_and_migrate(&config).await?;
    let keyring = load_keyring(&config)?;
    let config = Arc::new(config);
    let notifier = Notifier::new();
    spawn_background(&pool, &config, &notifier, &keyring, &shutdown)
        .wait()
        .await;
    Ok(())
}

struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    listener: tokio::task::JoinHandle<()>,
    listener_stop: CancellationToken,
}

impl Background {
    async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        self.listener_stop.cancel();
        let _ = self.listener.await;
    }
}

fn spawn_background(
    db: &PgPool,
    config: &Arc<Config>,
    notifier: &Notifier,
    keyring: &Keyring,
    shutdown: &CancellationToken,
) -> Background {
    // The listener outlives the pool's drain so stop requests still arrive.
    let listener_stop = CancellationToken::new();
    let listener = tokio::spawn(notifier.clone().run(db.clone(), listener_stop.clone()));
    let mut tasks = Vec::new();
    if config.worker.concurrency > 0 {
        let pool = WorkerPool::new(db.clone(), config.clone(), notifier.clone(), keyring.clone());
        tasks.push(tokio::spawn(pool.run(shutdown.clone())));
    }
    let every = Duration::from_secs_f64((config.worker.lease_seconds as f64 / 3.0).clamp(0.2, 5.0));
    let retention = worker::maintenance::RetentionTask {
        data_dir: config.data_dir.clone(),
        policy: engine::retention::Policy::from_config(config),
        every: engine::retention::interval(config),
    };
    tasks.push(tokio::spawn(worker::maintenance::run(
        db.clone(),
        every,
        retention,
        shutdown.clone(),
    )));
    Background {
        tasks,
        listener,
        listener_stop,
    }
}

/// What start-up checks before it connects: the data directory, and that
/// steps can run as `worker.run_as_user`.
async fn prepare(config: Config) -> anyhow::Result<Config> {
    let config = prepare_data_dir(config)?;
    executor::run_as::check(&config).await?;
    Ok(config)
}

/// Creates the data directory and makes its path absolute, since artifact
/// URIs handed to other steps must not depend on a working directory.
fn prepare_data_dir(mut config: Config) -> anyhow::Result<Config> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", config.data_dir.display()))?;
    config.data_dir = std::fs::canonicalize(&config.data_dir)?;
    Ok(config)
}

/// The secrets key of the deployment (see `crate::secrets`): configured,
/// or the key file in the data directory, created on first start.
fn load_keyring(config: &Config) -> anyhow::Result<Keyring> {
    Keyring::load(&config.secrets.key, &config.data_dir).map_err(|e| anyhow::anyhow!("{e}"))
}

pub async fn connect_and_migrate(config: &Config) -> anyhow::Result<PgPool> {
    tracing::info!(
        database = %redact_url(&config.database_url),
        max_connections = config.database.max_connections,
        "connecting to PostgreSQL"
    );
    // `database.max_connections` is the cap, whatever the worker
    // concurrency: a running step holds no connection, and a step that ends
    // while every connection is in use waits for one to report.
    let settings = store::PoolSettings {
        max_connections: config.database.max_connections,
        acquire_timeout: Duration::from_secs(config.database.acquire_timeout_seconds),
        idle_in_transaction_timeout: Duration::from_secs(config.database.idle_in_transaction_timeout_seconds),
    };
    let pool = store::connect(
        &config.database_url,
        settings,
        Duration::from_secs(config.database.connect_retry_seconds),
    )
    .await?;
    store::migrate(&pool).await?;
    Ok(pool)
}
