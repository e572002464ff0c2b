"""Cases of the Redis-backed state: persistence, breaker, limiter and single flight."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from test_redis_state import redis_url

import llm_agent_runtime as ar


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    """The URL of a Redis server of this module's own, free to keep busy."""
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="llm-agent-runtime-redis-sweep-")
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the private redis-server did not start")
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


# Keeps the server busy (it serves no other client meanwhile) for ARGV[1] seconds.
_BUSY = """
local t = redis.call('TIME')
local stop = t[1] * 1e6 + t[2] + ARGV[1] * 1e6
repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] >= stop
return 1
"""


def _with(path: str, query: str = "") -> str:
    """The test server's URL with another path (its database) and query."""
    parts = urlsplit(redis_url())
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


_MAKERS: list[Callable[[str], Any]] = [
    lambda url: ar.RedisBackend(url),
    lambda url: ar.RedisCircuitStateBackend(url),
    lambda url: ar.RedisRateLimiter(url, rate=1, capacity=1),
    lambda url: ar.RedisDeduplicator(url, ttl=1, namespace="n"),
]


@pytest.mark.parametrize("path", ["/db1", "/l", "/1/2", "/0x1", "/one"])
@pytest.mark.parametrize("make", _MAKERS)
def test_a_redis_url_whose_database_is_no_number_is_refused(
    path: str, make: Callable[[str], Any]
) -> None:
    # redis-py ignores a path it cannot read as a number (and drops the slashes of one it
    # can): `/db1` or a mistyped `/l` used database 0, `/1/2` database 12, so the state
    # silently went to, and mixed with, another application's database.
    with pytest.raises(ar.PersistenceError, match="database"):
        make(_with(path))


@pytest.mark.parametrize("path", ["", "/", "/0", "/3", "/15/"])
async def test_a_redis_url_with_a_database_number_or_none_is_used(path: str) -> None:
    prefix = f"sweep:{uuid.uuid4().hex}:"
    backend = ar.RedisBackend(_with(path), prefix=prefix)
    try:
        await backend.save("k", b"v")
        assert await backend.load("k") == b"v"
        assert await backend.delete("k")
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("query", "named"), [("sokcet_timeout=1", "sokcet_timeout"), ("protocol=4", "protocol")]
)
@pytest.mark.parametrize("make", _MAKERS)
def test_a_redis_url_with_an_option_redis_py_cannot_use_is_refused_at_once(
    make: Callable[[str], Any], query: str, named: str
) -> None:
    # A mistyped option was taken, and every call then failed with redis-py's TypeError
    # ("unexpected keyword argument 'sokcet_timeout'"), the backend built without error;
    # so did a protocol redis-py has not got.
    with pytest.raises(ar.PersistenceError, match=named):
        make(_with("/0", query))


def test_an_unknown_option_is_named_even_in_a_url_with_a_password() -> None:
    parts = urlsplit(redis_url())
    url = urlunsplit(("redis", f":s3cret@{parts.netloc}", "/0", "sokcet_timeout=1", ""))
    with pytest.raises(ar.PersistenceError, match="sokcet_timeout") as caught:
        ar.RedisBackend(url)
    assert "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is None


async def test_a_claim_whose_reply_timed_out_gives_back_the_lease_it_took(
    private_redis: str,
) -> None:
    # The server busy past the socket timeout: the claim fails its caller, then runs once
    # the server is free, and takes the lease for a run that never comes. Every caller of
    # the key, in every process, then waited out the whole lease (30 s here) for it.
    hurried = ar.RedisDeduplicator(
        private_redis + "?socket_timeout=0.3", ttl=5, lease=30, namespace="n"
    )
    other = ar.RedisDeduplicator(private_redis, ttl=5, lease=30, namespace="n")
    assert await hurried.run("warm", lambda: 1) == 1  # a connection open: the claim is sent
    busy = asyncio.ensure_future(other.client.eval(_BUSY, 0, 1.0))
    await asyncio.sleep(0.2)  # the server is in the script
    ran: list[str] = []
    with pytest.raises(ar.PersistenceError, match="Timeout"):
        await hurried.run("k", ran.append, "hurried")
    await busy
    assert await asyncio.wait_for(other.run("k", lambda: "other"), 5) == "other"
    assert ran == []
    await hurried.close()
    await other.close()


@pytest.mark.parametrize("key", [1, None, b"k"])
async def test_a_limiter_key_that_is_no_str_is_a_clear_type_error(key: Any) -> None:
    # As the breaker's service and the deduplicator's key: it failed with Python's own
    # "can only concatenate str (not "int") to str", naming nothing the caller passed.
    limiter = ar.RedisRateLimiter(redis_url(), rate=1, capacity=1, prefix="sweep:never:")
    with pytest.raises(TypeError, match="key must be a str"):
        limiter.redis_key(key)
    with pytest.raises(TypeError, match="key must be a str"):
        await limiter.try_acquire(key)
    with pytest.raises(TypeError, match="key must be a str"):
        await limiter.acquire(key)
    assert await limiter.client.exists("sweep:never:1.0/1.0:1") == 0
    await limiter.close()


async def test_a_server_out_of_memory_still_deletes_keys(private_redis: str) -> None:
    # A delete and its index update ran as one MULTI/EXEC, whose commands Redis refuses
    # over maxmemory: a full server (noeviction, as checkpoints need) could not be emptied.
    store = ar.RedisBackend(private_redis, prefix="full:")
    try:
        for n in range(10):
            await store.save(f"k{n}", bytes(100_000))
        used = (await store.client.info("memory"))["used_memory"]
        await store.client.config_set("maxmemory", used - 500_000)  # over it now
        with pytest.raises(ar.PersistenceError, match="maxmemory"):
            await store.save("k10", bytes(100_000))
        assert await store.delete("k0")
        assert "k0" not in await store.list_keys()
    finally:
        await store.client.config_set("maxmemory", 0)
        await store.client.flushdb()
        await store.close()
