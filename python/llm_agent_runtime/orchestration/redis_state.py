"""Orchestration state in Redis: one breaker, rate limit and single flight for all workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

from llm_agent_runtime._redis import redis_client
from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.orchestration._calls import call_maybe_async
from llm_agent_runtime.orchestration.circuit_breaker import CLOSED, CircuitState

__all__ = ["RedisCircuitStateBackend", "RedisDeduplicator", "RedisRateLimiter"]


class RedisCircuitStateBackend:
    """A `CircuitStateBackend` in Redis: every process using it shares each breaker's state.

    `update` is an optimistic transaction (WATCH, read, MULTI/SET/EXEC, retried when another
    process changed the state in between), so failures counted by every process add up. Give
    the breakers a clock that all processes share (the default monotonic clock is shared by
    the processes of one machine; across machines use wall-clock time).

    Args:
        url: e.g. `redis://host:6379/0`.
        prefix: Prepended to each service name to form its key.

    Raises:
        PersistenceError: When redis-py is not installed (the `redis` extra).
    """

    def __init__(self, url: str, prefix: str = "llm_agent_runtime:breaker:") -> None:
        self.prefix = prefix
        self.client: Any = redis_client(url, "RedisCircuitStateBackend")

    def __repr__(self) -> str:
        return f"RedisCircuitStateBackend(prefix={self.prefix!r})"

    async def close(self) -> None:
        """Closes the connection pool."""
        await self.client.aclose()

    async def get(self, service: str) -> CircuitState:
        """Returns the state of `service` (closed when never seen)."""
        try:
            return _decode(await self.client.get(self.prefix + service))
        except PersistenceError:
            raise
        except Exception as error:
            raise PersistenceError(f"Redis: {error}", key=self.prefix + service) from error

    async def update(
        self, service: str, change: Callable[[CircuitState], CircuitState]
    ) -> tuple[CircuitState, CircuitState]:
        """Applies `change` atomically to the shared state; returns (old, new)."""
        from redis.exceptions import WatchError

        key = self.prefix + service
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        old = _decode(await pipe.get(key))
                        new = change(old)
                        if new == old:
                            await pipe.unwatch()
                            return old, old
                        pipe.multi()
                        pipe.set(key, json.dumps(list(new)))
                        await pipe.execute()
                        return old, new
                    except WatchError:
                        continue  # another process changed it first: recompute
        except PersistenceError:
            raise
        except Exception as error:
            raise PersistenceError(f"Redis: {error}", key=key) from error


def _decode(raw: bytes | None) -> CircuitState:
    if raw is None:
        return CLOSED
    try:
        status, failures, opened_at, trial_calls = json.loads(raw)
        return CircuitState(status, int(failures), float(opened_at), int(trial_calls))
    except (ValueError, TypeError) as error:
        raise PersistenceError(f"corrupt breaker state: {error}") from error


# Token bucket, atomically in Redis, on the server's clock (shared by every worker).
# KEYS[1] bucket; ARGV: rate, capacity, tokens, mode (0 = take or refuse, 1 = reserve,
# 2 = refund). Returns {granted (0/1), wait seconds as a string}.
# A missing key reads as a full bucket, so the key lives until its bucket has refilled from
# the level it is left at, debt included (plus a minute; at most ~31 years).
_BUCKET_SCRIPT = """
local rate, capacity, tokens, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
    tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'level', 'last')
local level = tonumber(state[1]) or capacity
local last = tonumber(state[2]) or now
level = math.min(capacity, level + (now - last) * rate)
local granted, wait = 0, 0
if mode == 2 then
  level = math.min(capacity, level + tokens)
elseif mode == 1 then
  level = level - tokens
  granted = 1
  if level < 0 then wait = -level / rate end
elseif level >= tokens then
  level = level - tokens
  granted = 1
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'last', tostring(now))
redis.call('EXPIRE', KEYS[1], math.min(math.ceil((capacity - level) / rate) + 60, 1000000000))
return {granted, tostring(wait)}
"""


class RedisRateLimiter:
    """A token bucket per key shared by every process that uses the same Redis.

    The same semantics as `RateLimiter` (capacity, refill rate, waiters served in arrival
    order, a cancelled waiter's tokens given back), made atomic by a Lua script running on the
    Redis server's clock, so workers on many machines draw from one bucket.

    Args:
        url: e.g. `redis://host:6379/0`.
        rate: Tokens added per second.
        capacity: Bucket size (the largest burst); a new key starts full.
        prefix: Prepended to each key.

    Raises:
        ValueError: `rate` or `capacity` is not positive, or is NaN or infinite.
        PersistenceError: When redis-py is not installed (the `redis` extra).
    """

    def __init__(
        self,
        url: str,
        rate: float,
        capacity: float,
        prefix: str = "llm_agent_runtime:bucket:",
    ) -> None:
        # Written so that NaN fails the check (each comparison with NaN is false).
        if not (0 < rate < math.inf and 0 < capacity < math.inf):
            raise ValueError(f"rate and capacity must be finite and > 0, got {rate} and {capacity}")
        self.rate = rate
        self.capacity = capacity
        self.prefix = prefix
        self.client: Any = redis_client(url, "RedisRateLimiter")
        self._script = self.client.register_script(_BUCKET_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisRateLimiter(rate={self.rate}, capacity={self.capacity})"

    async def close(self) -> None:
        """Closes the connection pool."""
        await self.client.aclose()

    async def _run(self, key: str, tokens: float, mode: int) -> tuple[bool, float]:
        if not 0 < tokens <= self.capacity:  # NaN fails too
            raise ValueError(f"tokens must be in (0, {self.capacity}], got {tokens}")
        try:
            granted, wait = await self._script(
                keys=[self.prefix + key], args=[self.rate, self.capacity, tokens, mode]
            )
        except Exception as error:
            raise PersistenceError(f"Redis: {error}", key=self.prefix + key) from error
        return bool(granted), float(wait)

    async def try_acquire(self, key: str = "default", tokens: float = 1.0) -> bool:
        """Takes `tokens` from `key`'s shared bucket if it has them; returns whether it did.

        Raises:
            ValueError: `tokens` is not in (0, capacity].
        """
        granted, _ = await self._run(key, tokens, 0)
        return granted

    async def acquire(self, key: str = "default", tokens: float = 1.0) -> None:
        """Takes `tokens`, waiting (in arrival order across all workers) until refilled.

        Raises:
            ValueError: `tokens` is not in (0, capacity].
        """
        _, wait = await self._run(key, tokens, 1)
        if wait <= 0:
            return
        try:
            await asyncio.sleep(wait)
        except BaseException:
            await asyncio.shield(self._run(key, tokens, 2))  # give the reservation back
            raise


# Single flight. KEYS: result, lease. ARGV: lease token, lease ms. Returns {1, result} when a
# result is published, {2} when the caller took the lease (it runs the call), else {0}.
_CLAIM_SCRIPT = """
local result = redis.call('GET', KEYS[1])
if result then return {1, result} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
"""

# KEYS: result, lease. ARGV: lease token, result ('' = failed: publish nothing), ttl ms.
_FINISH_SCRIPT = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


class RedisDeduplicator:
    """Single flight across processes: concurrent requests for one key run once.

    The first caller of a key takes a lease, runs the call and publishes its result (as JSON)
    for `ttl` seconds; the other callers, in any process, wait for that result instead of
    running the call again. A failure is not shared: the next caller runs the call. If the
    runner dies, its lease expires after `lease` seconds and a waiter takes over.

    Every caller, the one that ran the call included, gets the JSON round trip of the result:
    tuples come back as lists and dict keys as strings (`{1: (1, 2)}` is `{"1": [1, 2]}`), so
    the value does not depend on which caller ran it.

    Args:
        url: e.g. `redis://host:6379/0`.
        ttl: Seconds a result is served (at least 1 ms: Redis keeps it in milliseconds).
        lease: Seconds a runner holds a key before another caller may take over (at least
            1 ms).
        poll_interval: Seconds between a waiter's checks.
        prefix: Prepended to each key.

    Raises:
        ValueError: When `ttl` or `lease` is below 1 ms, `poll_interval` is not positive, or
            any of them is NaN or infinite.
        PersistenceError: When redis-py is not installed (the `redis` extra).
    """

    def __init__(
        self,
        url: str,
        ttl: float,
        lease: float = 30.0,
        poll_interval: float = 0.01,
        prefix: str = "llm_agent_runtime:dedup:",
    ) -> None:
        # Written so that NaN fails every check (each comparison with NaN is false).
        for name, value in (("ttl", ttl), ("lease", lease)):
            if not 0.001 <= value < math.inf:
                raise ValueError(f"{name} must be finite and at least 0.001 s (1 ms), got {value}")
        if not 0 < poll_interval < math.inf:
            raise ValueError(f"poll_interval must be finite and > 0, got {poll_interval}")
        self.ttl = ttl
        self.lease = lease
        self.poll_interval = poll_interval
        self.prefix = prefix
        self._ttl_ms = int(ttl * 1000)
        self._lease_ms = int(lease * 1000)
        self.client: Any = redis_client(url, "RedisDeduplicator")
        self._claim = self.client.register_script(_CLAIM_SCRIPT)
        self._finish = self.client.register_script(_FINISH_SCRIPT)
        self.executions = 0
        """Calls this process actually ran."""

    def __repr__(self) -> str:
        return f"RedisDeduplicator(ttl={self.ttl}, lease={self.lease})"

    async def close(self) -> None:
        """Closes the connection pool."""
        await self.client.aclose()

    async def run(self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Returns `fn(*args, **kwargs)` (sync or async), run once for all callers of `key`.

        Returns:
            The JSON round trip of the result (the same value for every caller).

        Raises:
            PersistenceError: When Redis fails, or the result is not JSON-serializable (an
                error `fn` itself raises propagates as it is).
        """
        keys = [f"{self.prefix}{key}:result", f"{self.prefix}{key}:lease"]
        token = uuid.uuid4().hex
        try:
            while True:
                claim = await self._claim(keys=keys, args=[token, self._lease_ms])
                if claim[0] == 1:
                    return json.loads(claim[1])
                if claim[0] == 2:
                    break
                await asyncio.sleep(self.poll_interval)
        except PersistenceError:
            raise
        except Exception as error:
            raise PersistenceError(f"Redis: {error}", key=keys[0]) from error
        # This caller holds the lease: whatever happens from here, it gives the lease back.
        self.executions += 1
        try:
            value = await call_maybe_async(fn, *args, **kwargs)
        except BaseException:
            await self._release(keys, token)
            raise
        try:
            encoded = json.dumps(value)
        except (TypeError, ValueError) as error:
            await self._release(keys, token)
            raise PersistenceError(
                f"a shared result must be JSON-serializable: {error}", key=keys[0]
            ) from error
        try:
            await self._finish(keys=keys, args=[token, encoded, self._ttl_ms])
        except BaseException as error:
            await self._release(keys, token)
            if isinstance(error, Exception):
                raise PersistenceError(f"Redis: {error}", key=keys[0]) from error
            raise
        return json.loads(encoded)

    async def _release(self, keys: list[str], token: str) -> None:
        """Gives the lease back (if still held) without publishing a result.

        Runs to completion even if the caller is cancelled. A Redis failure here is not
        raised: the caller's own error matters more, and the lease expires anyway.
        """
        with contextlib.suppress(Exception):
            await asyncio.shield(self._finish(keys=keys, args=[token, "", 0]))
