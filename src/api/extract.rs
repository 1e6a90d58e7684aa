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
            let name = name_of(error.path());
            let inner = error.into_inner();
            // serde_json calls some wrong values syntax errors (a number
            // where a name from a list belongs): only a body that does not
            // parse as JSON at all is called malformed.
            let value = match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(value) => value,
                Err(syntax) => {
                    let message = format!("request body is not valid JSON: {}", json_syntax_error(&syntax));
                    return Err(ApiError::invalid(pointer, message));
                }
            };
            let serde_text = without_position(&inner);
            let message = match (expected_of(&serde_text), value.pointer(&pointer)) {
                (Some(expected), Some(got)) if name.is_empty() => {
                    format!("the request body must be {expected}, got {}", describe(got))
                }
                (Some(expected), Some(got)) => format!("{name}: expected {expected}, got {}", describe(got)),
                _ if name.is_empty() => format!("invalid request body: {}", for_people(&serde_text)),
                _ => format!("{name}: {}", for_people(&serde_text)),
            };
            Err(ApiError::invalid(pointer, message))
        }
    }
}

/// What serde's message says was expected, in JSON terms, when the message
/// is about a value of the wrong type or out of range; `None` for the
/// others (a missing or unknown field, a visitor's own message).
fn expected_of(serde_text: &str) -> Option<String> {
    let about_a_value = [
        "invalid type: ",
        "invalid value: ",
        "invalid length ",
        "unknown variant ",
    ]
    .iter()
    .any(|start| serde_text.starts_with(start));
    if !about_a_value {
        return None;
    }
    // What came is quoted before it and may hold anything; what was expected
    // is last.
    let at = serde_text.rfind(", expected ")?;
    let expected = &serde_text[at + ", expected ".len()..];
    Some(if expected.starts_with("struct ") || expected == "a map" {
        "a JSON object".to_string()
    } else {
        for_people(&format!("expected {expected}"))
            .trim_start_matches("expected ")
            .replace('`', "\"")
    })
}

/// A JSON value as a message names it: `the number 3`, `an array`, `"abc"`.
fn describe(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => quoted(s),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Text as a message quotes it, cut to a readable length.
fn quoted(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    if text.chars().count() > MAX_CHARS {
        format!("\"{}...\"", text.chars().take(MAX_CHARS).collect::<String>())
    } else {
        format!("\"{text}\"")
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

/// The field a path leads to, as a person writes it:
/// `selective_execution.selected_steps[0]`; empty for the body itself.
fn name_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut name = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => name.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    name
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
            let serde_text = e.into_inner().to_string();
            let given = form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.into_owned());
            let message = match (query_expected(&name, &serde_text), given) {
                (Some(expected), Some(given)) => format!("{name}: expected {expected}, got {}", quoted(&given)),
                _ => format!("invalid query parameter {name}: {}", for_people(&serde_text)),
            };
            ApiError::validation(message.clone(), vec![Issue::new(format!("?{name}"), message)])
        })
    }
}

/// What a query parameter should have held, when serde's message is about
/// text that does not read as the parameter's type.
fn query_expected(name: &str, serde_text: &str) -> Option<String> {
    const NOT_AN_INTEGER: [&str; 4] = [
        "invalid digit found in string",
        "number too large to fit in target type",
        "number too small to fit in target type",
        "cannot parse integer from empty string",
    ];
    if NOT_AN_INTEGER.contains(&serde_text) {
        return Some(match name {
            "limit" => super::pagination::LIMIT_EXPECTED.to_string(),
            "wait_seconds" => "a whole number of seconds".to_string(),
            "offset" => "a whole number of bytes".to_string(),
            _ => "a whole number".to_string(),
        });
    }
    if serde_text == "invalid float literal" {
        return Some("a number".to_string());
    }
    if serde_text.starts_with("provided string was not `true` or `false`") {
        return Some("true or false".to_string());
    }
    expected_of(serde_text)
}
