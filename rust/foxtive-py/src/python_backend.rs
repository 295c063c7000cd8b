//! A backend written in Python (`class MyBackend(foxtive.Backend)`), driven
//! by the core like any other. Every call crosses into Python and awaits a
//! coroutine on the pool's event loop: the slow path, by design.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use pyo3_async_runtimes::TaskLocals;
use tokio::task::JoinHandle;

use foxtive_core::backend::{Backend, SettleItem};
use foxtive_core::message::{Delivery, Outgoing, PackedReceipt, Receipt, Settlement};
use foxtive_core::{Error, Result};

use crate::convert::{body_from_py, headers_from_py, headers_to_py};

/// `(id, body, headers, attempt, receipt, redelivered)` from `Backend._foxtive_receive`.
type ReceivedTuple<'py> = (
    String,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyDict>>,
    u32,
    Bound<'py, PyAny>,
    bool,
);

/// A Python-written backend's delivery, as the core sees it: a handle to
/// the Python receipt object this adapter keeps until it is settled.
#[derive(Debug, Clone, Copy)]
struct PythonReceipt(u64);

impl PackedReceipt for PythonReceipt {
    fn pack(self) -> [u64; 2] {
        [self.0, 0]
    }
    fn unpack(words: [u64; 2]) -> Self {
        PythonReceipt(words[0])
    }
}

pub struct PythonBackend {
    obj: Py<PyAny>,
    name: String,
    queue: Arc<str>,
    locals: OnceLock<TaskLocals>,
    receipts: Mutex<HashMap<u64, Py<PyAny>>>,
    next: AtomicU64,
    /// The receive call in progress. The engine drops a receive when it
    /// stops fetching, but the Python coroutine goes on and may take
    /// messages from its queue: its result waits here for the next receive,
    /// or for `close` to hand back, instead of being lost.
    receiving: tokio::sync::Mutex<Option<JoinHandle<PyResult<Py<PyAny>>>>>,
}

/// Remember which event loop a Python backend runs its coroutines on.
pub fn bind_loop(py: Python<'_>, backend: &Option<Arc<PythonBackend>>) -> PyResult<()> {
    if let Some(b) = backend {
        if b.locals.get().is_none() {
            let locals = TaskLocals::with_running_loop(py)?.copy_context(py)?;
            let _ = b.locals.set(locals);
        }
    }
    Ok(())
}

fn err(context: &str, e: PyErr) -> Error {
    Error::Backend(format!("{context}: {e}"))
}

impl PythonBackend {
    pub fn wrap(obj: &Bound<'_, PyAny>) -> PyResult<Arc<PythonBackend>> {
        let name: String = match obj.getattr("name") {
            Ok(n) => n.extract().unwrap_or_else(|_| "custom".to_string()),
            Err(_) => "custom".to_string(),
        };
        if !obj.hasattr("_foxtive_receive")? {
            return Err(crate::errors::config_error(crate::registry::not_a_backend(
                &obj.get_type().name()?.to_string(),
            )));
        }
        Ok(Arc::new(PythonBackend {
            obj: obj.clone().unbind(),
            queue: Arc::from(name.as_str()),
            name,
            locals: OnceLock::new(),
            receipts: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            receiving: tokio::sync::Mutex::new(None),
        }))
    }

    /// Start `method(*args)` on the backend's event loop; the future
    /// resolves with its result.
    fn start<A>(
        &self,
        method: &'static str,
        args: A,
    ) -> Result<impl std::future::Future<Output = PyResult<Py<PyAny>>> + Send + 'static>
    where
        A: for<'py> IntoPyObject<'py, Target = PyTuple, Output = Bound<'py, PyTuple>> + Send,
    {
        Python::attach(|py| {
            let args: Bound<'_, PyTuple> = args.into_pyobject(py).map_err(Into::into)?;
            let locals = self.locals.get().ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err("the backend has no event loop yet")
            })?;
            let coro = self.obj.bind(py).call_method1(method, args)?;
            pyo3_async_runtimes::into_future_with_locals(locals, coro)
        })
        .map_err(|e| err(method, e))
    }

    async fn call<A>(&self, method: &'static str, args: A) -> Result<Py<PyAny>>
    where
        A: for<'py> IntoPyObject<'py, Target = PyTuple, Output = Bound<'py, PyTuple>> + Send,
    {
        self.start(method, args)?.await.map_err(|e| err(method, e))
    }

    /// Deliveries from what `_foxtive_receive` returned (their receipts are
    /// remembered from here on).
    fn deliveries_from(&self, got: Py<PyAny>) -> Result<Vec<Delivery>> {
        Python::attach(|py| {
            let list = got.bind(py);
            let mut out = Vec::new();
            for item in list.try_iter()? {
                out.push(self.delivery_from(&item?)?);
            }
            Ok::<_, PyErr>(out)
        })
        .map_err(|e| err("receive", e))
    }

    fn delivery_from(&self, item: &Bound<'_, PyAny>) -> PyResult<Delivery> {
        let (id, body, headers, attempt, receipt, redelivered): ReceivedTuple<'_> =
            item.extract()?;
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        self.receipts.lock().insert(handle, receipt.unbind());
        let mut d = Delivery::new(
            id,
            body_from_py(&body)?,
            self.queue.clone(),
            Receipt::packed(PythonReceipt(handle)),
        );
        if let Some(h) = headers {
            d.headers = headers_from_py(&h)?;
        }
        d.attempt = attempt.max(1);
        d.redelivered = redelivered;
        Ok(d)
    }

    fn settle_item<'py>(
        &self,
        py: Python<'py>,
        delivery: &Delivery,
        settlement: &Settlement,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(PythonReceipt(handle)) = delivery.receipt.unpacked() else {
            return Ok(None);
        };
        let Some(receipt) = self.receipts.lock().remove(&handle) else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("receipt", receipt)?;
        d.set_item("outcome", settlement.outcome())?;
        d.set_item("id", &delivery.id)?;
        d.set_item("body", PyBytes::new(py, &delivery.body))?;
        d.set_item("headers", headers_to_py(py, &delivery.headers)?)?;
        d.set_item("attempt", delivery.attempt)?;
        d.set_item("queue", &*delivery.queue)?;
        match settlement {
            Settlement::Retry {
                delay,
                count_attempt,
            } => {
                d.set_item("delay", delay.as_secs_f64())?;
                d.set_item("next_attempt", delivery.attempt + u32::from(*count_attempt))?;
            }
            Settlement::DeadLetter(f) => {
                d.set_item("error_type", &f.error_type)?;
                d.set_item("error_message", &f.error_message)?;
                d.set_item("worker_id", &*f.worker_id)?;
                d.set_item("poison_pill", f.poison_pill)?;
            }
            Settlement::Ack | Settlement::Requeue => {}
        }
        Ok(Some(d))
    }
}

#[async_trait]
impl Backend for PythonBackend {
    fn name(&self) -> &str {
        &self.name
    }

    async fn connect(&self) -> Result<()> {
        self.call("connect", ()).await.map(|_| ())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        // Cancel-safe: if this future is dropped while waiting, the call's
        // handle stays in the slot and its messages are not lost.
        let mut slot = self.receiving.lock().await;
        let handle = match slot.as_mut() {
            Some(handle) => handle,
            None => slot.insert(tokio::spawn(
                self.start("_foxtive_receive", (max, wait.as_secs_f64()))?,
            )),
        };
        let joined = handle.await;
        *slot = None;
        let got = joined
            .map_err(|e| Error::Backend(format!("receive: {e}")))?
            .map_err(|e| err("receive", e))?;
        self.deliveries_from(got)
    }

    async fn settle(&self, batch: Vec<SettleItem>) -> Result<()> {
        let items = Python::attach(|py| {
            let list = PyList::empty(py);
            for (delivery, settlement) in &batch {
                if let Some(d) = self.settle_item(py, delivery, settlement)? {
                    list.append(d)?;
                }
            }
            Ok::<_, PyErr>(list.unbind())
        })
        .map_err(|e| err("settle", e))?;
        self.call("_foxtive_settle", (items,)).await.map(|_| ())
    }

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        if messages
            .iter()
            .any(|m| m.dedup.is_some() || m.priority.is_some())
        {
            // A Python backend's publish takes neither: refuse, never drop them.
            return Err(foxtive_core::Error::Config(
                "priority, dedup_key: a backend written in Python does not take them".to_string(),
            ));
        }
        let mut ids = Vec::with_capacity(messages.len());
        for m in messages {
            let args = Python::attach(|py| {
                let headers = headers_to_py(py, &m.headers)?.unbind();
                Ok::<_, PyErr>((
                    PyBytes::new(py, &m.body).unbind(),
                    headers,
                    m.delay.map(|d| d.as_secs_f64()),
                    m.message_id.clone(),
                ))
            })
            .map_err(|e| err("publish", e))?;
            let id = self.call("publish", args).await?;
            ids.push(Python::attach(|py| {
                id.bind(py).extract::<String>().unwrap_or_default()
            }));
        }
        Ok(ids)
    }

    async fn stop_receiving(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        // A receive the engine gave up on may still bring messages: take
        // them (their receipts) so they are handed back below.
        let pending = self.receiving.lock().await.take();
        if let Some(handle) = pending {
            if let Ok(Ok(got)) = handle.await {
                if let Err(e) = self.deliveries_from(got) {
                    tracing::warn!(backend = %self.name, error = %e,
                        "messages received during shutdown could not be read back");
                }
            }
        }
        // Whatever was never settled goes back through the backend's requeue.
        let left: Vec<Py<PyAny>> = self.receipts.lock().drain().map(|(_, r)| r).collect();
        if !left.is_empty() {
            let list = Python::attach(|py| {
                let list = PyList::empty(py);
                for r in left {
                    let d = PyDict::new(py);
                    d.set_item("receipt", r)?;
                    d.set_item("outcome", "requeued")?;
                    list.append(d)?;
                }
                Ok::<_, PyErr>(list.unbind())
            })
            .map_err(|e| err("close", e))?;
            self.call("_foxtive_settle", (list,)).await?;
        }
        self.call("close", ()).await.map(|_| ())
    }
}
