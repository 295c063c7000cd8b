//! Publishing: every message of a batch is sent, then every server
//! acknowledgement awaited (pipelined). `Nats-Msg-Id` is the message id, so
//! a second publish with the same id inside the stream's duplicate window
//! stores nothing. A delayed message goes to the delay stream with its due
//! time (`delay.rs` moves it to the queue when due). A message with a
//! dedup key first takes its key in the dedup bucket (`dedup.rs`).

use super::codec::{self, DUE};
use super::*;
use crate::backend::postgres::publish::new_message_id;

/// How long a publish may wait for the server's acknowledgements.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

impl Inner {
    pub(super) async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        if messages.iter().all(|m| m.dedup.is_none()) {
            return self.publish_now(messages).await;
        }
        // A message with a dedup key is its own step (`dedup.rs`), in order.
        let mut ids = Vec::with_capacity(messages.len());
        for m in messages {
            match m.dedup.clone() {
                Some(d) => ids.push(self.publish_once(m, &d).await?),
                None => ids.extend(self.publish_now(vec![m]).await?),
            }
        }
        Ok(ids)
    }

    /// Publish, ignoring `dedup` (the stream's `Nats-Msg-Id` window still applies).
    pub(super) async fn publish_now(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_declared().await?;
        let (_, js) = self.link.conn().await?;
        let now_ms = (crate::clock::unix_now() * 1000.0) as u64;
        let mut ids = Vec::with_capacity(messages.len());
        let mut acks = Vec::with_capacity(messages.len());
        for out in messages {
            let id = out.message_id.clone().unwrap_or_else(new_message_id);
            let mut headers = codec::outgoing_headers(&out, &id, &id)?;
            let subject = match out.delay.filter(|d| !d.is_zero()) {
                Some(delay) => {
                    let due = now_ms.saturating_add(delay.as_millis() as u64);
                    headers.insert(DUE, due.to_string());
                    self.cfg.delay_subject.clone()
                }
                None => self.cfg.subject.clone(),
            };
            let ack = js
                .publish_with_headers(subject, headers, out.body)
                .await
                .map_err(|e| self.link.error("publish", e, true))?;
            acks.push(ack);
            ids.push(id);
        }
        for ack in acks {
            match tokio::time::timeout(PUBLISH_TIMEOUT, ack).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.link.error("publish", e, true)),
                Err(_) => {
                    return Err(Error::ConnectionLost(format!(
                        "publish ({}): no acknowledgement in {}s",
                        self.link.url,
                        PUBLISH_TIMEOUT.as_secs()
                    )))
                }
            }
        }
        Ok(ids)
    }
}
