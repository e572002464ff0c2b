"""Orchestration edge cases: time moved by numbers of any real type, calls given wrongly."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

import llm_agent_runtime as ar


@pytest.mark.parametrize(
    "seconds", [True, "1", None, 1 + 0j, 10**400], ids=["bool", "str", "None", "complex", "huge"]
)
def test_a_fake_clock_refuses_to_advance_by_what_is_no_finite_number(seconds: Any) -> None:
    # A bool moved the clock by 1 s, a string or None failed comparing with 0, and an int
    # beyond the float range with an OverflowError: the start is checked, the step was not.
    clock = ar.FakeClock(5)
    with pytest.raises(ValueError):
        clock.advance(seconds)
    assert clock.now() == 5.0


def test_a_fake_clock_refuses_steps_that_add_up_past_the_float_range() -> None:
    clock = ar.FakeClock()
    clock.advance(1e308)
    with pytest.raises(ValueError, match="past the float range"):
        clock.advance(1e308)  # each step finite, their sum not: time stayed infinite
    assert clock.now() == 1e308


async def test_a_fake_clock_advances_by_numbers_of_any_real_type() -> None:
    clock = ar.FakeClock(Decimal("1.5"))
    clock.advance(Decimal("0.5"))  # was a TypeError: float += Decimal
    clock.advance(Fraction(1, 2))
    clock.advance(1)
    assert clock.now() == 3.5
    assert type(clock.now()) is float


async def test_a_retry_given_a_coroutine_in_place_of_a_function_fails_at_once() -> None:
    # `policy.run(fetch())`: the coroutine cannot be called again at each attempt. The
    # "not callable" TypeError was retried by a `retry_on` that retries everything, with
    # every backoff slept first, and the coroutine was left never awaited.
    async def fetch() -> str:
        return "ok"

    clock = ar.FakeClock()
    policy = ar.RetryPolicy(max_attempts=4, retry_on=lambda error: True, clock=clock)
    call = fetch()
    with pytest.raises(TypeError, match="not its call") as raised:
        await policy.run(call)  # type: ignore[call-overload]
    assert clock.sleeps == []
    assert "fetch" in str(raised.value)
    assert call.cr_frame is None  # closed: no "never awaited" warning


@pytest.mark.parametrize("fn", [None, 42, "fetch"])
async def test_a_retry_given_no_callable_fails_at_once(fn: Any) -> None:
    clock = ar.FakeClock()
    policy = ar.RetryPolicy(max_attempts=4, retry_on=lambda error: True, clock=clock)
    with pytest.raises(TypeError, match="callable"):
        await policy.run(fn)
    assert clock.sleeps == []


def test_a_budget_raised_by_setting_its_cost_limit_admits_calls_up_to_the_new_one() -> None:
    # The limit read by `check()` was a copy made by the constructor: setting
    # `max_cost_usd` changed the repr, and calls were still refused at the old limit.
    budget = ar.CostBudget(max_cost_usd=1.0)
    budget.record(0, 0, 1.0)
    with pytest.raises(ar.BudgetExceededError):
        budget.check()
    budget.max_cost_usd = 1.5
    budget.check()  # $1.00 of $1.50: admitted
    assert budget.remaining_cost_usd == 0.5
    with pytest.raises(ar.BudgetExceededError, match=r"\$1.60 of \$1.50"):
        budget.record(0, 0, 0.6)
    budget.max_cost_usd = None  # unlimited
    budget.check()
    assert budget.remaining_cost_usd is None
    budget.max_cost_usd = Decimal("0.5")
    assert budget.max_cost_usd == 0.5
    with pytest.raises(ar.BudgetExceededError, match=r"\$1.60 of \$0.50"):
        budget.check()


@pytest.mark.parametrize("limit", [-1.0, math.nan, math.inf, True, "2"])
def test_a_budget_refuses_a_cost_limit_set_that_it_would_refuse_when_made(limit: Any) -> None:
    budget = ar.CostBudget(max_cost_usd=1.0)
    with pytest.raises(ValueError):
        budget.max_cost_usd = limit
    assert budget.max_cost_usd == 1.0
    budget.record(0, 0, 1.0)
    with pytest.raises(ar.BudgetExceededError):
        budget.check()


@pytest.mark.parametrize("limit", [-1, 1.5, True, "100"])
def test_a_budget_refuses_a_token_limit_set_that_it_would_refuse_when_made(limit: Any) -> None:
    # Was taken as it was: a str failed each later `check()` with a TypeError.
    budget = ar.CostBudget(max_tokens=10)
    with pytest.raises(ValueError):
        budget.max_tokens = limit
    assert budget.max_tokens == 10


def test_a_budget_token_limit_can_be_raised_and_lifted() -> None:
    budget = ar.CostBudget(max_tokens=10)
    budget.record(6, 4)
    with pytest.raises(ar.BudgetExceededError):
        budget.check()
    budget.max_tokens = 20
    budget.check()
    assert budget.remaining_tokens == 10
    budget.max_tokens = None
    budget.check()
    assert budget.remaining_tokens is None
