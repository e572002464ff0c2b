//! Arguments taken from Python that the machine types cannot always hold: ints of any size,
//! numbers beyond the float range and strings that are not valid Unicode.
//!
//! PyO3's own conversions raise the built-in `OverflowError` (an int beyond 64 bits, or one
//! beyond the float range read as a float) and `UnicodeEncodeError` (a `str` holding a lone
//! surrogate, such as a cut-off emoji escape).
//! The helpers here turn both into the calling method's typed error naming the argument, or
//! read a huge int as "no limit" where the argument is a limit. A value of the wrong type is
//! a `TypeError` naming the argument and what it takes ("directed must be a bool, got
//! None"), not PyO3's generic wording (which names the argument only in an exception note):
//! each helper takes the argument's name, and a module gives it through a one-line wrapper
//! per argument (`fn directed_arg(v) -> PyResult<bool> { args::flag(v, "directed") }`) that
//! methods take with `#[pyo3(from_py_with = ...)]`; or it calls them on a `&Bound<PyAny>`
//! argument. The right type costs what PyO3's own conversion costs: the message is built on
//! the error path only.

use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyComplex, PyFloat, PyInt, PyString, PyType};

use crate::errors::{try_reserve_for, CoreError};

/// Refuses a bool where an int (a size, a count, an id) is expected: Python's `bool` is an
/// `int` subclass, which PyO3 would read as 0 or 1, and numpy's (see [`is_bool`]) converts
/// like one. `error` receives the bool's value and makes the calling method's typed error.
///
/// # Errors
/// `error(value)` when `value` is a bool.
#[inline]
pub fn not_bool(
    value: &Bound<'_, PyAny>,
    error: impl FnOnce(bool) -> CoreError,
) -> Result<(), CoreError> {
    // A plain int (the usual case) is no bool of any kind: told first, as a failed cast
    // builds an error value (a reference to the type) that costs more than the check.
    if value.is_exact_instance_of::<PyInt>() {
        return Ok(());
    }
    if let Ok(flag) = value.cast::<PyBool>() {
        return Err(error(flag.is_true()));
    }
    if !is_bool(value) {
        return Ok(());
    }
    Err(error(value.is_truthy().unwrap_or(true)))
}

/// Whether `value` is a bool: Python's, or numpy's (`numpy.bool_`, no `bool` subclass), which
/// a float conversion would read as 0.0 or 1.0.
pub fn is_bool(value: &Bound<'_, PyAny>) -> bool {
    // A plain int or float (the usual number) is told by its type pointer: no lookup of the
    // type's module and name, which costs more than the rest of reading a number.
    if value.is_exact_instance_of::<PyFloat>() || value.is_exact_instance_of::<PyInt>() {
        return false;
    }
    value.is_instance_of::<PyBool>() || is_numpy(value, &["bool", "bool_"])
}

/// Whether `value`'s type is the numpy type of one of `names` (told by the type's module and
/// name: numpy may not be installed, and is not imported for this).
pub fn is_numpy(value: &Bound<'_, PyAny>, names: &[&str]) -> bool {
    let kind = value.get_type();
    kind.module()
        .is_ok_and(|module| module.to_cow().is_ok_and(|m| m == "numpy"))
        && kind
            .name()
            .is_ok_and(|name| name.to_cow().is_ok_and(|n| names.contains(&&*n)))
}

/// Converts an integer argument that a method takes as `i64` to `usize`.
///
/// Taking `i64` rather than `usize` lets PyO3 accept a negative Python int (it would raise the
/// built-in `OverflowError`), so the method can refuse it with its own typed exception:
/// `error` receives a message naming the argument `what`.
///
/// # Errors
/// `error(message)` when `value` is negative (or does not fit `usize`).
pub fn non_negative(
    value: i64,
    what: &str,
    error: fn(String) -> CoreError,
) -> Result<usize, CoreError> {
    usize::try_from(value).map_err(|_| error(format!("{what} must be >= 0, got {value}")))
}

/// Extracts a Python int as an unsigned `T` (`u32`, `u64`, ...) for arguments whose whole
/// range is meaningful; an int out of range raises `error(its decimal text)` instead of the
/// built-in `OverflowError`. Anything not an int is a `TypeError` naming the argument `name`
/// (see [`wrong_type`]).
///
/// # Errors
/// `error(...)` for a negative int or one above `T::MAX`; `TypeError` for a non-int.
#[inline]
pub fn extract_unsigned<'py, T>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    error: impl FnOnce(String) -> CoreError,
) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a, 'py, Error = PyErr>,
{
    match obj.extract::<T>() {
        Ok(value) => Ok(value),
        Err(e) => Err(not_unsigned(obj, name, e, error)),
    }
}

/// The error of [`extract_unsigned`], kept off its fast path.
#[cold]
#[inline(never)]
fn not_unsigned(
    obj: &Bound<'_, PyAny>,
    name: &str,
    e: PyErr,
    error: impl FnOnce(String) -> CoreError,
) -> PyErr {
    if !e.is_instance_of::<PyOverflowError>(obj.py()) {
        return named(obj, name, INT, e);
    }
    match as_int(obj).and_then(|int| int.str()) {
        Ok(text) => error(text.to_string()).into(),
        Err(e) => e,
    }
}

/// `obj` as the Python int it stands for: itself for an int, else what its `__index__` gives
/// (an integer type that is no `int`, such as a big-integer library's). Its text and sign are
/// those of that int, not of `obj` (which may have no `repr` worth showing, nor compare with
/// an int).
///
/// # Errors
/// What `__index__` raises (`TypeError` when `obj` has none).
#[cold]
#[inline(never)]
fn as_int<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyInt>> {
    if let Ok(int) = obj.cast::<PyInt>() {
        return Ok(int.clone());
    }
    static INDEX: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let index = INDEX.import(obj.py(), "operator", "index")?;
    Ok(index.call1((obj,))?.cast_into::<PyInt>()?)
}

/// A Python int that does not fit `usize`, with its decimal text for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutOfRange {
    /// Below zero.
    Negative(String),
    /// Above `usize::MAX`.
    TooLarge(String),
}

impl OutOfRange {
    /// The int's decimal text.
    pub fn text(&self) -> &str {
        match self {
            OutOfRange::Negative(text) | OutOfRange::TooLarge(text) => text,
        }
    }
}

/// A real-number argument as `f64` (a float, an int, or anything with `__float__`); a number
/// beyond the float range (such as `10**400`) is `error(message)` instead of the built-in
/// `OverflowError`, as is one with no float value (`Decimal("sNaN")`, whose conversion raises
/// `ValueError`). Anything not a number is a `TypeError` naming the argument `name`; so is
/// a complex number (see [`is_complex`]), numpy's included, whose `__float__` would drop the
/// imaginary part, and a numpy array of bools or text (see [`is_array_of_no_number`]).
///
/// # Errors
/// `error(...)` for a number beyond the float range or with no float value; `TypeError` for
/// a non-number.
#[inline]
pub fn real(
    obj: &Bound<'_, PyAny>,
    name: &str,
    error: impl FnOnce(String) -> CoreError,
) -> PyResult<f64> {
    // A plain float (the usual number) is read in place, told by its type pointer.
    if let Ok(float) = obj.cast_exact::<PyFloat>() {
        return Ok(float.value());
    }
    if is_complex(obj) || is_array_of_no_number(obj) {
        return Err(wrong_type(obj, name, REAL));
    }
    match obj.extract::<f64>() {
        Ok(value) => Ok(value),
        Err(e) => Err(not_real(obj, name, e, error)),
    }
}

/// Whether `value` is a complex number: Python's `complex` (numpy's `complex128` is one),
/// another numpy complex scalar (`complex64`, `clongdouble`) or a numpy array of a complex
/// dtype (a 0-d one has `__float__` in numpy 1). numpy's float conversion of them keeps the
/// real part with only a warning, so 0.5+0.5j would pass for 0.5: a real-number argument
/// refuses them before any conversion.
pub fn is_complex(value: &Bound<'_, PyAny>) -> bool {
    // A plain int or float, or a float subclass (numpy's float64), is no complex number:
    // told by type pointers and flags.
    if value.is_exact_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>() {
        return false;
    }
    if value.is_instance_of::<PyComplex>() {
        return true;
    }
    // A subclass check against numpy's base of complex scalars: no lookup of the type's
    // module and name, which costs more than reading the number.
    let Some(complexfloating) = numpy_complex_type(value.py()) else {
        return false;
    };
    // A failed cast builds an error value: told by the type check first.
    value.is_instance(complexfloating).unwrap_or(false)
        || (value.is_instance_of::<PyUntypedArray>()
            && value
                .cast::<PyUntypedArray>()
                .is_ok_and(|array| array.dtype().kind() == b'c'))
}

/// Whether `value` is a numpy array whose dtype holds no real number: bools, text, bytes,
/// Python objects, dates or records. A 0-d one has `__float__`, which would parse a text one
/// (`array("1.5")` would pass for 1.5) and read a bool one as 0 or 1.
fn is_array_of_no_number(value: &Bound<'_, PyAny>) -> bool {
    if value.is_exact_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>() {
        return false;
    }
    // No array while numpy is not imported: the array type check would import it.
    numpy_complex_type(value.py()).is_some()
        && value.is_instance_of::<PyUntypedArray>()
        && value
            .cast::<PyUntypedArray>()
            .is_ok_and(|array| !matches!(array.dtype().kind(), b'i' | b'u' | b'f' | b'c'))
}

/// Imports numpy (once), where its failure is a Python error: rust-numpy imports it at its
/// first use otherwise and panics when that fails (a Ctrl-C landing in the import), so a
/// `KeyboardInterrupt` became a `PanicException`. Called before any use of numpy's API.
///
/// # Errors
/// What the import raises.
pub fn load_numpy(py: Python<'_>) -> PyResult<()> {
    static LOADED: PyOnceLock<()> = PyOnceLock::new();
    LOADED.get_or_try_init(py, || py.import("numpy").map(drop))?;
    Ok(())
}

/// `numpy.complexfloating`, the base of numpy's complex scalar types; None while numpy is
/// not imported (then no value is a numpy scalar or array, and numpy is not imported for
/// this check).
fn numpy_complex_type(py: Python<'_>) -> Option<&Bound<'_, PyType>> {
    static COMPLEXFLOATING: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    if let Some(kind) = COMPLEXFLOATING.get(py) {
        return Some(kind.bind(py));
    }
    if !numpy_imported(py) {
        return None;
    }
    COMPLEXFLOATING.import(py, "numpy", "complexfloating").ok()
}

/// Whether numpy is among the imported modules, off the fast path of [`is_complex`].
#[cold]
#[inline(never)]
fn numpy_imported(py: Python<'_>) -> bool {
    py.import("sys")
        .and_then(|sys| sys.getattr("modules"))
        .and_then(|modules| modules.contains("numpy"))
        .unwrap_or(false)
}

/// The error of [`real`], kept off its fast path.
#[cold]
#[inline(never)]
fn not_real(
    obj: &Bound<'_, PyAny>,
    name: &str,
    e: PyErr,
    error: impl FnOnce(String) -> CoreError,
) -> PyErr {
    let py = obj.py();
    if e.is_instance_of::<PyOverflowError>(py) {
        return error(format!("a number beyond the float range ({})", e.value(py))).into();
    }
    // A number with no float value, such as Decimal("sNaN") (float() raises ValueError).
    if e.is_instance_of::<PyValueError>(py) {
        return error(format!(
            "{}, which has no float value ({})",
            describe_value(obj),
            e.value(py)
        ))
        .into();
    }
    named(obj, name, REAL, e)
}

/// A Python int of any size as `usize`, or where it falls outside (never `OverflowError`).
///
/// # Errors
/// `TypeError` naming the argument `name` when `obj` is not an int.
#[inline]
pub fn to_usize(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Result<usize, OutOfRange>> {
    match obj.extract::<i64>() {
        Ok(value) => {
            Ok(usize::try_from(value).map_err(|_| OutOfRange::Negative(value.to_string())))
        }
        Err(e) => beyond_i64(obj, name, e),
    }
}

/// [`to_usize`] for an int that `i64` cannot hold (or a non-int), off the fast path.
#[cold]
#[inline(never)]
fn beyond_i64(obj: &Bound<'_, PyAny>, name: &str, e: PyErr) -> PyResult<Result<usize, OutOfRange>> {
    if !e.is_instance_of::<PyOverflowError>(obj.py()) {
        return Err(named(obj, name, INT, e));
    }
    if let Ok(value) = obj.extract::<u64>() {
        if let Ok(value) = usize::try_from(value) {
            return Ok(Ok(value));
        }
    }
    // The int itself: an `__index__` type's own repr and comparisons are not its value's.
    let int = as_int(obj)?;
    let text = int.str()?.to_string();
    Ok(Err(if int.gt(0)? {
        OutOfRange::TooLarge(text)
    } else {
        OutOfRange::Negative(text)
    }))
}

/// A limit argument (a depth, a hop or round count, a `k`, a cap): an int of at least `min`,
/// where an int too large for `usize` means "no limit" and becomes `usize::MAX`.
///
/// # Errors
/// `refuse(decimal text of the value)` when it is below `min`; `TypeError` naming the
/// argument `name` for a non-int.
pub fn limit(
    obj: &Bound<'_, PyAny>,
    name: &str,
    min: usize,
    refuse: impl FnOnce(String) -> CoreError,
) -> PyResult<usize> {
    match to_usize(obj, name)? {
        Ok(value) if value >= min => Ok(value),
        Ok(value) => Err(refuse(value.to_string()).into()),
        Err(OutOfRange::TooLarge(_)) => Ok(usize::MAX),
        Err(OutOfRange::Negative(text)) => Err(refuse(text).into()),
    }
}

/// A `str` argument as UTF-8 without a copy; a string that has no UTF-8 form (it holds a
/// lone surrogate, as a stream cut inside a `\ud83d\ude00` escape leaves) is
/// `error(message)` instead of the built-in `UnicodeEncodeError`.
///
/// # Errors
/// `error(...)` for a lone surrogate; `TypeError` naming the argument `name` when `obj` is
/// not a `str`.
#[inline]
pub fn text(
    obj: &Bound<'_, PyAny>,
    name: &str,
    error: impl FnOnce(String) -> CoreError,
) -> PyResult<PyBackedStr> {
    let Ok(string) = obj.cast::<PyString>() else {
        return Err(wrong_type(obj, name, STR));
    };
    match PyBackedStr::try_from(string.clone()) {
        Ok(text) => Ok(text),
        Err(e) => Err(not_unicode(string, &e, |message, _| error(message))),
    }
}

/// Like [`text`], for a borrowed `&str` of a `str` the caller holds.
///
/// # Errors
/// As [`text`].
pub fn text_of<'a>(
    string: &'a Bound<'_, PyString>,
    error: impl FnOnce(String) -> CoreError,
) -> PyResult<&'a str> {
    text_or_surrogate_at(string, |message, _| error(message))
}

/// As [`text_of`], `error` also receiving the first lone surrogate's index (in characters).
///
/// # Errors
/// `error(message, index)` when `string` holds a lone surrogate.
#[inline]
pub fn text_or_surrogate_at<'a>(
    string: &'a Bound<'_, PyString>,
    error: impl FnOnce(String, Option<usize>) -> CoreError,
) -> PyResult<&'a str> {
    match string.to_str() {
        Ok(text) => Ok(text),
        Err(e) => Err(not_unicode(string, &e, error)),
    }
}

/// The error of [`text`]: names the first lone surrogate and its index (in characters).
#[cold]
#[inline(never)]
fn not_unicode(
    string: &Bound<'_, PyString>,
    e: &PyErr,
    error: impl FnOnce(String, Option<usize>) -> CoreError,
) -> PyErr {
    let py = string.py();
    let start = e
        .value(py)
        .getattr("start")
        .and_then(|start| start.extract::<usize>())
        .ok();
    let message = match start {
        Some(at) => format!(
            "text is not valid Unicode: it holds a lone surrogate at index {at} (a \
             surrogate pair cut in two has no UTF-8 form)"
        ),
        None => "text is not valid Unicode: it holds a lone surrogate".to_owned(),
    };
    error(message, start).into()
}

/// A `str` argument naming something to look up (a key, an agent, a tool): `None` when it
/// holds a lone surrogate. Writers refuse such a name ([`text`]), so nothing is stored under
/// it and a lookup treats it as absent.
///
/// # Errors
/// `TypeError` naming the argument `name` when `obj` is not a `str`.
#[inline]
pub fn lookup_text(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<PyBackedStr>> {
    let Ok(string) = obj.cast::<PyString>() else {
        return Err(wrong_type(obj, name, STR));
    };
    Ok(PyBackedStr::try_from(string.clone()).ok())
}

/// A sequence of `str` arguments (a list or tuple of names), each read as by [`text`]. As
/// with PyO3's `Vec<String>`, a `str` is refused rather than read as its characters.
///
/// `what` says what the method takes (as "subgraph takes a list of entity names"); it is
/// called on the error path only, to start the message of a `TypeError` that describes the
/// value given: one `str` (with the advice to wrap it in a list), `bytes`, or another type;
/// or, for an item that is not a `str`, its index and type.
///
/// # Errors
/// `error(...)` for an item holding a lone surrogate, or for more names than memory holds
/// (see [`sequence_of`]); `TypeError` when `obj` is a `str` or not a sequence, or an item is
/// not a `str`.
pub fn names(
    obj: &Bound<'_, PyAny>,
    what: &dyn Fn() -> String,
    error: fn(String) -> CoreError,
) -> PyResult<Vec<PyBackedStr>> {
    let names = sequence_of(obj, error, "the list of names", |at, item| {
        text(&item, "item", error).map_err(|e| not_a_name(&item, at, what, e))
    })?;
    names.ok_or_else(|| PyTypeError::new_err(not_a_list(obj, what)))
}

/// How many items a loop reading a Python sequence or iterable reads between two looks for
/// pending signals: a look is a flag read, an item costs tens of times more.
const ITEMS_PER_SIGNAL_LOOK: usize = 1024;

/// Runs pending signal handlers once every [`ITEMS_PER_SIGNAL_LOOK`] items of a loop that
/// reads a Python sequence or iterable item by item, `at` being the item's index. Reading
/// the items of a `range` or an `itertools` iterator runs no bytecode, where handlers would
/// run: without this, Ctrl-C would wait for the loop's end, which a huge input puts off
/// for hours.
///
/// # Errors
/// What a handler raises (`KeyboardInterrupt` on Ctrl-C).
#[inline]
pub fn check_signals_at(py: Python<'_>, at: usize) -> PyResult<()> {
    if at % ITEMS_PER_SIGNAL_LOOK == ITEMS_PER_SIGNAL_LOOK - 1 {
        py.check_signals()
    } else {
        Ok(())
    }
}

/// The items of a sequence given where a list is expected, each made a `T` by
/// `convert(index, item)`; None for anything else, a `str` or `bytes` too, which are
/// sequences (of characters, of ints) but never a list of values, and a sequence by its
/// type whose iteration raises `TypeError` (a 0-d numpy array).
///
/// What PyO3's `extract::<Vec<_>>()` takes (any object passing `PySequence_Check`), read
/// with no panic and no endless loop: that conversion reserves `len()` slots at once, and a
/// sequence that says it holds more than memory can (`range(2**62)`) made it panic
/// ("capacity overflow"). Here room for them is reserved as a fallible allocation (see
/// [`try_reserve_for`]), so such a sequence is `kind("out of memory: {what} needs ...")`
/// before any item is read; and signals are looked for as items are read (see
/// [`check_signals_at`]).
///
/// # Errors
/// `kind("out of memory: ...")` when the items cannot fit; what reading an item,
/// `convert`, or a signal handler raises.
pub fn sequence_of<'py, T>(
    obj: &Bound<'py, PyAny>,
    kind: fn(String) -> CoreError,
    what: &str,
    mut convert: impl FnMut(usize, Bound<'py, PyAny>) -> PyResult<T>,
) -> PyResult<Option<Vec<T>>> {
    if !is_sequence(obj) {
        return Ok(None);
    }
    let mut values = Vec::new();
    // A `len()` that raises reads as 0, as PyO3 reads it: the items still say how many.
    try_reserve_for(kind, &mut values, obj.len().unwrap_or(0), what)?;
    let py = obj.py();
    // A sequence by its type that cannot be iterated (a 0-d numpy array) is none.
    let items = match obj.try_iter() {
        Ok(items) => items,
        Err(error) if error.is_instance_of::<pyo3::exceptions::PyTypeError>(py) => return Ok(None),
        Err(error) => return Err(error),
    };
    for (at, item) in items.enumerate() {
        check_signals_at(py, at)?;
        let value = convert(at, item?)?;
        // More items than `len()` said: grown as fallibly.
        if values.len() == values.capacity() {
            try_reserve_for(kind, &mut values, 1, what)?;
        }
        values.push(value);
    }
    Ok(Some(values))
}

/// Whether `obj` is read as a list of values by [`sequence_of`]: a sequence, as
/// `PySequence_Check` tells it (numpy arrays included, which are no registered
/// `collections.abc.Sequence`), but no `str` or `bytes` (told by type flags first).
fn is_sequence(obj: &Bound<'_, PyAny>) -> bool {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return false;
    }
    // SAFETY: `obj` is a live object, held for the call; `PySequence_Check` only reads its
    // type's slots and cannot fail.
    unsafe { pyo3::ffi::PySequence_Check(obj.as_ptr()) != 0 }
}

/// The message of a `TypeError` for `obj` given where a list is expected: `what`, then
/// "got" and a description of `obj` (see [`describe`]); a `str` comes with the advice to
/// wrap it in a list.
#[cold]
#[inline(never)]
pub fn not_a_list(obj: &Bound<'_, PyAny>, what: &dyn Fn() -> String) -> String {
    let advice = if obj.is_instance_of::<PyString>() {
        ": wrap it in a list"
    } else {
        ""
    };
    format!("{}, got {}{advice}", what(), describe(obj))
}

/// The error of [`names`] for an item: a `TypeError` naming its index and type when it is
/// not a `str`; `e` as it is otherwise (a lone surrogate, the method's own error).
#[cold]
#[inline(never)]
fn not_a_name(item: &Bound<'_, PyAny>, at: usize, what: &dyn Fn() -> String, e: PyErr) -> PyErr {
    if item.is_instance_of::<PyString>() {
        return e;
    }
    PyTypeError::new_err(format!("{}: item {at} is {}", what(), describe(item)))
}

/// A short description of a value given where a list is expected, for error messages: as
/// [`describe_value`], but "one str ('ab')" for a `str` (one name, not a list of them).
#[cold]
#[inline(never)]
pub fn describe(obj: &Bound<'_, PyAny>) -> String {
    let described = describe_value(obj);
    if obj.is_instance_of::<PyString>() {
        format!("one {described}")
    } else {
        described
    }
}

/// A short description of a value given as an argument, for error messages: "None", or the
/// type's name with the value's `repr` (cut to 40 characters), as "float (1.5)", "str
/// ('ab')" or "bytes (b'ab')".
#[cold]
#[inline(never)]
pub fn describe_value(obj: &Bound<'_, PyAny>) -> String {
    if obj.is_none() {
        return "None".to_owned();
    }
    let kind = type_name(obj);
    match cut_repr(obj) {
        Some(shown) if !shown.is_empty() => format!("{kind} ({shown})"),
        _ => kind,
    }
}

/// A value as an error message shows it after "got": its `repr` cut to 40 characters
/// ("-1", "[1, 2, 3]", "'xxx...'"), or its type's name when its `repr` fails (a deeply
/// nested list's raises `RecursionError`) or is empty. Never the whole `repr`: a big list's
/// would make a message of megabytes.
#[cold]
#[inline(never)]
pub fn short_repr(obj: &Bound<'_, PyAny>) -> String {
    match cut_repr(obj) {
        Some(shown) if !shown.is_empty() => shown,
        _ => type_name(obj),
    }
}

/// The name of `obj`'s type, or "an object" when it cannot be read.
fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "an object".to_owned(), |name| name.to_string())
}

/// `obj`'s `repr` cut to 40 characters (then ending in "..."); None when it fails (its
/// exception is dropped: the error being built is the one to raise).
fn cut_repr(obj: &Bound<'_, PyAny>) -> Option<String> {
    let shown = obj.repr().ok()?.to_string();
    Some(match shown.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &shown[..cut]),
        None => shown,
    })
}

/// [`names`] for a list of entity names given to the knowledge graph method `method` (an
/// item with a lone surrogate is a `GraphError`).
///
/// # Errors
/// As [`names`].
pub fn entity_names(obj: &Bound<'_, PyAny>, method: &str) -> PyResult<Vec<PyBackedStr>> {
    names(
        obj,
        &|| format!("{method} takes a list of entity names"),
        CoreError::Graph,
    )
}

/// [`text`] for an optional argument: None stays None; anything else not a `str` is a
/// `TypeError` naming the argument `name` ("a str or None").
///
/// # Errors
/// As [`text`].
#[inline]
pub fn optional_text(
    obj: &Bound<'_, PyAny>,
    name: &str,
    error: impl FnOnce(String) -> CoreError,
) -> PyResult<Option<PyBackedStr>> {
    if obj.is_none() {
        Ok(None)
    } else if obj.is_instance_of::<PyString>() {
        text(obj, name, error).map(Some)
    } else {
        Err(wrong_type(obj, name, OPTIONAL_STR))
    }
}

/// A `bool` argument (Python's, or numpy's `bool_`, as PyO3's own conversion takes it).
///
/// # Errors
/// `TypeError` naming the argument `name` for anything else (an int included).
#[inline]
pub fn flag(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<bool> {
    match obj.extract::<bool>() {
        Ok(value) => Ok(value),
        Err(e) => Err(named(obj, name, BOOL, e)),
    }
}

/// What a `str` argument takes, for [`wrong_type`].
pub const STR: &str = "a str";
/// What an optional `str` argument takes, for [`wrong_type`].
pub const OPTIONAL_STR: &str = "a str or None";
/// What an int argument takes, for [`wrong_type`].
pub const INT: &str = "an int";
/// What a bool argument takes, for [`wrong_type`].
pub const BOOL: &str = "a bool";
/// What a real-number argument takes, for [`wrong_type`].
pub const REAL: &str = "a real number";

/// The `TypeError` for `obj` given as the argument `name`, which takes `what` (such as
/// [`STR`]): "name must be what, got <[`describe_value`]>".
#[cold]
#[inline(never)]
pub fn wrong_type(obj: &Bound<'_, PyAny>, name: &str, what: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "{name} must be {what}, got {}",
        describe_value(obj)
    ))
}

/// The error `e` of converting `obj`, the argument `name`, to `what`: a `TypeError` becomes
/// [`wrong_type`]'s; any other (an exception raised by the value's own `__index__`, say)
/// stays as it is.
#[cold]
#[inline(never)]
fn named(obj: &Bound<'_, PyAny>, name: &str, what: &str, e: PyErr) -> PyErr {
    if e.is_instance_of::<PyTypeError>(obj.py()) {
        wrong_type(obj, name, what)
    } else {
        e
    }
}

/// Refuses a numpy masked array (`numpy.ma.MaskedArray`) that masks any value, given as the
/// argument `what` where an array of numbers is read: rust-numpy reads a masked array as the
/// plain array it extends (so do `np.asarray` and a float conversion of its rows), and the
/// values under the mask would be taken as data. A masked array that masks nothing (its mask
/// is `np.ma.nomask` or all False) is read as its data, as every value of it is one.
/// `error` receives the message and makes the calling method's typed error.
///
/// A plain `ndarray` (the usual input) is told by its type pointer; anything but an array
/// by a type check; numpy is not imported for this.
///
/// # Errors
/// `error(message)` for a masked array with a masked value; what `numpy.ma` raises while
/// its mask is counted.
#[inline]
pub fn not_masked(
    value: &Bound<'_, PyAny>,
    what: &str,
    error: impl FnOnce(String) -> CoreError,
) -> PyResult<()> {
    if !is_array_subclass(value) {
        return Ok(());
    }
    refuse_masked(value, what, error)
}

/// Whether `value` is a numpy array, of `ndarray` or a subclass (a memmap, a matrix, a
/// library's own); false for anything while numpy is not imported (not imported for this).
#[inline]
pub fn is_array(value: &Bound<'_, PyAny>) -> bool {
    numpy_complex_type(value.py()).is_some() && value.is_instance_of::<PyUntypedArray>()
}

/// Whether `value` is a numpy array of a subclass of `ndarray` (a masked array, a matrix, a
/// memmap): no plain `ndarray`, nor anything while numpy is not imported.
#[inline]
pub fn is_array_subclass(value: &Bound<'_, PyAny>) -> bool {
    if value.is_exact_instance_of::<PyFloat>() || value.is_exact_instance_of::<PyInt>() {
        return false;
    }
    // No array while numpy is not imported: the array type checks would import it.
    numpy_complex_type(value.py()).is_some()
        && !value.is_exact_instance_of::<PyUntypedArray>()
        && value.is_instance_of::<PyUntypedArray>()
}

/// The error of [`not_masked`], for an `ndarray` subclass (refused only when it masks a value).
#[cold]
#[inline(never)]
fn refuse_masked(
    value: &Bound<'_, PyAny>,
    what: &str,
    error: impl FnOnce(String) -> CoreError,
) -> PyResult<()> {
    match masked_count(value)? {
        Some(count) if count > 0 => {
            let values = if count == 1 { "value" } else { "values" };
            Err(error(format!(
                "{what} is a numpy masked array with {count} masked {values}: it is refused, as \
                 the values under the mask would be read as data; fill them first \
                 (x.filled(0.0), or another value) or leave them out (a masked array that \
                 masks nothing is read as its data)"
            ))
            .into())
        }
        _ => Ok(()),
    }
}

/// How many values a numpy masked array masks (`numpy.ma.count_masked`); None for any other
/// value, an `ndarray` of another subclass included.
///
/// # Errors
/// What importing `numpy.ma` or counting the mask raises.
#[cold]
#[inline(never)]
pub fn masked_count(value: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    if !is_array_subclass(value) {
        return Ok(None);
    }
    let py = value.py();
    static MASKED_ARRAY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    if !value.is_instance(MASKED_ARRAY.import(py, "numpy.ma", "MaskedArray")?)? {
        return Ok(None);
    }
    static COUNT_MASKED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let count = COUNT_MASKED
        .import(py, "numpy.ma", "count_masked")?
        .call1((value,))?;
    Ok(Some(count.extract()?))
}

/// A numpy masked array that masks nothing, as the plain `ndarray` of its data (a view, no
/// copy); None for any other value. For a reader that tells arrays by their exact type.
///
/// # Errors
/// As [`masked_count`].
#[cold]
#[inline(never)]
pub fn unmasked_data<'py>(value: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    match masked_count(value)? {
        Some(0) => Ok(Some(value.getattr(pyo3::intern!(value.py(), "data"))?)),
        _ => Ok(None),
    }
}
