"""Edges of durable execution above the backends: what a session saved in a degraded way
(its step records refused) keeps for a fork and a resume, and how resumes close runs."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar

from .test_backends import backend_fixture
from .test_durable import Recorder, chat_of, script

backend = backend_fixture(["memory", "sqlite", "file"])


class RefusesSteps:
    """The backend, but every write holding a step record (`:step:`) fails from the write
    number `from_write` of such records on, until `refusing` is cleared."""

    def __init__(self, inner: ar.PersistenceBackend, from_write: int = 0) -> None:
        self.inner = inner
        self.from_write = from_write
        self.step_writes = 0
        self.refusing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def batch_save(self, items: Any) -> None:
        if any(":step:" in key for key in items):
            self.step_writes += 1
            if self.refusing and self.step_writes > self.from_write:
                raise OSError("step records refused")
        await self.inner.batch_save(items)


@ar.tool
def add(a: int, b: int) -> int:
    """Adds."""
    return a + b


def two_rounds() -> ar.ScriptedProvider:
    return ar.ScriptedProvider(
        [
            ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})]),
            ar.ScriptedProvider.tool_call_reply([("add", {"a": 3, "b": 4})]),
            "done",
        ]
    )


# --------------------------------------------------- a final record whose steps went folded
@pytest.mark.parametrize("from_write", [0, 1])
async def test_a_fork_of_a_session_saved_folded_resumes_with_its_tool_rounds(
    backend: ar.PersistenceBackend, from_write: int
) -> None:
    # The step records were refused (all of them, or all but the first), and so was the
    # final record that took them along: the session went with its steps folded into one
    # base record. Those records lost what a resume rebuilds the chat from (each round's
    # reply and call ids), even the step saved on its own before: a fork's resume sent a
    # tool result answering no call, which providers refuse.
    refusing = RefusesSteps(backend, from_write)
    config = ar.AgentConfig(mode="tools")
    runtime = ar.AgentRuntime(config, tools=[add], checkpoint_backend=refusing)
    session = runtime.create_session("a", "folded")
    assert await runtime.run_turn(session, "q", two_rounds()) == "done"
    assert session.checkpoint_errors > 0
    refusing.refusing = False

    healthy = ar.AgentRuntime(config, tools=[add], checkpoint_backend=ar.InMemoryBackend())
    reference = healthy.create_session("a", "folded")
    await healthy.run_turn(reference, "q", two_rounds())
    for step in (1, 2):
        expected, seen = Recorder(["again"]), Recorder(["again"])
        await healthy.resume(await healthy.fork("folded", step), expected)
        resumed = await runtime.resume(await runtime.fork("folded", step), seen)
        assert chat_of(seen.seen[0]) == chat_of(expected.seen[0])
        assert resumed.final_answer == "again" and resumed.step_count == step + 1


async def test_a_react_fork_of_a_session_saved_folded_shows_the_model_its_steps(
    backend: ar.PersistenceBackend,
) -> None:
    refusing = RefusesSteps(backend, from_write=1)
    runtime = ar.AgentRuntime(tools=[add], checkpoint_backend=refusing)
    replies = [
        'Thought: one\nAction: add {"a": 1, "b": 2}',
        'Thought: two\nAction: add {"a": 30, "b": 4}',
        "Thought: done\nAction: FINAL_ANSWER 34",
    ]
    session = runtime.create_session("a", "react-folded")
    await runtime.run_agent("a", "q", script(*replies), session=session)
    assert session.final_answer == "34" and session.checkpoint_errors > 0
    refusing.refusing = False
    prompts: list[str] = []

    async def model(prompt: str) -> str:
        prompts.append(prompt)
        return "Thought: t\nAction: FINAL_ANSWER again"

    forked = await runtime.fork("react-folded", 2)
    await runtime.resume(forked, model)
    assert replies[0] + "\nObservation: 3" in prompts[0]
    assert replies[1] + "\nObservation: 34" in prompts[0]
