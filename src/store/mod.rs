//! All SQL lives here. Functions take an executor (`&mut PgConnection` or the
//! pool) so callers can compose several calls into one transaction. Nothing
//! here knows about HTTP.

pub mod cache;
pub mod cleanup;
pub mod diagnosis;
pub mod executions;
pub mod for_each;
pub mod pipelines;
pub mod retention;
pub mod secrets;
pub mod selective;
pub mod steps;
pub mod tokens;
pub mod transitions;
pub mod triggers;

use std::time::Duration;

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    ConnectOptions, Connection, PgConnection, PgPool,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Whether `e` is a unique-constraint violation (SQLSTATE 23505).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Whether `e` is a deadlock (40P01) or serialization failure (40001) that
/// PostgreSQL resolved by aborting this transaction: running the whole
/// transaction again is the remedy.
pub fn is_retryable_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// Whether `e` may pass by itself: the database unreachable for now, or a
/// conflict that aborted the transaction. Anything else (a value the
/// database refuses, a constraint) fails the same way when tried again.
pub fn is_transient(e: &sqlx::Error) -> bool {
    is_unavailable(e) || is_retryable_conflict(e)
}

/// Whether `e` means the database cannot be reached right now (connection
/// lost or refused, pool exhausted, too many clients, server shutting down
/// or starting up).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(c.as_ref(), "53300" | "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// The pool's bounds: `database.max_connections` is the most this process
/// ever opens (the LISTEN connection included), and a caller waits up to
/// `acquire_timeout` for one to come free.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// The server ends a session that sits this long inside a transaction
    /// (PostgreSQL's `idle_in_transaction_session_timeout`): a process
    /// paused mid-transaction must not hold an execution's lock forever.
    pub idle_in_transaction_timeout: Duration,
}

/// Connects to `url`, creating the database when it does not exist, and
/// retrying with exponential backoff while the server cannot be reached so
/// that a service started next to its database (compose, systemd) waits for
/// it instead of crashing. Every attempt reports the server's own answer
/// ("connection refused", "too many clients"), not a pool time-out.
pub async fn connect(url: &str, settings: PoolSettings, retry_for: Duration) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| anyhow::anyhow!("database_url is not a valid PostgreSQL URL: {e}"))?;
    let idle = format!("{}ms", settings.idle_in_transaction_timeout.as_millis());
    let options = options
        .log_statements(tracing::log::LevelFilter::Debug)
        .options([("idle_in_transaction_session_timeout", idle.as_str())]);
    let deadline = tokio::time::Instant::now() + retry_for;
    let mut delay = Duration::from_millis(200);
    loop {
        match try_connect(&options, settings).await {
            Ok(pool) => return Ok(pool),
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(
                    host = options.get_host(),
                    port = options.get_port(),
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "database not reachable, retrying"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "could not connect to PostgreSQL at {}:{} (database {:?}) within {}s: {e}",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or("postgres"),
                    retry_for.as_secs()
                ))
            }
        }
    }
}

/// One connection made by hand first, since a pool retries refused
/// connections until its time-out and then names no cause; then the pool.
async fn try_connect(options: &PgConnectOptions, settings: PoolSettings) -> anyhow::Result<PgPool> {
    let first = match PgConnection::connect_with(options).await {
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("3D000") => {
            create_database(options).await?;
            PgConnection::connect_with(options).await
        }
        other => other,
    };
    let first = first.map_err(|e| anyhow::anyhow!("{}", diagnosis::cause_of_connect_error(&e)))?;
    first.close().await.ok();
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options.clone());
    Ok(pool)
}

async fn create_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    let name = options.get_database().unwrap_or("stepwise").to_string();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match sqlx::query(&format!("create database {quoted}"))
        .execute(&mut admin)
        .await
    {
        Ok(_) => tracing::info!(database = %name, "created database"),
        // Another process created it at the same moment.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
        Err(e) => {
            return Err(anyhow::anyhow!(
                "database {name:?} does not exist and could not be created: {e}"
            ))
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// One round trip to the database (the readiness probe).
pub async fn ping(db: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("select 1").execute(db).await.map(|_| ())
}

/// Applies the embedded migrations; sqlx takes an advisory lock so several
/// processes starting together do not race.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}
