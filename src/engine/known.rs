//! What a plan or a start knows of a step's inputs before the execution
//! exists, as an expression resolver.

use std::collections::HashMap;

use serde_json::Value;

use crate::{
    domain::expr::{ExecutionVar, Resolver},
    ids::Arns,
};

/// Resolves what is known before the execution exists: parameters and the
/// properties of reused steps and predicted hits. Anything else makes the
/// key unknowable now.
pub struct KnownNow<'a> {
    pub parameters: &'a serde_json::Map<String, Value>,
    pub known: &'a HashMap<String, Value>,
    pub pipeline_name: &'a str,
    pub arns: &'a Arns,
    /// The keyed digest of each secret the step uses, by name.
    pub secret_digests: HashMap<String, String>,
}

impl Resolver for KnownNow<'_> {
    fn parameter(&self, name: &str) -> Option<Value> {
        self.parameters.get(name).cloned()
    }
    fn execution_var(&self, var: ExecutionVar) -> Value {
        match var {
            ExecutionVar::PipelineName => Value::String(self.pipeline_name.to_string()),
            ExecutionVar::PipelineArn => Value::String(self.arns.pipeline(self.pipeline_name)),
            // Per-execution values are not known yet.
            _ => Value::Null,
        }
    }
    fn step_properties(&self, step: &str) -> Option<Value> {
        self.known.get(step).cloned()
    }
    fn artifact_json(&self, _step: &str, _file: &str) -> Result<Value, String> {
        Err("artifact contents are not read when planning".into())
    }
    fn secret(&self, name: &str) -> Result<Value, String> {
        let digest = self
            .secret_digests
            .get(name)
            .ok_or_else(|| format!("secret {name:?} does not exist"))?;
        Ok(crate::domain::secrets::marker(name, digest))
    }
}
