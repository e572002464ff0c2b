"""The journal end to end: a resumed run knows its own intent of a call whose arguments a
record gives back changed (a NaN, a tuple, an int key), and follows the at-most-once rules.

The interrupted run's step checkpoints fail (the store refuses them) until it is cancelled
inside a tool call, its intent journaled: the resumed run saved no step, so it asks the
model again and meets the intent with the model's arguments as they come, not as a record
gives them back. Comparing those with the record's as they are would take the run's own
intent for another worker's call.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import (
    CheckpointStore,
    idempotency_key,
    stored_form,
)
from llm_agent_runtime.providers.base import ChatResponse

NAN_STEP = 'Thought: t\nAction: send_real {"x": NaN}'
LOOK_STEP = "Thought: t\nAction: look {}"
FINAL = "Thought: t\nAction: FINAL_ANSWER done"


class StepsDown:
    """The backend, but step checkpoints fail while `down`: the run goes on without them."""

    def __init__(self, inner: ar.InMemoryBackend) -> None:
        self.inner, self.down = inner, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _check(self, keys: Any) -> None:
        if self.down and any(":step:" in k for k in keys):
            raise ConnectionError("store down")

    async def save(self, key: str, value: bytes) -> None:
        self._check([key])
        await self.inner.save(key, value)

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        self._check(items)
        await self.inner.batch_save(items)


class Tools:
    """Tools that record their calls; the first call of a sending tool is held at `gate`."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, str | None]] = []
        self.reached, self.gate = asyncio.Event(), asyncio.Event()

    async def _sent(self, value: Any, key: str | None) -> str:
        self.sent.append((value, key))
        if not self.gate.is_set():
            self.reached.set()
            await self.gate.wait()
        return "sent"

    def specs(self) -> list[ar.ToolSpec]:
        @ar.tool(idempotent=True)
        async def look() -> str:
            """Reads (safe to repeat)."""
            return "seen"

        @ar.tool
        async def send_real(x: float, idempotency_key: str) -> str:
            """Sends a number once per key."""
            return await self._sent(x, idempotency_key)

        @ar.tool
        async def send_pair(x: tuple[int, int], idempotency_key: str) -> str:
            """Sends a pair once per key."""
            return await self._sent(x, idempotency_key)

        @ar.tool
        async def send_table(x: dict[int, str], idempotency_key: str) -> str:
            """Sends a table once per key."""
            return await self._sent(x, idempotency_key)

        @ar.tool
        async def charge(x: float) -> str:
            """Charges (neither idempotent nor taking a key)."""
            return await self._sent(x, None)

        return [look, send_real, send_pair, send_table, charge]


def rounds(tool: str, value: Any) -> list[ChatResponse | str]:
    """The model's replies: an idempotent look, then one call of `tool`, then an answer."""
    reply = ar.ScriptedProvider.tool_call_reply
    return [reply([("look", {})]), reply([(tool, {"x": value})]), "done"]


async def interrupted(
    backend: ar.InMemoryBackend, config: ar.AgentConfig, model: Any, tools: Tools
) -> None:
    """Session `S`, its run cancelled inside its step-2 call: the intent is journaled, and
    no step is saved (each step checkpoint failed)."""
    down = StepsDown(backend)
    runtime = ar.AgentRuntime(config, tools=tools.specs(), checkpoint_backend=down)
    session = runtime.create_session("a", "S")
    if config.mode == "tools":
        task = asyncio.create_task(
            runtime.run_agent_with_provider("a", "q", model, session=session)
        )
    else:
        task = asyncio.create_task(runtime.run_agent("a", "q", model, session=session))
    await tools.reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    tools.gate.set()
    # What the resume meets: no step saved, this run's intent of step 2's call.
    assert not [k for k in backend.data if ":step:" in k]
    run = await CheckpointStore(backend).current_run("S")
    [intent] = await CheckpointStore(backend).load_journal("S", 2, run)
    assert intent["state"] == "intent" and intent["run"] == run is not None


def script(*replies: str) -> Any:
    queue = list(replies)

    async def infer(prompt: str) -> str:
        return queue.pop(0)

    return infer


@pytest.mark.parametrize(
    ("tool", "value"),
    [("send_real", math.nan), ("send_pair", (1, 2)), ("send_table", {1: "one"})],
    ids=["nan", "tuple", "int-key"],
)
async def test_a_resumed_run_repeats_its_own_call_under_its_key(tool: str, value: Any) -> None:
    backend, tools = ar.InMemoryBackend(), Tools()
    config = ar.AgentConfig(mode="tools")
    await interrupted(backend, config, ar.ScriptedProvider(rounds(tool, value)), tools)
    runtime = ar.AgentRuntime(config, tools=tools.specs(), checkpoint_backend=backend)
    done = await runtime.resume("S", ar.ScriptedProvider(rounds(tool, value)))
    # The tool takes the key: the call that may have run is repeated under the same one.
    assert done.final_answer == "done"
    expected = idempotency_key("S", 2, 0, await CheckpointStore(backend).current_run("S"))
    assert [key for _, key in tools.sent] == [expected, expected]
    again = tools.sent[1][0]
    assert math.isnan(again) if tool == "send_real" else again == value
    saved = await ar.AgentSession.load_checkpoint(backend, "S")
    assert [s.action for s in saved.steps] == ["look", tool, "FINAL_ANSWER"]
    assert [s.action_input for s in saved.steps] == [
        stored_form(s.action_input) for s in done.steps
    ]


async def test_a_resumed_react_run_repeats_its_own_call_with_a_nan_under_its_key() -> None:
    backend, tools = ar.InMemoryBackend(), Tools()
    replies = (LOOK_STEP, NAN_STEP, FINAL)
    await interrupted(backend, ar.AgentConfig(), script(*replies), tools)
    runtime = ar.AgentRuntime(tools=tools.specs(), checkpoint_backend=backend)
    done = await runtime.resume("S", script(*replies))
    assert done.final_answer == "done"
    expected = idempotency_key("S", 2, 0, await CheckpointStore(backend).current_run("S"))
    assert [key for _, key in tools.sent] == [expected, expected]
    assert math.isnan(tools.sent[1][0])


async def test_a_resumed_run_does_not_repeat_its_own_call_of_a_tool_that_must_not() -> None:
    backend, tools = ar.InMemoryBackend(), Tools()
    config = ar.AgentConfig(mode="tools")
    await interrupted(backend, config, ar.ScriptedProvider(rounds("charge", math.nan)), tools)
    runtime = ar.AgentRuntime(config, tools=tools.specs(), checkpoint_backend=backend)
    # Its own call, which may have run: refused as such (settle it), not as another worker's.
    with pytest.raises(ar.ToolError, match="may have run before the interruption") as info:
        await runtime.resume("S", ar.ScriptedProvider(rounds("charge", math.nan)))
    assert "another worker" not in str(info.value)
    assert len(tools.sent) == 1
    await runtime.settle_call("S", 2, 0, "charged once")
    done = await runtime.resume("S", ar.ScriptedProvider(["done"]))  # step 2 is journaled
    assert done.final_answer == "done" and len(tools.sent) == 1
    assert [s.observation for s in done.steps] == ["seen", "charged once", ""]
