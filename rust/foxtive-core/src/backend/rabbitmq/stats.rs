//! The queue's counts, from passive `queue.declare`s (which change nothing):
//! the main queue's ready messages and consumers, and the dead-letter
//! queue's messages. AMQP does not tell unacknowledged messages, nor what
//! waits in the delay buckets (their names depend on the delays used), so
//! those stay `None`; the management plugin is not required.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::Connection;

use super::link::Link;
use super::{RabbitMqBackend, PUBLISH_RECONNECT_WAIT};
use crate::backend::QueueStats;
use crate::{Error, Result};

impl RabbitMqBackend {
    pub async fn stats(&self) -> Result<QueueStats> {
        let link = self.stats_link().await?;
        let main = self.passive(&link.conn, self.shared.name.as_ref()).await?;
        let dead = self.passive(&link.conn, &self.shared.dlq_name).await?;
        Ok(QueueStats {
            ready: main.map(|(messages, _)| u64::from(messages)),
            delayed: None,
            in_progress: None,
            dead: Some(dead.map_or(0, |(messages, _)| u64::from(messages))),
            consumers: main.map(|(_, consumers)| u64::from(consumers)),
        })
    }

    /// The live link; when there is none (no pool running), connect
    /// without consuming, as a lone `publish` does.
    async fn stats_link(&self) -> Result<Arc<Link>> {
        let s = &self.shared;
        if s.closed.load(Ordering::Acquire) || s.current().is_none() {
            let _guard = s.connect_lock.lock().await;
            if s.closed.load(Ordering::Acquire) || s.current().is_none() {
                s.stopped.store(true, Ordering::Release);
                s.closed.store(false, Ordering::Release);
                let link = s.build_link(false).await?;
                if s.install(link).is_none() {
                    return Err(Error::Shutdown);
                }
            }
        }
        s.live_link(PUBLISH_RECONNECT_WAIT).await
    }

    /// `(messages, consumers)` of `queue`, or `None` when it does not exist.
    /// A failed passive declare closes its channel, so it gets its own.
    async fn passive(&self, conn: &Connection, queue: &str) -> Result<Option<(u32, u32)>> {
        let s = &self.shared;
        let ch = s.open_channel(conn, "stats").await?;
        let opts = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match ch
            .queue_declare(ShortString::from(queue), opts, FieldTable::default())
            .await
        {
            Ok(q) => {
                let _ = ch.close(200, ShortString::from("done")).await;
                Ok(Some((q.message_count(), q.consumer_count())))
            }
            Err(e) if e.to_string().contains("NOT_FOUND") => Ok(None),
            Err(e) => Err(s.lapin_err(&format!("looking up queue {queue:?}"), &e)),
        }
    }
}
