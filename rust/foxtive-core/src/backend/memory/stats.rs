//! The memory backend's counts: read under its lock, exact.

use std::cmp::Reverse;

use tokio::time::Instant;

use super::MemoryBackend;
use crate::backend::QueueStats;

impl MemoryBackend {
    /// Ready (due delayed entries included), delayed, unacked and dead
    /// counts; consumers are not counted in process.
    pub fn stats(&self) -> QueueStats {
        let now = Instant::now();
        let store = self.store.lock();
        let due = store
            .delayed
            .iter()
            .filter(|Reverse((at, key))| *at <= now && store.delayed_entries.contains_key(key))
            .count();
        let as_u64 = |n: usize| Some(n as u64);
        QueueStats {
            ready: as_u64(store.ready.len() + due),
            delayed: as_u64(store.delayed_entries.len().saturating_sub(due)),
            in_progress: as_u64(store.unacked.len()),
            dead: as_u64(store.dead.len()),
            consumers: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::backend::Backend;
    use crate::message::Outgoing;

    #[tokio::test]
    async fn counts_ready_delayed_and_in_progress() {
        let b = MemoryBackend::new("stats").unwrap();
        b.publish_bodies(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        let mut later = Outgoing::new(Bytes::from_static(b"c"));
        later.delay = Some(Duration::from_secs(3600));
        b.publish_now(vec![later]);
        let got = b.receive(1, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        let s = b.queue_stats().await.unwrap().unwrap();
        assert_eq!(s.ready, Some(1));
        assert_eq!(s.delayed, Some(1));
        assert_eq!(s.in_progress, Some(1));
        assert_eq!(s.dead, Some(0));
        assert_eq!(s.consumers, None);
    }
}
