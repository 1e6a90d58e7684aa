//! No credential of the database URL reaches a log line or an error, in
//! any of the forms a URL carries one (`user:pass@`, `?password=`,
//! `&sslpassword=`, percent-encoded), whether the database is reached or not.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::procs::database_url;

/// Runs `stepwise migrate` with `url` at debug level and returns whether it
/// succeeded and everything it wrote to stdout and stderr.
async fn migrate_with(url: &str, data_dir: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .arg("migrate")
        .args(extra)
        .env_remove("STEPWISE_TEST_WORKER_LOGS")
        .env_remove("DATABASE_URL")
        .env("STEPWISE_DATABASE_URL", url)
        .env("STEPWISE_DATA_DIR", data_dir)
        .env("STEPWISE_DATABASE__CONNECT_RETRY_SECONDS", "1")
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("stepwise migrate ends in time")
        .expect("stepwise runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[sqlx::test]
async fn database_credentials_never_reach_the_logs(db: PgPool) {
    let data_dir = tempfile::tempdir().unwrap();
    let base = database_url(&db).await; // postgres://postgres@host:port/name
    let (_, rest) = base.split_once("postgres@").unwrap();
    let secret = |n: u32| format!("Pw{n}x{}", Uuid::new_v4().simple());
    let (s1, s2, s3, s4, s5, s6) = (secret(1), secret(2), secret(3), secret(4), secret(5), secret(6));
    // PostgreSQL trusts the test connections: any password connects.
    let cases = [
        (
            format!("postgres://postgres:{s1}@{rest}"),
            vec![s1.clone()],
            true,
            vec![],
        ),
        (
            format!("postgres://postgres@{rest}?password={s2}"),
            vec![s2.clone()],
            true,
            vec!["--log-format", "json"],
        ),
        (
            // sqlx logs parameters it does not know, with their values.
            format!("postgres://postgres@{rest}?sslpassword={s3}&pass%77ord=a%2B{s4}"),
            vec![s3.clone(), s4.clone()],
            true,
            vec![],
        ),
        (
            // Nothing listens on port 1: the start fails, and says why.
            format!("postgres://postgres:{s5}@127.0.0.1:1/x?password={s6}"),
            vec![s5.clone(), s6.clone()],
            false,
            vec![],
        ),
    ];
    for (url, secrets, succeeds, extra) in cases {
        let (ok, output) = migrate_with(&url, data_dir.path(), &extra).await;
        assert_eq!(ok, succeeds, "{output}");
        assert!(output.contains("connecting to PostgreSQL"), "{output}");
        for secret in secrets {
            assert!(!output.contains(&secret), "{secret} leaked:\n{output}");
        }
        if !succeeds {
            assert!(output.contains("could not connect to PostgreSQL"), "{output}");
        }
    }
}
