//! Credentials of the database URL never reach a log line: [`redact_url`]
//! shows the URL with its password (`user:pass@`) and every password-like
//! query value (`?password=`, `&sslpassword=`, percent-encoded keys too)
//! replaced by `***`, and a [`Redactor`] scrubs those values, in every form
//! they may be printed in (as written, percent-decoded, escaped), from any
//! text: every log line goes through one ([`crate::telemetry`]), and so does
//! the error a failed start prints. That covers messages of libraries that
//! echo parts of the URL (sqlx warns about unknown parameters with their
//! values).

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

const MASK: &str = "***";

/// The connection string with every credential replaced by `***`; a string
/// that does not parse as a URL is hidden whole.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return MASK.to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(MASK));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let value = if is_secret_key(&k) {
                    MASK.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Whether a connection parameter holds a secret (`password`, `sslpassword`).
fn is_secret_key(key: &str) -> bool {
    key.to_ascii_lowercase().contains("password")
}

/// Every credential value of `url`, as written and decoded. An unparseable
/// URL yields itself and what sits between its user name and host.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let Ok(parsed) = url::Url::parse(url) else {
        secrets.push(url.to_string());
        if let Some((_, rest)) = url.split_once("://") {
            if let Some((userinfo, _)) = rest.rsplit_once('@') {
                if let Some((_, password)) = userinfo.split_once(':') {
                    secrets.push(password.to_string());
                }
            }
        }
        return secrets;
    };
    if let Some(password) = parsed.password() {
        secrets.push(password.to_string());
        secrets.push(percent_decode_str(password).decode_utf8_lossy().into_owned());
    }
    for pair in parsed.query().unwrap_or("").split('&') {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if is_secret_key(&percent_decode_str(key).decode_utf8_lossy()) {
            secrets.push(raw.to_string());
        }
    }
    for (key, value) in parsed.query_pairs() {
        if is_secret_key(&key) {
            secrets.push(value.into_owned());
        }
    }
    secrets
}

/// Replaces known secrets in text with `***`.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret holding another is masked whole.
    secrets: Vec<String>,
}

impl Redactor {
    /// Masks `secrets` in every form a log may print them in: as is, and
    /// escaped as in JSON and in Rust's debug output.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        let mut all: Vec<String> = Vec::new();
        for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
            let json = serde_json::to_string(&secret).unwrap_or_default();
            let debug = format!("{secret:?}");
            all.push(json[1..json.len() - 1].to_string());
            all.push(debug[1..debug.len() - 1].to_string());
            all.push(secret);
        }
        all.retain(|s| !s.is_empty());
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        Redactor { secrets: all }
    }

    /// The credentials of the database URL and of `PGPASSWORD` (which the
    /// PostgreSQL driver reads too).
    pub fn for_database(url: &str) -> Redactor {
        let mut secrets = url_secrets(url);
        secrets.extend(std::env::var("PGPASSWORD").ok());
        Redactor::new(secrets)
    }

    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = Cow::Owned(text.replace(secret.as_str(), MASK));
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_credential_of_a_url() {
        assert_eq!(redact_url("postgres://u:pw@h:5432/d"), "postgres://u:***@h:5432/d");
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(
            redact_url("postgres://u@h/d?password=pw&sslmode=disable"),
            "postgres://u@h/d?password=***&sslmode=disable"
        );
        let shown = redact_url("postgres://u:p%40ss@h/d?sslpassword=k%20ey&pass%77ord=x+y&application_name=a");
        for secret in ["p%40ss", "p@ss", "k%20ey", "k ey", "x+y", "x y"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("application_name=a"), "{shown}");
        assert_eq!(redact_url("host=h password=pw"), "***");
    }

    #[test]
    fn scrubs_every_form_of_every_secret() {
        let url = "postgres://u:p%40ss%22w@h/d?sslpassword=s3cr%2Ft&Password=q+q&x=1";
        let redactor = Redactor::for_database(url);
        for leak in [
            url.to_string(),
            "password p@ss\"w".to_string(),
            r#"{"error":"p@ss\"w"}"#.to_string(),
            "value=s3cr/t and s3cr%2Ft".to_string(),
            "q q or q+q".to_string(),
        ] {
            let scrubbed = redactor.scrub(&leak);
            for secret in ["p%40ss", "p@ss", "s3cr", "q q", "q+q"] {
                assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
            }
        }
        assert_eq!(redactor.scrub("nothing here"), "nothing here");
        let broken = Redactor::for_database("postgres://u:pa?ss@h:x/d");
        assert!(!broken.scrub("at postgres://u:pa?ss@h:x/d").contains("pa?ss"));
    }
}
