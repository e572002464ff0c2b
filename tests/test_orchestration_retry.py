import asyncio
import random
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar


class Flaky:
    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


async def test_retries_retryable_errors_with_exponential_backoff() -> None:
    clock = ar.FakeClock()
    policy = ar.RetryPolicy(max_attempts=4, base_delay=1.0, jitter=False, clock=clock)
    flaky = Flaky(3, ar.ProviderError("busy", status=503, retryable=True))
    assert await policy.run(flaky) == "ok"
    assert flaky.calls == 4
    assert clock.sleeps == [1.0, 2.0, 4.0]


async def test_gives_up_after_max_attempts_with_last_error() -> None:
    clock = ar.FakeClock()
    policy = ar.RetryPolicy(max_attempts=2, base_delay=0.1, clock=clock)
    flaky = Flaky(5, TimeoutError("slow"))
    with pytest.raises(TimeoutError):
        await policy.run(flaky)
    assert flaky.calls == 2


@pytest.mark.parametrize(
    "error",
    [
        ar.CircuitOpenError("svc"),
        ar.PolicyDeniedError("no"),
        ar.BudgetExceededError("spent"),
        ar.ProviderError("bad request", status=400, retryable=False),
        ValueError("bug"),
    ],
)
async def test_never_retries_what_cannot_succeed(error: Exception) -> None:
    flaky = Flaky(1, error)
    with pytest.raises(type(error)):
        await ar.RetryPolicy(max_attempts=5, clock=ar.FakeClock()).run(flaky)
    assert flaky.calls == 1


async def test_never_retried_even_if_predicate_says_so() -> None:
    policy = ar.RetryPolicy(max_attempts=5, retry_on=lambda e: True, clock=ar.FakeClock())
    flaky = Flaky(1, ar.CircuitOpenError("svc"))
    with pytest.raises(ar.CircuitOpenError):
        await policy.run(flaky)
    assert flaky.calls == 1
    custom = Flaky(2, ValueError("x"))
    assert await policy.run(custom) == "ok"


async def test_honours_retry_after_capped_at_max_delay() -> None:
    clock = ar.FakeClock()
    policy = ar.RetryPolicy(max_attempts=3, base_delay=1.0, clock=clock)
    flaky = Flaky(2, ar.ProviderError("slow down", status=429, retryable=True, retry_after=7.5))
    await policy.run(flaky)
    assert clock.sleeps == [7.5, 7.5]
    huge = ar.ProviderError("later", status=429, retryable=True, retry_after=3600)
    assert policy.delay_for(1, huge) == 60.0


async def test_retry_after_of_an_error_a_pipeline_stage_raised_is_honoured() -> None:
    clock = ar.FakeClock()
    policy = ar.RetryPolicy(max_attempts=2, base_delay=0.5, jitter=False, clock=clock)
    calls = 0

    def llm(question: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ar.ProviderError("rate limited", status=429, retryable=True, retry_after=30.0)
        return question

    assert await policy.run(ar.Pipeline(("llm", llm)).run, "q") == "q"
    assert clock.sleeps == [30.0]  # not the 0.5 s backoff


async def test_sync_functions_are_supported() -> None:
    calls = []

    def sync() -> int:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError("reset")
        return 7

    assert await ar.RetryPolicy(clock=ar.FakeClock()).run(sync) == 7


async def test_an_argument_named_fn_is_passed_through() -> None:
    calls = []

    def apply(fn: str) -> str:
        calls.append(fn)
        if len(calls) < 2:
            raise ConnectionError("reset")
        return f"applied {fn}"

    assert await ar.RetryPolicy(clock=ar.FakeClock()).run(apply, fn="x") == "applied x"
    assert calls == ["x", "x"]


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(1, 200),
    base=st.floats(0, 100, allow_nan=False),
    max_delay=st.floats(0, 1000, allow_nan=False),
    seed=st.integers(0, 2**32),
)
def test_delay_is_full_jitter_below_the_capped_exponential(
    attempt: int, base: float, max_delay: float, seed: int
) -> None:
    policy = ar.RetryPolicy(base_delay=base, max_delay=max_delay, rng=random.Random(seed))
    bound = min(max_delay, 60.0, base * 2.0 ** (attempt - 1))
    delay = policy.delay_for(attempt)
    assert 0.0 <= delay <= bound
    assert (
        ar.RetryPolicy(base_delay=base, max_delay=max_delay, jitter=False).delay_for(attempt)
        == bound
    )


def test_validation() -> None:
    with pytest.raises(ValueError):
        ar.RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        ar.RetryPolicy(base_delay=-1)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": float("nan")},
        {"max_attempts": float("inf")},
        {"base_delay": float("nan")},
        {"base_delay": float("inf")},
        {"max_delay": float("nan")},
        {"max_delay": -1.0},
    ],
)
def test_nan_and_infinite_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ar.RetryPolicy(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "retry_after", [float("nan"), float("inf"), float("-inf"), -3.0, "30", True, [1], 10**400]
)
async def test_unusable_retry_after_falls_back_to_the_backoff(retry_after: Any) -> None:
    # A raw header value ("30") from a custom provider is ignored too, not a TypeError that
    # would replace the call's own error; an int past the float range is infinite, not an
    # OverflowError.
    clock = ar.FakeClock()
    policy = ar.RetryPolicy(max_attempts=3, base_delay=1.0, jitter=False, clock=clock)
    error = ar.ProviderError("busy", status=429, retryable=True, retry_after=retry_after)
    assert policy.delay_for(2, error) == 2.0
    flaky = Flaky(2, error)
    assert await policy.run(flaky) == "ok"
    assert clock.sleeps == [1.0, 2.0]
    assert policy.delay_for(1, ar.ProviderError("x", retryable=True, retry_after=0.0)) == 0.0


async def test_asyncio_timeouts_are_retried() -> None:
    attempts = 0

    async def slow() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            await asyncio.wait_for(asyncio.sleep(10), timeout=0.001)
        return "ok"

    policy = ar.RetryPolicy(max_attempts=3, base_delay=0.0, clock=ar.FakeClock())
    assert await policy.run(slow) == "ok"
    assert attempts == 3
    assert policy.should_retry(TimeoutError())


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"jitter": "no"}, "jitter must be a bool"),  # a true string: jitter on, silently
        ({"jitter": 2}, "jitter must be a bool"),
        ({"jitter": 1.0}, "jitter must be a bool"),
        ({"jitter": None}, "jitter must be a bool"),
        ({"retry_on": 5}, "retry_on must be callable"),  # each failure logged, never retried
    ],
)
def test_a_jitter_that_is_no_bool_or_a_retry_on_that_is_no_callable_is_refused(
    bad: dict[str, object], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        ar.RetryPolicy(**bad)  # type: ignore[arg-type]


def test_a_jitter_of_a_numpy_bool_or_the_int_0_or_1_is_a_bool() -> None:
    # Each worked before jitter was checked (a flag read from a config or a numpy array).
    import numpy as np

    for flag, expected in ((np.True_, True), (np.False_, False), (1, True), (0, False)):
        policy = ar.RetryPolicy(jitter=flag)  # type: ignore[arg-type]
        assert policy.jitter is expected


@pytest.mark.parametrize("bad", [{"base_delay": True}, {"max_delay": True}, {"base_delay": "1"}])
def test_delays_that_are_not_numbers_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be a number"):
        ar.RetryPolicy(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(20))
async def test_a_rate_limit_refusal_is_retried_once_its_bucket_can_serve_it(seed: int) -> None:
    # The backoff alone (0 to 0.5 s here) retried before the bucket refilled (1 s), to be
    # refused again: two thirds of such runs failed after their three attempts.
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=1.0, capacity=1.0, clock=clock)
    policy = ar.RetryPolicy(clock=clock, rng=random.Random(seed))
    await limiter.acquire("k")  # the bucket is empty now
    await policy.run(limiter.acquire, "k", max_wait=0.1)
    needed = 1.0 - 0.1  # the refusal's wait past its max_wait
    assert needed <= clock.sleeps[0] <= needed + policy.base_delay
    assert len(clock.sleeps) <= 2  # that retry waits within max_wait, and is served


def test_a_rate_limit_refusals_delay_is_capped_and_without_jitter_exact() -> None:
    refusal = ar.RateLimitExceededError(wait=30.0, max_wait=0.0)
    assert ar.RetryPolicy(max_delay=10.0).delay_for(1, refusal) == 10.0
    policy = ar.RetryPolicy(base_delay=0.5, jitter=False)
    assert policy.delay_for(1, ar.RateLimitExceededError(wait=2.0, max_wait=0.5)) == 2.0
    # A wait within max_wait (not a refusal the limiter makes) is the backoff alone.
    assert policy.delay_for(2, ar.RateLimitExceededError(wait=0.1, max_wait=0.5)) == 1.0
    # A number of another real type counts (it raised a TypeError, which replaced the
    # refusal); one that cannot be read is no delay.
    assert policy.delay_for(1, ar.RateLimitExceededError(Decimal("2"), 0.5)) == 2.0  # type: ignore[arg-type]
    unreadable = ar.RateLimitExceededError(2.0, 0.5)
    unreadable.wait = "soon"  # type: ignore[assignment]
    assert policy.delay_for(1, unreadable) == 0.5
