"""Durable execution: record codec, step deltas, resume with the journal, fork, prune, sweep,
and the event log (on the in-memory and SQLite backends)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore, StepRecord
from llm_agent_runtime.persistence.codec import decode, encode

from .conftest import cancel_once_reached


def script(*replies: str) -> Callable[[str], Awaitable[str]]:
    queue = list(replies)

    async def infer(prompt: str) -> str:
        return queue.pop(0)

    return infer


def fails_after(*replies: str) -> Callable[[str], Awaitable[str]]:
    """A model that gives `replies`, then fails as if it went down."""
    queue = list(replies)

    async def infer(prompt: str) -> str:
        if not queue:
            raise ConnectionError("model down")
        return queue.pop(0)

    return infer


def add_step(i: int) -> str:
    return f'Thought: step {i}\nAction: add {{"a": {i}, "b": 1}}'


FINAL = "Thought: done\nAction: FINAL_ANSWER finished"


class Effects:
    """Tools with visible side effects: every call is recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.keys: list[str] = []

    def tools(self) -> list[ar.ToolSpec]:
        @ar.tool
        async def add(a: int, b: int) -> int:
            """Adds."""
            self.calls.append(("add", (a, b)))
            return a + b

        @ar.tool
        async def charge(amount: int) -> str:
            """Charges a card (not idempotent)."""
            self.calls.append(("charge", amount))
            return "charged"

        @ar.tool(idempotent=True)
        async def lookup(item: str) -> str:
            """Reads a price (safe to repeat)."""
            self.calls.append(("lookup", item))
            return f"{item}: 3"

        @ar.tool
        async def send(text: str, idempotency_key: str) -> str:
            """Sends a message once per key."""
            self.keys.append(idempotency_key)
            return "sent"

        return [add, charge, lookup, send]


def test_codec_round_trip_and_every_kind_of_damage() -> None:
    record = encode("step", {"n": 1, "text": "héllo"})
    assert decode(record, "k", "step") == {"n": 1, "text": "héllo"}
    with pytest.raises(ar.PersistenceError, match="checksum") as info:
        decode(record[:-3], "session:x:step:1")
    assert info.value.key == "session:x:step:1"
    with pytest.raises(ar.PersistenceError, match="checksum"):
        decode(record[:-3] + b"X" + record[-2:], "k")  # one byte of the body altered
    with pytest.raises(ar.PersistenceError, match="newer"):
        decode(record.replace(b"llm-agent-runtime/1", b"llm-agent-runtime/9"), "k")
    with pytest.raises(ar.PersistenceError, match="expected a 'meta' record"):
        decode(record, "k", "meta")
    with pytest.raises(ar.PersistenceError, match="bad header"):
        decode(b'{"pickle": "never"}', "k")


@pytest.mark.parametrize(
    "payload",
    [
        {1: "int one", "1": "str one"},
        {"args": [{None: "none", "null": "text"}]},
        {"deep": ({True: "bool", "true": "text"},)},
        {1.5: "float", "1.5": "text"},
    ],
)
def test_dict_keys_json_writes_alike_are_refused_not_one_lost(payload: Any) -> None:
    # Only a payload that also had a key JSON has no form for (a tuple) was checked: the
    # others were written with one name twice, and one of the two values was lost.
    with pytest.raises(ar.PersistenceError, match=r"both written .* one would be lost"):
        encode("step", payload)


@pytest.mark.parametrize(
    "arguments",
    [
        {"nan": "text", float("nan"): "float"},
        {float("-inf"): "float", "-inf": "text"},
        {float("nan"): "one", float("nan"): "another"},  # two NaNs: two keys
    ],
)
async def test_non_finite_keys_written_alike_are_refused_not_merged(arguments: Any) -> None:
    # A NaN key is written "nan" in a strict-JSON record: it merged with a "nan" key (or
    # another NaN), and the record kept one value of the two.
    assert len(arguments) == 2
    backend = ar.InMemoryBackend()
    step = ar.Step("t", "tool", arguments, "obs")
    with pytest.raises(ar.PersistenceError, match=r"both written .* one would be lost"):
        await CheckpointStore(backend).save_steps("s", 0, [StepRecord(step)])
    assert backend.data == {}
    session = ar.AgentSession(session_id="s", agent_id="a", steps=[step])
    with pytest.raises(ar.PersistenceError, match=r"both written .* one would be lost"):
        session.to_json()


async def test_a_non_finite_key_alone_is_written_as_its_text() -> None:
    backend = ar.InMemoryBackend()
    step = ar.Step("t", "tool", {float("nan"): 1.0, "x": float("inf")}, "obs")
    (key,) = await CheckpointStore(backend).save_steps("s", 0, [StepRecord(step)])
    assert decode(backend.data[key], key)["step"]["action_input"] == {"nan": 1.0, "x": "inf"}


def test_keys_json_writes_as_text_round_trip_when_they_do_not_collide() -> None:
    record = encode("step", {"a": [{1: "one", None: "none", 2.5: "x", (1, 2): "pair"}]})
    assert decode(record, "k") == {
        "a": [{"1": "one", "null": "none", "2.5": "x", "(1, 2)": "pair"}]
    }


async def test_step_checkpoints_are_deltas_so_storage_is_linear() -> None:
    async def stored_bytes(steps: int) -> int:
        backend = ar.InMemoryBackend()
        runtime = ar.AgentRuntime(
            ar.AgentConfig(max_iterations=steps + 1),
            tools=Effects().tools(),
            checkpoint_backend=backend,
        )
        session = await runtime.run_agent(
            "a", "q", script(*(add_step(i) for i in range(steps)), FINAL)
        )
        prefix = f"session:{session.session_id}:"
        return sum(len(v) for k, v in backend.data.items() if k.startswith(prefix + "step:"))

    fifty, hundred = await stored_bytes(50), await stored_bytes(100)
    assert 1.9 < hundred / fifty < 2.1  # linear, not quadratic


async def test_resume_continues_after_the_last_completed_step() -> None:
    backend = ar.InMemoryBackend()
    effects = Effects()
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend)
    session = runtime.create_session("a")
    with pytest.raises(ConnectionError):
        await runtime.run_agent("a", "q", fails_after(add_step(0), add_step(1)), session=session)
    assert effects.calls == [("add", (0, 1)), ("add", (1, 1))]
    seen: list[str] = []

    async def model(prompt: str) -> str:
        seen.append(prompt)
        return FINAL

    resumed = await runtime.resume(session.session_id, model)
    assert resumed.final_answer == "finished"
    assert [s.observation for s in resumed.steps] == ["1", "2", ""]
    assert effects.calls == [("add", (0, 1)), ("add", (1, 1))]  # nothing ran twice
    assert "Observation: 1" in seen[0] and "Observation: 2" in seen[0]  # context rebuilt
    again = await runtime.resume(session.session_id, model)  # finished: returned as saved
    assert again.final_answer == "finished" and len(seen) == 1


async def interrupt_mid_tool(
    runtime: ar.AgentRuntime, reply: str, gate: asyncio.Event, started: asyncio.Event
) -> str:
    """Runs until the tool of `reply` is running, then cancels the run (a crash mid-call)."""
    session = runtime.create_session("a")
    task = asyncio.create_task(runtime.run_agent("a", "q", script(reply), session=session))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    return session.session_id


def gated_charge(charges: list[int], started: asyncio.Event, gate: asyncio.Event) -> ar.ToolSpec:
    """A charge tool (not idempotent) that records each call, then waits for `gate`."""

    @ar.tool
    async def charge(amount: int) -> str:
        """Charges."""
        charges.append(amount)
        started.set()
        await gate.wait()
        return "charged"

    return charge


async def test_a_call_that_may_have_run_is_repeated_only_when_safe() -> None:
    backend = ar.InMemoryBackend()
    started, gate = asyncio.Event(), asyncio.Event()
    charges: list[int] = []
    charge = gated_charge(charges, started, gate)

    runtime = ar.AgentRuntime(tools=[charge], checkpoint_backend=backend)
    sid = await interrupt_mid_tool(
        runtime, 'Thought: pay\nAction: charge {"amount": 5}', gate, started
    )
    with pytest.raises(ar.ToolError, match=r"'charge' \(step 1, call 0, idempotency key"):
        await runtime.resume(sid, script(FINAL))
    assert charges == [5]  # at most once
    # The operator checks the payment went through and records it; the run then finishes.
    await runtime.settle_call(sid, 1, 0, "charged (settled by hand)")
    resumed = await runtime.resume(sid, script(FINAL))
    assert resumed.steps[0].observation == "charged (settled by hand)"
    assert resumed.final_answer == "finished" and charges == [5]
    with pytest.raises(ar.ToolError, match="no unsettled tool call"):
        await runtime.settle_call(sid, 1, 0, "again")


@pytest.mark.parametrize(
    ("step", "index", "observation", "error_kind", "named"),
    [
        (1, 0, {"status": "paid"}, None, "observation must be a string"),
        (1, 0, b"paid", None, "observation must be a string"),
        (1, 0, "paid", "bogus", "error_kind must be None or one of 'not_found'"),
        (1, 0, "paid", ["permanent"], "error_kind must be None"),
        (True, 0, "paid", None, "step must be an int >= 1"),
        (0, 0, "paid", None, "step must be an int >= 1"),
        (1.0, 0, "paid", None, "step must be an int >= 1"),
        (1, False, "paid", None, "index must be an int >= 0"),
        (1, -1, "paid", None, "index must be an int >= 0"),
    ],
)
async def test_settle_call_refuses_an_outcome_a_session_could_not_load_with(
    step: Any, index: Any, observation: Any, error_kind: Any, named: str
) -> None:
    backend = ar.InMemoryBackend()
    started, gate = asyncio.Event(), asyncio.Event()
    charges: list[int] = []
    runtime = ar.AgentRuntime(
        tools=[gated_charge(charges, started, gate)], checkpoint_backend=backend
    )
    sid = await interrupt_mid_tool(
        runtime, 'Thought: pay\nAction: charge {"amount": 5}', gate, started
    )
    before = dict(backend.data)
    with pytest.raises(ar.AgentRuntimeError, match=named):
        await runtime.settle_call(sid, step, index, observation, error_kind)
    assert backend.data == before  # nothing written: the call is still unsettled
    await runtime.settle_call(sid, 1, 0, "charge failed (checked by hand)", "permanent")
    resumed = await runtime.resume(sid, script(FINAL))
    assert [(s.observation, s.error_kind) for s in resumed.steps] == [
        ("charge failed (checked by hand)", "permanent"),
        ("", None),
    ]
    assert await ar.AgentSession.load_checkpoint(backend, sid) == resumed and charges == [5]


async def test_idempotent_tools_and_keyed_tools_are_repeated_with_the_same_key() -> None:
    backend = ar.InMemoryBackend()
    started, gate = asyncio.Event(), asyncio.Event()
    keys: list[str] = []

    @ar.tool
    async def send(text: str, idempotency_key: str) -> str:
        """Sends once per key."""
        keys.append(idempotency_key)
        started.set()
        await gate.wait()
        return "sent"

    assert "idempotency_key" not in send.parameters["properties"]  # hidden from the model
    runtime = ar.AgentRuntime(tools=[send], checkpoint_backend=backend)
    sid = await interrupt_mid_tool(
        runtime, 'Thought: send\nAction: send {"text": "hi"}', gate, started
    )
    resumed = await runtime.resume(sid, script(FINAL))
    assert resumed.final_answer == "finished"
    # The tool can deduplicate by its key: the session, the run (which a resume keeps),
    # the step and the call.
    assert len(keys) == 2 and keys[0] == keys[1]
    assert re.fullmatch(rf"{sid}:[0-9a-f]{{32}}:1:0", keys[0])
    assert [s.observation for s in resumed.steps] == ["sent", ""]


async def test_a_lone_idempotent_call_is_not_journaled_and_its_step_runs_again() -> None:
    backend = ar.InMemoryBackend()
    started, gate = asyncio.Event(), asyncio.Event()
    lookups: list[str] = []

    @ar.tool(idempotent=True)
    async def lookup(item: str) -> str:
        """Reads a price."""
        lookups.append(item)
        started.set()
        await gate.wait()
        return f"{item}: 3"

    runtime = ar.AgentRuntime(tools=[lookup], checkpoint_backend=backend)
    reply = 'Thought: price\nAction: lookup {"item": "tea"}'
    sid = await interrupt_mid_tool(runtime, reply, gate, started)
    assert not [k for k in await backend.list_keys() if ":call:" in k]  # no intent written
    asked: list[str] = []

    async def model(prompt: str) -> str:
        asked.append(prompt)
        return reply if len(asked) == 1 else FINAL

    resumed = await runtime.resume(sid, model)
    assert len(asked) == 2  # the interrupted step's model call was made again
    assert lookups == ["tea", "tea"]
    assert [s.observation for s in resumed.steps] == ["tea: 3", ""]
    assert resumed.final_answer == "finished"


async def test_parallel_calls_are_journaled_one_by_one() -> None:
    backend = ar.InMemoryBackend()
    runs: list[str] = []
    started, gate = asyncio.Event(), asyncio.Event()

    @ar.tool(idempotent=True)
    async def fetch(name: str) -> str:
        """Fetches; `slow` hangs until released."""
        runs.append(name)
        if name == "slow":
            started.set()
            await gate.wait()
        return f"got {name}"

    calls = [("fetch", {"name": n}) for n in ("a", "b", "slow")]
    round_one = ar.ScriptedProvider.tool_call_reply(calls)
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[fetch], checkpoint_backend=backend
    )
    session = runtime.create_session("a")
    task = asyncio.create_task(
        runtime.run_agent_with_provider("a", "q", ar.ScriptedProvider([round_one]), session=session)
    )
    await started.wait()
    await asyncio.sleep(0.01)  # a and b finish and are journaled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    assert runs == ["a", "b", "slow"]
    final = ar.providers.base.ChatResponse(text="all fetched")
    resumed = await runtime.resume(session.session_id, ar.ScriptedProvider([final]))
    assert runs == ["a", "b", "slow", "slow"]  # only the unfinished call ran again
    assert [s.observation for s in resumed.steps[:3]] == ["got a", "got b", "got slow"]
    assert resumed.final_answer == "all fetched"


async def test_a_failed_result_entry_of_a_parallel_call_neither_ends_the_run_nor_its_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Counted as a failed step checkpoint is: the round's step checkpoint holds the result.

    And logged once, as a warning whose record points at the write that failed (not at the
    helper that counts and logs it).
    """
    failed = asyncio.Event()

    class ResultWriteFails(ar.InMemoryBackend):
        async def save(self, key: str, value: bytes) -> None:
            if ":call:" in key and b'"state":"done"' in value and not failed.is_set():
                failed.set()
                raise OSError("connection reset")
            await super().save(key, value)

    log: list[str] = []

    @ar.tool
    async def fast(n: int) -> str:
        """Fast side effect."""
        log.append("fast done")
        return "fast ok"

    @ar.tool
    async def slow(n: int) -> str:
        """Slow side effect, under way when the other call's result is journaled."""
        try:
            await failed.wait()
        except asyncio.CancelledError:
            log.append("slow cancelled")
            raise
        log.append("slow done")
        return "slow ok"

    backend = ResultWriteFails()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[fast, slow], checkpoint_backend=backend
    )
    round_one = ar.ScriptedProvider.tool_call_reply([("fast", {"n": 1}), ("slow", {"n": 2})])
    session = await runtime.run_agent_with_provider(
        "a", "q", ar.ScriptedProvider([round_one, "all done"])
    )
    assert session.final_answer == "all done" and log == ["fast done", "slow done"]
    assert [s.observation for s in session.steps] == ["fast ok", "slow ok", ""]
    assert session.checkpoint_errors == 1 and runtime.metrics.snapshot().checkpoint_errors == 1
    assert await ar.AgentSession.load_checkpoint(backend, session.session_id) == session
    (warning,) = [r for r in caplog.records if r.name == "llm_agent_runtime"]
    assert warning.levelname == "WARNING"
    assert warning.getMessage().startswith("journal entry of tool call 0 of step 1 of session")
    assert "connection reset" in warning.getMessage()
    assert warning.pathname.endswith("runtime.py") and warning.funcName != "_count_checkpoint_error"


async def test_native_mode_resume_rebuilds_the_chat() -> None:
    backend = ar.InMemoryBackend()
    effects = Effects()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=effects.tools(), checkpoint_backend=backend
    )
    first = ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})], text="adding")
    session = runtime.create_session("a")
    with pytest.raises(ar.ProviderError):  # the script runs out: the provider fails
        await runtime.run_agent_with_provider(
            "a", "q", ar.ScriptedProvider([first]), session=session
        )
    seen: list[list[Any]] = []

    class Recorder(ar.ScriptedProvider):
        async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
            seen.append(list(messages))
            return await super().chat(messages, tools, **params)

    final = ar.providers.base.ChatResponse(text="3")
    resumed = await runtime.resume(session.session_id, Recorder([final]))
    assert resumed.final_answer == "3" and effects.calls == [("add", (1, 2))]
    roles = [m.role for m in seen[0]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert seen[0][2].tool_calls[0].name == "add" and seen[0][3].content == "3"


async def test_fork_prune_sweep_and_the_event_log(tmp_path: Path) -> None:
    with ar.SqliteBackend(tmp_path / "cp.db") as backend:
        effects = Effects()
        runtime = ar.AgentRuntime(
            ar.AgentConfig(max_iterations=20), tools=effects.tools(), checkpoint_backend=backend
        )
        session = await runtime.run_agent("a", "q", script(*(add_step(i) for i in range(8)), FINAL))
        sid = session.session_id

        fork_id = await runtime.fork(sid, 3)
        forked = await runtime.resume(fork_id, script("Thought: x\nAction: FINAL_ANSWER forked"))
        assert [s.observation for s in forked.steps[:3]] == ["1", "2", "3"]
        assert forked.final_answer == "forked" and forked.step_count == 4
        with pytest.raises(ar.PersistenceError, match="cannot fork at step 99"):
            await runtime.fork(sid, 99)

        assert await runtime.prune(sid, keep_last=2) == 7
        assert len(await backend.list_keys(f"session:{sid}:step:")) == 2
        assert await ar.AgentSession.load_checkpoint(backend, sid) == session
        assert await runtime.prune(sid, keep_last=2) == 0

        events = await runtime.session_events(sid)
        types = [e["type"] for e in events]
        assert types[0] == "RunStarted" and types[-1] == "RunFinished"
        assert types.count("ToolCallFinished") == 8
        assert events[1]["session_id"] == sid

        running = runtime.create_session("a")
        with pytest.raises(IndexError):  # the model script runs out mid-run: never finished
            await runtime.run_agent("a", "q", script(add_step(0)), session=running)
        failed_log = [e["type"] for e in await runtime.session_events(running.session_id)]
        assert failed_log[0] == "RunStarted" and failed_log[-1] == "ErrorEvent"
        assert not runtime._event_log  # nothing left behind in memory
        swept = await runtime.sweep(older_than=-1.0)
        assert set(swept) == {sid, fork_id}
        assert await backend.list_keys(f"session:{sid}") == []
        assert await backend.list_keys(f"session:{running.session_id}:step:")  # kept
        backend.close()


async def test_prune_and_sweep_delete_a_long_session_in_batches() -> None:
    # They deleted a key at a time: on SQLite each its own transaction, with its fsync
    # (a 1,500-step session took about a second to prune, and more to sweep).
    class Counted(ar.InMemoryBackend):
        deletes = 0

        async def delete(self, key: str) -> bool:
            self.deletes += 1
            return await super().delete(key)

    backend = Counted()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(max_iterations=70), tools=Effects().tools(), checkpoint_backend=backend
    )
    session = await runtime.run_agent("a", "q", script(*(add_step(i) for i in range(60)), FINAL))
    sid = session.session_id
    assert await runtime.prune(sid, keep_last=5) == 56
    assert backend.deletes == 0  # none a key (no shorter base to delete)
    assert len(await backend.list_keys(f"session:{sid}:step:")) == 5
    assert await ar.AgentSession.load_checkpoint(backend, sid) == session
    assert await runtime.sweep(older_than=-1.0) == [sid]
    assert backend.deletes <= 3  # single keys: the sweep's claim and the final record, last
    assert await backend.list_keys(f"session:{sid}") == []


async def test_resume_and_fork_need_a_backend() -> None:
    runtime = ar.AgentRuntime()
    with pytest.raises(ar.AgentRuntimeError, match="checkpoint_backend"):
        await runtime.resume("x", script(FINAL))
    with pytest.raises(ar.PersistenceError, match="no checkpoint saved"):
        await ar.AgentRuntime(checkpoint_backend=ar.InMemoryBackend()).resume("x", script())


class HangingRoundBackend(ar.InMemoryBackend):
    """The first save that holds step 2 never ends: a crash while a round is saved."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = asyncio.Event()

    async def batch_save(self, items: Any) -> None:
        if not self.reached.is_set() and any(key.endswith(":step:2") for key in items):
            self.reached.set()
            await asyncio.Event().wait()  # never returns: the run is cancelled here
        await super().batch_save(items)


async def test_a_round_interrupted_while_saved_resumes_from_its_journal() -> None:
    backend = HangingRoundBackend()
    effects = Effects()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=effects.tools(), checkpoint_backend=backend
    )
    round_of_three = ar.ScriptedProvider.tool_call_reply(
        [("charge", {"amount": n}) for n in (1, 2, 3)]
    )
    session = runtime.create_session("a")
    await cancel_once_reached(
        runtime.run_agent_with_provider(
            "a", "q", ar.ScriptedProvider([round_of_three]), session=session
        ),
        backend.reached,
    )
    assert effects.calls == [("charge", 1), ("charge", 2), ("charge", 3)]
    # The round is saved whole or not at all; its calls' results come from the journal.
    resumed = await runtime.resume(session.session_id, ar.ScriptedProvider(["done"]))
    assert [(s.action, s.action_input) for s in resumed.steps] == [
        ("charge", {"amount": 1}),
        ("charge", {"amount": 2}),
        ("charge", {"amount": 3}),
        ("FINAL_ANSWER", "done"),
    ]
    assert len(effects.calls) == 3  # no charge ran twice


class SlowCleanupBackend(ar.InMemoryBackend):
    """A fork's copy that lands, then hangs; deletes that take a round trip, one may fail."""

    def __init__(self, failing: str = "") -> None:
        super().__init__()
        self.hang = False
        self.failing = failing
        self.reached = asyncio.Event()
        self.deleting = asyncio.Event()

    async def batch_save(self, items: Any) -> None:
        await super().batch_save(items)
        if self.hang and any(":step:" in key for key in items):
            self.reached.set()
            await asyncio.Event().wait()  # cancelled here, the copy landed

    async def delete(self, key: str) -> bool:
        await asyncio.sleep(0.01)  # a network round trip
        if self.failing and key.endswith(self.failing):
            raise ConnectionError("delete failed")
        found = await super().delete(key)
        self.deleting.set()
        return found


@pytest.mark.parametrize("failing", ["", ":step:2"])
async def test_a_fork_cancelled_twice_cleans_up_whole_and_never_resumes_short(
    failing: str,
) -> None:
    backend = SlowCleanupBackend(failing)
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = await runtime.run_agent("a", "q", script(*(add_step(i) for i in (1, 2, 3)), FINAL))
    backend.hang = True
    task = asyncio.create_task(runtime.fork(session.session_id, 3, "child"))
    await backend.reached.wait()
    task.cancel()
    await backend.deleting.wait()
    task.cancel()  # again, during the cleanup: it still runs to the end
    with pytest.raises(asyncio.CancelledError):
        await task
    left = await backend.list_keys("session:child")
    # The meta claim goes even when a step's delete failed: no short fork to resume.
    assert left == ([] if not failing else ["session:child:step:2"])
    with pytest.raises(ar.PersistenceError):
        await runtime.resume("child", script(FINAL))


class FailsOnceAtStep2(ar.InMemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def batch_save(self, items: Any) -> None:
        if not self.failed and any(key.endswith(":step:2") for key in items):
            self.failed = True
            raise OSError("disk full")
        await super().batch_save(items)


async def test_a_failed_step_checkpoint_goes_with_the_next_so_resume_finds_no_gap() -> None:
    backend = FailsOnceAtStep2()
    effects = Effects()
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend)
    session = runtime.create_session("a")
    model = fails_after(*(add_step(i) for i in range(4)))
    with pytest.raises(ConnectionError):
        await runtime.run_agent("a", "q", model, session=session)
    assert session.checkpoint_errors == 1
    prefix = f"session:{session.session_id}:step:"
    assert sorted(k for k in backend.data if k.startswith(prefix)) == [
        f"{prefix}{n}" for n in (1, 2, 3, 4)
    ]
    resumed = await runtime.resume(session.session_id, script(FINAL))
    assert [s.observation for s in resumed.steps] == ["1", "2", "3", "4", ""]
    assert len(effects.calls) == 4  # nothing ran twice


class StepSavesDown(ar.InMemoryBackend):
    """Refuses every write holding a step checkpoint while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def batch_save(self, items: Any) -> None:
        if self.down and any(":step:" in key for key in items):
            raise OSError("disk full")
        await super().batch_save(items)


async def test_rounds_whose_saves_all_failed_come_back_from_their_journals() -> None:
    backend = StepSavesDown()
    effects = Effects()
    config = ar.AgentConfig(mode="tools")
    runtime = ar.AgentRuntime(config, tools=effects.tools(), checkpoint_backend=backend)
    rounds = [
        ar.ScriptedProvider.tool_call_reply(
            [("charge", {"amount": n}), ("charge", {"amount": n + 1})]
        )
        for n in (1, 3)
    ]
    session = runtime.create_session("a")
    with pytest.raises(ar.ProviderError):  # the script runs out: the model fails
        await runtime.run_agent_with_provider(
            "a", "q", ar.ScriptedProvider(rounds), session=session
        )
    assert session.checkpoint_errors >= 2 and [c[1] for c in effects.calls] == [1, 2, 3, 4]
    backend.down = False
    model = ar.ScriptedProvider(["done"])
    resumed = await ar.AgentRuntime(
        config, tools=effects.tools(), checkpoint_backend=backend
    ).resume(session.session_id, model)
    assert model.calls == 1  # both rounds came from the journal
    assert [c[1] for c in effects.calls] == [1, 2, 3, 4]  # no charge ran twice
    assert [s.observation for s in resumed.steps] == ["charged"] * 4 + [""]


async def test_react_steps_whose_saves_failed_reuse_their_replies_and_keys() -> None:
    backend = StepSavesDown()
    effects = Effects()
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend)
    sends = [f'Thought: {t}\nAction: send {{"text": "{t}"}}' for t in ("a", "b")]
    session = runtime.create_session("a")
    with pytest.raises(IndexError):  # the model fails after two steps
        await runtime.run_agent("a", "q", script(*sends), session=session)
    backend.down = False
    asked: list[str] = []

    async def model(prompt: str) -> str:
        asked.append(prompt)
        return FINAL

    resumed = await runtime.resume(session.session_id, model)
    assert len(asked) == 1 and "Observation: sent" in asked[0]
    sid = session.session_id
    # Each send ran again (it takes the key), with the key of its first run.
    first = effects.keys[:2]
    assert effects.keys == first + first
    assert all(re.fullmatch(rf"{sid}:[0-9a-f]{{32}}:{n}:0", k) for n, k in enumerate(first, 1))
    assert [s.action for s in resumed.steps] == ["send", "send", "FINAL_ANSWER"]


async def test_the_final_record_takes_the_steps_whose_saves_failed() -> None:
    class StepsAloneFail(ar.InMemoryBackend):
        down = True

        async def batch_save(self, items: Any) -> None:
            # Every write of steps fails but the final checkpoint's (`session:<id>`).
            steps = any(":step:" in key for key in items)
            if self.down and steps and not any(key.count(":") == 1 for key in items):
                raise OSError("disk full")
            await super().batch_save(items)

    backend = StepsAloneFail()
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = await runtime.run_agent("a", "q", script(add_step(0), add_step(1), FINAL))
    assert session.checkpoint_errors == 3
    state = await CheckpointStore(backend).load(session.session_id)
    assert [r.step.observation for r in state.records] == ["1", "2", ""]
    assert not runtime._unsaved_steps
    backend.down = False
    assert await runtime.fork(session.session_id, 2)


@pytest.mark.parametrize("lands", [False, True], ids=["hangs", "lands then hangs"])
async def test_cancelled_while_a_step_is_saved_the_step_is_saved_on_the_way_out(
    lands: bool,
) -> None:
    # `lands`: the backend finishes the write its caller stopped waiting for (SQLite's worker
    # thread does). The events went back to the runtime and were written again, under new
    # numbers: each was logged twice.
    class FirstStepSaveHangs(ar.InMemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            self.reached = asyncio.Event()

        async def batch_save(self, items: Any) -> None:
            if lands:
                await super().batch_save(items)
            if not self.reached.is_set() and any(":step:" in key for key in items):
                self.reached.set()
                await asyncio.Event().wait()
            if not lands:
                await super().batch_save(items)

    backend = FirstStepSaveHangs()
    effects = Effects()
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend)
    session = runtime.create_session("a")
    reply = 'Thought: pay\nAction: charge {"amount": 5}'
    await cancel_once_reached(
        runtime.run_agent("a", "q", script(reply), session=session), backend.reached
    )
    events = [e["type"] for e in await runtime.session_events(session.session_id)]
    assert events == [  # no text deltas: the log keeps the whole text, in LlmResponse
        "RunStarted",
        "LlmResponse",
        "ToolCallStarted",
        "ToolCallFinished",
        "ErrorEvent",
    ]
    resumed = await runtime.resume(session.session_id, script(FINAL))  # no ToolError
    assert resumed.steps[0].observation == "charged" and effects.calls == [("charge", 5)]


async def test_cancelled_during_the_final_checkpoint_the_run_keeps_its_finished_event() -> None:
    class FinalSaveHangs(ar.InMemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            self.reached = asyncio.Event()

        async def batch_save(self, items: Any) -> None:
            final = any(key.count(":") == 1 for key in items)  # `session:<id>` alone
            if final and not self.reached.is_set():
                self.reached.set()
                await asyncio.Event().wait()
            await super().batch_save(items)

    backend = FinalSaveHangs()
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    session = runtime.create_session("a")
    await cancel_once_reached(
        runtime.run_agent("a", "q", script(FINAL), session=session), backend.reached
    )
    events = [e["type"] for e in await runtime.session_events(session.session_id)]
    assert "RunFinished" in events  # it was dropped: popped, and given back to Exceptions only


async def test_a_resumed_reply_is_not_handled_twice() -> None:
    seen: list[str] = []

    class Raise(ar.Middleware):
        def on_post_llm(self, session: ar.AgentSession, text: str) -> str:
            seen.append(text)
            return text.replace('"amount": 5', '"amount": 50')

    backend = ar.InMemoryBackend()
    started, gate = asyncio.Event(), asyncio.Event()
    keys: list[tuple[str, int]] = []

    @ar.tool
    async def pay(amount: int, idempotency_key: str) -> str:
        """Pays once per key."""
        keys.append((idempotency_key, amount))
        started.set()
        await gate.wait()
        return "paid"

    runtime = ar.AgentRuntime(tools=[pay], checkpoint_backend=backend, middlewares=[Raise()])
    sid = await interrupt_mid_tool(
        runtime, 'Thought: pay\nAction: pay {"amount": 5}', gate, started
    )
    await runtime.resume(sid, script(FINAL))
    assert [amount for _, amount in keys] == [50, 50]  # repeated as it ran, not re-rewritten
    assert len(seen) == 2  # the interrupted reply, then the final one: no reply twice
    events = [e for e in await runtime.session_events(sid) if e["type"] == "LlmResponse"]
    assert len(events) == 2


async def test_a_round_that_may_have_run_starts_no_call_on_resume() -> None:
    backend = ar.InMemoryBackend()
    started, gate = asyncio.Event(), asyncio.Event()
    charges: list[int] = []
    charge = gated_charge(charges, started, gate)

    config = ar.AgentConfig(mode="tools", max_parallel_tool_calls=1)
    runtime = ar.AgentRuntime(config, tools=[charge], checkpoint_backend=backend)
    round_ = ar.ScriptedProvider.tool_call_reply([("charge", {"amount": n}) for n in (1, 2)])
    session = runtime.create_session("a")
    task = asyncio.create_task(
        runtime.run_agent_with_provider("a", "q", ar.ScriptedProvider([round_]), session=session)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    with pytest.raises(ar.ToolError, match="call 0"):
        await runtime.resume(session.session_id, ar.ScriptedProvider(["done"]))
    await asyncio.sleep(0.05)
    assert charges == [1]  # call 1 never started, then or now


async def test_event_logs_of_two_runtimes_on_one_session_add_up() -> None:
    backend = ar.InMemoryBackend()
    effects = Effects()
    first, second = (
        ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend) for _ in range(2)
    )

    session = first.create_session("a")
    with pytest.raises(ConnectionError):
        await first.run_agent("a", "q", fails_after(add_step(0)), session=session)
    with pytest.raises(ConnectionError):
        await second.resume(session.session_id, fails_after(add_step(1)))
    await first.resume(session.session_id, script(FINAL))
    types = [e["type"] for e in await first.session_events(session.session_id)]
    assert types.count("RunStarted") == 3 and types.count("ErrorEvent") == 2
    assert types.count("LlmResponse") == 3 and types[-1] == "RunFinished"


async def test_a_session_whose_later_turn_was_interrupted_is_swept_only_once_resumed() -> None:
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = runtime.create_session("a")
    await runtime.run_turn(session, "first", script(FINAL))

    async def down(prompt: str) -> str:
        raise ConnectionError("model down")

    with pytest.raises(ConnectionError):
        await runtime.run_turn(session, "second", down)
    assert await runtime.sweep(older_than=-1000) == []
    assert await CheckpointStore(backend).load(session.session_id)
    resumed = await runtime.resume(session.session_id, script(FINAL))
    assert [m["content"] for m in resumed.messages] == ["first", "finished", "second", "finished"]
    assert await runtime.sweep(older_than=-1000) == [session.session_id]


async def test_a_session_whose_later_turn_timed_out_loads_with_its_earlier_turns() -> None:
    backend = ar.InMemoryBackend()
    memory = ar.EpisodicStore()
    memory.add_episode("a", "likes tea", 0.5)
    config = ar.AgentConfig(loop_timeout_ms=150)
    runtime = ar.AgentRuntime(
        config, tools=Effects().tools(), memory=memory, checkpoint_backend=backend
    )
    session = runtime.create_session("a")
    assert await runtime.run_turn(session, "turn1", script(FINAL)) == "finished"
    replies = [add_step(0)]

    async def then_hang(prompt: str) -> str:
        if replies:
            return replies.pop(0)
        await asyncio.sleep(10)
        return FINAL

    with pytest.raises(ar.AgentLoopError, match=r"\(1 steps done\)"):
        await runtime.run_turn(session, "turn2", then_hang)
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    # The earlier turn's history and counts, then the steps the interrupted turn saved.
    assert (
        saved.messages
        == session.messages
        == [
            {"role": "user", "content": "turn1"},
            {"role": "assistant", "content": "finished"},
        ]
    )
    # The memory hits with the interrupted turn's recall, as the session in memory has them.
    assert saved.memory_hits == session.memory_hits == 2
    assert [s.action for s in saved.steps] == ["FINAL_ANSWER", "add"]
    assert saved.prompt == "turn2" and saved.final_answer is None
    # Resumed, the turn ends the session as if nothing had happened (no second recall).
    resumed = await runtime.resume(session.session_id, script(FINAL))
    assert resumed.final_answer == "finished" and resumed.memory_hits == 2
    assert [s.action for s in resumed.steps] == ["FINAL_ANSWER", "add", "FINAL_ANSWER"]
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert [m["content"] for m in saved.messages] == ["turn1", "finished", "turn2", "finished"]
    assert saved == resumed


async def test_a_later_turn_that_answered_but_was_not_closed_loads_with_its_answer() -> None:
    class FinalFails(ar.InMemoryBackend):
        fail = False

        async def batch_save(self, items: Any) -> None:
            if self.fail and any(k.count(":") == 1 for k in items):
                raise OSError("disk full")
            await super().batch_save(items)

    backend = FinalFails()
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    session = runtime.create_session("a")
    await runtime.run_turn(session, "turn1", script(FINAL))
    backend.fail = True
    with pytest.raises(ar.PersistenceError, match="disk full"):
        await runtime.run_turn(session, "turn2", script(FINAL.replace("finished", "second")))
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert saved.final_answer == "second"
    assert saved.messages == session.messages
    assert [m["content"] for m in saved.messages] == ["turn1", "finished", "turn2", "second"]


# ---------------------------------------------------------------------- runs and turns
class Recorder(ar.ScriptedProvider):
    """A scripted provider that keeps the messages of every call."""

    def __init__(self, replies: Any) -> None:
        super().__init__(replies)
        self.seen: list[list[Any]] = []

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
        self.seen.append(list(messages))
        return await super().chat(messages, tools, **params)


def chat_of(messages: list[Any]) -> list[tuple[str, str, list[str], str | None]]:
    """What a chat call sent: each message's role, text, tool call ids and answered call."""
    return [(m.role, m.content, [c.id for c in m.tool_calls], m.tool_call_id) for m in messages]


async def test_a_turn_run_again_ignores_the_journal_of_the_interrupted_run() -> None:
    """A journal entry is valid for the run that wrote it: not for the turn run again."""
    backend = ar.InMemoryBackend()
    ran: list[dict[str, Any]] = []
    reached, gate = asyncio.Event(), asyncio.Event()

    @ar.tool(idempotent=True)
    async def add(a: int, b: int, slow: bool = False) -> int:
        """Adds; `slow` waits."""
        ran.append({"a": a, "b": b})
        if slow:
            reached.set()
            await gate.wait()
        return a + b

    config = ar.AgentConfig(mode="tools")
    runtime = ar.AgentRuntime(config, tools=[add], checkpoint_backend=backend)
    session = runtime.create_session("a", "S1")
    await runtime.run_turn(session, "hi", ar.ScriptedProvider(["hello"]))
    round_ = ar.ScriptedProvider.tool_call_reply(
        [("add", {"a": 1, "b": 2}), ("add", {"a": 0, "b": 0, "slow": True})]
    )
    task = asyncio.create_task(runtime.run_turn(session, "compute", ar.ScriptedProvider([round_])))
    await cancel_once_reached(task, reached)  # call 0 done and journaled; call 1 may have run
    gate.set()
    ran.clear()
    loaded = await ar.AgentSession.load_checkpoint(backend, "S1")
    other = ar.ScriptedProvider(
        [
            ar.ScriptedProvider.tool_call_reply(
                [("add", {"a": 100, "b": 200}), ("add", {"a": 5, "b": 5})]
            ),
            "done",
        ]
    )
    again = ar.AgentRuntime(config, tools=[add], checkpoint_backend=backend)
    assert await again.run_turn(loaded, "compute again", other) == "done"
    assert ran == [{"a": 100, "b": 200}, {"a": 5, "b": 5}]  # both ran: no stale result
    assert [(s.action_input, s.observation) for s in loaded.steps[1:3]] == [
        ({"a": 100, "b": 200}, "300"),
        ({"a": 5, "b": 5}, "10"),
    ]


async def test_a_stale_intent_of_another_run_blocks_neither_a_new_turn_nor_a_resume() -> None:
    backend = ar.InMemoryBackend()
    sent: list[str] = []
    reached, gate = asyncio.Event(), asyncio.Event()

    @ar.tool
    async def send(to: str) -> str:
        """Sends a message (not idempotent)."""
        sent.append(to)
        if to == "bob":
            reached.set()
            await gate.wait()
        return "sent " + to

    runtime = ar.AgentRuntime(tools=[send], checkpoint_backend=backend)
    session = runtime.create_session("a", "S1")
    await runtime.run_turn(session, "hi", script(FINAL))
    to_bob = 'Thought: t\nAction: send {"to": "bob"}'
    task = asyncio.create_task(runtime.run_turn(session, "send to bob", script(to_bob)))
    await cancel_once_reached(task, reached)  # the intent of step 2 is journaled: it may have run
    gate.set()

    # A new turn (not a resume) runs its own step 2: the interrupted run's intent is stale.
    with pytest.raises(ConnectionError):  # it sends, then the model goes down
        await runtime.run_turn(
            session, "send to alice", fails_after('Thought: t\nAction: send {"to": "alice"}')
        )
    assert sent == ["bob", "alice"]
    # Its resume takes its own step 2, not the stale journal of the run before.
    resumed = await runtime.resume("S1", script(FINAL))
    assert sent == ["bob", "alice"]
    assert [s.observation for s in resumed.steps] == ["", "sent alice", ""]
    assert [m["content"] for m in resumed.messages] == [
        "hi",
        "finished",
        "send to alice",
        "finished",
    ]


async def test_a_turn_run_again_gives_its_calls_keys_of_their_own() -> None:
    """A keyed API must not take the new run's call for the interrupted run's one."""
    backend = ar.InMemoryBackend()
    api: dict[str, int] = {}  # amount charged by key: a repeated key is a replay
    reached, gate = asyncio.Event(), asyncio.Event()

    @ar.tool
    async def charge(amount: int, idempotency_key: str) -> str:
        """Charges once per key."""
        api.setdefault(idempotency_key, amount)
        if amount == 500:
            reached.set()
            await gate.wait()
        return f"charged {api[idempotency_key]}"

    runtime = ar.AgentRuntime(tools=[charge], checkpoint_backend=backend)
    session = runtime.create_session("a", "K")
    charge_500 = 'Thought: t\nAction: charge {"amount": 500}'
    task = asyncio.create_task(runtime.run_turn(session, "charge 500", script(charge_500)))
    await cancel_once_reached(task, reached)  # the 500 charge was made; its intent is journaled
    gate.set()
    charge_700 = 'Thought: t\nAction: charge {"amount": 700}'
    assert await runtime.run_turn(session, "700", script(charge_700, FINAL)) == "finished"
    assert sorted(api.values()) == [500, 700]  # the new call was made, under a new key
    assert session.steps[0].observation == "charged 700"


async def test_an_interrupted_later_turn_is_resumed_without_repeating_its_steps() -> None:
    backend = ar.InMemoryBackend()
    booked: list[str] = []
    reached, gate = asyncio.Event(), asyncio.Event()

    @ar.tool(idempotent=True)
    async def book(what: str) -> str:
        """Books."""
        booked.append(what)
        if what == "hotel" and not gate.is_set():
            reached.set()
            await gate.wait()
        return "booked " + what

    # Three rounds a turn: the earlier turn's round must not count against the resumed one.
    config = ar.AgentConfig(mode="tools", max_iterations=3)
    runtime = ar.AgentRuntime(config, tools=[book], checkpoint_backend=backend)
    session = runtime.create_session("a", "S")
    await runtime.run_turn(session, "hi", ar.ScriptedProvider(["hello"]))
    flight = ar.ScriptedProvider.tool_call_reply([("book", {"what": "flight"})])
    hotel = ar.ScriptedProvider.tool_call_reply([("book", {"what": "hotel"})])
    task = asyncio.create_task(
        runtime.run_turn(session, "book trip", ar.ScriptedProvider([flight, hotel, "all"]))
    )
    await cancel_once_reached(task, reached)
    gate.set()

    model = Recorder([hotel, "all booked"])
    resumed = await ar.AgentRuntime(config, tools=[book], checkpoint_backend=backend).resume(
        "S", model
    )
    assert booked == ["flight", "hotel", "hotel"]  # the completed flight step is not re-run
    assert resumed.final_answer == "all booked"
    assert [s.action_input for s in resumed.steps] == [
        "hello",
        {"what": "flight"},
        {"what": "hotel"},
        "all booked",
    ]
    assert [m["content"] for m in resumed.messages] == ["hi", "hello", "book trip", "all booked"]
    assert chat_of(model.seen[0])[1:] == [
        ("user", "hi", [], None),
        ("assistant", "hello", [], None),
        ("user", "book trip", [], None),
        ("assistant", "", ["call_0"], None),
        ("tool", "booked flight", [], "call_0"),
    ]
    assert await ar.AgentSession.load_checkpoint(backend, "S") == resumed


async def test_a_resumed_first_turn_joins_the_chat_history() -> None:
    backend = ar.InMemoryBackend()
    reached, gate = asyncio.Event(), asyncio.Event()

    @ar.tool(idempotent=True)
    async def lookup() -> str:
        """Looks up."""
        reached.set()
        await gate.wait()
        return "Paris"

    config = ar.AgentConfig(mode="tools")
    runtime = ar.AgentRuntime(config, tools=[lookup], checkpoint_backend=backend)
    session = runtime.create_session("a", "S")
    answer = [ar.ScriptedProvider.tool_call_reply([("lookup", {})]), "The capital is Paris"]
    task = asyncio.create_task(
        runtime.run_turn(session, "capital of France?", ar.ScriptedProvider(answer))
    )
    await cancel_once_reached(task, reached)
    gate.set()
    other = ar.AgentRuntime(config, tools=[lookup], checkpoint_backend=backend)
    resumed = await other.resume("S", ar.ScriptedProvider(answer))
    turn = [
        {"role": "user", "content": "capital of France?"},
        {"role": "assistant", "content": "The capital is Paris"},
    ]
    assert resumed.messages == turn  # as an uninterrupted turn adds it
    assert (await ar.AgentSession.load_checkpoint(backend, "S")).messages == turn
    model = Recorder(["2 million"])
    await other.run_turn(resumed, "and its population?", model)
    assert [m.content for m in model.seen[0][1:]] == [
        "capital of France?",
        "The capital is Paris",
        "and its population?",
    ]


async def test_the_journal_decides_by_the_tool_a_middleware_routes_a_call_to() -> None:
    charges: list[Any] = []
    reached, gate = asyncio.Event(), asyncio.Event()

    @ar.tool(idempotent=True)
    async def lookup(pay: bool = False) -> str:
        """Looks up (safe to repeat)."""
        return "looked up"

    @ar.tool
    async def charge(pay: bool = False) -> str:
        """Charges (not idempotent)."""
        charges.append(pay)
        reached.set()
        await gate.wait()
        return "charged"

    class Route(ar.Middleware):
        def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
            return ("charge", arguments) if tool == "lookup" and arguments.get("pay") else None

    backend = ar.InMemoryBackend()

    def runtime() -> ar.AgentRuntime:
        return ar.AgentRuntime(
            tools=[lookup, charge], checkpoint_backend=backend, middlewares=[Route()]
        )

    reply = 'Thought: t\nAction: lookup {"pay": true}'
    sid = await interrupt_mid_tool(runtime(), reply, gate, reached)
    # The call that ran is a charge: journaled, and not repeated on resume.
    assert [k for k in await backend.list_keys() if ":call:" in k] == [f"session:{sid}:call:1:0"]
    with pytest.raises(ar.ToolError, match=r"'charge' \(step 1"):
        await runtime().resume(sid, script(FINAL))
    assert charges == [True]

    # An idempotent tool called by an alias is repeated as the idempotent tool it is.
    adds: list[int] = []
    reached, gate = asyncio.Event(), asyncio.Event()

    @ar.tool(idempotent=True)
    async def add(a: int, b: int) -> int:
        """Adds."""
        adds.append(a)
        reached.set()
        await gate.wait()
        return a + b

    class Alias(ar.Middleware):
        def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
            return ("add", arguments) if tool == "plus" else None

    def aliased() -> ar.AgentRuntime:
        return ar.AgentRuntime(tools=[add], checkpoint_backend=backend, middlewares=[Alias()])

    sid = await interrupt_mid_tool(
        aliased(), 'Thought: t\nAction: plus {"a": 1, "b": 2}', gate, reached
    )
    # Its reply was journaled before the middleware ran (a guard): reused, not asked again.
    resumed = await aliased().resume(sid, script(FINAL))
    assert resumed.final_answer == "finished" and adds == [1, 1]
    assert [(s.action, s.observation) for s in resumed.steps] == [
        ("add", "3"),
        ("FINAL_ANSWER", ""),
    ]


async def test_a_run_stopped_while_a_call_awaits_approval_is_resumed() -> None:
    backend = ar.InMemoryBackend()
    wired: list[Any] = []
    asked = asyncio.Event()

    @ar.tool
    async def wire(amount: int) -> str:
        """Wires money (not idempotent)."""
        wired.append(amount)
        return "wired"

    async def human(session: ar.AgentSession, tool: str, arguments: Any) -> ar.ApprovalDecision:
        asked.set()
        await asyncio.Event().wait()  # nobody has clicked yet
        return ar.ApprovalDecision("approve")

    async def model(prompt: str) -> str:
        if "Observation: wired" in prompt:
            return FINAL
        return 'Thought: t\nAction: wire {"amount": 5}'

    runtime = ar.AgentRuntime(tools=[wire], checkpoint_backend=backend, approval_handler=human)
    session = runtime.create_session("a", "S")
    task = asyncio.create_task(runtime.run_agent("a", "pay", model, session=session))
    await cancel_once_reached(task, asked)
    # Nothing ran: the journal holds only the model's reply, kept while the approval is asked.
    from llm_agent_runtime.persistence.codec import decode

    assert [k for k in await backend.list_keys() if ":call:" in k] == ["session:S:call:1:0"]
    entry = decode(await backend.load("session:S:call:1:0"), "session:S:call:1:0", "call")
    assert entry["state"] == "received"

    resumed = await ar.AgentRuntime(
        tools=[wire],
        checkpoint_backend=backend,
        approval_handler=lambda s, t, a: ar.ApprovalDecision("approve"),
    ).resume("S", model)
    assert resumed.final_answer == "finished" and wired == [5]


async def test_a_fork_inside_a_later_turn_resumes_that_turn_after_the_earlier_ones() -> None:
    backend = ar.InMemoryBackend()
    effects = Effects()
    # As many rounds a turn as turn 2 takes: the earlier turns' rounds must not count.
    config = ar.AgentConfig(mode="tools", max_iterations=2)
    runtime = ar.AgentRuntime(config, tools=effects.tools(), checkpoint_backend=backend)
    session = runtime.create_session("a", "S")
    for question, (a, b), answer in (("q1", (1, 2), "a1"), ("q2", (3, 4), "a2")):
        call = ar.ScriptedProvider.tool_call_reply([("add", {"a": a, "b": b})])
        await runtime.run_turn(session, question, ar.ScriptedProvider([call, answer]))

    fork_id = await runtime.fork("S", 3)  # after turn 2's tool round
    model = Recorder(["a2 (fork)"])
    forked = await runtime.resume(fork_id, model)
    assert forked.final_answer == "a2 (fork)" and model.calls == 1
    assert chat_of(model.seen[0])[1:] == [
        ("user", "q1", [], None),
        ("assistant", "a1", [], None),
        ("user", "q2", [], None),
        ("assistant", "", ["call_0"], None),
        ("tool", "7", [], "call_0"),
    ]
    assert [m["content"] for m in forked.messages] == ["q1", "a1", "q2", "a2 (fork)"]
    assert forked.prompt == "q2" and len(effects.calls) == 2  # no tool ran again

    # A fork inside the first turn asks that turn's question, with no history.
    model = Recorder(["a1 (fork)"])
    forked = await runtime.resume(await runtime.fork("S", 1), model)
    assert chat_of(model.seen[0])[1:] == [
        ("user", "q1", [], None),
        ("assistant", "", ["call_0"], None),
        ("tool", "3", [], "call_0"),
    ]
    assert [m["content"] for m in forked.messages] == ["q1", "a1 (fork)"]
    # A fork at the end of the first turn is that turn, finished.
    forked = await runtime.resume(await runtime.fork("S", 2), Recorder([]))
    assert forked.final_answer == "a1" and forked.step_count == 2
    assert [m["content"] for m in forked.messages] == ["q1", "a1"]


async def test_a_react_fork_inside_a_later_turn_replays_that_turn_alone() -> None:
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(max_iterations=2), tools=Effects().tools(), checkpoint_backend=backend
    )
    session = runtime.create_session("a", "S")
    one = "Thought: turn one done\nAction: FINAL_ANSWER a1"
    await runtime.run_turn(session, "q1", script(add_step(1), one))
    await runtime.run_turn(session, "q2", script(add_step(2), FINAL))
    prompts: list[str] = []

    async def model(prompt: str) -> str:
        prompts.append(prompt)
        return FINAL

    forked = await runtime.resume(await runtime.fork("S", 3), model)
    assert forked.final_answer == "finished" and len(prompts) == 1
    assert "user: q1\nassistant: a1" in prompts[0] and "Question: q2" in prompts[0]
    assert "step 2" in prompts[0] and "step 1" not in prompts[0]  # turn 2's step alone
    assert "turn one done" not in prompts[0]
    assert [m["content"] for m in forked.messages] == ["q1", "a1", "q2", "finished"]


async def test_a_session_restored_from_json_is_saved_whole_when_continued() -> None:
    tools = Effects().tools()
    config = ar.AgentConfig(mode="tools")
    unsaved = ar.AgentRuntime(config, tools=tools)
    session = unsaved.create_session("a", "S")
    call = ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})])
    await unsaved.run_turn(session, "1+2?", ar.ScriptedProvider([call, "3"]))

    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(config, tools=tools, checkpoint_backend=backend)
    restored = ar.AgentSession.from_json(session.to_json())
    call = ar.ScriptedProvider.tool_call_reply([("add", {"a": 3, "b": 4})])
    assert await runtime.run_turn(restored, "3+4?", ar.ScriptedProvider([call, "7"])) == "7"
    loaded = await ar.AgentSession.load_checkpoint(backend, "S")
    assert loaded == restored and loaded.step_count == 4

    # Its turn interrupted, the session resumes as saved whole too.
    restored = ar.AgentSession.from_json(session.to_json())
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(config, tools=tools, checkpoint_backend=backend)
    with pytest.raises(ar.ProviderError):  # the model fails after the tool round
        await runtime.run_turn(restored, "3+4?", ar.ScriptedProvider([call]))
    resumed = await runtime.resume("S", ar.ScriptedProvider(["7"]))
    assert [s.observation for s in resumed.steps] == ["3", "", "7", ""]
    assert [m["content"] for m in resumed.messages] == ["1+2?", "3", "3+4?", "7"]
    assert await ar.AgentSession.load_checkpoint(backend, "S") == resumed


async def test_runs_that_end_any_way_leave_no_event_counter_behind() -> None:
    @ar.tool(idempotent=True)
    async def work(kind: str) -> str:
        """Works; `slow` hangs."""
        if kind == "slow":
            await asyncio.sleep(10)
        return "ok"

    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools", loop_timeout_ms=100),
        tools=[work],
        checkpoint_backend=ar.InMemoryBackend(),
    )

    def run(kind: str) -> Any:
        calls = [("work", {"kind": kind}), ("work", {"kind": "ok"})]
        provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
        return runtime.run_agent_with_provider("a", "go", provider)

    cancelled = asyncio.create_task(run("slow"))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    finished = await run("ok")
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await run("slow")
    assert finished.final_answer == "done"
    assert runtime._checkpoints is not None and runtime._checkpoints._next_event == {}
    assert not runtime._durable_runs


class BarrierBackend(ar.InMemoryBackend):
    """In-memory checkpoints where two checks that session `child` is free meet before
    either returns: both forks pass the check before either writes."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0
        self.both_checked = asyncio.Event()

    async def list_keys(self, prefix: str = "") -> list[str]:
        keys = await super().list_keys(prefix)
        if prefix.startswith("session:child"):
            self.checks += 1
            if self.checks == 2:
                self.both_checked.set()
            await asyncio.wait_for(self.both_checked.wait(), 5)
        return keys


async def test_of_two_forks_racing_into_one_new_id_one_alone_writes() -> None:
    backend = BarrierBackend()
    effects = Effects()
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend)
    session = await runtime.run_agent("a", "q", script(*(add_step(i) for i in range(3)), FINAL))
    # Both check that the id is free before either writes.
    results = await asyncio.gather(
        runtime.fork(session.session_id, 1, "child"),
        runtime.fork(session.session_id, 3, "child"),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert results.count("child") == 1 and len(errors) == 1
    assert isinstance(errors[0], ar.PersistenceError) and "another fork took it" in str(errors[0])
    won = 1 if results[0] == "child" else 3
    # The child holds the winner's steps alone, and resumes from its fork point.
    child = await ar.AgentSession.load_checkpoint(backend, "child")
    parent = [s.observation for s in session.steps[:won]]
    assert [s.observation for s in child.steps] == parent


async def test_a_fork_cancelled_while_its_copy_lands_leaves_its_new_id_free() -> None:
    # The copy landed though the fork was cancelled (SQLite finishes a cancelled call's
    # write): the cleanup took the claim alone, leaving steps and no meta, an id that could
    # neither be loaded nor forked into again.
    class CopyLandsThenHangs(ar.InMemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            self.hang = False
            self.reached = asyncio.Event()

        async def batch_save(self, items: Any) -> None:
            await super().batch_save(items)
            if self.hang and any(":step:" in k for k in items):
                self.reached.set()
                await asyncio.Event().wait()

    backend = CopyLandsThenHangs()
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = await runtime.run_agent("a", "q", script(add_step(1), FINAL))
    backend.hang = True
    await cancel_once_reached(runtime.fork(session.session_id, 1, "child"), backend.reached)
    assert await backend.list_keys("session:child") == []
    backend.hang = False
    assert await runtime.fork(session.session_id, 1, "child") == "child"


async def test_a_fork_whose_copy_fails_leaves_its_new_id_free() -> None:
    class FailingCopy(ar.InMemoryBackend):
        fail = True

        async def batch_save(self, items: Any) -> None:
            if self.fail and any(":step:" in k for k in items):
                raise ar.PersistenceError("disk full", key="batch")
            await super().batch_save(items)

    backend = FailingCopy()
    backend.fail = False
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = await runtime.run_agent("a", "q", script(add_step(1), FINAL))
    backend.fail = True
    with pytest.raises(ar.PersistenceError, match="disk full"):
        await runtime.fork(session.session_id, 1, "child")
    backend.fail = False
    assert await runtime.fork(session.session_id, 1, "child") == "child"


async def test_a_fork_whose_claim_fails_leaves_its_new_id_free() -> None:
    # Its marker was left: the id was refused to every fork for a minute, while loading it
    # said to fork into it again.
    class FailingClaim(ar.InMemoryBackend):
        fail = False

        async def save_new(self, key: str, value: bytes) -> bool:
            if self.fail and key.endswith(":run:0"):
                raise ar.PersistenceError("server gone", key=key)
            return await super().save_new(key, value)

    backend = FailingClaim()
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = await runtime.run_agent("a", "q", script(add_step(1), FINAL))
    backend.fail = True
    with pytest.raises(ar.PersistenceError, match="server gone"):
        await runtime.fork(session.session_id, 1, "child")
    assert await backend.list_keys("session:child") == []
    backend.fail = False
    assert await runtime.fork(session.session_id, 1, "child") == "child"
    resumed = await runtime.resume("child", script(FINAL))
    assert resumed.steps[0].observation == session.steps[0].observation
    assert resumed.final_answer == session.final_answer


async def test_the_events_of_an_unknown_session_are_refused_not_an_empty_log() -> None:
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = await runtime.run_agent("a", "q", script(FINAL))
    assert await runtime.session_events(session.session_id)
    with pytest.raises(ar.PersistenceError, match="no checkpoint saved") as caught:
        await runtime.session_events("no-such-session")
    assert caught.value.key == "session:no-such-session"


async def test_a_saved_session_run_again_as_itself_is_not_taken_for_a_new_one() -> None:
    # Refusing a new session under a saved id must not refuse the saved session itself: run
    # again after its step saves failed, loaded from its checkpoint, resumed, forked.
    backend = StepSavesDown()
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = runtime.create_session("a", "chat")
    with pytest.raises(ConnectionError):  # no step saved, then the model goes down
        await runtime.run_turn(session, "first", fails_after(add_step(0), add_step(1)))
    assert session.checkpoint_errors >= 2
    backend.down = False
    assert await runtime.run_turn(session, "second", script(FINAL)) == "finished"
    loaded = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert loaded.step_count == 3
    other = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    with pytest.raises(ConnectionError):
        await other.run_turn(loaded, "third", fails_after(add_step(5)))
    resumed = await other.resume("chat", script(FINAL))
    assert [s.observation for s in resumed.steps] == ["1", "2", "", "6", ""]
    assert await other.fork("chat", 4, "fork") == "fork"
    forked = await other.resume("fork", script(FINAL))
    assert [s.observation for s in forked.steps] == ["1", "2", "", "6", ""]
    again = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert await other.run_turn(again, "fourth", script(FINAL)) == "finished"


async def test_bad_prune_fork_and_sweep_arguments_are_persistence_errors() -> None:
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = await runtime.run_agent("a", "q", script(add_step(1), FINAL))
    sid = session.session_id
    for keep_last in (-1, "1", None, 0.5, True):
        with pytest.raises(ar.PersistenceError, match="keep_last must be an int >= 0"):
            await runtime.prune(sid, keep_last)  # type: ignore[arg-type]
    for step in ("1", 1.5, 2.0, True, -1, None):  # told as what it is, not as a range
        with pytest.raises(ar.PersistenceError, match=rf"step must be an int >= 0, got {step!r}"):
            await runtime.fork(sid, step)  # type: ignore[arg-type]
    with pytest.raises(ar.PersistenceError, match="cannot fork at step 3: the session has 2"):
        await runtime.fork(sid, 3)
    for older_than in ("3600", None):
        with pytest.raises(ar.PersistenceError, match="older_than must be a number"):
            await runtime.sweep(older_than)  # type: ignore[arg-type]
    assert await ar.AgentSession.load_checkpoint(backend, sid) == session


async def test_session_ids_that_are_no_strings_and_backends_without_its_methods_are_refused() -> (
    None
):
    # They raised TypeError (`"%" in 123`) or AttributeError (`None.load`).
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = await runtime.run_agent("a", "q", script(add_step(1), FINAL))
    for bad_id in (123, None, b"id"):
        with pytest.raises(ar.PersistenceError, match="a session id must be a string"):
            await runtime.resume(bad_id, script(FINAL))  # type: ignore[arg-type]
        with pytest.raises(ar.PersistenceError, match="a session id must be a string"):
            await runtime.session_events(bad_id)  # type: ignore[arg-type]
        if bad_id is not None:  # None asks fork for a fresh id
            with pytest.raises(ar.PersistenceError, match="a session id must be a string"):
                await runtime.fork(session.session_id, 1, bad_id)  # type: ignore[arg-type]
        with pytest.raises(ar.PersistenceError, match="a session id must be a string"):
            await ar.AgentSession.load_checkpoint(backend, bad_id)  # type: ignore[arg-type]
    with pytest.raises(ar.PersistenceError, match="a checkpoint backend needs save, load"):
        await ar.AgentSession.load_checkpoint(None, session.session_id)  # type: ignore[arg-type]
    assert await ar.AgentSession.load_checkpoint(backend, session.session_id) == session


async def test_resume_refuses_to_go_on_in_the_other_mode() -> None:
    backend = ar.InMemoryBackend()
    effects = Effects()
    react = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend)
    session = react.create_session("a")
    with pytest.raises(ConnectionError):
        await react.run_agent("a", "q", fails_after(add_step(0)), session=session)
    tools = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=effects.tools(), checkpoint_backend=backend
    )
    # A ReAct model's text in tools mode would be taken for the final answer and saved so.
    model = ar.ScriptedProvider([add_step(1), FINAL])
    with pytest.raises(ar.AgentRuntimeError, match="interrupted in react mode and cannot go on"):
        await tools.resume(session.session_id, model)
    loaded = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert loaded is not None and loaded.final_answer is None  # nothing saved as finished
    resumed = await react.resume(session.session_id, model)
    assert resumed.final_answer == "finished"
    assert effects.calls == [("add", (0, 1)), ("add", (1, 1))]

    native = tools.create_session("a")
    call = ar.ScriptedProvider.tool_call_reply([("add", {"a": 5, "b": 1})])

    class Down:
        def __init__(self) -> None:
            self.replies = [call]

        async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
            if not self.replies:
                raise ConnectionError("model down")
            return self.replies.pop(0)

    with pytest.raises(ConnectionError):
        await tools.run_agent_with_provider("a", "q", Down(), session=native)
    with pytest.raises(ar.AgentRuntimeError, match=r"interrupted in tools mode .* in react mode"):
        await react.resume(native.session_id, ar.ScriptedProvider(["done"]))
    with pytest.raises(ar.AgentRuntimeError, match="resume it with a runtime in tools mode"):
        await tools.resume(native.session_id, script(FINAL))  # an infer function is ReAct
    assert (await tools.resume(native.session_id, ar.ScriptedProvider(["done"]))).final_answer


class _FullDisk(ar.InMemoryBackend):
    """Its own error on the tool-call journal's writes, as a backend of the user's may raise."""

    async def save_new(self, key: str, value: bytes) -> bool:
        if ":call:" in key:
            raise OSError(28, "No space left on device")
        return await super().save_new(key, value)


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_backends_own_error_on_an_intent_is_a_persistence_error(mode: str) -> None:
    # It escaped the run as the backend's bare OSError (the meta and final writes were typed).
    ran: list[int] = []

    @ar.tool(idempotent=False)
    async def charge(amount: int) -> str:
        """Charges a card (at most once)."""
        ran.append(amount)
        return f"charged {amount}"

    rt = ar.AgentRuntime(
        ar.AgentConfig(mode=mode),  # type: ignore[arg-type]
        tools=[charge],
        checkpoint_backend=_FullDisk(),
    )
    with pytest.raises(ar.PersistenceError, match="journal entry not written") as raised:
        if mode == "react":
            await rt.run_agent("a", "pay", script('Thought: pay\nAction: charge {"amount": 3}'))
        else:
            reply = ar.ScriptedProvider.tool_call_reply([("charge", {"amount": 3})])
            await rt.run_agent_with_provider("a", "pay", ar.ScriptedProvider([reply, "ok"]))
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.key is not None and raised.value.key.endswith(":call:1:0")
    assert ran == []  # its intent was not written: it did not run


async def test_a_new_sessions_run_lists_no_keys_and_its_turns_number_events_on() -> None:
    # Each run listed its session's event keys to number its events, a brand-new session's
    # too: on Redis a scan of the whole keyspace, so every run slowed as the store grew.
    class Listing(ar.InMemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            self.listed: list[str] = []

        async def list_keys(self, prefix: str = "") -> list[str]:
            self.listed.append(prefix)
            return await super().list_keys(prefix)

    backend = Listing()
    effects = Effects()
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend)
    await runtime.run_agent("a", "q", script(add_step(1), FINAL))
    assert backend.listed == []
    chat = runtime.create_session("a")
    await runtime.run_turn(chat, "first", script(add_step(1), FINAL))
    await runtime.run_turn(chat, "second", script(FINAL))
    keys = await ar.InMemoryBackend.list_keys(backend, f"session:{chat.session_id}:event:")
    assert [int(key.rsplit(":", 1)[1]) for key in keys] == list(range(len(keys)))
    events = [e["type"] for e in await runtime.session_events(chat.session_id)]
    assert events.count("RunStarted") == 2 and events.count("RunFinished") == 2


class StepSavesDownFor(ar.InMemoryBackend):
    """Refuses the writes of step checkpoints from step 2 on, three times (an outage)."""

    refusals = 3

    async def batch_save(self, items: Any) -> None:
        if self.refusals and any(key.endswith(":step:2") for key in items):
            self.refusals -= 1
            raise OSError("disk full")
        await super().batch_save(items)


async def test_an_outage_of_step_checkpoints_is_a_warning_once_and_a_note_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A warning a step, each naming the first pending step as if it failed again: tens of
    # thousands of identical lines in an outage of many runs.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=StepSavesDownFor())
    with caplog.at_level("INFO", logger="llm_agent_runtime"):
        session = await runtime.run_agent("a", "q", script(*(add_step(i) for i in range(6)), FINAL))
    assert session.checkpoint_errors == 3  # each failed write is counted
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    sid = session.session_id
    assert logged == [
        (
            "WARNING",
            f"checkpoint of steps 2-2 of session {sid} failed: OSError('disk full') "
            "(kept for the next save)",
        ),
        ("INFO", f"checkpoint of steps 2-5 of session {sid} saved, after failing"),
    ]


@pytest.mark.parametrize("change", ["summary", "insert", "edit"])
async def test_a_fork_before_the_history_was_rewritten_is_refused_not_given_a_later_one(
    change: str,
) -> None:
    # A fork of turn 2 rebuilt its history as the start of the latest one: after a hook's
    # summary (or an insert, or an edit) it got later turns' text, and lost its own.
    class Rewrite(ar.Middleware):
        def on_user_message(self, session: ar.AgentSession, text: str) -> str:
            if text == "q3":
                if change == "summary":
                    session.messages[:] = [{"role": "system", "content": "summary"}]
                elif change == "insert":
                    session.messages.insert(0, {"role": "system", "content": "note"})
                else:
                    session.messages[0]["content"] = "q1, edited"
            return text

    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(),
        tools=Effects().tools(),
        middlewares=[Rewrite()],
        checkpoint_backend=backend,
    )
    session = runtime.create_session("a", "S")
    await runtime.run_turn(session, "q1", ar.ScriptedProvider([FINAL]))
    await runtime.run_turn(session, "q2", ar.ScriptedProvider([add_step(1), FINAL]))
    await runtime.run_turn(session, "q3", ar.ScriptedProvider([add_step(2), FINAL]))
    await runtime.run_turn(session, "q4", ar.ScriptedProvider([FINAL]))
    for step in (2, 3):  # turn 2, which started with [q1, a1]
        with pytest.raises(ar.PersistenceError, match="the chat history was changed"):
            await runtime.fork("S", step)
    assert not [k for k in backend.data if not k.startswith("session:S:") and k != "session:S"]
    # Turn 1 started with no history; turns 3 and 4 with the rewritten one.
    first = await runtime.resume(await runtime.fork("S", 1), ar.ScriptedProvider([]))
    assert [m["content"] for m in first.messages] == ["q1", "finished"]
    model = Recorder([FINAL])
    third = await runtime.resume(await runtime.fork("S", 4), model)
    expected = {"summary": ["summary"], "insert": ["note", "q1"], "edit": ["q1, edited"]}[change]
    assert [m["content"] for m in third.messages][: len(expected)] == expected
    assert third.prompt == "q3"
