"""Orchestration edge cases: nested guard blocks, failing metrics, clocks that step back."""

from __future__ import annotations

import logging

import pytest

import llm_agent_runtime as ar


class SteppingClock:
    """A clock moved by hand, backwards too (a wall clock set back by NTP, say)."""

    def __init__(self, now: float = 0.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


# -- BackpressureGuard ----------------------------------------------------------------------


async def test_a_second_release_in_a_nested_block_gives_back_the_outer_blocks_slot() -> None:
    # The second release() gave back the outer block's slot without marking it: the outer
    # block gave it back again as it ended, and the depth went to -1 (one slot too many
    # admitted from then on).
    guard = ar.BackpressureGuard(2)
    async with guard:
        async with guard:
            guard.release()  # the inner block's own slot
            guard.release()  # then the outer block's
            assert guard.depth == 0
        assert guard.depth == 0
    assert guard.depth == 0
    assert guard.try_acquire() and guard.try_acquire() and not guard.try_acquire()


async def test_a_release_in_a_nested_block_after_an_outer_acquire_is_lifo() -> None:
    # The outer block's task took a slot with acquire() before opening the inner block: a
    # release() past the inner block's own slot gives back that acquire's slot, and the
    # outer block still gives back its own as it ends.
    guard = ar.BackpressureGuard(4)
    async with guard:
        guard.acquire()
        async with guard:
            guard.release()  # the inner block's slot
            guard.release()  # the outer acquire's slot
            assert guard.depth == 1
        assert guard.depth == 1
    assert guard.depth == 0


async def test_metrics_that_fail_do_not_replace_the_shed_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A metrics object that raised while counting a shed replaced the BackpressureShedError:
    # a caller catching the shed (the runtime's own runs among them) got the metrics' error.
    class BrokenMetrics:
        def record_backpressure_shed(self) -> None:
            raise RuntimeError("metrics backend down")

    guard = ar.BackpressureGuard(1, metrics=BrokenMetrics())  # type: ignore[arg-type]
    guard.acquire()
    with caplog.at_level(logging.ERROR), pytest.raises(ar.BackpressureShedError) as shed:
        guard.acquire()
    assert (shed.value.depth, shed.value.capacity) == (1, 1)
    assert guard.shed_count == 1 and guard.depth == 1
    assert "metrics backend down" in caplog.text
    with pytest.raises(ar.BackpressureShedError):
        async with guard:
            pass
    assert guard.shed_count == 2 and guard.depth == 1
    guard.release()
    assert guard.depth == 0


# -- ResultCache ----------------------------------------------------------------------------


def test_a_full_cache_drops_entries_expired_after_the_clock_stepped_back() -> None:
    # The expiry index was a queue in store order, read as if in expiry order: once the
    # clock stepped back, an entry stored before the step (later expiry) sat in front of
    # ones that expired, which a full cache then kept while it evicted a live entry.
    clock = SteppingClock(100.0)
    cache = ar.ResultCache(ttl=10, max_entries=2, clock=clock)
    cache.put("t", {"k": "old"}, "old")  # expires at 110
    clock.t = 50.0  # stepped back
    cache.put("t", {"k": "dead"}, "dead")  # expires at 60
    clock.t = 70.0
    cache.put("t", {"k": "new"}, "new")  # full: "dead" has expired, "old" has not
    assert cache.get("t", {"k": "old"}) == (True, "old")
    assert cache.get("t", {"k": "new"}) == (True, "new")
    assert len(cache) == 2


def test_a_full_cache_drops_entries_expired_after_its_ttl_was_lowered() -> None:
    clock = ar.FakeClock()
    cache = ar.ResultCache(ttl=100, max_entries=2, clock=clock)
    cache.put("t", {"k": "long"}, "long")  # expires at 100
    cache.ttl = 1
    cache.put("t", {"k": "short"}, "short")  # expires at 1
    clock.advance(5)
    cache.put("t", {"k": "new"}, "new")
    assert cache.get("t", {"k": "long"}) == (True, "long")
    assert cache.get("t", {"k": "new"}) == (True, "new")


# -- CapabilitySet --------------------------------------------------------------------------


def test_capabilities_refuse_a_name_whose_repr_fails_with_a_type_error() -> None:
    # The refusal's message showed the item with its repr: one whose repr raised replaced
    # the TypeError with its own error, and a huge one made a huge message.
    class Opaque:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    with pytest.raises(TypeError, match="must hold strings"):
        ar.CapabilitySet(allowed_tools=[Opaque()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="must hold strings") as refused:
        ar.CapabilitySet(allowed_state_keys=["ok", b"x" * 100_000])  # type: ignore[list-item]
    assert len(str(refused.value)) < 300


# -- Deduplicator ---------------------------------------------------------------------------


async def _one(value: int) -> int:
    return value


async def test_dedup_drops_expired_results_as_new_ones_come_after_the_clock_stepped_back() -> None:
    # Results were dropped from the front of a store-ordered queue, taken for expiry order:
    # one stored before the clock stepped back (later expiry) held back every result behind
    # it, and a stream of distinct keys kept them all until it expired.
    clock = SteppingClock(100.0)
    dedup = ar.Deduplicator(ttl=10, clock=clock)
    assert await dedup.run("old", _one, -1) == -1  # expires at 110
    clock.t = 50.0
    for i in range(50):
        assert await dedup.run(i, _one, i) == i  # each expires at 60
    clock.t = 70.0
    assert await dedup.run("new", _one, 1) == 1
    assert dedup.purge_expired() == 0  # the 50 dead ones went as "new" came
    assert await dedup.run("old", _one, 0) == -1  # still live: served, not run again
    assert dedup.executions == 52


async def test_dedup_drops_expired_results_as_new_ones_come_after_its_ttl_was_lowered() -> None:
    clock = ar.FakeClock()
    dedup = ar.Deduplicator(ttl=100, clock=clock)
    await dedup.run("long", _one, 0)
    dedup.ttl = 1
    for i in range(20):
        await dedup.run(i, _one, i)
    clock.advance(5)
    await dedup.run("new", _one, 1)
    assert dedup.purge_expired() == 0
    assert await dedup.run("long", _one, 9) == 0
