//! The in-process backend: the embedded default, and the backend of tests.
//!
//! Messages wait in a ready queue or, when delayed, in a heap ordered by due
//! time. A retry copy goes back into the store (not into the worker), so the
//! worker holds nothing while a retry waits. Messages with a priority above
//! 0 wait in a queue of their priority, taken before the plain ready queue
//! (9 first); messages without one never pay for it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

mod stats;

use super::options::Options;
use super::registry::{Kind, Opened};
use super::{Backend, BackendState, QueueStats, SettleItem};
use crate::dlq::DeadLetter;
use crate::message::{Delivery, Headers, Outgoing, PackedReceipt, Receipt, Settlement};
use crate::{Error, Result};

/// A memory delivery's receipt: its sequence number in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemoryReceipt(u64);

impl PackedReceipt for MemoryReceipt {
    fn pack(self) -> [u64; 2] {
        [self.0, 0]
    }
    fn unpack(words: [u64; 2]) -> Self {
        MemoryReceipt(words[0])
    }
}

/// A stored message. Kept small: a million of them must fit comfortably.
#[derive(Debug, Clone)]
struct Entry {
    /// Publish number: the default id is `{backend}-{number}`.
    number: u64,
    body: Bytes,
    /// Everything beyond the body, only for messages that have it.
    meta: Option<Box<EntryMeta>>,
    attempt: u32,
}

#[derive(Debug, Clone, Default)]
struct EntryMeta {
    id: Option<String>,
    headers: Headers,
    correlation_id: Option<String>,
    content_type: Option<String>,
    reply_to: Option<String>,
    priority: Option<u8>,
    routing_key: Option<String>,
    redelivered: bool,
}

/// Delivered, unsettled entries by delivery number. Numbers only grow and
/// settlement is mostly in order, so a sliding window beats a hash map.
#[derive(Default)]
struct Unacked {
    base: u64,
    slots: VecDeque<Option<Entry>>,
    len: usize,
}

impl Unacked {
    fn insert(&mut self, seq: u64, entry: Entry) {
        if self.slots.is_empty() {
            self.base = seq;
        }
        let Some(index) = seq.checked_sub(self.base).map(|i| i as usize) else {
            return;
        };
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        if self.slots[index].replace(entry).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let index = seq.checked_sub(self.base)? as usize;
        let entry = self.slots.get_mut(index)?.take()?;
        self.len -= 1;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(entry)
    }

    fn drain(&mut self) -> Vec<(u64, Entry)> {
        let base = self.base;
        let out = std::mem::take(&mut self.slots)
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| e.map(|e| (base + i as u64, e)))
            .collect();
        self.len = 0;
        out
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

struct Store {
    /// Ready entries of priority 0 (or none), in order.
    ready: VecDeque<Entry>,
    /// Ready entries of a higher priority, by priority: taken first.
    urgent: BTreeMap<u8, VecDeque<Entry>>,
    /// (due, tie-breaker) → entry; the heap holds the key, the map the entry.
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_entries: HashMap<u64, Entry>,
    unacked: Unacked,
    dead: Vec<DeadLetter>,
    /// Delivery numbers (receipts), dense so that `Unacked` stays compact.
    deliveries: u64,
    /// Publish deduplication: key → (id of the message holding it, until).
    dedup: HashMap<String, (String, Instant)>,
    /// Expired keys are swept when the map reaches this size.
    dedup_sweep_at: usize,
}

impl Entry {
    fn priority(&self) -> u8 {
        self.meta.as_ref().and_then(|m| m.priority).unwrap_or(0)
    }
}

impl Store {
    fn push_ready(&mut self, entry: Entry) {
        match entry.priority() {
            0 => self.ready.push_back(entry),
            p => self.urgent.entry(p).or_default().push_back(entry),
        }
    }

    /// Back at the head of its queue (handed back unfinished).
    fn push_ready_front(&mut self, entry: Entry) {
        match entry.priority() {
            0 => self.ready.push_front(entry),
            p => self.urgent.entry(p).or_default().push_front(entry),
        }
    }

    fn pop_ready(&mut self) -> Option<Entry> {
        if let Some(mut top) = self.urgent.last_entry() {
            let entry = top.get_mut().pop_front();
            if top.get().is_empty() {
                top.remove();
            }
            if entry.is_some() {
                return entry;
            }
        }
        self.ready.pop_front()
    }

    fn ready_len(&self) -> usize {
        self.ready.len() + self.urgent.values().map(VecDeque::len).sum::<usize>()
    }
}

/// The id holding dedup `key` at `now`, if it has not expired.
fn held_by(store: &Store, key: &str, now: Instant) -> Option<String> {
    match store.dedup.get(key) {
        Some((holder, until)) if *until > now => Some(holder.clone()),
        _ => None,
    }
}

fn take_key(store: &mut Store, key: String, id: String, until: Instant) {
    if store.dedup.len() >= store.dedup_sweep_at {
        let now = Instant::now();
        store.dedup.retain(|_, (_, until)| *until > now);
        store.dedup_sweep_at = (store.dedup.len() * 2).max(1024);
    }
    store.dedup.insert(key, (id, until));
}

/// The in-process backend.
pub struct MemoryBackend {
    name: Arc<str>,
    store: Mutex<Store>,
    next_seq: AtomicU64,
    published: Notify,
    closed: AtomicBool,
}

/// `memory://`: in-process, named after the queue; it takes no options.
pub const KIND: Kind = Kind {
    name: "memory",
    type_name: "MemoryBackend",
    schemes: &["memory"],
    open: Some(open),
};

fn open(url: &str, queue: &str, options: Options) -> Result<Opened> {
    if url.len() > "memory://".len() {
        return Err(Error::Config(format!(
            "url: memory:// takes nothing after the scheme (the queue is the second \
             argument), got {}",
            crate::redact::redact_url(url)
        )));
    }
    options.finish("memory://", &[])?;
    let backend = Arc::new(MemoryBackend::new(queue)?);
    Ok(Opened {
        dead_letters: Some(Arc::new(super::memory_dlq::MemoryDeadLetters::new(
            backend.clone(),
        ))),
        backend,
    })
}

impl MemoryBackend {
    pub fn new(name: &str) -> Result<Self> {
        if name.is_empty() {
            return Err(Error::Config(
                "name: must be a non-empty string".to_string(),
            ));
        }
        Ok(MemoryBackend {
            name: Arc::from(name),
            store: Mutex::new(Store {
                ready: VecDeque::new(),
                urgent: BTreeMap::new(),
                delayed: BinaryHeap::new(),
                delayed_entries: HashMap::new(),
                unacked: Unacked::default(),
                deliveries: 0,
                dead: Vec::new(),
                dedup: HashMap::new(),
                dedup_sweep_at: 1024,
            }),
            next_seq: AtomicU64::new(1),
            published: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    fn seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Publish without awaiting anything (the memory backend never waits).
    pub fn publish_now(&self, messages: Vec<Outgoing>) -> Vec<String> {
        let mut ids = Vec::with_capacity(messages.len());
        let now = Instant::now();
        {
            let mut store = self.store.lock();
            for mut out in messages {
                let delay = out.delay;
                let dedup = out.dedup.take();
                if let Some(holder) = dedup.as_ref().and_then(|d| held_by(&store, &d.key, now)) {
                    ids.push(holder);
                    continue;
                }
                let (entry, id) = self.entry_from(out);
                if let Some(d) = dedup {
                    take_key(&mut store, d.key, id.clone(), now + d.ttl);
                }
                ids.push(id);
                self.put(&mut store, entry, delay, now);
            }
        }
        self.published.notify_waiters();
        self.published.notify_one();
        ids
    }

    /// Publish many bodies with no metadata: the fast path for bulk loads.
    pub fn publish_bodies(&self, bodies: Vec<Bytes>) -> usize {
        let n = bodies.len();
        {
            let mut store = self.store.lock();
            store.ready.reserve(n);
            for body in bodies {
                let number = self.seq();
                store.ready.push_back(Entry {
                    number,
                    body,
                    meta: None,
                    attempt: 1,
                });
            }
        }
        self.published.notify_waiters();
        self.published.notify_one();
        n
    }

    fn entry_from(&self, out: Outgoing) -> (Entry, String) {
        let number = self.seq();
        let id = out
            .message_id
            .clone()
            .unwrap_or_else(|| self.default_id(number));
        let meta = EntryMeta {
            id: out.message_id,
            headers: out.headers,
            correlation_id: out.correlation_id,
            content_type: out.content_type,
            reply_to: out.reply_to,
            priority: out.priority,
            routing_key: out.routing_key,
            redelivered: false,
        };
        (
            Entry {
                number,
                body: out.body,
                meta: Some(Box::new(meta)),
                attempt: out.attempt.max(1),
            },
            id,
        )
    }

    fn put(&self, store: &mut Store, entry: Entry, delay: Option<Duration>, now: Instant) {
        match delay {
            Some(d) if !d.is_zero() => {
                let key = self.seq();
                store.delayed.push(Reverse((now + d, key)));
                store.delayed_entries.insert(key, entry);
            }
            _ => store.push_ready(entry),
        }
    }

    /// Move due delayed entries to the ready queue; return when the next one is due.
    fn promote_due(store: &mut Store, now: Instant) -> Option<Instant> {
        while let Some(Reverse((due, key))) = store.delayed.peek().copied() {
            if due > now {
                return Some(due);
            }
            store.delayed.pop();
            if let Some(entry) = store.delayed_entries.remove(&key) {
                store.push_ready(entry);
            }
        }
        None
    }

    fn take_ready(&self, max: usize) -> (Vec<Delivery>, Option<Instant>) {
        let now = Instant::now();
        let mut store = self.store.lock();
        let next_due = Self::promote_due(&mut store, now);
        let n = max.min(store.ready_len());
        let mut out = Vec::with_capacity(n);
        let received_at = crate::clock::unix_now();
        for _ in 0..n {
            let Some(entry) = store.pop_ready() else {
                break;
            };
            store.deliveries += 1;
            let seq = store.deliveries;
            out.push(self.delivery_of(&entry, seq, received_at));
            store.unacked.insert(seq, entry);
        }
        (out, next_due)
    }

    fn delivery_of(&self, entry: &Entry, seq: u64, received_at: f64) -> Delivery {
        let mut d = Delivery {
            id: String::new(),
            body: entry.body.clone(),
            headers: Vec::new(),
            attempt: entry.attempt,
            queue: self.name.clone(),
            routing_key: None,
            correlation_id: None,
            content_type: None,
            reply_to: None,
            priority: None,
            received_at,
            redelivered: false,
            receipt: Receipt::packed(MemoryReceipt(seq)),
        };
        match &entry.meta {
            Some(meta) => {
                d.id = meta
                    .id
                    .clone()
                    .unwrap_or_else(|| self.default_id(entry.number));
                d.headers = meta.headers.clone();
                d.routing_key = meta.routing_key.clone();
                d.correlation_id = meta.correlation_id.clone();
                d.content_type = meta.content_type.clone();
                d.reply_to = meta.reply_to.clone();
                d.priority = meta.priority;
                d.redelivered = meta.redelivered;
            }
            None => d.id = self.default_id(entry.number),
        }
        d
    }

    /// `{name}-{seq}`, built without the formatting machinery (hot path).
    fn default_id(&self, seq: u64) -> String {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut n = seq;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut id = String::with_capacity(self.name.len() + 1 + digits.len() - i);
        id.push_str(&self.name);
        id.push('-');
        for &d in &digits[i..] {
            id.push(char::from(d));
        }
        id
    }

    /// Messages waiting, ready or delayed.
    pub fn qsize(&self) -> usize {
        let store = self.store.lock();
        store.ready_len() + store.delayed_entries.len()
    }

    /// Messages delivered and not yet settled.
    pub fn unacked(&self) -> usize {
        self.store.lock().unacked.len()
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.store.lock().dead.clone()
    }

    /// Remove and return the dead letters with these ids (all when `None`).
    pub fn take_dead_letters(&self, ids: Option<&[String]>) -> Vec<DeadLetter> {
        let mut store = self.store.lock();
        match ids {
            None => std::mem::take(&mut store.dead),
            Some(ids) => {
                let (taken, kept) = std::mem::take(&mut store.dead)
                    .into_iter()
                    .partition(|d| ids.contains(&d.original_id));
                store.dead = kept;
                taken
            }
        }
    }

    fn settle_one(
        &self,
        store: &mut Store,
        delivery: &Delivery,
        settlement: Settlement,
        now: Instant,
    ) {
        let Some(MemoryReceipt(seq)) = delivery.receipt.unpacked() else {
            return;
        };
        let Some(mut entry) = store.unacked.remove(seq) else {
            return;
        };
        match settlement {
            Settlement::Ack => {}
            Settlement::Retry {
                delay,
                count_attempt,
            } => {
                let meta = entry.meta.get_or_insert_with(Default::default);
                meta.id.get_or_insert_with(|| delivery.id.clone());
                // A retry that does not count (a deferral) is not a redelivery:
                // `redelivered` implies `attempt >= 2`, as on the brokers.
                if count_attempt {
                    entry.attempt = entry.attempt.saturating_add(1);
                    meta.redelivered = true;
                }
                self.put(store, entry, Some(delay), now);
            }
            Settlement::DeadLetter(failure) => {
                store
                    .dead
                    .push(DeadLetter::from_delivery(delivery, &failure));
            }
            Settlement::Requeue => {
                let meta = entry.meta.get_or_insert_with(Default::default);
                meta.id.get_or_insert_with(|| delivery.id.clone());
                meta.redelivered = true;
                // Delivered once already: the next delivery is the next attempt.
                entry.attempt = entry.attempt.saturating_add(1);
                store.push_ready_front(entry);
            }
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &str {
        &self.name
    }

    async fn connect(&self) -> Result<()> {
        self.closed.store(false, Ordering::Release);
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Shutdown);
            }
            // Register interest before looking, so a publish in between is not missed.
            let notified = self.published.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (batch, next_due) = self.take_ready(max);
            if !batch.is_empty() {
                return Ok(batch);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(batch);
            }
            let until = next_due.map_or(deadline, |due| due.min(deadline));
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    async fn settle(&self, batch: Vec<SettleItem>) -> Result<()> {
        let now = Instant::now();
        let mut requeued = false;
        {
            let mut store = self.store.lock();
            for (delivery, settlement) in batch {
                requeued |= !matches!(settlement, Settlement::Ack | Settlement::DeadLetter(_));
                self.settle_one(&mut store, &delivery, settlement, now);
            }
        }
        if requeued {
            self.published.notify_waiters();
            self.published.notify_one();
        }
        Ok(())
    }

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        Ok(self.publish_now(messages))
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        // Unsettled deliveries go back to the ready queue, as a broker would.
        let mut store = self.store.lock();
        let mut back: Vec<(u64, Entry)> = store.unacked.drain();
        back.sort_by_key(|(seq, _)| Reverse(*seq));
        for (_, mut entry) in back {
            entry.meta.get_or_insert_with(Default::default).redelivered = true;
            entry.attempt = entry.attempt.saturating_add(1);
            store.push_ready_front(entry);
        }
        Ok(())
    }

    fn state(&self) -> BackendState {
        if self.closed.load(Ordering::Acquire) {
            BackendState::Closed
        } else {
            BackendState::Connected
        }
    }

    async fn queue_stats(&self) -> Result<Option<QueueStats>> {
        Ok(Some(self.stats()))
    }

    fn is_drained(&self) -> Option<bool> {
        let store = self.store.lock();
        Some(
            store.ready.is_empty()
                && store.urgent.is_empty()
                && store.delayed_entries.is_empty()
                && store.unacked.is_empty(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn publish_receive_ack() {
        let b = MemoryBackend::new("q").unwrap();
        b.publish_bodies(vec![body("a"), body("b")]);
        assert_eq!(b.qsize(), 2);
        let got = b.receive(10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].body[..], b"a");
        assert_eq!(b.unacked(), 2);
        let items = got
            .into_iter()
            .map(|d| (Arc::new(d), Settlement::Ack))
            .collect();
        b.settle(items).await.unwrap();
        assert_eq!(b.unacked(), 0);
        assert_eq!(b.qsize(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_retry_waits_in_the_store_and_counts_attempts() {
        let b = MemoryBackend::new("q").unwrap();
        b.publish_now(vec![Outgoing {
            message_id: Some("m1".into()),
            ..Outgoing::new(body("x"))
        }]);
        let d = b.receive(1, Duration::ZERO).await.unwrap().remove(0);
        assert_eq!(d.attempt, 1);
        b.settle(vec![(
            Arc::new(d),
            Settlement::Retry {
                delay: Duration::from_secs(5),
                count_attempt: true,
            },
        )])
        .await
        .unwrap();
        assert_eq!(b.unacked(), 0);
        assert_eq!(b.qsize(), 1);
        assert!(b
            .receive(1, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty());
        let again = b.receive(1, Duration::from_secs(10)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, "m1");
        assert_eq!(again[0].attempt, 2);
        assert!(again[0].redelivered);
    }

    #[tokio::test(start_paused = true)]
    async fn short_delay_is_not_blocked_by_a_long_one() {
        let b = MemoryBackend::new("q").unwrap();
        let mut long = Outgoing::new(body("long"));
        long.delay = Some(Duration::from_secs(20));
        let mut short = Outgoing::new(body("short"));
        short.delay = Some(Duration::from_millis(500));
        b.publish_now(vec![long, short]);
        let got = b.receive(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].body[..], b"short");
    }

    #[tokio::test]
    async fn higher_priority_is_delivered_first() {
        let b = MemoryBackend::new("q").unwrap();
        let with = |s: &str, p: Option<u8>| Outgoing {
            priority: p,
            ..Outgoing::new(body(s))
        };
        b.publish_now(vec![
            with("none", None),
            with("low", Some(1)),
            with("high-a", Some(9)),
            with("zero", Some(0)),
            with("high-b", Some(9)),
        ]);
        assert_eq!(b.qsize(), 5);
        let got = b.receive(10, Duration::ZERO).await.unwrap();
        let order: Vec<&[u8]> = got.iter().map(|d| &d.body[..]).collect();
        assert_eq!(order, [&b"high-a"[..], b"high-b", b"low", b"none", b"zero"]);
        assert_eq!(got[0].priority, Some(9));
        b.close().await.unwrap();
        assert_eq!(b.is_drained(), Some(false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dedup_key_holds_for_its_ttl() {
        let b = MemoryBackend::new("q").unwrap();
        let keyed = |id: &str| Outgoing {
            message_id: Some(id.into()),
            dedup: Some(crate::message::Dedup {
                key: "k".into(),
                ttl: Duration::from_secs(10),
            }),
            ..Outgoing::new(body(id))
        };
        assert_eq!(b.publish_now(vec![keyed("a"), keyed("b")]), ["a", "a"]);
        assert_eq!(b.qsize(), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(b.publish_now(vec![keyed("c")]), ["c"]);
        assert_eq!(b.qsize(), 2);
    }

    #[tokio::test]
    async fn close_returns_unacked_messages() {
        let b = MemoryBackend::new("q").unwrap();
        b.publish_bodies(vec![body("a")]);
        let _held = b.receive(1, Duration::ZERO).await.unwrap();
        b.close().await.unwrap();
        assert_eq!(b.unacked(), 0);
        assert_eq!(b.qsize(), 1);
    }

    #[test]
    fn empty_name_is_a_config_error() {
        assert!(matches!(MemoryBackend::new(""), Err(Error::Config(_))));
    }
}
