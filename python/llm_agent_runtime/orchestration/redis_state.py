"""Breaker state in Redis, so many worker processes (and machines) share one breaker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.orchestration.circuit_breaker import CLOSED, CircuitState

__all__ = ["RedisCircuitStateBackend"]


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
        try:
            from redis.asyncio import Redis
        except ImportError as error:
            raise PersistenceError(
                "RedisCircuitStateBackend needs redis-py: pip install 'llm-agent-runtime[redis]'"
            ) from error
        self.prefix = prefix
        self.client: Any = Redis.from_url(url)

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
