//! The background duties: moving due delayed messages, heartbeating held
//! entries, probing for `is_drained`, listing this consumer's pending entries.

use super::*;

impl Inner {
    /// Move due delayed messages; returns how long until the next is due.
    pub(super) async fn move_due(&self) -> Duration {
        let Ok((gen, mut conn)) = self.link.writer().await else {
            return MOVER_POLL;
        };
        loop {
            let maxlen = self.cfg.maxlen.map(|n| n.to_string()).unwrap_or_default();
            let res = self
                .scripts
                .move_due
                .key(&self.cfg.delayed_key)
                .key(&self.cfg.stream_name)
                .arg(MOVE_LIMIT)
                .arg(maxlen)
                .invoke_async::<(i64, i64)>(&mut conn)
                .await;
            match res {
                Ok((moved, wait)) => {
                    if moved > 0 {
                        self.touch();
                    }
                    if moved as usize >= MOVE_LIMIT {
                        continue;
                    }
                    return match u64::try_from(wait) {
                        Ok(ms) => Duration::from_millis(ms).min(MOVER_POLL),
                        Err(_) => MOVER_POLL,
                    };
                }
                Err(e) => {
                    let err = self.link.error("move delayed", &e);
                    if err.is_connection() {
                        self.link.lost(gen, &err);
                    } else {
                        tracing::warn!(stream = %self.queue, error = %err, "moving delayed messages failed");
                    }
                    return Duration::from_secs(1);
                }
            }
        }
    }

    /// Reset the idle time of the entries this consumer holds.
    pub(super) async fn heartbeat(&self) {
        let ids: Vec<String> = self.held.lock().keys().map(|k| k.to_string()).collect();
        if ids.is_empty() {
            return;
        }
        let Ok((gen, mut conn)) = self.link.writer().await else {
            return;
        };
        for chunk in ids.chunks(IDS_PER_COMMAND) {
            let res = self
                .scripts
                .heartbeat
                .key(&self.cfg.stream_name)
                .arg(&self.cfg.group_name)
                .arg(&self.cfg.consumer_name)
                .arg(chunk)
                .invoke_async::<Value>(&mut conn)
                .await;
            if let Err(e) = res {
                let err = self.link.error("heartbeat", &e);
                if err.is_connection() {
                    self.link.lost(gen, &err);
                } else {
                    tracing::warn!(stream = %self.queue, error = %err, "heartbeat failed");
                }
                return;
            }
        }
    }

    /// Is there anything left for this group (ready, pending or delayed)?
    pub(super) async fn probe(&self) {
        let activity = self.activity.load(Ordering::Acquire);
        let at = Instant::now();
        let Ok((gen, mut conn)) = self.link.writer().await else {
            return;
        };
        let res = self
            .scripts
            .probe
            .key(&self.cfg.stream_name)
            .key(&self.cfg.delayed_key)
            .arg(&self.cfg.group_name)
            .invoke_async::<(i64, i64, i64)>(&mut conn)
            .await;
        match res {
            Ok((delayed, pending, undelivered)) => {
                let local = self.held.lock().is_empty() && self.ready.lock().is_empty();
                *self.probe.lock() = Some(Probe {
                    at,
                    activity,
                    drained: local && delayed == 0 && pending == 0 && undelivered == 0,
                });
            }
            Err(e) => {
                let err = self.link.error("probe", &e);
                if err.is_connection() {
                    self.link.lost(gen, &err);
                } else {
                    tracing::warn!(stream = %self.queue, error = %err, "drain probe failed");
                }
            }
        }
    }

    pub(super) fn is_drained(&self) -> bool {
        if !self.probe_wanted.swap(true, Ordering::AcqRel) {
            self.timer_wake.notify_one();
        }
        match *self.probe.lock() {
            Some(p) => {
                p.drained
                    && p.at.elapsed() < PROBE_FRESH
                    && p.activity == self.activity.load(Ordering::Acquire)
            }
            None => false,
        }
    }

    /// Entries pending for this consumer: (id, delivery count).
    pub(super) async fn own_pending(&self) -> Result<Vec<(String, u32)>> {
        let cfg = &self.cfg;
        let reply = self
            .with_writer("XPENDING", SHUTDOWN_STEP, |mut conn| async move {
                redis::cmd("XPENDING")
                    .arg(&cfg.stream_name)
                    .arg(&cfg.group_name)
                    .arg("-")
                    .arg("+")
                    .arg(100_000)
                    .arg(&cfg.consumer_name)
                    .query_async::<Value>(&mut conn)
                    .await
            })
            .await?;
        Ok(reply::pending_rows(reply)?
            .into_iter()
            .map(|r| (r.id, r.deliveries))
            .collect())
    }
}

/// The background task: moves due delayed messages, heartbeats held
/// entries, probes for `is_drained`. Holds only a weak reference.
pub(super) async fn duties(weak: Weak<Inner>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let mut next_move = Instant::now();
    let mut next_beat = Instant::now();
    let mut next_probe = Instant::now();
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let now = Instant::now();
            if now >= next_move {
                next_move = now + inner.move_due().await;
            }
            if now >= next_beat {
                inner.heartbeat().await;
                next_beat = now + inner.cfg.heartbeat_interval();
            }
            if now >= next_probe && inner.probe_wanted.swap(false, Ordering::AcqRel) {
                inner.probe().await;
                next_probe = now + PROBE_GAP;
            }
        }
        let until = next_move.min(next_beat);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = &mut notified => {
                // A schedule or a probe request: look again now.
                next_move = next_move.min(Instant::now());
                if Instant::now() < next_probe {
                    tokio::time::sleep_until(next_probe).await;
                }
            }
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}
