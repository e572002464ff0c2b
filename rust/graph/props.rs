//! JSON-compatible Python values <-> `serde_json::Value`, for entity and relationship
//! properties (stored without Python objects, so the graph exports, copies and crosses
//! threads freely).

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};
use serde_json::{Map, Number, Value};

use crate::args::text_of;
use crate::errors::{catch_panics, CoreError};

/// How deep properties may nest: the properties object is level 0, and a value (or an
/// empty container) at level 64 is the deepest allowed.
pub const MAX_DEPTH: usize = 64;

/// Whether `value` (at level `depth`) nests no deeper than [`MAX_DEPTH`], as [`to_json`]
/// requires of Python values: the same limit for properties read from a document.
pub fn within_max_depth(value: &Value) -> bool {
    let mut pending: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = pending.pop() {
        if depth > MAX_DEPTH {
            return false;
        }
        match value {
            Value::Array(items) => pending.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => pending.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    true
}

/// Converts a JSON-compatible Python value (dict with str keys, list/tuple, str, int or any
/// integer type with `__index__` such as numpy's, float or any real-number type registered
/// as `numbers.Real` such as numpy's float32, bool or numpy's bool, None); anything else is a `GraphError`
/// naming the type. A float must be finite.
pub fn to_json(value: &Bound<'_, PyAny>) -> PyResult<Value> {
    convert(value, 0)
}

/// A float property, refused unless finite (JSON has no NaN or infinity).
fn finite_float(value: f64) -> PyResult<Value> {
    Number::from_f64(value)
        .map(Value::Number)
        .ok_or_else(|| CoreError::Graph("property floats must be finite".into()).into())
}

/// Whether `value` is a real number of a type other than `float`: an instance of
/// `numbers.Real`, as numpy's floating scalars (float16, float32, longdouble) and
/// `fractions.Fraction` are. An object that merely has `__float__` (a `Decimal`, a 0-d
/// array, a custom class) is not: it is refused rather than silently made a float.
fn is_real_number(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    static REAL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static RATIONAL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let py = value.py();
    // An exact fraction (`Fraction`) is refused as `Decimal` is: a float would round it.
    Ok(value.is_instance(REAL.import(py, "numbers", "Real")?)?
        && !value.is_instance(RATIONAL.import(py, "numbers", "Rational")?)?)
}

/// Whether `value` is numpy's bool scalar (`numpy.bool`, `numpy.bool_` before numpy 2).
fn is_numpy_bool(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    let kind = value.get_type();
    let name = kind.name()?;
    Ok((name == "bool" || name == "bool_") && kind.module()? == "numpy")
}

fn convert(value: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(
            CoreError::Graph(format!("properties nest deeper than {MAX_DEPTH} levels")).into(),
        );
    }
    if value.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if value.is_instance_of::<PyInt>() {
        if let Ok(i) = value.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = value.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(CoreError::Graph("property integer does not fit in 64 bits".into()).into());
    }
    if let Ok(f) = value.cast::<PyFloat>() {
        return finite_float(f.value());
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Value::String(text_of(s, CoreError::Graph)?.to_owned()));
    }
    if let Ok(d) = value.cast::<PyDict>() {
        // A snapshot of the items: converting a value may run Python code (a list
        // subclass's `__iter__`) that changes the dict, which a live iterator cannot survive.
        let items = d.items();
        let mut map = Map::with_capacity(items.len());
        for item in items.iter() {
            let (k, v) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
            let key = k.cast::<PyString>().map_err(|_| {
                PyErr::from(CoreError::Graph("property keys must be strings".into()))
            })?;
            let text = text_of(key, CoreError::Graph)?;
            // Two keys can read as one text (a str subclass with its own `__eq__` and
            // `__hash__`): one value would silently replace the other.
            if map
                .insert(text.to_owned(), convert(&v, depth + 1)?)
                .is_some()
            {
                return Err(CoreError::Graph(format!(
                    "property key {text:?} appears twice in one dict"
                ))
                .into());
            }
        }
        return Ok(Value::Object(map));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let items: PyResult<Vec<Value>> = value
            .try_iter()?
            .map(|item| convert(&item?, depth + 1))
            .collect();
        return Ok(Value::Array(items?));
    }
    // Other integer types (numpy's, which pandas hands out) are ints through `__index__`.
    if let Ok(index) = value.call_method0(pyo3::intern!(value.py(), "__index__")) {
        if index.is_instance_of::<PyInt>() {
            return convert(&index, depth);
        }
    }
    // Other real numbers (numpy's float32, which embeddings and scores come as) are floats
    // through `__float__`; one beyond the float range is refused as a non-finite float is.
    if is_real_number(value)? {
        let float = match value.extract::<f64>() {
            Ok(float) => float,
            Err(error) if error.is_instance_of::<PyOverflowError>(value.py()) => {
                return Err(CoreError::Graph(format!(
                    "property floats must be finite, got a number beyond the float range ({})",
                    error.value(value.py())
                ))
                .into());
            }
            Err(error) => {
                return Err(CoreError::Graph(format!(
                    "property {} could not be read as a float: {}",
                    value.get_type().name()?,
                    error.value(value.py())
                ))
                .into());
            }
        };
        return finite_float(float);
    }
    // numpy's bool (which comparisons and pandas hand out) is a bool, not a number.
    if is_numpy_bool(value)? {
        return Ok(Value::Bool(value.is_truthy()?));
    }
    Err(CoreError::Graph(format!(
        "properties must be JSON-compatible; got a {}",
        value.get_type().name()?
    ))
    .into())
}

/// Converts properties given as an optional dict (None -> null); anything but a dict or
/// None is a `GraphError` naming the type. A panic while converting is `AgentRuntimeError`.
pub fn properties(value: Option<&Bound<'_, PyAny>>) -> PyResult<Value> {
    catch_panics(|| properties_of(value))
}

fn properties_of(value: Option<&Bound<'_, PyAny>>) -> PyResult<Value> {
    match value {
        None => Ok(Value::Null),
        Some(v) if v.is_none() => Ok(Value::Null),
        Some(v) if v.is_instance_of::<PyDict>() => to_json(v),
        Some(v) => Err(CoreError::Graph(format!(
            "properties must be a dict or None, got a {}",
            v.get_type().name()?
        ))
        .into()),
    }
}

/// Converts back to Python objects (null properties become an empty dict).
pub fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_python(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_python(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

/// Properties as a Python dict (null -> {}).
pub fn properties_to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    match value {
        Value::Null => Ok(PyDict::new(py).into_any()),
        other => to_python(py, other),
    }
}
