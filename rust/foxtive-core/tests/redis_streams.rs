//! The Redis Streams backend against the real server (127.0.0.1:6379, or
//! `FOXTIVE_REDIS_URL`). Every test uses its own keys and deletes them.
//! The judge is a plain redis-rs connection, independent of the backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foxtive_core::backend::redis_streams::{RedisStreamBackend, RedisStreamConfig};
use foxtive_core::backend::{Backend, BackendState};
use foxtive_core::message::{Failure, HeaderValue, Outgoing, Settlement};
use foxtive_core::{Delivery, Error};
use redis::Commands;

fn url() -> String {
    std::env::var("FOXTIVE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_string())
}

/// Unique keys for one test, deleted when dropped.
struct Keys {
    stream: String,
    judge: redis::Connection,
}

impl Keys {
    fn new(test: &str) -> Self {
        let tag: u64 = rand::random();
        let client = redis::Client::open(url()).unwrap();
        Keys {
            stream: format!("foxtive-test:{test}:{tag:016x}"),
            judge: client.get_connection().unwrap(),
        }
    }

    fn config(&self) -> RedisStreamConfig {
        let mut c = RedisStreamConfig::new(&self.stream, "g");
        c.block = Duration::from_millis(200);
        c
    }

    fn backend(&self, cfg: RedisStreamConfig) -> RedisStreamBackend {
        RedisStreamBackend::new(&url(), cfg).unwrap()
    }

    fn xadd(&mut self, fields: &[(&str, &[u8])]) -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query(&mut self.judge).unwrap()
    }

    fn xlen(&mut self) -> usize {
        self.judge.xlen(&self.stream).unwrap()
    }

    fn pending(&mut self) -> usize {
        let v: redis::Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg("g")
            .query(&mut self.judge)
            .unwrap();
        match v {
            redis::Value::Array(items) => match &items[0] {
                redis::Value::Int(n) => *n as usize,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Delivery count of one entry in the pending list.
    fn deliveries(&mut self, id: &str) -> Option<(String, u64, u64)> {
        let v: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg("g")
            .arg(id)
            .arg(id)
            .arg(1)
            .query(&mut self.judge)
            .unwrap();
        v.into_iter().next().map(|(_, c, idle, n)| (c, idle, n))
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let s = &self.stream;
        let _: redis::RedisResult<()> =
            self.judge
                .del(&[s.clone(), format!("{s}:dlq"), format!("{s}:delayed")]);
    }
}

async fn receive_n(b: &RedisStreamBackend, n: usize, within: Duration) -> Vec<Delivery> {
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

fn items(ds: Vec<Delivery>, s: Settlement) -> Vec<(Arc<Delivery>, Settlement)> {
    ds.into_iter().map(|d| (Arc::new(d), s.clone())).collect()
}

fn failure(poison: bool) -> Failure {
    Failure {
        error_type: "ValueError".into(),
        error_message: "bad input".into(),
        worker_id: Arc::from("w1"),
        poison_pill: poison,
    }
}

#[tokio::test]
async fn every_entry_of_every_batch_is_delivered_and_acks_delete() {
    let mut k = Keys::new("batches");
    for i in 0..250 {
        k.xadd(&[("body", format!("m{i}").as_bytes())]);
    }
    let b = k.backend(k.config());
    b.connect().await.unwrap();
    let first = b.receive(500, Duration::from_millis(200)).await.unwrap();
    assert_eq!(first.len(), 100, "COUNT is batch_size");
    let mut all = first;
    all.extend(receive_n(&b, 150, Duration::from_secs(5)).await);
    assert_eq!(all.len(), 250);
    let bodies: std::collections::HashSet<_> = all.iter().map(|d| d.body.clone()).collect();
    assert_eq!(bodies.len(), 250);
    assert!(all
        .iter()
        .all(|d| d.attempt == 1 && !d.redelivered && d.id.contains('-')));
    assert_eq!(k.pending(), 250);
    b.settle(items(all, Settlement::Ack)).await.unwrap();
    assert_eq!(k.pending(), 0);
    assert_eq!(k.xlen(), 0, "delete_on_ack removes acked entries");
    b.close().await.unwrap();
    assert_eq!(b.state(), BackendState::Closed);
}

#[tokio::test]
async fn without_delete_on_ack_entries_stay() {
    let mut k = Keys::new("keep");
    k.xadd(&[("data", b"third-party")]);
    let mut cfg = k.config();
    cfg.delete_on_ack = false;
    let b = k.backend(cfg);
    b.connect().await.unwrap();
    let got = receive_n(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(&got[0].body[..], b"third-party");
    b.settle(items(got, Settlement::Ack)).await.unwrap();
    assert_eq!((k.pending(), k.xlen()), (0, 1));
    b.close().await.unwrap();
}

#[tokio::test]
async fn publish_keeps_binary_bodies_headers_and_ids() {
    let k = Keys::new("publish");
    let b = k.backend(k.config());
    let body: Vec<u8> = (0..=255u8).collect();
    let mut out = Outgoing::new(Bytes::from(body.clone()));
    out.message_id = Some("order-7".into());
    out.headers = vec![
        ("n".into(), HeaderValue::Int(3)),
        (
            "raw".into(),
            HeaderValue::Bytes(Bytes::from_static(b"\xff\x00")),
        ),
        ("none".into(), HeaderValue::Null),
    ];
    out.correlation_id = Some("c-1".into());
    let ids = b
        .publish(vec![out, Outgoing::new(Bytes::from_static(b"plain"))])
        .await
        .unwrap();
    assert_eq!(ids[0], "order-7");
    b.connect().await.unwrap();
    let got = receive_n(&b, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, "order-7");
    assert_eq!(&got[0].body[..], &body[..]);
    assert_eq!(
        got[0].headers[1].1,
        HeaderValue::Bytes(Bytes::from_static(b"\xff\x00"))
    );
    assert_eq!(got[0].headers[2].1, HeaderValue::Null);
    assert_eq!(got[0].correlation_id.as_deref(), Some("c-1"));
    assert_eq!(
        got[1].id, ids[1],
        "without a message id the entry id is the id"
    );
    b.settle(items(got, Settlement::Ack)).await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn own_pending_entries_are_read_again_first_on_start() {
    let mut k = Keys::new("pel");
    for i in 0..3 {
        k.xadd(&[("body", format!("old{i}").as_bytes())]);
    }
    let mut cfg = k.config();
    cfg.consumer_name = "fixed".into();
    {
        let crashed = k.backend(cfg.clone());
        crashed.connect().await.unwrap();
        assert_eq!(
            receive_n(&crashed, 3, Duration::from_secs(5)).await.len(),
            3
        );
        // Dropped without close: as if the process died.
    }
    k.xadd(&[("body", b"new")]);
    let b = k.backend(cfg);
    b.connect().await.unwrap();
    let first = b.receive(10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(first.len(), 3, "own pending entries come first");
    assert!(first.iter().all(|d| d.attempt == 2 && d.redelivered));
    let second = receive_n(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(&second[0].body[..], b"new");
    b.settle(items(first, Settlement::Ack)).await.unwrap();
    b.settle(items(second, Settlement::Ack)).await.unwrap();
    assert_eq!(k.pending(), 0);
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_dead_consumers_entries_are_reclaimed_with_their_delivery_count() {
    let mut k = Keys::new("reclaim");
    for i in 0..5 {
        k.xadd(&[("body", format!("e{i}").as_bytes())]);
    }
    let mut cfg = k.config();
    cfg.claim_idle = Duration::from_millis(300);
    cfg.claim_interval = Duration::from_millis(100);
    {
        let dead = k.backend(RedisStreamConfig {
            consumer_name: "dead".into(),
            ..cfg.clone()
        });
        dead.connect().await.unwrap();
        assert_eq!(receive_n(&dead, 5, Duration::from_secs(5)).await.len(), 5);
    }
    let b = k.backend(cfg);
    b.connect().await.unwrap();
    let started = Instant::now();
    let got = receive_n(&b, 5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "not before claim_idle"
    );
    assert!(
        got.iter().all(|d| d.attempt == 2),
        "delivery count feeds attempt"
    );
    b.settle(items(got, Settlement::Ack)).await.unwrap();
    assert_eq!(k.pending(), 0);
    b.close().await.unwrap();
}

#[tokio::test]
async fn held_entries_get_heartbeats_and_are_not_reclaimed() {
    let mut k = Keys::new("heartbeat");
    let id = k.xadd(&[("body", b"slow")]);
    let mut cfg = k.config();
    cfg.claim_idle = Duration::from_millis(300);
    cfg.claim_interval = Duration::from_millis(100);
    let holder = k.backend(RedisStreamConfig {
        consumer_name: "holder".into(),
        ..cfg.clone()
    });
    holder.connect().await.unwrap();
    let held = receive_n(&holder, 1, Duration::from_secs(5)).await;
    let peer = k.backend(RedisStreamConfig {
        consumer_name: "peer".into(),
        ..cfg
    });
    peer.connect().await.unwrap();
    // Well past claim_idle: the holder's heartbeat keeps the entry its own.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert!(peer
            .receive(10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty());
    }
    let (owner, idle, count) = k.deliveries(&id).unwrap();
    assert_eq!(owner, "holder");
    assert!(idle < 300, "idle {idle} ms");
    assert_eq!(count, 1, "heartbeats do not count as deliveries");
    holder.settle(items(held, Settlement::Ack)).await.unwrap();
    holder.close().await.unwrap();
    peer.close().await.unwrap();
}

#[tokio::test]
async fn a_deleted_stream_is_recreated_and_reading_goes_on() {
    let mut k = Keys::new("nogroup");
    k.xadd(&[("body", b"before")]);
    let b = k.backend(k.config());
    b.connect().await.unwrap();
    let got = receive_n(&b, 1, Duration::from_secs(5)).await;
    b.settle(items(got, Settlement::Ack)).await.unwrap();
    let _: () = k.judge.del(&k.stream).unwrap();
    k.xadd(&[("body", b"after")]);
    let got = receive_n(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], b"after");
    b.settle(items(got, Settlement::Ack)).await.unwrap();
    assert_eq!(k.pending(), 0);
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_long_retry_never_delays_a_short_one() {
    let mut k = Keys::new("delays");
    k.xadd(&[("body", b"long")]);
    k.xadd(&[("body", b"short")]);
    let b = k.backend(k.config());
    b.connect().await.unwrap();
    let got = receive_n(&b, 2, Duration::from_secs(5)).await;
    let (long, short) = (got[0].clone(), got[1].clone());
    let retry = |secs: f64| Settlement::Retry {
        delay: Duration::from_secs_f64(secs),
        count_attempt: true,
    };
    let t0 = Instant::now();
    b.settle(vec![
        (Arc::new(long), retry(20.0)),
        (Arc::new(short), retry(0.5)),
    ])
    .await
    .unwrap();
    assert_eq!(k.pending(), 0, "originals acked once the copies are stored");
    let zcard: usize = k.judge.zcard(format!("{}:delayed", k.stream)).unwrap();
    assert_eq!(zcard, 2);
    let again = receive_n(&b, 1, Duration::from_secs(5)).await;
    let waited = t0.elapsed();
    assert_eq!(&again[0].body[..], b"short");
    assert_eq!(again[0].attempt, 2);
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The long one is still waiting in the set, not in the stream.
    let zcard: usize = k.judge.zcard(format!("{}:delayed", k.stream)).unwrap();
    assert_eq!(zcard, 1);
    assert!(b
        .receive(10, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    b.settle(items(again, Settlement::Ack)).await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn dead_letters_carry_the_reason() {
    let mut k = Keys::new("dlq");
    k.xadd(&[("body", b"\xffbad"), ("id", b"job-1"), ("tenant", b"acme")]);
    let b = k.backend(k.config());
    b.connect().await.unwrap();
    let got = receive_n(&b, 1, Duration::from_secs(5)).await;
    b.settle(items(got, Settlement::DeadLetter(failure(false))))
        .await
        .unwrap();
    assert_eq!((k.pending(), k.xlen()), (0, 0));
    let dl = b.dead_letters(10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].original_id, "job-1");
    assert_eq!(&dl[0].body[..], b"\xffbad");
    assert_eq!(dl[0].error_type, "ValueError");
    assert_eq!(dl[0].error_message, "bad input");
    assert_eq!(dl[0].source_queue, k.stream);
    assert_eq!(dl[0].worker_id, "w1");
    assert!(!dl[0].poison_pill);
    assert_eq!(
        dl[0].headers,
        vec![("tenant".to_string(), HeaderValue::Str("acme".into()))]
    );
    let raw: redis::streams::StreamRangeReply =
        k.judge.xrange_all(format!("{}:dlq", k.stream)).unwrap();
    let e = &raw.ids[0];
    assert_eq!(
        e.get::<String>("error_message").as_deref(),
        Some("bad input")
    );
    assert_eq!(e.get::<String>("poison_pill").as_deref(), Some("false"));
    b.close().await.unwrap();
}

#[tokio::test]
async fn an_entry_delivered_too_often_is_a_poison_pill() {
    let mut k = Keys::new("poison");
    let bad = k.xadd(&[("body", b"kills workers")]);
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&k.stream)
        .arg("g")
        .arg("0")
        .query(&mut k.judge)
        .unwrap();
    // Three workers took it and died.
    for from in [">", "0", "0"] {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("crasher")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&k.stream)
            .arg(from)
            .query(&mut k.judge)
            .unwrap();
    }
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&k.stream)
        .arg("g")
        .arg("crasher")
        .arg(0)
        .arg(&bad)
        .arg("IDLE")
        .arg(100_000)
        .arg("JUSTID")
        .query(&mut k.judge)
        .unwrap();
    k.xadd(&[("body", b"fine")]);
    let mut cfg = k.config();
    cfg.max_deliveries = 3;
    cfg.claim_idle = Duration::from_millis(200);
    let b = k.backend(cfg);
    b.connect().await.unwrap();
    let got = receive_n(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(
        &got[0].body[..],
        b"fine",
        "the poison pill never reaches a handler"
    );
    b.settle(items(got, Settlement::Ack)).await.unwrap();
    let dl = b.dead_letters(10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert!(dl[0].poison_pill);
    assert_eq!(dl[0].error_type, "PoisonPill");
    assert!(
        dl[0].error_message.contains("delivered 4 times"),
        "{}",
        dl[0].error_message
    );
    assert_eq!(dl[0].original_id, bad);
    assert_eq!(k.pending(), 0);
    b.close().await.unwrap();
}

#[tokio::test]
async fn requeue_redelivers_while_running_and_hands_back_at_shutdown() {
    let mut k = Keys::new("requeue");
    let id = k.xadd(&[("body", b"x")]);
    let b = k.backend(k.config());
    b.connect().await.unwrap();
    let got = receive_n(&b, 1, Duration::from_secs(5)).await;
    b.settle(items(got, Settlement::Requeue)).await.unwrap();
    let again = receive_n(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1);
    // Its handler had it: redelivered, so the next attempt (issue 11 item 5).
    assert_eq!(again[0].attempt, 2, "a redelivery is the next attempt");
    assert!(again[0].redelivered);
    b.stop_receiving().await.unwrap();
    assert!(matches!(
        b.receive(1, Duration::ZERO).await,
        Err(Error::Shutdown)
    ));
    b.settle(items(again, Settlement::Requeue)).await.unwrap();
    b.close().await.unwrap();
    let (owner, idle, count) = k.deliveries(&id).unwrap();
    assert_eq!(k.pending(), 1, "unfinished entries stay pending");
    assert!(idle > 3_600_000, "handed back: claimable by peers at once");
    assert_eq!(count, 1, "the engine had it: its delivery stays counted");
    assert!(!owner.is_empty());
    // A peer takes it over at its first look, as the next attempt.
    let mut cfg = k.config();
    cfg.consumer_name = "peer".into();
    let peer = k.backend(cfg);
    peer.connect().await.unwrap();
    let taken = receive_n(&peer, 1, Duration::from_secs(5)).await;
    assert_eq!(taken[0].attempt, 2);
    assert!(taken[0].redelivered);
    peer.settle(items(taken, Settlement::Ack)).await.unwrap();
    assert_eq!(k.pending(), 0);
    peer.close().await.unwrap();
}

/// True once `is_drained` has said so for 400 ms straight (longer than a
/// probe stays trusted, so a stale answer cannot pass) within `within`.
async fn drained_within(b: &RedisStreamBackend, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut since: Option<Instant> = None;
    loop {
        if b.is_drained() == Some(true) {
            let t = *since.get_or_insert_with(Instant::now);
            if t.elapsed() >= Duration::from_millis(400) {
                return true;
            }
        } else {
            since = None;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn is_drained_sees_ready_pending_and_delayed_work() {
    let mut k = Keys::new("drained");
    let b = k.backend(k.config());
    b.connect().await.unwrap();
    assert!(
        drained_within(&b, Duration::from_secs(2)).await,
        "empty stream is drained"
    );
    k.xadd(&[("body", b"1")]);
    assert!(
        !drained_within(&b, Duration::from_secs(2)).await,
        "a ready entry is work"
    );
    let got = receive_n(&b, 1, Duration::from_secs(5)).await;
    assert!(
        !drained_within(&b, Duration::from_secs(2)).await,
        "a held entry is work"
    );
    b.settle(items(
        got,
        Settlement::Retry {
            delay: Duration::from_millis(1500),
            count_attempt: true,
        },
    ))
    .await
    .unwrap();
    assert!(
        !drained_within(&b, Duration::from_secs(2)).await,
        "a delayed retry is work"
    );
    let got = receive_n(&b, 1, Duration::from_secs(5)).await;
    b.settle(items(got, Settlement::Ack)).await.unwrap();
    assert!(drained_within(&b, Duration::from_secs(2)).await);
    b.close().await.unwrap();
}

#[tokio::test]
async fn connection_errors_are_redacted_and_counted() {
    let mut cfg = RedisStreamConfig::new("foxtive-test:unreachable", "g");
    cfg.reconnect = foxtive_core::policy::ReconnectStrategy::fixed(Duration::from_millis(50));
    let b = RedisStreamBackend::new("redis://user:s3cret-pw@127.0.0.1:1/0", cfg).unwrap();
    let err = b.connect().await.unwrap_err();
    let text = err.to_string();
    assert!(err.is_connection(), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(text.contains("***"), "{text}");
    assert_eq!(b.state(), BackendState::Reconnecting);
    assert_eq!(b.consecutive_failures(), 1);
    assert!(format!("{b:?}").contains("user:***@"));
    // receive waits and returns nothing rather than failing.
    assert!(b
        .receive(1, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    assert!(b.reconnect_attempts() >= 1);
}
