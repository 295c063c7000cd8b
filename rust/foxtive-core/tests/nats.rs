//! The NATS JetStream backend against the real server (127.0.0.1:4222, or
//! `FOXTIVE_NATS_URL`). Every test uses its own subject and streams and
//! deletes them. The judge is a plain async-nats connection of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use foxtive_core::backend::nats::{stream_name_for, Auth, NatsBackend, NatsConfig};
use foxtive_core::backend::{Backend, BackendState};
use foxtive_core::dlq::DeadLetterStore;
use foxtive_core::message::{Failure, HeaderValue, Outgoing, Settlement};
use foxtive_core::{Delivery, Error};

fn url() -> String {
    std::env::var("FOXTIVE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}

/// One test's subject and streams, deleted at the end.
struct Case {
    subject: String,
    stream: String,
    js: jetstream::Context,
}

impl Case {
    async fn new(test: &str) -> Self {
        let tag: u32 = rand::random();
        let subject = format!("foxtive-rs-{test}-{tag:08x}");
        let client = async_nats::connect(url())
            .await
            .expect("NATS at 127.0.0.1:4222");
        Case {
            stream: stream_name_for(&subject),
            subject,
            js: jetstream::new(client),
        }
    }

    fn config(&self) -> NatsConfig {
        let mut c = NatsConfig::for_queue(&self.subject);
        c.ack_wait = Duration::from_secs(5);
        c
    }

    fn backend(&self) -> NatsBackend {
        NatsBackend::new(&url(), self.config(), Auth::default()).unwrap()
    }

    /// Messages stored in `stream` (WorkQueue: not acked yet).
    async fn stored(&self, stream: &str) -> u64 {
        match self.js.get_stream(stream).await {
            Ok(mut s) => s.info().await.unwrap().state.messages,
            Err(_) => 0,
        }
    }

    async fn consumer(&self) -> jetstream::consumer::Info {
        let s = self.js.get_stream(&self.stream).await.unwrap();
        s.consumer_info("foxtive").await.unwrap()
    }

    async fn cleanup(self) {
        for name in [
            self.stream.clone(),
            format!("{}_DLQ", self.stream),
            format!("{}_DELAYED", self.stream),
        ] {
            let _ = self.js.delete_stream(&name).await;
        }
    }
}

async fn receive_n(b: &NatsBackend, n: usize, within: Duration) -> Vec<Delivery> {
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

fn settle_one(d: Delivery, s: Settlement) -> Vec<(Arc<Delivery>, Settlement)> {
    vec![(Arc::new(d), s)]
}

#[tokio::test]
async fn round_trip_acks_leave_nothing_pending() {
    let case = Case::new("rt").await;
    let b = case.backend();
    b.connect().await.unwrap();
    let outs: Vec<Outgoing> = (0..500)
        .map(|i| Outgoing::new(Bytes::from(format!("m-{i}"))))
        .collect();
    let ids = b.publish(outs).await.unwrap();
    assert_eq!(ids.len(), 500);
    let got = receive_n(&b, 500, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 500);
    assert!(got.iter().all(|d| d.attempt == 1 && !d.redelivered));
    assert_eq!(got[0].id, ids[0]);
    let batch = got
        .into_iter()
        .map(|d| (Arc::new(d), Settlement::Ack))
        .collect();
    b.settle(batch).await.unwrap();
    // The double ack of the batch's last message: every ack is applied on return.
    let info = case.consumer().await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
    assert_eq!(case.stored(&case.stream).await, 0);
    assert_eq!(b.held(), 0);
    b.close().await.unwrap();
    assert_eq!(b.state(), BackendState::Closed);
    case.cleanup().await;
}

#[tokio::test]
async fn a_long_retry_never_holds_back_a_short_one_and_attempts_count_up() {
    let case = Case::new("retry").await;
    let b = case.backend();
    b.connect().await.unwrap();
    b.publish(vec![
        Outgoing::new(Bytes::from_static(b"long")),
        Outgoing::new(Bytes::from_static(b"short")),
    ])
    .await
    .unwrap();
    let got = receive_n(&b, 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    let t0 = Instant::now();
    for d in got {
        let delay = if d.body == "long" { 20.0 } else { 0.3 };
        let retry = Settlement::Retry {
            delay: Duration::from_secs_f64(delay),
            count_attempt: true,
        };
        b.settle(settle_one(d, retry)).await.unwrap();
    }
    let again = receive_n(&b, 1, Duration::from_secs(10)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].body, "short");
    assert_eq!(again[0].attempt, 2);
    assert!(again[0].redelivered);
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    b.settle(settle_one(
        again.into_iter().next().unwrap(),
        Settlement::Ack,
    ))
    .await
    .unwrap();
    // The long one still waits in the stream, NAKed.
    assert_eq!(case.stored(&case.stream).await, 1);
    b.close().await.unwrap();
    case.cleanup().await;
}

#[tokio::test]
async fn dead_letters_keep_headers_then_the_original_is_terminated() {
    let case = Case::new("dlq").await;
    let b = case.backend();
    b.connect().await.unwrap();
    let mut out = Outgoing::new(Bytes::from_static(b"doomed"));
    out.message_id = Some("doomed-1".into());
    out.headers = vec![
        ("tenant".into(), HeaderValue::Str("acme".into())),
        ("n".into(), HeaderValue::Int(7)),
    ];
    b.publish(vec![out]).await.unwrap();
    let d = receive_n(&b, 1, Duration::from_secs(10)).await.remove(0);
    assert_eq!(d.id, "doomed-1");
    let failure = Failure {
        error_type: "ValueError".into(),
        error_message: "boom\nsecond line".into(),
        worker_id: Arc::from("w-1"),
        poison_pill: false,
    };
    b.settle(settle_one(d, Settlement::DeadLetter(failure)))
        .await
        .unwrap();
    let dlq_stream = format!("{}_DLQ", case.stream);
    assert_eq!(case.stored(&dlq_stream).await, 1);
    // TERM removes the original from the WorkQueue stream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while case.stored(&case.stream).await != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(case.stored(&case.stream).await, 0);
    // The raw dead letter, as any NATS client sees it.
    let s = case.js.get_stream(&dlq_stream).await.unwrap();
    let raw = s.get_raw_message(1).await.unwrap();
    let h = |k: &str| raw.headers.get(k).map(|v| v.as_str().to_string());
    assert_eq!(h("tenant").as_deref(), Some("acme"));
    assert_eq!(h("x-foxtive-error-type").as_deref(), Some("ValueError"));
    assert_eq!(h("x-foxtive-error").as_deref(), Some("boom second line"));
    assert_eq!(h("x-foxtive-attempts").as_deref(), Some("1"));
    assert_eq!(
        h("x-foxtive-source-queue").as_deref(),
        Some(case.subject.as_str())
    );
    assert_eq!(h("x-foxtive-message-id").as_deref(), Some("doomed-1"));
    // The store: list, replay in place, and the queue has it again.
    let store = b.dead_letter_store();
    let listed = store.list(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    let rec = &listed[0].record;
    assert_eq!(rec.original_id, "doomed-1");
    assert_eq!(rec.error_type, "ValueError");
    assert_eq!(rec.body, Bytes::from_static(b"doomed"));
    assert!(rec
        .headers
        .contains(&("n".to_string(), HeaderValue::Int(7))));
    assert_eq!(store.replay_in_place(None).await.unwrap(), 1);
    assert_eq!(store.count().await.unwrap(), 0);
    let back = receive_n(&b, 1, Duration::from_secs(10)).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].id, "doomed-1");
    assert_eq!(back[0].attempt, 1);
    b.settle(settle_one(
        back.into_iter().next().unwrap(),
        Settlement::Ack,
    ))
    .await
    .unwrap();
    b.close().await.unwrap();
    case.cleanup().await;
}

#[tokio::test]
async fn publish_dedups_on_the_message_id_and_delays_in_the_delay_stream() {
    let case = Case::new("pub").await;
    let b = case.backend();
    b.connect().await.unwrap();
    let mut first = Outgoing::new(Bytes::from_static(b"once"));
    first.message_id = Some("same-id".into());
    b.publish(vec![first.clone(), first]).await.unwrap();
    assert_eq!(case.stored(&case.stream).await, 1);
    let mut later = Outgoing::new(Bytes::from_static(b"later"));
    later.delay = Some(Duration::from_millis(1500));
    let t0 = Instant::now();
    b.publish(vec![later]).await.unwrap();
    assert_eq!(case.stored(&format!("{}_DELAYED", case.stream)).await, 1);
    let got = receive_n(&b, 2, Duration::from_secs(15)).await;
    let bodies: Vec<&[u8]> = got.iter().map(|d| &d.body[..]).collect();
    assert_eq!(bodies, [&b"once"[..], &b"later"[..]]);
    assert!(
        t0.elapsed() >= Duration::from_millis(1450),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(got[1].attempt, 1);
    let batch = got
        .into_iter()
        .map(|d| (Arc::new(d), Settlement::Ack))
        .collect();
    b.settle(batch).await.unwrap();
    b.close().await.unwrap();
    case.cleanup().await;
}

#[tokio::test]
async fn an_existing_consumer_with_other_settings_is_an_error_naming_them() {
    let case = Case::new("cfg").await;
    case.backend().connect().await.unwrap();
    let mut other = case.config();
    other.ack_wait = Duration::from_secs(9);
    other.max_deliver = 3;
    let b = NatsBackend::new(&url(), other, Auth::default()).unwrap();
    let Err(Error::Config(m)) = b.connect().await else {
        panic!("connected with other consumer settings");
    };
    assert!(m.contains("ack_wait 5s (want 9s)"), "{m}");
    assert!(m.contains("max_deliver 11 (want 4)"), "{m}");
    let mut nodeclare = NatsConfig::for_queue("foxtive-rs-absent-x");
    nodeclare.declare = false;
    let b = NatsBackend::new(&url(), nodeclare, Auth::default()).unwrap();
    let Err(Error::Config(m)) = b.connect().await else {
        panic!("declare=false created a stream");
    };
    assert!(m.contains("does not exist"), "{m}");
    case.cleanup().await;
}

#[tokio::test]
async fn handed_back_work_comes_back_redelivered_and_poison_pills_are_dead_lettered() {
    let case = Case::new("poison").await;
    let mut cfg = case.config();
    cfg.max_deliver = 2;
    let b = NatsBackend::new(&url(), cfg.clone(), Auth::default()).unwrap();
    b.connect().await.unwrap();
    b.publish(vec![Outgoing::new(Bytes::from_static(b"crashy"))])
        .await
        .unwrap();
    for attempt in 1..=2 {
        let d = receive_n(&b, 1, Duration::from_secs(10)).await.remove(0);
        assert_eq!(d.attempt, attempt);
        // A worker that dies: close hands it back unsettled.
        b.close().await.unwrap();
        b.connect().await.unwrap();
    }
    // Third delivery > max_deliver: dead-lettered, not handed out.
    let none = b.receive(1, Duration::from_millis(1500)).await.unwrap();
    assert!(none.is_empty());
    let dead = b.dead_letter_store().list(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].record.poison_pill);
    assert_eq!(dead[0].record.attempts, 3);
    b.close().await.unwrap();
    case.cleanup().await;
}

#[tokio::test]
async fn credentials_never_show() {
    let b = NatsBackend::new(
        "nats://ann:s3cret@127.0.0.1:4222",
        NatsConfig::for_queue("foxtive-rs-creds"),
        Auth::default(),
    )
    .unwrap();
    assert!(!format!("{b:?}").contains("s3cret"));
    assert!(!b.url().contains("s3cret"));
    let bad = NatsBackend::new(
        "nats://s3cret-token@127.0.0.1:1",
        NatsConfig::for_queue("foxtive-rs-creds"),
        Auth::default(),
    )
    .unwrap();
    let e = bad.connect().await.unwrap_err().to_string();
    assert!(!e.contains("s3cret"), "{e}");
    assert!(e.contains("***"), "{e}");
}
