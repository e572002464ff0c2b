"""Each call of a native round gets its own id: a tool's result is matched to its call by id,
and providers refuse a message whose calls share one."""

from __future__ import annotations

import pytest
from probes import RecordingProvider

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore


@ar.tool
def echo(text: str) -> str:
    """Echoes the text."""
    return text


def shared(kind: str) -> list[ar.ToolCall]:
    if kind == "same object":
        call = ar.ToolCall("x", "echo", {"text": "a"})
        return [call, call]
    return [
        ar.ToolCall("x", "echo", {"text": "a"}),
        ar.ToolCall("x", "echo", {"text": "b"}),
        ar.ToolCall("x_1", "echo", {"text": "c"}),
    ]


@pytest.mark.parametrize("kind", ["same object", "same id"])
async def test_calls_sharing_an_id_each_get_their_own(kind: str) -> None:
    calls = shared(kind)
    backend = ar.InMemoryBackend()
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[echo], checkpoint_backend=backend)
    provider = RecordingProvider(
        [ar.ChatResponse(tool_calls=calls, stop_reason="tool_calls"), "done"]
    )
    session = await rt.run_agent_with_provider("a", "q", provider)
    assert session.final_answer == "done"
    assert [s.observation for s in session.steps[:-1]] == [c.arguments["text"] for c in calls]
    sent = provider.requests[1]
    [assistant] = [m for m in sent if m.role == "assistant"]
    ids = [call.id for call in assistant.tool_calls]
    assert ids == (["x", "x_1"] if kind == "same object" else ["x", "x_1", "x_1_2"])
    assert [m.tool_call_id for m in sent if m.role == "tool"] == ids
    # One round: its first step alone starts it (a resume sends one assistant message).
    state = await CheckpointStore(backend).load(session.session_id)
    assert [r.round_start for r in state.records[:-1]] == [True] + [False] * (len(calls) - 1)
    assert [r.call_id for r in state.records[:-1]] == ids
