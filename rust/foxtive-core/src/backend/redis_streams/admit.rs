//! Reading side: read entries become deliveries; deleted entries are acked
//! away and poison pills go to the dead-letter stream instead of a handler.

use super::*;

impl Inner {
    /// Turn read entries into deliveries: deleted ones are acked away,
    /// poison pills go to the dead-letter stream, the rest are held.
    /// `counted`: look up delivery counts (for entries delivered before).
    pub(super) async fn admit(&self, entries: Vec<RawEntry>, counted: bool) -> Vec<Delivery> {
        let counts: HashMap<String, u32> = if counted {
            self.delivery_counts(&entries).await
        } else {
            HashMap::new()
        };
        let received_at = crate::clock::unix_now();
        let mut out = Vec::with_capacity(entries.len());
        let mut gone: Vec<String> = Vec::new();
        let mut poison: Vec<(Delivery, u32)> = Vec::new();
        {
            let mut held = self.held.lock();
            for entry in entries {
                let Some(key) = StreamId::parse(&entry.id) else {
                    continue;
                };
                let Some(fields) = entry.fields else {
                    gone.push(entry.id);
                    continue;
                };
                if counted && held.contains_key(&key) {
                    // Already in a handler here (a late heartbeat let it go idle).
                    continue;
                }
                let count = counts.get(&entry.id).copied().unwrap_or(1).max(1);
                let d =
                    codec::delivery(entry.id, self.part, fields, count, &self.queue, received_at);
                if count > self.cfg.max_deliveries {
                    poison.push((d, count));
                    continue;
                }
                held.insert(key, count);
                out.push(d);
            }
        }
        if !gone.is_empty() {
            let ids: Vec<&str> = gone.iter().map(String::as_str).collect();
            if let Err(e) = self.ack(&ids).await {
                tracing::warn!(stream = %self.queue, error = %e, "could not ack deleted pending entries");
            }
        }
        if !poison.is_empty() {
            self.dead_letter_poison(poison).await;
        }
        if !out.is_empty() {
            self.touch();
        }
        out
    }

    /// Delivery counts from the pending list, one pipelined XPENDING per entry.
    /// Delivery counts from the pending list, one pipelined XPENDING per
    /// entry. When Redis cannot say, the entries go out counted as first
    /// deliveries rather than wait for a reclaim.
    async fn delivery_counts(&self, entries: &[RawEntry]) -> HashMap<String, u32> {
        let mut out = HashMap::with_capacity(entries.len());
        let Ok((gen, mut conn)) = self.link.writer().await else {
            return out;
        };
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("XPENDING")
                .arg(&self.cfg.stream_name)
                .arg(&self.cfg.group_name)
                .arg(&e.id)
                .arg(&e.id)
                .arg(1);
        }
        let replies: Vec<Value> = match pipe.query_async(&mut conn).await {
            Ok(r) => r,
            Err(e) => {
                let err = self.link.error("XPENDING", &e);
                tracing::warn!(stream = %self.queue, error = %err,
                    "delivery counts unavailable; entries go out as first deliveries");
                if err.is_connection() {
                    self.link.lost(gen, &err);
                }
                return out;
            }
        };
        for reply in replies {
            let Ok(rows) = reply::pending_rows(reply) else {
                continue;
            };
            for row in rows {
                if row.consumer == self.cfg.consumer_name {
                    out.insert(row.id, row.deliveries);
                }
            }
        }
        out
    }

    async fn dead_letter_poison(&self, poison: Vec<(Delivery, u32)>) {
        let worker: Arc<str> = Arc::from(self.cfg.consumer_name.as_str());
        let items: Vec<SettleItem> = poison
            .into_iter()
            .map(|(d, count)| {
                tracing::warn!(stream = %self.queue, id = %d.id, deliveries = count,
                    "poison pill: delivered too often without being settled; dead-lettering it");
                let failure = Failure {
                    error_type: "PoisonPill".to_string(),
                    error_message: format!(
                        "delivered {count} times without being settled (max_deliveries={}); \
                         its handler probably crashed or hung the worker",
                        self.cfg.max_deliveries
                    ),
                    worker_id: worker.clone(),
                    poison_pill: true,
                };
                (Arc::new(d), Settlement::DeadLetter(failure))
            })
            .collect();
        if let Err(e) = self.settle(items).await {
            tracing::warn!(stream = %self.queue, error = %e,
                "could not dead-letter poison pills; they stay pending");
        }
    }
}
