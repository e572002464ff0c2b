"""One conformance suite run against every persistence backend."""

import asyncio
import contextlib
import contextvars
import fcntl
import gc
import itertools
import logging
import multiprocessing
import os
import random
import socket
import sqlite3
import sys
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.persistence._waiting import run_in_thread
from llm_agent_runtime.persistence.checkpoints import CheckpointStore
from llm_agent_runtime.persistence.codec import decode
from llm_agent_runtime.persistence.file import _encode_batch, file_name_for

from .conftest import waiting_for_a_lock
from .test_durable import FINAL, Effects, add_step, fails_after, script

BACKENDS = ["memory", "sqlite", "file", "postgres", "redis"]
SERVERS = {
    "postgres": "LLM_AGENT_RUNTIME_TEST_POSTGRES_DSN",
    "redis": "LLM_AGENT_RUNTIME_TEST_REDIS_URL",
}


def server_address(kind: str) -> str:
    """The test server of `kind`: `make test` starts them; elsewhere they are optional."""
    address = os.environ.get(SERVERS[kind])
    if address is None:
        if os.environ.get("LLM_AGENT_RUNTIME_REQUIRE_SERVICES"):
            pytest.fail(f"{SERVERS[kind]} is not set, but make test must run {kind}")
        pytest.skip(f"no {kind} server: run `make test`, or set {SERVERS[kind]}")
    return address


def make_backend(kind: str, where: Path) -> ar.PersistenceBackend:
    """A fresh, empty backend (its own table or key prefix on the shared servers)."""
    unique = uuid.uuid4().hex
    if kind == "memory":
        return ar.InMemoryBackend()
    if kind == "sqlite":
        return ar.SqliteBackend(where / "store.db")
    if kind == "postgres":
        return ar.PostgresBackend(server_address(kind), table=f"kv_{unique}")
    if kind == "redis":
        return ar.RedisBackend(server_address(kind), prefix=f"test:{unique}:")
    return ar.FileBackend(where / "files")


async def close_backend(store: ar.PersistenceBackend) -> None:
    if isinstance(store, ar.SqliteBackend):
        store.close()
    elif isinstance(store, ar.PostgresBackend | ar.RedisBackend):
        await store.close()


def backend_fixture(kinds: Sequence[str] = BACKENDS, name: str = "backend") -> Any:
    """A fixture `name` over `kinds`: a fresh backend of each kind, closed after its test."""

    @pytest.fixture(params=list(kinds), name=name)
    async def backend(
        request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[ar.PersistenceBackend]:
        store = make_backend(request.param, tmp_path)
        yield store
        await close_backend(store)

    return backend


backend = backend_fixture()


async def test_save_load_overwrite_delete(backend: ar.PersistenceBackend) -> None:
    assert isinstance(backend, ar.PersistenceBackend)
    assert await backend.load("missing") is None
    await backend.save("session:a", b"one")
    assert await backend.load("session:a") == b"one"
    await backend.save("session:a", b"two")
    assert await backend.load("session:a") == b"two"
    assert await backend.delete("session:a") is True
    assert await backend.delete("session:a") is False
    assert await backend.load("session:a") is None


async def test_batch_and_prefix_listing(backend: ar.PersistenceBackend) -> None:
    items = {f"session:x:step:{i}": bytes([i]) * i for i in range(5)}
    items["session:x"] = b"final"
    items["session:y"] = b"other"
    items["sessionz%_"] = b"look-alike"
    await backend.batch_save(items)
    assert await backend.batch_load(["session:x", "session:y", "nope", "session:x"]) == {
        "session:x": b"final",
        "session:y": b"other",
    }
    assert await backend.list_keys("session:x:step:") == [f"session:x:step:{i}" for i in range(5)]
    assert await backend.list_keys("session:") == sorted(
        k for k in items if k.startswith("session:")
    )
    assert await backend.list_keys("SESSION") == []
    assert len(await backend.list_keys()) == len(items)


async def test_awkward_keys_never_collide_or_escape(
    backend: ar.PersistenceBackend, tmp_path: Path
) -> None:
    keys = ["a/b", "a_b", "a\\b", "../../etc/passwd", "", "ключ", "x" * 500, "nul\x00byte", ".."]
    for i, key in enumerate(keys):
        await backend.save(key, str(i).encode())
    for i, key in enumerate(keys):
        assert await backend.load(key) == str(i).encode()
    assert sorted(await backend.list_keys()) == sorted(keys)
    # Everything stays inside the backend's own files; "../../etc/passwd" escaped nowhere.
    for path in tmp_path.rglob("*"):
        assert path.name.startswith("store.db") or path.relative_to(tmp_path).parts[0] == "files"
    assert not (tmp_path.parent / "etc").exists()


async def test_concurrent_saves_are_all_kept(backend: ar.PersistenceBackend) -> None:
    await asyncio.gather(*(backend.save(f"k{i}", b"v" * i) for i in range(100)))
    assert len(await backend.list_keys("k")) == 100
    assert await backend.load("k42") == b"v" * 42


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.dictionaries(st.text(max_size=30), st.binary(max_size=200), max_size=10))
def test_round_trip_arbitrary_keys_and_values(tmp_path: Path, data: dict[str, bytes]) -> None:
    async def run() -> None:
        for kind in BACKENDS:
            store = make_backend(kind, tmp_path / kind / uuid.uuid4().hex)
            await store.batch_save(data)
            assert await store.batch_load(list(data)) == data
            assert await store.list_keys() == sorted(data)
            await close_backend(store)

    asyncio.run(run())


def test_file_names_are_sanitized_with_a_hash_suffix() -> None:
    assert file_name_for("a/b") != file_name_for("a_b")
    assert "/" not in file_name_for("../../x") and file_name_for("../../x").endswith(".bin")
    assert len(file_name_for("y" * 10_000)) < 200


async def test_file_backend_reports_corrupt_records(tmp_path: Path) -> None:
    store = ar.FileBackend(tmp_path)
    await store.save("k", b"value")
    path = tmp_path / file_name_for("k")
    path.write_bytes(b"\x01")
    with pytest.raises(ar.PersistenceError) as info:
        await store.load("k")
    assert info.value.key == "k"


async def test_unwritable_locations_raise_persistence_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ar.PersistenceError):
        ar.FileBackend(blocker / "sub")
    with pytest.raises(ar.PersistenceError):
        ar.SqliteBackend(blocker / "sub" / "db.sqlite")


def _writer(path: str, worker: int) -> None:
    async def go() -> None:
        store = ar.SqliteBackend(path)
        for i in range(50):
            await store.batch_save({f"w{worker}:{i}": b"x", f"shared:{i}": str(worker).encode()})
        store.close()

    asyncio.run(go())


async def test_sqlite_is_safe_for_several_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    ar.SqliteBackend(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = ar.SqliteBackend(path)
    assert len(await store.list_keys("w")) == 200
    assert len(await store.list_keys("shared:")) == 50
    store.close()
    assert os.path.exists(path)


@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_two_clients_of_one_server_see_each_others_writes(kind: str) -> None:
    address = server_address(kind)
    unique = uuid.uuid4().hex
    if kind == "postgres":
        a: ar.PersistenceBackend = ar.PostgresBackend(address, table=f"kv_{unique}")
        b: ar.PersistenceBackend = ar.PostgresBackend(address, table=f"kv_{unique}")
    else:
        a, b = (ar.RedisBackend(address, prefix=f"shared:{unique}:") for _ in range(2))
    await a.batch_save({"session:1": b"from a", "session:2": b"also a"})
    assert await b.load("session:1") == b"from a"
    await b.save("session:1", b"from b")
    assert await a.load("session:1") == b"from b"
    assert await a.list_keys("session:") == ["session:1", "session:2"]
    for store in (a, b):
        await close_backend(store)


async def test_server_backends_name_the_failure_and_hide_credentials() -> None:
    store = ar.PostgresBackend("postgresql://user:s3cret@127.0.0.1:1/db", timeout=0.5)
    assert "s3cret" not in repr(store)
    with pytest.raises(ar.PersistenceError, match="PostgreSQL"):
        await store.open()
    redis_store = ar.RedisBackend("redis://:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(redis_store)
    with pytest.raises(ar.PersistenceError) as info:
        await redis_store.load("session:x")
    assert info.value.key == "session:x"
    await redis_store.close()
    with pytest.raises(ar.PersistenceError, match="plain SQL identifier"):
        ar.PostgresBackend("postgresql://x", table="kv; DROP TABLE users")


async def test_long_non_ascii_keys_round_trip(backend: ar.PersistenceBackend) -> None:
    # 92 CJK characters are 276 bytes: more than a file name may have.
    keys = ["session:" + "会" * 92, "session:" + "😀" * 70, "é" * 300, "session:" + "x" * 100 + "a"]
    for i, key in enumerate(keys):
        await backend.save(key, str(i).encode())
    assert await backend.batch_load(keys) == {k: str(i).encode() for i, k in enumerate(keys)}
    assert await backend.list_keys() == sorted(keys)
    for key in keys:
        assert await backend.delete(key) is True
    assert await backend.list_keys() == []


@pytest.mark.parametrize("key", ["session:\udc80", "\ud800", "a\udfffb"])
async def test_keys_that_are_not_unicode_text_raise_persistence_error(
    backend: ar.PersistenceBackend, key: str
) -> None:
    calls = [
        lambda: backend.save(key, b"v"),
        lambda: backend.load(key),
        lambda: backend.delete(key),
        lambda: backend.batch_save({"fine": b"v", key: b"v"}),
        lambda: backend.batch_delete_if("fine", b"v", ["fine", key]),
        lambda: backend.batch_load(["fine", key]),
        lambda: backend.list_keys(key),
    ]
    for call in calls:
        with pytest.raises(ar.PersistenceError, match="not valid Unicode") as info:
            await call()
        assert info.value.key in (key, None)
    assert await backend.list_keys() == []  # the batch wrote nothing, not even "fine"


def test_file_names_are_short_and_distinct_for_keys_that_defeat_a_weak_hash() -> None:
    # Both pairs collided with the truncated prefix and 64-bit djb2 hash of earlier versions.
    pairs = [
        ('a\x00"', "a\x01\x01"),
        ("session:" + "x" * 100 + "az", "session:" + "x" * 100 + "bY"),
    ]
    for one, other in pairs:
        assert file_name_for(one) != file_name_for(other)
    for key in ["会" * 5000, "😀" * 5000, "a" * 5000, '/\\:*?"<>|\x00\n..']:
        name = file_name_for(key)
        assert len(name.encode()) <= 117 and name.isascii()
        assert "/" not in name and "\\" not in name and name.endswith(".bin")


async def test_file_backend_keeps_keys_whose_names_once_collided(tmp_path: Path) -> None:
    store = ar.FileBackend(tmp_path)
    await store.save('a\x00"', b"one")
    await store.save("a\x01\x01", b"two")
    assert await store.load('a\x00"') == b"one"
    assert await store.load("a\x01\x01") == b"two"
    assert await store.list_keys() == ['a\x00"', "a\x01\x01"]


async def test_file_backend_failures_are_persistence_errors_with_nothing_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ar.FileBackend(tmp_path)
    # The target name is taken by a directory: the rename fails after the temporary file is
    # written, and removing that file fails too; the write error is the one reported.
    (tmp_path / file_name_for("k")).mkdir()
    (tmp_path / file_name_for("k") / "x").write_text("x")
    real_unlink = Path.unlink

    def failing_unlink(path: Path, missing_ok: bool = False) -> None:
        if path.name.endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(path))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", failing_unlink)
    with pytest.raises(ar.PersistenceError, match="cannot write") as info:
        await store.save("k", b"v")
    assert info.value.key == "k"
    monkeypatch.undo()
    left = list(tmp_path.glob(".*.tmp"))
    assert len(left) == 1
    with pytest.raises(ar.PersistenceError, match="cannot write"):
        await store.save("k", b"v")
    assert list(tmp_path.glob(".*.tmp")) == left  # cleaned up when it can be


# ---------------------------------------------------------------- insert-if-absent (save_new)


async def test_save_new_writes_only_when_the_key_is_absent(backend: ar.PersistenceBackend) -> None:
    assert await backend.save_new("session:a:call:1:0", b"intent") is True
    assert await backend.save_new("session:a:call:1:0", b"other") is False
    assert await backend.load("session:a:call:1:0") == b"intent"  # left as it was
    await backend.save("session:a:call:1:0", b"done")  # a plain save still overwrites
    assert await backend.save_new("session:a:call:1:0", b"again") is False
    assert await backend.load("session:a:call:1:0") == b"done"
    assert await backend.delete("session:a:call:1:0") is True
    assert await backend.save_new("session:a:call:1:0", bytearray(b"anew")) is True
    assert await backend.load("session:a:call:1:0") == b"anew"
    assert await backend.list_keys() == ["session:a:call:1:0"]


async def test_save_new_has_exactly_one_winner_among_concurrent_writers(
    backend: ar.PersistenceBackend,
) -> None:
    for round_ in range(3):
        key = f"race:{round_}"
        won = await asyncio.gather(*(backend.save_new(key, b"%d" % i) for i in range(20)))
        assert won.count(True) == 1
        assert await backend.load(key) == b"%d" % won.index(True)


async def test_batch_save_if_writes_only_while_the_guard_holds_its_value(
    backend: ar.PersistenceBackend,
) -> None:
    items = {"session:a:step:1": b"one", "session:a:event:0": b"e"}
    assert await backend.batch_save_if("fence", b"me", items) is False  # no guard: refused
    assert await backend.list_keys() == []
    await backend.save("fence", b"me")
    assert await backend.batch_save_if("fence", b"me", items) is True
    assert await backend.batch_save_if("fence", bytearray(b"me"), {"one": b"1"}) is True
    assert await backend.batch_save_if("fence", b"me", {}) is True
    await backend.save("fence", b"taker")  # another worker took the claim over
    assert await backend.batch_save_if("fence", b"me", {"session:a:step:1": b"stale"}) is False
    assert await backend.batch_save_if("fence", b"m", {"late": b"x"}) is False  # a prefix
    assert await backend.load("session:a:step:1") == b"one"
    assert await backend.load("late") is None
    assert await backend.batch_save_if("fence", b"taker", {"session:a:step:1": b"2"}) is True
    assert await backend.load("session:a:step:1") == b"2"
    for bad in [(1, b"me", {}), ("fence", "me", {}), ("fence", b"taker", {"k": "text"})]:
        with pytest.raises(ar.PersistenceError):
            await backend.batch_save_if(*bad)  # type: ignore[arg-type]
    assert await backend.load("k") is None


async def test_batch_save_if_racing_a_write_of_its_guard_is_all_or_none_as_it_says(
    backend: ar.PersistenceBackend,
) -> None:
    await backend.save("fence", b"me")

    async def batch(i: int) -> bool:
        return await backend.batch_save_if("fence", b"me", {f"a{i}": b"1", f"b{i}": b"2"})

    async def take_over() -> None:
        await asyncio.sleep(0.002)
        await backend.save("fence", b"taker")

    *wrote, _ = await asyncio.gather(*(batch(i) for i in range(12)), take_over())
    stored = await backend.batch_load([f"{k}{i}" for i in range(12) for k in "ab"])
    for i, ok in enumerate(wrote):
        assert (f"a{i}" in stored, f"b{i}" in stored) == (ok, ok)
    assert await backend.batch_save_if("fence", b"me", {"after": b"x"}) is False


def _process_address(kind: str, tmp_path: Path) -> str:
    """Where processes racing on a `kind` store meet: a path, or a fresh table or prefix."""
    return {
        "sqlite": str(tmp_path / "store.db"),
        "file": str(tmp_path / "files"),
        "postgres": f"kv_{uuid.uuid4().hex}",
        "redis": f"test:{uuid.uuid4().hex}:",
    }[kind]


async def _open_store(kind: str, address: str) -> ar.PersistenceBackend:
    """A `kind` store at `address` (see `_process_address`), opened (its table made)."""
    if kind == "sqlite":
        return ar.SqliteBackend(address)
    if kind == "file":
        return ar.FileBackend(address)
    if kind == "postgres":
        store = ar.PostgresBackend(os.environ[SERVERS[kind]], table=address)
        await store.open()
        return store
    return ar.RedisBackend(os.environ[SERVERS[kind]], prefix=address)


def _race_in_a_process(op: str, kind: str, address: str, key: str, start: float) -> bool:
    """In a process of its own, from `start` on: `save_new(key)`, or `batch_delete_if` of the
    fence holding b"me", and `key`; returns whether it won."""

    async def go() -> bool:
        store = await _open_store(kind, address)
        while time.time() < start:
            await asyncio.sleep(0.001)
        if op == "save_new":
            won = await store.save_new(key, str(os.getpid()).encode())
        else:
            won = await store.batch_delete_if("fence", b"me", ["fence", key])
        await close_backend(store)
        return won

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["sqlite", "file", "postgres", "redis"])
def test_save_new_has_exactly_one_winner_among_processes(kind: str, tmp_path: Path) -> None:
    if kind in SERVERS:
        server_address(kind)
    address = _process_address(kind, tmp_path)

    async def made() -> None:  # its file or table, before the racers come
        await close_backend(await _open_store(kind, address))

    asyncio.run(made())
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        for round_ in range(3):
            start = time.time() + 1.0  # every worker started: they race from then on
            args = [("save_new", kind, address, f"race:{round_}", start)] * 4
            assert sorted(pool.starmap(_race_in_a_process, args)) == [False] * 3 + [True]


# ------------------------------------------------------------ guarded deletion (batch_delete_if)


async def test_batch_delete_if_deletes_only_while_the_guard_holds_its_value(
    backend: ar.PersistenceBackend,
) -> None:
    claim, fence = "session:a:resume:0", "session:a:fence:0"
    await backend.batch_save({claim: b"held", fence: b"me", "other": b"o"})
    everything = sorted([claim, fence, "other"])
    for guard, value in [
        ("missing", b"me"),  # no guard: refused
        (fence, b"taker"),  # another worker took the claim over
        (fence, b"m"),  # a prefix
        (fence, b"me!"),  # a longer value
        (fence, b""),
    ]:
        assert await backend.batch_delete_if(guard, value, [claim, fence]) is False
        assert await backend.list_keys() == everything  # nothing deleted
    # The guard held: every key goes, those that never existed too; the guard stays.
    assert await backend.batch_delete_if("other", bytearray(b"o"), [claim, "never"]) is True
    assert await backend.list_keys() == ["other", fence]
    assert await backend.batch_delete_if("other", b"o", []) is True
    assert await backend.batch_delete_if("other", b"o", ("never", "never")) is True
    assert await backend.batch_delete_if("missing", b"o", []) is False
    # The guard among the keys (twice, even): it goes with them.
    assert await backend.batch_delete_if(fence, memoryview(b"me"), [fence, "other", fence]) is True
    assert await backend.list_keys() == []
    assert await backend.batch_delete_if(fence, b"me", ["x"]) is False  # gone with them
    # An empty value is a value: it holds; absent, it does not.
    await backend.batch_save({"empty": b"", "x": b"1"})
    assert await backend.batch_delete_if("absent", b"", ["x"]) is False
    assert await backend.load("x") == b"1"
    assert await backend.batch_delete_if("empty", b"", ["empty", "x"]) is True
    assert await backend.list_keys() == []


async def test_batch_delete_if_with_bad_input_raises_persistence_error_and_deletes_nothing(
    backend: ar.PersistenceBackend,
) -> None:
    stored = {"fence": b"me", "fine": b"v"}
    await backend.batch_save(stored)
    b: Any = backend  # the calls below break the protocol's types on purpose
    for args in [
        (1, b"me", ["fine"]),
        (None, b"me", ["fine"]),
        (b"fence", b"me", ["fine"]),
        ("fence", "me", ["fine"]),
        ("fence", None, ["fine"]),
        ("fence", 5, ["fine"]),
        ("fence", b"me", "fine"),  # one key, not a sequence of them
        ("fence", b"me", b"fine"),
        ("fence", b"me", 5),
        ("fence", b"me", ["fine", 5]),
        ("fence", b"me", ["fine", None]),
        ("fence", b"other", ["fine", 5]),  # whatever the guard holds
        ("missing", b"me", ["fine", b"fence"]),
    ]:
        with pytest.raises(ar.PersistenceError, match="must be") as info:
            await b.batch_delete_if(*args)
        assert isinstance(info.value.key, str | None), args
        if args[0] == "fence" and not isinstance(args[1], bytes):  # a bad value: its key
            assert info.value.key == "fence", args
    for key in ["\ud800", "session:\udc80"]:
        for args in [
            (key, b"me", ["fine"]),
            ("fence", b"me", ["fine", key]),
            ("fence", b"other", ["fine", key]),  # whatever the guard holds
            ("missing", b"me", [key]),
        ]:
            with pytest.raises(ar.PersistenceError, match="not valid Unicode") as info:
                await b.batch_delete_if(*args)
            assert info.value.key in (key, None), args
    assert await backend.batch_load(list(stored)) == stored  # nothing deleted


async def test_batch_delete_if_racing_a_write_of_its_guard_is_all_or_none_as_it_says(
    backend: ar.PersistenceBackend,
) -> None:
    await backend.save("fence", b"me")
    await backend.batch_save({f"{k}{i}": b"1" for i in range(12) for k in "ab"})

    async def batch(i: int) -> bool:
        return await backend.batch_delete_if("fence", b"me", [f"a{i}", f"b{i}"])

    async def take_over() -> None:
        await asyncio.sleep(0.002)
        await backend.save("fence", b"taker")

    *deleted, _ = await asyncio.gather(*(batch(i) for i in range(12)), take_over())
    stored = await backend.batch_load([f"{k}{i}" for i in range(12) for k in "ab"])
    for i, ok in enumerate(deleted):
        assert (f"a{i}" in stored, f"b{i}" in stored) == (not ok, not ok)
    assert await backend.batch_delete_if("fence", b"me", ["a0", "b0"]) is False
    assert await backend.load("fence") == b"taker"


async def test_batch_delete_if_deleting_its_guard_has_exactly_one_winner_among_racers(
    backend: ar.PersistenceBackend,
) -> None:
    for round_ in range(3):
        mine = [f"race:{round_}:{i}" for i in range(20)]
        await backend.batch_save({"fence": b"me", **dict.fromkeys(mine, b"v")})
        won = await asyncio.gather(
            *(backend.batch_delete_if("fence", b"me", ["fence", key]) for key in mine)
        )
        assert won.count(True) == 1
        assert await backend.list_keys(f"race:{round_}:") == sorted(
            key for key, ok in zip(mine, won, strict=True) if not ok
        )
        assert await backend.load("fence") is None


_RELEASE_OPS = ("release", "renewal", "takeover")


def _release_model(order: Sequence[str]) -> tuple[tuple[bool, ...], dict[str, bytes]]:
    """What `_RELEASE_OPS` return, and leave stored, run one at a time in `order`."""
    data = {"claim": b"held", "fence": b"me"}
    results: dict[str, bool] = {}
    for op in order:
        if op == "takeover":
            results[op] = data.get("claim") == b"held"
            if results[op]:
                data.update(fence=b"taker", claim=b"taken")
            continue
        results[op] = data.get("fence") == b"me"
        if results[op] and op == "release":
            data.clear()
        elif results[op]:
            data["claim"] = b"renewed"
    return tuple(results[op] for op in _RELEASE_OPS), data


async def test_batch_delete_if_racing_a_renewal_and_a_takeover_lands_in_one_order_of_them(
    backend: ar.PersistenceBackend,
) -> None:
    # A resume claim's release (guard: its fence, which it deletes with the claim), its
    # renewal (guard: the fence) and its takeover (guard: the claim, writing both) at once:
    # on PostgreSQL the release and the takeover lock the two rows in opposite orders.
    possible = [_release_model(order) for order in itertools.permutations(_RELEASE_OPS)]

    async def round_(n: int) -> tuple[tuple[bool, ...], dict[str, bytes]]:
        claim, fence = f"session:{n}:resume:0", f"session:{n}:fence:0"
        await backend.batch_save({claim: b"held", fence: b"me"})
        calls = {
            "release": lambda: backend.batch_delete_if(fence, b"me", [fence, claim]),
            "renewal": lambda: backend.batch_save_if(fence, b"me", {claim: b"renewed"}),
            "takeover": lambda: backend.batch_save_if(
                claim, b"held", {fence: b"taker", claim: b"taken"}
            ),
        }
        order = list(_RELEASE_OPS)[n % 3 :] + list(_RELEASE_OPS)[: n % 3]
        done = dict(zip(order, await asyncio.gather(*(calls[op]() for op in order)), strict=True))
        stored = await backend.batch_load([claim, fence])
        names = {claim: "claim", fence: "fence"}
        left = {names[key]: value for key, value in stored.items()}
        return tuple(done[op] for op in _RELEASE_OPS), left

    for outcome in await asyncio.gather(*(round_(n) for n in range(24))):
        assert outcome in possible, outcome


@pytest.mark.parametrize("kind", ["sqlite", "file", "postgres", "redis"])
def test_batch_delete_if_deleting_its_guard_has_exactly_one_winner_among_processes(
    kind: str, tmp_path: Path
) -> None:
    if kind in SERVERS:
        server_address(kind)
    address = _process_address(kind, tmp_path)

    async def stored(items: dict[str, bytes] | None = None) -> list[str]:
        store = await _open_store(kind, address)
        if items:
            await store.batch_save(items)
        keys = await store.list_keys()
        await close_backend(store)
        return keys

    ctx = multiprocessing.get_context("spawn")
    left: list[str] = []  # the losers' keys: still there
    with ctx.Pool(4) as pool:
        for round_ in range(3):
            mine = [f"race:{round_}:{worker}" for worker in range(4)]
            asyncio.run(stored({"fence": b"me", **dict.fromkeys(mine, b"v")}))
            start = time.time() + 1.0  # every worker started: they race from then on
            args = [("batch_delete_if", kind, address, k, start) for k in mine]
            won = pool.starmap(_race_in_a_process, args)
            assert won.count(True) == 1
            left += [key for key, ok in zip(mine, won, strict=True) if not ok]
            assert asyncio.run(stored()) == sorted(left)  # the fence gone, and the winner's key


# ---------------------------------------------------------------- bad input, the same everywhere


def _bad_calls(backend: ar.PersistenceBackend) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    b: Any = backend  # the calls below break the protocol's types on purpose
    return [
        ("save(5, b'x')", lambda: b.save(5, b"x")),
        ("save(None, b'x')", lambda: b.save(None, b"x")),
        ("save(b'k', b'x')", lambda: b.save(b"k", b"x")),
        ("save('k', 'text')", lambda: b.save("k", "text")),
        ("save('k', 5)", lambda: b.save("k", 5)),
        ("save('k', None)", lambda: b.save("k", None)),
        ("save('k', [1])", lambda: b.save("k", [1])),
        ("save_new(5, b'x')", lambda: b.save_new(5, b"x")),
        ("save_new('k', 'text')", lambda: b.save_new("k", "text")),
        ("load(5)", lambda: b.load(5)),
        ("delete(5)", lambda: b.delete(5)),
        ("batch_save({5: b'x'})", lambda: b.batch_save({"fine": b"v", 5: b"x"})),
        ("batch_save({'k': 'text'})", lambda: b.batch_save({"fine": b"v", "k": "text"})),
        ("batch_save([('k', b'x')])", lambda: b.batch_save([("k", b"x")])),
        ("batch_delete_if(5, b'x', [])", lambda: b.batch_delete_if(5, b"x", [])),
        ("batch_delete_if('k', 'text', [])", lambda: b.batch_delete_if("k", "text", [])),
        ("batch_delete_if('g', b'x', [5])", lambda: b.batch_delete_if("g", b"x", ["fine", 5])),
        ("batch_delete_if('g', b'x', 'keys')", lambda: b.batch_delete_if("g", b"x", "keys")),
        ("batch_load([5])", lambda: b.batch_load(["fine", 5])),
        ("batch_load('keys')", lambda: b.batch_load("keys")),
        ("batch_load(5)", lambda: b.batch_load(5)),
        ("list_keys(5)", lambda: b.list_keys(5)),
        ("list_keys(b'k')", lambda: b.list_keys(b"k")),
    ]


async def test_bad_keys_and_values_raise_persistence_error_and_store_nothing(
    backend: ar.PersistenceBackend,
) -> None:
    for label, call in _bad_calls(backend):
        with pytest.raises(ar.PersistenceError, match="must be") as info:
            await call()
        assert isinstance(info.value.key, str | None), label
        if "text" in label:  # a bad value: the error names its key
            assert info.value.key == "k", label
    assert await backend.list_keys() == []  # nothing stored, not even "fine" or "5"


async def test_bytes_like_values_are_stored_and_loaded_as_bytes(
    backend: ar.PersistenceBackend,
) -> None:
    await backend.save("a", bytearray(b"one"))
    await backend.save("b", memoryview(b"two"))
    await backend.batch_save({"c": bytearray(b"three"), "d": memoryview(b"four"), "e": b"five"})
    assert await backend.save_new("f", memoryview(b"six")) is True
    loaded = await backend.batch_load(["a", "b", "c", "d", "e", "f"])
    assert loaded == {"a": b"one", "b": b"two", "c": b"three", "d": b"four", "e": b"five"} | {
        "f": b"six"
    }
    for key in loaded:
        value = await backend.load(key)
        assert type(value) is bytes and type(loaded[key]) is bytes


def test_a_reserved_word_is_a_postgres_table_name_and_a_bad_name_fails_at_once() -> None:
    async def run() -> None:
        store = ar.PostgresBackend(server_address("postgres"), table="order")
        try:
            await store.save("k", b"v")
            assert await store.load("k") == b"v"
            assert await store.save_new("k", b"w") is False
            assert await store.list_keys() == ["k"]
            assert await store.delete("k") is True
        finally:
            await store.close()

    asyncio.run(run())
    for bad in ["kv; DROP TABLE users", 'a"b', "x" * 64, "", "1abc", "naïve", "a b"]:
        with pytest.raises(ar.PersistenceError, match="plain SQL identifier"):
            ar.PostgresBackend("postgresql://x", table=bad)
    # 10**400 passed `0 < timeout < inf`, and the first call failed at `float(timeout)`.
    for timeout in [0, -1, float("nan"), float("inf"), "10", True, 10**400]:
        with pytest.raises(ar.PersistenceError, match="timeout must be a positive finite"):
            ar.PostgresBackend("postgresql://x", timeout=timeout)  # type: ignore[arg-type]
    assert type(ar.PostgresBackend("postgresql://x", timeout=2**70).timeout) is float


def test_a_record_nested_too_deeply_to_decode_is_a_persistence_error() -> None:
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    raw = b"llm-agent-runtime/1 %08x call\n" % zlib.crc32(b"[" * 100_000 + b"]" * 100_000)
    raw += b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ar.PersistenceError, match="nests too deeply") as info:
        decode(raw, "session:x:call:1:0", "call")
    assert info.value.key == "session:x:call:1:0"


# ---------------------------------------------------------------- two workers, one session


def _charging_runtime(backend: ar.PersistenceBackend, charges: list[int]) -> ar.AgentRuntime:
    @ar.tool
    async def charge(amount: int) -> str:
        """Charges a card (not idempotent)."""
        charges.append(amount)
        await asyncio.sleep(0.02)
        return "charged"

    return ar.AgentRuntime(tools=[charge], checkpoint_backend=backend)


async def test_two_workers_resuming_one_session_run_a_tool_at_most_once(
    backend: ar.PersistenceBackend,
) -> None:
    pay = 'Thought: pay\nAction: charge {{"amount": {}}}'.format
    done = "Thought: done\nAction: FINAL_ANSWER finished"
    for trial in range(5):
        charges: list[int] = []
        first = _charging_runtime(backend, charges)
        session = first.create_session("agent", f"order-{trial}")
        with pytest.raises(ConnectionError):  # step 1 done, then the model goes down
            await first.run_agent("agent", "q", fails_after(pay(1)), session=session)
        charges.clear()
        # Two workers (two runtimes on one store, as two processes would be) resume it.
        workers = [_charging_runtime(backend, charges) for _ in range(2)]
        results = await asyncio.gather(
            *(w.resume(session.session_id, fails_after(pay(5), done)) for w in workers),
            return_exceptions=True,
        )
        assert charges == [5], (trial, results)  # step 2's charge ran exactly once
        finished = [r for r in results if isinstance(r, ar.AgentSession)]
        assert finished and all(s.final_answer == "finished" for s in finished), results
        # The other worker was refused: one worker resumes a session at once.
        refused = [r for r in results if not isinstance(r, ar.AgentSession)]
        assert all(isinstance(r, ar.PersistenceError) for r in refused), results
        assert all("resumed by another worker" in str(r) for r in refused), results


async def test_the_journal_works_on_a_backend_without_save_new() -> None:
    class Older:  # the protocol before save_new
        def __init__(self) -> None:
            self.inner = ar.InMemoryBackend()
            self.save = self.inner.save
            self.load = self.inner.load
            self.delete = self.inner.delete
            self.batch_save = self.inner.batch_save
            self.batch_load = self.inner.batch_load
            self.list_keys = self.inner.list_keys

    store = CheckpointStore(Older())  # type: ignore[arg-type]
    assert await store.journal("s", 1, 0, {"state": "intent"}, new=True) is None
    found = await store.journal("s", 1, 0, {"state": "intent", "n": 2}, new=True)
    assert found == {"state": "intent"}
    assert await store.journal("s", 1, 0, {"state": "done"}) is None  # a result overwrites
    assert await store.journal("s", 1, 0, {"state": "intent"}, new=True) == {"state": "done"}


# ---------------------------------------------------------------- FileBackend: what crashes leave


async def test_file_backend_removes_the_temporary_files_a_crash_left_and_nothing_else(
    tmp_path: Path,
) -> None:
    store = ar.FileBackend(tmp_path)
    await store.save("session:x:step:1", b"kept")
    name = file_name_for("session:x:step:1")
    crashed = [
        tmp_path / f".{name}.{uuid.uuid4().hex}.tmp",  # a value cut short before its rename
        tmp_path / ".batches" / f"{uuid.uuid4().hex}.tmp",  # a batch cut short
    ]
    live = tmp_path / f".{name}.{uuid.uuid4().hex}.tmp"  # a write under way elsewhere
    foreign = [tmp_path / "notes.tmp", tmp_path / ".notes.tmp", tmp_path / f".{name}.x.tmp"]
    for path in [*crashed, live, *foreign]:
        path.write_bytes(b"partial")
    with open(live, "rb+") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)  # held by its (live) writer
        ar.FileBackend(tmp_path)  # opening cleans up
        assert live.exists()
    assert not any(path.exists() for path in crashed)
    assert all(path.exists() for path in foreign)  # not this backend's: never touched
    assert await store.load("session:x:step:1") == b"kept"
    ar.FileBackend(tmp_path)
    assert not live.exists()  # its writer is gone now


async def test_file_backend_refuses_to_list_past_a_damaged_file(tmp_path: Path) -> None:
    # A file whose key cannot be read may hold any key its name allows: a listing that
    # skipped it dropped, say, a session's last step from its load without an error.
    store = ar.FileBackend(tmp_path)
    await store.batch_save({"session:good": b"1", "session:good:meta": b"2", "other": b"3"})
    damaged = tmp_path / file_name_for("other")
    damaged.write_bytes(b"\x01")  # a disk error, a cut copy
    # Listings whose keys cannot be that file's are not concerned.
    assert await store.list_keys("session:") == ["session:good", "session:good:meta"]
    assert await store.batch_load(["session:good"]) == {"session:good": b"1"}
    with pytest.raises(ar.PersistenceError, match=r"damaged \(truncated\)") as listed:
        await store.list_keys()
    assert str(damaged) in str(listed.value)
    with pytest.raises(ar.PersistenceError, match="truncated") as info:
        await store.load("other")  # its own key fails
    assert info.value.key == "other"
    # A file whose name is not its key's (copied under another name) is damaged too.
    damaged.unlink()
    (tmp_path / file_name_for("session:elsewhere")).write_bytes(
        (tmp_path / file_name_for("session:good")).read_bytes()
    )
    with pytest.raises(ar.PersistenceError, match="key of another file"):
        await store.list_keys("session:")
    assert await store.list_keys("other") == []


async def test_a_damaged_last_step_file_fails_the_load(tmp_path: Path) -> None:
    store = ar.FileBackend(tmp_path)
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), checkpoint_backend=store)

    @ar.tool
    def add(a: int, b: int) -> int:
        """Adds."""
        return a + b

    runtime.tools.register(add)
    script = [ar.ScriptedProvider.tool_call_reply([("add", {"a": i, "b": 1})]) for i in range(2)]
    session = await runtime.run_agent_with_provider(
        "agent", "go", ar.ScriptedProvider([*script, "done"])
    )
    assert session.step_count == 3
    last = f"session:{session.session_id}:step:3"
    assert last in await store.list_keys(f"session:{session.session_id}:step:")
    (tmp_path / file_name_for(last)).write_bytes(b"\x00\x00")
    with pytest.raises(ar.PersistenceError, match="damaged"):
        await ar.AgentSession.load_checkpoint(store, session.session_id)


async def test_file_backend_reads_only_the_files_a_prefix_can_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ar.FileBackend(tmp_path)
    await store.batch_save({f"session:{s}:step:{n}": b"x" for s in "ab" for n in range(5)})
    read: list[str] = []
    real = ar.FileBackend._stored_key

    def counting(self: ar.FileBackend, path: Path) -> str | None:
        read.append(path.name)
        return real(self, path)

    monkeypatch.setattr(ar.FileBackend, "_stored_key", counting)
    assert await store.list_keys("session:a:") == [f"session:a:step:{n}" for n in range(5)]
    assert len(read) == 5


# ---------------------------------------------------------------- a server that stops answering


class FreezingProxy:
    """A TCP proxy to a real server that can stop forwarding: a hung host, a partition."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, serving: bool = True) -> int:
        """Its port; one not `serving` yet refuses connections, as a server that is down."""
        self.server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, start_serving=serving
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def serve(self) -> None:
        await self.server.start_serving()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self.tasks.add(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self.flowing.wait()  # frozen: the bytes wait here, unanswered
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    async def close(self) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


async def test_postgres_gives_up_on_a_server_that_stops_answering() -> None:
    address = urlsplit(server_address("postgres"))
    assert address.hostname is not None and address.port is not None
    proxy = FreezingProxy(address.hostname, address.port)
    port = await proxy.start()
    dsn = address._replace(netloc=f"{address.username}@127.0.0.1:{port}").geturl()
    store = ar.PostgresBackend(dsn, table=f"kv_{uuid.uuid4().hex}", max_size=2, timeout=1.0)
    try:
        await store.save("k", b"v")
        proxy.freeze()
        start = time.monotonic()
        with pytest.raises(ar.PersistenceError, match="timeout of 1 s") as info:
            await store.load("k")
        assert info.value.key == "k"
        assert time.monotonic() - start < 3.5  # the timeout, the cancel's grace, slack
        # Each of many calls at once gives up too, waiting for a connection included.
        start = time.monotonic()
        results = await asyncio.gather(
            *(store.save(f"k{i}", b"v") for i in range(4)), return_exceptions=True
        )
        assert all(isinstance(r, ar.PersistenceError) for r in results), results
        assert all("timeout of 1 s" in str(r) for r in results), results
        assert time.monotonic() - start < 3.5
        proxy.thaw()
        # Connections whose statement timed out were dropped, not handed out again broken.
        for _ in range(5):
            assert await store.load("k") == b"v"
        await store.save("k", b"w")
        assert await store.load("k") == b"w"
    finally:
        proxy.thaw()
        await store.close()
        await proxy.close()


async def test_postgres_callers_cancelled_at_any_moment_leave_the_pool_whole() -> None:
    # A caller cancelled while psycopg_pool's putconn gave its connection back (to a caller
    # waiting for one) lost that connection, which the pool went on counting: each loss
    # shrank the pool for good, until no call got a connection within the backend's timeout.
    store = ar.PostgresBackend(
        server_address("postgres"), table=f"kv_{uuid.uuid4().hex}", max_size=3, timeout=3.0
    )
    rng = random.Random(7)
    try:
        await store.save("warm", b"x")

        async def cancelled_write(key: str) -> None:
            task = asyncio.ensure_future(store.save(key, b"v" * 100))
            await asyncio.sleep(rng.random() * 0.006)  # each cut at a moment of its own
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        for round_ in range(200):  # 8 callers for 3 connections
            await asyncio.gather(*(cancelled_write(f"k{round_}-{i}") for i in range(8)))
        pool = store._pools.get().pool
        for _ in range(40):  # until the pool has settled: every connection it counts is idle
            await asyncio.sleep(0.05)
            stats = pool.get_stats()
            if stats["pool_available"] == stats["pool_size"]:
                break
        assert stats["pool_available"] == stats["pool_size"] >= 1, stats
        results = await asyncio.gather(*(store.load("warm") for _ in range(6)))
        assert results == [b"x"] * 6
    finally:
        await store.close()


async def test_redis_gives_up_on_a_server_that_stops_answering() -> None:
    address = urlsplit(server_address("redis"))
    assert address.hostname is not None and address.port is not None
    proxy = FreezingProxy(address.hostname, address.port)
    port = await proxy.start()
    url = address._replace(netloc=f"127.0.0.1:{port}").geturl()
    store = ar.RedisBackend(url, prefix=f"test:{uuid.uuid4().hex}:")
    try:
        await store.save("k", b"v")
        proxy.freeze()
        start = time.monotonic()
        with pytest.raises(ar.PersistenceError) as info:
            await store.load("k")
        assert info.value.key == "k"
        assert time.monotonic() - start < 10  # redis-py's socket timeout: 5 s
        proxy.thaw()
        assert await store.load("k") == b"v"
    finally:
        proxy.thaw()
        await store.close()
        await proxy.close()


async def test_postgres_that_cannot_connect_says_why() -> None:
    """The error said only "PoolTimeout: pool initialization incomplete after 10.0 sec"."""
    with socket.socket() as free:  # a port nothing listens on once it is closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    dsn = f"postgresql://app:pw-SECRET-1234@127.0.0.1:{port}/appdb"
    store = ar.PostgresBackend(dsn, table=f"kv_{uuid.uuid4().hex}", timeout=0.5)
    try:
        with pytest.raises(ar.PersistenceError, match="cannot open PostgreSQL") as info:
            await store.load("k")
    finally:
        await store.close()
    message = str(info.value)
    assert "Connection refused" in message and f"port {port} failed" in message
    assert "PoolTimeout" in message and "SECRET" not in message


async def test_postgres_without_its_database_says_so() -> None:
    address = urlsplit(server_address("postgres"))
    netloc = f"{address.username}:pw-SECRET-1234@{address.hostname}:{address.port}"
    dsn = address._replace(netloc=netloc, path="/no_such_database").geturl()
    store = ar.PostgresBackend(dsn, table=f"kv_{uuid.uuid4().hex}", timeout=0.5)
    try:
        with pytest.raises(ar.PersistenceError, match="cannot open PostgreSQL") as info:
            await store.save("k", b"v")
    finally:
        await store.close()
    message = str(info.value)
    assert 'database "no_such_database" does not exist' in message
    assert "SECRET" not in message


async def test_postgres_opens_once_its_server_is_back_and_again_after_close() -> None:
    address = urlsplit(server_address("postgres"))
    assert address.hostname is not None and address.port is not None
    proxy = FreezingProxy(address.hostname, address.port)
    port = await proxy.start(serving=False)  # the server is down
    dsn = address._replace(netloc=f"{address.username}@127.0.0.1:{port}").geturl()
    store = ar.PostgresBackend(dsn, table=f"kv_{uuid.uuid4().hex}", timeout=0.5)
    try:
        with pytest.raises(ar.PersistenceError, match="cannot open PostgreSQL") as info:
            await store.save("k", b"v")
        assert "PoolTimeout" in str(info.value)
        await proxy.serve()  # the server is back: the next call opens a new pool
        await store.save("k", b"v")
        assert await store.load("k") == b"v"
        await store.close()
        assert await store.load("k") == b"v"  # a closed backend opens again on its next use
        await store.save("k", b"w")
        assert await store.load("k") == b"w"
    finally:
        await store.close()
        await proxy.close()


async def test_postgres_refuses_a_key_longer_than_its_index_takes_naming_the_limit() -> None:
    store = ar.PostgresBackend(server_address("postgres"), table=f"kv_{uuid.uuid4().hex}")
    longest = os.urandom(1346).hex()  # 2692 bytes: incompressible, the index takes them as is
    repetitive = "session:" + "x" * 10_000  # compressed, it fits an index entry
    try:
        for key in [longest, repetitive]:
            await store.save(key, b"v")
            assert await store.save_new(key, b"w") is False
            assert await store.load(key) == b"v"
        too_long = os.urandom(1500).hex()  # 3000 bytes that do not compress
        calls = [
            (store.save(too_long, b"v"), too_long),
            (store.save_new(too_long, b"v"), too_long),
            (store.batch_save({too_long: b"v"}), too_long),
            # A batch of several keys names none: the server does not say which it refused,
            # and the longest (here a compressible one that fits) need not be it.
            (store.batch_save({"fine": b"v", too_long: b"v"}), None),
            (store.batch_save({too_long: b"v", "a" * 6000: b"v"}), None),
            (
                store.batch_save({"f": b"v", too_long: b"v"} | {f"n{i}": b"" for i in range(40)}),
                None,
            ),
        ]
        for call, named in calls:
            with pytest.raises(ar.PersistenceError, match="key too long for PostgreSQL") as info:
                await call
            assert info.value.key == named
        assert await store.load(too_long) is None  # looking one up is fine: it is not there
        assert await store.delete(too_long) is False
        assert sorted(await store.list_keys()) == sorted([longest, repetitive])  # no batch wrote
    finally:
        await store.close()


async def test_a_cancelled_sqlite_call_has_ended_when_its_cancellation_goes_on(
    tmp_path: Path,
) -> None:
    store = ar.SqliteBackend(tmp_path / "store.db")
    other = sqlite3.connect(tmp_path / "store.db", isolation_level=None, check_same_thread=False)
    reader = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock for a moment
    release = threading.Timer(0.5, other.execute, ["COMMIT"])
    release.start()
    try:
        task = asyncio.create_task(store.batch_save({"session:f": b"m", "session:f:step:1": b"s"}))
        await asyncio.sleep(0.1)
        task.cancel()  # the batch waits for the lock in its thread
        await asyncio.sleep(0.1)
        task.cancel()  # and again, while the cancelled call waits for its thread
        with pytest.raises(asyncio.CancelledError):
            await task
        seen = reader.execute("SELECT key FROM kv ORDER BY key").fetchall()
        release.join()
        await asyncio.sleep(0.2)
        # The batch gave up its wait for the lock: nothing was written, nor is after.
        assert seen == []
        assert reader.execute("SELECT key FROM kv ORDER BY key").fetchall() == seen
    finally:
        release.join()
        for conn in (other, reader):
            conn.close()
        store.close()


async def test_a_cancelled_sqlite_call_waits_for_another_writer_only_a_grace(
    tmp_path: Path,
) -> None:
    store = ar.SqliteBackend(tmp_path / "store.db", busy_timeout=10.0)
    other = sqlite3.connect(tmp_path / "store.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock longer than the grace
    release = threading.Timer(2.5, other.execute, ["ROLLBACK"])
    release.start()
    try:
        task = asyncio.create_task(store.save("k", b"v"))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.sleep(0.1)
        task.cancel()  # a second cancel does not make it wait longer either
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1.5  # about the one-second grace, not 10 s
        # Nor does its thread wait on: a program stopped now (Ctrl-C) waited for it at its
        # exit (asyncio.run shuts the default executor down), up to `busy_timeout`.
        started = time.monotonic()
        await asyncio.get_running_loop().shutdown_default_executor()
        assert time.monotonic() - started < 0.5
        assert other.in_transaction  # the lock is still held: the thread gave up
    finally:
        release.cancel()
        release.join()
        if other.in_transaction:
            other.execute("ROLLBACK")  # let the abandoned thread finish now
        other.close()
        store.close()


async def test_a_value_sqlite_cannot_bind_is_a_persistence_error_naming_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ar.SqliteBackend(tmp_path / "store.db")

    class Binding:  # binds as sqlite3 does, with its INT_MAX bytes made 100: fast to test
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def _bound(self, row: Any) -> Any:
            if any(isinstance(v, bytes) and len(v) > 100 for v in row):
                raise OverflowError("BLOB longer than INT_MAX bytes")
            return row

        def execute(self, sql: str, row: Any = ()) -> sqlite3.Cursor:
            return self.conn.execute(sql, self._bound(row))

        def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
            return self.conn.executemany(sql, (self._bound(row) for row in rows))

        @property
        def in_transaction(self) -> bool:
            return self.conn.in_transaction

    await store.save("guard", b"1")
    monkeypatch.setattr(store, "_conn", Binding(store._conn))
    big = bytes(101)
    calls = [
        lambda: store.save("k", big),
        lambda: store.save_new("k", big),
        lambda: store.batch_save({"fine": b"v", "k": big, "small": b"w"}),
        # Named: the value's key, not the guard's (whose value is never bound).
        lambda: store.batch_save_if("guard", b"1", {"fine": b"v", "k": big, "small": b"w"}),
    ]
    for call in calls:
        with pytest.raises(ar.PersistenceError, match="too big for SQLite") as info:
            await call()
        assert info.value.key == "k"
    assert await store.list_keys() == ["guard"]  # no batch wrote, not even "fine"
    monkeypatch.undo()
    store.close()


async def test_a_value_over_sqlites_length_limit_is_a_persistence_error_naming_its_key(
    tmp_path: Path,
) -> None:
    # SQLite refuses a value over its limit (1 GB by default) with "string or blob too big":
    # a batch named no key, and a guarded batch its guard.
    store = ar.SqliteBackend(tmp_path / "store.db")
    await store.save("guard", b"1")
    store._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100)  # 1 GB made 100 bytes: fast
    big = bytes(101)
    calls = [
        lambda: store.save("k", big),
        lambda: store.save_new("k", big),
        lambda: store.batch_save({"fine": b"v", "k": big, "small": b"w"}),
        lambda: store.batch_save_if("guard", b"1", {"fine": b"v", "k": big, "small": b"w"}),
    ]
    try:
        for call in calls:
            with pytest.raises(ar.PersistenceError, match="too big for SQLite") as info:
                await call()
            assert info.value.key == "k"
            assert isinstance(info.value.__cause__, sqlite3.DataError)
        assert await store.list_keys() == ["guard"]  # no batch wrote, not even "fine"
    finally:
        store.close()


async def test_a_postgres_write_running_across_a_close_and_a_reopen_ends_well() -> None:
    # The connection went back to the new pool, which refused it: a write that committed was
    # reported failed, and its connection leaked.
    import psycopg

    dsn = server_address("postgres")
    table = f"kv_{uuid.uuid4().hex}"
    store = ar.PostgresBackend(dsn, table=table)
    await store.save("k", b"old")
    blocker = await psycopg.AsyncConnection.connect(dsn)
    try:
        # Another session holds the row lock: the write waits in the server.
        await blocker.execute(f'SELECT 1 FROM "{table}" WHERE key = %s FOR UPDATE', [b"k"])
        write = asyncio.create_task(store.save("k", b"new"))
        await asyncio.sleep(0.3)
        await store.close()
        assert await store.load("other") is None  # opens a new pool
        await blocker.commit()
        await write
        assert await store.load("k") == b"new"
    finally:
        await blocker.close()
        await store._execute(None, f'DROP TABLE "{table}"', [])
        await store.close()


async def test_postgres_compare_and_sets_of_one_guard_meet_without_deadlock() -> None:
    # `batch_save_if(g, old, {g: new})`, as the tool-call journal writes: each caller locked
    # the guard's row FOR SHARE, then needed it FOR UPDATE to write it. Two meeting deadlocked
    # (a second's stall until the server aborted one); with three, every one timed out.
    store = ar.PostgresBackend(server_address("postgres"), table=f"kv_{uuid.uuid4().hex}")

    async def deadlocks() -> int:
        query = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        return int((await store._execute(None, query, []))[0][0])

    try:
        before = await deadlocks()
        for _ in range(100):
            await store.save("g", b"0")
            won = await asyncio.gather(
                *(store.batch_save_if("g", b"0", {"g": b"%d" % (i + 1)}) for i in range(8))
            )
            assert won.count(True) == 1
            assert await store.load("g") == b"%d" % (won.index(True) + 1)
        assert await deadlocks() == before
    finally:
        await store._execute(None, f"DROP TABLE {store._table}", [])
        await store.close()


async def test_postgres_guarded_writes_whose_rows_cross_meet_without_deadlock() -> None:
    # Each guarded write locked its guard's row, then its items': two whose guard was the
    # other's item (a claim's renewal and its takeover) deadlocked. The server breaks one
    # deadlock a second: with 8 such writers, the rest waited out the timeout (10 s) and
    # failed, or got the server's DeadlockDetected.
    store = ar.PostgresBackend(server_address("postgres"), table=f"kv_{uuid.uuid4().hex}")

    async def deadlocks() -> int:
        query = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        return int((await store._execute(None, query, []))[0][0])

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            guard, item = ("g1", "g2") if rng.random() < 0.5 else ("g2", "g1")
            if rng.random() < 0.5:
                await store.batch_save_if(guard, b"1", {item: b"1", "x": b"1"})
            else:
                await store.batch_delete_if(guard, b"1", ["x", item])
                await store.save(item, b"1")

    try:
        await store.batch_save({"g1": b"1", "g2": b"1"})
        before = await deadlocks()
        await asyncio.wait_for(asyncio.gather(*(writer(i) for i in range(8))), timeout=30)
        assert await deadlocks() == before
    finally:
        await store._execute(None, f"DROP TABLE {store._table}", [])
        await store.close()


@contextlib.asynccontextmanager
async def a_postgres_row_held(
    rows: dict[str, bytes], key: str, **options: Any
) -> AsyncIterator[tuple[ar.PostgresBackend, Any, Any]]:
    """A backend (given `options`) on a new PostgreSQL table holding `rows`; a connection in
    a transaction that holds row `key` locked (its `commit` lets it go); and one to watch
    the locks with."""
    import psycopg

    dsn = server_address("postgres")
    store = ar.PostgresBackend(dsn, table=f"kv_{uuid.uuid4().hex}", **options)
    await store.batch_save(rows)
    holder = await psycopg.AsyncConnection.connect(dsn)
    watch = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        locking = f"SELECT 1 FROM {store._table} WHERE key = %s FOR UPDATE"
        await holder.execute(locking, [key.encode()])
        yield store, holder, watch
    finally:
        await holder.close()
        await watch.close()
        await store._execute(None, f"DROP TABLE IF EXISTS {store._table}", [])
        await store.close()


async def test_postgres_guarded_writes_of_a_row_one_did_not_see_meet_without_deadlock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A guarded write locks the rows it finds, in the order of their keys: this one locked
    # its guard "b", then inserted "a", which it had not found. Another, guarded by "0", had
    # inserted "a" meanwhile and waited for "b": a cycle, which the server broke a second
    # later by aborting one of them.
    from llm_agent_runtime.persistence import postgres

    monkeypatch.setattr(postgres, "_DEADLOCK_ATTEMPTS", 1)  # an aborted statement raises
    async with a_postgres_row_held({"0": b"1", "b": b"1"}, "b") as (store, holder, watch):
        first = asyncio.ensure_future(store.batch_save_if("b", b"1", {"a": b"first"}))
        await waiting_for_a_lock(watch, store.table, 1)
        second = asyncio.ensure_future(store.batch_save_if("0", b"1", {"a": b"2", "b": b"1"}))
        await waiting_for_a_lock(watch, store.table, 2)
        await holder.commit()
        assert await first is True
        assert await second is True
        assert await store.batch_load(["a", "b"]) == {"a": b"2", "b": b"1"}


async def test_a_postgres_batch_delete_if_deletes_what_the_write_of_its_guard_wrote() -> None:
    # The deletion read its rows as they were when it started: the guard it waited for was
    # then written, along with "k", by the write it waited for; it saw the guard hold, and
    # said so, but did not see "k", which stayed.
    async with a_postgres_row_held({"g": b"old", "z": b"1"}, "z") as (store, holder, watch):
        write = asyncio.ensure_future(store.batch_save_if("z", b"1", {"g": b"new", "k": b"x"}))
        await waiting_for_a_lock(watch, store.table, 1)  # it holds its advisory locks, g's too
        deletion = asyncio.ensure_future(store.batch_delete_if("g", b"new", ["k"]))
        await waiting_for_a_lock(watch, store.table, 2)
        await holder.commit()
        assert await write is True
        assert await deletion is True
        assert await store.batch_load(["g", "k", "z"]) == {"g": b"new", "z": b"1"}


async def test_a_postgres_batch_delete_if_timed_out_or_cancelled_leaves_its_connection_idle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its transaction (the locks, then the deletion) stopped midway: rolled back there, the
    # connection goes back to the pool idle, with no warning from the pool, and serves on.
    caplog.set_level(logging.WARNING, logger="psycopg.pool")
    held = a_postgres_row_held({"g": b"1", "k": b"2"}, "k", timeout=0.5, max_size=1)
    async with held as (store, holder, _):
        with pytest.raises(ar.PersistenceError, match="did not answer within"):
            await store.batch_delete_if("g", b"1", ["k"])
        cancelled = asyncio.ensure_future(store.batch_delete_if("g", b"1", ["k"]))
        await asyncio.sleep(0.2)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await holder.rollback()
        assert await store.batch_delete_if("g", b"1", ["k"]) is True
        assert await store.batch_load(["g", "k"]) == {"g": b"1"}
    assert not [r for r in caplog.records if r.name == "psycopg.pool"], caplog.text


async def test_a_redis_batch_load_is_one_moment_of_its_keys() -> None:
    # Keys MGET found missing were read again one by one when one had been written since:
    # a read mixed batches (`{"b": ...}` alone, values of two batches) never stored so.
    prefix = f"test:{uuid.uuid4().hex}:"
    writer = ar.RedisBackend(server_address("redis"), prefix=prefix)
    reader = ar.RedisBackend(server_address("redis"), prefix=prefix)
    keys = [f"k{i}" for i in range(4)]
    done = False

    async def write() -> None:
        n = 0
        while not done:
            n += 1
            await writer.save("g", b"x")
            await writer.batch_save(dict.fromkeys(keys, b"%d" % n))
            await writer.batch_delete_if("g", b"x", keys)

    try:
        writing = asyncio.create_task(write())
        for _ in range(300):
            got = await reader.batch_load(keys)
            assert got == {} or (sorted(got) == keys and len(set(got.values())) == 1), got
        done = True
        await writing
    finally:
        done = True
        for key in [*keys, "g"]:
            await writer.delete(key)
        await writer.close()
        await reader.close()


async def test_a_postgres_batch_delete_if_aborted_as_one_of_a_deadlock_runs_again() -> None:
    # A release (guard: the fence, deleted with the claim) and a takeover (which locked the
    # claim, then writes the fence) take the two rows in opposite orders: the server aborts
    # the release, which runs again, sees the takeover's fence and deletes nothing.
    import psycopg

    dsn = server_address("postgres")
    table = f"kv_{uuid.uuid4().hex}"
    store = ar.PostgresBackend(dsn, table=table)
    claim, fence = "session:s:resume:0", "session:s:fence:0"
    await store.batch_save({claim: b"held", fence: b"holder"})
    takeover = await psycopg.AsyncConnection.connect(dsn)
    watch = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    statements: list[str] = []
    run = store._statement

    async def counted(state: Any, pool: Any, query: str, *args: Any) -> list[Any]:
        statements.append(query)
        return await run(state, pool, query, *args)

    store._statement = counted  # type: ignore[method-assign]
    try:
        # The takeover's deadlock check comes last: the release is the one aborted.
        await takeover.execute("SET deadlock_timeout = '10s'")
        await takeover.execute(
            f'SELECT 1 FROM "{table}" WHERE key = %s FOR SHARE', [claim.encode()]
        )
        release = asyncio.ensure_future(store.batch_delete_if(fence, b"holder", [fence, claim]))
        await waiting_for_a_lock(watch, table, 1)  # it locked the fence, and waits for the claim
        await takeover.execute(
            f'UPDATE "{table}" SET value = %s WHERE key = %s', [b"taker", fence.encode()]
        )
        await takeover.commit()
        assert await release is False
        # Aborted once (a deadlock), then run again, after a pause that lets the woken
        # takeover take the fence first (run again at once, it could deadlock again).
        assert len(statements) == 2
        assert await store.batch_load([claim, fence]) == {claim: b"held", fence: b"taker"}
    finally:
        await takeover.close()
        await watch.close()
        store._statement = run  # type: ignore[method-assign]
        await store._execute(None, f'DROP TABLE IF EXISTS "{table}"', [])
        await store.close()


# ---------------------------------------------------------------- cancelled FileBackend calls


async def test_a_cancelled_file_write_has_ended_when_its_cancellation_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The write went on in its thread after the cancellation, and landed after the caller's
    # next write of the key: the older value won.
    store = ar.FileBackend(tmp_path / "files")
    started, release = threading.Event(), threading.Event()
    write = store._write

    def slow_write(key: str, value: bytes) -> None:
        if value == b"old":
            started.set()
            release.wait(5)
        write(key, value)

    monkeypatch.setattr(store, "_write", slow_write)
    task = asyncio.create_task(store.save("k", b"old"))
    assert await asyncio.to_thread(started.wait, 5)
    task.cancel()
    timer = threading.Timer(0.2, release.set)
    timer.start()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.save("k", b"new")  # the caller's next write, once the cancellation came
    timer.join()
    await asyncio.sleep(0.2)
    assert await store.load("k") == b"new"


async def test_a_file_fork_cancelled_while_its_copy_is_written_leaves_its_new_id_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The copy's thread went on after the fork's cleanup had deleted its claim: the fork
    # landed all the same, and its id was taken.
    store = ar.FileBackend(tmp_path / "files")
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=store)
    session = await runtime.run_agent("a", "q", script(add_step(1), add_step(2), FINAL))
    started, release = threading.Event(), threading.Event()
    write_batch = store._write_batch

    def slow_copy(items: dict[str, bytes]) -> None:
        if any(key.startswith("session:child:step:") for key in items):
            started.set()
            release.wait(5)
        write_batch(items)

    monkeypatch.setattr(store, "_write_batch", slow_copy)
    fork = asyncio.create_task(runtime.fork(session.session_id, 3, "child"))
    assert await asyncio.to_thread(started.wait, 5)
    fork.cancel()
    timer = threading.Timer(0.2, release.set)
    timer.start()
    with pytest.raises(asyncio.CancelledError):
        await fork
    timer.join()
    await asyncio.sleep(0.2)
    assert await store.list_keys("session:child") == []
    assert await runtime.fork(session.session_id, 3, "child") == "child"


def _hold_lock(path: Path, shared: bool, seconds: float) -> Callable[[], None]:
    """Locks `path` as another process would (its own open file); returns its release.

    Released after `seconds` at the latest: a wait that ignores cancellation ends then.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    once = threading.Lock()

    def close() -> None:
        if once.acquire(blocking=False):
            os.close(fd)

    timer = threading.Timer(seconds, close)
    timer.start()

    def release() -> None:
        timer.cancel()
        close()

    return release


async def test_a_cancelled_file_read_goes_on_at_once_and_its_thread_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read waiting for a batch being installed (its writer paused, say) held its caller
    # as long: a timeout did not end it.
    store = ar.FileBackend(tmp_path / "files")
    await store.batch_save({"a": b"1", "b": b"1"})
    loads: list[str] = []
    load = store._load

    def counting(key: str) -> bytes | None:
        loads.append(key)
        return load(key)

    monkeypatch.setattr(store, "_load", counting)
    release = _hold_lock(tmp_path / "files" / ".batches.lock", shared=False, seconds=1.5)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.batch_load(["a", "b"]), 0.1)
    assert time.monotonic() - started < 0.5
    await asyncio.sleep(0.05)
    release()  # the install ends now
    await asyncio.sleep(0.1)
    assert loads == []  # the thread gave up its wait: it read nothing, and holds no lock
    lock = os.open(tmp_path / "files" / ".batches.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(lock)


async def test_a_cancelled_file_batch_waiting_for_a_read_gives_up_and_writes_nothing(
    tmp_path: Path,
) -> None:
    # A batch waiting for a slow read (another process's) held its caller as long, then
    # landed: a timeout did not end it.
    store = ar.FileBackend(tmp_path / "files")
    release = _hold_lock(tmp_path / "files" / ".batches.lock", shared=True, seconds=1.5)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.batch_save({"a": b"old", "b": b"old"}), 0.1)
        assert time.monotonic() - started < 0.5
        assert os.listdir(tmp_path / "files" / ".batches") == []  # nothing of it is left
    finally:
        release()
    await store.batch_save({"a": b"new", "b": b"new"})
    await asyncio.sleep(0.1)
    assert await store.batch_load(["a", "b"]) == {"a": b"new", "b": b"new"}


async def test_a_file_deletion_batch_a_crash_left_committed_is_finished_whole(
    tmp_path: Path,
) -> None:
    # `batch_delete_if` goes through the redo log: its deletions are a batch like any other.
    store = ar.FileBackend(tmp_path / "files")
    await store.batch_save({"a": b"1", "b": b"1", "c": b"1", "d": b"1"})
    batch = tmp_path / "files" / ".batches" / f"{uuid.uuid4().hex}.batch"
    batch.write_bytes(_encode_batch({"a": None, "b": None, "c": b"2", "never": None}))
    (tmp_path / "files" / file_name_for("a")).unlink()  # its install cut short by a crash
    again = ar.FileBackend(tmp_path / "files")  # the next open finishes it
    assert await again.batch_load(["a", "b", "c", "d", "never"]) == {"c": b"2", "d": b"1"}
    assert not batch.exists()


def test_a_file_batch_record_holds_deletions_and_only_they_change_its_format() -> None:
    from llm_agent_runtime.persistence.file import _BATCH_CHECKSUM, _decode_batch

    mixed: dict[str, bytes | None] = {"a": None, "b": b"", "c": b"value", "é": None}
    assert _decode_batch(_encode_batch(mixed)) == mixed
    # Writes alone: the format of earlier versions, which a process of one of them sharing
    # the directory finishes. A record of that format holds no deletion.
    writes = _encode_batch({"a": b"1", "b": b"2"})
    assert writes.startswith(b"llm-agent-runtime-batch/1\n")
    deletions = _encode_batch({"a": None})
    assert deletions.startswith(b"llm-agent-runtime-batch/2\n")
    body = b"llm-agent-runtime-batch/1\n" + deletions[26 : -_BATCH_CHECKSUM.size]
    assert _decode_batch(body + _BATCH_CHECKSUM.pack(zlib.crc32(body))) is None


async def test_a_file_batch_delete_if_cut_short_as_it_is_installed_is_finished_by_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ar.FileBackend(tmp_path / "files")
    await store.batch_save({"fence": b"me", "claim": b"held", "other": b"1"})
    assert await store.batch_delete_if("fence", b"you", ["fence", "claim"]) is False
    assert os.listdir(tmp_path / "files" / ".batches") == []  # refused: no batch left
    real = store._install_item
    installed: list[str] = []

    def failing(key: str, value: bytes | None) -> None:
        if installed:
            raise OSError(5, "Input/output error")
        installed.append(key)
        real(key, value)

    monkeypatch.setattr(store, "_install_item", failing)
    with pytest.raises(ar.PersistenceError, match="not installed"):
        await store.batch_delete_if("fence", b"me", ["fence", "claim"])
    monkeypatch.undo()
    assert len(installed) == 1  # one of the two deleted
    # The batch is committed: the next call finishes it before it reads.
    assert await store.list_keys() == ["other"]
    assert os.listdir(tmp_path / "files" / ".batches") == []


async def test_a_cancelled_file_save_waiting_for_a_batch_being_installed_gives_up(
    tmp_path: Path,
) -> None:
    # Every write first waits for the batches being installed: one whose writer was paused
    # held a cancelled save's caller as long.
    store = ar.FileBackend(tmp_path / "files")
    batch = tmp_path / "files" / ".batches" / f"{uuid.uuid4().hex}.batch"
    batch.write_bytes(_encode_batch({"x": b"1", "y": b"1"}))  # committed by a live writer
    release = _hold_lock(batch, shared=False, seconds=1.5)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.save("k", b"v"), 0.1)
        assert time.monotonic() - started < 0.5
    finally:
        release()  # its writer dies: the next call finishes it
    await asyncio.sleep(0.1)
    assert await store.batch_load(["k", "x", "y"]) == {"x": b"1", "y": b"1"}


async def test_a_file_batch_cancelled_after_its_commit_is_installed_whole_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past its commit a batch waits for no lock: its cancelled caller waits for the install.
    store = ar.FileBackend(tmp_path / "files")
    installing, release = threading.Event(), threading.Event()
    install = store._install

    def slow_install(batch: Path, items: dict[str, bytes]) -> None:
        installing.set()
        release.wait(5)
        install(batch, items)

    monkeypatch.setattr(store, "_install", slow_install)
    task = asyncio.create_task(store.batch_save({"a": b"1", "b": b"1"}))
    assert await asyncio.to_thread(installing.wait, 5)
    task.cancel()
    timer = threading.Timer(0.2, release.set)
    timer.start()
    with pytest.raises(asyncio.CancelledError):
        await task
    timer.join()
    # Looked at directly: a call would finish a batch left in the redo log.
    assert os.listdir(tmp_path / "files" / ".batches") == []
    assert store._load("a") == store._load("b") == b"1"


# ---------------------------------------------------------------- no read sees part of a batch


async def test_no_file_read_sees_part_of_a_batch_installed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read that found no batch in the redo log went on while one was committed and
    # installed: it saw some of the batch's keys new, the others old.
    writer, reader = ar.FileBackend(tmp_path / "files"), ar.FileBackend(tmp_path / "files")
    keys = [f"session:s:step:{n}" for n in range(1, 5)]
    await writer.batch_save(dict.fromkeys(keys, b"old"))
    reading, half_installed, finish = threading.Event(), threading.Event(), threading.Event()
    write, load = writer._write, reader._load
    written: list[str] = []

    def pausing_write(key: str, value: bytes) -> None:
        write(key, value)
        written.append(key)
        if len(written) == 2:
            half_installed.set()
            finish.wait(5)

    def pausing_load(key: str) -> bytes | None:
        if not reading.is_set():
            reading.set()
            half_installed.wait(0.5)  # in vain once fixed: the batch waits for this read
        return load(key)

    monkeypatch.setattr(writer, "_write", pausing_write)
    monkeypatch.setattr(reader, "_load", pausing_load)
    read = asyncio.create_task(reader.batch_load(keys))
    assert await asyncio.to_thread(reading.wait, 5)
    batch = asyncio.create_task(writer.batch_save(dict.fromkeys(keys, b"new")))
    seen = await read
    finish.set()
    await batch
    assert len(seen) == 4 and len(set(seen.values())) == 1, seen
    assert await reader.batch_load(keys) == dict.fromkeys(keys, b"new")


async def test_a_file_batch_waits_for_the_reads_under_way_not_for_later_ones(
    tmp_path: Path,
) -> None:
    # A new shared flock is granted past a waiting exclusive one: reads that overlapped one
    # another held a batch off for as long as they came.
    store = ar.FileBackend(tmp_path / "files")
    go, inside = [threading.Event() for _ in range(30)], [threading.Event() for _ in range(30)]

    def read(turn: int) -> None:
        def hold() -> None:
            inside[turn].set()
            time.sleep(0.02)
            if turn + 1 < len(inside):  # the next read comes in before this one ends
                go[turn + 1].set()
                inside[turn + 1].wait(0.1)

        if turn:
            go[turn].wait(5)
        store._between_batches(hold)

    readers = [threading.Thread(target=read, args=(turn,)) for turn in range(len(inside))]
    for reader in readers:
        reader.start()
    try:
        assert await asyncio.to_thread(inside[0].wait, 5)
        await store.batch_save({"a": b"1", "b": b"1"})
        assert not inside[-1].is_set()  # in while the reads went on
    finally:
        for reader in readers:
            await asyncio.to_thread(reader.join, 5)
    assert all(event.is_set() for event in inside)  # and the later reads came after it


async def test_a_file_reader_that_may_not_write_the_lock_files_opens_them_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader that could not open the lock for writing (another user's directory) took
    # none, and read while a batch was installed.
    directory = tmp_path / "files"
    store = ar.FileBackend(directory)
    await store.batch_save({"a": b"1", "b": b"1"})
    real_open = os.open
    opened_to_read: list[str] = []

    def no_write_access(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        name = Path(path).name
        if name.startswith(".batches."):
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise PermissionError(13, "Permission denied", str(path))
            opened_to_read.append(name)
        return real_open(path, flags, *args, **kwargs)

    release = _hold_lock(directory / ".batches.lock", shared=False, seconds=1.5)
    monkeypatch.setattr(os, "open", no_write_access)
    read = asyncio.create_task(store.batch_load(["a", "b"]))
    try:
        await asyncio.sleep(0.2)
        assert not read.done()  # it waits for the batch being installed
    finally:
        release()
    assert await read == {"a": b"1", "b": b"1"}
    assert opened_to_read == [".batches.turnstile", ".batches.lock"]
    # Missing, and nobody may make them (a read-only copy, which nobody writes): no lock.
    for name in (".batches.lock", ".batches.turnstile"):
        (directory / name).unlink(missing_ok=True)
    assert await store.batch_load(["a", "b"]) == {"a": b"1", "b": b"1"}


async def test_a_sqlite_batch_load_in_chunks_reads_one_snapshot(tmp_path: Path) -> None:
    # Past SQLite's 500 variables a batch_load reads in chunks: a batch another connection
    # committed between two chunks showed in the later chunks only.
    store = ar.SqliteBackend(tmp_path / "store.db")
    keys = [f"session:s:step:{n}" for n in range(1, 1001)]
    await store.batch_save(dict.fromkeys(keys, b"old"))
    other = sqlite3.connect(tmp_path / "store.db", isolation_level=None, check_same_thread=False)
    chunks = 0

    def between_chunks(statement: str) -> None:
        nonlocal chunks
        if statement.startswith("SELECT key, value"):
            chunks += 1
            if chunks == 2:  # the second chunk starts: another writer commits a batch
                other.execute("BEGIN IMMEDIATE")
                other.executemany(
                    "UPDATE kv SET value = ? WHERE key = ?", [(b"new", k) for k in keys]
                )
                other.execute("COMMIT")

    try:
        store._conn.set_trace_callback(between_chunks)
        seen = await store.batch_load(keys)
        store._conn.set_trace_callback(None)
        assert chunks == 2
        assert set(seen.values()) == {b"old"} and len(seen) == 1000
        assert set((await store.batch_load(keys)).values()) == {b"new"}
    finally:
        other.close()
        store.close()


# ---------------------------------------------------------------- worker threads


async def test_work_in_a_worker_thread_sees_the_callers_context_variables() -> None:
    # The work ran in the worker thread's own context: what FileBackend and SQLite logged
    # there lost the caller's request ids and traces.
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
    request_id.set("req-42")
    assert await run_in_thread(request_id.get) == "req-42"


# ---------------------------------------------------------------- PostgreSQL: first use, sizes


async def test_postgres_workers_creating_one_table_at_once_all_succeed() -> None:
    # CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin: a worker's first
    # call failed on the catalog's unique index when another worker's created the table.
    dsn = server_address("postgres")
    for _ in range(5):
        table = f"kv_{uuid.uuid4().hex}"
        workers = [ar.PostgresBackend(dsn, table=table, min_size=1, max_size=1) for _ in range(8)]
        try:
            results = await asyncio.gather(
                *(w.save(f"k{i}", b"v") for i, w in enumerate(workers)), return_exceptions=True
            )
            assert [r for r in results if r is not None] == []
            assert len(await workers[0].list_keys()) == 8
        finally:
            for worker in workers:
                await worker.close()


def _postgres_tagged(caplog: pytest.LogCaptureFixture) -> tuple[str, Callable[[], int]]:
    """The test server's DSN naming a new application, and a count of its connections now.

    The count waits (up to 5 s) for connections closing to be gone from the server's list.
    psycopg_pool's warnings are not captured: one logs a connection attempt the loop's end
    cancelled, and its record (kept by the capture) would keep the half-made connection.
    """
    import psycopg

    caplog.set_level(logging.ERROR, logger="psycopg.pool")
    dsn = server_address("postgres")
    app = f"t{uuid.uuid4().hex}"
    tagged = f"{dsn}{'&' if '?' in dsn else '?'}application_name={app}"

    def connections() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(100):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app]
                ).fetchone()
                assert row is not None
                if row[0] == 0:
                    break
                time.sleep(0.05)  # a backend leaves the list as it exits: no event to await
            return int(row[0])

    return tagged, connections


async def _drop_table(dsn: str, table: str) -> None:
    cleaner = ar.PostgresBackend(dsn, table=table)
    await cleaner._execute(None, f'DROP TABLE "{table}"', [])
    await cleaner.close()


def test_one_postgres_backend_serves_two_threads_each_running_its_own_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its pool (and the lock opening it) was bound to the first loop to use it: the other
    # thread's calls failed with a bare RuntimeError, or waited for a connection in vain.
    dsn, connections = _postgres_tagged(caplog)
    table = f"kv_{uuid.uuid4().hex}"
    store = ar.PostgresBackend(dsn, table=table, timeout=3.0)
    both = threading.Barrier(2)

    async def work(tag: str) -> list[bytes | None]:
        await asyncio.to_thread(both.wait, 5)  # the two loops' first calls at once

        async def one(i: int) -> bytes | None:
            await store.save(f"{tag}{i}", tag.encode())
            return await store.load(f"{tag}{i}")

        return await asyncio.gather(*(one(i) for i in range(10)))  # the pool grows

    try:
        with ThreadPoolExecutor(2) as threads:
            runs = [threads.submit(asyncio.run, work(tag)) for tag in "ab"]
            assert [run.result(timeout=20) for run in runs] == [[b"a"] * 10, [b"b"] * 10]
        assert connections() == 0  # each loop's pool closed as its loop ended
    finally:
        asyncio.run(_drop_table(dsn, table))


def test_a_postgres_backend_serves_one_asyncio_run_after_another(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The lock opening the pool was bound to the first run's loop (by its concurrent first
    # calls): the second run's failed with a bare RuntimeError.
    dsn, connections = _postgres_tagged(caplog)
    table = f"kv_{uuid.uuid4().hex}"
    store = ar.PostgresBackend(dsn, table=table, timeout=3.0)

    async def session(tag: str, close: bool) -> list[str]:
        try:
            await asyncio.gather(*(store.save(f"{tag}{i}", b"v") for i in range(5)))
            return await store.list_keys(tag)
        finally:
            if close:
                await store.close()

    try:
        for tag, close in [("run1-", True), ("run2-", True), ("run3-", False)]:
            assert asyncio.run(session(tag, close)) == [f"{tag}{i}" for i in range(5)]
            assert connections() == 0  # closed, or as its loop ended
    finally:
        asyncio.run(_drop_table(dsn, table))


def test_a_postgres_backend_closes_from_another_loop(caplog: pytest.LogCaptureFixture) -> None:
    # close() closed the first loop's pool from the running one: "Event loop is closed".
    dsn, connections = _postgres_tagged(caplog)
    table = f"kv_{uuid.uuid4().hex}"
    store = ar.PostgresBackend(dsn, table=table, min_size=2, timeout=3.0)
    try:
        asyncio.run(store.save("k", b"v"))
        assert connections() == 0  # closed as its loop ended
        asyncio.run(store.close())  # a loop of its own: no pool of its own, nothing fails
        opened, go_on = threading.Event(), threading.Event()

        async def other_loop() -> bytes | None:
            await store.save("a", b"1")
            opened.set()
            await asyncio.to_thread(go_on.wait, 10)
            return await store.load("a")  # its pool closed meanwhile: a new one

        async def close_then_load() -> bytes | None:
            await store.close()  # closes the other (running) loop's pool, there
            return await store.load("k")

        with ThreadPoolExecutor(1) as thread:
            run = thread.submit(asyncio.run, other_loop())
            assert opened.wait(10)
            assert asyncio.run(close_then_load()) == b"v"
            go_on.set()
            assert run.result(timeout=10) == b"1"
        assert connections() == 0
    finally:
        asyncio.run(_drop_table(dsn, table))


@pytest.mark.parametrize(
    "sizes",
    [
        {"min_size": 5, "max_size": 2},
        {"min_size": -1},
        {"max_size": 0},
        {"min_size": 0, "max_size": 0},
        {"min_size": "2"},
        {"max_size": 2.0},
        {"max_size": True},
    ],
)
def test_bad_postgres_pool_sizes_fail_at_once_as_persistence_errors(sizes: dict[str, Any]) -> None:
    with pytest.raises(ar.PersistenceError, match="pool sizes must be ints"):
        ar.PostgresBackend("postgresql://x", **sizes)


# ---------------------------------------------------------------- Redis: a namespace of its own


async def test_redis_backend_by_default_shares_no_keys_with_the_orchestration_state() -> None:
    # Its default prefix held the orchestration state's defaults: list_keys listed a rate
    # limiter's bucket, which load could not read, and a save could overwrite.
    url = server_address("redis")
    name = f"api-{uuid.uuid4().hex}"
    limiter = ar.RedisRateLimiter(url, rate=5, capacity=5)  # every default
    store = ar.RedisBackend(url)
    bucket = limiter.redis_key(name)
    shadow = bucket.removeprefix("llm_agent_runtime:")  # the bucket, as the store named it
    try:
        assert await limiter.try_acquire(name)
        assert [k for k in await store.list_keys() if name in k] == []
        await store.save(shadow, b"checkpoint")
        assert await store.load(shadow) == b"checkpoint"
        assert await limiter.try_acquire(name)  # its bucket is whole
    finally:
        await store.client.delete(bucket, store.prefix + shadow)
        await store.close()
        await limiter.close()


# ---------------------------------------------------------------- SQLite's synchronous setting

SYNCHRONOUS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}


@pytest.mark.parametrize(
    ("given", "level"),
    [
        ("FULL", "FULL"),
        ("normal", "NORMAL"),
        ("Off", "OFF"),
        ("extra", "EXTRA"),
        (0, "OFF"),
        (2, "FULL"),
    ],
)
def test_sqlite_synchronous_takes_a_level_by_name_in_any_case_or_by_number(
    tmp_path: Path, given: str | int, level: str
) -> None:
    store = ar.SqliteBackend(tmp_path / "store.db", synchronous=given)
    try:
        assert store.synchronous == level and f"synchronous={level!r}" in repr(store)
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == SYNCHRONOUS[level]
    finally:
        store.close()


@pytest.mark.parametrize("given", ["FULLL", "fsync", "ON", "", 5, -1, True, 2.0, None])
def test_sqlite_refuses_a_synchronous_level_it_would_take_for_normal(
    tmp_path: Path, given: Any
) -> None:
    # SQLite takes a name it does not know for NORMAL, silently: less durable than asked.
    with pytest.raises(ar.PersistenceError, match="synchronous must be one of"):
        ar.SqliteBackend(tmp_path / "store.db", synchronous=given)


@pytest.mark.parametrize("given", ["5", True, -1.0, float("nan"), float("inf"), None])
def test_sqlite_refuses_a_busy_timeout_that_is_no_time(tmp_path: Path, given: Any) -> None:
    # A str was a bare TypeError from sqlite3.connect.
    with pytest.raises(ar.PersistenceError, match="busy_timeout must be a finite number"):
        ar.SqliteBackend(tmp_path / "store.db", busy_timeout=given)


def test_sqlite_keeps_its_busy_timeout_as_a_float(tmp_path: Path) -> None:
    # A numpy float32 was kept as it was: a deadline of it and the monotonic clock rounds
    # by seconds once the host has been up for some days.
    store = ar.SqliteBackend(tmp_path / "store.db", busy_timeout=np.float32(5))
    try:
        assert type(store._busy_timeout) is float and store._busy_timeout == 5.0
    finally:
        store.close()


def test_a_path_with_a_nul_is_a_persistence_error(tmp_path: Path) -> None:
    # A bare ValueError ("embedded null byte").
    with pytest.raises(ar.PersistenceError, match="cannot open SQLite database"):
        ar.SqliteBackend(str(tmp_path / "a\x00b.db"))
    with pytest.raises(ar.PersistenceError, match="cannot create"):
        ar.FileBackend(str(tmp_path / "a\x00b"))


async def test_leaving_async_with_while_a_call_waits_for_a_lock_keeps_the_loop_running(
    tmp_path: Path,
) -> None:
    # The close waited on the loop for the call's thread, which waited for another
    # writer's lock (up to busy_timeout): every other task stood still until then.
    ar.SqliteBackend(tmp_path / "store.db").close()  # the file and its table
    other = sqlite3.connect(tmp_path / "store.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    backend = ar.SqliteBackend(tmp_path / "store.db", busy_timeout=3.0)
    ticks: list[float] = []

    async def heartbeat() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    beating = asyncio.create_task(heartbeat())
    try:
        async with backend as store:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(store.save("k", b"v"), 0.5)  # its thread goes on
        await asyncio.sleep(0.1)  # a beat after the close: a stall shows as a gap
    finally:
        beating.cancel()
        other.execute("ROLLBACK")
        other.close()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 0.5  # the loop ran all along (it stood for ~1.5 s before)


# ---------------------------------------------------------------- listings: exact, once, whole


async def test_redis_lists_a_key_its_scan_returns_twice_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SCAN may return a key more than once: one moved while Redis rehashes the keyspace.
    store = make_backend("redis", Path())
    assert isinstance(store, ar.RedisBackend)
    await store.batch_save({"session:b": b"2", "session:a": b"1", "other": b"3"})
    scan = store.client.scan

    async def scan_returning_each_key_twice(*args: Any, **kwargs: Any) -> Any:
        cursor, keys = await scan(*args, **kwargs)
        return cursor, [*keys, *reversed(keys)]

    monkeypatch.setattr(store.client, "scan", scan_returning_each_key_twice)
    try:
        assert await store.list_keys() == ["other", "session:a", "session:b"]
        assert await store.list_keys("session:") == ["session:a", "session:b"]
    finally:
        await store.client.delete(*(store.prefix + k for k in ("session:a", "session:b", "other")))
        await store.close()


async def test_a_sqlite_file_that_is_no_database_fails_to_open_leaving_no_connection_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "not.db"
    path.write_bytes(b"this is not a SQLite database\n" * 200)
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    with pytest.raises(ar.PersistenceError, match="cannot open SQLite database"):
        ar.SqliteBackend(path)
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")


@pytest.mark.parametrize("form", ["with", "async with"])
async def test_a_sqlite_backend_used_as_a_context_manager_closes_its_connection(
    tmp_path: Path, form: str
) -> None:
    # An unclosed connection stayed open until collected: a ResourceWarning on Python 3.13.
    if form == "with":
        with ar.SqliteBackend(tmp_path / "c.db") as backend:
            await backend.save("k", b"v")
    else:
        async with ar.SqliteBackend(tmp_path / "c.db") as backend:
            await backend.save("k", b"v")
    with pytest.raises(ar.PersistenceError, match="closed database"):
        await backend.load("k")
    backend.close()  # a second close does nothing
    with ar.SqliteBackend(tmp_path / "c.db") as again:
        assert await again.load("k") == b"v"


async def test_a_sqlite_backend_collected_unclosed_closes_its_connection(tmp_path: Path) -> None:
    # Made inline (`checkpoint_backend=SqliteBackend(...)`) and never closed: its connection
    # stayed open until collected, a ResourceWarning naming no path on Python 3.13.
    backend = ar.SqliteBackend(tmp_path / "c.db")
    await backend.save("k", b"v")
    conn = backend._conn
    assert conn is not None
    # The last reference may go in the thread the save ran in: the connection is used here
    # once the backend is gone, not while it closes.
    collected = weakref.ref(backend)
    del backend
    for _ in range(500):
        gc.collect()
        if collected() is None:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")
    with ar.SqliteBackend(tmp_path / "c.db") as again:
        assert await again.load("k") == b"v"


# SQLite's LIKE refuses a pattern longer than 50,000 bytes (SQLITE_MAX_LIKE_PATTERN_LENGTH).
LONG = "x" * 50_001


@pytest.mark.parametrize("kind", ["memory", "sqlite", "file", "redis"])
async def test_listing_takes_a_prefix_longer_than_sqlites_like_patterns(
    kind: str, tmp_path: Path
) -> None:
    store = make_backend(kind, tmp_path)
    keys = [LONG, LONG + "a", LONG + "%", LONG[:-1] + "y", "x"]
    try:
        await store.batch_save(dict.fromkeys(keys, b"v"))
        assert await store.list_keys(LONG) == [LONG, LONG + "%", LONG + "a"]
        assert await store.list_keys(LONG + "a") == [LONG + "a"]
        assert await store.list_keys(LONG + "_") == []
    finally:
        for key in keys:
            await store.delete(key)
        await close_backend(store)


async def test_postgres_lists_by_a_prefix_longer_than_sqlites_like_patterns() -> None:
    # Keys that long do not fit PostgreSQL's index: a prefix that long lists nothing.
    store = make_backend("postgres", Path())
    try:
        await store.save("x", b"v")
        assert await store.list_keys(LONG) == []
        assert await store.list_keys("x") == ["x"]
    finally:
        await close_backend(store)


AWKWARD_KEYS = [
    "a",
    "a%b",
    "a_b",
    "aXb",
    "A%b",
    "a\\b",
    "a\\%",
    "é",
    "éa",
    "\ud7ff",
    "\ue000",
    "\uffff",
    "\U0010ffff",
    "\U0010ffffa",
    "a\U0010ffff",
    "a\U0010ffff\U0010ffff",
    "b",
    "nul\x00",
    "nul\x00x",
]


async def test_prefix_listing_is_exact_for_wildcards_non_ascii_and_the_last_code_point(
    backend: ar.PersistenceBackend,
) -> None:
    await backend.batch_save(dict.fromkeys(AWKWARD_KEYS, b"v"))
    prefixes = {key[:n] for key in AWKWARD_KEYS for n in range(len(key) + 1)}
    for prefix in sorted(prefixes | {"%", "_", "\\", "A", "a%", "a_", "\U0010ffff" * 3, "c"}):
        expected = sorted(k for k in AWKWARD_KEYS if k.startswith(prefix))
        assert await backend.list_keys(prefix) == expected, prefix


TRICKY = st.sampled_from(["%", "_", "\\", "a", "A", "é", "\x00", "\ud7ff", "\ue000", "\U0010ffff"])


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    keys=st.lists(st.text(TRICKY | st.characters(codec="utf-8"), max_size=6), max_size=12),
    long=st.booleans(),
)
def test_sqlite_lists_exactly_the_keys_starting_with_a_prefix(
    data: st.DataObject, keys: list[str], long: bool
) -> None:
    # A long common start takes each prefix beyond what a LIKE pattern may hold.
    start = LONG if long else ""
    keys = [start + k for k in keys]
    starts_of_keys = [k[:n] for k in keys for n in range(len(start), len(k) + 1)]
    others = st.text(TRICKY, max_size=3).map(lambda p: start + p)
    prefix = data.draw(st.sampled_from(starts_of_keys) | others if keys else others)

    async def run() -> list[str]:
        store = ar.SqliteBackend(":memory:")
        try:
            await store.batch_save(dict.fromkeys(keys, b"v"))
            return await store.list_keys(prefix)
        finally:
            store.close()

    assert asyncio.run(run()) == sorted({k for k in keys if k.startswith(prefix)})


async def _store_a_foreign_key(store: ar.PersistenceBackend, raw: bytes) -> None:
    """Stores `raw`, bytes that are not UTF-8 text, as a key, as another client could."""
    if isinstance(store, ar.SqliteBackend):
        with sqlite3.connect(store.path) as conn:
            conn.execute("INSERT INTO kv (key, value) VALUES (CAST(? AS TEXT), x'00')", (raw,))
        conn.close()
    elif isinstance(store, ar.PostgresBackend):
        import psycopg

        async with await psycopg.AsyncConnection.connect(
            server_address("postgres"), autocommit=True
        ) as conn:
            await conn.execute(
                f"INSERT INTO {store.table} (key, value) VALUES (%s, %s)", [raw, b"\x00"]
            )
    else:
        assert isinstance(store, ar.RedisBackend)
        await store.client.set(store.prefix.encode() + raw, b"\x00")


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_a_stored_key_that_is_not_utf8_is_skipped_by_listings_with_a_warning(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_backend(kind, tmp_path)
    try:
        await store.batch_save({"session:a": b"1", "session:b": b"2"})
        await _store_a_foreign_key(store, b"session:\xff\xfe")
        assert await store.list_keys() == ["session:a", "session:b"]
        assert await store.list_keys("session:") == ["session:a", "session:b"]
        assert "skipped the stored key" in caplog.text and "\\xff\\xfe" in caplog.text
        assert await store.batch_load(["session:a", "session:c"]) == {"session:a": b"1"}
        assert await store.load("session:b") == b"2"
    finally:
        await close_backend(store)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:notaport/0",
        "notascheme://x",
        "localhost:6379",
        "redis://localhost:99999/0",
        "redis://[::1/0",
        "redis://localhost/0?socket_timeout=soon",
    ],
)
def test_a_malformed_redis_url_is_a_persistence_error(url: str) -> None:
    with pytest.raises(ar.PersistenceError, match="RedisBackend: not a usable Redis URL"):
        ar.RedisBackend(url)


@pytest.mark.parametrize(
    "url", ["redis://:s3cret@localhost:notaport/0", "redis://user:s3cr\uff03et@localhost/0"]
)
def test_a_malformed_redis_url_error_hides_its_credentials(url: str) -> None:
    with pytest.raises(ar.PersistenceError, match="not a usable Redis URL") as info:
        ar.RedisBackend(url)
    assert "s3cr" not in str(info.value) and info.value.__cause__ is None
    assert info.value.__context__ is None  # raised after its handler: redis-py's is not kept


@pytest.mark.parametrize("prefix", [b"app:", None, 1])
def test_a_redis_prefix_that_is_not_a_str_fails_at_once(prefix: Any) -> None:
    # Accepted, it failed every call with a bare TypeError (can't concat str to bytes).
    with pytest.raises(TypeError, match="prefix must be a str"):
        ar.RedisBackend("redis://localhost/0", prefix=prefix)


def test_a_redis_prefix_that_is_not_unicode_text_fails_at_once() -> None:
    # Accepted, it failed every call blaming the key ("key is not valid Unicode text").
    with pytest.raises(ar.PersistenceError, match=r"prefix .* is not valid Unicode text"):
        ar.RedisBackend("redis://localhost/0", prefix="bad\udc80:")


# ------------------------------------------------------------------ failures named as they are
async def test_sqlite_full_disk_is_the_error_a_batch_reports(tmp_path: Path) -> None:
    # SQLite ends the transaction itself on a full disk: the batch's own ROLLBACK then failed
    # ("no transaction is active") and its error replaced "database or disk is full".
    backend = ar.SqliteBackend(tmp_path / "full.db")
    await backend.save("a", b"1")
    pages = backend._conn.execute("PRAGMA page_count").fetchone()[0]
    backend._conn.execute(f"PRAGMA max_page_count={pages + 5}")
    big = {f"k{i}": os.urandom(4000) for i in range(50)}
    for write in (lambda: backend.batch_save(big), lambda: backend.batch_save_if("a", b"1", big)):
        with pytest.raises(ar.PersistenceError, match="database or disk is full"):
            await write()
    assert not backend._conn.in_transaction
    backend._conn.execute("PRAGMA max_page_count=1073741823")
    await backend.batch_save({"x": b"1"})
    assert await backend.list_keys() == ["a", "x"]
    backend.close()


async def test_a_file_backend_keeps_its_directory_when_the_process_changes_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative directory was read against each call's working directory: after a chdir,
    # a saved key read as absent and writes went elsewhere.
    monkeypatch.chdir(tmp_path)
    backend = ar.FileBackend("store")
    await backend.save("k", b"v")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert await backend.load("k") == b"v"
    await backend.save("k2", b"w")
    assert await backend.list_keys() == ["k", "k2"]
    assert not (elsewhere / "store").exists()


async def test_an_empty_guarded_file_batch_that_cannot_be_installed_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Naming the batch's first key raised StopIteration in the worker thread, which a future
    # cannot carry: the call never returned, even when cancelled.
    import llm_agent_runtime.persistence.file as file_module

    backend = ar.FileBackend(tmp_path)
    await backend.save("g", b"1")
    real = file_module._sync_directory

    def failing(directory: Path) -> None:
        if directory.name == ".batches":
            raise OSError(5, "Input/output error")
        real(directory)

    monkeypatch.setattr(file_module, "_sync_directory", failing)
    with pytest.raises(ar.PersistenceError, match="not installed") as raised:
        await asyncio.wait_for(backend.batch_save_if("g", b"1", {}), 10)
    assert raised.value.key is None


async def test_work_in_a_thread_that_raises_stop_iteration_fails_instead_of_hanging() -> None:
    from llm_agent_runtime.persistence._waiting import run_in_thread

    with pytest.raises(RuntimeError, match="StopIteration"):
        await asyncio.wait_for(run_in_thread(lambda: next(iter(()))), 10)


def test_the_in_memory_backend_lists_and_loads_while_other_threads_write() -> None:
    # list_keys walked the live dict: another thread's write failed it with a bare
    # RuntimeError ("dictionary changed size during iteration").
    backend = ar.InMemoryBackend()
    backend.data.update({f"k{i:05}": b"v" for i in range(20_000)})
    stop = threading.Event()

    def write() -> None:
        async def churn() -> None:
            i = 0
            while not stop.is_set():
                await backend.save(f"new{i % 500}", b"v")
                await backend.delete(f"new{(i + 250) % 500}")
                i += 1

        asyncio.run(churn())

    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns within a walk of the keys
    writer = threading.Thread(target=write)
    writer.start()
    try:

        async def read() -> None:
            for _ in range(30):
                keys = await backend.list_keys("k")
                assert len(keys) == 20_000
                assert len(await backend.batch_load(keys)) == 20_000

        asyncio.run(read())
    finally:
        sys.setswitchinterval(switching)
        stop.set()
        writer.join()


def test_the_in_memory_backend_loads_a_batch_as_one_snapshot_while_another_thread_saves() -> None:
    # batch_load read key by key: another thread's batch_save (one update) landed halfway,
    # and a checkpoint was read with records of two different saves.
    backend = ar.InMemoryBackend()
    keys = [f"session:s:step:{i}" for i in range(2_000)]
    asyncio.run(backend.batch_save({key: b"0" for key in keys}))
    stop = threading.Event()

    def write() -> None:
        async def churn() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                await backend.batch_save({key: str(n).encode() for key in keys})

        asyncio.run(churn())

    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads take turns within a read of the batch
    writer = threading.Thread(target=write)
    writer.start()
    try:

        async def read() -> list[int]:
            return [len(set((await backend.batch_load(keys)).values())) for _ in range(200)]

        assert set(asyncio.run(read())) == {1}
    finally:
        sys.setswitchinterval(switching)
        stop.set()
        writer.join()
