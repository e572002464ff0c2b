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

BACKENDS = ["sqlite", "file"]


def make_backend(kind: str, where: Path) -> ar.PersistenceBackend:
    if kind == "sqlite":
        return ar.SqliteBackend(where / "store.db")
    return ar.FileBackend(where / "files")


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ar.PersistenceBackend]:
    store = make_backend(request.param, tmp_path)
    yield store
    if isinstance(store, ar.SqliteBackend):
        store.close()


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
