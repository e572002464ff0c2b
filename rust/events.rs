//! The per-event fan-out of the Python `EventBus`: every subscriber queue, then every callback.
//!
//! The runtime emits a few events on every agent step; doing the delivery loop here instead of
//! in a Python method saves a frame and the loop's bytecode per event. The lists are the bus's
//! own, shared: callbacks and queues added or removed in Python are seen at the next event.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyTuple, PyType};
use pyo3::{ffi, PyTraverseError, PyVisit};

/// Delivers events to a list of callbacks and a list of queues (`put_nowait`).
///
/// A callback's result other than None is handed to `schedule`, with the event, which runs it
/// when it is a coroutine (an async callback).
#[pyclass(name = "EventFanout", module = "llm_agent_runtime._core", frozen)]
pub struct PyEventFanout {
    callbacks: Py<PyList>,
    queues: Py<PyList>,
    schedule: Py<PyAny>,
}

#[pymethods]
impl PyEventFanout {
    /// Fans out to `callbacks` and `queues`, passing non-None callback results to `schedule`
    /// (with the event).
    #[new]
    ///
    /// Raises:
    ///     TypeError: `callbacks` or `queues` is not a list.
    fn new(
        #[pyo3(from_py_with = callbacks_arg)] callbacks: Bound<'_, PyList>,
        #[pyo3(from_py_with = queues_arg)] queues: Bound<'_, PyList>,
        schedule: Bound<'_, PyAny>,
    ) -> Self {
        Self {
            callbacks: callbacks.unbind(),
            queues: queues.unbind(),
            schedule: schedule.unbind(),
        }
    }

    /// Puts `event` on every queue, then calls every callback with it, in list order.
    ///
    /// Queues come first so that subscribers see events in emission order: a callback may
    /// emit a follow-up event, which must queue after this one. Each list is read once,
    /// before its deliveries: a callback removed (or added) while the event is delivered
    /// still gets (or does not get) this event, and no other callback is skipped. A callback
    /// or queue that raises does not keep the event from the others: every one gets it,
    /// then the first exception propagates (a later one is logged, with its traceback).
    fn emit(&self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut first_error: Option<PyErr> = None;
        let queues = self.queues.bind(py);
        if !queues.is_empty() {
            let put = pyo3::intern!(py, "put_nowait");
            for queue in snapshot(queues) {
                if let Err(error) = queue.call_method1(put, (event,)) {
                    keep_first(py, &mut first_error, error);
                }
            }
        }
        let schedule = self.schedule.bind(py);
        for callback in snapshot(self.callbacks.bind(py)) {
            let delivered = callback.call1((event,)).and_then(|result| {
                if result.is_none() {
                    Ok(())
                } else {
                    schedule.call1((result, event)).map(drop)
                }
            });
            if let Err(error) = delivered {
                keep_first(py, &mut first_error, error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Builds the event `cls(*fields)` (see `tuple_of`) and delivers it as `emit` does.
    fn emit_new(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = cls_arg)] cls: Bound<'_, PyType>,
        #[pyo3(from_py_with = fields_arg)] fields: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        self.emit(py, tuple_of(&cls, &fields)?.as_any())
    }

    /// Lets the garbage collector see the lists: a callback that refers back to the bus
    /// (a bound method of the runtime, say) makes a cycle through this object.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.callbacks)?;
        visit.call(&self.queues)?;
        visit.call(&self.schedule)
    }
}

/// Keeps `error` as the delivery's error when it is the first; logs a later one (to the
/// `llm_agent_runtime` logger, with its traceback), which would otherwise go unseen.
fn keep_first(py: Python<'_>, first: &mut Option<PyErr>, error: PyErr) {
    if first.is_none() {
        *first = Some(error);
    } else {
        log_later_error(py, &error);
    }
}

/// Logs an event delivery's error that another error of the same event is raised for.
#[cold]
#[inline(never)]
fn log_later_error(py: Python<'_>, error: &PyErr) {
    let logged = (|| -> PyResult<()> {
        let logger = py
            .import("logging")?
            .call_method1("getLogger", ("llm_agent_runtime",))?;
        let value = error.value(py);
        let exc_info = (value.get_type(), value, error.traceback(py));
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("exc_info", exc_info)?;
        logger.call_method(
            "error",
            ("event delivery failed too (an earlier failure on the same event is raised)",),
            Some(&kwargs),
        )?;
        Ok(())
    })();
    if let Err(failed) = logged {
        // Logging itself failed (a broken handler): the hook for unraisable errors has it.
        failed.write_unraisable(py, None);
    }
}

/// The list's items as they are now (one callback, the usual case, needs no allocation).
fn snapshot<'py>(list: &Bound<'py, PyList>) -> Snapshot<'py> {
    if list.len() == 1 {
        Snapshot::One(list.get_item(0).ok())
    } else {
        Snapshot::Many(list.iter().collect::<Vec<_>>().into_iter())
    }
}

/// An iterator over a list's items taken at one moment.
enum Snapshot<'py> {
    One(Option<Bound<'py, PyAny>>),
    Many(std::vec::IntoIter<Bound<'py, PyAny>>),
}

impl<'py> Iterator for Snapshot<'py> {
    type Item = Bound<'py, PyAny>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Snapshot::One(item) => item.take(),
            Snapshot::Many(rest) => rest.next(),
        }
    }
}

/// An instance of `cls`, a subclass of `tuple` (a `NamedTuple`, say), holding `items`.
///
/// What `tuple.__new__(cls, items)` makes, without that call's argument packing and copies:
/// the runtime builds a few such events and results on every step. `cls.__new__` is not
/// called (a `NamedTuple`'s only names the fields).
///
/// Raises:
///     TypeError: `cls` is not a subclass of `tuple`, or one `tuple.__new__` refuses (a
///         struct sequence such as `os.stat_result`, which has a `__new__` of its own).
#[pyfunction]
#[pyo3(name = "tuple_of")]
pub fn py_tuple_of<'py>(
    #[pyo3(from_py_with = cls_arg)] cls: Bound<'py, PyType>,
    #[pyo3(from_py_with = items_arg)] items: Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyTuple>> {
    tuple_of(&cls, &items)
}

/// [`py_tuple_of`] for the caller in Rust, with its arguments of the right types.
///
/// # Errors
/// As `tuple_of`.
pub fn tuple_of<'py>(
    cls: &Bound<'py, PyType>,
    items: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyTuple>> {
    let py = cls.py();
    if !cls.is_subclass_of::<PyTuple>()? {
        return Err(PyTypeError::new_err(format!(
            "tuple_of needs a subclass of tuple, got {}",
            cls.name()?
        )));
    }
    if !made_by_tuple_new(cls)? {
        let name = cls.name()?;
        return Err(PyTypeError::new_err(format!(
            "tuple_of: tuple.__new__({name}) is not safe, use {name}.__new__()"
        )));
    }
    let size = ffi::Py_ssize_t::try_from(items.len())
        .map_err(|_| PyTypeError::new_err("tuple_of: too many items"))?;
    // SAFETY: `cls` is a tuple type, so its `tp_alloc` makes a tuple of `size` empty slots
    // (as `tuple.__new__` does for a subclass); the new object is ours alone (reference count
    // 1), as `PyTuple_SetItem` requires, until each slot is filled with a new reference.
    unsafe {
        let tp = cls.as_type_ptr();
        let alloc = ffi::PyType_GetSlot(tp, ffi::Py_tp_alloc);
        if alloc.is_null() {
            return Err(PyTypeError::new_err("tuple_of: the type has no allocator"));
        }
        let alloc: ffi::allocfunc = std::mem::transmute(alloc);
        let raw = alloc(tp, size);
        if raw.is_null() {
            return Err(PyErr::fetch(py));
        }
        let tuple = Bound::from_owned_ptr(py, raw);
        for (index, item) in (0..size).zip(items.iter()) {
            if ffi::PyTuple_SetItem(raw, index, item.into_ptr()) != 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Ok(tuple.cast_into_unchecked())
    }
}

/// Whether `tuple.__new__(cls, ...)` accepts `cls` (a subclass of `tuple`), by CPython's own
/// rule: past the classes whose `__new__` is written in Python (a `NamedTuple`'s), the
/// nearest base's `__new__` must be tuple's. A struct sequence (`os.stat_result`,
/// `time.struct_time`) has its own: its instances hold hidden fields past their items, which
/// a bare tuple of the items lacks (freeing one would read past its end).
fn made_by_tuple_new(cls: &Bound<'_, PyType>) -> PyResult<bool> {
    let slots = new_slots(cls.py())?;
    let mut tp = cls.as_type_ptr();
    while !tp.is_null() {
        // SAFETY: `PyType_GetSlot` reads a slot of a live type: `cls`, then its bases, which
        // it keeps alive.
        let new = unsafe { ffi::PyType_GetSlot(tp, ffi::Py_tp_new) } as usize;
        if new != slots.python {
            return Ok(new == slots.tuple);
        }
        // SAFETY: as above.
        tp = unsafe { ffi::PyType_GetSlot(tp, ffi::Py_tp_base) }.cast::<ffi::PyTypeObject>();
    }
    Ok(false)
}

/// Two `tp_new` slots, as addresses: `tuple`'s, and that of every class whose `__new__` is
/// written in Python (CPython's `slot_tp_new`).
struct NewSlots {
    tuple: usize,
    python: usize,
}

/// The [`NewSlots`], read once (the second off a class made for it).
fn new_slots(py: Python<'_>) -> PyResult<&'static NewSlots> {
    static SLOTS: PyOnceLock<NewSlots> = PyOnceLock::new();
    SLOTS.get_or_try_init(py, || {
        let probe = py
            .eval(
                c"type('_PythonNew', (), {'__new__': lambda cls: None})",
                None,
                None,
            )?
            .cast_into::<PyType>()?;
        // SAFETY: slots of live types (`tp_new` may be read off a static type since 3.10).
        let (tuple, python) = unsafe {
            (
                ffi::PyType_GetSlot(std::ptr::addr_of_mut!(ffi::PyTuple_Type), ffi::Py_tp_new),
                ffi::PyType_GetSlot(probe.as_type_ptr(), ffi::Py_tp_new),
            )
        };
        Ok::<_, PyErr>(NewSlots {
            tuple: tuple as usize,
            python: python as usize,
        })
    })
}

/// The `callbacks` argument of `EventFanout` (see [`of_type`]).
fn callbacks_arg<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    of_type(value, "callbacks", "a list")
}

/// The `queues` argument of `EventFanout` (see [`of_type`]).
fn queues_arg<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    of_type(value, "queues", "a list")
}

/// The `cls` argument of `tuple_of` and `emit_new` (see [`of_type`]).
fn cls_arg<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyType>> {
    of_type(value, "cls", "a class (a subclass of tuple)")
}

/// The `items` argument of `tuple_of` (see [`of_type`]).
fn items_arg<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    of_type(value, "items", "a tuple")
}

/// The `fields` argument of `emit_new` (see [`of_type`]).
fn fields_arg<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    of_type(value, "fields", "a tuple")
}

/// `value`, the argument `name`, as a `T` (a subclass's instance too); anything else is a
/// `TypeError` naming the argument and `what` it takes (see [`args::wrong_type`]), not
/// PyO3's generic wording.
#[inline]
fn of_type<'py, T: pyo3::type_object::PyTypeCheck>(
    value: &Bound<'py, PyAny>,
    name: &str,
    what: &str,
) -> PyResult<Bound<'py, T>> {
    match value.cast::<T>() {
        Ok(typed) => Ok(typed.clone()),
        Err(_) => Err(crate::args::wrong_type(value, name, what)),
    }
}
