//! The scheduler loop: while this process leads, enqueue each schedule's
//! due ticks and record the last one in the broker.
//!
//! Two tokio tasks, no Python: the lease keeper (acquire, renew every third
//! of the lease, release at shutdown) and the tick loop (sleep until the
//! next tick, look, enqueue). A leader whose renewal fails stops enqueueing
//! once its lease may have run out, before anyone else can take it over.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::brokers::ScheduleBroker;
use super::catch_up::{self, CatchUp};
use super::cron::Trigger;
use super::leader::{check_lease, Holder, Lease, MAX_LEASE};
use super::store::Stored;
use super::{iso_utc, tick_id};
use crate::backend::Backend;
use crate::message::{Dedup, HeaderValue, Outgoing};
use crate::Result;

/// Header naming the schedule a tick came from.
pub const SCHEDULE_HEADER: &str = "foxtive-schedule";
/// Header carrying the tick time (ISO 8601 UTC).
pub const TICK_HEADER: &str = "foxtive-tick";
/// Header set (true) on a tick enqueued by the catch-up policy.
pub const CATCH_UP_HEADER: &str = "foxtive-catch-up";
/// How long a tick id stays a dedup key: far longer than any lease handover
/// or catch-up window, short enough that the keys do not pile up.
const TICK_DEDUP_TTL: Duration = Duration::from_secs(24 * 3600);

/// One schedule: when, what to enqueue, and where.
pub struct Schedule {
    pub name: String,
    pub trigger: Trigger,
    pub catch_up: CatchUp,
    /// The backend the task's queue is published on.
    pub publisher: Arc<dyn Backend>,
    /// The task message (body and headers); each tick is a copy with its id.
    pub template: Outgoing,
}

#[derive(Debug, Clone, Copy)]
pub struct SchedulerSettings {
    /// How long a lease lasts unless renewed (at most 10 s).
    pub lease: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings { lease: MAX_LEASE }
    }
}

/// Counters of one scheduler, rendered in the Prometheus text format.
#[derive(Debug, Default)]
pub struct ScheduleMetrics {
    pub ticks_enqueued: AtomicU64,
    pub ticks_skipped: AtomicU64,
    pub leader_changes: AtomicU64,
    pub leader: AtomicBool,
    /// The same two counts per schedule, in the order of its schedules
    /// (set once, when the scheduler is built).
    pub per_schedule: Vec<ScheduleCounts>,
}

/// Ticks enqueued and skipped for one schedule.
#[derive(Debug, Default)]
pub struct ScheduleCounts {
    pub name: String,
    pub ticks_enqueued: AtomicU64,
    pub ticks_skipped: AtomicU64,
}

impl ScheduleMetrics {
    fn for_schedules(names: impl Iterator<Item = String>) -> Self {
        ScheduleMetrics {
            per_schedule: names
                .map(|name| ScheduleCounts {
                    name,
                    ..ScheduleCounts::default()
                })
                .collect(),
            ..ScheduleMetrics::default()
        }
    }

    /// Count `n` for schedule number `index` and in the totals.
    fn count(&self, index: usize, n: u64, skipped: bool) {
        let (total, each) = match (skipped, self.per_schedule.get(index)) {
            (false, c) => (&self.ticks_enqueued, c.map(|c| &c.ticks_enqueued)),
            (true, c) => (&self.ticks_skipped, c.map(|c| &c.ticks_skipped)),
        };
        total.fetch_add(n, Ordering::Relaxed);
        if let Some(each) = each {
            each.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// This scheduler's series alone (`Scheduler.metrics_text()`).
    pub fn render(&self, app: &str) -> String {
        render_metrics(&[(app, self)])
    }
}

const FAMILIES: [(&str, &str, &str); 4] = [
    (
        "foxtive_schedule_ticks_enqueued_total",
        "counter",
        "Schedule ticks this process enqueued.",
    ),
    (
        "foxtive_schedule_ticks_skipped_total",
        "counter",
        "Missed ticks skipped by the catch-up policy.",
    ),
    (
        "foxtive_schedule_leader_changes_total",
        "counter",
        "Times this process became or stopped being the schedule leader.",
    ),
    (
        "foxtive_schedule_leader",
        "gauge",
        "1 while this process leads the app's schedules.",
    ),
];

/// The schedule families for several schedulers, each family's HELP and
/// TYPE once (the text format wants one block per family).
pub fn render_metrics(schedulers: &[(&str, &ScheduleMetrics)]) -> String {
    use std::fmt::Write;
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    for (family, (name, kind, help)) in FAMILIES.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (app, m) in schedulers {
            let app = esc(app);
            match family {
                0 | 1 => {
                    for c in &m.per_schedule {
                        let n = if family == 0 {
                            &c.ticks_enqueued
                        } else {
                            &c.ticks_skipped
                        };
                        let _ = writeln!(
                            out,
                            "{name}{{app=\"{app}\",schedule=\"{}\"}} {}",
                            esc(&c.name),
                            n.load(Ordering::Relaxed)
                        );
                    }
                }
                2 => {
                    let n = m.leader_changes.load(Ordering::Relaxed);
                    let _ = writeln!(out, "{name}{{app=\"{app}\"}} {n}");
                }
                _ => {
                    let n = u8::from(m.leader.load(Ordering::Relaxed));
                    let _ = writeln!(out, "{name}{{app=\"{app}\"}} {n}");
                }
            }
        }
    }
    out
}

/// The schedulers running in this process, for `/metrics` of every
/// health server here: a scheduler is not tied to one pool, so it is found
/// through this list rather than wired into each server.
type Running = Mutex<Vec<(String, Arc<ScheduleMetrics>)>>;

fn running() -> &'static Running {
    static RUNNING: OnceLock<Running> = OnceLock::new();
    RUNNING.get_or_init(|| Mutex::new(Vec::new()))
}

/// The schedule families of every scheduler running in this process; empty
/// when none runs.
pub fn render_running() -> String {
    let running = running().lock();
    if running.is_empty() {
        return String::new();
    }
    let list: Vec<(&str, &ScheduleMetrics)> = running
        .iter()
        .map(|(app, m)| (app.as_str(), &**m))
        .collect();
    render_metrics(&list)
}

/// Leadership as the tick loop sees it.
#[derive(Debug, Clone)]
struct Leading {
    lease: Lease,
    /// When this process became leader: ticks at or before are "missed".
    since: DateTime<Utc>,
    /// Past this, the lease may have expired: enqueue nothing more.
    valid_until: Instant,
}

/// Enqueue one tick: a copy of the schedule's message whose id (and dedup
/// key) is the tick id. The ONE place ticks are published: deduplication by
/// the backend's store is wired here.
pub async fn enqueue_tick(
    publisher: &dyn Backend,
    template: &Outgoing,
    name: &str,
    tick: DateTime<Utc>,
    missed: bool,
) -> Result<String> {
    publish_tick(publisher, template, name, tick, missed, true).await
}

/// [`enqueue_tick`], with the backend's dedup (`dedup`) or without it (a
/// broker with no store: the caller claimed the tick by recording it).
async fn publish_tick(
    publisher: &dyn Backend,
    template: &Outgoing,
    name: &str,
    tick: DateTime<Utc>,
    missed: bool,
    dedup: bool,
) -> Result<String> {
    let id = tick_id(name, tick);
    let mut out = template.clone();
    out.message_id = Some(id.clone());
    // The tick id is also the dedup key: two schedulers that both believe
    // they lead (or a successor re-enqueueing a tick its dead predecessor
    // enqueued but did not record) still enqueue a tick once.
    out.dedup = dedup.then(|| Dedup {
        key: id.clone(),
        ttl: TICK_DEDUP_TTL,
    });
    out.headers
        .push((SCHEDULE_HEADER.into(), HeaderValue::Str(name.to_string())));
    out.headers
        .push((TICK_HEADER.into(), HeaderValue::Str(iso_utc(tick))));
    if missed {
        out.headers
            .push((CATCH_UP_HEADER.into(), HeaderValue::Bool(true)));
    }
    publisher.publish(vec![out]).await?;
    Ok(id)
}

pub struct Scheduler {
    app: String,
    schedules: Vec<Schedule>,
    broker: Arc<dyn ScheduleBroker>,
    settings: SchedulerSettings,
    holder: Holder,
    metrics: Arc<ScheduleMetrics>,
    stopping: AtomicBool,
    stop: Notify,
}

impl Scheduler {
    pub fn new(
        app: &str,
        schedules: Vec<Schedule>,
        broker: Arc<dyn ScheduleBroker>,
        settings: SchedulerSettings,
    ) -> Result<Arc<Self>> {
        check_lease(settings.lease)?;
        let metrics = Arc::new(ScheduleMetrics::for_schedules(
            schedules.iter().map(|s| s.name.clone()),
        ));
        Ok(Arc::new(Scheduler {
            app: app.to_string(),
            schedules,
            broker,
            settings,
            holder: Holder::this_process(),
            metrics,
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
        }))
    }

    pub fn metrics(&self) -> Arc<ScheduleMetrics> {
        self.metrics.clone()
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    /// Ask the loops to end (the lease is released); idempotent.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_waiters();
    }

    fn stopped(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Wait `d`, or less when stopped.
    async fn pause(&self, d: Duration) {
        let notified = self.stop.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.stopped() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = notified => {}
        }
    }

    /// Run until [`Scheduler::stop`].
    pub async fn run(self: Arc<Self>) {
        // RabbitMQ's connect() starts a consumer (its prefetch would hold
        // ticks no handler ever sees); its publish connects without one.
        let warm_up = !self.broker.records_first();
        for s in self.schedules.iter().filter(|_| warm_up) {
            if let Err(e) = s.publisher.connect().await {
                tracing::warn!(schedule = %s.name, error = %e, "schedule's backend did not connect yet");
            }
        }
        running()
            .lock()
            .push((self.app.clone(), self.metrics.clone()));
        let (tx, rx) = watch::channel::<Option<Leading>>(None);
        let keeper = tokio::spawn(self.clone().keep_lease(tx));
        self.clone().tick_loop(rx).await;
        // Released only once the tick loop is done: a tick it enqueued is
        // also recorded before a successor can take over.
        if let Ok(Some(lease)) = keeper.await {
            self.metrics.leader.store(false, Ordering::Relaxed);
            if let Err(e) = self.broker.release(&lease).await {
                tracing::warn!(app = %self.app, error = %e, "schedule lease: release failed (it expires by itself)");
            }
        }
        running()
            .lock()
            .retain(|(_, m)| !Arc::ptr_eq(m, &self.metrics));
    }

    /// Keep (or seek) the lease until stopped; returns the lease still held.
    async fn keep_lease(self: Arc<Self>, tx: watch::Sender<Option<Leading>>) -> Option<Lease> {
        let ttl = self.settings.lease;
        let every = ttl / 3;
        // Stop enqueueing a little before the lease can have expired.
        let margin = ttl / 10;
        while !self.stopped() {
            let current = tx.borrow().clone();
            let asked = Instant::now();
            match current {
                None => match self.broker.try_acquire(&self.holder, ttl).await {
                    Ok(Some(lease)) => {
                        tracing::info!(app = %self.app, token = lease.token, host = %self.holder.host,
                                       pid = self.holder.pid, "became the schedule leader");
                        self.metrics.leader_changes.fetch_add(1, Ordering::Relaxed);
                        self.metrics.leader.store(true, Ordering::Relaxed);
                        let _ = tx.send(Some(Leading {
                            lease,
                            since: Utc::now(),
                            valid_until: asked + ttl - margin,
                        }));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(app = %self.app, error = %e, "schedule lease: cannot ask the broker")
                    }
                },
                Some(mut leading) => match self.broker.renew(&leading.lease, ttl).await {
                    Ok(true) => {
                        leading.valid_until = asked + ttl - margin;
                        let _ = tx.send(Some(leading));
                    }
                    Ok(false) => {
                        tracing::warn!(app = %self.app, token = leading.lease.token, "lost the schedule lease");
                        self.lose(&tx);
                        continue; // try to take it back at once if it is free
                    }
                    Err(e) => {
                        tracing::warn!(app = %self.app, error = %e, "schedule lease: renewal failed");
                        if Instant::now() >= leading.valid_until {
                            self.lose(&tx);
                        }
                    }
                },
            }
            self.pause(every).await;
        }
        let last = tx.borrow().clone();
        last.map(|leading| leading.lease)
    }

    fn lose(&self, tx: &watch::Sender<Option<Leading>>) {
        self.metrics.leader_changes.fetch_add(1, Ordering::Relaxed);
        self.metrics.leader.store(false, Ordering::Relaxed);
        let _ = tx.send(None);
    }

    async fn tick_loop(self: Arc<Self>, mut rx: watch::Receiver<Option<Leading>>) {
        let recheck = self.settings.lease / 3;
        while !self.stopped() {
            let leading = rx.borrow_and_update().clone();
            let wait = match leading {
                Some(l) if Instant::now() < l.valid_until => {
                    let now = Utc::now();
                    for (i, s) in self.schedules.iter().enumerate() {
                        if let Err(e) = self.look(i, s, &l, now).await {
                            tracing::warn!(app = %self.app, schedule = %s.name, error = %e,
                                           "schedule: enqueueing a tick failed; retried on the next look");
                        }
                    }
                    self.until_next_tick(recheck)
                }
                _ => recheck,
            };
            let notified = self.stop.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stopped() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rx.changed() => {}
                _ = notified => {}
            }
        }
    }

    /// Time until the earliest next tick of any schedule, at most `cap`.
    fn until_next_tick(&self, cap: Duration) -> Duration {
        let now = Utc::now();
        self.schedules
            .iter()
            .filter_map(|s| s.trigger.next_after(now))
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
            .min()
            .map_or(cap, |d| d.min(cap))
            .max(Duration::from_millis(1))
    }

    async fn look(&self, i: usize, s: &Schedule, l: &Leading, now: DateTime<Utc>) -> Result<()> {
        let fingerprint = s.trigger.fingerprint();
        let last = self
            .broker
            .last(&s.name)
            .await?
            .filter(|v| v.fingerprint == fingerprint)
            .map(|v| v.tick);
        let plan = catch_up::plan(&s.trigger, s.catch_up, last, l.since, now);
        self.metrics.count(i, plan.skipped, true);
        for due in &plan.due {
            if Instant::now() >= l.valid_until || self.stopped() {
                return Ok(());
            }
            let stored = Stored {
                fingerprint: fingerprint.clone(),
                tick: due.tick,
            };
            if self.broker.records_first() {
                // No dedup store beside the queue (RabbitMQ): the fenced
                // record is the claim, so of two schedulers that both
                // believe they lead only the lease holder publishes. A
                // crash between the two loses this tick rather than
                // doubling it.
                if !self.broker.record(&s.name, &stored, l.lease.token).await? {
                    tracing::warn!(app = %self.app, schedule = %s.name, "schedule: lease lost while enqueueing");
                    return Ok(());
                }
                publish_tick(
                    &*s.publisher,
                    &s.template,
                    &s.name,
                    due.tick,
                    due.missed,
                    false,
                )
                .await?;
                self.metrics.count(i, 1, false);
                continue;
            }
            enqueue_tick(&*s.publisher, &s.template, &s.name, due.tick, due.missed).await?;
            self.metrics.count(i, 1, false);
            if !self.broker.record(&s.name, &stored, l.lease.token).await? {
                tracing::warn!(app = %self.app, schedule = %s.name, "schedule: lease lost while enqueueing");
                return Ok(());
            }
        }
        if let (Some(mark), true) = (plan.record, plan.due.is_empty()) {
            if last != Some(mark) {
                let stored = Stored {
                    fingerprint,
                    tick: mark,
                };
                self.broker.record(&s.name, &stored, l.lease.token).await?;
            }
        }
        Ok(())
    }
}

/// What `foxtive schedules` shows for one schedule.
#[derive(Debug, Clone)]
pub struct Listing {
    pub name: String,
    pub next: Vec<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
}

/// Each schedule's next `n` ticks after `now` and its stored last tick.
pub async fn list(
    broker: &dyn ScheduleBroker,
    schedules: &[(String, Trigger)],
    now: DateTime<Utc>,
    n: usize,
) -> Result<Vec<Listing>> {
    let mut out = Vec::new();
    for (name, trigger) in schedules {
        let last = broker.last(name).await?.map(|v| v.tick);
        out.push(Listing {
            name: name.clone(),
            next: trigger.next_ticks(now, n),
            last,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;
    use crate::message::header;
    use crate::schedule::leader::MemoryLease;
    use bytes::Bytes;

    #[tokio::test]
    async fn a_tick_enqueued_twice_is_one_message() {
        // A leader that died after enqueueing a tick but before recording
        // it: its successor enqueues the same tick again.
        let backend = MemoryBackend::new("sched-dedup-test").unwrap();
        let template = Outgoing::new(Bytes::from_static(b"{}"));
        let tick = DateTime::parse_from_rfc3339("2026-11-30T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let first = enqueue_tick(&backend, &template, "nightly", tick, false)
            .await
            .unwrap();
        let again = enqueue_tick(&backend, &template, "nightly", tick, true)
            .await
            .unwrap();
        assert_eq!(first, again);
        let got = backend
            .receive(10, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(
            got.len(),
            1,
            "the second enqueue of a tick must be deduplicated"
        );
        assert_eq!(got[0].id, "nightly@2026-11-30T05:00:00Z");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_memory_schedulers_enqueue_each_tick_once() {
        let backend = Arc::new(MemoryBackend::new("sched-test").unwrap());
        let mk = || {
            let s = Schedule {
                name: "per-second".into(),
                trigger: Trigger::every(Duration::from_secs(1), "UTC").unwrap(),
                catch_up: CatchUp::Latest,
                publisher: backend.clone(),
                template: Outgoing::new(Bytes::from_static(b"{}")),
            };
            Scheduler::new(
                "sched-test-app",
                vec![s],
                Arc::new(MemoryLease::new("sched-test-app")),
                SchedulerSettings {
                    lease: Duration::from_secs(1),
                },
            )
            .unwrap()
        };
        let (a, b) = (mk(), mk());
        let ra = tokio::spawn(a.clone().run());
        let rb = tokio::spawn(b.clone().run());
        tokio::time::sleep(Duration::from_millis(3500)).await;
        // Both running schedulers are on every /metrics of the process,
        // each family introduced once.
        let text = render_running();
        assert!(text.contains(
            "foxtive_schedule_ticks_enqueued_total{app=\"sched-test-app\",schedule=\"per-second\"}"
        ));
        assert_eq!(
            text.matches("# TYPE foxtive_schedule_leader gauge").count(),
            1
        );
        assert_eq!(
            text.matches("foxtive_schedule_leader{app=\"sched-test-app\"} 1")
                .count(),
            1,
            "{text}"
        );
        a.stop();
        b.stop();
        ra.await.unwrap();
        rb.await.unwrap();
        assert!(!render_running().contains("sched-test-app"));
        let got = backend
            .receive(100, Duration::from_millis(10))
            .await
            .unwrap();
        let mut ids: Vec<String> = got.iter().map(|d| d.id.clone()).collect();
        assert!(ids.len() >= 2, "{ids:?}");
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "a tick was enqueued twice");
        assert!(ids.iter().all(|i| i.starts_with("per-second@")));
        assert!(header(&got[0].headers, TICK_HEADER).is_some());
        let enq = a.metrics().ticks_enqueued.load(Ordering::Relaxed)
            + b.metrics().ticks_enqueued.load(Ordering::Relaxed);
        assert_eq!(enq as usize, n);
        let per: u64 = [&a, &b]
            .iter()
            .map(|s| {
                s.metrics().per_schedule[0]
                    .ticks_enqueued
                    .load(Ordering::Relaxed)
            })
            .sum();
        assert_eq!(per, enq, "the per-schedule counts add up to the totals");
    }
}
