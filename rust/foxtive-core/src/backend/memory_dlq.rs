//! The memory backend's dead letters as a [`DeadLetterStore`], so that they
//! are listed, replayed and purged like every other backend's.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Backend, MemoryBackend};
use crate::dlq::{DeadLetter, DeadLetterStore, StoredDeadLetter};
use crate::Result;

/// The dead letters of one memory backend; a record's key is its original id.
pub struct MemoryDeadLetters {
    backend: Arc<MemoryBackend>,
    name: String,
}

impl MemoryDeadLetters {
    pub fn new(backend: Arc<MemoryBackend>) -> Self {
        MemoryDeadLetters {
            name: format!("memory:{}", backend.name()),
            backend,
        }
    }
}

#[async_trait]
impl DeadLetterStore for MemoryDeadLetters {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, _records: Vec<DeadLetter>) -> Result<()> {
        Err(crate::dlq::native_put_refused(&self.name))
    }

    async fn list(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        Ok(self
            .backend
            .dead_letters()
            .into_iter()
            .take(limit)
            .map(|record| StoredDeadLetter {
                key: record.original_id.clone(),
                record,
            })
            .collect())
    }

    async fn remove(&self, keys: &[String]) -> Result<usize> {
        Ok(self.backend.take_dead_letters(Some(keys)).len())
    }

    async fn purge(&self) -> Result<usize> {
        Ok(self.backend.take_dead_letters(None).len())
    }

    async fn count(&self) -> Result<usize> {
        Ok(self.backend.dead_letters().len())
    }

    /// Take and republish under one call: nothing else runs in between that
    /// could see the records in neither place.
    async fn replay_in_place(&self, ids: Option<&[String]>) -> Result<usize> {
        let taken = self.backend.take_dead_letters(ids);
        let copies: Vec<_> = taken.iter().map(DeadLetter::to_replay).collect();
        Ok(self.backend.publish_now(copies).len())
    }
}
