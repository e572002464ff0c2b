//! The per-event fan-out of the Python `EventBus`: every subscriber queue, then every callback.
//!
//! The runtime emits a few events on every agent step; doing the delivery loop here instead of
//! in a Python method saves a frame and the loop's bytecode per event. The lists are the bus's
//! own, shared: callbacks and queues added or removed in Python are seen at the next event.

use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3::{PyTraverseError, PyVisit};

/// Delivers events to a list of callbacks and a list of queues (`put_nowait`).
///
/// A callback's result other than None is handed to `schedule`, which runs it when it is a
/// coroutine (an async callback).
#[pyclass(name = "EventFanout", module = "llm_agent_runtime._core", frozen)]
pub struct PyEventFanout {
    callbacks: Py<PyList>,
    queues: Py<PyList>,
    schedule: Py<PyAny>,
}

#[pymethods]
impl PyEventFanout {
    /// Fans out to `callbacks` and `queues`, passing non-None callback results to `schedule`.
    #[new]
    fn new(
        callbacks: Bound<'_, PyList>,
        queues: Bound<'_, PyList>,
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
    /// then the first exception propagates.
    fn emit(&self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut first_error: Option<PyErr> = None;
        let queues = self.queues.bind(py);
        if !queues.is_empty() {
            let put = pyo3::intern!(py, "put_nowait");
            for queue in snapshot(queues) {
                if let Err(error) = queue.call_method1(put, (event,)) {
                    first_error.get_or_insert(error);
                }
            }
        }
        let schedule = self.schedule.bind(py);
        for callback in snapshot(self.callbacks.bind(py)) {
            let delivered = callback.call1((event,)).and_then(|result| {
                if result.is_none() {
                    Ok(())
                } else {
                    schedule.call1((result,)).map(drop)
                }
            });
            if let Err(error) = delivered {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Lets the garbage collector see the lists: a callback that refers back to the bus
    /// (a bound method of the runtime, say) makes a cycle through this object.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.callbacks)?;
        visit.call(&self.queues)?;
        visit.call(&self.schedule)
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
