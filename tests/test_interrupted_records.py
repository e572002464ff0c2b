"""What an interrupted run records: how its cut-off calls ended, and how long it ran."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.events import ToolCallFinished

TIMEOUT_MS = 60
TIMED_OUT = f"the run's timeout (agent loop timed out after {TIMEOUT_MS} ms)"


@ar.tool
async def stall(a: int) -> int:
    """Never returns in time."""
    await asyncio.sleep(30)
    return a


@ar.tool
async def quick(a: int) -> int:
    """Returns at once."""
    return a


def _reply(mode: str, *calls: str) -> Any:
    """One model turn calling `calls` (each with `{"a": 1}`): a round in tools mode."""
    if mode == "tools":
        return ar.ScriptedProvider.tool_call_reply([(name, {"a": 1}) for name in calls])
    [name] = calls
    return f'Thought: call {name}\nAction: {name} {{"a": 1}}'


@pytest.fixture
def make_backend(tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    """Makes a backend of a kind; an SQLite one is closed after the test."""
    made: list[ar.SqliteBackend] = []

    def make(kind: str) -> Any:
        if kind == "memory":
            return ar.InMemoryBackend()
        made.append(ar.SqliteBackend(tmp_path / "store.db"))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


def _runtime(mode: str, backend: Any = None, **config: Any) -> ar.AgentRuntime:
    return ar.AgentRuntime(
        ar.AgentConfig(mode=mode, loop_timeout_ms=TIMEOUT_MS, **config),
        tools=[stall, quick],
        checkpoint_backend=backend,
    )


def _kept(session: ar.AgentSession) -> list[tuple[str, str, str | None]]:
    return [(s.action, s.observation, s.error_kind) for s in session.steps]


# --- how a cut-off call ended -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_call_the_timeout_cuts_off_says_the_loop_timed_out(mode: str) -> None:
    rt = _runtime(mode)
    finished: list[ToolCallFinished] = []
    rt.events.on(lambda e: finished.append(e) if isinstance(e, ToolCallFinished) else None)
    session = rt.create_session("a")
    provider = ar.ScriptedProvider([_reply(mode, "quick"), _reply(mode, "stall"), "done"])
    with pytest.raises(ar.AgentLoopError, match=f"timed out after {TIMEOUT_MS} ms"):
        await rt.run_turn(session, "q", provider)
    assert _kept(session) == [
        ("quick", "1", None),
        ("stall", f"error: the call ended with {TIMED_OUT}", "transient"),
    ]
    # The event says what the step says.
    assert finished[-1].observation == session.steps[-1].observation


async def test_a_parallel_round_the_timeout_cuts_off_says_the_loop_timed_out() -> None:
    # One call at a time: the third has not started when the time runs out.
    rt = _runtime("tools", max_parallel_tool_calls=1)
    session = rt.create_session("a")
    provider = ar.ScriptedProvider([_reply("tools", "quick", "stall", "quick"), "done"])
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await rt.run_turn(session, "q", provider)
    assert _kept(session) == [
        ("quick", "1", None),
        ("stall", f"error: the call ended with {TIMED_OUT}", "transient"),
        ("quick", f"error: the call did not start: its round ended with {TIMED_OUT}", "transient"),
    ]


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_call_cancelled_from_outside_still_says_cancelled(mode: str) -> None:
    # A timeout is set but not reached: the cancel is the caller's.
    rt = ar.AgentRuntime(
        ar.AgentConfig(mode=mode, loop_timeout_ms=10_000, max_parallel_tool_calls=1),
        tools=[stall, quick],
    )
    session = rt.create_session("a")
    calls = ("stall", "quick") if mode == "tools" else ("stall",)
    run = asyncio.ensure_future(
        rt.run_turn(session, "q", ar.ScriptedProvider([_reply(mode, *calls), "done"]))
    )
    while not sum(rt.metrics.snapshot().tool_calls.values()):
        await asyncio.sleep(0.002)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    expected = [("stall", "error: the call ended with CancelledError", "transient")]
    if mode == "tools":
        not_run = "error: the call did not start: its round ended with CancelledError"
        expected.append(("quick", not_run, "transient"))
    assert _kept(session) == expected


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize(
    ("mode", "calls"), [("react", ("stall",)), ("tools", ("stall",)), ("tools", ("quick", "stall"))]
)
async def test_a_checkpointed_call_the_timeout_cuts_off_says_so_in_the_saved_log(
    kind: str, mode: str, calls: tuple[str, ...], make_backend: Callable[[str], Any]
) -> None:
    backend = make_backend(kind)
    rt = _runtime(mode, backend)
    session = rt.create_session("a")
    provider = ar.ScriptedProvider([_reply(mode, "quick"), _reply(mode, *calls), "done"])
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await rt.run_turn(session, "q", provider)
    # A checkpointed run's cut-off round is in its journal, for a resume to continue: the
    # steps before it are the session's, in memory as saved.
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert [s.to_dict() for s in saved.steps] == [s.to_dict() for s in session.steps]
    assert _kept(session) == [("quick", "1", None)]
    logged = [
        e["observation"]
        for e in await rt.session_events(session.session_id)
        if e["type"] == "ToolCallFinished"
    ]
    assert logged[-1] == f"error: the call ended with {TIMED_OUT}"


# --- how long a failed checkpointed run ran ---------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_timed_out_checkpointed_run_saves_its_duration(
    kind: str, mode: str, make_backend: Callable[[str], Any]
) -> None:
    backend = make_backend(kind)
    rt = _runtime(mode, backend)
    session = rt.create_session("a")
    provider = ar.ScriptedProvider([_reply(mode, "quick"), _reply(mode, "stall"), "done"])
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await rt.run_turn(session, "q", provider)
    assert session.duration_ms >= TIMEOUT_MS
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert saved.duration_ms == session.duration_ms


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_failed_later_turn_saves_the_duration_of_all_turns(
    kind: str, make_backend: Callable[[str], Any]
) -> None:
    backend = make_backend(kind)
    rt = _runtime("react", backend, corrective_reprompt=False)
    session = rt.create_session("a")
    await rt.run_turn(session, "q1", ar.ScriptedProvider(["Thought: t\nAction: FINAL_ANSWER 1"]))
    first = session.duration_ms
    with pytest.raises(ar.AgentLoopError, match="not a ReAct step"):
        await rt.run_turn(session, "q2", ar.ScriptedProvider(["no step here"]))
    assert session.duration_ms > first
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert saved.duration_ms == session.duration_ms
    assert saved.final_answer is None  # the failed turn's session, not the first turn's


async def test_a_resumed_run_counts_the_time_of_the_run_it_continues() -> None:
    backend = ar.InMemoryBackend()
    rt = _runtime("react", backend, corrective_reprompt=False)
    session = rt.create_session("a")
    provider = ar.ScriptedProvider([_reply("react", "quick"), "no step here"])
    with pytest.raises(ar.AgentLoopError, match="not a ReAct step"):
        await rt.run_turn(session, "q", provider)
    failed_ms = session.duration_ms
    done = ar.ScriptedProvider(["Thought: t\nAction: FINAL_ANSWER 1"])
    resumed = await _runtime("react", backend).resume(session.session_id, done)
    assert resumed.final_answer == "1"
    assert resumed.duration_ms > failed_ms
