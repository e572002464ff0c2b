"""A batch Redis refuses part of: the error names the refused key and quotes no value."""

from __future__ import annotations

import logging
import traceback
import uuid
from urllib.parse import urlsplit

import pytest

import llm_agent_runtime as ar

from .test_backends import server_address


async def test_a_refused_batch_names_its_key_and_quotes_no_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # redis-py's message quotes the refused command, value included: checkpoint text (a
    # prompt, a tool's output, a key the model saw) ended up in the error and the logs, and
    # the error named the batch's first key, not the refused one. A user whose ACL forbids
    # one key makes the server refuse that command alone, as running out of memory would.
    url = server_address("redis")
    prefix = f"test:{uuid.uuid4().hex}:"
    admin = ar.RedisBackend(url, prefix=prefix)
    store = await _user(admin, url, prefix, f"~{prefix}ok:*", "+@all")
    try:
        items = {"ok:a": b"first", "no:b": b"sk-SECRET-value", "ok:c": b"third"}
        with pytest.raises(ar.PersistenceError) as raised:
            await store.batch_save(items)
        error = raised.value
        assert error.key == "no:b"
        assert "SECRET" not in str(error) and "first" not in str(error)
        assert "no permissions" in str(error)
        # Nor through its cause: chained to redis-py's error, a printed traceback and
        # `logger.exception` showed the value all the same.
        shown = "".join(traceback.format_exception(error))
        assert "SECRET" not in shown and "first" not in shown and "no permissions" in shown
        with caplog.at_level(logging.ERROR):
            logging.getLogger("test_redis_refusals").error("failed", exc_info=error)
        assert "SECRET" not in caplog.text and "no permissions" in caplog.text
        assert await admin.batch_load(list(items)) == {}  # all or none
    finally:
        await _drop(admin, store)


async def _user(admin: ar.RedisBackend, url: str, prefix: str, *rules: str) -> ar.RedisBackend:
    """A backend of `prefix` logged in as a new user of ACL `rules` (deleted by `_drop`)."""
    user = f"user_{uuid.uuid4().hex}"
    await admin.client.execute_command("ACL", "SETUSER", user, "on", ">pw", *rules)
    address = urlsplit(url)
    login = f"redis://{user}:pw@{address.hostname}:{address.port}{address.path}"
    store = ar.RedisBackend(login, prefix=prefix)
    store.user = user  # type: ignore[attr-defined]
    return store


async def _drop(admin: ar.RedisBackend, *stores: ar.RedisBackend) -> None:
    for store in stores:
        await admin.client.execute_command("ACL", "DELUSER", store.user)  # type: ignore[attr-defined]
        await store.close()
    keys = [k async for k in admin.client.scan_iter(match=f"{admin.prefix}*")]
    if keys:
        await admin.client.delete(*keys)
    await admin.close()


async def test_a_user_allowed_only_the_prefix_writes_and_lists_its_keys() -> None:
    # The key index lived outside the prefix: an ACL scoping an application to its prefix
    # (how one database is shared) refused every write and listing.
    url = server_address("redis")
    prefix = f"test:{uuid.uuid4().hex}:"
    admin = ar.RedisBackend(url, prefix=prefix)
    store = await _user(admin, url, prefix, f"~{prefix}*", "+@all")
    try:
        await store.save("session:a", b"1")
        assert await store.save_new("session:b", b"2")
        await store.batch_save({"session:c": b"3"})
        assert await store.batch_save_if("session:a", b"1", {"session:d": b"4"})
        assert await store.delete("session:b")
        assert await store.batch_delete_if("session:a", b"1", ["session:c"])
        assert await store.list_keys("session:") == ["session:a", "session:d"]
    finally:
        await _drop(admin, store)


@pytest.mark.parametrize("name", ["", "agentes-é-エージェント:"])
async def test_a_read_only_user_lists_keys_stored_before_the_index_by_a_scan(name: str) -> None:
    # Indexing the earlier keys (a write) at the first listing made a read failing for a
    # read-only user or replica. A prefix of non-ASCII text cut its keys short by a
    # character per extra byte: none was indexed, and a reader listed the stubs.
    url = server_address("redis")
    prefix = f"test:{uuid.uuid4().hex}:{name}"
    admin = ar.RedisBackend(url, prefix=prefix)
    await admin.client.set(prefix + "session:old", b"0")  # as an earlier version stored it
    reader = await _user(admin, url, prefix, f"~{prefix}*", "+@read", "+scan")
    try:
        assert await reader.list_keys() == ["session:old"]
        assert await reader.list_keys("session:o") == ["session:old"]
        assert await admin.list_keys() == ["session:old"]  # a writer indexes them
        await admin.save("session:new", b"1")
        assert await reader.list_keys() == ["session:new", "session:old"]  # from the index
    finally:
        await _drop(admin, reader)
