//! The SQLite backend against real database files (one per test, in the
//! temp directory, deleted afterwards). The judge is a plain rusqlite
//! connection of its own, not the backend.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foxtive_core::backend::sqlite::{SqliteBackend, SqliteConfig};
use foxtive_core::backend::Backend;
use foxtive_core::dlq::DeadLetterStore;
use foxtive_core::message::{Failure, HeaderValue, Outgoing, Settlement};
use foxtive_core::Delivery;

/// A database file for one test, removed (with its WAL) when dropped.
struct Db {
    path: PathBuf,
}

impl Db {
    fn new(test: &str) -> Self {
        let tag: u64 = rand::random();
        Db {
            path: std::env::temp_dir().join(format!("foxtive-test-{test}-{tag:016x}.db")),
        }
    }

    fn config(&self, queue: &str) -> SqliteConfig {
        let mut c = SqliteConfig::new(&self.path, queue);
        c.lease_timeout = Duration::from_secs(30);
        c
    }

    fn backend(&self, queue: &str) -> SqliteBackend {
        SqliteBackend::new(self.config(queue)).unwrap()
    }

    fn judge(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.path).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    fn jobs(&self, queue: &str) -> i64 {
        self.judge()
            .query_row(
                "SELECT count(*) FROM foxtive_jobs WHERE queue = ?1",
                [queue],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn dead(&self, queue: &str) -> Vec<(String, i64, String)> {
        let c = self.judge();
        let mut s = c
            .prepare("SELECT original_id, attempts, error_type FROM foxtive_dead_letters WHERE queue = ?1 ORDER BY id")
            .unwrap();
        s.query_map([queue], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

fn msg(body: &str) -> Outgoing {
    Outgoing::new(Bytes::from(body.to_string()))
}

fn settle_all(ds: &[Delivery], s: Settlement) -> Vec<(Arc<Delivery>, Settlement)> {
    ds.iter()
        .map(|d| (Arc::new(d.clone()), s.clone()))
        .collect()
}

fn failure() -> Failure {
    Failure {
        error_type: "ValueError".into(),
        error_message: "boom".into(),
        worker_id: Arc::from("w-1"),
        poison_pill: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_round_trip_keeps_everything_and_acks_in_one_batch() {
    let db = Db::new("round-trip");
    let b = db.backend("q");
    b.connect().await.unwrap();
    let mut first = msg("first");
    first.message_id = Some("m-1".into());
    first.headers = vec![
        ("i".into(), HeaderValue::Int(-7)),
        ("f".into(), HeaderValue::Float(0.1 + 0.2)),
        ("s".into(), HeaderValue::Str("3".into())),
        (
            "raw".into(),
            HeaderValue::Bytes(Bytes::from_static(b"\x00\xff")),
        ),
    ];
    first.correlation_id = Some("c-1".into());
    first.content_type = Some("application/json".into());
    first.priority = Some(5);
    let mut out = vec![first.clone()];
    out.extend((0..99).map(|i| msg(&format!("m{i}"))));
    let ids = b.publish(out).await.unwrap();
    assert_eq!(ids[0], "m-1");
    assert_eq!(ids.len(), 100);
    assert_eq!(db.jobs("q"), 100);
    // Another queue in the same file is not touched.
    db.backend("other").publish(vec![msg("x")]).await.unwrap();

    let got = b.receive(1000, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 100);
    let d = &got[0];
    assert_eq!(
        (d.id.as_str(), &d.body[..], d.attempt, d.redelivered),
        ("m-1", &b"first"[..], 1, false)
    );
    assert_eq!(d.headers, first.headers);
    assert_eq!(d.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(d.content_type.as_deref(), Some("application/json"));
    assert_eq!(d.priority, Some(5));
    assert_eq!(&*d.queue, "q");
    assert_eq!(
        got[1].id, ids[1],
        "generated ids are the ones publish returned"
    );
    assert_eq!(b.held(), 100);
    // Nothing more is due: leased rows are not handed out twice.
    assert!(b.receive(10, Duration::ZERO).await.unwrap().is_empty());
    b.settle(settle_all(&got, Settlement::Ack)).await.unwrap();
    assert_eq!(db.jobs("q"), 0);
    assert_eq!(db.jobs("other"), 1);
    assert_eq!(b.held(), 0);
    assert_eq!(b.is_drained(), Some(true));
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_retries_count_attempts_without_head_of_line_blocking() {
    let db = Db::new("retry");
    let b = db.backend("q");
    b.connect().await.unwrap();
    b.publish(vec![msg("long"), msg("short")]).await.unwrap();
    let got = b.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 2);
    let retry = |secs: f64| Settlement::Retry {
        delay: Duration::from_secs_f64(secs),
        count_attempt: true,
    };
    b.settle(vec![
        (Arc::new(got[0].clone()), retry(3600.0)),
        (Arc::new(got[1].clone()), retry(0.2)),
    ])
    .await
    .unwrap();
    let t0 = Instant::now();
    let again = b.receive(10, Duration::from_secs(5)).await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(again.len(), 1, "the hour-long retry is not due");
    assert_eq!(
        (&again[0].body[..], again[0].attempt, again[0].redelivered),
        (&b"short"[..], 2, true)
    );
    // A retry that does not count (open circuit) comes back as the same attempt.
    b.settle(settle_all(
        &again,
        Settlement::Retry {
            delay: Duration::ZERO,
            count_attempt: false,
        },
    ))
    .await
    .unwrap();
    let same = b.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(same[0].attempt, 2);
    // Handed back (requeue): it may have run, so it is the next attempt.
    b.settle(settle_all(&same, Settlement::Requeue))
        .await
        .unwrap();
    let next = b.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!((next[0].attempt, next[0].redelivered), (3, true));
    assert_eq!(next[0].id, got[1].id, "the message id is kept on retries");
    b.settle(settle_all(&next, Settlement::Ack)).await.unwrap();
    assert_eq!(db.jobs("q"), 1, "the long retry still waits");
    assert_eq!(b.is_drained(), Some(false));
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dead_letters_move_in_one_transaction_and_replay() {
    let db = Db::new("dlq");
    let b = db.backend("q");
    let mut m = msg("doomed");
    m.message_id = Some("d-1".into());
    m.headers = vec![("k".into(), HeaderValue::Bool(true))];
    b.publish(vec![m, msg("fine")]).await.unwrap();
    let got = b.receive(10, Duration::from_secs(1)).await.unwrap();
    b.settle(vec![
        (Arc::new(got[0].clone()), Settlement::DeadLetter(failure())),
        (Arc::new(got[1].clone()), Settlement::Ack),
    ])
    .await
    .unwrap();
    assert_eq!(db.jobs("q"), 0);
    assert_eq!(db.dead("q"), vec![("d-1".into(), 1, "ValueError".into())]);
    let store = b.dead_letter_store();
    assert_eq!(store.count().await.unwrap(), 1);
    let listed = b.dead_letters(10).await.unwrap();
    assert_eq!(listed[0].body, Bytes::from_static(b"doomed"));
    assert_eq!(
        listed[0].headers,
        vec![("k".into(), HeaderValue::Bool(true))]
    );
    assert_eq!(
        (
            listed[0].worker_id.as_str(),
            listed[0].source_queue.as_str()
        ),
        ("w-1", "q")
    );
    assert_eq!(store.replay_in_place(None).await.unwrap(), 1);
    assert!(db.dead("q").is_empty());
    let back = b.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        (back[0].id.as_str(), back[0].attempt, back[0].redelivered),
        ("d-1", 1, false)
    );
    b.settle(settle_all(&back, Settlement::DeadLetter(failure())))
        .await
        .unwrap();
    assert_eq!(store.purge().await.unwrap(), 1);
    assert_eq!(store.count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_expired_lease_comes_back_as_the_next_attempt() {
    let db = Db::new("lease-expiry");
    let mut cfg = db.config("q");
    cfg.lease_timeout = Duration::from_millis(500);
    // Never connected: no renewal task, like a worker that died.
    let dead = SqliteBackend::new(cfg.clone()).unwrap();
    dead.publish(vec![msg("job")]).await.unwrap();
    let first = dead.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first[0].attempt, 1);
    let heir = SqliteBackend::new(cfg).unwrap();
    assert!(heir.receive(10, Duration::ZERO).await.unwrap().is_empty());
    let t0 = Instant::now();
    let again = heir.receive(10, Duration::from_secs(5)).await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!((again[0].attempt, again[0].redelivered), (2, true));
    heir.settle(settle_all(&again, Settlement::Ack))
        .await
        .unwrap();
    assert_eq!(db.jobs("q"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_leases_are_renewed_while_a_handler_runs() {
    let db = Db::new("lease-renew");
    let mut cfg = db.config("q");
    cfg.lease_timeout = Duration::from_millis(600);
    let holder = SqliteBackend::new(cfg.clone()).unwrap();
    holder.connect().await.unwrap();
    holder.publish(vec![msg("slow")]).await.unwrap();
    let got = holder.receive(10, Duration::from_secs(1)).await.unwrap();
    let other = SqliteBackend::new(cfg).unwrap();
    // Three lease timeouts: the other worker never gets the job.
    let stolen = other
        .receive(10, Duration::from_millis(1800))
        .await
        .unwrap();
    assert!(stolen.is_empty(), "a renewed lease was taken over");
    holder
        .settle(settle_all(&got, Settlement::Ack))
        .await
        .unwrap();
    assert_eq!(db.jobs("q"), 0);
    holder.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_close_hands_back_unsettled_jobs_at_once() {
    let db = Db::new("close");
    let b = db.backend("q");
    b.connect().await.unwrap();
    b.publish(vec![msg("a"), msg("b")]).await.unwrap();
    let got = b.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 2);
    b.close().await.unwrap();
    let next = db.backend("q");
    let again = next.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 2, "handed back without waiting for the lease");
    assert!(again.iter().all(|d| d.attempt == 2 && d.redelivered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_publish_wakes_an_idle_receiver_at_once() {
    let db = Db::new("wake");
    let mut cfg = db.config("q");
    cfg.poll_max = Duration::from_secs(30);
    let b = Arc::new(SqliteBackend::new(cfg).unwrap());
    // Let the idle pause grow far past the wake-up we measure.
    assert!(b
        .receive(10, Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty());
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let got = b.receive(10, Duration::from_secs(20)).await.unwrap();
            (Instant::now(), got.len())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    b.publish(vec![msg("now")]).await.unwrap();
    let (at, n) = waiter.await.unwrap();
    assert_eq!(n, 1);
    assert!(
        at.duration_since(sent) < Duration::from_secs(2),
        "{:?}",
        at - sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_consumers_on_one_file_never_share_a_job() {
    let db = Db::new("share");
    let publisher = db.backend("q");
    let n = 3000;
    publisher
        .publish((0..n).map(|i| msg(&format!("{i}"))).collect())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let b = db.backend("q");
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let got = b.receive(64, Duration::from_millis(300)).await.unwrap();
                if got.is_empty() {
                    return seen;
                }
                seen.extend(got.iter().map(|d| d.body.clone()));
                b.settle(settle_all(&got, Settlement::Ack)).await.unwrap();
            }
        }));
    }
    let mut counts: HashMap<Bytes, usize> = HashMap::new();
    for t in tasks {
        for body in t.await.unwrap() {
            *counts.entry(body).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), n, "every job delivered");
    assert!(counts.values().all(|&c| c == 1), "no job delivered twice");
    assert_eq!(db.jobs("q"), 0);
}
