//! Pipeline parameters (SPEC 2.2): their declared types, coercion of given
//! values (SageMaker clients send every value as a string), and resolution of
//! the effective values for an execution.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{pointer_push, Issue};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParamType {
    String,
    Integer,
    Float,
    Boolean,
}

impl ParamType {
    pub const ALL: [ParamType; 4] = [
        ParamType::String,
        ParamType::Integer,
        ParamType::Float,
        ParamType::Boolean,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "String",
            ParamType::Integer => "Integer",
            ParamType::Float => "Float",
            ParamType::Boolean => "Boolean",
        }
    }

    /// The type named `s` exactly as a definition spells it.
    pub fn parse(s: &str) -> Option<ParamType> {
        ParamType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    pub name: String,
    pub kind: ParamType,
    /// Already coerced to `kind`; `None` means the parameter is required.
    pub default: Option<Value>,
    pub enum_values: Option<Vec<String>>,
}

/// Coerces `v` to `p`'s type, returning the canonical JSON value: a string,
/// an integer, a float (always a JSON float, even when given as `3`), or a
/// bool. Numeric and boolean strings are accepted for the non-string types.
pub fn coerce(p: &Parameter, v: &Value) -> Result<Value, String> {
    // A list or object is named by its type, not echoed (it may be large).
    let given = || match v {
        Value::Array(_) | Value::Object(_) => format!("a {}", super::type_name(v)),
        _ => v.to_string(),
    };
    let wrong = || format!("parameter {} expects {}, got {}", p.name, p.kind.as_str(), given());
    let out = match (p.kind, v) {
        (ParamType::String, Value::String(_)) => v.clone(),
        (ParamType::Integer, Value::Number(n)) => integral(n).ok_or_else(wrong)?,
        (ParamType::Integer, Value::String(s)) => {
            let s = s.trim();
            match s.parse::<i64>() {
                Ok(i) => Value::from(i),
                Err(_) => {
                    let n: serde_json::Number = s.parse().map_err(|_| wrong())?;
                    integral(&n).ok_or_else(wrong)?
                }
            }
        }
        (ParamType::Float, Value::Number(n)) => float(n.as_f64()).ok_or_else(wrong)?,
        (ParamType::Float, Value::String(s)) => float(s.trim().parse::<f64>().ok()).ok_or_else(wrong)?,
        (ParamType::Boolean, Value::Bool(_)) => v.clone(),
        (ParamType::Boolean, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(wrong()),
        },
        _ => return Err(wrong()),
    };
    if let (Some(allowed), Value::String(s)) = (&p.enum_values, &out) {
        if !allowed.iter().any(|a| a == s) {
            return Err(format!(
                "parameter {} must be one of {}, got {}",
                p.name,
                super::json_list(allowed),
                Value::from(s.as_str())
            ));
        }
    }
    Ok(out)
}

/// An integer JSON value for `n` if it is integral (so `10.0` and `"10"` are
/// accepted for Integer but `10.5` is not).
fn integral(n: &serde_json::Number) -> Option<Value> {
    if let Some(i) = n.as_i64() {
        return Some(Value::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Some(Value::from(u));
    }
    let f = n.as_f64()?;
    // Beyond 2^63 an f64 cannot be converted to i64 exactly; refuse rather than clamp.
    (f.fract() == 0.0 && f.abs() < 9.2e18).then(|| Value::from(f as i64))
}

fn float(f: Option<f64>) -> Option<Value> {
    let f = f.filter(|f| f.is_finite())?;
    serde_json::Number::from_f64(f).map(Value::Number)
}

/// The effective parameter values of an execution: each definition default,
/// overridden by `given`. Every problem (unknown name, missing required
/// value, bad value) is collected, each at `/parameters/<name>`.
pub fn resolve_parameters(defs: &[Parameter], given: &Map<String, Value>) -> Result<Map<String, Value>, Vec<Issue>> {
    let mut issues = Vec::new();
    for name in given.keys() {
        if !defs.iter().any(|d| &d.name == name) {
            let known: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
            issues.push(Issue::new(
                pointer_push("/parameters", name),
                format!(
                    "unknown parameter {name}; the definition declares: [{}]",
                    known.join(", ")
                ),
            ));
        }
    }
    let mut out = Map::new();
    for def in defs {
        let path = pointer_push("/parameters", &def.name);
        match (given.get(&def.name), &def.default) {
            (Some(v), _) => match coerce(def, v) {
                Ok(v) => {
                    out.insert(def.name.clone(), v);
                }
                Err(e) => issues.push(Issue::new(path, e)),
            },
            (None, Some(d)) => {
                out.insert(def.name.clone(), d.clone());
            }
            (None, None) => issues.push(Issue::new(
                path,
                format!(
                    "parameter {} ({}) has no default and must be given",
                    def.name,
                    def.kind.as_str()
                ),
            )),
        }
    }
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(issues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(name: &str, kind: ParamType) -> Parameter {
        Parameter {
            name: name.into(),
            kind,
            default: None,
            enum_values: None,
        }
    }

    #[test]
    fn coercion_accepts_strings_for_scalars() {
        let int = p("Epochs", ParamType::Integer);
        assert_eq!(coerce(&int, &json!(10)), Ok(json!(10)));
        assert_eq!(coerce(&int, &json!("10")), Ok(json!(10)));
        assert_eq!(coerce(&int, &json!(" 10 ")), Ok(json!(10)));
        assert_eq!(coerce(&int, &json!(10.0)), Ok(json!(10)));
        assert_eq!(coerce(&int, &json!("-3.0")), Ok(json!(-3)));
        let fl = p("Rate", ParamType::Float);
        assert_eq!(coerce(&fl, &json!("0.5")), Ok(json!(0.5)));
        assert_eq!(coerce(&fl, &json!(3)), Ok(json!(3.0)));
        assert!(coerce(&fl, &json!(3)).unwrap().is_f64());
        let b = p("Flag", ParamType::Boolean);
        assert_eq!(coerce(&b, &json!("true")), Ok(json!(true)));
        assert_eq!(coerce(&b, &json!("False")), Ok(json!(false)));
        assert_eq!(coerce(&b, &json!(false)), Ok(json!(false)));
        let s = p("Mode", ParamType::String);
        assert_eq!(coerce(&s, &json!("x")), Ok(json!("x")));
    }

    #[test]
    fn coercion_errors_name_parameter_type_and_value() {
        let int = p("Epochs", ParamType::Integer);
        assert_eq!(
            coerce(&int, &json!("ten")).unwrap_err(),
            r#"parameter Epochs expects Integer, got "ten""#
        );
        assert_eq!(
            coerce(&int, &json!(1.5)).unwrap_err(),
            "parameter Epochs expects Integer, got 1.5"
        );
        assert!(coerce(&p("Rate", ParamType::Float), &json!("NaN")).is_err());
        assert!(coerce(&p("Rate", ParamType::Float), &json!(true)).is_err());
        assert!(coerce(&p("Flag", ParamType::Boolean), &json!(1)).is_err());
        assert_eq!(
            coerce(&p("Mode", ParamType::String), &json!(5)).unwrap_err(),
            "parameter Mode expects String, got 5"
        );
    }

    #[test]
    fn enum_values_are_enforced() {
        let mut mode = p("Mode", ParamType::String);
        mode.enum_values = Some(vec!["fast".into(), "full".into()]);
        assert!(coerce(&mode, &json!("fast")).is_ok());
        let err = coerce(&mode, &json!("slow")).unwrap_err();
        assert!(
            err.contains("Mode") && err.contains("\"fast\", \"full\"") && err.contains("\"slow\""),
            "{err}"
        );
    }

    #[test]
    fn resolution_collects_every_problem() {
        let mut epochs = p("Epochs", ParamType::Integer);
        epochs.default = Some(json!(10));
        let defs = vec![epochs, p("Data", ParamType::String), p("Rate", ParamType::Float)];
        let given = json!({"Rate": "x", "Bogus": 1});
        let issues = resolve_parameters(&defs, given.as_object().unwrap()).unwrap_err();
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["/parameters/Bogus", "/parameters/Data", "/parameters/Rate"]);
        assert!(issues[0].message.contains("Bogus"));
        assert!(issues[1].message.contains("Data"));

        let given = json!({"Data": "s3://b", "Rate": "0.25", "Epochs": "12"});
        let got = resolve_parameters(&defs, given.as_object().unwrap()).unwrap();
        assert_eq!(
            Value::Object(got),
            json!({"Epochs": 12, "Data": "s3://b", "Rate": 0.25})
        );
        let given = json!({"Data": "d", "Rate": 1});
        let got = resolve_parameters(&defs, given.as_object().unwrap()).unwrap();
        assert_eq!(got["Epochs"], json!(10));
    }
}
