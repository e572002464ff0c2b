//! The store locks that Python threads share, taken so that no thread can hang the process.
//!
//! Two rules keep a store lock from deadlocking with the GIL:
//!
//! 1. **No Python while a lock is held.** Creating a Python object can start the cycle
//!    collector, which runs arbitrary `__del__` code: that code may hand the GIL to another
//!    thread (which then waits for the lock while holding the GIL), or need the lock itself
//!    (a write while this thread holds a read). So the critical section only copies into Rust
//!    values; Python objects are built after the guard is dropped. The helpers below make
//!    this a compile-time rule: the critical section must be `Send`, so it can capture
//!    neither a `Python` token nor a `Bound` object.
//! 2. **Never wait for a lock while holding the GIL.** A thread that holds a lock with the
//!    GIL released (a long search or insert, under `run_detached`) may need the GIL before it
//!    lets go only if rule 1 is broken, but waiting with the GIL held would still stall every
//!    Python thread for the length of that work. An uncontended lock is taken at once (no
//!    GIL round trip on the fast path); a contended one is waited for with the GIL released.
//!
//! Each helper also turns a panic inside the critical section into `AgentRuntimeError`.

use parking_lot::{Mutex, RwLock};
use pyo3::prelude::*;

use crate::errors::catch_panics;

/// Runs `f` on the value behind `lock`, read-locked (see the module docs).
///
/// # Errors
/// `AgentRuntimeError` when `f` panics.
#[inline]
pub fn read<T, R>(py: Python<'_>, lock: &RwLock<T>, f: impl FnOnce(&T) -> R + Send) -> PyResult<R>
where
    T: Send + Sync,
    R: Send,
{
    catch_panics(|| {
        if let Some(guard) = lock.try_read() {
            return Ok(f(&guard));
        }
        Ok(py.detach(|| f(&lock.read())))
    })
}

/// Runs `f` on the value behind `lock`, write-locked (see the module docs).
///
/// # Errors
/// `AgentRuntimeError` when `f` panics.
#[inline]
pub fn write<T, R>(
    py: Python<'_>,
    lock: &RwLock<T>,
    f: impl FnOnce(&mut T) -> R + Send,
) -> PyResult<R>
where
    T: Send + Sync,
    R: Send,
{
    catch_panics(|| {
        if let Some(mut guard) = lock.try_write() {
            return Ok(f(&mut guard));
        }
        Ok(py.detach(|| f(&mut lock.write())))
    })
}

/// Runs `f` on the value behind `lock`, locked (see the module docs).
///
/// # Errors
/// `AgentRuntimeError` when `f` panics.
#[inline]
pub fn lock<T, R>(
    py: Python<'_>,
    lock: &Mutex<T>,
    f: impl FnOnce(&mut T) -> R + Send,
) -> PyResult<R>
where
    T: Send,
    R: Send,
{
    catch_panics(|| {
        if let Some(mut guard) = lock.try_lock() {
            return Ok(f(&mut guard));
        }
        Ok(py.detach(|| f(&mut lock.lock())))
    })
}
