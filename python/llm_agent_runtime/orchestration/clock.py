"""Injectable time: every orchestration primitive reads time and sleeps through a `Clock`.

Tests pass a `FakeClock` and never sleep for real.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from typing import Any, Protocol, cast, runtime_checkable

from llm_agent_runtime._copies import CopiedWhole
from llm_agent_runtime.orchestration._checks import check_real, safe_repr

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A monotonic clock that can also wait."""

    def now(self) -> float:
        """Returns monotonic time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Waits `seconds` of this clock's time."""
        ...


class SystemClock:
    """The real clock: `time.monotonic` and `asyncio.sleep`."""

    def __repr__(self) -> str:
        return "SystemClock()"

    def now(self) -> float:
        """Returns `time.monotonic()`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleeps for real."""
        await asyncio.sleep(seconds)


class FakeClock(CopiedWhole):
    """Virtual time for tests: it moves only through `advance` and sleeping tasks.

    `sleep` never waits for real. A sleeping task registers its deadline; once no other work
    is ready to run in the event loop, the clock jumps to the earliest deadline and wakes that
    sleeper (an "autojump" clock). Concurrent sleepers therefore wake in deadline order, and
    time advances by the longest chain of sleeps, not their sum. (Work that waits on real I/O
    or a thread is not ready: the clock may jump meanwhile. A task that yields with
    `asyncio.sleep(0)` for ever holds the clock back 1,000 turns of the loop at most.)

    Event loops may use one clock in turn (each `asyncio.run` of a test, say): sleepers that a
    closed loop left behind are dropped, never woken.

    Args:
        start: the initial time in seconds.

    Raises:
        ValueError: `start` is NaN or infinite (time would stay so for good), or is not a
            number (a bool included).
    """

    # Event-loop turns left to ready work before the clock jumps to the next deadline: at
    # most, while other work is ready; at least, where the loop does not show what is ready.
    _MAX_SETTLE_TURNS = 1000
    _MIN_SETTLE_TURNS = 3

    def __init__(self, start: float = 0.0) -> None:
        start = check_real("start", start)
        if not -math.inf < start < math.inf:  # NaN fails too
            raise ValueError(f"a clock must start at a finite time, got {start} s")
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._pushed = 0  # breaks ties of deadlines (a plain count: copies and pickles)
        # The loop a jump is scheduled on (None: none is); one that stopped or was closed
        # before running it leaves it to the next loop that sleeps.
        self._jump_loop: asyncio.AbstractEventLoop | None = None
        self.sleeps: list[float] = []
        """Every duration passed to `sleep`, in order (lets tests check backoff)."""

    def _in_use(self) -> str | None:
        """A copy is its own (see `CopiedWhole`), but not while tasks sleep on it."""
        # Sleeps cancelled, or a closed loop's, are no one's: they kept a clock uncopyable
        # for good.
        if any(_gone(future) for _, _, future in self._sleepers):
            self._sleepers = [s for s in self._sleepers if not _gone(s[2])]
            heapq.heapify(self._sleepers)
        return "tasks sleep on it" if self._sleepers else None

    def __getstate__(self) -> dict[str, Any]:
        """Its state for a copy or a pickle: no jump scheduled (a loop's, see `_jump`)."""
        return {**vars(self), "_jump_loop": None}

    @safe_repr
    def __repr__(self) -> str:
        return f"FakeClock(now={self._now})"

    def now(self) -> float:
        """Returns the fake time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Moves time forward, waking every sleeper whose deadline has come.

        Sleepers of an event loop that was closed are dropped instead.

        `seconds` is any real number, as `start` is (a `Decimal` or a `Fraction` too).

        Raises:
            ValueError: `seconds` is negative (monotonic time never goes back), NaN or
                infinite (time would stay NaN or infinite for good), or is not a number (a
                bool included: it moved the clock by 1 s); or the time it leads to is past
                the float range.
        """
        # As a float: a Decimal cannot be added to the time, an int past the float range
        # overflowed it (here infinite, so refused), a str failed the comparison.
        seconds = check_real("seconds", seconds)
        if not 0 <= seconds < math.inf:  # NaN fails too
            raise ValueError(f"can only move a clock forward by a finite time, got {seconds} s")
        if self._now + seconds == math.inf:  # two finite steps may still pass the float range
            raise ValueError(
                f"moving the clock by {seconds} s would take it past the float range "
                f"(it is at {self._now} s)"
            )
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not _gone(future):
                future.set_result(None)

    async def sleep(self, seconds: float) -> None:
        """Records the sleep and waits until the virtual time reaches its deadline."""
        self.sleeps.append(seconds)
        deadline = self._now + max(0.0, seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pushed += 1
        heapq.heappush(self._sleepers, (deadline, self._pushed, future))
        self._schedule_jump()
        try:
            await future
        finally:
            if not _gone(future):
                future.cancel()

    def _schedule_jump(self) -> None:
        loop = asyncio.get_running_loop()
        # Another loop's jump, if any, is not coming: that loop is not running.
        if self._jump_loop is not loop:
            self._jump_loop = loop
            loop.call_soon(self._jump, 1)

    def _jump(self, turns: int) -> None:
        loop = asyncio.get_running_loop()
        if self._jump_loop is not loop:
            return  # a loop that stopped before its jump ran: another loop's jump took over
        # asyncio's queue of ready callbacks (private; an event loop without one, such as
        # uvloop, gets the fixed minimum of turns instead).
        ready = getattr(loop, "_ready", None)
        if (ready is None and turns < self._MIN_SETTLE_TURNS) or (
            ready and turns < self._MAX_SETTLE_TURNS
        ):
            loop.call_soon(self._jump, turns + 1)
            return
        self._jump_loop = None
        while self._sleepers and _gone(self._sleepers[0][2]):
            heapq.heappop(self._sleepers)  # cancelled sleepers, or a closed loop's
        if not self._sleepers or self._sleepers[0][0] == math.inf:
            return  # what sleeps for ever is never woken, as on the system clock
        self.advance(max(0.0, self._sleepers[0][0] - self._now))
        if self._sleepers:
            self._schedule_jump()


def _gone(future: asyncio.Future[None]) -> bool:
    """Whether a sleeper's future is done, or was left by an event loop that was closed."""
    return future.done() or future.get_loop().is_closed()


SYSTEM_CLOCK = SystemClock()
"""The shared default clock."""


def checked_clock(clock: object) -> Clock:
    """`clock` when it can be a `Clock`: an object with callable `now` and `sleep`.

    None is the system clock. (Whether `sleep` gives an awaitable is not told here: a
    decorated `async def`, or a `def` that returns a coroutine, does.)

    Raises:
        TypeError: `clock` is something else: `time.monotonic`, say, or the `FakeClock` class
            rather than an instance (else the first use fails, or a breaker that cannot read
            the time never opens).
    """
    if clock is None:
        return SYSTEM_CLOCK
    usable = not isinstance(clock, type) and all(
        callable(getattr(clock, name, None)) for name in ("now", "sleep")
    )
    if not usable:
        raise TypeError(f"clock must be a Clock (with now() and sleep()), got {clock!r:.80}")
    return cast(Clock, clock)
