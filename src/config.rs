//! Typed configuration, loaded in layers: the embedded `config/default.toml`,
//! an optional file, `STEPWISE_*` environment variables, then flags.
//! Secrets (the database password) never reach logs: `Config` redacts them in
//! its `Debug` output.

use std::{fmt, net::SocketAddr, path::PathBuf};

use figment::{
    providers::{Env, Format, Toml},
    Figment,
};
use serde::Deserialize;

use crate::domain::duration::{parse_expire_after, ExpireAfter};

/// The defaults, compiled in so a bare binary runs without its source tree.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub database: DatabaseConfig,
    pub api: ApiConfig,
    pub arn: ArnConfig,
    pub worker: WorkerConfig,
    pub retention: RetentionConfig,
    pub cache: CacheSettings,
    pub callbacks: CallbacksConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub secrets: SecretsConfig,
    /// What loading noticed but did not refuse (an unknown `STEPWISE_*`
    /// variable), for the caller to log once logging is set up.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// A test's hold on the hashing of plans and starts (never configured).
    #[serde(skip)]
    pub hash_probe: HashProbe,
}

/// Lets a test hold the hashing of `CacheInputs` by a plan or a start at
/// its beginning, to see what the process holds meanwhile (no database
/// connection). Inert unless a test made it with `HashProbe::holding`.
#[derive(Clone, Default)]
pub struct HashProbe(Option<std::sync::Arc<ProbeState>>);

struct ProbeState {
    /// How many hashings have begun.
    entered: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
    released: tokio::sync::Semaphore,
}

impl HashProbe {
    /// A probe that holds every hashing until `release`.
    pub fn holding() -> HashProbe {
        HashProbe(Some(std::sync::Arc::new(ProbeState {
            entered: std::sync::atomic::AtomicUsize::new(0),
            changed: tokio::sync::Notify::new(),
            released: tokio::sync::Semaphore::new(0),
        })))
    }

    /// Called by the hashing before it reads anything: waits for the test.
    pub async fn before_hashing(&self) {
        if let Some(state) = &self.0 {
            state.entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            state.changed.notify_waiters();
            if let Ok(permit) = state.released.acquire().await {
                permit.forget();
            }
        }
    }

    /// Waits until `n` hashings have begun (and are held).
    pub async fn entered(&self, n: usize) {
        if let Some(state) = &self.0 {
            loop {
                // Made before the count is read, so no wake-up is missed.
                let changed = state.changed.notified();
                if state.entered.load(std::sync::atomic::Ordering::SeqCst) >= n {
                    return;
                }
                changed.await;
            }
        }
    }

    /// Lets every hashing, held or to come, go on.
    pub fn release(&self) {
        if let Some(state) = &self.0 {
            state.released.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub enabled: bool,
    pub admin_token: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("enabled", &self.enabled)
            .field("admin_token", &if self.admin_token.is_empty() { "" } else { "***" })
            .finish()
    }
}

/// Named secrets. `key` is never shown by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Base64 of the 32-byte master key; empty: `<data_dir>/secrets.key`.
    pub key: String,
}

impl fmt::Debug for SecretsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.key.is_empty() { "(key file)" } else { "***" };
        f.write_str(key)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub max_connections: u32,
    pub acquire_timeout_seconds: u64,
    pub idle_in_transaction_timeout_seconds: u64,
    pub connect_retry_seconds: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub max_body_bytes: usize,
    pub max_wait_seconds: u64,
    pub max_connections: usize,
    pub idle_timeout_seconds: u64,
    pub definition_cache_bytes: u64,
    pub shutdown_grace_seconds: u64,
    pub allowed_hosts: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArnConfig {
    pub partition: String,
    pub service: String,
    pub region: String,
    pub account: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub concurrency: usize,
    pub lease_seconds: u64,
    pub poll_interval_ms: u64,
    pub shutdown_grace_seconds: u64,
    pub kill_grace_seconds: u64,
    pub max_outputs_bytes: u64,
    pub for_each_max_items: usize,
    pub max_log_bytes: u64,
    pub cache_input_max_bytes: u64,
    pub cache_input_timeout_seconds: u64,
    pub supervisor_program: String,
    pub pass_through_env: Vec<String>,
    pub run_as_user: String,
    /// Test-only fault point, never read from a file or the environment: the
    /// first attempt of the step of this name panics inside the worker's step
    /// task, so tests can show the worker survives its own bugs. `None`
    /// (always, outside tests) disarms it.
    #[serde(skip)]
    pub fault_panic_step: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksConfig {
    pub webhook_allow: Vec<String>,
    pub webhook_timeout_seconds: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Ended executions older than this many days are removed; 0 keeps all.
    pub executions_days: u32,
    pub interval_seconds: u64,
}

/// Longest `executions_days` accepted (100 years): beyond it the cut-off
/// date is not representable, and "keep everything" is spelt 0.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Caps every step's `CacheConfig.ExpireAfter`.
    #[serde(deserialize_with = "duration_setting")]
    pub max_expire_after: ExpireAfter,
}

/// An ISO 8601 duration setting, parsed as `ExpireAfter` is, with the
/// parser's own message ("invalid duration \"x\": ...").
fn duration_setting<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<ExpireAfter, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_expire_after(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{e}; expected an ISO 8601 duration such as \"P30D\" or \"PT12H\""
        ))
    })
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// A redactor of every credential of the configuration: the database
    /// URL's, `PGPASSWORD`, the configured admin token and secrets key.
    pub fn redactor(&self) -> crate::redact::Redactor {
        let mut secrets = crate::redact::url_secrets(&self.database_url);
        secrets.extend(std::env::var("PGPASSWORD").ok());
        secrets.push(self.auth.admin_token.clone());
        secrets.push(self.secrets.key.clone());
        crate::redact::Redactor::new(secrets)
    }

    /// Loads the layers from the real environment.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = Self::from_figment(Self::figment(overrides), overrides)?;
        config.warnings = unknown_variable_warnings(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()));
        Ok(config)
    }

    /// Only the defaults; tests start from this and change what they need.
    pub fn defaults() -> Config {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_TOML)), &Overrides::default())
            .expect("the embedded default.toml is valid")
    }

    fn figment(overrides: &Overrides) -> Figment {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = &overrides.config_file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            // Plain DATABASE_URL first so the more specific STEPWISE_DATABASE_URL wins.
            .merge(Env::raw().only(&["DATABASE_URL"]).map(|_| "database_url".into()))
            // Only the variables that name a setting: others (a client's
            // STEPWISE_URL, a typo) are warned about, not refused.
            .merge(
                Env::prefixed("STEPWISE_")
                    .filter(|key| is_setting(key.as_str()))
                    .split("__"),
            )
    }

    fn from_figment(figment: Figment, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config: Config = figment.extract().map_err(|e| ConfigError(e.to_string()))?;
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(format) = &overrides.log_format {
            config.log.format = format.clone();
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_string()));
        if self.worker.lease_seconds == 0 {
            return fail("worker.lease_seconds must be at least 1");
        }
        if self.worker.poll_interval_ms == 0 {
            return fail("worker.poll_interval_ms must be at least 1");
        }
        if self.worker.for_each_max_items == 0 {
            return fail("worker.for_each_max_items must be at least 1");
        }
        if self.worker.max_log_bytes < MIN_LOG_BYTES {
            return fail("worker.max_log_bytes must be at least 256");
        }
        if self.database.max_connections < 2 {
            return fail("database.max_connections must be at least 2 (one is the LISTEN connection)");
        }
        if self.database.acquire_timeout_seconds == 0 {
            return fail("database.acquire_timeout_seconds must be at least 1");
        }
        if self.database.idle_in_transaction_timeout_seconds == 0 {
            return fail("database.idle_in_transaction_timeout_seconds must be at least 1");
        }
        if self.api.max_body_bytes == 0 {
            return fail("api.max_body_bytes must be at least 1");
        }
        if self.api.max_connections == 0 {
            return fail("api.max_connections must be at least 1");
        }
        if self.api.idle_timeout_seconds == 0 {
            return fail("api.idle_timeout_seconds must be at least 1");
        }
        if self.retention.executions_days > MAX_RETENTION_DAYS {
            return fail("retention.executions_days must be at most 36500 (100 years); 0 keeps every execution");
        }
        if self.retention.interval_seconds == 0 {
            return fail("retention.interval_seconds must be at least 1");
        }
        if !self.secrets.key.is_empty() {
            if let Err(e) = crate::secrets::parse_key(&self.secrets.key) {
                return Err(ConfigError(format!("secrets.key {e}")));
            }
        }
        if self.callbacks.webhook_timeout_seconds == 0 {
            return fail("callbacks.webhook_timeout_seconds must be at least 1");
        }
        if let Err(message) = crate::domain::webhook::Policy::new(&self.callbacks.webhook_allow) {
            return fail(&message);
        }
        if let Some(name) = self.worker.pass_through_env.iter().find(|n| is_service_variable(n)) {
            return fail(&format!(
                "worker.pass_through_env must not pass {name} to steps: it is the service's own \
                 configuration (database URL, tokens, keys); give a step what it needs in its Env"
            ));
        }
        self.validate_auth()
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        if !self.auth.enabled && !self.listen.ip().is_loopback() {
            return Err(ConfigError(format!(
                "auth.enabled = false is refused because listen = {} is not a loopback address: \
                 anyone who reaches that port could run commands on this host. Turn authentication \
                 on (STEPWISE_AUTH__ENABLED=true), or listen on 127.0.0.1 or [::1]",
                self.listen
            )));
        }
        let token = &self.auth.admin_token;
        if !token.is_empty()
            && (token.len() < crate::domain::auth::MIN_TOKEN_LEN
                || token.len() > crate::domain::auth::MAX_TOKEN_LEN
                || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError(format!(
                "auth.admin_token must be {} to {} printable characters without spaces; \
                 `stepwise token generate` prints a good one",
                crate::domain::auth::MIN_TOKEN_LEN,
                crate::domain::auth::MAX_TOKEN_LEN
            )));
        }
        Ok(())
    }
}

/// Every setting's key as an environment variable names it after
/// `STEPWISE_` (lowercase, sections joined by `__`), tables included.
fn setting_keys() -> &'static [String] {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        fn walk(prefix: &str, dict: &figment::value::Dict, out: &mut Vec<String>) {
            for (key, value) in dict {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}__{key}")
                };
                if let figment::value::Value::Dict(_, inner) = value {
                    walk(&name, inner, out);
                }
                out.push(name);
            }
        }
        let dict: figment::value::Dict = Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("the embedded default.toml is valid");
        let mut keys = Vec::new();
        walk("", &dict, &mut keys);
        keys
    })
}

/// Whether `key` (after `STEPWISE_`, any case) names a setting.
fn is_setting(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    setting_keys().contains(&key)
}

/// `STEPWISE_*` variables that are not settings but are expected in a
/// service's environment: the CLI's own, and those stepwise gives a step.
const KNOWN_OTHER_VARIABLES: &[&str] = &[
    "URL",
    "TOKEN",
    "TOKEN_FILE",
    "OUTPUTS",
    "ARTIFACTS",
    "ATTEMPT",
    "EXECUTION_ARN",
    "EXECUTION_ID",
    "PIPELINE_NAME",
    "STEP_NAME",
];

/// A warning for each `STEPWISE_*` variable among `names` that names no
/// setting, with the nearest setting's variable when one is close.
pub fn unknown_variable_warnings(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut warnings = Vec::new();
    for name in names {
        let Some(rest) = name
            .get(..9)
            .filter(|p| p.eq_ignore_ascii_case("STEPWISE_"))
            .map(|_| &name[9..])
        else {
            continue;
        };
        if is_setting(rest) || KNOWN_OTHER_VARIABLES.iter().any(|k| k.eq_ignore_ascii_case(rest)) {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let nearest = setting_keys()
            .iter()
            .map(|k| (strsim::damerau_levenshtein(&lower, k), k))
            .min_by_key(|(distance, _)| *distance)
            .filter(|(distance, k)| *distance <= (k.len() / 3).max(2));
        let mut warning = format!("{name} is not a stepwise setting and is ignored");
        if let Some((_, key)) = nearest {
            warning.push_str(&format!("; did you mean STEPWISE_{}?", key.to_ascii_uppercase()));
        }
        warnings.push(warning);
    }
    warnings.sort();
    warnings
}

/// Whether the environment variable `name` configures the service itself
/// (its database URL and password, tokens, keys), which no step may see.
pub fn is_service_variable(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("STEPWISE_") || matches!(upper.as_str(), "DATABASE_URL" | "PGPASSWORD" | "PGPASSFILE")
}

pub use crate::redact::redact_url;

/// The smallest `worker.max_log_bytes`: a kept log's head, the marker
/// between head and tail, and its tail must fit (`executor::log`).
pub const MIN_LOG_BYTES: u64 = 256;

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url))
            .field("database", &self.database)
            .field("api", &self.api)
            .field("arn", &self.arn)
            .field("worker", &self.worker)
            .field("retention", &self.retention)
            .field("cache", &self.cache)
            .field("callbacks", &self.callbacks)
            .field("log", &self.log)
            .field("auth", &self.auth)
            // The [secrets] section: where its key comes from, never the key.
            .field("sealing_key", &self.secrets)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.arn.partition, "stepwise");
        assert_eq!(c.worker.lease_seconds, 30);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn auth_settings_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("STEPWISE_API__ALLOWED_HOSTS", r#"["stepwise.internal", "10.0.0.5"]"#);
            jail.set_env("STEPWISE_AUTH__ADMIN_TOKEN", "sw_an_admin_token_from_the_env_0123");
            let c = Config::load(&Overrides::default()).unwrap();
            assert_eq!(c.api.allowed_hosts, ["stepwise.internal", "10.0.0.5"]);
            assert!(c.auth.enabled);
            assert!(!format!("{c:?}").contains("sw_an_admin_token"));
            jail.set_env("STEPWISE_AUTH__ADMIN_TOKEN", "short");
            let e = Config::load(&Overrides::default()).unwrap_err().to_string();
            assert!(e.contains("auth.admin_token must be"), "{e}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn env_layers_override_file_and_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("extra.toml", "listen = \"127.0.0.1:9000\"\n[worker]\nconcurrency = 3\n")?;
            jail.set_env("STEPWISE_WORKER__LEASE_SECONDS", "7");
            jail.set_env("DATABASE_URL", "postgres://a:secret@db/x");
            let overrides = Overrides {
                config_file: Some("extra.toml".into()),
                ..Default::default()
            };
            let c = Config::load(&overrides).unwrap();
            assert_eq!(c.listen.port(), 9000);
            assert_eq!(c.worker.concurrency, 3);
            assert_eq!(c.worker.lease_seconds, 7);
            assert_eq!(c.database_url, "postgres://a:secret@db/x");
            assert!(!format!("{c:?}").contains("secret"));
            jail.set_env("STEPWISE_DATABASE_URL", "postgres://b@db/y");
            assert_eq!(Config::load(&overrides).unwrap().database_url, "postgres://b@db/y");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn retention_and_cache_settings_are_checked() {
        let c = Config::defaults();
        assert_eq!(c.retention.executions_days, 30);
        assert_eq!(c.cache.max_expire_after, parse_expire_after("P30D").unwrap());
        figment::Jail::expect_with(|jail| {
            jail.set_env("STEPWISE_CACHE__MAX_EXPIRE_AFTER", "soon");
            let e = Config::load(&Overrides::default()).unwrap_err().to_string();
            assert!(
                e.to_lowercase().contains("max_expire_after") && e.contains("ISO 8601 duration"),
                "{e}"
            );
            jail.set_env("STEPWISE_CACHE__MAX_EXPIRE_AFTER", "PT12H");
            assert_eq!(
                Config::load(&Overrides::default())
                    .unwrap()
                    .cache
                    .max_expire_after
                    .seconds,
                43200
            );
            jail.set_env("STEPWISE_RETENTION__EXECUTIONS_DAYS", "40000");
            let e = Config::load(&Overrides::default()).unwrap_err().to_string();
            assert!(e.contains("retention.executions_days must be at most 36500"), "{e}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn unknown_variables_warn_and_do_not_refuse() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("STEPWISE_URL", "http://stepwise.internal:8080");
            jail.set_env("STEPWISE_TOKEN", "sw_a_client_token");
            jail.set_env("STEPWISE_WORKER__LEASE_SECONS", "7");
            jail.set_env("STEPWISE_WORKER__CONCURRENCY", "3");
            let c = Config::load(&Overrides::default()).unwrap();
            assert_eq!(c.worker.concurrency, 3);
            assert_eq!(c.worker.lease_seconds, 30);
            let typo: Vec<_> = c.warnings.iter().filter(|w| w.contains("LEASE_SECONS")).collect();
            assert_eq!(typo.len(), 1, "{:?}", c.warnings);
            assert!(
                typo[0].contains("did you mean STEPWISE_WORKER__LEASE_SECONDS?"),
                "{}",
                typo[0]
            );
            assert!(!c
                .warnings
                .iter()
                .any(|w| w.contains("STEPWISE_URL") || w.contains("STEPWISE_TOKEN ")));
            Ok(())
        });
        let far = unknown_variable_warnings(["STEPWISE_SOMETHING_ELSE_ENTIRELY".to_string()].into_iter());
        assert_eq!(
            far,
            ["STEPWISE_SOMETHING_ELSE_ENTIRELY is not a stepwise setting and is ignored"]
        );
        assert!(unknown_variable_warnings(["STEPWISE_TOKEN".into(), "PATH".into()].into_iter()).is_empty());
    }

    #[test]
    fn secrets_key_must_be_32_bytes_and_is_never_shown() {
        let key = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="; // 32 x 'A'
        let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(("secrets.key", key));
        let config = Config::from_figment(figment, &Overrides::default()).unwrap();
        assert!(!format!("{config:?}").contains(key));
        let short = Figment::from(Toml::string(DEFAULT_TOML)).merge(("secrets.key", "c2hvcnQ="));
        let e = Config::from_figment(short, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secrets.key") && e.contains("exactly 32 bytes, got 5 bytes"),
            "{e}"
        );
    }

    #[test]
    fn service_configuration_cannot_be_passed_to_steps() {
        for name in [
            "STEPWISE_DATABASE_URL",
            "stepwise_auth__admin_token",
            "DATABASE_URL",
            "PGPASSWORD",
        ] {
            let mut c = Config::defaults();
            c.worker.pass_through_env.push(name.to_string());
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("worker.pass_through_env"), "{err}");
        }
        let mut c = Config::defaults();
        c.callbacks.webhook_allow = vec!["not a host".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("callbacks.webhook_allow"));
    }
}
