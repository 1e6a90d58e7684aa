//! The web UI under `/ui/`: server-rendered HTML (maud) with one small
//! script and one stylesheet compiled into the binary, so `stepwise serve`
//! serves it with no build step and no network access beyond itself.
//!
//! Sign-in keeps the API token in an HttpOnly, SameSite=Strict cookie; the
//! cookie is just another way to present the token to
//! [`super::auth::authorize`], so every page and action obeys the token's
//! role exactly as the REST API does, through the [`POLICY`] table below.
//! The pages' own script calls the REST API (events, logs) with the same
//! cookie. Posts to `/ui/` must carry this site's `Origin` (checked by
//! [`super::auth::guard`]), which with SameSite=Strict keeps other sites'
//! pages from acting with the cookie.

mod execution;
pub mod graph;
mod pages;
mod plan;
pub mod svg;

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Redirect, Response},
    Extension,
};
use maud::{html, Markup, DOCTYPE};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};

use super::{
    auth::Access::{self, Open, Role as Needs},
    error::{ApiError, ErrorCode},
    routes::Routes,
    AppState,
};
use crate::{
    domain::auth::Role::{Operator, Viewer},
    engine::tokens::{self, Principal},
};

/// The cookie that holds the signed-in token.
pub const COOKIE: &str = "stepwise_session";

/// What each UI route needs, read by `auth::access` after the API's table.
pub const POLICY: &[(&str, &str, Access)] = &[
    ("GET", "/ui", Open),
    ("GET", "/ui/sign-in", Open),
    ("POST", "/ui/sign-in", Open),
    ("POST", "/ui/sign-out", Open),
    ("GET", "/ui/assets/{file}", Open),
    ("GET", "/ui/", Needs(Viewer)),
    ("GET", "/ui/pipelines/{name}", Needs(Viewer)),
    ("GET", "/ui/pipelines/{name}/versions/{version}", Needs(Viewer)),
    ("GET", "/ui/pipelines/{name}/diff", Needs(Viewer)),
    ("GET", "/ui/pipelines/{name}/plan", Needs(Operator)),
    ("POST", "/ui/pipelines/{name}/start", Needs(Operator)),
    ("GET", "/ui/executions/{execution}", Needs(Viewer)),
    ("POST", "/ui/executions/{execution}/stop", Needs(Operator)),
    ("POST", "/ui/executions/{execution}/retry", Needs(Operator)),
];

pub fn router() -> Routes {
    Routes::new()
        .get("/ui", || async { Redirect::to("/ui/") })
        .get("/ui/", pages::pipelines)
        .get("/ui/sign-in", sign_in_page)
        .post("/ui/sign-in", sign_in)
        .post("/ui/sign-out", sign_out)
        .get("/ui/assets/{file}", asset)
        .get("/ui/pipelines/{name}", pages::pipeline)
        .get("/ui/pipelines/{name}/versions/{version}", pages::version)
        .get("/ui/pipelines/{name}/diff", pages::diff)
        .get("/ui/pipelines/{name}/plan", plan::plan)
        .post("/ui/pipelines/{name}/start", plan::start)
        .get("/ui/executions/{execution}", execution::page)
        .post("/ui/executions/{execution}/stop", execution::stop)
        .post("/ui/executions/{execution}/retry", execution::retry)
        .layer(middleware::from_fn(page_headers))
}

/// Pages load nothing from elsewhere, run no inline script and are never
/// framed; they are not cached (they show live state and who is signed in).
async fn page_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The token in the session cookie, if any.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| percent_decode_str(value).decode_utf8_lossy().into_owned())
        .filter(|token| !token.is_empty())
}

/// The answer to a UI request `authorize` refused: the sign-in page for a
/// missing or bad token, an HTML page saying why otherwise.
pub fn refusal(error: ApiError) -> Response {
    if error.code == ErrorCode::Unauthorized {
        return Redirect::to("/ui/sign-in").into_response();
    }
    UiError(error).into_response()
}

/// A failed page: the API's error, shown as a page with its status.
pub struct UiError(pub ApiError);

impl<E: Into<ApiError>> From<E> for UiError {
    fn from(e: E) -> Self {
        UiError(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        // The API's messages are already fit for people: a 5xx was logged
        // where it was made and says only "internal error".
        let status = self.0.code.status();
        let details: Vec<String> = self
            .0
            .details
            .iter()
            .filter(|d| d.message != self.0.message)
            .map(|d| {
                if d.path.is_empty() {
                    d.message.clone()
                } else {
                    format!("{}: {}", d.path, d.message)
                }
            })
            .collect();
        let markup = error_page(status, &self.0.message, &details);
        let mut response = (status, Html(markup.into_string())).into_response();
        if self.0.code == ErrorCode::Unavailable {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

pub type UiResult<T> = Result<T, UiError>;

fn error_page(status: StatusCode, message: &str, details: &[String]) -> Markup {
    layout(
        &format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")),
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p class="error" role="alert" { (message) }
            @if !details.is_empty() { ul { @for d in details { li { (d) } } } }
            p { a href="/ui/" { "Back to the pipelines" } }
        },
    )
}

/// The page frame: header with who is signed in, then `body`.
pub fn layout(title: &str, principal: Option<&Principal>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · stepwise" }
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/ui/" { "stepwise" }
                    nav aria-label="main" { a href="/ui/" { "Pipelines" } }
                    @if let Some(p) = principal {
                        form class="who" method="post" action="/ui/sign-out" {
                            span { "Signed in as " strong { (p.name) } " (" (p.role) ")" }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

/// A page as a response.
pub fn page(markup: Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// The pairs of a form body or query string.
pub fn form_pairs(text: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(text).into_owned().collect()
}

/// The first value of `key`.
pub fn field<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The page's script and stylesheet.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (content_type, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        _ => return UiError(ApiError::not_found(format!("no asset {file:?}"))).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn sign_in_form(state: &AppState, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if !state.config.auth.enabled {
                p { "Authentication is off on this server (auth.enabled = false): every page is open. "
                    a href="/ui/" { "Go to the pipelines" } }
            } @else {
                p { "Sign in with an API token (an admin's first token is in "
                    code { "data/admin.token" } "). The token is kept in a cookie for this browser session." }
                @if let Some(error) = error { p class="error" role="alert" { (error) } }
                form method="post" action="/ui/sign-in" class="sign-in" {
                    label for="token" { "API token" }
                    input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// The sign-in form.
async fn sign_in_page(State(state): State<AppState>) -> Response {
    page(sign_in_form(&state, None))
}

/// Checks the token and keeps it in the session cookie.
async fn sign_in(State(state): State<AppState>, body: Bytes) -> UiResult<Response> {
    let pairs = form_pairs(&body);
    let token = field(&pairs, "token").unwrap_or("").trim().to_string();
    if !state.config.auth.enabled {
        return Ok(Redirect::to("/ui/").into_response());
    }
    match tokens::authenticate(&state.db, &token).await? {
        Some(principal) => {
            tracing::info!(token.name = %principal.name, "signed in to the web UI");
            let value = utf8_percent_encode(&token, NON_ALPHANUMERIC);
            // Secure is left off: the default listener is plain HTTP on
            // loopback. Behind an HTTPS proxy the browser still only sends
            // it to this site (SameSite=Strict, host-only).
            let cookie = format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/");
            Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/ui/")).into_response())
        }
        None => Ok((
            StatusCode::UNAUTHORIZED,
            page(sign_in_form(
                &state,
                Some("That token is not valid (unknown or revoked)."),
            )),
        )
            .into_response()),
    }
}

/// Forgets the session cookie.
async fn sign_out() -> Response {
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/sign-in")).into_response()
}

/// Whether the signed-in role may do what `route` needs (for showing
/// buttons; the route itself is checked by `authorize`).
pub fn may(principal: &Principal, method: &str, route: &str) -> bool {
    let method = axum::http::Method::from_bytes(method.as_bytes()).unwrap_or(axum::http::Method::POST);
    match super::auth::access(&method, route) {
        Open => true,
        Needs(role) => principal.role >= role,
    }
}

/// The principal `authorize` found (every non-open UI route has one).
pub type Who = Extension<Principal>;
