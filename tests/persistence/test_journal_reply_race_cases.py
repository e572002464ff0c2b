"""A checkpointed run whose next step another worker journaled while its model answered.

A guarded run (an approval handler here) journals the model's reply under the step's call 0
before the guards decide, and a run re-prompting the model journals the re-prompt there
(`AgentRuntime._journal_reply`). A first run holds no claim while it goes on, so a worker
resuming the session meanwhile runs the same run (same run id: its entries are live, not
stale) and may journal a call of that step first. The run whose write comes second must
stop with `PersistenceError`, leave the other worker's entry as it is and run no tool: the
other worker runs the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore
from llm_agent_runtime.persistence.codec import decode

SESSION = "raced"
KEY = f"session:{SESSION}:call:1:0"  # step 1's call 0: where its reply is journaled
ADD = 'Thought: add\nAction: add {"a": 1, "b": 2}'
FINAL = "Thought: done\nAction: FINAL_ANSWER 3"


@pytest.fixture(params=["memory", "sqlite"])
def views(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], ar.PersistenceBackend]]:
    """Each call a worker's view of one store: the same in-memory backend, or a connection
    of its own to one SQLite file."""
    opened: list[ar.SqliteBackend] = []
    memory = ar.InMemoryBackend()

    def view() -> ar.PersistenceBackend:
        if request.param == "memory":
            return memory
        opened.append(ar.SqliteBackend(tmp_path / "store.db"))
        return opened[-1]

    yield view
    for backend in opened:
        backend.close()


class Worker:
    """A runtime of its own over the shared store. Its call of `add` with `a=last` waits
    for `go`; a round's calls run one at a time, so the others have ended by then."""

    def __init__(
        self, name: str, store: ar.PersistenceBackend, mode: str, last: int, ran: list[str]
    ) -> None:
        self.asked: list[Any] = []
        self.started, self.go = asyncio.Event(), asyncio.Event()
        self.metrics = ar.RuntimeMetrics()
        worker = self

        @ar.tool
        async def add(a: int, b: int) -> str:
            """Adds two numbers (a side effect: recorded as it runs)."""
            ran.append(f"{name} {a}+{b}")
            if a == last:
                worker.started.set()
                await worker.go.wait()
            return str(a + b)

        async def approve(session: Any, tool: str, arguments: Any) -> ar.ApprovalDecision:
            worker.asked.append(arguments)
            return ar.ApprovalDecision("approve")

        config = ar.AgentConfig(mode=mode, max_parallel_tool_calls=1, corrective_reprompt=True)
        self.runtime = ar.AgentRuntime(
            config,
            tools=[add],
            checkpoint_backend=store,
            metrics=self.metrics,
            approval_handler=approve,
        )


def round_reply(count: int) -> ar.ChatResponse:
    calls = [ar.ToolCall(f"call_{i}", "add", {"a": i + 1, "b": 2}) for i in range(count)]
    return ar.ChatResponse("", calls, usage=ar.Usage(10, 5), stop_reason="tool_calls")


class HeldProvider(ar.ScriptedProvider):
    """A scripted provider whose first reply comes only once `go` is set."""

    def __init__(self, replies: list[Any]) -> None:
        super().__init__(replies)
        self.out, self.go = asyncio.Event(), asyncio.Event()

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
        if not self.out.is_set():
            self.out.set()
            await self.go.wait()
        return await super().chat(messages, tools, **params)


class HeldInfer:
    """A ReAct model whose first reply (`reply`) comes only once `go` is set."""

    def __init__(self, reply: str) -> None:
        self.reply, self.calls = reply, 0
        self.out, self.go = asyncio.Event(), asyncio.Event()

    async def __call__(self, prompt: str) -> str:
        self.calls += 1
        self.out.set()
        await self.go.wait()
        return self.reply


@dataclass
class Race:
    first: Worker
    session: ar.AgentSession  # the first worker's
    ran: list[str]
    model: HeldInfer | HeldProvider  # the first worker's
    held_raw: bytes  # the second worker's entry, as the key held it before the first wrote
    error: ar.PersistenceError


def message(state: str) -> str:
    return re.escape(
        f"step 1 of session {SESSION!r} was journaled by another worker meanwhile "
        f"(a call's {state!r} entry): it runs the step, this run stops"
    )


@contextlib.asynccontextmanager
async def race(
    views: Callable[[], ar.PersistenceBackend], mode: str, calls: int, first_reply: Any
) -> AsyncIterator[Race]:
    """The first worker's run of the session, its model's `first_reply` held until a worker
    resuming the session runs step 1's last call; then the reply comes, and the first run
    fails. Yields the race so; after the block, the second worker ends its run."""
    ran: list[str] = []
    first = Worker("first", views(), mode, calls, ran)
    second = Worker("second", views(), mode, calls, ran)
    first.go.set()  # a call it should not make then shows in `ran`, not as a hang
    session = first.runtime.create_session("a", SESSION)
    model: HeldInfer | HeldProvider
    resumer: Any
    if mode == "react":
        model = HeldInfer(first_reply)
        running = asyncio.ensure_future(first.runtime.run_agent("a", "q", model, session=session))
        replies = [ADD, FINAL]

        async def resumer(prompt: str) -> str:
            return replies.pop(0)

    else:
        model = HeldProvider([first_reply])
        running = asyncio.ensure_future(
            first.runtime.run_agent_with_provider("a", "q", model, session=session)
        )
        resumer = ar.ScriptedProvider([round_reply(calls), "3"])
    await model.out.wait()

    # No claim to find: the resume runs the same run. It journals step 1's call 0 (its
    # intent; in a round, call 0 has ended: its result) and holds its last call.
    resuming = asyncio.ensure_future(second.runtime.resume(SESSION, resumer))
    try:
        await second.started.wait()
        store = views()
        held_raw = await store.load(KEY)
        assert held_raw is not None
        held = decode(held_raw, KEY, "call")
        assert held["state"] == ("done" if calls == 2 else "intent") and held["tool"] == "add"
        run = await CheckpointStore(store).current_run(SESSION)
        assert run is not None and held["run"] == run  # live for the first run: not stale

        model.go.set()
        with pytest.raises(ar.PersistenceError, match=message(held["state"])) as raised:
            await running
        yield Race(first, session, ran, model, held_raw, raised.value)
    except BaseException:  # no task left behind a failed check
        for task in (running, resuming):
            task.cancel()
        await asyncio.gather(running, resuming, return_exceptions=True)
        raise

    # The second worker runs the step once, and the session is its.
    second.go.set()
    done = await resuming
    assert ran == [f"second {i + 1}+2" for i in range(calls)]
    assert [s.action for s in done.steps] == ["add"] * calls + ["FINAL_ANSWER"]
    assert done.final_answer == "3"
    assert await ar.AgentSession.load_checkpoint(views(), SESSION) == done


async def check_stopped(race: Race, views: Callable[[], ar.PersistenceBackend]) -> None:
    """The first run stopped on the key before its guards, ran no tool, wrote nothing over
    the other's entry, and recorded no step."""
    assert race.error.key == KEY
    assert race.model.calls == 1  # nor asked again (a re-prompt not sent)
    assert race.first.asked == []  # stopped before its guards decide
    assert [r for r in race.ran if not r.startswith("second")] == []
    assert await views().load(KEY) == race.held_raw
    assert race.session.steps == [] and race.session.final_answer is None
    assert race.session.checkpoint_errors == 0  # a stop, not a failed write
    snapshot = race.first.metrics.snapshot()
    assert snapshot.total_steps == snapshot.total_tool_calls == snapshot.checkpoint_errors == 0


@pytest.mark.parametrize(
    ("mode", "calls"), [("react", 1), ("tools", 1), ("tools", 2)], ids=["react", "one", "round"]
)
async def test_a_reply_journaled_after_another_workers_call_stops_the_run(
    views: Callable[[], ar.PersistenceBackend], mode: str, calls: int
) -> None:
    reply = ADD if mode == "react" else round_reply(calls)
    async with race(views, mode, calls, reply) as raced:
        await check_stopped(raced, views)


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_reprompt_journaled_after_another_workers_call_stops_the_run(
    views: Callable[[], ar.PersistenceBackend], mode: str
) -> None:
    # A reply that is no step (an empty one in tools mode) is re-prompted: the re-prompt is
    # journaled first, and the model is not asked again.
    reply = "no step here" if mode == "react" else ""
    async with race(views, mode, 1, reply) as raced:
        await check_stopped(raced, views)
