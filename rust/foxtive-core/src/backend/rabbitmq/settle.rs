//! Settling deliveries and publishing with confirms: acks (coalesced into
//! `multiple` frames where they can be), requeues, and retry or dead-letter
//! copies, whose originals are acked only once the broker confirmed the copy.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use lapin::options::{
    BasicAckOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::ShortString;
use lapin::{Channel, Confirmation, PublisherConfirm};

use super::codec::AmqpReceipt;
use super::link::Link;
use super::{Prepared, Shared, Target};
use crate::backend::SettleItem;
use crate::message::Settlement;
use crate::{Error, Result};

/// Publishes queued in lapin whose frames are not written yet, at most: lapin
/// resolves a `basic_publish` only once its frames are on the socket, so many
/// queued at once are written together (a window keeps lapin's frame queue,
/// and the memory it holds, bounded).
const WRITE_WINDOW: usize = 1024;

/// A publish in flight: it resolves to its confirm once lapin wrote it.
type Publishing<'a> = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send + 'a>>;
/// A written message: the broker's confirm to await, and where it went.
type Written = (PublisherConfirm, Target);

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
        let written = self.write_all(&channel, messages, &failed_targets).await;
        let mut results: Vec<Result<()>> = Vec::with_capacity(written.len());
        for w in written {
            results.push(match w {
                Err(e) => Err(e),
                Ok((confirm, target)) => match confirm.await {
                    Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
                    Ok(Confirmation::Ack(Some(_))) => Err(Error::Backend(format!(
                        "publishing to {:?}: unroutable (no such queue); the broker returned it",
                        self.target_queue(target)
                    ))),
                    Ok(Confirmation::Nack(_)) => Err(Error::Backend(format!(
                        "publishing to {:?}: the broker refused to store it (nack)",
                        self.target_queue(target)
                    ))),
                    Err(e) => Err(self.lapin_err(
                        &format!("publishing to {:?}", self.target_queue(target)),
                        &e,
                    )),
                },
            });
        }
        if results.iter().any(Result::is_ok) {
            self.note_healthy(link);
        }
        results
    }

    /// `basic.publish` each message, in order, with up to [`WRITE_WINDOW`]
    /// of them queued in lapin at once: each publish is polled once as soon
    /// as it is made (that poll takes its delivery tag and queues its
    /// frames, so the order on the wire is the order of `messages`), then
    /// the oldest are polled until lapin has written them. Awaiting each
    /// publish before making the next would cost one io-loop round trip (a
    /// wake-up and a socket write) per message. One entry per message: its
    /// confirm (and target), or why it was not sent.
    async fn write_all(
        &self,
        channel: &Channel,
        messages: Vec<Prepared>,
        failed_targets: &HashMap<Target, String>,
    ) -> Vec<Result<Written>> {
        let opts = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let mut out: Vec<Option<Result<Written>>> = Vec::with_capacity(messages.len());
        out.resize_with(messages.len(), || None);
        let mut todo = messages.into_iter().enumerate();
        let mut writing: VecDeque<(usize, Target, Publishing<'_>)> = VecDeque::new();
        let sent = |target: Target, r: lapin::Result<PublisherConfirm>| -> Result<Written> {
            r.map(|c| (c, target)).map_err(|e| {
                self.lapin_err(
                    &format!("publishing to {:?}", self.target_queue(target)),
                    &e,
                )
            })
        };
        std::future::poll_fn(|cx| loop {
            while writing.len() < WRITE_WINDOW {
                let Some((i, m)) = todo.next() else { break };
                if let Some(why) = failed_targets.get(&m.target) {
                    out[i] = Some(Err(Error::Backend(why.clone())));
                    continue;
                }
                let target = m.target;
                let queue = ShortString::from(self.target_queue(target));
                // The future owns the body: lapin copies it into frames on
                // the first poll, the one just below.
                let mut publishing: Publishing<'_> = Box::pin(async move {
                    channel
                        .basic_publish(ShortString::from(""), queue, opts, &m.body, m.properties)
                        .await
                });
                match publishing.as_mut().poll(cx) {
                    Poll::Ready(r) => out[i] = Some(sent(target, r)),
                    Poll::Pending => writing.push_back((i, target, publishing)),
                }
            }
            let mut progressed = false;
            while let Some((i, target, publishing)) = writing.front_mut() {
                match publishing.as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        out[*i] = Some(sent(*target, r));
                        writing.pop_front();
                        progressed = true;
                    }
                    Poll::Pending => break,
                }
            }
            if writing.is_empty() && todo.len() == 0 {
                return Poll::Ready(());
            }
            if !progressed {
                return Poll::Pending;
            }
        })
        .await;
        out.into_iter()
            .map(|w| w.unwrap_or_else(|| Err(Error::Backend("publish: not sent".to_string()))))
            .collect()
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
