"""The event log of a run whose process died mid-step, then resumed.

The log is written with each step's checkpoint, so a process killed inside a step takes that
step's events with it. The resume reuses what the journal kept of the step (the model's
reply, the calls that finished) without asking the model or running the tools again: it
logs (and emits) their events then, so the log has them once. A call it runs again logs its
own. A run cancelled there logged its events as it ended: the resume adds none of those
(tests/persistence/test_resume_after_cancel_cases.py).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar

# The child runs the agent until the slow tool has started, the other calls done and
# journaled; the parent kills it there (SIGKILL: nothing more is written).
CHILD = """
import asyncio, sys
from pathlib import Path
import llm_agent_runtime as ar

db, mode, started = sys.argv[1], sys.argv[2], Path(sys.argv[3])

@ar.tool
async def pay(amount: int, idempotency_key: str) -> str:
    \"\"\"Pays once per key.\"\"\"
    return f"paid {amount}"

@ar.tool(idempotent=True)
async def wait(idempotency_key: str) -> str:
    \"\"\"Waits for a reply (safe to repeat).\"\"\"
    await asyncio.sleep(1.0)  # the round's other call has long been journaled by then
    started.write_text("waiting")
    await asyncio.Event().wait()
    return "never"

async def main() -> None:
    if mode == "tools":
        model = ar.ScriptedProvider(
            [ar.ScriptedProvider.tool_call_reply([("pay", {"amount": 10}), ("wait", {})])]
        )
    else:
        replies = iter(['Thought: wait for it\\nAction: wait {}'])

        async def model(prompt: str) -> str:
            return next(replies)

    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode=mode), tools=[pay, wait], checkpoint_backend=ar.SqliteBackend(db)
    )
    session = runtime.create_session("a", "job")
    await runtime.run_turn(session, "pay and wait", model)

asyncio.run(main())
"""


def killed_while_waiting(tmp_path: Path, mode: str) -> Path:
    """Runs the child until its slow call started, kills it; returns the database."""
    db = tmp_path / "checkpoints.db"
    started = tmp_path / "started"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    child = subprocess.Popen([sys.executable, str(script), str(db), mode, str(started)])
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert child.poll() is None, "the child ended before its call started"
            assert time.monotonic() < deadline, "the child's call never started"
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    return db


@pytest.mark.parametrize("mode", ["tools", "react"])
def test_a_resume_logs_the_reply_and_the_finished_calls_a_killed_process_lost(
    tmp_path: Path, mode: str
) -> None:
    db = killed_while_waiting(tmp_path, mode)
    ran: list[str] = []

    @ar.tool
    async def pay(amount: int, idempotency_key: str) -> str:
        """Pays once per key."""
        ran.append("pay")
        return f"paid {amount}"

    @ar.tool(idempotent=True)
    async def wait(idempotency_key: str) -> str:
        """Waits for a reply (safe to repeat)."""
        ran.append("wait")
        return "came"

    async def resume() -> tuple[ar.AgentSession, list[dict[str, Any]], list[Any]]:
        runtime = ar.AgentRuntime(
            ar.AgentConfig(mode=mode),  # type: ignore[arg-type]
            tools=[pay, wait],
            checkpoint_backend=ar.SqliteBackend(db),
        )
        seen: list[Any] = []
        runtime.events.on(seen.append)
        model: Any
        if mode == "tools":
            model = ar.ScriptedProvider(["done"])
        else:

            async def model(prompt: str) -> str:
                return "Thought: done\nAction: FINAL_ANSWER done"

        session = await runtime.resume("job", model)
        return session, await runtime.session_events("job"), seen

    session, log, seen = asyncio.run(resume())
    assert session.final_answer == "done"
    assert ran == ["wait"]  # the finished call is not run again
    calls = [(s.action, s.observation) for s in session.steps]
    if mode == "tools":
        assert calls == [("pay", "paid 10"), ("wait", "came"), ("FINAL_ANSWER", "")]
    else:
        assert calls == [("wait", "came"), ("FINAL_ANSWER", "")]
    # Each step's reply and each call's end logged once: the killed process's, by the resume.
    replies = [(e["step"], e["text"]) for e in log if e["type"] == "LlmResponse"]
    first_reply = "" if mode == "tools" else "Thought: wait for it\nAction: wait {}"
    final_step = len(session.steps) - 1
    final_reply = "done" if mode == "tools" else "Thought: done\nAction: FINAL_ANSWER done"
    assert replies == [(0, first_reply), (final_step, final_reply)]
    ends = sorted(
        (e["step"], e["tool"], e["observation"]) for e in log if e["type"] == "ToolCallFinished"
    )
    starts = sorted((e["step"], e["tool"]) for e in log if e["type"] == "ToolCallStarted")
    if mode == "tools":
        assert ends == [(0, "pay", "paid 10"), (1, "wait", "came")]
        assert starts == [(0, "pay"), (1, "wait")]
    else:
        assert ends == [(0, "wait", "came")]
        assert starts == [(0, "wait")]
    # The resumed run's listeners were told of them too, in the order the log has them (a
    # listener has the text deltas as well, which the log leaves out).
    unlogged = (ar.CheckpointSaved, ar.LlmTextDelta)
    emitted = [type(e).__name__ for e in seen if not isinstance(e, unlogged)]
    assert emitted == [e["type"] for e in log]
