"""Waiting for work that must not be abandoned half way, whatever cancels the waiter.

And, in that work, waiting for a lock in a way the cancellation ends (`wait_until`,
`acquire`).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_ABANDONED: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "_ABANDONED", default=None
)
"""Set in a call `run_in_thread` runs: the event its cancellation sets."""


class Abandoned(Exception):
    """The call a thread works for was cancelled: the thread gives up what it waited to do.

    Raised before the work starts, or by `wait_until` (see `run_in_thread`).
    """


async def wait_through_cancellation(
    future: asyncio.Future[Any], timeout: float | Callable[[], float | None] | None = None
) -> None:
    """Waits until `future` is done, at most `timeout` seconds (None: no bound).

    A cancellation of the waiting task meanwhile does not stop the wait; the caller, which
    is handling a first cancellation, raises that one after. Used for a thread a cancelled
    call must wait for, and a cleanup that must not stop half way. A callable `timeout` is
    asked at the start, and again at each cancellation for as long as it gives no bound
    (a cancellation may start the clock it reads).
    """
    loop = asyncio.get_running_loop()
    ask: Callable[[], float | None] | None = None
    if callable(timeout):
        ask, seconds = timeout, timeout()
    else:
        seconds = timeout
    deadline = None if seconds is None else loop.time() + seconds
    while not future.done():
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            return
        try:
            await asyncio.wait([future], timeout=left)
        except asyncio.CancelledError:
            if deadline is None and ask is not None:
                seconds = ask()
                deadline = None if seconds is None else loop.time() + seconds


def retrieve_outcome(future: asyncio.Future[Any]) -> None:
    """Marks a finished future's exception retrieved (not logged): its waiter raises its own."""
    if not future.cancelled():
        future.exception()


def wait_until(ready: Callable[[], bool], timeout: float | None = None) -> bool:
    """Calls `ready` until it returns True, pausing between tries (1 ms, growing to 5 ms).

    For a lock whose blocking wait cannot be given up (`flock`): `ready` tries it without
    waiting. In a call `run_in_thread` runs, it gives up as soon as that call is cancelled,
    before any further try. Returns True once `ready` did, False when `timeout` seconds
    (None: no limit) passed first.

    Raises:
        Abandoned: The call was cancelled.
    """
    abandoned = _ABANDONED.get()
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.001
    while True:
        if abandoned is not None and abandoned.is_set():
            raise Abandoned
        if ready():
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if abandoned is None:
            time.sleep(pause)
        elif abandoned.wait(pause):  # woken by the cancellation, not after the pause
            raise Abandoned
        pause = min(pause * 2, 0.005)


def given_up() -> bool:
    """Whether the call `run_in_thread` runs this work for was cancelled (False outside one)."""
    abandoned = _ABANDONED.get()
    return abandoned is not None and abandoned.is_set()


def acquire(lock: threading.Lock) -> None:
    """Takes `lock`, waiting as long as it takes, unless the call it works for is cancelled.

    For a lock a call holds while its work waits on something slow (SQLite's connection,
    held through a wait for another process's write lock): in a call `run_in_thread` runs,
    a cancellation ends the wait (checked every 10 ms; a release wakes the wait at once),
    and a lock taken after the cancellation is given back, so the work queued behind it
    never runs.

    Raises:
        Abandoned: The call was cancelled; the lock is not held.
    """
    abandoned = _ABANDONED.get()
    if abandoned is None:
        lock.acquire()
        return
    while not lock.acquire(timeout=0.01):
        if abandoned.is_set():
            raise Abandoned
    if abandoned.is_set():
        lock.release()
        raise Abandoned


async def run_in_thread(work: Callable[[], T], grace: float | None = None) -> T:
    """Runs `work` in a worker thread and returns what it returns (or raises what it raises).

    `work` runs in a copy of the caller's context (`contextvars`), as with
    `asyncio.to_thread`: what it logs keeps the caller's request ids and traces.

    A thread cannot be stopped, so a cancelled call tells it to give up, and does not leave
    it running unseen (a write that lands after the caller's next one, say): cancelled
    before its thread started, `work` never runs; cancelled later, each `wait_until` or
    `acquire` it is in or comes to raises `Abandoned`, and the call waits for the thread, at
    most `grace` seconds (None: until it ends; 0: not at all), before the cancellation goes
    on. Only work still running after the grace may then happen later. A cancellation asked
    before the call and not delivered yet is delivered first: `work` never runs.
    """
    # A cancellation asked and not delivered yet (Ctrl-C under `asyncio.run`) is delivered
    # here, before the thread is asked for: else `work` ran, its caller told it was cancelled.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        await asyncio.sleep(0)
    guard = threading.Lock()
    abandoned = threading.Event()
    started = False

    def guarded() -> T:
        nonlocal started
        with guard:
            if abandoned.is_set():  # cancelled before this thread started: never runs
                raise Abandoned
            started = True
        _ABANDONED.set(abandoned)  # in the copied context: this call's only
        try:
            return work()
        except StopIteration as error:  # a future cannot carry one: its waiter would hang
            raise RuntimeError(f"the work raised StopIteration: {error!r}") from error

    context = contextvars.copy_context()
    done = asyncio.get_running_loop().run_in_executor(None, context.run, guarded)
    done.add_done_callback(retrieve_outcome)  # a cancelled caller never sees it
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        with guard:
            abandoned.set()
            running = started
        if running:
            await wait_through_cancellation(done, grace)
        raise
