//! One logical queue over several streams (`partitions = N`).
//!
//! Each partition is a whole queue of its own (stream, delayed set,
//! dead-letter stream, its own hash tag), driven by its own [`Inner`]; they
//! share the command connection. This file spreads the work over them:
//!
//! * publish: a message with a `partition_key` header goes to the partition
//!   its key hashes to, so one key's messages keep their order; a message
//!   with a dedup key and no `partition_key` goes by its dedup key (so the
//!   duplicate check sees every earlier copy); the others round robin.
//! * receive: partitions are read in turn, starting from a different one
//!   each call; what one has is returned at once. When all are empty, each
//!   is waited on in turn for a short slice, so a quiet partition does not
//!   keep a busy one waiting for long.
//! * settle: every delivery's receipt names its partition.

use super::*;
use crate::redis_url::slot_of;

/// Header naming the key whose messages go to one partition, in order.
pub const PARTITION_KEY_HEADER: &str = "partition_key";

/// Longest blocking read on one partition while all are empty.
const WAIT_SLICE: Duration = Duration::from_millis(50);

impl RedisStreamBackend {
    fn count(&self) -> usize {
        1 + self.rest.len()
    }

    fn part(&self, i: usize) -> &Arc<Inner> {
        if i == 0 {
            &self.inner
        } else {
            &self.rest[i - 1]
        }
    }

    /// The partition a message goes to.
    pub(super) fn partition_of(&self, m: &Outgoing) -> usize {
        let n = self.count();
        let keyed = m
            .headers
            .iter()
            .find(|(name, _)| name == PARTITION_KEY_HEADER)
            .map(|(_, v)| match v {
                crate::message::HeaderValue::Str(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .or_else(|| m.dedup.as_ref().map(|d| d.key.clone()));
        match keyed {
            // CRC16 of the key: the same on every publisher and every run.
            Some(key) => usize::from(slot_of(&key)) % n,
            None => self.next.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    pub(super) async fn publish_partitions(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        let n = self.count();
        let mut groups: Vec<Vec<(usize, Outgoing)>> = (0..n).map(|_| Vec::new()).collect();
        let total = messages.len();
        for (i, m) in messages.into_iter().enumerate() {
            let p = self.partition_of(&m);
            groups[p].push((i, m));
        }
        let mut ids: Vec<Option<String>> = vec![None; total];
        for (p, group) in groups.into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let (positions, batch): (Vec<usize>, Vec<Outgoing>) = group.into_iter().unzip();
            let got = self.part(p).publish(batch).await?;
            for (pos, id) in positions.into_iter().zip(got) {
                ids[pos] = Some(id);
            }
        }
        ids.into_iter()
            .map(|id| id.ok_or_else(|| Error::Backend("a partition returned no id".to_string())))
            .collect()
    }

    pub(super) async fn receive_partitions(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        let n = self.count();
        let deadline = Instant::now() + wait;
        let max = max.max(1);
        loop {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let mut out: Vec<Delivery> = Vec::new();
            for k in 0..n {
                if out.len() >= max {
                    break;
                }
                let got = self
                    .part((start + k) % n)
                    .receive(max - out.len(), Duration::ZERO)
                    .await?;
                out.extend(got);
            }
            if !out.is_empty() {
                return Ok(out);
            }
            // All empty: block on one partition for a slice, then look again.
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            let slice = (deadline - now).min(WAIT_SLICE);
            let got = self.part(start % n).receive(max, slice).await?;
            if !got.is_empty() {
                return Ok(got);
            }
        }
    }

    pub(super) async fn settle_partitions(&self, batch: Vec<SettleItem>) -> Result<()> {
        let n = self.count();
        let mut groups: Vec<Vec<SettleItem>> = (0..n).map(|_| Vec::new()).collect();
        for item in batch {
            let p = item
                .0
                .receipt
                .get::<StreamReceipt>()
                .map(|r| usize::from(r.1))
                .filter(|p| *p < n)
                .unwrap_or(0);
            groups[p].push(item);
        }
        // Partitions settle concurrently: one slow shard does not hold up the rest.
        let mut tasks = Vec::new();
        for (p, items) in groups.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            let part = self.part(p).clone();
            tasks.push(tokio::spawn(async move { part.settle(items).await }));
        }
        let mut first_error = None;
        for task in tasks {
            let res = match task.await {
                Ok(res) => res,
                Err(e) => Err(Error::Backend(format!("settle task failed: {e}"))),
            };
            if let Err(e) = res {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
