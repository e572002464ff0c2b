"""Multi-turn sessions: runs on sessions that hold chat history, and trimming it."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar


@pytest.mark.parametrize("checkpointed", [False, True])
@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ({"role": "bot", "content": "hi"}, "'role' must be one of"),
        ({"role": "user", "content": None}, "'content' must be a string, got null"),
        ("hello", "a message must be a dict, got str"),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"id": 1, "name": "f"}]},
            "tool call 1 must be a dict",
        ),
    ],
)
async def test_a_run_refuses_session_messages_a_session_cannot_load_before_the_model_is_called(
    message: Any, problem: str, checkpointed: bool
) -> None:
    # A run that was not a turn took them as they were: it paid the model and ran the
    # tools, then failed its final checkpoint (or made a session `from_json` refuses).
    backend = ar.InMemoryBackend() if checkpointed else None
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    provider = ar.ScriptedProvider(["Thought: t\nAction: FINAL_ANSWER ok"])
    session = runtime.create_session("agent")
    session.messages.append({"role": "user", "content": "fine"})
    session.messages.append(message)
    with pytest.raises(ar.AgentRuntimeError, match=f"session message 2: {problem}"):
        await runtime.run_agent("agent", "hi", provider.complete, session=session)
    with pytest.raises(ar.AgentRuntimeError, match=f"session message 2: {problem}"):
        await runtime.run_agent_with_provider("agent", "hi", provider, session=session)
    assert provider.calls == 0 and session.steps == [] and session.prompt == ""


async def test_a_run_on_a_session_with_a_valid_history_leaves_it_as_it_was() -> None:
    runtime = ar.AgentRuntime(checkpoint_backend=ar.InMemoryBackend())
    provider = ar.ScriptedProvider(["Thought: t\nAction: FINAL_ANSWER ok"])
    session = runtime.create_session("agent")
    call = {"id": "c1", "name": "f", "arguments": {"q": "x"}}
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "r", "tool_call_id": "c1", "name": "f"},
        {"role": "assistant", "content": "a"},
    ]
    session.messages = list(history)
    await runtime.run_agent("agent", "hi", provider.complete, session=session)
    assert session.final_answer == "ok" and session.messages == history
    loaded = await ar.AgentSession.load_checkpoint(runtime.checkpoint_backend, session.session_id)
    assert loaded == session


@pytest.mark.parametrize(
    ("messages", "kind"),
    [
        ({"role": "user", "content": "hi"}, "dict"),  # one message for the list of them
        ("user: hi", "str"),
        (b"hi", "bytes"),
    ],
)
def test_trim_history_names_one_message_or_a_text_given_for_the_history(
    messages: Any, kind: str
) -> None:
    # Taken as an iterable, a dict gave its keys and a str its characters: "session message
    # 1: a message must be a dict, got str", of a history that was a dict.
    runtime = ar.AgentRuntime()
    with pytest.raises(
        ar.AgentRuntimeError, match=f"^messages must be a list of chat messages, got {kind}"
    ):
        runtime.trim_history(messages)
