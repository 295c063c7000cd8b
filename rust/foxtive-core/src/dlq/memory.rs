//! Dead letters kept in process memory: for tests and for inspection while a
//! process runs. Gone when the process ends.

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{DeadLetter, DeadLetterStore, StoredDeadLetter};
use crate::Result;

#[derive(Default)]
struct Records {
    /// Next key; keys only grow, so a key is never reused.
    next: u64,
    kept: Vec<StoredDeadLetter>,
}

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<Records>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl DeadLetterStore for MemoryStore {
    fn name(&self) -> &str {
        "memory"
    }

    async fn put(&self, records: Vec<DeadLetter>) -> Result<()> {
        let mut r = self.records.lock();
        for record in records {
            r.next += 1;
            let key = r.next.to_string();
            r.kept.push(StoredDeadLetter { key, record });
        }
        Ok(())
    }

    async fn list(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        Ok(self
            .records
            .lock()
            .kept
            .iter()
            .take(limit)
            .cloned()
            .collect())
    }

    async fn remove(&self, keys: &[String]) -> Result<usize> {
        let mut r = self.records.lock();
        let before = r.kept.len();
        r.kept.retain(|s| !keys.contains(&s.key));
        Ok(before - r.kept.len())
    }

    async fn purge(&self) -> Result<usize> {
        Ok(std::mem::take(&mut self.records.lock().kept).len())
    }

    async fn count(&self) -> Result<usize> {
        Ok(self.records.lock().kept.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::testing::sample;

    #[tokio::test]
    async fn put_list_remove_purge() {
        let store = MemoryStore::new();
        let mut first = sample();
        first.original_id = "first".into();
        store.put(vec![first, sample(), sample()]).await.unwrap();
        assert_eq!(store.count().await.unwrap(), 3);
        let listed = store.list(2).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].record.original_id, "first");
        // Two records of the same message have different keys.
        assert_ne!(listed[0].key, listed[1].key);
        assert_eq!(store.remove(&[listed[1].key.clone()]).await.unwrap(), 1);
        assert_eq!(store.remove(&[listed[1].key.clone()]).await.unwrap(), 0);
        assert_eq!(store.purge().await.unwrap(), 2);
        assert_eq!(store.count().await.unwrap(), 0);
        // Keys are not reused after a purge.
        store.put(vec![sample()]).await.unwrap();
        let again = store.list(10).await.unwrap();
        assert!(!listed.iter().any(|s| s.key == again[0].key));
    }
}
