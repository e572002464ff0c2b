//! Errors of the Rust core and their one mapping onto the Python exception classes.
//!
//! Library code returns [`CoreError`] and knows nothing of Python. The exception classes are
//! defined once, in `llm_agent_runtime/errors.py` (they carry attributes and docstrings), and
//! imported here with `import_exception!`, so Rust and Python raise the very same classes.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use pyo3::marker::Ungil;
use pyo3::prelude::*;

pyo3::import_exception!(llm_agent_runtime.errors, AgentRuntimeError);
pyo3::import_exception!(llm_agent_runtime.errors, AgentLoopError);
pyo3::import_exception!(llm_agent_runtime.errors, MemoryStoreError);
pyo3::import_exception!(llm_agent_runtime.errors, GraphError);
pyo3::import_exception!(llm_agent_runtime.errors, PersistenceError);
pyo3::import_exception!(llm_agent_runtime.errors, ParseError);

/// Every error the Rust core can produce. Each variant maps to exactly one Python class.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// Text that is not a ReAct step; `position` is the byte offset where parsing failed.
    Parse {
        /// What was expected and what was found.
        message: String,
        /// Byte offset into the input where the problem was found, when known.
        position: Option<usize>,
    },
    /// Bad input to, or a failure of, a memory store (vector index, LRU, episodic, semantic).
    Memory(String),
    /// Bad input to, or a failure of, the knowledge graph.
    Graph(String),
    /// A failure reading or writing persisted data.
    Persistence(String),
    /// A failure of the agent loop.
    AgentLoop(String),
    /// Any other runtime failure.
    Runtime(String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Parse {
                message,
                position: Some(pos),
            } => write!(f, "{message} (at byte {pos})"),
            CoreError::Parse {
                message,
                position: None,
            } => f.write_str(message),
            CoreError::Memory(m)
            | CoreError::Graph(m)
            | CoreError::Persistence(m)
            | CoreError::AgentLoop(m)
            | CoreError::Runtime(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CoreError {}

/// Result alias used throughout the core.
pub type CoreResult<T> = Result<T, CoreError>;

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> PyErr {
        let text = err.to_string();
        match err {
            CoreError::Parse { message, position } => ParseError::new_err((message, position)),
            CoreError::Memory(_) => MemoryStoreError::new_err(text),
            CoreError::Graph(_) => GraphError::new_err(text),
            CoreError::Persistence(_) => PersistenceError::new_err(text),
            CoreError::AgentLoop(_) => AgentLoopError::new_err(text),
            CoreError::Runtime(_) => AgentRuntimeError::new_err(text),
        }
    }
}

/// Describes a caught panic payload (a `&str` or `String` message, or an opaque value).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

pub(crate) fn panic_to_pyerr(payload: &(dyn Any + Send)) -> PyErr {
    AgentRuntimeError::new_err(format!(
        "internal error in the Rust core (please report it): {}",
        panic_message(payload)
    ))
}

/// Runs `f` with the GIL released, turning a panic into `AgentRuntimeError` and a
/// [`CoreError`] into its Python class.
///
/// Every call whose cost grows with its input goes through here: releasing the GIL lets other
/// Python threads run during long scans, and PyO3 would otherwise surface a panic as
/// `PanicException`, a `BaseException` that `except Exception` does not catch. `f` must hold
/// no Python references: extract inputs into Rust values (or borrowed slices) first.
pub fn run_detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Ungil + Send,
    F: Ungil + Send + FnOnce() -> CoreResult<T>,
{
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(result) => result.map_err(PyErr::from),
        Err(payload) => Err(panic_to_pyerr(payload.as_ref())),
    }
}

/// How long a computation run by [`run_interruptible`] goes at most between two looks for
/// pending signals (a look takes the GIL: done per pass, it would cost small runs much).
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// The error a computation returns when it stops early for a signal; the helpers below
/// return the exception the signal's handler raised in its place.
pub fn interrupted() -> CoreError {
    CoreError::Runtime("interrupted by a signal".into())
}

/// Whether the calling thread is Python's main thread: the only one signal handlers run in,
/// so elsewhere a look for them would find nothing, and each would wait for the GIL (up to a
/// switch interval) for nothing.
fn on_main_thread(py: Python<'_>) -> PyResult<bool> {
    let threading = py.import("threading")?;
    Ok(threading
        .call_method0("current_thread")?
        .is(&threading.call_method0("main_thread")?))
}

/// Runs `f` as [`run_detached`] does (GIL released), giving it a check to call at points
/// where it may stop (once a pass of a long computation): every
/// [`SIGNAL_CHECK_INTERVAL`] at most, the check takes the GIL briefly and runs pending
/// signal handlers (in Python's main thread only: elsewhere none run). When one raises (`KeyboardInterrupt` on Ctrl-C), the check fails, `f`
/// returns early, and that exception is what this returns.
pub fn run_interruptible<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Ungil + Send,
    F: Ungil + Send + FnOnce(&mut dyn FnMut() -> CoreResult<()>) -> CoreResult<T>,
{
    let on_main = on_main_thread(py)?;
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let result = run_detached(py, || {
        let mut last = Instant::now();
        let mut check = || {
            if !on_main || last.elapsed() < SIGNAL_CHECK_INTERVAL {
                return Ok(());
            }
            let looked = Python::attach(|py| py.check_signals());
            // From the look's end: the wait for the GIL is not computation.
            last = Instant::now();
            match looked {
                Ok(()) => Ok(()),
                Err(err) => {
                    *raised.lock() = Some(err);
                    // Only stops `f`: the exception raised above is returned instead.
                    Err(interrupted())
                }
            }
        };
        f(&mut check)
    });
    match raised.into_inner() {
        Some(err) => Err(err),
        None => result,
    }
}

/// Runs `f` as [`run_detached`] does (GIL released), giving it a stop flag to look at where
/// it may stop: for a computation spread over threads (rayon workers), which a check made on
/// the calling thread, as [`run_interruptible`]'s, cannot serve.
///
/// In Python's main thread, `f` runs on a thread of its own while the calling thread looks
/// for pending signals every [`SIGNAL_CHECK_INTERVAL`]. When a handler raises
/// (`KeyboardInterrupt` on Ctrl-C), the flag is set, `f` is waited for (it should then
/// return early, with [`interrupted`]), and that exception is what this returns. Elsewhere no
/// handler runs: `f` runs on the calling thread and the flag stays clear. `f` is `Fn` so that
/// it can still run on the calling thread when no thread can be started.
pub fn run_stoppable<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Ungil + Send,
    F: Ungil + Send + Sync + Fn(&AtomicBool) -> CoreResult<T>,
{
    let stop = AtomicBool::new(false);
    if !on_main_thread(py)? {
        return run_detached(py, || f(&stop));
    }
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let result = run_detached(py, || {
        let (f, stop) = (&f, &stop);
        // The scope joins the thread before it ends: `f` never outlives what it borrows.
        thread::scope(|scope| {
            let (done, finished) = mpsc::channel::<()>();
            let spawned = thread::Builder::new()
                .name("llm-agent-runtime-stoppable".into())
                .spawn_scoped(scope, move || {
                    // Dropped as `f` returns or unwinds: either way, the wait below ends.
                    let _done = done;
                    f(stop)
                });
            let Ok(worker) = spawned else {
                // No thread to spare: run here, where nothing looks for signals meanwhile.
                return f(stop);
            };
            while let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(SIGNAL_CHECK_INTERVAL)
            {
                if let Err(err) = Python::attach(|py| py.check_signals()) {
                    *raised.lock() = Some(err);
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
            match worker.join() {
                Ok(result) => result,
                // Unwound again here, to become `AgentRuntimeError` as in `run_detached`.
                Err(payload) => resume_unwind(payload),
            }
        })
    });
    match raised.into_inner() {
        Some(err) => Err(err),
        None => result,
    }
}

/// Runs `f` with the GIL held, turning a panic into `AgentRuntimeError`.
///
/// For O(1) calls, where releasing and re-acquiring the GIL would cost more than the work.
pub fn catch_panics<T, F>(f: F) -> PyResult<T>
where
    F: FnOnce() -> PyResult<T>,
{
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(panic_to_pyerr(payload.as_ref())),
    }
}

/// Makes room for `extra` more items in `values`, or fails with [`CoreError::Memory`]: an
/// input-sized buffer that does not fit in memory must not abort the interpreter (Rust's
/// infallible allocations abort the process on failure; numpy raises `MemoryError`).
///
/// `what` names the buffer in the message. [`try_reserve_for`] raises another class.
///
/// # Errors
/// [`CoreError::Memory`] "out of memory" when the allocation fails or its size overflows.
pub fn try_reserve<T>(values: &mut Vec<T>, extra: usize, what: &str) -> CoreResult<()> {
    try_reserve_for(CoreError::Memory, values, extra, what)
}

/// [`try_reserve`] for the component whose error class is `kind` (such as
/// `CoreError::Graph`): a graph that runs out of memory raises `GraphError`, not
/// `MemoryStoreError`.
///
/// # Errors
/// `kind("out of memory: ...")` when the allocation fails or its size overflows.
pub fn try_reserve_for<T>(
    kind: fn(String) -> CoreError,
    values: &mut Vec<T>,
    extra: usize,
    what: &str,
) -> CoreResult<()> {
    check_room_for::<T>(kind, extra, what)?;
    values
        .try_reserve(extra)
        .map_err(|_| out_of_memory_for(kind, extra.saturating_mul(std::mem::size_of::<T>()), what))
}

/// Refuses `len` items of `T` that could never be allocated (their size overflows, or is
/// larger than the machine's memory), allocating nothing: the check before every fallible
/// reservation, and before a loop that walks that many items of a Python sequence before it
/// stores them, which would otherwise run for as long as the sequence says it is
/// (`range(2**62)` never ends).
///
/// # Errors
/// `kind("out of memory: ...")` when the items cannot fit.
pub fn check_room_for<T>(kind: fn(String) -> CoreError, len: usize, what: &str) -> CoreResult<()> {
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    if bytes > isize::MAX.unsigned_abs() || beyond_machine_memory(bytes) {
        return Err(out_of_memory_for(kind, bytes, what));
    }
    Ok(())
}

/// Buffers from this size on are checked against the machine's memory before they are
/// reserved (smaller ones are not worth the system call).
const CHECKED_BYTES: usize = 1 << 30;

/// Whether a buffer of `bytes` is larger than all of this machine's memory (RAM and swap).
/// Linux overcommits: reserving it succeeds, and the kernel kills the process (no error to
/// raise) as the buffer is filled.
fn beyond_machine_memory(bytes: usize) -> bool {
    bytes >= CHECKED_BYTES && machine_memory().is_some_and(|total| bytes > total)
}

/// This machine's RAM and swap, in bytes (None where it is not known).
#[cfg(target_os = "linux")]
fn machine_memory() -> Option<usize> {
    let mut info = std::mem::MaybeUninit::<libc::sysinfo>::zeroed();
    // SAFETY: `sysinfo` fills the struct it is given, which is zeroed (a valid value) before.
    if unsafe { libc::sysinfo(info.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: zeroed, then filled by the call: initialized either way.
    let info = unsafe { info.assume_init() };
    let unit = u64::from(info.mem_unit.max(1));
    // `c_ulong`: 64 bits here, 32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let total = u64::from(info.totalram).saturating_add(u64::from(info.totalswap));
    usize::try_from(total.saturating_mul(unit)).ok()
}

/// This machine's RAM and swap, in bytes (None where it is not known).
#[cfg(not(target_os = "linux"))]
fn machine_memory() -> Option<usize> {
    None
}

/// A vector of `len` copies of `value`, or [`CoreError::Memory`] when it does not fit (see
/// [`try_reserve`]).
///
/// # Errors
/// [`CoreError::Memory`] "out of memory" when the allocation fails or its size overflows.
pub fn try_filled<T: Clone>(len: usize, value: T, what: &str) -> CoreResult<Vec<T>> {
    try_filled_for(CoreError::Memory, len, value, what)
}

/// [`try_filled`] for the component whose error class is `kind` (see [`try_reserve_for`]).
///
/// # Errors
/// `kind("out of memory: ...")` when the allocation fails or its size overflows.
pub fn try_filled_for<T: Clone>(
    kind: fn(String) -> CoreError,
    len: usize,
    value: T,
    what: &str,
) -> CoreResult<Vec<T>> {
    check_room_for::<T>(kind, len, what)?;
    let mut values = Vec::new();
    values
        .try_reserve_exact(len)
        .map_err(|_| out_of_memory_for(kind, len.saturating_mul(std::mem::size_of::<T>()), what))?;
    values.resize(len, value);
    Ok(values)
}

/// The error of a failed allocation of `bytes` bytes for `what`, in a memory store or the
/// vector index ([`CoreError::Memory`]).
#[cold]
pub fn out_of_memory(bytes: usize, what: &str) -> CoreError {
    out_of_memory_for(CoreError::Memory, bytes, what)
}

/// The error of a failed allocation of `bytes` bytes for `what`, of the class `kind` of the
/// component that needed it (`CoreError::Graph` for the knowledge graph, whose callers catch
/// `GraphError`).
#[cold]
pub fn out_of_memory_for(kind: fn(String) -> CoreError, bytes: usize, what: &str) -> CoreError {
    kind(format!(
        "out of memory: {what} needs {bytes} bytes, which cannot be allocated"
    ))
}

/// Panics inside the detach helper; lets the tests prove a panic becomes `AgentRuntimeError`
/// and the interpreter survives.
#[pyfunction]
#[pyo3(name = "_raise_panic")]
pub fn raise_panic(py: Python<'_>, message: String) -> PyResult<()> {
    run_detached(py, move || -> CoreResult<()> {
        // The one deliberate panic: it exists to prove the conversion above.
        #[allow(clippy::panic)]
        std::panic::panic_any(message);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_includes_position() {
        let err = CoreError::Parse {
            message: "expected 'Action:'".into(),
            position: Some(12),
        };
        assert_eq!(err.to_string(), "expected 'Action:' (at byte 12)");
    }

    #[test]
    fn allocations_too_large_are_errors_not_aborts() {
        let err = try_filled(usize::MAX / 2, 0u64, "a test buffer").unwrap_err();
        assert!(
            matches!(err, CoreError::Memory(ref m) if m.starts_with("out of memory: a test buffer"))
        );
        let mut v: Vec<u8> = Vec::new();
        assert!(try_reserve(&mut v, isize::MAX as usize, "bytes").is_err());
        assert_eq!(try_filled(3, 7u8, "small").unwrap(), vec![7, 7, 7]);
        // More than the machine has: refused before any of it is touched (Linux would grant
        // the reservation, then kill the process as it fills it).
        if let Some(total) = machine_memory() {
            let err = try_filled(total / 4 + 1, 0u32, "a huge buffer").unwrap_err();
            assert!(matches!(err, CoreError::Memory(_)), "{err:?}");
        }
    }

    #[test]
    fn allocation_failures_take_the_class_of_their_component() {
        let err = try_filled_for(CoreError::Graph, usize::MAX / 2, 0u64, "a graph buffer");
        assert!(
            matches!(err, Err(CoreError::Graph(ref m)) if m.starts_with("out of memory: a graph buffer"))
        );
        let mut v: Vec<u8> = Vec::new();
        let err = try_reserve_for(CoreError::Graph, &mut v, isize::MAX as usize, "bytes");
        assert!(matches!(err, Err(CoreError::Graph(_))));
        assert!(matches!(
            out_of_memory_for(CoreError::Graph, 8, "x"),
            CoreError::Graph(ref m) if m == "out of memory: x needs 8 bytes, which cannot be allocated"
        ));
        assert!(matches!(out_of_memory(8, "x"), CoreError::Memory(_)));
        assert_eq!(
            try_filled_for(CoreError::Graph, 2, 1u8, "small").unwrap(),
            vec![1, 1]
        );
    }

    #[test]
    fn room_that_cannot_exist_is_refused_without_allocating() {
        let err = check_room_for::<f32>(CoreError::Memory, 1 << 62, "a walk").unwrap_err();
        assert!(
            matches!(err, CoreError::Memory(ref m) if m.starts_with("out of memory: a walk needs ")),
            "{err:?}"
        );
        let err = check_room_for::<u8>(CoreError::Graph, usize::MAX, "a walk");
        assert!(matches!(err, Err(CoreError::Graph(_))), "{err:?}");
        assert!(check_room_for::<u64>(CoreError::Memory, 1000, "a walk").is_ok());
        if let Some(total) = machine_memory() {
            assert!(
                check_room_for::<u8>(CoreError::Memory, total.saturating_add(1), "a walk").is_err()
            );
        }
    }

    #[test]
    fn panic_message_reads_str_and_string() {
        let a: Box<dyn Any + Send> = Box::new("boom");
        let b: Box<dyn Any + Send> = Box::new(String::from("bang"));
        let c: Box<dyn Any + Send> = Box::new(7_u8);
        assert_eq!(panic_message(a.as_ref()), "boom");
        assert_eq!(panic_message(b.as_ref()), "bang");
        assert_eq!(panic_message(c.as_ref()), "unknown panic payload");
    }
}
