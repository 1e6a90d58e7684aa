//! The parameters of the executions whose steps this worker runs, fetched
//! once per execution instead of with every claim: a 10 MB parameter
//! document travelled with each of a 10,000-iteration ForEach's steps.
//! An execution's parameters are fixed at its start, so a copy never goes
//! stale. Held weakly while steps of the execution hold them, and strongly
//! for the few executions used last (a chain's next step starts after the
//! previous one let go), so memory stays bounded by what runs.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, Weak},
};

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::{executions, StoreResult};

/// Executions whose parameters are kept after their last step let go.
const RECENT: usize = 4;

#[derive(Default)]
pub struct Parameters {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    live: HashMap<Uuid, Weak<Value>>,
    recent: VecDeque<(Uuid, Arc<Value>)>,
}

impl Parameters {
    /// The parameters of `execution_id`, from the database on first use.
    pub async fn of(&self, db: &PgPool, execution_id: Uuid) -> StoreResult<Arc<Value>> {
        if let Some(value) = self.cached(execution_id) {
            return Ok(value);
        }
        let value = Arc::new(executions::parameters(db, execution_id).await?);
        self.keep(execution_id, &value);
        Ok(value)
    }

    fn cached(&self, execution_id: Uuid) -> Option<Arc<Value>> {
        let mut entries = self.entries.lock().unwrap();
        let value = entries.live.get(&execution_id)?.upgrade()?;
        entries.remember(execution_id, &value);
        Some(value)
    }

    fn keep(&self, execution_id: Uuid, value: &Arc<Value>) {
        let mut entries = self.entries.lock().unwrap();
        entries.live.retain(|_, held| held.strong_count() > 0);
        entries.live.insert(execution_id, Arc::downgrade(value));
        entries.remember(execution_id, value);
    }
}

impl Entries {
    fn remember(&mut self, execution_id: Uuid, value: &Arc<Value>) {
        self.recent.retain(|(id, _)| *id != execution_id);
        self.recent.push_back((execution_id, value.clone()));
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_and_recent_executions_are_kept() {
        let cache = Parameters::default();
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
        let held = Arc::new(serde_json::json!({"held": true}));
        cache.keep(ids[0], &held);
        for id in &ids[1..5] {
            cache.keep(*id, &Arc::new(serde_json::json!({})));
        }
        // Four were used after it, but a running step holds it: still served.
        assert_eq!(cache.cached(ids[0]).as_deref(), Some(&*held));
        assert!(cache.cached(ids[1]).is_none(), "neither held nor recent");
        drop(held);
        for id in &ids[2..6] {
            cache.keep(*id, &Arc::new(serde_json::json!({})));
        }
        assert!(cache.cached(ids[0]).is_none(), "let go and no longer recent");
        assert!(cache.cached(ids[5]).is_some());
    }
}
