"""The lifecycle of the persistence backends: concurrent closes, forked children."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import psycopg
import pytest
import redis

import llm_agent_runtime as ar

from .test_backends import _drop_table, server_address


def _postgres_sessions(dsn: str, name: str) -> int:
    """The server's sessions of `application_name` `name`, once those closing have gone.

    Blocking, on purpose: the event loop that called it runs nothing meanwhile, so what it
    sees is what the caller left, not what a task still running closes later. A session a
    client closed leaves `pg_stat_activity` a moment later; one listed after 10 s was left.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(100):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
            assert row is not None
            if row[0] == 0:
                break
            time.sleep(0.1)
        return int(row[0])


def _redis_clients(url: str, name: str) -> int:
    """The server's connections named `name`, once those closing have gone (blocking too)."""
    admin = redis.Redis.from_url(url)
    try:
        for _ in range(100):
            count = sum(1 for client in admin.client_list() if client.get("name") == name)
            if count == 0:
                break
            time.sleep(0.1)
        return count
    finally:
        admin.close()


def _with_option(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


def _other_tasks(*also: asyncio.Task[None]) -> list[str]:
    me = asyncio.current_task()
    return sorted(t.get_name() for t in asyncio.all_tasks() if t is not me and t not in also)


@pytest.mark.timeout(60)
async def test_a_postgres_close_made_while_another_closes_returns_once_the_pool_is_closed() -> None:
    # The second close found nothing left to close and returned at once: the pool's workers
    # still ran and its connection was still open when it returned (two shutdown hooks, or
    # `async with` and an explicit close, each awaiting `close`).
    base = server_address("postgres")
    name = f"close_twice_{uuid.uuid4().hex[:12]}"
    table = f"kv_{uuid.uuid4().hex}"
    store = ar.PostgresBackend(_with_option(base, f"application_name={name}"), table=table)
    try:
        await store.save("k", b"v")
        first = asyncio.create_task(store.close())
        await asyncio.sleep(0)  # the first close is under way
        await store.close()
        assert _other_tasks(first) == []  # no pool worker, no task closing the pool
        assert _postgres_sessions(base, name) == 0  # and no connection left open
        await first
    finally:
        await _drop_table(base, table)


@pytest.mark.timeout(60)
async def test_a_redis_close_made_while_another_closes_returns_once_the_pool_is_closed() -> None:
    # As for PostgreSQL: the second close returned with the connection still open.
    base = server_address("redis")
    name = f"close_twice_{uuid.uuid4().hex[:12]}"
    store = ar.RedisBackend(_with_option(base, f"client_name={name}"), prefix=f"test:{name}:")
    await store.save("k", b"v")
    try:
        first = asyncio.create_task(store.close())
        await asyncio.sleep(0)
        await store.close()
        assert _redis_clients(base, name) == 0
        await first
    finally:
        await store.delete("k")
        await store.close()


def _in_child(work: Callable[[], object], ready: int, done: int) -> None:
    """A fork()ed child's body: waits for a byte on `ready`, runs `work`, reports on `done`."""
    try:
        os.read(ready, 1)
        work()
        os.write(done, b"ok")
    except BaseException as error:
        os.write(done, repr(error).encode()[:500])
    finally:
        os._exit(0)


@contextlib.contextmanager
def _forked(
    work: Callable[[], object], held: AbstractContextManager[object] | None = None
) -> Iterator[Callable[[], None]]:
    """Forks a child (while `held` is held, which the child then holds too) that runs `work`
    once the body calls the function it is given; when the body ends, expects the child's
    "ok" and reaps it (a child left waiting by a failed body is killed)."""
    ready_read, ready_write = os.pipe()
    done_read, done_write = os.pipe()
    with held or contextlib.nullcontext():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads (3.12+)
            pid = os.fork()
        if pid == 0:
            _in_child(work, ready_read, done_write)
    os.close(done_write)

    def start_child() -> None:
        os.write(ready_write, b"x")

    reported = False
    try:
        yield start_child
        assert os.read(done_read, 1000) == b"ok"
        reported = True
    finally:
        if not reported:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for fd in (ready_read, ready_write, done_read):
            os.close(fd)


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork()")
@pytest.mark.timeout(60)
def test_a_sqlite_backend_a_forked_child_inherited_keeps_the_childs_writes(
    tmp_path: Path,
) -> None:
    # The child wrote through the parent's SQLite connection, which SQLite forbids: its
    # locks are not inherited, so the parent's close took itself for the database's last
    # connection and removed the write-ahead log, and the writes the child made then (each
    # acknowledged) went into the removed file: lost. A multiprocessing "fork" worker using
    # a backend made at import time lost its checkpoints so.
    path = tmp_path / "store.db"
    store = ar.SqliteBackend(path)
    asyncio.run(store.save("parent", b"1"))

    def work() -> None:
        asyncio.run(store.save("child", b"2"))
        assert asyncio.run(store.load("parent")) == b"1"
        # No close: a multiprocessing worker ends with `os._exit`.

    with _forked(work) as start_child:
        store.close()  # the parent is done first...
        start_child()  # ...then the child writes
    with ar.SqliteBackend(path) as again:
        assert asyncio.run(again.load("child")) == b"2"


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork()")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("child_backend", ["inherited", "its own"])
def test_a_forked_childs_writes_outlive_the_parents_close_while_it_writes(
    tmp_path: Path, child_backend: str
) -> None:
    # SQLite keeps each file's locks in the process's memory: the child's own connection
    # took the parent's (inherited, never the child's) for its own, and held no real lock.
    # So the parent's close, with the child's connection open, took itself for the last
    # and removed the write-ahead log: the child's later writes (acknowledged) were lost.
    path = tmp_path / "store.db"
    store = ar.SqliteBackend(path)
    asyncio.run(store.save("parent", b"1"))
    wrote_read, wrote_write = os.pipe()
    closed_read, closed_write = os.pipe()

    def work() -> None:
        mine = store if child_backend == "inherited" else ar.SqliteBackend(path)
        asyncio.run(mine.save("child-before", b"2"))
        os.write(wrote_write, b"x")
        os.read(closed_read, 1)  # the parent closes its backend meanwhile
        asyncio.run(mine.batch_save({f"child-after-{i}": b"3" for i in range(5)}))
        mine.close()

    try:
        with _forked(work) as start_child:
            start_child()
            assert os.read(wrote_read, 1) == b"x"
            store.close()
            os.write(closed_write, b"x")
    finally:
        for fd in (wrote_read, wrote_write, closed_read, closed_write):
            os.close(fd)
    with ar.SqliteBackend(path) as again:
        keys = asyncio.run(again.list_keys())
    assert keys == sorted(["parent", "child-before", *(f"child-after-{i}" for i in range(5))])


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork()")
@pytest.mark.timeout(60)
def test_a_forked_child_uses_a_sqlite_backend_a_thread_of_its_parent_was_using(
    tmp_path: Path,
) -> None:
    # A call under way in another thread of the parent held the backend's lock as the
    # process forked: the child has no such thread, and its every call waited forever.
    store = ar.SqliteBackend(tmp_path / "store.db")

    def work() -> None:
        async def save_and_load() -> bytes | None:
            # The bound only turns a hang into a failure: the call takes milliseconds.
            await asyncio.wait_for(store.save("child", b"2"), 20)
            return await store.load("child")

        assert asyncio.run(save_and_load()) == b"2"

    try:
        # Forked as a parent's thread holds the lock for the length of a call.
        with _forked(work, held=store._lock) as start_child:
            start_child()
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork()")
@pytest.mark.timeout(60)
def test_a_child_forked_while_a_file_backend_call_held_a_lock_lets_go_of_it(
    tmp_path: Path,
) -> None:
    # A lock belongs to the open file, which the child shares: one a call of the parent's
    # held (in its worker thread) stayed held until the child exited. The child's own first
    # batch waited for it for ever, and every other process's reads and batches with it.
    store = ar.FileBackend(tmp_path / "store")
    asyncio.run(store.save("parent", b"1"))

    def work() -> None:
        async def batch() -> None:
            # The bound only turns a hang into a failure: the batch takes milliseconds.
            await asyncio.wait_for(store.batch_save({"a": b"2", "b": b"3"}), 20)

        asyncio.run(batch())

    # Forked as a parent's call holds the lock, installing a batch.
    with _forked(work, held=store._install_lock(shared=False)) as start_child:
        start_child()
    assert asyncio.run(store.batch_load(["parent", "a", "b"])) == {
        "parent": b"1",
        "a": b"2",
        "b": b"3",
    }


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork()")
@pytest.mark.timeout(60)
def test_a_sqlite_backend_given_a_relative_path_stays_on_its_file_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A forked child opens a connection of its own: the relative path was resolved then,
    # against the directory of that moment, and the child wrote to a new, empty database.
    (tmp_path / "app").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "app")
    store = ar.SqliteBackend("store.db")
    assert store.path == str(tmp_path / "app" / "store.db")
    asyncio.run(store.save("parent", b"1"))
    monkeypatch.chdir(tmp_path / "elsewhere")  # a worker's setup, a daemon's

    def work() -> None:
        assert asyncio.run(store.load("parent")) == b"1"
        asyncio.run(store.save("child", b"2"))

    try:
        with _forked(work) as start_child:
            start_child()
        assert asyncio.run(store.load("child")) == b"2"
    finally:
        store.close()
    assert not (tmp_path / "elsewhere" / "store.db").exists()


def test_a_sqlite_path_through_a_symlink_and_dot_dot_is_the_file_the_system_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Made absolute by text alone, `link/..` was the link's own folder, not its target's
    # parent: the store opened a new, empty database beside the one it had written.
    (tmp_path / "srv" / "data").mkdir(parents=True)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "data").symlink_to(tmp_path / "srv" / "data")
    monkeypatch.chdir(tmp_path / "app")
    with ar.SqliteBackend("data/../store.db") as store:
        asyncio.run(store.save("k", b"v"))
    assert (tmp_path / "srv" / "store.db").exists()
    assert not (tmp_path / "app" / "store.db").exists()
    with ar.SqliteBackend(tmp_path / "srv" / "store.db") as store:
        assert asyncio.run(store.load("k")) == b"v"


def test_a_relative_sqlite_path_in_a_removed_directory_is_a_persistence_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gone").mkdir()
    monkeypatch.chdir(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    with pytest.raises(ar.PersistenceError, match=r"cannot open SQLite database 'store\.db'"):
        ar.SqliteBackend("store.db")
