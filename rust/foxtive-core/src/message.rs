//! What a delivery is, and what can be done with it.

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

/// How the backend finds a delivery again to settle it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// The memory backend's sequence number.
    Seq(u64),
    /// An AMQP delivery tag, valid only on the channel generation `epoch`.
    Amqp { delivery_tag: u64, epoch: u64 },
    /// A Redis stream entry id.
    Stream(String),
    /// Handed to the pool by the user (`pool.dispatch`); settling it reaches
    /// no broker.
    Local(u64),
    /// An opaque handle kept by a backend that lives outside the core (a
    /// backend written in Python).
    Handle(u64),
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
