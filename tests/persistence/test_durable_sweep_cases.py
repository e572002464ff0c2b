"""Durable execution cases: resumes after a crash between a tool call's journal entry and its
step checkpoint, when the call names a tool that is not registered (it never was, or it was
removed since)."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar

from .test_backends import backend_fixture
from .test_durable import FINAL, fails_after, script

backend = backend_fixture()


def charging(calls: list[int]) -> ar.ToolSpec:
    """A tool that is not idempotent: each call is kept in `calls`."""

    @ar.tool
    def charge(amount: int) -> str:
        """Charges (not idempotent)."""
        calls.append(amount)
        return "charged"

    return charge


class Crash(BaseException):
    """The worker's process ending: nothing after it runs."""


class CrashesOnSteps:
    """The backend, but a write holding a step record (`:step:`) ends the worker."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def batch_save(self, items: Any) -> None:
        if any(":step:" in key for key in items):
            raise Crash
        await self.inner.batch_save(items)

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        if any(":step:" in key for key in items):
            raise Crash
        return bool(await self.inner.batch_save_if(guard_key, guard_value, items))


async def _crashed_in_first_step(
    backend: ar.PersistenceBackend, session_id: str, tools: list[ar.ToolSpec], reply: str
) -> None:
    """Session `session_id`: a ReAct run with `tools` whose worker ends after its first step's
    journal entry, before that step's checkpoint (the model's reply: `reply`)."""
    crashing = ar.AgentRuntime(tools=tools, checkpoint_backend=CrashesOnSteps(backend))
    session = crashing.create_session("a", session_id)
    with pytest.raises(Crash):
        await crashing.run_agent("a", "q", script(reply), session=session)


@ar.tool
def add(a: int, b: int) -> int:
    """Adds."""
    return a + b


async def test_a_call_of_a_tool_that_does_not_exist_is_resumed_not_refused(
    backend: ar.PersistenceBackend,
) -> None:
    # The model called a tool no runtime has: nothing could run. The worker ended after the
    # call's journal entry, before its step checkpoint: the resume refused the session with
    # a ToolError asking to check the effect of that tool, and settle the call by hand.
    await _crashed_in_first_step(
        backend, "unknown-tool", [add], 'Thought: t\nAction: nope {"x": 1}'
    )
    runtime = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    resumed = await runtime.resume("unknown-tool", script(FINAL))
    assert resumed.final_answer == "finished"
    assert [(s.action, s.error_kind) for s in resumed.steps] == [
        ("nope", "not_found"),
        ("FINAL_ANSWER", None),
    ]
    loaded = await ar.AgentSession.load_checkpoint(backend, "unknown-tool")
    assert loaded.step_count == 2 and loaded.final_answer == "finished"


async def test_a_call_of_a_tool_removed_since_is_refused_naming_why(
    backend: ar.PersistenceBackend,
) -> None:
    # The tool existed and may have run: the resume refuses it still, but said the tool
    # "is neither idempotent nor takes an idempotency key", which is not why.
    calls: list[int] = []
    charge = charging(calls)
    await _crashed_in_first_step(
        backend, "removed-tool", [charge], 'Thought: t\nAction: charge {"amount": 5}'
    )
    assert calls == [5]
    runtime = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    with pytest.raises(ar.ToolError, match="'charge' is not registered"):
        await runtime.resume("removed-tool", script(FINAL))
    assert calls == [5]


async def test_a_call_of_a_tool_registered_since_is_replayed_as_the_not_found_it_was(
    backend: ar.PersistenceBackend,
) -> None:
    # The call ran no tool (none had its name): once the tool was registered, the resume
    # refused it as one that "may have run", asking to check an effect that never happened.
    # Nor may the tool registered since run it: the call was never guarded (approved,
    # checked against the capabilities), and a second crash would repeat its effect.
    await _crashed_in_first_step(
        backend, "added-since", [add], 'Thought: t\nAction: charge {"amount": 5}'
    )
    calls: list[int] = []
    runtime = ar.AgentRuntime(tools=[charging(calls)], checkpoint_backend=backend)
    resumed = await runtime.resume("added-since", script(FINAL))
    assert resumed.final_answer == "finished" and calls == []
    first = resumed.steps[0]
    assert (first.action, first.error_kind) == ("charge", "not_found")


async def test_a_call_of_an_idempotent_tool_registered_since_is_not_found_as_it_was(
    backend: ar.PersistenceBackend,
) -> None:
    # A lone call of an idempotent tool is not journaled again as it runs: the resume read
    # no entry, and ran the call unguarded (its approval never asked), though its intent
    # said it ran no tool.
    await _crashed_in_first_step(
        backend, "idempotent-since", [add], 'Thought: t\nAction: charge {"amount": 5}'
    )
    calls: list[int] = []

    @ar.tool(idempotent=True)
    def charge(amount: int) -> str:
        """Charges (safe to repeat)."""
        calls.append(amount)
        return "charged"

    asked: list[str] = []

    def deny(session: Any, tool: str, arguments: Any) -> ar.ApprovalDecision:
        asked.append(tool)
        return ar.ApprovalDecision("deny")

    runtime = ar.AgentRuntime(tools=[charge], checkpoint_backend=backend, approval_handler=deny)
    resumed = await runtime.resume("idempotent-since", script(FINAL))
    assert calls == [] and asked == []
    assert (resumed.steps[0].action, resumed.steps[0].error_kind) == ("charge", "not_found")


async def test_a_call_of_a_tool_that_took_no_key_then_is_not_repeated_under_one(
    backend: ar.PersistenceBackend,
) -> None:
    # Upgraded to take `idempotency_key` after the crash (the usual fix), the tool was
    # called again under the journaled key, which the call that ran never got: it could not
    # tell the repeat, and charged twice.
    calls: list[int] = []
    await _crashed_in_first_step(
        backend, "keyed-since", [charging(calls)], 'Thought: t\nAction: charge {"amount": 5}'
    )
    assert calls == [5]

    @ar.tool
    def charge(amount: int, idempotency_key: str = "") -> str:
        """Charges once a key."""
        calls.append(amount)
        return "charged"

    runtime = ar.AgentRuntime(tools=[charge], checkpoint_backend=backend)
    with pytest.raises(ar.ToolError, match="took no idempotency key when it ran"):
        await runtime.resume("keyed-since", script(FINAL))
    assert calls == [5]


class CrashesOnSecondStep(CrashesOnSteps):
    """The backend, but writes holding a step record end the worker from the second on."""

    steps = 0

    def _crashes(self, items: Any) -> bool:
        if any(":step:" in key for key in items):
            self.steps += 1
        return self.steps >= 2

    async def batch_save(self, items: Any) -> None:
        if self._crashes(items):
            raise Crash
        await self.inner.batch_save(items)

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        if self._crashes(items):
            raise Crash
        return bool(await self.inner.batch_save_if(guard_key, guard_value, items))


async def test_a_resume_whose_max_iterations_leaves_no_room_for_its_journal_refuses(
    backend: ar.PersistenceBackend,
) -> None:
    # Lowered below the rounds taken, it ended the run at once: the journaled round (two
    # charges that ran, a model reply paid for) was left out of a session saved as final.
    from llm_agent_runtime.providers.base import ChatResponse, ToolCall, Usage

    charged: list[str] = []

    @ar.tool
    def charge(order: str, idempotency_key: str = "") -> str:
        """Charges an order once a key."""
        charged.append(order)
        return f"charged {order}"

    def round_of(*orders: str) -> ChatResponse:
        calls = [
            ToolCall(
                f"c{o}",
                "add" if o == "0" else "charge",
                {"a": 1, "b": 1} if o == "0" else {"order": o},
            )
            for o in orders
        ]
        return ChatResponse(tool_calls=calls, usage=Usage(5, 5), stop_reason="tool_calls")

    config = ar.AgentConfig(mode="tools", max_iterations=5)
    crashing = ar.AgentRuntime(
        config, tools=[add, charge], checkpoint_backend=CrashesOnSecondStep(backend)
    )
    session = crashing.create_session("a", "lowered")
    first = ar.ScriptedProvider([round_of("0"), round_of("A", "B")])
    with pytest.raises(Crash):
        await crashing.run_agent_with_provider("a", "q", first, session=session)
    assert sorted(charged) == ["A", "B"]
    done = ChatResponse(text="both charged", usage=Usage(5, 5), stop_reason="stop")
    low = ar.AgentRuntime(
        config.model_copy(update={"max_iterations": 1}),
        tools=[add, charge],
        checkpoint_backend=backend,
    )
    with pytest.raises(ar.AgentRuntimeError, match="max_iterations above 1"):
        await low.resume("lowered", ar.ScriptedProvider([done]))
    runtime = ar.AgentRuntime(config, tools=[add, charge], checkpoint_backend=backend)
    resumed = await runtime.resume("lowered", ar.ScriptedProvider([done]))
    assert resumed.final_answer == "both charged"
    assert [s.observation for s in resumed.steps][1:3] == ["charged A", "charged B"]
    assert sorted(charged) == ["A", "B"]  # recorded, not run again


class CountingRecords(list[Any]):
    """A list of step records that counts the records its slices copy."""

    copied = 0

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        if isinstance(index, slice):
            CountingRecords.copied += len(item)
        return item


def test_replaying_a_long_tools_run_takes_time_linear_in_its_steps() -> None:
    # A resume rebuilds the chat of the run's rounds: each round copied every record after
    # it to find its calls, so a resume of n one-call rounds copied ~n*n/2 records.
    from llm_agent_runtime.persistence.checkpoints import StepRecord
    from llm_agent_runtime.runtime import _replay_rounds

    n = 2000
    records = CountingRecords(
        StepRecord(ar.Step("t", "add", {"a": i}, str(i)), None, "t", f"c{i}", i % 2 == 0)
        for i in range(n)
    )
    CountingRecords.copied = 0
    messages: list[Any] = []
    assert _replay_rounds(records, messages) == n // 2
    assert len(messages) == n + n // 2  # a reply per round, a result per call
    assert [len(m.tool_calls) for m in messages if m.role == "assistant"] == [2] * (n // 2)
    assert CountingRecords.copied <= 2 * n


async def test_settling_a_call_whose_step_is_saved_is_refused_not_ignored(
    backend: ar.PersistenceBackend,
) -> None:
    # A lone call's journal entry stays an intent once its step is saved (the step holds its
    # result). settle_call of that step (a step number off by one, say) returned as if it
    # had recorded the outcome, which the resume then never used: the step's stood.
    calls: list[int] = []
    charge = charging(calls)
    runtime = ar.AgentRuntime(tools=[charge], checkpoint_backend=backend)
    session = runtime.create_session("a", "settled-step")
    with pytest.raises(ConnectionError):
        await runtime.run_agent(
            "a", "q", fails_after('Thought: t\nAction: charge {"amount": 5}'), session=session
        )
    with pytest.raises(ar.ToolError, match="step 1 is saved already"):
        await runtime.settle_call("settled-step", 1, 0, "refunded", "permanent")
    resumed = await runtime.resume("settled-step", script(FINAL))
    assert [(s.observation, s.error_kind) for s in resumed.steps] == [
        ("charged", None),
        ("", None),
    ]
    assert calls == [5]
    with pytest.raises(ar.ToolError, match="step 1 is saved already"):
        await runtime.settle_call("settled-step", 1, 0, "refunded", "permanent")


async def test_resuming_a_session_object_instead_of_its_id_says_which_to_pass(
    backend: ar.PersistenceBackend,
) -> None:
    # `resume(session, model)`, the session itself instead of its id, failed with a bare
    # "TypeError: unhashable type: 'AgentSession'" (fork, prune and the others name the
    # wrong type).
    runtime = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    session = runtime.create_session("a", "by-object")
    with pytest.raises(ConnectionError):
        await runtime.run_agent("a", "q", fails_after(), session=session)
    with pytest.raises(
        ar.PersistenceError,
        match=r"session id must be a string, got AgentSession \(pass its session_id\)",
    ):
        await runtime.resume(session, script(FINAL))  # type: ignore[arg-type]
    resumed = await runtime.resume(session.session_id, script(FINAL))
    assert resumed.final_answer == "finished"
