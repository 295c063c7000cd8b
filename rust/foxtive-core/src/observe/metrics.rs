//! Pool metrics: lock-free counters and histograms updated on the hot path,
//! kept across runs of a pool, rendered in the Prometheus text format.
//!
//! Labels are bounded: `pool`, `worker`, `queue`, `outcome`, and an error
//! *type* (an exception class name, at most [`MAX_ERROR_TYPES`] distinct per
//! worker, the rest counted as `other`) — never an error text.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::live::Live;
use super::stats::StatsSnapshot;

/// Upper bounds of the processing-duration histogram, in seconds.
pub const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Distinct error types tracked per worker before the rest become `other`.
pub const MAX_ERROR_TYPES: usize = 32;

#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Debug)]
pub struct WorkerMetrics {
    pub id: Arc<str>,
    pub success: AtomicU64,
    pub failure: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub requeued: AtomicU64,
    pub duration: Histogram,
    errors: Mutex<HashMap<String, u64>>,
}

impl WorkerMetrics {
    fn new(id: Arc<str>) -> Self {
        WorkerMetrics {
            id,
            success: AtomicU64::new(0),
            failure: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            duration: Histogram::default(),
            errors: Mutex::new(HashMap::new()),
        }
    }

    /// Count a failed attempt under its error type (bounded).
    pub fn record_error(&self, error_type: &str) {
        self.failure.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock();
        if let Some(n) = errors.get_mut(error_type) {
            *n += 1;
        } else if errors.len() < MAX_ERROR_TYPES {
            errors.insert(error_type.to_string(), 1);
        } else {
            *errors.entry("other".to_string()).or_insert(0) += 1;
        }
    }
}

/// Everything a pool measures, across its runs.
#[derive(Debug)]
pub struct Metrics {
    pool: Arc<str>,
    queue: RwLock<String>,
    pub received: AtomicU64,
    pub reconnects: AtomicU64,
    workers: Vec<WorkerMetrics>,
    /// The live values of the engine running now, if any.
    live: RwLock<Option<Arc<Live>>>,
    /// Unix milliseconds of the event loop's last sign of life.
    loop_heartbeat_ms: AtomicU64,
    /// Rate-limit waits (count, microseconds) of the engines that ended:
    /// the counters stay counters across runs.
    rate_limit_waits_done: AtomicU64,
    rate_limit_wait_us_done: AtomicU64,
}

impl Metrics {
    pub fn new(pool: &str, worker_ids: &[Arc<str>]) -> Arc<Self> {
        Arc::new(Metrics {
            pool: Arc::from(pool),
            queue: RwLock::new(String::new()),
            received: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            workers: worker_ids.iter().cloned().map(WorkerMetrics::new).collect(),
            live: RwLock::new(None),
            loop_heartbeat_ms: AtomicU64::new(0),
            rate_limit_waits_done: AtomicU64::new(0),
            rate_limit_wait_us_done: AtomicU64::new(0),
        })
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    pub fn worker(&self, index: usize) -> Option<&WorkerMetrics> {
        self.workers.get(index)
    }

    pub fn worker_ids(&self) -> impl Iterator<Item = &Arc<str>> {
        self.workers.iter().map(|w| &w.id)
    }

    /// The engine running now shows its live values through these metrics.
    pub fn attach(&self, live: Arc<Live>) {
        *self.queue.write() = live.backend().name().to_string();
        *self.live.write() = Some(live);
    }

    /// The engine that attached `live` is gone: forget its values (unless a
    /// newer engine attached since).
    pub fn detach(&self, live: &Arc<Live>) {
        let mut current = self.live.write();
        if current.as_ref().is_some_and(|l| Arc::ptr_eq(l, live)) {
            if let Some(w) = live.rate_limit_waits() {
                self.rate_limit_waits_done
                    .fetch_add(w.waits, Ordering::Relaxed);
                self.rate_limit_wait_us_done
                    .fetch_add((w.wait_seconds * 1e6) as u64, Ordering::Relaxed);
            }
            *current = None;
        }
    }

    /// The live values of the engine running now, if any.
    pub fn live(&self) -> Option<Arc<Live>> {
        self.live.read().clone()
    }

    pub fn heartbeat(&self) {
        let now = (crate::clock::unix_now() * 1000.0) as u64;
        self.loop_heartbeat_ms.store(now, Ordering::Relaxed);
    }

    /// Seconds since the event loop last showed it was alive (None: never).
    pub fn heartbeat_age(&self) -> Option<f64> {
        match self.loop_heartbeat_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some((crate::clock::unix_now() - ms as f64 / 1000.0).max(0.0)),
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let sum = |f: fn(&WorkerMetrics) -> &AtomicU64| -> u64 {
            self.workers
                .iter()
                .map(|w| f(w).load(Ordering::Relaxed))
                .sum()
        };
        StatsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            processed: sum(|w| &w.success),
            failed: sum(|w| &w.failure),
            retried: sum(|w| &w.retried),
            dead_lettered: sum(|w| &w.dead_lettered),
            requeued: sum(|w| &w.requeued),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let pool = escape(&self.pool);
        let queue = escape(&self.queue.read());
        let live = self.live();

        self.render_outcomes(&mut out, &pool, &queue);
        self.render_loads(&mut out, &pool, &queue, live.as_deref());
        self.render_totals(&mut out, &pool, &queue);
        self.render_live(&mut out, &pool, &queue, live.as_deref());
        out
    }

    /// Received, outcomes and processing durations.
    fn render_outcomes(&self, out: &mut String, pool: &str, queue: &str) {
        help(
            out,
            "foxtive_worker_messages_received_total",
            "counter",
            "Messages received from the backend.",
        );
        let _ = writeln!(
            out,
            "foxtive_worker_messages_received_total{{pool=\"{pool}\",queue=\"{queue}\"}} {}",
            self.received.load(Ordering::Relaxed)
        );

        help(
            out,
            "foxtive_worker_messages_processed_total",
            "counter",
            "Message outcomes: success, failure (a failed attempt), retried, dead_lettered.",
        );
        for w in &self.workers {
            let worker = escape(&w.id);
            for (outcome, v) in [
                ("success", &w.success),
                ("failure", &w.failure),
                ("retried", &w.retried),
                ("dead_lettered", &w.dead_lettered),
            ] {
                let _ = writeln!(out, "foxtive_worker_messages_processed_total{{pool=\"{pool}\",worker=\"{worker}\",queue=\"{queue}\",outcome=\"{outcome}\"}} {}",
                    v.load(Ordering::Relaxed));
            }
        }

        help(
            out,
            "foxtive_worker_message_processing_duration_seconds",
            "histogram",
            "Time from hand-off to a handler until settlement.",
        );
        for w in &self.workers {
            let worker = escape(&w.id);
            let labels = format!("pool=\"{pool}\",worker=\"{worker}\",queue=\"{queue}\"");
            let mut cumulative = 0u64;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += w.duration.counts[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "foxtive_worker_message_processing_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            cumulative += w.duration.counts[BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(out, "foxtive_worker_message_processing_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(
                out,
                "foxtive_worker_message_processing_duration_seconds_sum{{{labels}}} {}",
                w.duration.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "foxtive_worker_message_processing_duration_seconds_count{{{labels}}} {cumulative}"
            );
        }
    }

    /// Messages in flight, per worker.
    fn render_loads(&self, out: &mut String, pool: &str, queue: &str, live: Option<&Live>) {
        let loads: Vec<(Arc<str>, usize)> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (w.id.clone(), live.as_ref().map_or(0, |l| l.load(i))))
            .collect();
        help(
            out,
            "foxtive_worker_active_workers",
            "gauge",
            "Workers with at least one message in flight.",
        );
        let _ = writeln!(
            out,
            "foxtive_worker_active_workers{{pool=\"{pool}\"}} {}",
            loads.iter().filter(|(_, l)| *l > 0).count()
        );

        help(
            out,
            "foxtive_worker_in_flight_messages",
            "gauge",
            "Messages handed to a worker and not settled yet.",
        );
        for (id, load) in &loads {
            let _ = writeln!(out, "foxtive_worker_in_flight_messages{{pool=\"{pool}\",worker=\"{}\",queue=\"{queue}\"}} {load}", escape(id));
        }
    }

    /// Per-worker retries, dead letters and errors by type.
    fn render_totals(&self, out: &mut String, pool: &str, queue: &str) {
        help(
            out,
            "foxtive_worker_retries_total",
            "counter",
            "Retries scheduled.",
        );
        for w in &self.workers {
            let _ = writeln!(out, "foxtive_worker_retries_total{{pool=\"{pool}\",worker=\"{}\",queue=\"{queue}\"}} {}",
                escape(&w.id), w.retried.load(Ordering::Relaxed));
        }

        help(
            out,
            "foxtive_worker_dead_lettered_total",
            "counter",
            "Messages dead-lettered.",
        );
        for w in &self.workers {
            let _ = writeln!(out, "foxtive_worker_dead_lettered_total{{pool=\"{pool}\",worker=\"{}\",queue=\"{queue}\"}} {}",
                escape(&w.id), w.dead_lettered.load(Ordering::Relaxed));
        }

        help(
            out,
            "foxtive_worker_errors_total",
            "counter",
            "Failed attempts by error type (an exception class name).",
        );
        for w in &self.workers {
            let errors = w.errors.lock();
            let mut types: Vec<_> = errors.iter().collect();
            types.sort();
            for (error_type, n) in types {
                let _ = writeln!(out, "foxtive_worker_errors_total{{pool=\"{pool}\",worker=\"{}\",queue=\"{queue}\",error_type=\"{}\"}} {n}",
                    escape(&w.id), escape(error_type));
            }
        }
    }

    /// What only a running engine knows: breaker state and reconnects.
    fn render_live(&self, out: &mut String, pool: &str, queue: &str, live: Option<&Live>) {
        help(
            out,
            "foxtive_worker_circuit_breaker_state",
            "gauge",
            "Circuit breaker: 0 closed, 1 open, 2 half-open.",
        );
        let breaker = live
            .as_ref()
            .and_then(|l| l.breaker_state())
            .map_or(0, |(s, _)| s.as_gauge());
        let _ = writeln!(
            out,
            "foxtive_worker_circuit_breaker_state{{pool=\"{pool}\"}} {breaker}"
        );

        let waits = live.as_ref().and_then(|l| l.rate_limit_waits());
        let done = self.rate_limit_waits_done.load(Ordering::Relaxed);
        let done_secs = self.rate_limit_wait_us_done.load(Ordering::Relaxed) as f64 / 1e6;
        help(
            out,
            "foxtive_worker_rate_limit_waits_total",
            "counter",
            "Admissions that waited for a rate-limit permit.",
        );
        let _ = writeln!(
            out,
            "foxtive_worker_rate_limit_waits_total{{pool=\"{pool}\"}} {}",
            done + waits.map_or(0, |w| w.waits)
        );
        help(
            out,
            "foxtive_worker_rate_limit_wait_seconds_total",
            "counter",
            "Seconds admissions spent waiting for rate-limit permits.",
        );
        let _ = writeln!(
            out,
            "foxtive_worker_rate_limit_wait_seconds_total{{pool=\"{pool}\"}} {}",
            done_secs + waits.map_or(0.0, |w| w.wait_seconds)
        );

        help(
            out,
            "foxtive_worker_backend_reconnects_total",
            "counter",
            "Backend reconnection attempts.",
        );
        let reconnects = self.reconnects.load(Ordering::Relaxed)
            + live
                .as_ref()
                .map_or(0, |l| l.backend().reconnect_attempts());
        let _ = writeln!(out, "foxtive_worker_backend_reconnects_total{{pool=\"{pool}\",queue=\"{queue}\"}} {reconnects}");
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escape a Prometheus label value.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
