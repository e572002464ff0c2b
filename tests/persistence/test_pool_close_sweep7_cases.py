"""A PostgreSQL backend closed at once after it opened closes its pool."""

import asyncio
import uuid

import psycopg
import pytest

import llm_agent_runtime as ar

from .test_backends import _drop_table, server_address


async def _sessions_named(dsn: str, name: str) -> int:
    """The server's sessions of `application_name` `name`, once those closing have gone.

    A session the client closed leaves `pg_stat_activity` a moment later (its server process
    ends after reading the client's goodbye): one still listed after 10 s was left open.
    """
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(100):
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            )
            row = await cursor.fetchone()
            assert row is not None
            if row[0] == 0:
                break
            await asyncio.sleep(0.1)
        return int(row[0])


def _named_dsn(prefix: str) -> tuple[str, str, str]:
    """The test server's DSN, a fresh application_name starting with `prefix`, and the DSN
    whose connections carry that name (so `_sessions_named` counts them alone)."""
    base = server_address("postgres")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    return base, name, f"{base}{'&' if '?' in base else '?'}application_name={name}"


@pytest.mark.timeout(60)
def test_a_backend_closed_right_after_it_opened_closes_its_pool() -> None:
    # The pool was closed by a task made as it opened; `close` cancelled that task before its
    # first step, so its cleanup never ran: the pool's workers went on and its connection
    # stayed open on the server until the process ended. A loop ending then could hang on a
    # worker cancelled mid-connect (psycopg_pool's workers swallow that cancellation).
    base, name, dsn = _named_dsn("close_test")
    table = f"kv_{uuid.uuid4().hex}"

    async def open_and_close() -> list[str]:
        store = ar.PostgresBackend(dsn, table=table)
        await store.open()
        await store.close()
        me = asyncio.current_task()
        return sorted(task.get_name() for task in asyncio.all_tasks() if task is not me)

    try:
        for _ in range(3):
            assert asyncio.run(open_and_close()) == []  # no pool worker left running
        assert asyncio.run(_sessions_named(base, name)) == 0  # no connection left open
    finally:
        asyncio.run(_drop_table(base, table))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("min_size", [0, 1, 2])
def test_a_backend_opens_min_size_connections_and_no_more(min_size: int) -> None:
    # Its first call waited for the pool's first connection as a client: a client waiting
    # made the pool grow by one, so min_size=1 opened two connections (each process, each
    # event loop), and min_size=0 one that it kept.
    base, name, dsn = _named_dsn("size_test")
    table = f"kv_{uuid.uuid4().hex}"

    async def first_calls() -> int:
        store = ar.PostgresBackend(dsn, table=table, min_size=min_size)
        try:
            await store.save("k", b"v")
            assert await store.load("k") == b"v"
            await asyncio.sleep(0.5)  # a connection the pool grew by would be made meanwhile
            return await _open_sessions_named(base, name)
        finally:
            await store.close()

    try:
        assert asyncio.run(first_calls()) == max(min_size, 1)
    finally:
        asyncio.run(_drop_table(base, table))


async def _open_sessions_named(dsn: str, name: str) -> int:
    """The server's sessions of `application_name` `name` now."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])
