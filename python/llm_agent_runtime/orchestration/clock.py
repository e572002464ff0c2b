"""Injectable time: every orchestration primitive reads time and sleeps through a `Clock`.

Tests pass a `FakeClock` and never sleep for real.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

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

    def now(self) -> float:
        """Returns `time.monotonic()`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleeps for real."""
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that only moves when told to; `sleep` advances it instead of waiting.

    Args:
        start: the initial time in seconds.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.sleeps: list[float] = []
        """Every duration passed to `sleep`, in order (lets tests check backoff)."""

    def now(self) -> float:
        """Returns the fake time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Moves time forward.

        Raises:
            ValueError: `seconds` is negative (monotonic time never goes back).
        """
        if seconds < 0:
            raise ValueError(f"cannot move a monotonic clock back ({seconds} s)")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Records the sleep, advances time by it and yields to the event loop once."""
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


SYSTEM_CLOCK = SystemClock()
"""The shared default clock."""
