//! Walks of Python data for the JSON writers (checkpoint records, tool results).
//!
//! `json` writes a dict key that is no `str` as text (`1` as `"1"`, `None` as `"null"`), so
//! two keys of one dict may be written alike and one of them lost. The writers check the
//! keys of the dicts that have such a key; finding those dicts is a walk of every container
//! in a record, after every write, so it is done here rather than in Python.

use std::collections::HashSet;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::errors::catch_panics;

/// Whether `value` is of a type the walk never looks into (`str`, `int`, `float`, `bool`,
/// `None`; subclasses are looked into, as the Python walk does).
fn is_scalar(value: &Bound<'_, PyAny>) -> bool {
    value.is_exact_instance_of::<PyString>()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_exact_instance_of::<PyFloat>()
        || value.is_exact_instance_of::<PyBool>()
        || value.is_none()
}

/// Each dict in ``value``, or nested in its dicts, lists and tuples, with a key that is not
/// a ``str`` (its type exactly).
///
/// Values that are no containers are skipped at once; any other object (a dataclass, an
/// array) is not looked into. A container that holds itself, or is held twice, is walked
/// once. A dict, list or tuple subclass is walked too: a dict subclass through its own
/// iteration and ``values()``, as Python code walking it would.
///
/// Args:
///     value: the data to walk.
///
/// Returns:
///     list[dict]: the dicts found, parents before what they hold.
///
/// Raises:
///     Exception: whatever a dict subclass's own iteration or ``values()`` raised.
#[pyfunction]
pub fn dicts_with_keys_made_text<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    catch_panics(|| {
        let found = PyList::empty(value.py());
        let mut pending = vec![value.clone()];
        // Walked objects are kept alive until the end: a dict subclass's `values()` may
        // make new objects, whose addresses must not be reused while `seen` holds them.
        let mut walked = Vec::new();
        let mut seen = HashSet::new();
        while let Some(current) = pending.pop() {
            if !seen.insert(current.as_ptr() as usize) {
                continue;
            }
            // Types told by their pointer first: a failed cast builds an error value.
            if current.is_exact_instance_of::<PyDict>() {
                let dict = current.cast_exact::<PyDict>()?;
                // No Python code runs in this loop: the dict cannot change under it.
                let mut flagged = false;
                for (key, item) in dict.iter() {
                    flagged = flagged || !key.is_exact_instance_of::<PyString>();
                    if !is_scalar(&item) {
                        pending.push(item);
                    }
                }
                if flagged {
                    found.append(dict)?;
                }
            } else if current.is_instance_of::<PyDict>() {
                let mut flagged = false;
                for key in current.try_iter()? {
                    if !key?.is_exact_instance_of::<PyString>() {
                        flagged = true;
                        break;
                    }
                }
                if flagged {
                    found.append(&current)?;
                }
                for item in current.call_method0("values")?.try_iter()? {
                    let item = item?;
                    if !is_scalar(&item) {
                        pending.push(item);
                    }
                }
            } else if current.is_instance_of::<PyList>() {
                // Read by index: a list changed by another thread meanwhile ends the loop.
                let list = current.cast::<PyList>()?;
                pending.extend(list.iter().filter(|item| !is_scalar(item)));
            } else if current.is_instance_of::<PyTuple>() {
                let tuple = current.cast::<PyTuple>()?;
                pending.extend(tuple.iter().filter(|item| !is_scalar(item)));
            }
            walked.push(current);
        }
        Ok(found)
    })
}
