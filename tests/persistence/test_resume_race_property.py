"""Two workers race to resume one interrupted session, under a drawn interleaving.

A checkpointed run is cut off (cancelled, or its process gone), then two workers, each an
`AgentRuntime` with its own view of one store, resume it: one starts first, the other with
it, once the first made some progress, or once it stalled; either may stall (its process
stops: each task of it waits, its lease's renewal too), longer than the lease or not, and
then wake, die (nothing more it sends lands) or be cancelled. Checked, as documented:

- one worker resumes at once: a step record, an event, the final record are each written by
  one worker; a claim is taken over only once its lease passed;
- a worker writes run records (steps, events, end, final record) only while it holds the
  claim: once taken over, even a write it sent before is refused (the fence), and a journal
  write lands only if sent before; it starts no `pay` but on an intent sent before (an
  idempotent lone call, not journaled, may still run: it stops at its next renewal or write);
- `pay` (neither idempotent nor keyed) runs at most once over all workers: a call that may
  have run is refused with the documented `ToolError`, which the operator settles; a keyed
  call repeats under its key;
- a worker that finishes has the uninterrupted run's steps and answer; one that does not is
  refused with `PersistenceError` (or that `ToolError`); one taken over as it stalled does
  not finish;
- then the operator resumes (freeing a dead worker's claim with `release_resume`, or by
  letting its lease pass) until the session ends as the uninterrupted run did, with one
  `RunFinished` in its event log; nothing hangs and no task is left.

The store reads the wall clock for leases (`time.time`, `time.monotonic`) and renews them
with `asyncio.sleep`; all three are one virtual clock here (an event loop whose time moves
only when the test moves it, and the store's `time` bound to it), so a stall outlasts the
lease by a move of the clock, not by a real wait, and an example replays the same way.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.persistence import checkpoints
from llm_agent_runtime.persistence.codec import decode

from .test_resume_anywhere_property import (
    REFUSED,
    Outcome,
    Scenario,
    World,
    scenarios,
    settle,
    start,
    steps,
)

LEASE = 30.0  # virtual seconds
AFTER = 10**6  # a delay: the second starts once the first stalled or ended
HORIZON = 2000.0  # virtual seconds an example may last: beyond it, something hangs
REAL_LIMIT = 30.0  # real seconds an example may last


# --- a virtual clock -------------------------------------------------------------------------


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock stands still until the test moves it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.wall = time.time()
        super().__init__()

    def time(self) -> float:
        return self.now

    def next_timer(self) -> float | None:
        whens = [h.when() for h in self._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        return min(whens, default=None)

    def busy(self) -> bool:
        due = self.next_timer()
        return bool(self._ready) or (due is not None and due <= self.now)  # type: ignore[attr-defined]


def _loop() -> VirtualLoop:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualLoop)
    return loop


class StoreTime:
    """What the checkpoint store reads of `time`: the loop's clock."""

    def time(self) -> float:
        loop = _loop()
        return loop.wall + loop.now

    def monotonic(self) -> float:
        return _loop().now


# --- workers ---------------------------------------------------------------------------------

CURRENT: contextvars.ContextVar[Worker] = contextvars.ContextVar("CURRENT")

SESSION = r"session:[^:]+"
FINAL = re.compile(SESSION)
SINGLE = re.compile(SESSION + r"(:step:\d+|:event:\d+)?")  # each written by one worker
RECORDS = re.compile(SESSION + r"(:step:\d+|:base:\d+|:event:\d+|:ended|:meta|:run:\d+)?")
JOURNAL = re.compile(SESSION + r":call:\d+:\d+")
FENCE = re.compile(SESSION + r":fence:\d+")
CLAIM = re.compile(SESSION + r":resume:\d+")
TAKEOVER = re.compile(SESSION + r":resume:\d+:[0-9a-f]+")


@dataclass(frozen=True)
class Racer:
    stall: int | None  # freezes at its n-th point
    long: bool  # the stall outlasts the lease
    fate: str  # then: wake, die (its process is gone) or cancel


@dataclass(frozen=True)
class Schedule:
    lease: bool
    delay: int  # the second starts once the first made this many points (0: with it)
    racers: tuple[Racer, Racer]
    free: str  # how the operator frees a dead worker's claim: release, or expire


@dataclass(eq=False)
class Worker:
    name: str
    race: Race
    stall: int | None = None
    long: bool = False
    fate: str = "wake"
    cut: int | None = None  # cancelled at its n-th point (the first run)
    crash: bool = False  # and its process gone
    resumer: bool = True
    operator: bool = False
    points: int = 0
    kinds: list[str] = field(default_factory=list)
    frozen: bool = False
    advanced: bool = False
    thawed: asyncio.Event = field(default_factory=asyncio.Event)
    dead: bool = False
    task: asyncio.Task[Any] | None = None
    result: Any = None
    runtime: Any = None
    view: Any = None
    nonce: bytes | None = None  # of the claim it holds, as its fence holds it
    lost_at: int | None = None  # when its claim was taken over (an op number)
    lost_frozen: bool = False
    woke_at: int | None = None
    taken: set[str] = field(default_factory=set)  # takeover keys it wrote
    claimed: set[bytes | None] = field(default_factory=set)  # nonces of its claims
    late_journal: bool = False  # a journal write sent before its claim was lost landed after

    async def point(self, kind: str) -> None:
        self.points += 1
        self.kinds.append(kind)
        self.race.reached(self)
        if self.points == self.cut and self.task is not None:
            self.cut = None
            self.dead = self.crash
            self.task.cancel()
        if self.points == self.stall:
            self.stall = None
            self.frozen = True
            self.race.frozen.append(self)
        while self.frozen:  # a stalled process: each of its tasks waits here
            await self.thawed.wait()
        await asyncio.sleep(0)


@dataclass
class RaceWorld(World):
    """The shared world; points and tool calls are the current worker's."""

    race: Any = None

    async def point(self, kind: str = "io") -> None:
        await CURRENT.get().point(kind)

    async def effect(self, n: int, record: Callable[[], None]) -> str:
        self.race.tool_started(CURRENT.get(), self.call(n).tool)
        return await super().effect(n, record)


def view_class(base: type) -> type:
    """`base` whose operations are the worker's points, recorded as they land."""

    class View(base):  # type: ignore[misc,valid-type]
        worker: Worker

        async def _do(
            self, kind: str, op: str, call: Callable[[], Awaitable[Any]], items: Any = None
        ) -> Any:
            race = self.worker.race
            started = next(race.seq)
            if items is not None and any(FINAL.fullmatch(k) for k in items):
                kind = "final"
            await self.worker.point(kind)
            if op != "read" and self.worker.dead:
                raise ConnectionError("the process is gone")
            race.in_flight += 1
            race.quiet.clear()
            try:
                async with race.lock:  # SQLite: one view's operation lands at once
                    result = await call()
                    if op != "read":
                        race.landed(self.worker, started, op, items, result)
                    return result
            finally:
                race.in_flight -= 1
                if not race.in_flight:
                    race.quiet.set()

        async def save(self, key: str, value: bytes) -> None:
            await self._do("write", "save", lambda: base.save(self, key, value), {key: value})

        async def save_new(self, key: str, value: bytes) -> bool:
            call = lambda: base.save_new(self, key, value)  # noqa: E731
            return bool(await self._do("write", "new", call, {key: value}))

        async def delete(self, key: str) -> bool:
            return bool(await self._do("write", "delete", lambda: base.delete(self, key), [key]))

        async def batch_save(self, items: Any) -> None:
            items = dict(items)
            await self._do("write", "save", lambda: base.batch_save(self, items), items)

        async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
            items = dict(items)
            call = lambda: base.batch_save_if(self, guard_key, guard_value, items)  # noqa: E731
            return bool(await self._do("write", "if", call, items))

        async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: Any) -> bool:
            keys = list(keys)
            call = lambda: base.batch_delete_if(self, guard_key, guard_value, keys)  # noqa: E731
            return bool(await self._do("write", "delete_if", call, keys))

        async def load(self, key: str) -> bytes | None:
            return await self._do("read", "read", lambda: base.load(self, key))  # type: ignore[no-any-return]

        async def batch_load(self, keys: Any) -> dict[str, bytes]:
            return await self._do("read", "read", lambda: base.batch_load(self, keys))  # type: ignore[no-any-return]

        async def list_keys(self, prefix: str = "") -> list[str]:
            return await self._do("read", "read", lambda: base.list_keys(self, prefix))  # type: ignore[no-any-return]

    return View


MemoryView = view_class(ar.InMemoryBackend)
SqliteView = view_class(ar.SqliteBackend)


def claim_nonce(raw: bytes | None, key: str) -> bytes | None:
    if raw is None:
        return None
    return str(decode(raw, key)["resume"]).encode()


class Race:
    """One store, its workers, and the driver that runs them by the schedule."""

    def __init__(self, scenario: Scenario, backend: str, path: Path, lease: float | None) -> None:
        self.scenario, self.backend, self.path, self.lease = scenario, backend, path, lease
        self.loop = _loop()
        self.world = RaceWorld(scenario, race=self)
        self.metrics, self.budget = ar.RuntimeMetrics(), ar.CostBudget(max_tokens=10**9)
        self.data: dict[str, bytes] = {}
        self.shadow: dict[str, bytes] = {}  # every landed write, in the order they landed
        self.writers: dict[str, set[str]] = {}
        self.lock: Any = asyncio.Lock() if backend == "sqlite" else _NoLock()
        self.seq = itertools.count(1)
        self.in_flight = 0
        self.quiet = asyncio.Event()
        self.quiet.set()
        self.workers: list[Worker] = []
        self.frozen: list[Worker] = []
        self.waiting: tuple[Worker, Worker, int] | None = None  # (first, second, delay)
        self.violations: list[str] = []
        self.labels: set[str] = set()
        self.views: list[Any] = []
        self.sid = ""
        self.closers: set[str] = set()  # workers that closed the run without a claim
        self.clash = False  # one did while another could write
        self.stray_end = False  # a failed resume saved its end, its claim not held
        self.stale_deletes: list[str] = []  # a resume deleted a claim or fence not its own
        self.events: list[dict[str, Any]] = []

    # -- workers --

    def worker(self, name: str, **kw: Any) -> Worker:
        w = Worker(name, self, **kw)
        if self.backend == "memory":
            w.view = MemoryView()
            w.view.data = self.data  # the same records, a connection of its own
        else:
            w.view = SqliteView(self.path, synchronous="OFF")
        w.view.worker = w
        self.views.append(w.view)
        s = self.scenario
        w.runtime = ar.AgentRuntime(
            ar.AgentConfig(mode=s.mode, max_parallel_tool_calls=s.parallel, max_iterations=20),
            tools=self.world.tools(),
            checkpoint_backend=w.view,
            resume_lease_seconds=self.lease,
            metrics=self.metrics,
            budget=self.budget,
            approval_handler=self.world.approve if s.approval else None,
            middlewares=[self.world.middleware()] if s.middleware else [],
        )
        self.workers.append(w)
        return w

    def launch(self, w: Worker, run: Callable[[], Awaitable[Any]]) -> None:
        async def body() -> None:
            try:
                async with asyncio.timeout(HORIZON / 2):
                    w.result = await run()
            except BaseException as error:  # the outcome, checked after
                w.result = error

        context = contextvars.copy_context()
        context.run(CURRENT.set, w)
        w.task = self.loop.create_task(body(), context=context)

    def reached(self, w: Worker) -> None:
        if self.waiting is not None and self.waiting[0] is w and w.points >= self.waiting[2]:
            self.start_second()

    def start_second(self) -> None:
        assert self.waiting is not None
        second = self.waiting[1]
        self.waiting = None
        self.launch(second, lambda: second.runtime.resume(self.sid, self.world.model()))

    def tool_started(self, w: Worker, tool: str) -> None:
        if w.lost_at is None:
            return
        # Only on an intent sent before the takeover (the journal keeps `pay` at most once),
        # or a lone idempotent call, which is not journaled: its run stops at its next renewal
        # or write.
        if tool == "pay" and not w.late_journal:
            self.violations.append(f"{w.name} started a pay call after its claim was lost")
        self.labels.add(f"a worker ran {tool} after its claim was lost")

    # -- what lands --

    def landed(self, w: Worker, started: int, op: str, items: Any, result: Any) -> None:
        at = next(self.seq)
        if op == "delete":
            (key,) = items
            if result:
                self.deleted(w, started, at, key)
            return
        if op == "delete_if":  # `result`: whether its guard held (its keys may not exist)
            for key in items if result else ():
                if key in self.shadow:
                    self.deleted(w, started, at, key)
            return
        if op in ("new", "if") and not result:
            if op == "if" and w.lost_at is not None and started < w.lost_at:
                self.labels.add("a write sent before the takeover was refused (fence)")
            return
        now = self.loop.wall + self.loop.now
        closing = any(FINAL.fullmatch(k) for k in items)
        run_end = all(k.endswith(":ended") or ":event:" in k for k in items)  # `save_run_end`
        for key, value in items.items():
            before = self.shadow.get(key)
            if FENCE.fullmatch(key) and value != before:
                for other in self.workers:
                    if other is not w and before is not None and other.nonce == before:
                        other.lost_at, other.lost_frozen = at, other.frozen
                        self.labels.add("takeover" + " of a stalled worker" * other.frozen)
                w.nonce = value
            if CLAIM.fullmatch(key):
                w.claimed.add(claim_nonce(value, key))
                if before is not None and claim_nonce(before, key) != claim_nonce(value, key):
                    expires = decode(before, key).get("expires_at")
                    # A dead worker's claim names this process (the workers share it) and
                    # no store of it holds it: taken over as a claim of a process that ended
                    # on this host is.
                    holders = [o for o in self.workers if claim_nonce(before, key) in o.claimed]
                    if holders and all(o.dead for o in holders):
                        self.labels.add("takeover of a dead worker's claim")
                    elif not (isinstance(expires, float) and expires < now):
                        self.violations.append(f"{w.name} took over {key} before its lease passed")
            if TAKEOVER.fullmatch(key):
                w.taken.add(key)
            if w.resumer and RECORDS.fullmatch(key) and not (op == "new" and ":run:" in key):
                fences = {v for k, v in self.shadow.items() if FENCE.fullmatch(k)}
                held = w.nonce is not None and w.lost_at is None and fences <= {w.nonce}
                if w.nonce is None and closing:  # `resume` closes an ended run unclaimed
                    self.labels.add("a run that ended unclosed closed")
                    self.clash = self.clash or bool(fences or self.closers - {w.name})
                    self.closers.add(w.name)
                elif not held and run_end:
                    self.stray_end = True
                elif not held:
                    self.violations.append(f"{w.name} wrote {key} without holding the claim")
            if JOURNAL.fullmatch(key) and w.lost_at is not None:
                if started > w.lost_at:
                    self.violations.append(f"{w.name} journaled {key} after its claim was lost")
                else:
                    w.late_journal = True
                    self.labels.add("a journal write sent before the takeover landed")
            self.shadow[key] = value
            self.writers.setdefault(key, set()).add(w.name)

    def deleted(self, w: Worker, started: int, at: int, key: str) -> None:
        before = self.shadow.pop(key, None)
        if w.operator or not w.resumer:
            return
        theirs = False
        if (FENCE.fullmatch(key) or CLAIM.fullmatch(key)) and before is not None:
            theirs = (before if FENCE.fullmatch(key) else claim_nonce(before, key)) not in w.claimed
        stale = w.lost_at is not None and key not in w.taken
        if theirs or (stale and started > w.lost_at):
            self.stale_deletes.append(f"{w.name} deleted {key}" + " (theirs)" * theirs)
        elif stale:
            self.labels.add("a deletion sent before the takeover landed")

    # -- driving --

    async def idle(self) -> None:
        """Returns once every task waits on the driver, a stalled worker or the clock."""
        while True:
            await asyncio.sleep(0)
            if self.in_flight:
                await self.quiet.wait()
            elif not self.loop.busy():
                await asyncio.sleep(0)
                if not self.in_flight and not self.loop.busy():
                    return

    async def advance(self, seconds: float) -> None:
        """Moves the clock on, through each timer on the way."""
        target = self.loop.now + seconds
        while True:
            await self.idle()
            due = self.loop.next_timer()
            if due is None or due > target:
                break
            self.loop.now = max(self.loop.now, due)
        self.loop.now = target
        await self.idle()

    async def drive(self) -> None:
        """Runs every task by the schedule until none is left."""
        began = self.loop.now
        me = asyncio.current_task()
        while True:
            await self.idle()
            if self.waiting is not None:
                first = self.waiting[0]
                assert first.task is not None
                if first.task.done() or (first.frozen and (first.advanced or not first.long)):
                    self.start_second()
                    continue
            if self.frozen:
                w = self.frozen[0]
                if w.long and not w.advanced:
                    w.advanced = True
                    if self.lease is not None:
                        await self.advance(self.lease * 1.5)
                    continue
                self.frozen.pop(0)
                self.thaw(w)
                continue
            if not asyncio.all_tasks() - {me}:
                return
            due = self.loop.next_timer()
            left = [t for t in asyncio.all_tasks() if t is not me]
            assert due is not None, f"tasks wait and nothing is scheduled: {left}"
            assert due - began < HORIZON, f"still running after {HORIZON} s: {left}"
            self.loop.now = max(self.loop.now, due)

    def thaw(self, w: Worker) -> None:
        assert w.task is not None
        w.frozen = False
        w.woke_at = next(self.seq)
        if w.fate in ("die", "cancel"):
            w.dead = w.fate == "die"
            if not w.task.done():
                w.task.cancel()
        w.thawed.set()

    def close(self) -> None:
        for view in self.views:
            if isinstance(view, ar.SqliteBackend):
                view.close()


class _NoLock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


# --- running ---------------------------------------------------------------------------------


def in_virtual_time(main: Callable[[], Awaitable[Any]]) -> Any:
    """Runs `main` on a `VirtualLoop`, the store's clock bound to it; fails it if it hangs."""

    async def watched() -> Any:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        timer = threading.Timer(REAL_LIMIT, lambda: loop.call_soon_threadsafe(task.cancel))
        timer.start()
        try:
            return await main()
        except asyncio.CancelledError:
            raise AssertionError(f"the example took over {REAL_LIMIT} s: it hangs") from None
        finally:
            timer.cancel()

    with (
        mock.patch.object(checkpoints, "time", StoreTime()),
        asyncio.Runner(loop_factory=VirtualLoop) as runner,
    ):
        return runner.run(watched())


async def uninterrupted(scenario: Scenario, backend: str, path: Path) -> tuple[Outcome, list[str]]:
    race = Race(scenario, backend, path, None)
    try:
        origin = race.worker("origin", resumer=False)
        session = origin.runtime.create_session("a")
        race.sid = session.session_id
        race.launch(origin, lambda: start(origin.runtime, race.world, session))
        await race.drive()
        assert origin.result is session, origin.result
        events = await origin.runtime.session_events(session.session_id)
    finally:
        race.close()
    outcome = Outcome(session, race.world, events, metrics=race.metrics, budget=race.budget)
    return outcome, origin.kinds


PERSISTENCE_ERRORS = (
    "is being resumed by another worker",
    "was resumed by another worker since it was loaded",
    "is no longer resumed by this worker",
    "was journaled by another worker meanwhile",
    "is being run by another run",
)


async def raced(
    scenario: Scenario, backend: str, path: Path, cut: int, schedule: Schedule, expected: Outcome
) -> Race:
    race = Race(scenario, backend, path, LEASE if schedule.lease else None)
    try:
        await race_in(race, cut, schedule, expected)
    finally:
        race.close()
    return race


async def race_in(race: Race, cut: int, schedule: Schedule, expected: Outcome) -> None:
    scenario, world = race.scenario, race.world
    origin = race.worker("origin", resumer=False, cut=cut, crash=scenario.crash)
    session = origin.runtime.create_session("a")
    sid = race.sid = session.session_id
    race.launch(origin, lambda: start(origin.runtime, world, session))
    await race.drive()
    assert isinstance(origin.result, asyncio.CancelledError), repr(origin.result)

    # The race.
    first, second = (
        race.worker(name, stall=r.stall, long=r.long, fate=r.fate)
        for name, r in zip("AB", schedule.racers, strict=True)
    )
    race.launch(first, lambda: first.runtime.resume(sid, world.model()))
    race.waiting = (first, second, schedule.delay)
    if schedule.delay == 0:
        race.start_second()
    await race.drive()
    # `resume` closes a run that ended unclosed under its claim, never beside another
    # worker's resume or close (test_two_workers_closing_one_ended_run_log_its_run_finished_once).
    closed_twice = len(race.writers.get(f"session:{sid}", ())) > 1
    assert not (race.clash or (race.closers and closed_twice))
    # A resume that fails before it holds its claim (cancelled as it claims, or taken over as
    # it stalled claiming) writes nothing, its end neither
    # (test_a_resume_cancelled_as_it_claims_writes_nothing_into_anothers_resume).
    assert not race.stray_end
    # A worker giving up its claim after a stall past its lease spares the claim and fence of
    # its taker (test_a_release_stalled_past_its_lease_spares_the_claim_taken_over).
    assert not race.stale_deletes, race.stale_deletes
    assert not race.violations, race.violations

    finished: list[ar.AgentSession] = []
    for w in (first, second):
        result = w.result
        event(f"{w.name}: {type(result).__name__}")
        if isinstance(result, ar.AgentSession):
            assert steps(result) == steps(expected.session), w.name
            assert result.final_answer == "all done"
            assert not w.lost_frozen, f"{w.name} lost its claim, yet finished"
            finished.append(result)
        elif isinstance(result, asyncio.CancelledError):
            assert w.fate in ("die", "cancel"), f"{w.name} cancelled, its fate {w.fate}"
        elif isinstance(result, ar.ToolError):
            found = REFUSED.search(str(result))
            assert found is not None and found[1] == "pay", str(result)
        elif isinstance(result, ar.PersistenceError) and not w.dead:
            assert any(why in str(result) for why in PERSISTENCE_ERRORS), str(result)
        else:
            assert w.dead, f"{w.name}: {result!r}"
        if w.lost_frozen and w.fate == "wake":
            event(f"woken after its claim was taken over: {type(result).__name__}")
            assert isinstance(result, ar.PersistenceError | ar.ToolError), repr(result)
        if w.fate != "wake" and w.woke_at is not None:
            event(f"a racer's fate: {w.fate}")

    # The operator resumes until the session ends, freeing a dead worker's claim.
    operator = race.worker("operator", operator=True)
    freed = False
    for attempt in range(len(scenario.rounds) * 3 + 4):
        w = race.worker(f"C{attempt}")
        race.launch(w, lambda w=w: w.runtime.resume(sid, world.model()))  # type: ignore[misc]
        await race.drive()
        assert not race.violations, race.violations
        result = w.result
        if isinstance(result, ar.AgentSession):
            finished.append(result)
            break
        if isinstance(result, ar.ToolError):
            await settle(operator.runtime, scenario, world, sid, result, expected)
            event("operator settled a call")
            continue
        assert isinstance(result, ar.PersistenceError), repr(result)
        assert "is being resumed by another worker" in str(result), str(result)
        assert not freed, "the claim was freed, and the session is still refused"
        assert first.dead or second.dead, "a claim no dead worker left refuses the resume"
        if race.lease is None or schedule.free == "release":
            assert await operator.runtime.release_resume(sid)
            event("a dead worker's claim freed by release_resume")
        else:
            await race.advance(race.lease * 1.5)
            event("a dead worker's claim freed by its lease passing")
        freed = True
    else:
        raise AssertionError("the session never finished")

    saved = await ar.AgentSession.load_checkpoint(operator.view, sid)
    assert all(session == saved for session in finished)
    assert steps(saved) == steps(expected.session)
    assert saved.final_answer == expected.session.final_answer == "all done"
    race.events = await operator.runtime.session_events(sid)
    await race.drive()
    assert not race.violations, race.violations
    assert not asyncio.all_tasks() - {asyncio.current_task()}


def check_race(race: Race, expected: Outcome) -> None:
    scenario, world = race.scenario, race.world
    # One writer a step, an event, the final record.
    for key, names in race.writers.items():
        if SINGLE.fullmatch(key):
            assert len(names) == 1, (key, names)
    # The model was sent, at each step, what the uninterrupted run sent it.
    sent = dict(expected.world.requests)
    for index, request in world.requests:
        assert request == sent[index], f"model call {index} was sent another request"
    # At most once (and, with the settled calls done by hand, exactly once).
    assert len(set(world.effects)) == len(world.effects), world.effects
    assert sorted(world.effects) == sorted(expected.world.effects)
    assert set(world.looked) == set(expected.world.looked)
    keys = dict(world.sent)  # one key a call, the same when repeated
    assert len(keys) == len(set(world.sent)), world.sent
    assert sorted(keys.values()) == sorted(n for _, n in expected.world.sent)
    # Tokens: each reply the model gave charged once.
    snapshot = race.metrics.snapshot()
    charged = (snapshot.input_tokens, snapshot.output_tokens)
    assert race.budget.used_tokens == sum(charged)
    assert expected.budget is not None
    assert race.budget.used_tokens >= expected.budget.used_tokens
    if scenario.mode == "tools":
        assert charged == tuple(map(sum, zip(*world.charged, strict=True)))
    # The event log: one RunFinished.
    types = [e["type"] for e in race.events]
    assert types.count("RunFinished") == 1, types
    assert types[types.index("RunFinished") + 1 :] in ([], ["ErrorEvent"]), types


# --- the property ----------------------------------------------------------------------------


@st.composite
def schedules(draw: st.DrawFn, points: int) -> Schedule:
    """`points`: about as many as a resume makes."""

    def racer(stalls: st.SearchStrategy[int | None], long: bool | None = None) -> Racer:
        fate = draw(st.sampled_from(["wake", "wake", "die", "cancel"]))
        return Racer(draw(stalls), draw(st.booleans()) if long is None else long, fate)

    anywhere = st.integers(1, points) | st.integers(1, points) | st.none()
    if draw(st.booleans(), label="takeover"):
        # The first stalls past its lease once it holds its claim (its claim and fence are its
        # 8th and 9th points); the second starts then.
        first = racer(st.integers(min(10, points), points), long=True)
        return Schedule(True, AFTER, (first, racer(anywhere)), draw(FREE))
    return Schedule(
        lease=draw(st.integers(0, 4)) > 0,
        delay=draw(st.sampled_from([0, AFTER]) | st.integers(1, points)),
        racers=(racer(anywhere), racer(anywhere)),
        free=draw(FREE),
    )


FREE = st.sampled_from(["release", "expire"])


_db = itertools.count()


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios(), data=st.data())
def test_two_workers_racing_to_resume_a_session_end_it_as_the_uninterrupted_run(
    scenario: Scenario, data: st.DataObject, tmp_path: Path
) -> None:
    # This one, not the scenario's: the race opens its own views of the store.
    backend = data.draw(st.sampled_from(["memory", "sqlite"]), label="backend")
    expected, kinds = in_virtual_time(
        lambda: uninterrupted(scenario, backend, tmp_path / f"u{next(_db)}.db")
    )
    # Cut after the run's first write (something to resume) and before its final record.
    first_write = kinds.index("write") + 1
    final = kinds.index("final") + 1
    cut = data.draw(st.integers(first_write + 1, final), label="cut")
    # A resume makes about a dozen points of its own (load, claims), then what was left.
    schedule = data.draw(schedules(len(kinds) - cut + 12), label="schedule")
    path = tmp_path / f"r{next(_db)}.db"
    race = in_virtual_time(lambda: raced(scenario, backend, path, cut, schedule, expected))
    check_race(race, expected)
    for label in sorted(race.labels):
        event(label)
    event(f"lease={schedule.lease} backend={backend} crash={scenario.crash}")


# --- faults found, as plain reproductions ----------------------------------------------------


async def down(prompt: str) -> str:
    raise ConnectionError("model down")


async def answer(prompt: str) -> str:
    return "Thought: t\nAction: FINAL_ANSWER 5"


def shared_view(data: dict[str, bytes]) -> ar.InMemoryBackend:
    """A worker's own view (connection) of the store holding `data`."""
    view = ar.InMemoryBackend()
    view.data = data
    return view


async def failed_session(data: dict[str, bytes]) -> str:
    """The id of a session whose checkpointed run failed at its first model call, in `data`."""
    first = ar.AgentRuntime(checkpoint_backend=shared_view(data))
    session = first.create_session("a")
    with pytest.raises(ConnectionError):
        await first.run_agent("a", "q", down, session=session)
    return session.session_id


class Gate:
    """Lets a test hold a worker at one point: `reached` once there, it waits for `go`."""

    def __init__(self) -> None:
        self.reached, self.go = asyncio.Event(), asyncio.Event()

    async def __call__(self) -> None:
        self.reached.set()
        await asyncio.wait_for(self.go.wait(), 10)


def answering_after(gate: Gate) -> Any:
    """A model that answers once `gate` lets it: its worker is held as it runs."""

    async def model(prompt: str) -> str:
        await gate()
        return await answer(prompt)

    return model


def two_workers(
    held: ar.InMemoryBackend, data: dict[str, bytes], lease: float | None = None
) -> tuple[ar.AgentRuntime, ar.AgentRuntime]:
    """Worker A on `held` (a view of `data` that stalls where its test says) and worker B on
    a view of its own; with `lease`, A's claim lapses after `lease` seconds (B's after 5)."""
    held.data = data
    if lease is None:
        return (
            ar.AgentRuntime(checkpoint_backend=held),
            ar.AgentRuntime(checkpoint_backend=shared_view(data)),
        )
    return (
        ar.AgentRuntime(checkpoint_backend=held, resume_lease_seconds=lease),
        ar.AgentRuntime(checkpoint_backend=shared_view(data), resume_lease_seconds=5),
    )


async def answered(b_run: asyncio.Future[ar.AgentSession], asked: Gate) -> None:
    """Lets B's model, held by `asked`, answer: B's run ends with the answer."""
    asked.go.set()
    done = await asyncio.wait_for(b_run, 10)
    assert done.final_answer == "5"


async def test_two_workers_closing_one_ended_run_log_its_run_finished_once() -> None:
    data: dict[str, bytes] = {}
    checked, landed = asyncio.Event(), asyncio.Event()
    over = {"A": asyncio.Event(), "B": asyncio.Event()}

    async def until(event: asyncio.Event, other: str) -> None:
        """Until `event`, or the other worker's resume ended (refused by the claim, say)."""
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(over[other].wait())]
        await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()

    class View(ar.InMemoryBackend):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.data, self.name, self.lists, self.dead = data, name, 0, False

        async def batch_save(self, items: Any) -> None:
            final = any(FINAL.fullmatch(key) for key in items)
            if self.dead or (final and self.name == "first"):  # its process ends right there
                self.dead = True
                raise ConnectionError("the process is gone")
            if final and self.name == "A":
                await until(checked, "B")
            await super().batch_save(items)
            if final and self.name == "A":
                landed.set()

        async def list_keys(self, prefix: str = "") -> list[str]:
            if self.name == "B" and prefix.endswith(":event:"):
                self.lists += 1
                if self.lists == 2:  # numbering its events: after A's land
                    await until(landed, "A")
            keys = await super().list_keys(prefix)
            if self.name == "B" and self.lists == 1:  # it found no RunFinished logged
                checked.set()
            return keys

    first = ar.AgentRuntime(checkpoint_backend=View("first"))
    session = first.create_session("a")
    with pytest.raises(ar.PersistenceError, match="final checkpoint failed"):
        await first.run_agent("a", "q", answer, session=session)
    sid = session.session_id
    ended = await ar.AgentSession.load_checkpoint(shared_view(data), sid)
    assert ended.final_answer == "5" and f"session:{sid}" not in data  # ended, unclosed

    a = ar.AgentRuntime(checkpoint_backend=View("A"))
    b = ar.AgentRuntime(checkpoint_backend=View("B"))
    runs = {"A": asyncio.ensure_future(a.resume(sid, answer))}
    runs["B"] = asyncio.ensure_future(b.resume(sid, answer))
    for name, run in runs.items():
        run.add_done_callback(lambda _, name=name: over[name].set())
    results = await asyncio.wait_for(asyncio.gather(*runs.values(), return_exceptions=True), 10)
    # One worker closes it; another is refused (or, once it is closed, given it).
    assert any(isinstance(r, ar.AgentSession) for r in results), results
    types = [e["type"] for e in await a.session_events(sid)]
    assert types.count("RunFinished") == 1, types


async def test_a_resume_cancelled_as_it_claims_writes_nothing_into_anothers_resume() -> None:
    data: dict[str, bytes] = {}
    claiming, asked = Gate(), Gate()

    class Held(ar.InMemoryBackend):
        async def save_new(self, key: str, value: bytes) -> bool:
            if CLAIM.fullmatch(key):
                await claiming()
            return bool(await super().save_new(key, value))

    sid = await failed_session(data)

    a, b = two_workers(Held(), data)
    a_run = asyncio.ensure_future(a.resume(sid, answer))
    await asyncio.wait_for(claiming.reached.wait(), 10)  # A's claim is on its way
    b_run = asyncio.ensure_future(b.resume(sid, answering_after(asked)))
    await asyncio.wait_for(asked.reached.wait(), 10)  # B holds the claim and runs
    before = dict(data)
    a_run.cancel()  # A's caller gives up; its claim write lands, refused
    claiming.go.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(a_run, 10)
    written = sorted(k for k in data if data[k] != before.get(k))
    await answered(b_run, asked)
    assert not written, f"A, which never held the claim, wrote {written} into B's resume"


@pytest.mark.parametrize("atomic", [True, False], ids=["batch_delete_if", "read-then-delete"])
async def test_a_release_stalled_past_its_lease_spares_the_claim_taken_over(atomic: bool) -> None:
    """A failed resumed run's release stalls (before it reaches the backend) past its lease;
    another worker takes the claim over and runs; the release, woken, deletes neither the
    taker's claim nor its fence. With `batch_delete_if`, or without it (a backend of an
    older version: the release reads the fence, then deletes)."""
    data: dict[str, bytes] = {}
    releasing, asked = Gate(), Gate()

    class Held(ar.InMemoryBackend):
        async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: Any) -> bool:
            if not atomic:
                raise AssertionError("a backend without batch_delete_if was called on it")
            if FENCE.fullmatch(guard_key):
                await releasing()
            return bool(await super().batch_delete_if(guard_key, guard_value, keys))

        async def load(self, key: str) -> bytes | None:
            if FENCE.fullmatch(key) and not atomic:  # only a release reads the fence
                await releasing()
            return await super().load(key)

    if not atomic:
        Held.batch_delete_if = None  # type: ignore[assignment,method-assign]

    sid = await failed_session(data)

    a, b = two_workers(Held(), data, lease=0.2)
    a_run = asyncio.ensure_future(a.resume(sid, down))  # fails, then releases its claim
    await asyncio.wait_for(releasing.reached.wait(), 10)  # and stalls as it does
    await asyncio.sleep(0.4)  # past its lease (not renewed: its run ended)
    b_run = asyncio.ensure_future(b.resume(sid, answering_after(asked)))
    await asyncio.wait_for(asked.reached.wait(), 10)  # B took the claim over and runs
    releasing.go.set()  # A wakes and goes on releasing
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(a_run, 10)
    await answered(b_run, asked)


async def test_a_step_claim_landing_after_its_resume_was_taken_over_stays_the_takers() -> None:
    """A resume's claim of the step it continues from lands, but its worker stalls before it
    learns so, past its lease, and is cancelled; another worker takes the resume over and
    continues the same run on that claim. The claim that landed is the taker's: the stalled
    worker's clean-up of it leaves it (it keeps a new run of a copy of the session out)."""
    data: dict[str, bytes] = {}
    landed, asked = Gate(), Gate()
    step_claim = re.compile(SESSION + r":run:\d+")

    class Held(ar.InMemoryBackend):
        async def save_new(self, key: str, value: bytes) -> bool:
            won = bool(await super().save_new(key, value))
            if step_claim.fullmatch(key):
                await landed()  # landed; its worker stalls before it learns so
            return won

    sid = await failed_session(data)

    a, b = two_workers(Held(), data, lease=0.2)
    a_run = asyncio.ensure_future(a.resume(sid, answer))
    await asyncio.wait_for(landed.reached.wait(), 10)
    (claim,) = (k for k in data if step_claim.fullmatch(k))
    a_run.cancel()  # A's caller gives up as A stalls
    await asyncio.sleep(0.4)  # past A's lease
    b_run = asyncio.ensure_future(b.resume(sid, answering_after(asked)))
    await asyncio.wait_for(asked.reached.wait(), 10)  # B took the resume over and runs
    landed.go.set()  # A wakes: its claim's write returns, to no one
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(a_run, 10)
    for _ in range(20):  # A's clean-up runs in a task of its own
        await asyncio.sleep(0)
    assert claim in data, "A deleted the step claim B's run goes on under"
    await answered(b_run, asked)


async def test_closing_an_ended_run_cut_off_as_it_claims_leaves_no_claim_behind() -> None:
    """A run ended unclosed (its answer saved, its final record not); a worker closing it is
    cancelled while its claim's fence is on its way to the server (the write lands after).
    Its claim, naming this live process and under no lease, would refuse every later resume:
    it is released, and the next resume closes the run."""
    data: dict[str, bytes] = {}
    sending = Gate()

    class Ends(ar.InMemoryBackend):
        async def batch_save(self, items: Any) -> None:
            if any(FINAL.fullmatch(key) for key in items):
                raise ConnectionError("the process is gone")
            await super().batch_save(items)

    class InFlight(ar.InMemoryBackend):
        async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
            written = asyncio.ensure_future(super().batch_save_if(guard_key, guard_value, items))
            if any(FENCE.fullmatch(key) for key in items):
                await sending()  # sent: it lands whatever its caller does
            return bool(await written)

    first = ar.AgentRuntime(checkpoint_backend=(ended := Ends()))
    ended.data = data
    session = first.create_session("a")
    with pytest.raises(ar.PersistenceError, match="final checkpoint failed"):
        await first.run_agent("a", "q", answer, session=session)
    sid = session.session_id

    cut_view = InFlight()
    cut_view.data = data
    closing = asyncio.ensure_future(
        ar.AgentRuntime(checkpoint_backend=cut_view).resume(sid, answer)
    )
    await asyncio.wait_for(sending.reached.wait(), 10)
    closing.cancel()
    sending.go.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(closing, 10)
    for _ in range(20):  # the clean-ups run in tasks of their own
        await asyncio.sleep(0)
    assert not [k for k in data if CLAIM.fullmatch(k) or FENCE.fullmatch(k)], sorted(data)
    done = await ar.AgentRuntime(checkpoint_backend=shared_view(data)).resume(sid, answer)
    assert done.final_answer == "5"
    types = [
        e["type"]
        for e in await ar.AgentRuntime(checkpoint_backend=shared_view(data)).session_events(sid)
    ]
    assert types.count("RunFinished") == 1, types
