//! Reading side: pull requests onto one inbox subscription; messages become
//! deliveries, and poison pills go to the dead letters instead.
//!
//! Pulls overlap: the next request goes out before a receive returns what
//! came, so it travels while that is handed out and the rest of the last
//! request still arrives; the consumer does not wait a round trip between
//! batches. What may still come (asked for and not arrived) and what came
//! and was not returned never exceed the room the pool asked for (`max` of
//! the receive that sends a request), so nothing is hoarded that other
//! workers could take and nothing sits unseen by the in-progress heartbeat
//! longer than the pool needs to take it. A request asks for
//! `min(room, prefetch)`; at most [`PULLS_OUT`] are out, and a second one
//! goes out only for at least half a batch, so requests stay large. Each
//! expires with the receive's wait (bounded).
//!
//! Messages taken from the subscription wait in the puller (`ready`) until
//! a receive returns them, so a receive cancelled at stop or close loses
//! none. At stop the requests still out are let end, the inbox is
//! unsubscribed, and everything pulled and not handed out is handed back
//! (`-NAK`). Each request replies to a subject of its own, so a late status
//! of an earlier request cannot end a later one, and the inbox goes away
//! only once no request may still be waiting in the server: NATS 2.9.10
//! counts a delivery to a request without interest back.

use std::pin::Pin;
use std::task::Poll;

use async_nats::{Message, StatusCode, Subject, Subscriber};
use futures_core::Stream;
use tokio::time::Instant;

use super::codec::{self, AckInfo};
use super::*;
use crate::message::{Failure, Settlement};

/// Shortest and longest life of a pull request.
const PULL_MIN: Duration = Duration::from_millis(50);
const PULL_MAX: Duration = Duration::from_secs(2);

/// How long after its expiry a pull request whose end the server has not
/// reported yet may still be waiting there (clocks, a busy server).
const PULL_GRACE: Duration = Duration::from_secs(1);

/// Most pull requests out at once: one draining, the next on its way.
pub(super) const PULLS_OUT: usize = 2;

/// A message pulled and what its ack subject (`Message::reply`) says.
pub(super) type Pulled = (Message, AckInfo);

/// One pull request: it has a reply subject of its own (`<inbox>.<id>`), so
/// the status that ends it (404, 408, 409) ends that request only, never a
/// later one.
struct Request {
    id: u64,
    /// Messages it may still bring.
    asked: usize,
    /// When it expires.
    until: Instant,
}

#[derive(Default)]
pub(super) struct Puller {
    sub: Option<Subscriber>,
    /// Requests reply to `<inbox>.<id>`; the subscription is `<inbox>.*`.
    inbox: String,
    next_id: u64,
    /// Requests not known to be over, oldest first.
    requests: Vec<Request>,
    /// Taken from the subscription, not returned by a receive yet (one
    /// cancelled at stop leaves them here, to be handed back).
    ready: Vec<Pulled>,
}
/// One message from the subscription if one is there now; `Some(None)` when
/// the subscription ended.
async fn try_next(sub: &mut Subscriber) -> Option<Option<Message>> {
    std::future::poll_fn(|cx| match Pin::new(&mut *sub).poll_next(cx) {
        Poll::Ready(m) => Poll::Ready(Some(m)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

async fn next(sub: &mut Subscriber) -> Option<Message> {
    std::future::poll_fn(|cx| Pin::new(&mut *sub).poll_next(cx)).await
}

impl Puller {
    /// When the earliest outstanding request expires.
    fn until(&self, now: Instant) -> Option<Instant> {
        self.requests
            .iter()
            .filter(|r| r.asked > 0 && r.until > now)
            .map(|r| r.until)
            .min()
    }

    /// A request may still be waiting in the server (its end not reported,
    /// its expiry not long past): its inbox must not go away yet.
    fn maybe_waiting(&self, now: Instant) -> bool {
        self.requests.iter().any(|r| r.until + PULL_GRACE > now)
    }

    /// The size of the pull request to send now, if any: the room left of
    /// `max` once what is ready and what requests the server may still hold
    /// can bring are counted; sent when no request is out, or as the second
    /// one when the room is at least half a batch (no trickle of small ones).
    fn next_batch(&self, max: usize, prefetch: usize, now: Instant) -> Option<usize> {
        let waiting = self.requests.iter().filter(|r| r.until + PULL_GRACE > now);
        let (out, owed) = waiting.fold((0, 0), |(n, sum), r| (n + 1, sum + r.asked));
        let room = max.saturating_sub(self.ready.len() + owed);
        let half = max.min(prefetch).div_ceil(2);
        (room > 0 && out < PULLS_OUT && (out == 0 || room >= half)).then(|| room.min(prefetch))
    }

    /// Note a request for `batch` messages expiring at `until`; its reply subject.
    fn open(&mut self, batch: usize, until: Instant) -> String {
        let now = Instant::now();
        // Forget requests long expired whose end was never reported (lost in a reconnect).
        self.requests.retain(|r| r.until + PULL_GRACE > now);
        self.next_id += 1;
        self.requests.push(Request {
            id: self.next_id,
            asked: batch,
            until,
        });
        format!("{}.{}", self.inbox, self.next_id)
    }

    /// Keep a message of the queue in `ready`, or read a status (its request ended).
    fn absorb(&mut self, msg: Message) {
        if let Some(status) = msg.status {
            if status != StatusCode::IDLE_HEARTBEAT {
                // 404 no messages, 408 request expired, 409 limits: that
                // request is over (a late one must not end a newer request).
                let id = msg
                    .subject
                    .rsplit_once('.')
                    .and_then(|(_, id)| id.parse::<u64>().ok());
                self.requests.retain(|r| Some(r.id) != id);
            }
            return;
        }
        let Some(reply) = msg.reply.as_ref() else {
            return;
        };
        let Some(info) = codec::ack_info(reply.as_str()) else {
            tracing::warn!(subject = %msg.subject, "message without a JetStream ack subject ignored");
            return;
        };
        // The server fills waiting requests oldest first; a full one is over.
        if let Some(at) = self.requests.iter().position(|r| r.asked > 0) {
            self.requests[at].asked -= 1;
            if self.requests[at].asked == 0 {
                self.requests.remove(at);
            }
        }
        self.ready.push((msg, info));
    }

    /// At most `max` of the ready messages, oldest first.
    fn take_ready(&mut self, max: usize) -> Vec<Pulled> {
        let rest = if self.ready.len() > max {
            self.ready.split_off(max)
        } else {
            Vec::new()
        };
        std::mem::replace(&mut self.ready, rest)
    }
}

impl Inner {
    pub(super) async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        if self.stopped.load(Ordering::Acquire) || max == 0 {
            let _ = crate::backend::unless_closed(&self.closing, &self.closed, async {
                tokio::time::sleep_until(deadline).await;
                Ok(())
            })
            .await;
            return Ok(Vec::new());
        }
        self.ensure_declared().await?;
        let raw =
            crate::backend::unless_closed(&self.closing, &self.closed, self.pull(max, deadline))
                .await?;
        Ok(self.admit(raw).await)
    }

    /// Up to `max` messages, once at least one came or at `deadline`.
    /// Cancel-safe: what was taken from the subscription stays in `ready`.
    async fn pull(&self, max: usize, deadline: Instant) -> Result<Vec<Pulled>> {
        let mut p = self.puller.lock().await;
        if p.sub.is_none() {
            let client = self.link.client().await?;
            let inbox = client.new_inbox();
            let sub = client
                .subscribe(format!("{inbox}.*"))
                .await
                .map_err(|e| self.link.error("subscribe", e, true))?;
            // What was pulled before the subscription ended is still owed
            // to the pool: its ack subjects outlive the subscription.
            let ready = std::mem::take(&mut p.ready);
            *p = Puller {
                sub: Some(sub),
                inbox,
                ready,
                ..Puller::default()
            };
        }
        loop {
            // What already arrived first.
            while p.ready.len() < max {
                let Some(sub) = p.sub.as_mut() else { break };
                match try_next(sub).await {
                    Some(Some(msg)) => p.absorb(msg),
                    Some(None) => {
                        p.sub = None;
                        return Err(Error::ConnectionLost(format!(
                            "NATS subscription ended ({})",
                            self.link.url
                        )));
                    }
                    None => break,
                }
            }
            let now = Instant::now();
            // The next pull before what came is returned: it travels while
            // that is handed out (also when this receive does not wait:
            // what it brings is there for the next one).
            if let Some(batch) = p.next_batch(max, self.cfg.prefetch, now) {
                let expires = deadline
                    .saturating_duration_since(now)
                    .clamp(PULL_MIN, PULL_MAX);
                let reply = p.open(batch, now + expires);
                if let Err(e) = self.request(&reply, batch, expires).await {
                    p.requests.pop(); // never sent
                    return Err(e);
                }
            }
            if !p.ready.is_empty() {
                return Ok(p.take_ready(max));
            }
            if now >= deadline {
                return Ok(Vec::new());
            }
            let until = p.until(now).map_or(deadline, |u| u.min(deadline));
            let Some(sub) = p.sub.as_mut() else {
                return Ok(Vec::new());
            };
            match tokio::time::timeout_at(until, next(sub)).await {
                Ok(Some(msg)) => p.absorb(msg),
                Ok(None) => {
                    p.sub = None;
                    return Err(Error::ConnectionLost(format!(
                        "NATS subscription ended ({})",
                        self.link.url
                    )));
                }
                Err(_) if until >= deadline => return Ok(Vec::new()),
                // A request expired here before its status arrived: no longer
                // waited for, but its messages still count against the room
                // until its status comes or its grace ends (`maybe_waiting`).
                Err(_) => {}
            }
        }
    }

    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>` for `batch` messages.
    async fn request(&self, inbox: &str, batch: usize, expires: Duration) -> Result<()> {
        let client = self.link.client().await?;
        let subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            self.cfg.stream, self.cfg.durable
        );
        let body = format!("{{\"batch\":{batch},\"expires\":{}}}", expires.as_nanos());
        client
            .publish_with_reply(subject, inbox.to_string(), body.into())
            .await
            .map_err(|e| self.link.error("pull request", e, true))
    }

    /// Messages become deliveries; poison pills are dead-lettered.
    async fn admit(&self, raw: Vec<Pulled>) -> Vec<Delivery> {
        if raw.is_empty() {
            return Vec::new();
        }
        let received_at = crate::clock::unix_now();
        let mut out = Vec::with_capacity(raw.len());
        let mut poison = Vec::new();
        {
            let mut held = self.held.lock();
            let mut handed = self.handed.lock();
            if handed.len() > HANDED_MAX {
                // Entries of messages settled elsewhere pile up: start afresh
                // (only the guard below is lost for what is in flight now).
                handed.clear();
            }
            for (msg, mut info) in raw {
                // `absorb` kept only messages with an ack subject.
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                // Never an attempt this backend already handed out: NATS 2.9
                // can roll a message's delivery count back (a delivery it
                // counts as failed, see `attempt_floor`), and the handler
                // would see attempt 1 again.
                info.delivered = attempt_floor(&mut handed, info);
                held.insert(
                    info.stream_seq,
                    Held {
                        reply,
                        delivered: info.delivered,
                    },
                );
                let d = codec::delivery(&msg, info, &self.cfg.stream, &self.queue, received_at);
                if info.delivered > self.cfg.max_deliver {
                    poison.push(d);
                } else {
                    out.push(d);
                }
            }
        }
        if !poison.is_empty() {
            self.dead_letter_poison(poison).await;
        }
        out
    }

    async fn dead_letter_poison(&self, poison: Vec<Delivery>) {
        let worker: Arc<str> = Arc::from(format!("nats-{}", std::process::id()));
        let items: Vec<SettleItem> = poison
            .into_iter()
            .map(|d| {
                tracing::warn!(subject = %self.queue, id = %d.id, deliveries = d.attempt,
                    "poison pill: delivered too often without being settled; dead-lettering it");
                let failure = Failure {
                    error_type: "PoisonPill".to_string(),
                    error_message: format!(
                        "delivered {} times without being settled (max_deliver={}); \
                         its handler probably crashed or hung the worker",
                        d.attempt, self.cfg.max_deliver
                    ),
                    worker_id: worker.clone(),
                    poison_pill: true,
                };
                (Arc::new(d), Settlement::DeadLetter(failure))
            })
            .collect();
        if let Err(e) = self.settle(items).await {
            tracing::warn!(subject = %self.queue, error = %e,
                "could not dead-letter poison pills; the server redelivers them");
        }
    }

    /// Stop pulling: let the requests still out end, unsubscribe the inbox
    /// and hand back (`-NAK`) everything pulled and not handed out.
    pub(super) async fn hand_back_pulled(&self) {
        let Ok(mut p) = tokio::time::timeout(SHUTDOWN_STEP, self.puller.lock()).await else {
            return;
        };
        // Let the requests still out end first: NATS 2.9 mishandles a waiting
        // request whose inbox is gone (a message NAKed meanwhile came back
        // twice, as delivery 2 and delivery 1, and another not at all).
        let give_up = Instant::now() + SHUTDOWN_STEP;
        loop {
            let now = Instant::now();
            // Every request the server may still hold, not only the last:
            // one expired here may still be waiting there.
            if !p.maybe_waiting(now) || now >= give_up {
                break;
            }
            let until = p
                .requests
                .iter()
                .map(|r| r.until + PULL_GRACE)
                .min()
                .map_or(give_up, |u| u.min(give_up));
            let Some(sub) = p.sub.as_mut() else { break };
            match tokio::time::timeout_at(until, next(sub)).await {
                Ok(Some(msg)) => p.absorb(msg),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        let mut rest = std::mem::take(&mut *p);
        drop(p);
        if let Some(mut sub) = rest.sub.take() {
            let _ = sub.unsubscribe().await;
            while let Some(Some(msg)) = try_next(&mut sub).await {
                rest.absorb(msg);
            }
        }
        let raw = rest.ready;
        if raw.is_empty() {
            return;
        }
        tracing::debug!(subject = %self.queue, count = raw.len(),
            "handing pulled messages not handed out back to NATS");
        // A message at the server's last delivery (past foxtive's
        // `max_deliver`) is never delivered again once NAKed: it would stay
        // in the stream for good. It is a poison pill now, as in `admit`.
        let (last, back): (Vec<_>, Vec<_>) = raw
            .into_iter()
            .partition(|(_, info)| info.delivered > self.cfg.max_deliver);
        if !last.is_empty() {
            let _ = self.admit(last).await;
        }
        let replies: Vec<Subject> = back.into_iter().filter_map(|(msg, _)| msg.reply).collect();
        self.nak_all(&replies).await;
    }

    /// Hand back every delivery not settled (close).
    pub(super) async fn hand_back_held(&self) {
        let replies: Vec<Subject> = self.held.lock().drain().map(|(_, h)| h.reply).collect();
        if !replies.is_empty() {
            tracing::info!(subject = %self.queue, count = replies.len(),
                "handing unsettled deliveries back to NATS");
            self.nak_all(&replies).await;
        }
    }

    async fn nak_all(&self, replies: &[Subject]) {
        let Ok(client) = self.link.client().await else {
            return;
        };
        for reply in replies {
            let _ = client
                .publish(reply.clone(), bytes::Bytes::from_static(b"-NAK"))
                .await;
        }
        let _ = tokio::time::timeout(SHUTDOWN_STEP, client.flush()).await;
    }
}

/// At most this many stream sequences remembered by [`attempt_floor`].
const HANDED_MAX: usize = 100_000;

/// The attempt of a delivery: its delivery count, but above every attempt
/// of the same stream sequence this backend handed out before.
///
/// The count is the server's, and NATS 2.9.10 does not only ever raise it:
/// a delivery it considers failed (a pull request's inbox without interest,
/// which happens around a pull request being withdrawn) is counted back, so
/// a message NAKed with a delay was seen coming back as attempt 1 again
/// (`[1, 1, 1, 4]` in the contract's retries-come-due case) and its retry
/// policy started over. Attempts stay durable across processes through the
/// count; within one backend they now only grow.
pub(super) fn attempt_floor(handed: &mut SeqMap<u32>, info: AckInfo) -> u32 {
    let attempt = match handed.get(&info.stream_seq) {
        Some(&before) => info.delivered.max(before.saturating_add(1)),
        None => info.delivered,
    };
    handed.insert(info.stream_seq, attempt);
    attempt
}

/// Shortest time between two in-progress heartbeats.
const HEARTBEAT_MIN: Duration = Duration::from_millis(200);

/// Tell the server the deliveries in handlers are in progress (`+WPI`)
/// every third of `ack_wait`, so a slow handler keeps its message and only
/// a dead worker's messages are redelivered after `ack_wait`.
pub(super) async fn heartbeat(inner: std::sync::Weak<Inner>) {
    loop {
        let every = match inner.upgrade() {
            Some(i) => (i.cfg.ack_wait / 3).max(HEARTBEAT_MIN),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = inner.link.client().await else {
            continue;
        };
        // No settlement between the snapshot and the heartbeats: a +WPI
        // after a NAK with delay would cut the delay short.
        let _gate = inner.settling.write().await;
        let replies: Vec<Subject> = inner
            .held
            .lock()
            .values()
            .map(|h| h.reply.clone())
            .collect();
        for reply in replies {
            let _ = client
                .publish(reply, bytes::Bytes::from_static(b"+WPI"))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(delivered: u32, stream_seq: u64) -> AckInfo {
        AckInfo {
            delivered,
            stream_seq,
        }
    }

    fn puller(asked: &[(usize, Duration)]) -> Puller {
        let now = Instant::now();
        let mut p = Puller::default();
        for &(n, left) in asked {
            p.open(n, now + left);
        }
        p
    }

    #[test]
    fn the_next_pull_fits_the_room_and_stays_large() {
        let now = Instant::now();
        let soon = Duration::from_millis(500);
        // Nothing out: a batch, never more than the pool asked for.
        assert_eq!(puller(&[]).next_batch(256, 256, now), Some(256));
        assert_eq!(puller(&[]).next_batch(1000, 256, now), Some(256));
        assert_eq!(puller(&[]).next_batch(10, 256, now), Some(10));
        // One out that may still bring 200 of a room of 256: 56 is less than
        // half a batch, so no second request yet.
        assert_eq!(puller(&[(200, soon)]).next_batch(256, 256, now), None);
        // Down to 100: the second request asks for the rest of the room.
        assert_eq!(puller(&[(100, soon)]).next_batch(256, 256, now), Some(156));
        // Never more than two out, nor more than a prefetch per request.
        assert_eq!(
            puller(&[(10, soon), (10, soon)]).next_batch(1000, 256, now),
            None
        );
        assert_eq!(puller(&[(10, soon)]).next_batch(1000, 256, now), Some(256));
        // Expired here but maybe still waiting there: its messages may come.
        let gone = puller(&[(256, Duration::ZERO)]);
        assert_eq!(
            gone.next_batch(256, 256, now + Duration::from_millis(10)),
            None
        );
        // Past its grace it counts no more.
        assert_eq!(
            gone.next_batch(256, 256, now + PULL_GRACE + Duration::from_millis(10)),
            Some(256)
        );
    }

    #[test]
    fn attempts_never_go_back_when_the_server_counts_back() {
        let mut handed = SeqMap::default();
        assert_eq!(attempt_floor(&mut handed, info(1, 7)), 1);
        // The server rolled its count back: the handler still sees attempt 2, 3.
        assert_eq!(attempt_floor(&mut handed, info(1, 7)), 2);
        assert_eq!(attempt_floor(&mut handed, info(1, 7)), 3);
        // A count ahead of ours (another worker had it) is taken as it is.
        assert_eq!(attempt_floor(&mut handed, info(6, 7)), 6);
        // Other messages are their own.
        assert_eq!(attempt_floor(&mut handed, info(1, 8)), 1);
    }
}
