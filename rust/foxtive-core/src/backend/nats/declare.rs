//! Streams and consumers: found, or created on first use (`declare`), and
//! an existing one with other settings is an error naming what differs.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{
    ConsumerInfoErrorKind, GetStreamByNameErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::stream::{RetentionPolicy, StorageType, Stream};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, Context};

use super::config::NatsConfig;
use super::link::Link;
use crate::{Error, Result};

/// The durable consumer that moves due delayed messages (one per delay stream).
pub const MOVER: &str = "foxtive-mover";
/// How long the mover may hold a delayed message before the server gives it
/// to another mover.
const MOVER_ACK_WAIT: Duration = Duration::from_secs(30);

/// The stream called `name`, `None` when it does not exist.
async fn stream_named(js: &Context, link: &Link, name: &str) -> Result<Option<Stream>> {
    match js.get_stream(name).await {
        Ok(s) => Ok(Some(s)),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            GetStreamErrorKind::Request => Err(link.error("stream info", e, true)),
            _ => Err(link.error(&format!("stream info {name}"), e, false)),
        },
    }
}

/// The name of the stream holding `subject`, if any.
pub async fn stream_holding(js: &Context, link: &Link, subject: &str) -> Result<Option<String>> {
    match js.stream_by_subject(subject).await {
        Ok(name) => Ok(Some(name)),
        Err(e) => match e.kind() {
            GetStreamByNameErrorKind::NotFound => Ok(None),
            GetStreamByNameErrorKind::Request => Err(link.error("stream lookup", e, true)),
            _ => Err(link.error(&format!("stream lookup for {subject}"), e, false)),
        },
    }
}

/// Does the subject pattern `pattern` (with `*` and `>`) hold `subject`?
pub fn holds(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The stream `name` holding `subject`: found (and checked), or created.
async fn ensure_stream(
    js: &Context,
    link: &Link,
    cfg: &NatsConfig,
    name: &str,
    subject: &str,
    retention: RetentionPolicy,
) -> Result<Stream> {
    if let Some(mut stream) = stream_named(js, link, name).await? {
        let info = stream
            .info()
            .await
            .map_err(|e| link.error("stream info", e, true))?;
        let subjects = &info.config.subjects;
        if !subjects.iter().any(|p| holds(p, subject)) {
            return Err(Error::Config(format!(
                "stream {name:?} exists with subjects {subjects:?}, which do not hold \
                 subject {subject:?}: use another stream name or add the subject to it"
            )));
        }
        return Ok(stream);
    }
    if !cfg.declare {
        return Err(Error::Config(format!(
            "stream {name:?} does not exist (declare=False): create it with subject {subject:?}"
        )));
    }
    js.create_stream(jetstream::stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        retention,
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .inspect(|_| tracing::info!(stream = %name, subject = %subject, "created NATS stream"))
    .map_err(|e| link.error(&format!("create stream {name}"), e, false))
}

/// What an existing consumer should say, and what it says.
fn differences(want: &pull::Config, have: &jetstream::consumer::Config) -> Vec<String> {
    let mut out = Vec::new();
    if have.filter_subject != want.filter_subject {
        out.push(format!(
            "filter_subject {:?} (want {:?})",
            have.filter_subject, want.filter_subject
        ));
    }
    if have.ack_policy != want.ack_policy {
        out.push(format!(
            "ack_policy {:?} (want {:?})",
            have.ack_policy, want.ack_policy
        ));
    }
    if have.ack_wait != want.ack_wait {
        out.push(format!(
            "ack_wait {}s (want {}s)",
            have.ack_wait.as_secs_f64(),
            want.ack_wait.as_secs_f64()
        ));
    }
    if have.max_deliver != want.max_deliver {
        out.push(format!(
            "max_deliver {} (want {})",
            have.max_deliver, want.max_deliver
        ));
    }
    if have.deliver_subject.is_some() {
        out.push("a push consumer (want a pull consumer)".to_string());
    }
    out
}

/// The durable pull consumer `want` on `stream`: found (and checked), or created.
async fn ensure_consumer(
    link: &Link,
    stream: &Stream,
    stream_name: &str,
    want: pull::Config,
    declare: bool,
) -> Result<()> {
    let name = want.durable_name.clone().unwrap_or_default();
    match stream.consumer_info(&name).await {
        Ok(info) => {
            let diff = differences(&want, &info.config);
            if diff.is_empty() {
                return Ok(());
            }
            return Err(Error::Config(format!(
                "consumer {name:?} on stream {stream_name:?} exists with other settings: {}; \
                 delete it or use another durable name",
                diff.join(", ")
            )));
        }
        Err(e) => match e.kind() {
            ConsumerInfoErrorKind::NotFound => {}
            ConsumerInfoErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND => {}
            ConsumerInfoErrorKind::Request
            | ConsumerInfoErrorKind::TimedOut
            | ConsumerInfoErrorKind::NoResponders => {
                return Err(link.error("consumer info", e, true))
            }
            _ => return Err(link.error(&format!("consumer info {name}"), e, false)),
        },
    }
    if !declare {
        return Err(Error::Config(format!(
            "consumer {name:?} does not exist on stream {stream_name:?} (declare=False)"
        )));
    }
    stream
        .create_consumer(want)
        .await
        .map_err(|e| link.error(&format!("create consumer {name}"), e, false))?;
    tracing::info!(stream = %stream_name, consumer = %name, "created NATS consumer");
    Ok(())
}

/// The consumer configuration foxtive asks for.
pub fn consumer_config(cfg: &NatsConfig) -> pull::Config {
    pull::Config {
        durable_name: Some(cfg.durable.clone()),
        filter_subject: cfg.subject.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: i64::from(cfg.max_deliver) + 1,
        max_ack_pending: cfg.max_ack_pending,
        deliver_policy: DeliverPolicy::All,
        ..Default::default()
    }
}

/// Everything a receiving backend needs: the queue's stream and durable
/// consumer, the dead-letter stream and the delay stream with its mover.
pub async fn declare(js: &Context, link: &Link, cfg: &NatsConfig) -> Result<()> {
    let stream = ensure_stream(
        js,
        link,
        cfg,
        &cfg.stream,
        &cfg.subject,
        RetentionPolicy::WorkQueue,
    )
    .await?;
    ensure_consumer(
        link,
        &stream,
        &cfg.stream,
        consumer_config(cfg),
        cfg.declare,
    )
    .await?;
    ensure_dead_letter_stream(js, link, cfg).await?;
    let delay = delay_stream(js, link, cfg).await?;
    let mover = pull::Config {
        durable_name: Some(MOVER.to_string()),
        filter_subject: cfg.delay_subject.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: MOVER_ACK_WAIT,
        max_deliver: -1,
        ..Default::default()
    };
    let name = delay.cached_info().config.name.clone();
    ensure_consumer(link, &delay, &name, mover, cfg.declare).await
}

/// The stream holding the dead letters (created when none holds `dlq_subject`).
pub async fn ensure_dead_letter_stream(js: &Context, link: &Link, cfg: &NatsConfig) -> Result<()> {
    if stream_holding(js, link, &cfg.dlq_subject).await?.is_some() {
        return Ok(());
    }
    ensure_stream(
        js,
        link,
        cfg,
        &cfg.dlq_stream(),
        &cfg.dlq_subject,
        RetentionPolicy::Limits,
    )
    .await
    .map(|_| ())
}

/// The stream holding delayed messages (created when none holds `delay_subject`).
pub async fn delay_stream(js: &Context, link: &Link, cfg: &NatsConfig) -> Result<Stream> {
    if let Some(name) = stream_holding(js, link, &cfg.delay_subject).await? {
        if let Some(s) = stream_named(js, link, &name).await? {
            return Ok(s);
        }
    }
    ensure_stream(
        js,
        link,
        cfg,
        &cfg.delay_stream(),
        &cfg.delay_subject,
        RetentionPolicy::WorkQueue,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns() {
        assert!(holds("emails", "emails"));
        assert!(holds("emails.>", "emails.dlq"));
        assert!(holds("emails.*", "emails.dlq"));
        assert!(!holds("emails.*", "emails"));
        assert!(!holds("emails", "emails.dlq"));
        assert!(holds(">", "a.b"));
    }

    #[test]
    fn differences_name_each_setting() {
        let cfg = NatsConfig::for_queue("q");
        let want = consumer_config(&cfg);
        let mut have =
            async_nats::jetstream::consumer::IntoConsumerConfig::into_consumer_config(want.clone());
        assert!(differences(&want, &have).is_empty());
        have.ack_wait = Duration::from_secs(5);
        have.max_deliver = 3;
        let d = differences(&want, &have).join(", ");
        assert!(d.contains("ack_wait 5s (want 30s)"), "{d}");
        assert!(d.contains("max_deliver 3 (want 11)"), "{d}");
    }
}
