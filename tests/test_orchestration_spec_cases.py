"""Cases from a review of the orchestration primitives against their documentation."""

import asyncio

import pytest

import llm_agent_runtime as ar


async def test_an_open_breaker_in_an_exception_group_is_never_retried() -> None:
    # "CircuitOpenError ... never retried": also when a TaskGroup reports it, as a refusal is.
    clock = ar.FakeClock()
    policy = ar.RetryPolicy(max_attempts=5, retry_on=lambda e: True, clock=clock)
    breaker = ar.CircuitBreaker("search", failure_threshold=1, clock=clock)

    async def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await breaker.call(down)
    assert breaker.state == "open"
    attempts = 0

    async def fan_out() -> None:
        nonlocal attempts
        attempts += 1
        async with asyncio.TaskGroup() as group:
            group.create_task(breaker.call(down))

    with pytest.raises(ExceptionGroup) as raised:
        await policy.run(fan_out)
    assert raised.group_contains(ar.CircuitOpenError)
    assert attempts == 1
    assert clock.sleeps == []
    # Nested, and as a pipeline stage's error in a group: not retried either.
    stage = ar.PipelineStageError("stage 0 failed")
    stage.__cause__ = ar.CircuitOpenError("search")
    nested = ExceptionGroup("outer", [ValueError("x"), ExceptionGroup("inner", [stage])])
    assert not policy.should_retry(nested)
    assert not policy.should_retry(ExceptionGroup("g", [ar.CircuitOpenError("search")]))
    # A group of errors that may succeed is still retried by `retry_on`.
    assert policy.should_retry(ExceptionGroup("g", [ConnectionError("a"), ValueError("b")]))


def test_a_zero_record_never_raises_once_spending_is_past_a_limit() -> None:
    # Two calls admitted together: the first goes past the limit, the second used nothing
    # (a cached answer). Only the usage that went past raises.
    budget = ar.CostBudget(max_tokens=10, max_cost_usd=0.30)
    budget.check()
    budget.check()
    with pytest.raises(ar.BudgetExceededError, match="token budget exceeded: 11 of 10"):
        budget.record(8, 3, 0.40)
    budget.record(0, 0, 0.0)
    budget.record(0, 0)
    assert (budget.used_tokens, budget.used_cost_usd) == (11, 0.40)
    # Usage that adds to a limit already past still raises, and is recorded.
    with pytest.raises(ar.BudgetExceededError, match="token budget exceeded: 12 of 10"):
        budget.record(1, 0)
    with pytest.raises(ar.BudgetExceededError, match="cost budget exceeded"):
        budget.record(0, 0, 0.01)
    assert (budget.used_tokens, budget.used_cost_usd) == (12, 0.41)
    # A limit lowered below the spending: the next call is refused, a zero record is not.
    lowered = ar.CostBudget(max_tokens=10)
    lowered.record(5, 0)
    lowered.max_tokens = 3
    lowered.record(0, 0)
    with pytest.raises(ar.BudgetExceededError, match="token budget spent"):
        lowered.check()
    # Reaching a limit exactly is not going past it.
    exact = ar.CostBudget(max_tokens=10, max_cost_usd=0.30)
    exact.record(10, 0, 0.30)
    exact.record(0, 0)


def test_recording_no_actions_never_raises_once_over_the_action_limit() -> None:
    capabilities = ar.CapabilitySet(max_actions=5)
    capabilities.record_actions(4)
    capabilities.max_actions = 2
    capabilities.record_actions(0)  # none would go past the limit
    assert capabilities.actions_taken == 4
    with pytest.raises(ar.PolicyDeniedError, match="action limit reached"):
        capabilities.record_actions(1)
    with pytest.raises(ar.PolicyDeniedError, match="action limit reached"):
        capabilities.record_action()
    assert capabilities.actions_taken == 4
    # All or none still: a round that would go past the limit counts nothing.
    capabilities.max_actions = 6
    with pytest.raises(ar.PolicyDeniedError, match="3 actions would go past it"):
        capabilities.record_actions(3)
    capabilities.record_actions(2)
    assert capabilities.actions_taken == 6


@pytest.mark.parametrize(("new_rate", "served_at"), [(1.0, 0.1), (100.0, 0.1)])
async def test_a_refund_after_a_rate_change_is_at_the_rate_the_waiter_reserved_at(
    new_rate: float, served_at: float
) -> None:
    # Rate 10, capacity 1: A takes the token at t = 0, W1 and W2 reserve theirs (due at 0.1
    # and 0.2), the rate changes, W1 gives up at t = 0.05. W2 keeps the time it was given,
    # less W1's token at the rate it was reserved at: 0.1 (not 0.05, two tokens in 0.05 s
    # from a bucket of 1, at a rate of 1; nor 0.19 at a rate of 100).
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=10, capacity=1, clock=clock)
    served: list[tuple[str, float]] = []

    async def waiter(name: str) -> None:
        await limiter.acquire("k")
        served.append((name, clock.now()))

    await limiter.acquire("k")
    first = asyncio.create_task(waiter("W1"))
    second = asyncio.create_task(waiter("W2"))
    await asyncio.sleep(0)  # both have reserved their tokens
    limiter.rate = new_rate

    async def give_up() -> None:
        await clock.sleep(0.05)
        first.cancel()

    await asyncio.gather(give_up(), second)
    assert first.cancelled()
    assert served == [("W2", pytest.approx(served_at))]
