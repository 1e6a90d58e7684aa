//! What a start (or its plan) asks for, and how it can be refused.

use serde_json::Value;

use crate::domain::{definition::Definition, Issue};

/// A start request, already shape-checked by the API.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub parameters: serde_json::Map<String, Value>,
    pub pipeline_version: Option<i32>,
    pub client_request_token: Option<String>,
    pub selective_execution: Option<SelectiveRequest>,
    /// None when the request did not say: `use`, except that selected steps
    /// of a selective execution then bypass the lookup (SPEC 5 rule 7).
    pub cache_mode: Option<CacheMode>,
    pub max_parallel_steps: Option<i32>,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// SHA-256 of the canonical request body, for idempotent starts.
    pub request_hash: String,
}

#[derive(Debug, Clone)]
pub struct SelectiveRequest {
    pub source_execution: Option<String>,
    pub selected_steps: crate::domain::selective::SelectedSteps,
    pub inherit_parameters: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    #[default]
    Use,
    Refresh,
    Off,
}

impl CacheMode {
    pub const ALL: [CacheMode; 3] = [CacheMode::Use, CacheMode::Refresh, CacheMode::Off];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Use => "use",
            CacheMode::Refresh => "refresh",
            CacheMode::Off => "off",
        }
    }
}

/// Read by hand so that a wrong value is told the accepted names: serde's
/// derived enum answers a number with a bare syntax error.
impl<'de> serde::Deserialize<'de> for CacheMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Names;
        impl serde::de::Visitor<'_> for Names {
            type Value = CacheMode;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                let names: Vec<String> = CacheMode::ALL.iter().map(|m| format!("{:?}", m.as_str())).collect();
                write!(f, "one of {}", names.join(", "))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CacheMode, E> {
                CacheMode::ALL
                    .into_iter()
                    .find(|mode| mode.as_str() == v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_str(Names)
    }
}

#[derive(Debug)]
pub enum StartError {
    Invalid { message: String, issues: Vec<Issue> },
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for StartError {
    fn from(e: crate::store::StoreError) -> Self {
        StartError::Store(e)
    }
}

impl From<sqlx::Error> for StartError {
    fn from(e: sqlx::Error) -> Self {
        StartError::Store(e.into())
    }
}

impl StartError {
    pub fn invalid(message: impl Into<String>, issues: Vec<Issue>) -> StartError {
        StartError::Invalid {
            message: message.into(),
            issues,
        }
    }
}

pub fn resolve_parameters(
    definition: &Definition,
    given: &serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, StartError> {
    definition.resolve_parameters(given).map_err(|issues| {
        let message = match issues.as_slice() {
            [one] => one.message.clone(),
            many => format!("{} parameter problems, see details", many.len()),
        };
        StartError::invalid(message, issues)
    })
}
