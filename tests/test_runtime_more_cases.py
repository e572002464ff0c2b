"""Runtime API cases: misconfiguration refused at construction, session ids checked."""

from __future__ import annotations

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
