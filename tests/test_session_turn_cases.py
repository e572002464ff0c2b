"""Multi-turn sessions: what a turn returns, and what a session that runs turns holds."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar


def answers(text: str, mode: str) -> Any:
    """A model that answers `text` at once: an async ReAct `infer`, or a tools-mode provider."""
    if mode == "tools":
        return ar.ScriptedProvider([text])

    async def infer(prompt: str) -> str:
        return f"Thought: t\nAction: FINAL_ANSWER {text}"

    return infer


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_turn_returns_its_own_answer_when_a_callback_ran_the_next_turn(mode: str) -> None:
    """The run waits for its callbacks once it let go of the session: one may run a turn."""
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode))
    session = rt.create_session("a")
    follow_ups: list[str | None] = []

    async def on_finished(event: ar.Event) -> None:
        if isinstance(event, ar.RunFinished) and event.final_answer == "first":
            follow_ups.append(await rt.run_turn(session, "and then?", answers("second", mode)))

    rt.events.on(on_finished)
    assert await rt.run_turn(session, "hi", answers("first", mode)) == "first"
    assert follow_ups == ["second"]
    assert [m["content"] for m in session.messages] == ["hi", "first", "and then?", "second"]
    assert session.final_answer == "second" and session.step_count == 2


class _Recording:
    """A chat provider answering "ANS <message>", keeping each request's (role, content)."""

    def __init__(self) -> None:
        self.requests: list[list[tuple[str, str]]] = []

    async def chat(self, messages: Any, tools: Any = None, model: Any = None, **_: Any) -> Any:
        self.requests.append([(m.role, m.content) for m in messages])
        return ar.ChatResponse(text="ANS " + messages[-1].content)


class _Compacting(ar.Middleware):
    """Summarizes the chat once it holds three turns; clears it on `/reset`."""

    def on_user_message(self, session: ar.AgentSession, text: str) -> str | None:
        if text == "/reset":
            session.messages.clear()
            return "Let's start over."
        if len(session.messages) >= 6:
            session.messages[:] = [{"role": "system", "content": "Summary: three greetings."}]
        return None


async def test_a_turn_sends_the_chat_as_its_user_message_hook_left_it() -> None:
    # The history was trimmed before the hook ran: the turn sent the chat the hook had
    # summarized or cleared, and saved the hook's, so that a resume sent another one.
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools", system_prompt="SYS"),
        middlewares=[_Compacting()],
        checkpoint_backend=backend,
    )
    session, model = runtime.create_session("a", "c1"), _Recording()
    for text in ["hi 1", "hi 2", "hi 3", "hi 4"]:
        await runtime.run_turn(session, text, model)
    assert model.requests[-1] == [
        ("system", "SYS"),
        ("system", "Summary: three greetings."),
        ("user", "hi 4"),
    ]
    await runtime.run_turn(session, "/reset", model)
    assert model.requests[-1] == [("system", "SYS"), ("user", "Let's start over.")]
    saved = await ar.AgentSession.load_checkpoint(backend, "c1")
    assert (
        saved.messages
        == session.messages
        == [
            {"role": "user", "content": "Let's start over."},
            {"role": "assistant", "content": "ANS Let's start over."},
        ]
    )
