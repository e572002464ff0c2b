"""BackpressureGuard used from several threads at once: the depth stays exact.

The runtime takes and gives back slots from sync entry points and worker threads. Each
test runs many threads against one guard with a tiny switch interval (so that threads switch
inside the guard's updates), then checks that the holders at once never exceeded the
capacity, that every refusal was counted, and that the depth came back to 0.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.orchestration.backpressure import BackpressureGuard, _Block

THREADS = 32
ROUNDS = 200
CAPACITY = 4
PAUSE_LIMIT_S = 0.5
"""How long a paused release waits for another thread's (which it blocks, once fixed)."""


@pytest.fixture(autouse=True)
def _switch_often() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class _Holders:
    """Counts the threads holding a slot at once (under its own lock) and the most seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def hold(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0)  # a moment's hold: another thread runs meanwhile
        with self._lock:
            self.now -= 1


def _run_threads(work: Callable[[], None]) -> None:
    start = threading.Barrier(THREADS)

    def run() -> None:
        start.wait()
        work()

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)


def test_acquire_and_release_from_many_threads_keep_the_depth_exact() -> None:
    metrics = ar.RuntimeMetrics()
    guard = BackpressureGuard(CAPACITY, metrics=metrics)
    holders = _Holders()
    counts_lock = threading.Lock()
    admitted = shed = 0
    errors: list[BaseException] = []

    def work() -> None:
        nonlocal admitted, shed
        mine_admitted = mine_shed = 0
        try:
            for _ in range(ROUNDS):
                try:
                    guard.acquire()
                except ar.BackpressureShedError as error:
                    assert error.capacity == CAPACITY and error.depth <= CAPACITY
                    mine_shed += 1
                    continue
                mine_admitted += 1
                try:
                    holders.hold()
                finally:
                    guard.release()
        except BaseException as error:  # reported below, not lost in the thread
            errors.append(error)
        with counts_lock:
            admitted += mine_admitted
            shed += mine_shed

    _run_threads(work)
    assert errors == []
    assert holders.most <= CAPACITY
    assert admitted + shed == THREADS * ROUNDS
    assert guard.shed_count == shed
    assert metrics.snapshot().backpressure_shed_count == shed
    assert guard.depth == 0


def test_try_acquire_from_many_threads_refuses_without_raising() -> None:
    guard = BackpressureGuard(CAPACITY)
    holders = _Holders()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(ROUNDS):
                if guard.try_acquire():
                    try:
                        holders.hold()
                    finally:
                        guard.release()
        except BaseException as error:  # a shed raised out of `try_acquire`, say
            errors.append(error)

    _run_threads(work)
    assert errors == []
    assert holders.most <= CAPACITY
    assert guard.shed_count == 0  # a refusal by `try_acquire` is not a shed
    assert guard.depth == 0


class _PausingGuard(BackpressureGuard):
    """A guard whose first `release()` on `thread` pauses while it looks up its block."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.thread: threading.Thread | None = None
        self.paused = threading.Event()
        self.other_done = threading.Event()

    def _block(self) -> _Block | None:
        if threading.current_thread() is self.thread and not self.paused.is_set():
            self.paused.set()
            self.other_done.wait(PAUSE_LIMIT_S)
        return super()._block()


def test_two_releases_of_one_slot_give_it_back_once() -> None:
    # Both releases saw depth 1 before either gave the slot back: the depth went to -1,
    # and the guard then admitted one holder over its capacity.
    guard = _PausingGuard(1)
    guard.acquire()
    outcomes: list[str] = []

    def release() -> None:
        try:
            guard.release()
            outcomes.append("released")
        except RuntimeError:
            outcomes.append("refused")

    first = threading.Thread(target=release)
    guard.thread = first
    first.start()
    assert guard.paused.wait(5)

    def other() -> None:
        release()
        guard.other_done.set()

    second = threading.Thread(target=other)
    second.start()
    first.join(5)
    second.join(5)
    assert sorted(outcomes) == ["refused", "released"]
    assert guard.depth == 0
    assert guard.try_acquire() and not guard.try_acquire()
