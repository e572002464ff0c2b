"""Middleware hooks, approvals and events of runs that fail before they start."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.providers.offline import ScriptedProvider


class RedactOrRefuse(ar.Middleware):
    """Redacts a user's message, and refuses one it cannot redact (raising)."""

    def on_user_message(self, session: ar.AgentSession, text: str) -> str:
        if "secret" in text:
            raise ValueError("cannot redact this message")
        return text.upper()


async def _answer(prompt: str) -> str:
    return "Action: FINAL_ANSWER fine"


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_turn_whose_user_message_hook_fails_leaves_the_session_as_it_was(
    mode: str,
) -> None:
    # The run never started (its only event is the ErrorEvent): the session must not keep
    # the message the hook refused (a redacting hook's input) nor lose the earlier answer.
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode), middlewares=[RedactOrRefuse()])
    session = rt.create_session("a")
    first = "Action: FINAL_ANSWER fine" if mode == "react" else "fine"
    assert await rt.run_turn(session, "hello", ScriptedProvider([first])) is not None
    kept = (session.prompt, session.final_answer, list(session.messages), len(session.steps))
    with pytest.raises(ValueError, match="cannot redact"):
        await rt.run_turn(session, "my secret is 42", ScriptedProvider(["unused"]))
    assert (session.prompt, session.final_answer, session.messages, len(session.steps)) == kept
    assert "secret" not in session.to_json()
    # The session's next turn goes on from there.
    assert await rt.run_turn(session, "again", _answer) == "fine"
    assert session.prompt == "AGAIN"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.text(max_size=30), answer=st.one_of(st.none(), st.text(max_size=10)))
def test_a_failing_user_message_hook_changes_no_field_of_the_session(
    prompt: str, answer: str | None
) -> None:
    class Refuses(ar.Middleware):
        async def on_user_message(self, session: ar.AgentSession, text: str) -> str:
            await asyncio.sleep(0)
            raise LookupError("refused")

    rt = ar.AgentRuntime(middlewares=[Refuses()])
    session = rt.create_session("a")
    session.prompt, session.final_answer = "earlier", answer
    before = session.to_dict()
    with pytest.raises(LookupError):
        asyncio.run(rt.run_agent("a", prompt, _answer, session=session))
    # Its time too: a run that never started is no turn (the session's time adds up turns).
    assert session.to_dict() == before
