//! An awaitable that is already complete: `await message.ack()` settles
//! synchronously (the broker round trip happens in batches, off the loop)
//! and must not pay for a Future or a Task.

use pyo3::prelude::*;

#[pyclass(frozen, freelist = 256, module = "foxtive._core")]
pub struct Ready {
    value: Option<Py<PyAny>>,
}

impl Ready {
    pub fn none() -> Self {
        Ready { value: None }
    }
    pub fn of(value: Py<PyAny>) -> Self {
        Ready { value: Some(value) }
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Finish at once: StopIteration carries the value.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let value = self
            .value
            .as_ref()
            .map_or_else(|| py.None(), |v| v.clone_ref(py));
        Err(pyo3::exceptions::PyStopIteration::new_err((value,)))
    }

    fn send(&self, py: Python<'_>, value: Py<PyAny>) -> PyResult<Option<Py<PyAny>>> {
        drop(value);
        self.__next__(py)
    }

    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        &self,
        typ: Bound<'_, PyAny>,
        val: Option<Bound<'_, PyAny>>,
        tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let _ = tb;
        let err = match val {
            Some(v) if !v.is_none() => PyErr::from_value(v),
            _ => PyErr::from_value(typ),
        };
        Err(err)
    }

    fn close(&self) {}
}
