"""A session id, a networkx weight and a settled call's outcome, checked as their peers are."""

from __future__ import annotations

import asyncio

import networkx as nx
import numpy as np
import pytest

import llm_agent_runtime as ar


def test_create_session_refuses_a_session_id_that_is_not_valid_unicode() -> None:
    # The agent id was refused for a lone surrogate, the session id taken: a run with a
    # checkpoint backend then failed at its first save.
    runtime = ar.AgentRuntime(checkpoint_backend=ar.InMemoryBackend())
    with pytest.raises(ar.AgentRuntimeError, match=r"session_id is not valid Unicode.*index 1"):
        runtime.create_session("a", "x\ud800y")
    assert runtime.create_session("a", "é-1").session_id == "é-1"


@pytest.mark.parametrize(
    "weight",
    [np.complex128(0.5 + 0.5j), np.complex64(2 + 1j), np.array(1 + 2j), 1 + 0j],
    ids=["complex128", "complex64", "0-d array", "complex"],
)
def test_from_networkx_refuses_a_complex_weight(weight: object) -> None:
    # numpy's complex numbers have __float__: 0.5+0.5j was stored as 0.5, with a warning.
    g = nx.Graph()
    g.add_edge("a", "b", weight=weight)
    with pytest.raises(ar.GraphError, match=r"edge 'a' -> 'b'.*must be a real number"):
        ar.from_networkx(g)


def test_from_networkx_still_takes_real_numpy_weights() -> None:
    g = nx.Graph()
    g.add_edge("a", "b", weight=np.float32(0.25))
    g.add_edge("b", "c", weight=np.int64(3))
    weights = sorted(r["weight"] for r in ar.from_networkx(g).relationships())
    assert weights == [0.25, 3.0]


async def test_a_settled_observation_is_cut_as_a_tool_s_result_is() -> None:
    # The outcome given to settle_call reached the model whole, past max_observation_chars.
    backend = ar.InMemoryBackend()
    started, gate = asyncio.Event(), asyncio.Event()

    @ar.tool
    async def charge(amount: int) -> str:
        """Charges."""
        started.set()
        await gate.wait()
        return "charged"

    config = ar.AgentConfig(max_observation_chars=40)
    runtime = ar.AgentRuntime(config, tools=[charge], checkpoint_backend=backend)
    session = runtime.create_session("a")
    replies = iter(['Thought: pay\nAction: charge {"amount": 5}'])

    async def infer(prompt: str) -> str:
        return next(replies)

    task = asyncio.create_task(runtime.run_agent("a", "q", infer, session=session))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    await runtime.settle_call(session.session_id, 1, 0, "receipt " + "x" * 500)
    prompts: list[str] = []

    async def finish(prompt: str) -> str:
        prompts.append(prompt)
        return "Thought: done\nAction: FINAL_ANSWER paid"

    resumed = await runtime.resume(session.session_id, finish)
    observation = resumed.steps[0].observation
    assert len(observation) <= 40 and observation.startswith("receipt xxx")
    assert "x" * 100 not in prompts[0]
    assert resumed.final_answer == "paid"
