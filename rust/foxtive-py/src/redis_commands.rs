//! `_core.RedisCommands` (commands on one Redis: result records, direct
//! sends) and `_core.RespReplies` (replies read by an event loop's own
//! connection to Redis, parsed in one call per read).

use std::sync::Arc;

use bytes::BytesMut;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use foxtive_core::backend::redis_streams::{DirectAddress, RedisCommands, RespFrame};

use crate::bridge;
use crate::convert::{body_from_py, duration_from_py};
use crate::errors::{backend_error, IntoPyResult};

#[pyclass(frozen, name = "RedisCommands", module = "foxtive._core")]
pub struct PyRedisCommands {
    pub(crate) inner: Arc<RedisCommands>,
}

#[pymethods]
impl PyRedisCommands {
    /// Commands on the Redis of `url` (not a cluster). Nothing connects
    /// before the first command.
    #[new]
    fn new(url: &str) -> PyResult<Self> {
        Ok(PyRedisCommands {
            inner: Arc::new(RedisCommands::new(url).py_err()?),
        })
    }

    /// The URL with its password replaced by `***`.
    #[getter]
    fn url(&self) -> &str {
        self.inner.url()
    }

    /// Where direct connections go: `("tcp", host, port)`, `("unix", path, 0)`,
    /// or None (no direct path: TLS).
    fn direct_address<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(match self.inner.direct_address() {
            None => None,
            Some(DirectAddress::Tcp(host, port)) => {
                Some(("tcp", host.as_str(), *port).into_pyobject(py)?.into_any())
            }
            Some(DirectAddress::Unix(path)) => {
                Some(("unix", path.as_str(), 0u16).into_pyobject(py)?.into_any())
            }
        })
    }

    /// The commands a new direct connection sends first (AUTH, SELECT,
    /// CLIENT SETNAME) and how many replies they get; None without a
    /// direct path. Holds the password: never log it.
    fn direct_handshake<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, PyBytes>, usize)> {
        self.inner
            .direct_handshake()
            .map(|(bytes, n)| (PyBytes::new(py, bytes), n))
    }

    /// Write a task's result record on the shared command connection
    /// (awaitable): `key` = `value` for `ttl` seconds; with `push`, in the
    /// same `MULTI`, `<key>:done` = `[value]` for a waiter's `BLMOVE`.
    fn write_record<'py>(
        &self,
        py: Python<'py>,
        key: String,
        value: &Bound<'py, PyAny>,
        ttl: &Bound<'py, PyAny>,
        push: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = body_from_py(value)?;
        let ttl = duration_from_py("ttl", ttl)?;
        let commands = self.inner.clone();
        bridge::awaitable(py, async move {
            commands.write_record(&key, &value, ttl, push).await
        })
    }

    /// The commands of `write_record` encoded for an event loop's own
    /// connection to this Redis, and how many replies they get (with
    /// `push`, the last is `EXEC`'s list).
    fn record_commands<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        value: &Bound<'py, PyAny>,
        ttl: &Bound<'py, PyAny>,
        push: bool,
    ) -> PyResult<(Bound<'py, PyBytes>, usize)> {
        let value = body_from_py(value)?;
        let ttl = duration_from_py("ttl", ttl)?;
        let (bytes, n) = RedisCommands::record_commands(key, &value, ttl, push);
        Ok((PyBytes::new(py, &bytes), n))
    }

    /// A waiter's `BLMOVE` on `<key>:done` (one reply: the record, or None
    /// after `timeout` seconds; None waits for ever), encoded.
    #[pyo3(signature = (key, timeout = None))]
    fn wait_command<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let timeout = timeout
            .map(|t| duration_from_py("timeout", t))
            .transpose()?;
        Ok(PyBytes::new(py, &RedisCommands::wait_command(key, timeout)))
    }

    /// Let go of the shared command connection and shut this process's
    /// direct connections to this Redis down (the next use opens new ones).
    fn close(&self) {
        self.inner.close();
    }

    fn __repr__(&self) -> String {
        format!("RedisCommands(url={:?})", self.inner.url())
    }
}

/// A RESP2 reply stream cut into replies: bulk strings as `bytes`, simple
/// strings as `str`, integers, None, lists; an error reply as a
/// `BackendError` instance (returned, not raised: it answers one command).
#[pyclass(name = "RespReplies", module = "foxtive._core")]
pub struct PyRespReplies {
    buf: BytesMut,
}

#[pymethods]
impl PyRespReplies {
    #[new]
    fn new() -> Self {
        PyRespReplies {
            buf: BytesMut::new(),
        }
    }

    /// Take `data` (bytes read from the connection); the replies it
    /// completes, in order. A malformed stream raises `BackendError`.
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        self.buf.extend_from_slice(data);
        let out = PyList::empty(py);
        while let Some(frame) = foxtive_core::backend::redis_streams::take_resp_frame(&mut self.buf)
            .map_err(|e| backend_error(format!("Redis reply: {e}")))?
        {
            out.append(frame_to_py(py, frame)?)?;
        }
        Ok(out)
    }
}

fn frame_to_py(py: Python<'_>, frame: RespFrame) -> PyResult<Bound<'_, PyAny>> {
    Ok(match frame {
        RespFrame::Bulk(b) => PyBytes::new(py, &b).into_any(),
        RespFrame::Simple(s) => PyString::new(py, &String::from_utf8_lossy(&s)).into_any(),
        RespFrame::Int(i) => i.into_pyobject(py)?.into_any(),
        RespFrame::Nil => py.None().into_bound(py),
        RespFrame::Error(e) => backend_error(format!("Redis: {e}"))
            .into_value(py)
            .into_bound(py)
            .into_any(),
        RespFrame::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(frame_to_py(py, item)?)?;
            }
            list.into_any()
        }
    })
}
