//! Extractors that answer bad input with our error shape instead of axum's
//! plain-text rejections, and name where the input is wrong.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, StatusCode},
};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};
use crate::domain::{json_syntax_error, without_position, Issue};

/// A JSON request body. An empty body reads as `{}` so that endpoints whose
/// fields are all optional can be called with a bare `curl -X POST`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            let content_type = content_type.to_str().unwrap_or("").to_ascii_lowercase();
            let essence = content_type.split(';').next().unwrap_or("").trim();
            let is_json = essence == "application/json" || essence.ends_with("+json");
            if !is_json {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("expected a JSON body with Content-Type: application/json, got {essence:?}"),
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body is larger than the configured limit (api.max_body_bytes)",
                )
            } else {
                ApiError::validation(format!("could not read the request body: {rejection}"), vec![])
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        parse_json(text).map(JsonBody)
    }
}

/// Deserializes `bytes` into `T`, reporting the JSON pointer of a wrong field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // PostgreSQL stores no NUL character in text or jsonb; refuse it here,
    // where the client can be told where it is.
    if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
            if let Some(pointer) = crate::domain::find_nul(&value) {
                return Err(ApiError::invalid(
                    pointer.clone(),
                    format!("the NUL character (\\u0000) is not supported, found at {pointer:?}"),
                ));
            }
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => {
            // Trailing garbage after the document is malformed JSON too.
            deserializer.end().map_err(|e| {
                ApiError::invalid("", format!("request body is not valid JSON: {}", json_syntax_error(&e)))
            })?;
            Ok(value)
        }
        Err(error) => {
            let pointer = pointer_of(error.path());
            let inner = error.into_inner();
            let message = if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                format!("request body is not valid JSON: {}", json_syntax_error(&inner))
            } else if pointer.is_empty() {
                format!("invalid request body: {}", for_people(&without_position(&inner)))
            } else {
                format!("invalid value at {pointer}: {}", for_people(&without_position(&inner)))
            };
            Err(ApiError::invalid(pointer, message))
        }
    }
}

/// Rewrites serde's wording of a type mismatch in terms of JSON: no Rust
/// type names (`i32`, `struct StartBody`, `untagged enum ...`) reach a
/// client.
pub fn for_people(message: &str) -> String {
    const NUMBERS: [(&str, &str); 12] = [
        ("u8", "a small non-negative integer"),
        ("u16", "a non-negative integer"),
        ("u32", "a non-negative integer"),
        ("u64", "a non-negative integer"),
        ("usize", "a non-negative integer"),
        ("i8", "a small integer"),
        ("i16", "an integer"),
        ("i32", "an integer"),
        ("i64", "an integer"),
        ("isize", "an integer"),
        ("f32", "a number"),
        ("f64", "a number"),
    ];
    let mut out = message.to_string();
    if let Some(at) = out.find("data did not match any variant of untagged enum") {
        out.replace_range(at.., "the value does not have any of the accepted shapes");
    }
    for (prefix, replacement) in [
        ("expected struct ", "expected an object"),
        ("expected enum ", "expected one of the accepted values"),
        ("expected tuple struct ", "expected a value of another type"),
    ] {
        if let Some(at) = out.find(prefix) {
            // The type name runs to the end of the message or the next space.
            let end = out[at + prefix.len()..]
                .find(' ')
                .map(|i| at + prefix.len() + i)
                .unwrap_or(out.len());
            out.replace_range(at..end, replacement);
        }
    }
    for (rust, json) in NUMBERS {
        if let Some(rest) = out.strip_suffix(&format!("expected {rust}")) {
            out = format!("{rest}expected {json}");
        }
    }
    out.replace("expected a sequence", "expected a list")
        .replace("expected a map", "expected an object")
        .replace("unknown variant", "unknown value")
        .replace("invalid type: sequence", "invalid type: list")
        .replace("invalid type: map", "invalid type: object")
        .replace("invalid type: unit value", "invalid type: null")
}

/// Refuses percent-encoded text PostgreSQL cannot store or that is not
/// UTF-8 (`%00`, `%FF`), instead of decoding it lossily.
fn check_encoded(text: &str, what: &str) -> Result<(), ApiError> {
    let decoded = percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| ApiError::validation(format!("the {what} is not valid UTF-8 once percent-decoded"), vec![]))?;
    if decoded.contains('\0') {
        return Err(ApiError::validation(
            format!("the {what} contains a NUL character (%00)"),
            vec![],
        ));
    }
    Ok(())
}

fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    pointer
}

/// Path parameters; a segment that cannot be decoded is a 400.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        check_encoded(parts.uri.path(), "path")?;
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| ApiError::validation(format!("invalid path parameter: {}", e.body_text()), vec![]))
    }
}

/// Query parameters; an unknown or mistyped one is a 400 naming it.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        check_encoded(query, "query string")?;
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(Query).map_err(|e| {
            let name = e.path().to_string();
            let message = format!(
                "invalid query parameter {name}: {}",
                for_people(&e.into_inner().to_string())
            );
            ApiError::validation(message.clone(), vec![Issue::new(format!("?{name}"), message)])
        })
    }
}
