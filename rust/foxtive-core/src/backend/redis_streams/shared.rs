//! One command connection per Redis in a process, shared by every backend
//! (queue, partition) and shared rate limit on that Redis: an app running
//! five queues from one Redis holds one command connection, not five.
//!
//! The command connection is multiplexed (redis-rs pipelines every caller's
//! commands over it), so the queues lose no parallelism by sharing it. Its
//! health is shared too: a failure is counted once, and after it nobody
//! tries again before the reconnect strategy's delay has passed, so an
//! outage costs one attempt per delay for the whole process, not one per
//! queue. Each [`super::link::Link`] still reports its own state (closed or
//! not) and counts the reconnect attempts made since it joined.
//!
//! "The same Redis" is the same URL (credentials, database, TLS options...)
//! with the backend's own query parameters left out (`partitions`,
//! `wait_replicas`, `wait_timeout`, `cluster`, which shape queues, not the
//! connection), the same cluster mode and the same reconnect strategy.
//! Connections are also kept per tokio runtime: a redis-rs connection is
//! driven by a task of the runtime that opened it and dies with it (one
//! runtime in a Python process; one per test in Rust tests).
//!
//! The blocking reads are not shared: each queue (partition) keeps a read
//! connection of its own, see `reader.rs` for why.

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::backend::shared::{runtime_here, SharedByKey};

use crate::redis_url::Conn;

/// Query parameters read by the backend's configuration: not part of the
/// connection, so backends that differ only in them share one.
const QUEUE_PARAMS: &[&str] = &["partitions", "wait_replicas", "wait_timeout", "cluster"];

/// What makes two links one Redis. Holds the raw URL (its credentials
/// tell users apart): never printed, hence no `Debug`.
#[derive(Clone, PartialEq)]
pub(crate) struct Key {
    target: String,
    runtime: Option<tokio::runtime::Id>,
}

impl Key {
    /// The key of `url` in `cluster` mode reconnecting with `strategy`
    /// (its `Debug` text: the strategy holds floats, so it has no `Eq`).
    pub fn new(url: &str, cluster: bool, strategy: &str) -> Self {
        let (head, fragment) = match url.split_once('#') {
            Some((h, f)) => (h, f),
            None => (url, ""),
        };
        let base = head.split_once('?').map_or(head, |(b, _)| b);
        let query: Vec<String> = crate::redact::query_pairs(head)
            .into_iter()
            .filter(|(k, _)| !QUEUE_PARAMS.contains(&k.as_str()))
            // Length-prefixed: a value cannot pass for a parameter.
            .map(|(k, v)| format!("{}:{k}{}:{v}", k.len(), v.len()))
            .collect();
        Key {
            target: format!(
                "{cluster}\n{strategy}\n{base}\n{}\n{fragment}",
                query.join("&")
            ),
            runtime: None,
        }
    }

    /// The key in the runtime this task runs on.
    fn here(&self) -> Self {
        Key {
            target: self.target.clone(),
            runtime: runtime_here(),
        }
    }
}

/// The connection slot and who holds it open.
#[derive(Default)]
pub(crate) struct Slot {
    /// The connection and its generation (bumped by every reconnection).
    pub conn: Option<(u64, Conn)>,
    /// Links that use the connection and are not closed: the last one to
    /// close drops it (the next use opens a new one).
    pub users: usize,
}

/// One Redis's command connection and its health, for every link on it.
#[derive(Default)]
pub(crate) struct Shared {
    pub slot: Mutex<Slot>,
    pub next_gen: AtomicU64,
    /// One connection attempt at a time: the others wait for its outcome.
    pub connecting: tokio::sync::Mutex<()>,
    /// No attempt before this instant (after a failure).
    pub retry_at: Mutex<Option<Instant>>,
    /// The last connection error, scrubbed: reported while reconnecting.
    pub last_error: Mutex<String>,
    /// Connection attempts made after a failure, ever.
    pub reconnect_attempts: AtomicU64,
    pub consecutive_failures: AtomicU32,
}

/// The live connections by Redis (and runtime).
static SHARED: SharedByKey<Key, Shared> = SharedByKey::new();

/// The connection of `key` in this runtime, made if no link holds one.
pub(crate) fn shared(key: &Key) -> Arc<Shared> {
    SHARED.get_or_make(key.here(), || Shared {
        next_gen: AtomicU64::new(1),
        ..Shared::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_redis_one_key() {
        let k = |url: &str| Key::new(url, false, "s");
        assert!(k("redis://h:1/0?partitions=4&wait_replicas=1") == k("redis://h:1/0"));
        assert!(k("redis://h:1/0?cluster=false") == k("redis://h:1/0"));
        assert!(k("redis://h:1/0") != k("redis://h:1/1"), "another database");
        assert!(
            k("redis://u:a@h:1") != k("redis://u:b@h:1"),
            "other credentials"
        );
        assert!(k("redis://h:1?password=a") != k("redis://h:1?password=b"));
        assert!(k("rediss://h:1") != k("rediss://h:1#insecure"));
        assert!(k("redis://h:1") != Key::new("redis://h:1", true, "s"));
        assert!(k("redis://h:1") != Key::new("redis://h:1", false, "t"));
        // A value cannot pass for a parameter.
        assert!(k("redis://h:1?a=b%26c=d") != k("redis://h:1?a=b&c=d"));
    }

    #[tokio::test]
    async fn one_connection_per_redis_until_the_last_holder_lets_go() {
        let key = Key::new("redis://127.0.0.1:1/0", false, "s");
        let first = shared(&key);
        let second = shared(&key);
        assert!(Arc::ptr_eq(&first, &second));
        let other = shared(&Key::new("redis://127.0.0.1:1/1", false, "s"));
        assert!(!Arc::ptr_eq(&first, &other));
        let weak = Arc::downgrade(&first);
        drop(first);
        drop(second);
        assert!(weak.upgrade().is_none(), "outlived its last holder");
    }

    #[test]
    fn one_connection_per_runtime() {
        let key = Key::new("redis://127.0.0.1:1/2", false, "s");
        let rt = |_| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        };
        let (a, b): (tokio::runtime::Runtime, tokio::runtime::Runtime) = (rt(0), rt(1));
        let in_a = a.block_on(async { shared(&key) });
        let in_a_again = a.block_on(async { shared(&key) });
        let in_b = b.block_on(async { shared(&key) });
        assert!(Arc::ptr_eq(&in_a, &in_a_again));
        assert!(!Arc::ptr_eq(&in_a, &in_b));
    }
}
