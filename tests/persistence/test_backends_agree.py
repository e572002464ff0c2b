"""Failure paths and edge cases of the key-value backends, and their agreement on any calls."""

import asyncio
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

import llm_agent_runtime as ar

from .test_backends import backend_fixture

LOCAL = ["memory", "sqlite", "file"]


local_backend = backend_fixture(LOCAL, name="local_backend")


def _deny_commit(action: int, arg1: str | None, *_: Any) -> int:
    """A SQLite authorizer failing every COMMIT, as an I/O error or a busy lock can."""
    if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


async def test_a_sqlite_batch_whose_commit_fails_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    # The failed COMMIT left the transaction open: every later write on the connection ran
    # inside it, acknowledged but never committed, and lost when the connection closed.
    store = ar.SqliteBackend(tmp_path / "store.db")
    other = ar.SqliteBackend(tmp_path / "store.db")
    try:
        await store.save("guard", b"held")
        store._conn.set_authorizer(_deny_commit)
        with pytest.raises(ar.PersistenceError):
            await store.batch_save({"a": b"1", "b": b"2"})
        with pytest.raises(ar.PersistenceError):
            await store.batch_save_if("guard", b"held", {"c": b"3"})
        store._conn.set_authorizer(None)
        assert not store._conn.in_transaction
        await store.save("x", b"1")
        assert await other.load("x") == b"1"
        assert await other.batch_load(["a", "b", "c"]) == {}  # the batch: none of it
        await store.batch_save({"a": b"1", "b": b"2"})
        assert await other.batch_load(["a", "b"]) == {"a": b"1", "b": b"2"}
    finally:
        store.close()
        other.close()


async def test_a_sqlite_batch_load_whose_commit_fails_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    store = ar.SqliteBackend(tmp_path / "store.db")
    other = ar.SqliteBackend(tmp_path / "store.db")
    try:
        store._conn.set_authorizer(_deny_commit)
        with pytest.raises(ar.PersistenceError):
            await store.batch_load(["a", "b"])
        store._conn.set_authorizer(None)
        assert not store._conn.in_transaction
        await store.save("x", b"1")
        assert await other.load("x") == b"1"
    finally:
        store.close()
        other.close()


async def test_a_guarded_batch_with_a_key_no_store_keeps_fails_whatever_the_guard(
    local_backend: ar.PersistenceBackend,
) -> None:
    # SQLite checked the guard first, and a refused guard returned False without binding
    # any item: the bad key went unnoticed there, and failed on the other backends.
    for guard_value in (b"other", b"held"):
        await local_backend.save("guard", b"held")
        with pytest.raises(ar.PersistenceError, match="not valid Unicode"):
            await local_backend.batch_save_if("guard", guard_value, {"fine": b"v", "\ud800": b"v"})
    with pytest.raises(ar.PersistenceError, match="not valid Unicode"):
        await local_backend.batch_save_if("missing", b"v", {"\udc80": b"v"})
    assert await local_backend.list_keys() == ["guard"]


async def test_a_guarded_deletion_of_a_key_no_store_keeps_fails_whatever_the_guard(
    local_backend: ar.PersistenceBackend,
) -> None:
    for guard_value in (b"other", b"held"):
        await local_backend.batch_save({"guard": b"held", "fine": b"v"})
        with pytest.raises(ar.PersistenceError, match="not valid Unicode"):
            await local_backend.batch_delete_if("guard", guard_value, ["fine", "\ud800"])
    with pytest.raises(ar.PersistenceError, match="not valid Unicode"):
        await local_backend.batch_delete_if("missing", b"v", ["\udc80"])
    assert await local_backend.list_keys() == ["fine", "guard"]


async def test_a_sqlite_guarded_deletion_whose_commit_fails_deletes_nothing(
    tmp_path: Path,
) -> None:
    store = ar.SqliteBackend(tmp_path / "store.db")
    other = ar.SqliteBackend(tmp_path / "store.db")
    try:
        await store.batch_save({"guard": b"held", "a": b"1"})
        store._conn.set_authorizer(_deny_commit)
        with pytest.raises(ar.PersistenceError):
            await store.batch_delete_if("guard", b"held", ["guard", "a"])
        store._conn.set_authorizer(None)
        assert not store._conn.in_transaction
        assert await other.batch_load(["guard", "a"]) == {"guard": b"held", "a": b"1"}
        assert await store.batch_delete_if("guard", b"held", ["guard", "a"]) is True
        assert await other.list_keys() == []
    finally:
        store.close()
        other.close()


async def test_a_released_memoryview_is_a_persistence_error_naming_its_key(
    local_backend: ar.PersistenceBackend,
) -> None:
    released = memoryview(b"value")
    released.release()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: local_backend.save("k", released),
        lambda: local_backend.save_new("k", released),
        lambda: local_backend.batch_save({"fine": b"v", "k": released}),
        lambda: local_backend.batch_save_if("k", released, {"fine": b"v"}),
        lambda: local_backend.batch_delete_if("k", released, ["fine"]),
    ]
    for call in calls:
        with pytest.raises(ar.PersistenceError, match="released") as info:
            await call()
        assert info.value.key == "k"
    assert await local_backend.list_keys() == []


@pytest.mark.parametrize(
    ("stored", "loaded"),
    [("'text'", b"text"), ("5", b"5"), ("1.5", b"1.5"), ("x'00ff'", b"\0\xff")],
)
async def test_a_sqlite_value_another_client_stored_as_text_or_a_number_loads_as_bytes(
    tmp_path: Path, stored: str, loaded: bytes
) -> None:
    # `bytes()` of the stored value failed with a bare TypeError (text, a real), or read the
    # integer 5 as five NUL bytes.
    store = ar.SqliteBackend(tmp_path / "store.db")
    try:
        with sqlite3.connect(tmp_path / "store.db") as client:
            client.execute(f"INSERT INTO kv (key, value) VALUES ('k', {stored})")
        client.close()
        assert await store.load("k") == loaded
        assert await store.batch_load(["k"]) == {"k": loaded}
        assert await store.batch_save_if("k", loaded, {"done": b"1"}) is True
        assert await store.load("done") == b"1"
    finally:
        store.close()


# ------------------------------------------------------------------ agreement on any calls
_KEYS = st.sampled_from(
    ["", "a", "ab", "a/b", "a_b", "..", "a\x00", "a\x00b", "é", "\U0010ffff", "a" * 49, "\ud800"]
) | st.text(alphabet="ab_/:\x00é", max_size=4)
_VALUES = st.binary(max_size=3) | st.sampled_from([b"", "text", 5, bytearray(b"z")])


def _outcome(call: Callable[[], Awaitable[object]]) -> tuple[object, ...]:
    try:
        return ("returned", asyncio.run(call()))  # type: ignore[arg-type]
    except ar.PersistenceError:
        return ("PersistenceError",)
    except Exception as error:  # an untyped error: never the same as a typed one
        return ("untyped", type(error).__name__, str(error))


class BackendsAgree(RuleBasedStateMachine):
    """The file and SQLite backends do what the in-memory one does, call for call."""

    @initialize()
    def open_backends(self) -> None:
        self.scratch = tempfile.TemporaryDirectory()
        where = Path(self.scratch.name)
        self.sqlite = ar.SqliteBackend(where / "store.db")
        self.backends: list[Any] = [ar.InMemoryBackend(), self.sqlite, ar.FileBackend(where)]

    def teardown(self) -> None:
        if hasattr(self, "scratch"):
            self.sqlite.close()
            self.scratch.cleanup()

    def agree(self, call: Callable[[Any], Awaitable[object]]) -> tuple[object, ...]:
        outcomes = [_outcome(lambda b=b: call(b)) for b in self.backends]
        assert outcomes[1] == outcomes[0] and outcomes[2] == outcomes[0], outcomes
        return outcomes[0]

    @rule(key=_KEYS, value=_VALUES)
    def save(self, key: str, value: bytes) -> None:
        self.agree(lambda b: b.save(key, value))

    @rule(key=_KEYS, value=_VALUES)
    def save_new(self, key: str, value: bytes) -> None:
        self.agree(lambda b: b.save_new(key, value))

    @rule(key=_KEYS)
    def load_and_delete(self, key: str) -> None:
        self.agree(lambda b: b.load(key))
        self.agree(lambda b: b.delete(key))

    @rule(items=st.dictionaries(_KEYS, _VALUES, max_size=3))
    def batch_save(self, items: dict[str, bytes]) -> None:
        self.agree(lambda b: b.batch_save(items))

    @rule(guard=_KEYS, value=_VALUES, items=st.dictionaries(_KEYS, _VALUES, max_size=3))
    def batch_save_if(self, guard: str, value: bytes, items: dict[str, bytes]) -> None:
        self.agree(lambda b: b.batch_save_if(guard, value, items))

    @rule(
        guard=_KEYS,
        value=_VALUES,
        keys=st.lists(_KEYS, max_size=4),
        held=st.booleans(),
        with_guard=st.booleans(),
    )
    def batch_delete_if(
        self, guard: str, value: bytes, keys: list[str], held: bool, with_guard: bool
    ) -> None:
        if held:  # the value the guard holds, when it holds one: the deletion goes ahead
            value = self.backends[0].data.get(guard, value)
        if with_guard:
            keys = [*keys, guard]
        outcome = self.agree(lambda b: b.batch_delete_if(guard, value, keys))
        assert outcome[0] != "untyped", outcome
        if outcome == ("returned", True):
            assert not set(keys) & set(self.backends[0].data)  # every key gone

    @rule(keys=st.lists(_KEYS, max_size=4), prefix=_KEYS)
    def read(self, keys: list[str], prefix: str) -> None:
        self.agree(lambda b: b.batch_load(keys))
        self.agree(lambda b: b.list_keys(prefix))


TestBackendsAgree = BackendsAgree.TestCase
TestBackendsAgree.settings = settings(
    max_examples=40,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
