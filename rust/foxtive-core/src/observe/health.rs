//! Health: what `/health`, `/ready` and `pool.health()` report.

use std::fmt::Write as _;

use super::EngineState;
use super::Metrics;
use crate::backend::BackendState;

/// Seconds without a sign of life from the event loop before the pool counts
/// as stuck (a handler blocking the loop).
pub const LOOP_STALL_SECS: f64 = 30.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// "healthy", "degraded" or "unhealthy".
    pub status: &'static str,
    pub message: String,
    /// Ready to take messages: running, not draining, backend connected.
    pub ready: bool,
    pub state: &'static str,
    pub backend: &'static str,
    pub workers: usize,
    pub in_flight: usize,
    pub concurrency_limit: usize,
    pub received: u64,
    pub processed: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

impl Health {
    /// Healthy and degraded answer 200; unhealthy 503.
    pub fn http_status(&self) -> u16 {
        if self.status == "unhealthy" {
            503
        } else {
            200
        }
    }

    pub fn to_json(&self, pool: &str) -> String {
        let mut s = String::with_capacity(320);
        let _ = write!(
            s,
            "{{\"status\":{},\"message\":{},\"pool\":{},\"state\":{},\"backend\":{},\"ready\":{},\
             \"workers\":{},\"in_flight\":{},\"concurrency_limit\":{},\"received\":{},\
             \"processed\":{},\"failed\":{},\"retried\":{},\"dead_lettered\":{}}}",
            json_str(self.status),
            json_str(&self.message),
            json_str(pool),
            json_str(self.state),
            json_str(self.backend),
            self.ready,
            self.workers,
            self.in_flight,
            self.concurrency_limit,
            self.received,
            self.processed,
            self.failed,
            self.retried,
            self.dead_lettered
        );
        s
    }
}

/// A JSON string literal (every control character escaped).
pub fn json_str(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Judge a pool: unhealthy when not running or its loop is stuck; degraded
/// when the backend is not connected, or more than 90 % of the limit is in
/// flight; healthy otherwise.
pub fn assess(metrics: &Metrics, concurrency_limit: usize) -> Health {
    let stats = metrics.snapshot();
    let (state, backend, in_flight) = match metrics.live() {
        Some(l) => (l.state(), l.backend_state(), l.in_flight()),
        None => (EngineState::Stopped, BackendState::Closed, 0),
    };
    let workers = metrics.worker_ids().count();
    let saturation = if concurrency_limit == 0 {
        1.0
    } else {
        in_flight as f64 / concurrency_limit as f64
    };
    let stalled = state == EngineState::Running
        && metrics
            .heartbeat_age()
            .is_some_and(|age| age > LOOP_STALL_SECS);
    let (status, message) = if state != EngineState::Running {
        ("unhealthy", format!("pool is {}", state.as_str()))
    } else if stalled {
        (
            "unhealthy",
            format!("event loop unresponsive for over {LOOP_STALL_SECS:.0} s"),
        )
    } else if workers == 0 {
        ("degraded", "no workers".to_string())
    } else if backend != BackendState::Connected {
        ("degraded", format!("backend {}", backend.as_str()))
    } else if saturation > 0.9 {
        (
            "degraded",
            format!("saturated: {in_flight}/{concurrency_limit} in flight"),
        )
    } else {
        (
            "healthy",
            format!("{in_flight}/{concurrency_limit} in flight"),
        )
    };
    Health {
        status,
        message,
        ready: state == EngineState::Running && backend == BackendState::Connected && !stalled,
        state: state.as_str(),
        backend: backend.as_str(),
        workers,
        in_flight,
        concurrency_limit,
        received: stats.received,
        processed: stats.processed,
        failed: stats.failed,
        retried: stats.retried,
        dead_lettered: stats.dead_lettered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn a_pool_that_is_not_running_is_unhealthy() {
        let m = Metrics::new("p", &[std::sync::Arc::from("w")]);
        let h = assess(&m, 10);
        assert_eq!(
            (h.status, h.ready, h.http_status()),
            ("unhealthy", false, 503)
        );
        assert!(h.to_json("p").starts_with("{\"status\":\"unhealthy\""));
    }
}
