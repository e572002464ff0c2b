"""A failed run's cleanup on a checkpoint backend that stopped answering is bounded as a
whole: one deadline for all its stages, and one for a cancellation from outside too."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import llm_agent_runtime as ar


class StopsAnswering(ar.InMemoryBackend):
    """The in-memory backend, whose every call hangs once `armed`."""

    armed = False


def _hanging(name: str) -> Any:
    base = getattr(ar.InMemoryBackend, name)

    async def method(self: StopsAnswering, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            await asyncio.Event().wait()
        return await base(self, *args, **kwargs)

    return method


for _name in (
    "save",
    "save_new",
    "load",
    "delete",
    "batch_save",
    "batch_save_if",
    "batch_delete_if",
    "batch_load",
    "list_keys",
):
    setattr(StopsAnswering, _name, _hanging(_name))


def runtime_and_model(
    mode: str, backend: StopsAnswering, timeout_ms: int | None
) -> tuple[ar.AgentRuntime, Any]:
    """A runtime whose tool makes `backend` stop answering, and the model that calls it
    (twice at once in tools mode: a parallel round journals each call)."""

    def breaks_the_backend(arguments: dict[str, Any]) -> str:
        backend.armed = True
        return "done"

    tool = ar.ToolSpec("t", "Breaks the backend.", breaks_the_backend)
    config = ar.AgentConfig(mode=mode, loop_timeout_ms=timeout_ms)  # type: ignore[arg-type]
    runtime = ar.AgentRuntime(config, tools=[tool], checkpoint_backend=backend)
    if mode == "react":
        return runtime, ar.ScriptedProvider(["Action: t {}", "Final Answer: x"])
    calls = [ar.ToolCall("c1", "t", {}), ar.ToolCall("c2", "t", {})]
    script = [
        ar.ChatResponse(tool_calls=calls, stop_reason="tool_calls"),
        ar.ChatResponse(text="x", stop_reason="stop"),
    ]
    return runtime, ar.ScriptedProvider(script)


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_timed_out_runs_cleanup_shares_one_deadline(mode: str) -> None:
    # Each stage of the cleanup (the parallel round's journal writes, saving what the run
    # left, giving up its claims) waited a loop_timeout_ms of its own: the run ended after
    # 3 to 5 times the timeout, where its doc promises at most twice.
    backend = StopsAnswering()
    runtime, model = runtime_and_model(mode, backend, 1000)
    started = time.perf_counter()
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await runtime.run_agent_with_provider("a", "q", model)
    assert time.perf_counter() - started < 2.6
    assert not runtime._cleanup_deadlines


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_run_cancelled_on_a_backend_that_stopped_answering_ends(mode: str) -> None:
    # Without loop_timeout_ms, the cleanup of a cancelled run waited for the backend as long
    # as it hung, and a round's journal writes took no further cancellation either: the
    # task ran on whatever its caller did (an asyncio.wait_for returned when the database
    # let go, 30 s later on a locked PostgreSQL table).
    backend = StopsAnswering()
    runtime, model = runtime_and_model(mode, backend, None)
    task = asyncio.ensure_future(runtime.run_agent_with_provider("a", "q", model))
    while not backend.armed:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=3.0)
    assert done, "the cancelled run was still running 3 s later"
    assert task.cancelled()
    assert not runtime._cleanup_deadlines
