//! What RabbitMQ says when it refuses a declaration, and what foxtive makes
//! of it.
//!
//! RabbitMQ answers a `queue.declare` / `exchange.declare` whose arguments
//! differ from the existing entity's with 406 PRECONDITION_FAILED and the
//! text "inequivalent arg 'K' for queue 'Q' in vhost 'V': received R but
//! current is C", one argument at a time. AMQP has no way to read a queue's
//! arguments, so this text is the only place they show; the format has been
//! stable since RabbitMQ 3.0.

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

use crate::message::{header, HeaderValue, Headers};
use crate::{Error, Result};

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
