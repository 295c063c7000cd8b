//! What the backends of one process share when nothing about it differs
//! between them (a broker connection, a database file's write slot): found
//! by a key that says what makes it interchangeable, and kept alive only by
//! the backends holding it, so the last one to let go closes it.
//!
//! One registry type serves every backend (SQLite's slots, PostgreSQL's,
//! RabbitMQ's and Redis's connections): each keeps a `static` of it.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Values shared by key; the registry itself never holds one alive. A few
/// entries per process (one per broker or file), so a list, and keys only
/// need `PartialEq` (an AMQP URI has no `Hash`).
pub(crate) struct SharedByKey<K, V> {
    entries: Mutex<Vec<(K, Weak<V>)>>,
}

impl<K: PartialEq, V> SharedByKey<K, V> {
    pub const fn new() -> Self {
        SharedByKey {
            entries: parking_lot::const_mutex(Vec::new()),
        }
    }

    /// The live value of `key`, else a new one from `make` (found by the
    /// next caller as long as somebody holds it).
    pub fn get_or_make(&self, key: K, make: impl FnOnce() -> V) -> Arc<V> {
        let mut entries = self.entries.lock();
        if let Some(live) = entries
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return live;
        }
        entries.retain(|(_, w)| w.strong_count() > 0);
        let fresh = Arc::new(make());
        entries.push((key, Arc::downgrade(&fresh)));
        fresh
    }
}

/// The tokio runtime this code runs on, part of every connection's key: a
/// connection is driven by a task of the runtime that opened it and dies
/// with it (one runtime in a Python process; one per test in Rust tests).
pub(crate) fn runtime_here() -> Option<tokio::runtime::Id> {
    tokio::runtime::Handle::try_current().ok().map(|h| h.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_key_until_the_last_holder_lets_go() {
        static ALL: SharedByKey<&str, u32> = SharedByKey::new();
        let a = ALL.get_or_make("a", || 1);
        let again = ALL.get_or_make("a", || 2);
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(*ALL.get_or_make("b", || 3), 3);
        drop((a, again));
        assert_eq!(
            *ALL.get_or_make("a", || 4),
            4,
            "a value outlived its holders"
        );
    }
}
