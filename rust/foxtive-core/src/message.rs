//! What a delivery is, and what can be done with it.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// A header value, typed as the broker sent it. Nothing is dropped: AMQP
/// arrays and nested tables (such as `x-death`) keep their structure.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Bytes),
    Array(Vec<HeaderValue>),
    Table(Headers),
}

/// Ordered header pairs. A `Vec` is cheaper than a map for the handful of
/// headers a message carries, and keeps the broker's order.
pub type Headers = Vec<(String, HeaderValue)>;

/// Find a header by name.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a HeaderValue> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Set (replace or append) a header.
pub fn set_header(headers: &mut Headers, name: &str, value: HeaderValue) {
    match headers.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => headers.push((name.to_string(), value)),
    }
}

impl HeaderValue {
    /// The value as a non-negative integer, if it is one (ints, or digit strings).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            HeaderValue::Int(i) if *i >= 0 => Some(*i as u64),
            HeaderValue::Str(s) => s.parse().ok(),
            HeaderValue::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

/// How the backend finds a delivery again to settle it: a value of the
/// backend's own type (an AMQP delivery tag, a stream entry id, a row id...),
/// opaque to everyone else. Only the backend that made it reads it back, so a
/// new backend adds its own type in its own folder and nothing here changes.
///
/// A value that fits in two words ([`PackedReceipt`]: a tag, a sequence
/// number, a row id) is kept inline, tagged with its type: no allocation per
/// delivery on the hot path. Anything else is shared behind an `Arc`.
#[derive(Clone)]
pub struct Receipt(Repr);

#[derive(Clone)]
enum Repr {
    Packed { kind: TypeId, words: [u64; 2] },
    Value(Arc<dyn ReceiptValue>),
}

/// What a receipt may hold: any plain value a backend defines.
pub trait ReceiptValue: Any + Send + Sync + fmt::Debug {}
impl<T: Any + Send + Sync + fmt::Debug> ReceiptValue for T {}

/// A receipt value of two words at most, kept inline in the [`Receipt`].
pub trait PackedReceipt: Copy + Send + Sync + 'static {
    fn pack(self) -> [u64; 2];
    fn unpack(words: [u64; 2]) -> Self;
}

impl Receipt {
    /// A receipt holding any value (shared behind an `Arc`).
    pub fn new<T: ReceiptValue>(value: T) -> Self {
        Receipt(Repr::Value(Arc::new(value)))
    }

    /// A receipt holding a small value inline.
    pub fn packed<T: PackedReceipt>(value: T) -> Self {
        Receipt(Repr::Packed {
            kind: TypeId::of::<T>(),
            words: value.pack(),
        })
    }

    /// The value, if this receipt holds a `T` made with [`Receipt::new`].
    pub fn get<T: Any>(&self) -> Option<&T> {
        match &self.0 {
            Repr::Value(value) => {
                let value: &dyn Any = value.as_ref();
                value.downcast_ref::<T>()
            }
            Repr::Packed { .. } => None,
        }
    }

    /// The value, if this receipt holds a `T` made with [`Receipt::packed`].
    pub fn unpacked<T: PackedReceipt>(&self) -> Option<T> {
        match self.0 {
            Repr::Packed { kind, words } if kind == TypeId::of::<T>() => Some(T::unpack(words)),
            _ => None,
        }
    }

    /// Whether the user handed this delivery to the pool (`pool.dispatch`).
    pub fn is_local(&self) -> bool {
        self.unpacked::<LocalReceipt>().is_some()
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Packed { words, .. } => f.debug_tuple("Receipt").field(words).finish(),
            Repr::Value(value) => f.debug_tuple("Receipt").field(value).finish(),
        }
    }
}

/// The receipt of a delivery handed to the pool by the user (`pool.dispatch`):
/// settling it reaches no broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalReceipt(pub u64);

impl PackedReceipt for LocalReceipt {
    fn pack(self) -> [u64; 2] {
        [self.0, 0]
    }
    fn unpack(words: [u64; 2]) -> Self {
        LocalReceipt(words[0])
    }
}

/// One delivery, as received. Immutable once built.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Broker message id (publisher-set where there is one).
    pub id: String,
    pub body: Bytes,
    pub headers: Headers,
    /// 1 on the first delivery; durable across retries and restarts.
    pub attempt: u32,
    pub queue: Arc<str>,
    pub routing_key: Option<String>,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    pub reply_to: Option<String>,
    pub priority: Option<u8>,
    /// Unix time the core received it.
    pub received_at: f64,
    pub redelivered: bool,
    pub receipt: Receipt,
}

impl Delivery {
    /// A delivery with just a body, for the memory backend and tests.
    pub fn new(id: impl Into<String>, body: Bytes, queue: Arc<str>, receipt: Receipt) -> Self {
        Delivery {
            id: id.into(),
            body,
            headers: Vec::new(),
            attempt: 1,
            queue,
            routing_key: None,
            correlation_id: None,
            content_type: None,
            reply_to: None,
            priority: None,
            received_at: crate::clock::unix_now(),
            redelivered: false,
            receipt,
        }
    }

    /// The message as it should be republished for another attempt or to a
    /// dead-letter queue: same id, body, properties and headers.
    pub fn to_outgoing(&self) -> Outgoing {
        Outgoing {
            body: self.body.clone(),
            headers: self.headers.clone(),
            message_id: Some(self.id.clone()),
            delay: None,
            correlation_id: self.correlation_id.clone(),
            content_type: self.content_type.clone(),
            reply_to: self.reply_to.clone(),
            priority: self.priority,
            routing_key: self.routing_key.clone(),
            attempt: self.attempt,
            dedup: None,
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub body: Bytes,
    pub headers: Headers,
    /// Kept on every copy; generated when `None`.
    pub message_id: Option<String>,
    /// Deliver no earlier than this from now; held by the broker.
    pub delay: Option<Duration>,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    pub reply_to: Option<String>,
    pub priority: Option<u8>,
    pub routing_key: Option<String>,
    /// The attempt number the copy will carry when delivered (1 for new messages).
    pub attempt: u32,
    /// Publish only if no message took this key within its TTL; see [`Dedup`].
    pub dedup: Option<Dedup>,
}

/// Publish deduplication: a message with a key is enqueued only if no
/// message published with the same key (on the same queue) took it less
/// than `ttl` ago; otherwise nothing is enqueued and `publish` returns the
/// id of the message holding the key. Backends that keep state check and
/// enqueue in one atomic step (Redis: one script; SQL: one transaction;
/// memory: one lock); a backend that cannot refuses with `Error::Config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedup {
    pub key: String,
    pub ttl: Duration,
}

impl Outgoing {
    pub fn new(body: Bytes) -> Self {
        Outgoing {
            body,
            attempt: 1,
            ..Default::default()
        }
    }
}

/// Why a message failed, as recorded with a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The exception's class name: a bounded label, never free text.
    pub error_type: String,
    pub error_message: String,
    pub worker_id: Arc<str>,
    pub poison_pill: bool,
}

/// The one way a delivery ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Done.
    Ack,
    /// Redeliver later through the broker: a durable copy is stored first,
    /// then the original is acknowledged. `count_attempt` is false when the
    /// message is handed back without having been tried (open circuit).
    Retry {
        delay: Duration,
        count_attempt: bool,
    },
    /// Store in the dead-letter queue, then acknowledge.
    DeadLetter(Failure),
    /// Give back unsettled, untried (shutdown): the broker delivers it again.
    Requeue,
}

impl Settlement {
    /// A short, bounded name for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Settlement::Ack => "success",
            Settlement::Retry { .. } => "retried",
            Settlement::DeadLetter(_) => "dead_lettered",
            Settlement::Requeue => "requeued",
        }
    }
}

#[cfg(test)]
mod receipt_tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Other(u64);
    impl PackedReceipt for Other {
        fn pack(self) -> [u64; 2] {
            [self.0, 0]
        }
        fn unpack(words: [u64; 2]) -> Self {
            Other(words[0])
        }
    }

    #[test]
    fn a_receipt_reads_back_only_as_the_type_that_made_it() {
        let local = Receipt::packed(LocalReceipt(7));
        assert_eq!(local.unpacked::<LocalReceipt>(), Some(LocalReceipt(7)));
        assert_eq!(local.unpacked::<Other>(), None);
        assert!(local.get::<LocalReceipt>().is_none());
        assert!(local.is_local());
        let boxed = Receipt::new(String::from("5-0"));
        assert_eq!(boxed.get::<String>().map(String::as_str), Some("5-0"));
        assert_eq!(boxed.unpacked::<LocalReceipt>(), None);
        assert!(!boxed.is_local());
        assert!(!Receipt::packed(Other(7)).is_local());
    }
}
