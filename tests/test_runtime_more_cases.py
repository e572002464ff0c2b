"""Runtime API cases: misconfiguration refused at construction, session ids checked."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar


@pytest.mark.parametrize("middlewares", [3, 1.5, object()])
def test_middlewares_that_are_not_a_list_are_refused_by_name(middlewares: object) -> None:
    with pytest.raises(ar.AgentRuntimeError, match="middlewares must be a list of Middleware"):
        ar.AgentRuntime(ar.AgentConfig(), middlewares=middlewares)  # type: ignore[arg-type]


def test_forget_approvals_takes_the_session_id_not_the_session() -> None:
    runtime = ar.AgentRuntime(ar.AgentConfig())
    session = runtime.create_session("agent")
    with pytest.raises(TypeError, match=r"session_id must be a str.*session\.session_id"):
        runtime.forget_approvals(session)  # type: ignore[arg-type]
    runtime.forget_approvals(session.session_id)  # a session with nothing remembered: fine


@ar.tool
async def transfer(amount: int) -> str:
    """Moves money."""
    return "moved"


@pytest.mark.parametrize("damaged_other", [False, True])
async def test_a_swept_session_forgets_its_remembered_approvals(damaged_other: bool) -> None:
    # A new chat reusing a swept id was approved with the old chat's decisions, unasked (as
    # `delete_session` forgets them), also when the sweep then failed on another session.
    asked: list[str] = []

    async def approve(session: ar.AgentSession, tool: str, arguments: Any) -> Any:
        asked.append(session.session_id)
        return ar.ApprovalDecision("approve", remember=True)

    def model() -> ar.ScriptedProvider:
        call = ar.ScriptedProvider.tool_call_reply([("transfer", {"amount": 5})])
        return ar.ScriptedProvider([call, "done"])

    backend = ar.InMemoryBackend()
    config = ar.AgentConfig(mode="tools")
    runtime = ar.AgentRuntime(
        config, tools=[transfer], checkpoint_backend=backend, approval_handler=approve
    )
    await runtime.run_turn(runtime.create_session("a", "chat-42"), "pay", model())
    if damaged_other:
        await runtime.run_turn(runtime.create_session("a", "zzz"), "pay", model())
        await backend.save("session:zzz", b"not a checkpoint")
        with pytest.raises(ar.PersistenceError, match="sweep deleted 1 session"):
            await runtime.sweep(0)
    else:
        assert await runtime.sweep(0) == ["chat-42"]
    asked.clear()
    await runtime.run_turn(runtime.create_session("a", "chat-42"), "pay again", model())
    assert asked == ["chat-42"]
