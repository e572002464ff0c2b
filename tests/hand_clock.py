"""A clock for orchestration tests that moves only when the test moves it."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class HandClock:
    """A clock that stands still until `advance` or `run`, waking the sleepers in order.

    Lets a test take many turns of the event loop at one instant (a `FakeClock` moves once
    the loop idles a bit).
    """

    def __init__(self) -> None:
        self.time = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.time + seconds, next(self._order), future))
        try:
            await future
        finally:
            future.cancel()

    async def advance(self, seconds: float) -> None:
        """Moves time `seconds` on, through each sleeper's deadline on the way."""
        target = self.time + seconds
        await self._wake_until(target)
        self.time = target
        await _let_run()

    async def run(self) -> None:
        """Moves time from deadline to deadline until no one sleeps."""
        await self._wake_until(None)

    def sleeping(self) -> int:
        return sum(not future.done() for _, _, future in self._sleepers)

    async def _wake_until(self, target: float | None) -> None:
        while True:
            await _let_run()
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or (target is not None and self._sleepers[0][0] > target):
                return
            deadline, _, future = heapq.heappop(self._sleepers)
            self.time = max(self.time, deadline)
            future.set_result(None)


async def _let_run() -> None:
    for _ in range(30):  # the woken tasks run, and may sleep again
        await asyncio.sleep(0)
