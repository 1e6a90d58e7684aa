//! Typed arguments of the step types that do work, built from `Arguments`
//! after every expression has been evaluated. The definition checks shapes
//! statically, but expressions can still produce the wrong kind of value, so
//! these conversions are checked again and fail with a message for the step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::params::ParamType;
use crate::domain::type_name;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandArgs {
    /// argv; exactly one of `command` and `shell` is set.
    pub command: Option<Vec<String>>,
    /// A script for `sh -c`.
    pub shell: Option<String>,
    pub env: BTreeMap<String, String>,
    pub working_directory: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub cache_inputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackArgs {
    pub output_parameters: Vec<(String, ParamType)>,
    pub url: Option<String>,
    pub timeout_seconds: Option<u64>,
    /// The SageMaker SDK's queue for the token: kept and shown, not used.
    pub sqs_queue_url: Option<String>,
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} arguments must be an object, got {}", type_name(v)))
}

/// A scalar as process text: strings raw, numbers and booleans as JSON text.
fn scalar_text(v: &Value, what: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(v.to_string()),
        other => Err(format!(
            "{what} must be a string, number or boolean, got {} {other}",
            type_name(other)
        )),
    }
}

/// An `Env` value as the process gets it: a scalar as `scalar_text`; a
/// list or an object (only an expression can give one: the definition
/// refuses them written out), such as a ForEach's whole
/// `IterationOutputs`, as its JSON text.
fn env_text(v: &Value, name: &str) -> Result<String, String> {
    match v {
        Value::Array(_) | Value::Object(_) => Ok(v.to_string()),
        _ => scalar_text(v, &format!("Env {name}")),
    }
}

fn string(v: Option<&Value>, what: &str) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{what} must be a string, got {} {other}", type_name(other))),
    }
}

/// A positive number of seconds; numeric strings are accepted because
/// parameters often arrive as strings.
fn seconds(v: Option<&Value>, what: &str) -> Result<Option<u64>, String> {
    let n = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n > 0 && n <= super::steps::MAX_TIMEOUT_SECONDS => Ok(Some(n)),
        _ => Err(format!(
            "{what} must be a whole number of seconds from 1 to {}, got {}",
            super::steps::MAX_TIMEOUT_SECONDS,
            v.map(Value::to_string).unwrap_or_default()
        )),
    }
}

fn text_list(v: Option<&Value>, what: &str) -> Result<Option<Vec<String>>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| scalar_text(item, &format!("{what}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(format!("{what} must be a list, got {}", type_name(other))),
    }
}

impl CommandArgs {
    /// Converts evaluated Command `Arguments`.
    pub fn from_resolved(v: &Value) -> Result<CommandArgs, String> {
        let obj = object(v, "Command")?;
        let command = text_list(obj.get("Command"), "Command")?;
        let shell = string(obj.get("Shell"), "Shell")?;
        match (&command, &shell) {
            (Some(c), None) if c.is_empty() => return Err("Command must not be empty".into()),
            (Some(_), None) | (None, Some(_)) => {}
            (Some(_), Some(_)) => return Err("Command and Shell are mutually exclusive".into()),
            (None, None) => return Err("either Command or Shell is required".into()),
        }
        let env = match obj.get("Env") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| Ok((k.clone(), env_text(v, k)?)))
                .collect::<Result<_, String>>()?,
            Some(other) => return Err(format!("Env must be an object, got {}", type_name(other))),
        };
        Ok(CommandArgs {
            command,
            shell,
            env,
            working_directory: string(obj.get("WorkingDirectory"), "WorkingDirectory")?,
            timeout_seconds: seconds(obj.get("TimeoutSeconds"), "TimeoutSeconds")?,
            cache_inputs: text_list(obj.get("CacheInputs"), "CacheInputs")?.unwrap_or_default(),
        })
    }
}

/// Where a Command's `CacheInputs` are, from its evaluated `Arguments`:
/// its `WorkingDirectory` and the paths. Nothing else is checked, so it
/// works on arguments whose secrets are still markers.
pub fn cache_input_paths(v: &Value) -> Result<(Option<String>, Vec<String>), String> {
    let obj = object(v, "Command")?;
    Ok((
        string(obj.get("WorkingDirectory"), "WorkingDirectory")?,
        text_list(obj.get("CacheInputs"), "CacheInputs")?.unwrap_or_default(),
    ))
}

impl CallbackArgs {
    /// Converts evaluated Callback `Arguments`. A missing `OutputType` means String.
    pub fn from_resolved(v: &Value) -> Result<CallbackArgs, String> {
        let obj = object(v, "Callback")?;
        let output_parameters = match obj.get("OutputParameters") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    let name = item
                        .get("OutputName")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("output parameter {item} needs an OutputName string"))?;
                    let kind = match item.get("OutputType") {
                        None => ParamType::String,
                        Some(t) => t
                            .as_str()
                            .and_then(ParamType::parse)
                            .ok_or_else(|| format!("output parameter {name} has unknown OutputType {t}"))?,
                    };
                    Ok((name.to_string(), kind))
                })
                .collect::<Result<_, String>>()?,
            Some(other) => return Err(format!("OutputParameters must be a list, got {}", type_name(other))),
        };
        let url = string(obj.get("Url"), "Url")?;
        if let Some(u) = &url {
            let lower = u.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err(format!("Url must be an http or https URL, got {u:?}"));
            }
        }
        Ok(CallbackArgs {
            output_parameters,
            url,
            timeout_seconds: seconds(obj.get("TimeoutSeconds"), "TimeoutSeconds")?,
            sqs_queue_url: string(obj.get("SqsQueueUrl"), "SqsQueueUrl")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_args_stringify_scalars() {
        let a = CommandArgs::from_resolved(&json!({
            "Command": ["train", 10, 0.5, true],
            "Env": {"EPOCHS": 10, "MODE": "fast", "DEBUG": false},
            "WorkingDirectory": "/tmp/x", "TimeoutSeconds": "60", "CacheInputs": ["data/"]
        }))
        .unwrap();
        assert_eq!(a.command.unwrap(), ["train", "10", "0.5", "true"]);
        assert_eq!(a.env["EPOCHS"], "10");
        assert_eq!(a.env["DEBUG"], "false");
        assert_eq!(a.timeout_seconds, Some(60));
        assert_eq!(a.cache_inputs, ["data/"]);
        let s = CommandArgs::from_resolved(&json!({"Shell": "echo hi"})).unwrap();
        assert_eq!(s.shell.as_deref(), Some("echo hi"));
        assert!(s.command.is_none() && s.env.is_empty());
    }

    #[test]
    fn command_args_reject_nested_values() {
        let e = CommandArgs::from_resolved(&json!({"Command": ["a", {"x": 1}]})).unwrap_err();
        assert!(e.contains("Command[1]") && e.contains("Object"), "{e}");
        // A list or an object an expression gave (a ForEach's whole
        // IterationOutputs) reaches the process as JSON text; null does not.
        let a = CommandArgs::from_resolved(&json!({"Shell": "x", "Env": {"A": [1, {"b": 2}]}})).unwrap();
        assert_eq!(a.env["A"], r#"[1,{"b":2}]"#);
        let e = CommandArgs::from_resolved(&json!({"Shell": "x", "Env": {"A": null}})).unwrap_err();
        assert!(e.contains("Env A"), "{e}");
        assert!(CommandArgs::from_resolved(&json!({"Shell": "x", "Command": ["y"]})).is_err());
        assert!(CommandArgs::from_resolved(&json!({})).is_err());
        assert!(CommandArgs::from_resolved(&json!({"Command": []})).is_err());
        assert!(CommandArgs::from_resolved(&json!({"Shell": "x", "TimeoutSeconds": 0})).is_err());
    }

    #[test]
    fn callback_args() {
        let a = CallbackArgs::from_resolved(&json!({
            "OutputParameters": [{"OutputName": "approved", "OutputType": "Boolean"}, {"OutputName": "note"}],
            "Url": "https://hooks.example/x", "TimeoutSeconds": 600
        }))
        .unwrap();
        assert_eq!(
            a.output_parameters,
            [
                ("approved".to_string(), ParamType::Boolean),
                ("note".to_string(), ParamType::String)
            ]
        );
        assert_eq!(a.timeout_seconds, Some(600));
        assert!(CallbackArgs::from_resolved(&json!({"Url": "ftp://x"})).is_err());
        assert!(
            CallbackArgs::from_resolved(&json!({"OutputParameters": [{"OutputName": "a", "OutputType": "Date"}]}))
                .is_err()
        );
        assert_eq!(CallbackArgs::from_resolved(&json!({})).unwrap().output_parameters, []);
    }
}
