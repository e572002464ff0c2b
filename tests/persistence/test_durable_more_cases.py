"""More durable-execution cases on the embedded backends: sweep arguments that are no
number of seconds, and what a sweep refused leaves."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.base import session_key
from llm_agent_runtime.persistence.checkpoints import CheckpointStore
from llm_agent_runtime.persistence.codec import encode

from .test_backends import backend_fixture
from .test_durable import FINAL, Recorder, add_step, chat_of, script
from .test_durable_sweep5_cases import add

backend = backend_fixture(["memory", "sqlite", "file"])


@pytest.mark.parametrize("older_than", [math.nan, -math.nan])
async def test_a_sweep_older_than_nan_is_refused_and_deletes_nothing(
    backend: ar.PersistenceBackend, older_than: float
) -> None:
    # NaN compares false with every time: such a sweep kept every finished session but
    # deleted every incomplete fork, one being copied right now too.
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    finished = await runtime.run_agent("a", "q", script(FINAL))
    marker = {"agent_id": "a", "prompt": "q", "mode": "react", "run": "r0"}
    under_way = {**marker, "incomplete_fork": True, "started_at": time.time()}
    await backend.save(session_key("f:ok") + ":meta", encode("meta", under_way))
    before = await backend.list_keys("session:")
    with pytest.raises(ar.PersistenceError, match="older_than must be a number of seconds"):
        await runtime.sweep(older_than)
    with pytest.raises(ar.PersistenceError, match="now must be a number of seconds"):
        await CheckpointStore(backend).sweep(0.0, now=math.nan)
    assert await backend.list_keys("session:") == before
    # A real number still sweeps: a negative one everything finished, the fork too.
    assert sorted(await runtime.sweep(-1.0)) == sorted([finished.session_id, "f:ok"])


async def test_a_sweep_older_than_an_int_beyond_the_floats_is_infinitely_far(
    backend: ar.PersistenceBackend,
) -> None:
    # An int too large for a float (a bare OverflowError once, in `now - older_than`) is
    # the infinity of its sign: far in the past sweeps nothing, far ahead everything.
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    finished = await runtime.run_agent("a", "q", script(FINAL))
    for far in (10**400, 2**1024):
        assert await runtime.sweep(far) == []
        assert await CheckpointStore(backend).sweep(0.0, now=-far) == []
    assert await runtime.sweep(-(10**400)) == [finished.session_id]
    # Both infinite alike leave a NaN cut-off, which deleted forks being copied: refused.
    with pytest.raises(ar.PersistenceError, match="no time to sweep by"):
        await CheckpointStore(backend).sweep(10**400, now=10**400)


@ar.tool
def send(to: str) -> str:
    """Sends."""
    return f"sent {to}"


async def test_forks_at_every_step_of_a_parallel_round_resume_apart_from_the_source(
    backend: ar.PersistenceBackend,
) -> None:
    # A fork inside a round keeps the calls answered before it, alone, and each fork (of a
    # pruned source too) runs apart from the source: its steps, answer and events its own.
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[send], checkpoint_backend=backend
    )
    source_id = "src:é🙂/" + "x" * 200
    source = runtime.create_session("a", source_id)
    rounds = [[("send", {"to": "a"})], [("send", {"to": t}) for t in "bcd"]]
    replies = [ar.ScriptedProvider.tool_call_reply(r) for r in rounds]
    assert await runtime.run_turn(source, "q", ar.ScriptedProvider([*replies, "done"])) == "done"
    events = await runtime.session_events(source_id)
    assert await runtime.prune(source_id, keep_last=1) == 4
    observations = ["sent a", "sent b", "sent c", "sent d"]
    for step in range(5):
        fork_id = await runtime.fork(source_id, step, f"{source_id}:fork:{step}")
        model = Recorder(["forked"])
        forked = await runtime.resume(fork_id, model)
        assert forked.session_id == fork_id
        assert [s.observation for s in forked.steps] == [*observations[:step], ""]
        assert forked.final_answer == "forked"
        chat = chat_of(model.seen[0])
        asked = [c for m in chat if m[0] == "assistant" for c in m[2]]
        answered = [m[3] for m in chat if m[0] == "tool"]
        assert asked == answered and len(answered) == step  # no call left unanswered
        fork_events = [e["type"] for e in await runtime.session_events(fork_id)]
        assert fork_events == ["RunStarted", "LlmResponse", "RunFinished"]
        assert await ar.AgentSession.load_checkpoint(backend, fork_id) == forked
    with pytest.raises(ar.PersistenceError, match="cannot fork at step 6: the session has 5"):
        await runtime.fork(source_id, 6)
    assert await ar.AgentSession.load_checkpoint(backend, source_id) == source
    assert await runtime.session_events(source_id) == events


async def test_a_run_that_is_no_turn_keeps_the_chat_history_in_forks_and_loads(
    open_backend: Callable[..., ar.SqliteBackend],
) -> None:
    # Such a run saved no chat history: a fork at its steps, a fork inside an earlier turn
    # while it was the latest run and cut off, and a load of a session whose first run it
    # was, all had `messages == []`.
    started = asyncio.Event()

    @ar.tool
    async def rec(n: int) -> str:
        """Records."""
        return f"r{n}"

    @ar.tool
    async def block(idempotency_key: str = "") -> str:
        """Blocks the first time."""
        if not started.is_set():
            started.set()
            await asyncio.Event().wait()
        return "unblocked"

    def rule(prompt: str) -> str:
        question = prompt.rsplit("Question: ", 1)[1]
        if question.startswith("blocking") and "Observation:" not in question:
            return "Thought: b\nAction: block {}"
        if "Observation:" not in question:
            return 'Thought: t\nAction: rec {"n": 1}'
        return "Thought: d\nAction: FINAL_ANSWER ans-" + question.split("\n")[0]

    model = ar.ScriptedProvider(rule=rule)
    persona = {"role": "system", "content": "persona"}

    async def cut_off(runtime: ar.AgentRuntime, session: ar.AgentSession) -> None:
        started.clear()
        task = asyncio.ensure_future(
            runtime.run_agent_with_provider("agent", "blocking task", model, session=session)
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    backend = open_backend("a.db")
    runtime = ar.AgentRuntime(tools=[rec, block], checkpoint_backend=backend)
    session = runtime.create_session("agent", "s1")
    await runtime.run_turn(session, "hello", model)  # steps 1-2, a turn
    await runtime.run_agent_with_provider("agent", "a task", model, session=session)  # 3-4
    resumed = await runtime.resume(await runtime.fork("s1", 4, "fork-4"), model)
    assert (
        resumed.messages
        == session.messages
        == [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "ans-hello"},
        ]
    )

    backend = open_backend("b.db")
    runtime = ar.AgentRuntime(tools=[rec, block], checkpoint_backend=backend)
    session = runtime.create_session("agent", "s1")
    session.messages.append(persona)
    await runtime.run_turn(session, "hello", model)
    await cut_off(runtime, session)
    fork = await ar.AgentSession.load_checkpoint(backend, await runtime.fork("s1", 1, "fork-1"))
    assert fork.messages == [persona]  # as the turn that took step 1 started

    backend = open_backend("c.db")
    runtime = ar.AgentRuntime(tools=[rec, block], checkpoint_backend=backend)
    session = runtime.create_session("agent", "s1")
    session.messages.append(persona)
    await cut_off(runtime, session)
    assert (await ar.AgentSession.load_checkpoint(backend, "s1")).messages == [persona]
    assert (await runtime.resume("s1", model)).messages == [persona]


class _CountsListings(ar.InMemoryBackend):
    listings = 0

    async def list_keys(self, prefix: str = "") -> list[str]:
        self.listings += 1
        return await super().list_keys(prefix)


async def test_a_sweep_lists_each_session_it_deletes_twice_at_most() -> None:
    # Each session swept was listed four times (its steps and bases, before and after its
    # claim, and again to delete its keys): on FileBackend, whose listing reads the whole
    # directory, sweeping 1,000 sessions took 46 s.
    backend = _CountsListings()
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    finished = [(await runtime.run_agent("a", "q", script(FINAL))).session_id for _ in range(12)]
    backend.listings = 0
    assert sorted(await runtime.sweep(-1.0)) == sorted(finished)
    assert backend.listings <= 2 * len(finished) + 1
    assert await backend.list_keys("session:") == []
    backend.listings = 0
    for _ in range(3):
        await runtime.run_agent("a", "q", script(FINAL))
    # Too recent: none listed (each was, for its run's claim: a sweep with nothing due was
    # quadratic in the sessions stored on backends whose listing reads every key).
    assert await runtime.sweep(3600.0) == []
    assert backend.listings == 1


async def test_steps_pending_through_an_outage_are_encoded_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each step's save sends every step (and event) whose earlier save failed: each was
    # encoded again at every attempt, so an outage of k steps encoded O(k^2) records, on the
    # event loop (30 steps: 465 step records; 2,000 steps took a minute).
    from llm_agent_runtime.persistence import checkpoints

    encoded: list[str] = []
    encode = checkpoints._encode

    def counting(kind: str, payload: Any) -> bytes:
        encoded.append(kind)
        return encode(kind, payload)

    monkeypatch.setattr(checkpoints, "_encode", counting)

    class Down(ar.InMemoryBackend):
        """Every write of a step fails; the final checkpoint lands."""

        async def batch_save(self, items: Any) -> None:
            if any(":step:" in key for key in items) and not any(
                key.count(":") == 1 for key in items
            ):
                raise ar.PersistenceError("connection refused")
            await super().batch_save(items)

    backend = Down()
    steps = 30
    runtime = ar.AgentRuntime(
        ar.AgentConfig(max_iterations=steps + 1), tools=[add], checkpoint_backend=backend
    )
    session = await runtime.run_agent("a", "q", script(*[add_step(n) for n in range(steps)], FINAL))
    assert session.final_answer == "finished" and session.checkpoint_errors == steps + 1
    # Each step record once (and once more in the final write), not once per attempt.
    assert encoded.count("step") <= 2 * (steps + 1), encoded.count("step")
    assert encoded.count("event") <= 2 * len(await runtime.session_events(session.session_id))
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert saved.to_dict() == session.to_dict()


class _LogsLoads(ar.InMemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []

    async def load(self, key: str) -> bytes | None:
        self.loaded.append(key)
        return await super().load(key)

    async def batch_load(self, keys: Any) -> dict[str, bytes]:
        keys = list(keys)
        self.loaded += keys
        return await super().batch_load(keys)


async def test_a_later_turn_reads_no_record_that_grows_with_the_session() -> None:
    # Its start checked that no sweep deleted the session by loading the session's final
    # record beside its meta record: a read of the whole chat at every turn (700 KB a turn
    # after 1,000 turns).
    backend = _LogsLoads()
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    session = runtime.create_session("a", "s1")
    for n in range(3):
        await runtime.run_turn(session, f"q{n}", script(FINAL))
    backend.loaded.clear()
    await runtime.run_turn(session, "q", script(FINAL))
    assert backend.loaded and "session:s1" not in backend.loaded
    assert not [key for key in backend.loaded if ":step:" in key or ":event:" in key]
