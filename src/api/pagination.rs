//! `limit` and the opaque `next_token` of list endpoints. A token is the
//! base64 of the last item's sort key, so pages stay stable under inserts.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::{de::DeserializeOwned, Serialize};

use super::error::ApiError;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;
/// What `limit` must be, as an error message says it.
pub const LIMIT_EXPECTED: &str = "a whole number from 1 to 1000";

pub fn limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(
            "?limit",
            format!("limit: expected {LIMIT_EXPECTED}, got {n}"),
        )),
    }
}

pub fn encode<K: Serialize>(key: &K) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(key).expect("sort keys serialize"))
}

/// The answer to a `next_token` this server did not return.
pub fn bad_token() -> ApiError {
    ApiError::invalid("?next_token", "next_token is not a token this server returned")
}

pub fn decode<K: DeserializeOwned>(token: Option<&str>) -> Result<Option<K>, ApiError> {
    let Some(token) = token else { return Ok(None) };
    let bad = bad_token;
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    // No token this server returns holds a NUL, which PostgreSQL cannot
    // take as text: a forged one is refused here, not by the database.
    if crate::domain::find_nul(&value).is_some() {
        return Err(bad());
    }
    serde_json::from_value(value).map(Some).map_err(|_| bad())
}

/// The token for the page after `items`, when the page was full.
pub fn next_token<T, K: Serialize>(items: &[T], limit: i64, key: impl Fn(&T) -> K) -> Option<String> {
    if items.len() as i64 == limit {
        items.last().map(|last| encode(&key(last)))
    } else {
        None
    }
}
