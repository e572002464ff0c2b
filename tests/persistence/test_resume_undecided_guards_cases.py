"""Resuming a checkpointed run cut off while its guards were still deciding a tool call.

The model's reply had come (and was paid for: its tokens charged to the metrics and the
budget) when an approval handler, an `on_tool_call` middleware or a capability check was
cut off deciding its call (a cancel, or `loop_timeout_ms`). A resume reuses that reply: the
model is not asked again, its tokens are not charged twice, the step keeps the reply's
tokens and model time. The guards never decided, so they are asked again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import llm_agent_runtime as ar

from .conftest import cut_off
from .test_backends import backend_fixture

MODEL_SECONDS = 0.02  # what the interrupted run's model call takes


class SlowProvider(ar.ScriptedProvider):
    """A scripted provider that takes a while a call, reports its usage, counts its calls."""

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
        await asyncio.sleep(MODEL_SECONDS)
        return await super().chat(messages, tools, **params)


def round_reply(xs: list[int]) -> ar.ChatResponse:
    calls = [ar.ToolCall(f"call_{i}", "look", {"x": x}) for i, x in enumerate(xs)]
    return ar.ChatResponse("", calls, usage=ar.Usage(100, 10), stop_reason="tool_calls")


class Guards:
    """An approval handler and a middleware, either of which may hold its first decision."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.holding = True
        self.reached = asyncio.Event()
        self.asked: list[int] = []
        self.hooked: list[int] = []

    async def _hold(self, who: str) -> None:
        if who == self.holder and self.holding:
            self.reached.set()
            await asyncio.Event().wait()

    async def approve(self, session: Any, tool: str, arguments: Any) -> ar.ApprovalDecision:
        self.asked.append(arguments["x"])
        await self._hold("approval")
        return ar.ApprovalDecision("approve")

    def middleware(self) -> ar.Middleware:
        guards = self

        class Hook(ar.Middleware):
            async def on_tool_call(self, session: Any, tool: str, arguments: Any) -> Any:
                guards.hooked.append(arguments["x"])
                await guards._hold("middleware")
                return None

        return Hook()


SHAPES = pytest.mark.parametrize(
    "shape", ["react", "tools-single", "tools-round"], ids=["react", "one-call", "round"]
)
CUTS = pytest.mark.parametrize("cut", ["cancel", "timeout"])
HOLDERS = pytest.mark.parametrize("holder", ["approval", "middleware"])


@SHAPES
@CUTS
@HOLDERS
async def test_a_run_cut_off_while_its_guards_decide_reuses_the_paid_reply_on_resume(
    shape: str, cut: str, holder: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    ran: list[int] = []

    @ar.tool
    async def look(x: int, idempotency_key: str) -> str:
        """Looks a number up."""
        ran.append(x)
        return f"seen {x}"

    guards = Guards(holder)
    metrics = ar.RuntimeMetrics()
    budget = ar.CostBudget(max_tokens=10_000)
    mode = "react" if shape == "react" else "tools"

    def runtime(loop_timeout_ms: int | None = None) -> ar.AgentRuntime:
        config = ar.AgentConfig(mode=mode, loop_timeout_ms=loop_timeout_ms)
        return ar.AgentRuntime(
            config,
            tools=[look],
            checkpoint_backend=open_backend(),
            metrics=metrics,
            budget=budget,
            approval_handler=guards.approve,
            middlewares=[guards.middleware()],
        )

    xs = [1, 2] if shape == "tools-round" else [1]
    model: Any
    closing: Any
    prompts: list[str] = []
    if mode == "tools":
        model = SlowProvider([round_reply(xs)])
        closing = ar.ScriptedProvider(["done"])
    else:
        replies = ['Thought: look\nAction: look {"x": 1}']

        async def model(prompt: str) -> str:
            await asyncio.sleep(MODEL_SECONDS)
            return replies.pop(0)

        async def closing(prompt: str) -> str:
            prompts.append(prompt)
            return "Thought: seen\nAction: FINAL_ANSWER done"

    # Only the run cut off has the timeout: the resume may take its time on a busy machine.
    first = runtime(300 if cut == "timeout" else None)
    session = first.create_session("a")
    await cut_off(first.run_turn(session, "q", model), cut, guards.reached)
    assert guards.reached.is_set() and ran == []
    paid = metrics.snapshot()
    assert paid.input_tokens > 0
    spent = budget.remaining_tokens
    asked, hooked = list(guards.asked), list(guards.hooked)

    guards.holding = False
    resumed = await runtime().resume(session.session_id, closing)
    # The model was asked once more only for the answer, not for the interrupted step.
    if mode == "tools":
        assert closing.calls == 1
    else:
        assert len(prompts) == 1
    # A round's calls start as their intents are written, in whatever order those land.
    assert sorted(ran) == xs
    after = metrics.snapshot()
    answer = resumed.steps[-1]
    assert after.input_tokens == paid.input_tokens + answer.input_tokens
    assert after.output_tokens == paid.output_tokens + answer.output_tokens
    assert budget.remaining_tokens == spent - answer.input_tokens - answer.output_tokens
    # The guards never decided: asked again, each call once more.
    assert guards.hooked == hooked + xs
    assert guards.asked == asked + xs
    first_step = resumed.steps[0]
    if mode == "tools":
        assert (first_step.input_tokens, first_step.output_tokens) == (100, 10)
    else:
        assert first_step.input_tokens > 0
    assert first_step.input_tokens + sum(s.input_tokens for s in resumed.steps[1:-1]) == (
        paid.input_tokens
    )
    # The model time is the interrupted call's (the resumed run's model answers at once).
    assert sum(s.model_ms for s in resumed.steps[:-1]) >= MODEL_SECONDS * 1000 * 0.9
    assert [s.action for s in resumed.steps] == ["look"] * len(xs) + ["FINAL_ANSWER"]
    assert resumed.final_answer == "done"
    saved = await ar.AgentSession.load_checkpoint(open_backend(), session.session_id)
    assert saved == resumed


async def test_a_capability_refusal_after_the_reply_is_refused_again_without_the_model(
    open_backend: Callable[[], ar.SqliteBackend],
) -> None:
    @ar.tool
    async def look(x: int, idempotency_key: str) -> str:
        """Looks a number up."""
        return f"seen {x}"

    capabilities = ar.CapabilitySet(allowed_tools=set())
    metrics = ar.RuntimeMetrics()

    def runtime() -> ar.AgentRuntime:
        return ar.AgentRuntime(
            ar.AgentConfig(mode="tools"),
            tools=[look],
            checkpoint_backend=open_backend(),
            metrics=metrics,
            capabilities=capabilities,
        )

    model = SlowProvider([round_reply([1])])
    with pytest.raises(ar.PolicyDeniedError):
        await runtime().run_agent_with_provider("a", "q", model)
    paid = metrics.snapshot().input_tokens
    (session_id,) = [
        k.split(":")[1] for k in await open_backend().list_keys("session:") if k.endswith(":meta")
    ]
    again = ar.ScriptedProvider(["done"])
    with pytest.raises(ar.PolicyDeniedError):
        await runtime().resume(session_id, again)
    assert again.calls == 0 and metrics.snapshot().input_tokens == paid


async def test_an_unguarded_run_writes_no_journal_entry_for_a_lone_idempotent_call(
    open_backend: Callable[[], ar.SqliteBackend],
) -> None:
    # Nothing new on the hot path: without guards, a lone call of an idempotent tool is not
    # journaled (it is simply repeated, model reply included).
    @ar.tool(idempotent=True)
    async def look(x: int) -> str:
        """Looks a number up."""
        return f"seen {x}"

    backend = open_backend()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[look], checkpoint_backend=backend
    )
    model = ar.ScriptedProvider([round_reply([1]), "done"])
    session = await runtime.run_agent_with_provider("a", "q", model)
    assert await backend.list_keys(f"session:{session.session_id}:call:") == []


async def test_a_failed_write_of_the_reply_is_counted_and_the_run_goes_on() -> None:
    # Only the reply's write: it is what a resume would have reused, no call's record.
    class Refusing(ar.InMemoryBackend):
        async def save_new(self, key: str, value: bytes) -> bool:
            if ":call:" in key:
                raise OSError("disk full")
            return await super().save_new(key, value)

    @ar.tool(idempotent=True)
    async def look(x: int) -> str:
        """Looks a number up."""
        return f"seen {x}"

    backend = Refusing()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=[look],
        checkpoint_backend=backend,
        approval_handler=lambda s, t, a: ar.ApprovalDecision("approve"),
    )
    session = await runtime.run_agent_with_provider(
        "a", "q", ar.ScriptedProvider([round_reply([1]), "done"])
    )
    assert session.final_answer == "done" and session.checkpoint_errors == 1
    assert runtime.metrics.snapshot().checkpoint_errors == 1


backend = backend_fixture()


async def test_the_call_entry_replaces_the_reply_entry_only_while_it_holds(
    backend: ar.PersistenceBackend,
) -> None:
    from llm_agent_runtime.persistence.checkpoints import CheckpointStore
    from llm_agent_runtime.persistence.codec import decode, encode

    store = CheckpointStore(backend)
    key = "session:s:call:1:0"
    received = {"reply": "r", "index": 0, "state": "received", "run": "R"}
    assert await store.journal("s", 1, 0, received, new=True) is None
    intent = {"reply": "r", "state": "intent", "run": "R", "tool": "look"}
    assert await store.journal("s", 1, 0, intent, new=True, replacing=received) is None
    assert decode(await backend.load(key), key, "call") == intent
    # Written over once more by another worker's intent: found, not written over.
    other = {**intent, "key": "theirs"}
    await backend.save(key, encode("call", other))
    found = await store.journal("s", 1, 0, {**intent, "key": "mine"}, new=True, replacing=received)
    assert found == other
    # Another reply entry than the one expected (its earlier write landed after all): still
    # no call's, so written over.
    await backend.save(key, encode("call", {**received, "model_ms": 1.0}))
    assert await store.journal("s", 1, 0, intent, new=True, replacing=received) is None
    assert decode(await backend.load(key), key, "call") == intent
    # The expected reply never landed: the key is free.
    await backend.delete(key)
    assert await store.journal("s", 1, 0, intent, new=True, replacing=received) is None
    assert decode(await backend.load(key), key, "call") == intent
