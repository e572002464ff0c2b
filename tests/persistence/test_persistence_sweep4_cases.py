"""Faults found by a fourth sweep of the persistence layer, each pinned by a test."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar


@pytest.mark.parametrize("dsn", [None, 5432, b"postgresql://127.0.0.1/db"])
def test_a_postgres_dsn_that_is_not_a_str_is_refused_when_the_backend_is_made(dsn: Any) -> None:
    # `PostgresBackend(os.environ.get("DATABASE_URL"))` with the variable unset was accepted;
    # every call then waited out the timeout and raised a bare AttributeError ("'NoneType'
    # object has no attribute 'encode'"), not a PersistenceError.
    with pytest.raises(ar.PersistenceError, match="connection string as a str"):
        ar.PostgresBackend(dsn)


def test_a_postgres_dsn_with_a_nul_character_is_refused() -> None:
    # libpq reads a connection string up to its first NUL: the rest was dropped without a
    # word, and `host=db\0 port=6000` connected to port 5432 of `db`.
    with pytest.raises(ar.PersistenceError, match="NUL"):
        ar.PostgresBackend("host=127.0.0.1\0 port=1")


async def test_a_file_batch_s_removal_from_the_redo_log_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch file was removed without an fsync of `.batches/`: after a power cut it could
    # come back, and the next open installed the old batch over the writes acknowledged
    # after it.
    backend = ar.FileBackend(tmp_path)
    synced: list[tuple[str, bool]] = []  # (directory synced, batch file still there)
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            path = os.readlink(f"/proc/self/fd/{fd}")
            synced.append((path, any(Path(tmp_path, ".batches").glob("*.batch"))))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    await backend.batch_save({"a": b"1", "b": b"2"})
    assert synced[-1] == (str(tmp_path / ".batches"), False), synced
    assert await backend.batch_load(["a", "b"]) == {"a": b"1", "b": b"2"}


async def test_a_failed_fsync_of_the_batch_s_removal_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    backend = ar.FileBackend(tmp_path)
    real = os.fsync
    batches = str(tmp_path / ".batches")

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == batches and not any(Path(batches).glob("*.batch")):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    await backend.batch_save({"a": b"1", "b": b"2"})  # installed: the caller is told so
    assert await backend.load("a") == b"1"
    assert "may not survive a power loss" in caplog.text
