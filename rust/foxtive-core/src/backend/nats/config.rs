//! Settings of the NATS JetStream backend, validated once.

use std::time::Duration;

use crate::policy::ReconnectStrategy;
use crate::{Error, Result};

/// Where a NATS backend reads, retries and dead-letters.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsConfig {
    /// The stream holding `subject` (created with WorkQueue retention when
    /// absent and `declare` is on).
    pub stream: String,
    /// Where `publish` goes and what the durable consumer filters on.
    pub subject: String,
    /// The durable pull consumer shared by every worker of the queue.
    pub durable: String,
    /// How long a delivery stays with a worker before the server redelivers it.
    pub ack_wait: Duration,
    /// Messages asked for in one pull request.
    pub prefetch: usize,
    /// Create the streams and the consumer when absent.
    pub declare: bool,
    /// Dead letters go here, in a stream foxtive creates when none holds it.
    pub dlq_subject: String,
    /// Delayed publishes wait here until due (see `delay.rs`).
    pub delay_subject: String,
    /// A message delivered more often than this is a poison pill: it is
    /// dead-lettered instead of handed out. The consumer's `max_deliver` is
    /// this + 1, so the server keeps one delivery for foxtive to do that.
    pub max_deliver: u32,
    /// The consumer's `max_ack_pending`: deliveries out and not settled,
    /// retries waiting for their NAK delay included.
    pub max_ack_pending: i64,
    pub reconnect: ReconnectStrategy,
}

impl NatsConfig {
    /// The names `backend_from_url("nats://...", queue)` uses: subject
    /// `queue`, stream `queue` upper-cased with other characters `_`,
    /// durable `foxtive`.
    pub fn for_queue(queue: &str) -> Self {
        NatsConfig {
            stream: stream_name_for(queue),
            subject: queue.to_string(),
            durable: "foxtive".to_string(),
            ack_wait: Duration::from_secs(30),
            prefetch: 256,
            declare: true,
            dlq_subject: format!("{queue}.dlq"),
            delay_subject: format!("{queue}.delayed"),
            max_deliver: 10,
            max_ack_pending: 20_000,
            reconnect: ReconnectStrategy::default(),
        }
    }

    /// The stream foxtive creates for the dead letters when no stream holds
    /// `dlq_subject`.
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.stream)
    }

    /// The stream foxtive creates for delayed publishes.
    pub fn delay_stream(&self) -> String {
        format!("{}_DELAYED", self.stream)
    }

    /// Check every setting; the error names the setting and what is allowed.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [("stream", &self.stream), ("durable", &self.durable)] {
            if value.is_empty()
                || value
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
            {
                return Err(Error::Config(format!(
                    "{name}: must be a non-empty name without spaces, '.', '*', '>', '/' or '\\', got {value:?}"
                )));
            }
        }
        for (name, value) in [
            ("subject", &self.subject),
            ("dlq_subject", &self.dlq_subject),
            ("delay_subject", &self.delay_subject),
        ] {
            valid_subject(name, value)?;
        }
        if self.dlq_subject == self.subject || self.delay_subject == self.subject {
            return Err(Error::Config(
                "dlq_subject and delay_subject: must differ from subject".to_string(),
            ));
        }
        if self.dlq_subject == self.delay_subject {
            return Err(Error::Config(
                "delay_subject: must differ from dlq_subject".to_string(),
            ));
        }
        if self.ack_wait < Duration::from_secs(1) || self.ack_wait > Duration::from_secs(24 * 3600)
        {
            return Err(Error::Config(format!(
                "ack_wait: must be between 1 and 86400 seconds, got {}",
                self.ack_wait.as_secs_f64()
            )));
        }
        if !(1..=10_000).contains(&self.prefetch) {
            return Err(Error::Config(format!(
                "prefetch: must be between 1 and 10000, got {}",
                self.prefetch
            )));
        }
        if self.max_deliver == 0 || self.max_deliver > 1_000_000 {
            return Err(Error::Config(format!(
                "max_deliver: must be between 1 and 1000000, got {}",
                self.max_deliver
            )));
        }
        if self.max_ack_pending != -1 && self.max_ack_pending < self.prefetch as i64 {
            return Err(Error::Config(format!(
                "max_ack_pending: must be -1 (no limit) or >= prefetch ({}), got {}",
                self.prefetch, self.max_ack_pending
            )));
        }
        Ok(())
    }
}

/// `queue` upper-cased, every character other than a letter or a digit `_`.
pub fn stream_name_for(queue: &str) -> String {
    queue
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A literal subject: dot-separated non-empty tokens, no wildcards, no spaces.
fn valid_subject(name: &str, subject: &str) -> Result<()> {
    let ok = !subject.is_empty()
        && subject.split('.').all(|t| {
            !t.is_empty()
                && t != "*"
                && t != ">"
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{name}: must be a literal NATS subject (dot-separated tokens, no wildcards or spaces), got {subject:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_queue() {
        let c = NatsConfig::for_queue("emails.high-prio");
        c.validate().unwrap();
        assert_eq!(c.stream, "EMAILS_HIGH_PRIO");
        assert_eq!(c.dlq_subject, "emails.high-prio.dlq");
        assert_eq!(c.dlq_stream(), "EMAILS_HIGH_PRIO_DLQ");
        assert_eq!(c.delay_stream(), "EMAILS_HIGH_PRIO_DELAYED");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let base = NatsConfig::for_queue("q");
        let cases = [
            (
                "stream",
                NatsConfig {
                    stream: "a.b".into(),
                    ..base.clone()
                },
            ),
            (
                "subject",
                NatsConfig {
                    subject: "q.*".into(),
                    ..base.clone()
                },
            ),
            (
                "dlq_subject",
                NatsConfig {
                    dlq_subject: "q".into(),
                    ..base.clone()
                },
            ),
            (
                "ack_wait",
                NatsConfig {
                    ack_wait: Duration::ZERO,
                    ..base.clone()
                },
            ),
            (
                "prefetch",
                NatsConfig {
                    prefetch: 0,
                    ..base.clone()
                },
            ),
            (
                "max_deliver",
                NatsConfig {
                    max_deliver: 0,
                    ..base.clone()
                },
            ),
            (
                "max_ack_pending",
                NatsConfig {
                    max_ack_pending: 3,
                    ..base.clone()
                },
            ),
        ];
        for (name, c) in cases {
            assert!(
                matches!(c.validate(), Err(Error::Config(m)) if m.starts_with(name)),
                "{name}"
            );
        }
    }
}
