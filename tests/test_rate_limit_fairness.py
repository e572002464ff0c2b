"""RateLimiter.acquire stays first come, first served when a waiter gives up."""

from __future__ import annotations

import asyncio
import gc
import heapq
import math
import os
import time

import pytest
from hand_clock import HandClock
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_redis_state import redis_url

import llm_agent_runtime as ar
from llm_agent_runtime.orchestration import rate_limit
from llm_agent_runtime.orchestration.clock import SystemClock


class CountingClock(HandClock):
    """A `HandClock` that counts the sleeps it is asked for (a waiter's each)."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps = 0

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        await super().sleep(seconds)


class Queue:
    """Callers of `acquire` on one key, each recording when it was served."""

    def __init__(self, limiter: ar.RateLimiter, clock: ar.FakeClock | HandClock) -> None:
        self.limiter, self.clock = limiter, clock
        self.served: list[tuple[str, float]] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def arrive(self, name: str, tokens: float = 1.0) -> None:
        async def wait() -> None:
            await self.limiter.acquire("k", tokens)
            self.served.append((name, self.clock.now()))

        self.tasks[name] = asyncio.create_task(wait())
        await asyncio.sleep(0)  # it has reserved its tokens

    async def leave(self, name: str) -> None:
        self.tasks[name].cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.tasks[name]

    async def until_served(self) -> list[tuple[str, float]]:
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        return self.served


async def empty_queue(rate: float = 1.0, capacity: float = 1.0) -> Queue:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=rate, capacity=capacity, clock=clock)
    assert limiter.try_acquire("k", capacity)  # the bucket is empty at t = 0
    return Queue(limiter, clock)


async def test_a_newcomer_does_not_overtake_the_waiter_behind_a_cancelled_one() -> None:
    queue = await empty_queue()
    await queue.arrive("A")
    await queue.arrive("B")
    await queue.leave("A")
    await queue.arrive("C", 0.5)
    # B is first in line: its token is there at t = 1, C's half token at 1.5.
    assert await queue.until_served() == [("B", 1.0), ("C", 1.5)]


async def test_every_waiter_behind_a_cancelled_one_moves_up_and_those_ahead_stay() -> None:
    queue = await empty_queue(rate=2.0, capacity=2.0)
    for name in "ABCD":
        await queue.arrive(name)  # due at 0.5, 1.0, 1.5, 2.0
    await queue.leave("B")
    await queue.arrive("E")  # behind D: due at 2
    await queue.leave("E")  # no one is behind it: nothing moves
    await queue.arrive("F", 0.5)  # E's refund is F's: due at 1.75
    assert await queue.until_served() == [("A", 0.5), ("C", 1.0), ("D", 1.5), ("F", 1.75)]
    assert queue.limiter.tokens("k") == 0.0  # the rate was never exceeded
    assert queue.limiter._room.waiters == {}  # nothing is kept once all are served or gone


async def test_a_waiter_cancelled_while_others_sleep_wakes_them_sooner() -> None:
    queue = await empty_queue()
    for name in "ABC":
        await queue.arrive(name)  # due at 1, 2, 3

    async def leave_at(when: float, name: str) -> None:
        await queue.clock.sleep(when - queue.clock.now())
        queue.tasks[name].cancel()

    leaving = asyncio.create_task(leave_at(0.5, "B"))
    await leaving
    await queue.arrive("D")  # at t = 0.5, behind C
    assert await queue.until_served() == [("A", 1.0), ("C", 2.0), ("D", 3.0)]


async def test_a_waiter_moved_up_past_its_new_deadline_is_served_at_once() -> None:
    queue = await empty_queue(rate=1.0, capacity=2.0)
    await queue.arrive("A", 2.0)  # due at 2
    await queue.arrive("B", 0.5)  # due at 2.5; 0.5 once A's 2 tokens are given back
    await queue.clock.sleep(1.0)
    await queue.leave("A")
    await queue.arrive("C", 1.0)  # half a token is left after B's: due at 1.5
    assert await queue.until_served() == [("B", 1.0), ("C", 1.5)]


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.floats(0.125, 2.0).map(lambda tokens: ("arrive", tokens)),
            st.integers(0, 30).map(lambda index: ("leave", index)),
        ),
        max_size=30,
    )
)
def test_waiters_are_served_in_arrival_order_exactly_at_the_rate(
    ops: list[tuple[str, float]],
) -> None:
    """Arrivals and cancellations at t = 0 on an empty bucket (rate 2, capacity 2).

    Each remaining waiter is served when the tokens of those still ahead of it, and its
    own, have been refilled.
    """

    async def run() -> None:
        clock = HandClock()
        limiter = ar.RateLimiter(rate=2.0, capacity=2.0, clock=clock)
        assert limiter.try_acquire("k", 2.0)
        queue = Queue(limiter, clock)
        wanted: dict[str, float] = {}
        for kind, value in ops:
            if kind == "arrive":
                name = f"w{len(wanted)}"
                wanted[name] = value
                await queue.arrive(name, value)
            elif wanted:
                name = list(wanted)[int(value) % len(wanted)]
                if not queue.tasks[name].done():
                    await queue.leave(name)
        assert clock.now() == 0.0
        await clock.run()
        served = await queue.until_served()
        remaining = [name for name in wanted if not queue.tasks[name].cancelled()]
        assert [name for name, _ in served] == remaining  # first come, first served
        total = 0.0
        for name, when in served:
            total += wanted[name]
            assert when == pytest.approx(total / 2.0, abs=1e-9)
        assert limiter._room.waiters == {}

    asyncio.run(run())


async def test_cancelling_many_waiters_at_once_moves_each_other_one_up_once() -> None:
    # Refunds are settled in one pass a turn of the loop: cancelling half of 2,000 waiters
    # (a shutdown) moved the rest up once each per refund before, a million new sleeps.
    clock = CountingClock()
    queue = Queue(ar.RateLimiter(rate=1.0, capacity=1.0, clock=clock), clock)
    names = [f"w{i}" for i in range(2_000)]
    for name in names:
        await queue.arrive(name)
    await asyncio.sleep(0)
    for name in names[::2]:
        queue.tasks[name].cancel()
    await clock.run()
    served = dict(queue.served)
    # The first waiter took the full bucket at once; each other kept one is served a second
    # after the one before it, as if the cancelled ones had never come.
    kept = names[1::2]
    assert [served[n] for n in kept] == [float(i) for i in range(1, len(kept) + 1)]
    assert clock.sleeps <= len(names) + len(kept)  # each sleeps once, and once more moved up


@pytest.mark.parametrize("newcomer", ["between the refunds", "before them"])
async def test_a_newcomer_owed_refunds_is_served_exactly_on_time(newcomer: str) -> None:
    # Between: W2 gives its reservation back, N arrives (seeing W2's refund), then W1 gives
    # its back: settled together, N is owed W1's refund alone, to the last bit. Before: N
    # reserved (due at 0.4) behind both, who then give theirs back (0.2 and 0.1): 0.4 less
    # each refund in turn rounded twice, serving it at 0.09999999999999998.
    clock = HandClock()
    limiter = ar.RateLimiter(rate=10.0, capacity=3.0, clock=clock)
    assert limiter.try_acquire("k", 3.0)
    queue = Queue(limiter, clock)
    await queue.arrive("W1", 1.0)
    await queue.arrive("W2", 2.0)
    if newcomer == "before them":
        await queue.arrive("N", 1.0)
    queue.tasks["W2"].cancel()
    if newcomer == "between the refunds":
        # In this order in the loop's next turn, before any refund is settled: W2's refund,
        # N's reservation, W1's refund.
        queue.tasks["N"] = asyncio.create_task(queue_wait(queue, "N", 1.0))
    queue.tasks["W1"].cancel()
    await clock.run()
    assert await queue.until_served() == [("N", 0.1)]
    assert limiter.tokens("k") == 0.0


async def queue_wait(queue: Queue, name: str, tokens: float) -> None:
    await queue.limiter.acquire("k", tokens)
    queue.served.append((name, queue.clock.now()))


def test_a_refund_left_unsettled_by_a_stopped_loop_is_settled_by_the_next() -> None:
    limiter = ar.RateLimiter(rate=10.0, capacity=1.0, clock=ar.FakeClock())

    async def give_up_at_once() -> None:
        assert limiter.try_acquire("k")
        waiting = asyncio.create_task(limiter.acquire("k"))
        await asyncio.sleep(0)
        waiting.cancel()  # its refund is owed; this loop stops before it is settled

    loop = asyncio.new_event_loop()
    loop.run_until_complete(give_up_at_once())
    loop.close()

    async def later() -> list[tuple[str, float]]:
        clock = HandClock()
        limiter._clock = clock
        limiter._buckets.clear()  # full again
        assert limiter.try_acquire("k")
        queue = Queue(limiter, clock)
        await queue.arrive("B")
        await queue.arrive("C")
        await queue.leave("B")  # C is owed B's refund: due at 0.1, not 0.2
        await clock.run()
        return await queue.until_served()

    assert asyncio.run(later()) == [("C", 0.1)]


async def test_a_refund_numbered_before_its_reservation_is_owed_to_no_one() -> None:
    # A shared bucket whose key was lost (evicted, flushed) numbers its commands from 1
    # again: such a refund moves no one, and the others settled with it still apply.
    room = rate_limit._WaitingRoom()
    waiter = rate_limit._Waiter(due=1.0, seq=5)
    room.enter("k", waiter)
    room.owe("k", (6, 1, 0.5))  # after its reservation's number: owed to no one
    room.owe("k", (1, 10, 0.25))  # reservations 2 to 9 are due 0.25 s sooner
    await asyncio.sleep(0)
    assert waiter.due == 0.75
    room.leave("k", waiter)
    assert room.waiters == {}


def test_refunds_of_a_closed_loop_leave_the_next_loops_cancellation_as_it_is() -> None:
    # The system clock: a task left pending with a closed loop cleans up without its loop.
    limiter = ar.RateLimiter(rate=10.0, capacity=1.0)

    async def leave_one_waiting() -> None:
        assert limiter.try_acquire("k")
        first = asyncio.create_task(limiter.acquire("k"))
        asyncio.create_task(limiter.acquire("k"))  # noqa: RUF006 - left pending with its loop
        await asyncio.sleep(0)
        first.cancel()  # its refund is owed to the one left pending, never settled there

    loop = asyncio.new_event_loop()
    loop.run_until_complete(leave_one_waiting())
    loop.close()

    async def cancel_one() -> None:
        waiting = asyncio.create_task(limiter.acquire("k"))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):  # not "Event loop is closed"
            await waiting
        await asyncio.sleep(0)
        assert limiter._room._owed == {}  # the closed loop's refunds are settled too

    asyncio.run(cancel_one())
    del loop
    gc.collect()  # the task left with the closed loop goes, giving its tokens back
    assert limiter._room.waiters == {} and limiter._room._owed == {}


def test_waiters_a_closed_loop_left_are_let_go_by_the_next_loops_first_caller() -> None:
    # The system clock, as above; a token a minute, so that the newcomer below waits however
    # slow the machine (at 10 a second, a loaded machine had the token back in time for it).
    limiter = ar.RateLimiter(rate=1 / 60, capacity=1.0)

    async def leave_waiting() -> None:
        assert limiter.try_acquire("k")
        for _ in range(3):
            asyncio.create_task(limiter.acquire("k"))  # noqa: RUF006 - left with its loop
        await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(leave_waiting())
    loop.close()
    del loop
    gc.collect()
    assert sum(map(len, limiter._room.waiters.values())) == 3  # kept alive by the limiter

    async def arrive() -> int:
        waiting = asyncio.create_task(limiter.acquire("k"))
        await asyncio.sleep(0)
        held = sum(map(len, limiter._room.waiters.values()))
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return held

    assert asyncio.run(arrive()) == 1  # only its own: the abandoned ones were dropped
    gc.collect()  # and collected, their tokens back in the bucket
    assert limiter._room.waiters == {}


# -- a waiter cancelled once it is due was served ---------------------------------------------


async def test_a_waiter_cancelled_once_due_gives_nothing_back() -> None:
    # A's token was refilled for it by t = 1; by t = 2 the bucket is full, having dropped the
    # token refilled since at capacity. Given back, A's token was a second grant at t = 2.
    queue = await empty_queue()
    await queue.arrive("A")  # due at 1
    queue.clock.advance(2.0)  # A is due, and has not resumed yet
    assert queue.limiter.try_acquire("k")  # the one token the bucket holds at t = 2
    await queue.leave("A")  # cancelled before it resumed (a timeout firing in the same turn)
    assert not queue.limiter.try_acquire("k")
    assert queue.limiter.tokens("k") == 0.0


async def test_the_waiters_behind_one_cancelled_once_due_keep_their_turn() -> None:
    queue = await empty_queue()
    await queue.arrive("A")  # due at 1
    await queue.arrive("B")  # due at 2
    queue.clock.advance(1.0)  # A is due: it was served at 1, resumed or not
    await queue.leave("A")
    assert await queue.until_served() == [("B", 2.0)]
    assert queue.limiter._room.waiters == {}


@pytest.mark.parametrize("order", ["AB", "BA"])
async def test_waiters_cancelled_in_one_turn_before_they_are_due_give_all_back(order: str) -> None:
    # Cancelling A first, its refund (owed to B, not settled yet) made B due after the fact:
    # B gave nothing back, though it never ran and the bucket never reached capacity, and C
    # was served at 1 with no token left (cancelling B first gave both back).
    clock = HandClock()
    limiter = ar.RateLimiter(rate=1.0, capacity=1.0, clock=clock)
    assert limiter.try_acquire("k", 1.0)
    queue = Queue(limiter, clock)
    await queue.arrive("A", 1.0)  # due at 1
    await queue.arrive("B", 0.5)  # due at 1.5
    await queue.arrive("C", 0.5)  # due at 2; at 0.5 once A's and B's are given back
    clock.time = 0.8  # no one is due
    for name in order:  # in one turn of the loop (a task group or a shutdown cancelling both)
        queue.tasks[name].cancel()
    await clock.run()
    assert await queue.until_served() == [("C", 0.8)]
    assert limiter.tokens("k") == pytest.approx(0.3)


# -- a cancellation costs O(log n), not a new sleep for every waiter behind it ------------------


async def waiting_queue(size: int) -> tuple[Queue, CountingClock]:
    """`size` callers waiting on an empty bucket (one token a second), each asleep."""
    clock = CountingClock()
    limiter = ar.RateLimiter(rate=1.0, capacity=1.0, clock=clock)
    assert limiter.try_acquire("k")
    queue = Queue(limiter, clock)
    for i in range(size):
        await queue.arrive(f"w{i}")
    await asyncio.sleep(0)
    assert clock.sleeps == size
    return queue, clock


@pytest.mark.parametrize("leaving", ["first", "every other"])
async def test_waiters_giving_up_one_turn_apart_cost_a_sleep_each_at_most(leaving: str) -> None:
    # Each refund woke every waiter behind it into a new sleep: 20 of 300 waiters giving up in
    # turns of their own (client timeouts, one after another) cost 5,300 new sleeps, not 20.
    size, leavers = 300, 20
    queue, clock = await waiting_queue(size)
    names = [f"w{i}" for i in range(size)]
    gone = names[:leavers] if leaving == "first" else names[1 : 2 * leavers : 2]
    for name in gone:
        await queue.leave(name)
        await asyncio.sleep(0)  # its refund is settled before the next one leaves
    assert clock.sleeps - size <= leavers  # the first waiter's, woken sooner
    before = clock.sleeps
    await clock.run()
    kept = [name for name in names if name not in gone]
    # Served one a second, in order, as if those who left had never come; each woken once
    # more at most, as the one before it leaves.
    assert await queue.until_served() == [(n, float(i)) for i, n in enumerate(kept, 1)]
    assert clock.sleeps - before <= len(kept)
    assert queue.limiter._room.waiters == {}


class SteppedClock(CountingClock):
    """A `HandClock` that can also move to a time, waking each sleeper on the way."""

    async def advance(self, seconds: float) -> None:
        target = self.time + seconds
        while True:
            for _ in range(10):  # the woken tasks run, and may sleep again
                await asyncio.sleep(0)
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            deadline, _, future = heapq.heappop(self._sleepers)
            self.time = max(self.time, deadline)
            future.set_result(None)
        self.time = target


class ReferenceBucket:
    """The token bucket `RateLimiter` keeps, the plain way: each waiter's due, moved up one by
    one when a waiter ahead of it gives its reservation back."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.level, self.last = 0.0, 0.0  # emptied at t = 0
        self.waiting: dict[str, tuple[float, float]] = {}  # in arrival order: (tokens, due)

    def arrive(self, name: str, tokens: float, now: float) -> float:
        """Reserves `tokens`; returns when they are granted."""
        self.level = min(self.capacity, self.level + (now - self.last) * self.rate) - tokens
        self.last = now
        if self.level >= 0:
            return now
        self.waiting[name] = (tokens, now - self.level / self.rate)
        return self.waiting[name][1]

    def serve(self, now: float) -> None:
        self.waiting = {n: (t, due) for n, (t, due) in self.waiting.items() if due > now}

    def leave(self, name: str, now: float) -> dict[str, float]:
        """Gives `name`'s reservation back; returns when the others are served now (at once,
        if it moved them up into the past)."""
        names = list(self.waiting)
        tokens, due = self.waiting.pop(name)
        assert now < due  # else it was served
        self.level += tokens
        for other in names[names.index(name) + 1 :]:
            other_tokens, other_due = self.waiting[other]
            self.waiting[other] = (other_tokens, other_due - tokens / self.rate)
        return {other: max(due, now) for other, (_, due) in self.waiting.items()}


@settings(max_examples=150, deadline=None)
@example(ops=[("arrive", 1.0)] * 8 + [("leave", index) for index in range(6)])  # the first go
@example(ops=[("arrive", 0.5)] * 8 + [("wait", 0.75), ("leave", 7), ("leave", 3), ("leave", 4)])
@given(
    ops=st.lists(
        st.one_of(
            st.integers(1, 16).map(lambda eighths: ("arrive", eighths / 8)),
            st.integers(0, 30).map(lambda index: ("leave", index)),
            st.integers(1, 24).map(lambda sixteenths: ("wait", sixteenths / 16)),
        ),
        max_size=40,
    )
)
def test_waiters_leaving_over_time_are_served_in_order_and_never_beyond_the_rate(
    ops: list[tuple[str, float]],
) -> None:
    """Arrivals, time passing and cancellations, each in turns of its own (rate 2, capacity 2).

    Every waiter is served exactly when a plain token bucket serves it (amounts and times are
    sums of eighths: no rounding), so in arrival order, and never more tokens are granted than
    capacity + rate x elapsed; a cancellation costs one new sleep at most, not one for each
    waiter behind it.
    """

    async def run() -> None:
        clock = SteppedClock()
        limiter = ar.RateLimiter(rate=2.0, capacity=2.0, clock=clock)
        assert limiter.try_acquire("k", 2.0)
        queue = Queue(limiter, clock)
        reference = ReferenceBucket(2.0, 2.0)
        wanted: dict[str, float] = {}
        expected: dict[str, float] = {}  # when each caller not gone is served
        for kind, value in ops:
            if kind == "arrive":
                name = f"w{len(wanted)}"
                wanted[name] = value
                expected[name] = reference.arrive(name, value, clock.now())
                await queue.arrive(name, value)
            elif kind == "wait":
                await clock.advance(value)
                reference.serve(clock.now())
            elif wanted:
                name = list(wanted)[int(value) % len(wanted)]
                if not queue.tasks[name].done():
                    await queue.leave(name)  # its refund is settled before what follows
                    del expected[name]
                    expected.update(reference.leave(name, clock.now()))
                    await clock.advance(0.0)  # those moved up to now are served
            for name, due in expected.items():  # served on time: neither sooner nor later
                assert queue.tasks[name].done() == (due <= clock.now()), name
        await clock.run()
        served = await queue.until_served()
        assert served == list(expected.items())  # in arrival order, at the times expected
        grants = [(0.0, 2.0)] + [(when, wanted[name]) for name, when in served]
        for start, _ in grants:
            for end, _ in grants:
                granted = sum(tokens for when, tokens in grants if start <= when <= end)
                assert granted <= 2.0 + 2.0 * max(0.0, end - start)
        assert limiter._room.waiters == {}
        # Each waiter sleeps once, and once more when moved up (woken as the one before it
        # leaves); each refund wakes one waiter, the first, not all those behind.
        left = len(wanted) - len(served)
        assert clock.sleeps <= 2 * len(wanted) + left

    asyncio.run(run())


async def test_shared_bucket_waiters_giving_up_one_by_one_cost_a_sleep_each_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shared bucket's waiters wait in the same room: each refund woke every waiter of
    # this limiter behind it into a new sleep (20 of 150 leaving: 1,650 new sleeps).
    sleeps = 0
    sleep = SystemClock.sleep

    async def counted(self: SystemClock, seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        await sleep(self, seconds)

    monkeypatch.setattr(SystemClock, "sleep", counted)
    limiter = ar.RedisRateLimiter(
        redis_url(), rate=1 / 3600, capacity=1, prefix=f"q:{os.getpid()}:"
    )
    await limiter.client.delete(limiter.redis_key("k"))
    tasks = []
    try:
        assert await limiter.try_acquire("k")  # empty: each waiter below waits an hour more
        tasks = [asyncio.create_task(limiter.acquire("k")) for _ in range(150)]
        while sleeps < len(tasks):  # all have their reservations, and sleep
            await asyncio.sleep(0.005)
        for task in tasks[:20]:  # one by one, each refund settled before the next
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0)
        assert sleeps - len(tasks) <= 20  # the first waiter's, woken sooner
        first = min(limiter._room.waiters["k"], key=lambda waiter: waiter.seq or 0)
        assert first.due == pytest.approx(time.monotonic() + 3600, abs=60)  # moved up 20 h
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await limiter.client.delete(limiter.redis_key("k"))
        await limiter.close()


async def test_a_caller_past_its_max_wait_is_refused_at_once_and_takes_nothing() -> None:
    queue = await empty_queue(rate=1.0, capacity=2.0)
    limiter, clock = queue.limiter, queue.clock
    await queue.arrive("a")  # due at t = 1
    await queue.arrive("b")  # due at t = 2
    before = limiter.tokens("k")
    with pytest.raises(ar.RateLimitExceededError, match=r"hold this call 3 s, past its max_wait"):
        await limiter.acquire("k", max_wait=2.5)
    assert limiter.tokens("k") == before == -2.0  # nothing reserved: no one behind moved back
    served = asyncio.create_task(limiter.acquire("k", max_wait=3.0))  # due at t = 3: within
    await asyncio.sleep(0)
    assert await queue.until_served() == [("a", 1.0), ("b", 2.0)]
    await served
    assert clock.now() == 3.0
    await limiter.acquire("k", tokens=0.5, max_wait=0.5)  # refilled by t = 3.5
    assert clock.now() == 3.5
    assert limiter.try_acquire("k", 0.5) is False


async def test_max_wait_zero_takes_only_what_the_bucket_holds_and_none_is_no_limit() -> None:
    limiter = ar.RateLimiter(rate=1.0, capacity=2.0, clock=ar.FakeClock())
    await limiter.acquire("k", 2.0, max_wait=0)
    with pytest.raises(ar.RateLimitExceededError):
        await limiter.acquire("k", 1.0, max_wait=0)
    await limiter.acquire("k", 1.0, max_wait=None)  # waits its second
    for bad in (-1.0, math.nan, True, "1"):
        with pytest.raises(ValueError, match="max_wait"):
            await limiter.acquire("k", max_wait=bad)  # type: ignore[arg-type]


async def test_shared_limiter_refuses_a_caller_past_its_max_wait_without_taking() -> None:
    # Callers giving up through wait_for left their reservations behind, which another
    # worker's activity kept from being given back: under steady overload every later
    # caller waited longer, gave up too, and the bucket granted nothing until demand stopped.
    rate = 10.0
    prefix = f"max-wait:{os.getpid()}:"
    a, b = (ar.RedisRateLimiter(redis_url(), rate, 1, prefix=prefix) for _ in range(2))
    await a.client.delete(a.redis_key("k"))
    try:
        granted = 0
        refused = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0

        async def caller(limiter: ar.RedisRateLimiter) -> None:
            nonlocal granted, refused
            while loop.time() < end:
                try:
                    await limiter.acquire("k", max_wait=0.15)
                    granted += 1
                except ar.RateLimitExceededError:
                    refused += 1
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(caller(lim) for lim in (a, b) for _ in range(5)))
        # About rate * 1 s + capacity granted, never more; callers past their max_wait
        # reserved nothing, so the bucket holds no debt for them.
        assert refused > 0
        assert 0.7 * rate <= granted <= rate * 1.2 + 1 + 2
        level = float(await a.client.hget(a.redis_key("k"), "level"))
        assert level >= -rate * 0.15 - 1e-6
    finally:
        await a.client.delete(a.redis_key("k"))
        await a.close()
        await b.close()


async def test_a_refusal_past_max_wait_is_retried_by_a_default_retry_policy() -> None:
    # A refusal was a bare TimeoutError, which `default_retry_on` retries; typed as an
    # AgentRuntimeError, it was no longer retried.
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=1.0, capacity=1.0, clock=clock)
    await limiter.acquire("k")  # the bucket is empty: the next token comes in a second
    calls = 0

    async def limited() -> int:
        nonlocal calls
        calls += 1
        await limiter.acquire("k", max_wait=0)
        return calls

    retry = ar.RetryPolicy(max_attempts=3, base_delay=1.0, jitter=False, clock=clock)
    assert await retry.run(limited) == 2  # refused, then granted a second later
