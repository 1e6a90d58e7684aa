//! The pure domain layer: pipeline definitions (parsing and validation), the
//! step DAG, expressions, conditions, parameters, retry policies and cache
//! durations. Nothing here performs I/O or depends on the rest of the crate, so
//! the API, the store and the engine can all share one reading of a definition.

pub mod auth;
pub mod cache;
pub mod condition;
pub mod dag;
pub mod definition;
pub mod duration;
pub mod expr;
pub mod for_each;
pub mod names;
pub mod outcome;
pub mod params;
pub mod retry;
pub mod secrets;
pub mod selective;
pub mod webhook;

use std::fmt;

/// One validation problem: a JSON pointer into the checked document and a message naming the offending thing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl Issue {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Issue {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A list of names as a person reads it in a message: a JSON list
/// (`["A", "B"]`), as the SPEC writes them, never Rust's `{"A"}` set syntax.
pub fn json_list<I>(names: I) -> String
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let items: Vec<String> = names
        .into_iter()
        .map(|n| serde_json::Value::from(n.as_ref()).to_string())
        .collect();
    format!("[{}]", items.join(", "))
}

/// A JSON syntax error as a person reads it: where it is (when known) and
/// what is wrong, without serde_json's `at line N column M` suffix.
pub fn json_syntax_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let what = text.strip_suffix(&suffix).unwrap_or(&text);
    if error.line() == 0 {
        what.to_string()
    } else {
        format!("{what} (line {}, character {})", error.line(), error.column())
    }
}

/// serde_json's message without its `at line N column M` suffix.
pub fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_string()
}

/// Appends one reference token to a JSON pointer, escaping `~` and `/` as
/// RFC 6901 requires so the result can be fed back to `Value::pointer`.
pub fn pointer_push(base: &str, token: impl fmt::Display) -> String {
    let token = token.to_string();
    let mut out = String::with_capacity(base.len() + token.len() + 1);
    out.push_str(base);
    out.push('/');
    for c in token.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

/// One step of a path into a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathToken<'a> {
    Key(&'a str),
    Index(usize),
}

impl fmt::Display for PathToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathToken::Key(k) => f.write_str(k),
            PathToken::Index(i) => write!(f, "{i}"),
        }
    }
}

/// The path to the first string or key holding a NUL character, which
/// PostgreSQL stores in neither `text` nor `jsonb` (empty: the value itself).
pub fn nul_path(value: &serde_json::Value) -> Option<Vec<PathToken<'_>>> {
    use serde_json::Value;
    fn walk<'a>(value: &'a Value, path: &mut Vec<PathToken<'a>>) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, v)| {
                path.push(PathToken::Index(i));
                let found = walk(v, path);
                if !found {
                    path.pop();
                }
                found
            }),
            Value::Object(map) => map.iter().any(|(k, v)| {
                path.push(PathToken::Key(k));
                let found = k.contains('\0') || walk(v, path);
                if !found {
                    path.pop();
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = Vec::new();
    walk(value, &mut path).then_some(path)
}

/// [`nul_path`] as a JSON pointer.
pub fn find_nul(value: &serde_json::Value) -> Option<String> {
    nul_path(value).map(|path| {
        path.iter()
            .fold(String::new(), |pointer, token| pointer_push(&pointer, token))
    })
}

/// The JSON type name used in messages (`Integer` and `Float` are told apart
/// because parameters and conditions care about the difference).
pub(crate) fn type_name(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "Null",
        Value::Bool(_) => "Boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "Integer",
        Value::Number(_) => "Float",
        Value::String(_) => "String",
        Value::Array(_) => "List",
        Value::Object(_) => "Object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_push_escapes_tokens() {
        assert_eq!(pointer_push("/Steps", 3), "/Steps/3");
        assert_eq!(pointer_push("", "a/b~c"), "/a~1b~0c");
    }

    #[test]
    fn find_nul_names_the_value_or_key() {
        use serde_json::json;
        assert_eq!(find_nul(&json!({"a": [1, "x\u{0}"]})), Some("/a/1".into()));
        assert_eq!(find_nul(&json!({"a": {"k\u{0}/": 1}})), Some("/a/k\u{0}~1".into()));
        assert_eq!(find_nul(&json!({"a": "fine"})), None);
    }
}
