//! The hashing of `CacheInputs` by a plan or a start, done with no
//! database connection held and no transaction open: hashing a few GB takes
//! longer than PostgreSQL lets a transaction idle, and a connection held
//! meanwhile is one the rest of the API cannot have.
//!
//! A start decides in passes (`decide::prepare`, in a transaction): a pass
//! asks `InputHashes` for the hashes it needs; those not hashed yet are
//! noted and answered "not hashed" (the step then counts as changed). When
//! a pass noted some, the caller ends its transaction, `hash_pending`
//! hashes them, and the next pass decides with them. The plan's walk over
//! the steps holds no connection between its queries and hashes as it goes
//! (`step_key`). All of it shares one budget,
//! `worker.cache_input_timeout_seconds`: past it, what is not hashed stays
//! so, and the plan and the start say so.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Mutex,
    time::Instant,
};

use serde_json::Value;

use super::decide::Settings;
use crate::{
    content::inputs,
    domain::{
        cache::{compute_key, CacheKey},
        definition::{cache_input_paths, StepKind},
    },
};

/// How many passes a start makes at most: each pass may need hashes that
/// the one before could not know it needed.
pub const MAX_PASSES: usize = 8;

/// What to hash: the working directory and the paths as written.
type Request = (Option<String>, Vec<String>);

/// The hashes of one plan's or start's `CacheInputs`.
pub struct InputHashes<'a> {
    settings: &'a Settings,
    started: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    done: HashMap<Request, Result<BTreeMap<String, String>, String>>,
    pending: BTreeSet<Request>,
}

/// The content hashes of a step's `CacheInputs`, if they were hashed.
pub enum Hashed {
    Done(Result<BTreeMap<String, String>, String>),
    /// Not hashed (yet, or at all: the budget was spent).
    NotHashed,
}

impl<'a> InputHashes<'a> {
    pub fn new(settings: &'a Settings) -> InputHashes<'a> {
        InputHashes {
            settings,
            started: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    /// The settings it hashes under.
    pub fn settings(&self) -> &'a Settings {
        self.settings
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds
        // consistent maps.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hashes of `paths`, when hashed already; else they are noted for
    /// `hash_pending`, and not hashed.
    pub fn get(&self, working_directory: Option<&str>, paths: &[String]) -> Hashed {
        let request = (working_directory.map(str::to_string), paths.to_vec());
        let mut state = self.state();
        match state.done.get(&request) {
            Some(done) => Hashed::Done(done.clone()),
            None => {
                state.pending.insert(request);
                Hashed::NotHashed
            }
        }
    }

    /// Whether a pass asked for hashes that were not made yet.
    pub fn has_pending(&self) -> bool {
        !self.state().pending.is_empty()
    }

    /// Hashes what passes asked for and did not have. The caller holds no
    /// database connection. Returns whether anything was hashed (another
    /// pass then decides with it).
    pub async fn hash_pending(&self) -> bool {
        let pending = std::mem::take(&mut self.state().pending);
        let mut hashed = false;
        for request in pending {
            let Some(done) = self.hash(&request).await else {
                break;
            };
            self.state().done.insert(request, done);
            hashed = true;
        }
        hashed
    }

    /// Hashes now, within what is left of the budget (`None` once spent).
    async fn hash(&self, (working_directory, paths): &Request) -> Option<Result<BTreeMap<String, String>, String>> {
        self.settings.probe.before_hashing().await;
        let limits = self.settings.inputs_left(self.started)?;
        Some(inputs::hash_inputs(working_directory.as_deref(), paths, limits).await)
    }

    /// The cache key of a step from its resolved arguments, hashing its
    /// `CacheInputs` now (the caller holds no database connection), as
    /// `content::step_key` does for the worker. `Ok(None)`: not hashed,
    /// the budget is spent.
    pub async fn step_key(&self, kind: StepKind, raw: &Value, resolved: &Value) -> Result<Option<CacheKey>, String> {
        let mut hashes = BTreeMap::new();
        if kind == StepKind::Command {
            let (working_directory, paths) = cache_input_paths(resolved)?;
            if !paths.is_empty() {
                let request = (working_directory, paths);
                let known = self.state().done.get(&request).cloned();
                let done = match known {
                    Some(done) => done,
                    None => match self.hash(&request).await {
                        Some(done) => {
                            self.state().done.insert(request, done.clone());
                            done
                        }
                        None => return Ok(None),
                    },
                };
                hashes = done.map_err(|m| format!("CacheInputs: {m}"))?;
            }
        }
        Ok(Some(compute_key(kind, raw, resolved, &hashes)))
    }
}
