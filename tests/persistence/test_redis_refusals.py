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
    user = f"writer_{uuid.uuid4().hex}"
    await admin.client.execute_command(
        "ACL", "SETUSER", user, "on", ">pw", f"~{prefix}ok:*", "+@all"
    )
    address = urlsplit(url)
    store = ar.RedisBackend(
        f"redis://{user}:pw@{address.hostname}:{address.port}{address.path}", prefix=prefix
    )
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
        await admin.client.execute_command("ACL", "DELUSER", user)
        await store.close()
        await admin.close()
