//! How many messages a queue holds, as its broker can tell: the numbers of
//! the dashboard's queue view. A field is `None` where the broker cannot
//! tell it without walking every message (RabbitMQ keeps no count of the
//! delayed messages waiting in its delay buckets, for one).

/// Counts of one queue at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Waiting and due now.
    pub ready: Option<u64>,
    /// Waiting for a later time (delayed publishes, retries).
    pub delayed: Option<u64>,
    /// Delivered to a consumer and not settled yet.
    pub in_progress: Option<u64>,
    /// In the queue's own dead-letter store.
    pub dead: Option<u64>,
    /// Consumers attached, where the broker counts them.
    pub consumers: Option<u64>,
}

impl QueueStats {
    /// `(field name, value)` pairs, in the documented order.
    pub fn fields(&self) -> [(&'static str, Option<u64>); 5] {
        [
            ("ready", self.ready),
            ("delayed", self.delayed),
            ("in_progress", self.in_progress),
            ("dead", self.dead),
            ("consumers", self.consumers),
        ]
    }
}

/// A count from a database or broker reply (never negative).
pub(crate) fn count(n: i64) -> Option<u64> {
    Some(u64::try_from(n).unwrap_or(0))
}
