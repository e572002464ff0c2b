"""Orchestration primitives: a pipeline run keeps the stages it started with and names a stage
whose error cannot print itself; a forgotten dedup key is computed afresh; half-built
primitives have reprs that do not raise."""

from __future__ import annotations

import asyncio

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.orchestration import (
    BackpressureGuard,
    CircuitBreaker,
    Deduplicator,
    FakeClock,
    Pipeline,
    RetryPolicy,
)

# -- Pipeline ---------------------------------------------------------------------------------


async def test_a_stage_added_while_a_run_is_in_flight_is_not_run_by_it() -> None:
    gate = asyncio.Event()

    async def fetch(x: int) -> int:
        await gate.wait()
        return x + 1

    pipeline = Pipeline(fetch)
    running = asyncio.create_task(pipeline.run(1))
    await asyncio.sleep(0)  # the run is inside its first stage
    pipeline.then(lambda x: x * 100, name="scale")
    gate.set()
    assert await running == 2  # the stages it started with
    assert await pipeline.run(1) == 200  # a later run has the new stage


async def test_a_stage_error_that_cannot_print_itself_still_names_its_stage() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    def explode(x: int) -> int:
        raise Unprintable

    with pytest.raises(ar.PipelineStageError, match="stage 0 \\('explode'\\)") as info:
        await Pipeline(explode).run(1)
    assert info.value.stage == "explode"
    assert type(info.value.__cause__) is Unprintable


@pytest.mark.parametrize("name", [5, b"scale", ("a",)])
def test_then_refuses_a_stage_name_that_is_not_a_string(name: object) -> None:
    pipeline = Pipeline()
    with pytest.raises(TypeError, match="stage name must be a str"):
        pipeline.then(lambda x: x, name=name)  # type: ignore[arg-type]
    assert pipeline.stage_names == []


# -- Deduplicator -----------------------------------------------------------------------------


async def test_a_key_forgotten_while_it_runs_is_computed_afresh() -> None:
    dedup = Deduplicator(ttl=100.0, clock=FakeClock())
    gate, started = asyncio.Event(), asyncio.Event()
    version = 1

    async def read() -> int:
        seen = version  # the data as it stood when the execution started
        started.set()
        await gate.wait()
        return seen

    first = asyncio.create_task(dedup.run("k", read))
    await started.wait()
    version = 2
    dedup.forget("k")  # the data changed: what runs now may be stale
    second = asyncio.create_task(dedup.run("k", read))
    await asyncio.sleep(0)
    gate.set()
    assert await first == 1  # its own callers still get its result
    assert await second == 2  # a caller after the forget does not join it
    assert await dedup.run("k", read) == 2  # nor is its result cached
    assert dedup.executions == 2
    assert dedup.in_flight == 0


async def test_a_forgotten_execution_that_fails_leaves_the_new_one_alone() -> None:
    dedup = Deduplicator(ttl=100.0, clock=FakeClock())
    old_gate, new_gate, started = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def old() -> str:
        started.set()
        await old_gate.wait()
        raise ValueError("old")

    async def new() -> str:
        await new_gate.wait()
        return "new"

    first = asyncio.create_task(dedup.run("k", old))
    await started.wait()
    dedup.forget("k")
    second = asyncio.create_task(dedup.run("k", new))
    await asyncio.sleep(0)
    old_gate.set()
    with pytest.raises(ValueError, match="old"):
        await first
    # The new execution is still the key's: a caller now joins it.
    third = asyncio.create_task(dedup.run("k", new))
    await asyncio.sleep(0)
    assert dedup.in_flight == 1
    new_gate.set()
    assert await second == await third == "new"
    assert dedup.executions == 2


# -- Reprs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CircuitBreaker, RetryPolicy, BackpressureGuard])
def test_a_half_built_primitive_has_a_repr_that_does_not_raise(cls: type) -> None:
    # A traceback or debugger shows `self` from inside an `__init__` that failed.
    text = repr(cls.__new__(cls))
    assert text.startswith(cls.__name__ + "(") and len(text) < 100


# -- CostBudget -------------------------------------------------------------------------------


def test_a_cost_summed_past_the_float_range_is_inf_not_an_overflow_error() -> None:
    # Each amount is finite; their sum, as a float, was a bare OverflowError.
    unlimited = ar.CostBudget()
    unlimited.record(0, 0, 1e308)
    unlimited.record(0, 0, 1e308)
    assert unlimited.used_cost_usd == float("inf")
    limited = ar.CostBudget(max_cost_usd=1.5e308)
    limited.record(0, 0, 1e308)
    with pytest.raises(ar.BudgetExceededError, match=r"cost budget exceeded: \$inf of"):
        limited.record(0, 0, 1e308)
    assert limited.remaining_cost_usd == 0.0


async def test_an_execution_asking_for_its_own_key_is_refused_not_left_waiting() -> None:
    # It awaited its own task, and hung.
    dedup = Deduplicator(ttl=0)

    async def recursive() -> int:
        return await dedup.run("k", recursive)

    with pytest.raises(RuntimeError, match="asked for that key itself"):
        await asyncio.wait_for(dedup.run("k", recursive), 5)
    assert dedup.in_flight == 0
    assert await dedup.run("k", lambda: 7) == 7  # the key is free again
