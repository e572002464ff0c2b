"""Failure paths of the server backends (PostgreSQL, Redis) and the Redis orchestration state."""

import asyncio
import uuid

import pytest

import llm_agent_runtime as ar

from .test_backends import _drop_table, server_address


@pytest.mark.timeout(20)
def test_a_postgres_call_made_as_its_loop_ends_fails_instead_of_spinning_forever() -> None:
    # The loop's pool, closed as the loop ends (`shutdown_asyncgens`, which asyncio.run calls
    # and during which another async generator's cleanup may still write), stayed the loop's:
    # the call looped on it without ever yielding, hanging the loop.
    dsn = server_address("postgres")
    table = f"kv_{uuid.uuid4().hex}"
    store = ar.PostgresBackend(dsn, table=table, timeout=3.0)

    async def ending() -> None:
        await store.save("k", b"v")
        await asyncio.get_running_loop().shutdown_asyncgens()  # as asyncio.run ends a loop
        with pytest.raises(ar.PersistenceError, match="closed as the loop ends"):
            await store.load("k")

    try:
        asyncio.run(ending())
        assert asyncio.run(store.load("k")) == b"v"  # the next loop opens a pool of its own
    finally:
        asyncio.run(_drop_table(dsn, table))
