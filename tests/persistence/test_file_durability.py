"""FileBackend: a dead writer's batch never lands over a later one; single writes and
deletions are durable (their directory fsynced)."""

from __future__ import annotations

import contextlib
import math
import os
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.persistence import file as file_module
from llm_agent_runtime.persistence.file import FileBackend


async def test_a_dead_writers_batch_is_installed_before_a_later_batch_not_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The later batch's writer found the redo log empty, then another process committed its
    # batch and died installing it: that older batch was finished later, over the newer one.
    backend = FileBackend(tmp_path)
    original = backend._install_lock
    committed: list[Path] = []

    @contextlib.contextmanager
    def install_lock(shared: bool) -> Iterator[None]:
        if not shared and not committed:  # about to commit: the other process's batch lands
            older = {"k1": b"old", "k2": b"old"}
            batch = tmp_path / ".batches" / f"{uuid.uuid4().hex}.batch"
            batch.write_bytes(file_module._encode_batch(older))
            committed.append(batch)
        with original(shared):
            yield

    monkeypatch.setattr(backend, "_install_lock", install_lock)
    await backend.batch_save({"k1": b"new", "k2": b"new"})
    monkeypatch.setattr(backend, "_install_lock", original)
    assert await backend.batch_load(["k1", "k2"]) == {"k1": b"new", "k2": b"new"}
    assert committed and not committed[0].exists()
    assert await FileBackend(tmp_path).load("k1") == b"new"


@pytest.mark.skipif(sys.platform == "win32", reason="one process per directory there: no locks")
@pytest.mark.parametrize("call", ["save", "save_new", "delete", "batch_save"])
async def test_a_batch_another_process_commits_during_a_single_write_lands_in_order(
    tmp_path: Path, call: str
) -> None:
    # A single write listed the redo log (empty) outside the install lock; then another
    # process committed a batch, holding that lock as a batch's writer does, and died before
    # installing it; then the write landed. The next call finished the older batch over the
    # write that had been acknowledged after it.
    import fcntl

    backend = FileBackend(tmp_path)
    if call == "delete":
        await backend.save("k", b"first")
    original = backend._committed_batches
    committed_first: list[bool] = []

    def commit(wait: bool) -> bool:
        """The other process: commits its batch under the install lock (if free), then dies."""
        fd = os.open(tmp_path / ".batches.lock", os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            batch = tmp_path / ".batches" / f"{uuid.uuid4().hex}.batch"
            batch.write_bytes(file_module._encode_batch({"k": b"batch", "j": b"batch"}))
            return True
        finally:
            os.close(fd)

    def committed_batches() -> list[Path]:
        found = original()
        if not committed_first:  # the step between the write's look at the log and the write
            committed_first.append(commit(wait=False))
        return found

    backend._committed_batches = committed_batches  # type: ignore[method-assign]
    if call == "save":
        await backend.save("k", b"new")
    elif call == "save_new":
        wrote = await backend.save_new("k", b"new")
    elif call == "batch_save":  # one item: a single write
        await backend.batch_save({"k": b"new"})
    else:
        await backend.delete("k")
    backend._committed_batches = original  # type: ignore[method-assign]
    if not committed_first[0]:  # it waited for the write to end: it commits now
        assert commit(wait=True)
    # The one that came last is what stays (the batch installed by the next call).
    if not committed_first[0]:
        expected: bytes | None = b"batch"
    elif call in ("save", "batch_save"):
        expected = b"new"
    elif call == "save_new":
        expected = b"new" if wrote else b"batch"
    else:
        expected = None
    assert await backend.load("k") == expected
    assert await FileBackend(tmp_path).load("k") == expected
    assert await backend.load("j") == b"batch"


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each `os.fsync` synced from now on: "file" or "dir"."""
    calls: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


async def test_single_writes_and_deletions_sync_their_directory(
    tmp_path: Path, fsyncs: list[str]
) -> None:
    backend = FileBackend(tmp_path)
    for write in (
        lambda: backend.save("k", b"v"),
        lambda: backend.save_new("n", b"v"),
        lambda: backend.delete("k"),
    ):
        fsyncs.clear()
        await write()
        assert fsyncs[-1:] == ["dir"], fsyncs
    fsyncs.clear()
    assert not await backend.save_new("n", b"again")  # nothing written: nothing to sync
    assert "dir" not in fsyncs
    fsyncs.clear()
    await backend.batch_save({"a": b"1", "b": b"2"})
    # The commit, the installed files, then the batch's removal from the redo log.
    assert fsyncs.count("dir") == 3, fsyncs


async def test_a_batch_that_cannot_be_installed_is_not_called_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A full disk while a batch was installed: every later call said a crash had
    # interrupted it, and logged so again at each call.
    import errno

    backend = FileBackend(tmp_path)
    batch = tmp_path / ".batches" / f"{uuid.uuid4().hex}.batch"
    batch.write_bytes(file_module._encode_batch({"a": b"1", "b": b"1"}))  # committed

    def no_space(path: Path, items: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backend, "_install", no_space)
    for _ in range(3):
        with pytest.raises(PersistenceError) as raised:
            await backend.load("a")
        message = str(raised.value)
        assert "committed but not installed" in message and "crash" not in message
        assert "No space left on device" in message
    finishing = [r for r in caplog.records if "finishing a batch" in r.getMessage()]
    assert len(finishing) == 1
    monkeypatch.undo()  # space freed: the batch is installed, whole
    assert await backend.batch_load(["a", "b"]) == {"a": b"1", "b": b"1"}
    assert not batch.exists()


async def test_a_listing_reads_the_key_of_each_record_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keys sharing their first 48 characters (the session ids of one tenant) share the start
    # of their file names: every listing read the key of every such file (3,000 sessions: a
    # session's load took 0.75 s instead of 0.05 s).
    store = FileBackend(tmp_path)
    tenant = "session:org-0001/user-000000042/conversation-2026-12-06-"
    for i in range(20):
        await store.save(f"{tenant}{i:04d}:meta", b"m")
    read: list[str] = []
    stored_key = FileBackend._stored_key

    def counted(self: FileBackend, path: Path) -> str | None:
        read.append(path.name)
        return stored_key(self, path)

    monkeypatch.setattr(FileBackend, "_stored_key", counted)
    assert await store.list_keys(f"{tenant}0003") == [f"{tenant}0003:meta"]
    assert len(read) == 20  # the first listing reads them all
    read.clear()
    assert await store.list_keys(f"{tenant}0007") == [f"{tenant}0007:meta"]
    assert read == []
    await store.save(f"{tenant}0100:meta", b"m")
    await store.delete(f"{tenant}0003:meta")
    expected = [f"{tenant}{i:04d}:meta" for i in [*range(20), 100] if i != 3]
    assert await store.list_keys(tenant) == expected
    assert read == [file_module.file_name_for(f"{tenant}0100:meta")]  # the new file alone
    assert await FileBackend(tmp_path).list_keys(tenant) == expected  # read afresh there


@pytest.mark.skipif(sys.platform == "win32", reason="one process per directory there: no locks")
@pytest.mark.timeout(30)
@pytest.mark.parametrize("shared", [False, True])
async def test_a_lock_held_past_lock_timeout_fails_the_call_naming_it(
    tmp_path: Path, shared: bool
) -> None:
    # A process stopped (SIGSTOP, a debugger) while it installs a batch (exclusive) or reads
    # (shared): every call of every other process on the directory waited for good.
    import fcntl
    import time

    backend = FileBackend(tmp_path, lock_timeout=0.3)
    await backend.batch_save({"a": b"1", "b": b"1"})
    holder = os.open(tmp_path / ".batches.lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(PersistenceError, match=r"\.batches\.lock.*0\.3 s \(lock_timeout\)"):
            await backend.batch_save({"a": b"2", "b": b"2"})  # waits for the reads under way
        assert 0.3 <= time.monotonic() - started < 3
        if not shared:  # a read waits only for a batch being installed
            with pytest.raises(PersistenceError, match="lock_timeout"):
                await backend.load("a")
            with pytest.raises(PersistenceError, match="lock_timeout"):
                await backend.save("a", b"3")
    finally:
        os.close(holder)
    # The batch that failed wrote nothing, and the directory serves again at once.
    assert await backend.batch_load(["a", "b"]) == {"a": b"1", "b": b"1"}
    assert [p.name for p in (tmp_path / ".batches").iterdir()] == []
    await backend.batch_save({"a": b"4", "b": b"4"})
    assert await FileBackend(tmp_path).batch_load(["a", "b"]) == {"a": b"4", "b": b"4"}


@pytest.mark.parametrize("lock_timeout", [-1, math.inf, math.nan, True, "30"])
def test_lock_timeout_must_be_a_finite_number_of_seconds(
    tmp_path: Path, lock_timeout: object
) -> None:
    with pytest.raises(PersistenceError, match="lock_timeout must be a finite number"):
        FileBackend(tmp_path, lock_timeout=lock_timeout)  # type: ignore[arg-type]


@pytest.mark.skipif(sys.platform == "win32", reason="one process per directory there: no locks")
@pytest.mark.timeout(30)
async def test_a_batch_another_call_installs_past_lock_timeout_is_not_called_a_crashs(
    tmp_path: Path,
) -> None:
    # Its writer alive (a slow disk, or stopped): the error said "its writer failed or
    # stopped first", the wording for a crash's leftover, which an operator may delete.
    import fcntl

    FileBackend(tmp_path)  # makes the redo log's folder
    batch = tmp_path / ".batches" / f"{uuid.uuid4().hex}.batch"
    batch.write_bytes(file_module._encode_batch({"a": b"1", "b": b"1"}))
    writer = os.open(batch, os.O_RDWR)  # its writer holds it until it is installed
    try:
        fcntl.flock(writer, fcntl.LOCK_EX)
        with pytest.raises(PersistenceError) as caught:
            FileBackend(tmp_path, lock_timeout=0.2)
        assert "is being installed by another call, still not done" in str(caught.value)
        assert "lock_timeout" in str(caught.value) and "failed" not in str(caught.value)
    finally:
        os.close(writer)
    # Its writer gone (as after a crash): the batch is finished whole.
    assert await FileBackend(tmp_path).batch_load(["a", "b"]) == {"a": b"1", "b": b"1"}
