//! `foxtive.Message`: one delivery, as the handler sees it.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString, PyType};

use foxtive_core::policy::{FailureKind, RetryInfo};
use foxtive_core::pool::{Engine, InFlight};
use foxtive_core::Settlement;

use crate::awaitable::Ready;
use crate::convert::{header_to_py, headers_to_py, opt_duration};
use crate::errors::{payload_error, IntoPyResult};

#[pyclass(frozen, name = "Message", module = "foxtive")]
pub struct PyMessage {
    pub(crate) inflight: Arc<InFlight>,
    engine: Arc<Engine>,
    pub(crate) body: Py<PyBytes>,
    headers: PyOnceLock<Py<PyDict>>,
}

impl PyMessage {
    pub fn new(py: Python<'_>, inflight: Arc<InFlight>, engine: Arc<Engine>) -> Self {
        // Bytes cross once: one copy into a Python bytes object, here.
        let body = PyBytes::new(py, &inflight.delivery.body).unbind();
        PyMessage {
            inflight,
            engine,
            body,
            headers: PyOnceLock::new(),
        }
    }

    fn settle(&self, settlement: Settlement) -> PyResult<()> {
        self.engine.settle(&self.inflight, settlement).py_err()
    }

    fn do_retry(&self, delay: Option<Duration>) -> PyResult<String> {
        Ok(self
            .engine
            .retry(&self.inflight, delay)
            .py_err()?
            .outcome()
            .to_string())
    }
}

fn json_loads(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOADS
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("json")?.getattr("loads")?.unbind())
        })
        .map(|f| f.bind(py))
}

#[pymethods]
impl PyMessage {
    /// Broker message id.
    #[getter]
    fn id(&self) -> &str {
        &self.inflight.delivery.id
    }

    /// Raw payload, never decoded eagerly.
    #[getter]
    fn body(&self, py: Python<'_>) -> Py<PyBytes> {
        self.body.clone_ref(py)
    }

    /// Typed headers (a fresh read-only view is cheap: the dict is built once).
    #[getter]
    fn headers(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let dict = self.headers.get_or_try_init(py, || {
            headers_to_py(py, &self.inflight.delivery.headers).map(Bound::unbind)
        })?;
        static PROXY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        let proxy = PROXY.import(py, "types", "MappingProxyType")?;
        Ok(proxy.call1((dict.bind(py),))?.unbind())
    }

    /// One header's value, or `default`: converts only that value, without
    /// building the headers dict (the task router reads two headers of
    /// every message).
    #[pyo3(signature = (name, default = None))]
    fn header<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match foxtive_core::message::header(&self.inflight.delivery.headers, name) {
            Some(value) => header_to_py(py, value),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    /// 1 on first delivery; durable across retries, redeliveries and restarts.
    #[getter]
    fn attempt(&self) -> u32 {
        self.inflight.delivery.attempt
    }

    #[getter]
    fn queue(&self) -> &str {
        &self.inflight.delivery.queue
    }

    #[getter]
    fn routing_key(&self) -> Option<&str> {
        self.inflight.delivery.routing_key.as_deref()
    }

    #[getter]
    fn correlation_id(&self) -> Option<&str> {
        self.inflight.delivery.correlation_id.as_deref()
    }

    #[getter]
    fn content_type(&self) -> Option<&str> {
        self.inflight.delivery.content_type.as_deref()
    }

    #[getter]
    fn reply_to(&self) -> Option<&str> {
        self.inflight.delivery.reply_to.as_deref()
    }

    #[getter]
    fn priority(&self) -> Option<u8> {
        self.inflight.delivery.priority
    }

    #[getter]
    fn received_at(&self) -> f64 {
        self.inflight.delivery.received_at
    }

    #[getter]
    fn redelivered(&self) -> bool {
        self.inflight.delivery.redelivered
    }

    #[getter]
    fn settled(&self) -> bool {
        self.inflight.is_settled()
    }

    /// Id of the worker the pool assigned.
    #[getter]
    fn worker_id(&self) -> Option<String> {
        self.engine
            .worker_id(self.inflight.worker)
            .map(|id| id.to_string())
    }

    /// Index of the worker the pool assigned (internal).
    #[getter]
    fn _worker(&self) -> usize {
        self.inflight.worker
    }

    /// Decode the body as JSON; errors raise `PayloadError` (a `PermanentError`).
    fn json(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match json_loads(py)?.call1((self.body.bind(py),)) {
            Ok(v) => Ok(v.unbind()),
            Err(e) => Err(payload_error(format!(
                "message {:?}: body is not valid JSON: {}",
                self.inflight.delivery.id,
                e.value(py)
            ))),
        }
    }

    /// Decode the body as UTF-8; errors raise `PayloadError`.
    fn text(&self, py: Python<'_>) -> PyResult<Py<PyString>> {
        match std::str::from_utf8(&self.inflight.delivery.body) {
            Ok(s) => Ok(PyString::new(py, s).unbind()),
            Err(e) => Err(payload_error(format!(
                "message {:?}: body is not valid UTF-8: {e}",
                self.inflight.delivery.id
            ))),
        }
    }

    fn ack_sync(&self) -> PyResult<()> {
        self.settle(Settlement::Ack)
    }

    fn ack(&self) -> PyResult<Ready> {
        self.ack_sync()?;
        Ok(Ready::none())
    }

    /// `requeue=False`: the message goes to the dead-letter queue.
    /// `requeue=True`: redelivered at once through the broker, counted as an attempt.
    #[pyo3(signature = (requeue = false))]
    fn nack_sync(&self, requeue: bool) -> PyResult<()> {
        if requeue {
            self.do_retry(Some(Duration::ZERO)).map(|_| ())
        } else {
            self.engine
                .dead_letter(&self.inflight, "Nacked", "nacked by the handler")
                .py_err()
        }
    }

    #[pyo3(signature = (requeue = false))]
    fn nack(&self, requeue: bool) -> PyResult<Ready> {
        self.nack_sync(requeue)?;
        Ok(Ready::none())
    }

    /// Redeliver later through the broker; counts an attempt. Once the retry
    /// policy's `max_retries` is used up the message is dead-lettered instead.
    /// Returns the outcome: "retried" or "dead_lettered".
    #[pyo3(signature = (delay = None))]
    fn retry_sync(&self, delay: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
        let delay = opt_duration("delay", delay)?;
        self.do_retry(delay)
    }

    #[pyo3(signature = (delay = None))]
    fn retry(&self, py: Python<'_>, delay: Option<&Bound<'_, PyAny>>) -> PyResult<Ready> {
        let outcome = self.retry_sync(delay)?;
        Ok(Ready::of(PyString::new(py, &outcome).into_any().unbind()))
    }

    fn dead_letter_sync(&self, reason: &str) -> PyResult<()> {
        self.engine
            .dead_letter(&self.inflight, "DeadLettered", reason)
            .py_err()
    }

    fn dead_letter(&self, reason: &str) -> PyResult<Ready> {
        self.dead_letter_sync(reason)?;
        Ok(Ready::none())
    }

    /// Run the failure policy (internal): `kind` says how the handler
    /// failed, `delay` goes with `FailureKind.RETRY_AFTER` (without one it
    /// is transient). Returns the outcome, or None if already settled.
    #[pyo3(signature = (error_type, error_message, kind, delay = None))]
    fn _fail(
        &self,
        error_type: &str,
        error_message: &str,
        kind: PyFailureKind,
        delay: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<&'static str>> {
        let kind = match (kind, opt_duration("delay", delay)?) {
            (PyFailureKind::Permanent, _) => FailureKind::Permanent,
            (PyFailureKind::RetryAfter, Some(d)) => FailureKind::RetryAfter(d),
            _ => FailureKind::Transient,
        };
        match self
            .engine
            .fail(&self.inflight, kind, error_type, error_message)
        {
            Ok(s) => Ok(Some(s.outcome())),
            Err(foxtive_core::Error::AlreadySettled) => Ok(None),
            Err(e) => Err(crate::errors::to_py(e)),
        }
    }

    /// How it was settled ("success", "retried", "dead_lettered",
    /// "requeued"), None while it is not (internal: `pool.dispatch`).
    #[getter]
    fn _outcome(&self) -> Option<&'static str> {
        self.inflight.settlement().map(Settlement::outcome)
    }

    /// Hand back unsettled, untried (shutdown). False if already settled.
    fn _requeue(&self) -> bool {
        self.engine
            .settle(&self.inflight, Settlement::Requeue)
            .is_ok()
    }

    /// What the failure policy knows now, for `Worker.should_retry`.
    fn _retry_info(&self) -> PyRetryInfo {
        PyRetryInfo::from(self.engine.retry_info(&self.inflight))
    }

    fn __repr__(&self) -> String {
        let d = &self.inflight.delivery;
        format!(
            "Message(id={:?}, queue={:?}, attempt={}, body_len={})",
            d.id,
            &*d.queue,
            d.attempt,
            d.body.len()
        )
    }
}

/// How a handler failed, as Python classifies it for the failure policy.
#[pyclass(
    eq,
    eq_int,
    frozen,
    hash,
    from_py_object,
    name = "FailureKind",
    module = "foxtive._core"
)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum PyFailureKind {
    /// An ordinary exception: retry while attempts remain.
    #[pyo3(name = "TRANSIENT")]
    Transient,
    /// `PermanentError`, or `should_retry` said no: dead-letter now.
    #[pyo3(name = "PERMANENT")]
    Permanent,
    /// `RetryableError(delay=...)`: retry after that delay.
    #[pyo3(name = "RETRY_AFTER")]
    RetryAfter,
}

/// What the failure policy knows about a failed attempt (`foxtive.RetryInfo`,
/// handed to `Worker.should_retry`).
#[pyclass(
    frozen,
    eq,
    get_all,
    skip_from_py_object,
    name = "RetryInfo",
    module = "foxtive"
)]
#[derive(Clone, Copy, PartialEq)]
pub struct PyRetryInfo {
    /// 1 on the first delivery.
    attempt: u32,
    max_retries: u32,
    /// Seconds before the next retry, if there is one.
    next_delay: f64,
    /// No retry left: this failure dead-letters the message.
    exhausted: bool,
    poison_pill: bool,
}

impl From<RetryInfo> for PyRetryInfo {
    fn from(i: RetryInfo) -> Self {
        PyRetryInfo {
            attempt: i.attempt,
            max_retries: i.max_retries,
            next_delay: i.next_delay.as_secs_f64(),
            exhausted: i.exhausted,
            poison_pill: i.poison_pill,
        }
    }
}

#[pymethods]
impl PyRetryInfo {
    #[new]
    #[pyo3(signature = (attempt, max_retries, next_delay, exhausted, poison_pill))]
    fn new(
        attempt: u32,
        max_retries: u32,
        next_delay: f64,
        exhausted: bool,
        poison_pill: bool,
    ) -> Self {
        PyRetryInfo {
            attempt,
            max_retries,
            next_delay,
            exhausted,
            poison_pill,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "RetryInfo(attempt={}, max_retries={}, next_delay={}, exhausted={}, poison_pill={})",
            self.attempt,
            self.max_retries,
            self.next_delay,
            if self.exhausted { "True" } else { "False" },
            if self.poison_pill { "True" } else { "False" }
        )
    }
}
