//! `cargo bench -p foxtive-core`: cost of the scheduler, settlement and
//! policy paths, without Python. A dependency-free harness: each case runs a
//! few rounds and prints the best (least disturbed) figure.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foxtive_core::backend::MemoryBackend;
use foxtive_core::message::{Delivery, LocalReceipt, Receipt};
use foxtive_core::policy::{
    Backoff, BreakerConfig, CircuitBreaker, FailureKind, PoisonPillTracker, RateLimiter,
    RetryPolicy, Verdict,
};
use foxtive_core::pool::strategy::Picker;
use foxtive_core::pool::{Engine, EngineConfig, Strategy, WorkerSpec};

const ROUNDS: usize = 5;

fn best_ns_per_op(ops: u64, mut f: impl FnMut()) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_nanos() as f64 / ops as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn report(name: &str, ns: f64) {
    println!("{name:<52} {ns:>10.1} ns/op {:>14.0} op/s", 1e9 / ns);
}

fn bench_policies() {
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2.0, true).unwrap();
    let n = 1_000_000u64;
    report(
        "policy: backoff delay (jitter)",
        best_ns_per_op(n, || {
            for i in 0..n {
                black_box(backoff.delay(black_box((i % 40) as u32)));
            }
        }),
    );
    let breaker = CircuitBreaker::new(BreakerConfig::new(5, Duration::from_secs(30), 1).unwrap());
    let now = Instant::now();
    report(
        "policy: circuit breaker admit + record (closed)",
        best_ns_per_op(n, || {
            for _ in 0..n {
                black_box(breaker.admit(now));
                breaker.record(Verdict::Success, false, now);
            }
        }),
    );
    let tracker = PoisonPillTracker::new(10, Duration::from_secs(3600), 100_000).unwrap();
    let delivery = Delivery::new(
        "m-1",
        Bytes::from_static(b"x"),
        Arc::from("q"),
        Receipt::packed(LocalReceipt(1)),
    );
    report(
        "policy: poison-pill success (nothing tracked)",
        best_ns_per_op(n, || {
            for _ in 0..n {
                tracker.record_success(black_box(&delivery));
            }
        }),
    );
    report(
        "policy: poison-pill failure then success",
        best_ns_per_op(n / 10, || {
            for _ in 0..n / 10 {
                black_box(tracker.record_failure(&delivery, now));
                tracker.record_success(&delivery);
            }
        }),
    );
    let limiter = RateLimiter::new(1e9, 1_000_000).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    report(
        "policy: rate limiter permit (local, not limiting)",
        best_ns_per_op(n, || {
            rt.block_on(async {
                for _ in 0..n {
                    limiter.until_ready().await;
                }
            })
        }),
    );
    let policy = RetryPolicy::default();
    let worker: Arc<str> = Arc::from("w");
    report(
        "policy: retry decision",
        best_ns_per_op(n, || {
            for i in 0..n {
                black_box(policy.decide(
                    black_box((i % 8) as u32),
                    FailureKind::Transient,
                    "ValueError",
                    "boom",
                    &worker,
                    false,
                ));
            }
        }),
    );
}

fn bench_strategies() {
    let n = 1_000_000u64;
    for strategy in [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::LeastLoaded,
    ] {
        for workers in [1usize, 4, 16] {
            let picker = Picker::new(strategy);
            let loads: Vec<usize> = (0..workers).map(|i| i % 3).collect();
            let limits = vec![100usize; workers];
            report(
                &format!("strategy: {strategy:?} pick among {workers}"),
                best_ns_per_op(n, || {
                    for _ in 0..n {
                        black_box(picker.pick(black_box(&loads), &limits));
                    }
                }),
            );
        }
    }
}

/// The whole Rust path of one message over the memory backend: receive,
/// admission, lane hand-off, settle-once ack, batched settlement. With
/// `policies`, a circuit breaker and a poison-pill tracker are on (every
/// hook point the hot path has: admit, before, start, after).
fn bench_engine(rt: &tokio::runtime::Runtime, policies: bool) {
    let n = 1_000_000u64;
    let ns = best_ns_per_op(n, || {
        let backend = Arc::new(MemoryBackend::new("bench").unwrap());
        backend.publish_bodies(
            (0..n)
                .map(|_| Bytes::from_static(b"0123456789abcdef"))
                .collect(),
        );
        let config = EngineConfig {
            pool: Arc::from("bench"),
            concurrency_limit: 1000,
            workers: vec![WorkerSpec {
                id: Arc::from("w"),
                limit: 1000,
                lane: 0,
            }],
            strategy: Strategy::RoundRobin,
            retry: RetryPolicy::default(),
            lanes: vec![false],
            batch_size: 256,
            breaker: policies.then(|| BreakerConfig::new(5, Duration::from_secs(30), 1).unwrap()),
            rate_limit: None,
            poison: policies.then_some((3, Duration::from_secs(60))),
            dead_letter_store: None,
        };
        let engine = Engine::new(config, backend.clone()).unwrap();
        rt.block_on(engine.start()).unwrap();
        let consumer = {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let lane = engine.lane(0).unwrap();
                let mut done = 0u64;
                while done < n {
                    if let Some(batch) = lane.take(256, Duration::from_millis(50)) {
                        let batch = engine.screen(batch);
                        done += engine.ack_many(batch.iter()) as u64;
                    }
                }
            })
        };
        consumer.join().unwrap();
        rt.block_on(engine.finish()).unwrap();
        assert_eq!(engine.stats().processed, n);
    });
    let name = if policies {
        "engine: + breaker, poison pill (1M msgs)"
    } else {
        "engine: memory backend, receive → ack (1M msgs)"
    };
    report(name, ns);
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!("foxtive-core benchmarks (best of {ROUNDS} rounds)");
    bench_policies();
    bench_strategies();
    bench_engine(&rt, false);
    bench_engine(&rt, true);
}
