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

db, mode, started, how = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]

@ar.tool
async def pay(amount: int, idempotency_key: str) -> str:
    \"\"\"Pays once per key.\"\"\"
    return f"paid {amount}"

@ar.tool(idempotent=True)
async def wait(idempotency_key: str) -> str:
    \"\"\"Waits for a reply (safe to repeat).\"\"\"
    await asyncio.sleep(1.0)  # the round's other call has long been journaled by then
    with started.open("a") as file:
        file.write("waiting\\n")
    await asyncio.Event().wait()
    return "never"

def model_of() -> object:
    if mode == "tools":
        return ar.ScriptedProvider(
            [ar.ScriptedProvider.tool_call_reply([("pay", {"amount": 10}), ("wait", {})])]
        )
    # "reprompt": a reply that is no step first, re-prompted (and paid for).
    said = ["I think I should wait.\\n"] if how == "reprompt" else []
    replies = iter([*said, 'Thought: wait for it\\nAction: wait {}\\nObservation: done\\n'])

    async def model(prompt: str) -> str:
        return next(replies)

    return model

async def main() -> None:
    config = ar.AgentConfig(mode=mode, corrective_reprompt=how == "reprompt")
    runtime = ar.AgentRuntime(config, tools=[pay, wait], checkpoint_backend=ar.SqliteBackend(db))
    session = runtime.create_session("a", "job")
    if how == "again":  # a first run cut off as its slow call waits, its turn run again
        try:
            await asyncio.wait_for(runtime.run_turn(session, "pay and wait", model_of()), 1.5)
        except TimeoutError:
            pass
    await runtime.run_turn(session, "pay and wait", model_of())

asyncio.run(main())
"""


def killed_while_waiting(tmp_path: Path, mode: str, how: str = "once") -> Path:
    """Runs the child until its (last run's) slow call started, kills it; returns the
    database. `how`: "once", "again" (a first run cut off, its turn run again), "reprompt"
    (ReAct: a first reply re-prompted)."""
    db = tmp_path / "checkpoints.db"
    started = tmp_path / "started"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    child = subprocess.Popen([sys.executable, str(script), str(db), mode, str(started), how])
    waits = 2 if how == "again" else 1
    try:
        deadline = time.monotonic() + 60
        while not started.exists() or len(started.read_text().split()) < waits:
            assert child.poll() is None, "the child ended before its call started"
            assert time.monotonic() < deadline, "the child's call never started"
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    return db


class Resumer:
    """A new process's runtime over the killed child's database, with the child's tools (that
    count their runs), resuming its session with a model that answers at once."""

    def __init__(self, db: Path, mode: str) -> None:
        self.db, self.mode = db, mode
        self.ran: list[str] = []
        self.hold = False  # `wait` never answers

    def runtime(self) -> ar.AgentRuntime:
        ran = self.ran
        resumer = self

        @ar.tool
        async def pay(amount: int, idempotency_key: str) -> str:
            """Pays once per key."""
            ran.append("pay")
            return f"paid {amount}"

        @ar.tool(idempotent=True)
        async def wait(idempotency_key: str) -> str:
            """Waits for a reply (safe to repeat)."""
            ran.append("wait")
            if resumer.hold:
                await asyncio.Event().wait()
            return "came"

        return ar.AgentRuntime(
            ar.AgentConfig(mode=self.mode),  # type: ignore[arg-type]
            tools=[pay, wait],
            checkpoint_backend=ar.SqliteBackend(self.db),
        )

    async def resume(
        self, listener: Any = None
    ) -> tuple[ar.AgentSession, list[dict[str, Any]], list[Any]]:
        runtime = self.runtime()
        seen: list[Any] = []
        runtime.events.on(seen.append)
        if listener is not None:
            runtime.events.on(listener)
        model: Any
        if self.mode == "tools":
            model = ar.ScriptedProvider(["done"])
        else:

            async def model(prompt: str) -> str:
                return "Thought: done\nAction: FINAL_ANSWER done"

        session = await runtime.resume("job", model)
        return session, await runtime.session_events("job"), seen


def logged(log: list[dict[str, Any]], kind: str, *fields: str) -> list[tuple[Any, ...]]:
    return [tuple(e[f] for f in fields) for e in log if e["type"] == kind]


@pytest.mark.parametrize("mode", ["tools", "react"])
def test_a_resume_logs_the_reply_and_the_finished_calls_a_killed_process_lost(
    tmp_path: Path, mode: str
) -> None:
    resumer = Resumer(killed_while_waiting(tmp_path, mode), mode)
    session, log, seen = asyncio.run(resumer.resume())
    assert session.final_answer == "done"
    assert resumer.ran == ["wait"]  # the finished call is not run again
    calls = [(s.action, s.observation) for s in session.steps]
    if mode == "tools":
        assert calls == [("pay", "paid 10"), ("wait", "came"), ("FINAL_ANSWER", "")]
    else:
        assert calls == [("wait", "came"), ("FINAL_ANSWER", "")]
    # Each step's reply and each call's end logged once: the killed process's, by the resume
    # (a ReAct reply as its step was read from it).
    replies = logged(log, "LlmResponse", "step", "text")
    first_reply = "" if mode == "tools" else "Thought: wait for it\nAction: wait {}"
    final_step = len(session.steps) - 1
    final_reply = "done" if mode == "tools" else "Thought: done\nAction: FINAL_ANSWER done"
    assert replies == [(0, first_reply), (final_step, final_reply)]
    ends = sorted(logged(log, "ToolCallFinished", "step", "tool", "observation"))
    starts = sorted(logged(log, "ToolCallStarted", "step", "tool"))
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


def test_a_resume_logs_the_killed_run_s_payment_beside_an_earlier_run_s_alike(
    tmp_path: Path,
) -> None:
    # A first run, cut off, logged its reply and payment; its turn was run again (a run of
    # its own, paying again under its own key), and that process died. The resume took the
    # first run's events for its own, and logged neither its reply nor its payment.
    resumer = Resumer(killed_while_waiting(tmp_path, "tools", "again"), "tools")
    session, log, _ = asyncio.run(resumer.resume())
    assert session.final_answer == "done" and resumer.ran == ["wait"]
    assert (
        logged(log, "ToolCallFinished", "step", "tool", "observation").count((0, "pay", "paid 10"))
        == 2
    )
    assert logged(log, "LlmResponse", "step", "text").count((0, "")) == 2


def test_a_resume_logs_the_re_prompted_reply_a_killed_process_lost(tmp_path: Path) -> None:
    resumer = Resumer(killed_while_waiting(tmp_path, "react", "reprompt"), "react")
    session, log, _ = asyncio.run(resumer.resume())
    assert session.final_answer == "done"
    assert logged(log, "LlmResponse", "step", "text") == [
        (0, "I think I should wait.\n"),  # paid for, and sent back with the re-prompt
        (0, "Thought: wait for it\nAction: wait {}"),
        (1, "Thought: done\nAction: FINAL_ANSWER done"),
    ]


def test_a_listener_failing_on_a_reused_call_s_start_still_logs_its_end_once(
    tmp_path: Path,
) -> None:
    resumer = Resumer(killed_while_waiting(tmp_path, "tools"), "tools")
    failed = []

    def listener(event: Any) -> None:
        if isinstance(event, ar.ToolCallStarted) and not failed:
            failed.append(event)
            raise RuntimeError("listener failed")

    with pytest.raises(RuntimeError, match="listener failed"):
        asyncio.run(resumer.resume(listener))
    session, log, _ = asyncio.run(resumer.resume())
    assert session.final_answer == "done" and "pay" not in resumer.ran
    assert logged(log, "ToolCallStarted", "step", "tool").count((0, "pay")) == 1
    assert logged(log, "ToolCallFinished", "step", "tool").count((0, "pay")) == 1


async def test_a_resume_after_a_cancel_logs_nothing_again_of_a_reply_read_in_part(
    tmp_path: Path,
) -> None:
    # The reply is logged as the model gave it; its step, journaled, is what was read of it
    # (up to the action). The resume took them for two replies and logged the step again.
    resumer = Resumer(tmp_path / "checkpoints.db", "react")
    resumer.hold = True
    runtime = resumer.runtime()
    session = runtime.create_session("a", "job")
    said = "Thought: wait for it\nAction: wait {}\nObservation: made up\n"

    async def model(prompt: str) -> str:
        return said

    task = asyncio.ensure_future(runtime.run_turn(session, "wait", model))
    while "wait" not in resumer.ran:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    resumer.hold = False
    resumed, log, _ = await resumer.resume()
    assert resumed.final_answer == "done"
    replies = logged(log, "LlmResponse", "step", "text")
    assert replies == [(0, said), (1, "Thought: done\nAction: FINAL_ANSWER done")]
