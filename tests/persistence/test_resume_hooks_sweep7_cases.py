"""Resuming interrupted checkpointed runs that middlewares, approvals and capabilities shape.

A run cut off (cancelled, or its process gone: a new runtime resumes it) must go on with
what was decided before the cut: an approval's decision (an edit, a denial) and a hook's
rewrite of a call are neither asked for again nor lost, the capabilities are not charged
twice for one call, and the resumed session's steps hold what the interrupted run measured
(tokens, model time) for the step it continues.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import llm_agent_runtime as ar

from .conftest import cancel_once_reached, cut_off


class Recorder(ar.ScriptedProvider):
    """A scripted provider that keeps the messages of every call."""

    def __init__(self, replies: Any) -> None:
        super().__init__(replies)
        self.seen: list[list[tuple[str, str, list[tuple[str, Any]]]]] = []

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
        self.seen.append(
            [(m.role, m.content, [(c.name, c.arguments) for c in m.tool_calls]) for m in messages]
        )
        return await super().chat(messages, tools, **params)


def held_look() -> tuple[ar.ToolSpec, list[int], asyncio.Event, list[bool]]:
    """An idempotent `look` tool, the `x` of each call it ran, the event a call sets when it
    starts, and the flag: while `holding[0]` is true a call never returns (it is still out
    when the run is cut off)."""
    ran: list[int] = []
    started, holding = asyncio.Event(), [True]

    @ar.tool(idempotent=True)
    async def look(x: int) -> str:
        """Looks a number up (safe to repeat)."""
        ran.append(x)
        started.set()
        if holding[0]:
            await asyncio.Event().wait()
        return f"seen {x}"

    return look, ran, started, holding


FRESH = pytest.mark.parametrize("fresh", [False, True], ids=["same runtime", "new runtime"])


# --- a parallel round cut off before its approved calls started ------------------------------


@FRESH
async def test_a_round_cut_off_before_its_approved_calls_started_runs_them_as_decided(
    fresh: bool, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    # One call at a time: calls 2 and 3 were guarded (hooked, charged, decided) with call 1,
    # and wait for its slot when the run is cut off.
    look, ran, started, holding = held_look()

    asked: list[int] = []

    def handler(session: ar.AgentSession, tool: str, arguments: Any) -> ar.ApprovalDecision:
        asked.append(arguments["x"])
        if arguments["x"] == 102:
            return ar.ApprovalDecision("deny", reason="not that one")
        return ar.ApprovalDecision("edit", {"x": arguments["x"] * 10})

    class Shift(ar.Middleware):
        def __init__(self) -> None:
            self.seen: list[int] = []

        def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
            self.seen.append(arguments["x"])
            return tool, {"x": arguments["x"] + 100}

    shift = Shift()
    capabilities = ar.CapabilitySet(max_actions=3)  # the round's three calls, once

    def runtime() -> ar.AgentRuntime:
        return ar.AgentRuntime(
            ar.AgentConfig(mode="tools", max_parallel_tool_calls=1),
            tools=[look],
            checkpoint_backend=open_backend(),
            middlewares=[shift],
            approval_handler=handler,
            capabilities=capabilities,
        )

    first = runtime()
    session = first.create_session("a")
    calls = [("look", {"x": n}) for n in (1, 2, 3)]
    model = Recorder([ar.ScriptedProvider.tool_call_reply(calls)])
    await cancel_once_reached(first.run_turn(session, "q", model), started)
    assert asked == [101, 102, 103] and shift.seen == [1, 2, 3] and ran == [1010]
    assert capabilities.actions_taken == 3
    holding[0] = False

    closing = Recorder(["done"])
    resumed = await (runtime() if fresh else first).resume(session.session_id, closing)
    # The cut-off call is repeated as it was journaled; the two that waited run as decided
    # before the cut (one edited, one denied), asked of no one again, charged no action again.
    assert asked == [101, 102, 103] and shift.seen == [1, 2, 3]
    assert capabilities.actions_taken == 3
    assert ran == [1010, 1010, 1030]
    assert [(s.action, s.action_input, s.observation, s.error_kind) for s in resumed.steps] == [
        ("look", {"x": 1010}, "seen 1010", None),
        ("look", {"x": 102}, "error: tool call 'look' denied: not that one", "permanent"),
        ("look", {"x": 1030}, "seen 1030", None),
        ("FINAL_ANSWER", "done", "", None),
    ]
    # The model is shown the calls it asked for, with their results.
    assert closing.seen[0][2:] == [
        ("assistant", "", calls),
        ("tool", "seen 1010", []),
        ("tool", "error: tool call 'look' denied: not that one", []),
        ("tool", "seen 1030", []),
    ]
    events = await first.session_events(session.session_id)
    types = [e["type"] for e in events]
    resumed_events = [
        (e["type"], e.get("step"), e.get("arguments"))
        for e in events[types.index("ErrorEvent") + 1 :]
    ]
    assert resumed_events == [
        ("RunStarted", None, None),
        ("ToolCallStarted", 0, {"x": 1010}),
        ("ToolCallFinished", 0, None),
        ("ToolCallStarted", 1, {"x": 102}),
        ("ToolCallFinished", 1, None),
        ("ToolCallStarted", 2, {"x": 1030}),
        ("ToolCallFinished", 2, None),
        ("LlmResponse", 3, None),
        ("RunFinished", None, None),
    ]
    assert await ar.AgentSession.load_checkpoint(open_backend(), session.session_id) == resumed


# --- what a resumed step keeps of the interrupted run's model call ---------------------------


@pytest.mark.parametrize("mode", ["react", "tools"])
@FRESH
async def test_a_resumed_step_keeps_the_model_time_its_journaled_reply_took(
    mode: str, fresh: bool, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    started, holding = asyncio.Event(), [True]

    @ar.tool
    async def send(text: str, idempotency_key: str) -> str:
        """Sends a message once per key."""
        started.set()
        if holding[0]:
            await asyncio.Event().wait()
        return "sent"

    def runtime() -> ar.AgentRuntime:
        return ar.AgentRuntime(
            ar.AgentConfig(mode=mode), tools=[send], checkpoint_backend=open_backend()
        )

    first = runtime()
    session = first.create_session("a")
    model: Any
    closing: Any
    if mode == "tools":
        model = ar.ScriptedProvider(
            [ar.ScriptedProvider.tool_call_reply([("send", {"text": "hi"})])]
        )
        closing = ar.ScriptedProvider(["done"])
    else:
        replies = ['Thought: send it\nAction: send {"text": "hi"}']

        async def model(prompt: str) -> str:
            await asyncio.sleep(0)  # a model call takes some time
            return replies.pop(0)

        async def closing(prompt: str) -> str:
            return "Thought: sent\nAction: FINAL_ANSWER done"

    await cancel_once_reached(first.run_turn(session, "q", model), started)
    holding[0] = False
    [response] = [
        e for e in await first.session_events(session.session_id) if e["type"] == "LlmResponse"
    ]
    assert response["model_ms"] > 0
    resumed = await (runtime() if fresh else first).resume(session.session_id, closing)
    sent = resumed.steps[0]
    assert (sent.action, sent.observation) == ("send", "sent")
    # The step's model time is the reply's, as the interrupted run measured and reported it.
    assert sent.model_ms == response["model_ms"]


@pytest.mark.parametrize(
    "decided",
    [{"0": None}, [None], [None, ["look", {}, "denied", None]], [None, [7, {}, None, None]]],
    ids=["not-a-list", "too-short", "denial-without-kind", "tool-not-a-string"],
)
async def test_a_round_decision_of_the_wrong_shape_is_a_persistence_error_naming_it(
    decided: Any, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    from llm_agent_runtime.persistence.codec import decode, encode

    look, ran, started, holding = held_look()

    def runtime() -> ar.AgentRuntime:
        return ar.AgentRuntime(
            ar.AgentConfig(mode="tools", max_parallel_tool_calls=1),
            tools=[look],
            checkpoint_backend=open_backend(),
            approval_handler=lambda s, t, a: ar.ApprovalDecision("approve"),
        )

    first = runtime()
    session = first.create_session("a")
    calls = [("look", {"x": n}) for n in (1, 2)]
    model = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls)])
    await cancel_once_reached(first.run_turn(session, "q", model), started)
    holding[0] = False
    backend = open_backend()
    key = f"session:{session.session_id}:call:1:0"
    entry = decode(await backend.load(key), key, "call")
    assert entry["round"]["decided"] == [None, None]  # both calls run as the model asked
    entry["round"]["decided"] = decided
    await backend.save(key, encode("call", entry))
    with pytest.raises(ar.PersistenceError, match=r"round\.decided") as caught:
        await runtime().resume(session.session_id, ar.ScriptedProvider(["done"]))
    assert caught.value.key == key and ran == [1]


# --- a round cut off while its approval was pending ------------------------------------------


@pytest.mark.parametrize(
    ("mode", "calls"),
    [("react", 1), ("tools", 1), ("tools", 2)],
    ids=["react", "one call", "a parallel round"],
)
@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_a_round_cut_off_while_its_approval_was_pending_is_charged_once(
    mode: str, calls: int, how: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    # The round's actions were recorded before the handler was asked; the cut leaves them
    # undecided and unrun, so they are given back: the resume records them again. With the
    # limit at exactly the round's calls, a second charge refused the resume outright.
    asking, waiting = asyncio.Event(), [True]
    ran: list[int] = []

    async def handler(session: ar.AgentSession, tool: str, arguments: Any) -> Any:
        asking.set()
        if waiting[0]:
            await asyncio.Event().wait()
        return ar.ApprovalDecision("approve")

    @ar.tool(idempotent=True)
    async def look(x: int) -> str:
        """Looks a number up (safe to repeat)."""
        ran.append(x)
        return f"seen {x}"

    capabilities = ar.CapabilitySet(max_actions=calls)
    timeout = {"loop_timeout_ms": 200} if how == "timeout" else {}

    def runtime(**settings: Any) -> ar.AgentRuntime:
        return ar.AgentRuntime(
            ar.AgentConfig(mode=mode, **settings),  # type: ignore[arg-type]
            tools=[look],
            checkpoint_backend=open_backend(),
            approval_handler=handler,
            capabilities=capabilities,
        )

    first = runtime(**timeout)
    session = first.create_session("a")
    asked = [("look", {"x": n}) for n in range(1, calls + 1)]
    reply: Any = (
        'Thought: look\nAction: look {"x": 1}'
        if mode == "react"
        else ar.ScriptedProvider.tool_call_reply(asked)
    )
    await cut_off(first.run_turn(session, "q", ar.ScriptedProvider([reply])), how, asking)
    assert ran == [] and capabilities.actions_taken == 0
    waiting[0] = False

    final = "Thought: done\nAction: FINAL_ANSWER done" if mode == "react" else "done"
    resumed = await runtime().resume(session.session_id, ar.ScriptedProvider([final]))
    assert ran == list(range(1, calls + 1)) and capabilities.actions_taken == calls
    assert resumed.final_answer == "done"


async def test_a_failing_approval_handler_gives_the_round_s_actions_back() -> None:
    # Not checkpointed: the run fails with the handler's error, having run no call.
    @ar.tool
    async def look(x: int) -> str:
        """Looks a number up."""
        return f"seen {x}"

    def handler(session: ar.AgentSession, tool: str, arguments: Any) -> Any:
        raise RuntimeError("approvals are down")

    capabilities = ar.CapabilitySet(max_actions=5)
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=[look],
        approval_handler=handler,
        capabilities=capabilities,
    )
    calls = [("look", {"x": 1}), ("look", {"x": 2})]
    model = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls)])
    with pytest.raises(RuntimeError, match="approvals are down"):
        await runtime.run_agent_with_provider("a", "q", model)
    assert capabilities.actions_taken == 0
