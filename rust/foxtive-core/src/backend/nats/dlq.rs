//! The dead letters (`dlq_subject`, in the stream that holds it) as a
//! [`DeadLetterStore`]: list, show, replay and purge.
//!
//! A dead letter is the message as it was (body, headers, `Nats-Msg-Id`
//! `<stream>:<sequence>` so a repeated dead-lettering stores one copy, the
//! message id in `x-foxtive-message-id`) plus the `x-foxtive-*` headers
//! below, in plain text. Records are read with direct gets by sequence,
//! never consumed; their key is the stream sequence. A replay publishes the
//! record to the queue (deduplicated by `<id>:replay:<sequence>`, so a
//! replay repeated after a crash stores one copy) and then deletes it.

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_trait::async_trait;

use super::codec;
use super::declare::stream_holding;
use super::*;
use crate::dlq::{native_put_refused, DeadLetter, DeadLetterStore, StoredDeadLetter};

pub const ERROR_TYPE: &str = "x-foxtive-error-type";
pub const ERROR: &str = "x-foxtive-error";
pub const ATTEMPTS: &str = "x-foxtive-attempts";
pub const FAILED_AT: &str = "x-foxtive-failed-at";
pub const WORKER: &str = "x-foxtive-worker";
pub const POISON_PILL: &str = "x-foxtive-poison-pill";
pub const SOURCE_QUEUE: &str = "x-foxtive-source-queue";
const META: [&str; 7] = [
    ERROR_TYPE,
    ERROR,
    ATTEMPTS,
    FAILED_AT,
    WORKER,
    POISON_PILL,
    SOURCE_QUEUE,
];

/// The dead letters of one NATS backend.
pub struct NatsDeadLetters {
    inner: Arc<Inner>,
    name: String,
}

impl NatsDeadLetters {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        NatsDeadLetters {
            name: format!("nats:{} subject={}", inner.link.url, inner.cfg.dlq_subject),
            inner,
        }
    }

    /// The stream holding the dead letters, if there is one.
    async fn stream(&self) -> Result<Option<Stream>> {
        let inner = &self.inner;
        inner.link.open_again();
        let (_, js) = inner.link.conn().await?;
        let Some(name) = stream_holding(&js, &inner.link, &inner.cfg.dlq_subject).await? else {
            return Ok(None);
        };
        js.get_stream(&name)
            .await
            .map(Some)
            .map_err(|e| inner.link.error("dead-letter stream", e, true))
    }

    /// Up to `limit` records, oldest first.
    async fn entries(&self, stream: &mut Stream, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        let link = &self.inner.link;
        let state = stream
            .info()
            .await
            .map_err(|e| link.error("dead-letter stream info", e, true))?
            .state
            .clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return Ok(out);
        }
        for seq in state.first_sequence..=state.last_sequence {
            if out.len() >= limit {
                break;
            }
            match stream.get_raw_message(seq).await {
                Ok(m) if m.subject.as_str() == self.inner.cfg.dlq_subject => {
                    out.push(self.record(&m));
                }
                Ok(_) => {}
                Err(e) => match e.kind() {
                    LastRawMessageErrorKind::NoMessageFound => {}
                    LastRawMessageErrorKind::JetStream(j) if j.code() == 404 => {}
                    _ => return Err(link.error("dead-letter read", e, true)),
                },
            }
        }
        Ok(out)
    }

    fn record(&self, m: &async_nats::jetstream::message::StreamMessage) -> StoredDeadLetter {
        let mut headers = codec::read_headers(Some(&m.headers));
        headers.retain(|(k, _)| !META.contains(&k.as_str()));
        let text = |name: &str| {
            m.headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        let source = text(SOURCE_QUEUE);
        let record = DeadLetter {
            original_id: codec::message_id(Some(&m.headers))
                .unwrap_or_else(|| m.sequence.to_string()),
            body: m.payload.clone(),
            headers,
            source_queue: if source.is_empty() {
                self.inner.cfg.subject.clone()
            } else {
                source
            },
            attempts: text(ATTEMPTS).parse().unwrap_or(1),
            error_type: text(ERROR_TYPE),
            error_message: text(ERROR),
            failed_at: text(FAILED_AT).parse().unwrap_or(0.0),
            worker_id: text(WORKER),
            poison_pill: text(POISON_PILL) == "true",
        };
        StoredDeadLetter {
            key: m.sequence.to_string(),
            record,
        }
    }

    async fn delete(&self, stream: &Stream, seq: u64) -> Result<bool> {
        match stream.delete_message(seq).await {
            Ok(done) => Ok(done),
            Err(e) if e.to_string().contains("no message found") => Ok(false),
            Err(e) => Err(self.inner.link.error("dead-letter delete", e, true)),
        }
    }
}

#[async_trait]
impl DeadLetterStore for NatsDeadLetters {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, _records: Vec<DeadLetter>) -> Result<()> {
        Err(native_put_refused(&self.name))
    }

    async fn list(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        match self.stream().await? {
            Some(mut s) => self.entries(&mut s, limit).await,
            None => Ok(Vec::new()),
        }
    }

    async fn remove(&self, keys: &[String]) -> Result<usize> {
        let Some(stream) = self.stream().await? else {
            return Ok(0);
        };
        let mut n = 0;
        for key in keys {
            if let Ok(seq) = key.parse::<u64>() {
                n += usize::from(self.delete(&stream, seq).await?);
            }
        }
        Ok(n)
    }

    async fn purge(&self) -> Result<usize> {
        let Some(stream) = self.stream().await? else {
            return Ok(0);
        };
        let done = stream
            .purge()
            .filter(self.inner.cfg.dlq_subject.clone())
            .await
            .map_err(|e| self.inner.link.error("dead-letter purge", e, true))?;
        Ok(usize::try_from(done.purged).unwrap_or(usize::MAX))
    }

    async fn count(&self) -> Result<usize> {
        Ok(self.list(usize::MAX).await?.len())
    }

    async fn exists(&self) -> Result<bool> {
        Ok(self.stream().await?.is_some())
    }

    async fn replay_in_place(&self, ids: Option<&[String]>) -> Result<usize> {
        let Some(mut stream) = self.stream().await? else {
            return Ok(0);
        };
        let mut chosen = self.entries(&mut stream, usize::MAX).await?;
        if let Some(ids) = ids {
            chosen.retain(|s| ids.contains(&s.record.original_id));
        }
        let inner = &self.inner;
        let (_, js) = inner.link.conn().await?;
        let mut done = 0;
        for stored in chosen {
            let out = stored.record.to_replay();
            let id = stored.record.original_id.clone();
            let dedup = format!("{id}:replay:{}", stored.key);
            let headers = codec::outgoing_headers(&out, &id, &dedup)?;
            let ack = js
                .publish_with_headers(inner.cfg.subject.clone(), headers, out.body)
                .await
                .map_err(|e| inner.link.error("replay publish", e, true))?;
            ack.await.map_err(|e| {
                Error::DeadLetter(format!(
                    "replay: publishing failed after {done} records were replayed; the rest \
                     stay in {}: {}",
                    self.name,
                    inner.link.scrub(e)
                ))
            })?;
            if let Ok(seq) = stored.key.parse::<u64>() {
                self.delete(&stream, seq).await?;
            }
            done += 1;
        }
        Ok(done)
    }
}
