"""What step records say and a resume reads from them: final answers, the calls the model
asked for, the event log's contents, and strict JSON in every record."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import StepRecord
from llm_agent_runtime.persistence.codec import encode
from llm_agent_runtime.providers.base import ChatResponse, StreamEnd, TextDelta, ToolCall, Usage
from llm_agent_runtime.runtime import ApprovalDecision, Middleware

TOOLS = ar.AgentConfig(mode="tools")


@ar.tool
def add(a: int, b: int) -> int:
    """Adds."""
    return a + b


@ar.tool
def transfer(amount: int) -> str:
    """Transfers money."""
    return f"sent {amount}"


class Recorder(ar.ScriptedProvider):
    """A scripted provider that keeps the messages of every call (it fails once run out)."""

    def __init__(self, replies: Any) -> None:
        super().__init__(replies)
        self.seen: list[list[Any]] = []

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
        self.seen.append(
            [
                (m.role, m.content, [(c.id, c.name, c.arguments) for c in m.tool_calls], m.name)
                for m in messages
            ]
        )
        return await super().chat(messages, tools, **params)


def record(action: str, call_id: str | None = None, error_kind: str | None = None) -> StepRecord:
    step = ar.Step("t", action, "42" if action == "FINAL_ANSWER" else {}, "", error_kind)
    return StepRecord(step, call_id=call_id, round_start=call_id is not None)


# ------------------------------------------------------------------ final answers
def test_a_final_answer_is_a_final_answer_step_without_a_call_id_or_an_error() -> None:
    assert record("FINAL_ANSWER").is_final  # a final answer, either mode
    assert not record("FINAL_ANSWER", "call_0", "not_found").is_final  # a made-up tool
    assert not record("FINAL_ANSWER", "call_0").is_final  # a native call, whatever it did
    assert not record("FINAL_ANSWER", None, "not_found").is_final  # a ReAct call rewritten
    assert not record("add", "call_0").is_final and not record("add").is_final
    # Records of the versions before: a final answer reads as one.
    old = {"step": record("FINAL_ANSWER").step.to_dict(), "reply": "r", "round_text": None}
    old.update(call_id=None, round_start=False)
    assert StepRecord.from_dict(old).is_final


async def test_a_native_call_of_a_tool_named_final_answer_is_resumed_as_a_call() -> None:
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(TOOLS, tools=[add], checkpoint_backend=backend)
    made_up = ar.ScriptedProvider.tool_call_reply([("FINAL_ANSWER", {"answer": "5"})])
    first = Recorder([made_up])  # then it runs out: the run fails at its 2nd model call
    session = runtime.create_session("a")
    with pytest.raises(ar.ProviderError):
        await runtime.run_agent_with_provider("a", "2+3?", first, session=session)
    assert [(s.action, s.error_kind) for s in session.steps] == [("FINAL_ANSWER", "not_found")]
    loaded = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert loaded.final_answer is None and not loaded.has_final_answer()
    again = Recorder(["5"])
    resumed = await runtime.resume(session.session_id, again)
    assert resumed.final_answer == "5" and again.calls == 1
    assert again.seen[0] == first.seen[1]  # the model is sent what it was sent before
    reloaded = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert reloaded.final_answer == "5" and reloaded.step_count == 2
    assert ar.AgentSession.from_json(resumed.to_json()).final_answer == "5"


# ------------------------------------------------------------------ runs stopped unanswered
class FinalFailsOnce(ar.InMemoryBackend):
    """Fails the first write of a final checkpoint (`session:<id>`, one `:`)."""

    failed = False

    async def batch_save(self, items: Any) -> None:
        if not self.failed and any(k.count(":") == 1 for k in items):
            self.failed = True
            raise OSError("connection reset")
        await super().batch_save(items)


@ar.tool
def boom(n: int) -> str:
    """Fails."""
    raise ValueError("permanent failure")


def test_a_step_record_says_the_run_stopped_there_only_when_it_did() -> None:
    stopped = record("boom", error_kind="permanent")
    assert "stopped" not in stopped.to_dict()  # most records: left out
    stopped.stopped = True
    assert StepRecord.from_dict(stopped.to_dict()).stopped
    assert not StepRecord.from_dict({"step": stopped.step.to_dict()}).stopped  # older records
    with pytest.raises(ar.PersistenceError, match="'stopped' must be a bool"):
        StepRecord.from_dict({**stopped.to_dict(), "stopped": 1})


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_run_that_error_recovery_stop_ended_is_closed_by_resume_not_run_on(
    mode: str,
) -> None:
    ran: list[int] = []

    @ar.tool
    def pay(n: int) -> str:
        """Pays."""
        ran.append(n)
        return "paid"

    backend = FinalFailsOnce()
    stop = ar.AgentConfig(mode=mode, error_recovery="stop")  # type: ignore[arg-type]
    runtime = ar.AgentRuntime(stop, tools=[boom, pay], checkpoint_backend=backend)
    session = runtime.create_session("a", "ST")
    if mode == "react":
        failing: Any = ar.ScriptedProvider(['Thought: t\nAction: boom {"n": 1}'])
        again: Any = ar.ScriptedProvider(['Thought: t\nAction: pay {"n": 2}'])
    else:
        failing = ar.ScriptedProvider(
            [ar.ScriptedProvider.tool_call_reply([("pay", {"n": 1}), ("boom", {"n": 1})])]
        )
        again = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply([("pay", {"n": 2})])])
    with pytest.raises(ar.PersistenceError, match="connection reset"):  # stopped, not closed
        await runtime.run_turn(session, "go", failing)
    assert session.steps[-1].action == "boom" and ran == ([] if mode == "react" else [1])
    # Resumed by a runtime that would go on after a failure: the run had ended, whatever
    # the config says now, so it is closed as it stopped, with no model call and no tool.
    retry = ar.AgentRuntime(
        ar.AgentConfig(mode=mode),  # type: ignore[arg-type]
        tools=[boom, pay],
        checkpoint_backend=backend,
    )
    resumed = await retry.resume("ST", again)
    assert again.calls == 0 and 2 not in ran
    assert resumed.final_answer is None and resumed.steps == session.steps
    assert [m["content"] for m in resumed.messages] == ["go", ""]  # a turn with no answer
    saved = await ar.AgentSession.load_checkpoint(backend, "ST")
    assert saved == resumed
    assert (await retry.resume("ST", again)) == resumed and again.calls == 0  # closed now


# ------------------------------------------------------------------ the model's calls
async def test_a_resumed_run_sends_the_call_the_model_asked_for_not_the_edited_one() -> None:
    def edit(session: Any, name: str, arguments: Any) -> ApprovalDecision:
        return ApprovalDecision("edit", {"amount": 10})

    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(
        TOOLS, tools=[transfer], checkpoint_backend=backend, approval_handler=edit
    )
    asked = ChatResponse(tool_calls=[ToolCall("c1", "transfer", {"amount": 100})])
    first = Recorder([asked])
    session = runtime.create_session("a")
    with pytest.raises(ar.ProviderError):
        await runtime.run_agent_with_provider("a", "q", first, session=session)
    assert session.steps[0].action_input == {"amount": 10}  # the step holds what ran
    again = Recorder(["done"])
    resumed = await runtime.resume(session.session_id, again)
    assert resumed.final_answer == "done"
    assert again.seen[0] == first.seen[1]
    assert again.seen[0][2][2] == [("c1", "transfer", {"amount": 100})]


async def test_a_resumed_run_sends_the_tool_name_the_model_used_before_a_middleware() -> None:
    class Renames(Middleware):
        def on_tool_call(self, session: Any, tool: str, arguments: Any) -> Any:
            return ("add", arguments) if tool == "plus" else None

    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(
        TOOLS, tools=[add], checkpoint_backend=backend, middlewares=[Renames()]
    )
    plus = ar.ScriptedProvider.tool_call_reply([("plus", {"a": 1, "b": 2})])
    first = Recorder([plus])
    session = runtime.create_session("a")
    with pytest.raises(ar.ProviderError):
        await runtime.run_agent_with_provider("a", "q", first, session=session)
    assert session.steps[0].action == "add" and session.steps[0].observation == "3"
    again = Recorder(["3"])
    await runtime.resume(session.session_id, again)
    assert again.seen[0] == first.seen[1]
    assert again.seen[0][2][2][0][1] == "plus" and again.seen[0][3][3] == "plus"


async def test_a_step_record_keeps_the_requested_call_only_when_it_differs() -> None:
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(TOOLS, tools=[add], checkpoint_backend=backend)
    plain = ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})])
    session = await runtime.run_agent_with_provider("a", "q", ar.ScriptedProvider([plain, "3"]))
    store = runtime._checkpoints
    assert store is not None
    state = await store.load(session.session_id)
    assert [r.step.requested for r in state.records] == [None, None]
    assert state.records[0].to_dict()["step"]["requested"] is None
    edited = StepRecord(ar.Step("t", "add", {"a": 1}), call_id="c1", round_start=True)
    edited.step.requested = {"name": "add", "arguments": {"a": 2}}
    assert StepRecord.from_dict(json.loads(json.dumps(edited.to_dict()))) == edited
    with pytest.raises(ar.PersistenceError, match="'requested'"):
        StepRecord.from_dict({**edited.to_dict(), "requested": {"name": 1, "arguments": {}}})
    wrong = {**edited.step.to_dict(), "requested": {"name": 1, "arguments": {}}}
    with pytest.raises(ar.PersistenceError, match="'requested'"):
        StepRecord.from_dict({**edited.to_dict(), "step": wrong})


# ------------------------------------------------------------------ the event log
class Streamer:
    """A provider that streams its reply in pieces, as the HTTP providers do."""

    def __init__(self) -> None:
        self.streamed = 0

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> ChatResponse:
        return ChatResponse(text="word " * 50, usage=Usage(10, 50), stop_reason="stop")

    async def chat_stream(self, messages: Any, tools: Any = None, **params: Any) -> Any:
        self.streamed += 1
        for _ in range(50):
            yield TextDelta("word ")
        yield StreamEnd(ChatResponse(text="word " * 50, usage=Usage(10, 50), stop_reason="stop"))


async def test_the_event_log_alone_neither_streams_nor_logs_text_deltas() -> None:
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(TOOLS, checkpoint_backend=backend)
    provider = Streamer()
    session = await runtime.run_agent_with_provider("a", "q", provider)
    assert session.final_answer == "word " * 50 and provider.streamed == 0
    logged = [e["type"] for e in await runtime.session_events(session.session_id)]
    assert logged == ["RunStarted", "LlmResponse", "RunFinished"]
    assert not runtime.events.listening and runtime.events.active


async def test_a_listener_gets_the_text_deltas_and_the_log_does_not_keep_them() -> None:
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(TOOLS, checkpoint_backend=backend)
    deltas: list[str] = []
    runtime.events.on(lambda e: deltas.append(e.text) if isinstance(e, ar.LlmTextDelta) else None)
    provider = Streamer()
    session = await runtime.run_agent_with_provider("a", "q", provider)
    assert provider.streamed == 1 and "".join(deltas) == "word " * 50
    logged = [e["type"] for e in await runtime.session_events(session.session_id)]
    assert logged == ["RunStarted", "LlmResponse", "RunFinished"]
    react = ar.AgentRuntime(checkpoint_backend=backend)  # a text model's one delta too
    answered = await react.run_agent_with_provider(
        "a", "q", ar.ScriptedProvider(["Thought: t\nAction: FINAL_ANSWER ok"])
    )
    logged = [e["type"] for e in await react.session_events(answered.session_id)]
    assert logged == ["RunStarted", "LlmResponse", "RunFinished"]


# ------------------------------------------------------------------ strict JSON
def _strict(raw: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(raw.partition(b"\n")[2], parse_constant=refuse)


async def test_no_record_holds_a_nan_or_an_infinity() -> None:
    @ar.tool
    def scale(x: float, y: float) -> dict[str, float]:
        """Scales (not idempotent: its calls are journaled)."""
        return {"x": x, "y": y}

    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(TOOLS, tools=[scale], checkpoint_backend=backend)
    runtime.events.on(lambda event: None)  # every event, with its arguments, is logged
    call = ar.ScriptedProvider.tool_call_reply([("scale", {"x": float("nan"), "y": float("inf")})])
    session = await runtime.run_agent_with_provider("a", "q", ar.ScriptedProvider([call, "ok"]))
    keys = await backend.list_keys("")
    assert any(":call:" in k for k in keys) and any(":event:" in k for k in keys)
    records = await backend.batch_load(keys)
    assert all(_strict(raw) is not None for raw in records.values())
    assert session.steps[0].observation == '{"x": "nan", "y": "inf"}'
    loaded = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert loaded.steps[0].action_input == {"x": "nan", "y": "inf"}
    assert b"NaN" in encode("step", {"x": float("nan")})  # the codec alone would write it


# ------------------------------------------------------------------ malformed journal entries
class _Hang:
    """A tool whose call `i == 1` waits until `release` (the process dies meanwhile)."""

    def __init__(self) -> None:
        self.release = False

    async def __call__(self, args: dict[str, Any]) -> str:
        while args.get("i") == 1 and not self.release:
            await asyncio.sleep(0.01)
        return "ok"


async def _interrupted_round() -> tuple[ar.InMemoryBackend, str, ar.ToolSpec]:
    """A tools-mode session whose round of two calls was cut off during its second call."""
    hang = _Hang()
    tool = ar.ToolSpec("t", "waits", hang)
    backend = ar.InMemoryBackend()
    calls = [ToolCall("c0", "t", {"i": 0}), ToolCall("c1", "t", {"i": 1})]
    round1 = ChatResponse(tool_calls=calls, usage=Usage(1, 1), stop_reason="tool_calls")
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[tool], checkpoint_backend=backend
    )
    session = runtime.create_session("a")
    run = asyncio.ensure_future(
        runtime.run_agent_with_provider("a", "go", ar.ScriptedProvider([round1]), session=session)
    )
    while len(await backend.list_keys(f"session:{session.session_id}:call:1:")) < 2:
        await asyncio.sleep(0.01)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    hang.release = True
    return backend, session.session_id, tool


@pytest.mark.parametrize(
    ("index", "entry", "unreadable"),
    [
        (1, None, True),
        (1, [], True),
        (1, {"state": "intent", "run": 7, "round": {"text": "", "calls": []}}, True),
        (0, {"state": "bogus", "round": {"text": "", "calls": [{}]}, "index": 0}, False),
        (1, {"state": "intent"}, False),  # neither the round nor the reply
        (0, {"state": "done"}, False),  # no outcome either
    ],
    ids=["null", "list", "run-not-a-string", "unknown-state", "no-round", "no-outcome"],
)
async def test_a_journal_entry_of_the_wrong_shape_is_a_persistence_error_naming_it(
    index: int, entry: Any, unreadable: bool
) -> None:
    # A bare TypeError, KeyError or AttributeError came out of resume and settle_call, and
    # an entry whose run was not a string was taken for another run's: its call ran again.
    backend, session_id, tool = await _interrupted_round()
    key = f"session:{session_id}:call:1:{index}"
    await backend.save(key, encode("call", entry))
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[tool], checkpoint_backend=backend
    )
    done = ChatResponse(text="done", usage=Usage(1, 1), stop_reason="stop")
    with pytest.raises(ar.PersistenceError) as caught:
        await runtime.resume(session_id, ar.ScriptedProvider([done]))
    if unreadable:  # not an entry at all: every reader of the step's journal says so
        assert caught.value.key == key
        with pytest.raises(ar.PersistenceError, match="journal entry") as caught:
            await runtime.settle_call(session_id, 1, 1, "ok")
        assert caught.value.key == key
    elif "index" in entry:
        assert caught.value.key == key
    else:  # an entry with no index of its own is named by its step's prefix
        assert caught.value.key == f"session:{session_id}:call:1:"


@pytest.mark.parametrize("with_meta", [False, True])
async def test_a_final_checkpoint_holding_null_is_a_corrupt_record_not_none(
    with_meta: bool,
) -> None:
    # Read as no final checkpoint at all: a bare AssertionError without a meta record, and
    # with one the session loaded from its steps as if it had not finished.
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    session = runtime.create_session("a", "s")
    await runtime.run_agent(
        "a", "q", _replies("Thought: t\nAction: FINAL_ANSWER 4"), session=session
    )
    if not with_meta:
        await backend.delete("session:s:meta")
    await backend.save("session:s", encode("session", None))
    with pytest.raises(ar.PersistenceError, match="holds no 'session'") as caught:
        await ar.AgentSession.load_checkpoint(backend, "s")
    assert caught.value.key == "session:s"


@pytest.mark.parametrize("event", [[1, 2], "text", {"no_type": True}, None])
async def test_an_event_record_of_the_wrong_shape_is_a_persistence_error_naming_it(
    event: Any,
) -> None:
    # It came back among the event dicts: a reader's `e["type"]` failed far from the cause.
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    session = runtime.create_session("a", "s")
    await runtime.run_agent(
        "a", "q", _replies("Thought: t\nAction: FINAL_ANSWER 4"), session=session
    )
    key = (await backend.list_keys("session:s:event:"))[1]
    await backend.save(key, encode("event", event))
    with pytest.raises(ar.PersistenceError, match="not an object with a 'type'") as caught:
        await runtime.session_events("s")
    assert caught.value.key == key


def _replies(*replies: str) -> Any:
    queue = list(replies)

    async def infer(prompt: str) -> str:
        return queue.pop(0)

    return infer


def test_a_final_answer_step_record_must_hold_its_answer_as_text() -> None:
    # It loaded, and a resume then saved a final checkpoint with a list as its answer, which
    # no later load took back.
    data = record("FINAL_ANSWER").to_dict()
    data["step"]["action_input"] = [4, 2]
    with pytest.raises(ar.PersistenceError, match="final answer must hold it as a string"):
        StepRecord.from_dict(data)
    data["step"]["action"] = "add"  # a tool call's input may be anything JSON holds
    assert StepRecord.from_dict(data).step.action_input == [4, 2]


async def test_a_meta_record_whose_history_holds_no_session_message_is_refused() -> None:
    # A history of messages a session refuses ("robot") was taken in, then saved into a
    # final checkpoint that no later load took back.
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    session = runtime.create_session("a", "s")
    await runtime.run_turn(session, "q", _replies("Thought: t\nAction: FINAL_ANSWER 4"))
    await backend.delete("session:s")  # interrupted, as it were, before its final checkpoint
    meta = json.loads((await backend.load("session:s:meta") or b"").split(b"\n", 1)[1])
    meta["history"] = [{"role": "robot", "content": "hi"}]
    await backend.save("session:s:meta", encode("meta", meta))
    with pytest.raises(ar.PersistenceError, match="a list of messages 'history'") as caught:
        await ar.AgentSession.load_checkpoint(backend, "s")
    assert caught.value.key == "session:s:meta"
