//! Delayed publishes: a delay stream and a mover.
//!
//! NATS 2.9 (the server here) has no per-message delay (scheduled delivery,
//! `Nats-Schedule`, needs 2.12), and a message NAKed with a delay on the
//! queue itself would count that as a delivery (an attempt). So a delayed
//! publish goes to `delay_subject` (stream `<STREAM>_DELAYED`, WorkQueue)
//! with its due time in `x-foxtive-due-ms`. Every receiving backend runs a
//! mover on the shared durable consumer `foxtive-mover`: a message not due
//! yet is NAKed with the time left (the server times it, no head-of-line
//! blocking, no polling), a due one is published to the queue with its own
//! `Nats-Msg-Id` and, once the server acknowledged that, acked. A mover that
//! dies in between leaves it to be moved again, and the queue's duplicate
//! window drops the second copy.

use std::sync::Weak;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use futures_core::Stream;

use super::codec::DUE;
use super::declare::{self, MOVER};
use super::*;

/// Longest wait of one mover pull.
const MOVER_PULL: Duration = Duration::from_secs(1);
/// Most delayed messages looked at per pull.
const MOVER_BATCH: usize = 256;
/// Pause after an error.
const MOVER_PAUSE: Duration = Duration::from_secs(1);

pub(super) async fn run(inner: Weak<Inner>) {
    let mut consumer: Option<PullConsumer> = None;
    loop {
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let step = async {
            if consumer.is_none() {
                consumer = Some(inner.mover_consumer().await?);
            }
            match consumer.as_ref() {
                Some(c) => inner.move_due(c).await,
                None => Ok(()),
            }
        };
        match step.await {
            Ok(()) => {}
            Err(Error::Shutdown) => return,
            Err(e) => {
                tracing::warn!(subject = %inner.queue, error = %e, "delayed-message mover");
                consumer = None;
                drop(inner);
                tokio::time::sleep(MOVER_PAUSE).await;
            }
        }
    }
}

impl Inner {
    async fn mover_consumer(&self) -> Result<PullConsumer> {
        let (_, js) = self.link.conn().await?;
        let stream = declare::delay_stream(&js, &self.link, &self.cfg).await?;
        stream
            .get_consumer(MOVER)
            .await
            .map_err(|e| self.link.error("delay consumer", e, true))
    }

    /// One pull of the mover: move what is due, NAK the rest until due.
    async fn move_due(&self, consumer: &PullConsumer) -> Result<()> {
        let (_, js) = self.link.conn().await?;
        let mut batch = consumer
            .batch()
            .max_messages(MOVER_BATCH)
            .expires(MOVER_PULL)
            .messages()
            .await
            .map_err(|e| self.link.error("delay pull", e, true))?;
        while let Some(next) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut batch).poll_next(cx)).await
        {
            let m = next.map_err(|e| self.link.error("delay pull", e, true))?;
            let due: u64 = m
                .headers
                .as_ref()
                .and_then(|h| h.get(DUE))
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or(0);
            let now = (crate::clock::unix_now() * 1000.0) as u64;
            if due > now {
                let left = Duration::from_millis(due - now);
                m.ack_with(AckKind::Nak(Some(left)))
                    .await
                    .map_err(|e| self.link.error("delay nak", e, true))?;
                continue;
            }
            let mut headers = HeaderMap::new();
            if let Some(h) = m.headers.as_ref() {
                for (name, values) in h.iter() {
                    if AsRef::<str>::as_ref(name) == DUE {
                        continue;
                    }
                    for v in values {
                        headers.append(name.clone(), v.clone());
                    }
                }
            }
            let ack = js
                .publish_with_headers(self.cfg.subject.clone(), headers, m.payload.clone())
                .await
                .map_err(|e| self.link.error("delay move", e, true))?;
            match tokio::time::timeout(SETTLE_TIMEOUT, ack).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.link.error("delay move", e, true)),
                Err(_) => {
                    return Err(Error::ConnectionLost(
                        "delay move: no acknowledgement in time".to_string(),
                    ))
                }
            }
            m.ack()
                .await
                .map_err(|e| self.link.error("delay ack", e, true))?;
        }
        Ok(())
    }
}
