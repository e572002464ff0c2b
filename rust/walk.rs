//! Walks of Python data for the JSON writers (checkpoint records, tool results).
//!
//! `json` writes a dict key that is no `str` as text (`1` as `"1"`, `None` as `"null"`), so
//! two keys of one dict may be written alike and one of them lost. The writers check the
//! keys of the dicts that have such a key; finding those dicts is a walk of every container
//! in a record, after every write, so it is done here rather than in Python.

use std::collections::HashSet;

use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PySlice, PyString, PyTuple};

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

/// Whether `value` is a dict, list or tuple (subclasses too): a level of nesting.
fn is_container(value: &Bound<'_, PyAny>) -> bool {
    value.is_instance_of::<PyDict>()
        || value.is_instance_of::<PyList>()
        || value.is_instance_of::<PyTuple>()
}

/// The items of container `value` that are containers themselves (a dict's values; a
/// subclass through its own ``values()`` or iteration, as Python code walking it would).
fn nested_in<'py>(value: &Bound<'py, PyAny>, into: &mut Vec<Bound<'py, PyAny>>) -> PyResult<()> {
    if let Ok(dict) = value.cast_exact::<PyDict>() {
        into.extend(dict.iter().map(|(_, item)| item).filter(is_container));
    } else if let Ok(list) = value.cast_exact::<PyList>() {
        into.extend(list.iter().filter(is_container));
    } else if let Ok(tuple) = value.cast_exact::<PyTuple>() {
        into.extend(tuple.iter().filter(is_container));
    } else {
        let items = if value.is_instance_of::<PyDict>() {
            value.call_method0("values")?.try_iter()?
        } else {
            value.try_iter()?
        };
        for item in items {
            let item = item?;
            if is_container(&item) {
                into.push(item);
            }
        }
    }
    Ok(())
}

/// A container [`nested_deeper_than`] is in: its address, the containers it holds not yet
/// looked at, and the most levels any of those looked at holds.
struct Level<'py> {
    address: usize,
    nested: std::vec::IntoIter<Bound<'py, PyAny>>,
    tallest: usize,
}

/// In [`nested_deeper_than`]'s table of heights: a container on the current path, whose
/// height is not known yet (met again below itself, it holds itself).
const ON_PATH: usize = usize::MAX;

/// Whether ``value`` nests dicts, lists and tuples (subclasses too) over ``limit`` levels.
///
/// ``value`` itself is the first level when it is one of them. A container that holds
/// itself is nested without end (True). Each container is looked into once, its height
/// kept, so data sharing its parts takes time linear in its size. The walk goes depth
/// first, items in order, and stops at the first chain found over ``limit``: items after
/// it may not be read.
///
/// Args:
///     value: the data to look into (JSON data, or what a provider or hook made of it).
///     limit: the most levels allowed (an int of 0 or more).
///
/// Returns:
///     bool: whether some chain of containers, each holding the next, is over ``limit``
///     long.
///
/// Raises:
///     AgentRuntimeError: ``limit`` is below 0.
///     TypeError: ``limit`` is no int.
///     Exception: whatever a dict, list or tuple subclass's own iteration or ``values()``
///         raised.
#[pyfunction]
pub fn nested_deeper_than(value: &Bound<'_, PyAny>, limit: &Bound<'_, PyAny>) -> PyResult<bool> {
    let limit = crate::args::limit(limit, "limit", 0, |v| {
        crate::errors::CoreError::Runtime(format!("limit must be 0 or more, got {v}"))
    })?;
    catch_panics(|| {
        if !is_container(value) {
            return Ok(false);
        }
        let mut nested = Vec::new();
        nested_in(value, &mut nested)?;
        if nested.is_empty() {
            return Ok(limit == 0); // flat, as tool arguments usually are
        }
        // Heights by address, once known. What was looked into stays alive to the end: a
        // subclass's `values()` may make new objects, whose addresses must not be reused
        // meanwhile.
        let mut heights: rustc_hash::FxHashMap<usize, usize> = rustc_hash::FxHashMap::default();
        heights.insert(value.as_ptr() as usize, ON_PATH);
        let mut walked = vec![value.clone()];
        let mut path = vec![Level {
            address: value.as_ptr() as usize,
            nested: nested.into_iter(),
            tallest: 0,
        }];
        loop {
            if path.len() > limit {
                return Ok(true); // the path itself is a chain that long
            }
            let Some(level) = path.last_mut() else {
                return Ok(false);
            };
            if let Some(item) = level.nested.next() {
                let address = item.as_ptr() as usize;
                match heights.get(&address) {
                    Some(&ON_PATH) => return Ok(true),
                    Some(&height) => {
                        level.tallest = level.tallest.max(height);
                        if path.len() + height > limit {
                            return Ok(true);
                        }
                    }
                    None => {
                        let mut inner = Vec::new();
                        nested_in(&item, &mut inner)?;
                        heights.insert(address, ON_PATH);
                        walked.push(item);
                        path.push(Level {
                            address,
                            nested: inner.into_iter(),
                            tallest: 0,
                        });
                    }
                }
            } else {
                let height = level.tallest + 1;
                let address = level.address;
                path.pop();
                heights.insert(address, height);
                match path.last_mut() {
                    Some(parent) => parent.tallest = parent.tallest.max(height),
                    None => return Ok(height > limit),
                }
            }
        }
    })
}

/// How deep [`shown_part`] walks: a result nested deeper is left whole (`json` refuses it,
/// and its text is then its `str`).
const MAX_SHOWN_DEPTH: usize = 500;

/// Why [`shown_part`] leaves a result whole: it holds itself, is nested too deep, changed
/// under the walk, or a Python call failed.
struct LeftWhole;

/// What the walk found of one value: all of it shows, or only the part given.
enum Shown<'py> {
    Whole,
    Part(Bound<'py, PyAny>),
}

/// The fewest characters of the text of a numpy array of `shape` whose values take `cell`
/// characters at least, as `tolist()` and JSON write it: a list takes its brackets and
/// `", "` separators too.
fn array_min_chars(shape: &[usize], cell: i64) -> i64 {
    shape.iter().rev().fold(cell, |inner, &size| {
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        if size == 0 {
            return 2;
        }
        size.saturating_mul(inner.saturating_add(2))
    })
}

/// An item of a list or tuple (no key) or of a dict (its key), and its value.
type Item<'py> = (Option<Bound<'py, PyAny>>, Bound<'py, PyAny>);

/// The items of a list, tuple or dict being walked, read one at a time: a list by index
/// (another thread may change it meanwhile: its end is then where it ends), a dict by
/// [`DictItems`].
enum Items<'py> {
    List(Bound<'py, PyList>, usize),
    Tuple(Bound<'py, PyTuple>, usize),
    Dict(DictItems<'py>),
}

impl<'py> Items<'py> {
    /// The next item (with its key, in a dict), or None at the end.
    fn next_item(&mut self) -> Result<Option<Item<'py>>, LeftWhole> {
        match self {
            Items::List(list, index) => {
                let item = list.get_item(*index).ok();
                *index += 1;
                Ok(item.map(|item| (None, item)))
            }
            Items::Tuple(tuple, index) => {
                let item = tuple.get_item(*index).ok();
                *index += 1;
                Ok(item.map(|item| (None, item)))
            }
            Items::Dict(items) => match items.next() {
                None => Ok(None),
                Some(entry) => entry.map(|(key, item)| Some((Some(key), item))),
            },
        }
    }
}

/// A list, tuple or dict being walked: its items so far (as they are, or the last one's
/// part), and the item whose value is being walked.
struct Frame<'py> {
    address: usize,
    items: Items<'py>,
    kept: Vec<Item<'py>>,
    current: Option<Item<'py>>,
}

impl<'py> Frame<'py> {
    /// The part of the container: the items kept, in a container of its type.
    fn part(self, py: Python<'py>) -> Result<Bound<'py, PyAny>, LeftWhole> {
        match self.items {
            Items::List(..) => {
                let values = self.kept.into_iter().map(|(_, value)| value);
                Ok(PyList::new(py, values).map_err(|_| LeftWhole)?.into_any())
            }
            Items::Tuple(..) => {
                let values = self.kept.into_iter().map(|(_, value)| value);
                Ok(PyTuple::new(py, values).map_err(|_| LeftWhole)?.into_any())
            }
            Items::Dict(_) => {
                let part = PyDict::new(py);
                for (key, value) in self.kept {
                    if let Some(key) = key {
                        part.set_item(key, value).map_err(|_| LeftWhole)?;
                    }
                }
                Ok(part.into_any())
            }
        }
    }
}

/// What the walk makes of one value met: a scalar or an array at once (with its text's
/// fewest characters taken from `room`), or a list, tuple or dict pushed on `stack`
/// (None: its items are walked next).
fn enter<'py>(
    value: &Bound<'py, PyAny>,
    room: &mut i64,
    stack: &mut Vec<Frame<'py>>,
    ndarray: &mut Option<Option<Bound<'py, PyAny>>>,
) -> Result<Option<Shown<'py>>, LeftWhole> {
    let py = value.py();
    if value.is_exact_instance_of::<PyString>() {
        // Quoted, and no shorter escaped: a character is one of the text's at least.
        let chars = value.len().map_err(|_| LeftWhole)?;
        *room = room.saturating_sub(i64::try_from(chars).unwrap_or(i64::MAX).saturating_add(2));
        return Ok(Some(Shown::Whole));
    }
    let items = if let Ok(list) = value.cast_exact::<PyList>() {
        Some(Items::List(list.clone(), 0))
    } else if let Ok(tuple) = value.cast_exact::<PyTuple>() {
        Some(Items::Tuple(tuple.clone(), 0))
    } else if let Ok(dict) = value.cast_exact::<PyDict>() {
        Some(Items::Dict(DictItems::new(dict.clone())))
    } else {
        None
    };
    if let Some(items) = items {
        let address = value.as_ptr() as usize;
        if stack.len() >= MAX_SHOWN_DEPTH || stack.iter().any(|frame| frame.address == address) {
            return Err(LeftWhole);
        }
        *room = room.saturating_sub(1); // the opening bracket
        stack.push(Frame {
            address,
            items,
            kept: Vec::new(),
            current: None,
        });
        return Ok(None);
    }
    let array_type = ndarray.get_or_insert_with(|| numpy_array_type(py));
    if array_type.as_ref().is_some_and(|t| value.get_type().is(t)) {
        return shown_array(value, room).map(Some);
    }
    *room = room.saturating_sub(scalar_min_chars(value));
    Ok(Some(Shown::Whole))
}

/// The part of a numpy array whose text may start within `room`.
fn shown_array<'py>(value: &Bound<'py, PyAny>, room: &mut i64) -> Result<Shown<'py>, LeftWhole> {
    let py = value.py();
    let array = value.cast::<PyUntypedArray>().map_err(|_| LeftWhole)?;
    let shape = array.shape().to_vec();
    // A float's text is three characters at least (`0.0`, `inf`), a bool's four, a complex
    // number's or a str's (quoted) two; any other value's one.
    let cell = match array.dtype().kind() {
        b'f' => 3,
        b'b' => 4,
        b'c' | b'U' | b'S' => 2,
        _ => 1,
    };
    let chars = array_min_chars(&shape, cell);
    if chars <= *room {
        *room -= chars;
        return Ok(Shown::Whole);
    }
    // Along each axis, the items whose text may start within `room` (an item of the axis
    // holds the axes after it): the first item past `room` is left out.
    let mut slices = Vec::with_capacity(shape.len());
    for (axis, &size) in shape.iter().enumerate() {
        let item = array_min_chars(&shape[axis + 1..], cell).saturating_add(2);
        let keep = (*room).max(0) / item + 1;
        let keep = usize::try_from(keep).unwrap_or(usize::MAX).min(size);
        slices.push(PySlice::new(
            py,
            0,
            isize::try_from(keep).unwrap_or(isize::MAX),
            1,
        ));
    }
    let index = PyTuple::new(py, slices).map_err(|_| LeftWhole)?;
    let part = value.get_item(index).map_err(|_| LeftWhole)?;
    *room = 0;
    Ok(Shown::Part(part))
}

/// The part of `value` whose text starts within `room` characters, or None when that is
/// all of it. The walk keeps its own stack: a thread's may be small.
fn shown_value<'py>(
    value: &Bound<'py, PyAny>,
    room: i64,
) -> Result<Option<Bound<'py, PyAny>>, LeftWhole> {
    let py = value.py();
    let mut room = room;
    let mut stack: Vec<Frame<'py>> = Vec::new();
    let mut ndarray = None;
    let mut found = enter(value, &mut room, &mut stack, &mut ndarray)?;
    loop {
        if let Some(shown) = found.take() {
            // What the top frame's current item came to; the value itself at the bottom.
            let Some(frame) = stack.last_mut() else {
                return Ok(match shown {
                    Shown::Whole => None,
                    Shown::Part(part) => Some(part),
                });
            };
            let Some((key, item)) = frame.current.take() else {
                return Err(LeftWhole);
            };
            match shown {
                Shown::Whole => frame.kept.push((key, item)),
                Shown::Part(part) => {
                    frame.kept.push((key, part));
                    let Some(frame) = stack.pop() else {
                        return Err(LeftWhole);
                    };
                    found = Some(Shown::Part(frame.part(py)?));
                    continue;
                }
            }
        }
        let Some(frame) = stack.last_mut() else {
            return Err(LeftWhole);
        };
        match frame.items.next_item()? {
            None => {
                // Every item shows: so does the container, as it is.
                stack.pop();
                found = Some(Shown::Whole);
            }
            Some(_) if room <= 0 => {
                // This item's text starts past `room`: the container ends before it.
                let Some(frame) = stack.pop() else {
                    return Err(LeftWhole);
                };
                found = Some(Shown::Part(frame.part(py)?));
            }
            Some((key, item)) => {
                // `, ` before all but the first; in a dict the key (quoted if a str) and `: `.
                let mut chars = if frame.kept.is_empty() { 0 } else { 2 };
                if let Some(key) = &key {
                    chars += 2 + if key.is_exact_instance_of::<PyString>() {
                        let length = key.len().map_err(|_| LeftWhole)?;
                        i64::try_from(length).unwrap_or(i64::MAX).saturating_add(2)
                    } else {
                        scalar_min_chars(key)
                    };
                }
                room = room.saturating_sub(chars);
                frame.current = Some((key, item.clone()));
                found = enter(&item, &mut room, &mut stack, &mut ndarray)?;
            }
        }
    }
}

/// numpy's array type, when numpy is imported (else no value can be an array, and asking
/// for numpy's C API would import it, a tenth of a second): read from the module that
/// holds that API, so a stand-in for numpy (None in `sys.modules`, to block it; a stub
/// module) makes no call into it.
fn numpy_array_type(py: Python<'_>) -> Option<Bound<'_, PyAny>> {
    // numpy 2's module first, then numpy 1's: the one imported holds `_ARRAY_API`.
    for name in ["numpy._core.multiarray", "numpy.core.multiarray"] {
        let name = PyString::new(py, name);
        // SAFETY: the GIL is held; `PyImport_GetModule` returns a new reference, or NULL
        // (with an error only when the lookup itself failed, taken here).
        let module = unsafe {
            Bound::from_owned_ptr_or_opt(py, pyo3::ffi::PyImport_GetModule(name.as_ptr()))
        };
        let Some(module) = module else {
            let _ = PyErr::take(py);
            continue;
        };
        if module.hasattr("_ARRAY_API").unwrap_or(false) {
            return module.getattr("ndarray").ok();
        }
    }
    None
}

/// The fewest characters of the text of a value that is no list, tuple, dict, str or array,
/// as JSON or `repr` writes it: an int its digits (and sign), a float three (`0.0`, `inf`),
/// `True` and `None` four (`true`, `null`), bytes their quotes, any other value one.
fn scalar_min_chars(value: &Bound<'_, PyAny>) -> i64 {
    if value.is_exact_instance_of::<PyInt>() {
        let mut overflow = 0;
        // SAFETY: the GIL is held (`value` is bound) and `value` is an int. Read without an
        // error object: an int past 64 bits only sets `overflow`.
        let n = unsafe { pyo3::ffi::PyLong_AsLongLongAndOverflow(value.as_ptr(), &mut overflow) };
        if overflow != 0 {
            return 19; // over 9.2e18
        }
        let sign = i64::from(n < 0);
        return sign + i64::from(n.unsigned_abs().checked_ilog10().unwrap_or(0)) + 1;
    }
    if value.is_exact_instance_of::<PyFloat>() {
        return 3;
    }
    if value.is_exact_instance_of::<PyBool>() || value.is_none() {
        return 4;
    }
    if value.is_exact_instance_of::<PyBytes>() {
        return 2;
    }
    1
}

/// The items of a dict, as its iteration gives them, without a panic when it changes: the
/// walk makes objects, so a collection's finalizers may run, and another thread with them.
/// A change of size ends the walk ([`LeftWhole`]): the result is then rendered whole, as
/// before.
struct DictItems<'py> {
    dict: Bound<'py, PyDict>,
    position: pyo3::ffi::Py_ssize_t,
    size: pyo3::ffi::Py_ssize_t,
}

impl<'py> DictItems<'py> {
    fn new(dict: Bound<'py, PyDict>) -> Self {
        // SAFETY: the GIL is held (`dict` is bound) and `dict` is a dict.
        let size = unsafe { pyo3::ffi::PyDict_Size(dict.as_ptr()) };
        Self {
            dict,
            position: 0,
            size,
        }
    }
}

impl<'py> Iterator for DictItems<'py> {
    type Item = Result<(Bound<'py, PyAny>, Bound<'py, PyAny>), LeftWhole>;

    fn next(&mut self) -> Option<Self::Item> {
        let dict = self.dict.as_ptr();
        // SAFETY: the GIL is held and `dict` is a dict. `PyDict_Next` bounds its position by
        // the dict's current table, whatever changed; its references are borrowed, and
        // owned here before any other call.
        unsafe {
            if pyo3::ffi::PyDict_Size(dict) != self.size {
                return Some(Err(LeftWhole));
            }
            let mut key = std::ptr::null_mut();
            let mut value = std::ptr::null_mut();
            if pyo3::ffi::PyDict_Next(dict, &mut self.position, &mut key, &mut value) == 0 {
                return None;
            }
            let py = self.dict.py();
            Some(Ok((
                Bound::from_borrowed_ptr(py, key),
                Bound::from_borrowed_ptr(py, value),
            )))
        }
    }
}

/// The part of a tool's result whose text can show in ``room`` characters, or None when
/// that is the whole result.
///
/// A list, tuple or dict (those types exactly, nested too) keeps the items whose text may
/// start within ``room``, and a numpy array (exactly ``ndarray``) the rows, and in them the
/// columns..., that may: the text of the part starts as the whole result's does, and when
/// something was left out it is longer than ``room``, so cut to fewer characters it reads
/// the same. Each value is counted at the fewest characters its text can take (an int its
/// digits, a str its length and quotes). A result that holds itself, is nested over 500
/// levels deep, or has a dict that changes size meanwhile (another thread's), is left whole
/// (None).
///
/// Args:
///     value: the tool's result.
///     room: the characters that will be shown.
///
/// Returns:
///     object | None: the part, or None for the whole result.
#[pyfunction]
pub fn shown_part<'py>(
    value: &Bound<'py, PyAny>,
    room: i64,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    catch_panics(|| Ok(shown_value(value, room).unwrap_or(None)))
}
