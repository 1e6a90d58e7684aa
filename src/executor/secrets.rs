//! The secrets of one attempt: loaded and decrypted when the step starts,
//! held only in this process's memory and the step process's environment.
//! Resolved arguments hold a marker with the keyed digest instead
//! (`domain::secrets`), so cache keys and miss reasons never see a value.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{mask::Masker, StepContext, INPUT_ERROR};
use crate::{
    domain::outcome::StepOutcome,
    domain::{
        expr::{ExecutionVar, Resolver},
        secrets::{env_secrets, marker, reveal},
    },
    store,
};

/// The secrets a step uses, by name: value and keyed digest.
#[derive(Default)]
pub struct StepSecrets {
    values: BTreeMap<String, String>,
    digests: BTreeMap<String, String>,
}

impl StepSecrets {
    /// Loads the secrets the step's Env refers to (none for other types).
    /// A secret deleted since the start fails the step, naming it.
    pub async fn load(ctx: &StepContext<'_>) -> Result<StepSecrets, StepOutcome> {
        if ctx.step.step_type != "Command" {
            return Ok(StepSecrets::default());
        }
        let uses = env_secrets(&ctx.step.arguments);
        if uses.is_empty() {
            return Ok(StepSecrets::default());
        }
        let names: Vec<String> = uses.iter().map(|(_, name)| name.clone()).collect();
        let fault =
            |e: store::StoreError| StepOutcome::failed("Step.SERVICE_FAULT", format!("loading secrets failed: {e}"));
        let mut conn = ctx.db.acquire().await.map_err(|e| fault(e.into()))?;
        let rows = store::secrets::sealed(&mut conn, &names).await.map_err(fault)?;
        drop(conn);
        let mut loaded = StepSecrets::default();
        for row in rows {
            let value = ctx
                .keyring
                .open(&row.name, &row.nonce, &row.ciphertext)
                .map_err(|m| StepOutcome::failed("Step.SERVICE_FAULT", m))?;
            loaded.digests.insert(row.name.clone(), row.digest);
            loaded.values.insert(row.name, value);
        }
        for (var, name) in &uses {
            if !loaded.values.contains_key(name) {
                let message =
                    format!("Env {var}: secret {name:?} does not exist (it was deleted after the execution started)");
                return Err(StepOutcome::failed(INPUT_ERROR, message));
            }
        }
        Ok(loaded)
    }

    /// The arguments the process starts with: `resolved` with each secret
    /// Env variable of `raw` set to its value.
    pub fn reveal(&self, raw: &Value, resolved: &Value) -> Result<Value, String> {
        if self.values.is_empty() {
            return Ok(resolved.clone());
        }
        reveal(raw, resolved, &self.values)
    }

    /// Masks these secrets' values in what the step produces.
    pub fn masker(&self) -> Masker {
        Masker::new(self.values.values())
    }

    pub fn values(&self) -> Vec<String> {
        self.values.values().cloned().collect()
    }
}

/// The step's resolver with its loaded secrets.
pub struct WithSecrets<'a, 'b> {
    pub ctx: &'a StepContext<'b>,
    pub secrets: &'a StepSecrets,
}

impl Resolver for WithSecrets<'_, '_> {
    fn parameter(&self, name: &str) -> Option<Value> {
        self.ctx.parameter(name)
    }
    fn execution_var(&self, var: ExecutionVar) -> Value {
        self.ctx.execution_var(var)
    }
    fn step_properties(&self, step: &str) -> Option<Value> {
        self.ctx.step_properties(step)
    }
    fn artifact_json(&self, step: &str, file: &str) -> Result<Value, String> {
        self.ctx.artifact_json(step, file)
    }
    fn current_item(&self) -> Option<(Value, usize)> {
        self.ctx.current_item()
    }
    fn secret(&self, name: &str) -> Result<Value, String> {
        self.secrets
            .digests
            .get(name)
            .map(|digest| marker(name, digest))
            .ok_or_else(|| format!("Secrets.{name}: secrets are only available in a Command step's Env"))
    }
}
