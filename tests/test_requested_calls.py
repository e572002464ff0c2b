"""A step records the call the model asked for when a middleware or an approval changed it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import StepRecord


@ar.tool
def echo(text: str) -> str:
    """Echoes the text."""
    return text


@ar.tool
def shout(text: str) -> str:
    """Echoes the text in capitals."""
    return text.upper()


def upper_edit(session: ar.AgentSession, name: str, arguments: Any) -> ar.ApprovalDecision:
    """Approves every call with its text in capitals."""
    return ar.ApprovalDecision("edit", {"text": arguments["text"].upper()})


class ToShout(ar.Middleware):
    """Sends every `echo` call to `shout`, arguments unchanged."""

    def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
        return ("shout", arguments) if tool == "echo" else None


def native_round(*texts: str) -> ar.ChatResponse:
    return ar.ScriptedProvider.tool_call_reply([("echo", {"text": t}) for t in texts])


async def test_an_approval_edit_is_recorded_beside_the_call_that_ran() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[echo], approval_handler=upper_edit)
    provider = ar.ScriptedProvider([native_round("a", "b"), "done"])
    session = await rt.run_agent_with_provider("a", "q", provider)
    ran = [(s.action, s.action_input, s.observation) for s in session.steps[:2]]
    assert ran == [("echo", {"text": "A"}, "A"), ("echo", {"text": "B"}, "B")]
    assert [s.requested for s in session.steps] == [
        {"name": "echo", "arguments": {"text": "a"}},
        {"name": "echo", "arguments": {"text": "b"}},
        None,  # the final answer
    ]


@ar.tool
def flag(v: Any) -> str:
    """Echoes the flag as it came."""
    return repr(v)


class ToBool(ar.Middleware):
    """Turns a flag of 1 or 0 into True or False: equal values of another type."""

    def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
        return (tool, {"v": bool(arguments["v"])})


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_rewrite_to_an_equal_value_of_another_type_is_recorded(mode: str) -> None:
    # `1 == True`: the rewrite counted as the call the model asked for, so the step said the
    # model wrote True (and a resumed round ran the model's 1, not the middleware's True).
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode), tools=[flag], middlewares=[ToBool()])  # type: ignore[arg-type]
    if mode == "tools":
        first: Any = ar.ScriptedProvider.tool_call_reply([("flag", {"v": 1})])
    else:
        first = 'Thought: t\nAction: flag {"v": 1}'
    last = "done" if mode == "tools" else "Thought: d\nAction: FINAL_ANSWER done"
    session = await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([first, last]))
    step = session.steps[0]
    assert (step.action_input, step.observation) == ({"v": True}, "True")
    assert step.requested == {"name": "flag", "arguments": {"v": 1}}


class Copies(ar.Middleware):
    """Returns a copy of every call's arguments, unchanged."""

    def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
        return (tool, dict(arguments))


async def test_a_copy_of_arguments_holding_nan_is_the_call_asked_for() -> None:
    # NaN equals nothing, not even itself: the copy's very NaN made the call look changed.
    rt = ar.AgentRuntime(ar.AgentConfig(), tools=[flag], middlewares=[Copies()])
    replies = ['Thought: t\nAction: flag {"v": NaN}', "Thought: d\nAction: FINAL_ANSWER ok"]
    session = await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider(replies))
    assert session.steps[0].observation == "nan"
    assert session.steps[0].requested is None


async def test_a_middleware_rewrite_in_react_mode_is_recorded() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(), tools=[echo, shout], middlewares=[ToShout()])
    replies = iter(
        ['Thought: t\nAction: echo {"text": "hi"}', "Thought: d\nAction: FINAL_ANSWER ok"]
    )

    async def infer(prompt: str) -> str:
        return next(replies)

    session = await rt.run_agent("a", "q", infer)
    step = session.steps[0]
    assert (step.action, step.action_input, step.observation) == ("shout", {"text": "hi"}, "HI")
    assert step.requested == {"name": "echo", "arguments": {"text": "hi"}}
    assert session.steps[1].requested is None


async def test_a_call_left_as_asked_records_no_request() -> None:
    # Approved, approved with equal arguments, denied (the call that "ran" is the model's),
    # and a middleware that looks without rewriting: nothing changed, nothing recorded.
    def decide(session: ar.AgentSession, name: str, arguments: Any) -> ar.ApprovalDecision:
        text = arguments["text"]
        if text == "same":
            return ar.ApprovalDecision("edit", {"text": "same"})
        if text == "no":
            return ar.ApprovalDecision("deny", reason="no")
        return ar.ApprovalDecision("approve")

    class Looks(ar.Middleware):
        def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
            return None

    rt = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[echo], approval_handler=decide, middlewares=[Looks()]
    )
    provider = ar.ScriptedProvider([native_round("yes", "same", "no"), "done"])
    session = await rt.run_agent_with_provider("a", "q", provider)
    assert [s.error_kind for s in session.steps[:3]] == [None, None, "permanent"]
    assert [s.requested for s in session.steps] == [None] * 4


@pytest.mark.parametrize("guarded", [False, True])
async def test_react_calls_left_as_asked_record_no_request(guarded: bool) -> None:
    # Whatever form the input takes (text, JSON, none, a tool that does not exist), a call
    # no guard changed records no request, with or without a guard looking at it.
    class Looks(ar.Middleware):
        def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
            return None

    rt = ar.AgentRuntime(ar.AgentConfig(), tools=[echo], middlewares=[Looks()] if guarded else [])
    replies = iter(
        [
            "Thought: t\nAction: echo hi",
            'Thought: t\nAction: echo {"text": "x"}',
            "Thought: t\nAction: echo",
            'Thought: t\nAction: nope {"a": 1}',
            "Thought: d\nAction: FINAL_ANSWER ok",
        ]
    )

    async def infer(prompt: str) -> str:
        return next(replies)

    session = await rt.run_agent("a", "q", infer)
    assert [s.observation for s in session.steps[:2]] == ["hi", "x"]
    assert [s.error_kind for s in session.steps[2:4]] == ["permanent", "not_found"]
    assert [s.requested for s in session.steps] == [None] * 5


def upper_in_place(session: ar.AgentSession, name: str, arguments: Any) -> ar.ApprovalDecision:
    """Approves every call with its text in capitals, edited in the dict it is given."""
    arguments["text"] = arguments["text"].upper()
    return ar.ApprovalDecision("edit", arguments)


class UpperInPlace(ar.Middleware):
    """Puts every call's text in capitals, in the dict it is given."""

    def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
        arguments["text"] = arguments["text"].upper()
        return (tool, arguments)


class Recording(ar.ScriptedProvider):
    """Keeps the tool calls of the assistant messages each request sends back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent_back: list[Any] = []

    async def chat(self, messages: Any, *args: Any, **kwargs: Any) -> ar.ChatResponse:
        for message in messages:
            for call in message.tool_calls or ():
                self.sent_back.append(call.arguments)
        return await super().chat(messages, *args, **kwargs)


@pytest.mark.parametrize("mode", ["react", "tools"])
@pytest.mark.parametrize("guard", ["approval", "middleware"])
async def test_a_guard_that_edits_the_arguments_in_place_leaves_the_request_as_asked(
    mode: str, guard: str
) -> None:
    guards: dict[str, Any] = (
        {"approval_handler": upper_in_place}
        if guard == "approval"
        else {"middlewares": [UpperInPlace()]}
    )
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode), tools=[echo], **guards)  # type: ignore[arg-type]
    if mode == "tools":
        provider = Recording([native_round("a"), "done"])
        session = await rt.run_agent_with_provider("a", "q", provider)
        assert provider.sent_back == [{"text": "a"}]  # the model's own call, sent back
    else:
        replies = iter(
            ['Thought: t\nAction: echo {"text": "a"}', "Thought: d\nAction: FINAL_ANSWER ok"]
        )

        async def infer(prompt: str) -> str:
            return next(replies)

        session = await rt.run_agent("a", "q", infer)
    step = session.steps[0]
    assert (step.action_input, step.observation) == ({"text": "A"}, "A")
    assert step.requested == {"name": "echo", "arguments": {"text": "a"}}


async def test_the_requested_call_survives_a_json_round_trip() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[echo], approval_handler=upper_edit)
    provider = ar.ScriptedProvider([native_round("a"), "done"])
    session = await rt.run_agent_with_provider("a", "q", provider)
    again = ar.AgentSession.from_json(session.to_json())
    assert again == session
    assert again.steps[0].requested == {"name": "echo", "arguments": {"text": "a"}}
    assert session.steps[1].to_dict()["requested"] is None
    assert ar.Step.from_dict(session.steps[0].to_dict()) == session.steps[0]
    # A step saved before steps had the field loads without it.
    older = {k: v for k, v in session.steps[1].to_dict().items() if k != "requested"}
    assert ar.Step.from_dict(older) == session.steps[1]


@pytest.mark.parametrize(
    "requested",
    [
        "echo",
        {"name": "echo"},
        {"name": 1, "arguments": {}},
        {"name": "echo", "arguments": {}, "extra": 1},
    ],
)
def test_a_malformed_requested_call_is_a_persistence_error(requested: Any) -> None:
    data = {"thought": "t", "action": "echo", "requested": requested}
    with pytest.raises(ar.PersistenceError, match="'requested'"):
        ar.Step.from_dict(data)


async def test_a_checkpointed_run_keeps_the_requested_call_and_a_resume_sends_it_back() -> None:
    backend = ar.InMemoryBackend()
    rt = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=[echo],
        approval_handler=upper_edit,
        checkpoint_backend=backend,
    )

    class FailsAfterTheRound:
        """Replies with one tool round, then fails: the run stops after its first step."""

        def __init__(self) -> None:
            self.calls = 0

        async def chat(self, messages: list[ar.Message], **kwargs: Any) -> ar.ChatResponse:
            self.calls += 1
            if self.calls == 1:
                return native_round("a")
            raise ar.ProviderError("down")

    session = rt.create_session("a")
    with pytest.raises(ar.ProviderError):
        await rt.run_agent_with_provider("a", "q", FailsAfterTheRound(), session=session)
    loaded = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert loaded.steps[0].requested == {"name": "echo", "arguments": {"text": "a"}}
    seen: list[list[ar.Message]] = []

    class Answers:
        async def chat(self, messages: list[ar.Message], **kwargs: Any) -> ar.ChatResponse:
            seen.append(list(messages))
            return ar.ChatResponse(text="done")

    resumed = await rt.resume(session.session_id, Answers())
    assert resumed.final_answer == "done"
    assert resumed.steps[0].requested == {"name": "echo", "arguments": {"text": "a"}}
    # The model is shown the call it asked for, answered by the edited call's result.
    asked = [m for m in seen[0] if m.role == "assistant" and m.tool_calls]
    assert [(c.name, c.arguments) for c in asked[0].tool_calls] == [("echo", {"text": "a"})]
    assert [m.content for m in seen[0] if m.role == "tool"] == ["A"]


async def test_a_record_of_the_earlier_format_keeps_its_requested_call() -> None:
    # Records written before a step held its requested call kept it beside the step.
    step = ar.Step("t", "echo", {"text": "A"}, "A")
    older = {
        "step": step.to_dict(),
        "reply": None,
        "round_text": "t",
        "call_id": "c1",
        "round_start": True,
        "requested": {"name": "echo", "arguments": {"text": "a"}},
    }
    record = StepRecord.from_dict(json.loads(json.dumps(older)))
    assert record.step.requested == {"name": "echo", "arguments": {"text": "a"}}
    assert "requested" not in record.to_dict()  # written inside the step now
    assert record.to_dict()["step"]["requested"] == {"name": "echo", "arguments": {"text": "a"}}
    assert StepRecord.from_dict(record.to_dict()) == record


async def test_a_cancelled_edited_call_records_the_request_in_its_step() -> None:
    started = asyncio.Event()

    @ar.tool(name="echo")
    async def slow_echo(text: str) -> str:
        """Echoes the text, slowly."""
        started.set()
        await asyncio.sleep(60)
        return text

    rt = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[slow_echo], approval_handler=upper_edit
    )
    session = rt.create_session("a")
    provider = ar.ScriptedProvider([native_round("a"), "done"])
    run = asyncio.ensure_future(rt.run_agent_with_provider("a", "q", provider, session=session))
    await started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    (step,) = session.steps
    assert step.action_input == {"text": "A"}
    assert step.requested == {"name": "echo", "arguments": {"text": "a"}}


async def test_a_guard_that_changes_nothing_passes_the_models_own_objects() -> None:
    # Arguments holding an object of a provider's own (no value equality): the guard's copy
    # shares it, so the call is not taken for a changed one, and the tool gets the object.
    class Token:
        pass

    token = Token()
    seen: list[Any] = []

    @ar.tool
    def use(token: Any) -> str:
        """Uses a token."""
        seen.append(token)
        return "ok"

    def approve(session: ar.AgentSession, name: str, arguments: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("approve")

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[use], approval_handler=approve)
    call = ar.ToolCall("c1", "use", {"token": token})
    provider = ar.ScriptedProvider([ar.ChatResponse(tool_calls=[call]), "done"])
    session = await rt.run_agent_with_provider("a", "q", provider)
    assert seen == [token] and seen[0] is token
    assert session.steps[0].requested is None
