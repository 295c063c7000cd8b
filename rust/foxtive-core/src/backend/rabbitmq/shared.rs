//! One AMQP connection per broker in a process, shared by every backend
//! (queue) that connects the same way: an app running five queues on one
//! RabbitMQ holds one connection with a few channels per queue, not five
//! connections (RabbitMQ's own advice: one connection per process, a
//! channel per consumer).
//!
//! Backends are interchangeable on a connection when they would have opened
//! the same one: the same nodes (host, port, credentials, vhost, TLS scheme,
//! URL query such as heartbeat), the same `connection_name` and
//! `connect_timeout`, and the same tokio runtime (a connection's I/O task
//! lives on the runtime that opened it, and dies with it). Each backend
//! keeps its own channels, consumer, epochs and reconnect backoff; only the
//! connection is common.
//!
//! The registry keeps weak references only: a [`Hub`] lives while a backend
//! builds or holds a link on it, its [`AmqpConn`] while a link holds it, and
//! lapin closes the connection once the last of its channels and handles is
//! gone. Connecting goes through the hub one backend at a time: when the
//! shared connection dies, every backend on it notices, the first to get
//! there opens the new connection (round the nodes as [`super::nodes`] says)
//! and the others take it; when that attempt fails, the ones that waited
//! for it share the failure instead of each trying again (each then backs
//! off by its own reconnect strategy).

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use lapin::types::ShortString;
use lapin::uri::AMQPUri;
use lapin::Connection;
use parking_lot::Mutex;

use super::nodes::NO_NODE;
use crate::backend::shared::SharedByKey;
use crate::Error;

/// What makes two backends' connections interchangeable.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Key {
    /// Credentials included: compared, never shown (no `Debug`).
    pub(super) nodes: Vec<AMQPUri>,
    pub(super) connection_name: Option<String>,
    pub(super) connect_timeout: Duration,
    pub(super) runtime: Option<tokio::runtime::Id>,
}

/// An open connection, shared by the links built on it.
pub(super) struct AmqpConn {
    conn: Connection,
    /// Keeps the hub (and so its registry entry) alive while the
    /// connection is in use.
    _hub: Arc<Hub>,
}

impl Deref for AmqpConn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl AmqpConn {
    /// Close the connection when `this` is its last holder (the backend
    /// closing was the last one on it); otherwise leave it to the others.
    pub(super) async fn release(this: Arc<AmqpConn>) {
        if let Some(last) = Arc::into_inner(this) {
            if last.conn.status().connected() {
                let _ = last
                    .conn
                    .close(200, ShortString::from("foxtive: closing"))
                    .await;
            }
        }
    }
}

/// One connection slot: the live connection (weakly), and the turn to
/// open a new one.
pub(super) struct Hub {
    conn: Mutex<Weak<AmqpConn>>,
    /// Held while opening a connection: one attempt at a time.
    turn: tokio::sync::Mutex<()>,
    /// Attempts finished (a round of the nodes each), and why the last one
    /// failed (`None`: it succeeded).
    rounds: AtomicU64,
    last_failure: Mutex<Option<Failure>>,
    /// The node the current (or last) connection was on; `NO_NODE` before
    /// the first. A new connection tries it last.
    last_node: AtomicUsize,
}

/// What a backend got from the hub when it asked for a connection.
pub(super) enum Turn<'a> {
    /// A live connection, shared.
    Live(Arc<AmqpConn>),
    /// An attempt ended while this backend waited for its turn, and failed:
    /// its error, for this backend to count as its own failure.
    Failed(Error),
    /// Nobody has a live connection: open one, then [`Hub::opened`] or
    /// [`Hub::failed`]. The guard keeps the others waiting meanwhile.
    Open(tokio::sync::MutexGuard<'a, ()>),
}

impl Hub {
    fn new() -> Hub {
        Hub {
            conn: Mutex::new(Weak::new()),
            turn: tokio::sync::Mutex::new(()),
            rounds: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            last_node: AtomicUsize::new(NO_NODE),
        }
    }

    pub(super) fn last_node(&self) -> usize {
        self.last_node.load(Ordering::Relaxed)
    }

    /// The live connection, if there is one.
    pub(super) fn live(&self) -> Option<Arc<AmqpConn>> {
        self.conn
            .lock()
            .upgrade()
            .filter(|c| c.conn.status().connected())
    }

    /// The live connection, or the outcome of the attempt this call waited
    /// for, or the turn to open one.
    pub(super) async fn turn(&self) -> Turn<'_> {
        let rounds = self.rounds.load(Ordering::Acquire);
        if let Some(live) = self.live() {
            return Turn::Live(live);
        }
        let guard = self.turn.lock().await;
        if let Some(live) = self.live() {
            return Turn::Live(live);
        }
        if self.rounds.load(Ordering::Acquire) != rounds {
            if let Some(failure) = self.last_failure.lock().as_ref() {
                return Turn::Failed(failure.error());
            }
        }
        Turn::Open(guard)
    }

    /// The connection opened on `node`: shared from now on.
    pub(super) fn opened(
        self: &Arc<Self>,
        conn: Connection,
        node: usize,
        _turn: tokio::sync::MutexGuard<'_, ()>,
    ) -> Arc<AmqpConn> {
        let shared = Arc::new(AmqpConn {
            conn,
            _hub: self.clone(),
        });
        *self.conn.lock() = Arc::downgrade(&shared);
        self.last_node.store(node, Ordering::Relaxed);
        *self.last_failure.lock() = None;
        self.rounds.fetch_add(1, Ordering::AcqRel);
        shared
    }

    /// No node answered: the backends waiting for this attempt get `error`
    /// too (its text is scrubbed already, and theirs would be the same).
    pub(super) fn failed(&self, error: &Error, _turn: tokio::sync::MutexGuard<'_, ()>) {
        *self.last_failure.lock() = Some(Failure::of(error));
        self.rounds.fetch_add(1, Ordering::AcqRel);
    }
}

/// A failed attempt, kept to hand to the backends that waited for it: the
/// same kind of error (a wrong password is not a lost connection).
enum Failure {
    Config(String),
    Backend(String),
    Lost(String),
}

impl Failure {
    fn of(e: &Error) -> Failure {
        match e {
            Error::Config(text) => Failure::Config(text.clone()),
            Error::Backend(text) => Failure::Backend(text.clone()),
            Error::ConnectionLost(text) => Failure::Lost(text.clone()),
            other => Failure::Lost(other.to_string()),
        }
    }

    fn error(&self) -> Error {
        match self {
            Failure::Config(text) => Error::Config(text.clone()),
            Failure::Backend(text) => Error::Backend(text.clone()),
            Failure::Lost(text) => Error::ConnectionLost(text.clone()),
        }
    }
}

/// The live hubs; the registry never holds one alive.
static HUBS: SharedByKey<Key, Hub> = SharedByKey::new();

/// The process's hub for `key`, made if no backend holds one.
pub(super) fn hub(key: &Key) -> Arc<Hub> {
    HUBS.get_or_make(key.clone(), Hub::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(url: &str, name: Option<&str>) -> Key {
        Key {
            nodes: vec![url.parse().unwrap()],
            connection_name: name.map(str::to_string),
            connect_timeout: Duration::from_secs(10),
            runtime: None,
        }
    }

    #[test]
    fn one_hub_per_key_until_the_last_holder_lets_go() {
        let a = key("amqp://u:p@h:5672/%2f", None);
        let first = hub(&a);
        let second = hub(&a);
        assert!(Arc::ptr_eq(&first, &second));
        for other in [
            key("amqp://u:other@h:5672/%2f", None),
            key("amqp://u:p@h:5672/v", None),
            key("amqps://u:p@h:5672/%2f", None),
            key("amqp://u:p@h:5672/%2f?heartbeat=5", None),
            key("amqp://u:p@h:5672/%2f", Some("reports")),
        ] {
            assert!(!Arc::ptr_eq(&first, &hub(&other)));
        }
        let mut later = a.clone();
        later.connect_timeout = Duration::from_secs(3);
        assert!(!Arc::ptr_eq(&first, &hub(&later)));
        let weak = Arc::downgrade(&first);
        drop(first);
        drop(second);
        assert!(weak.upgrade().is_none(), "the hub outlived its last holder");
        assert_eq!(Arc::strong_count(&hub(&a)), 1);
    }

    #[tokio::test]
    async fn a_failed_attempt_is_shared_with_those_who_waited_for_it() {
        let h = Arc::new(Hub::new());
        let Turn::Open(guard) = h.turn().await else {
            panic!("the first caller opens");
        };
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move {
                match h.turn().await {
                    Turn::Failed(e) => e.to_string(),
                    _ => "not shared".to_string(),
                }
            })
        };
        tokio::task::yield_now().await;
        h.failed(&Error::Backend("refused".to_string()), guard);
        assert_eq!(waiter.await.unwrap(), "backend error: refused");
        // A caller arriving after the failure gets its own attempt.
        assert!(matches!(h.turn().await, Turn::Open(_)));
    }
}
