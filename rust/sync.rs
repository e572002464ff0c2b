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
//! Each helper also turns a panic inside the critical section into `AgentRuntimeError`. The
//! `_detached` ones are for critical sections whose work grows with the data: they release
//! the GIL even when the lock is free (the fast path above is for O(1) work).
//!
//! [`parallel`] is the one way the core runs work over threads: on a rayon pool built for
//! the calling process, so that a `fork()`ed child (a `multiprocessing` worker) never waits
//! for the parent's pool threads, which do not exist in the child.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use parking_lot::{Mutex, RwLock};
use pyo3::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};

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

/// [`read`] for work that grows with the data: run with the GIL released even when the lock
/// is free, so that other Python threads go on meanwhile.
///
/// # Errors
/// `AgentRuntimeError` when `f` panics.
pub fn read_detached<T, R>(
    py: Python<'_>,
    lock: &RwLock<T>,
    f: impl FnOnce(&T) -> R + Send,
) -> PyResult<R>
where
    T: Send + Sync,
    R: Send,
{
    catch_panics(|| Ok(py.detach(|| f(&lock.read()))))
}

/// [`write`] for work that grows with the data (see [`read_detached`]).
///
/// # Errors
/// `AgentRuntimeError` when `f` panics.
pub fn write_detached<T, R>(
    py: Python<'_>,
    lock: &RwLock<T>,
    f: impl FnOnce(&mut T) -> R + Send,
) -> PyResult<R>
where
    T: Send + Sync,
    R: Send,
{
    catch_panics(|| Ok(py.detach(|| f(&mut lock.write()))))
}

/// [`lock`] for work that grows with the data (see [`read_detached`]).
///
/// # Errors
/// `AgentRuntimeError` when `f` panics.
pub fn lock_detached<T, R>(
    py: Python<'_>,
    lock: &Mutex<T>,
    f: impl FnOnce(&mut T) -> R + Send,
) -> PyResult<R>
where
    T: Send,
    R: Send,
{
    catch_panics(|| Ok(py.detach(|| f(&mut lock.lock()))))
}

/// A rayon pool and the id of the process whose threads run it.
struct ProcessPool {
    /// `std::process::id()` of the process that built `pool`.
    pid: u32,
    /// The pool; its threads exist only in process `pid`.
    pool: ThreadPool,
}

/// The pool of the process that last built one, leaked (never freed): a forked child inherits
/// the pointer but not the threads, so it builds its own pool and leaves the parent's alone
/// (dropping it would wake threads that are not there, through locks that the fork may have
/// copied while held). An atomic pointer rather than a lock, for the same reason: a fork taken
/// while another thread held a lock would leave it locked forever in the child.
static POOL: AtomicPtr<ProcessPool> = AtomicPtr::new(ptr::null_mut());

/// This process's rayon pool: the stored one when this process built it, else a new one
/// stored in its place. `None` when no pool can be built (threads cannot be spawned).
fn process_pool() -> Option<&'static ThreadPool> {
    let pid = std::process::id();
    let mut current = POOL.load(Ordering::Acquire);
    // SAFETY: a non-null `POOL` points to a leaked `ProcessPool`, valid for the whole process.
    if let Some(stored) = unsafe { current.as_ref() } {
        if stored.pid == pid {
            return Some(&stored.pool);
        }
    }
    let pool = ThreadPoolBuilder::new()
        .thread_name(|i| format!("llm-agent-runtime-{i}"))
        .build()
        .ok()?;
    let mine = Box::into_raw(Box::new(ProcessPool { pid, pool }));
    loop {
        match POOL.compare_exchange(current, mine, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: `mine` was just leaked from a `Box` and is never freed.
            Ok(_) => return Some(unsafe { &(*mine).pool }),
            Err(other) => {
                // SAFETY: as above, a non-null `POOL` is a leaked `ProcessPool`.
                if let Some(stored) = unsafe { other.as_ref() } {
                    if stored.pid == pid {
                        // Another thread of this process stored its pool first: use that one
                        // and free ours (its threads are this process's, so it shuts down).
                        // SAFETY: `mine` came from `Box::into_raw` and was never shared.
                        drop(unsafe { Box::from_raw(mine) });
                        return Some(&stored.pool);
                    }
                }
                current = other;
            }
        }
    }
}

/// Runs `op` on this process's rayon pool (see the module docs), passing it the pool's thread
/// count (for sizing chunks: `rayon::current_num_threads()` outside the pool counts rayon's
/// global pool, which the core never uses). Every rayon call of the core goes through here.
///
/// `None` (and `op` is not run) when no pool can be built, as when threads cannot be
/// spawned: the caller then does the work on the calling thread.
pub fn parallel<R: Send>(op: impl FnOnce(usize) -> R + Send) -> Option<R> {
    let pool = process_pool()?;
    Some(pool.install(|| op(pool.current_num_threads())))
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;

    #[test]
    fn parallel_work_runs_on_one_pool_per_process() {
        let sum = parallel(|threads| {
            assert!(threads >= 1);
            assert_eq!(rayon::current_num_threads(), threads); // inside the pool
            (0..10_000u64).into_par_iter().sum::<u64>()
        });
        assert_eq!(sum, Some(49_995_000));
        let first = POOL.load(Ordering::Acquire);
        assert!(!first.is_null());
        // Threads racing for the pool all get this process's one pool.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| assert_eq!(parallel(|_| 1), Some(1)));
            }
        });
        assert_eq!(POOL.load(Ordering::Acquire), first);
        // SAFETY: a non-null `POOL` is a leaked `ProcessPool`.
        assert_eq!(unsafe { (*first).pid }, std::process::id());
    }
}
