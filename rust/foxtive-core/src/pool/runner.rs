//! The caller-driven runs: `dispatch` one delivery the caller hands in and
//! get its settlement back, or `run_until_idle` a queue with a handler. The
//! caller supplies only the handler; the engine settles, so a caller never
//! infers an outcome from counters.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Engine, InFlight};
use crate::message::{Delivery, Settlement};
use crate::policy::FailureKind;
use crate::Result;

/// How a handler's run of a message ended (unless it settled the message
/// itself, which then stands).
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerResult {
    /// It returned: the message is acknowledged.
    Done,
    /// It raised: the failure policies decide (retry, dead letter).
    Failed {
        kind: FailureKind,
        error_type: String,
        message: String,
    },
}

/// How often `wait_idle` looks.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// A backend that cannot count what waits is idle after this long with
/// nothing in flight and nothing received.
const IDLE_QUIET: Duration = Duration::from_millis(500);
/// How long a lane consumer waits for messages before looking again.
const LANE_WAIT: Duration = Duration::from_millis(20);

impl Engine {
    /// Settle a message as its handler's result says, unless it was settled
    /// already (by the handler, or a shutdown); returns the settlement it got.
    pub fn conclude(&self, inflight: &Arc<InFlight>, result: HandlerResult) -> Settlement {
        if !inflight.is_settled() {
            match result {
                HandlerResult::Done => {
                    self.ack_many([inflight]);
                }
                HandlerResult::Failed {
                    kind,
                    error_type,
                    message,
                } => {
                    // A concurrent settlement wins; its outcome is read below.
                    let _ = self.fail(inflight, kind, &error_type, &message);
                }
            }
        }
        match inflight.settlement() {
            Some(settlement) => settlement.clone(),
            // Unreachable: both branches above settle, or it was settled.
            None => Settlement::Requeue,
        }
    }

    /// Run one delivery the caller hands in (its receipt a `LocalReceipt`:
    /// no broker is involved) through `handler`, and return its settlement.
    /// It counts against a worker's load like any other message.
    pub async fn dispatch<F, Fut>(&self, delivery: Delivery, handler: F) -> Settlement
    where
        F: FnOnce(Arc<InFlight>) -> Fut,
        Fut: Future<Output = HandlerResult>,
    {
        let inflight = self.adopt(delivery);
        let result = handler(inflight.clone()).await;
        self.conclude(&inflight, result)
    }

    /// Adopt a message the user hands in (`pool.dispatch`): it counts against
    /// the worker's load like any other, and its settlement reaches no broker.
    pub fn adopt(&self, delivery: Delivery) -> Arc<InFlight> {
        let loads: Vec<usize> = (0..self.config.workers.len())
            .map(|i| self.live.load(i))
            .collect();
        // Limits are not enforced on hand-delivered messages: pretend there is room.
        let limits: Vec<usize> = vec![usize::MAX; loads.len()];
        let worker = self.picker.pick(&loads, &limits).unwrap_or(0);
        self.take_capacity(worker);
        crate::observe::stats::add(&self.metrics.received, 1);
        Arc::new(InFlight::new(delivery, worker))
    }

    /// Wait until nothing is left to do (see [`Engine::is_idle`]; a backend
    /// that cannot tell is idle after a quiet half second). False if
    /// `timeout` passed first.
    pub async fn wait_idle(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut quiet_since: Option<Instant> = None;
        let mut last_received = u64::MAX;
        loop {
            let now = Instant::now();
            let idle = match self.is_idle() {
                Some(idle) => {
                    quiet_since = None;
                    idle
                }
                None => {
                    let received = self.stats().received;
                    if self.in_flight() == 0 && received == last_received {
                        now.duration_since(*quiet_since.get_or_insert(now)) >= IDLE_QUIET
                    } else {
                        (quiet_since, last_received) = (None, received);
                        false
                    }
                }
            };
            if idle {
                return true;
            }
            if deadline.is_some_and(|d| now >= d) {
                return false;
            }
            tokio::time::sleep(IDLE_POLL).await;
        }
    }

    /// Start, run `handler` on every message (one consumer per lane) until
    /// nothing is left or `timeout` passes, then stop gracefully. True if
    /// idle was reached. A backend that cannot connect is an error.
    pub async fn run_until_idle<H, Fut>(
        self: &Arc<Self>,
        handler: H,
        timeout: Option<Duration>,
    ) -> Result<bool>
    where
        H: Fn(Arc<InFlight>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.start().await?;
        let handler = Arc::new(handler);
        let runtime = tokio::runtime::Handle::current();
        let consumers: Vec<_> = (0..self.lanes.len())
            .map(|lane| {
                let (engine, handler, runtime) = (self.clone(), handler.clone(), runtime.clone());
                tokio::task::spawn_blocking(move || engine.consume(lane, &*handler, &runtime))
            })
            .collect();
        let idle = self.wait_idle(timeout).await;
        self.begin_drain().await;
        for consumer in consumers {
            let _ = consumer.await;
        }
        self.finish().await?;
        Ok(idle)
    }

    /// Run a lane's messages through `handler` until the lane closes.
    fn consume<H, Fut>(&self, lane: usize, handler: &H, runtime: &tokio::runtime::Handle)
    where
        H: Fn(Arc<InFlight>) -> Fut,
        Fut: Future<Output = HandlerResult>,
    {
        let Some(lane) = self.lane(lane) else {
            return;
        };
        while let Some(batch) = lane.take(self.config.batch_size, LANE_WAIT) {
            if let Some(fd) = lane.wake_fd() {
                fd.clear();
            }
            for inflight in self.screen(batch) {
                let result = runtime.block_on(handler(inflight.clone()));
                self.conclude(&inflight, result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::backend::MemoryBackend;
    use crate::message::{HeaderValue, LocalReceipt, Outgoing, Receipt};
    use crate::observe::Metrics;
    use crate::policy::{max_age::PUBLISHED_AT, Backoff, MaxAge, Policy, RetryPolicy};
    use crate::pool::{EngineConfig, Strategy, WorkerSpec};

    fn config() -> EngineConfig {
        EngineConfig {
            pool: Arc::from("p"),
            concurrency_limit: 8,
            workers: vec![WorkerSpec {
                id: Arc::from("w"),
                limit: 8,
                lane: 0,
            }],
            strategy: Strategy::RoundRobin,
            retry: RetryPolicy {
                max_retries: 2,
                backoff: Backoff::new(
                    Duration::from_millis(1),
                    Duration::from_millis(1),
                    1.0,
                    false,
                )
                .unwrap(),
            },
            lanes: vec![false],
            batch_size: 16,
            breaker: None,
            rate_limit: None,
            poison: None,
            dead_letter_store: None,
        }
    }

    fn engine(extra: Vec<Arc<dyn Policy>>) -> (Arc<MemoryBackend>, Arc<Engine>) {
        let backend = Arc::new(MemoryBackend::new("q").unwrap());
        let metrics = Metrics::new("p", &[Arc::from("w")]);
        let engine = Engine::with_policies(config(), backend.clone(), metrics, extra).unwrap();
        (backend, engine)
    }

    fn local(id: &str, attempt: u32) -> Delivery {
        let mut d = Delivery::new(
            id,
            Bytes::from_static(b"x"),
            Arc::from("q"),
            Receipt::packed(LocalReceipt(1)),
        );
        d.attempt = attempt;
        d
    }

    fn failed(kind: FailureKind) -> HandlerResult {
        HandlerResult::Failed {
            kind,
            error_type: "ValueError".into(),
            message: "boom".into(),
        }
    }

    #[tokio::test]
    async fn dispatch_returns_the_settlement() {
        let (_, engine) = engine(Vec::new());
        let ok = engine
            .dispatch(local("a", 1), |_| async { HandlerResult::Done })
            .await;
        assert_eq!(ok, Settlement::Ack);
        let retried = engine
            .dispatch(local("b", 1), |_| async { failed(FailureKind::Transient) })
            .await;
        assert!(matches!(
            retried,
            Settlement::Retry {
                count_attempt: true,
                ..
            }
        ));
        // Out of retries: a dead letter, whatever the kind.
        let exhausted = engine
            .dispatch(local("c", 3), |_| async { failed(FailureKind::Transient) })
            .await;
        match exhausted {
            Settlement::DeadLetter(f) => assert_eq!(f.error_type, "ValueError"),
            other => panic!("{other:?}"),
        }
        let stats = engine.stats();
        assert_eq!(
            (stats.processed, stats.retried, stats.dead_lettered),
            (1, 1, 1)
        );
        assert_eq!(engine.in_flight(), 0);
    }

    /// A policy that never lets a failure be retried.
    struct NoRetries;

    impl Policy for NoRetries {
        fn name(&self) -> &'static str {
            "no_retries"
        }
        fn hooks(&self) -> crate::policy::Hooks {
            crate::policy::Hooks {
                on_failure: true,
                ..Default::default()
            }
        }
        fn on_failure(&self, f: &mut crate::policy::FailureCtx<'_>, _now: Instant) {
            f.kind = FailureKind::Permanent;
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    #[tokio::test]
    async fn an_extra_policy_shapes_failures_before_the_retry_decision() {
        let (_, engine) = engine(vec![Arc::new(NoRetries)]);
        let settlement = engine
            .dispatch(local("a", 1), |_| async { failed(FailureKind::Transient) })
            .await;
        assert!(
            matches!(settlement, Settlement::DeadLetter(_)),
            "{settlement:?}"
        );
    }

    #[tokio::test]
    async fn a_handler_settling_itself_wins() {
        let (_, engine) = engine(Vec::new());
        let e = engine.clone();
        let settlement = engine
            .dispatch(local("a", 1), move |m| async move {
                e.dead_letter(&m, "Invalid", "bad input").unwrap();
                HandlerResult::Done
            })
            .await;
        match settlement {
            Settlement::DeadLetter(f) => assert_eq!(f.error_message, "bad input"),
            other => panic!("{other:?}"),
        }
        assert_eq!(engine.stats().processed, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_until_idle_runs_everything_once() {
        let (backend, engine) = engine(Vec::new());
        backend.publish_now(
            (0..20)
                .map(|i| Outgoing {
                    message_id: Some(format!("m{i}")),
                    ..Outgoing::new(Bytes::from(vec![i as u8]))
                })
                .collect(),
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let idle = engine
            .run_until_idle(
                move |m| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        // Odd bodies are rejected for good.
                        if m.delivery.body[0] % 2 == 1 {
                            failed(FailureKind::Permanent)
                        } else {
                            HandlerResult::Done
                        }
                    }
                },
                Some(Duration::from_secs(20)),
            )
            .await
            .unwrap();
        assert!(idle);
        assert_eq!(calls.load(Ordering::SeqCst), 20);
        let stats = engine.stats();
        assert_eq!((stats.processed, stats.dead_lettered), (10, 10));
        assert_eq!(backend.dead_letters().len(), 10);
        assert_eq!(backend.qsize(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_age_dead_letters_stale_messages_untried() {
        let limit: Arc<dyn Policy> = Arc::new(MaxAge::new(Duration::from_secs(60)).unwrap());
        let (backend, engine) = engine(vec![limit]);
        let now = crate::clock::unix_now();
        let stamped = |id: &str, age: f64| Outgoing {
            message_id: Some(id.into()),
            headers: vec![(PUBLISHED_AT.into(), HeaderValue::Float(now - age))],
            ..Outgoing::new(Bytes::from_static(b"x"))
        };
        backend.publish_now(vec![stamped("fresh", 1.0), stamped("stale", 3600.0)]);
        let ran = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let log = ran.clone();
        let idle = engine
            .run_until_idle(
                move |m| {
                    log.lock().push(m.delivery.id.clone());
                    async { HandlerResult::Done }
                },
                Some(Duration::from_secs(20)),
            )
            .await
            .unwrap();
        assert!(idle);
        assert_eq!(*ran.lock(), vec!["fresh".to_string()]);
        let dead = backend.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].error_type, "MaxAge");
    }

    #[tokio::test]
    async fn metrics_do_not_keep_the_engine_alive() {
        let (_, engine) = engine(Vec::new());
        let metrics = engine.metrics().clone();
        let inflight = engine.adopt(local("a", 1));
        let live = metrics.live().expect("the engine shows its live values");
        assert_eq!(live.in_flight(), 1);
        assert!(metrics
            .render()
            .contains("foxtive_worker_in_flight_messages{pool=\"p\",worker=\"w\",queue=\"q\"} 1"));
        engine.conclude(&inflight, HandlerResult::Done);
        let weak = Arc::downgrade(&engine);
        drop((engine, inflight));
        assert!(
            weak.upgrade().is_none(),
            "nothing points back at the engine"
        );
        assert!(metrics.live().is_none());
        assert_eq!(metrics.snapshot().processed, 1);
    }
}
