//! `stepwise worker` and `stepwise serve` processes started by a test: the
//! real binary over the test's database and data directory, killed when
//! dropped.

use std::time::Duration;

use sqlx::PgPool;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::watch,
};

/// The URL of the test's database, for processes started by the test.
pub async fn database_url(db: &PgPool) -> String {
    let name: String = sqlx::query_scalar("select current_database()")
        .fetch_one(db)
        .await
        .unwrap();
    let options = db.connect_options();
    format!(
        "postgres://postgres@{}:{}/{name}",
        options.get_host(),
        options.get_port()
    )
}

/// A running `stepwise worker` or `stepwise serve` process. Its log (stderr)
/// is drained all the time so the process never blocks on a full pipe.
pub struct StepwiseProcess {
    pub child: Child,
    /// The API's base URL (`serve` only).
    pub base_url: Option<String>,
    /// Every line the process has logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl StepwiseProcess {
    /// Starts a worker process and waits until its pool has started (the
    /// "worker pool started" log line), so it takes part from then on.
    pub async fn start(url: &str, data_dir: &std::path::Path, env: &[(&str, &str)]) -> StepwiseProcess {
        Self::spawn(&["worker"], url, data_dir, env, true).await
    }

    /// Starts `stepwise serve` (the API and a worker pool) on a free port and
    /// waits until both are up.
    pub async fn serve(url: &str, data_dir: &std::path::Path, env: &[(&str, &str)]) -> StepwiseProcess {
        Self::serve_with(url, data_dir, env, true).await
    }

    /// `serve` as a user starts it: without `NO_COLOR`, so its log format
    /// is what it chooses for a pipe.
    pub async fn serve_as_users_do(url: &str, data_dir: &std::path::Path) -> StepwiseProcess {
        Self::serve_with(url, data_dir, &[], false).await
    }

    async fn serve_with(
        url: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
        no_color: bool,
    ) -> StepwiseProcess {
        let args = ["serve", "--listen", "127.0.0.1:0"];
        let mut process = Self::spawn(&args, url, data_dir, env, no_color).await;
        assert!(process.base_url.is_some(), "serve logged its address");
        process.base_url.as_mut().unwrap().insert_str(0, "http://");
        process
    }

    async fn spawn(
        args: &[&str],
        url: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
        no_color: bool,
    ) -> StepwiseProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stepwise"));
        command
            .args(args)
            // The service warns about STEPWISE_* variables it does not know.
            .env_remove("STEPWISE_TEST_WORKER_LOGS")
            .env("STEPWISE_DATABASE_URL", url)
            .env("STEPWISE_DATA_DIR", data_dir)
            .env("STEPWISE_AUTH__ADMIN_TOKEN", crate::helpers::TEST_TOKEN)
            .env("RUST_LOG", "stepwise=info")
            .env_remove("NO_COLOR")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if no_color {
            command.env("NO_COLOR", "1");
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the stepwise binary starts");
        let stderr = child.stderr.take().unwrap();
        let (started_tx, mut started_rx) = watch::channel(false);
        let (address_tx, address_rx) = watch::channel(None::<String>);
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push(line.clone());
                if line.contains("worker pool started") {
                    let _ = started_tx.send(true);
                }
                if line.contains("stepwise API listening") {
                    let address = line
                        .split("address=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next());
                    let _ = address_tx.send(address.map(str::to_string));
                }
                if std::env::var_os("STEPWISE_TEST_WORKER_LOGS").is_some() {
                    eprintln!("[worker] {line}");
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), started_rx.wait_for(|s| *s))
            .await
            .expect("the worker process started its pool in time")
            .expect("the worker process logged its start");
        // serve logs its address before it starts its workers.
        let base_url = address_rx.borrow().clone();
        StepwiseProcess { child, base_url, log }
    }

    /// SIGKILL: no drain, no report.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}
