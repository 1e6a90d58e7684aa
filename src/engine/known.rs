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
    /// `worker.max_outputs_bytes`: the most of an artifact file read.
    pub max_outputs_bytes: u64,
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
    /// Read as the worker reads it, from the artifacts of a step whose
    /// outputs are known now (reused, or a predicted cache hit).
    fn artifact_json(&self, step: &str, file: &str) -> Result<Value, String> {
        crate::content::artifacts::read_json(self.known.get(step), step, file, self.max_outputs_bytes)
    }
    fn secret(&self, name: &str) -> Result<Value, String> {
        let digest = self
            .secret_digests
            .get(name)
            .ok_or_else(|| format!("secret {name:?} does not exist"))?;
        Ok(crate::domain::secrets::marker(name, digest))
    }
}
