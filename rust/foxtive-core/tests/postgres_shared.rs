//! Queues on one PostgreSQL database share one pair of connections (claims
//! and settlements), a NOTIFY wakes only the queue it names, and terminated
//! shared connections are replaced once for every queue. Against the real
//! server; every test uses its own schema and drops it (`common/postgres.rs`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::*;
use foxtive_core::backend::postgres::PostgresBackend;
use foxtive_core::backend::{Backend, BackendState};
use foxtive_core::message::Settlement;
use foxtive_core::Error;

/// `application_name`s of the server's sessions named `app`.
async fn sessions(db: &Db) -> i64 {
    db.one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        &[&db.app],
    )
    .await
}

/// Polls the server (another process) until `app` has `want` sessions.
async fn sessions_become(db: &Db, want: i64) -> i64 {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let n = sessions(db).await;
        if n == want || Instant::now() > until {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Backends of queues `0..n` in `db`'s schema, on one DSN.
fn queues(db: &Db, n: usize, poll: Duration) -> Vec<Arc<PostgresBackend>> {
    let dsn = format!("{}?application_name={}", url(), db.app);
    (0..n)
        .map(|i| {
            let mut cfg = db.config(LEASE);
            cfg.queue = format!("{}-{i}", db.queue);
            cfg.poll_interval = poll;
            Arc::new(PostgresBackend::new(&dsn, cfg).unwrap())
        })
        .collect()
}

async fn drain_one(b: &PostgresBackend, id: &str) {
    b.publish(vec![with_id("x", id)]).await.unwrap();
    let got = receive_all(b, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{id}");
    assert_eq!(got[0].id, id);
    settle(b, got.into_iter().next().unwrap(), Settlement::Ack).await;
}

#[tokio::test]
async fn queues_on_one_database_share_one_pair_of_connections() {
    let db = Db::new("shared").await;
    let qs = queues(&db, 4, Duration::from_secs(1));
    for (i, b) in qs.iter().enumerate() {
        b.connect().await.unwrap();
        drain_one(b, &format!("a-{i}")).await;
    }
    // Claims and settlements: two sessions for four queues (eight before).
    assert_eq!(sessions(&db).await, 2);
    // One queue closing leaves the others' connections working.
    qs[0].close().await.unwrap();
    assert_eq!(qs[0].state(), BackendState::Closed);
    for (i, b) in qs.iter().enumerate().skip(1) {
        drain_one(b, &format!("b-{i}")).await;
        assert_eq!(b.state(), BackendState::Connected);
        assert_eq!(b.reconnect_attempts(), 0);
    }
    assert_eq!(sessions(&db).await, 2);
    // A closed queue used again (a publish) joins the connections again.
    qs[0].publish(vec![with_id("x", "c-0")]).await.unwrap();
    assert_eq!(sessions(&db).await, 2);
    qs[0].connect().await.unwrap();
    let got = receive_all(&qs[0], 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    settle(&qs[0], got.into_iter().next().unwrap(), Settlement::Ack).await;
    // The last one to close ends them.
    for b in &qs {
        b.close().await.unwrap();
    }
    assert_eq!(sessions_become(&db, 0).await, 0);
    assert_eq!(db.count("jobs").await, 0);
}

#[tokio::test]
async fn a_notify_wakes_the_queue_it_names_on_a_shared_connection() {
    let db = Db::new("route").await;
    // A slow safety poll: only the NOTIFY can wake a receiver in time.
    let qs = queues(&db, 3, Duration::from_secs(30));
    for b in &qs {
        b.connect().await.unwrap();
    }
    // The claims connection (settlements connect at the first settlement).
    assert_eq!(sessions(&db).await, 1);
    let waiters: Vec<_> = qs
        .iter()
        .map(|b| {
            let b = b.clone();
            tokio::spawn(async move {
                let got = b.receive(10, Duration::from_secs(20)).await;
                (got, Instant::now())
            })
        })
        .collect();
    // Each receiver sleeps once its probe found the queue empty.
    let until = Instant::now() + Duration::from_secs(5);
    while qs.iter().any(|b| b.is_drained() != Some(true)) {
        assert!(Instant::now() < until, "the receivers never looked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let insert = format!(
        "INSERT INTO \"{}\".jobs (queue, message_id, body) VALUES ($1, $2, $3)",
        db.schema
    );
    let third = format!("{}-2", db.queue);
    let sent = Instant::now();
    db.judge
        .execute(&insert, &[&third, &"third", &b"x".as_slice()])
        .await
        .unwrap();
    let mut waiters = waiters.into_iter();
    let (first, second) = (waiters.next().unwrap(), waiters.next().unwrap());
    let (got, at) = waiters.next().unwrap().await.unwrap();
    let got = got.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, "third");
    let latency = at - sent;
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    assert!(
        !first.is_finished() && !second.is_finished(),
        "other queues woke with a job"
    );
    settle(&qs[2], got.into_iter().next().unwrap(), Settlement::Ack).await;
    for b in &qs {
        b.close().await.unwrap();
    }
    // Closing ends their waits at once, with nothing received.
    for waiter in [first, second] {
        let (got, _) = waiter.await.unwrap();
        assert!(matches!(got, Err(Error::Shutdown)), "{got:?}");
    }
}

#[tokio::test]
async fn terminated_shared_connections_are_replaced_once_for_every_queue() {
    let db = Db::new("shared_kill").await;
    let qs = queues(&db, 3, Duration::from_secs(1));
    for (i, b) in qs.iter().enumerate() {
        b.publish(
            (0..10)
                .map(|n| with_id("k", &format!("k-{i}-{n}")))
                .collect(),
        )
        .await
        .unwrap();
    }
    let mut held = Vec::new();
    for b in &qs {
        let mut got = receive_all(b, 3, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 3);
        // One settled now: both connections are up.
        settle(b, got.pop().unwrap(), Settlement::Ack).await;
        held.push(got);
    }
    assert_eq!(sessions(&db).await, 2);
    let killed = db.terminate_sessions().await;
    assert_eq!(killed, 2);
    // Every queue drains the rest and settles what it held before.
    let until = Instant::now() + Duration::from_secs(15);
    for (b, first) in qs.iter().zip(held) {
        let mut rest = Vec::new();
        let mut first = Some(first);
        while Instant::now() < until && (first.is_some() || rest.len() < 7) {
            match b.receive(10, Duration::from_millis(200)).await {
                Ok(got) => rest.extend(got),
                Err(e) => assert!(e.is_connection(), "{e}"),
            }
            if let Some(f) = first.take() {
                let items = f.iter().cloned().map(|d| (Arc::new(d), Settlement::Ack));
                if b.settle(items.collect()).await.is_err() {
                    first = Some(f);
                }
            }
        }
        assert!(first.is_none(), "held jobs not settled");
        assert_eq!(rest.len(), 7);
        ack_all(b, rest).await;
        assert_eq!(b.state(), BackendState::Connected);
        assert!(b.reconnect_attempts() >= 1);
    }
    assert_eq!(db.count("jobs").await, 0);
    // Replaced by one pair, not one pair per queue.
    assert_eq!(sessions(&db).await, 2);
    for b in &qs {
        b.close().await.unwrap();
    }
}
