//! The RabbitMQ backend against the real broker (127.0.0.1:5672, guest/guest).
//! Each test uses its own queues and deletes them afterwards. lapin, used
//! directly, is the independent judge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foxtive_core::backend::rabbitmq::{AmqpReceipt, QueueType, RabbitMqBackend, RabbitMqConfig};
use foxtive_core::backend::Backend;
use foxtive_core::message::{header, Failure, HeaderValue, Outgoing, Settlement};
use foxtive_core::policy::ReconnectStrategy;
use foxtive_core::{Delivery, Error};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn unique(prefix: &str) -> String {
    format!("foxtive-test-{prefix}-{:08x}", rand::random::<u32>())
}

struct Judge {
    _conn: Connection,
    ch: Channel,
    queues: Vec<String>,
}

impl Judge {
    async fn new() -> Judge {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672");
        let ch = conn.create_channel().await.unwrap();
        Judge {
            _conn: conn,
            ch,
            queues: Vec::new(),
        }
    }

    fn track(&mut self, q: &str) {
        self.queues.push(q.to_string());
    }

    /// Ready messages in `q` (0 when it does not exist).
    async fn ready(&self, q: &str) -> u32 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match self
            .ch
            .queue_declare(q.into(), passive, FieldTable::default())
            .await
        {
            Ok(queue) => queue.message_count(),
            Err(e) => panic!("queue {q}: {e}"),
        }
    }

    async fn get(&self, q: &str) -> Option<lapin::message::BasicGetMessage> {
        self.ch
            .basic_get(q.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
    }

    async fn publish(&self, q: &str, body: &[u8], props: BasicProperties) {
        self.ch
            .basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap();
    }

    async fn cleanup(self) {
        for q in &self.queues {
            let _ = self
                .ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

fn backend(queue: &str, tweak: impl FnOnce(&mut RabbitMqConfig)) -> RabbitMqBackend {
    let mut config = RabbitMqConfig::new(queue);
    config.prefetch_count = 50;
    config.reconnect = ReconnectStrategy::fixed(Duration::from_millis(100));
    tweak(&mut config);
    RabbitMqBackend::new(URL, config).unwrap()
}

async fn receive_n(b: &RabbitMqBackend, n: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        out.extend(
            b.receive(n - out.len(), Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    out
}

fn settle_all(ds: &[Delivery], s: Settlement) -> Vec<(Arc<Delivery>, Settlement)> {
    ds.iter()
        .map(|d| (Arc::new(d.clone()), s.clone()))
        .collect()
}

#[tokio::test]
async fn publish_receive_ack_with_typed_headers() {
    let q = unique("basic");
    let mut judge = Judge::new().await;
    judge.track(&q);
    let b = backend(&q, |_| {});
    b.connect().await.unwrap();
    let mut out = Outgoing::new(Bytes::from_static(b"hello"));
    out.message_id = Some("m-1".into());
    out.correlation_id = Some("c-1".into());
    out.headers = vec![
        ("int".into(), HeaderValue::Int(42)),
        ("neg".into(), HeaderValue::Int(-1 << 40)),
        ("flag".into(), HeaderValue::Bool(true)),
        ("pi".into(), HeaderValue::Float(3.25)),
        ("text".into(), HeaderValue::Str("héllo".into())),
        (
            "raw".into(),
            HeaderValue::Bytes(Bytes::from_static(b"\x00\xff")),
        ),
        (
            "list".into(),
            HeaderValue::Array(vec![HeaderValue::Int(1), HeaderValue::Str("b".into())]),
        ),
        (
            "table".into(),
            HeaderValue::Table(vec![("k".into(), HeaderValue::Int(7))]),
        ),
    ];
    let ids = b
        .publish(vec![
            out.clone(),
            Outgoing::new(Bytes::from_static(b"second")),
        ])
        .await
        .unwrap();
    assert_eq!(ids[0], "m-1");
    assert_eq!(ids[1].len(), 32, "a generated id");
    let got = receive_n(&b, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    let d = &got[0];
    assert_eq!(d.id, "m-1");
    assert_eq!(&d.body[..], b"hello");
    assert_eq!(d.attempt, 1);
    assert_eq!(d.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(d.routing_key.as_deref(), Some(q.as_str()));
    for (k, v) in &out.headers {
        assert_eq!(header(&d.headers, k), Some(v), "header {k}");
    }
    assert_eq!(got[1].id, ids[1]);
    b.settle(settle_all(&got, Settlement::Ack)).await.unwrap();
    b.close().await.unwrap();
    assert_eq!(judge.ready(&q).await, 0);
    judge.cleanup().await;
}

#[tokio::test]
async fn out_of_order_acks_never_ack_what_is_in_flight() {
    let q = unique("acks");
    let mut judge = Judge::new().await;
    judge.track(&q);
    let b = backend(&q, |_| {});
    b.connect().await.unwrap();
    let bodies: Vec<Outgoing> = (0..20)
        .map(|i| Outgoing::new(Bytes::from(format!("{i}"))))
        .collect();
    b.publish(bodies).await.unwrap();
    let got = receive_n(&b, 20, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 20);
    // Ack the odd ones only, in reverse order, in two batches.
    let odd: Vec<Delivery> = got.iter().skip(1).step_by(2).rev().cloned().collect();
    b.settle(settle_all(&odd[..5], Settlement::Ack))
        .await
        .unwrap();
    b.settle(settle_all(&odd[5..], Settlement::Ack))
        .await
        .unwrap();
    // The even ones are still ours: after close they are back in the queue.
    b.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while judge.ready(&q).await != 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(judge.ready(&q).await, 10);
    let mut back = Vec::new();
    while let Some(m) = judge.get(&q).await {
        back.push(
            String::from_utf8(m.delivery.data.clone())
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    back.sort_unstable();
    assert_eq!(back, (0..20).step_by(2).collect::<Vec<_>>());
    judge.cleanup().await;
}

#[tokio::test]
async fn short_retry_is_not_held_back_by_a_long_one() {
    let q = unique("delay");
    let mut judge = Judge::new().await;
    let b = backend(&q, |_| {});
    judge.track(&q);
    judge.track(&b.retry_queue_for(Duration::from_secs(20)).unwrap());
    judge.track(&b.retry_queue_for(Duration::from_millis(500)).unwrap());
    b.connect().await.unwrap();
    let mut long = Outgoing::new(Bytes::from_static(b"long"));
    long.message_id = Some("long".into());
    let mut short = Outgoing::new(Bytes::from_static(b"short"));
    short.message_id = Some("short".into());
    b.publish(vec![long, short]).await.unwrap();
    let got = receive_n(&b, 2, Duration::from_secs(5)).await;
    let items = vec![
        (
            Arc::new(got[0].clone()),
            Settlement::Retry {
                delay: Duration::from_secs(20),
                count_attempt: true,
            },
        ),
        (
            Arc::new(got[1].clone()),
            Settlement::Retry {
                delay: Duration::from_millis(500),
                count_attempt: true,
            },
        ),
    ];
    let started = Instant::now();
    b.settle(items).await.unwrap();
    let again = receive_n(&b, 1, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, "short");
    assert_eq!(again[0].attempt, 2);
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // The long one waits in its own bucket, not in the worker.
    let long_bucket = b.retry_queue_for(Duration::from_secs(20)).unwrap();
    assert_eq!(judge.ready(&long_bucket).await, 1);
    b.settle(settle_all(&again, Settlement::Ack)).await.unwrap();
    b.close().await.unwrap();
    judge.cleanup().await;
}

#[tokio::test]
async fn dead_letters_keep_everything_and_say_why() {
    let q = unique("dlq");
    let mut judge = Judge::new().await;
    let b = backend(&q, |_| {});
    judge.track(&q);
    judge.track(b.dead_letter_queue());
    b.connect().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("custom".into(), AMQPValue::LongInt(5));
    judge
        .publish(
            &q,
            b"payload",
            BasicProperties::default()
                .with_message_id("orig-1".into())
                .with_app_id("billing".into())
                .with_timestamp(1_700_000_000)
                .with_correlation_id("corr".into())
                .with_headers(headers),
        )
        .await;
    let got = receive_n(&b, 1, Duration::from_secs(5)).await;
    let failure = Failure {
        error_type: "ValueError".into(),
        error_message: "bad input".into(),
        worker_id: Arc::from("w-1"),
        poison_pill: false,
    };
    b.settle(settle_all(&got, Settlement::DeadLetter(failure)))
        .await
        .unwrap();
    let m = judge
        .get(b.dead_letter_queue())
        .await
        .expect("a dead letter");
    let p = &m.delivery.properties;
    assert_eq!(m.delivery.data, b"payload");
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("orig-1"));
    assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("billing"));
    assert_eq!(*p.timestamp(), Some(1_700_000_000));
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.as_str()),
        Some("corr")
    );
    assert_eq!(*p.delivery_mode(), Some(2));
    let h = p.headers().as_ref().unwrap().inner();
    let s = |k: &str| match h.get(k) {
        Some(AMQPValue::LongString(v)) => String::from_utf8(v.as_bytes().to_vec()).unwrap(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(s("x-foxtive-error-type"), "ValueError");
    assert_eq!(s("x-foxtive-error"), "bad input");
    assert_eq!(s("x-foxtive-worker"), "w-1");
    assert_eq!(s("x-foxtive-source-queue"), q);
    assert_eq!(h.get("x-foxtive-attempts"), Some(&AMQPValue::LongInt(1)));
    assert_eq!(h.get("custom"), Some(&AMQPValue::LongInt(5)));
    assert_eq!(
        h.get("x-foxtive-poison-pill"),
        Some(&AMQPValue::Boolean(false))
    );
    assert!(matches!(h.get("x-foxtive-failed-at"), Some(AMQPValue::Double(t)) if *t > 1.7e9));
    b.close().await.unwrap();
    assert_eq!(judge.ready(&q).await, 0);
    judge.cleanup().await;
}

#[tokio::test]
async fn quorum_queue_counts_attempts_from_the_broker() {
    let q = unique("quorum");
    let mut judge = Judge::new().await;
    judge.track(&q);
    let b = backend(&q, |c| c.queue_type = QueueType::Quorum);
    b.connect().await.unwrap();
    b.publish(vec![Outgoing::new(Bytes::from_static(b"x"))])
        .await
        .unwrap();
    let first = receive_n(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(first[0].attempt, 1);
    b.settle(settle_all(&first, Settlement::Requeue))
        .await
        .unwrap();
    let second = receive_n(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(second[0].attempt, 2, "{:?}", second[0].headers);
    assert!(second[0].redelivered);
    // A retry copy carries the next attempt, not the stale broker count.
    b.settle(settle_all(
        &second,
        Settlement::Retry {
            delay: Duration::ZERO,
            count_attempt: true,
        },
    ))
    .await
    .unwrap();
    let third = receive_n(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(third[0].attempt, 3, "{:?}", third[0].headers);
    b.settle(settle_all(&third, Settlement::Ack)).await.unwrap();
    b.close().await.unwrap();
    judge.cleanup().await;
}

#[tokio::test]
async fn reconnects_and_never_acks_a_stale_tag() {
    let q = unique("reconnect");
    let mut judge = Judge::new().await;
    judge.track(&q);
    let b = backend(&q, |_| {});
    b.connect().await.unwrap();
    b.publish(
        (0..5)
            .map(|i| Outgoing::new(Bytes::from(format!("{i}"))))
            .collect(),
    )
    .await
    .unwrap();
    let held = receive_n(&b, 5, Duration::from_secs(5)).await;
    assert_eq!(held.len(), 5);
    let epoch = b.epoch();
    b.break_connection().await.unwrap();
    // The broker requeues them; the backend comes back by itself.
    let again = receive_n(&b, 5, Duration::from_secs(10)).await;
    assert_eq!(again.len(), 5);
    assert!(again.iter().all(|d| d.redelivered));
    assert!(b.epoch() > epoch);
    assert!(b.reconnect_attempts() >= 1);
    assert_eq!(b.consecutive_failures(), 0);
    let Some(AmqpReceipt { epoch: e2, .. }) = again[0].receipt.unpacked() else {
        panic!("not an AMQP receipt: {:?}", again[0].receipt)
    };
    assert_ne!(e2, epoch);
    // Acks for the dead link are dropped (they would close the new channel).
    b.settle(settle_all(&held, Settlement::Ack)).await.unwrap();
    b.settle(settle_all(&again, Settlement::Ack)).await.unwrap();
    assert_eq!(b.state(), foxtive_core::backend::BackendState::Connected);
    b.publish(vec![Outgoing::new(Bytes::from_static(b"after"))])
        .await
        .unwrap();
    let after = receive_n(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(&after[0].body[..], b"after");
    b.settle(settle_all(&after, Settlement::Ack)).await.unwrap();
    b.close().await.unwrap();
    assert_eq!(judge.ready(&q).await, 0);
    judge.cleanup().await;
}

#[tokio::test]
async fn stop_receiving_returns_buffered_deliveries() {
    let q = unique("stop");
    let mut judge = Judge::new().await;
    judge.track(&q);
    let b = backend(&q, |c| c.prefetch_count = 10);
    b.connect().await.unwrap();
    b.publish(
        (0..30)
            .map(|i| Outgoing::new(Bytes::from(format!("{i}"))))
            .collect(),
    )
    .await
    .unwrap();
    let got = receive_n(&b, 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3);
    b.stop_receiving().await.unwrap();
    b.settle(settle_all(&got, Settlement::Ack)).await.unwrap();
    // 27 left: the 7 buffered ones went back before close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while judge.ready(&q).await != 27 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(judge.ready(&q).await, 27);
    b.close().await.unwrap();
    assert!(matches!(
        b.receive(1, Duration::ZERO).await,
        Err(Error::Shutdown)
    ));
    judge.cleanup().await;
}

#[tokio::test]
async fn consumes_a_queue_declared_elsewhere_and_keeps_big_bodies() {
    let q = unique("existing");
    let mut judge = Judge::new().await;
    judge.track(&q);
    // Declared by another client with its own arguments: used as it is.
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-max-length"), AMQPValue::LongInt(1000));
    judge
        .ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    judge.publish(&q, &big, BasicProperties::default()).await;
    let b = backend(&q, |_| {});
    b.connect().await.unwrap();
    let got = receive_n(&b, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].body.len(), big.len());
    assert!(got[0].body[..] == big[..]);
    b.settle(settle_all(&got, Settlement::Ack)).await.unwrap();
    b.close().await.unwrap();
    judge.cleanup().await;
}

#[tokio::test]
async fn a_wrong_password_is_an_error_without_the_password() {
    let b = RabbitMqBackend::new(
        "amqp://guest:wrong-s3cret@127.0.0.1:5672/%2f",
        RabbitMqConfig::new(unique("auth")),
    )
    .unwrap();
    let err = b.connect().await.unwrap_err().to_string();
    assert!(!err.contains("wrong-s3cret"), "{err}");
    assert!(err.contains("guest:***@127.0.0.1"), "{err}");
}

/// The names of the connections the broker lists with the client-given
/// `connection_name` (rabbitmqctl is the judge; RabbitMQ 3.x has it in the
/// client properties, one JSON object per line).
async fn broker_connections(connection_name: &str) -> Vec<String> {
    let wanted = format!("[\"connection_name\",\"longstr\",\"{connection_name}\"]");
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "-q",
                "--formatter",
                "json",
                "name",
                "client_properties",
            ])
            .output()
            .expect("rabbitmqctl must be installed");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| line.contains(&wanted))
            .filter_map(|line| {
                let rest = &line[line.find("\"name\":\"")? + 8..];
                Some(rest[..rest.find('"')?].to_string())
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Receive (and requeue) until `b` is on a link newer than `epoch`.
async fn until_rebuilt(b: &RabbitMqBackend, epoch: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.epoch() <= epoch || b.state() != foxtive_core::backend::BackendState::Connected {
        assert!(Instant::now() < deadline, "the link was not rebuilt");
        let got = b.receive(10, Duration::from_millis(100)).await.unwrap();
        b.settle(settle_all(&got, Settlement::Requeue))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn backends_of_one_broker_share_one_connection_and_keep_their_channels() {
    let name = unique("shared");
    let (qa, qb) = (unique("share-a"), unique("share-b"));
    let mut judge = Judge::new().await;
    judge.track(&qa);
    judge.track(&qb);
    let named = |c: &mut RabbitMqConfig| c.connection_name = Some(name.clone());
    let a = backend(&qa, named);
    let b = backend(&qb, named);
    a.connect().await.unwrap();
    b.connect().await.unwrap();
    let first = broker_connections(&name).await;
    assert_eq!(first.len(), 1, "{first:?}");

    // The broker cancels b's consumer (its queue deleted): b subscribes
    // again on the same connection; a never notices.
    let (ea, eb) = (a.epoch(), b.epoch());
    judge
        .ch
        .queue_delete(qb.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    until_rebuilt(&b, eb).await;
    b.publish(vec![Outgoing::new(Bytes::from_static(b"b"))])
        .await
        .unwrap();
    let got = receive_n(&b, 1, Duration::from_secs(10)).await;
    assert_eq!(&got[0].body[..], b"b");
    b.settle(settle_all(&got, Settlement::Ack)).await.unwrap();
    assert_eq!(a.epoch(), ea);
    assert_eq!(broker_connections(&name).await, first);

    // The shared connection lost: both rebuild, on one new connection.
    let eb = b.epoch();
    a.break_connection().await.unwrap();
    until_rebuilt(&a, ea).await;
    until_rebuilt(&b, eb).await;
    let second = broker_connections(&name).await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first);

    // Closing one backend closes its channels only; the last one closes
    // the connection.
    b.close().await.unwrap();
    let ea = a.epoch();
    a.publish(vec![Outgoing::new(Bytes::from_static(b"a"))])
        .await
        .unwrap();
    let got = receive_n(&a, 1, Duration::from_secs(10)).await;
    assert_eq!(&got[0].body[..], b"a");
    a.settle(settle_all(&got, Settlement::Ack)).await.unwrap();
    assert_eq!(a.epoch(), ea);
    assert_eq!(broker_connections(&name).await, second);
    a.close().await.unwrap();
    assert!(broker_connections(&name).await.is_empty());
    judge.cleanup().await;
}
