//! Core `tracing` events, handed to Python's `logging` (logger `foxtive`).
//!
//! A tokio thread must never take the GIL, so events are formatted into a
//! bounded queue here and the pool's event loop drains it (`take_logs`) and
//! emits them through `logging`. When nobody drains, the oldest go first.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Most events kept between two drains.
const CAPACITY: usize = 1000;

static QUEUE: Mutex<VecDeque<(u8, String, String)>> = Mutex::new(VecDeque::new());
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Python `logging` levels.
fn py_level(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

struct Fields {
    message: String,
    extra: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.extra, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.extra, " {}={:?}", field.name(), value);
        }
    }
}

/// A subscriber that queues foxtive's own events, INFO and above; foxtive-core
/// uses no spans. Events of the client libraries (lapin logs an ERROR for an
/// expected 404 on a passive declare, for one) are left out: foxtive reports
/// what matters about them itself, with context.
struct Queueing;

impl Subscriber for Queueing {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::INFO && metadata.target().starts_with("foxtive")
    }
    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _span: &Id, _values: &Record<'_>) {}
    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields {
            message: String::new(),
            extra: String::new(),
        };
        event.record(&mut fields);
        let meta = event.metadata();
        let mut queue = QUEUE.lock();
        if queue.len() >= CAPACITY {
            queue.pop_front();
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back((
            py_level(meta.level()),
            meta.target().to_string(),
            fields.message + &fields.extra,
        ));
    }
    fn enter(&self, _span: &Id) {}
    fn exit(&self, _span: &Id) {}
}

/// Install the queueing subscriber (once per process; later calls do nothing).
pub fn install() {
    let _ = tracing::subscriber::set_global_default(Queueing);
}

/// Queued core events as `(level, target, message)`, oldest first.
#[pyfunction]
pub fn take_logs() -> Vec<(u8, String, String)> {
    let mut out: Vec<_> = QUEUE.lock().drain(..).collect();
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        out.push((
            30,
            "foxtive_core".to_string(),
            format!("{dropped} core log events dropped (nobody drained them in time)"),
        ));
    }
    out
}
