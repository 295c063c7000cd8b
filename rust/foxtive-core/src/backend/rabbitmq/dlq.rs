//! The dead-letter queue (`{queue}.dlq`) as a [`DeadLetterStore`]: list,
//! show, replay and purge what the backend dead-lettered there.
//!
//! Every call opens a connection of its own (named after the queue, see
//! [`QueueDeadLetters::connection_name`]) and closes it at the end, so it
//! never disturbs a running consumer.
//!
//! - **Listing** takes messages with `basic.get` without acknowledging them,
//!   then hands them all back (`basic.nack multiple requeue`, and the channel
//!   closes): nothing is consumed. A message handed back keeps its place in
//!   the (classic) queue and is marked `redelivered`; while a listing runs,
//!   the messages it holds are invisible to other readers of the DLQ.
//! - **Replay** runs in an AMQP transaction on one channel, one message per
//!   transaction: `tx.select`, `basic.get` from the DLQ, `basic.publish` of
//!   the copy to the source queue, `basic.ack` of the dead letter,
//!   `tx.commit`. Publish and ack take effect together at the commit: a
//!   connection cut, a killed process or a failed publish before the commit
//!   rolls both back (the dead letter is handed back, no copy exists); after
//!   it, both happened. Only the messages in the DLQ when the replay starts
//!   are looked at, so one that fails again meanwhile is not replayed twice.
//! - **Purge** is `queue.purge`.
//!
//! Records are rebuilt from the `x-foxtive-*` headers the backend writes on
//! dead letters; those headers are not repeated in the record's `headers`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::fields::{headers_from_table, table_from_headers};
use super::RabbitMqBackend;
use crate::dlq::{DeadLetter, DeadLetterStore, StoredDeadLetter};
use crate::message::{HeaderValue, Headers};
use crate::{Error, Result};

/// Headers the backend adds to a dead letter to describe the failure.
const META: [&str; 7] = [
    "x-foxtive-error-type",
    "x-foxtive-error",
    "x-foxtive-attempts",
    "x-foxtive-failed-at",
    "x-foxtive-worker",
    "x-foxtive-poison-pill",
    "x-foxtive-source-queue",
];

/// How long one broker call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The dead-letter queue of one RabbitMQ backend.
pub struct QueueDeadLetters {
    backend: RabbitMqBackend,
    name: String,
}

impl RabbitMqBackend {
    /// A view of this backend's dead-letter queue.
    pub fn dead_letter_store(&self) -> QueueDeadLetters {
        QueueDeadLetters {
            name: format!(
                "amqp:{} queue={}",
                self.shared.redacted_url, self.shared.dlq_name
            ),
            backend: self.clone(),
        }
    }
}

/// One message taken with `basic.get`.
struct Got {
    tag: u64,
    record: StoredDeadLetter,
    properties: BasicProperties,
}

impl QueueDeadLetters {
    fn dlq(&self) -> &str {
        &self.backend.shared.dlq_name
    }

    fn source(&self) -> &str {
        &self.backend.shared.config.queue_name
    }

    /// The connection name each call uses: the backend's `connection_name`
    /// (or "foxtive") followed by ` dead letters <dlq>`.
    pub fn connection_name(&self) -> String {
        let base = self
            .backend
            .shared
            .config
            .connection_name
            .as_deref()
            .unwrap_or("foxtive");
        format!("{base} dead letters {}", self.dlq())
    }

    fn err(&self, what: &str, e: &lapin::Error) -> Error {
        let inner = self.backend.shared.lapin_err(what, e);
        Error::DeadLetter(format!("{}: {inner}", self.name))
    }

    /// A short-lived connection of its own, to the first node that answers
    /// within `connect_timeout` (the same nodes and limit as the consumer).
    async fn connect(&self) -> Result<Connection> {
        let shared = &self.backend.shared;
        let timeout = shared.config.connect_timeout;
        let mut last = None;
        for uri in &shared.nodes {
            let props = ConnectionProperties::default()
                .with_connection_name(LongString::from(self.connection_name().into_bytes()));
            match tokio::time::timeout(timeout, Connection::connect_uri(uri.clone(), props)).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => last = Some(self.err("connecting", &e)),
                Err(_) => {
                    last = Some(Error::DeadLetter(format!(
                        "{}: connecting timed out after {}s (connect_timeout)",
                        self.name,
                        timeout.as_secs_f64()
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("url: no broker node".to_string())))
    }

    async fn channel(&self, conn: &Connection) -> Result<Channel> {
        conn.create_channel()
            .await
            .map_err(|e| self.err("opening a channel", &e))
    }

    /// Messages ready in `queue`, or `None` when it does not exist. A failed
    /// passive declare closes its channel, so it gets one of its own.
    async fn ready(&self, conn: &Connection, queue: &str) -> Result<Option<u32>> {
        let ch = self.channel(conn).await?;
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
                Ok(Some(q.message_count()))
            }
            Err(e) if e.to_string().contains("NOT_FOUND") => Ok(None),
            Err(e) => Err(self.err(&format!("looking up queue {queue:?}"), &e)),
        }
    }

    async fn get(&self, ch: &Channel) -> Result<Option<Got>> {
        let opts = BasicGetOptions { no_ack: false };
        let got = within(ch.basic_get(ShortString::from(self.dlq()), opts))
            .await
            .and_then(|r| r.map_err(|e| self.err("basic.get", &e)))?;
        Ok(got.map(|m| {
            let d = m.delivery;
            let record = self.record(&d.properties, Bytes::from(d.data));
            Got {
                tag: d.delivery_tag,
                properties: d.properties,
                record,
            }
        }))
    }

    /// A dead letter rebuilt from a message and its `x-foxtive-*` headers.
    fn record(&self, props: &BasicProperties, body: Bytes) -> StoredDeadLetter {
        let mut headers = props
            .headers()
            .as_ref()
            .map(headers_from_table)
            .unwrap_or_default();
        let meta = take_meta(&mut headers);
        let text = |k: &str| match meta.get(k) {
            Some(HeaderValue::Str(s)) => s.clone(),
            Some(HeaderValue::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        let id = props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        let source = text("x-foxtive-source-queue");
        let record = DeadLetter {
            original_id: id.clone(),
            body,
            headers,
            source_queue: if source.is_empty() {
                self.source().to_string()
            } else {
                source
            },
            attempts: meta
                .get("x-foxtive-attempts")
                .and_then(HeaderValue::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            error_type: text("x-foxtive-error-type"),
            error_message: text("x-foxtive-error"),
            failed_at: match meta.get("x-foxtive-failed-at") {
                Some(HeaderValue::Float(f)) => *f,
                Some(HeaderValue::Int(i)) => *i as f64,
                _ => 0.0,
            },
            worker_id: text("x-foxtive-worker"),
            poison_pill: matches!(
                meta.get("x-foxtive-poison-pill"),
                Some(HeaderValue::Bool(true))
            ),
        };
        StoredDeadLetter { key: id, record }
    }

    /// Take up to `limit` messages without acknowledging them, then hand
    /// them all back.
    async fn peek(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        let conn = self.connect().await?;
        let result = self.peek_on(&conn, limit).await;
        let _ = conn.close(200, ShortString::from("done")).await;
        result
    }

    async fn peek_on(&self, conn: &Connection, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        let Some(ready) = self.ready(conn, self.dlq()).await? else {
            return Ok(Vec::new());
        };
        let ch = self.channel(conn).await?;
        let mut out = Vec::new();
        let mut last = None;
        while out.len() < limit.min(ready as usize) {
            let Some(got) = self.get(&ch).await? else {
                break;
            };
            last = Some(got.tag);
            out.push(got.record);
        }
        if let Some(tag) = last {
            let back = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            ch.basic_nack(tag, back)
                .await
                .map_err(|e| self.err("handing messages back (basic.nack)", &e))?;
        }
        let _ = ch.close(200, ShortString::from("done")).await;
        Ok(out)
    }

    /// Go through the messages present now, one transaction each: `choose`
    /// says for each whether to republish and ack it (`Some(true)`), ack it
    /// only (`Some(false)`), or leave it (`None`). Returns how many were acked.
    async fn each_in_tx(
        &self,
        choose: impl Fn(&Got) -> Option<bool> + Send + Sync,
    ) -> Result<usize> {
        let conn = self.connect().await?;
        let result = self.each_in_tx_on(&conn, &choose).await;
        // Closing hands back what was left unacknowledged (and rolls back an
        // open transaction).
        let _ = conn.close(200, ShortString::from("done")).await;
        result
    }

    async fn each_in_tx_on(
        &self,
        conn: &Connection,
        choose: &(impl Fn(&Got) -> Option<bool> + Send + Sync),
    ) -> Result<usize> {
        let Some(ready) = self.ready(conn, self.dlq()).await? else {
            return Ok(0);
        };
        let mut checked: HashMap<String, bool> = HashMap::new();
        let ch = self.channel(conn).await?;
        within(ch.tx_select())
            .await
            .and_then(|r| r.map_err(|e| self.err("tx.select", &e)))?;
        let mut done = 0;
        for _ in 0..ready {
            let Some(got) = self.get(&ch).await? else {
                break;
            };
            let Some(republish) = choose(&got) else {
                continue; // not chosen: handed back when the channel closes
            };
            if republish {
                let target = got.record.record.source_queue.clone();
                if !checked.contains_key(&target) {
                    let exists = self.ready(conn, &target).await?.is_some();
                    checked.insert(target.clone(), exists);
                }
                if checked.get(&target) != Some(&true) {
                    return Err(Error::DeadLetter(format!(
                        "{}: replayed {done}; the source queue {target:?} does not exist, so \
                         the rest stay dead-lettered",
                        self.name
                    )));
                }
                self.publish_copy(&ch, &target, &got).await?;
            }
            ch.basic_ack(got.tag, BasicAckOptions::default())
                .await
                .map_err(|e| self.err("basic.ack", &e))?;
            within(ch.tx_commit())
                .await
                .and_then(|r| r.map_err(|e| self.err("tx.commit", &e)))?;
            done += 1;
        }
        Ok(done)
    }

    async fn publish_copy(&self, ch: &Channel, queue: &str, got: &Got) -> Result<()> {
        let copy = got.record.record.to_replay();
        let mut props = got.properties.clone();
        props = props
            .with_delivery_mode(2)
            .with_headers(table_from_headers(&copy.headers));
        within(ch.basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            &copy.body,
            props,
        ))
        .await
        .and_then(|r| r.map_err(|e| self.err(&format!("publishing to {queue:?}"), &e)))
        .map(drop)
    }
}

/// Remove the failure's headers from `headers` and return them by name.
fn take_meta(headers: &mut Headers) -> HashMap<&'static str, HeaderValue> {
    let mut meta = HashMap::new();
    headers.retain(|(k, v)| match META.iter().find(|m| **m == k.as_str()) {
        Some(m) => {
            meta.insert(*m, v.clone());
            false
        }
        None => true,
    });
    meta
}

async fn within<T>(fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, fut).await.map_err(|_| {
        Error::DeadLetter(format!(
            "the broker did not answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))
    })
}

fn wanted(ids: Option<&[String]>, record: &StoredDeadLetter) -> bool {
    ids.is_none_or(|ids| ids.contains(&record.record.original_id))
}

#[async_trait]
impl DeadLetterStore for QueueDeadLetters {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, _records: Vec<DeadLetter>) -> Result<()> {
        Err(crate::dlq::native_put_refused(&self.name))
    }

    async fn list(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        self.peek(limit).await
    }

    async fn remove(&self, keys: &[String]) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.each_in_tx(|got| keys.contains(&got.record.key).then_some(false))
            .await
    }

    async fn purge(&self) -> Result<usize> {
        let conn = self.connect().await?;
        let result = async {
            if self.ready(&conn, self.dlq()).await?.is_none() {
                return Ok(0);
            }
            let ch = self.channel(&conn).await?;
            let n = ch
                .queue_purge(ShortString::from(self.dlq()), QueuePurgeOptions::default())
                .await
                .map_err(|e| self.err("queue.purge", &e))?;
            Ok(n as usize)
        }
        .await;
        let _ = conn.close(200, ShortString::from("done")).await;
        result
    }

    async fn count(&self) -> Result<usize> {
        let conn = self.connect().await?;
        let result = self.ready(&conn, self.dlq()).await;
        let _ = conn.close(200, ShortString::from("done")).await;
        Ok(result?.unwrap_or(0) as usize)
    }

    /// There when the source queue or its dead-letter queue exists: a typo
    /// in the queue name finds neither.
    async fn exists(&self) -> Result<bool> {
        let conn = self.connect().await?;
        let result = async {
            Ok(self.ready(&conn, self.dlq()).await?.is_some()
                || self.ready(&conn, self.source()).await?.is_some())
        }
        .await;
        let _ = conn.close(200, ShortString::from("done")).await;
        result
    }

    async fn replay_in_place(&self, ids: Option<&[String]>) -> Result<usize> {
        self.each_in_tx(|got| wanted(ids, &got.record).then_some(true))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_headers_are_taken_out_of_the_message_headers() {
        let mut headers: Headers = vec![
            ("tenant".into(), HeaderValue::Str("acme".into())),
            ("x-foxtive-error".into(), HeaderValue::Str("boom".into())),
            ("x-foxtive-attempts".into(), HeaderValue::Int(3)),
            ("x-foxtive-attempt".into(), HeaderValue::Int(3)),
        ];
        let meta = take_meta(&mut headers);
        assert_eq!(meta.len(), 2);
        assert_eq!(
            meta.get("x-foxtive-error"),
            Some(&HeaderValue::Str("boom".into()))
        );
        let names: Vec<_> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["tenant", "x-foxtive-attempt"]);
    }
}
