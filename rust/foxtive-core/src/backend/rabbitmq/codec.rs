//! Between lapin's messages and foxtive's: a broker delivery becomes a
//! [`Delivery`] (attempt counted from foxtive's header and the broker's
//! redelivery count), and outgoing messages, retry copies and dead-letter
//! copies become AMQP properties, keeping the properties a `Delivery` does
//! not carry.

use std::time::Duration;

use bytes::Bytes;
use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;

use super::fields::{headers_from_table, strip_own_deaths, table_from_headers};
use super::link::Link;
use super::{delay_bucket_ms, Prepared, Shared, Target, ATTEMPT_HEADER};
use crate::message::{
    header, set_header, Delivery, Failure, HeaderValue, Outgoing, PackedReceipt, Receipt,
};

/// Quorum queues count redeliveries in this header.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Dead-letter error texts are cut to this many bytes (headers share one frame).
const MAX_ERROR_TEXT: usize = 8 * 1024;

/// A RabbitMQ delivery's receipt: its delivery tag, valid only on the channel
/// generation (`epoch`) that delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmqpReceipt {
    pub delivery_tag: u64,
    pub epoch: u64,
}

impl PackedReceipt for AmqpReceipt {
    fn pack(self) -> [u64; 2] {
        [self.delivery_tag, self.epoch]
    }
    fn unpack([delivery_tag, epoch]: [u64; 2]) -> Self {
        AmqpReceipt {
            delivery_tag,
            epoch,
        }
    }
}

impl Shared {
    pub(super) fn to_delivery(
        &self,
        link: &Link,
        d: lapin::message::Delivery,
        received_at: f64,
    ) -> Delivery {
        // Taken apart by value: the body and the routing key move into the
        // Delivery, and the properties into `extras` when there are any.
        // amq-protocol-types 10.6 gives no owned access to a property, a
        // field table or a long string (only borrowing getters), so the
        // header table and the id strings are still copied.
        let lapin::message::Delivery {
            delivery_tag: tag,
            routing_key,
            redelivered,
            properties: props,
            data,
            ..
        } = d;
        let mut headers = props
            .headers()
            .as_ref()
            .map(headers_from_table)
            .unwrap_or_default();
        // A retry that waited in a delay bucket was dead-lettered back by
        // the broker: that is foxtive's machinery, not the handler's business.
        if !headers.is_empty() {
            strip_own_deaths(&mut headers, |q| self.is_bucket(q));
        }
        let carried = header(&headers, ATTEMPT_HEADER)
            .and_then(HeaderValue::as_u64)
            .unwrap_or(1)
            .max(1);
        // Quorum queues count deliveries; a classic queue only says
        // "redelivered", which means at least one delivery before this one.
        let redeliveries = header(&headers, DELIVERY_COUNT_HEADER)
            .and_then(HeaderValue::as_u64)
            .unwrap_or(0)
            .max(u64::from(redelivered));
        let attempt = u32::try_from(carried.saturating_add(redeliveries)).unwrap_or(u32::MAX);
        let id = match props.message_id() {
            Some(id) => id.as_str().to_string(),
            None => format!("{}:{}:{tag}", self.config.consumer_tag, link.epoch),
        };
        let short = |s: &Option<ShortString>| s.as_ref().map(|v| v.as_str().to_string());
        let correlation_id = short(props.correlation_id());
        let content_type = short(props.content_type());
        let reply_to = short(props.reply_to());
        let priority = *props.priority();
        if has_extras(&props) {
            // Moved, not cloned: the table is already in `headers`, and a
            // retry or dead-letter copy rebuilds it from those.
            let extras = props.with_headers(FieldTable::default());
            link.extras.lock().insert(tag, extras);
        }
        Delivery {
            id,
            body: Bytes::from(data),
            headers,
            attempt,
            queue: self.name.clone(),
            routing_key: if routing_key.as_str().is_empty() {
                None
            } else {
                Some(String::from(routing_key))
            },
            correlation_id,
            content_type,
            reply_to,
            priority,
            received_at,
            redelivered,
            receipt: Receipt::packed(AmqpReceipt {
                delivery_tag: tag,
                epoch: link.epoch,
            }),
        }
    }

    pub(super) fn properties_for(
        &self,
        out: &Outgoing,
        id: &str,
        extras: Option<BasicProperties>,
    ) -> BasicProperties {
        let mut props = extras.unwrap_or_default();
        // A per-message expiry would cut a retry short, or drop a dead letter.
        if props.expiration().is_some() {
            props = strip_expiration(props);
        }
        props = props
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(id));
        if let Some(v) = &out.correlation_id {
            props = props.with_correlation_id(ShortString::from(v.as_str()));
        }
        if let Some(v) = &out.content_type {
            props = props.with_content_type(ShortString::from(v.as_str()));
        }
        if let Some(v) = &out.reply_to {
            props = props.with_reply_to(ShortString::from(v.as_str()));
        }
        if let Some(p) = out.priority {
            props = props.with_priority(p);
        }
        if !out.headers.is_empty() {
            props = props.with_headers(table_from_headers(&out.headers));
        }
        props
    }

    pub(super) fn retry_copy(
        &self,
        link: &Link,
        d: &Delivery,
        delay: Duration,
        count_attempt: bool,
    ) -> Prepared {
        let mut out = d.to_outgoing();
        out.headers.retain(|(k, _)| k != DELIVERY_COUNT_HEADER);
        let next = if count_attempt {
            d.attempt.saturating_add(1)
        } else {
            d.attempt
        };
        set_header(
            &mut out.headers,
            ATTEMPT_HEADER,
            HeaderValue::Int(i64::from(next)),
        );
        let extras = self.take_extras(link, d);
        Prepared {
            target: delay_bucket_ms(delay).map_or(Target::Main, Target::Bucket),
            properties: self.properties_for(&out, &d.id, extras),
            body: out.body,
        }
    }

    pub(super) fn dead_letter_copy(
        &self,
        link: &Link,
        d: &Delivery,
        failure: &Failure,
    ) -> Prepared {
        let mut out = d.to_outgoing();
        let mut text = failure.error_message.clone();
        if text.len() > MAX_ERROR_TEXT {
            let mut cut = MAX_ERROR_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let h = &mut out.headers;
        set_header(
            h,
            "x-foxtive-error-type",
            HeaderValue::Str(failure.error_type.clone()),
        );
        set_header(h, "x-foxtive-error", HeaderValue::Str(text));
        set_header(
            h,
            "x-foxtive-attempts",
            HeaderValue::Int(i64::from(d.attempt)),
        );
        set_header(
            h,
            "x-foxtive-failed-at",
            HeaderValue::Float(crate::clock::unix_now()),
        );
        set_header(
            h,
            "x-foxtive-worker",
            HeaderValue::Str(failure.worker_id.to_string()),
        );
        set_header(
            h,
            "x-foxtive-poison-pill",
            HeaderValue::Bool(failure.poison_pill),
        );
        set_header(
            h,
            "x-foxtive-source-queue",
            HeaderValue::Str(d.queue.to_string()),
        );
        let extras = self.take_extras(link, d);
        Prepared {
            target: Target::DeadLetters,
            properties: self.properties_for(&out, &d.id, extras),
            body: out.body,
        }
    }

    fn take_extras(&self, link: &Link, d: &Delivery) -> Option<BasicProperties> {
        let AmqpReceipt { delivery_tag, .. } = d.receipt.unpacked()?;
        let extras = link.extras.lock();
        if extras.is_empty() {
            None
        } else {
            extras.get(&delivery_tag).cloned()
        }
    }
}

fn has_extras(p: &BasicProperties) -> bool {
    p.content_encoding().is_some()
        || p.expiration().is_some()
        || p.timestamp().is_some()
        || p.kind().is_some()
        || p.user_id().is_some()
        || p.app_id().is_some()
        || p.cluster_id().is_some()
}

/// The same properties without `expiration`.
fn strip_expiration(p: BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}
