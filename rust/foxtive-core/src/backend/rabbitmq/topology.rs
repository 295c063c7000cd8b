//! What RabbitMQ says when it refuses a declaration, and what foxtive makes
//! of it.
//!
//! RabbitMQ answers a `queue.declare` / `exchange.declare` whose arguments
//! differ from the existing entity's with 406 PRECONDITION_FAILED and the
//! text "inequivalent arg 'K' for queue 'Q' in vhost 'V': received R but
//! current is C", one argument at a time. AMQP has no way to read a queue's
//! arguments, so this text is the only place they show; the format has been
//! stable since RabbitMQ 3.0.
//!
//! Declaring the topology lives here too: the main queue and its exchange
//! binding at connect time, and the dead-letter queue and delay buckets
//! (`ensure_target`) before anything is published to them.

use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::ExchangeKind;

use super::fields::table_from_headers;
use super::link::Link;
use super::{Shared, Target};
use crate::message::{header, HeaderValue, Headers};
use crate::{Error, Result};

/// Unused delay buckets disappear after twice their delay plus this.
const BUCKET_EXPIRY_MARGIN_MS: u64 = 60_000;

/// Each refusal names one argument; a queue has a handful at most.
pub const MAX_DECLARE_PROBES: usize = 16;

/// Why the broker refused a declaration, as far as foxtive cares.
#[derive(Debug)]
pub enum Refusal {
    /// 406: the entity exists and differs in this argument.
    Inequivalent(Inequivalent),
    /// 403: no `configure` permission; a passive declare may still work.
    AccessRefused,
    Other,
}

pub fn refusal(e: &lapin::Error) -> Refusal {
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
        return Refusal::Other;
    };
    match amqp.kind() {
        AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => {
            parse_inequivalent(amqp.get_message().as_str())
                .map_or(Refusal::Other, Refusal::Inequivalent)
        }
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Refusal::AccessRefused,
        _ => Refusal::Other,
    }
}

/// The type of a broker's predeclared exchange, which cannot be declared.
pub fn builtin_exchange_type(name: &str) -> Option<&'static str> {
    match name {
        "amq.direct" => Some("direct"),
        "amq.topic" => Some("topic"),
        "amq.fanout" => Some("fanout"),
        "amq.headers" => Some("headers"),
        _ => None,
    }
}

/// What the next `queue.declare` sends, moving towards the existing queue
/// one refusal at a time.
#[derive(Debug, Clone)]
pub struct Probe {
    pub durable: bool,
    pub auto_delete: bool,
    pub args: Headers,
}

impl Probe {
    pub fn new(durable: bool, args: &Headers) -> Self {
        Probe {
            durable,
            auto_delete: false,
            args: args.clone(),
        }
    }

    /// Take the existing queue's value of `diff.arg` when nobody asked for
    /// it (or it is `flexible`); a `Config` error naming the queue and the
    /// difference when the config asked for something else.
    pub fn adopt(
        &mut self,
        queue: &str,
        diff: &Inequivalent,
        asked: &Headers,
        flexible: &[&str],
    ) -> Result<()> {
        let arg = diff.arg.as_str();
        let asked_for = match arg {
            // foxtive never asks for auto-delete; durability it always sets.
            "auto_delete" => false,
            "durable" | "exclusive" => !flexible.contains(&arg),
            _ => header(asked, arg).is_some() && !flexible.contains(&arg),
        };
        if asked_for {
            return Err(Error::Config(mismatch_text("queue", queue, diff)));
        }
        let current_is_true = diff.current.as_ref().is_some_and(|v| v.text == "true");
        match arg {
            "auto_delete" => {
                self.auto_delete = current_is_true;
                return Ok(());
            }
            "durable" => {
                self.durable = current_is_true;
                return Ok(());
            }
            _ => {}
        }
        self.args.retain(|(k, _)| k != arg);
        if let Some(current) = &diff.current {
            let value = current.to_header().ok_or_else(|| {
                Error::Config(format!(
                    "queue '{queue}' has argument {arg} of type {:?}, which foxtive cannot \
                     declare back; manage the queue yourself and set declare=False",
                    current.kind.as_deref().unwrap_or("?")
                ))
            })?;
            self.args.push((arg.to_string(), value));
        }
        Ok(())
    }
}

/// One side of a reported difference: the value as the broker printed it,
/// and its AMQP type name when the broker said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Literal {
    pub text: String,
    pub kind: Option<String>,
}

/// One argument on which a declaration and the existing entity differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inequivalent {
    pub arg: String,
    /// What the declaration sent; `None` when it did not send the argument.
    pub received: Option<Literal>,
    /// What the existing entity has; `None` when it has no such argument.
    pub current: Option<Literal>,
}

/// Read the broker's refusal text; `None` when it is about something else.
pub fn parse_inequivalent(text: &str) -> Option<Inequivalent> {
    const ARG: &str = "inequivalent arg '";
    let rest = &text[text.find(ARG)? + ARG.len()..];
    let arg = &rest[..rest.find('\'')?];
    let rest = &rest[rest.find(": received ")? + ": received ".len()..];
    let split = rest.find(" but current is ")?;
    let received = parse_literal(&rest[..split]);
    let current = parse_literal(rest[split + " but current is ".len()..].trim_end_matches('"'));
    Some(Inequivalent {
        arg: arg.to_string(),
        received,
        current,
    })
}

/// `none`, `'x'` or `the value 'x' of type 't'`.
fn parse_literal(text: &str) -> Option<Literal> {
    let text = text.trim();
    if text == "none" {
        return None;
    }
    if let Some(rest) = text.strip_prefix("the value '") {
        let end = rest.rfind("' of type '")?;
        let kind = rest[end + "' of type '".len()..].trim_end_matches('\'');
        return Some(Literal {
            text: rest[..end].to_string(),
            kind: Some(kind.to_string()),
        });
    }
    Some(Literal {
        text: text.trim_matches('\'').to_string(),
        kind: None,
    })
}

impl Literal {
    /// The value to declare back, when its type is one foxtive can send.
    pub fn to_header(&self) -> Option<HeaderValue> {
        match self.kind.as_deref() {
            None | Some("longstr") | Some("shortstr") => Some(HeaderValue::Str(self.text.clone())),
            Some("bool") => match self.text.as_str() {
                "true" => Some(HeaderValue::Bool(true)),
                "false" => Some(HeaderValue::Bool(false)),
                _ => None,
            },
            Some("byte" | "unsignedbyte" | "short" | "unsignedshort" | "signedint")
            | Some("unsignedint" | "long" | "timestamp") => {
                self.text.parse().ok().map(HeaderValue::Int)
            }
            Some("double" | "float") => self.text.parse().ok().map(HeaderValue::Float),
            Some(_) => None,
        }
    }
}

/// How a side reads in an error: the queue type gets its name even when the
/// argument is absent (a queue without `x-queue-type` is a classic one).
fn describe(arg: &str, side: &Option<Literal>) -> String {
    match (arg, side) {
        ("x-queue-type", None) => "classic".to_string(),
        ("x-queue-type" | "type", Some(v)) => v.text.clone(),
        (_, None) => format!("no {arg}"),
        (_, Some(v)) => format!("{arg}={}", v.text),
    }
}

/// "queue 'emails' exists as classic, config asks for quorum".
pub fn mismatch_text(what: &str, name: &str, diff: &Inequivalent) -> String {
    let article = if matches!(diff.arg.as_str(), "x-queue-type" | "type") {
        "as"
    } else {
        "with"
    };
    let mut text = format!(
        "{what} '{name}' exists {article} {}, config asks for {}; RabbitMQ cannot change \
         an existing {what}: delete it or change the config to match",
        describe(&diff.arg, &diff.current),
        describe(&diff.arg, &diff.received),
    );
    if diff.arg == "x-queue-type" {
        text.push_str(
            " (only quorum queues count deliveries, which foxtive's poison-pill detection needs)",
        );
    }
    text
}

impl Shared {
    pub(super) async fn declare_topology(&self, link: &Link) -> Result<()> {
        let queue = self.config.queue_name.clone();
        if self.config.declare {
            let args = self.config.declare_arguments();
            self.ensure_queue(link, &queue, self.config.durable, &args, &[])
                .await?;
        }
        if let Some(exchange) = &self.config.exchange {
            let mut admin = link.admin.lock().await;
            let kind = match self.config.exchange_type.as_str() {
                "topic" => ExchangeKind::Topic,
                "fanout" => ExchangeKind::Fanout,
                "headers" => ExchangeKind::Headers,
                _ => ExchangeKind::Direct,
            };
            let name = ShortString::from(exchange.as_str());
            let asked = self.config.exchange_type.as_str();
            if let Some(builtin) = builtin_exchange_type(exchange) {
                // Predeclared exchanges cannot be declared; their name says their type.
                if builtin != asked {
                    return Err(Error::Config(format!(
                        "exchange '{exchange}' exists as {builtin}, config asks for {asked}"
                    )));
                }
            } else {
                let opts = ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                let declared = admin
                    .exchange_declare(name.clone(), kind, opts, FieldTable::default())
                    .await;
                if let Err(e) = declared {
                    *admin = self.open_channel(&link.conn, "admin").await?;
                    match refusal(&e) {
                        Refusal::Inequivalent(diff) if diff.arg == "type" => {
                            return Err(Error::Config(mismatch_text("exchange", exchange, &diff)))
                        }
                        // It exists, declared by someone else with another
                        // durability or arguments, or we may not configure
                        // it: bind to it as it is.
                        Refusal::Inequivalent(_) | Refusal::AccessRefused => {}
                        Refusal::Other => {
                            return Err(
                                self.lapin_err(&format!("declaring exchange {exchange:?}"), &e)
                            )
                        }
                    }
                }
            }
            admin
                .queue_bind(
                    ShortString::from(queue.as_str()),
                    name,
                    ShortString::from(self.config.binding_key()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    self.lapin_err(&format!("binding {queue:?} to exchange {exchange:?}"), &e)
                })?;
        }
        Ok(())
    }

    /// Make sure `name` exists with `durable` and `args`. An existing queue
    /// keeps the arguments nobody asked foxtive for (read back from the
    /// broker's refusals and declared back as they are); one that
    /// contradicts what was asked is a `Config` error naming the queue and
    /// the difference, except for the arguments in `flexible`, where the
    /// existing value is taken.
    async fn ensure_queue(
        &self,
        link: &Link,
        name: &str,
        durable: bool,
        args: &crate::message::Headers,
        flexible: &[&str],
    ) -> Result<()> {
        let mut admin = link.admin.lock().await;
        if !admin.status().connected() {
            *admin = self.open_channel(&link.conn, "admin").await?;
        }
        let mut probe = Probe::new(durable, args);
        for _ in 0..MAX_DECLARE_PROBES {
            let opts = QueueDeclareOptions {
                durable: probe.durable,
                auto_delete: probe.auto_delete,
                ..Default::default()
            };
            let declared = admin
                .queue_declare(
                    ShortString::from(name),
                    opts,
                    table_from_headers(&probe.args),
                )
                .await;
            let e = match declared {
                Ok(_) => {
                    link.declared
                        .lock()
                        .insert(name.to_string(), Instant::now());
                    return Ok(());
                }
                Err(e) => e,
            };
            // A refused declaration closes the channel (the broker's close
            // may not be reflected in its status yet: open a new one anyway).
            if link.conn.status().connected() {
                *admin = self.open_channel(&link.conn, "admin").await?;
            }
            match refusal(&e) {
                Refusal::Inequivalent(diff) => probe.adopt(name, &diff, args, flexible)?,
                Refusal::AccessRefused => {
                    // Without `configure` permission an existing queue can
                    // still be used; it just cannot be checked.
                    let passive = QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    };
                    admin
                        .queue_declare(ShortString::from(name), passive, FieldTable::default())
                        .await
                        .map_err(|_| self.lapin_err(&format!("declaring queue {name:?}"), &e))?;
                    tracing::warn!(queue = %name, "no configure permission: using the existing queue without checking its arguments");
                    link.declared
                        .lock()
                        .insert(name.to_string(), Instant::now());
                    return Ok(());
                }
                Refusal::Other => {
                    return Err(self.lapin_err(&format!("declaring queue {name:?}"), &e))
                }
            }
        }
        Err(Error::Backend(format!(
            "declaring queue {name:?}: it differs in more than {MAX_DECLARE_PROBES} arguments"
        )))
    }

    pub(super) async fn ensure_target(&self, link: &Link, target: Target) -> Result<()> {
        match target {
            Target::Main => {
                if !self.config.declare
                    || link.declared.lock().contains_key(&self.config.queue_name)
                {
                    return Ok(());
                }
                let args = self.config.declare_arguments();
                self.ensure_queue(
                    link,
                    &self.config.queue_name,
                    self.config.durable,
                    &args,
                    &[],
                )
                .await
            }
            Target::DeadLetters => {
                if link.declared.lock().contains_key(&self.dlq_name) {
                    return Ok(());
                }
                // Nobody configured the dead-letter queue's durability: one
                // made elsewhere is used as it is.
                self.ensure_queue(link, &self.dlq_name, true, &Vec::new(), &["durable"])
                    .await
            }
            Target::Bucket(ms) => {
                let name = self.bucket_name(ms);
                let expires = ms.saturating_mul(2).saturating_add(BUCKET_EXPIRY_MARGIN_MS);
                // Redeclaring resets the expiry clock; do it often enough that
                // a bucket never expires with a message inside (the last
                // declare is at most (expires - ttl) / 2 old at publish time).
                let refresh = Duration::from_millis((expires - ms) / 2);
                let fresh = link
                    .declared
                    .lock()
                    .get(&name)
                    .is_some_and(|at| at.elapsed() < refresh);
                if fresh {
                    return Ok(());
                }
                let to_int = |v: u64| HeaderValue::Int(i64::try_from(v).unwrap_or(i64::MAX));
                let args = vec![
                    ("x-message-ttl".to_string(), to_int(ms)),
                    ("x-expires".to_string(), to_int(expires)),
                    (
                        "x-dead-letter-exchange".to_string(),
                        HeaderValue::Str(String::new()),
                    ),
                    (
                        "x-dead-letter-routing-key".to_string(),
                        HeaderValue::Str(self.config.queue_name.clone()),
                    ),
                ];
                // A bucket left by another version with another expiry is
                // used as it is rather than refused.
                self.ensure_queue(link, &name, true, &args, &["x-expires"])
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QTYPE: &str = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue \
        'emails' in vhost '/': received the value 'quorum' of type 'longstr' but current is none";

    #[test]
    fn reads_the_refusal() {
        let d = parse_inequivalent(QTYPE).unwrap();
        assert_eq!(d.arg, "x-queue-type");
        assert_eq!(d.current, None);
        assert_eq!(d.received.as_ref().unwrap().text, "quorum");
        assert_eq!(
            mismatch_text("queue", "emails", &d)
                .split(';')
                .next()
                .unwrap(),
            "queue 'emails' exists as classic, config asks for quorum"
        );
        let d = parse_inequivalent(
            "inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received none \
             but current is the value '10' of type 'byte'",
        )
        .unwrap();
        assert_eq!(d.received, None);
        let cur = d.current.unwrap();
        assert_eq!(cur.to_header(), Some(HeaderValue::Int(10)));
        let d = parse_inequivalent(
            "inequivalent arg 'type' for exchange 'ex' in vhost '/': received 'direct' but current is 'topic'",
        )
        .unwrap();
        assert!(mismatch_text("exchange", "ex", &d)
            .starts_with("exchange 'ex' exists as topic, config asks for direct"));
        assert_eq!(parse_inequivalent("NOT_FOUND - no queue 'x'"), None);
    }
}
