"""Durable execution faults found by a fifth sweep, each pinned by a test."""

from __future__ import annotations

from typing import Any

import llm_agent_runtime as ar

from .test_backends import backend_fixture
from .test_durable import FINAL, add_step, script

backend = backend_fixture()


@ar.tool
def add(a: int, b: int) -> int:
    """Adds."""
    return a + b


class FinalWriteFails:
    """The backend, but the first write of a final checkpoint (`session:<id>`) fails."""

    def __init__(self, inner: ar.PersistenceBackend, session_id: str) -> None:
        self.inner = inner
        self.final_key = f"session:{session_id}"
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def batch_save(self, items: Any) -> None:
        if self.final_key in items and not self.failed:
            self.failed = True
            raise OSError("disk full")
        await self.inner.batch_save(items)

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        if self.final_key in items and not self.failed:
            self.failed = True
            raise OSError("disk full")
        return bool(await self.inner.batch_save_if(guard_key, guard_value, items))


def run_events(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events if e["type"] in ("RunStarted", "RunFinished", "ErrorEvent")]


async def test_closing_a_run_whose_final_write_failed_logs_its_run_finished_once(
    backend: ar.PersistenceBackend,
) -> None:
    # The run answered and emitted RunFinished (logged), then its final checkpoint failed:
    # the run raised, and its events were saved with its ErrorEvent. The resume that closed
    # it emitted a second RunFinished, so the saved log told of two finished runs.
    failing = FinalWriteFails(backend, "final-fails")
    runtime = ar.AgentRuntime(tools=[add], checkpoint_backend=failing)
    session = runtime.create_session("a", "final-fails")
    try:
        await runtime.run_agent("a", "q", script(add_step(1), FINAL), session=session)
    except ar.PersistenceError:
        pass
    else:
        raise AssertionError("the final checkpoint's write should have failed")
    seen: list[Any] = []
    resumer = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    resumer.events.on(seen.append)
    resumed = await resumer.resume("final-fails", script())
    assert resumed.final_answer == "finished" and resumed.step_count == 2
    events = await resumer.session_events("final-fails")
    assert run_events(events) == ["RunStarted", "RunFinished", "ErrorEvent"]
    assert not any(isinstance(e, ar.RunFinished) for e in seen)
    loaded = await ar.AgentSession.load_checkpoint(backend, "final-fails")
    assert loaded.final_answer == "finished"


async def test_closing_a_run_that_died_before_run_finished_still_logs_it(
    backend: ar.PersistenceBackend,
) -> None:
    # The counterpart: a worker that died right after its last step never emitted it.
    runtime = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    session = runtime.create_session("a", "died")
    await runtime.run_agent("a", "q", script(add_step(1), FINAL), session=session)
    await backend.delete("session:died")  # as if the process ended before the final write
    for key in await backend.list_keys("session:died:event:"):
        raw = await backend.load(key)
        if raw is not None and b"RunFinished" in raw:
            await backend.delete(key)
    seen: list[Any] = []
    resumer = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    resumer.events.on(seen.append)
    await resumer.resume("died", script())
    events = await resumer.session_events("died")
    assert run_events(events) == ["RunStarted", "RunFinished"]
    assert [type(e).__name__ for e in seen if isinstance(e, ar.RunFinished)] == ["RunFinished"]
