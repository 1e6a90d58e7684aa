//! Calling a Callback step's webhook: http or https only, no redirects
//! followed, no proxy, bounded by `callbacks.webhook_timeout_seconds`, and
//! only to addresses [`crate::domain::webhook::Policy`] allows. A host name
//! is checked inside the client's resolver, on every address it resolves
//! to, so the addresses checked are the ones connected to (a second DNS
//! answer cannot swap in an inward address); an address in the URL itself
//! is checked before the request.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    Url,
};
use serde_json::Value;

use crate::{
    config::CallbacksConfig,
    domain::webhook::{Policy, ALLOW_KEY},
};

/// Why a webhook call failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The policy forbids the call: calling again cannot help.
    Refused(String),
    /// The call was made and failed, or could not be made.
    Failed(String),
}

/// The worker's webhook client.
pub struct Webhooks {
    client: reqwest::Client,
    policy: Arc<Policy>,
    timeout: Duration,
}

/// A resolved address the policy refuses; found in the error's chain.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {ip}, {kind}")]
struct RefusedAddress {
    host: String,
    ip: IpAddr,
    kind: &'static str,
}

/// Resolves with the system resolver, then refuses the whole name when any
/// of its addresses is refused.
struct CheckingResolver {
    policy: Arc<Policy>,
}

impl Resolve for CheckingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !policy.allows_host(&host) {
                for addr in &addrs {
                    if let Some(kind) = policy.refusal(addr.ip()) {
                        let ip = addr.ip();
                        return Err(Box::new(RefusedAddress { host, ip, kind }) as _);
                    }
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl Webhooks {
    /// `config` was validated when loaded; an invalid allow list here is a bug.
    pub fn new(config: &CallbacksConfig) -> Webhooks {
        let policy = Arc::new(Policy::new(&config.webhook_allow).expect("callbacks.webhook_allow was validated"));
        let timeout = Duration::from_secs(config.webhook_timeout_seconds);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect to the target itself, past the resolver's check.
            .no_proxy()
            .dns_resolver(Arc::new(CheckingResolver { policy: policy.clone() }))
            .build()
            .expect("HTTP client builds");
        Webhooks {
            client,
            policy,
            timeout,
        }
    }

    /// POSTs `body` to `url`; `Ok` when it answered 2xx.
    pub async fn post(&self, url: &str, body: &Value) -> Result<(), Failure> {
        let parsed =
            Url::parse(url).map_err(|e| Failure::Refused(format!("the callback webhook Url is not valid: {e}")))?;
        let shown = shown(&parsed);
        self.check_url(&parsed, &shown)?;
        let response = match self.client.post(parsed).json(body).send().await {
            Ok(r) => r,
            Err(e) => return Err(self.send_failure(&shown, e)),
        };
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("(no Location)");
            return Err(Failure::Failed(format!(
                "the callback webhook {shown} answered {status} with a redirect to {location}; redirects are not followed"
            )));
        }
        if !status.is_success() {
            return Err(Failure::Failed(format!(
                "the callback webhook {shown} answered {status}"
            )));
        }
        Ok(())
    }

    /// The scheme, and an address given in the URL itself (the resolver
    /// never sees it).
    fn check_url(&self, url: &Url, shown: &str) -> Result<(), Failure> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Failure::Refused(format!(
                "the callback webhook {shown} is refused: only http and https URLs are called, not {}:",
                url.scheme()
            )));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(Failure::Refused(format!("the callback webhook {shown} names no host"))),
        };
        match self.policy.refusal(ip) {
            Some(kind) => Err(Failure::Refused(refused_message(shown, &format!("{ip} is {kind}")))),
            None => Ok(()),
        }
    }

    fn send_failure(&self, shown: &str, e: reqwest::Error) -> Failure {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if let Some(refused) = err.downcast_ref::<RefusedAddress>() {
                return Failure::Refused(refused_message(shown, &refused.to_string()));
            }
            source = err.source();
        }
        if e.is_timeout() {
            return Failure::Failed(format!(
                "the callback webhook {shown} did not answer within {}s (callbacks.webhook_timeout_seconds)",
                self.timeout.as_secs()
            ));
        }
        let mut causes = Vec::new();
        let mut source = std::error::Error::source(&e);
        while let Some(err) = source {
            causes.push(err.to_string());
            source = err.source();
        }
        let mut message = e.without_url().to_string();
        for cause in causes {
            message = format!("{message}: {cause}");
        }
        Failure::Failed(format!("the callback webhook {shown} could not be reached: {message}"))
    }
}

fn refused_message(shown: &str, why: &str) -> String {
    format!(
        "the callback webhook {shown} is refused: {why}; webhooks may not reach loopback, link-local \
         (cloud metadata), private, shared, unspecified or multicast addresses unless {ALLOW_KEY} lists \
         the host or the address"
    )
}

/// The URL as messages show it, without a password.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhooks(allow: &[&str]) -> Webhooks {
        Webhooks::new(&CallbacksConfig {
            webhook_allow: allow.iter().map(|s| s.to_string()).collect(),
            webhook_timeout_seconds: 5,
        })
    }

    #[tokio::test]
    async fn other_schemes_and_inward_literals_are_refused_before_any_request() {
        let hooks = webhooks(&[]);
        for (url, says) in [
            ("ftp://example.com/hook", "only http and https"),
            ("file:///etc/passwd", "only http and https"),
            ("http://2130706433/hook", "127.0.0.1 is a loopback address"),
            ("http://[fe80::1]/hook", "link-local"),
            ("https://u:hunter2@169.254.169.254/", "metadata"),
        ] {
            match hooks.post(url, &Value::Null).await {
                Err(Failure::Refused(message)) => {
                    assert!(message.contains(says), "{url}: {message}");
                    assert!(!message.contains("hunter2"), "{message}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
