"""Edge cases of the local key-value backends (SQLite, files) a demanding user hits."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import llm_agent_runtime as ar


@pytest.mark.parametrize("busy_timeout", [3e6, 1e9, 10**12])
async def test_a_sqlite_busy_timeout_past_sqlites_range_still_waits_for_another_writer(
    tmp_path: Path, busy_timeout: float
) -> None:
    # SQLite takes the wait as a C int of milliseconds: a longer one (a user's "forever",
    # 25 days or more) wrapped to a negative number, which turned waiting off, and every
    # write meeting another writer's lock failed at once with "database is locked".
    path = tmp_path / "store.db"
    store = ar.SqliteBackend(path, busy_timeout=busy_timeout)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock...
        release = threading.Timer(0.3, lambda: other.execute("COMMIT"))  # ...for a moment
        release.start()
        try:
            await asyncio.wait_for(store.save("k", b"v"), timeout=10)
        finally:
            release.join()
        assert await store.load("k") == b"v"
    finally:
        other.close()
        store.close()


@pytest.mark.parametrize("encoding", ["UTF-16le", "UTF-16be"])
async def test_sqlite_lists_the_keys_of_a_database_another_program_made_in_utf16(
    tmp_path: Path, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A database made by another program in UTF-16 (as `sqlite3_open16` makes them): its
    # text is compared as UTF-16 bytes, not in code point order, and a key read as bytes is
    # UTF-16. The listing read UTF-8 range bounds and bytes: it found no key at all, and
    # for a prefix, keys with NULs in them that no call could load.
    path = tmp_path / "shared.db"
    made = sqlite3.connect(path)
    made.execute(f"PRAGMA encoding = '{encoding}'")
    made.execute("CREATE TABLE other_app (x)")
    made.commit()
    made.close()
    # (Not U+FFFE or U+FFFF: SQLite turns them into U+FFFD when it converts text to UTF-16.)
    keys = ["", "a", "ab", "a\x00", "\u0161", "b", "é", "\U0001f600", "\ufffd", "session:x"]
    with ar.SqliteBackend(path) as store:
        for key in keys:
            await store.save(key, key.encode())
        half = "00D8" if encoding == "UTF-16le" else "D800"  # half a surrogate pair
        with sqlite3.connect(path) as foreign:  # other clients' keys: bytes, broken text
            foreign.execute("INSERT INTO kv VALUES (CAST(X'61FF' AS BLOB), X'00')")
            foreign.execute(f"INSERT INTO kv VALUES (CAST(X'{half}' AS TEXT), X'00')")
        foreign.close()
        assert await store.list_keys() == sorted(keys)
        assert "skipped the stored key" in caplog.text
        assert await store.list_keys("a") == ["a", "a\x00", "ab"]
        assert await store.list_keys("\U0001f600") == ["\U0001f600"]
        assert await store.list_keys("zz") == []
        for key in await store.list_keys():
            assert await store.load(key) == key.encode()
        # U+FFFE and U+FFFF are refused: stored as U+FFFD, two keys shared the "\ufffd" row.
        for bad in ("session:\uffff", "\ufffe"):
            for call in (
                store.save(bad, b"x"),
                store.save_new(bad, b"x"),
                store.load(bad),
                store.delete(bad),
                store.batch_save({bad: b"x"}),
                store.batch_load([bad]),
                store.batch_save_if(bad, b"x", {}),
                store.batch_delete_if("a", b"a", [bad]),
            ):
                with pytest.raises(ar.PersistenceError, match="U\\+FFFE or U\\+FFFF"):
                    await call
        assert await store.load("\ufffd") == "\ufffd".encode()


@pytest.mark.parametrize("kind", ["sqlite", "file"])
async def test_a_cancellation_asked_before_a_write_is_delivered_before_it_runs(
    kind: str, tmp_path: Path
) -> None:
    # Ctrl-C under `asyncio.run` cancels the main task from inside whatever it runs: asked
    # just before a write, its thread was asked for before the cancellation was delivered,
    # and the write landed, its caller told it was cancelled.
    backend = (
        ar.SqliteBackend(tmp_path / "store.db")
        if kind == "sqlite"
        else ar.FileBackend(tmp_path / "f")
    )
    try:
        await backend.save("warm", b"1")
        task = asyncio.current_task()
        assert task is not None
        for key in ("a", "b", "c"):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await backend.save(key, b"v")
            task.uncancel()
        assert await backend.batch_load(["a", "b", "c"]) == {}
    finally:
        if isinstance(backend, ar.SqliteBackend):
            backend.close()


_OPEN_AT = """
import sys, time
import llm_agent_runtime as ar
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    ar.SqliteBackend(sys.argv[1]).close()
    print("ok")
except ar.PersistenceError as error:
    print(error)
"""


def test_processes_opening_a_new_sqlite_file_at_once_wait_for_each_other(tmp_path: Path) -> None:
    # The switch to WAL of a new file answered "database is locked" at once, waiting no
    # busy_timeout: workers started together on a fresh database failed (about one in four).
    outcomes: list[str] = []
    for trial in range(15):
        path = str(tmp_path / f"fresh{trial}.db")
        start = time.time() + 0.5  # after the interpreters have started
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_AT, path, str(start)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)  # one a core, here: they open at the same moment
        ]
        outcomes += [worker.communicate(timeout=60)[0].strip() for worker in workers]
    assert outcomes == ["ok"] * 30
