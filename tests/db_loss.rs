//! The database lost under a running `stepwise serve` process: `/readyz`
//! turns 503 while the database is down and 200 after, the service
//! reconnects by itself and the execution in flight finishes Succeeded.
//!
//! The test never touches the machine's PostgreSQL: it starts a throwaway
//! cluster of its own (`initdb` into a temporary directory, its own port and
//! socket directory), kills that one, and starts it again on the same port.
//! `initdb` and `postgres` refuse to run as root, so as root they run as the
//! `postgres` user (`runuser -u postgres --`). The cluster is ended and its
//! directory removed when the test ends, passing or not. So this is an
//! ordinary test that `cargo test` runs beside every other one.

/// The server's admin token (`auth.admin_token`).
const TOKEN: &str = "sw_db_loss_test_token_0123456789abcdef";

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::{json, Value};

/// Where `initdb` and `postgres` are: `STEPWISE_PG_BINDIR` (which must
/// hold `initdb`), else
/// `pg_config --bindir` when it has `initdb`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps them off `PATH`).
fn pg_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STEPWISE_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").exists(),
            "STEPWISE_PG_BINDIR={} has no initdb",
            dir.display()
        );
        return Some(dir);
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| d.join("initdb").exists()) {
        return Some(dir);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

/// Whether this process runs as root (`/proc/self` belongs to the
/// effective user).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program args...`, as the `postgres` user when we are root.
fn pg_command(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A PostgreSQL cluster of the test's own. Dropping it kills the server (and
/// every backend) and removes its directory.
struct Cluster {
    bindir: PathBuf,
    /// Holds `data/` and `sock/`; removed on drop.
    root: tempfile::TempDir,
    port: u16,
    /// `postgres` (or `runuser` around it) as started by us.
    child: Option<std::process::Child>,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.path().join("sock")
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// `initdb` into a fresh temporary directory, then starts the server.
    fn create(bindir: PathBuf) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("stepwise-dbloss-")
            .tempdir()
            .expect("a temporary directory");
        let mut cluster = Cluster {
            bindir,
            root,
            port: free_port(),
            child: None,
        };
        std::fs::create_dir(cluster.socket_dir()).unwrap();
        if running_as_root() {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.root.path())
                .output()
                .expect("chown runs");
            assert!(out.status.success(), "chown: {out:?}");
        }
        let out = pg_command(&cluster.bindir.join("initdb"))
            .arg("-D")
            .arg(cluster.data())
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.start();
        cluster
    }

    /// Starts the server on the cluster's port and waits until it accepts
    /// connections. After a crash the old backends may still be exiting
    /// (their shared memory blocks a new postmaster): it tries again until
    /// the deadline.
    fn start(&mut self) {
        assert!(self.child.is_none(), "the cluster is already running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::File::create(self.root.path().join("postgres.log")).unwrap();
            let child = pg_command(&self.bindir.join("postgres"))
                .arg("-D")
                .arg(self.data())
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-k")
                .arg(self.socket_dir())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=40",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("postgres starts");
            self.child = Some(child);
            // Ready, or the server gave up (exited).
            while Instant::now() < deadline {
                if self.is_ready() {
                    return;
                }
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    eprintln!("postgres exited with {status}: {}", self.log());
                    self.child = None;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(Instant::now() < deadline, "postgres did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("postgres.log")).unwrap_or_default()
    }

    fn is_ready(&self) -> bool {
        Command::new(self.bindir.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The postmaster's pid, from `postmaster.pid` (the child we hold may be
    /// `runuser` around it).
    fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Ends the server. `Signal::SIGINT` is PostgreSQL's fast shutdown;
    /// `Signal::SIGKILL` kills the postmaster and then every process it
    /// started, as a machine crash would (the next start runs crash
    /// recovery). Waits until no process of the cluster is left.
    fn kill(&mut self, signal: Signal) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = self.postmaster_pid() {
            let backends = children_of(pid);
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
            if signal == Signal::SIGKILL {
                for backend in backends {
                    let _ = nix::sys::signal::kill(Pid::from_raw(backend), Signal::SIGKILL);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Immediate shutdown, then whatever is left is killed.
        self.kill(Signal::SIGQUIT);
        if let Some(pid) = self.postmaster_pid() {
            for process in children_of(pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(process), Signal::SIGKILL);
            }
        }
    }
}

/// Whether `pid` is a live process (not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

struct Server {
    base: String,
    client: reqwest::Client,
}

impl Server {
    async fn get(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        let resp = self.client.get(format!("{}{path}", self.base)).send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("request is sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Polls `path` until it answers `status`; returns every other answer seen.
    async fn wait_for_status(&self, path: &str, status: u16, limit: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            match self.get(path).await {
                Ok((s, _)) if s == status => return seen,
                Ok((s, body)) => seen.push(format!("{s} {body}")),
                Err(e) => seen.push(format!("transport error: {e}")),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never answered {status}; saw {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn the_service_survives_a_fast_database_shutdown_mid_execution() {
    database_loss(Signal::SIGINT).await;
}

#[tokio::test]
async fn the_service_survives_a_database_crash_mid_execution() {
    database_loss(Signal::SIGKILL).await;
}

async fn database_loss(signal: Signal) {
    let Some(bindir) = pg_bindir() else {
        // Skipping is asked for by name, never implied: a machine without
        // PostgreSQL's server binaries fails this test unless it says so.
        assert!(
            std::env::var("STEPWISE_SKIP_DB_LOSS").as_deref() == Ok("1"),
            "initdb not found: install PostgreSQL's server binaries (Debian: \
             postgresql), set STEPWISE_PG_BINDIR to where initdb is, or set \
             STEPWISE_SKIP_DB_LOSS=1 to skip this test"
        );
        eprintln!("skipped: STEPWISE_SKIP_DB_LOSS=1 and no initdb found");
        return;
    };
    let mut cluster = tokio::task::spawn_blocking(move || Cluster::create(bindir))
        .await
        .unwrap();
    let port = free_port();
    let data_dir = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("STEPWISE_DATABASE_URL", cluster.url("stepwise"))
        .env("STEPWISE_DATABASE__MAX_CONNECTIONS", "10")
        .env("STEPWISE_WORKER__CONCURRENCY", "4")
        .env("STEPWISE_AUTH__ADMIN_TOKEN", TOKEN)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "stepwise=info".into()),
        )
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .spawn()
        .expect("the stepwise binary starts");
    let server = Server {
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(
                [(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {TOKEN}").parse().unwrap(),
                )]
                .into_iter()
                .collect(),
            )
            .build()
            .unwrap(),
    };
    server.wait_for_status("/healthz", 200, Duration::from_secs(60)).await;
    server.wait_for_status("/readyz", 200, Duration::from_secs(60)).await;

    // Three Command steps; the middle one runs across the outage.
    let d = marks.path().display();
    let definition = json!({"Version": "2020-12-01", "Steps": [
        {"Name": "Before", "Type": "Command", "Arguments": {"Shell": format!(
            "echo \"$STEPWISE_ATTEMPT\" >> {d}/Before; echo '{{\"n\": 1}}' > \"$STEPWISE_OUTPUTS\"")}},
        {"Name": "During", "Type": "Command", "DependsOn": ["Before"], "Arguments": {"Shell": format!(
            "echo \"$STEPWISE_ATTEMPT\" >> {d}/During; touch {d}/during-started; sleep 3")}},
        {"Name": "After", "Type": "Command", "DependsOn": ["During"], "Arguments": {"Shell": format!(
            "echo \"$STEPWISE_ATTEMPT\" >> {d}/After")}}
    ]});
    let (status, body) = server
        .post("/v1/pipelines", &json!({"name": "dbloss", "definition": definition}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.post("/v1/pipelines/dbloss/executions", &json!({})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["execution_id"].as_str().unwrap().to_string();

    // Wait until the middle step runs, then take the database away under it.
    let started = marks.path().join("during-started");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(tokio::time::Instant::now() < deadline, "the middle step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut cluster = tokio::task::spawn_blocking(move || {
        cluster.kill(signal);
        cluster
    })
    .await
    .unwrap();
    assert!(!cluster.is_ready(), "the cluster is down");

    // While the database is down: not ready, still alive.
    server.wait_for_status("/readyz", 503, Duration::from_secs(60)).await;
    let (status, body) = server.get("/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert!(body["error"]["code"].is_string(), "{body}");
    let (status, _) = server.get("/healthz").await.unwrap();
    assert_eq!(status, 200, "healthz does not depend on the database");
    // What describe answers while the database is down (reported, and held
    // to the one error shape and a 5xx that is not a crash).
    let (down_status, down_body) = server.get(&format!("/v1/executions/{id}")).await.unwrap();
    eprintln!("describe while the database is down: {down_status} {down_body}");
    assert!((500..600).contains(&down_status), "{down_status} {down_body}");
    assert!(down_body["error"]["code"].is_string(), "{down_body}");

    // The same cluster again, on the same port.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.start();
        cluster
    })
    .await
    .unwrap();
    server.wait_for_status("/readyz", 200, Duration::from_secs(120)).await;

    // The service reconnects by itself and the execution finishes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let execution = loop {
        match server.get(&format!("/v1/executions/{id}?wait_seconds=10")).await {
            Ok((200, body)) if body["status"] != "Executing" => break body,
            Ok((200, _)) => {}
            other => eprintln!("describe after the restart: {other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the execution never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let (status, before) = server.get(&format!("/v1/executions/{id}/steps/Before")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(before["properties"]["Outputs"], json!({"n": 1}), "{before}");
    assert_eq!(before["attempt_count"], 1, "{before}");
    let runs = |step: &str| {
        std::fs::read_to_string(marks.path().join(step))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(runs("Before"), 1);
    assert!(runs("During") >= 1, "at-least-once");
    assert_eq!(runs("After"), 1);

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // The cluster is ended and removed here (and on any panic above).
    tokio::task::spawn_blocking(move || drop(cluster)).await.unwrap();
    // Checked last so that the recovery above is proven either way.
    assert_eq!(
        down_status, 503,
        "a down database is Unavailable (503), not an internal error: {down_body}"
    );
}
