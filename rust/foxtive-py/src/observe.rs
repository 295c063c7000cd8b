//! Metrics, health and the HTTP server, as Python objects.

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use foxtive_core::observe::{assess, HttpServer, Metrics, Source, StatsSnapshot, Watched};

use crate::errors::IntoPyResult;
use crate::runtime;

/// The counters of `pool.stats()` as a dict.
pub fn stats_dict<'py>(py: Python<'py>, s: &StatsSnapshot) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("received", s.received)?;
    d.set_item("processed", s.processed)?;
    d.set_item("failed", s.failed)?;
    d.set_item("retried", s.retried)?;
    d.set_item("dead_lettered", s.dead_lettered)?;
    d.set_item("requeued", s.requeued)?;
    Ok(d)
}

/// A pool's metrics, kept across its runs.
#[pyclass(frozen, name = "Metrics", module = "foxtive._core")]
pub struct PyMetrics {
    pub(crate) inner: Arc<Metrics>,
}

#[pymethods]
impl PyMetrics {
    #[new]
    fn new(pool: &str, worker_ids: Vec<String>) -> Self {
        let ids: Vec<Arc<str>> = worker_ids.iter().map(|s| Arc::from(s.as_str())).collect();
        PyMetrics {
            inner: Metrics::new(pool, &ids),
        }
    }

    /// The Prometheus text exposition.
    fn render(&self) -> String {
        self.inner.render()
    }

    /// Counters since the pool was built.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.inner.snapshot())
    }

    /// `{"status", "message", "ready", ...}` as `/health` reports it.
    fn health<'py>(
        &self,
        py: Python<'py>,
        concurrency_limit: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        let h = assess(&self.inner, concurrency_limit);
        let d = PyDict::new(py);
        d.set_item("status", h.status)?;
        d.set_item("message", &h.message)?;
        d.set_item("pool", self.inner.pool())?;
        d.set_item("state", h.state)?;
        d.set_item("backend", h.backend)?;
        d.set_item("ready", h.ready)?;
        d.set_item("workers", h.workers)?;
        d.set_item("in_flight", h.in_flight)?;
        d.set_item("concurrency_limit", h.concurrency_limit)?;
        d.set_item("received", h.received)?;
        d.set_item("processed", h.processed)?;
        d.set_item("failed", h.failed)?;
        d.set_item("retried", h.retried)?;
        d.set_item("dead_lettered", h.dead_lettered)?;
        Ok(d)
    }

    /// The event loop is alive (the pool calls this a few times a second).
    fn heartbeat(&self) {
        self.inner.heartbeat();
    }
}

/// The HTTP server of `foxtive.HealthServer`.
#[pyclass(frozen, name = "HttpServer", module = "foxtive._core")]
pub struct PyHttpServer {
    server: Mutex<Option<HttpServer>>,
    host: String,
    port: u16,
}

#[pymethods]
impl PyHttpServer {
    /// Bind `host:port` (port 0 picks a free one) and serve in the background,
    /// for `pools`: (metrics, concurrency limit) of each pool it speaks for.
    /// `dashboard_port`: pass every other path to the dashboard on 127.0.0.1.
    #[new]
    #[pyo3(signature = (pools, host, port, dashboard_port = None))]
    fn new(
        py: Python<'_>,
        pools: Vec<(PyRef<'_, PyMetrics>, usize)>,
        host: &str,
        port: u16,
        dashboard_port: Option<u16>,
    ) -> PyResult<Self> {
        if pools.is_empty() {
            return Err(foxtive_core::Error::Config(
                "pools: the health server needs at least one pool".to_string(),
            ))
            .py_err();
        }
        let rt = runtime::get()?;
        let source = Arc::new(Source {
            pools: pools
                .iter()
                .map(|(metrics, concurrency_limit)| Watched {
                    metrics: metrics.inner.clone(),
                    concurrency_limit: *concurrency_limit,
                })
                .collect(),
            dashboard: dashboard_port.map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p))),
        });
        let host_owned = host.to_string();
        let server = py
            .detach(|| rt.block_on(HttpServer::start(&host_owned, port, source)))
            .py_err()?;
        let addr = server.addr();
        Ok(PyHttpServer {
            server: Mutex::new(Some(server)),
            host: addr.ip().to_string(),
            port: addr.port(),
        })
    }

    #[getter]
    fn host(&self) -> &str {
        &self.host
    }

    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    fn stop(&self) {
        if let Some(server) = self.server.lock().take() {
            server.stop();
        }
    }
}
