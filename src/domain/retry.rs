//! Step retry policies (SPEC 3.3), in SageMaker's `RetryPolicies` shape, and
//! the decision "retry this failed attempt, and after how long?".

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{pointer_push, type_name, Issue};

/// The exception types a step attempt can fail with.
pub const EXCEPTION_TYPES: [&str; 5] = [
    "Step.SERVICE_FAULT",
    "Step.THROTTLING",
    "Command.FAILED",
    "Command.TIMEOUT",
    "Callback.TIMEOUT",
];

/// SageMaker's job exception types: accepted in any step's policies so that
/// SDK definitions load unchanged, and never matched (stepwise runs no
/// SageMaker job, so no attempt fails with one of these).
pub const SAGEMAKER_EXCEPTION_TYPES: [&str; 3] = [
    "SageMaker.JOB_INTERNAL_ERROR",
    "SageMaker.CAPACITY_ERROR",
    "SageMaker.RESOURCE_LIMIT",
];

/// Attempts (in total) granted to `Step.SERVICE_FAULT` when no policy covers
/// it: a lost worker should not fail a pipeline on its own.
pub const DEFAULT_SERVICE_FAULT_ATTEMPTS: u32 = 3;

const KEYS: [&str; 5] = [
    "ExceptionType",
    "IntervalSeconds",
    "BackoffRate",
    "MaxAttempts",
    "ExpireAfterMin",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub exception_types: Vec<String>,
    /// Delay before the first retry, 1..=300 (default 1).
    pub interval_seconds: u32,
    /// Multiplier applied to the delay for each further retry, 1.0..=10.0 (default 2.0).
    pub backoff_rate: f64,
    /// Total attempts allowed, 1..=20. Exactly one of this and
    /// `expire_after_min` is set by the parser.
    pub max_attempts: Option<u32>,
    /// Minutes since the first attempt started after which no retry starts, 1..=14400.
    pub expire_after_min: Option<u32>,
}

impl RetryPolicy {
    pub fn matches(&self, exception: &str) -> bool {
        self.exception_types.iter().any(|t| t == exception)
    }

    /// Delay before attempt number `next_attempt` (the first retry is attempt
    /// 2): `interval * backoff^(next_attempt - 2)`, saturating at `Duration::MAX`.
    pub fn delay_before_attempt(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2);
        let exp = i32::try_from(exp).unwrap_or(i32::MAX);
        let secs = f64::from(self.interval_seconds) * self.backoff_rate.powi(exp);
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }

    /// Whether another attempt may start after `attempts_done` attempts.
    pub fn allows(&self, attempts_done: u32, first_attempt_started: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let by_count = match self.max_attempts {
            Some(max) => attempts_done < max,
            None => true,
        };
        let by_time = match self.expire_after_min {
            Some(min) => now.signed_duration_since(first_attempt_started).num_seconds() < i64::from(min) * 60,
            None => true,
        };
        by_count && by_time
    }
}

/// Decides whether a step whose attempt number `attempts_done` just failed
/// with `exception` is retried, and after what delay. The first policy that
/// lists the exception decides; `Step.SERVICE_FAULT` falls back to a default of
/// three attempts one second apart.
pub fn next_retry(
    policies: &[RetryPolicy],
    exception: &str,
    attempts_done: u32,
    first_started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if let Some(p) = policies.iter().find(|p| p.matches(exception)) {
        return p
            .allows(attempts_done, first_started, now)
            .then(|| p.delay_before_attempt(attempts_done.saturating_add(1)));
    }
    (exception == "Step.SERVICE_FAULT" && attempts_done < DEFAULT_SERVICE_FAULT_ATTEMPTS)
        .then_some(Duration::from_secs(1))
}

/// Parses a step's `RetryPolicies` list, recording every problem in `issues`
/// (with pointers under `path`) and returning the policies that were valid.
pub fn parse_retry_policies(v: &Value, path: &str, issues: &mut Vec<Issue>) -> Vec<RetryPolicy> {
    let Some(list) = v.as_array() else {
        issues.push(Issue::new(
            path,
            format!("RetryPolicies must be a list, got {}", type_name(v)),
        ));
        return Vec::new();
    };
    list.iter()
        .enumerate()
        .filter_map(|(i, p)| parse_one(p, &pointer_push(path, i), issues))
        .collect()
}

fn parse_one(v: &Value, path: &str, issues: &mut Vec<Issue>) -> Option<RetryPolicy> {
    let Some(obj) = v.as_object() else {
        issues.push(Issue::new(
            path,
            format!("a retry policy must be an object, got {}", type_name(v)),
        ));
        return None;
    };
    let before = issues.len();
    for key in obj.keys().filter(|k| !KEYS.contains(&k.as_str())) {
        issues.push(Issue::new(
            pointer_push(path, key),
            format!("unknown retry policy key {key:?}; allowed: {}", KEYS.join(", ")),
        ));
    }

    let mut exception_types = Vec::new();
    let et_path = pointer_push(path, "ExceptionType");
    match obj.get("ExceptionType") {
        None => issues.push(Issue::new(&et_path, "ExceptionType is required")),
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut unknown = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(s) if EXCEPTION_TYPES.contains(&s) => exception_types.push(s.to_string()),
                    Some(s) if SAGEMAKER_EXCEPTION_TYPES.contains(&s) => {}
                    _ => unknown.push(item.to_string()),
                }
            }
            if !unknown.is_empty() {
                issues.push(Issue::new(
                    &et_path,
                    format!(
                        "unknown exception type(s) {}; supported: {} (SageMaker's {} are accepted and never match)",
                        unknown.join(", "),
                        EXCEPTION_TYPES.join(", "),
                        SAGEMAKER_EXCEPTION_TYPES.join(", ")
                    ),
                ));
            }
        }
        Some(_) => issues.push(Issue::new(
            &et_path,
            format!(
                "ExceptionType must be a non-empty list of: {}",
                EXCEPTION_TYPES.join(", ")
            ),
        )),
    }

    let interval_seconds = int_in(obj.get("IntervalSeconds"), "IntervalSeconds", 1, 300, path, issues).unwrap_or(1);
    let max_attempts = int_in(obj.get("MaxAttempts"), "MaxAttempts", 1, 20, path, issues);
    let expire_after_min = int_in(obj.get("ExpireAfterMin"), "ExpireAfterMin", 1, 14400, path, issues);
    let backoff_rate = match obj.get("BackoffRate") {
        None => 2.0,
        Some(b) => match b.as_f64() {
            Some(r) if (1.0..=10.0).contains(&r) => r,
            _ => {
                issues.push(Issue::new(
                    pointer_push(path, "BackoffRate"),
                    format!("BackoffRate must be a number from 1.0 to 10.0, got {b}"),
                ));
                2.0
            }
        },
    };
    if obj.contains_key("MaxAttempts") && obj.contains_key("ExpireAfterMin") {
        issues.push(Issue::new(
            path,
            "a retry policy takes MaxAttempts or ExpireAfterMin, not both",
        ));
    }
    let max_attempts = match (max_attempts, expire_after_min) {
        (None, None) => Some(5),
        (m, _) => m,
    };
    (issues.len() == before).then_some(RetryPolicy {
        exception_types,
        interval_seconds,
        backoff_rate,
        max_attempts,
        expire_after_min,
    })
}

fn int_in(v: Option<&Value>, key: &str, min: u32, max: u32, path: &str, issues: &mut Vec<Issue>) -> Option<u32> {
    let v = v?;
    match v.as_u64() {
        Some(n) if (u64::from(min)..=u64::from(max)).contains(&n) => u32::try_from(n).ok(),
        _ => {
            issues.push(Issue::new(
                pointer_push(path, key),
                format!("{key} must be an integer from {min} to {max}, got {v}"),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn parse(v: Value) -> (Vec<RetryPolicy>, Vec<Issue>) {
        let mut issues = Vec::new();
        let p = parse_retry_policies(&v, "/Steps/0/RetryPolicies", &mut issues);
        (p, issues)
    }

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn defaults_apply() {
        let (p, issues) = parse(json!([{"ExceptionType": ["Command.FAILED"]}]));
        assert!(issues.is_empty());
        assert_eq!(p[0].interval_seconds, 1);
        assert_eq!(p[0].backoff_rate, 2.0);
        assert_eq!(p[0].max_attempts, Some(5));
        assert_eq!(p[0].expire_after_min, None);
    }

    #[test]
    fn sagemaker_job_exception_types_are_accepted_and_never_match() {
        let (p, issues) = parse(json!([
            {"ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR", "SageMaker.CAPACITY_ERROR", "SageMaker.RESOURCE_LIMIT"], "MaxAttempts": 9},
            {"ExceptionType": ["Step.THROTTLING", "SageMaker.CAPACITY_ERROR"], "MaxAttempts": 2}
        ]));
        assert!(issues.is_empty(), "{issues:#?}");
        assert_eq!(p.len(), 2);
        for e in EXCEPTION_TYPES.iter().filter(|e| **e != "Step.THROTTLING") {
            assert!(!p[0].matches(e) && !p[1].matches(e), "{e}");
        }
        assert!(p[1].matches("Step.THROTTLING"));
        assert_eq!(next_retry(&p, "Command.FAILED", 1, t(0), t(1)), None);
        let (_, issues) = parse(json!([{"ExceptionType": ["SageMaker.NOPE"]}]));
        assert!(issues[0].message.contains("SageMaker.NOPE"), "{issues:#?}");
    }

    #[test]
    fn max_attempts_out_of_bounds() {
        let (p, issues) = parse(json!([{"ExceptionType": ["Command.FAILED"], "MaxAttempts": 21}]));
        assert!(p.is_empty());
        assert_eq!(issues[0].path, "/Steps/0/RetryPolicies/0/MaxAttempts");
        assert!(issues[0].message.contains("MaxAttempts") && issues[0].message.contains("21"));
    }

    #[test]
    fn both_limits_rejected() {
        let (_, issues) = parse(json!([
            {"ExceptionType": ["Command.FAILED"], "MaxAttempts": 2, "ExpireAfterMin": 5}
        ]));
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "/Steps/0/RetryPolicies/0");
        assert!(issues[0].message.contains("MaxAttempts or ExpireAfterMin"));
    }

    #[test]
    fn other_bounds_and_keys() {
        let (_, issues) = parse(json!([{
            "ExceptionType": ["Sagemaker.JOB_INTERNAL_ERROR", "Command.FAILED"],
            "IntervalSeconds": 0, "BackoffRate": 11.0, "ExpireAfterMin": 14401, "Extra": 1
        }]));
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/Steps/0/RetryPolicies/0/Extra",
                "/Steps/0/RetryPolicies/0/ExceptionType",
                "/Steps/0/RetryPolicies/0/IntervalSeconds",
                "/Steps/0/RetryPolicies/0/ExpireAfterMin",
                "/Steps/0/RetryPolicies/0/BackoffRate",
            ]
        );
        assert!(issues[1].message.contains("Sagemaker.JOB_INTERNAL_ERROR"));
        assert!(issues[1].message.contains("Callback.TIMEOUT"));
        let (_, issues) = parse(json!([{"ExceptionType": []}]));
        assert_eq!(issues[0].path, "/Steps/0/RetryPolicies/0/ExceptionType");
        let (_, issues) = parse(json!({}));
        assert_eq!(issues[0].path, "/Steps/0/RetryPolicies");
    }

    #[test]
    fn delays_grow_by_backoff() {
        let (p, _) = parse(
            json!([{"ExceptionType": ["Command.FAILED"], "IntervalSeconds": 5, "BackoffRate": 2.0, "MaxAttempts": 4}]),
        );
        let p = &p[0];
        assert_eq!(p.delay_before_attempt(2), Duration::from_secs(5));
        assert_eq!(p.delay_before_attempt(3), Duration::from_secs(10));
        assert_eq!(p.delay_before_attempt(4), Duration::from_secs(20));
        let huge = RetryPolicy {
            backoff_rate: 10.0,
            ..p.clone()
        };
        assert_eq!(huge.delay_before_attempt(u32::MAX), Duration::MAX);
        assert_eq!(
            next_retry(std::slice::from_ref(p), "Command.FAILED", 1, t(0), t(1)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            next_retry(std::slice::from_ref(p), "Command.FAILED", 3, t(0), t(1)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            next_retry(std::slice::from_ref(p), "Command.FAILED", 4, t(0), t(1)),
            None
        );
        assert_eq!(
            next_retry(std::slice::from_ref(p), "Command.TIMEOUT", 1, t(0), t(1)),
            None
        );
    }

    #[test]
    fn expire_after_min_limits_by_time() {
        let (p, _) = parse(json!([{"ExceptionType": ["Command.TIMEOUT"], "ExpireAfterMin": 2}]));
        assert_eq!(p[0].max_attempts, None);
        assert!(p[0].allows(100, t(0), t(119)));
        assert!(!p[0].allows(1, t(0), t(120)));
    }

    #[test]
    fn service_fault_default_and_first_match_wins() {
        assert_eq!(
            next_retry(&[], "Step.SERVICE_FAULT", 1, t(0), t(0)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            next_retry(&[], "Step.SERVICE_FAULT", 2, t(0), t(0)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(next_retry(&[], "Step.SERVICE_FAULT", 3, t(0), t(0)), None);
        assert_eq!(next_retry(&[], "Command.FAILED", 1, t(0), t(0)), None);
        let (p, _) = parse(json!([
            {"ExceptionType": ["Step.SERVICE_FAULT"], "MaxAttempts": 1},
            {"ExceptionType": ["Step.SERVICE_FAULT"], "MaxAttempts": 9}
        ]));
        assert_eq!(next_retry(&p, "Step.SERVICE_FAULT", 1, t(0), t(0)), None);
    }
}
