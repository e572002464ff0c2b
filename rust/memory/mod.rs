//! Memory stores exposed to Python: the working-memory LRU.

pub mod working;

use parking_lot::Mutex;
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use working::Lru;

/// Bounded key -> value working memory with exact least-recently-used eviction.
///
/// Keys are strings, values any Python object. `get`, `set`, `delete` and membership are
/// O(1); reading a key with `get` (or `wm[key]`) makes it the most recently used, `in` does
/// not. Safe to share between threads.
///
/// Args:
///     capacity: most entries kept; inserting beyond it evicts the least recently used.
///
/// Raises:
///     MemoryStoreError: `capacity` is 0.
#[pyclass(module = "llm_agent_runtime", name = "WorkingMemory", frozen)]
pub struct PyWorkingMemory {
    inner: Mutex<Lru<Py<PyAny>>>,
}

#[pymethods]
impl PyWorkingMemory {
    #[new]
    fn new(capacity: usize) -> PyResult<Self> {
        Ok(Self {
            inner: Mutex::new(Lru::new(capacity)?),
        })
    }

    /// Most entries kept.
    #[getter]
    fn capacity(&self) -> usize {
        self.inner.lock().capacity()
    }

    /// Sets `key` to `value`, making it the most recently used entry.
    fn set(&self, key: &str, value: Py<PyAny>) {
        let displaced = self.inner.lock().insert(key, value);
        // Dropped after the lock is released: a value's __del__ may run Python code that
        // touches this memory again.
        drop(displaced);
    }

    /// Returns the value of `key` (making it most recently used), or `default`.
    #[pyo3(signature = (key, default=None))]
    fn get(&self, py: Python<'_>, key: &str, default: Option<Py<PyAny>>) -> Py<PyAny> {
        let found = self.inner.lock().get(key).map(|v| v.clone_ref(py));
        found.or(default).unwrap_or_else(|| py.None())
    }

    /// Removes `key`; returns whether it was present.
    fn delete(&self, key: &str) -> bool {
        let removed = self.inner.lock().remove(key);
        removed.is_some()
    }

    /// Removes every entry.
    fn clear(&self) {
        let values = self.inner.lock().clear();
        drop(values);
    }

    /// `(key, value)` pairs from most to least recently used.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let pairs: Vec<(String, Py<PyAny>)> = self
            .inner
            .lock()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.clone_ref(py)))
            .collect();
        PyList::new(py, pairs)
    }

    /// Keys from most to least recently used.
    fn keys(&self) -> Vec<String> {
        self.inner
            .lock()
            .iter()
            .map(|(k, _)| k.to_owned())
            .collect()
    }

    /// Renders the entries for an agent's prompt, one `key: value` line each, most recent
    /// first; an empty string when there are none.
    fn to_prompt(&self, py: Python<'_>) -> PyResult<String> {
        let pairs: Vec<(String, Py<PyAny>)> = self
            .inner
            .lock()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.clone_ref(py)))
            .collect();
        if pairs.is_empty() {
            return Ok(String::new());
        }
        let mut out = String::from("Working memory:");
        for (key, value) in pairs {
            out.push_str("\n- ");
            out.push_str(&key);
            out.push_str(": ");
            out.push_str(&value.bind(py).str()?.to_cow()?);
        }
        Ok(out)
    }

    fn __len__(&self) -> usize {
        self.inner.lock().len()
    }

    fn __contains__(&self, key: &str) -> bool {
        self.inner.lock().contains(key)
    }

    fn __getitem__(&self, py: Python<'_>, key: &str) -> PyResult<Py<PyAny>> {
        let found = self.inner.lock().get(key).map(|v| v.clone_ref(py));
        found.ok_or_else(|| PyKeyError::new_err(key.to_owned()))
    }

    fn __setitem__(&self, key: &str, value: Py<PyAny>) {
        self.set(key, value);
    }

    fn __delitem__(&self, key: &str) -> PyResult<()> {
        if self.delete(key) {
            Ok(())
        } else {
            Err(PyKeyError::new_err(key.to_owned()))
        }
    }

    fn __repr__(&self) -> String {
        let inner = self.inner.lock();
        format!(
            "WorkingMemory(len={}, capacity={})",
            inner.len(),
            inner.capacity()
        )
    }
}
