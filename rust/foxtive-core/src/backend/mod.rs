//! Where messages come from and where their settlements go.

pub mod memory;
pub mod memory_dlq;
pub mod nats;
pub mod options;
pub mod postgres;
pub mod queue_stats;
pub mod rabbitmq;
pub mod redis_streams;
pub mod registry;
pub mod resilient;
pub(crate) mod shared;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::message::{Delivery, Outgoing, Settlement};
use crate::Result;

pub use memory::MemoryBackend;
pub use postgres::{PostgresBackend, PostgresConfig};
pub use queue_stats::QueueStats;
pub use rabbitmq::{RabbitMqBackend, RabbitMqConfig};
pub use redis_streams::{RedisStreamBackend, RedisStreamConfig};
pub use resilient::ResilientBackend;
pub use sqlite::{SqliteBackend, SqliteConfig};

/// Every backend foxtive builds, one row each (its [`registry::Kind`] is
/// declared in its own folder): `backend_from_url` and the errors that list
/// the backends read this, nothing else. A new backend is its folder, its
/// `pub mod` line above and its row here.
pub const KINDS: &[&registry::Kind] = &[
    &memory::KIND,
    &rabbitmq::KIND,
    &redis_streams::KIND,
    &sqlite::KIND,
    &postgres::KIND,
    &nats::KIND,
];

/// Run `op` unless the backend is closed first: `closed` is checked before
/// it starts (after subscribing, so a `close` in between is not missed) and
/// `closing` cuts it short at once; either way the answer is
/// `Error::Shutdown`. `close` sets `closed`, then `notify_waiters()`.
pub(crate) async fn unless_closed<T>(
    closing: &tokio::sync::Notify,
    closed: &std::sync::atomic::AtomicBool,
    op: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let notified = closing.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    if closed.load(std::sync::atomic::Ordering::Acquire) {
        return Err(crate::Error::Shutdown);
    }
    tokio::select! {
        r = op => r,
        _ = &mut notified => Err(crate::Error::Shutdown),
    }
}

/// The connection state a backend reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    Connected,
    Reconnecting,
    Closed,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Connected => "connected",
            BackendState::Reconnecting => "reconnecting",
            BackendState::Closed => "closed",
        }
    }
}

/// One delivery and how it ends, handed to [`Backend::settle`].
pub type SettleItem = (Arc<Delivery>, Settlement);

/// A message source and sink. Implementations batch: `receive` returns up to
/// `max` deliveries, `settle` takes many settlements at once.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The queue or stream name, for labels and `message.queue`.
    fn name(&self) -> &str;

    /// Connect, declare and subscribe. Idempotent.
    async fn connect(&self) -> Result<()>;

    /// Wait up to `wait` for at least one delivery, then return at most `max`
    /// (possibly none). Errors mean the connection is unusable for now.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Apply settlements. Each item is applied at most once; a retry or
    /// dead-letter copy is stored durably before its original is acknowledged.
    /// Items that cannot be applied are left for the broker to redeliver.
    async fn settle(&self, batch: Vec<SettleItem>) -> Result<()>;

    /// Publish messages (durably where the broker can); returns their ids.
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>>;

    /// Stop taking new deliveries (shutdown has begun); settling still works.
    async fn stop_receiving(&self) -> Result<()> {
        Ok(())
    }

    /// Close connections. Unsettled deliveries go back to the broker.
    async fn close(&self) -> Result<()>;

    fn state(&self) -> BackendState {
        BackendState::Connected
    }

    /// `Some(true)` when the backend knows nothing is waiting for it (memory
    /// backend), `None` when it cannot tell without a round trip.
    fn is_drained(&self) -> Option<bool> {
        None
    }

    /// Reconnections tried since the backend was created.
    fn reconnect_attempts(&self) -> u64 {
        0
    }

    /// Failures in a row (0 when healthy).
    fn consecutive_failures(&self) -> u32 {
        0
    }

    /// How many messages the queue holds (ready, delayed, in progress,
    /// dead, consumers), asked of the broker; `None` when the backend
    /// cannot tell at all. Each backend's `stats.rs` implements it.
    async fn queue_stats(&self) -> Result<Option<QueueStats>> {
        Ok(None)
    }
}
