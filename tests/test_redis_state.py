"""One circuit breaker shared by several worker processes through Redis."""

from __future__ import annotations

import asyncio
import multiprocessing
import os

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
