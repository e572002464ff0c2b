"""A PostgreSQL connection string's password shows in no error and no log record, however the
string is mistyped (an '@' or '%' in the password left unescaped)."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest

import llm_agent_runtime as ar

SECRET = "Wq9zTr4mB2"


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "dsn",
    [
        # An unescaped '@': libpq splits at the first one, reading the rest as the host.
        f"postgresql://app:Kx7@{SECRET}@127.0.0.1:{{port}}/db",
        # A bad percent escape: libpq's message quotes the token, password and all.
        f"postgresql://app:{SECRET}%zz@127.0.0.1:{{port}}/db",
        f"host=127.0.0.1 port={{port}} user=app password='{SECRET}' dbname=db",
    ],
)
async def test_a_failed_open_shows_no_password(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = dsn.format(port=_closed_port())
    with pytest.raises(ar.PersistenceError) as caught:
        store = ar.PostgresBackend(dsn, table=f"kv_{uuid.uuid4().hex}", timeout=0.5)
        try:
            await store.open()
        finally:
            await store.close()
    shown = [str(caught.value), repr(caught.value), *(r.getMessage() for r in caplog.records)]
    assert not [text for text in shown if SECRET in text], shown
