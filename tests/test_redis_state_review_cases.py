"""Cases of the Redis-backed orchestration state: settings changed while calls are under way,
keys lost or corrupt, replies that come late."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from test_redis_state import _slow_replies, _until, redis_url

import llm_agent_runtime as ar


def _prefix(name: str) -> str:
    """A key prefix of this test's own."""
    return f"review:{name}:{uuid.uuid4().hex[:12]}:"


async def _level(limiter: ar.RedisRateLimiter, key: str = "k") -> tuple[float, float]:
    """The stored level of `key`'s bucket, and the server time it was stored at."""
    level, last = await limiter.client.hmget(limiter.redis_key(key), "level", "last")
    return float(level), float(last)


# -- RedisRateLimiter: a refund moves up only the waiters of the bucket it went to ----------------


@pytest.mark.parametrize("setting", ["prefix", "rate", "capacity"])
async def test_a_refund_to_the_bucket_of_old_settings_does_not_move_up_the_new_ones_waiters(
    setting: str,
) -> None:
    rate = 1 / 3600  # nothing is due while the test runs: it reads the waiters' dues
    limiter = ar.RedisRateLimiter(redis_url(), rate, 1, prefix=_prefix("settings"))
    keys = [limiter.redis_key("k")]
    tasks: list[asyncio.Task[None]] = []
    try:
        assert await limiter.try_acquire("k")  # the old bucket is empty
        old = asyncio.create_task(limiter.acquire("k"))  # old seq 2
        await _until(lambda: _below(limiter, -0.5))
        for _ in range(5):  # old seq 3 to 7: a refund of seq 2 there moves up 3 to 7
            assert not await limiter.try_acquire("k")
        if setting == "prefix":
            limiter.prefix = _prefix("settings")
        elif setting == "rate":
            limiter.rate = rate * 2
        else:
            limiter.capacity = 2
        keys.append(limiter.redis_key("k"))
        assert await limiter.try_acquire("k", limiter.capacity)  # the new bucket is empty
        tasks.append(asyncio.create_task(limiter.acquire("k")))  # new seq 2
        await _until(lambda: _below(limiter, -0.5))
        tasks.append(asyncio.create_task(limiter.acquire("k")))  # new seq 3
        await _until(lambda: _below(limiter, -1.5))

        async def numbered() -> bool:
            return all(w.seq is not None for w in limiter._room.waiters["k"])

        await _until(numbered)
        last = list(limiter._room.waiters["k"])[-1]  # the new bucket's seq 3
        due = last.due
        old.cancel()
        await asyncio.gather(old, return_exceptions=True)  # given back to the old bucket
        await asyncio.sleep(0)  # refunds owed are settled at the next turn of the loop
        await asyncio.sleep(0)
        # The old bucket's seq 3 is another reservation than the new one's: it keeps its due.
        assert last.due == due
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await limiter.client.delete(*keys)
        await limiter.close()


async def _below(limiter: ar.RedisRateLimiter, level: float) -> bool:
    raw = await limiter.client.hget(limiter.redis_key("k"), "level")
    return raw is not None and float(raw) < level


async def test_rooms_of_settings_no_longer_used_are_forgotten() -> None:
    limiter = ar.RedisRateLimiter(redis_url(), 1000, 10, prefix=_prefix("rooms"))
    keys = []
    try:
        for rate in (1000.0, 1001.0, 1002.0):
            limiter.rate = rate
            keys.append(limiter.redis_key("k"))
            await limiter.acquire("k")
        assert limiter._worker().rooms == {}
    finally:
        await limiter.client.delete(*keys)
        await limiter.close()


# -- RedisRateLimiter: a bucket's key lost and made again is another bucket -----------------------


async def test_a_reservation_of_a_lost_bucket_is_not_given_back_to_the_new_one() -> None:
    limiter = ar.RedisRateLimiter(redis_url(), 1 / 3600, 2, prefix=_prefix("lost"))
    key = limiter.redis_key("k")
    try:
        assert await limiter.try_acquire("k", 2)
        for _ in range(8):
            assert not await limiter.try_acquire("k")
        waiter = asyncio.create_task(limiter.acquire("k"))  # seq 10, due in an hour
        await _until(lambda: _below(limiter, -0.5))
        await limiter.client.delete(key)  # lost: a restart without persistence, an eviction
        # The new bucket starts full (2 tokens), numbers its commands from 1 again.
        assert [await limiter.try_acquire("k") for _ in range(3)] == [True, True, False]
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        # The new bucket never lent the lost one's token: it is not given back to it.
        assert (await _level(limiter))[0] == pytest.approx(0, abs=0.01)
        assert not await limiter.try_acquire("k")
    finally:
        await limiter.client.delete(key)
        await limiter.close()


async def test_a_bucket_stored_before_it_had_an_id_is_used_and_refunded() -> None:
    limiter = ar.RedisRateLimiter(redis_url(), 1 / 3600, 2, prefix=_prefix("noid"))
    key = limiter.redis_key("k")
    try:
        seconds, micros = await limiter.client.time()
        fields = {"level": 0, "last": seconds + micros / 1e6, "seq": 5}
        await limiter.client.hset(key, mapping={**fields, "owner": limiter._owner, "since": 1})
        waiter = asyncio.create_task(limiter.acquire("k"))  # seq 6: in debt
        await _until(lambda: _below(limiter, -0.5))
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert (await _level(limiter))[0] == pytest.approx(0, abs=0.01)  # given back
    finally:
        await limiter.client.delete(key)
        await limiter.close()


# -- RedisRateLimiter: a command whose reply comes late ------------------------------------------


@pytest.mark.parametrize("method", ["acquire", "try_acquire"])
async def test_a_caller_cancelled_in_flight_gives_back_no_token_the_bucket_refilled(
    method: str,
) -> None:
    rate = 5.0  # refilled in 0.2 s
    limiter = ar.RedisRateLimiter(redis_url(), rate, 1, prefix=_prefix("late"))
    script = limiter._script
    held, reply = _slow_replies(script)
    first = True

    async def holding_the_first(**kwargs: Any) -> Any:
        nonlocal first
        if first:
            first = False
            return await held(**kwargs)
        return await script(**kwargs)

    limiter._script = holding_the_first
    try:
        task = asyncio.create_task(getattr(limiter, method)("k"))
        await _until(lambda: _below(limiter, 0.5))  # it took the token; its reply is held back
        task.cancel()
        await asyncio.sleep(2 / rate)  # the bucket is full again
        assert await limiter.try_acquire("k")  # the token refilled since
        taken, at = await _level(limiter)
        reply.set()  # the reply arrives now, and the refund is sent
        with pytest.raises(asyncio.CancelledError):
            await task
        level, last = await _level(limiter)
        # What has refilled since the token was taken, no more: given back, the first
        # command's token was granted a second time.
        assert level <= taken + (last - at) * rate + 1e-9
    finally:
        reply.set()
        await limiter.client.delete(limiter.redis_key("k"))
        await limiter.close()


# -- RedisRateLimiter: a corrupt bucket ----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("last", "inf"),
        ("level", "-inf"),
        ("level", "nan"),
        ("level", "garbage"),
        ("seq", "x"),
        ("since", "nan"),
    ],
)
async def test_a_corrupt_bucket_is_a_persistence_error(field: str, value: str) -> None:
    limiter = ar.RedisRateLimiter(redis_url(), 1.0, 2, prefix=_prefix("corrupt"))
    key = limiter.redis_key("k")
    try:
        assert await limiter.try_acquire("k", 2)
        await limiter.client.hset(key, field, value)
        stored = await limiter.client.hgetall(key)
        with pytest.raises(ar.PersistenceError, match="corrupt rate-limit bucket") as caught:
            await limiter.try_acquire("k")
        assert caught.value.key == key
        # It names the field, not what the field holds (a stored value is never quoted).
        assert (
            caught.value.args[0] == f"corrupt rate-limit bucket: its {field} is not a finite number"
        )
        with pytest.raises(ar.PersistenceError, match="corrupt rate-limit bucket"):
            await asyncio.wait_for(limiter.acquire("k"), 2)
        assert limiter._room.waiters == {}
        assert await limiter.client.hgetall(key) == stored  # left as it is, for a look
        await limiter.client.delete(key)
        assert await limiter.try_acquire("k", 2)  # a missing key is a full bucket
    finally:
        await limiter.client.delete(key)
        await limiter.close()


# -- RedisCircuitStateBackend: an update after the prefix changed --------------------------------


class _HeldGets:
    """A backend's client whose GET replies wait for an event (a write under way)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.sent = asyncio.Event()
        self.release = asyncio.Event()

    async def get(self, key: str) -> Any:
        raw = await self._client.get(key)
        self.sent.set()
        await self.release.wait()
        return raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _failed(state: ar.CircuitState) -> ar.CircuitState:
    return state._replace(failures=state.failures + 1)


async def test_updates_not_yet_written_when_the_prefix_changes_go_under_the_new_one() -> None:
    old_prefix, new_prefix = _prefix("cb-old"), _prefix("cb-new")
    backend = ar.RedisCircuitStateBackend(redis_url(), prefix=old_prefix)
    stored = json.dumps(["open", 7, 1e12, 0, 0.0, 0, 3])
    client = backend.client
    await client.set(old_prefix + "svc", stored)
    gets = backend.client = _HeldGets(client)
    try:
        first = asyncio.create_task(backend.update("svc", _failed))
        await gets.sent.wait()  # its write is under way: the old prefix's state is read
        backend.prefix = new_prefix
        second = asyncio.create_task(backend.update("svc", _failed))
        await asyncio.sleep(0.01)  # queued behind the write under way
        gets.release.set()
        (old1, new1), (old2, new2) = await asyncio.gather(first, second)
        # Neither was written when the prefix changed: both go under the new one, which
        # holds no state (closed), as for a backend constructed with it.
        assert (old1, new1.failures) == (ar.CircuitState(), 1)
        assert (old2.failures, new2.failures) == (1, 2)
        assert await backend.get("svc") == new2
        assert await client.get(old_prefix + "svc") == stored.encode()
    finally:
        backend.client = client
        await client.delete(old_prefix + "svc", new_prefix + "svc")
        await backend.close()


# -- RedisDeduplicator: a corrupt lease --------------------------------------------------------


@pytest.mark.parametrize(
    ("holder", "px", "what"),
    [(b"\xff\xfe", 60_000, "not UTF-8"), (b"someone", None, "no expiry")],
)
async def test_a_corrupt_lease_is_a_persistence_error(
    holder: bytes, px: int | None, what: str
) -> None:
    dedup = ar.RedisDeduplicator(
        redis_url(), ttl=5, lease=1, prefix=_prefix("lease"), namespace="n"
    )
    result_key, lease_key = dedup.redis_keys("k")
    await dedup.client.set(lease_key, holder, px=px)
    calls: list[int] = []
    started = time.monotonic()
    try:
        with pytest.raises(ar.PersistenceError, match=f"corrupt lease.*{what}") as caught:
            await asyncio.wait_for(dedup.run("k", lambda: calls.append(1)), 2.5)
        assert caught.value.key == lease_key
        assert calls == []
        assert time.monotonic() - started < 1  # at once, not once the lease would expire
    finally:
        await dedup.client.delete(result_key, lease_key)
        await dedup.close()


# -- Names that are not valid Unicode are refused when given -------------------------------------


def test_a_prefix_or_namespace_that_is_not_valid_unicode_is_refused_when_given() -> None:
    # Taken, every later call failed (no Redis key can hold a lone surrogate).
    url = "redis://127.0.0.1:1/0"  # never connected to: the settings are refused first
    bad = "p\ud800:"
    makers = [
        lambda: ar.RedisRateLimiter(url, 1.0, 1.0, prefix=bad),
        lambda: ar.RedisDeduplicator(url, ttl=5, prefix=bad, namespace="n"),
        lambda: ar.RedisDeduplicator(url, ttl=5, namespace="n\udfff"),
        lambda: ar.RedisCircuitStateBackend(url, prefix=bad),
    ]
    for make in makers:
        with pytest.raises(ar.PersistenceError, match="lone surrogate"):
            make()
    limiter = ar.RedisRateLimiter(url, 1.0, 1.0)
    with pytest.raises(ar.PersistenceError, match="lone surrogate"):
        limiter.prefix = bad
    assert limiter.prefix != bad
