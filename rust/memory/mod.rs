//! Memory stores exposed to Python: the working-memory LRU and the episodic store.

pub mod episodic;
pub mod working;

use std::hash::{Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use numpy::{IntoPyArray, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use parking_lot::Mutex;
use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyByteArray, PyBytes, PyFloat, PyInt, PyIterator, PyList, PyMemoryView, PySequence, PyString,
    PyTuple, PyType,
};
use pyo3::{PyTraverseError, PyVisit};

use crate::args::{self, OutOfRange};
use crate::errors::{catch_panics, run_detached, CoreError};
use crate::sync;
use episodic::{Decay, Episode, Episodes, Recall};
use working::Lru;

/// A capacity argument named `name` (`what` in the messages of its rule): an int of at least 1; one beyond 64 bits is refused as
/// too large, naming `max`. A `bool` is an `int` subclass but no capacity: refused.
fn capacity(value: &Bound<'_, PyAny>, name: &str, what: &str, max: usize) -> PyResult<usize> {
    args::not_bool(value, |_| {
        CoreError::Memory(format!("{what} must be an int, got bool"))
    })?;
    match args::to_usize(value, name)? {
        Ok(capacity) if capacity >= 1 => Ok(capacity),
        Ok(capacity) => {
            Err(CoreError::Memory(format!("{what} must be at least 1, got {capacity}")).into())
        }
        Err(OutOfRange::Negative(v)) => {
            Err(CoreError::Memory(format!("{what} must be at least 1, got {v}")).into())
        }
        Err(OutOfRange::TooLarge(v)) => {
            Err(CoreError::Memory(format!("{what} {v} is too large (max {max})")).into())
        }
    }
}

/// `WorkingMemory(capacity)` (its upper bound is checked by [`Lru::new`]).
fn working_capacity_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    capacity(
        value,
        "capacity",
        "WorkingMemory capacity",
        working::MAX_CAPACITY,
    )
}

/// `EpisodicStore(per_agent_capacity=...)`: None or an int >= 1.
fn per_agent_capacity_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    if value.is_none() {
        return Ok(None);
    }
    capacity(
        value,
        "per_agent_capacity",
        "per_agent_capacity",
        usize::MAX,
    )
    .map(Some)
}

/// A real-number argument; a bool (Python's or numpy's: no number, though a float
/// conversion takes it) or one beyond the float range is a `MemoryStoreError` stating
/// `rule`, the argument's rule (such as "importance must be in [0, 1]"); anything not a
/// number (a complex number included, numpy's too) is a `TypeError` naming the argument
/// `name`.
fn memory_real(value: &Bound<'_, PyAny>, name: &str, rule: &str) -> PyResult<f64> {
    if args::is_bool(value) {
        return Err(CoreError::Memory(format!("{rule}, got a bool ({value})")).into());
    }
    // A complex number is refused by `args::real` (a `TypeError` naming the argument).
    args::real(value, name, |beyond| {
        CoreError::Memory(format!("{rule}, got {beyond}"))
    })
}

/// `EpisodicStore(similarity_weight=...)` as a float.
fn similarity_weight_arg(value: &Bound<'_, PyAny>) -> PyResult<f64> {
    memory_real(value, "similarity_weight", "similarity_weight must be >= 0")
}

/// A `limit` argument: an int >= 0 (not a bool); one beyond 64 bits means "all".
fn limit_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::not_bool(value, |_| {
        CoreError::Memory("limit must be an int, got bool".into())
    })?;
    args::limit(value, "limit", 0, |v| {
        CoreError::Memory(format!("limit must be >= 0, got {v}"))
    })
}

/// Episode ids (`mark_recalled`'s): ints >= 0 (not bools), from any iterable but a `str`
/// (an iterable of characters, no ids) or `bytes` (an iterable of ints, but text encoded by
/// mistake: `b"12"` would be the ids 49 and 50; `VectorIndex.remove` refuses it too). A value
/// that is no such iterable, or an item that is no int, is a `TypeError` naming `ids` and the
/// value or item.
fn episode_ids_arg(value: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    let text = value.is_instance_of::<PyString>()
        || value.is_instance_of::<PyBytes>()
        || value.is_instance_of::<PyByteArray>();
    let items = match value.try_iter() {
        Ok(items) if !text => items,
        Ok(_) => return Err(not_episode_ids(value, None)),
        Err(e) if e.is_instance_of::<PyTypeError>(value.py()) => {
            return Err(not_episode_ids(value, None))
        }
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for (at, item) in items.enumerate() {
        let item = item?;
        args::not_bool(&item, |_| {
            CoreError::Memory("episode ids must be ints, got bool".into())
        })?;
        ids.push(
            args::extract_unsigned(&item, "ids", |v| {
                // Negative or beyond 64 bits: one message naming both bounds (an id above
                // the range meets ">= 0" alone).
                CoreError::Memory(format!(
                    "episode ids must be ints >= 0 and at most 2**64 - 1, got {v}"
                ))
            })
            .map_err(|e| {
                if e.is_instance_of::<PyTypeError>(item.py()) {
                    not_episode_ids(&item, Some(at))
                } else {
                    e
                }
            })?,
        );
    }
    Ok(ids)
}

/// The `TypeError` of [`episode_ids_arg`]: for the value given as `ids`, or its item `at`.
#[cold]
#[inline(never)]
fn not_episode_ids(value: &Bound<'_, PyAny>, at: Option<usize>) -> PyErr {
    let what = "ids must be an iterable of episode ids (ints)";
    PyTypeError::new_err(match at {
        None => format!("{what}, got {}", args::describe(value)),
        Some(at) => format!("{what}: item {at} is {}", args::describe_value(value)),
    })
}

// One `from_py_with` function per argument: each names its argument in a wrong type's
// `TypeError` (see `args`); a lone surrogate in a `str` is a `MemoryStoreError` (or, where
// the argument names something to look up, absent).

fn key_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "key", CoreError::Memory)
}

fn lookup_key_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<PyBackedStr>> {
    args::lookup_text(value, "key")
}

fn agent_id_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "agent_id", CoreError::Memory)
}

fn lookup_agent_id_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<PyBackedStr>> {
    args::lookup_text(value, "agent_id")
}

/// An optional agent id given as something other than None (see `EpisodicStore.clear`).
fn optional_agent_id(value: &Bound<'_, PyAny>) -> PyResult<Option<PyBackedStr>> {
    if value.is_instance_of::<PyString>() {
        args::lookup_text(value, "agent_id")
    } else {
        Err(args::wrong_type(value, "agent_id", args::OPTIONAL_STR))
    }
}

fn lookup_needle_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<PyBackedStr>> {
    args::lookup_text(value, "needle")
}

fn content_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "content", CoreError::Memory)
}

fn text_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "text", CoreError::Memory)
}

fn counted_arg(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    args::flag(value, "counted")
}

/// Bounded key -> value working memory with exact least-recently-used eviction.
///
/// Keys are strings, values any Python object. `get`, `set`, `delete` and membership are
/// O(1); reading a key with `get` (or `wm[key]`) makes it the most recently used, `in` does
/// not. Iterating gives the keys from most to least recently used (as `keys()`; a snapshot,
/// so the memory may change meanwhile). Safe to share between threads.
///
/// Args:
///     capacity: most entries kept; inserting beyond it evicts the least recently used.
///
/// A key that is not valid Unicode (a lone surrogate) cannot be stored: `set` refuses it, and
/// lookups (`in`, `get`, `delete`, `wm[key]`, `del wm[key]`) find it absent.
///
/// Raises:
///     MemoryStoreError: `capacity` is not positive (or too large, or a bool), or a key
///         given to `set` is not valid Unicode (a lone surrogate).
#[pyclass(module = "llm_agent_runtime", name = "WorkingMemory", frozen)]
pub struct PyWorkingMemory {
    /// Held only with the GIL, for O(1) work that runs no Python code: values are cloned
    /// (a reference count) under it and dropped or converted after it, so a `__del__` or
    /// `__str__` never runs under it. The GIL thus serializes every holder, and the lock is
    /// never contended: taking it never waits (the rule of [`crate::sync`] holds trivially).
    inner: Mutex<Lru<Py<PyAny>>>,
}

impl PyWorkingMemory {
    /// Runs `f` on the map, locked; a panic becomes `AgentRuntimeError`. Whatever `f`
    /// returns (a displaced value, say) is dropped by the caller after the lock is released.
    #[inline]
    fn with_lru<R>(&self, f: impl FnOnce(&mut Lru<Py<PyAny>>) -> R) -> PyResult<R> {
        catch_panics(|| Ok(f(&mut self.inner.lock())))
    }

    /// A copy of the entries, most recent first, taken under the lock; Python code (such as
    /// `str()` of a value) runs only after the lock is released.
    fn pairs(&self, py: Python<'_>) -> PyResult<Vec<(String, Py<PyAny>)>> {
        self.with_lru(|lru| {
            lru.iter()
                .map(|(k, v)| (k.to_owned(), v.clone_ref(py)))
                .collect()
        })
    }
}

#[pymethods]
impl PyWorkingMemory {
    #[new]
    fn new(#[pyo3(from_py_with = working_capacity_arg)] capacity: usize) -> PyResult<Self> {
        Ok(Self {
            inner: Mutex::new(Lru::new(capacity)?),
        })
    }

    /// Most entries kept.
    #[getter]
    fn capacity(&self) -> PyResult<usize> {
        self.with_lru(|lru| lru.capacity())
    }

    /// Sets `key` to `value`, making it the most recently used entry.
    ///
    /// Raises:
    ///     MemoryStoreError: `key` is not valid Unicode (a lone surrogate).
    fn set(
        &self,
        #[pyo3(from_py_with = key_arg)] key: PyBackedStr,
        value: Py<PyAny>,
    ) -> PyResult<()> {
        let displaced = self.with_lru(|lru| lru.insert(&key, value))?;
        // Dropped after the lock is released: a value's __del__ may run Python code that
        // touches this memory again.
        drop(displaced);
        Ok(())
    }

    /// Returns the value of `key` (making it most recently used), or `default`.
    ///
    /// A key that is not valid Unicode (a lone surrogate) is never stored, so it is absent.
    #[pyo3(signature = (key, default=None))]
    fn get(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_key_arg)] key: Option<PyBackedStr>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let found = match key {
            Some(key) => self.with_lru(|lru| lru.get(&key).map(|v| v.clone_ref(py)))?,
            None => None,
        };
        Ok(found.or(default).unwrap_or_else(|| py.None()))
    }

    /// Removes `key`; returns whether it was present (False for a key that is not valid
    /// Unicode: such a key is never stored).
    fn delete(
        &self,
        #[pyo3(from_py_with = lookup_key_arg)] key: Option<PyBackedStr>,
    ) -> PyResult<bool> {
        let Some(key) = key else {
            return Ok(false);
        };
        let removed = self.with_lru(|lru| lru.remove(&key))?;
        Ok(removed.is_some())
    }

    /// Removes every entry.
    fn clear(&self) -> PyResult<()> {
        let values = self.with_lru(Lru::clear)?;
        drop(values);
        Ok(())
    }

    /// `(key, value)` pairs from most to least recently used.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.pairs(py)?)
    }

    /// Keys from most to least recently used.
    fn keys(&self) -> PyResult<Vec<String>> {
        self.with_lru(|lru| lru.iter().map(|(k, _)| k.to_owned()).collect())
    }

    /// Renders the entries for an agent's prompt, one `key: value` entry each (the value as
    /// `str(value)`), most recent first; an empty string when there are none. An entry
    /// whose key or value spans lines has its later lines indented under it, so that no
    /// line of a value reads as an entry of its own.
    ///
    /// Built as a Python string, as Python concatenation would: a value whose `str()` holds
    /// a lone surrogate (text cut mid-character, say) passes through as it is.
    fn to_prompt<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        let pairs = self.pairs(py)?;
        let empty = PyString::new(py, "");
        if pairs.is_empty() {
            return Ok(empty);
        }
        let parts = PyList::new(py, ["Working memory:"])?;
        let indent = PyString::new(py, "\n  ");
        // Every line break Python knows (`\r\n`, `\u2028`...) starts an indented line.
        let one_entry = |text: &Bound<'py, PyString>| -> PyResult<Bound<'py, PyAny>> {
            let lines = text.call_method0(pyo3::intern!(py, "splitlines"))?;
            indent.call_method1(pyo3::intern!(py, "join"), (lines,))
        };
        for (key, value) in pairs {
            parts.append("\n- ")?;
            parts.append(one_entry(&PyString::new(py, &key))?)?;
            parts.append(": ")?;
            parts.append(one_entry(&value.bind(py).str()?)?)?;
        }
        empty
            .call_method1(pyo3::intern!(py, "join"), (parts,))?
            .cast_into::<PyString>()
            .map_err(Into::into)
    }

    fn __len__(&self) -> PyResult<usize> {
        self.with_lru(|lru| lru.len())
    }

    /// `key in memory`: False for anything not a `str` (as in a dict) and for a `str` that
    /// is not valid Unicode (no key is).
    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        if !key.is_instance_of::<PyString>() {
            return Ok(false);
        }
        match lookup_key_arg(key)? {
            Some(key) => self.with_lru(|lru| lru.contains(&key)),
            None => Ok(false),
        }
    }

    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let found = match lookup_key_arg(key)? {
            Some(text) => self.with_lru(|lru| lru.get(&text).map(|v| v.clone_ref(py)))?,
            None => None,
        };
        found.ok_or_else(|| PyKeyError::new_err(key.clone().unbind()))
    }

    fn __setitem__(
        &self,
        #[pyo3(from_py_with = key_arg)] key: PyBackedStr,
        value: Py<PyAny>,
    ) -> PyResult<()> {
        self.set(key, value)
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.delete(lookup_key_arg(key)?)? {
            Ok(())
        } else {
            Err(PyKeyError::new_err(key.clone().unbind()))
        }
    }

    /// The keys, most recently used first: a snapshot, as `keys()`.
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        PyList::new(py, self.keys()?)?.into_any().try_iter()
    }

    /// Lets the cycle collector see the values, which may refer back to this memory.
    ///
    /// Never blocks: when the lock is held (it never is while the collector runs, as its
    /// holders run no Python code), the values go unreported, so this collection keeps them.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(lru) = self.inner.try_lock() {
            for (_, value) in lru.iter() {
                visit.call(value)?;
            }
        }
        Ok(())
    }

    /// Drops the values, breaking a reference cycle through them.
    fn __clear__(&self) {
        let values = self.inner.try_lock().map(|mut lru| lru.clear());
        // Dropped after the lock is released: a value's __del__ may use this memory.
        drop(values);
    }

    fn __repr__(&self) -> PyResult<String> {
        self.with_lru(|lru| {
            format!(
                "WorkingMemory(len={}, capacity={})",
                lru.len(),
                lru.capacity()
            )
        })
    }
}

/// One remembered event of an agent (a read-only copy).
#[pyclass(module = "llm_agent_runtime", name = "Episode", frozen, eq)]
#[derive(PartialEq)]
pub struct PyEpisode {
    inner: Episode,
}

#[pymethods]
impl PyEpisode {
    /// Store-wide unique id, increasing with insertion.
    #[getter]
    fn id(&self) -> u64 {
        self.inner.id
    }
    /// The agent it belongs to.
    #[getter]
    fn agent_id(&self) -> &str {
        &self.inner.agent_id
    }
    /// What happened.
    #[getter]
    fn content(&self) -> &str {
        &self.inner.content
    }
    /// How much it matters, in [0, 1].
    #[getter]
    fn importance(&self) -> f64 {
        self.inner.importance
    }
    /// Clock time (seconds) it was added.
    #[getter]
    fn created_at(&self) -> f64 {
        self.inner.created_at
    }
    /// Clock time (seconds) of its last recall, or None.
    #[getter]
    fn last_recalled_at(&self) -> Option<f64> {
        self.inner.last_recalled_at
    }
    /// Times it has been recalled (this recall included).
    #[getter]
    fn recall_count(&self) -> u64 {
        self.inner.recall_count
    }
    /// Its embedding (L2-normalized float32 array), or None.
    #[getter]
    fn embedding<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<Bound<'py, numpy::PyArray1<f32>>>> {
        args::load_numpy(py)?;
        Ok(self.inner.embedding.clone().map(|v| v.into_pyarray(py)))
    }

    /// Short, as Python writes strings and floats: the content (which may be long) cut to 60
    /// characters, `...` marking the cut.
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let shown = |text: &str| -> PyResult<String> {
            let cut: String = text.chars().take(60).collect();
            let mut repr = PyString::new(py, &cut).repr()?.to_string();
            if cut.len() < text.len() {
                repr.push_str("...");
            }
            Ok(repr)
        };
        Ok(format!(
            "Episode(id={}, agent_id={}, importance={}, recall_count={}, content={})",
            self.inner.id,
            shown(&self.inner.agent_id)?,
            PyFloat::new(py, self.inner.importance).repr()?,
            self.inner.recall_count,
            shown(&self.inner.content)?
        ))
    }

    /// Itself: a read-only copy already.
    fn __copy__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Itself: a read-only copy already.
    fn __deepcopy__(slf: Py<Self>, _memo: &Bound<'_, PyAny>) -> Py<Self> {
        slf
    }
}

/// A float's key for hashing, consistent with `==`: 0.0 and -0.0 are equal, so they hash
/// alike. (Policies hold no NaN: their constructors refuse it.)
fn float_key(x: f64) -> u64 {
    if x == 0.0 {
        0
    } else {
        x.to_bits()
    }
}

/// How episode importance fades with age.
///
/// Immutable; equal policies compare equal and hash alike.
#[pyclass(module = "llm_agent_runtime", name = "DecayPolicy", frozen, eq, hash)]
#[derive(PartialEq)]
pub struct PyDecayPolicy {
    inner: Decay,
}

impl Hash for PyDecayPolicy {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let Decay::Exponential { half_life_hours } = self.inner;
        float_key(half_life_hours).hash(state);
    }
}

#[pymethods]
impl PyDecayPolicy {
    /// Importance halves every `half_life_hours`.
    ///
    /// Raises:
    ///     MemoryStoreError: `half_life_hours` is not a positive number.
    #[staticmethod]
    fn exponential(half_life_hours: &Bound<'_, PyAny>) -> PyResult<Self> {
        let half_life_hours = memory_real(
            half_life_hours,
            "half_life_hours",
            "half_life_hours must be a positive number",
        )?;
        Ok(Self {
            inner: episodic::exponential(half_life_hours)?,
        })
    }

    fn __repr__(&self) -> String {
        let Decay::Exponential { half_life_hours } = self.inner;
        format!("DecayPolicy.exponential({half_life_hours})")
    }

    /// Pickles as the call that makes it.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (f64,))> {
        let Decay::Exponential { half_life_hours } = slf.get().inner;
        Ok((slf.get_type().getattr("exponential")?, (half_life_hours,)))
    }

    /// Itself: it never changes.
    fn __copy__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Itself: it never changes.
    fn __deepcopy__(slf: Py<Self>, _memo: &Bound<'_, PyAny>) -> Py<Self> {
        slf
    }
}

/// How recalled episodes are ranked.
///
/// Immutable; equal policies compare equal and hash alike.
#[pyclass(module = "llm_agent_runtime", name = "RecallPolicy", frozen, eq, hash)]
#[derive(PartialEq)]
pub struct PyRecallPolicy {
    inner: Recall,
}

impl Hash for PyRecallPolicy {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self.inner {
            Recall::Importance => 0u8.hash(state),
            Recall::Hybrid {
                recency_weight,
                frequency_weight,
            } => {
                1u8.hash(state);
                float_key(recency_weight).hash(state);
                float_key(frequency_weight).hash(state);
            }
        }
    }
}

#[pymethods]
impl PyRecallPolicy {
    /// Rank by (decayed) importance; the default.
    #[staticmethod]
    fn importance() -> Self {
        Self {
            inner: Recall::Importance,
        }
    }

    /// Rank by decayed importance + `recency_weight / (1 + age_hours)` +
    /// `frequency_weight * recall_count / (1 + recall_count)`.
    ///
    /// Raises:
    ///     MemoryStoreError: a weight is negative or not finite.
    #[staticmethod]
    fn hybrid(
        recency_weight: &Bound<'_, PyAny>,
        frequency_weight: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let recency_weight = memory_real(
            recency_weight,
            "recency_weight",
            "recency_weight must be >= 0",
        )?;
        let frequency_weight = memory_real(
            frequency_weight,
            "frequency_weight",
            "frequency_weight must be >= 0",
        )?;
        Ok(Self {
            inner: episodic::hybrid(recency_weight, frequency_weight)?,
        })
    }

    fn __repr__(&self) -> String {
        match self.inner {
            Recall::Importance => "RecallPolicy.importance()".into(),
            Recall::Hybrid {
                recency_weight,
                frequency_weight,
            } => format!("RecallPolicy.hybrid({recency_weight}, {frequency_weight})"),
        }
    }

    /// Pickles as the call that makes it.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let (kind, py) = (slf.get_type(), slf.py());
        Ok(match slf.get().inner {
            Recall::Importance => (kind.getattr("importance")?, PyTuple::empty(py)),
            Recall::Hybrid {
                recency_weight,
                frequency_weight,
            } => (
                kind.getattr("hybrid")?,
                PyTuple::new(py, [recency_weight, frequency_weight])?,
            ),
        })
    }

    /// Itself: it never changes.
    fn __copy__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Itself: it never changes.
    fn __deepcopy__(slf: Py<Self>, _memo: &Bound<'_, PyAny>) -> Py<Self> {
        slf
    }
}

/// Per-agent episodic memory with decay, ranked recall and per-agent capacity.
///
/// With an embedder (any object with ``embed(texts) -> float32 array (n, dim)``, e.g.
/// `HashingEmbedder`), each episode's content is embedded when added, and
/// ``recall(agent_id, limit, query=...)`` ranks by
/// ``policy score + similarity_weight * cos(query, episode embedding)`` (0 for an episode
/// without an embedding). Episodes may also be given an embedding explicitly.
///
/// Args:
///     decay: optional `DecayPolicy` fading importance with age.
///     recall_policy: `RecallPolicy.importance()` (default) or `RecallPolicy.hybrid(...)`.
///     per_agent_capacity: most episodes per agent; adding one beyond it evicts the
///         lowest-importance older episode (the oldest among equals), never the new one.
///     clock: callable returning the time in seconds (default: wall-clock time); inject
///         one to make decay testable. A NaN or infinite time makes `add_episode` and
///         `recall` raise `MemoryStoreError`.
///     embedder: embeds episode contents and text queries (optional): an object with an
///         `embed(texts)` method, such as `HashingEmbedder()`.
///     similarity_weight: weight of the query similarity in recall scores (>= 0).
///
/// An agent id that is not valid Unicode (a lone surrogate) cannot be stored: `add_episode`
/// refuses it, and the methods reading an agent's episodes find none under it.
///
/// Threads share a store (its calls lock it, with the GIL released while they work). A
/// ``fork()`` taken while another thread is inside such a call copies its lock held into
/// the child, where no thread will release it: the child's first call on the store then
/// waits for good. Fork before starting such threads, or use the "spawn" or "forkserver"
/// start method.
///
/// Raises:
///     MemoryStoreError: `per_agent_capacity` is not positive (or too large, or a bool),
///         `similarity_weight` is negative or not finite (a number beyond the float range
///         included), or `embedder` has no `embed` method (a dimension, a model name, or an
///         embedder class rather than an instance) or an async one (the store calls it
///         synchronously).
///     TypeError: `clock` cannot be called (a `Clock` object such as `FakeClock()`: pass its
///         `now` method; or a time, `time.time()` for `time.time`).
#[pyclass(module = "llm_agent_runtime", name = "EpisodicStore", frozen)]
pub struct PyEpisodicStore {
    /// Taken with [`sync::lock`] (or inside `run_detached`): no Python code runs under it.
    inner: Mutex<Episodes>,
    /// The clock and the embedder: behind a lock so that `__clear__` can drop them (a
    /// reference cycle through them, say a clock that is a bound method of the store's
    /// owner, must be collectable). Held only to clone or take them, with the GIL.
    hooks: Mutex<Hooks>,
}

/// The Python objects an episodic store calls.
struct Hooks {
    clock: Option<Py<PyAny>>,
    embedder: Option<Py<PyAny>>,
}

/// A vector given as a 1-D numpy float32 array or any sequence of real numbers.
///
/// Refused, never converted: a numpy masked array that masks a value (see
/// [`args::not_masked`]), bytes, and a sequence or array holding anything but real numbers
/// (see [`not_real`]): bools, complex numbers, text.
fn as_vector(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f32>> {
    args::load_numpy(value.py())?;
    let value = &buffer_as_array(value)?;
    args::not_masked(value, what, CoreError::Memory)?;
    if let Ok(array) = value.extract::<numpy::PyReadonlyArray1<'_, f32>>() {
        return Ok(array.as_array().to_vec());
    }
    // Bytes are a sequence of ints too: undecoded text would silently become a vector.
    if value.is_instance_of::<PyBytes>() || value.is_instance_of::<PyByteArray>() {
        return Err(CoreError::Memory(format!(
            "{what} must be a 1-D float32 array or a sequence of numbers, got {} (decode text first)",
            value.get_type().name()?
        ))
        .into());
    }
    if let Some(found) = not_real(value, 1, what)? {
        return Err(not_real_numbers(
            what,
            "hold",
            "a 1-D float32 array or a sequence of numbers",
            &found,
        ));
    }
    let not_numbers = || -> PyErr {
        CoreError::Memory(format!(
            "{what} must be a 1-D float32 array or a sequence of numbers"
        ))
        .into()
    };
    let py = value.py();
    match args::sequence_of(value, CoreError::Memory, what, |_, item| {
        item.extract::<f32>()
    }) {
        Ok(Some(values)) => Ok(values),
        Err(e) if raised_as_it_is(py, &e) => Err(e),
        _ => Err(not_numbers()),
    }
}

/// Whether `e`, raised while a vector was read, is raised as it is rather than as "must be
/// a sequence of numbers": the store's own error (a vector too long for memory) and what a
/// signal handler raises (`KeyboardInterrupt`, no `Exception`).
fn raised_as_it_is(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<crate::errors::MemoryStoreError>(py)
        || !e.is_instance_of::<pyo3::exceptions::PyException>(py)
}

/// `value` as a numpy array when it is a `memoryview` (read by its format, as numpy reads
/// it: its rows, of more than one dimension, cannot be iterated); else `value` itself.
///
/// # Errors
/// `MemoryStoreError` for a released view; what numpy raises for a buffer it cannot read.
fn buffer_as_array<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if !value.is_instance_of::<PyMemoryView>() {
        return Ok(value.clone());
    }
    let py = value.py();
    // numpy takes a released view for an object, not a buffer.
    if value.getattr(pyo3::intern!(py, "nbytes")).is_err() {
        return Err(CoreError::Memory(
            "a released memoryview holds no numbers: pass the vector, or a view of it".into(),
        )
        .into());
    }
    py.import(pyo3::intern!(py, "numpy"))?
        .call_method1(pyo3::intern!(py, "asarray"), (value,))
}

/// What `value`, given as `what` where a vector of numbers is expected (`levels` 1) or rows
/// of them (`levels` 2) and no float32 array, holds that is no real number, described for
/// an error; None when it holds none. Told before any conversion, which would take them:
/// a float conversion reads a bool (Python's or numpy's) as 0.0 or 1.0, and keeps the real
/// part of a complex number (numpy's with only a warning), a direction never given. Such
/// is a numpy array of bools, text, dates or complex numbers (named by its dtype), or a
/// sequence (an object array too) with a bool, a complex number or a text item. A value
/// that is no sequence holds none (the conversion refuses it).
///
/// # Errors
/// `MemoryStoreError` for an item that is a numpy masked array masking a value (see
/// [`args::not_masked`]); what iterating `value` raises.
fn not_real(value: &Bound<'_, PyAny>, levels: u32, what: &str) -> PyResult<Option<String>> {
    args::load_numpy(value.py())?;
    let items = if let Ok(array) = value.cast::<PyUntypedArray>() {
        match array.dtype().kind() {
            b'i' | b'u' | b'f' => return Ok(None),
            b'c' => return Ok(Some(COMPLEX.to_owned())),
            // Only an array of Python objects holds items of other types.
            b'O' => value.try_iter()?,
            _ => return Ok(Some(array_of(array))),
        }
    } else if value.is_instance_of::<PyString>() {
        return Ok(None);
    } else if let Ok(sequence) = value.cast::<PySequence>() {
        sequence.try_iter()?
    } else {
        return Ok(None);
    };
    // Each item is walked before any is stored: a sequence too long to store (`range(2**62)`)
    // is refused first, as its walk would not end.
    crate::errors::check_room_for::<f32>(CoreError::Memory, value.len().unwrap_or(0), what)?;
    let py = value.py();
    for (at, item) in items.enumerate() {
        args::check_signals_at(py, at)?;
        let item = item?;
        // A float (the usual item) is told by its type pointer.
        if item.is_exact_instance_of::<PyFloat>() {
            continue;
        }
        if let Some(found) = not_a_real_item(&item, what)? {
            return Ok(Some(found));
        }
        if levels > 1 {
            if let Some(found) = not_real(&item, levels - 1, what)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

/// What [`not_real`] says of a complex number.
const COMPLEX: &str = "complex numbers (their imaginary parts would be dropped)";

/// [`not_real`] for one item that is no plain float: a description of it when it is a bool,
/// a complex number or text; None otherwise.
///
/// # Errors
/// `MemoryStoreError` for a numpy masked array masking a value.
fn not_a_real_item(item: &Bound<'_, PyAny>, what: &str) -> PyResult<Option<String>> {
    if item.is_exact_instance_of::<PyInt>() {
        return Ok(None);
    }
    if args::is_complex(item) {
        return Ok(Some(COMPLEX.to_owned()));
    }
    // numpy's `str_` and `bytes_` are subclasses of `str` and `bytes`.
    if args::is_bool(item) || item.is_instance_of::<PyString>() || item.is_instance_of::<PyBytes>()
    {
        return Ok(Some(args::describe_value(item)));
    }
    if args::is_array_subclass(item) {
        args::not_masked(item, &format!("an item of {what}"), CoreError::Memory)?;
    }
    Ok(None)
}

/// A numpy array of no real numbers, described by its dtype: "an array of dtype bool".
#[cold]
#[inline(never)]
fn array_of(array: &Bound<'_, PyUntypedArray>) -> String {
    let dtype = array
        .dtype()
        .str()
        .map_or_else(|_| "?".to_owned(), |name| name.to_string());
    format!("an array of dtype {dtype} (it is refused, not converted)")
}

/// The `MemoryStoreError` of [`not_real`]'s finding: "`what` must `verb` real numbers
/// (`form`), got `found`".
#[cold]
#[inline(never)]
fn not_real_numbers(what: &str, verb: &str, form: &str, found: &str) -> PyErr {
    CoreError::Memory(format!(
        "{what} must {verb} real numbers ({form}), got {found}"
    ))
    .into()
}

/// The error for a clock that returned `value`, which is not a number.
#[cold]
fn not_a_time(value: &Bound<'_, PyAny>) -> PyErr {
    // Its type and repr cut short: a clock may return anything.
    CoreError::Memory(format!(
        "the clock returned a {}: it must return a finite number of seconds",
        args::describe_value(value)
    ))
    .into()
}

impl PyEpisodicStore {
    fn from_parts(store: Episodes, clock: Option<Py<PyAny>>, embedder: Option<Py<PyAny>>) -> Self {
        Self {
            inner: Mutex::new(store),
            hooks: Mutex::new(Hooks { clock, embedder }),
        }
    }

    /// Runs `f` on the episodes, locked (see [`sync`]).
    fn locked<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Episodes) -> R + Send,
    ) -> PyResult<R> {
        sync::lock(py, &self.inner, f)
    }

    /// The clock, if any (a new reference: it is called with no lock held).
    fn clock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.hooks.lock().clock.as_ref().map(|c| c.clone_ref(py))
    }

    /// A vector the caller gave as argument `name` (`as_vector`), refused when the store's
    /// embedder says it makes another length (`described`, in the message).
    fn given_vector(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        name: &str,
        described: &str,
    ) -> PyResult<Vec<f32>> {
        let vector = as_vector(value, name)?;
        if let Some(embedder) = self.embedder(py) {
            check_embedder_dim(embedder.bind(py), vector.len(), |len| {
                format!("{described} has {len} values")
            })?;
        }
        Ok(vector)
    }

    /// The embedder, if any (a new reference: it is called with no lock held).
    fn embedder(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.hooks.lock().embedder.as_ref().map(|e| e.clone_ref(py))
    }

    /// The clock's time in seconds.
    ///
    /// A NaN or infinite time is refused with `MemoryStoreError`: it would make every score
    /// NaN and export as `null`, which `from_json` cannot read back. So is a value that is not
    /// a number (such as the text "12:00"), which would otherwise raise the built-in
    /// `TypeError`.
    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        match self.clock(py) {
            Some(clock) => {
                let value = clock.call0(py)?;
                let value = value.bind(py);
                if args::is_bool(value) || args::is_complex(value) {
                    return Err(not_a_time(value));
                }
                let now = args::real(value, "the clock's time", |e| {
                    CoreError::Memory(format!("the clock returned {e}"))
                })
                .map_err(|e| {
                    if e.is_instance_of::<PyTypeError>(py) {
                        not_a_time(value)
                    } else {
                        e
                    }
                })?;
                if now.is_finite() {
                    Ok(now)
                } else {
                    Err(CoreError::Memory(format!(
                        "the clock returned {now}: it must return a finite number of seconds"
                    ))
                    .into())
                }
            }
            None => Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())),
        }
    }

    /// Runs `f`, a pass over the agent's episodes (a sort, a search), on them locked and
    /// with the GIL released; `None` (an id that is not valid Unicode, which no agent can
    /// have) has none.
    fn with_episodes<T: Send>(
        &self,
        py: Python<'_>,
        agent_id: Option<&str>,
        f: impl FnOnce(&[Episode]) -> T + Send,
    ) -> PyResult<T> {
        match agent_id {
            Some(agent_id) => {
                sync::lock_detached(py, &self.inner, |episodes| f(episodes.episodes(agent_id)))
            }
            None => Ok(f(&[])),
        }
    }

    /// The embedder's vector for `text`: None without an embedder or when it is all zeros
    /// (a text with nothing to embed). A row of no values is an error: the embedder is broken,
    /// and taking it as "nothing to embed" would turn similarity recall off unseen.
    fn embed_text(&self, py: Python<'_>, text: &str) -> PyResult<Option<Vec<f32>>> {
        let Some(embedder) = self.embedder(py) else {
            return Ok(None);
        };
        let rows = embedder.call_method1(py, "embed", (vec![text],))?;
        let rows = rows.bind(py);
        if rows.hasattr(pyo3::intern!(py, "__await__"))? {
            // Closed, so it is not reported as "never awaited" besides this error.
            if rows.hasattr(pyo3::intern!(py, "close"))? {
                rows.call_method0(pyo3::intern!(py, "close"))?;
            }
            return Err(CoreError::Memory(
                "embedder.embed returned an awaitable: the store calls embed synchronously \
                 (wrap an async embedder in a sync one)"
                    .into(),
            )
            .into());
        }
        args::load_numpy(py)?;
        let rows = &buffer_as_array(rows)?;
        args::not_masked(
            rows,
            "the result of embedder.embed([text])",
            CoreError::Memory,
        )?;
        let row = match rows.extract::<numpy::PyReadonlyArray2<'_, f32>>() {
            Ok(array) if array.shape()[0] == 1 => array.as_array().row(0).to_vec(),
            _ => {
                if let Some(found) = not_real(rows, 2, "the result of embedder.embed([text])")? {
                    return Err(not_real_numbers(
                        "embedder.embed([text])",
                        "return",
                        "a float32 array of shape (1, dim)",
                        &found,
                    ));
                }
                let what = "the result of embedder.embed([text])";
                let read = args::sequence_of(rows, CoreError::Memory, what, |_, row| {
                    args::sequence_of(&row, CoreError::Memory, what, |_, x| x.extract::<f32>())
                });
                match read {
                    Ok(Some(mut list)) if list.len() == 1 => {
                        list.swap_remove(0).unwrap_or_default()
                    }
                    Err(e) if raised_as_it_is(py, &e) => return Err(e),
                    // Told below: "must return one row".
                    _ => Vec::new(),
                }
            }
        };
        if row.is_empty() {
            return Err(CoreError::Memory(
                "embedder.embed([text]) must return one row: a float32 array of shape \
                 (1, dim), dim >= 1"
                    .into(),
            )
            .into());
        }
        // Taken, the store's JSON would not load back with the embedder that made it.
        if let Some(dim) = told_dim(embedder.bind(py)).filter(|dim| *dim != row.len()) {
            return Err(CoreError::Memory(format!(
                "embedder.embed([text]) returned a row of {} values, but the embedder's dim \
                 is {dim}",
                row.len()
            ))
            .into());
        }
        Ok(row.iter().any(|x| *x != 0.0).then_some(row))
    }
}

/// A `clock` argument: None, or something to call for the time. A `Clock` object (such as the
/// `FakeClock` the orchestration primitives take) or a time read too early (`time.time()`
/// rather than `time.time`) is refused now, not at the first episode as a bare `TypeError`.
fn clock_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
    if value.is_none() {
        return Ok(None);
    }
    if !value.is_callable() {
        let hint = if value.hasattr(pyo3::intern!(value.py(), "now"))? {
            " (for a Clock, pass its now method)"
        } else {
            ""
        };
        return Err(PyTypeError::new_err(format!(
            "clock must be a callable returning the time in seconds, such as time.time, got \
             {}{hint}",
            args::describe_value(value)
        )));
    }
    Ok(Some(value.clone().unbind()))
}

/// Refuses an embedder whose `dim` (optional in the Embedder protocol: one without an int
/// `dim` is taken as it is) differs from the length of the store's embeddings: every recall
/// by similarity, and every episode it embeds, would fail.
///
/// # Errors
/// `MemoryStoreError` naming both lengths.
fn check_embedder_dim(
    embedder: &Bound<'_, PyAny>,
    len: usize,
    what: impl FnOnce(usize) -> String,
) -> PyResult<()> {
    match told_dim(embedder) {
        Some(dim) if dim != len => Err(CoreError::Memory(format!(
            "the embedder makes embeddings of dimension {dim}, {}",
            what(len)
        ))
        .into()),
        _ => Ok(()),
    }
}

/// The dimension `embedder` says it makes (its optional `dim`: any int, numpy's too by
/// `__index__`, but a bool), if it says one.
fn told_dim(embedder: &Bound<'_, PyAny>) -> Option<usize> {
    embedder
        .getattr(pyo3::intern!(embedder.py(), "dim"))
        .ok()
        .filter(|dim| !args::is_bool(dim))
        .and_then(|dim| dim.extract::<usize>().ok())
}

/// An `embedder` argument: None, or an instance with a callable `embed` (a dimension, a
/// model name or an embedder class given instead is refused now, not at the first episode
/// as a bare `AttributeError` or `TypeError`).
fn embedder_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
    if value.is_none() {
        return Ok(None);
    }
    let embed = if value.is_instance_of::<PyType>() {
        None
    } else {
        value
            .getattr(pyo3::intern!(value.py(), "embed"))
            .ok()
            .filter(|embed| embed.is_callable())
    };
    let Some(embed) = embed else {
        return Err(CoreError::Memory(format!(
            "embedder must be an Embedder instance (an object with an embed(texts) method), \
             got {}",
            args::short_repr(value)
        ))
        .into());
    };
    static IS_ASYNC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let is_async = IS_ASYNC.import(value.py(), "inspect", "iscoroutinefunction")?;
    if is_async.call1((embed,))?.is_truthy()? {
        return Err(CoreError::Memory(
            "embedder.embed is async: the store calls embed synchronously (wrap an async \
             embedder in a sync one)"
                .into(),
        )
        .into());
    }
    Ok(Some(value.clone().unbind()))
}

/// A `decay` argument: None (no decay) or a `DecayPolicy`. Anything else is a `TypeError`
/// naming the argument, with the way to make a policy; a number too, which says no policy
/// (a half-life in hours? a factor?): PyO3's own wording names neither.
fn decay_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<Decay>> {
    if value.is_none() {
        return Ok(None);
    }
    match value.cast::<PyDecayPolicy>() {
        Ok(policy) => Ok(Some(policy.get().inner)),
        Err(_) => Err(not_a_policy(
            value,
            "decay",
            "a DecayPolicy or None",
            "DecayPolicy.exponential(half_life_hours)",
        )),
    }
}

/// A `recall_policy` argument: None (by importance) or a `RecallPolicy`; anything else is a
/// `TypeError` naming the argument, as for [`decay_arg`].
fn recall_policy_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<Recall>> {
    if value.is_none() {
        return Ok(None);
    }
    match value.cast::<PyRecallPolicy>() {
        Ok(policy) => Ok(Some(policy.get().inner)),
        Err(_) => Err(not_a_policy(
            value,
            "recall_policy",
            "a RecallPolicy or None",
            "RecallPolicy.importance() or RecallPolicy.hybrid(recency_weight, frequency_weight)",
        )),
    }
}

/// The `TypeError` of a policy argument `name` given `value`, which is not `what`: "name
/// must be what, got <value> (make one with `how`)".
#[cold]
#[inline(never)]
fn not_a_policy(value: &Bound<'_, PyAny>, name: &str, what: &str, how: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "{name} must be {what}, got {} (make one with {how})",
        args::describe_value(value)
    ))
}

#[pymethods]
impl PyEpisodicStore {
    #[new]
    #[pyo3(signature = (
        decay=None,
        recall_policy=None,
        per_agent_capacity=None,
        clock=None,
        embedder=None,
        similarity_weight=1.0
    ))]
    fn new(
        #[pyo3(from_py_with = decay_arg)] decay: Option<Decay>,
        #[pyo3(from_py_with = recall_policy_arg)] recall_policy: Option<Recall>,
        #[pyo3(from_py_with = per_agent_capacity_arg)] per_agent_capacity: Option<usize>,
        #[pyo3(from_py_with = clock_arg)] clock: Option<Py<PyAny>>,
        #[pyo3(from_py_with = embedder_arg)] embedder: Option<Py<PyAny>>,
        #[pyo3(from_py_with = similarity_weight_arg)] similarity_weight: f64,
    ) -> PyResult<Self> {
        let store = Episodes::new(
            decay,
            recall_policy.unwrap_or(Recall::Importance),
            per_agent_capacity,
        )?
        .with_similarity_weight(similarity_weight)?;
        Ok(Self::from_parts(store, clock, embedder))
    }

    /// Whether the store has an embedder (so `recall` accepts a text query).
    #[getter]
    fn has_embedder(&self) -> bool {
        self.hooks.lock().embedder.is_some()
    }

    /// Lets the cycle collector see the clock and the embedder, which may refer back to
    /// this store (a bound method of the object that owns it).
    ///
    /// Never blocks: when the lock is held (it never is while the collector runs), they go
    /// unreported, so this collection keeps them.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(hooks) = self.hooks.try_lock() {
            visit.call(&hooks.clock)?;
            visit.call(&hooks.embedder)?;
        }
        Ok(())
    }

    /// Drops the clock and the embedder, breaking a reference cycle through them.
    fn __clear__(&self) {
        let taken = self
            .hooks
            .try_lock()
            .map(|mut hooks| (hooks.clock.take(), hooks.embedder.take()));
        // Dropped after the lock is released: their __del__ may use this store.
        drop(taken);
    }

    /// Adds an episode and returns its id.
    ///
    /// Args:
    ///     agent_id: the agent it belongs to.
    ///     content: what happened.
    ///     importance: in [0, 1].
    ///     embedding: its vector; when None, the store's embedder (if any) embeds `content`.
    ///
    /// Raises:
    ///     MemoryStoreError: `importance` is outside [0, 1]; an embedding (given, or the
    ///         embedder's) that is not finite, zero, or of another length than the store's
    ///         embeddings (or than the embedder's `dim`); the clock returned a NaN or
    ///         infinite time (or a number beyond the float range, or not a number);
    ///         `agent_id` or `content` is not valid Unicode (a lone surrogate); the ids are
    ///         exhausted (`next_id` reached 2**64 - 1).
    #[pyo3(signature = (agent_id, content, importance, embedding=None))]
    fn add_episode(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = agent_id_arg)] agent_id: PyBackedStr,
        #[pyo3(from_py_with = content_arg)] content: PyBackedStr,
        importance: &Bound<'_, PyAny>,
        embedding: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        // Checked before the embedder (maybe a paid remote call) and the clock are asked.
        let importance = episodic::checked_importance(memory_real(
            importance,
            "importance",
            "importance must be in [0, 1]",
        )?)?;
        let embedding = match embedding {
            // Of another length than the embedder's, it would fail every later embedding and
            // every recall by text (the store's first embedding sets the length).
            Some(v) => Some(self.given_vector(py, v, "embedding", "the given embedding")?),
            None => self.embed_text(py, &content)?,
        };
        let now = self.now(py)?;
        let (agent_id, content) = (&*agent_id, &*content);
        Ok(self.locked(py, |episodes| {
            episodes.add(agent_id, content, importance, now, embedding.as_deref())
        })??)
    }

    /// The agent's `limit` best episodes, best first (equal scores in insertion order,
    /// oldest first); each one's recall count goes up.
    ///
    /// Args:
    ///     agent_id: whose episodes.
    ///     limit: most episodes returned; a huge int means all of them.
    ///     query: text (embedded with the store's embedder) or a vector; when given, scores
    ///         become `policy score + similarity_weight * cos(query, episode)`. A text with
    ///         nothing to embed ranks by the policy alone.
    ///     counted: False to rank without counting a recall: the caller then marks those
    ///         it uses (`mark_recalled`), as a prompt that shows only those that fit does.
    ///
    /// Raises:
    ///     MemoryStoreError: a negative `limit`; a text query without an embedder, or not
    ///         valid Unicode; a query vector (given, or the embedder's) that is not finite,
    ///         zero, or of another length than the episodes' embeddings (or than the
    ///         embedder's `dim`); the clock returned a NaN or infinite time, or
    ///         not a number.
    #[pyo3(signature = (agent_id, limit=3, query=None, *, counted=true))]
    fn recall(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
        #[pyo3(from_py_with = limit_arg)] limit: usize,
        query: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = counted_arg)] counted: bool,
    ) -> PyResult<Vec<PyEpisode>> {
        let query = match query {
            None => None,
            Some(q) => match q.cast::<PyString>() {
                Ok(text) => {
                    let text = args::text_of(text, CoreError::Memory)?;
                    if !self.has_embedder() {
                        return Err(CoreError::Memory(
                            "a text query needs an embedder: EpisodicStore(embedder=...)".into(),
                        )
                        .into());
                    }
                    self.embed_text(py, text)?
                }
                // Checked even while no episode has an embedding to compare it with.
                Err(_) => Some(self.given_vector(py, q, "query", "the query vector")?),
            },
        };
        let now = self.now(py)?;
        let found = run_detached(py, || {
            let mut episodes = self.inner.lock();
            match agent_id.as_deref() {
                Some(agent_id) => episodes.recall(agent_id, limit, now, query.as_deref(), counted),
                // No agent has this id: the arguments are checked as for any absent agent.
                None => episodes
                    .recall_query(now, query.as_deref())
                    .map(|_| Vec::new()),
            }
        })?;
        Ok(found.into_iter().map(|inner| PyEpisode { inner }).collect())
    }

    /// Marks the agent's episodes of `ids` recalled now (their recall counts go up, and
    /// their `last_recalled_at`); returns how many it found (an id may be gone since).
    ///
    /// Raises:
    ///     MemoryStoreError: an id is not an int >= 0 and at most 2**64 - 1; the clock
    ///         returned a NaN or infinite time, or not a number.
    ///     TypeError: `ids` is a `str` or bytes (not a list of ids, though it iterates), or
    ///         not an iterable of ints.
    fn mark_recalled(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
        #[pyo3(from_py_with = episode_ids_arg)] ids: Vec<u64>,
    ) -> PyResult<usize> {
        let Some(agent_id) = agent_id else {
            return Ok(0);
        };
        let now = self.now(py)?;
        Ok(self.locked(py, |episodes| episodes.mark_recalled(&agent_id, &ids, now))??)
    }

    /// The agent's episodes in insertion order.
    fn episodes(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
    ) -> PyResult<Vec<PyEpisode>> {
        self.with_episodes(py, agent_id.as_deref(), |eps| {
            eps.iter().map(|e| PyEpisode { inner: e.clone() }).collect()
        })
    }

    /// Removes the agent's episodes (everyone's when `agent_id` is None); returns how many.
    #[pyo3(signature = (agent_id=None))]
    fn clear(&self, py: Python<'_>, agent_id: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        // Freeing the episodes grows with their count: done with the GIL released.
        match agent_id.map(optional_agent_id).transpose()? {
            None => sync::lock_detached(py, &self.inner, |episodes| episodes.clear(None)),
            Some(Some(agent_id)) => {
                sync::lock_detached(py, &self.inner, |episodes| episodes.clear(Some(&agent_id)))
            }
            // An id that is not valid Unicode: no agent has it.
            Some(None) => Ok(0),
        }
    }

    /// Episodes stored for the agent.
    fn episode_count_for(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
    ) -> PyResult<usize> {
        match agent_id.as_deref() {
            Some(agent_id) => self.locked(py, |episodes| episodes.agent_len(agent_id)),
            None => Ok(0),
        }
    }

    /// Sorted ids of agents with at least one episode.
    fn agents_with_episodes(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.locked(py, |episodes| {
            episodes.agent_ids().map(str::to_owned).collect()
        })
    }

    /// Byte lengths of the agent's episode contents, in insertion order.
    fn content_lengths(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
    ) -> PyResult<Vec<usize>> {
        self.with_episodes(py, agent_id.as_deref(), |eps| {
            eps.iter().map(|e| e.content.len()).collect()
        })
    }

    /// Sum of the byte lengths of the agent's episode contents.
    fn total_content_bytes(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
    ) -> PyResult<usize> {
        self.with_episodes(py, agent_id.as_deref(), |eps| {
            eps.iter().map(|e| e.content.len()).sum()
        })
    }

    /// Mean byte length of the agent's episode contents (0.0 with none).
    fn avg_content_length(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
    ) -> PyResult<f64> {
        self.with_episodes(py, agent_id.as_deref(), |eps| {
            if eps.is_empty() {
                0.0
            } else {
                eps.iter().map(|e| e.content.len()).sum::<usize>() as f64 / eps.len() as f64
            }
        })
    }

    /// Byte length of the agent's longest episode (0 with none).
    fn max_content_length(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
    ) -> PyResult<usize> {
        self.with_episodes(py, agent_id.as_deref(), |eps| {
            eps.iter().map(|e| e.content.len()).max().unwrap_or(0)
        })
    }

    /// Byte length of the agent's shortest episode (0 with none).
    fn min_content_length(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
    ) -> PyResult<usize> {
        self.with_episodes(py, agent_id.as_deref(), |eps| {
            eps.iter().map(|e| e.content.len()).min().unwrap_or(0)
        })
    }

    /// The agent's episodes with importance above `threshold`.
    ///
    /// Raises:
    ///     MemoryStoreError: `threshold` is NaN (no importance is above it, nor below), or a
    ///         number beyond the float range.
    fn high_importance_count(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
        threshold: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let threshold = memory_real(threshold, "threshold", "threshold must be a float")?;
        if threshold.is_nan() {
            return Err(CoreError::Memory("threshold must be a number, got NaN".into()).into());
        }
        self.with_episodes(py, agent_id.as_deref(), |eps| {
            eps.iter().filter(|e| e.importance > threshold).count()
        })
    }

    /// The agent's contents by descending importance.
    fn episodes_by_importance(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
    ) -> PyResult<Vec<String>> {
        self.with_episodes(py, agent_id.as_deref(), episodic::by_importance)
    }

    /// The agent's episodes whose content contains `needle` (none for a needle that is not
    /// valid Unicode: contents are).
    fn content_contains_count(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = lookup_agent_id_arg)] agent_id: Option<PyBackedStr>,
        #[pyo3(from_py_with = lookup_needle_arg)] needle: Option<PyBackedStr>,
    ) -> PyResult<usize> {
        let Some(needle) = needle else {
            return Ok(0);
        };
        self.with_episodes(py, agent_id.as_deref(), |eps| {
            eps.iter().filter(|e| e.content.contains(&*needle)).count()
        })
    }

    /// The whole store (settings and episodes) as JSON text.
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        run_detached(py, || {
            serde_json::to_string(&*self.inner.lock())
                .map_err(|e| CoreError::Memory(format!("cannot serialize episodes: {e}")))
        })
    }

    /// Rebuilds a store from `to_json()` output (the clock and embedder are not exported:
    /// pass them again).
    ///
    /// The document is checked as the constructor and `add_episode` check their input. An
    /// agent listed with no episodes is dropped (`to_json` never writes one).
    ///
    /// Raises:
    ///     MemoryStoreError: the text is not an exported store (or not valid Unicode), or
    ///         breaks a rule of the store: `per_agent_capacity` 0 (or an agent over it),
    ///         `embedding_dim` 0, a half-life that is not a positive number, a negative or
    ///         non-finite weight, importance outside [0, 1], a non-finite time, an episode
    ///         under another agent's id, ids out of order or shared by two episodes, or
    ///         embeddings that are zero or of different lengths, or an `embedder` whose
    ///         `dim` is not their length. Other embeddings are scaled to unit length, as
    ///         `add_episode` stores them.
    ///     TypeError: `clock` cannot be called (see `EpisodicStore`).
    #[staticmethod]
    #[pyo3(signature = (text, clock=None, embedder=None))]
    fn from_json(
        py: Python<'_>,
        #[pyo3(from_py_with = text_arg)] text: PyBackedStr,
        #[pyo3(from_py_with = clock_arg)] clock: Option<Py<PyAny>>,
        #[pyo3(from_py_with = embedder_arg)] embedder: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let store = run_detached(py, || {
            let store: Episodes = serde_json::from_str(&text)
                .map_err(|e| CoreError::Memory(format!("not an exported episodic store: {e}")))?;
            store
                .validated()
                .map_err(|e| CoreError::Memory(format!("not a valid exported episodic store: {e}")))
        })?;
        if let (Some(embedder), Some(stored)) = (&embedder, store.embedding_dim) {
            check_embedder_dim(embedder.bind(py), stored, |len| {
                format!("the store's have {len}: pass the embedder they were made with")
            })?;
        }
        Ok(Self::from_parts(store, clock, embedder))
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.locked(py, |episodes| episodes.len())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.locked(py, |episodes| {
            format!(
                "EpisodicStore(episodes={}, agents={})",
                episodes.len(),
                episodes.agent_ids().count()
            )
        })
    }
}
