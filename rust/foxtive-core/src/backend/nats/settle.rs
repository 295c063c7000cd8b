//! Settling: acks, NAKs with delay, dead letters then TERM.
//!
//! Acks are publishes to the message's ack subject, not waited for, except
//! the last ack of a batch: a double ack (a request the server answers once
//! the ack is applied). The consumer applies the acks of one connection in
//! order, so when `settle` returns every ack of the batch is applied, and a
//! judge (or `run_until_idle`) never sees an acked message as pending.

use std::collections::hash_map::Entry;

use async_nats::Subject;
use bytes::Bytes;

use super::codec::{self, NatsReceipt};
use super::*;
use crate::dlq::DeadLetter;
use crate::message::{Failure, Settlement};

/// Longest error text kept in a dead letter's header.
const MAX_ERROR_TEXT: usize = 4096;

const ACK: &[u8] = b"+ACK";
const NAK: &[u8] = b"-NAK";
const TERM: &[u8] = b"+TERM";

/// `-NAK {"delay": ns}`: redelivered after `delay` (plain `-NAK` at 0).
fn nak_with(delay: Duration) -> Bytes {
    if delay.is_zero() {
        Bytes::from_static(NAK)
    } else {
        Bytes::from(format!("-NAK {{\"delay\":{}}}", delay.as_nanos()))
    }
}

impl Inner {
    pub(super) async fn settle(&self, batch: Vec<SettleItem>) -> Result<()> {
        let gate = self.settling.read().await;
        let mut acks: Vec<Subject> = Vec::new();
        let mut naks: Vec<(Subject, Duration)> = Vec::new();
        let mut dead: Vec<(Arc<Delivery>, Failure, Subject)> = Vec::new();
        {
            let mut held = self.held.lock();
            let mut handed = self.handed.lock();
            for (d, s) in batch {
                let Some(r) = d.receipt.unpacked::<NatsReceipt>() else {
                    continue;
                };
                // Its ack subject, unless the delivery is no longer held:
                // handed back at close (NAKed), or superseded by a
                // redelivery of the same message (ack_wait ran out), which
                // settles the message itself. Either way the server
                // delivers it again if need be: at least once.
                let reply = match held.entry(r.stream_seq) {
                    Entry::Occupied(e) if e.get().delivered == r.delivered => e.remove().reply,
                    _ => {
                        tracing::debug!(subject = %self.queue, seq = r.stream_seq,
                            "settlement of a delivery no longer held skipped");
                        continue;
                    }
                };
                if matches!(s, Settlement::Ack | Settlement::DeadLetter(_)) {
                    // Gone from the stream: no later attempt to guard.
                    handed.remove(&r.stream_seq);
                }
                match s {
                    Settlement::Ack => acks.push(reply),
                    Settlement::Retry { delay, .. } => naks.push((reply, delay)),
                    Settlement::Requeue => naks.push((reply, Duration::ZERO)),
                    Settlement::DeadLetter(f) => dead.push((d, f, reply)),
                }
            }
        }
        let client = self.link.client().await?;
        let mut first_error: Option<Error> = None;
        let last_ack = acks.pop();
        for reply in acks {
            if let Err(e) = client.publish(reply, Bytes::from_static(ACK)).await {
                first_error.get_or_insert(self.link.error("ack", e, true));
            }
        }
        for (reply, delay) in naks {
            if let Err(e) = client.publish(reply, nak_with(delay)).await {
                first_error.get_or_insert(self.link.error("nak", e, true));
            }
        }
        drop(gate);
        if !dead.is_empty() {
            if let Err(e) = self.dead_letter(&client, dead).await {
                first_error.get_or_insert(e);
            }
        }
        if let Some(reply) = last_ack {
            // The double ack: answered once applied (see the module docs).
            let ack = tokio::time::timeout(
                SETTLE_TIMEOUT,
                client.request(reply, Bytes::from_static(ACK)),
            )
            .await;
            match ack {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(self.link.error("ack", e, true));
                }
                Err(_) => {
                    first_error.get_or_insert(Error::ConnectionLost(format!(
                        "ack ({}): no answer in {}s",
                        self.link.url,
                        SETTLE_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => {
                tracing::warn!(subject = %self.queue, error = %e,
                    "settlements not all applied; NATS redelivers the rest after ack_wait");
                Err(e)
            }
        }
    }

    /// Publish each dead letter to `dlq_subject`; TERM its original once the
    /// server acknowledged that publish.
    async fn dead_letter(
        &self,
        client: &async_nats::Client,
        dead: Vec<(Arc<Delivery>, Failure, Subject)>,
    ) -> Result<()> {
        let (_, js) = self.link.conn().await?;
        let mut pending = Vec::with_capacity(dead.len());
        let mut first_error = None;
        for (d, failure, reply) in dead {
            let record = DeadLetter::from_delivery(&d, &failure);
            let Some(seq) = d.receipt.unpacked::<NatsReceipt>().map(|r| r.stream_seq) else {
                continue;
            };
            // One dead letter per stored message, however often this runs.
            let dedup = format!("{}:{seq}", self.cfg.stream);
            let headers = match dead_letter_headers(&d, &record, &dedup) {
                Ok(h) => h,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            match js
                .publish_with_headers(self.cfg.dlq_subject.clone(), headers, d.body.clone())
                .await
            {
                Ok(ack) => pending.push((ack, reply)),
                Err(e) => {
                    first_error.get_or_insert(self.link.error("dead-letter publish", e, true));
                }
            }
        }
        for (ack, reply) in pending {
            match tokio::time::timeout(SETTLE_TIMEOUT, ack).await {
                Ok(Ok(_)) => {
                    if let Err(e) = client.publish(reply, Bytes::from_static(TERM)).await {
                        first_error.get_or_insert(self.link.error("term", e, true));
                    }
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(self.link.error("dead-letter publish", e, true));
                }
                Err(_) => {
                    first_error.get_or_insert(Error::ConnectionLost(
                        "dead-letter publish: no acknowledgement in time".to_string(),
                    ));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The headers of a dead letter: the message's own, its id, and the
/// `x-foxtive-*` description of the failure (plain text, readable by any
/// NATS client).
pub(super) fn dead_letter_headers(
    d: &Delivery,
    record: &DeadLetter,
    dedup: &str,
) -> Result<async_nats::HeaderMap> {
    let out = d.to_outgoing();
    let mut map = codec::outgoing_headers(&out, &d.id, dedup)?;
    let mut text = record.error_message.replace(['\r', '\n'], " ");
    if text.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let line = |s: &str| s.replace(['\r', '\n'], " ");
    map.insert(dlq::ERROR_TYPE, line(&record.error_type));
    map.insert(dlq::ERROR, text);
    map.insert(dlq::ATTEMPTS, record.attempts.to_string());
    map.insert(dlq::FAILED_AT, format!("{:.6}", record.failed_at));
    map.insert(dlq::WORKER, line(&record.worker_id));
    map.insert(dlq::POISON_PILL, record.poison_pill.to_string());
    map.insert(dlq::SOURCE_QUEUE, line(&record.source_queue));
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nak_carries_the_delay_in_nanoseconds() {
        assert_eq!(nak_with(Duration::ZERO), Bytes::from_static(b"-NAK"));
        assert_eq!(
            nak_with(Duration::from_millis(1500)),
            Bytes::from_static(b"-NAK {\"delay\":1500000000}")
        );
    }
}
