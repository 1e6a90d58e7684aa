//! Why no database connection could be had. sqlx retries a refused
//! connection ("connection refused", "too many clients": SQLSTATE 53300)
//! until the acquire timeout and then reports only `PoolTimedOut`, so every
//! cause reads the same. When that happens, `Diagnosis::explain` looks:
//! every connection of this process in use means this process is busy;
//! otherwise one test connection, made outside the pool, gets the server's
//! own answer. The answer is kept for a second so a burst of timed-out
//! requests makes one test connection, not one each.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{Connection, PgConnection, PgPool};
use tokio::time::Instant;

/// How long an explanation is reused.
const KEEP_FOR: Duration = Duration::from_secs(1);
/// How long the test connection may take.
const TEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The real cause of a pool time-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Every connection this process may open (`database.max_connections`) is in use.
    Busy { max: u32 },
    /// The server answered and refused the connection (too many clients,
    /// authentication, a database that does not exist, ...).
    Refused { code: Option<String>, message: String },
    /// The server could not be reached (connection refused, no route, time-out).
    Unreachable(String),
    /// A test connection succeeds: connections were slow to come free.
    Slow,
}

impl Cause {
    /// A sentence for a client: what is wrong, without internals.
    pub fn client_message(&self) -> String {
        match self {
            Cause::Busy { max } => format!(
                "all {max} database connections of this server are in use (database.max_connections); try again shortly"
            ),
            Cause::Refused { message, .. } => {
                format!("the database refuses new connections: {message}; try again shortly")
            }
            Cause::Unreachable(why) => format!("the database is not reachable: {why}; try again shortly"),
            Cause::Slow => "no database connection came free in time; try again shortly".to_string(),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Busy { max } => write!(f, "all {max} connections of the pool are in use"),
            Cause::Refused {
                code: Some(code),
                message,
            } => write!(f, "the database refused a connection: {message} (SQLSTATE {code})"),
            Cause::Refused { code: None, message } => write!(f, "the database refused a connection: {message}"),
            Cause::Unreachable(why) => write!(f, "the database is not reachable: {why}"),
            Cause::Slow => write!(
                f,
                "a test connection succeeded; the pool's connections were slow to come free"
            ),
        }
    }
}

/// Explains pool time-outs of one pool.
#[derive(Clone)]
pub struct Diagnosis {
    pool: PgPool,
    recent: Arc<Mutex<Option<(Instant, Cause)>>>,
}

impl Diagnosis {
    pub fn new(pool: PgPool) -> Diagnosis {
        Diagnosis {
            pool,
            recent: Arc::default(),
        }
    }

    /// The cause of `error` when it is a pool time-out, None for any other error.
    pub async fn explain(&self, error: &sqlx::Error) -> Option<Cause> {
        if !matches!(error, sqlx::Error::PoolTimedOut) {
            return None;
        }
        if let Some((at, cause)) = self.recent.lock().unwrap().clone() {
            if at.elapsed() < KEEP_FOR {
                return Some(cause);
            }
        }
        let cause = self.look().await;
        *self.recent.lock().unwrap() = Some((Instant::now(), cause.clone()));
        Some(cause)
    }

    async fn look(&self) -> Cause {
        let max = self.pool.options().get_max_connections();
        if self.pool.size() >= max && self.pool.num_idle() == 0 {
            return Cause::Busy { max };
        }
        let options = self.pool.connect_options();
        match tokio::time::timeout(TEST_CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                Cause::Slow
            }
            Ok(Err(e)) => cause_of_connect_error(&e),
            Err(_) => Cause::Unreachable(format!(
                "no answer to a connection attempt within {}s",
                TEST_CONNECT_TIMEOUT.as_secs()
            )),
        }
    }
}

/// The cause a failed connection attempt names.
pub fn cause_of_connect_error(e: &sqlx::Error) -> Cause {
    match e {
        sqlx::Error::Database(db) => Cause::Refused {
            code: db.code().map(|c| c.to_string()),
            message: db.message().to_string(),
        },
        sqlx::Error::Io(io) => Cause::Unreachable(io.to_string()),
        other => Cause::Unreachable(other.to_string()),
    }
}
