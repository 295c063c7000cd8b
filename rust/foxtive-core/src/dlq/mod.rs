//! Dead letters: the record kept for a message that will not be retried, and
//! the stores that keep such records outside the broker.
//!
//! A store is given whole batches ([`DeadLetterStore::put`]); the engine acks
//! a message only once the store said its record is kept. Records are found
//! again by a key of the store's own (not the message id: the same message
//! can be dead-lettered twice, e.g. after a replay).

pub mod codec;
pub mod file;
pub mod memory;
pub mod redis;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::Backend;
use crate::message::{Delivery, Failure, Headers, Outgoing};
use crate::{Error, Result};

pub use file::FileStore;
pub use memory::MemoryStore;
pub use redis::RedisStore;

/// A message that failed for good, with why and where.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub original_id: String,
    pub body: Bytes,
    pub headers: Headers,
    pub source_queue: String,
    pub attempts: u32,
    pub error_type: String,
    pub error_message: String,
    pub failed_at: f64,
    pub worker_id: String,
    pub poison_pill: bool,
}

impl DeadLetter {
    pub fn from_delivery(delivery: &Delivery, failure: &Failure) -> Self {
        DeadLetter {
            original_id: delivery.id.clone(),
            body: delivery.body.clone(),
            headers: delivery.headers.clone(),
            source_queue: delivery.queue.to_string(),
            attempts: delivery.attempt,
            error_type: failure.error_type.clone(),
            error_message: failure.error_message.clone(),
            failed_at: crate::clock::unix_now(),
            worker_id: failure.worker_id.to_string(),
            poison_pill: failure.poison_pill,
        }
    }

    /// The message to publish when replaying: same id, body and headers, but
    /// a fresh message. Headers by which a broker carries the attempt count
    /// (foxtive's own `x-foxtive-*`, quorum queues' `x-delivery-count`) are
    /// dropped, so the replayed message starts again at attempt 1.
    pub fn to_replay(&self) -> Outgoing {
        let mut headers = self.headers.clone();
        headers.retain(|(k, _)| !is_attempt_bookkeeping(k));
        Outgoing {
            headers,
            message_id: Some(self.original_id.clone()),
            ..Outgoing::new(self.body.clone())
        }
    }
}

fn is_attempt_bookkeeping(header: &str) -> bool {
    header.starts_with("x-foxtive-") || header == "x-delivery-count"
}

/// A record as a store holds it: the store's key and the dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    pub key: String,
    pub record: DeadLetter,
}

/// The answer of a backend's own dead-letter queue to [`DeadLetterStore::put`]:
/// the backend writes its dead letters itself, as part of settling.
pub fn native_put_refused(store: &str) -> Error {
    Error::DeadLetter(format!("{store}: the backend writes its own dead letters"))
}

/// Somewhere dead letters are kept outside the broker.
///
/// Records come back oldest first. Errors are [`Error::DeadLetter`] and never
/// contain a password.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    /// What the store is, for logs and reprs (no secrets).
    fn name(&self) -> &str;

    /// Keep these records durably, all or none (as far as the medium allows);
    /// `Ok` only once they are kept.
    async fn put(&self, records: Vec<DeadLetter>) -> Result<()>;

    /// Up to `limit` records, oldest first.
    async fn list(&self, limit: usize) -> Result<Vec<StoredDeadLetter>>;

    /// Remove the records with these keys; returns how many were there.
    async fn remove(&self, keys: &[String]) -> Result<usize>;

    /// Remove every record; returns how many there were.
    async fn purge(&self) -> Result<usize>;

    /// How many records are kept.
    async fn count(&self) -> Result<usize>;

    /// Whether the store is there at all (a file, a key, a queue). A missing
    /// store reads as empty; tools use this to tell a typo from "nothing
    /// failed". Stores that are always there say `true`.
    async fn exists(&self) -> Result<bool> {
        Ok(true)
    }

    /// Republish the chosen records (original ids in `ids`, or all) into the
    /// queue they failed in and remove them, as one step per record where the
    /// medium allows (a broker's native dead-letter queue). Stores outside
    /// the broker have no source of their own: use [`replay`] with a backend.
    async fn replay_in_place(&self, ids: Option<&[String]>) -> Result<usize> {
        let _ = ids;
        Err(Error::DeadLetter(format!(
            "{}: replays need a backend to publish to (replay(to=backend))",
            self.name()
        )))
    }

    /// Unreadable records (torn or corrupt) the last read had to skip. They
    /// stay where they are until a change (replay, purge) sets them aside.
    fn skipped(&self) -> usize {
        0
    }

    /// Unreadable records the last change (replay, remove, purge) moved out
    /// of the way, to a place of the store's own (e.g. `<file>.corrupt`).
    fn set_aside(&self) -> usize {
        0
    }
}

impl std::fmt::Debug for dyn DeadLetterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeadLetterStore({})", self.name())
    }
}

/// Records replayed per publish call: one broker round trip each.
const REPLAY_CHUNK: usize = 256;

/// Republish records to `to`, then remove them from `store`.
///
/// Only the records present when the call starts are replayed (those whose
/// original id is in `ids`, or all), so a message that fails again while the
/// replay runs is not replayed a second time and nothing loops. A record is
/// removed only after the broker accepted its copy: a failure in between can
/// leave a record that was also republished (a duplicate with the same
/// message id), never a message in neither place.
pub async fn replay(
    store: &dyn DeadLetterStore,
    to: &dyn Backend,
    ids: Option<&[String]>,
) -> Result<usize> {
    let mut chosen = store.list(usize::MAX).await?;
    if let Some(ids) = ids {
        chosen.retain(|s| ids.contains(&s.record.original_id));
    }
    let total = chosen.len();
    let mut done = 0;
    for chunk in chosen.chunks(REPLAY_CHUNK) {
        let messages = chunk.iter().map(|s| s.record.to_replay()).collect();
        if let Err(e) = to.publish(messages).await {
            return Err(Error::DeadLetter(format!(
                "replay to {:?}: publishing failed after {done} of {total} records were \
                 replayed; the rest stay in {}: {e}",
                to.name(),
                store.name()
            )));
        }
        let keys: Vec<String> = chunk.iter().map(|s| s.key.clone()).collect();
        if let Err(e) = store.remove(&keys).await {
            return Err(Error::DeadLetter(format!(
                "replay to {:?}: {} records were republished but could not be removed from \
                 {} (a later replay would publish them again): {e}",
                to.name(),
                keys.len(),
                store.name()
            )));
        }
        done += chunk.len();
    }
    Ok(done)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::message::HeaderValue;

    pub(crate) fn sample() -> DeadLetter {
        DeadLetter {
            original_id: "m-1".into(),
            body: Bytes::from_static(b"\x00\xff\n{\"not\": json}\r\n"),
            headers: vec![
                ("n".into(), HeaderValue::Null),
                ("b".into(), HeaderValue::Bool(true)),
                ("i".into(), HeaderValue::Int(-7)),
                ("f".into(), HeaderValue::Float(0.1 + 0.2)),
                ("whole".into(), HeaderValue::Float(3.0)),
                ("nan".into(), HeaderValue::Float(f64::INFINITY)),
                ("s".into(), HeaderValue::Str("3".into())),
                (
                    "raw".into(),
                    HeaderValue::Bytes(Bytes::from_static(b"\x01\x02")),
                ),
                (
                    "x-death".into(),
                    HeaderValue::Array(vec![HeaderValue::Table(vec![
                        ("count".into(), HeaderValue::Int(2)),
                        ("queue".into(), HeaderValue::Str("q".into())),
                    ])]),
                ),
                ("i".into(), HeaderValue::Int(8)),
            ],
            source_queue: "emails".into(),
            attempts: 4,
            error_type: "ValueError".into(),
            error_message: "bad\nthing \u{1F98A}".into(),
            failed_at: 1_700_000_000.123_456,
            worker_id: "w-1".into(),
            poison_pill: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;
    use crate::message::{header, HeaderValue};
    use std::time::Duration;

    #[test]
    fn replay_copy_is_a_fresh_message() {
        let mut record = testing::sample();
        record
            .headers
            .push(("x-foxtive-attempt".into(), HeaderValue::Int(4)));
        record
            .headers
            .push(("x-delivery-count".into(), HeaderValue::Int(3)));
        let out = record.to_replay();
        assert_eq!(out.attempt, 1);
        assert_eq!(out.message_id.as_deref(), Some("m-1"));
        assert_eq!(out.body, record.body);
        assert!(header(&out.headers, "x-foxtive-attempt").is_none());
        assert!(header(&out.headers, "x-delivery-count").is_none());
        assert_eq!(
            header(&out.headers, "s"),
            Some(&HeaderValue::Str("3".into()))
        );
    }

    #[tokio::test]
    async fn replay_publishes_then_removes_only_the_chosen() {
        let store = MemoryStore::new();
        let mut a = testing::sample();
        a.original_id = "a".into();
        let mut b = testing::sample();
        b.original_id = "b".into();
        store.put(vec![a, b]).await.unwrap();
        let backend = MemoryBackend::new("q").unwrap();
        let n = replay(&store, &backend, Some(&["b".to_string()]))
            .await
            .unwrap();
        assert_eq!(n, 1);
        let left = store.list(10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].record.original_id, "a");
        let got = backend.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "b");
        assert_eq!(got[0].attempt, 1);
    }

    /// A backend whose publish always fails.
    struct Refusing;

    #[async_trait]
    impl Backend for Refusing {
        fn name(&self) -> &str {
            "refusing"
        }
        async fn connect(&self) -> Result<()> {
            Ok(())
        }
        async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>> {
            Ok(Vec::new())
        }
        async fn settle(&self, _: Vec<crate::backend::SettleItem>) -> Result<()> {
            Ok(())
        }
        async fn publish(&self, _: Vec<Outgoing>) -> Result<Vec<String>> {
            Err(Error::ConnectionLost("broker down".into()))
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn failed_publish_keeps_the_records() {
        let store = MemoryStore::new();
        store.put(vec![testing::sample()]).await.unwrap();
        let err = replay(&store, &Refusing, None).await.unwrap_err();
        assert!(err.to_string().contains("broker down"), "{err}");
        assert_eq!(store.count().await.unwrap(), 1);
    }
}
