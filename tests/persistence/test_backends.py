"""One conformance suite run against every persistence backend."""

import asyncio
import multiprocessing
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.file import file_name_for

BACKENDS = ["sqlite", "file", "postgres", "redis"]
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


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ar.PersistenceBackend]:
    store = make_backend(request.param, tmp_path)
    yield store
    await close_backend(store)


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
