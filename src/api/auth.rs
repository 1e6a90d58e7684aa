//! Who may call what. Two layers:
//!
//! - [`guard`], on every request whatever `auth.enabled` says: the `Host`
//!   must be an allowed name (no DNS rebinding), an `Origin` must be this
//!   site (no cross-site request from a web page), and a body must be
//!   declared `application/json` (a browser cannot send that cross-site
//!   without a preflight this server never answers).
//! - [`authorize`], on every route: the bearer token's role against the one
//!   [`POLICY`] table, the only place a route's role is decided.

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, HeaderMap, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{
    error::{ApiError, ErrorCode},
    AppState,
};
use crate::{
    config::Config,
    domain::auth::Role,
    engine::tokens::{self, Principal},
};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token: probes, this API's description, and callbacks (the token
    /// in a callback's path is its credential).
    Open,
    /// A token with this role or a more powerful one.
    Role(Role),
}

use Access::{Open, Role as Needs};
use Role::{Admin, Editor, Operator, Viewer};

/// Every route and method with what it needs. A route missing here needs
/// an admin token, so a new route is closed until it is listed.
pub const POLICY: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Open),
    ("GET", "/readyz", Open),
    ("GET", "/openapi.yaml", Open),
    ("POST", "/v1/callbacks/{token}/success", Open),
    ("POST", "/v1/callbacks/{token}/failure", Open),
    ("GET", "/v1/pipelines", Needs(Viewer)),
    ("POST", "/v1/pipelines", Needs(Editor)),
    ("GET", "/v1/pipelines/{name}", Needs(Viewer)),
    ("PUT", "/v1/pipelines/{name}", Needs(Editor)),
    ("DELETE", "/v1/pipelines/{name}", Needs(Admin)),
    ("GET", "/v1/pipelines/{name}/versions", Needs(Viewer)),
    ("GET", "/v1/pipelines/{name}/versions/{version}", Needs(Viewer)),
    ("GET", "/v1/pipelines/{name}/executions", Needs(Viewer)),
    ("POST", "/v1/pipelines/{name}/executions", Needs(Operator)),
    ("POST", "/v1/pipelines/{name}/executions/plan", Needs(Operator)),
    ("DELETE", "/v1/pipelines/{name}/cache", Needs(Editor)),
    ("GET", "/v1/executions/{execution}", Needs(Viewer)),
    ("POST", "/v1/executions/{execution}/stop", Needs(Operator)),
    ("POST", "/v1/executions/{execution}/retry", Needs(Operator)),
    ("GET", "/v1/executions/{execution}/parameters", Needs(Viewer)),
    ("GET", "/v1/executions/{execution}/definition", Needs(Viewer)),
    ("GET", "/v1/executions/{execution}/events", Needs(Viewer)),
    ("GET", "/v1/executions/{execution}/steps", Needs(Viewer)),
    ("GET", "/v1/executions/{execution}/steps/{step}", Needs(Viewer)),
    ("GET", "/v1/executions/{execution}/steps/{step}/logs", Needs(Viewer)),
    ("GET", "/v1/tokens", Needs(Admin)),
    ("POST", "/v1/tokens", Needs(Admin)),
    ("DELETE", "/v1/tokens/{name}", Needs(Admin)),
    ("GET", "/v1/secrets", Needs(Admin)),
    ("PUT", "/v1/secrets/{name}", Needs(Admin)),
    ("DELETE", "/v1/secrets/{name}", Needs(Admin)),
];

/// What `method` on the route template `route` needs. `HEAD` is a `GET`
/// without its body (axum serves it with the `GET` handler), so it needs
/// what `GET` needs.
pub fn access(method: &Method, route: &str) -> Access {
    let method = if method == Method::HEAD { &Method::GET } else { method };
    POLICY
        .iter()
        .chain(super::ui::POLICY)
        .find(|(m, r, _)| *m == method.as_str() && *r == route)
        .map_or(Needs(Admin), |(_, _, access)| *access)
}

/// The host names a request may name, fixed at start.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    any: bool,
    /// Lower case, IPv6 addresses in brackets, without port.
    names: Arc<HashSet<String>>,
    /// The configured names only: an `Origin` naming one of them is this
    /// site seen through a proxy that rewrote `Host`.
    configured: Arc<HashSet<String>>,
}

impl AllowedHosts {
    pub fn from_config(config: &Config) -> AllowedHosts {
        let configured: HashSet<String> = config
            .api
            .allowed_hosts
            .iter()
            .filter(|h| h.as_str() != "*")
            .map(|h| normalize_host(h))
            .collect();
        let mut names: HashSet<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).into();
        let ip = config.listen.ip();
        if !ip.is_unspecified() {
            names.insert(normalize_host(&ip.to_string()));
        }
        names.extend(configured.iter().cloned());
        AllowedHosts {
            any: config.api.allowed_hosts.iter().any(|h| h == "*"),
            names: Arc::new(names),
            configured: Arc::new(configured),
        }
    }

    fn allows(&self, host: &str) -> bool {
        self.any || self.names.contains(host)
    }
}

/// Lower case, without a trailing dot, IPv6 addresses in brackets.
fn normalize_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host,
    }
}

/// The host part of a `Host` header or an origin's authority (`name`,
/// `name:port`, `[v6]:port`), normalized. Anything else (a port that is not
/// digits, an unclosed bracket) comes back whole, which no allowed name is.
fn host_of(authority: &str) -> String {
    let split = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(v6, after)| (format!("[{v6}]"), after)),
        None => Some(match authority.rsplit_once(':') {
            Some((host, _)) => (host.to_string(), &authority[host.len()..]),
            None => (authority.to_string(), ""),
        }),
    };
    match split {
        Some((host, after)) if port_ok(after) => normalize_host(&host),
        _ => authority.trim().to_ascii_lowercase(),
    }
}

/// Whether what follows the host is nothing or `:` and a port's digits.
fn port_ok(after: &str) -> bool {
    after.is_empty()
        || after
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

fn forbidden(message: String) -> Response {
    ApiError::new(ErrorCode::Forbidden, message).into_response()
}

/// The checks that protect a server on loopback from the web pages its
/// operator visits: DNS rebinding (`Host`), cross-site requests
/// (`Origin`) and forms posting without a preflight (`Content-Type`).
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let path = request.uri().path();
    // Probes come from orchestrators that name the machine as they please;
    // they read nothing but "ok".
    let is_probe = matches!(path, "/healthz" | "/readyz");
    let mut hosts = headers.get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next().and_then(|h| h.to_str().ok()), hosts.next()) else {
        return forbidden("the request must have exactly one Host header".into());
    };
    // An absolute-form target (`GET http://name/path`) names the host too,
    // and HTTP says it wins over the header: both must be allowed.
    let named = std::iter::once(host_of(host)).chain(request.uri().authority().map(|a| host_of(a.as_str())));
    for name in named {
        if !is_probe && !state.allowed_hosts.allows(&name) {
            return forbidden(format!(
                "host {name:?} is not an allowed name for this server; add it to api.allowed_hosts"
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !origin_is_this_site(origin, host, &state.allowed_hosts) {
            return forbidden(format!(
                "requests from the web origin {origin:?} are not allowed (only this server's own pages may call it)"
            ));
        }
    }
    // The web UI's forms post `application/x-www-form-urlencoded`, which a
    // page of any site could send too: a post to `/ui/` must say it comes
    // from this site (browsers send `Origin` with every post).
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    let ui_post = path.starts_with("/ui/") && !reads;
    if ui_post && !headers.contains_key(header::ORIGIN) {
        return forbidden("a post to the web UI must come from its own pages (it has no Origin header)".into());
    }
    // An empty form post (`Content-Length: 0`) is a body-less request a
    // page can send cross-site without a preflight: a declared type must
    // be JSON too, unless the method reads.
    let declares_type =
        headers.contains_key(header::CONTENT_TYPE) && !matches!(*request.method(), Method::GET | Method::HEAD);
    if (has_body(headers) || declares_type) && !is_json(headers) && !(ui_post && is_form(headers)) {
        let given = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        return ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("a request body must be sent with Content-Type: application/json (the request said {given:?})"),
        )
        .into_response();
    }
    next.run(request).await
}

fn origin_is_this_site(origin: &str, host: &str, allowed: &AllowedHosts) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        // "null" (a sandboxed frame, a file) and anything malformed.
        return false;
    };
    if !matches!(scheme, "http" | "https") {
        return false;
    }
    authority.eq_ignore_ascii_case(host) || allowed.configured.contains(&host_of(authority))
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0");
    length || headers.contains_key(header::TRANSFER_ENCODING)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Checks the bearer token (or the web UI's session cookie) against what
/// the route needs, and hands the handler its [`Principal`]. A refused UI
/// page is answered with the sign-in page or an HTML page, not JSON.
pub async fn authorize(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let needs = match access(request.method(), &route) {
        Open => return next.run(request).await,
        Needs(role) => role,
    };
    let refuse = |error: ApiError| {
        if route.starts_with("/ui") {
            super::ui::refusal(error)
        } else {
            error.into_response()
        }
    };
    let principal = if state.config.auth.enabled {
        let token = match credential(request.headers()) {
            Err(message) => return refuse(ApiError::new(ErrorCode::Unauthorized, message)),
            Ok(Credential::Cookie(_))
                if !matches!(*request.method(), Method::GET | Method::HEAD)
                    && !request.headers().contains_key(header::ORIGIN) =>
            {
                // The guard checked any Origin is this site; a cookie may
                // only act for a request that says where it comes from.
                return refuse(ApiError::new(
                    ErrorCode::Forbidden,
                    "a request signed in by the web UI's cookie must come from its pages (it has no Origin header)",
                ));
            }
            Ok(Credential::Bearer(token) | Credential::Cookie(token)) => token,
        };
        match tokens::authenticate(&state.db, &token).await {
            Ok(Some(principal)) => principal,
            Ok(None) => {
                return refuse(ApiError::new(
                    ErrorCode::Unauthorized,
                    "the bearer token is not valid (unknown or revoked)",
                ))
            }
            Err(e) => return refuse(ApiError::from(e)),
        }
    } else {
        Principal {
            name: "anonymous (auth.enabled = false)".into(),
            role: Admin,
        }
    };
    if principal.role < needs {
        return refuse(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "{} {route} needs a token with the {needs} role or above; token {:?} has the {} role",
                request.method(),
                principal.name,
                principal.role
            ),
        ));
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Where a request's token came from.
enum Credential {
    Bearer(String),
    /// The web UI's session cookie (only when no Authorization header).
    Cookie(String),
}

fn credential(headers: &HeaderMap) -> Result<Credential, String> {
    if !headers.contains_key(header::AUTHORIZATION) {
        if let Some(token) = super::ui::session_token(headers) {
            return Ok(Credential::Cookie(token));
        }
    }
    bearer(headers).map(|token| Credential::Bearer(token.to_string()))
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Result<&str, String> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err("this request needs a token: send Authorization: Bearer <token>".into());
    };
    let value = value.to_str().unwrap_or("");
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err("the Authorization header must read \"Bearer <token>\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_without_port() {
        assert_eq!(host_of("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_of("LocalHost."), "localhost");
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of("[0:0::1]"), "[::1]");
        assert_eq!(host_of("evil.example:80"), "evil.example");
        assert_eq!(host_of("localhost:"), "localhost");
        // Not host[:port]: returned whole, so no allowed name matches.
        assert_eq!(host_of("localhost:evil.example"), "localhost:evil.example");
        assert_eq!(host_of("[::1"), "[::1");
        assert_eq!(host_of("[::1]evil"), "[::1]evil");
    }

    #[test]
    fn default_hosts_are_loopback_and_the_listen_address() {
        let mut config = Config::defaults();
        config.listen = "10.1.2.3:8080".parse().unwrap();
        let allowed = AllowedHosts::from_config(&config);
        for host in ["localhost", "127.0.0.1", "[::1]", "10.1.2.3"] {
            assert!(allowed.allows(host), "{host}");
        }
        assert!(!allowed.allows("attacker.example"));
        config.api.allowed_hosts = vec!["Stepwise.Internal".into()];
        assert!(AllowedHosts::from_config(&config).allows("stepwise.internal"));
        config.api.allowed_hosts = vec!["*".into()];
        assert!(AllowedHosts::from_config(&config).allows("anything"));
    }

    #[test]
    fn origins_must_be_this_site() {
        let allowed = AllowedHosts::from_config(&Config::defaults());
        assert!(origin_is_this_site("http://127.0.0.1:8080", "127.0.0.1:8080", &allowed));
        assert!(!origin_is_this_site(
            "http://localhost:3000",
            "127.0.0.1:8080",
            &allowed
        ));
        assert!(!origin_is_this_site("null", "127.0.0.1:8080", &allowed));
        assert!(!origin_is_this_site("https://evil.example", "127.0.0.1:8080", &allowed));
    }

    #[test]
    fn unknown_routes_need_an_admin() {
        assert_eq!(access(&Method::GET, "/v1/new-thing"), Needs(Admin));
        assert_eq!(access(&Method::GET, "/healthz"), Open);
        assert_eq!(
            access(&Method::POST, "/v1/pipelines/{name}/executions"),
            Needs(Operator)
        );
        assert_eq!(access(&Method::HEAD, "/healthz"), Open);
        assert_eq!(access(&Method::HEAD, "/v1/pipelines"), Needs(Viewer));
        assert_eq!(access(&Method::HEAD, "/v1/new-thing"), Needs(Admin));
    }
}
