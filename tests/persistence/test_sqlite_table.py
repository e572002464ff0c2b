"""SqliteBackend's table: a rowid table, and files of earlier versions converted to one."""

from __future__ import annotations

import logging
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import llm_agent_runtime as ar

ROWID_TABLE = "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
EARLIER = "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
RECORDS = {
    "session:a": b"F" * 300_000,  # a big value sorting beside many small ones
    **{f"session:a:step:{i}": f"step {i}".encode() for i in range(2_000)},
    "session:b": b"",
    "k\u00e9y/\u2603": b"\x00\xff",
}


def _earlier_file(path: Path) -> None:
    """A database as an earlier version left it: a WITHOUT ROWID table, in WAL mode."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(EARLIER)
        conn.executemany("INSERT INTO kv VALUES (?, ?)", RECORDS.items())
        conn.execute("INSERT INTO kv VALUES ('text', 'stored as text by another client')")
    conn.close()


def _table_sql(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'kv'").fetchone()
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        assert tables == [("kv",)]  # nothing left over from a conversion
        return str(sql).replace('"kv"', "kv")  # as a conversion's rename writes it
    finally:
        conn.close()


async def _holds_every_record(store: ar.SqliteBackend) -> None:
    assert sorted(await store.list_keys()) == sorted([*RECORDS, "text"])
    assert await store.batch_load(list(RECORDS)) == RECORDS
    assert await store.load("text") == b"stored as text by another client"


async def test_a_new_file_has_a_rowid_table(tmp_path: Path) -> None:
    # A WITHOUT ROWID table copied a big value into its inner pages at each rebalance:
    # deleting the small records beside it took time growing with the square of their number.
    store = ar.SqliteBackend(tmp_path / "store.db")
    try:
        await store.save("k", b"v")
        assert _table_sql(tmp_path / "store.db") == ROWID_TABLE
    finally:
        store.close()


async def test_an_earlier_versions_file_is_converted_at_its_first_open(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _earlier_file(path)
    store = ar.SqliteBackend(path)
    try:
        assert _table_sql(path) == ROWID_TABLE
        await _holds_every_record(store)
        assert await store.delete("session:a:step:7") is True
        assert await store.load("session:a:step:7") is None
        assert len(await store.list_keys("session:a:step:")) == 1_999
    finally:
        store.close()
    again = ar.SqliteBackend(path)  # opened again: nothing to convert, nothing changed
    try:
        assert await again.load("session:a") == RECORDS["session:a"]
    finally:
        again.close()


async def test_files_opened_together_are_converted_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _earlier_file(path)
    start = threading.Barrier(4)

    def open_store() -> ar.SqliteBackend:
        start.wait()
        return ar.SqliteBackend(path)

    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: open_store(), range(4)))
    try:
        assert _table_sql(path) == ROWID_TABLE
        for store in stores:
            await _holds_every_record(store)
    finally:
        for store in stores:
            store.close()


async def test_a_file_locked_past_busy_timeout_is_used_unconverted_then_converted_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.db"
    _earlier_file(path)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process's write, longer than busy_timeout
    try:
        with caplog.at_level(logging.WARNING, logger="llm_agent_runtime"):
            store = ar.SqliteBackend(path, busy_timeout=0.3)
        assert "used unconverted" in caplog.text and "locked" in caplog.text
        assert _table_sql(path) == EARLIER  # left as it was, and in use
        assert await store.load("session:b") == b""
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    try:
        await store.save("new", b"n")  # every call works on the earlier table
        await store.delete("session:b")
        assert await store.load("new") == b"n"
        assert await store.load("session:b") is None
    finally:
        store.close()
    later = ar.SqliteBackend(path)
    try:
        assert _table_sql(path) == ROWID_TABLE
        assert await later.load("new") == b"n"
        assert await later.load("session:a") == RECORDS["session:a"]
        assert await later.load("session:b") is None
    finally:
        later.close()


async def test_a_table_of_another_shape_is_left_as_it_is(tmp_path: Path) -> None:
    # Not one this library made: no column of it is dropped by a conversion.
    path = tmp_path / "store.db"
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute(
            "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, note TEXT) WITHOUT ROWID"
        )
        conn.execute("INSERT INTO kv VALUES ('k', x'01', 'kept')")
    conn.close()
    store = ar.SqliteBackend(path)
    try:
        assert await store.load("k") == b"\x01"
        assert "note TEXT" in _table_sql(path)
    finally:
        store.close()


@pytest.mark.parametrize(
    "dependent",
    [
        "CREATE VIEW sessions AS SELECT key FROM kv WHERE key LIKE 'session:%'",
        "CREATE INDEX kv_size ON kv (length(value))",
        "CREATE TRIGGER kv_audit AFTER DELETE ON kv BEGIN SELECT 1; END",
        'CREATE TRIGGER kv_audit AFTER DELETE ON main."KV" BEGIN SELECT 1; END',
        # On another table, writing to this one: the rename failed after the whole copy.
        "CREATE TABLE log (n INTEGER); "
        "CREATE TRIGGER kv_audit AFTER INSERT ON log BEGIN INSERT INTO kv VALUES ('l', x''); END",
    ],
)
async def test_an_earlier_table_other_programs_built_on_is_left_as_it_is(
    tmp_path: Path, dependent: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A conversion dropped their indexes and triggers; a view failed it at every open, after
    # the whole copy.
    path = tmp_path / "store.db"
    _earlier_file(path)
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.executescript(dependent)
    conn.close()
    with caplog.at_level(logging.WARNING, logger="llm_agent_runtime"):
        store = ar.SqliteBackend(path)
    try:
        assert "keeps its earlier table" in caplog.text
        assert "unconverted" not in caplog.text  # not tried, so not failed
        with sqlite3.connect(path) as conn:
            names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
            (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'kv'").fetchone()
        conn.close()
        assert {"sessions", "kv_size", "kv_audit"} & names  # still defined
        assert sql == EARLIER
        await _holds_every_record(store)
        await store.save("new", b"n")
        assert await store.load("new") == b"n"
    finally:
        store.close()


async def test_a_conversion_leaves_no_write_ahead_log_of_the_copy(tmp_path: Path) -> None:
    # The copy went through the log: as big as the table, kept until the backend closed.
    path = tmp_path / "store.db"
    _earlier_file(path)
    store = ar.SqliteBackend(path)
    try:
        assert _table_sql(path) == ROWID_TABLE
        wal = tmp_path / "store.db-wal"
        assert not wal.exists() or wal.stat().st_size < 100_000  # the table is 320 kB
    finally:
        store.close()
