"""A custom checkpoint backend that breaks its protocol gets an error naming what it did wrong.

Written as a user writes one: the six methods of `PersistenceBackend` over a dict, then one
slip at a time (a `return` forgotten, a generator for a list, sync methods, an `OSError`).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore


class DictBackend:
    """The protocol's six methods over a dict, and `save_new` (a fenced backend's)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def save(self, key: str, value: bytes) -> None:
        self.data[key] = bytes(value)

    async def load(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        self.data.update({k: bytes(v) for k, v in items.items()})

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        return {k: self.data[k] for k in keys if k in self.data}

    async def list_keys(self, prefix: str = "") -> Any:
        return sorted(k for k in self.data if k.startswith(prefix))

    async def save_new(self, key: str, value: bytes) -> Any:
        if key in self.data:
            return False
        self.data[key] = bytes(value)
        return True


async def answer(prompt: str) -> str:
    return "Final Answer: 42"


async def run_once(backend: Any, session_id: str = "s1") -> ar.AgentSession:
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    return await runtime.run_agent(
        "a", "hi", answer, session=runtime.create_session("a", session_id)
    )


class ForgetsReturn(DictBackend):
    async def save_new(self, key: str, value: bytes) -> Any:
        if key in self.data:
            return False
        self.data[key] = bytes(value)  # and no `return True`


class SetNx(DictBackend):
    """As redis-py's `set(key, value, nx=True)`: True when it wrote, None when it did not."""

    async def save_new(self, key: str, value: bytes) -> Any:
        return True if await super().save_new(key, value) else None


class AnswersOk(DictBackend):
    async def save_new(self, key: str, value: bytes) -> Any:
        await super().save_new(key, value)
        return "OK"


async def test_a_save_new_returning_none_is_not_written_and_a_refusal_names_it() -> None:
    # None is redis-py's answer when `set(..., nx=True)` did not write: taken as False. One
    # that wrote and forgot its `return True` is refused then, the refusal naming the None
    # (it read as another worker's run, which none was).
    backend = SetNx()
    assert (await run_once(backend)).final_answer == "42"
    with pytest.raises(ar.PersistenceError, match="already has checkpoints"):
        await run_once(backend)
    with pytest.raises(ar.PersistenceError, match=r"save_new answered None here.*must return True"):
        await run_once(ForgetsReturn())
    with pytest.raises(ar.PersistenceError, match=r"save_new returned a str, not a bool"):
        await run_once(AnswersOk())


async def test_one_of_two_workers_journals_a_call_on_a_set_nx_backend() -> None:
    # Read back to tell a None, the same intent (same run, step, call and key) stored by
    # another worker read as this one's own: both ran the call.
    backend = SetNx()
    stores = [CheckpointStore(backend) for _ in range(2)]
    intent = {"state": "intent", "tool": "pay", "arguments": {}, "key": "s1:1:0", "run": "r1"}
    first = await stores[0].journal("s1", 1, 0, dict(intent), new=True)
    second = await stores[1].journal("s1", 1, 0, dict(intent), new=True)
    assert first is None  # written: this worker runs the call
    assert second is not None and second["state"] == "intent"  # found: it does not


async def resumed_elsewhere(runtime: ar.AgentRuntime, backend: Any) -> CheckpointStore:
    """Session "s1", its run interrupted, then resumed by another store (returned) that
    holds its claim: a resume under way."""

    async def down(prompt: str) -> str:
        raise ConnectionError("model down")

    with pytest.raises(ConnectionError):
        await runtime.run_agent("a", "hi", down, session=runtime.create_session("a", "s1"))
    holder = CheckpointStore(backend)
    await holder.claim_resumed(await holder.load("s1"))
    return holder


async def test_a_resume_claim_taken_meanwhile_is_refused_on_a_set_nx_backend() -> None:
    backend = SetNx()
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    holder = await resumed_elsewhere(runtime, backend)
    with pytest.raises(ar.PersistenceError, match="is being resumed by another worker"):
        await runtime.resume("s1", answer)
    await holder.release("s1")
    assert (await runtime.resume("s1", answer)).final_answer == "42"


class ScriptFlags(DictBackend):
    """A key-value server's script answers 1 and 0, not True and False."""

    async def save_new(self, key: str, value: bytes) -> Any:
        return int(await super().save_new(key, value))


async def test_a_save_new_returning_one_or_zero_is_taken() -> None:
    backend = ScriptFlags()
    session = await run_once(backend)
    assert session.final_answer == "42"
    with pytest.raises(ar.PersistenceError, match=r"already has checkpoints|just taken"):
        await run_once(backend)


class ListsWithGenerator(DictBackend):
    async def list_keys(self, prefix: str = "") -> Iterator[str]:
        return (k for k in sorted(self.data) if k.startswith(prefix))


async def test_list_keys_as_a_generator_still_lets_sweep_delete() -> None:
    # `sweep` went over the keys twice: the generator, used up by the first pass, gave none
    # to the second, and nothing was deleted (in silence).
    backend = ListsWithGenerator()
    await run_once(backend)
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    assert await runtime.sweep(0.0) == ["s1"]
    assert backend.data == {}


@pytest.mark.parametrize(
    ("listed", "named"),
    [("session:s1", "a str"), (None, "None"), ([b"session:s1"], "a key that is a bytes")],
)
async def test_list_keys_returning_no_list_of_strs_is_named(listed: Any, named: str) -> None:
    class Lists(DictBackend):
        async def list_keys(self, prefix: str = "") -> Any:
            return listed

    backend = Lists()
    backend.data["session:s1"] = b"x"
    with pytest.raises(ar.PersistenceError, match=f"list_keys returned {named}"):
        await ar.AgentRuntime(checkpoint_backend=backend).sweep(0.0)


class FailsToRead(DictBackend):
    """Its reads fail as a disk does, once a run was saved."""

    failing = False

    async def load(self, key: str) -> bytes | None:
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        return await super().load(key)

    async def list_keys(self, prefix: str = "") -> Any:
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        return await super().list_keys(prefix)


async def test_a_backend_error_on_each_read_path_is_a_persistence_error() -> None:
    backend = FailsToRead()
    await run_once(backend)
    backend.failing = True
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    reads: dict[str, Any] = {
        "resume": lambda: runtime.resume("s1", answer),
        "session_events": lambda: runtime.session_events("s1"),
        "fork": lambda: runtime.fork("s1", 0),
        "prune": lambda: runtime.prune("s1", 0),
        "sweep": lambda: runtime.sweep(0.0),
        "load_checkpoint": lambda: ar.AgentSession.load_checkpoint(backend, "s1"),
    }
    for name, read in reads.items():
        with pytest.raises(ar.PersistenceError, match=r"failed: OSError: .*Input/output") as info:
            await read()
        assert isinstance(info.value.__cause__, OSError), name


class Synchronous:
    """Every method a plain `def`: what the protocol's `async def`s look like, forgotten."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def save(self, key: str, value: bytes) -> None:
        self.data[key] = bytes(value)

    def load(self, key: str) -> bytes | None:
        return self.data.get(key)

    def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    def batch_save(self, items: Mapping[str, bytes]) -> None:
        self.data.update(items)

    def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        return {k: self.data[k] for k in keys if k in self.data}

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.data if k.startswith(prefix))


async def test_synchronous_backend_methods_are_named_on_every_path() -> None:
    backend = Synchronous()
    backend.data["session:s1:meta"] = b"x"
    runtime = ar.AgentRuntime(checkpoint_backend=backend)  # type: ignore[arg-type]
    must_be_async = r"must be async \(async def \w+\(\.\.\.\)\): Synchronous\.\w+ is synchronous"
    with pytest.raises(ar.PersistenceError, match=must_be_async):
        await runtime.run_agent("a", "hi", answer)
    for read in (
        lambda: runtime.resume("s1", answer),
        lambda: runtime.session_events("s1"),
        lambda: runtime.sweep(0.0),
        lambda: ar.AgentSession.load_checkpoint(backend, "s1"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ar.PersistenceError, match=must_be_async):
            await read()


async def test_a_sync_method_returning_an_awaitable_is_awaited() -> None:
    # Not every method returning an awaitable is an `async def`: a partial, a wrapper.
    class Wrapped(DictBackend):
        def load(self, key: str) -> Any:  # type: ignore[override]
            return DictBackend.load(self, key)

    backend = Wrapped()
    await run_once(backend)
    loaded = await ar.AgentSession.load_checkpoint(backend, "s1")
    assert loaded.final_answer == "42"


async def test_a_load_of_another_type_than_batch_load_is_named() -> None:
    # Compared with `batch_load`'s bytes, `load`'s text never matched: "the session changed
    # at each of 5 reads", a race there was not.
    class LoadsText(DictBackend):
        async def load(self, key: str) -> Any:
            raw = await super().load(key)
            return None if raw is None else raw.decode("latin-1")

    backend = LoadsText()
    await run_once(backend)
    with pytest.raises(ar.PersistenceError, match="loaded a str for a record, not bytes"):
        await ar.AgentRuntime(checkpoint_backend=backend).resume("s1", answer)


class Key(str):
    """A key type of the backend's own, a str all the same."""


async def test_keys_of_a_str_subclass_are_keys() -> None:
    class Listed(DictBackend):
        async def list_keys(self, prefix: str = "") -> Any:
            return [Key(k) for k in await super().list_keys(prefix)]

    backend = Listed()
    await run_once(backend)
    assert await ar.AgentRuntime(checkpoint_backend=backend).sweep(0.0) == ["s1"]


async def test_a_list_keys_that_yields_is_named_as_such() -> None:
    class Yields(DictBackend):
        async def list_keys(self, prefix: str = "") -> Any:  # type: ignore[override]
            for key in sorted(self.data):
                yield key

    backend = Yields()
    with pytest.raises(ar.PersistenceError, match=r"list_keys must return .* async generator"):
        await ar.AgentRuntime(checkpoint_backend=backend).sweep(0.0)


async def test_a_none_answer_is_named_only_in_the_refusal_it_caused() -> None:
    # Named in every later refusal of the store, of any session: a backend answering None
    # honestly (redis-py's NX) was told it forgot a `return True`, for good.
    backend = SetNx()
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    holder = await resumed_elsewhere(runtime, backend)
    with pytest.raises(ar.PersistenceError, match="answered None here"):
        await runtime.resume("s1", answer)  # its claim's save_new answered None: refused
    await runtime.run_agent("a", "hi", answer, session=runtime.create_session("a", "s2"))
    with pytest.raises(ar.PersistenceError, match="already has checkpoints") as caught:
        await runtime.run_agent("a", "hi", answer, session=runtime.create_session("a", "s2"))
    assert "None" not in str(caught.value)  # the same store, another refusal
    await holder.release("s1")
