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
drawn), so an example replays the same way under one seed. On PostgreSQL and Redis a
backend operation is also cut while under way, and a write once it landed (its reply lost).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from probes import native_reply, react_reply

import llm_agent_runtime as ar
from llm_agent_runtime.persistence import checkpoints

from .conftest import waiting_for_a_lock

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
    lease: float | None = None  # the resumes' (`resume_lease_seconds`): their writes fenced

    def call_at(self, step: int, index: int) -> Call:
        """The call at `index` of the round whose first step is `step` (1-based)."""
        first = 1
        for round_ in self.rounds:
            if first == step:
                return round_[index]
            first += len(round_)
        raise AssertionError(f"no round starts at step {step}")


@st.composite
def scenarios(draw: st.DrawFn, backends: Sequence[str] = ("memory", "sqlite")) -> Scenario:
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
    parallel = draw(st.integers(1, 3))
    model_pauses = tuple(draw(st.integers(0, 2)) for _ in range(len(rounds) + 1))
    approval, middleware = draw(st.booleans()), draw(st.booleans())
    backend = draw(st.sampled_from(backends))
    crash = draw(st.booleans())
    # Long: never renewed nor passed in an example (a renewal would be a timed point).
    lease = draw(st.sampled_from([None, 600.0])) if backend in SERVERS else None
    return Scenario(
        mode=mode,
        parallel=parallel,
        rounds=tuple(rounds),
        model_pauses=model_pauses,
        approval=approval,
        middleware=middleware,
        backend=backend,
        crash=crash,
        lease=lease,
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
    cut_kinds: list[str] = field(default_factory=list)  # of the points cut at

    async def point(self, kind: str = "io") -> None:
        self.points += 1
        self.kinds.append(kind)
        due = self.points == self.cut_at or (self.cut_at == AFTER_FINAL and self.final_written)
        if due and self.target is not None:
            self.cut_at = None
            self.cut_kinds.append(kind)
            if self.scenario.crash:
                self.backend.dead = True  # nothing more is written: the process is gone
            else:
                self.cut_after_final = self.cut_after_final or self.final_written
            self.target.cancel()
        await asyncio.sleep(0)

    async def in_flight(self, operation: Awaitable[Any]) -> Any:
        """Awaits a backend's `operation`, a point too: cut there, while it is under way.

        The cut lands at the operation's first wait (for a connection, or for the server's
        reply to what was sent), not before it starts, as a point's does.
        """
        self.points += 1
        self.kinds.append("flight")
        if self.points == self.cut_at and self.target is not None:
            self.cut_at = None
            self.cut_kinds.append("flight")
            if self.scenario.crash:
                self.backend.dead = True
            asyncio.get_running_loop().call_soon(self.target.cancel)
        return await operation

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
                    reply = native_reply(rounds, index, usage)
                    world.charged.append((usage.input_tokens, usage.output_tokens))
                    return reply

            return Model([])

        async def infer(prompt: str) -> str:
            index = prompt.count("\nObservation:")
            await world.model_call(index, prompt)
            return react_reply(rounds, index)

        return infer


def backend_class(base: type, lost_replies: bool = False) -> type:
    """`base` whose operations are interruption points; writes fail once it is `dead`.

    With `lost_replies` (a server's), an operation is also one while under way (see
    `World.in_flight`), and a write once it landed: cut there, its caller sees a
    cancellation, or (a crash) an error, for a write the store holds, as a client of a
    server does when the connection drops before the reply.
    """

    class Cut(base):  # type: ignore[misc,valid-type]
        world: World
        dead = False

        async def _write(self) -> None:
            await self.world.point()
            if self.dead:
                raise ConnectionError("the process is gone")

        async def _landed(self) -> None:
            if lost_replies:
                await self.world.point("landed")
                if self.dead:
                    raise ConnectionError("the process is gone: the write's reply was lost")

        async def _flying(self, operation: Awaitable[Any]) -> Any:
            if lost_replies:
                return await self.world.in_flight(operation)
            return await operation

        def _final(self, keys: Any) -> None:
            if any(re.fullmatch(r"session:[^:]+", key) for key in keys):
                self.world.final_written = True

        async def save(self, key: str, value: bytes) -> None:
            await self._write()
            await self._flying(super().save(key, value))
            self._final([key])
            await self._landed()

        async def save_new(self, key: str, value: bytes) -> bool:
            await self._write()
            wrote = bool(await self._flying(super().save_new(key, value)))
            await self._landed()
            return wrote

        async def delete(self, key: str) -> bool:
            await self._write()
            existed = bool(await self._flying(super().delete(key)))
            await self._landed()
            return existed

        async def batch_save(self, items: Any) -> None:
            await self._write()
            await self._flying(super().batch_save(items))
            self._final(items)
            await self._landed()

        async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
            await self._write()
            wrote = bool(await self._flying(super().batch_save_if(guard_key, guard_value, items)))
            if wrote:
                self._final(items)
            await self._landed()
            return wrote

        async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: Any) -> bool:
            await self._write()
            held = bool(await self._flying(super().batch_delete_if(guard_key, guard_value, keys)))
            await self._landed()
            return held

        async def load(self, key: str) -> bytes | None:
            await self.world.point()
            return await self._flying(super().load(key))  # type: ignore[no-any-return]

        async def batch_load(self, keys: Any) -> dict[str, bytes]:
            await self.world.point()
            return await self._flying(super().batch_load(keys))  # type: ignore[no-any-return]

        async def list_keys(self, prefix: str = "") -> list[str]:
            await self.world.point()
            return await self._flying(super().list_keys(prefix))  # type: ignore[no-any-return]

    return Cut


CutMemory = backend_class(ar.InMemoryBackend)
CutSqlite = backend_class(ar.SqliteBackend)
CutPostgres = backend_class(ar.PostgresBackend, lost_replies=True)
CutRedis = backend_class(ar.RedisBackend, lost_replies=True)

SERVERS = {
    "postgres": "LLM_AGENT_RUNTIME_TEST_POSTGRES_DSN",
    "redis": "LLM_AGENT_RUNTIME_TEST_REDIS_URL",
}
"""The backends on a server, and the variable naming each one's test server."""


def server_address(kind: str) -> str:
    """The test server of `kind`; skipped (failed under `make test`) where it is not set."""
    address = os.environ.get(SERVERS[kind])
    if not address:
        if os.environ.get("LLM_AGENT_RUNTIME_REQUIRE_SERVICES"):
            pytest.fail(f"{SERVERS[kind]} is not set, but make test must run {kind}")
        pytest.skip(f"no {kind} server: run `make test`, or set {SERVERS[kind]}")
    return address


class Store:
    """One durable store; each runtime (a worker process) opens its own view of it."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self.data: dict[str, bytes] = {}
        self.opened: list[Any] = []
        # On a server: a table (key prefix) of this store alone, as a file is on disk.
        self.name = f"kv_anywhere_{uuid.uuid4().hex}"

    def open(self, world: World) -> Any:
        if self.kind == "memory":
            backend = CutMemory()
            backend.data = self.data  # the same records, a new (live) connection
        elif self.kind == "postgres":
            # A pool of its own, as a worker process has.
            backend = CutPostgres(os.environ[SERVERS["postgres"]], table=self.name, max_size=4)
        elif self.kind == "redis":
            backend = CutRedis(os.environ[SERVERS["redis"]], prefix=f"test:{self.name}:")
        else:
            backend = CutSqlite(self.path)
        backend.world = world
        self.opened.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.opened:
            if self.kind == "sqlite":
                backend.close()

    async def aclose(self) -> None:
        """`close`, and a server's records dropped and its views' pools closed.

        Within the loop that opened them: a pool's connections belong to it.
        """
        self.close()
        if self.kind not in SERVERS or not self.opened:
            return
        try:
            last = self.opened[-1]
            if self.kind == "postgres":
                await last._execute(None, f'DROP TABLE IF EXISTS "{self.name}"', [])
            else:
                keys = [k async for k in last.client.scan_iter(match=f"test:{self.name}:*")]
                if keys:
                    await last.client.delete(*keys)
        finally:
            for backend in self.opened:
                await backend.close()


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
        resume_lease_seconds=scenario.lease,
    )


async def attempt(world: World, run: Any, cut_at: int | None) -> Any:
    """Runs `run` as a task cut at its `cut_at`-th point; returns its session or error."""
    world.points, world.cut_at, world.kinds = 0, cut_at, []
    world.final_written = False
    if isinstance(world.backend, ar.PostgresBackend):
        await world.backend.open()  # its pool's tasks live on: not the run's
    before = asyncio.all_tasks()
    task = asyncio.ensure_future(run)
    world.target = task
    try:
        return await task
    except (asyncio.CancelledError, ar.AgentRuntimeError) as error:
        return error
    finally:
        world.target, world.cut_at = None, None
        await left_tasks_end(before)  # a claim's release, a write landing after the cut


async def left_tasks_end(before: set[asyncio.Task[Any]], within: float = 20.0) -> None:
    """Waits for the tasks made since `before` (a claim's deletion) to end.

    On a server they take round trips, and on SQLite or files a worker thread's turns, not a
    few loop turns (a few turns left SQLite's pending in some examples, and under load a
    resume then found the claim); a resume started before they end would find the claim
    they delete, which a worker started later would not.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        left = {t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()}
        left = {t for t in left if not t.done()}
        if not left:
            return
        assert loop.time() < deadline, f"tasks the run left never ended: {left}"
        await asyncio.wait(left, timeout=deadline - loop.time())


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
        await store.aclose()
    return Outcome(session, world, events, metrics=metrics, budget=budget)


class Clock:
    """`time` as the checkpoints see it: the wall clock, `ahead` seconds on."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def time(self) -> float:
        return time.time() + self.ahead

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


async def interrupted(
    scenario: Scenario, path: Path, cuts: list[int | None], expected: Outcome
) -> Outcome:
    """The run cut at `cuts[0]`, resumed and cut at the next cut, ..., resumed to its end."""
    world = World(scenario)
    store = Store(scenario.backend, path)
    metrics, budget = ar.RuntimeMetrics(), ar.CostBudget(max_tokens=10**9)
    cuts = list(cuts)
    clock = Clock()
    ticking = mock.patch.object(checkpoints, "time", clock)
    ticking.start()
    try:
        runtime = make_runtime(scenario, world, store, metrics, budget)
        session = runtime.create_session("a")
        sid = session.session_id
        result = await attempt(world, start(runtime, world, session), cuts.pop(0))
        runs, settled = 1, 0
        # An attempt cut by a crash ends as its process went: cancelled, or failing with
        # the error of a write the dead backend refused (cut while under way, the cut lands
        # after the error it caused).
        gone = scenario.crash and len(world.cut_kinds) == 1
        crashed = gone
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
                gone = False
                continue
            if isinstance(result, ar.ToolError):
                settled += await settle(runtime, scenario, world, sid, result, expected)
            elif gone:
                assert isinstance(result, asyncio.CancelledError) or "process is gone" in str(
                    result
                ), repr(result)
            elif isinstance(result, ar.PersistenceError) and crashed:
                # A crashed resumer's claim is left behind (its process id is this one's):
                # released once the process is known to have ended, as documented.
                assert "resum" in str(result), result
                assert await runtime.release_resume(sid)
                crashed = False
            else:
                assert isinstance(result, asyncio.CancelledError), repr(result)
            if crashed and scenario.lease is not None:
                # Its lease passes (as the hosts' clocks agree): its claim is taken over.
                clock.ahead += scenario.lease
                crashed = False
            runtime = make_runtime(scenario, world, store, metrics, budget)
            cut = cuts.pop(0) if cuts else None
            before = len(world.cut_kinds)
            result = await attempt(world, runtime.resume(sid, world.model()), cut)
            runs += 1
            gone = scenario.crash and len(world.cut_kinds) > before
            crashed = crashed or gone
        events = await runtime.session_events(sid)
        saved = await ar.AgentSession.load_checkpoint(store.open(world), sid)
        assert saved == result
    finally:
        ticking.stop()
        await store.aclose()
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
    # A tool call's end is logged once at most, and a settled call's once more: its outcome,
    # as the resume reuses it.
    finished = Counter(e.get("tool") for e in got.events if e["type"] == "ToolCallFinished")
    expected_pays = sum(
        e["type"] == "ToolCallFinished" and e.get("tool") == "pay" for e in expected.events
    )
    assert finished["pay"] <= expected_pays + got.settled
    # Every call the session keeps has its end logged with the observation it keeps, even
    # one a dead process ran (the resume logs what it reuses from the journal).
    ends = {
        (e["step"], e["tool"], e["observation"])
        for e in got.events
        if e["type"] == "ToolCallFinished"
    }
    for i, step in enumerate(got.session.steps):
        if step.action in ("pay", "look", "send"):
            assert (i, step.action, step.observation) in ends, (i, step, ends)


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
    interrupt_anywhere(scenario, data, tmp_path)


def interrupt_anywhere(scenario: Scenario, data: st.DataObject, tmp_path: Path) -> None:
    """The property, for one scenario: its run uninterrupted, then cut (as drawn) and resumed."""
    expected = asyncio.run(uninterrupted(scenario, tmp_path / f"u{next(_db)}.db"))
    points = expected.world.points
    # Anywhere; or, as often, inside a tool call, where a call may have run half way.
    inside = [i + 1 for i, kind in enumerate(expected.world.kinds) if kind == "tool"]
    anywhere = st.integers(1, points + 2) | st.just(AFTER_FINAL)
    cuts = st.one_of(anywhere, st.sampled_from(inside)) if inside else anywhere
    # Or, on a server, while an operation is under way, or once a write landed.
    kinds = ("flight", "landed")
    served = [i + 1 for i, kind in enumerate(expected.world.kinds) if kind in kinds]
    if served:
        cuts = cuts | st.sampled_from(served)
        anywhere = anywhere | st.sampled_from(served)
    first = data.draw(cuts, label="first cut")
    second = data.draw(st.none() | anywhere, label="second cut")
    got = asyncio.run(
        interrupted(scenario, tmp_path / f"i{next(_db)}.db", [first, second], expected)
    )
    check(scenario, expected, got)
    event(f"runs={got.runs} settled={got.settled}")  # shown by --hypothesis-show-statistics
    event(f"mode={scenario.mode} crash={scenario.crash} cut={got.runs > 1}")
    event(f"cut after the final record={got.world.cut_after_final}")
    event(f"backend={scenario.backend} lease={scenario.lease}")
    event(f"cut at={'+'.join(got.world.cut_kinds) or 'none'}")


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> str:
    """A backend on a test server (`make test` starts them); skipped where it is not set."""
    kind: str = request.param
    server_address(kind)
    return kind


@settings(
    max_examples=100,  # a server's round trips: an example takes ten times a local one's
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_on_a_server_a_run_interrupted_anywhere_and_resumed_ends_as_the_uninterrupted_run(
    server: str, data: st.DataObject, tmp_path: Path
) -> None:
    """The property on PostgreSQL and Redis, whose conditional writes are their own."""
    scenario = data.draw(scenarios(backends=[server]), label="scenario")
    interrupt_anywhere(scenario, data, tmp_path)


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

        async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: Any) -> bool:
            if self.hang:
                self.reached.set()
                await asyncio.Event().wait()
            return await super().batch_delete_if(guard_key, guard_value, keys)

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


async def test_postgres_renewal_and_takeover_of_a_claim_at_once_do_not_deadlock() -> None:
    psycopg = pytest.importorskip("psycopg")
    dsn = server_address("postgres")
    table = f"kv_anywhere_{uuid.uuid4().hex}"
    holder = ar.PostgresBackend(dsn, table=table)
    taker = ar.PostgresBackend(dsn, table=table)
    claim, fence = "session:s:resume:0", "session:s:fence:0"
    other = await psycopg.AsyncConnection.connect(dsn)
    watch = await psycopg.AsyncConnection.connect(dsn, autocommit=True)

    try:
        await holder.batch_save({claim: b"held", fence: b"holder"})
        await taker.open()
        # Another reader of the claim holds the renewal back after it locked the fence, so
        # that the takeover locks the claim meanwhile: the interleaving a race may give.
        await other.execute(f'SELECT 1 FROM "{table}" WHERE key = %s FOR SHARE', [claim.encode()])
        renewal = asyncio.ensure_future(holder.batch_save_if(fence, b"holder", {claim: b"renewed"}))
        await waiting_for_a_lock(watch, table, 1)
        takeover = asyncio.ensure_future(
            taker.batch_save_if(claim, b"held", {fence: b"taker", claim: b"taken"})
        )
        await waiting_for_a_lock(watch, table, 2)
        await other.rollback()
        outcomes = await asyncio.gather(renewal, takeover, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        # The renewal lands first: the claim no longer holds what the taker read.
        assert outcomes == [True, False]
        assert await holder.batch_load([claim, fence]) == {claim: b"renewed", fence: b"holder"}
    finally:
        await other.close()
        await watch.close()
        await holder._execute(None, f'DROP TABLE IF EXISTS "{table}"', [])
        await holder.close()
        await taker.close()
