//! What a RabbitMQ consumer is configured with, and how it is checked.

use crate::message::{header, HeaderValue, Headers};
use crate::policy::ReconnectStrategy;
use crate::{Error, Result};
use std::time::Duration;

/// The kind of queue to declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(Error::Config(format!(
                "queue_type: unknown value {other:?}; allowed: \"classic\", \"quorum\""
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// Consumer settings. Build with [`RabbitMqConfig::new`] and check with
/// [`RabbitMqConfig::validate`] (the backend does both).
#[derive(Debug, Clone)]
pub struct RabbitMqConfig {
    pub queue_name: String,
    /// Unique per process by default: host, pid and a random part.
    pub consumer_tag: String,
    pub prefetch_count: u16,
    /// Declare the queue when it does not exist (an existing queue is used as it is).
    pub declare: bool,
    pub durable: bool,
    pub queue_type: QueueType,
    pub queue_arguments: Headers,
    /// Declare the queue with `x-max-priority` (1-255): messages then carry
    /// a priority, the higher delivered first. `None`: no priorities.
    pub max_priority: Option<u8>,
    /// Bind the queue to this exchange (declared durable if missing).
    pub exchange: Option<String>,
    pub exchange_type: String,
    /// Binding key; the queue name when `None`.
    pub routing_key: Option<String>,
    pub connection_name: Option<String>,
    /// Heartbeat in seconds; the broker's proposal when `None`.
    pub heartbeat: Option<u16>,
    /// Delay-bucket queues are named `{retry_queue_prefix}.{milliseconds}`.
    pub retry_queue_prefix: Option<String>,
    pub dead_letter_queue: Option<String>,
    pub reconnect: ReconnectStrategy,
    /// How long one connection attempt to one node may take (TCP, AMQP
    /// handshake, channels, declarations) before it counts as failed.
    pub connect_timeout: Duration,
}

/// Default for [`RabbitMqConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// AMQP short strings (queue names, tags, keys) hold at most 255 bytes.
const MAX_NAME: usize = 255;
/// A connect timeout above this is a typo (it would hide a dead broker).
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3600);

impl RabbitMqConfig {
    pub fn new(queue_name: impl Into<String>) -> Self {
        RabbitMqConfig {
            queue_name: queue_name.into(),
            consumer_tag: default_consumer_tag(),
            prefetch_count: 100,
            declare: true,
            durable: true,
            queue_type: QueueType::Classic,
            queue_arguments: Vec::new(),
            max_priority: None,
            exchange: None,
            exchange_type: "direct".to_string(),
            routing_key: None,
            connection_name: None,
            heartbeat: None,
            retry_queue_prefix: None,
            dead_letter_queue: None,
            reconnect: ReconnectStrategy::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    pub fn retry_prefix(&self) -> String {
        self.retry_queue_prefix
            .clone()
            .unwrap_or_else(|| format!("{}.retry", self.queue_name))
    }

    pub fn dlq_name(&self) -> String {
        self.dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.queue_name))
    }

    pub fn binding_key(&self) -> &str {
        self.routing_key.as_deref().unwrap_or(&self.queue_name)
    }

    /// Arguments the main queue is declared with (queue type included).
    pub fn declare_arguments(&self) -> Headers {
        let mut args = self.queue_arguments.clone();
        if self.queue_type == QueueType::Quorum && header(&args, "x-queue-type").is_none() {
            args.push((
                "x-queue-type".to_string(),
                HeaderValue::Str("quorum".to_string()),
            ));
        }
        if let Some(n) = self.max_priority {
            if header(&args, "x-max-priority").is_none() {
                args.push(("x-max-priority".to_string(), HeaderValue::Int(i64::from(n))));
            }
        }
        args
    }

    /// Whether the queue is declared with priorities (`max_priority`, or
    /// `x-max-priority` in `queue_arguments`): publishing with a priority
    /// to a queue without them is a `ConfigError` (it would be ignored).
    pub fn has_priorities(&self) -> bool {
        self.max_priority.is_some() || header(&self.queue_arguments, "x-max-priority").is_some()
    }

    pub fn validate(&self) -> Result<()> {
        check_name("queue_name", &self.queue_name, false)?;
        check_name("consumer_tag", &self.consumer_tag, false)?;
        if self.prefetch_count == 0 {
            return Err(Error::Config(
                "prefetch_count: must be between 1 and 65535 (0 would mean unlimited)".to_string(),
            ));
        }
        self.validate_exchange()?;
        self.validate_names()?;
        self.validate_queue()
    }

    /// The exchange to bind to, its type and the routing key.
    fn validate_exchange(&self) -> Result<()> {
        if let Some(ex) = &self.exchange {
            check_name("exchange", ex, false)?;
            if ex.starts_with("amq.")
                && !matches!(
                    ex.as_str(),
                    "amq.direct" | "amq.topic" | "amq.fanout" | "amq.headers"
                )
            {
                return Err(Error::Config(format!(
                    "exchange: {ex:?} is reserved by the broker (names starting with \"amq.\")"
                )));
            }
        }
        if !matches!(
            self.exchange_type.as_str(),
            "direct" | "topic" | "fanout" | "headers"
        ) {
            return Err(Error::Config(format!(
                "exchange_type: unknown value {:?}; allowed: \"direct\", \"topic\", \"fanout\", \"headers\"",
                self.exchange_type
            )));
        }
        if let Some(rk) = &self.routing_key {
            check_name("routing_key", rk, true)?;
            if self.exchange.is_none() {
                return Err(Error::Config(
                    "routing_key: only meaningful with an exchange to bind to; set exchange too"
                        .to_string(),
                ));
            }
        }
        Ok(())
    }

    /// The connection name and the names derived from the queue's.
    fn validate_names(&self) -> Result<()> {
        if let Some(name) = &self.connection_name {
            if name.is_empty() {
                return Err(Error::Config(
                    "connection_name: must be a non-empty string or None".to_string(),
                ));
            }
            check_name("connection_name", name, false)?;
        }
        if let Some(prefix) = &self.retry_queue_prefix {
            check_name("retry_queue_prefix", prefix, false)?;
            if prefix.len() > MAX_NAME - 12 {
                return Err(Error::Config(format!(
                    "retry_queue_prefix: at most {} bytes (queue names hold 255)",
                    MAX_NAME - 12
                )));
            }
        }
        if let Some(dlq) = &self.dead_letter_queue {
            check_name("dead_letter_queue", dlq, false)?;
        }
        if self.retry_prefix().len() > MAX_NAME - 12 {
            return Err(Error::Config(format!(
                "queue_name: at most {} bytes so that its retry queues fit in 255",
                MAX_NAME - 12 - ".retry".len()
            )));
        }
        if self.dlq_name() == self.queue_name {
            return Err(Error::Config(
                "dead_letter_queue: must differ from queue_name".to_string(),
            ));
        }
        Ok(())
    }

    /// The queue's type, arguments, durability and the connect timeout.
    fn validate_queue(&self) -> Result<()> {
        match header(&self.queue_arguments, "x-queue-type") {
            None => {}
            Some(HeaderValue::Str(t)) if t == self.queue_type.as_str() => {}
            Some(other) => {
                return Err(Error::Config(format!(
                    "queue_arguments: x-queue-type {other:?} contradicts queue_type {:?}; \
                     set queue_type instead",
                    self.queue_type.as_str()
                )))
            }
        }
        if self.max_priority == Some(0) {
            return Err(Error::Config(
                "max_priority: must be between 1 and 255 (10 covers priorities 0-9), or None"
                    .to_string(),
            ));
        }
        if let (Some(n), Some(arg)) = (
            self.max_priority,
            header(&self.queue_arguments, "x-max-priority"),
        ) {
            if arg.as_u64() != Some(u64::from(n)) {
                return Err(Error::Config(format!(
                    "queue_arguments: x-max-priority {arg:?} contradicts max_priority {n}; \
                     set max_priority only"
                )));
            }
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > MAX_CONNECT_TIMEOUT {
            return Err(Error::Config(format!(
                "connect_timeout: must be more than 0 and at most {} seconds, got {}",
                MAX_CONNECT_TIMEOUT.as_secs(),
                self.connect_timeout.as_secs_f64()
            )));
        }
        if self.queue_type == QueueType::Quorum && !self.durable {
            return Err(Error::Config(
                "durable: quorum queues are always durable; use durable=True with queue_type=\"quorum\""
                    .to_string(),
            ));
        }
        Ok(())
    }
}

fn check_name(what: &str, value: &str, allow_empty: bool) -> Result<()> {
    if value.is_empty() && !allow_empty {
        return Err(Error::Config(format!("{what}: must be a non-empty string")));
    }
    if value.len() > MAX_NAME {
        return Err(Error::Config(format!(
            "{what}: at most {MAX_NAME} bytes, got {}",
            value.len()
        )));
    }
    Ok(())
}

/// `foxtive-{host}-{pid}-{random}`: unique per process and per backend.
pub fn default_consumer_tag() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_string());
    let host: String = host.chars().take(64).collect();
    format!(
        "foxtive-{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_named() {
        let c = RabbitMqConfig::new("emails");
        c.validate().unwrap();
        assert_eq!(c.retry_prefix(), "emails.retry");
        assert_eq!(c.dlq_name(), "emails.dlq");
        assert_eq!(c.prefetch_count, 100);
        assert!(c.consumer_tag.starts_with("foxtive-"));
        assert_ne!(c.consumer_tag, RabbitMqConfig::new("emails").consumer_tag);
    }

    #[test]
    fn rejects_bad_values() {
        let mut c = RabbitMqConfig::new("");
        assert!(c.validate().unwrap_err().to_string().contains("queue_name"));
        c.queue_name = "q".into();
        c.prefetch_count = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("prefetch_count"));
        c.prefetch_count = 1;
        c.routing_key = Some("k".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("routing_key"));
        c.routing_key = None;
        assert!(QueueType::parse("stream")
            .unwrap_err()
            .to_string()
            .contains("classic"));
        c.connect_timeout = Duration::ZERO;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("connect_timeout"));
        c.connect_timeout = DEFAULT_CONNECT_TIMEOUT;
        c.queue_type = QueueType::Quorum;
        c.durable = false;
        assert!(c.validate().unwrap_err().to_string().contains("durable"));
    }

    #[test]
    fn max_priority_is_declared() {
        let mut c = RabbitMqConfig::new("q");
        assert!(!c.has_priorities());
        c.max_priority = Some(10);
        c.validate().unwrap();
        assert!(c.has_priorities());
        assert_eq!(
            header(&c.declare_arguments(), "x-max-priority"),
            Some(&HeaderValue::Int(10))
        );
        c.max_priority = Some(0);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_priority"));
        c.max_priority = Some(5);
        c.queue_arguments = vec![("x-max-priority".into(), HeaderValue::Int(9))];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("contradicts"));
    }

    #[test]
    fn quorum_adds_queue_type() {
        let mut c = RabbitMqConfig::new("q");
        c.queue_type = QueueType::Quorum;
        assert_eq!(
            header(&c.declare_arguments(), "x-queue-type"),
            Some(&HeaderValue::Str("quorum".into()))
        );
    }
}
