//! Settling deliveries and publishing with confirms: acks (coalesced into
//! `multiple` frames where they can be), requeues, and retry or dead-letter
//! copies, whose originals are acked only once the broker confirmed the copy.

use std::collections::HashMap;
use std::sync::Arc;

use lapin::options::{
    BasicAckOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::ShortString;
use lapin::{Channel, Confirmation};

use super::codec::AmqpReceipt;
use super::link::Link;
use super::{Prepared, Shared, Target};
use crate::backend::SettleItem;
use crate::message::Settlement;
use crate::{Error, Result};

impl Shared {
    /// Send acks for `tags` on `link`: one `multiple` frame for the run that
    /// joins the settled floor, single frames for the rest.
    async fn ack_tags(self: &Arc<Self>, link: &Link, tags: Vec<u64>) -> Result<()> {
        let mut tracker = link.acks.lock().await;
        let frames = tracker.plan(tags);
        for frame in frames {
            let sent = link
                .consume
                .basic_ack(
                    frame.tag,
                    BasicAckOptions {
                        multiple: frame.multiple,
                    },
                )
                .await;
            if let Err(e) = sent {
                drop(tracker);
                let err = self.lapin_err("basic.ack", &e);
                self.link_failed(link.epoch, &err.to_string());
                return Err(err);
            }
        }
        self.note_healthy(link);
        Ok(())
    }

    pub(super) async fn requeue_tags(self: &Arc<Self>, link: &Link, tags: Vec<u64>) -> Result<()> {
        let mut tracker = link.acks.lock().await;
        tracker.settled_elsewhere(tags.iter().copied());
        for tag in tags {
            let sent = link
                .consume
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await;
            if let Err(e) = sent {
                drop(tracker);
                let err = self.lapin_err("basic.nack", &e);
                self.link_failed(link.epoch, &err.to_string());
                return Err(err);
            }
        }
        Ok(())
    }

    fn target_queue(&self, target: Target) -> String {
        match target {
            Target::Main => self.config.queue_name.clone(),
            Target::Bucket(ms) => self.bucket_name(ms),
            Target::DeadLetters => self.dlq_name.clone(),
        }
    }

    /// Publish persistently and wait for the broker's confirms. One result
    /// per message: `Ok` only when the broker confirmed it and it was routed.
    pub(super) async fn publish_confirmed(
        &self,
        link: &Link,
        messages: Vec<Prepared>,
    ) -> Vec<Result<()>> {
        let failed_targets = self.declare_targets(link, &messages).await;
        let channel = self.publish_channel(link).await;
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            if let Some(why) = failed_targets.get(&m.target) {
                pending.push(Err(Error::Backend(why.clone())));
                continue;
            }
            let queue = self.target_queue(m.target);
            let sent = channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &m.body,
                    m.properties,
                )
                .await;
            pending.push(
                sent.map_err(|e| self.lapin_err(&format!("publishing to {queue:?}"), &e))
                    .map(|c| (c, queue)),
            );
        }
        let mut results: Vec<Result<()>> = Vec::with_capacity(pending.len());
        for p in pending {
            results.push(match p {
                Err(e) => Err(e),
                Ok((confirm, queue)) => match confirm.await {
                    Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
                    Ok(Confirmation::Ack(Some(_))) => Err(Error::Backend(format!(
                        "publishing to {queue:?}: unroutable (no such queue); the broker returned it"
                    ))),
                    Ok(Confirmation::Nack(_)) => Err(Error::Backend(format!(
                        "publishing to {queue:?}: the broker refused to store it (nack)"
                    ))),
                    Err(e) => Err(self.lapin_err(&format!("publishing to {queue:?}"), &e)),
                },
            });
        }
        if results.iter().any(Result::is_ok) {
            self.note_healthy(link);
        }
        results
    }

    /// Declare each target of `messages` once; the ones that failed, with why.
    async fn declare_targets(&self, link: &Link, messages: &[Prepared]) -> HashMap<Target, String> {
        let mut targets: Vec<Target> = messages.iter().map(|m| m.target).collect();
        targets.sort_by_key(|t| match t {
            Target::Main => 0,
            Target::DeadLetters => 1,
            Target::Bucket(ms) => 2 + *ms,
        });
        targets.dedup();
        let mut failed_targets: HashMap<Target, String> = HashMap::new();
        for t in targets {
            if let Err(e) = self.ensure_target(link, t).await {
                failed_targets.insert(t, e.to_string());
            }
        }
        failed_targets
    }

    /// The link's publish channel, reopened (with confirms) if it was closed
    /// while the connection lives on.
    async fn publish_channel(&self, link: &Link) -> Channel {
        let mut ch = link.publish.lock().await;
        if !ch.status().connected() && link.conn.status().connected() {
            match self.open_channel(&link.conn, "publish").await {
                Ok(new) => {
                    if new
                        .confirm_select(ConfirmSelectOptions::default())
                        .await
                        .is_ok()
                    {
                        *ch = new;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reopening the publish channel failed"),
            }
        }
        ch.clone()
    }

    pub(super) async fn settle_batch(self: &Arc<Self>, batch: Vec<SettleItem>) -> Result<()> {
        let Some(link) = self.current() else {
            return Ok(()); // nothing is acknowledged on a dead link; the broker requeues
        };
        let sorted = self.sort_settlements(&link, &batch);
        if sorted.stale > 0 {
            tracing::debug!(queue = %self.name, stale = sorted.stale, "dropped settlements of a dead link; the broker redelivers them");
        }
        let mut first_error = None;
        if !sorted.acks.is_empty() {
            if let Err(e) = self.ack_tags(&link, sorted.acks).await {
                first_error.get_or_insert(e);
            }
        }
        if !sorted.requeues.is_empty() {
            if let Err(e) = self.requeue_tags(&link, sorted.requeues).await {
                first_error.get_or_insert(e);
            }
        }
        if !sorted.copies.is_empty() {
            if let Err(e) = self.store_copies(&link, sorted.copies).await {
                first_error.get_or_insert(e);
            }
        }
        forget_extras(&link, &batch);
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sort a settle batch by what the broker must do; settlements for
    /// another link's deliveries are only counted.
    fn sort_settlements(&self, link: &Link, batch: &[SettleItem]) -> Sorted {
        let mut sorted = Sorted::default();
        for (delivery, settlement) in batch {
            let Some(AmqpReceipt {
                delivery_tag,
                epoch,
            }) = delivery.receipt.unpacked()
            else {
                continue;
            };
            if epoch != link.epoch {
                sorted.stale += 1;
                continue;
            }
            match settlement {
                Settlement::Ack => sorted.acks.push(delivery_tag),
                Settlement::Requeue => sorted.requeues.push(delivery_tag),
                Settlement::Retry {
                    delay,
                    count_attempt,
                } => sorted.copies.push((
                    delivery_tag,
                    self.retry_copy(link, delivery, *delay, *count_attempt),
                )),
                Settlement::DeadLetter(failure) => sorted
                    .copies
                    .push((delivery_tag, self.dead_letter_copy(link, delivery, failure))),
            }
        }
        sorted
    }

    /// Publish retry and dead-letter copies; ack the originals whose copy the
    /// broker confirmed and requeue the others. The first error, if any.
    async fn store_copies(
        self: &Arc<Self>,
        link: &Link,
        copies: Vec<(u64, Prepared)>,
    ) -> Result<()> {
        let mut first_error = None;
        let (tags, prepared): (Vec<u64>, Vec<Prepared>) = copies.into_iter().unzip();
        let results = self.publish_confirmed(link, prepared).await;
        let mut stored = Vec::new();
        let mut not_stored = Vec::new();
        for (tag, r) in tags.into_iter().zip(results) {
            match r {
                Ok(()) => stored.push(tag),
                Err(e) => {
                    tracing::warn!(queue = %self.name, error = %e,
                        "storing a retry or dead-letter copy failed; the original goes back to the queue");
                    not_stored.push(tag);
                    first_error.get_or_insert(e);
                }
            }
        }
        if !stored.is_empty() {
            if let Err(e) = self.ack_tags(link, stored).await {
                first_error.get_or_insert(e);
            }
        }
        if !not_stored.is_empty() && link.alive() {
            if let Err(e) = self.requeue_tags(link, not_stored).await {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A settle batch, sorted by what the broker must do with each delivery of
/// the current link.
#[derive(Default)]
struct Sorted {
    acks: Vec<u64>,
    requeues: Vec<u64>,
    /// Retry and dead-letter copies, with the tag of their original.
    copies: Vec<(u64, Prepared)>,
    /// Settlements for a dead link's deliveries, dropped.
    stale: usize,
}

/// The batch is settled: the extra properties kept for its deliveries are
/// not needed any more.
fn forget_extras(link: &Link, batch: &[SettleItem]) {
    let mut extras = link.extras.lock();
    if extras.is_empty() {
        return;
    }
    for (d, _) in batch {
        if let Some(AmqpReceipt {
            delivery_tag,
            epoch,
        }) = d.receipt.unpacked()
        {
            if epoch == link.epoch {
                extras.remove(&delivery_tag);
            }
        }
    }
}
