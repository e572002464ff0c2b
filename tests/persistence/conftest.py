"""Fixtures shared by the persistence tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import llm_agent_runtime as ar


@pytest.fixture
def open_backend(tmp_path: Path) -> Iterator[Callable[[], ar.SqliteBackend]]:
    """Opens the test's SQLite database (again: a second worker's view of it)."""
    opened: list[ar.SqliteBackend] = []

    def open_() -> ar.SqliteBackend:
        opened.append(ar.SqliteBackend(tmp_path / "store.db"))
        return opened[-1]

    yield open_
    for backend in opened:
        backend.close()
