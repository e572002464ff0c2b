"""Resume claims under a lease (`resume_lease_seconds`): a worker that died mid-resume on
any host blocks its session no longer than the lease; a holder renews its claim while its
run goes on, and one whose claim was taken over stops (on every backend)."""

from __future__ import annotations

import asyncio
import math
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore
from llm_agent_runtime.persistence.codec import decode, encode
from llm_agent_runtime.persistence.postgres import _guard

from .test_backends import backend_fixture
from .test_durable import FINAL, Effects, add_step, fails_after, script
from .test_durable_concurrency import Delegating, under_way
from .test_durable_exclusive import CHARGE, DiesAfter, ended_pid, interrupted, resume_left

LEASE = 0.2
SLOW = 'Thought: wait\nAction: slow {"n": 1}'


backend = backend_fixture()


async def until(condition: Callable[[], Awaitable[bool]], within: float = 1.5) -> None:
    """Waits until `condition()` holds, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def claim_of(backend: ar.PersistenceBackend) -> dict[str, Any]:
    """Session "x"'s resume claim (there is one)."""
    [key] = [k for k in await backend.list_keys("session:x:resume:") if k.count(":") == 3]
    claim = decode(await backend.load(key) or b"", key)
    assert isinstance(claim, dict)
    return claim


async def until_lease_passed(backend: ar.PersistenceBackend) -> None:
    """Waits until the lease of session "x"'s resume claim has passed."""

    async def passed() -> bool:
        return bool((await claim_of(backend))["expires_at"] < time.time())

    await until(passed)


TAKERS_RUN = [{"a": 1, "b": 1}, {"item": "ink"}, "finished"]
"""The action inputs of session "x" resumed by a taker that looks up "ink", then answers."""


async def held_taker(
    backend: ar.PersistenceBackend,
) -> tuple[asyncio.Task[ar.AgentSession], asyncio.Event]:
    """A worker resuming session "x" (its run: `TAKERS_RUN`), once it holds the claim: its
    model's first reply is held until the event returned is set."""
    reached, go = asyncio.Event(), asyncio.Event()
    answers = [INK, FINAL]

    async def model(prompt: str) -> str:
        reached.set()
        await go.wait()
        return answers.pop(0)

    taker = asyncio.create_task(worker(backend, Effects()).resume("x", model))
    await reached.wait()
    return taker, go


PACKAGE = str(Path(ar.__file__).parent)
POOL_GUARD = _guard.__code__


async def no_other_task() -> bool:
    """Whether no task of the runtime's is left (a driver's own, PostgreSQL's pool workers,
    are not the runtime's; nor is the PostgreSQL backend's task that closes their pool as
    the loop ends, which lives as long as the pool)."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    codes = [getattr(t.get_coro(), "cr_code", None) for t in others]
    return not [
        c for c in codes if c is None or (c.co_filename.startswith(PACKAGE) and c is not POOL_GUARD)
    ]


def worker(
    backend: ar.PersistenceBackend,
    effects: Effects,
    lease: float | None = LEASE,
    timeout_ms: int | None = None,
) -> ar.AgentRuntime:
    return ar.AgentRuntime(
        ar.AgentConfig(loop_timeout_ms=timeout_ms),
        tools=effects.tools(),
        checkpoint_backend=backend,
        resume_lease_seconds=lease,
    )


@pytest.mark.parametrize("lease", [LEASE, None], ids=["leased-taker", "taker-without-lease"])
async def test_a_claim_of_another_host_whose_lease_passed_is_taken_over(
    backend: ar.PersistenceBackend, lease: float | None
) -> None:
    # Refused until release_resume: the worker that left it (a pod gone) blocked the session.
    await interrupted(backend)
    await resume_left(backend, host="another-host", pid=1, expires_at=time.time() - 1)
    effects = Effects()
    done = await worker(backend, effects, lease).resume("x", script(CHARGE, FINAL))
    assert [s.action for s in done.steps] == ["add", "charge", "FINAL_ANSWER"]
    assert effects.calls == [("charge", 100)]
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    assert await backend.list_keys("session:x:resume") == []  # the takeover's key went too
    assert await no_other_task()


async def test_a_claim_of_another_host_whose_lease_has_not_passed_is_refused(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend)
    await resume_left(backend, host="another-host", pid=1, expires_at=time.time() + 60)
    left = await claim_of(backend)
    effects = Effects()
    with pytest.raises(ar.PersistenceError, match="is being resumed by another worker"):
        await worker(backend, effects).resume("x", script(CHARGE, FINAL))
    assert effects.calls == []
    assert await claim_of(backend) == left
    assert len(await backend.list_keys("session:x:resume")) == 1


@pytest.mark.parametrize(
    "holder",
    [{"host": "another-host"}, {"host": None, "pid": None}],
    ids=["another-host", "older-version"],
)
async def test_a_claim_without_a_lease_of_another_host_is_refused_as_before(
    backend: ar.PersistenceBackend, holder: dict[str, Any]
) -> None:
    # A leased worker cannot tell whether its holder runs: it waits for release_resume.
    await interrupted(backend)
    await resume_left(backend, **{"pid": 1, **holder})
    runtime = worker(backend, Effects())
    with pytest.raises(ar.PersistenceError, match="release_resume"):
        await runtime.resume("x", script(FINAL))
    assert "expires_at" not in await claim_of(backend)
    assert await runtime.release_resume("x")
    done = await runtime.resume("x", script(FINAL))
    assert (done.final_answer, done.step_count) == ("finished", 2)


async def test_no_lease_writes_no_expiry() -> None:
    # Without the setting, a resume claim is as it was: nothing expires, nothing renews.
    backend = ar.InMemoryBackend()
    await interrupted(backend)
    store = CheckpointStore(backend)
    await store.claim_resumed(await store.load("x"))
    assert set(await claim_of(backend)) - {"started"} == {"run", "resume", "host", "pid"}
    assert store.resume_lease_seconds is None and await no_other_task()
    await store.release("x")
    assert await backend.list_keys("session:x:resume") == []


class Slow(Effects):
    """Effects, and `slow`, a tool that runs until `go` is set (idempotent: not journaled)."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.go = asyncio.Event(), asyncio.Event()

    def tools(self) -> list[ar.ToolSpec]:
        @ar.tool(idempotent=True)
        async def slow(n: int) -> str:
            """Takes a while."""
            self.started.set()
            await self.go.wait()
            self.calls.append(("slow", n))
            return "slow done"

        return [*super().tools(), slow]


async def test_the_holder_renews_its_claim_while_a_long_tool_runs(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend)
    effects = Slow()
    running = asyncio.create_task(worker(backend, effects).resume("x", script(SLOW, FINAL)))
    await effects.started.wait()
    first = (await claim_of(backend))["expires_at"]
    assert first > time.time()

    async def renewed_past_first_expiry() -> bool:
        claim = await claim_of(backend)
        return time.time() > first and claim["expires_at"] > time.time()

    await until(renewed_past_first_expiry)
    other = Effects()
    with pytest.raises(ar.PersistenceError, match="is being resumed by another worker"):
        await worker(backend, other).resume("x", script(CHARGE, FINAL))
    assert other.calls == []
    effects.go.set()
    done = await running
    assert [s.action for s in done.steps] == ["add", "slow", "FINAL_ANSWER"]
    assert await backend.list_keys("session:x:resume") == []
    assert await no_other_task()  # the renewal ended with the run


class StalledRenewal(Delegating):
    """The backend of a worker whose renewal stalls until `go` (its timer had not fired
    yet when the process woke from a stall), while its run goes on."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.go = asyncio.Event()

    async def load(self, key: str) -> bytes | None:
        task = asyncio.current_task()
        renewing = task is not None and task.get_coro().__qualname__ == "CheckpointStore._renew"
        if renewing:
            await self.go.wait()
        return await self.inner.load(key)


@pytest.mark.parametrize("timeout_ms", [None, 60_000], ids=["no-deadline", "deadline"])
async def test_a_holder_whose_claim_was_taken_over_stops_and_runs_no_further_tool(
    backend: ar.PersistenceBackend, timeout_ms: int | None
) -> None:
    await interrupted(backend)
    stalled = StalledRenewal(backend)
    effects = Effects()
    reached, answer = asyncio.Event(), asyncio.Event()

    async def model(prompt: str) -> str:  # its reply, a charge, comes once `answer` is set
        reached.set()
        await answer.wait()
        return CHARGE if not effects.calls else FINAL

    holder = asyncio.create_task(worker(stalled, effects, timeout_ms=timeout_ms).resume("x", model))
    await reached.wait()

    async def holder_done() -> bool:
        return holder.done()

    await until_lease_passed(backend)
    taker = worker(backend, Effects())
    async with under_way(lambda m: taker.resume("x", m)) as outcome:
        stalled.go.set()  # the holder renews again: it finds its claim taken over
        await until(holder_done)
        answer.set()  # were it still running, it would charge now
        with pytest.raises(ar.PersistenceError, match="no longer resumed by this worker"):
            await holder
    assert effects.calls == []
    [done] = outcome
    assert (done.final_answer, [s.action for s in done.steps]) == (
        "finished",
        ["add", "FINAL_ANSWER"],
    )
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    assert await backend.list_keys("session:x:resume") == []
    await until(no_other_task)  # nothing renews, nothing is left running


class FirstStepSaveFails(StalledRenewal):
    """`StalledRenewal`, and the first save of a step fails (the step stays unsaved)."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.failed = False

    def _fails(self, items: dict[str, bytes]) -> None:
        if not self.failed and any(":step:" in key for key in items):
            self.failed = True
            raise ar.PersistenceError("connection reset")

    async def batch_save(self, items: dict[str, bytes]) -> None:
        self._fails(items)
        await self.inner.batch_save(items)

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        self._fails(items)  # a leased run's writes are fenced
        return await self.inner.batch_save_if(guard_key, guard_value, items)


async def test_a_holder_whose_claim_was_taken_over_writes_nothing_over_the_takers_steps(
    backend: ar.PersistenceBackend,
) -> None:
    # Its step 2 (a lookup of "pen") was not saved; the taker ran step 2 (of "ink") and
    # finished. Stopped, the holder saved its unsaved step 2 on its way out, over the taker's.
    await interrupted(backend)
    stalled = FirstStepSaveFails(backend)
    waiting, never = asyncio.Event(), asyncio.Event()
    replies = ['Thought: price\nAction: lookup {"item": "pen"}']

    async def model(prompt: str) -> str:
        if replies:
            return replies.pop()
        waiting.set()
        await never.wait()
        raise AssertionError("the holder was not stopped")

    holder = asyncio.create_task(worker(stalled, Effects()).resume("x", model))
    await waiting.wait()
    assert stalled.failed

    await until_lease_passed(backend)
    taker = Effects()
    ink = 'Thought: price\nAction: lookup {"item": "ink"}'
    done = await worker(backend, taker).resume("x", script(ink, FINAL))
    assert taker.calls == [("lookup", "ink")]
    stalled.go.set()  # the holder renews again: it finds its claim taken over
    with pytest.raises(ar.PersistenceError, match="no longer resumed by this worker"):
        await holder
    loaded = await ar.AgentSession.load_checkpoint(backend, "x")
    assert loaded == done
    assert [s.action_input for s in loaded.steps] == TAKERS_RUN
    state = await CheckpointStore(backend).load("x")
    assert [r.step.action_input for r in state.run_records] == TAKERS_RUN
    await until(no_other_task)


PEN = 'Thought: price\nAction: lookup {"item": "pen"}'
INK = 'Thought: price\nAction: lookup {"item": "ink"}'


class StepWriteInFlight(StalledRenewal):
    """`StalledRenewal`, and the first write of a step, sent once the run checked its claim,
    waits for `land` before it reaches the store: a write on its way (a slow link, a paused
    process) while the lease passes."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.sent, self.land = asyncio.Event(), asyncio.Event()

    async def _in_flight(self, items: Any) -> None:
        if not self.sent.is_set() and any(":step:" in key for key in items):
            self.sent.set()
            await self.land.wait()

    async def batch_save(self, items: dict[str, bytes]) -> None:
        await self._in_flight(items)
        await self.inner.batch_save(items)

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        await self._in_flight(items)
        return await self.inner.batch_save_if(guard_key, guard_value, items)


async def test_a_holders_write_on_its_way_at_the_takeover_is_refused_when_it_lands(
    backend: ar.PersistenceBackend,
) -> None:
    # The holder's step 2 (a lookup of "pen") left for the store before its lease passed,
    # and reached it after the taker had run step 2 (of "ink") and finished: it landed over
    # the taker's step. The claim's fence now names the taker: the store refuses it.
    await interrupted(backend)
    in_flight = StepWriteInFlight(backend)
    holder = asyncio.create_task(worker(in_flight, Effects()).resume("x", script(PEN, FINAL)))
    await in_flight.sent.wait()

    await until_lease_passed(backend)
    taker = Effects()
    done = await worker(backend, taker).resume("x", script(INK, FINAL))
    assert taker.calls == [("lookup", "ink")]
    in_flight.land.set()
    with pytest.raises(ar.PersistenceError, match="no longer resumed by this worker"):
        await holder
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    state = await CheckpointStore(backend).load("x")
    assert [r.step.action_input for r in state.run_records] == TAKERS_RUN
    assert await backend.list_keys("session:x:resume") == []
    assert await backend.list_keys("session:x:fence") == []  # gone with the taker's claim
    in_flight.go.set()
    await until(no_other_task)


async def past_its_lease(
    backend: ar.PersistenceBackend, stalled: ar.PersistenceBackend, effects: Effects, *replies: str
) -> tuple[asyncio.Task[ar.AgentSession], asyncio.Event]:
    """Resumes session "x" through `stalled`, its model stalled until the lease passed.

    Returns the run and the event that wakes its model, which then answers `replies`.
    """
    reached, wake = asyncio.Event(), asyncio.Event()
    answers = list(replies)

    async def model(prompt: str) -> str:
        reached.set()
        await wake.wait()
        return answers.pop(0)

    holder = asyncio.create_task(worker(stalled, effects).resume("x", model))
    await reached.wait()

    await until_lease_passed(backend)
    return holder, wake


@pytest.mark.parametrize(
    "reply",
    [CHARGE, PEN, "Thought: done\nAction: FINAL_ANSWER stale"],
    ids=["journaled-call", "step", "final-checkpoint"],
)
async def test_a_holder_that_wakes_after_its_lease_passed_writes_nothing_before_its_renewal(
    backend: ar.PersistenceBackend, reply: str
) -> None:
    # The holder stalled in a model call, its renewal too, past its lease; a taker resumed
    # and finished the run. Woken before its renewal ran, the holder went on as if it held
    # the session: it charged (again at each step), and saved its steps, or its final
    # checkpoint, over the taker's.
    await interrupted(backend)
    stalled, effects = StalledRenewal(backend), Effects()
    holder, wake = await past_its_lease(backend, stalled, effects, *[reply] * 10)
    done = await worker(backend, Effects()).resume("x", script(INK, FINAL))
    wake.set()
    with pytest.raises(ar.PersistenceError, match="no longer resumed by this worker"):
        await holder
    assert [call for call in effects.calls if call[0] != "lookup"] == []  # a lookup may repeat
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    state = await CheckpointStore(backend).load("x")
    assert [r.step.action_input for r in state.run_records] == TAKERS_RUN
    assert await backend.list_keys("session:x:resume") == []
    stalled.go.set()
    await until(no_other_task)


async def test_a_holder_whose_renewal_fell_behind_keeps_its_claim_if_no_one_took_it(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend)
    effects = Effects()
    holder, wake = await past_its_lease(backend, StalledRenewal(backend), effects, CHARGE, FINAL)
    wake.set()
    done = await holder
    assert effects.calls == [("charge", 100)]
    assert [s.action for s in done.steps] == ["add", "charge", "FINAL_ANSWER"]
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    assert await backend.list_keys("session:x:resume") == []
    await until(no_other_task)


class ClaimUnreadable(StalledRenewal):
    """`StalledRenewal`, and no read of a resume claim (or its takeover key) succeeds."""

    async def load(self, key: str) -> bytes | None:
        if ":resume:" in key:
            raise ar.PersistenceError("connection reset", key=key)
        return await super().load(key)


async def test_a_holder_that_cannot_check_its_claim_after_its_lease_writes_nothing(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend)
    effects = Effects()
    holder, wake = await past_its_lease(backend, ClaimUnreadable(backend), effects, CHARGE)
    wake.set()
    with pytest.raises(ar.PersistenceError, match="connection reset"):
        await holder
    assert effects.calls == []  # its intent was not written: the charge did not run
    state = await CheckpointStore(backend).load("x")
    assert [r.step.action for r in state.run_records] == ["add"]
    assert await backend.list_keys("session:x:call:2:") == []
    await until(no_other_task)


async def test_a_failed_leased_resume_leaves_no_claim_and_no_task(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend)

    async def down(prompt: str) -> str:
        await asyncio.sleep(LEASE)  # long enough for renewals to run
        raise ConnectionError("model down")

    runtime = worker(backend, Effects())
    with pytest.raises(ConnectionError):
        await runtime.resume("x", down)
    assert await no_other_task()
    assert await backend.list_keys("session:x:resume") == []
    done = await runtime.resume("x", script(add_step(2), FINAL))
    assert done.step_count == 3


class SwallowingCancellation(Delegating):
    """The backend through a driver that loses a cancellation that comes while it reads
    (as redis-py did through asyncio's `wait_for` before Python 3.12): the read returns."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.reading = asyncio.Event()
        self.swallowed = 0

    async def load(self, key: str) -> bytes | None:
        value = await self.inner.load(key)
        if ":resume:" in key and not self.reading.is_set():  # the first renewal's read
            self.reading.set()
            try:  # until cancelled: however slow the failed run's end, the read is still on
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.swallowed += 1
        return value


async def test_a_renewal_ends_when_stopped_even_if_the_backend_loses_its_cancellation(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend)
    swallowing = SwallowingCancellation(backend)

    async def down(prompt: str) -> str:  # fails while a renewal reads: its release stops it
        await swallowing.reading.wait()
        raise ConnectionError("model down")

    runtime = worker(swallowing, Effects())
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(runtime.resume("x", down), 5)  # it hung: the renewal ran on
    assert swallowing.swallowed == 1
    assert await backend.list_keys("session:x:resume") == []
    assert await no_other_task()
    done = await runtime.resume("x", script(add_step(2), FINAL))
    assert done.step_count == 3


@pytest.mark.parametrize(
    "lease",
    [0, -1.0, 0.01, 1e-9, math.nan, math.inf, True, "1", pytest.param(10**400, id="huge-int")],
)
def test_the_lease_is_validated(lease: Any) -> None:
    with pytest.raises(ar.AgentRuntimeError, match="resume_lease_seconds must be a positive"):
        ar.AgentRuntime(checkpoint_backend=ar.InMemoryBackend(), resume_lease_seconds=lease)
    with pytest.raises(ar.PersistenceError, match="resume_lease_seconds must be a positive"):
        CheckpointStore(ar.InMemoryBackend(), lease)


def test_a_lease_needs_a_checkpoint_backend() -> None:
    with pytest.raises(ar.AgentRuntimeError, match="needs a checkpoint_backend"):
        ar.AgentRuntime(resume_lease_seconds=1.0)
    store = CheckpointStore(ar.InMemoryBackend(), 1)
    assert store.resume_lease_seconds == 1.0 and isinstance(store.resume_lease_seconds, float)


async def test_an_ended_process_of_this_host_is_taken_over_under_a_lease_too() -> None:
    # The same-host takeover is unchanged by a lease not yet passed.
    backend = ar.InMemoryBackend()
    await interrupted(backend)
    await resume_left(
        backend, host=socket.gethostname(), pid=ended_pid(), expires_at=time.time() + 60
    )
    done = await worker(backend, Effects()).resume("x", script(FINAL))
    assert (done.final_answer, done.step_count) == ("finished", 2)
    assert await backend.list_keys("session:x:resume") == []


class RenewalInFlight(Delegating):
    """The backend, but the holder's first renewal waits for `land` before it reaches the
    store: a renewal on its way while the lease passes."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.sent, self.land, self.landed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def _in_flight(self) -> bool:
        task = asyncio.current_task()
        renewing = task is not None and task.get_coro().__qualname__ == "CheckpointStore._renew"
        return renewing and not self.sent.is_set()

    async def save(self, key: str, value: bytes) -> None:
        if self._in_flight():
            self.sent.set()
            await self.land.wait()
        await self.inner.save(key, value)

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        if not self._in_flight():
            return await self.inner.batch_save_if(guard_key, guard_value, items)
        self.sent.set()
        await self.land.wait()
        try:
            return await self.inner.batch_save_if(guard_key, guard_value, items)
        finally:
            self.landed.set()


async def test_a_holders_renewal_on_its_way_at_the_takeover_leaves_the_takers_claim(
    backend: ar.PersistenceBackend,
) -> None:
    # The holder's renewal landed after the takeover: it wrote the holder's claim over the
    # taker's, and the taker, finding its claim gone at its next renewal, stopped too.
    await interrupted(backend)
    in_flight, never = RenewalInFlight(backend), asyncio.Event()

    async def stalled(prompt: str) -> str:
        await never.wait()
        raise AssertionError("the holder was not stopped")

    holder = asyncio.create_task(worker(in_flight, Effects()).resume("x", stalled))
    await in_flight.sent.wait()

    await until_lease_passed(backend)
    taker, go = await held_taker(backend)
    in_flight.land.set()
    with pytest.raises(ar.PersistenceError, match="no longer resumed by this worker"):
        await holder
    await asyncio.sleep(LEASE)  # the taker renews its claim meanwhile
    go.set()
    done = await taker
    assert [s.action_input for s in done.steps] == TAKERS_RUN
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    assert await backend.list_keys("session:x:resume") == []
    await until(no_other_task)


class FenceWriteInFlight(Delegating):
    """The backend, but a claimant's first write of its fence waits for `land` before it
    reaches the store: a write on its way while the claimant's lease passes."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.sent, self.land = asyncio.Event(), asyncio.Event()

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        if any(":fence:" in key for key in items) and not self.sent.is_set():
            self.sent.set()
            await self.land.wait()
        return await self.inner.batch_save_if(guard_key, guard_value, items)


async def test_a_claimants_fence_write_on_its_way_at_a_takeover_leaves_the_takers_fence(
    backend: ar.PersistenceBackend,
) -> None:
    # The fence was written as it was: landing after a taker fenced the claim, it named the
    # stalled claimant again, and the store refused the taker's every write.
    await interrupted(backend)
    in_flight = FenceWriteInFlight(backend)
    claimant = asyncio.create_task(worker(in_flight, Effects()).resume("x", script(FINAL)))
    await in_flight.sent.wait()

    await until_lease_passed(backend)
    taker, go = await held_taker(backend)
    in_flight.land.set()
    with pytest.raises(ar.PersistenceError, match="is being resumed by another worker"):
        await claimant
    go.set()
    done = await taker
    assert [s.action_input for s in done.steps] == TAKERS_RUN
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    assert await backend.list_keys("session:x:resume") == []
    assert await backend.list_keys("session:x:fence") == []
    await until(no_other_task)


class RenewalLandsAtTheRead(Delegating):
    """A taker's backend: its read of the claim lets `holder`'s renewal land right after it,
    and its write of the claim fails (a connection reset: nothing of it is applied)."""

    def __init__(self, inner: ar.PersistenceBackend, holder: RenewalInFlight) -> None:
        super().__init__(inner)
        self.holder = holder

    async def load(self, key: str) -> bytes | None:
        raw = await self.inner.load(key)
        if key == "session:x:resume:0" and not self.holder.land.is_set():
            self.holder.land.set()
            await self.holder.landed.wait()
        return raw

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        if "session:x:resume:0" in items:
            raise ar.PersistenceError("connection reset", key="session:x:resume:0")
        return await self.inner.batch_save_if(guard_key, guard_value, items)


async def test_a_takeover_whose_write_fails_leaves_the_live_holders_claim(
    backend: ar.PersistenceBackend,
) -> None:
    # The holder renewed late, after the taker read its (passed) claim; the taker's write of
    # the claim then failed, and its release deleted the holder's claim and fence: the live
    # holder stopped, its claim "taken over".
    await interrupted(backend)
    in_flight, go = RenewalInFlight(backend), asyncio.Event()
    answers = [INK, FINAL]

    async def model(prompt: str) -> str:
        await go.wait()
        return answers.pop(0)

    holder = asyncio.create_task(worker(in_flight, Effects()).resume("x", model))
    await in_flight.sent.wait()

    await until_lease_passed(backend)
    taker = worker(RenewalLandsAtTheRead(backend, in_flight), Effects())  # type: ignore[arg-type]
    with pytest.raises(ar.PersistenceError, match="connection reset"):
        await taker.resume("x", script(INK, FINAL))
    # The holder's claim and fence are left as they were; the taker's takeover key is gone.
    assert await backend.list_keys("session:x:resume:") == ["session:x:resume:0"]
    assert await backend.list_keys("session:x:fence:") == ["session:x:fence:0"]
    go.set()
    done = await holder
    assert [s.action_input for s in done.steps] == TAKERS_RUN
    assert await backend.list_keys("session:x:resume") == []
    assert await backend.list_keys("session:x:fence") == []
    await until(no_other_task)


class ClaimDeleted(Delegating):
    """The backend, but right after it deletes a resume claim, `then()` runs (another
    worker claiming the resume as soon as it is free)."""

    def __init__(self, inner: ar.PersistenceBackend, then: Callable[[], Awaitable[None]]):
        super().__init__(inner)
        self.then = then

    async def delete(self, key: str) -> bool:
        deleted: bool = await self.inner.delete(key)
        if key == "session:x:resume:0":
            await self.then()
        return deleted

    async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: Any) -> bool:
        held = bool(await self.inner.batch_delete_if(guard_key, guard_value, keys))
        if held and "session:x:resume:0" in keys:
            await self.then()
        return held


async def test_a_failed_resumes_release_leaves_the_fence_of_the_next_resume(
    backend: ar.PersistenceBackend,
) -> None:
    # The release deleted the claim, then its fence: a worker that claimed the resume in
    # between had its fence deleted, and every write of its run refused.
    await interrupted(backend)
    go, nxt = asyncio.Event(), []

    async def held(prompt: str) -> str:
        await go.wait()
        return FINAL

    async def claim_next() -> None:
        nxt.append(asyncio.create_task(worker(backend, Effects(), lease=5.0).resume("x", held)))
        await until(lambda: _holds_claim(backend))

    failing = worker(ClaimDeleted(backend, claim_next), Effects(), lease=5.0)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await failing.resume("x", fails_after())
    assert await backend.list_keys("session:x:fence:") == ["session:x:fence:0"]
    go.set()
    done = await nxt[0]
    assert (done.final_answer, done.step_count) == ("finished", 2)
    assert await backend.list_keys("session:x:resume") == []
    assert await backend.list_keys("session:x:fence") == []


async def _holds_claim(backend: ar.PersistenceBackend) -> bool:
    """Whether a worker holds session "x"'s resume claim and has fenced it."""
    return bool(await backend.list_keys("session:x:resume:")) and bool(
        await backend.list_keys("session:x:fence:")
    )


async def test_a_sweep_deletes_the_fence_a_finished_resume_could_not(
    backend: ar.PersistenceBackend,
) -> None:
    class DeletesFail(Delegating):  # the final checkpoint lands; the claim's deletes fail
        async def delete(self, key: str) -> bool:
            if ":resume:" in key or ":fence:" in key:
                raise ar.PersistenceError("connection reset", key=key)
            return bool(await self.inner.delete(key))

        async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: Any) -> bool:
            if any(":resume:" in key or ":fence:" in key for key in keys):
                raise ar.PersistenceError("connection reset", key=guard_key)
            return bool(await self.inner.batch_delete_if(guard_key, guard_value, keys))

    await interrupted(backend)
    failing = DeletesFail(backend)
    done = await worker(failing, Effects()).resume("x", script(FINAL))  # type: ignore[arg-type]
    assert done.final_answer == "finished"
    assert await backend.list_keys("session:x:fence") == ["session:x:fence:0"]
    assert await CheckpointStore(backend).sweep(older_than=0, now=10**12) == ["x"]
    assert await backend.list_keys("session:x") == []


async def test_a_leased_resume_on_a_backend_without_batch_save_if_writes_as_before() -> None:
    class Older(Delegating):  # a backend written before batch_save_if (and batch_delete_if)
        def __getattr__(self, name: str) -> Any:
            if name in ("batch_save_if", "batch_delete_if"):
                raise AttributeError(name)
            return getattr(self.inner, name)

    backend = Older(ar.InMemoryBackend())
    await interrupted(backend)  # type: ignore[arg-type]
    done = await worker(backend, Effects()).resume("x", script(PEN, FINAL))  # type: ignore[arg-type]
    assert [s.action_input for s in done.steps] == [{"a": 1, "b": 1}, {"item": "pen"}, "finished"]
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done  # type: ignore[arg-type]
    assert await backend.list_keys("session:x:fence") == []


async def cut_short_takeover(backend: ar.PersistenceBackend, **taker: Any) -> str:
    """A takeover of the passed claim of session "x" cut short between its two writes: its
    key written (with `taker`'s fields), the claim still the old holder's. Returns the key."""
    await resume_left(backend, host="another-host", pid=1, expires_at=time.time() - 1)
    [claim] = await backend.list_keys("session:x:resume:")
    nonce = decode(await backend.load(claim) or b"", claim)["resume"]
    takeover = f"{claim}:{nonce}"
    await backend.save(takeover, encode("claim", {"takeover": nonce, **taker}))
    return takeover


@pytest.mark.parametrize(
    "taker",
    ["ended here", "older than the grace", "of an older version", "its lease passed"],
)
async def test_a_takeover_cut_short_is_taken_over_in_its_turn(
    backend: ar.PersistenceBackend, taker: str
) -> None:
    # Its key stayed, and refused every later takeover: the session could be resumed no
    # more, lease or not, until an operator called release_resume. A leased taker's key
    # refused them for a minute whatever its lease (a worker dead mid-takeover blocked the
    # session longer than the lease).
    now = time.time()
    fields: dict[str, Any] = {
        "ended here": {"at": now, "host": socket.gethostname(), "pid": ended_pid()},
        "older than the grace": {"at": now - 120, "host": "another-host", "pid": 1},
        "of an older version": {},
        "its lease passed": {"at": now - 1, "host": "another-host", "pid": 1, "expires_at": now},
    }[taker]
    await interrupted(backend)
    await cut_short_takeover(backend, **fields)
    effects = Effects()
    done = await worker(backend, effects).resume("x", script(CHARGE, FINAL))
    assert [s.action for s in done.steps] == ["add", "charge", "FINAL_ANSWER"]
    assert effects.calls == [("charge", 100)]
    assert await backend.list_keys("session:x:resume") == []


async def test_a_takeover_under_way_is_not_taken_over(
    backend: ar.PersistenceBackend,
) -> None:
    # One of this host whose process runs, written just now: it may be between its two
    # writes right now.
    await interrupted(backend)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        takeover = await cut_short_takeover(
            backend, at=time.time(), host=socket.gethostname(), pid=running.pid
        )
        effects = Effects()
        with pytest.raises(ar.PersistenceError, match="is being resumed by another worker"):
            await worker(backend, effects).resume("x", script(CHARGE, FINAL))
        assert effects.calls == []
        assert await backend.load(takeover) is not None
    finally:
        running.kill()
        running.wait()


async def test_a_takeover_under_its_lease_is_not_taken_over(
    backend: ar.PersistenceBackend,
) -> None:
    # Another host's, its lease not passed: it may be between its two writes right now.
    await interrupted(backend)
    now = time.time()
    holder = {"at": now, "host": "another-host", "pid": 1, "expires_at": now + 60}
    takeover = await cut_short_takeover(backend, **holder)
    effects = Effects()
    with pytest.raises(ar.PersistenceError, match="is being resumed by another worker"):
        await worker(backend, effects).resume("x", script(CHARGE, FINAL))
    assert effects.calls == []
    assert await backend.load(takeover) is not None


async def test_a_worker_dead_mid_takeover_blocks_the_session_no_longer_than_its_lease(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend)
    await resume_left(backend, host="another-host", pid=1, expires_at=time.time() - 1)
    lease = 0.5  # the next worker is refused within it, even on a slow machine
    # Its process dies after its takeover key (its claim's write refused: the old one's
    # there), as it writes the claim over the old one.
    dying = worker(DiesAfter(backend, writes=2), Effects(), lease)  # type: ignore[arg-type]
    with pytest.raises(ar.PersistenceError, match="the process died"):
        await dying.resume("x", script(CHARGE, FINAL))
    [takeover] = [k for k in await backend.list_keys("session:x:resume:") if k.count(":") == 4]
    record = decode(await backend.load(takeover) or b"", takeover)
    assert record["expires_at"] == pytest.approx(record["at"] + lease)
    effects = Effects()
    with pytest.raises(ar.PersistenceError, match="is being resumed by another worker"):
        await worker(backend, effects).resume("x", script(CHARGE, FINAL))
    await asyncio.sleep(record["expires_at"] - time.time() + 0.05)  # no minute's wait
    done = await worker(backend, effects).resume("x", script(CHARGE, FINAL))
    assert [s.action for s in done.steps] == ["add", "charge", "FINAL_ANSWER"]
    assert effects.calls == [("charge", 100)]
    assert await backend.list_keys("session:x:resume") == []


async def test_a_claim_of_a_zombie_process_of_this_host_is_taken_over(
    backend: ar.PersistenceBackend,
) -> None:
    # A process that ended but that its parent has not reaped yet answers signal 0: its
    # claim was held as a running resumer's.
    await interrupted(backend)
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while Path(f"/proc/{process.pid}/stat").read_bytes().rpartition(b")")[2].split()[0] != b"Z":
            await asyncio.sleep(0.01)
        await resume_left(backend, host=socket.gethostname(), pid=process.pid)
        effects = Effects()
        done = await worker(backend, effects, lease=None).resume("x", script(CHARGE, FINAL))
        assert [s.action for s in done.steps] == ["add", "charge", "FINAL_ANSWER"]
    finally:
        process.wait()


class ClaimWriteLandsLate(Delegating):
    """The backend, but the first write of the kind `kind` lands, then its reply waits for
    `land`: the write reached the store, and its worker has not heard back yet."""

    def __init__(self, inner: ar.PersistenceBackend, kind: str) -> None:
        super().__init__(inner)
        self.kind = kind
        self.sent, self.land = asyncio.Event(), asyncio.Event()

    async def _held(self, kind: str) -> None:
        if kind == self.kind and not self.sent.is_set():
            self.sent.set()
            await self.land.wait()

    async def save_new(self, key: str, value: bytes) -> bool:
        written = bool(await self.inner.save_new(key, value))
        if ":resume:" in key:  # `session:x:resume:<step>`, or a takeover's `...:<nonce>`
            await self._held("claim" if key.count(":") == 3 else "takeover key")
        return written

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        written = bool(await self.inner.batch_save_if(guard_key, guard_value, items))
        if ":resume:" in guard_key:  # the fence, alone or with a taken-over claim
            await self._held("takeover" if guard_key in items else "fence")
        return written


async def resume_records(backend: ar.PersistenceBackend) -> dict[str, bytes | None]:
    """Session "x"'s resume claims, their takeover keys and fences, by key."""
    keys = [
        *await backend.list_keys("session:x:resume"),
        *await backend.list_keys("session:x:fence"),
    ]
    return {key: await backend.load(key) for key in keys}


@pytest.mark.parametrize("kind", ["claim", "fence", "takeover key", "takeover"])
async def test_a_resume_cancelled_as_its_claim_lands_leaves_no_claim(kind: str) -> None:
    # The claim landed after the wait for it was cancelled (a request timeout, say): held by
    # no one, it named this live process, and refused every later resume of the session.
    backend = ar.InMemoryBackend()
    await interrupted(backend)
    if kind.startswith("takeover"):
        await resume_left(backend, host=socket.gethostname(), pid=ended_pid())
    planted = await resume_records(backend)
    late = ClaimWriteLandsLate(backend, kind)
    effects = Effects()
    resuming = asyncio.create_task(worker(late, effects, lease=None).resume("x", script(FINAL)))  # type: ignore[arg-type]
    await late.sent.wait()
    resuming.cancel()
    late.land.set()
    with pytest.raises(asyncio.CancelledError):
        await resuming

    async def none_of_its_own_left() -> bool:
        left = await resume_records(backend)
        return all(planted.get(key) == raw for key, raw in left.items())

    await until(none_of_its_own_left)
    done = await worker(backend, effects).resume("x", script(CHARGE, FINAL))
    assert [s.action for s in done.steps] == ["add", "charge", "FINAL_ANSWER"]
    assert effects.calls == [("charge", 100)]


class ReplyLost(Delegating):
    """The backend, but a claim's write of `key_part` lands, then its reply is lost (a
    connection reset after the commit): the worker is told it failed."""

    def __init__(self, inner: ar.PersistenceBackend, key_part: str) -> None:
        super().__init__(inner)
        self.key_part = key_part

    async def save_new(self, key: str, value: bytes) -> bool:
        await self.inner.save_new(key, value)
        if self.key_part in key:
            raise ar.PersistenceError("connection reset after commit", key=key)
        return True


async def until_no_records(backend: ar.PersistenceBackend, prefix: str) -> None:
    async def none_left() -> bool:
        return await backend.list_keys(prefix) == []

    await until(none_left)


async def test_a_resume_claim_whose_reply_was_lost_is_deleted() -> None:
    # The claim stayed, naming this live process: every later resume was refused.
    backend = ar.InMemoryBackend()
    await interrupted(backend)
    effects = Effects()
    with pytest.raises(ar.PersistenceError, match="connection reset after commit"):
        await worker(ReplyLost(backend, ":resume:"), effects, lease=None).resume("x", script(FINAL))  # type: ignore[arg-type]
    await until_no_records(backend, "session:x:resume")
    done = await worker(backend, effects, lease=None).resume("x", script(CHARGE, FINAL))
    assert [s.action for s in done.steps] == ["add", "charge", "FINAL_ANSWER"]


async def test_a_run_claim_whose_reply_was_lost_is_deleted() -> None:
    # The claim stayed: the next run of the id was refused as if one ran, and `resume` (the
    # way out it advised) ran the prompt of the run whose caller was told it failed.
    backend = ar.InMemoryBackend()
    effects = Effects()
    lost = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=ReplyLost(backend, ":run:"))  # type: ignore[arg-type]
    with pytest.raises(ar.PersistenceError, match="connection reset after commit"):
        await lost.run_agent("a", "Q0", script(FINAL), session=lost.create_session("a", "x"))
    await until_no_records(backend, "session:x:run")
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend)
    done = await runtime.run_agent(
        "a", "Q1", script(FINAL), session=runtime.create_session("a", "x")
    )
    assert (done.prompt, done.final_answer) == ("Q1", "finished")


class FenceDeleteFails(Delegating):
    """The backend, but deleting a fence fails (a transient error), alone or in a batch."""

    async def delete(self, key: str) -> None:
        if ":fence:" in key:
            raise ar.PersistenceError("connection reset", key=key)
        await self.inner.delete(key)

    async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: Any) -> bool:
        if any(":fence:" in key for key in keys):
            raise ar.PersistenceError("connection reset", key=guard_key)
        return bool(await self.inner.batch_delete_if(guard_key, guard_value, keys))


async def test_a_failed_resumes_claim_goes_even_when_its_fence_cannot() -> None:
    # Its release stopped at the fence's failed delete, and left the claim too.
    backend = ar.InMemoryBackend()
    await interrupted(backend)
    effects = Effects()
    with pytest.raises(ConnectionError):
        await worker(FenceDeleteFails(backend), effects, lease=None).resume("x", fails_after())  # type: ignore[arg-type]
    await until_no_records(backend, "session:x:resume")
    done = await worker(backend, effects, lease=None).resume("x", script(CHARGE, FINAL))
    assert [s.action for s in done.steps] == ["add", "charge", "FINAL_ANSWER"]


class HungDelete(Delegating):
    """The backend, but deleting a key holding `part` waits for `go` (a hung server) or,
    with `fails`, raises."""

    def __init__(self, inner: ar.PersistenceBackend, part: str, fails: bool = False) -> None:
        super().__init__(inner)
        self.part, self.fails = part, fails
        self.reached, self.go = asyncio.Event(), asyncio.Event()

    async def _hang(self, key: str) -> None:
        if self.part in key and not self.go.is_set():
            self.reached.set()
            if self.fails:
                raise ar.PersistenceError("connection reset", key=key)
            await self.go.wait()

    async def delete(self, key: str) -> None:
        await self._hang(key)
        await self.inner.delete(key)

    async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: Any) -> bool:
        for key in keys:
            await self._hang(key)
        return bool(await self.inner.batch_delete_if(guard_key, guard_value, keys))


@pytest.mark.parametrize("lease", [LEASE, None], ids=["leased", "without-lease"])
async def test_a_resume_cancelled_as_its_final_checkpoint_ends_leaves_no_claim(
    lease: float | None,
) -> None:
    # The final record was saved, then the caller's cancellation cut the claims' deletion
    # short: the resume claim stayed, naming this live process (a later resume refused).
    backend = ar.InMemoryBackend()
    await interrupted(backend)
    hung = HungDelete(backend, ":resume:")
    effects = Effects()
    resuming = asyncio.create_task(worker(hung, effects, lease=lease).resume("x", script(FINAL)))  # type: ignore[arg-type]
    await asyncio.wait_for(hung.reached.wait(), 5)
    resuming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await resuming
    hung.go.set()
    await until_no_records(backend, "session:x:resume")
    assert await no_other_task()
    loaded = await CheckpointStore(backend).load("x")
    assert loaded.final is not None and loaded.final["session"]["final_answer"] == "finished"


async def test_a_finished_resumes_claim_whose_delete_fails_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = ar.InMemoryBackend()
    await interrupted(backend)
    failing = HungDelete(backend, ":resume:", fails=True)
    done = await worker(failing, Effects(), lease=None).resume("x", script(FINAL))  # type: ignore[arg-type]
    assert done.final_answer == "finished"  # the run finished: its caller gets it
    assert "a claim of session x was not deleted (its later resumes" in caplog.text
    assert "connection reset" in caplog.text
    assert await backend.list_keys("session:x:resume") != []  # what the warning says


class LoadsDown(ar.InMemoryBackend):
    """Its reads fail while `down` (an outage while a resumed run holds its lease)."""

    down = False
    failed = 0

    async def load(self, key: str) -> bytes | None:
        if self.down:
            self.failed += 1
            raise OSError("connection refused")
        return await super().load(key)


async def test_renewals_failing_through_an_outage_are_a_warning_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A warning at each renewal: three a second under a lease of one second, for as long
    # as the outage lasted.
    backend = LoadsDown()
    await interrupted(backend)
    store = CheckpointStore(backend, resume_lease_seconds=0.3)
    caplog.clear()
    with caplog.at_level("INFO", logger="llm_agent_runtime"):
        await store.claim_resumed(await store.load("x"))
        backend.down = True
        async with asyncio.timeout(10):
            while backend.failed < 4:  # four renewals fail
                await asyncio.sleep(0.01)
            backend.down = False
            while len(caplog.records) < 2:  # the next renewal
                await asyncio.sleep(0.01)
        await store.release("x")
    logged = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
    assert logged == [
        ("WARNING", "resume claim session"),
        ("INFO", "resume claim session"),
    ], logged
    assert "renewed, after failing" in caplog.records[1].getMessage()
