"""Native tool calls whose arguments the model wrote wrong (`ToolCall.arguments_error`).

Such a call is answered with its error, a `permanent` one, and never runs (not even with
no arguments, which a tool without required ones would take): in a plain run, in a
checkpointed run and in its resume, whose journal keeps the call's error, even when the
worker died after answering it. No middleware or approval handler sees it.
"""

from __future__ import annotations

import asyncio
import copy
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import ChatResponse, ToolCall, Usage

PROBLEM = "tool call 'ping' arguments are not valid JSON: '{\"n\": '"


def reply(*calls: ToolCall) -> ChatResponse:
    return ChatResponse(tool_calls=list(calls), usage=Usage(10, 5), stop_reason="tool_calls")


class Tools:
    """`ping` (no required argument) records its runs; `hold` waits at `gate` once."""

    def __init__(self) -> None:
        self.pings: list[int] = []
        self.reached, self.gate = asyncio.Event(), asyncio.Event()

    def specs(self) -> list[ar.ToolSpec]:
        @ar.tool(idempotent=True)
        async def ping(n: int = 0) -> str:
            """Answers."""
            self.pings.append(n)
            return f"pong {n}"

        @ar.tool(idempotent=True)
        async def hold() -> str:
            """Waits to be let go, the first time."""
            if not self.gate.is_set():
                self.reached.set()
                await self.gate.wait()
            return "held"

        return [ping, hold]


def unreadable() -> ToolCall:
    return ToolCall("c1", "ping", {}, PROBLEM)


async def test_a_call_written_wrong_is_answered_with_its_error_and_never_runs() -> None:
    tools = Tools()
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=tools.specs())
    provider = ar.ScriptedProvider([reply(unreadable()), "done"])
    session = await runtime.run_agent_with_provider("a", "go", provider)
    assert tools.pings == []
    [step, _] = session.steps
    assert (step.action, step.action_input) == ("ping", {})
    assert (step.observation, step.error_kind) == (f"error: {PROBLEM}", "permanent")
    assert session.final_answer == "done"
    assert type(ar.AgentSession.from_json(session.to_json()).steps[0].action_input) is dict


async def test_the_error_is_cut_to_the_observation_limit() -> None:
    tools = Tools()
    config = ar.AgentConfig(mode="tools", max_observation_chars=20)
    runtime = ar.AgentRuntime(config, tools=tools.specs())
    session = await runtime.run_agent_with_provider(
        "a", "go", ar.ScriptedProvider([reply(unreadable()), "done"])
    )
    assert len(session.steps[0].observation) == 20
    assert tools.pings == []


async def test_no_middleware_or_approval_handler_sees_it() -> None:
    # A rewrite made of the arguments it is shown (`{}`) would run the tool with its
    # defaults: the call is answered before any guard, with or without an approval handler,
    # and even when its tool is unknown.
    seen: list[Any] = []

    class Tenant(ar.Middleware):
        def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
            seen.append((tool, arguments))
            return (tool, {**arguments, "n": 7})

    def approve(session: ar.AgentSession, tool: str, arguments: Any) -> ar.ApprovalDecision:
        seen.append(("approval", tool))
        return ar.ApprovalDecision("approve")

    tools = Tools()
    for handler in (None, approve):
        runtime = ar.AgentRuntime(
            ar.AgentConfig(mode="tools"),
            tools=tools.specs(),
            middlewares=[Tenant()],
            approval_handler=handler,
        )
        unknown = ToolCall("c9", "nope", {}, PROBLEM)
        provider = ar.ScriptedProvider([reply(unreadable(), unknown), "done"])
        session = await runtime.run_agent_with_provider("a", "go", provider)
        assert [(s.observation, s.error_kind) for s in session.steps[:2]] == [
            (f"error: {PROBLEM}", "permanent")
        ] * 2
    assert seen == []
    assert tools.pings == []


async def test_a_resumed_round_answers_the_call_with_its_error_again() -> None:
    # The round's reply is journaled as it came; its calls run one at a time, and the run
    # stops while `hold`, the first, runs; the resume takes the round from the journal and
    # answers the next. With the call's error lost there, `ping` would run with no
    # arguments at all.
    backend = ar.InMemoryBackend()
    tools = Tools()
    config = ar.AgentConfig(mode="tools", max_parallel_tool_calls=1)
    runtime = ar.AgentRuntime(config, tools=tools.specs(), checkpoint_backend=backend)
    provider = ar.ScriptedProvider(
        [reply(ToolCall("c0", "hold", {}), unreadable(), ToolCall("c2", "ping", {"n": 1}))]
    )
    started: list[str] = []
    runtime.events.on(
        lambda e: started.append(e.session_id) if isinstance(e, ar.RunStarted) else None
    )
    run = asyncio.ensure_future(runtime.run_agent_with_provider("a", "go", provider))
    await tools.reached.wait()
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    tools.gate.set()
    resumed = await ar.AgentRuntime(config, tools=tools.specs(), checkpoint_backend=backend).resume(
        started[0], ar.ScriptedProvider(["done"])
    )
    assert tools.pings == [1]
    assert [(s.action, s.observation, s.error_kind) for s in resumed.steps] == [
        ("hold", "held", None),
        ("ping", f"error: {PROBLEM}", "permanent"),
        ("ping", "pong 1", None),
        ("FINAL_ANSWER", "", None),
    ]
    assert resumed.final_answer == "done"


_WORKER = """
import asyncio, os, sys
import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import ChatResponse, ToolCall, Usage

@ar.tool
def ping(idempotency_key: str, n: int = 0) -> str:
    \"\"\"Answers (not idempotent; takes the key).\"\"\"
    return "pong"

runtime = ar.AgentRuntime(
    ar.AgentConfig(mode="tools"), tools=[ping], checkpoint_backend=ar.SqliteBackend(sys.argv[1])
)

def die(event):  # the worker dies once the call is answered, before its step is saved
    if isinstance(event, ar.RunStarted):
        print(event.session_id, flush=True)
    if isinstance(event, ar.ToolCallFinished):
        os._exit(3)

runtime.events.on(die)
call = ToolCall("c1", "ping", {}, sys.argv[2])
reply = ChatResponse(tool_calls=[call], usage=Usage(10, 5), stop_reason="tool_calls")
asyncio.run(runtime.run_agent_with_provider("a", "go", ar.ScriptedProvider([reply])))
"""


async def test_a_worker_dying_once_the_call_is_answered_leaves_nothing_that_runs_it(
    tmp_path: Path,
) -> None:
    # An intent journaled for it would have a resume run it with no arguments (the tool
    # takes the key: a repeat is its to refuse), or refuse the session as one whose call
    # may have run.
    path = tmp_path / "s.db"
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, str(path), PROBLEM],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    ran: list[str] = []

    @ar.tool
    def ping(idempotency_key: str, n: int = 0) -> str:
        """Answers (not idempotent; takes the key)."""
        ran.append(idempotency_key)
        return "pong"

    with ar.SqliteBackend(path) as backend:
        runtime = ar.AgentRuntime(
            ar.AgentConfig(mode="tools"), tools=[ping], checkpoint_backend=backend
        )
        resumed = await runtime.resume(done.stdout.strip(), ar.ScriptedProvider(["done"]))
    assert ran == []
    assert resumed.final_answer == "done"


def test_the_error_takes_the_reply_and_pickles_with_it() -> None:
    with pytest.raises(TypeError, match="takes the ChatResponse"):
        ar.UnreadableArgumentsError("arguments are not JSON")  # type: ignore[arg-type]
    error = ar.UnreadableArgumentsError(reply(unreadable()))
    assert str(error) == PROBLEM
    copied = pickle.loads(pickle.dumps(error))
    assert (str(copied), copied.response) == (PROBLEM, error.response)
    # With its state: the billed usage a stream sets on it and its notes were dropped.
    error.usage = Usage(50, 7)
    error.add_note("agent a1, step 3")
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert (again.usage, again.__notes__) == (Usage(50, 7), ["agent a1, step 3"])
