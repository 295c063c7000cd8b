//! Settling: acks pipelined per batch, retry and dead-letter copies stored
//! before their originals are acked, unfinished entries handed back.

use super::*;

/// What a settle batch turns into.
#[derive(Default)]
struct Plan<'a> {
    acks: Vec<&'a str>,
    /// Immediate copies: (original entry id, stream key, fields).
    copies: Vec<(&'a str, &'a str, Vec<Field<'a>>)>,
    /// Delayed retry copies: (original entry id, delay ms, member).
    delayed: Vec<(&'a str, u64, Vec<u8>)>,
    /// Handed back at shutdown: (entry id, delivery count).
    release: Vec<(String, u32)>,
}

impl Inner {
    /// XACK (and XDEL) entries, pipelined.
    pub(super) async fn ack(&self, ids: &[&str]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let cfg = &self.cfg;
        self.with_writer("XACK", OP_RETRY_WINDOW, |mut conn| {
            let mut pipe = redis::pipe();
            for chunk in ids.chunks(IDS_PER_COMMAND) {
                pipe.cmd("XACK")
                    .arg(&cfg.stream_name)
                    .arg(&cfg.group_name)
                    .arg(chunk)
                    .ignore();
                if cfg.delete_on_ack {
                    pipe.cmd("XDEL").arg(&cfg.stream_name).arg(chunk).ignore();
                }
            }
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .await
    }

    pub(super) fn xadd<'a>(
        &self,
        pipe: &mut redis::Pipeline,
        key: &str,
        fields: &[Field<'a>],
        trim: bool,
    ) {
        let cmd = pipe.cmd("XADD").arg(key);
        if let (true, Some(n)) = (trim, self.cfg.maxlen) {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        for (k, v) in fields {
            cmd.arg(&**k).arg(&**v);
        }
    }

    /// Store delayed members (delay ms, member) in one script run.
    pub(super) async fn schedule(&self, items: &[(u64, &[u8])], window: Duration) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        self.with_writer("schedule delayed", window, |mut conn| {
            let mut inv = self.scripts.schedule.key(&self.cfg.delayed_key);
            for (delay, member) in items {
                inv.arg(*delay).arg(*member);
            }
            async move {
                inv.invoke_async::<Value>(&mut conn).await?;
                self.replicated(&mut conn).await
            }
        })
        .await?;
        self.timer_wake.notify_one();
        Ok(())
    }

    pub(super) async fn settle(&self, batch: Vec<SettleItem>) -> Result<()> {
        let running = !self.stopped();
        let failed_at = crate::clock::unix_now();
        let mut plan = Plan::default();
        {
            let mut held = self.held.lock();
            let mut again = self.ready.lock();
            for (d, settlement) in &batch {
                let Some(StreamReceipt(entry_id, _)) = d.receipt.get() else {
                    continue;
                };
                let Some(key) = StreamId::parse(entry_id) else {
                    continue;
                };
                if let Settlement::Requeue = settlement {
                    if running {
                        // Still ours and still heartbeated: hand it out again.
                        let mut copy = (**d).clone();
                        copy.redelivered = true;
                        // Its handler had it: the next delivery is the next attempt.
                        copy.attempt = copy.attempt.saturating_add(1);
                        again.push_back(copy);
                    } else {
                        let count = held.remove(&key).unwrap_or(1);
                        plan.release.push((entry_id.clone(), count));
                    }
                    continue;
                }
                held.remove(&key);
                match settlement {
                    Settlement::Ack => plan.acks.push(entry_id),
                    Settlement::Retry {
                        delay,
                        count_attempt,
                    } => {
                        let attempt = if *count_attempt {
                            d.attempt.saturating_add(1)
                        } else {
                            d.attempt
                        };
                        let fields = Parts::from_delivery(d, attempt).fields();
                        let ms = delay.as_millis().min(u64::MAX as u128) as u64;
                        if ms == 0 {
                            plan.copies.push((entry_id, &self.cfg.stream_name, fields));
                        } else {
                            plan.delayed
                                .push((entry_id, ms, codec::delayed_member(&fields)));
                        }
                    }
                    Settlement::DeadLetter(failure) => {
                        let fields = codec::dead_letter_fields(
                            d,
                            failure,
                            entry_id,
                            &self.cfg.consumer_name,
                            failed_at,
                        );
                        plan.copies
                            .push((entry_id, &self.cfg.dead_letter_stream, fields));
                    }
                    Settlement::Requeue => {}
                }
            }
        }
        let result = self.apply(&mut plan).await;
        if !plan.release.is_empty() {
            // Handed to the engine: a hand-back is the next attempt.
            self.release(&plan.release, true).await;
        }
        self.touch();
        result
    }

    /// Store copies first, then ack what is safe to ack.
    async fn apply(&self, plan: &mut Plan<'_>) -> Result<()> {
        let mut first_error: Option<Error> = None;
        if !plan.copies.is_empty() {
            let copies = &plan.copies;
            let stored = self
                .with_writer("store copies", OP_RETRY_WINDOW, |mut conn| {
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    for (_, key, fields) in copies {
                        let trim = *key == self.cfg.stream_name;
                        self.xadd(&mut pipe, key, fields, trim);
                    }
                    async move {
                        let replies = pipe.query_async::<Vec<Value>>(&mut conn).await?;
                        self.replicated(&mut conn).await?;
                        Ok(replies)
                    }
                })
                .await;
            match stored {
                Ok(replies) => {
                    for ((entry_id, key, _), reply) in copies.iter().zip(replies) {
                        if let Value::ServerError(e) = reply {
                            tracing::warn!(stream = %self.queue, entry = %entry_id, target = %key,
                                error = %self.link.scrub(format!("{e:?}")),
                                "could not store a copy; the original stays pending");
                        } else {
                            plan.acks.push(entry_id);
                        }
                    }
                }
                Err(e) => first_error = Some(e),
            }
        }
        if !plan.delayed.is_empty() {
            let items: Vec<(u64, &[u8])> = plan
                .delayed
                .iter()
                .map(|(_, ms, m)| (*ms, m.as_slice()))
                .collect();
            match self.schedule(&items, OP_RETRY_WINDOW).await {
                Ok(()) => plan.acks.extend(plan.delayed.iter().map(|(id, _, _)| *id)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.ack(&plan.acks).await {
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Hand entries back at shutdown: still pending, but with a large idle
    /// time so peers reclaim them at once. `tried` says whether a handler
    /// had them: if not (read ahead, never handed out) their delivery count
    /// is undone; if so it stands, and the next delivery is the next attempt
    /// (redelivered, as on RabbitMQ).
    pub(super) async fn release(&self, entries: &[(String, u32)], tried: bool) {
        if entries.is_empty() {
            return;
        }
        let cfg = &self.cfg;
        let res = self
            .with_writer("release pending", SHUTDOWN_STEP, |mut conn| {
                let mut pipe = redis::pipe();
                for (id, count) in entries {
                    pipe.cmd("XCLAIM")
                        .arg(&cfg.stream_name)
                        .arg(&cfg.group_name)
                        .arg(&cfg.consumer_name)
                        .arg(0)
                        .arg(id)
                        .arg("IDLE")
                        .arg(RELEASED_IDLE_MS)
                        .arg("RETRYCOUNT")
                        .arg(if tried {
                            *count
                        } else {
                            count.saturating_sub(1)
                        })
                        .arg("JUSTID")
                        .ignore();
                }
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await;
        match res {
            Ok(()) => tracing::info!(stream = %self.queue, count = entries.len(),
                "unfinished entries handed back for other consumers to take over"),
            Err(e) => tracing::warn!(stream = %self.queue, error = %e,
                "could not hand back unfinished entries; peers reclaim them after claim_idle"),
        }
    }
}
