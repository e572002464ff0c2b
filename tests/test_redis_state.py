"""One circuit breaker shared by several worker processes through Redis."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import sys
import time
import warnings
from typing import Any

import pytest

import llm_agent_runtime as ar

THRESHOLD = 8
CALLS_PER_WORKER = 10


def redis_url() -> str:
    url = os.environ.get("LLM_AGENT_RUNTIME_TEST_REDIS_URL")
    if url is None:
        if os.environ.get("LLM_AGENT_RUNTIME_REQUIRE_SERVICES"):
            pytest.fail("make test must provide Redis")
        pytest.skip("no Redis server: run `make test`")
    return url


def _worker(url: str, service: str, start: object, results: object) -> None:
    async def go() -> tuple[int, int]:
        backend = ar.RedisCircuitStateBackend(url)
        breaker = ar.CircuitBreaker(
            service, failure_threshold=THRESHOLD, recovery_window=60.0, backend=backend
        )
        reached = refused = 0

        async def failing_service() -> None:
            nonlocal reached
            reached += 1
            await asyncio.sleep(0.002)
            raise ConnectionError("service down")

        start.wait()  # type: ignore[attr-defined]
        for _ in range(CALLS_PER_WORKER):
            try:
                await breaker.call(failing_service)
            except ConnectionError:
                pass
            except ar.CircuitOpenError:
                refused += 1
        await backend.close()
        return reached, refused

    results.put(asyncio.run(go()))  # type: ignore[attr-defined]


def test_four_processes_share_one_breaker() -> None:
    url = redis_url()
    service = f"payments-{os.getpid()}"
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(url, service, start, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    reached = sum(r for r, _ in outcomes)
    refused = sum(f for _, f in outcomes)
    # Failures counted across all processes open the breaker; a call admitted while the
    # count was below the threshold may still be in flight when it opens (one per worker).
    assert THRESHOLD <= reached <= THRESHOLD + len(workers) - 1
    assert reached + refused == len(workers) * CALLS_PER_WORKER

    async def state() -> ar.CircuitState:
        backend = ar.RedisCircuitStateBackend(url)
        try:
            return await backend.get(service)
        finally:
            await backend.close()

    assert asyncio.run(state()).status == "open"


async def test_state_round_trips_and_corruption_is_reported() -> None:
    url = redis_url()
    backend = ar.RedisCircuitStateBackend(url, prefix=f"test:{os.getpid()}:")
    assert await backend.get("svc") == ar.CircuitState()
    old, new = await backend.update("svc", lambda s: s._replace(failures=s.failures + 1))
    assert (old.failures, new.failures) == (0, 1)
    assert (await backend.get("svc")).failures == 1
    await backend.client.set(backend.prefix + "svc", b"garbage")
    with pytest.raises(ar.PersistenceError, match="corrupt breaker state"):
        await backend.get("svc")
    await backend.close()


def _limited_worker(url: str, key: str, start: object, results: object) -> None:
    async def go() -> int:
        limiter = ar.RedisRateLimiter(url, rate=0.001, capacity=10)
        start.wait()  # type: ignore[attr-defined]
        granted = sum([await limiter.try_acquire(key) for _ in range(10)])
        await limiter.close()
        return granted

    results.put(asyncio.run(go()))  # type: ignore[attr-defined]


def test_four_processes_share_one_rate_limit() -> None:
    url = redis_url()
    key = f"api-{os.getpid()}"
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_limited_worker, args=(url, key, start, results)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    start.set()
    granted = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert sum(granted) == 10  # one bucket of 10 for all 40 attempts


async def test_shared_limiter_waits_refunds_and_checks_input() -> None:
    url = redis_url()
    limiter = ar.RedisRateLimiter(url, rate=50.0, capacity=2, prefix=f"t:{os.getpid()}:")
    assert await limiter.try_acquire("k") and await limiter.try_acquire("k")
    assert not await limiter.try_acquire("k")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await limiter.acquire("k")  # waits ~1/50 s for a token
    assert loop.time() - started >= 0.01
    waiter = asyncio.create_task(limiter.acquire("k", 2))  # reserves, then waits ~40 ms
    await asyncio.sleep(0.005)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0.05)
    assert await limiter.try_acquire("k")  # the cancelled reservation was given back
    with pytest.raises(ValueError, match="tokens must be in"):
        await limiter.try_acquire("k", 3)
    with pytest.raises(ValueError, match="rate and capacity"):
        ar.RedisRateLimiter(url, rate=0, capacity=1)
    await limiter.close()


def _dedup_worker(url: str, key: str, start: object, results: object) -> None:
    async def go() -> tuple[int, list[int]]:
        dedup = ar.RedisDeduplicator(url, ttl=30.0, namespace="report")

        async def expensive() -> int:
            await asyncio.sleep(0.2)
            return 42

        start.wait()  # type: ignore[attr-defined]
        values = list(await asyncio.gather(*(dedup.run(key, expensive) for _ in range(5))))
        await dedup.close()
        return dedup.executions, values

    results.put(asyncio.run(go()))  # type: ignore[attr-defined]


def test_four_processes_share_one_single_flight() -> None:
    url = redis_url()
    key = f"report-{os.getpid()}"
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_dedup_worker, args=(url, key, start, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert sum(executions for executions, _ in outcomes) == 1  # 20 callers, one run
    assert all(values == [42] * 5 for _, values in outcomes)


@pytest.mark.parametrize("ttl", [0.001, 0.005])
async def test_single_flight_waiters_get_the_result_of_a_run_whose_ttl_ended_before_they_polled(
    ttl: float,
) -> None:
    # The result expires before the waiters' next poll (every 10 ms): they get it all the same
    # from the copy kept for them, in this process and in another (a second deduplicator).
    url = redis_url()
    prefix = f"short:{os.getpid()}:{ttl}:"
    here, there = (ar.RedisDeduplicator(url, ttl=ttl, prefix=prefix, namespace="t") for _ in "ab")
    runs = 0

    async def slow() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return runs

    results = await asyncio.gather(*(d.run("k", slow) for d in [here, there] * 3))
    assert (results, runs, here.executions + there.executions) == ([1] * 6, 1, 1)
    await asyncio.sleep(0.01)  # past the ttl: a new caller runs the call again
    assert await here.run("k", slow) == 2
    leftovers = await here.client.keys(f"{prefix}t:k:done:*")
    assert 0 < await here.client.pttl(leftovers[0]) <= 30_000  # kept for `lease`, then gone
    long_ttl = ar.RedisDeduplicator(url, ttl=60, prefix=prefix, namespace="long")
    assert await long_ttl.run("k", slow) == 3
    assert await here.client.keys(f"{prefix}long:k:done:*") == []  # no copy: the ttl covers it
    for d in (here, there, long_ttl):
        await d.close()


async def test_single_flight_failures_are_not_shared() -> None:
    url = redis_url()
    dedup = ar.RedisDeduplicator(url, ttl=5.0, prefix=f"d:{os.getpid()}:", namespace="t")
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("first try fails")
        return "ok"

    with pytest.raises(ConnectionError):
        await dedup.run("k", flaky)
    assert await dedup.run("k", flaky) == "ok"
    assert await dedup.run("k", flaky) == "ok"  # served from the shared result
    assert calls == 2
    with pytest.raises(ar.PersistenceError, match="JSON-serializable"):
        await dedup.run("other", lambda: object())
    await dedup.close()


# -- breaker: calls that outlive the state they were admitted in -------------------------------


async def test_shared_breaker_ignores_stale_successes_and_stale_slot_releases() -> None:
    url = redis_url()
    backend = ar.RedisCircuitStateBackend(url, prefix=f"stale:{os.getpid()}:")
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker(
        "svc", failure_threshold=2, recovery_window=10, backend=backend, clock=clock
    )
    await backend.client.delete(backend.prefix + "svc")
    release, probe_release, never = asyncio.Event(), asyncio.Event(), asyncio.Event()
    started: list[str] = []

    async def slow(name: str, gate: asyncio.Event) -> str:
        started.append(name)
        await gate.wait()
        return name

    async def failing() -> None:
        raise ConnectionError("down")

    async def until_started(count: int) -> None:
        while len(started) < count:
            await asyncio.sleep(0.001)

    # Two calls admitted while closed; then two failures open the circuit.
    stale_success = asyncio.create_task(breaker.call(slow, "success", release))
    stale_cancelled = asyncio.create_task(breaker.call(slow, "cancelled", never))
    await until_started(2)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.call(failing)
    assert (await breaker.current_state()).status == "open"
    release.set()
    assert await stale_success == "success"
    assert (await breaker.current_state()).status == "open"  # not closed by a stale success

    clock.advance(10)
    probe = asyncio.create_task(breaker.call(slow, "probe", probe_release))  # the one trial
    await until_started(3)
    assert (await breaker.current_state()).trial_calls == 1
    stale_cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stale_cancelled
    assert (await breaker.current_state()).trial_calls == 1  # it held no slot to free
    with pytest.raises(ar.CircuitOpenError):
        await breaker.call(slow, "extra", probe_release)
    probe_release.set()
    assert await probe == "probe"
    assert (await breaker.current_state()).status == "closed"
    assert "extra" not in started
    await backend.close()


# -- rate limiter: a bucket in debt outlives its debt -------------------------------------------


async def test_shared_bucket_in_debt_lives_until_refilled() -> None:
    url = redis_url()
    limiter = ar.RedisRateLimiter(url, rate=1.0, capacity=1, prefix=f"debt:{os.getpid()}:")
    key = limiter.redis_key("k")
    await limiter.client.delete(key)
    waiters = [asyncio.create_task(limiter.acquire("k")) for _ in range(100)]
    # All 100 reservations reach Redis however loaded the machine is (within 10 s).
    for _ in range(200):
        await asyncio.sleep(0.05)
        level = float(await limiter.client.hget(key, "level"))
        if level < -98:
            break
    assert level < -98
    # The key must outlive the debt: were it to expire first, the bucket would come back
    # full while the waiters' reservations are still queued.
    assert await limiter.client.ttl(key) >= 1 - level
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert 0 < await limiter.client.ttl(key) <= 61 + 1  # refunded: a full bucket again
    await limiter.client.delete(key)
    await limiter.close()


@pytest.mark.parametrize("tokens", [float("nan"), 0.0, 2.0])
async def test_shared_limiter_refuses_bad_tokens(tokens: float) -> None:
    limiter = ar.RedisRateLimiter(redis_url(), rate=1.0, capacity=1)
    with pytest.raises(ValueError, match="tokens must be in"):
        await limiter.try_acquire("k", tokens)
    await limiter.close()


@pytest.mark.parametrize(
    ("rate", "capacity"), [(float("nan"), 1.0), (float("inf"), 1.0), (1.0, float("nan"))]
)
def test_shared_limiter_refuses_nan_settings(rate: float, capacity: float) -> None:
    with pytest.raises(ValueError, match="rate and capacity"):
        ar.RedisRateLimiter("redis://127.0.0.1:1/0", rate=rate, capacity=capacity)


# -- single flight ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"ttl": 0.0004},  # would be `PX 0`, which Redis refuses
        {"ttl": 0.0},
        {"ttl": -1.0},
        {"ttl": float("nan")},
        {"ttl": float("inf")},
        {"ttl": 1.0, "lease": 0.0004},
        {"ttl": 1.0, "lease": float("nan")},
        {"ttl": 1.0, "poll_interval": 0.0},
        {"ttl": 1.0, "poll_interval": float("nan")},
    ],
)
def test_single_flight_refuses_unusable_durations(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ar.RedisDeduplicator("redis://127.0.0.1:1/0", namespace="t", **bad)  # type: ignore[arg-type]


async def test_single_flight_lets_the_functions_own_errors_through() -> None:
    dedup = ar.RedisDeduplicator(redis_url(), ttl=5.0, prefix=f"own:{os.getpid()}:", namespace="t")

    def buggy() -> int:
        return len(5)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="has no len"):
        await dedup.run("k", buggy)
    with pytest.raises(ar.PersistenceError, match="JSON-serializable"):
        await dedup.run("k", lambda: {1, 2})
    assert await dedup.client.exists(dedup.redis_keys("k")[1]) == 0  # released each time
    assert await dedup.run("k", lambda: 3) == 3
    await dedup.close()


async def test_single_flight_gives_every_caller_the_same_value() -> None:
    dedup = ar.RedisDeduplicator(redis_url(), ttl=5.0, prefix=f"same:{os.getpid()}:", namespace="t")
    running, release = asyncio.Event(), asyncio.Event()

    async def compute() -> dict[int, tuple[int, int]]:
        running.set()
        await release.wait()
        return {1: (1, 2)}

    runner = asyncio.create_task(dedup.run("k", compute))
    await running.wait()
    waiter = asyncio.create_task(dedup.run("k", compute))
    await asyncio.sleep(0.05)
    release.set()
    assert await runner == await waiter == {"1": [1, 2]}
    assert dedup.executions == 1
    await dedup.close()


async def test_single_flight_releases_the_lease_when_publishing_fails() -> None:
    dedup = ar.RedisDeduplicator(
        redis_url(), ttl=5.0, lease=30.0, prefix=f"pub:{os.getpid()}:", namespace="t"
    )
    finish = dedup._finish
    failures = [ConnectionError("connection lost while publishing")]

    async def flaky_finish(*, keys: list[str], args: list[object]) -> object:
        if args[1] != "" and failures:  # publishing a result (not giving the lease back)
            raise failures.pop()
        return await finish(keys=keys, args=args)

    dedup._finish = flaky_finish
    with pytest.raises(ar.PersistenceError, match="connection lost"):
        await dedup.run("k", lambda: 1)
    assert await dedup.client.exists(dedup.redis_keys("k")[1]) == 0
    # The next caller runs the call at once instead of waiting out a 30 s lease.
    assert await asyncio.wait_for(dedup.run("k", lambda: 2), 5) == 2
    await dedup.close()


# -- more commands in flight than the pool has connections ---------------------------------


async def test_commands_beyond_the_pool_size_wait_for_a_connection() -> None:
    url = redis_url()
    limiter = ar.RedisRateLimiter(url, rate=1e6, capacity=1e6, prefix=f"pool:{os.getpid()}:")
    backend = ar.RedisBackend(url, prefix=f"pool:{os.getpid()}:")
    try:
        # Three times the pool's connections at once: the excess queues, none fails.
        await asyncio.gather(*(limiter.acquire("k") for _ in range(300)))
        await asyncio.gather(*(backend.save(f"k{i}", b"v") for i in range(300)))
        assert await backend.load("k299") == b"v"
    finally:
        await limiter.close()
        await backend.close()


# -- a shared half-open circuit always recovers -------------------------------------------------


def _dying_trial(url: str, prefix: str, service: str) -> None:
    async def go() -> None:
        breaker = ar.CircuitBreaker(
            service,
            failure_threshold=1,
            recovery_window=0.2,
            backend=ar.RedisCircuitStateBackend(url, prefix=prefix),
        )
        async with breaker:  # admitted as the trial call...
            os._exit(137)  # ...and the worker is killed (SIGKILL, OOM) before it ends

    asyncio.run(go())


async def test_shared_breaker_reclaims_the_trial_slot_of_a_killed_worker() -> None:
    url = redis_url()
    prefix = f"killed:{os.getpid()}:"
    backend = ar.RedisCircuitStateBackend(url, prefix=prefix)
    await backend.client.delete(prefix + "svc")
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=0.2, backend=backend)

    async def failing() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await breaker.call(failing)
    await asyncio.sleep(0.25)
    worker = multiprocessing.get_context("spawn").Process(
        target=_dying_trial, args=(url, prefix, "svc")
    )
    worker.start()
    await asyncio.get_running_loop().run_in_executor(None, worker.join, 60)
    assert worker.exitcode == 137
    state = await breaker.current_state()
    assert (state.status, state.trial_calls) == ("half_open", 1)  # held by the dead worker
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:  # refused while the trial might still run, then admitted
        try:
            assert await breaker.call(lambda: "ok") == "ok"
            break
        except ar.CircuitOpenError:
            assert loop.time() - started < 5
            await asyncio.sleep(0.02)
    assert (await breaker.current_state()).status == "closed"
    await backend.client.delete(prefix + "svc")
    await backend.close()


async def test_shared_breaker_survives_redis_failing_while_a_call_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = redis_url()
    live = ar.RedisCircuitStateBackend(url, prefix=f"blip:{os.getpid()}:")
    down = ar.RedisCircuitStateBackend("redis://127.0.0.1:1/0")  # nothing listens there
    await live.client.delete(live.prefix + "svc")
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker(
        "svc", failure_threshold=1, recovery_window=10, backend=live, clock=clock
    )
    charged: list[str] = []

    async def charge_card() -> str:
        charged.append("charged")
        breaker._backend = down  # Redis goes away while the call runs
        return "receipt-123"

    async def declined() -> None:
        breaker._backend = down
        raise ValueError("card declined")

    with caplog.at_level(logging.WARNING, logger="llm_agent_runtime"):
        assert await breaker.call(charge_card) == "receipt-123"  # the call's own result
        breaker._backend = live
        with pytest.raises(ValueError, match="card declined"):  # the call's own error
            await breaker.call(declined)
        breaker._backend = live
        assert breaker.record_errors == 2
        assert sum("could not record" in r.getMessage() for r in caplog.records) == 2
        # The trial call's outcome is lost: its slot comes back after trial_timeout.
        with pytest.raises(ConnectionError):
            await breaker.call(_raise_connection_error)
        clock.advance(10)
        assert await breaker.call(charge_card) == "receipt-123"
        breaker._backend = live
    assert (await breaker.current_state()).trial_calls == 1
    with pytest.raises(ar.CircuitOpenError):
        await breaker.call(lambda: "ok")
    clock.advance(10)
    assert await breaker.call(lambda: "ok") == "ok"
    assert (await breaker.current_state()).status == "closed"
    assert charged == ["charged", "charged"]
    await live.client.delete(live.prefix + "svc")
    await live.close()
    await down.close()


async def _raise_connection_error() -> None:
    raise ConnectionError("down")


async def test_breaker_states_written_before_trial_rounds_are_read_and_recover() -> None:
    url = redis_url()
    backend = ar.RedisCircuitStateBackend(url, prefix=f"v1:{os.getpid()}:")
    # A half-open state with its one slot taken, as the four-field format stored it.
    await backend.client.set(backend.prefix + "svc", json.dumps(["half_open", 3, 5.0, 1]))
    assert await backend.get("svc") == ar.CircuitState("half_open", 3, 5.0, 1, 0.0, 0)
    breaker = ar.CircuitBreaker(
        "svc", recovery_window=10, backend=backend, clock=ar.FakeClock(start=100.0)
    )
    assert await breaker.call(lambda: "ok") == "ok"  # the slot is reclaimed, the trial closes
    assert (await breaker.current_state()).status == "closed"
    for corrupt in (["half_open", 3, 5.0], ["shut", 0, 0.0, 0], ["open", 0, 0.0, 0, 1.0]):
        await backend.client.set(backend.prefix + "svc", json.dumps(corrupt))
        with pytest.raises(ar.PersistenceError, match="corrupt breaker state"):
            await backend.get("svc")
    # Six fields, as stored before openings were counted: none counted yet.
    await backend.client.set(backend.prefix + "svc", json.dumps(["open", 2, 5.0, 0, 0.0, 0]))
    assert await backend.get("svc") == ar.CircuitState("open", 2, 5.0, 0, 0.0, 0, 0)
    await backend.client.delete(backend.prefix + "svc")
    await backend.close()


async def test_a_call_from_before_an_outage_is_stale_once_a_shared_breaker_recovered() -> None:
    backend = ar.RedisCircuitStateBackend(redis_url(), prefix=f"epoch:{os.getpid()}:")
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker(
        "svc", failure_threshold=1, recovery_window=10, backend=backend, clock=clock
    )
    started, release = asyncio.Event(), asyncio.Event()

    async def failing_late() -> None:
        started.set()
        await release.wait()
        raise ConnectionError("failed before the outage")

    late = asyncio.create_task(breaker.call(failing_late))
    await started.wait()  # admitted while closed
    with pytest.raises(ConnectionError):
        await breaker.call(_raise_connection_error)
    clock.advance(10)
    assert await breaker.call(lambda: "probe") == "probe"
    release.set()
    with pytest.raises(ConnectionError):
        await late
    state = await breaker.current_state()
    assert (state.status, state.failures, state.openings) == ("closed", 0, 1)
    await backend.client.delete(backend.prefix + "svc")
    await backend.close()


# -- a cancelled caller gives back what its command took ----------------------------------------


def _slow_replies(script: Any, delay_before: bool = False) -> tuple[Any, asyncio.Event]:
    """Wraps a registered script so that its reply (or its sending) waits for an event.

    By default the command runs on the server at once and only its reply is held back: a
    caller cancelled meanwhile has taken what the command took.
    """
    reply = asyncio.Event()

    async def in_flight(**kwargs: Any) -> Any:
        if delay_before:
            await reply.wait()
            return await script(**kwargs)
        result = await script(**kwargs)
        await reply.wait()
        return result

    return in_flight, reply


@pytest.mark.parametrize("method", ["acquire", "try_acquire"])
async def test_a_caller_cancelled_in_flight_gives_its_tokens_back(method: str) -> None:
    limiter = ar.RedisRateLimiter(
        redis_url(), rate=1 / 3600, capacity=5, prefix=f"inflight:{os.getpid()}:"
    )
    bucket = limiter.redis_key("k")
    await limiter.client.delete(bucket)
    limiter._script, reply = _slow_replies(limiter._script)
    task = asyncio.create_task(getattr(limiter, method)("k", 2))
    while not await limiter.client.exists(bucket):  # the command ran on the server
        await asyncio.sleep(0.001)
    assert float(await limiter.client.hget(bucket, "level")) == pytest.approx(3, abs=0.01)
    task.cancel()
    reply.set()  # the reply arrives after the caller gave up
    with pytest.raises(asyncio.CancelledError):
        await task
    assert float(await limiter.client.hget(bucket, "level")) == pytest.approx(5, abs=0.01)
    await limiter.client.delete(bucket)
    await limiter.close()


async def test_a_caller_cancelled_while_claiming_gives_the_lease_back() -> None:
    dedup = ar.RedisDeduplicator(
        redis_url(), ttl=5.0, lease=30.0, prefix=f"claim:{os.getpid()}:", namespace="t"
    )
    result_key, lease_key = dedup.redis_keys("k")
    await dedup.client.delete(result_key, lease_key)
    claim = dedup._claim
    dedup._claim, reply = _slow_replies(claim)
    calls: list[str] = []
    task = asyncio.create_task(dedup.run("k", lambda: calls.append("first")))
    while not await dedup.client.exists(lease_key):  # the claim took the lease
        await asyncio.sleep(0.001)
    task.cancel()
    reply.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await dedup.client.exists(lease_key) == 0
    assert calls == []
    dedup._claim = claim
    # The next caller runs the call at once instead of waiting out a 30 s lease.
    assert await asyncio.wait_for(dedup.run("k", lambda: 2), 5) == 2
    await dedup.client.delete(result_key, lease_key)
    await dedup.close()


async def test_a_runner_cancelled_while_publishing_still_publishes() -> None:
    dedup = ar.RedisDeduplicator(
        redis_url(), ttl=5.0, lease=30.0, prefix=f"cpub:{os.getpid()}:", namespace="t"
    )
    result_key, lease_key = dedup.redis_keys("k")
    await dedup.client.delete(result_key, lease_key)
    finish = dedup._finish
    dedup._finish, send = _slow_replies(finish, delay_before=True)
    computed = asyncio.Event()

    def compute() -> int:
        computed.set()
        return 42

    task = asyncio.create_task(dedup.run("k", compute))
    await computed.wait()
    await asyncio.sleep(0.01)  # the publication is on its way
    task.cancel()
    send.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await dedup.client.get(result_key) == b"42"
    assert await dedup.client.exists(lease_key) == 0
    assert await dedup.run("k", lambda: 0) == 42  # served, not run again
    await dedup.client.delete(result_key, lease_key)
    await dedup.close()


# -- independently configured instances do not share state by accident -------------------------


async def test_limiters_share_a_bucket_only_with_the_same_settings() -> None:
    url, prefix = redis_url(), f"iso:{os.getpid()}:"
    search = ar.RedisRateLimiter(url, rate=0.01, capacity=3, prefix=prefix)
    search_too = ar.RedisRateLimiter(url, rate=0.01, capacity=3.0, prefix=prefix)  # same
    email = ar.RedisRateLimiter(url, rate=10.0, capacity=100, prefix=prefix)
    keys = [search.redis_key(), email.redis_key()]
    await search.client.delete(*keys)
    assert search.redis_key() == search_too.redis_key() != email.redis_key()
    assert [await search.try_acquire() for _ in range(2)] == [True, True]
    assert [await search_too.try_acquire() for _ in range(2)] == [True, False]  # one bucket
    assert await email.try_acquire()  # its own bucket of 100
    await search.client.delete(*keys)
    for limiter in (search, search_too, email):
        await limiter.close()


async def test_deduplicators_share_results_only_within_a_namespace() -> None:
    url, prefix = redis_url(), f"ns:{os.getpid()}:"
    profiles = ar.RedisDeduplicator(url, ttl=60, prefix=prefix, namespace="profiles")
    profiles_too = ar.RedisDeduplicator(url, ttl=60, prefix=prefix, namespace="profiles")
    orders = ar.RedisDeduplicator(url, ttl=60, prefix=prefix, namespace="orders")
    keys = [*profiles.redis_keys("user:1"), *orders.redis_keys("user:1")]
    await profiles.client.delete(*keys)
    assert await profiles.run("user:1", lambda: {"name": "Ada"}) == {"name": "Ada"}
    assert await profiles_too.run("user:1", lambda: {"name": "?"}) == {"name": "Ada"}
    assert await orders.run("user:1", lambda: [{"order": 42}]) == [{"order": 42}]
    await profiles.client.delete(*keys)
    for dedup in (profiles, profiles_too, orders):
        await dedup.close()


async def test_a_result_nested_too_deep_is_a_persistence_error_and_frees_the_key() -> None:
    # json.dumps raises RecursionError there: it escaped untyped, and the lease stayed held,
    # so every later caller of the key waited for it to expire.
    dedup = ar.RedisDeduplicator(redis_url(), ttl=5.0, prefix=f"deep:{os.getpid()}:", namespace="t")
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ar.PersistenceError, match="JSON-serializable"):
        await dedup.run("k", lambda: deep)
    assert await dedup.client.exists(*dedup.redis_keys("k")) == 0  # released, nothing published
    assert await asyncio.wait_for(dedup.run("k", lambda: 3), 5) == 3
    # A published result nested too deep to read is a corrupt one.
    result_key, _ = dedup.redis_keys("deeper")
    await dedup.client.set(result_key, "[" * 100_000 + "]" * 100_000, px=5000)
    with pytest.raises(ar.PersistenceError, match="corrupt shared result"):
        await dedup.run("deeper", lambda: 1)
    await dedup.client.delete(result_key, *dedup.redis_keys("k"))
    await dedup.close()


async def test_a_corrupt_shared_result_is_reported() -> None:
    dedup = ar.RedisDeduplicator(redis_url(), ttl=5.0, prefix=f"bad:{os.getpid()}:", namespace="t")
    result_key, _ = dedup.redis_keys("k")
    await dedup.client.set(result_key, b"{not json", px=5000)
    with pytest.raises(ar.PersistenceError, match="corrupt shared result"):
        await dedup.run("k", lambda: 1)
    await dedup.client.delete(result_key)
    await dedup.close()


def test_a_deduplicator_needs_a_namespace() -> None:
    with pytest.raises(TypeError, match="namespace"):
        ar.RedisDeduplicator("redis://127.0.0.1:1/0", ttl=1)  # type: ignore[call-arg]
    for bad in ("", "a:b"):
        with pytest.raises(ValueError, match="namespace"):
            ar.RedisDeduplicator("redis://127.0.0.1:1/0", ttl=1, namespace=bad)
    with pytest.raises(TypeError, match="namespace"):
        ar.RedisDeduplicator("redis://127.0.0.1:1/0", ttl=1, namespace=3)  # type: ignore[arg-type]


async def test_redis_clients_time_out_whatever_redis_pys_default() -> None:
    from llm_agent_runtime._redis import REDIS_SOCKET_TIMEOUT, redis_client

    kwargs = redis_client("redis://127.0.0.1:1/0", "test").connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == REDIS_SOCKET_TIMEOUT
    url = "redis://127.0.0.1:1/0?socket_timeout=2"  # the URL's own setting wins
    assert redis_client(url, "test").connection_pool.connection_kwargs["socket_timeout"] == 2.0


async def test_a_cancellation_during_a_command_is_never_lost() -> None:
    # Cancelled after 0, 1, 2, ... loop turns: some land as redis-py's socket write ends,
    # which asyncio's `wait_for` (before Python 3.12) answered with the reply, the caller's
    # cancellation lost (30 of 41 such calls here).
    backend = ar.RedisBackend(redis_url(), prefix=f"cancel:{os.getpid()}:")
    keys = [f"k{i}" for i in range(8)]
    for key in keys:
        await backend.save(key, key.encode())
    cancelled = 0
    try:
        for turns in range(40):
            for key in keys:
                call = asyncio.create_task(backend.load(key))
                for _ in range(turns):
                    await asyncio.sleep(0)
                if call.cancel():
                    cancelled += 1
                    with pytest.raises(asyncio.CancelledError):
                        await call
            # Every connection answers its own command: no reply was left for the next.
            assert [await backend.load(key) for key in keys] == [k.encode() for k in keys]
        assert cancelled >= 8
    finally:
        await backend.client.delete(*(backend.prefix + key for key in keys))
        await backend.close()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:1/0", "Connection"),
        ("rediss://127.0.0.1:1/0", "SSLConnection"),
        ("unix:///tmp/redis.sock", "UnixDomainSocketConnection"),
    ],
)
async def test_redis_clients_keep_the_connection_class_of_their_url(url: str, kind: str) -> None:
    import redis.asyncio.connection

    from llm_agent_runtime._redis import redis_client

    made = redis_client(url, "test").connection_pool.connection_class
    assert issubclass(made, getattr(redis.asyncio.connection, kind))
    assert made.__name__ == kind


@pytest.mark.parametrize(
    "make",
    [
        lambda url: ar.RedisCircuitStateBackend(url),
        lambda url: ar.RedisRateLimiter(url, rate=1, capacity=1),
        lambda url: ar.RedisDeduplicator(url, ttl=1, namespace="n"),
    ],
    ids=["RedisCircuitStateBackend", "RedisRateLimiter", "RedisDeduplicator"],
)
@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:notaport/0", "notascheme://x", "redis://:s3cret@127.0.0.1:x/0"]
)
def test_a_malformed_redis_url_fails_the_orchestration_state_with_a_persistence_error(
    make: Any, url: str
) -> None:
    with pytest.raises(ar.PersistenceError, match="not a usable Redis URL") as info:
        make(url)
    assert "s3cret" not in str(info.value)


# -- a cancelled waiter's tokens go to the waiters behind it -----------------------------------


async def _until(condition: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline
        await asyncio.sleep(0.002)


async def test_a_newcomer_to_a_shared_bucket_does_not_overtake_the_waiter_behind() -> None:
    limiter = ar.RedisRateLimiter(redis_url(), rate=2.0, capacity=1, prefix=f"fifo:{os.getpid()}:")
    await limiter.client.delete(limiter.redis_key("k"))
    assert await limiter.try_acquire("k")  # empty
    loop = asyncio.get_running_loop()
    started = loop.time()
    served: list[tuple[str, float]] = []

    async def wait(name: str, tokens: float) -> None:
        await limiter.acquire("k", tokens)
        served.append((name, loop.time() - started))

    a = asyncio.create_task(wait("A", 1.0))  # due at 0.5 s
    await _until(lambda: _level_below(limiter, -0.5))
    b = asyncio.create_task(wait("B", 1.0))  # due at 1 s; at 0.5 s once A is gone
    await _until(lambda: _level_below(limiter, -1.5))
    a.cancel()
    await asyncio.gather(a, return_exceptions=True)
    c = asyncio.create_task(wait("C", 0.5))  # behind B: due at 0.75 s
    await asyncio.gather(b, c)
    assert [name for name, _ in served] == ["B", "C"]
    assert served[0][1] < 0.85  # not the 1 s it was given before A left
    await limiter.client.delete(limiter.redis_key("k"))
    await limiter.close()


async def _level_below(limiter: ar.RedisRateLimiter, level: float) -> bool:
    raw = await limiter.client.hget(limiter.redis_key("k"), "level")
    return raw is not None and float(raw) < level


async def test_a_refund_moves_up_a_reservation_in_flight_only_if_it_came_first() -> None:
    limiter = ar.RedisRateLimiter(
        redis_url(), rate=2.0, capacity=1, prefix=f"flight:{os.getpid()}:"
    )
    script = limiter._script
    loop = asyncio.get_running_loop()

    async def scenario(reserve_before_refund: bool) -> float:
        """A waits for 1 token, B's command for 0.75 is held back, A leaves: B's wait."""
        await limiter.client.delete(limiter.redis_key("k"))
        assert await limiter.try_acquire("k")  # empty
        held = asyncio.Event()

        async def holding_b(*, keys: list[str], args: list[Any]) -> Any:
            if args[2] != 0.75:
                return await script(keys=keys, args=args)
            if reserve_before_refund:  # runs on the server now, the reply comes later
                reply = await script(keys=keys, args=args)
                await held.wait()
                return reply
            await held.wait()  # sent only after A's refund
            return await script(keys=keys, args=args)

        limiter._script = holding_b
        a = asyncio.create_task(limiter.acquire("k"))  # due at 0.5 s
        await _until(lambda: _level_below(limiter, -0.5))
        started = loop.time()
        b = asyncio.create_task(limiter.acquire("k", 0.75))
        if reserve_before_refund:
            await _until(lambda: _level_below(limiter, -1.5))  # B's reservation ran
        else:
            await asyncio.sleep(0.01)  # B waits for its command to be sent
        a.cancel()
        await asyncio.gather(a, return_exceptions=True)  # A's refund has landed
        held.set()
        await b
        return loop.time() - started

    # B reserved before A's refund: due at 0.875 s, 0.375 s once A's token is given back.
    assert await scenario(reserve_before_refund=True) < 0.6
    # B reserved after it: its wait already counts the refund, which must not move it again.
    assert await scenario(reserve_before_refund=False) > 0.2
    assert limiter._room.waiters == {}
    await limiter.client.delete(limiter.redis_key("k"))
    await limiter.close()


# -- a refund never lets the workers sharing a bucket exceed it ----------------------------------


async def _bucket(limiter: ar.RedisRateLimiter) -> tuple[float, float]:
    """The stored level of the bucket of key "k", and the server time it was stored at."""
    level, last = await limiter.client.hmget(limiter.redis_key("k"), "level", "last")
    return float(level), float(last)


async def test_a_refund_never_grants_tokens_twice_across_workers() -> None:
    rate, capacity = 2.0, 1.0
    prefix = f"twice:{os.getpid()}:"
    a, b = (ar.RedisRateLimiter(redis_url(), rate, capacity, prefix=prefix) for _ in range(2))
    await a.client.delete(a.redis_key("k"))
    loop = asyncio.get_running_loop()
    grants: list[float] = []

    async def take(limiter: ar.RedisRateLimiter) -> None:
        await limiter.acquire("k")
        grants.append(loop.time())

    async def reserved(make: Any) -> asyncio.Task[None]:
        # Started, and its reservation stored (the bucket's time moved). Not a fixed level: a
        # loaded machine may reach Redis later, when the level has refilled past it.
        _, stored = await _bucket(a)
        task = asyncio.create_task(make)

        async def moved() -> bool:
            return (await _bucket(a))[1] > stored

        await _until(moved)
        return task

    try:
        assert await a.try_acquire("k")  # empty
        grants.append(loop.time())
        a1 = await reserved(take(a))  # due at 0.5 s
        b2 = await reserved(take(b))  # another worker: due at 1 s
        a3 = await reserved(take(a))  # due at 1.5 s
        before, since = await _bucket(a)
        a1.cancel()
        await asyncio.gather(a1, return_exceptions=True)  # its refund was asked for
        after, now = await _bucket(a)
        # The bucket keeps a1's token: b2 keeps its time, so moving a3 up to it would grant
        # the token to both at once.
        assert after == pytest.approx(before + (now - since) * rate, abs=1e-6)
        await asyncio.gather(b2, a3)
        # However late the loop wakes them, the grants are 1 / rate apart, not together.
        slack = 0.25
        for i, first in enumerate(grants):
            for j in range(i + 1, len(grants)):
                assert j - i + 1 <= capacity + rate * (grants[j] - first + slack)
    finally:
        await a.client.delete(a.redis_key("k"))
        await a.close()
        await b.close()


def _reserve_in_a_forked_child(limiter: ar.RedisRateLimiter) -> Any:
    """A forked child that takes a token with the limiter its parent made (it waits for it)."""

    def child() -> None:
        asyncio.run(limiter.acquire("k"))

    worker = multiprocessing.get_context("fork").Process(target=child)
    with warnings.catch_warnings():  # 3.12+: fork() of a process with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        worker.start()
    return worker


async def test_a_limiter_inherited_through_fork_is_another_worker() -> None:
    # A limiter made before fork() (at import, then workers forked) sent its commands under
    # the same owner in every process: a refund in one gave back tokens that a waiter of
    # another had been promised since, and both were granted them.
    rate, capacity = 2.0, 1.0
    limiter = ar.RedisRateLimiter(redis_url(), rate, capacity, prefix=f"fork:{os.getpid()}:")
    await limiter.client.delete(limiter.redis_key("k"))
    worker = None
    try:
        assert await limiter.try_acquire("k")  # empty
        a1 = asyncio.create_task(limiter.acquire("k"))  # due at 0.5 s
        await _until(lambda: _level_below(limiter, -0.5))
        worker = _reserve_in_a_forked_child(limiter)  # due at 1 s
        await _until(lambda: _level_below(limiter, -1.5))
        a3 = asyncio.create_task(limiter.acquire("k"))  # due at 1.5 s
        await _until(lambda: _level_below(limiter, -2.5))
        before, since = await _bucket(limiter)
        a1.cancel()
        await asyncio.gather(a1, return_exceptions=True)
        after, now = await _bucket(limiter)
        assert after == pytest.approx(before + (now - since) * rate, abs=1e-6)  # kept
        await a3
    finally:
        if worker is not None:
            await asyncio.to_thread(worker.join, 10)
            assert worker.exitcode == 0
        await limiter.client.delete(limiter.redis_key("k"))
        await limiter.close()


async def test_a_refund_is_made_while_every_command_since_came_from_the_same_limiter() -> None:
    rate = 1 / 3600  # nothing refills meanwhile, to speak of
    prefix = f"since:{os.getpid()}:"
    a, b = (ar.RedisRateLimiter(redis_url(), rate, 5, prefix=prefix) for _ in range(2))
    await a.client.delete(a.redis_key("k"))
    tasks: list[asyncio.Task[Any]] = []
    try:
        assert await b.try_acquire("k", 5)  # empty
        tasks.append(asyncio.create_task(b.acquire("k")))  # another worker's, first
        await _until(lambda: _level_below(a, -0.5))
        a2 = asyncio.create_task(a.acquire("k"))
        await _until(lambda: _level_below(a, -1.5))
        tasks.append(asyncio.create_task(a.acquire("k")))  # a3
        await _until(lambda: _level_below(a, -2.5))
        assert not await b.try_acquire("k")  # refused: it took nothing

        async def numbered() -> bool:  # a's waiters have read their replies
            return all(w.seq is not None for w in a._room.waiters["k"])

        await _until(numbered)
        a3 = max(a._room.waiters["k"], key=lambda w: w.seq or 0)
        due = a3.due
        a2.cancel()
        await asyncio.gather(a2, return_exceptions=True)
        await asyncio.sleep(0)  # the refund's move-up is settled
        # Given back: the only reservation made since is a3, which is moved up.
        assert (await _bucket(a))[0] == pytest.approx(-2, abs=0.01)
        assert a3.due == pytest.approx(due - 1 / rate)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        # A take of `a` whose caller is cancelled while it is in flight, after which b
        # reserved: the bucket keeps the token (b's waiter was given its time without it).
        await a.client.delete(a.redis_key("k"))
        a._script, reply = _slow_replies(a._script)
        taking = asyncio.create_task(a.try_acquire("k"))
        await _until(lambda: _level_below(a, 4.5))  # a's take ran; its reply is held back
        tasks = [asyncio.create_task(b.acquire("k", 5))]
        await _until(lambda: _level_below(a, -0.5))
        taking.cancel()
        reply.set()
        await asyncio.gather(taking, return_exceptions=True)
        assert (await _bucket(a))[0] == pytest.approx(-1, abs=0.01)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await a.client.delete(a.redis_key("k"))
        await a.close()
        await b.close()


# -- connections the server closed, or that died silently, are replaced before use --------------


def _addresses(*clients: Any) -> set[str]:
    """The addresses of the pooled connections of `clients`, as the server names them."""
    addresses = set()
    for client in clients:
        pool = client.connection_pool
        for connection in [*pool._available_connections, *pool._in_use_connections]:
            if connection._writer is not None:
                host, port = connection._writer.get_extra_info("sockname")[:2]
                addresses.add(f"{host}:{port}")
    return addresses


async def _close_server_side(*clients: Any) -> int:
    """Makes the server close the pooled connections of `clients`, and only theirs."""
    import redis.asyncio

    admin = redis.asyncio.from_url(redis_url())
    try:
        return sum(
            [await admin.client_kill_filter(_type=None, addr=a) for a in _addresses(*clients)]
        )
    finally:
        await admin.aclose()


async def test_state_survives_the_server_closing_pooled_connections() -> None:
    url, prefix = redis_url(), f"closed:{os.getpid()}:"
    backend = ar.RedisCircuitStateBackend(url, prefix=prefix)
    breaker = ar.CircuitBreaker("svc", backend=backend)
    limiter = ar.RedisRateLimiter(url, rate=1000, capacity=1000, prefix=prefix)
    dedup = ar.RedisDeduplicator(url, ttl=5.0, prefix=prefix, namespace="t")

    async def use_all(round_: int) -> list[Any]:
        return await asyncio.gather(
            *(breaker.call(asyncio.sleep, 0.01, i) for i in range(10)),
            *(limiter.acquire("k") for _ in range(10)),
            *(dedup.run(f"k{round_}:{i}", lambda: 1) for i in range(10)),
            return_exceptions=True,
        )

    assert not [r for r in await use_all(0) if isinstance(r, BaseException)]
    # What a restart, a failover or the server's idle `timeout` does to warm pools.
    assert await _close_server_side(backend.client, limiter.client, dedup.client) >= 3
    await asyncio.sleep(0.05)  # the closings reach this process
    assert not [r for r in await use_all(1) if isinstance(r, BaseException)]
    await backend.client.delete(prefix + "svc", limiter.redis_key("k"))
    for closable in (backend, limiter, dedup):
        await closable.close()


async def test_a_connection_closed_while_the_loop_did_not_run_is_replaced_before_use() -> None:
    # redis-py sees the end of a stream once the event loop has read it: when the loop had
    # not run since the server closed the connection, the next command went out on it and
    # failed ("Connection closed by server").
    import redis

    backend = ar.RedisBackend(redis_url(), prefix=f"unread:{os.getpid()}:")
    limiter = ar.RedisRateLimiter(redis_url(), rate=1000, capacity=1000, prefix=backend.prefix)
    try:
        await backend.save("k", b"v")
        assert await limiter.try_acquire("k")
        for _ in range(3):
            # Closed by a blocking client, this loop not running until the next command.
            admin = redis.Redis.from_url(redis_url())
            try:
                for address in _addresses(backend.client, limiter.client):
                    assert admin.client_kill_filter(_type=None, addr=address) == 1
            finally:
                admin.close()
            time.sleep(0.05)  # the closings reach this host
            assert await backend.load("k") == b"v"
            assert await limiter.try_acquire("k")
    finally:
        await backend.delete("k")
        await limiter.client.delete(limiter.redis_key("k"))
        await backend.close()
        await limiter.close()


class _Blackhole:
    """A TCP proxy to Redis whose open connections can go silent (a dead host, a dropped NAT
    entry: no reply and no end of stream); connections made afterwards work."""

    def __init__(self) -> None:
        self.silenced: list[dict[str, bool]] = []
        self.streams: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        from urllib.parse import urlsplit

        target = urlsplit(redis_url())
        self.target = (target.hostname, target.port)
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}{target.path}?socket_timeout=0.5"

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.streams += [writer, up_writer]
        link = {"silent": False}
        self.silenced.append(link)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):  # a side closed: the link ends
                while data := await src.read(65536):
                    if not link["silent"]:
                        dst.write(data)
                        await dst.drain()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def silence(self) -> None:
        for link in self.silenced:
            link["silent"] = True

    async def close(self) -> None:
        for stream in self.streams:
            stream.close()
        self.server.close()
        await self.server.wait_closed()


async def test_a_connection_that_died_silently_is_replaced_after_idling() -> None:
    proxy = _Blackhole()
    limiter = ar.RedisRateLimiter(
        await proxy.start(), rate=1000, capacity=1000, prefix=f"silent:{os.getpid()}:"
    )
    try:
        assert await limiter.try_acquire("k")
        proxy.silence()
        pool_settings = limiter.client.connection_pool.connection_kwargs
        await asyncio.sleep(pool_settings.get("health_check_interval", 0) + 0.1)
        # The idle connection fails its PING (nothing is sent for the command) and is
        # replaced: the command runs on a new one, instead of timing out.
        assert await limiter.try_acquire("k")
        await limiter.client.delete(limiter.redis_key("k"))
    finally:
        await limiter.close()
        await proxy.close()


async def test_the_redis_deduplicator_passes_arguments_named_key_and_fn_through() -> None:
    dedup = ar.RedisDeduplicator(redis_url(), ttl=5.0, prefix=f"kw:{os.getpid()}:", namespace="kw")

    async def fetch(key: str, fn: str) -> str:
        return f"{key}/{fn}"

    assert await dedup.run("k", fetch, key="user:1", fn="name") == "user:1/name"
    await dedup.close()


# -- a shared waiter cancelled once due was served; times are kept to the microsecond -----------


async def test_a_shared_waiter_cancelled_once_due_gives_nothing_back() -> None:
    import redis

    from llm_agent_runtime.orchestration.redis_state import _BUCKET_SCRIPT

    url = redis_url()
    limiter = ar.RedisRateLimiter(url, rate=2.0, capacity=1, prefix=f"late:{os.getpid()}:")
    key = limiter.redis_key("k")
    await limiter.client.delete(key)
    try:  # closed whatever happens: an unclosed client fails the next test with a warning
        assert await limiter.try_acquire("k")  # empty
        waiter = asyncio.create_task(limiter.acquire("k"))  # reserves a token, due in 0.5 s
        await _until(lambda: _level_below(limiter, -0.5))
        # The reservation is made; the waiter reads its reply and starts waiting (cancelled
        # before it reads it, a reservation is given back whatever the time: in flight).
        await asyncio.sleep(0.1)
        time.sleep(1.1)  # the loop is busy: the waiter is due, and has not resumed
        other = redis.Redis.from_url(url)  # a command of this limiter object, meanwhile
        seconds, micros = other.time()
        taken_after = seconds + micros / 1e6
        # It takes the one token the bucket holds (full since 1 s: it dropped one at capacity).
        # Sent as this limiter's (another worker's command would keep the refund from being
        # made whatever the time): only the waiter being due keeps its token.
        take = (2.0, 1.0, 1.0, 0, limiter._owner)
        assert other.eval(_BUCKET_SCRIPT, 1, key, *take)[0] == 1
        other.close()
        waiter.cancel()  # the waiter's timeout fires before it resumed
        with pytest.raises(asyncio.CancelledError):
            await waiter
        level, last = map(float, await limiter.client.hmget(key, "level", "last"))
        # What has refilled since the token was taken, no more: given back, the
        # waiter's token was a second grant at once.
        assert level <= (last - taken_after) * 2.0 + 1e-9
    finally:
        await limiter.client.delete(key)
        await limiter.close()


async def test_the_shared_bucket_keeps_the_servers_time_to_the_microsecond() -> None:
    # Stored with tostring (14 significant digits), an epoch time moved by up to 50 us at
    # each command: at 10,000 tokens a second, half a token granted or lost.
    rate, capacity = 10_000.0, 10.0
    limiter = ar.RedisRateLimiter(
        redis_url(), rate=rate, capacity=capacity, prefix=f"micro:{os.getpid()}:"
    )
    key = limiter.redis_key("k")
    assert await limiter.try_acquire("k")  # the script is loaded
    for _ in range(300):
        await limiter.client.delete(key)
        async with limiter.client.pipeline(transaction=False) as pipe:
            pipe.time()
            await limiter._script(keys=[key], args=[rate, capacity, capacity, 0, "w"], client=pipe)
            await limiter._script(keys=[key], args=[rate, capacity, 0.5, 0, "w"], client=pipe)
            pipe.time()
            before, _, half, after = await pipe.execute()
        elapsed = (after[0] - before[0]) + (after[1] - before[1]) / 1e6
        # Half a token is granted only once it has refilled since the bucket was emptied.
        assert not int(half[0]) or elapsed * rate >= 0.5 - 1e-6
    await limiter.client.delete(key)
    await limiter.close()


async def test_shared_limiter_refuses_bools_and_takes_numpy_numbers() -> None:
    # Both were taken, then every command failed: redis-py sends no bool nor numpy scalar.
    import numpy as np

    url = redis_url()
    for bad in ({"rate": True, "capacity": 1.0}, {"rate": 1.0, "capacity": True}):
        with pytest.raises(ValueError, match="must be a number"):
            ar.RedisRateLimiter(url, **bad)
    limiter = ar.RedisRateLimiter(
        url, rate=np.float32(1), capacity=np.int64(2), prefix=f"np:{os.getpid()}:"
    )
    await limiter.client.delete(limiter.redis_key("k"))
    with pytest.raises(ValueError, match="must be a number"):
        await limiter.try_acquire("k", True)
    assert await limiter.try_acquire("k", np.float32(1))
    await limiter.acquire("k", np.float64(1))
    assert not await limiter.try_acquire("k")
    assert limiter.redis_key("k") == f"np:{os.getpid()}:1.0/2.0:k"  # shared with rate=1.0
    await limiter.client.delete(limiter.redis_key("k"))
    await limiter.close()


# -- single flight: durations Redis can keep ---------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"ttl": 1e16}, "2\\*\\*53 ms"),  # failed after `fn` ran: its result lost
        ({"ttl": 1.0, "lease": 1e16}, "2\\*\\*53 ms"),  # failed every call
        ({"ttl": True}, "must be a number"),
        ({"ttl": 1.0, "lease": True}, "must be a number"),
    ],
)
def test_single_flight_refuses_durations_redis_cannot_keep(
    bad: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ar.RedisDeduplicator("redis://127.0.0.1:1/0", namespace="t", **bad)  # type: ignore[arg-type]


async def test_single_flight_keeps_results_for_the_longest_ttl_it_takes() -> None:
    longest = 2**53 / 1000
    dedup = ar.RedisDeduplicator(
        redis_url(), ttl=longest, lease=longest, prefix=f"long:{os.getpid()}:", namespace="t"
    )
    result_key, lease_key = dedup.redis_keys("k")
    await dedup.client.delete(result_key, lease_key)
    assert await dedup.run("k", lambda: 42) == 42  # Redis takes PX 2**53 for both
    assert await dedup.client.pttl(result_key) > 2**52
    await dedup.client.delete(result_key, lease_key)
    await dedup.close()


# -- concurrent updates of one shared breaker ---------------------------------------------------


def _record_round_trips(client: Any) -> list[Any]:
    """Records what `client` sends, one entry per send (a pipeline's commands in one): its
    round trips. Call it before the client opens its first connection."""
    pool = client.connection_pool
    sent: list[Any] = []

    class Recording(pool.connection_class):  # type: ignore[misc,name-defined]
        async def send_packed_command(self, command: Any, *args: Any, **kwargs: Any) -> None:
            sent.append(command)
            await super().send_packed_command(command, *args, **kwargs)

    pool.connection_class = Recording
    return sent


def _one_more_failure(state: ar.CircuitState) -> ar.CircuitState:
    return state._replace(failures=state.failures + 1)


def _broken_change(state: ar.CircuitState) -> ar.CircuitState:
    raise RuntimeError("no clock")


async def test_concurrent_failures_all_count_in_round_trips_that_do_not_grow_with_them() -> None:
    calls = 100
    backend = ar.RedisCircuitStateBackend(redis_url(), prefix=f"herd:{os.getpid()}:")
    sent = _record_round_trips(backend.client)
    await backend.client.delete(backend.prefix + "svc")
    breaker = ar.CircuitBreaker(
        "svc", failure_threshold=calls + 1, recovery_window=60, backend=backend
    )
    gate = asyncio.Event()
    admitted = 0

    async def failing() -> None:
        nonlocal admitted
        admitted += 1
        await gate.wait()
        raise ConnectionError("down")

    async def all_admitted() -> bool:
        return admitted == calls

    before = len(sent)
    tasks = [asyncio.create_task(breaker.call(failing)) for _ in range(calls)]
    await _until(all_admitted)
    gate.set()  # the service fails them all at once
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    round_trips = len(sent) - before
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    state = await backend.get("svc")
    assert (state.status, state.failures) == ("closed", calls)  # each counted exactly once
    # One retried transaction per update took O(calls**2) round trips (~15,000 here).
    assert round_trips < 10 * calls
    with pytest.raises(ConnectionError):  # the threshold's failure opens it
        await breaker.call(_raise_connection_error)
    state = await backend.get("svc")
    assert (state.status, state.failures) == ("open", calls + 1)
    assert breaker.transitions == {"closed->open": 1}
    await backend.client.delete(backend.prefix + "svc")
    await backend.close()


async def test_updates_queued_behind_a_write_go_in_one_and_a_cancelled_one_is_left_out() -> None:
    backend = ar.RedisCircuitStateBackend(redis_url(), prefix=f"queued:{os.getpid()}:")
    sent = _record_round_trips(backend.client)
    await backend.client.delete(backend.prefix + "svc")
    backend._swap, reply = _slow_replies(backend._swap)
    first = asyncio.create_task(backend.update("svc", _one_more_failure))

    async def first_written() -> bool:
        return (await backend.get("svc")).failures == 1

    await _until(first_written)  # its reply is held back
    changes = [_one_more_failure] * 5 + [_broken_change, _one_more_failure]
    queued = [asyncio.create_task(backend.update("svc", change)) for change in changes]
    await asyncio.sleep(0)  # each is queued behind the write under way
    queued[2].cancel()  # before its change is written: left out
    first.cancel()  # after: its change stands
    before = len(sent)
    reply.set()
    for cancelled in (first, queued[2]):
        with pytest.raises(asyncio.CancelledError):
            await cancelled
    with pytest.raises(ar.PersistenceError, match="no clock"):  # only its caller fails
        await queued[5]
    del queued[5], queued[2]
    made = [(old.failures, new.failures) for old, new in await asyncio.gather(*queued)]
    assert made == [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]  # in arrival order, each once
    assert len(sent) - before == 2  # one read and one write for the five
    assert (await backend.get("svc")).failures == 6
    await backend.client.delete(backend.prefix + "svc")
    await backend.close()


async def test_a_write_refused_for_another_processs_change_is_applied_to_that_state() -> None:
    prefix = f"refused:{os.getpid()}:"
    mine = ar.RedisCircuitStateBackend(redis_url(), prefix=prefix)
    other = ar.RedisCircuitStateBackend(redis_url(), prefix=prefix)  # another process's
    await mine.client.delete(prefix + "svc")
    swap, send = mine._swap, asyncio.Event()
    attempts: list[Any] = []

    async def held(**kwargs: Any) -> Any:
        attempts.append(kwargs)
        await send.wait()
        return await swap(**kwargs)

    mine._swap = held
    update = asyncio.create_task(mine.update("svc", _one_more_failure))
    while not attempts:  # it has read the state and computed its write
        await asyncio.sleep(0.001)
    old, new = await other.update("svc", _one_more_failure)  # another process writes first
    assert (old.failures, new.failures) == (0, 1)
    send.set()
    old, new = await update
    assert (old.failures, new.failures) == (1, 2)  # applied again, to the state found
    assert len(attempts) == 2  # the refusal brought that state: no second read
    assert (await mine.get("svc")).failures == 2
    await mine.client.delete(prefix + "svc")
    for backend in (mine, other):
        await backend.close()


# ---------------------------------------------------------------- one object, several loops


def test_redis_objects_work_from_one_asyncio_run_to_the_next() -> None:
    # Connections belong to the loop that opened them: on the next loop, a pooled one failed
    # its command once sent (a token taken, yet the caller told it failed).
    prefix = f"loops:{os.getpid()}:{time.time_ns()}:"
    limiter = ar.RedisRateLimiter(redis_url(), rate=1e-9, capacity=100.0, prefix=prefix)
    backend = ar.RedisBackend(redis_url(), prefix=prefix)
    breaker_state = ar.RedisCircuitStateBackend(redis_url(), prefix=prefix)

    async def takes(n: int) -> list[bool]:
        return await asyncio.gather(*(limiter.try_acquire("k") for _ in range(n)))

    async def writes(n: int, run: int) -> list[bytes | None]:
        await asyncio.gather(*(backend.save(f"{run}:{i}", b"x") for i in range(n)))
        await breaker_state.update("svc", lambda state: state)
        return [await backend.load(f"{run}:{i}") for i in range(n)]

    for run, n in enumerate((20, 40, 30)):
        assert asyncio.run(takes(n)) == [True] * n
        assert asyncio.run(writes(n, run)) == [b"x"] * n

    async def level_and_cleanup() -> float:
        level = float(await limiter.client.hget(limiter.redis_key("k"), "level"))
        await limiter.client.delete(limiter.redis_key("k"), prefix + "svc")
        for run, n in enumerate((20, 40, 30)):
            for i in range(n):
                await backend.delete(f"{run}:{i}")
        await limiter.close()
        await backend.close()
        await breaker_state.close()
        return level

    assert asyncio.run(level_and_cleanup()) == pytest.approx(10.0)  # 90 taken, each once


async def test_a_redis_url_that_turns_decode_responses_on_is_refused() -> None:
    url = redis_url() + ("&" if "?" in redis_url() else "?") + "decode_responses=true"
    with pytest.raises(ar.PersistenceError, match="decode_responses"):
        ar.RedisBackend(url)


async def test_redis_names_that_are_no_str_are_type_errors() -> None:
    # A service 7 took the breaker's write queue down: every waiting caller got a
    # CancelledError though none was cancelled. A dedup key 1 shared "1"'s result.
    state = ar.RedisCircuitStateBackend(redis_url(), prefix=f"names:{os.getpid()}:")
    with pytest.raises(TypeError, match="service must be a str"):
        await state.update(7, lambda s: s)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="service must be a str"):
        await state.get(7)  # type: ignore[arg-type]
    dedup = ar.RedisDeduplicator(redis_url(), ttl=1.0, namespace="n", poll_interval=1e306)
    with pytest.raises(TypeError, match="key must be a str"):
        await dedup.run(1, lambda: 1)  # type: ignore[arg-type]
    await state.close()
    await dedup.close()


async def test_a_server_clock_stepping_back_pauses_the_refill_without_draining_the_bucket() -> None:
    limiter = ar.RedisRateLimiter(
        redis_url(), rate=10.0, capacity=10.0, prefix=f"clock:{os.getpid()}:"
    )
    key = limiter.redis_key("k")
    assert await limiter.try_acquire("k")  # 9 left
    # As if the server's clock had stepped back 5 s since: the stored time is 5 s ahead.
    last = float(await limiter.client.hget(key, "last"))
    await limiter.client.hset(key, "last", repr(last + 5.0))
    assert await limiter.try_acquire("k", 8.0)  # before: the bucket read 9 - 50 tokens
    await limiter.client.delete(key)
    await limiter.close()


async def _collect() -> None:
    gc.collect()


@pytest.mark.parametrize("in_another_loop", [False, True], ids=["no loop", "another loop"])
def test_limiter_waiters_left_in_a_loop_closed_by_hand_are_collected_quietly(
    in_another_loop: bool,
) -> None:
    # Closed by the GC with no loop running, each waiter's refund called ensure_future:
    # "Exception ignored ... no current event loop", and a refund never awaited.
    url = redis_url()
    limiter = ar.RedisRateLimiter(url, rate=2, capacity=1, prefix=f"t:{os.getpid()}:closed:")

    waiting: list[asyncio.Task[None]] = []

    async def wait_twice(limiter: ar.RedisRateLimiter) -> None:
        await limiter.acquire("k")
        waiting.extend(asyncio.create_task(limiter.acquire("k")) for _ in range(2))
        await asyncio.sleep(0.05)  # both wait for a token

    unraisable: list[Any] = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # "was never awaited"
            loop = asyncio.new_event_loop()
            loop.set_exception_handler(lambda _loop, _context: None)  # "Task was destroyed"
            loop.run_until_complete(wait_twice(limiter))
            loop.close()
            del loop, limiter  # the limiter holds its waiters
            waiting.clear()
            if in_another_loop:  # where the GC mostly runs: in the app's next loop
                asyncio.run(_collect())
            else:
                gc.collect()
    finally:
        sys.unraisablehook = previous_hook
    # The loop's connections are the GC's (`PerLoop`: no other loop used the limiter since).
    errors = [u.exc_value for u in unraisable if not isinstance(u.exc_value, ResourceWarning)]
    assert errors == []


@pytest.mark.usefixtures("task_factory")
async def test_one_failed_batched_write_of_outcomes_is_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every outcome the write held logged the same warning: 50 lines for one lost write.
    # Under an eager task factory the writer wrote the first outcome alone, and one that
    # failed before it waited for anything ended with a KeyError no one retrieved.
    backend = ar.RedisCircuitStateBackend(redis_url(), prefix=f"batch:{os.getpid()}:")
    await backend.client.delete(backend.prefix + "svc")
    breaker = ar.CircuitBreaker("svc", failure_threshold=100, recovery_window=10, backend=backend)
    go = asyncio.Event()

    async def work() -> str:
        await go.wait()
        return "ok"

    calls = [asyncio.ensure_future(breaker.call(work)) for _ in range(20)]
    await asyncio.sleep(0.05)  # all admitted, running

    async def lost(*args: Any) -> None:
        raise ConnectionError("Connection closed by server.")

    monkeypatch.setattr(backend, "_commit", lost)
    with caplog.at_level(logging.WARNING, logger="llm_agent_runtime"):
        go.set()
        assert await asyncio.gather(*calls) == ["ok"] * 20  # the calls' own results
        await asyncio.sleep(0.05)
    assert breaker.record_errors == 20  # each outcome lost is counted
    warnings = [r.getMessage() for r in caplog.records if "could not record" in r.getMessage()]
    assert len(warnings) == 1 and "Connection closed by server" in warnings[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    monkeypatch.undo()
    await backend.client.delete(backend.prefix + "svc")
    await backend.close()
