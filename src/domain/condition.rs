//! Condition-step conditions in SageMaker's syntax (SPEC 2.5): static shape
//! checks for definitions, and evaluation of conditions whose expressions have
//! already been substituted. Comparing incompatible types is an error, not
//! `false`, so a mistyped pipeline fails loudly instead of taking a branch.

use std::cmp::Ordering;

use serde_json::Value;

use super::{expr, pointer_push, type_name, Issue};

/// Condition types and the keys each takes besides `Type`.
const TYPES: [(&str, &[&str]); 8] = [
    ("Equals", &["LeftValue", "RightValue"]),
    ("GreaterThan", &["LeftValue", "RightValue"]),
    ("GreaterThanOrEqualTo", &["LeftValue", "RightValue"]),
    ("LessThan", &["LeftValue", "RightValue"]),
    ("LessThanOrEqualTo", &["LeftValue", "RightValue"]),
    ("In", &["QueryValue", "Values"]),
    ("Not", &["Condition", "Expression"]),
    ("Or", &["Conditions"]),
];

fn type_names() -> String {
    TYPES.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
}

/// Evaluates a list of conditions (ANDed). Every expression in them must
/// already have been replaced by its value.
pub fn evaluate_conditions(conditions: &Value) -> Result<bool, String> {
    let list = conditions
        .as_array()
        .ok_or_else(|| format!("Conditions must be a list, got {}", type_name(conditions)))?;
    for c in list {
        if !evaluate_one(c)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `Not` takes `Condition` (stepwise) or `Expression` (SageMaker), either one
/// condition object or a list of them (ANDed).
fn evaluate_operand(v: &Value) -> Result<bool, String> {
    match v {
        Value::Array(_) => evaluate_conditions(v),
        _ => evaluate_one(v),
    }
}

fn evaluate_one(c: &Value) -> Result<bool, String> {
    let kind = c
        .get("Type")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a condition needs a Type, got {c}"))?;
    let get = |k: &str| c.get(k).ok_or_else(|| format!("{kind} condition is missing {k}"));
    match kind {
        "Equals" | "GreaterThan" | "GreaterThanOrEqualTo" | "LessThan" | "LessThanOrEqualTo" => {
            let (l, r) = (get("LeftValue")?, get("RightValue")?);
            if kind == "Equals" {
                return equals(l, r).ok_or_else(|| incompatible(kind, l, r));
            }
            let ord = order(kind, l, r)?;
            Ok(match kind {
                "GreaterThan" => ord == Ordering::Greater,
                "GreaterThanOrEqualTo" => ord != Ordering::Less,
                "LessThan" => ord == Ordering::Less,
                _ => ord != Ordering::Greater,
            })
        }
        "In" => {
            let q = get("QueryValue")?;
            let values = get("Values")?
                .as_array()
                .ok_or_else(|| format!("In condition Values must be a list, got {}", c["Values"]))?;
            // Differently-typed candidates simply do not match: a list may mix types.
            Ok(values.iter().any(|v| equals(q, v) == Some(true)))
        }
        "Not" => {
            let inner = c
                .get("Condition")
                .or_else(|| c.get("Expression"))
                .ok_or("Not condition is missing Condition")?;
            Ok(!evaluate_operand(inner)?)
        }
        "Or" => {
            let list = get("Conditions")?
                .as_array()
                .ok_or("Or condition Conditions must be a list")?;
            for inner in list {
                if evaluate_one(inner)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        other => Err(format!("unknown condition type {other:?}; supported: {}", type_names())),
    }
}

fn incompatible(kind: &str, l: &Value, r: &Value) -> String {
    format!(
        "{kind} cannot compare {} {} with {} {}",
        type_name(l),
        l,
        type_name(r),
        r
    )
}

/// Equality for values of compatible types; `None` when the types cannot be
/// compared (numbers compare numerically across Integer and Float).
fn equals(l: &Value, r: &Value) -> Option<bool> {
    match (l, r) {
        (Value::Number(_), Value::Number(_)) => Some(num_cmp(l, r)? == Ordering::Equal),
        (Value::String(a), Value::String(b)) => Some(a == b),
        (Value::Bool(a), Value::Bool(b)) => Some(a == b),
        (Value::Null, Value::Null) => Some(true),
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => Some(l == r),
        _ => None,
    }
}

fn order(kind: &str, l: &Value, r: &Value) -> Result<Ordering, String> {
    match (l, r) {
        (Value::Number(_), Value::Number(_)) => num_cmp(l, r).ok_or_else(|| incompatible(kind, l, r)),
        (Value::String(a), Value::String(b)) => Ok(a.cmp(b)),
        _ => Err(incompatible(kind, l, r)),
    }
}

/// Integers compare exactly (an f64 would round above 2^53); anything with a
/// fraction compares as f64.
fn num_cmp(l: &Value, r: &Value) -> Option<Ordering> {
    match (l.as_i64(), r.as_i64()) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => match (l.as_u64(), r.as_u64()) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => l.as_f64()?.partial_cmp(&r.as_f64()?),
        },
    }
}

/// Static check of one condition object at `path`: a known `Type`, its
/// required keys present, no unknown keys; nested `Not`/`Or` are checked too.
/// Values are not type-checked here: they are usually expressions.
pub fn check_condition_shape(c: &Value, path: &str, issues: &mut Vec<Issue>) {
    let Some(obj) = c.as_object() else {
        issues.push(Issue::new(
            path,
            format!("a condition must be an object, got {}", type_name(c)),
        ));
        return;
    };
    let kind = match obj.get("Type") {
        Some(Value::String(k)) => k.as_str(),
        _ => {
            issues.push(Issue::new(
                pointer_push(path, "Type"),
                format!("a condition needs a Type, one of: {}", type_names()),
            ));
            return;
        }
    };
    let Some((_, keys)) = TYPES.iter().find(|(t, _)| *t == kind) else {
        issues.push(Issue::new(
            pointer_push(path, "Type"),
            format!("unknown condition type {kind:?}; supported: {}", type_names()),
        ));
        return;
    };
    for k in obj.keys().filter(|k| *k != "Type" && !keys.contains(&k.as_str())) {
        issues.push(Issue::new(
            pointer_push(path, k),
            format!(
                "unknown key {k:?} in {kind} condition; allowed: Type, {}",
                keys.join(", ")
            ),
        ));
    }
    match kind {
        "Not" => {
            let present: Vec<&str> = keys.iter().copied().filter(|k| obj.contains_key(*k)).collect();
            match present.as_slice() {
                [k] => check_operand(&obj[*k], &pointer_push(path, k), issues),
                [] => issues.push(Issue::new(path, "Not condition needs Condition (or Expression)")),
                _ => issues.push(Issue::new(
                    path,
                    "Not condition takes Condition or Expression, not both",
                )),
            }
        }
        "Or" => match obj.get("Conditions") {
            Some(Value::Array(list)) if !list.is_empty() => {
                let p = pointer_push(path, "Conditions");
                for (i, inner) in list.iter().enumerate() {
                    check_condition_shape(inner, &pointer_push(&p, i), issues);
                }
            }
            _ => issues.push(Issue::new(
                pointer_push(path, "Conditions"),
                "Or condition needs Conditions, a non-empty list",
            )),
        },
        _ => {
            for k in keys.iter().filter(|k| !obj.contains_key(**k)) {
                issues.push(Issue::new(path, format!("{kind} condition is missing {k}")));
            }
            if let Some(values) = obj.get("Values") {
                if !values.is_array() && !expr::is_expression(values) {
                    issues.push(Issue::new(
                        pointer_push(path, "Values"),
                        format!("In condition Values must be a list, got {}", type_name(values)),
                    ));
                }
            }
        }
    }
}

fn check_operand(v: &Value, path: &str, issues: &mut Vec<Issue>) {
    match v {
        Value::Array(list) if !list.is_empty() => {
            for (i, inner) in list.iter().enumerate() {
                check_condition_shape(inner, &pointer_push(path, i), issues);
            }
        }
        Value::Array(_) => issues.push(Issue::new(path, "Not condition operand list is empty")),
        _ => check_condition_shape(v, path, issues),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(v: Value) -> Result<bool, String> {
        evaluate_conditions(&v)
    }

    #[test]
    fn comparisons() {
        let cmp = |t: &str, l: Value, r: Value| eval(json!([{"Type": t, "LeftValue": l, "RightValue": r}]));
        assert_eq!(cmp("GreaterThanOrEqualTo", json!(0.9), json!(0.9)), Ok(true));
        assert_eq!(cmp("GreaterThan", json!(1), json!(0.5)), Ok(true));
        assert_eq!(cmp("LessThan", json!(1), json!(2)), Ok(true));
        assert_eq!(cmp("LessThanOrEqualTo", json!(3), json!(2)), Ok(false));
        assert_eq!(cmp("Equals", json!(2), json!(2.0)), Ok(true));
        assert_eq!(cmp("Equals", json!(u64::MAX), json!(u64::MAX)), Ok(true));
        assert_eq!(
            cmp("Equals", json!(9007199254740993i64), json!(9007199254740992i64)),
            Ok(false)
        );
        assert_eq!(cmp("Equals", json!("a"), json!("a")), Ok(true));
        assert_eq!(cmp("Equals", json!(true), json!(false)), Ok(false));
        assert_eq!(cmp("LessThan", json!("abc"), json!("abd")), Ok(true));
    }

    #[test]
    fn incompatible_types_are_errors_naming_both() {
        let e = eval(json!([{"Type": "GreaterThan", "LeftValue": "abc", "RightValue": 5}])).unwrap_err();
        assert_eq!(e, r#"GreaterThan cannot compare String "abc" with Integer 5"#);
        let e = eval(json!([{"Type": "Equals", "LeftValue": "5", "RightValue": 5.5}])).unwrap_err();
        assert_eq!(e, r#"Equals cannot compare String "5" with Float 5.5"#);
        let e = eval(json!([{"Type": "LessThan", "LeftValue": true, "RightValue": false}])).unwrap_err();
        assert!(e.contains("Boolean true") && e.contains("Boolean false"), "{e}");
    }

    #[test]
    fn logical_forms() {
        assert_eq!(eval(json!([])), Ok(true));
        assert_eq!(
            eval(json!([{"Type": "In", "QueryValue": 2, "Values": ["2", 1, 2.0]}])),
            Ok(true)
        );
        assert_eq!(
            eval(json!([{"Type": "In", "QueryValue": "x", "Values": ["a"]}])),
            Ok(false)
        );
        let t = json!({"Type": "Equals", "LeftValue": 1, "RightValue": 1});
        let f = json!({"Type": "Equals", "LeftValue": 1, "RightValue": 2});
        assert_eq!(eval(json!([t, f])), Ok(false));
        assert_eq!(eval(json!([{"Type": "Not", "Condition": f}])), Ok(true));
        assert_eq!(eval(json!([{"Type": "Not", "Expression": t}])), Ok(false));
        assert_eq!(eval(json!([{"Type": "Not", "Expression": [t, f]}])), Ok(true));
        assert_eq!(eval(json!([{"Type": "Or", "Conditions": [f, t]}])), Ok(true));
        assert_eq!(eval(json!([{"Type": "Or", "Conditions": [f, f]}])), Ok(false));
        assert!(eval(json!([{"Type": "Between"}])).unwrap_err().contains("Between"));
        assert!(eval(json!([{"Type": "Equals", "LeftValue": 1}]))
            .unwrap_err()
            .contains("RightValue"));
        assert!(eval(json!({})).is_err());
    }

    #[test]
    fn shape_checks() {
        let mut issues = Vec::new();
        let c = json!([
            {"Type": "Equals", "LeftValue": 1},
            {"Type": "Between", "LeftValue": 1},
            {"Type": "In", "QueryValue": 1, "Values": 3, "Extra": 0},
            {"Type": "Not", "Expression": [{"Type": "Or", "Conditions": []}]},
            {"Type": "Not", "Condition": {"Type": "LessThan", "LeftValue": 1, "RightValue": {"Get": "Parameters.X"}}},
            "nope"
        ]);
        for (i, item) in c.as_array().unwrap().iter().enumerate() {
            check_condition_shape(item, &format!("/C/{i}"), &mut issues);
        }
        let got: Vec<_> = issues.iter().map(|i| (i.path.as_str(), i.message.as_str())).collect();
        assert_eq!(got[0], ("/C/0", "Equals condition is missing RightValue"));
        assert_eq!(got[1].0, "/C/1/Type");
        assert!(got[1].1.contains("\"Between\"") && got[1].1.contains("GreaterThanOrEqualTo"));
        assert_eq!(got[2].0, "/C/2/Extra");
        assert_eq!(got[3].0, "/C/2/Values");
        assert_eq!(got[4].0, "/C/3/Expression/0/Conditions");
        assert_eq!(got[5].0, "/C/5");
        assert_eq!(got.len(), 6);
    }
}
