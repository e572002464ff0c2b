from __future__ import annotations

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore


def make_session() -> ar.AgentSession:
    session = ar.AgentSession(session_id="s1", agent_id="a", duration_ms=1500.0)
    session.steps = [
        ar.Step("look up", "search", {"q": "x"}, "found x", None, 3, 2, 1.0, 2.0, 0.5),
        ar.Step("again", "search", {"q": "y"}, "error: down", "transient"),
        ar.Step("the longest thought", "calc", "1+1", "2"),
        ar.Step("", "FINAL_ANSWER", "2", ""),
    ]
    session.final_answer = "2"
    return session


def test_introspection_helpers() -> None:
    s = make_session()
    assert s.step_count == 4 and s.has_final_answer() and s.duration_secs() == 1.5
    assert s.failed_tool_call_count() == 1 and s.step_success_count() == 3
    assert s.all_actions() == ["search", "search", "calc", "FINAL_ANSWER"]
    assert s.action_lengths() == [6, 6, 4, 12]
    assert s.total_thought_bytes() == len("look upagainthe longest thought")
    assert s.avg_action_length() == 7.0
    assert s.longest_thought() == "the longest thought"
    assert s.shortest_action() == "calc"
    assert s.first_step_action() == "search" and s.last_step_action() == "FINAL_ANSWER"
    assert s.most_common_action() == "search"
    assert s.count_steps_with_action("search") == 2
    assert s.thought_contains_count("o") == 2
    assert s.observation_contains_count("x") == 1
    assert s.count_nonempty_thoughts() == 3
    assert s.steps_above_thought_length(5) == 2
    assert s.model_ms() == 1.0 and s.tool_ms() == 2.0 and s.overhead_ms() == 0.5


def test_empty_session_helpers() -> None:
    s = ar.AgentSession(session_id="e", agent_id="a")
    assert s.longest_thought() is None and s.most_common_action() is None
    assert s.avg_thought_length() == 0.0 and not s.has_final_answer()


def test_json_round_trip() -> None:
    s = make_session()
    assert ar.AgentSession.from_json(s.to_json()) == s


def test_bad_json_is_persistence_error() -> None:
    with pytest.raises(ar.PersistenceError):
        ar.AgentSession.from_json("[1, 2]")
    with pytest.raises(ar.PersistenceError):
        ar.AgentSession.from_json("{not json")


async def test_load_checkpoint() -> None:
    backend = ar.InMemoryBackend()
    s = make_session()
    await CheckpointStore(backend).save_final(s, {})
    assert await ar.AgentSession.load_checkpoint(backend, "s1") == s
    with pytest.raises(ar.PersistenceError, match="session:nope"):
        await ar.AgentSession.load_checkpoint(backend, "nope")
    backend.data["session:s1"] = backend.data["session:s1"][:-5]  # truncated
    with pytest.raises(ar.PersistenceError, match="checksum"):
        await ar.AgentSession.load_checkpoint(backend, "s1")
