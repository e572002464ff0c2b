"""More durable-execution cases on the embedded backends: sweep arguments that are no
number of seconds, and what a sweep refused leaves."""

from __future__ import annotations

import math
import time

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.base import session_key
from llm_agent_runtime.persistence.checkpoints import CheckpointStore
from llm_agent_runtime.persistence.codec import encode

from .test_backends import backend_fixture
from .test_durable import FINAL, Recorder, chat_of, script

backend = backend_fixture(["memory", "sqlite", "file"])


@pytest.mark.parametrize("older_than", [math.nan, -math.nan])
async def test_a_sweep_older_than_nan_is_refused_and_deletes_nothing(
    backend: ar.PersistenceBackend, older_than: float
) -> None:
    # NaN compares false with every time: such a sweep kept every finished session but
    # deleted every incomplete fork, one being copied right now too.
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    finished = await runtime.run_agent("a", "q", script(FINAL))
    marker = {"agent_id": "a", "prompt": "q", "mode": "react", "run": "r0"}
    under_way = {**marker, "incomplete_fork": True, "started_at": time.time()}
    await backend.save(session_key("f:ok") + ":meta", encode("meta", under_way))
    before = await backend.list_keys("session:")
    with pytest.raises(ar.PersistenceError, match="older_than must be a number of seconds"):
        await runtime.sweep(older_than)
    with pytest.raises(ar.PersistenceError, match="now must be a number of seconds"):
        await CheckpointStore(backend).sweep(0.0, now=math.nan)
    assert await backend.list_keys("session:") == before
    # A real number still sweeps: a negative one everything finished, the fork too.
    assert sorted(await runtime.sweep(-1.0)) == sorted([finished.session_id, "f:ok"])


@ar.tool
def send(to: str) -> str:
    """Sends."""
    return f"sent {to}"


async def test_forks_at_every_step_of_a_parallel_round_resume_apart_from_the_source(
    backend: ar.PersistenceBackend,
) -> None:
    # A fork inside a round keeps the calls answered before it, alone, and each fork (of a
    # pruned source too) runs apart from the source: its steps, answer and events its own.
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[send], checkpoint_backend=backend
    )
    source_id = "src:é🙂/" + "x" * 200
    source = runtime.create_session("a", source_id)
    rounds = [[("send", {"to": "a"})], [("send", {"to": t}) for t in "bcd"]]
    replies = [ar.ScriptedProvider.tool_call_reply(r) for r in rounds]
    assert await runtime.run_turn(source, "q", ar.ScriptedProvider([*replies, "done"])) == "done"
    events = await runtime.session_events(source_id)
    assert await runtime.prune(source_id, keep_last=1) == 4
    observations = ["sent a", "sent b", "sent c", "sent d"]
    for step in range(5):
        fork_id = await runtime.fork(source_id, step, f"{source_id}:fork:{step}")
        model = Recorder(["forked"])
        forked = await runtime.resume(fork_id, model)
        assert forked.session_id == fork_id
        assert [s.observation for s in forked.steps] == [*observations[:step], ""]
        assert forked.final_answer == "forked"
        chat = chat_of(model.seen[0])
        asked = [c for m in chat if m[0] == "assistant" for c in m[2]]
        answered = [m[3] for m in chat if m[0] == "tool"]
        assert asked == answered and len(answered) == step  # no call left unanswered
        fork_events = [e["type"] for e in await runtime.session_events(fork_id)]
        assert fork_events == ["RunStarted", "LlmResponse", "RunFinished"]
        assert await ar.AgentSession.load_checkpoint(backend, fork_id) == forked
    with pytest.raises(ar.PersistenceError, match="cannot fork at step 6: the session has 5"):
        await runtime.fork(source_id, 6)
    assert await ar.AgentSession.load_checkpoint(backend, source_id) == source
    assert await runtime.session_events(source_id) == events
