//! `stepwise worker` processes started by a test: the real binary over the
//! test's database and data directory, killed when dropped.

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

/// A running `stepwise worker` process. Its log (stderr) is drained all the
/// time so the process never blocks on a full pipe.
pub struct WorkerProcess {
    pub child: Child,
}

impl WorkerProcess {
    /// Starts a worker process and waits until its pool has started (the
    /// "worker pool started" log line), so it takes part from then on.
    pub async fn start(url: &str, data_dir: &std::path::Path, env: &[(&str, &str)]) -> WorkerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stepwise"));
        command
            .arg("worker")
            .env("STEPWISE_DATABASE_URL", url)
            .env("STEPWISE_DATA_DIR", data_dir)
            .env("RUST_LOG", "stepwise=info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the stepwise binary starts");
        let stderr = child.stderr.take().unwrap();
        let (started_tx, mut started_rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("worker pool started") {
                    let _ = started_tx.send(true);
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
        WorkerProcess { child }
    }

    /// SIGKILL: no drain, no report.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}
