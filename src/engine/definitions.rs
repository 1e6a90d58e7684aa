//! Parsed definitions by pipeline version. A version never changes, so a
//! parsed `Definition` can be kept and shared: a start of a 1,000-step
//! pipeline then neither fetches nor re-validates its document.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    domain::{
        definition::{parse_definition, Definition},
        Issue,
    },
    store::{pipelines, StoreError},
};

/// Versions kept before the cache starts over; enough for every pipeline a
/// deployment runs often, small enough not to matter.
const CAPACITY: usize = 256;

/// A pipeline version: `(pipeline id, version)`.
type VersionKey = (Uuid, i32);

#[derive(Clone, Default)]
pub struct Definitions {
    parsed: Arc<Mutex<HashMap<VersionKey, Arc<Definition>>>>,
}

pub enum LoadError {
    Invalid(Vec<Issue>),
    Store(StoreError),
}

impl Definitions {
    pub async fn load(
        &self,
        conn: &mut PgConnection,
        pipeline_id: Uuid,
        version: i32,
    ) -> Result<Arc<Definition>, LoadError> {
        if let Some(found) = self.parsed.lock().unwrap().get(&(pipeline_id, version)) {
            return Ok(found.clone());
        }
        let document = pipelines::definition_of(conn, pipeline_id, version)
            .await
            .map_err(LoadError::Store)?;
        let definition = Arc::new(parse_definition(&document).map_err(LoadError::Invalid)?);
        let mut parsed = self.parsed.lock().unwrap();
        if parsed.len() >= CAPACITY {
            parsed.clear();
        }
        parsed.insert((pipeline_id, version), definition.clone());
        Ok(definition)
    }
}
