"""A checkpointed run interrupted anywhere, then resumed, ends as the uninterrupted run.

The property: a run with checkpoints that is cut off at any point (a cancellation, or a
crash after which nothing more is written) and then resumed, possibly cut off once more
and resumed again, ends with the steps (action, arguments, observation, error kind,
tokens) and the final answer of the same run left alone. The model is sent what the
uninterrupted run sent it at each step. A tool that is neither idempotent nor takes the
idempotency key runs at most once a call: a call that may have run is refused by `resume`
with the documented `ToolError`, and the operator then records its outcome with
`settle_call` (performing it by hand first when it had not run), as the docs say to.

The interruption points are counted, not timed: every model call, tool call, guard and
backend operation passes through `World.point`, and the run is cut at the N-th point (N
drawn), so an example replays the same way under one seed.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

REFUSED = re.compile(
    r"tool call '(\w+)' \(step (\d+), call (\d+), idempotency key '[^']*'\) may have run "
    r"before the interruption and the tool is neither idempotent nor takes an idempotency key"
)


# --- the drawn scenario ----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    tool: str  # pay (at most once), look (idempotent), send (takes the key)
    n: int  # unique in the script: names the call's effect
    pre: int  # suspension points before the effect
    post: int  # and after it
    fails: bool  # the tool raises after its effect
    decision: str  # what the approval handler decides (when there is one)


@dataclass(frozen=True)
class Scenario:
    mode: str
    parallel: int
    rounds: tuple[tuple[Call, ...], ...]
    model_pauses: tuple[int, ...]  # per model call, the last one answering
    approval: bool
    middleware: bool
    backend: str
    crash: bool

    def call_at(self, step: int, index: int) -> Call:
        """The call at `index` of the round whose first step is `step` (1-based)."""
        first = 1
        for round_ in self.rounds:
            if first == step:
                return round_[index]
            first += len(round_)
        raise AssertionError(f"no round starts at step {step}")


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    mode = draw(st.sampled_from(["tools", "react"]))
    ns = itertools.count(1)
    width = st.integers(1, 3) if mode == "tools" else st.just(1)
    rounds = []
    for _ in range(draw(st.integers(0, 3))):
        rounds.append(
            tuple(
                Call(
                    draw(st.sampled_from(["pay", "look", "send"])),
                    next(ns),
                    draw(st.integers(0, 2)),
                    draw(st.integers(0, 2)),
                    draw(st.booleans()),
                    draw(st.sampled_from(["approve", "edit", "deny"])),
                )
                for _ in range(draw(width))
            )
        )
    return Scenario(
        mode=mode,
        parallel=draw(st.integers(1, 3)),
        rounds=tuple(rounds),
        model_pauses=tuple(draw(st.integers(0, 2)) for _ in range(len(rounds) + 1)),
        approval=draw(st.booleans()),
        middleware=draw(st.booleans()),
        backend=draw(st.sampled_from(["memory", "sqlite"])),
        crash=draw(st.booleans()),
    )


# --- one world: the tools' effects, the model's requests, the interrupter ---------------------


AFTER_FINAL = -1
"""A cut at the first point after the attempt wrote the session's final record."""


@dataclass
class World:
    scenario: Scenario
    effects: list[tuple[str, int]] = field(default_factory=list)  # pay's, at most once each
    looked: list[int] = field(default_factory=list)
    sent: list[tuple[str, int]] = field(default_factory=list)  # (key, n)
    requests: list[tuple[int, str]] = field(default_factory=list)  # (model call, request)
    charged: list[tuple[int, int]] = field(default_factory=list)  # usage of replies given
    points: int = 0
    kinds: list[str] = field(default_factory=list)  # of each point of the last attempt
    cut_at: int | None = None  # or AFTER_FINAL
    target: asyncio.Task[Any] | None = None
    final_written: bool = False  # this attempt wrote the session's final record
    cut_after_final: bool = False  # an attempt was cancelled after it did
    backend: Any = None

    async def point(self, kind: str = "io") -> None:
        self.points += 1
        self.kinds.append(kind)
        due = self.points == self.cut_at or (self.cut_at == AFTER_FINAL and self.final_written)
        if due and self.target is not None:
            self.cut_at = None
            if self.scenario.crash:
                self.backend.dead = True  # nothing more is written: the process is gone
            else:
                self.cut_after_final = self.cut_after_final or self.final_written
            self.target.cancel()
        await asyncio.sleep(0)

    def call(self, n: int) -> Call:
        for round_ in self.scenario.rounds:
            for call in round_:
                if call.n == n % 1000:
                    return call
        raise AssertionError(n)

    async def effect(self, n: int, record: Callable[[], None]) -> str:
        call = self.call(n)
        for _ in range(call.pre):
            await self.point("tool")
        record()
        for _ in range(call.post):
            await self.point("tool")
        if call.fails:
            raise RuntimeError(f"declined {n}")
        return f"done {n}"

    def tools(self) -> list[ar.ToolSpec]:
        world = self

        @ar.tool
        async def pay(n: int) -> str:
            """Pays (not idempotent)."""
            return await world.effect(n, lambda: world.effects.append(("pay", n)))

        @ar.tool(idempotent=True)
        async def look(n: int) -> str:
            """Looks a number up (safe to repeat)."""
            return await world.effect(n, lambda: world.looked.append(n))

        @ar.tool
        async def send(n: int, idempotency_key: str) -> str:
            """Sends once per key."""
            return await world.effect(n, lambda: world.sent.append((idempotency_key, n)))

        return [pay, look, send]

    async def approve(self, session: Any, tool: str, arguments: Any) -> ar.ApprovalDecision:
        await self.point("guard")
        n = arguments["n"]
        decision = self.call(n).decision
        if decision == "edit":
            return ar.ApprovalDecision("edit", arguments={"n": n + 1000})
        if decision == "deny":
            return ar.ApprovalDecision("deny", reason=f"not {n}")
        return ar.ApprovalDecision("approve")

    def middleware(self) -> ar.Middleware:
        world = self

        class Watch(ar.Middleware):
            async def on_tool_call(self, session: Any, tool: str, arguments: Any) -> Any:
                await world.point("guard")
                return None

        return Watch()

    async def model_call(self, index: int, request: str) -> None:
        self.requests.append((index, request))
        for _ in range(self.scenario.model_pauses[index]):
            await self.point("model")

    def model(self) -> Any:
        rounds = self.scenario.rounds
        world = self
        if self.scenario.mode == "tools":

            class Model(ar.ScriptedProvider):
                """Answers by the number of rounds in the chat: a resumed run asks afresh."""

                async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
                    index = sum(m.role == "assistant" for m in messages)
                    await world.model_call(index, repr(list(messages)))
                    usage = ar.Usage(100 + index, 10 + index)
                    if index == len(rounds):
                        reply = ar.ChatResponse("all done", usage=usage, stop_reason="stop")
                    else:
                        calls = [ar.ToolCall(f"c{c.n}", c.tool, {"n": c.n}) for c in rounds[index]]
                        reply = ar.ChatResponse("", calls, usage=usage, stop_reason="tool_calls")
                    world.charged.append((usage.input_tokens, usage.output_tokens))
                    return reply

            return Model([])

        async def infer(prompt: str) -> str:
            index = prompt.count("\nObservation:")
            await world.model_call(index, prompt)
            if index == len(rounds):
                return "Thought: done\nAction: FINAL_ANSWER all done"
            (call,) = rounds[index]
            return f'Thought: go\nAction: {call.tool} {{"n": {call.n}}}'

        return infer


def backend_class(base: type) -> type:
    """`base` whose operations are interruption points; writes fail once it is `dead`."""

    class Cut(base):  # type: ignore[misc,valid-type]
        world: World
        dead = False

        async def _write(self) -> None:
            await self.world.point()
            if self.dead:
                raise ConnectionError("the process is gone")

        def _final(self, keys: Any) -> None:
            if any(re.fullmatch(r"session:[^:]+", key) for key in keys):
                self.world.final_written = True

        async def save(self, key: str, value: bytes) -> None:
            await self._write()
            await super().save(key, value)
            self._final([key])

        async def save_new(self, key: str, value: bytes) -> bool:
            await self._write()
            return bool(await super().save_new(key, value))

        async def delete(self, key: str) -> bool:
            await self._write()
            return bool(await super().delete(key))

        async def batch_save(self, items: Any) -> None:
            await self._write()
            await super().batch_save(items)
            self._final(items)

        async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
            await self._write()
            wrote = bool(await super().batch_save_if(guard_key, guard_value, items))
            if wrote:
                self._final(items)
            return wrote

        async def load(self, key: str) -> bytes | None:
            await self.world.point()
            return await super().load(key)  # type: ignore[no-any-return]

        async def batch_load(self, keys: Any) -> dict[str, bytes]:
            await self.world.point()
            return await super().batch_load(keys)  # type: ignore[no-any-return]

        async def list_keys(self, prefix: str = "") -> list[str]:
            await self.world.point()
            return await super().list_keys(prefix)  # type: ignore[no-any-return]

    return Cut


CutMemory = backend_class(ar.InMemoryBackend)
CutSqlite = backend_class(ar.SqliteBackend)


class Store:
    """One durable store; each runtime (a worker process) opens its own view of it."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self.data: dict[str, bytes] = {}
        self.opened: list[Any] = []

    def open(self, world: World) -> Any:
        if self.kind == "memory":
            backend = CutMemory()
            backend.data = self.data  # the same records, a new (live) connection
        else:
            backend = CutSqlite(self.path)
        backend.world = world
        self.opened.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.opened:
            if self.kind == "sqlite":
                backend.close()


# --- running ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    session: ar.AgentSession
    world: World
    events: list[dict[str, Any]]
    runs: int = 1  # runs started (resumes refused before their run started included)
    settled: int = 0
    metrics: ar.RuntimeMetrics | None = None
    budget: ar.CostBudget | None = None


def make_runtime(
    scenario: Scenario,
    world: World,
    store: Store,
    metrics: ar.RuntimeMetrics,
    budget: ar.CostBudget,
) -> ar.AgentRuntime:
    world.backend = store.open(world)
    config = ar.AgentConfig(
        mode=scenario.mode, max_parallel_tool_calls=scenario.parallel, max_iterations=20
    )
    return ar.AgentRuntime(
        config,
        tools=world.tools(),
        checkpoint_backend=world.backend,
        metrics=metrics,
        budget=budget,
        approval_handler=world.approve if scenario.approval else None,
        middlewares=[world.middleware()] if scenario.middleware else [],
    )


async def attempt(world: World, run: Any, cut_at: int | None) -> Any:
    """Runs `run` as a task cut at its `cut_at`-th point; returns its session or error."""
    world.points, world.cut_at, world.kinds = 0, cut_at, []
    world.final_written = False
    task = asyncio.ensure_future(run)
    world.target = task
    try:
        return await task
    except (asyncio.CancelledError, ar.AgentRuntimeError) as error:
        return error
    finally:
        world.target, world.cut_at = None, None
        for _ in range(3):  # tasks the run left (a claim's release) end
            await asyncio.sleep(0)


def start(runtime: ar.AgentRuntime, world: World, session: ar.AgentSession) -> Any:
    """The run's first attempt (not awaited)."""
    if world.scenario.mode == "tools":
        return runtime.run_agent_with_provider("a", "q", world.model(), session=session)
    return runtime.run_agent("a", "q", world.model(), session=session)


async def uninterrupted(scenario: Scenario, path: Path) -> Outcome:
    world = World(scenario)
    store = Store(scenario.backend, path)
    metrics, budget = ar.RuntimeMetrics(), ar.CostBudget(max_tokens=10**9)
    try:
        runtime = make_runtime(scenario, world, store, metrics, budget)
        session = runtime.create_session("a")
        result = await attempt(world, start(runtime, world, session), None)
        assert result is session, result
        events = await runtime.session_events(session.session_id)
    finally:
        store.close()
    return Outcome(session, world, events, metrics=metrics, budget=budget)


async def interrupted(
    scenario: Scenario, path: Path, cuts: list[int | None], expected: Outcome
) -> Outcome:
    """The run cut at `cuts[0]`, resumed and cut at the next cut, ..., resumed to its end."""
    world = World(scenario)
    store = Store(scenario.backend, path)
    metrics, budget = ar.RuntimeMetrics(), ar.CostBudget(max_tokens=10**9)
    cuts = list(cuts)
    try:
        runtime = make_runtime(scenario, world, store, metrics, budget)
        session = runtime.create_session("a")
        sid = session.session_id
        result = await attempt(world, start(runtime, world, session), cuts.pop(0))
        runs, settled = 1, 0
        crashed = isinstance(result, asyncio.CancelledError) and scenario.crash
        while not isinstance(result, ar.AgentSession):
            assert runs < 12, "the run never ended"
            if isinstance(result, ar.PersistenceError) and "no checkpoint saved" in str(result):
                # Cut before the run's first record was written: nothing of it happened, and
                # it is run again from the start (a new session).
                assert not world.effects and not world.looked and not world.sent
                assert not world.requests
                runtime = make_runtime(scenario, world, store, metrics, budget)
                session = runtime.create_session("a")
                sid = session.session_id
                result = await attempt(world, start(runtime, world, session), None)
                runs += 1
                continue
            if isinstance(result, ar.ToolError):
                settled += await settle(runtime, scenario, world, sid, result, expected)
            elif isinstance(result, ar.PersistenceError) and crashed:
                # A crashed resumer's claim is left behind (its process id is this one's):
                # released once the process is known to have ended, as documented.
                assert "resum" in str(result), result
                assert await runtime.release_resume(sid)
                crashed = False
            else:
                assert isinstance(result, asyncio.CancelledError), repr(result)
            runtime = make_runtime(scenario, world, store, metrics, budget)
            cut = cuts.pop(0) if cuts else None
            result = await attempt(world, runtime.resume(sid, world.model()), cut)
            runs += 1
            crashed = crashed or (isinstance(result, asyncio.CancelledError) and scenario.crash)
        events = await runtime.session_events(sid)
        saved = await ar.AgentSession.load_checkpoint(store.open(world), sid)
        assert saved == result
    finally:
        store.close()
    return Outcome(result, world, events, runs, settled, metrics, budget)


async def settle(
    runtime: ar.AgentRuntime,
    scenario: Scenario,
    world: World,
    sid: str,
    error: ar.ToolError,
    expected: Outcome,
) -> int:
    """The operator's part: checks what the refused call did and records its outcome."""
    found = REFUSED.search(str(error))
    assert found is not None, str(error)
    tool, step, index = found[1], int(found[2]), int(found[3])
    call = scenario.call_at(step, index)
    assert tool == call.tool == "pay", (tool, call)
    n = call.n + 1000 if scenario.approval and call.decision == "edit" else call.n
    if ("pay", n) not in world.effects:  # it had not run: done by hand, once
        world.effects.append(("pay", n))
    done = expected.session.steps[step - 1 + index]
    await runtime.settle_call(sid, step, index, done.observation, done.error_kind)
    return 1


# --- the property ----------------------------------------------------------------------------


def steps(session: ar.AgentSession) -> list[tuple[Any, ...]]:
    return [
        (s.action, s.action_input, s.observation, s.error_kind, s.input_tokens, s.output_tokens)
        for s in session.steps
    ]


def check(scenario: Scenario, expected: Outcome, got: Outcome) -> None:
    assert steps(got.session) == steps(expected.session)
    assert got.session.final_answer == expected.session.final_answer == "all done"
    # The model was sent, at each step, what the uninterrupted run sent it.
    sent = dict(expected.world.requests)
    assert len(sent) == len(expected.world.requests) == len(scenario.rounds) + 1
    for index, request in got.world.requests:
        assert request == sent[index], f"model call {index} was sent another request"
    # At most once (and, with the settled calls done by hand, exactly once).
    assert len(set(got.world.effects)) == len(got.world.effects), got.world.effects
    assert sorted(got.world.effects) == sorted(expected.world.effects)
    # Idempotent: repeated maybe, never lost.
    assert set(got.world.looked) == set(expected.world.looked)
    # Keyed: one key a call, stable across repeats.
    keys = dict(got.world.sent)
    assert len(keys) == len(set(got.world.sent))
    assert sorted(keys.values()) == sorted(n for _, n in expected.world.sent)
    # The tokens charged are the replies' the model gave, each once; and no fewer than the
    # uninterrupted run's.
    assert got.metrics is not None and got.budget is not None
    snapshot = got.metrics.snapshot()
    charged = (snapshot.input_tokens, snapshot.output_tokens)
    assert got.budget.used_tokens == sum(charged)
    assert expected.budget is not None
    assert got.budget.used_tokens >= expected.budget.used_tokens
    if scenario.mode == "tools":
        assert charged == tuple(map(sum, zip(*got.world.charged, strict=True)))
    if len(got.world.requests) == len(expected.world.requests):
        assert got.budget.used_tokens == expected.budget.used_tokens
    check_events(scenario, expected, got)


def check_events(scenario: Scenario, expected: Outcome, got: Outcome) -> None:
    """The event log: one `RunStarted` a run that started, one `RunFinished` in all.

    A run cut off logs an `ErrorEvent` as its end (one cut before its start logs that
    alone); one cut during its final checkpoint logs it after its `RunFinished`, and the
    resume that closes it logs nothing more (see `resume` and `RunFinished`). A crashed
    run's events may be lost with it.
    """
    types = [e["type"] for e in expected.events]
    assert types[0] == "RunStarted" and types[-1] == "RunFinished"
    assert types.count("RunStarted") == types.count("RunFinished") == 1
    types = [e["type"] for e in got.events]
    assert types.count("RunFinished") == 1, types
    end = types.index("RunFinished")
    assert types[end + 1 :] in ([], ["ErrorEvent"]), types
    assert 1 <= types.count("RunStarted") <= got.runs, types
    if not scenario.crash:
        assert types[0] in ("RunStarted", "ErrorEvent"), types
        for i, kind in enumerate(types):
            if kind == "RunStarted" and i > 0:  # the run before it logged its end
                assert types[i - 1] == "ErrorEvent", types
    # A tool call's end is logged once at most (a settled call's never).
    finished = Counter(e.get("tool") for e in got.events if e["type"] == "ToolCallFinished")
    expected_pays = sum(
        e["type"] == "ToolCallFinished" and e.get("tool") == "pay" for e in expected.events
    )
    assert finished["pay"] <= expected_pays


_db = itertools.count()


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios(), data=st.data())
def test_a_run_interrupted_anywhere_and_resumed_ends_as_the_uninterrupted_run(
    scenario: Scenario, data: st.DataObject, tmp_path: Path
) -> None:
    expected = asyncio.run(uninterrupted(scenario, tmp_path / f"u{next(_db)}.db"))
    points = expected.world.points
    # Anywhere; or, as often, inside a tool call, where a call may have run half way.
    inside = [i + 1 for i, kind in enumerate(expected.world.kinds) if kind == "tool"]
    anywhere = st.integers(1, points + 2) | st.just(AFTER_FINAL)
    cuts = st.one_of(anywhere, st.sampled_from(inside)) if inside else anywhere
    first = data.draw(cuts, label="first cut")
    second = data.draw(st.none() | anywhere, label="second cut")
    got = asyncio.run(
        interrupted(scenario, tmp_path / f"i{next(_db)}.db", [first, second], expected)
    )
    check(scenario, expected, got)
    event(f"runs={got.runs} settled={got.settled}")  # shown by --hypothesis-show-statistics
    event(f"mode={scenario.mode} crash={scenario.crash} cut={got.runs > 1}")
    event(f"cut after the final record={got.world.cut_after_final}")


# --- faults found, as plain reproductions ----------------------------------------------------


async def test_a_run_cancelled_after_its_final_record_logs_its_events_once() -> None:
    class DeleteHangs(ar.InMemoryBackend):
        hang = False
        reached = asyncio.Event()

        async def delete(self, key: str) -> bool:
            if self.hang:
                self.reached.set()
                await asyncio.Event().wait()
            return await super().delete(key)

    async def down(prompt: str) -> str:
        raise ConnectionError("model down")

    async def answer(prompt: str) -> str:
        return "Thought: t\nAction: FINAL_ANSWER 5"

    backend = DeleteHangs()
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    session = runtime.create_session("a")
    with pytest.raises(ConnectionError):
        await runtime.run_agent("a", "q", down, session=session)
    backend.hang = True
    task = asyncio.ensure_future(runtime.resume(session.session_id, answer))
    await backend.reached.wait()  # the final record is written; its claim is being deleted
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    backend.hang = False
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert saved.final_answer == "5"  # the run did finish, and is saved so
    types = [e["type"] for e in await runtime.session_events(session.session_id)]
    assert types.count("RunFinished") == 1, types
    # Then the cancellation the caller saw, as the run's end.
    assert types[types.index("RunFinished") + 1 :] in ([], ["ErrorEvent"]), types
