//! The stream's counts: `XLEN` of the stream and of the dead-letter stream,
//! `ZCARD` of the delayed set (one pipelined round trip), then the group's
//! row of `XINFO GROUPS` (`lag`: entries not yet delivered to the group,
//! `pending`: delivered and not acked, `consumers`).

use redis::Value;

use super::{reply, Inner, RedisStreamBackend, SHUTDOWN_STEP};
use crate::backend::queue_stats::count;
use crate::backend::QueueStats;
use crate::Result;

/// One group's row of `XINFO GROUPS`.
#[derive(Debug, Default, PartialEq)]
struct GroupRow {
    consumers: Option<i64>,
    pending: Option<i64>,
    lag: Option<i64>,
}

/// The row of group `name` in an `XINFO GROUPS` reply (RESP2 flat pairs
/// or RESP3 maps), if there.
fn group_row(v: Value, name: &str) -> Option<GroupRow> {
    for group in reply::items(v)? {
        let mut it = reply::items(group)?.into_iter();
        let mut row = GroupRow::default();
        let mut found = false;
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match reply::string(k).as_deref() {
                Some("name") => found = reply::string(v).as_deref() == Some(name),
                Some("consumers") => row.consumers = reply::int(&v),
                Some("pending") => row.pending = reply::int(&v),
                Some("lag") => row.lag = reply::int(&v),
                _ => {}
            }
        }
        if found {
            return Some(row);
        }
    }
    None
}

impl RedisStreamBackend {
    /// The queue's figures, summed over its partitions.
    pub async fn stats(&self) -> Result<QueueStats> {
        let mut total = QueueStats::default();
        for part in self.parts() {
            let s = part.stats().await?;
            let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
            total.ready = add(total.ready, s.ready);
            total.delayed = add(total.delayed, s.delayed);
            total.in_progress = add(total.in_progress, s.in_progress);
            total.dead = add(total.dead, s.dead);
            // Every consumer reads every partition: count them once.
            total.consumers = total.consumers.max(s.consumers);
        }
        Ok(total)
    }
}

impl Inner {
    async fn stats(&self) -> Result<QueueStats> {
        let inner = self;
        let cfg = &inner.cfg;
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&cfg.stream_name)
            .cmd("ZCARD")
            .arg(&cfg.delayed_key)
            .cmd("XLEN")
            .arg(&cfg.dead_letter_stream);
        let (len, delayed, dead): (i64, i64, i64) = inner
            .with_writer("queue stats", SHUTDOWN_STEP, |mut conn| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        let group = if len > 0 {
            let groups = inner
                .with_writer("XINFO GROUPS", SHUTDOWN_STEP, |mut conn| async move {
                    match redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg(&cfg.stream_name)
                        .query_async::<Value>(&mut conn)
                        .await
                    {
                        // The stream went away in between.
                        Err(e) if e.to_string().contains("no such key") => Ok(Value::Nil),
                        other => other,
                    }
                })
                .await?;
            group_row(groups, &cfg.group_name)
        } else {
            None
        };
        let (ready, in_progress, consumers) = match group {
            // No group yet: it will be created at 0, so every entry is ready.
            None => (count(len), Some(0), Some(0)),
            Some(g) => {
                let ready = match (g.lag, g.pending) {
                    (Some(lag), _) => count(lag),
                    // Acked entries are deleted: what is left is pending or new.
                    (None, Some(p)) if cfg.delete_on_ack => count(len - p),
                    _ => None,
                };
                (
                    ready,
                    g.pending.and_then(count),
                    g.consumers.and_then(count),
                )
            }
        };
        Ok(QueueStats {
            ready,
            delayed: count(delayed),
            in_progress,
            dead: count(dead),
            consumers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn finds_the_group_row() {
        let row = |name: &str, lag: Value| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("consumers"),
                Value::Int(2),
                bulk("pending"),
                Value::Int(3),
                bulk("lag"),
                lag,
            ])
        };
        let reply = Value::Array(vec![row("other", Value::Int(9)), row("g", Value::Int(4))]);
        assert_eq!(
            group_row(reply.clone(), "g"),
            Some(GroupRow {
                consumers: Some(2),
                pending: Some(3),
                lag: Some(4)
            })
        );
        assert_eq!(group_row(reply, "missing"), None);
        let nil_lag = Value::Array(vec![row("g", Value::Nil)]);
        assert_eq!(group_row(nil_lag, "g").and_then(|r| r.lag), None);
    }
}
