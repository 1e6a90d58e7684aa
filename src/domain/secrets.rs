//! Where named secrets may appear and what stands for them. A secret is
//! referenced as `{"Get": "Secrets.NAME"}`, only as the direct value of a
//! Command step's `Arguments.Env.<VAR>` (definition validation rejects it
//! anywhere else). Evaluation replaces it with a *marker*
//! `{"Secret": NAME, "Digest": <keyed digest>}`: that is what resolved
//! arguments, cache components and miss explanations hold. Only the process
//! environment gets the value ([`reveal`]).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::expr::{parse_get, Reference};

/// What stands for a secret in resolved arguments and cache components.
pub fn marker(name: &str, digest: &str) -> Value {
    json!({"Secret": name, "Digest": digest})
}

/// Whether `v` is a [`marker`].
pub fn is_marker(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.len() == 2 && m.get("Secret").is_some_and(Value::is_string)
        && m.get("Digest").is_some_and(Value::is_string))
}

/// The secret a value refers to, when it is `{"Get": "Secrets.NAME"}`.
pub fn reference(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) if m.len() == 1 => match parse_get(m.get("Get")?.as_str()?) {
            Ok(Reference::Secret(name)) => Some(name),
            _ => None,
        },
        _ => None,
    }
}

/// The secrets a Command step's raw Arguments use: `(VAR, NAME)` for each
/// Env variable whose value is a secret reference.
pub fn env_secrets(arguments: &Value) -> Vec<(String, String)> {
    let Some(env) = arguments.get("Env").and_then(Value::as_object) else {
        return Vec::new();
    };
    env.iter()
        .filter_map(|(var, v)| reference(v).map(|name| (var.clone(), name)))
        .collect()
}

/// The resolved arguments with each secret Env variable (as written in
/// `raw`) set to its value: what the process is started with. Only the
/// variables `raw` names are touched, so no value computed at run time (an
/// upstream step's output shaped like a marker) can pull a secret in.
pub fn reveal(raw: &Value, resolved: &Value, values: &BTreeMap<String, String>) -> Result<Value, String> {
    let mut out = resolved.clone();
    for (var, name) in env_secrets(raw) {
        let value = values
            .get(&name)
            .ok_or_else(|| format!("Env {var}: secret {name:?} was not loaded"))?;
        if let Some(env) = out.get_mut("Env").and_then(Value::as_object_mut) {
            env.insert(var, Value::String(value.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_secrets_are_found_and_revealed_only_where_written() {
        let raw = json!({"Shell": "x", "Env": {"A": {"Get": "Secrets.TOKEN"}, "B": "plain", "C": {"Get": "Steps.S.Outputs.x"}}});
        assert_eq!(env_secrets(&raw), [("A".to_string(), "TOKEN".to_string())]);
        let resolved =
            json!({"Shell": "x", "Env": {"A": marker("TOKEN", "d1"), "B": "plain", "C": marker("TOKEN", "d1")}});
        assert!(is_marker(&resolved["Env"]["A"]));
        let values = BTreeMap::from([("TOKEN".to_string(), "s3cret".to_string())]);
        let revealed = reveal(&raw, &resolved, &values).unwrap();
        assert_eq!(revealed["Env"]["A"], "s3cret");
        assert_eq!(revealed["Env"]["B"], "plain");
        // A marker that came from elsewhere stays a marker.
        assert!(is_marker(&revealed["Env"]["C"]));
        assert!(reveal(&raw, &resolved, &BTreeMap::new()).unwrap_err().contains("TOKEN"));
    }
}
