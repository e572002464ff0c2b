"""Settings of the orchestration primitives changed after construction.

Each is checked when set, as the constructor checks it: a bad value raises the constructor's
error and leaves the old value in place; a good one takes effect as if it had been given to
the constructor.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import pickle
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_redis_state import redis_url

import llm_agent_runtime as ar
from llm_agent_runtime.orchestration.retry import DEFAULT_MAX_DELAY, default_retry_on

NO_REDIS = "redis://127.0.0.1:1/0"
"""A URL no server answers: the Redis primitives connect only when a command is sent."""

Make = Callable[..., Any]


def _guard(**kwargs: Any) -> ar.BackpressureGuard:
    return ar.BackpressureGuard(**{"capacity": 4, **kwargs})


def _guard_soft(**kwargs: Any) -> ar.BackpressureGuard:
    return ar.BackpressureGuard(**{"capacity": 4, "soft_limit": 3, **kwargs})


def _cache(**kwargs: Any) -> ar.ResultCache:
    return ar.ResultCache(**{"ttl": 10.0, "max_entries": 8, **kwargs})


def _caps(**kwargs: Any) -> ar.CapabilitySet:
    return ar.CapabilitySet(**{"allowed_tools": ["search"], "max_actions": 3, **kwargs})


def _dedup(**kwargs: Any) -> ar.Deduplicator:
    return ar.Deduplicator(**{"ttl": 10.0, **kwargs})


def _limiter(**kwargs: Any) -> ar.RateLimiter:
    return ar.RateLimiter(**{"rate": 2.0, "capacity": 5.0, **kwargs})


def _breaker(**kwargs: Any) -> ar.CircuitBreaker:
    return ar.CircuitBreaker(**{"service": "svc", **kwargs})


def _retry(**kwargs: Any) -> ar.RetryPolicy:
    return ar.RetryPolicy(**kwargs)


def _redis_limiter(**kwargs: Any) -> ar.RedisRateLimiter:
    return ar.RedisRateLimiter(**{"url": NO_REDIS, "rate": 2.0, "capacity": 5.0, **kwargs})


def _redis_dedup(**kwargs: Any) -> ar.RedisDeduplicator:
    return ar.RedisDeduplicator(**{"url": NO_REDIS, "ttl": 5.0, "namespace": "n", **kwargs})


NAN, INF = math.nan, math.inf

BAD = [
    (_guard, "capacity", 0, ValueError, "capacity must be >= 1"),
    (_guard, "capacity", "5", ValueError, "capacity must be an int"),
    (_guard, "capacity", 2.0, ValueError, "capacity must be an int"),
    (_guard, "capacity", True, ValueError, "capacity must be an int"),
    (_guard, "soft_limit", 5, ValueError, r"soft_limit must be in 1\.\.4"),
    (_guard, "soft_limit", 0, ValueError, "soft_limit must be >= 1"),
    (_guard, "soft_limit", 1.5, ValueError, "soft_limit must be an int"),
    (_cache, "ttl", NAN, ValueError, "ttl must be positive"),
    (_cache, "ttl", 0, ValueError, "ttl must be positive"),
    (_cache, "ttl", -1.0, ValueError, "ttl must be positive"),
    (_cache, "ttl", "1", ValueError, "ttl must be a number"),
    (_cache, "ttl", True, ValueError, "ttl must be a number"),
    (_cache, "max_entries", -1, ValueError, "max_entries must be >= 1"),
    (_cache, "max_entries", 0, ValueError, "max_entries must be >= 1"),
    (_cache, "max_entries", INF, ValueError, "max_entries must be an int"),
    (_caps, "allowed_tools", "search", TypeError, "not a single str"),
    (_caps, "allowed_tools", [1], TypeError, "must hold strings"),
    (_caps, "allowed_tools", 5, TypeError, "must be a collection of names"),
    (_caps, "allowed_state_keys", "key", TypeError, "not a single str"),
    (_caps, "max_actions", -1, ValueError, "max_actions must be >= 0"),
    (_caps, "max_actions", 1.5, ValueError, "max_actions must be an int"),
    (_caps, "max_actions", True, ValueError, "max_actions must be an int"),
    (_dedup, "ttl", -1, ValueError, "ttl must be >= 0"),
    (_dedup, "ttl", NAN, ValueError, "ttl must be >= 0"),
    (_dedup, "ttl", "5", ValueError, "ttl must be a number"),
    (_limiter, "rate", -1.0, ValueError, "rate and capacity must be finite and > 0"),
    (_limiter, "rate", 0, ValueError, "rate and capacity must be finite and > 0"),
    (_limiter, "rate", NAN, ValueError, "rate and capacity must be finite and > 0"),
    (_limiter, "rate", INF, ValueError, "rate and capacity must be finite and > 0"),
    (_limiter, "rate", True, ValueError, "rate must be a number"),
    (_limiter, "capacity", 0.0, ValueError, "rate and capacity must be finite and > 0"),
    (_limiter, "capacity", NAN, ValueError, "rate and capacity must be finite and > 0"),
    (_limiter, "capacity", "5", ValueError, "capacity must be a number"),
    (_limiter, "rate", 1e-308, ValueError, "rate 1e-308 is too slow for capacity 5.0"),
    (_limiter, "capacity", 1e13, ValueError, r"take over 1e\+12 s to refill from empty"),
    (_breaker, "failure_threshold", 0, ValueError, "failure_threshold must be >= 1"),
    (_breaker, "failure_threshold", 2.5, ValueError, "failure_threshold must be an int"),
    (_breaker, "recovery_window", 0, ValueError, "recovery_window must be finite and > 0"),
    (_breaker, "recovery_window", NAN, ValueError, "recovery_window must be finite and > 0"),
    (_breaker, "recovery_window", INF, ValueError, "recovery_window must be finite and > 0"),
    (_breaker, "recovery_window", "30", ValueError, "recovery_window must be a number"),
    (_breaker, "half_open_max_calls", 0, ValueError, "half_open_max_calls must be >= 1"),
    (_breaker, "half_open_max_calls", True, ValueError, "half_open_max_calls must be an int"),
    (_breaker, "trial_timeout", -1.0, ValueError, "trial_timeout must be finite and > 0"),
    (_breaker, "trial_timeout", NAN, ValueError, "trial_timeout must be finite and > 0"),
    (_breaker, "trial_timeout", INF, ValueError, "trial_timeout must be finite and > 0"),
    (_retry, "max_attempts", 0, ValueError, "max_attempts must be >= 1"),
    (_retry, "max_attempts", 2.0, ValueError, "max_attempts must be an int"),
    (_retry, "base_delay", -1.0, ValueError, "delays must be >= 0"),
    (_retry, "base_delay", INF, ValueError, "delays must be >= 0"),
    (_retry, "base_delay", NAN, ValueError, "delays must be >= 0"),
    (_retry, "max_delay", -0.5, ValueError, "delays must be >= 0"),
    (_retry, "max_delay", NAN, ValueError, "delays must be >= 0"),
    (_retry, "max_delay", "1", ValueError, "max_delay must be a number"),
    (_retry, "jitter", "no", TypeError, "jitter must be a bool"),
    (_retry, "jitter", 2, TypeError, "jitter must be a bool"),
    (_retry, "retry_on", 5, TypeError, "retry_on must be callable"),
    (_redis_limiter, "rate", NAN, ValueError, "rate and capacity must be finite and > 0"),
    (_redis_limiter, "rate", -2.0, ValueError, "rate and capacity must be finite and > 0"),
    (_redis_limiter, "capacity", INF, ValueError, "rate and capacity must be finite and > 0"),
    (_redis_limiter, "capacity", True, ValueError, "capacity must be a number"),
    (_redis_limiter, "rate", 4e-12, ValueError, "rate 4e-12 is too slow for capacity 5.0"),
    (_redis_dedup, "ttl", 0.0004, ValueError, r"ttl must be at least 0\.001 s"),
    (_redis_dedup, "ttl", NAN, ValueError, r"ttl must be at least 0\.001 s"),
    (_redis_dedup, "ttl", "5", ValueError, "ttl must be a number"),
    (_redis_dedup, "lease", 0.0, ValueError, r"lease must be at least 0\.001 s"),
    (_redis_dedup, "lease", INF, ValueError, r"lease must be at least 0\.001 s"),
    (_redis_dedup, "poll_interval", 0.0, ValueError, "poll_interval must be finite and > 0"),
    (_redis_dedup, "poll_interval", NAN, ValueError, "poll_interval must be finite and > 0"),
]


def _same(a: object, b: object) -> bool:
    return a is b or a == b


@pytest.mark.parametrize(
    ("make", "name", "bad", "error", "match"),
    [pytest.param(*case, id=f"{case[0].__name__[1:]}.{case[1]}={case[2]!r}") for case in BAD],
)
def test_a_bad_setting_raises_the_constructors_error_and_keeps_the_old_value(
    make: Make, name: str, bad: object, error: type[Exception], match: str
) -> None:
    target = make()
    before = getattr(target, name)
    with pytest.raises(error, match=match) as refused:
        setattr(target, name, bad)
    assert _same(getattr(target, name), before)
    assert repr(target) == repr(make())
    # The constructor refuses the same value with the same error.
    with pytest.raises(error) as made:
        make(**{name: bad})
    assert str(refused.value) == str(made.value)


# -- the setter agrees with the constructor on any value ------------------------------------

NUMERIC = [
    (_guard, "capacity"),
    (_guard, "soft_limit"),
    (_cache, "ttl"),
    (_cache, "max_entries"),
    (_caps, "max_actions"),
    (_dedup, "ttl"),
    (_limiter, "rate"),
    (_limiter, "capacity"),
    (_breaker, "failure_threshold"),
    (_breaker, "recovery_window"),
    (_breaker, "half_open_max_calls"),
    (_breaker, "trial_timeout"),
    (_retry, "max_attempts"),
    (_retry, "base_delay"),
    (_retry, "max_delay"),
    (_retry, "jitter"),
]

VALUES = st.one_of(
    st.integers(min_value=-3, max_value=100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.sampled_from([2**2000, [1], (), "5"]),
)


@pytest.mark.parametrize(
    ("make", "name"),
    [pytest.param(*case, id=f"{case[0].__name__[1:]}.{case[1]}") for case in NUMERIC],
)
@given(value=VALUES)
def test_a_setting_takes_what_the_constructor_takes_and_refuses_the_rest(
    make: Make, name: str, value: object
) -> None:
    target = make()
    before = getattr(target, name)
    try:
        made = make(**{name: value})
    except (TypeError, ValueError) as error:
        with pytest.raises(type(error)) as refused:
            setattr(target, name, value)
        assert str(refused.value) == str(error)
        assert _same(getattr(target, name), before)
        return
    setattr(target, name, value)
    after, expected = getattr(target, name), getattr(made, name)
    assert after == expected and type(after) is type(expected)
    assert repr(target) == repr(made)


# -- BackpressureGuard ---------------------------------------------------------------------


def test_a_lowered_capacity_sheds_sooner_and_a_raised_one_admits_more() -> None:
    guard = ar.BackpressureGuard(4)
    guard.capacity = 2
    guard.acquire()
    guard.acquire()
    with pytest.raises(ar.BackpressureShedError, match="capacity 2"):
        guard.acquire()
    assert not guard.try_acquire()
    assert guard.shed_count == 1
    guard.capacity = 3
    assert guard.try_acquire()
    assert guard.depth == 3
    assert repr(guard) == "BackpressureGuard(depth=3, capacity=3)"


def test_a_capacity_lowered_below_the_depth_keeps_the_holders_and_sheds_newcomers() -> None:
    guard = ar.BackpressureGuard(3)
    for _ in range(3):
        guard.acquire()
    guard.capacity = 1
    for _ in range(3):
        with pytest.raises(ar.BackpressureShedError):
            guard.acquire()
        guard.release()
    assert guard.depth == 0
    guard.acquire()
    assert not guard.try_acquire()


async def test_a_lowered_capacity_sheds_async_blocks_sooner() -> None:
    guard = ar.BackpressureGuard(2)
    guard.capacity = 1
    async with guard:
        with pytest.raises(ar.BackpressureShedError):
            async with guard:
                pass
    assert guard.depth == 0


def test_a_capacity_below_the_soft_limit_is_refused_until_the_soft_limit_is_lowered() -> None:
    guard = ar.BackpressureGuard(4, soft_limit=3)
    with pytest.raises(ValueError, match=r"capacity must be >= soft_limit \(3\), got 2"):
        guard.capacity = 2
    assert (guard.capacity, guard.soft_limit) == (4, 3)
    guard.soft_limit = 2
    guard.capacity = 2
    assert (guard.capacity, guard.soft_limit) == (2, 2)
    guard.soft_limit = None
    guard.capacity = 1
    assert (guard.capacity, guard.soft_limit) == (1, None)


def test_a_soft_limit_set_later_warns_at_its_depth(caplog: pytest.LogCaptureFixture) -> None:
    guard = ar.BackpressureGuard(4)
    with caplog.at_level(logging.WARNING, "llm_agent_runtime.orchestration.backpressure"):
        guard.acquire()
        assert not caplog.records
        guard.soft_limit = 2
        guard.acquire()
        assert [r.getMessage() for r in caplog.records] == [
            "backpressure: depth 2 reached soft limit 2 (capacity 4)"
        ]
        guard.soft_limit = None
        guard.acquire()
        assert len(caplog.records) == 1


# -- ResultCache ---------------------------------------------------------------------------


def test_a_cache_ttl_set_later_times_the_entries_stored_from_then_on() -> None:
    clock = ar.FakeClock()
    cache = ar.ResultCache(ttl=100, clock=clock)
    cache.ttl = 1
    assert cache.ttl == 1.0 and type(cache.ttl) is float
    cache.put("t", {"a": 1}, "one")
    clock.advance(0.5)
    assert cache.get("t", {"a": 1}) == (True, "one")
    clock.advance(0.5)
    assert cache.get("t", {"a": 1}) == (False, None)
    cache.ttl = math.inf
    cache.put("t", {"a": 2}, "two")
    clock.advance(1e9)
    assert cache.get("t", {"a": 2}) == (True, "two")


def test_a_lowered_max_entries_drops_the_least_recently_used_at_once() -> None:
    clock = ar.FakeClock()
    cache = ar.ResultCache(ttl=10, max_entries=4, clock=clock)
    for i in range(4):
        cache.put("t", {"i": i}, i)
    assert cache.get("t", {"i": 0}) == (True, 0)  # now the most recently used
    cache.max_entries = 2
    assert len(cache) == 2
    assert cache.get("t", {"i": 0}) == (True, 0)
    assert cache.get("t", {"i": 3}) == (True, 3)
    cache.put("t", {"i": 9}, 9)
    assert len(cache) == 2
    cache.max_entries = 3
    cache.put("t", {"i": 10}, 10)
    assert len(cache) == 3


def test_a_lowered_max_entries_drops_expired_entries_before_live_ones() -> None:
    clock = ar.FakeClock()
    cache = ar.ResultCache(ttl=10, max_entries=3, clock=clock)
    cache.put("t", {"i": "live"}, "live")
    cache.ttl = 1
    cache.put("t", {"i": "dead"}, "dead")
    cache.put("t", {"i": "young"}, "young")
    clock.advance(2)
    cache.ttl = 10
    cache.put("t", {"i": "young"}, "young")  # young again: "dead" is now the oldest stored
    cache.max_entries = 2
    assert cache.get("t", {"i": "live"}) == (True, "live")
    assert cache.get("t", {"i": "young"}) == (True, "young")


# -- CapabilitySet -------------------------------------------------------------------------


def test_allowed_tools_set_to_a_list_refuses_every_other_tool() -> None:
    caps = ar.CapabilitySet()
    caps.allowed_tools = ["search"]
    assert caps.allowed_tools == frozenset({"search"})
    caps.check_tool("search")
    for other in ("sea", "s", "", "add"):
        assert not caps.allows_tool(other)
        with pytest.raises(ar.PolicyDeniedError):
            caps.check_tool(other)
    caps.allowed_tools = (name for name in ["add"])
    assert caps.allowed_tools == frozenset({"add"})
    caps.allowed_tools = None
    assert caps.allows_tool("anything")


def test_a_single_string_never_becomes_a_set_of_letters() -> None:
    caps = ar.CapabilitySet(allowed_tools=["search"], allowed_state_keys=["notes"])
    with pytest.raises(TypeError):
        caps.allowed_tools = "search"
    with pytest.raises(TypeError):
        caps.allowed_state_keys = "notes"
    with pytest.raises(ar.PolicyDeniedError):
        caps.check_tool("sea")
    with pytest.raises(ar.PolicyDeniedError):
        caps.check_state_key("not")
    caps.allowed_state_keys = ["plan"]
    caps.check_state_key("plan")
    with pytest.raises(ar.PolicyDeniedError):
        caps.check_state_key("notes")


def test_a_lowered_max_actions_refuses_the_next_action() -> None:
    caps = ar.CapabilitySet(max_actions=5)
    caps.record_actions(2)
    caps.max_actions = 2
    with pytest.raises(ar.PolicyDeniedError, match="action limit reached"):
        caps.record_action()
    caps.max_actions = None
    caps.record_actions(10)
    assert caps.actions_taken == 12


# -- Deduplicator --------------------------------------------------------------------------


async def test_a_dedup_ttl_set_to_zero_stops_caching_results() -> None:
    dedup = ar.Deduplicator(ttl=100)

    async def one() -> int:
        return 1

    await dedup.run("k", one)
    dedup.forget("k")
    dedup.ttl = 0
    await dedup.run("k", one)
    await dedup.run("k", one)
    assert dedup.executions == 3
    with pytest.raises(ValueError):
        dedup.ttl = -0.1
    assert dedup.ttl == 0.0


# -- RateLimiter ---------------------------------------------------------------------------


def test_a_raised_rate_refills_faster() -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=1, capacity=2, clock=clock)
    assert limiter.try_acquire(tokens=2)
    limiter.rate = 10
    clock.advance(0.1)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()


def test_a_lowered_capacity_caps_every_bucket_and_the_tokens_asked() -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=1, capacity=5, clock=clock)
    assert limiter.try_acquire("a")  # 4 left
    limiter.capacity = 2
    assert limiter.tokens("a") == 2.0
    assert limiter.tokens("new") == 2.0
    with pytest.raises(ValueError, match=r"tokens must be in \(0, 2\.0\]"):
        limiter.try_acquire("a", tokens=3)
    assert limiter.try_acquire("a", tokens=2)
    assert not limiter.try_acquire("a")
    limiter.capacity = 10
    assert limiter.tokens("fresh") == 10.0


async def test_a_raised_rate_shortens_the_wait_of_later_acquires() -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=1, capacity=1, clock=clock)
    await limiter.acquire()
    limiter.rate = 4
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    clock.advance(0.25)
    await asyncio.wait_for(waiter, 1)


# -- CircuitBreaker ------------------------------------------------------------------------


def _fail() -> None:
    raise ConnectionError("down")


def _ok() -> str:
    return "ok"


def test_a_lowered_failure_threshold_opens_the_circuit_sooner() -> None:
    breaker = ar.CircuitBreaker("svc", failure_threshold=5, clock=ar.FakeClock())
    breaker.failure_threshold = 2
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call_sync(_fail)
    assert breaker.state == "open"
    with pytest.raises(ar.CircuitOpenError):
        breaker.call_sync(_ok)


def test_a_recovery_window_set_later_times_the_open_circuit() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=30, clock=clock)
    breaker.recovery_window = 2
    assert breaker.trial_timeout == 2.0  # it follows the window, as when not given
    with pytest.raises(ConnectionError):
        breaker.call_sync(_fail)
    clock.advance(1.5)
    with pytest.raises(ar.CircuitOpenError):
        breaker.call_sync(_ok)
    clock.advance(0.5)
    assert breaker.call_sync(_ok) == "ok"
    assert breaker.state == "closed"


def test_a_trial_timeout_given_is_kept_when_the_window_changes() -> None:
    breaker = ar.CircuitBreaker("svc", recovery_window=10, trial_timeout=3)
    breaker.recovery_window = 20
    assert breaker.trial_timeout == 3.0
    breaker.trial_timeout = None  # the constructor's default: the recovery window
    assert breaker.trial_timeout == 20.0
    breaker.recovery_window = 5
    assert breaker.trial_timeout == 5.0
    breaker.trial_timeout = 7
    breaker.recovery_window = 1
    assert breaker.trial_timeout == 7.0


async def test_a_raised_half_open_max_calls_lets_more_trials_through() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=1, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call_sync(_fail)
    clock.advance(1)
    breaker.half_open_max_calls = 2
    gate = asyncio.Event()

    async def trial() -> str:
        await gate.wait()
        return "ok"

    trials = [asyncio.ensure_future(breaker.call(trial)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(ar.CircuitOpenError):
        await breaker.call(trial)
    gate.set()
    assert await asyncio.gather(*trials) == ["ok", "ok"]


def test_a_trial_timeout_set_later_reclaims_lost_trial_slots() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=1, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call_sync(_fail)
    clock.advance(1)
    breaker.trial_timeout = 50
    # A trial slot taken and never given back (a worker killed mid-trial).
    breaker._update_local(breaker._admit)
    clock.advance(10)
    with pytest.raises(ar.CircuitOpenError):
        breaker.call_sync(_ok)
    breaker.trial_timeout = 5
    assert breaker.call_sync(_ok) == "ok"


# -- RetryPolicy ---------------------------------------------------------------------------


async def test_a_lowered_max_attempts_gives_up_sooner() -> None:
    policy = ar.RetryPolicy(max_attempts=5, base_delay=0, jitter=False)
    policy.max_attempts = 2
    calls = 0

    def flaky() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await policy.run(flaky)
    assert calls == 2


def test_delays_set_later_shape_the_backoff_and_max_delay_is_capped() -> None:
    policy = ar.RetryPolicy(base_delay=0.5, jitter=False)
    policy.base_delay = 2
    assert policy.delay_for(1) == 2.0 and policy.delay_for(3) == 8.0
    policy.max_delay = 5
    assert policy.delay_for(3) == 5.0
    policy.max_delay = 1e6
    assert policy.max_delay == DEFAULT_MAX_DELAY
    policy.max_delay = math.inf
    assert policy.max_delay == DEFAULT_MAX_DELAY
    with pytest.raises(ValueError):
        policy.base_delay = math.inf
    assert policy.base_delay == 2.0


def test_jitter_and_retry_on_set_later_are_normalised_as_by_the_constructor() -> None:
    policy = ar.RetryPolicy(base_delay=1, rng=random.Random(1))
    policy.jitter = 0
    assert policy.jitter is False
    assert policy.delay_for(2) == 2.0
    policy.retry_on = lambda error: isinstance(error, KeyError)
    assert policy.should_retry(KeyError("k"))
    assert not policy.should_retry(ConnectionError())
    policy.retry_on = None
    assert policy.retry_on is default_retry_on
    assert policy.should_retry(ConnectionError())


# -- copies and pickles keep the settings, and their checks ---------------------------------


@pytest.mark.parametrize("make", [_caps, _retry, _dedup, _limiter])
def test_a_pickled_or_copied_primitive_keeps_its_settings_and_their_checks(make: Make) -> None:
    original = make()
    name, bad = next((case[1], case[2]) for case in BAD if case[0] is make)
    twins = [pickle.loads(pickle.dumps(original)), copy.copy(original), copy.deepcopy(original)]
    for twin in twins:
        assert repr(twin) == repr(original)
        with pytest.raises((TypeError, ValueError)):
            setattr(twin, name, bad)
        assert repr(twin) == repr(original)


# -- Redis primitives ----------------------------------------------------------------------


def test_a_redis_limiter_set_later_uses_the_bucket_of_its_new_settings() -> None:
    limiter = _redis_limiter()
    limiter.rate = 4
    limiter.capacity = 8
    assert limiter.redis_key("k") == _redis_limiter(rate=4, capacity=8).redis_key("k")
    assert repr(limiter) == "RedisRateLimiter(rate=4.0, capacity=8.0)"


def test_a_redis_dedup_set_later_is_as_constructed() -> None:
    dedup = _redis_dedup()
    dedup.ttl = 0.5
    dedup.lease = 2
    dedup.poll_interval = 0.05
    made = _redis_dedup(ttl=0.5, lease=2, poll_interval=0.05)
    assert repr(dedup) == repr(made)
    settings = ("ttl", "lease", "poll_interval", "_ttl_ms", "_lease_ms", "_waiters_ms")
    assert [getattr(dedup, n) for n in settings] == [getattr(made, n) for n in settings]


async def test_a_shared_limiter_refills_at_the_rate_set_later() -> None:
    limiter = ar.RedisRateLimiter(
        redis_url(), rate=0.001, capacity=1, prefix=f"settings:{time.time_ns()}:"
    )
    try:
        assert await limiter.try_acquire("k")
        limiter.rate = 1000.0
        await asyncio.sleep(0.05)
        assert await limiter.try_acquire("k")
    finally:
        await limiter.close()


async def test_a_shared_dedup_serves_results_for_the_ttl_set_later() -> None:
    dedup = ar.RedisDeduplicator(
        redis_url(), ttl=60.0, lease=5.0, prefix=f"settings:{time.time_ns()}:", namespace="t"
    )
    dedup.ttl = 0.05
    try:
        assert await dedup.run("k", _ok) == "ok"
        await asyncio.sleep(0.2)
        assert await dedup.run("k", _ok) == "ok"
        assert dedup.executions == 2
    finally:
        await dedup.close()


@pytest.mark.parametrize("max_actions", [None, 2**63])
def test_a_huge_count_of_actions_is_recorded_at_once(max_actions: int | None) -> None:
    # Recorded one by one, 10**18 actions took forever (and an interrupt left a part).
    caps = ar.CapabilitySet(max_actions=max_actions)
    caps.record_actions(10**18)
    assert caps.actions_taken == 10**18


def test_a_subclass_recording_each_action_sees_every_one_of_a_round() -> None:
    seen = []

    class Logged(ar.CapabilitySet):
        def record_action(self) -> None:
            super().record_action()
            seen.append(self.actions_taken)

    caps = Logged(max_actions=4)
    caps.record_actions(3)
    assert seen == [1, 2, 3]
    with pytest.raises(ar.PolicyDeniedError, match="would go past it"):
        caps.record_actions(2)
    assert seen == [1, 2, 3] and caps.actions_taken == 3


async def test_waiters_of_the_slowest_bucket_allowed_are_cancelled_cleanly() -> None:
    # At a rate of 1e-308 a wait was past the floats' range: the refunds of cancelled
    # waiters raised OverflowError in a loop callback, and out of a later waiter's cancel.
    # The slowest bucket allowed refills in 1e12 s: its waits and refunds stay finite.
    limiter = ar.RateLimiter(rate=1e-12, capacity=1.0)
    assert limiter.try_acquire()
    waiters = []
    for _ in range(3):
        waiters.append(asyncio.ensure_future(limiter.acquire()))
        await asyncio.sleep(0)
    waiters[0].cancel()
    waiters[1].cancel()
    await asyncio.sleep(0.01)
    waiters[2].cancel()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    assert not limiter.try_acquire()  # the first token is still out; nothing else leaked
