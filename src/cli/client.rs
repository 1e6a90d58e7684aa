//! The HTTP side of the CLI: which server, which token, and requests over
//! reqwest whose errors become the CLI's exit codes.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use reqwest::{header, Method, RequestBuilder, StatusCode, Url};
use serde_json::Value;

/// The server and the credentials, shared by every client command and the
/// bench.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of the stepwise server.
    #[arg(
        long,
        env = "STEPWISE_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub url: String,
    /// An API token (sent as `Authorization: Bearer`).
    #[arg(long, env = "STEPWISE_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// A file holding the API token (surrounding whitespace ignored); wins
    /// over --token and STEPWISE_TOKEN.
    #[arg(long, env = "STEPWISE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl ServerArgs {
    /// The token to send, read from the file when one is given.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(file) = &self.token_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", file.display()))?;
            let token = text.trim();
            if token.is_empty() {
                anyhow::bail!("the token file {} is empty", file.display());
            }
            return Ok(Some(token.to_string()));
        }
        Ok(self.token.clone().filter(|t| !t.is_empty()))
    }

    /// Headers that authenticate every request.
    pub fn headers(&self) -> anyhow::Result<header::HeaderMap> {
        let mut headers = header::HeaderMap::new();
        if let Some(token) = self.token()? {
            let mut value = header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot"))?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        Ok(headers)
    }
}

/// What went wrong talking to the server.
#[derive(Debug)]
pub enum ClientError {
    /// The server answered with an error (4xx, or 5xx with `server` set).
    Api {
        status: StatusCode,
        code: String,
        message: String,
        details: Value,
    },
    /// No answer: connection refused, DNS, time-out, a broken stream.
    Unreachable(String),
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Unreachable(_) => None,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Api {
                status,
                code,
                message,
                details,
            } => {
                write!(f, "{message} ({} {code})", status.as_u16())?;
                for issue in details.as_array().into_iter().flatten() {
                    let path = issue.get("path").and_then(Value::as_str).unwrap_or("");
                    let text = issue.get("message").and_then(Value::as_str).unwrap_or("");
                    write!(f, "\n  {path}: {text}")?;
                }
                Ok(())
            }
            ClientError::Unreachable(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ClientError {}

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

/// How long an ordinary request may take (long polls and streams set their own).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl Client {
    pub fn new(server: &ServerArgs) -> anyhow::Result<Client> {
        let mut base =
            Url::parse(&server.url).map_err(|e| anyhow::anyhow!("--url {:?} is not a URL: {e}", server.url))?;
        if !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("--url {:?} must be an http or https URL", server.url);
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .default_headers(server.headers()?)
            .user_agent(concat!("stepwise-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client { http, base })
    }

    /// The URL of `segments` under the base, each segment percent-encoded
    /// (an execution ARN holds '/' and ':').
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("http URLs have paths");
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    pub fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.http.request(method, self.url(segments))
    }

    /// Sends an ordinary request and reads its JSON answer.
    pub async fn json(&self, request: RequestBuilder) -> Result<Value, ClientError> {
        let response = self.send(request.timeout(REQUEST_TIMEOUT)).await?;
        response
            .json()
            .await
            .map_err(|e| ClientError::Unreachable(format!("reading the answer failed: {e}")))
    }

    /// Sends a request; an error status becomes a `ClientError::Api`.
    pub async fn send(&self, request: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| unreachable(&self.base, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let error = &body["error"];
        Err(ClientError::Api {
            status,
            code: error["code"].as_str().unwrap_or("error").to_string(),
            message: error["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("the server answered {status}")),
            details: error["details"].clone(),
        })
    }

    pub async fn get(&self, segments: &[&str]) -> Result<Value, ClientError> {
        self.json(self.request(Method::GET, segments)).await
    }

    /// Every step of an execution, in pipeline order: the list pages, so
    /// this follows `next_token` to the end.
    pub async fn all_steps(&self, execution: &str) -> Result<Vec<Value>, ClientError> {
        let mut steps = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut request = self
                .request(Method::GET, &["v1", "executions", execution, "steps"])
                .query(&[("limit", "1000")]);
            if let Some(token) = &token {
                request = request.query(&[("next_token", token)]);
            }
            let mut page = self.json(request).await?;
            if let Some(items) = page["steps"].as_array_mut() {
                steps.append(items);
            }
            match page["next_token"].as_str() {
                Some(next) => token = Some(next.to_string()),
                None => return Ok(steps),
            }
        }
    }
}

fn unreachable(base: &Url, e: &reqwest::Error) -> ClientError {
    let mut message = format!("cannot reach stepwise at {base}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    ClientError::Unreachable(message)
}
