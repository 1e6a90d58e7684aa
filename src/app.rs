//! `App::build` connects, migrates and binds; `App::run` serves until the
//! shutdown token fires. Tests build the same `App` on port 0.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, AppState},
    config::{redact_url, Config},
    ids::Arns,
    store,
};

pub struct App {
    listener: TcpListener,
    state: AppState,
}

impl App {
    /// Connects to the configured database (creating and migrating it) and
    /// binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let pool = connect_and_migrate(&config).await?;
        App::build_with_pool(config, pool).await
    }

    /// Binds the listener over an existing pool (already migrated).
    pub async fn build_with_pool(config: Config, pool: PgPool) -> anyhow::Result<App> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let state = AppState {
            db: pool,
            arns: Arns::new(&config.arn),
            config: Arc::new(config),
        };
        Ok(App { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves the API until `shutdown` is cancelled, then drains in-flight
    /// requests.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr(), "stepwise API listening");
        let router = api::router(self.state.clone());
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        tracing::info!("API stopped");
        Ok(())
    }
}

pub async fn connect_and_migrate(config: &Config) -> anyhow::Result<PgPool> {
    tracing::info!(database = %redact_url(&config.database_url), "connecting to PostgreSQL");
    let pool = store::connect(
        &config.database_url,
        config.database.max_connections,
        Duration::from_secs(config.database.connect_retry_seconds),
    )
    .await?;
    store::migrate(&pool).await?;
    Ok(pool)
}
