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
use crate::policy::RateLimitWaits;

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
        Metrics::render_many(&[self])
    }

    /// The exposition of several pools' metrics (a process running a pool
    /// per queue): each family's `# HELP` / `# TYPE` once, then every
    /// pool's samples of it in the order given (the text format rejects a
    /// family declared twice). One pool renders exactly as [`Self::render`].
    pub fn render_many(pools: &[&Metrics]) -> String {
        let scrapes: Vec<Scrape<'_>> = pools.iter().map(|m| Scrape::of(m)).collect();
        let mut out = String::with_capacity(4096 * scrapes.len().max(1));
        for (name, kind, text, samples) in FAMILIES {
            help(&mut out, name, kind, text);
            for scrape in &scrapes {
                samples(scrape, name, &mut out);
            }
        }
        out
    }
}

/// One pool as one scrape sees it: labels escaped once, and the engine's
/// live values read once, so every family of a pool shows the same engine.
struct Scrape<'a> {
    metrics: &'a Metrics,
    pool: String,
    queue: String,
    live: Option<Arc<Live>>,
    /// Messages in flight per worker (0 without a running engine).
    loads: Vec<usize>,
    /// The running engine's rate-limit waits, read once for both families.
    waits: Option<RateLimitWaits>,
}

impl<'a> Scrape<'a> {
    fn of(metrics: &'a Metrics) -> Self {
        let live = metrics.live();
        let loads = (0..metrics.workers.len())
            .map(|i| live.as_ref().map_or(0, |l| l.load(i)))
            .collect();
        let waits = live.as_ref().and_then(|l| l.rate_limit_waits());
        Scrape {
            metrics,
            pool: escape(&metrics.pool),
            queue: escape(&metrics.queue.read()),
            live,
            loads,
            waits,
        }
    }
}

/// Writes one pool's samples of a family (named by the second argument).
type Samples = fn(&Scrape<'_>, &str, &mut String);

/// Every family, in the order of the exposition: name, type, help, samples.
const FAMILIES: [(&str, &str, &str, Samples); 12] = [
    (
        "foxtive_worker_messages_received_total",
        "counter",
        "Messages received from the backend.",
        received,
    ),
    (
        "foxtive_worker_messages_processed_total",
        "counter",
        "Message outcomes: success, failure (a failed attempt), retried, dead_lettered.",
        outcomes,
    ),
    (
        "foxtive_worker_message_processing_duration_seconds",
        "histogram",
        "Time from hand-off to a handler until settlement.",
        durations,
    ),
    (
        "foxtive_worker_active_workers",
        "gauge",
        "Workers with at least one message in flight.",
        active_workers,
    ),
    (
        "foxtive_worker_in_flight_messages",
        "gauge",
        "Messages handed to a worker and not settled yet.",
        in_flight,
    ),
    (
        "foxtive_worker_retries_total",
        "counter",
        "Retries scheduled.",
        retries,
    ),
    (
        "foxtive_worker_dead_lettered_total",
        "counter",
        "Messages dead-lettered.",
        dead_lettered,
    ),
    (
        "foxtive_worker_errors_total",
        "counter",
        "Failed attempts by error type (an exception class name).",
        errors,
    ),
    (
        "foxtive_worker_circuit_breaker_state",
        "gauge",
        "Circuit breaker: 0 closed, 1 open, 2 half-open.",
        breaker,
    ),
    (
        "foxtive_worker_rate_limit_waits_total",
        "counter",
        "Admissions that waited for a rate-limit permit.",
        rate_limit_waits,
    ),
    (
        "foxtive_worker_rate_limit_wait_seconds_total",
        "counter",
        "Seconds admissions spent waiting for rate-limit permits.",
        rate_limit_wait_seconds,
    ),
    (
        "foxtive_worker_backend_reconnects_total",
        "counter",
        "Backend reconnection attempts.",
        reconnects,
    ),
];

fn received(s: &Scrape<'_>, name: &str, out: &mut String) {
    let (pool, queue) = (&s.pool, &s.queue);
    let n = s.metrics.received.load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}{{pool=\"{pool}\",queue=\"{queue}\"}} {n}");
}

fn outcomes(s: &Scrape<'_>, name: &str, out: &mut String) {
    let (pool, queue) = (&s.pool, &s.queue);
    for w in &s.metrics.workers {
        let worker = escape(&w.id);
        for (outcome, v) in [
            ("success", &w.success),
            ("failure", &w.failure),
            ("retried", &w.retried),
            ("dead_lettered", &w.dead_lettered),
        ] {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{pool}\",worker=\"{worker}\",queue=\"{queue}\",outcome=\"{outcome}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

fn durations(s: &Scrape<'_>, name: &str, out: &mut String) {
    let (pool, queue) = (&s.pool, &s.queue);
    for w in &s.metrics.workers {
        let worker = escape(&w.id);
        let labels = format!("pool=\"{pool}\",worker=\"{worker}\",queue=\"{queue}\"");
        let mut cumulative = 0u64;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += w.duration.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += w.duration.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = w.duration.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

fn active_workers(s: &Scrape<'_>, name: &str, out: &mut String) {
    let active = s.loads.iter().filter(|l| **l > 0).count();
    let _ = writeln!(out, "{name}{{pool=\"{}\"}} {active}", s.pool);
}

fn in_flight(s: &Scrape<'_>, name: &str, out: &mut String) {
    let (pool, queue) = (&s.pool, &s.queue);
    for (w, load) in s.metrics.workers.iter().zip(&s.loads) {
        let worker = escape(&w.id);
        let _ = writeln!(
            out,
            "{name}{{pool=\"{pool}\",worker=\"{worker}\",queue=\"{queue}\"}} {load}"
        );
    }
}

/// One counter per worker.
fn per_worker(
    s: &Scrape<'_>,
    name: &str,
    out: &mut String,
    counter: fn(&WorkerMetrics) -> &AtomicU64,
) {
    let (pool, queue) = (&s.pool, &s.queue);
    for w in &s.metrics.workers {
        let worker = escape(&w.id);
        let n = counter(w).load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}{{pool=\"{pool}\",worker=\"{worker}\",queue=\"{queue}\"}} {n}"
        );
    }
}

fn retries(s: &Scrape<'_>, name: &str, out: &mut String) {
    per_worker(s, name, out, |w| &w.retried);
}

fn dead_lettered(s: &Scrape<'_>, name: &str, out: &mut String) {
    per_worker(s, name, out, |w| &w.dead_lettered);
}

fn errors(s: &Scrape<'_>, name: &str, out: &mut String) {
    let (pool, queue) = (&s.pool, &s.queue);
    for w in &s.metrics.workers {
        let worker = escape(&w.id);
        let errors = w.errors.lock();
        let mut types: Vec<_> = errors.iter().collect();
        types.sort();
        for (error_type, n) in types {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{pool}\",worker=\"{worker}\",queue=\"{queue}\",error_type=\"{}\"}} {n}",
                escape(error_type)
            );
        }
    }
}

fn breaker(s: &Scrape<'_>, name: &str, out: &mut String) {
    let state = s
        .live
        .as_ref()
        .and_then(|l| l.breaker_state())
        .map_or(0, |(state, _)| state.as_gauge());
    let _ = writeln!(out, "{name}{{pool=\"{}\"}} {state}", s.pool);
}

/// Rate-limit waits: those of the engines that ended plus the running one's.
fn rate_limit_waits(s: &Scrape<'_>, name: &str, out: &mut String) {
    let done = s.metrics.rate_limit_waits_done.load(Ordering::Relaxed);
    let n = done + s.waits.map_or(0, |w| w.waits);
    let _ = writeln!(out, "{name}{{pool=\"{}\"}} {n}", s.pool);
}

fn rate_limit_wait_seconds(s: &Scrape<'_>, name: &str, out: &mut String) {
    let done = s.metrics.rate_limit_wait_us_done.load(Ordering::Relaxed) as f64 / 1e6;
    let secs = done + s.waits.map_or(0.0, |w| w.wait_seconds);
    let _ = writeln!(out, "{name}{{pool=\"{}\"}} {secs}", s.pool);
}

fn reconnects(s: &Scrape<'_>, name: &str, out: &mut String) {
    let n = s.metrics.reconnects.load(Ordering::Relaxed)
        + s.live
            .as_ref()
            .map_or(0, |l| l.backend().reconnect_attempts());
    let _ = writeln!(
        out,
        "{name}{{pool=\"{}\",queue=\"{}\"}} {n}",
        s.pool, s.queue
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn several_pools_declare_each_family_once_then_every_pools_samples() {
        let a = Metrics::new("a", &[Arc::from("w")]);
        let b = Metrics::new("b", &[Arc::from("w"), Arc::from("v")]);
        a.received.fetch_add(1, Ordering::Relaxed);
        b.received.fetch_add(2, Ordering::Relaxed);
        if let Some(w) = b.worker(1) {
            w.record_error("KeyError");
        }
        let text = Metrics::render_many(&[&a, &b]);
        for (name, kind, _, _) in FAMILIES {
            let declared = format!("# TYPE {name} {kind}\n");
            assert_eq!(text.matches(&declared).count(), 1, "{name}:\n{text}");
        }
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# ")).count(),
            2 * FAMILIES.len()
        );
        // A family's block: its header, then the first pool's samples, then
        // the second's.
        let received: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("# TYPE foxtive_worker_messages_received_total"))
            .skip(1)
            .take_while(|l| !l.starts_with('#'))
            .collect();
        assert_eq!(
            received,
            [
                "foxtive_worker_messages_received_total{pool=\"a\",queue=\"\"} 1",
                "foxtive_worker_messages_received_total{pool=\"b\",queue=\"\"} 2",
            ]
        );
        // Every sample of each pool alone is there, and nothing else.
        let (alone_a, alone_b) = (a.render(), b.render());
        let mut alone = samples(&alone_a);
        alone.extend(samples(&alone_b));
        let mut together = samples(&text);
        alone.sort_unstable();
        together.sort_unstable();
        assert_eq!(together, alone);
        assert!(text.contains("error_type=\"KeyError\""));
    }

    #[test]
    fn one_pool_renders_its_families_in_order() {
        let m = Metrics::new("p", &[Arc::from("w")]);
        m.received.fetch_add(3, Ordering::Relaxed);
        let text = m.render();
        assert!(text.starts_with(
            "# HELP foxtive_worker_messages_received_total Messages received from the backend.\n\
             # TYPE foxtive_worker_messages_received_total counter\n\
             foxtive_worker_messages_received_total{pool=\"p\",queue=\"\"} 3\n"
        ));
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let families: Vec<&str> = FAMILIES.iter().map(|f| f.0).collect();
        assert_eq!(declared, families);
    }
}
