"""Sweeps and forks cut short, on every backend: a sweep's claim left behind refuses no run, an
incomplete fork is swept once old, and of forks taking over one incomplete fork, one forks."""

from __future__ import annotations

import asyncio
import copy
import time
import types
from collections.abc import Mapping
from typing import Any

import pytest

import llm_agent_runtime as ar
import llm_agent_runtime.persistence.checkpoints as checkpoints
from llm_agent_runtime.persistence.checkpoints import CheckpointStore
from llm_agent_runtime.persistence.codec import encode

from .test_durable import FINAL, Effects, script
from .test_durable_concurrency import Delegating, backend
from .test_durable_exclusive import CHARGE, DiesAfter, interrupted

__all__ = ["backend"]  # the fixture, on every backend

ONE = "Thought: t\nAction: FINAL_ANSWER one"
TWO = "Thought: t\nAction: FINAL_ANSWER two"
now = time.time  # the real clock, while tests set the module's


class DiesAtDelete(Delegating):
    """The backend of a process that dies as it deletes `key`."""

    def __init__(self, inner: ar.PersistenceBackend, key: str) -> None:
        super().__init__(inner)
        self.key = key

    async def delete(self, key: str) -> bool:
        if key == self.key:
            raise RuntimeError("the process died")
        return bool(await self.inner.delete(key))


async def swept_but_its_claim(backend: ar.PersistenceBackend) -> ar.AgentSession:
    """Session `s`, one turn run, then swept by a sweep that died as it deleted its claim
    (`:run:1`, on the session's next step): the last thing it deletes."""
    worker = ar.AgentRuntime(checkpoint_backend=backend)
    session = worker.create_session("a", "s")
    await worker.run_turn(session, "Q1", script(ONE))
    with pytest.raises(ar.PersistenceError, match="died"):
        await CheckpointStore(DiesAtDelete(backend, "session:s:run:1")).sweep(older_than=-1.0)
    assert await backend.list_keys("session:s") == ["session:s:run:1"]  # all but the claim
    return session


async def test_a_sweep_cut_before_deleting_its_claim_refuses_no_later_turn(
    backend: ar.PersistenceBackend,
) -> None:
    # The claim was the sweep's, under way forever: every turn from step 1 was refused.
    session = await swept_but_its_claim(backend)
    worker = ar.AgentRuntime(checkpoint_backend=backend)
    assert await worker.run_turn(session, "Q2", script(TWO)) == "two"
    loaded = await ar.AgentSession.load_checkpoint(backend, "s")
    assert [m["content"] for m in loaded.messages] == ["Q1", "one", "Q2", "two"]
    assert loaded == session


async def test_a_sweep_deletes_what_cut_short_sweeps_and_takeovers_left(
    backend: ar.PersistenceBackend,
) -> None:
    await swept_but_its_claim(backend)
    # A takeover key whose incomplete fork is gone, and the claim of a run (its process
    # ended before its meta record was written): the run's claim stays, as it was.
    await backend.save("session:z:fork:0123abcd", encode("claim", {"takeover": "a", "at": 0}))
    run_claim = encode("meta", {"agent_id": "a", "prompt": "Q", "mode": "react", "run": "r"})
    await backend.save("session:r:run:0", run_claim)
    assert await CheckpointStore(backend).sweep(older_than=-1.0) == []
    assert await backend.list_keys("session:") == ["session:r:run:0"]
    assert await backend.load("session:r:run:0") == run_claim


class PausedCopy(Delegating):
    """The backend, but the copy of a fork into `session_id` waits for `go`: a fork under way."""

    def __init__(self, inner: ar.PersistenceBackend, session_id: str) -> None:
        super().__init__(inner)
        self.step = f"session:{session_id}:step:1"
        self.go, self.reached = asyncio.Event(), asyncio.Event()

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        if self.step in items:
            self.reached.set()
            await asyncio.wait_for(self.go.wait(), 10)
        await self.inner.batch_save(items)


async def test_a_sweep_deletes_old_incomplete_forks_not_a_fork_under_way(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await interrupted(backend, "src")  # one step, unfinished: no sweep deletes it
    with monkeypatch.context() as past:
        # An hour before the sweep's `now`, for the records these forks write; a fork cut
        # short is taken over at once.
        past.setattr(checkpoints, "time", types.SimpleNamespace(time=lambda: 1_000_000.0))
        past.setattr(checkpoints, "_GRACE_SECONDS", -1.0)
        # `f`: its marker and claim; `g`: its marker, and a takeover of it cut short.
        with pytest.raises(ar.PersistenceError, match="died"):
            await CheckpointStore(DiesAfter(backend, 2)).fork("src", 1, "f")
        with pytest.raises(ar.PersistenceError, match="died"):
            await CheckpointStore(DiesAfter(backend, 1)).fork("src", 1, "g")
        with pytest.raises(ar.PersistenceError, match="died"):
            await CheckpointStore(DiesAfter(backend, 1)).fork("src", 1, "g")
    left = await backend.list_keys("session:")
    with pytest.raises(ar.PersistenceError, match="takes over the incomplete fork there"):
        await CheckpointStore(backend).fork("src", 1, "g")  # until the sweep
    paused = PausedCopy(backend, "h")
    under_way = asyncio.ensure_future(CheckpointStore(paused).fork("src", 1, "h"))
    await asyncio.wait_for(paused.reached.wait(), 10)
    sweeper = CheckpointStore(backend)
    assert await sweeper.sweep(older_than=3600.0, now=1_003_599.0) == []  # none old enough
    assert sorted(await sweeper.sweep(older_than=3600.0, now=1_003_601.0)) == ["f", "g"]
    assert len([k for k in left if k.startswith("session:g:fork:")]) == 1  # swept too
    assert await backend.list_keys("session:f") == []
    assert await backend.list_keys("session:g") == []
    assert await backend.list_keys("session:h") == ["session:h:meta", "session:h:run:0"]
    paused.go.set()
    assert (await under_way).step_count == 1
    assert (await sweeper.load("h")).records == (await sweeper.load("src")).records
    # The ids are free: a fork goes into them as into new ones.
    assert (await sweeper.fork("src", 1, "g")).step_count == 1


async def test_an_incomplete_fork_marker_without_a_start_time_is_swept_as_old(
    backend: ar.PersistenceBackend,
) -> None:
    marker = {"agent_id": "a", "prompt": "Q", "mode": "react", "run": "r0"}
    await backend.save("session:old:meta", encode("meta", {**marker, "incomplete_fork": True}))
    await backend.save("session:live:meta", encode("meta", marker))  # a run under way: kept
    assert await CheckpointStore(backend).sweep(older_than=3600.0) == ["old"]
    assert await backend.list_keys("session:") == ["session:live:meta"]


class PausedMarkerDelete(Delegating):
    """The backend, but the first deletion of `session:f:meta` waits until `done` is set:
    one fork taking the id over is slow, the other goes on."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.done = asyncio.Event()
        self.paused = False

    async def delete(self, key: str) -> bool:
        if key == "session:f:meta" and not self.paused:
            self.paused = True
            await asyncio.wait_for(self.done.wait(), 10)
        return bool(await self.inner.delete(key))


async def test_two_forks_taking_over_one_incomplete_fork_at_once_fork_once(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both read the marker: the slow one deleted the other's whole fork's meta record, and
    # both forked.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    source = runtime.create_session("a", "src")
    await runtime.run_agent("a", "Q", script(CHARGE, CHARGE, FINAL), session=source)
    with monkeypatch.context() as past:  # a minute ago: its process ended
        past.setattr(checkpoints, "time", types.SimpleNamespace(time=lambda: now() - 61))
        with pytest.raises(ar.PersistenceError, match="died"):
            await CheckpointStore(DiesAfter(backend, 2)).fork("src", 2, "f")
    slow = PausedMarkerDelete(backend)
    forks = [asyncio.ensure_future(CheckpointStore(slow).fork("src", 2, "f")) for _ in "ab"]
    for fork in forks:
        fork.add_done_callback(lambda _: slow.done.set())
    outcomes = await asyncio.gather(*forks, return_exceptions=True)
    [refused] = [o for o in outcomes if isinstance(o, BaseException)]
    [forked] = [o for o in outcomes if isinstance(o, ar.AgentSession)]
    assert isinstance(refused, ar.PersistenceError)
    assert "cannot fork into session 'f'" in str(refused)
    assert forked.steps == source.steps[:2]
    store = CheckpointStore(backend)
    assert (await store.load("f")).records == (await store.load("src")).records[:2]
    assert await backend.list_keys("session:f") == [
        "session:f:ended",
        "session:f:meta",
        "session:f:step:1",
        "session:f:step:2",
    ]


async def test_a_fork_never_takes_over_an_id_another_fork_is_copying_into(
    backend: ar.PersistenceBackend,
) -> None:
    # The second took the id over while the first copied: both returned, and the id held the
    # records of both.
    await interrupted(backend, "src")
    paused = PausedCopy(backend, "h")
    under_way = asyncio.ensure_future(CheckpointStore(paused).fork("src", 1, "h"))
    await asyncio.wait_for(paused.reached.wait(), 10)
    with pytest.raises(ar.PersistenceError, match="already has checkpoints"):
        await CheckpointStore(backend).fork("src", 0, "h")
    paused.go.set()
    assert (await under_way).step_count == 1
    store = CheckpointStore(backend)
    assert (await store.load("h")).records == (await store.load("src")).records


class PausedDelete(Delegating):
    """The backend, but the first deletion of `key` waits until `go` is set."""

    def __init__(self, inner: ar.PersistenceBackend, key: str) -> None:
        super().__init__(inner)
        self.key = key
        self.go, self.reached = asyncio.Event(), asyncio.Event()

    async def delete(self, key: str) -> bool:
        if key == self.key and not self.reached.is_set():
            self.reached.set()
            await asyncio.wait_for(self.go.wait(), 10)
        return bool(await self.inner.delete(key))


async def test_a_turn_starting_while_a_sweep_deletes_its_session_is_refused(
    backend: ar.PersistenceBackend,
) -> None:
    # The sweep had deleted all but the final checkpoint: the turn wrote the session anew
    # (a final checkpoint of its earlier turns), took the sweep's claim for a stranded one,
    # and ran; the sweep then deleted what it wrote.
    worker = ar.AgentRuntime(checkpoint_backend=backend)
    session = worker.create_session("a", "s")
    await worker.run_turn(session, "Q1", script(ONE))
    paused = PausedDelete(backend, "session:s")
    sweeping = asyncio.ensure_future(CheckpointStore(paused).sweep(older_than=-1.0))
    await asyncio.wait_for(paused.reached.wait(), 10)
    with pytest.raises(ar.PersistenceError, match="being deleted by a sweep"):
        await worker.run_turn(session, "Q2", script(TWO))
    paused.go.set()
    assert await sweeping == ["s"]
    assert await backend.list_keys("session:s") == []
    # Once the sweep ended, the turn runs: the session is saved anew.
    assert await worker.run_turn(session, "Q2", script(TWO)) == "two"
    loaded = await ar.AgentSession.load_checkpoint(backend, "s")
    assert [m["content"] for m in loaded.messages] == ["Q1", "one", "Q2", "two"]


async def test_two_turns_deleting_one_stranded_sweep_claim_at_once_run_one(
    backend: ar.PersistenceBackend,
) -> None:
    # Each read the claim, then deleted it: the slower one deleted the claim the other had
    # made meanwhile, and both ran.
    session = await swept_but_its_claim(backend)
    slow = PausedDelete(backend, "session:s:run:1")
    first = asyncio.ensure_future(
        ar.AgentRuntime(checkpoint_backend=slow).run_turn(copy.deepcopy(session), "Q2", script(TWO))
    )
    await asyncio.wait_for(slow.reached.wait(), 10)
    worker = ar.AgentRuntime(checkpoint_backend=backend)
    try:
        with pytest.raises(ar.PersistenceError, match="being deleted by a sweep"):
            await worker.run_turn(copy.deepcopy(session), "Q3", script(ONE))
    finally:
        slow.go.set()
    assert await first == "two"
    loaded = await ar.AgentSession.load_checkpoint(backend, "s")
    assert [m["content"] for m in loaded.messages] == ["Q1", "one", "Q2", "two"]
    assert await backend.list_keys("session:s:run:1:") == []  # its takeover key deleted


class DeadFrom(Delegating):
    """The backend of a process that dies as it deletes `key`: no call after it is done."""

    def __init__(self, inner: ar.PersistenceBackend, key: str) -> None:
        super().__init__(inner)
        self.key = key
        self.dead = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any) -> Any:
            # A key deleted alone, or in a batch (`batch_delete_if(guard, value, keys)`).
            self.dead = self.dead or (
                (name, *args[:1]) == ("delete", self.key)
                or (name == "batch_delete_if" and self.key in args[2])
            )
            if self.dead:
                raise RuntimeError("the process died")
            return await method(*args)

        return call


async def answered_on_a_clock(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> tuple[ar.AgentRuntime, ar.AgentSession, list[float]]:
    """A worker, and its session `s` with one turn answered; then the module's clock is
    `clock[0]`, for the test to move."""
    worker = ar.AgentRuntime(checkpoint_backend=backend)
    session = worker.create_session("a", "s")
    await worker.run_turn(session, "Q1", script(ONE))
    clock = [now()]
    monkeypatch.setattr(checkpoints, "time", types.SimpleNamespace(time=lambda: clock[0]))
    return worker, session, clock


async def test_a_sweep_cut_short_refuses_turns_for_a_while_then_the_next_sweep_ends_it(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It died after its claim, before it deleted the final checkpoint: every later turn was
    # refused, and every later sweep skipped the session, forever.
    _, _, clock = await answered_on_a_clock(backend, monkeypatch)
    with pytest.raises(ar.PersistenceError, match="died"):
        await CheckpointStore(DeadFrom(backend, "session:s:meta")).sweep(-1.0)
    sweeper = CheckpointStore(backend)
    assert await sweeper.sweep(older_than=-1.0) == []  # that sweep may be under way
    assert await backend.load("session:s") is not None
    clock[0] += 61  # a minute later: it is not
    assert await sweeper.sweep(older_than=-1.0) == ["s"]
    assert await backend.list_keys("session:") == []


async def test_a_turn_deletes_a_sweep_claim_older_than_the_grace_period(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, session, sweep_at = await answered_on_a_clock(backend, monkeypatch)
    with pytest.raises(ar.PersistenceError, match="died"):
        await CheckpointStore(DeadFrom(backend, "session:s:meta")).sweep(-1.0)
    with pytest.raises(ar.PersistenceError, match="being deleted by a sweep"):
        await worker.run_turn(session, "Q2", script(TWO))
    sweep_at[0] += 61  # a minute later: that sweep's process ended
    assert await worker.run_turn(session, "Q2", script(TWO)) == "two"
    loaded = await ar.AgentSession.load_checkpoint(backend, "s")
    assert [m["content"] for m in loaded.messages] == ["Q1", "one", "Q2", "two"]


async def test_a_sweep_keeps_a_legacy_key_that_names_a_takeover_key(
    backend: ar.PersistenceBackend,
) -> None:
    # `session:chat:fork:2`, the final checkpoint of session `chat:fork:2` as versions before
    # ids were escaped wrote it, read as a fork takeover key of session `chat`, left behind.
    legacy = ar.AgentSession(session_id="chat:fork:2", agent_id="a", prompt="Q")
    record = encode("session", {"session": legacy.to_dict(), "finished_at": now()})
    await backend.save("session:chat:fork:2", record)
    await backend.save("session:chat:run:1:ab", record)
    assert await CheckpointStore(backend).sweep(older_than=3600.0) == []
    assert await backend.load("session:chat:fork:2") == record
    assert await backend.load("session:chat:run:1:ab") == record


class SlowDeletes(Delegating):
    """The backend, each deletion taking `seconds` of `clock` (a large session, a slow link);
    `during(n)` is awaited in the n-th deletion (from 1), after its time passed.

    `batched`: its guarded batch deletions too, a key a batch (the sweep's batch size made 1);
    else it has none (a backend without them), and a sweep deletes a key at a time.
    """

    def __init__(
        self,
        inner: ar.PersistenceBackend,
        clock: list[float],
        seconds: float,
        during: Any = None,
        batched: bool = False,
    ) -> None:
        super().__init__(inner)
        self.clock, self.seconds, self.during = clock, seconds, during
        self.deleted: list[str] = []
        if not batched:
            self.batch_delete_if = None  # none to call

    async def _deleting(self, key: str) -> None:
        self.deleted.append(key)
        self.clock[0] += self.seconds
        if self.during is not None:
            await self.during(len(self.deleted))

    async def delete(self, key: str) -> bool:
        await self._deleting(key)
        return bool(await self.inner.delete(key))

    async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: Any) -> bool:
        for key in keys:
            await self._deleting(key)
        return bool(await self.inner.batch_delete_if(guard_key, guard_value, keys))


BATCHED = pytest.mark.parametrize("batched", [False, True], ids=["key by key", "batched"])


def sweep_batches_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep's batches of one key each: a batched sweep deletes as many times as keys."""
    monkeypatch.setattr(checkpoints, "_SWEEP_BATCH", 1)


@BATCHED
async def test_a_sweep_longer_than_the_grace_period_keeps_its_claim(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    sweep_batches_of_one(monkeypatch)
    # Its claim aged as it deleted: a turn starting a minute in took it for a cut-short
    # sweep's and ran, and the sweep went on deleting the session under it.
    worker, session, clock = await answered_on_a_clock(backend, monkeypatch)
    refused: list[str] = []

    async def turn_at_third(deletion: int) -> None:
        if deletion == 3:  # 75 s into the sweep
            with pytest.raises(ar.PersistenceError, match="being deleted by a sweep") as info:
                await worker.run_turn(copy.deepcopy(session), "Q2", script(TWO))
            refused.append(str(info.value))

    slow = SlowDeletes(backend, clock, 25.0, turn_at_third, batched)
    assert await CheckpointStore(slow).sweep(older_than=-1.0) == ["s"]
    assert len(refused) == 1 and len(slow.deleted) > 3
    assert await backend.list_keys("session:") == []


@BATCHED
async def test_a_sweep_whose_process_stalls_stops_and_the_next_one_ends_it(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    sweep_batches_of_one(monkeypatch)
    # Stalled half the grace period, its claim may be taken over at any moment: it went on
    # deleting, whatever a run that took the claim over wrote meanwhile.
    _, _, clock = await answered_on_a_clock(backend, monkeypatch)

    async def stall_at_second(deletion: int) -> None:
        if deletion == 2:
            clock[0] += 35.0

    stalled = SlowDeletes(backend, clock, 0.0, stall_at_second, batched)
    assert await CheckpointStore(stalled).sweep(older_than=-1.0) == []
    # Nothing after the stall but its own claim (and the key that guards its deletion).
    assert [k for k in stalled.deleted[2:] if not k.startswith("session:s:run:1")] == []
    assert await backend.load("session:s") is not None  # found again by the next sweep
    assert await backend.load("session:s:run:1") is None  # its claim, dropped
    assert await CheckpointStore(backend).sweep(older_than=-1.0) == ["s"]
    assert await backend.list_keys("session:") == []


@BATCHED
async def test_a_sweep_whose_claim_was_taken_over_stops(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    sweep_batches_of_one(monkeypatch)
    _, _, clock = await answered_on_a_clock(backend, monkeypatch)
    other = encode("claim", {"sweep": "0" * 32, "final": "f", "at": clock[0]})

    async def taken_at_second(deletion: int) -> None:
        if deletion == 2:  # another took the claim over (this process's clock ran late)
            await backend.save("session:s:run:1", other)
            clock[0] += 21.0

    taken = SlowDeletes(backend, clock, 0.0, taken_at_second, batched)
    assert await CheckpointStore(taken).sweep(older_than=-1.0) == []
    assert [k for k in taken.deleted[2:] if not k.startswith("session:s:run:1")] == []
    assert await backend.load("session:s:run:1") == other  # not this sweep's to delete
    assert await backend.load("session:s") is not None


async def test_a_fork_into_a_turn_run_without_checkpoints_is_refused() -> None:
    # Its question was not saved: the fork continued turn 1 with turn 2's question (and, in
    # tools mode, sent a tool result answering no call).
    @ar.tool
    def add(a: int, b: int) -> int:
        """Adds."""
        return a + b

    def model(tag: str, steps: int) -> Any:
        replies = iter(
            [f'Thought: {tag}{i}\nAction: add {{"a": {i}, "b": 1}}' for i in range(steps)]
            + [f"Thought: d\nAction: FINAL_ANSWER answer-{tag}"]
        )

        async def infer(prompt: str) -> str:
            return next(replies)

        return infer

    config = ar.AgentConfig(max_iterations=10)
    plain = ar.AgentRuntime(config, tools=[add])
    session = plain.create_session("agent", session_id="chat")
    await plain.run_turn(session, "q1", model("a", 2))  # steps 1-3, no checkpoints
    session = ar.AgentSession.from_json(session.to_json())
    backend = ar.InMemoryBackend()
    durable = ar.AgentRuntime(config, tools=[add], checkpoint_backend=backend)
    await durable.run_turn(session, "q2", model("b", 1))  # steps 4-5, checkpointed
    for step in (1, 2, 3):
        with pytest.raises(ar.PersistenceError, match=f"cannot fork at step {step}:.* 4 or later"):
            await durable.fork("chat", step, f"fork{step}")
        assert await backend.list_keys(f"session:fork{step}") == []  # nothing written
    await durable.fork("chat", 4, "fork4")  # in the checkpointed turn: its question is known
    fork = await ar.AgentSession.load_checkpoint(backend, "fork4")
    assert fork.prompt == "q2" and [m["content"] for m in fork.messages] == ["q1", "answer-a"]


async def test_a_damaged_session_leaves_the_others_swept(
    backend: ar.PersistenceBackend, caplog: pytest.LogCaptureFixture
) -> None:
    # The sweep stopped at the first damaged final checkpoint: sessions before it in key
    # order were deleted without their ids being returned, and those after it never were.
    worker = ar.AgentRuntime(checkpoint_backend=backend)
    for session_id in ("a", "m", "z"):
        await worker.run_turn(worker.create_session("agent", session_id), "Q", script(ONE))
    await backend.save("session:m", b"not a record")
    # And a session with no final checkpoint, whose meta record is damaged.
    await backend.save("session:n:meta", b"not a record either")
    with pytest.raises(ar.PersistenceError, match=r"deleted 2 session.*left 2") as info:
        await CheckpointStore(backend).sweep(older_than=-1.0)
    assert info.value.key == "session:m"
    assert "'m'" in caplog.text and "'n'" in caplog.text
    assert await backend.list_keys("session:a") == []
    assert await backend.list_keys("session:z") == []
    assert await backend.load("session:m") == b"not a record"
    assert await backend.load("session:n:meta") == b"not a record either"
