"""Edge cases of the Redis backend and of the Redis orchestration state."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import threading
import uuid
from typing import Any

import pytest

import llm_agent_runtime as ar

from .test_backends import server_address


@pytest.mark.parametrize("prefix", [b"myapp:", None, 7])
async def test_redis_orchestration_state_refuses_a_prefix_that_is_not_a_str(prefix: object) -> None:
    # As `RedisBackend` does. A bytes prefix (common with redis-py) made the breaker's
    # `update` hang forever (its writer failed building the error for its callers and never
    # settled their futures), and the limiter and deduplicator silently used keys such as
    # "b'myapp:'1.0/1.0:default", which no process configured with "myapp:" shares.
    url = server_address("redis")
    bad: Any = prefix
    with pytest.raises(TypeError, match="prefix must be a str"):
        ar.RedisCircuitStateBackend(url, prefix=bad)
    with pytest.raises(TypeError, match="prefix must be a str"):
        ar.RedisRateLimiter(url, rate=1, capacity=1, prefix=bad)
    with pytest.raises(TypeError, match="prefix must be a str"):
        ar.RedisDeduplicator(url, ttl=1, prefix=bad, namespace="n")


def test_one_shared_limiter_serves_event_loops_in_several_threads() -> None:
    # Its clients are per event loop, so one limiter may serve worker threads each running
    # a loop of its own; but its waiters, and the refunds owed to them, were kept in one
    # room for all loops: a loop settled another's refunds while that one changed its line
    # ("dictionary changed size during iteration" from `acquire`), or woke another loop's
    # waiters from the wrong thread. Each loop now stands for a worker of its own.
    url = server_address("redis")
    limiter = ar.RedisRateLimiter(url, rate=2000, capacity=5, prefix=f"test:{uuid.uuid4().hex}:")
    failures: list[object] = []

    async def one() -> None:
        task = asyncio.ensure_future(limiter.acquire("k"))
        await asyncio.sleep(random.uniform(0, 0.003))
        if random.random() < 0.5:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def work() -> None:
        for _ in range(60):
            await asyncio.gather(*[one() for _ in range(20)])

    def thread() -> None:
        loop = asyncio.new_event_loop()
        # An error in a callback (a refund's settling) is reported to the loop's handler.
        loop.set_exception_handler(
            lambda _, context: failures.append(context.get("exception") or context["message"])
        )
        try:
            loop.run_until_complete(work())
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException as error:
            failures.append(error)
        finally:
            loop.close()

    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads interleave often, as on a busy machine
    try:
        threads = [threading.Thread(target=thread) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(switching)
    assert failures == []


async def test_a_cancellation_asked_before_a_command_is_sent_is_kept() -> None:
    # Ctrl-C under `asyncio.run` cancels the main task from inside whatever it runs: asked
    # just before a command, the cancellation was taken for one asked during the write (on
    # Python before 3.12, where the send is guarded), and lost; the program ran on. From
    # 3.12 the command was sent and applied, its caller told it was cancelled.
    url = server_address("redis")
    prefix = f"test:{uuid.uuid4().hex}:"
    backend = ar.RedisBackend(url, prefix=prefix)
    state = ar.RedisCircuitStateBackend(url, prefix=prefix)
    try:
        # Connected first: a connection being made delivers the cancellation itself.
        await backend.save("warm", b"1")
        await state.get("svc")
        for call in (
            lambda: backend.save("k", b"v"),
            lambda: backend.load("k"),
            lambda: backend.batch_save({"a": b"1"}),
            lambda: backend.save_new("n", b"claim"),
            lambda: state.get("svc"),
        ):
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call()
            task.uncancel()
        assert await backend.batch_load(["k", "a", "n"]) == {}  # nothing sent once cancelled
    finally:
        await backend.close()
        await state.close()


async def test_a_closed_redis_backend_opens_a_new_pool_at_its_next_call() -> None:
    # As its docs say (and PostgresBackend's): close() is not the end of the object.
    backend = ar.RedisBackend(server_address("redis"), prefix=f"test:{uuid.uuid4().hex}:")
    await backend.save("k", b"1")
    await backend.close()
    assert await backend.load("k") == b"1"
    await backend.delete("k")
    await backend.close()
    await backend.close()  # twice is fine


async def test_a_key_of_another_type_fails_a_batch_load_as_it_fails_a_load() -> None:
    # MGET gives nil for a list as for an absent key: a step another client replaced with a
    # list was reported "missing", and the event log dropped such events without a word.
    backend = ar.RedisBackend(server_address("redis"), prefix=f"test:{uuid.uuid4().hex}:")
    try:
        await backend.batch_save({"a": b"1", "b": b"2"})
        await backend.client.delete(backend.prefix + "b")
        await backend.client.rpush(backend.prefix + "b", b"x")
        with pytest.raises(ar.PersistenceError, match=r"WRONGTYPE.*'b'"):
            await backend.load("b")
        with pytest.raises(ar.PersistenceError, match=r"WRONGTYPE.*'b'"):
            await backend.batch_load(["a", "b", "c"])
        await backend.client.delete(backend.prefix + "b")
        assert await backend.batch_load(["a", "b", "c"]) == {"a": b"1"}
    finally:
        await backend.client.delete(*[backend.prefix + k for k in "abc"])
        await backend.close()


async def test_the_first_listing_indexes_no_other_backend_s_keys_nor_keys_that_expire() -> None:
    # The scan for keys stored before the index took every key under the prefix: a longer
    # prefix's backend's, and other data (the orchestration state under the default prefix
    # of earlier versions, which expires). Once indexed, they stayed listed after their own
    # backend deleted them, or they expired, in every process.
    url = server_address("redis")
    prefix = f"test:nested:{uuid.uuid4().hex}:"
    tenant = ar.RedisBackend(url, prefix=prefix + "tenant1:")
    outer = ar.RedisBackend(url, prefix=prefix)
    try:
        await tenant.save("session:s1", b"t")
        await outer.client.set(prefix + "session:old", b"0")  # as an earlier version stored it
        await outer.client.set(prefix + "dedup:pay:result", b"r", px=60_000)
        assert await outer.list_keys() == ["session:old"]
        assert await tenant.list_keys() == ["session:s1"]
        await tenant.delete("session:s1")
        await outer.client.delete(prefix + "dedup:pay:result")  # as its expiry deletes it
        assert await outer.list_keys() == ["session:old"]
        assert await ar.RedisBackend(url, prefix=prefix).list_keys() == ["session:old"]
        assert await tenant.list_keys() == []
    finally:
        keys = [k async for k in outer.client.scan_iter(match=f"*{prefix}*")]
        await outer.client.delete(*keys)
        await tenant.close()
        await outer.close()


async def test_listings_read_the_index_not_the_whole_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every listing scanned the whole database (a chat's turn listed three times: 140 ms a
    # turn beside 100,000 keys of other data). Keys stored before the index (earlier
    # versions) are indexed from one scan of the prefix, by the first listing.
    url = server_address("redis")
    prefix = f"test:index:{uuid.uuid4().hex}:"
    earlier = ar.RedisBackend(url, prefix=prefix)
    await earlier.client.set(prefix + "session:old", b"0")  # as an earlier version stored it
    store = ar.RedisBackend(url, prefix=prefix)
    try:
        assert await store.list_keys() == ["session:old"]
        scans: list[Any] = []
        monkeypatch.setattr(store.client, "scan_iter", lambda *a, **k: scans.append(k))
        await store.save("session:a", b"1")
        assert await store.save_new("session:b", b"2")
        assert not await store.save_new("session:b", b"3")
        await store.batch_save({"session:c": b"4", "other": b"5", "session:é": b"6"})
        assert await store.batch_save_if("session:a", b"1", {"session:d": b"7"})
        assert not await store.batch_save_if("session:a", b"x", {"session:e": b"8"})
        assert await store.delete("session:old")
        assert await store.batch_delete_if("session:a", b"1", ["session:c", "session:z"])
        assert not await store.batch_delete_if("session:a", b"x", ["session:b"])
        assert await store.list_keys() == [
            "other",
            "session:a",
            "session:b",
            "session:d",
            "session:é",
        ]
        assert await store.list_keys("session:") == [
            "session:a",
            "session:b",
            "session:d",
            "session:é",
        ]
        assert await store.list_keys("session:é") == ["session:é"]
        assert await store.list_keys("none") == []
        assert scans == []
        # Another backend of the prefix finds it indexed: it scans nothing either.
        again = ar.RedisBackend(url, prefix=prefix)
        monkeypatch.setattr(again.client, "scan_iter", lambda *a, **k: scans.append(k))
        assert await again.list_keys("other") == ["other"]
        assert scans == []
    finally:
        keys = [k async for k in earlier.client.scan_iter(match=f"*{prefix}*")]
        await earlier.client.delete(*keys)
        await store.close()
        await earlier.close()
