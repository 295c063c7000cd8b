//! The engine with a dead-letter store: stored dead letters are acked, those
//! the store cannot keep stay in the broker, the rest of a batch is settled
//! as usual.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use foxtive_core::backend::MemoryBackend;
use foxtive_core::dlq::{DeadLetter, DeadLetterStore, MemoryStore, StoredDeadLetter};
use foxtive_core::message::{Outgoing, Settlement};
use foxtive_core::policy::RetryPolicy;
use foxtive_core::pool::{Engine, EngineConfig, Strategy, WorkerSpec};
use foxtive_core::{Error, Result};

/// A store that refuses every write, as a full disk would.
struct Full;

#[async_trait]
impl DeadLetterStore for Full {
    fn name(&self) -> &str {
        "full"
    }
    async fn put(&self, _: Vec<DeadLetter>) -> Result<()> {
        Err(Error::DeadLetter("no space left on device".into()))
    }
    async fn list(&self, _: usize) -> Result<Vec<StoredDeadLetter>> {
        Ok(Vec::new())
    }
    async fn remove(&self, _: &[String]) -> Result<usize> {
        Ok(0)
    }
    async fn purge(&self) -> Result<usize> {
        Ok(0)
    }
    async fn count(&self) -> Result<usize> {
        Ok(0)
    }
}

fn config(store: Option<Arc<dyn DeadLetterStore>>) -> EngineConfig {
    EngineConfig {
        pool: Arc::from("p"),
        concurrency_limit: 10,
        workers: vec![WorkerSpec {
            id: Arc::from("w"),
            limit: 10,
            lane: 0,
        }],
        strategy: Strategy::RoundRobin,
        retry: RetryPolicy::default(),
        lanes: vec![false],
        batch_size: 16,
        breaker: None,
        rate_limit: None,
        poison: None,
        dead_letter_store: store,
    }
}

/// Run "a", "b", "c" through an engine: "a" is dead-lettered, the others acked.
async fn run(store: Option<Arc<dyn DeadLetterStore>>) -> (Arc<MemoryBackend>, Arc<Engine>) {
    let backend = Arc::new(MemoryBackend::new("q").unwrap());
    backend.publish_now(
        ["a", "b", "c"]
            .into_iter()
            .map(|id| Outgoing {
                message_id: Some(id.into()),
                ..Outgoing::new(Bytes::from_static(b"\x00body"))
            })
            .collect(),
    );
    let engine = Engine::new(config(store), backend.clone()).unwrap();
    engine.start().await.unwrap();
    let mut seen = 0;
    while seen < 3 {
        let lane = engine.lane(0).unwrap();
        let batch = tokio::task::block_in_place(|| lane.take(16, Duration::from_secs(5)))
            .expect("the lane stays open");
        for inflight in batch {
            seen += 1;
            if inflight.delivery.id == "a" {
                engine.dead_letter(&inflight, "ValueError", "boom").unwrap();
            } else {
                engine.settle(&inflight, Settlement::Ack).unwrap();
            }
        }
    }
    engine.finish().await.unwrap();
    (backend, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_dead_letters_are_acked() {
    let store = Arc::new(MemoryStore::new());
    let (backend, engine) = run(Some(store.clone())).await;
    let kept = store.list(10).await.unwrap();
    assert_eq!(kept.len(), 1);
    let record = &kept[0].record;
    assert_eq!(record.original_id, "a");
    assert_eq!(&record.body[..], b"\x00body");
    assert_eq!(record.source_queue, "q");
    assert_eq!(record.attempts, 1);
    assert_eq!(record.error_type, "ValueError");
    assert_eq!(record.error_message, "boom");
    assert_eq!(record.worker_id, "w");
    assert!(!record.poison_pill);
    assert!(
        backend.dead_letters().is_empty(),
        "not also in the backend's DLQ"
    );
    assert_eq!((backend.qsize(), backend.unacked()), (0, 0));
    let stats = engine.stats();
    assert_eq!((stats.dead_lettered, stats.processed), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_keeps_the_message_in_the_broker() {
    let (backend, engine) = run(Some(Arc::new(Full))).await;
    assert!(backend.dead_letters().is_empty());
    // Handed back, delayed, not acked: it waits in the backend.
    assert_eq!(backend.qsize(), 1);
    assert_eq!(backend.unacked(), 0);
    assert_eq!(engine.stats().processed, 2, "the others were settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_store_the_backend_dead_letters() {
    let (backend, _engine) = run(None).await;
    let dead = backend.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].original_id, "a");
    assert_eq!(backend.qsize(), 0);
}
