//! Parsed definitions by pipeline version. A version never changes, so a
//! parsed `Definition` can be kept and shared: a start of a 1,000-step
//! pipeline then neither fetches nor re-validates its document.
//!
//! The cache is bounded by an estimate of the bytes it holds
//! (`api.definition_cache_bytes`), not by a number of versions: a parsed
//! 10,000-step definition takes 40 to 100 MiB. `quick_cache` does the
//! bookkeeping: it weighs each entry with our estimate, evicts by its
//! scan-resistant policy (one pipeline started once does not push out the
//! ones started all day), and runs no background thread. One shard, since
//! a sharded cache splits its capacity and would refuse every definition
//! larger than a shard's part.

use std::sync::Arc;

use quick_cache::{sync::Cache, OptionsBuilder, Weighter};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    domain::{
        definition::{parse_definition, Definition},
        Issue,
    },
    store::{pipelines, StoreError},
};

/// Bytes a parsed definition takes per byte of its JSON document. Measured
/// with a counting allocator on chains and fan-outs of 10 to 10,000 Pass and
/// Command steps: 43 to 75; the estimate errs on the large side of most.
pub const PARSED_BYTES_PER_JSON_BYTE: u64 = 64;

/// A pipeline version: `(pipeline id, version)`.
type VersionKey = (Uuid, i32);

/// A cached definition with its estimated size in bytes.
#[derive(Clone)]
struct Entry {
    definition: Arc<Definition>,
    bytes: u64,
}

#[derive(Clone)]
struct ByEstimatedBytes;

impl Weighter<VersionKey, Entry> for ByEstimatedBytes {
    fn weight(&self, _key: &VersionKey, entry: &Entry) -> u64 {
        entry.bytes
    }
}

#[derive(Clone)]
pub struct Definitions {
    /// None when the cache is turned off (a capacity of 0).
    parsed: Option<Arc<Cache<VersionKey, Entry, ByEstimatedBytes>>>,
}

pub enum LoadError {
    Invalid(Vec<Issue>),
    Store(StoreError),
}

impl Definitions {
    /// A cache holding at most about `capacity_bytes` of parsed definitions;
    /// one larger than that on its own is parsed on every use, not kept.
    pub fn new(capacity_bytes: u64) -> Definitions {
        if capacity_bytes == 0 {
            return Definitions { parsed: None };
        }
        let options = OptionsBuilder::new()
            .shards(1)
            // Only sizes the bookkeeping; a guess within 100x is fine.
            .estimated_items_capacity(64)
            .weight_capacity(capacity_bytes)
            .build()
            .expect("every option is set");
        let cache = Cache::with_options(options, ByEstimatedBytes, Default::default(), Default::default());
        Definitions {
            parsed: Some(Arc::new(cache)),
        }
    }

    pub async fn load(
        &self,
        conn: &mut PgConnection,
        pipeline_id: Uuid,
        version: i32,
    ) -> Result<Arc<Definition>, LoadError> {
        let key = (pipeline_id, version);
        if let Some(found) = self.parsed.as_ref().and_then(|c| c.get(&key)) {
            return Ok(found.definition);
        }
        let document = pipelines::definition_of(conn, pipeline_id, version)
            .await
            .map_err(LoadError::Store)?;
        let definition = Arc::new(parse_definition(&document).map_err(LoadError::Invalid)?);
        if let Some(cache) = &self.parsed {
            let bytes = json_len(&document).saturating_mul(PARSED_BYTES_PER_JSON_BYTE);
            cache.insert(
                key,
                Entry {
                    definition: definition.clone(),
                    bytes,
                },
            );
        }
        Ok(definition)
    }

    /// Estimated bytes held, and the number of versions.
    pub fn usage(&self) -> (u64, usize) {
        self.parsed.as_ref().map_or((0, 0), |c| (c.weight(), c.len()))
    }
}

/// The length of `value` written as compact JSON, counted without writing it.
fn json_len(value: &serde_json::Value) -> u64 {
    struct Counter(u64);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).expect("a JSON value serializes");
    counter.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn definition(steps: usize) -> (Arc<Definition>, u64) {
        let steps: Vec<_> = (0..steps)
            .map(|i| json!({"Name": format!("S{i}"), "Type": "Pass", "Arguments": {"i": i}}))
            .collect();
        let document = json!({"Version": "2020-12-01", "Steps": steps});
        let bytes = json_len(&document) * PARSED_BYTES_PER_JSON_BYTE;
        (Arc::new(parse_definition(&document).unwrap()), bytes)
    }

    #[test]
    fn the_cache_is_bounded_by_estimated_bytes() {
        let (parsed, bytes) = definition(200);
        let cache = Definitions::new(bytes * 5);
        let inner = cache.parsed.as_ref().unwrap();
        for version in 0..100 {
            let entry = Entry {
                definition: parsed.clone(),
                bytes,
            };
            inner.insert((Uuid::nil(), version), entry);
            let (held, count) = cache.usage();
            assert!(held <= bytes * 5, "{held} bytes held, more than the capacity");
            assert!(count <= 5, "{count} versions held");
        }
        // A definition larger than the whole cache is not kept at all.
        inner.insert(
            (Uuid::max(), 1),
            Entry {
                definition: parsed,
                bytes: bytes * 6,
            },
        );
        assert!(inner.get(&(Uuid::max(), 1)).is_none());
        assert!(Definitions::new(0).parsed.is_none());
    }

    #[test]
    fn json_len_is_the_compact_length() {
        let value = json!({"a": [1, "x"], "b": null});
        assert_eq!(json_len(&value), value.to_string().len() as u64);
    }
}
