"""Errors that leave a secret out of their message keep no exception that quotes it.

`raise ... from None` only hides the exception being handled from tracebacks: it stays the
new error's `__context__`, where any code holding the error (an error reporter, a test, a
debugger) reads it, with what it keeps beyond its message (a decode error's whole `doc`, an
encode error's `object`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from providers.test_hardening import shown

import llm_agent_runtime as ar
from llm_agent_runtime.providers._http import decode_arguments

SECRET = "s3cret-0123456789"


@pytest.fixture
def echoing_server() -> Iterator[str]:
    """A server answering status 200 with text that is not JSON, echoing the key it got."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = f"upstream said: {self.headers['Authorization']}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_embeddings_reply_echoing_the_key_is_not_kept(echoing_server: str) -> None:
    embedder = ar.OpenAIEmbedder(api_key=f"sk-{SECRET}", base_url=echoing_server)
    with pytest.raises(ar.ProviderError, match="not JSON") as caught:
        embedder.embed(["x"])
    assert SECRET not in shown(caught.value)


def test_tool_arguments_echoing_the_key_are_not_kept() -> None:
    for text in (f'{{"a": "{SECRET}"', f'{{"a": 1e999, "b": "{SECRET}"}}', "[" * 100_000):
        with pytest.raises(ar.ProviderError) as caught:
            decode_arguments(text, name="search", redact=lambda t: t.replace(SECRET, "***"))
        assert caught.value.__context__ is None
        assert SECRET not in shown(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{SECRET}\ud800@127.0.0.1:1/v1",  # a lone surrogate, as from the environment
        f"http://user:{SECRET}@api..example.com/v1",  # an empty DNS label
    ],
)
def test_a_bad_base_url_holding_a_password_is_not_kept(url: str) -> None:
    with pytest.raises(ar.ProviderError, match="base URL") as caught:
        ar.OpenAIProvider(base_url=url)
    assert SECRET not in shown(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}/rest@127.0.0.1:6379/0",  # an unescaped '/' in the password
        f"redis://:{SECRET}@127.0.0.1:6379/0?socket_timeout=soon",
    ],
)
def test_a_bad_redis_url_holding_a_password_is_not_kept(url: str) -> None:
    with pytest.raises(ar.PersistenceError, match="not a usable Redis URL") as caught:
        ar.RedisBackend(url)
    assert SECRET not in shown(caught.value)


def test_a_bad_postgres_dsn_holding_a_password_is_not_kept() -> None:
    # An unquoted space in a key=value password: psycopg's message quotes what follows it.
    with pytest.raises(ar.PersistenceError, match="refuses the connection string") as caught:
        ar.PostgresBackend(f"host=127.0.0.1 user=u password=x {SECRET} dbname=db")
    assert SECRET not in shown(caught.value)
