"""Fixtures and helpers shared by the persistence tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar


@pytest.fixture
def open_backend(tmp_path: Path) -> Iterator[Callable[..., ar.SqliteBackend]]:
    """Opens a SQLite database of the test's (again: a second worker's view of it), by default
    `store.db`; each is closed when the test ends (an unclosed connection is a
    `ResourceWarning` from Python 3.13 on)."""
    opened: list[ar.SqliteBackend] = []

    def open_(name: str = "store.db") -> ar.SqliteBackend:
        opened.append(ar.SqliteBackend(tmp_path / name))
        return opened[-1]

    yield open_
    for backend in opened:
        backend.close()


async def cancel_once_reached(run: Awaitable[Any], reached: asyncio.Event) -> None:
    """Runs `run` as a task, cancels it once `reached` is set, and expects the cancellation."""
    task = asyncio.ensure_future(run)
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def cut_off(run: Awaitable[Any], how: str, reached: asyncio.Event | None = None) -> None:
    """Cuts `run` off `how` and expects the failure that follows.

    "cancel" cancels it (once `reached` is set, when given); "timeout" awaits the end its
    `loop_timeout_ms` puts to it.
    """
    task = asyncio.ensure_future(run)
    if how == "timeout":
        with pytest.raises(ar.AgentLoopError, match="timed out"):
            await task
        return
    assert how == "cancel", how
    if reached is not None:
        await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def waiting_for_a_lock(watch: Any, table: str, statements: int) -> None:
    """Until `statements` statements on PostgreSQL table `table` wait for a lock (as seen on
    the autocommit connection `watch`)."""
    async with asyncio.timeout(10):
        while True:
            cursor = await watch.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND query LIKE %s",
                [f'%"{table}"%'],
            )
            row = await cursor.fetchone()
            if row is not None and row[0] >= statements:
                return
            await asyncio.sleep(0.01)
