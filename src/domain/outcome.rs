//! How an attempt ended, as the executor saw it: what the executor hands
//! the engine (which records it). Pure data, so the executor need not know
//! the engine.

use serde_json::{json, Value};

/// How an attempt ended, as the executor saw it.
#[derive(Debug, Clone)]
pub enum StepOutcome {
    Succeeded {
        properties: Value,
        metadata: Value,
        exit_code: Option<i32>,
        /// The key of a run that did not use the cache, recorded with its
        /// success: later runs are compared with it (`"changed"`, early
        /// cut-off). A run that used the cache recorded its key already.
        key: Option<Box<RunKey>>,
    },
    Failed {
        error_type: String,
        message: String,
        metadata: Value,
        exit_code: Option<i32>,
        /// A Fail step: the execution fails with its message and cannot be retried.
        by_fail_step: bool,
    },
    /// The process was ended because its execution was stopped.
    Stopped { message: String },
}

/// A run's cache key and the components it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct RunKey {
    pub key: String,
    pub components: Value,
}

impl StepOutcome {
    /// The outcome with `value` at `key` of its metadata (a stopped step
    /// has none).
    pub fn with_metadata(mut self, key: &str, value: Value) -> StepOutcome {
        if let StepOutcome::Succeeded { metadata, .. } | StepOutcome::Failed { metadata, .. } = &mut self {
            if !metadata.is_object() {
                *metadata = json!({});
            }
            metadata[key] = value;
        }
        self
    }

    pub fn failed(error_type: &str, message: impl Into<String>) -> StepOutcome {
        StepOutcome::Failed {
            error_type: error_type.to_string(),
            message: message.into(),
            metadata: json!({}),
            exit_code: None,
            by_fail_step: false,
        }
    }
}
