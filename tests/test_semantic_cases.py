"""Semantic memory and embedders given the wrong kind of argument: keys that are no strings,
async embedders and clients, texts that are no iterable."""

from __future__ import annotations

import gc
import json
import threading
import warnings
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

import llm_agent_runtime as ar


@pytest.fixture
def embeddings_url() -> Iterator[tuple[list[dict[str, Any]], str]]:
    """A loopback server speaking OpenAI's embeddings wire format: row i is [len(text), 1]."""
    requests: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            data = [
                {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0]}
                for i, t in enumerate(body["input"])
            ]
            payload = json.dumps({"object": "list", "data": data}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield requests, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


# --- keys that are no strings -----------------------------------------------------------------


@pytest.mark.parametrize("key", [["k"], {"k": 1}, None, 5, b"k"])
def test_looking_up_a_key_that_is_no_string_is_a_store_error(key: Any) -> None:
    # A list or dict escaped as a bare TypeError ("unhashable type"); None or 5 found nothing
    # silently, while `store` refuses the same keys with MemoryStoreError.
    store = ar.SemanticStore()
    store.store("k", "value")
    for lookup in (store.get, store.get_entry, store.delete):
        with pytest.raises(ar.MemoryStoreError, match="key must be a string"):
            lookup(key)
    assert key not in store  # `in` answers for any object
    assert store.get("k") == "value" and len(store) == 1


# --- async embedders --------------------------------------------------------------------------


class _AsyncEmbedder:
    dim = 4

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.ones((len(texts), 4), dtype=np.float32)


class _ReturnsAwaitable:
    """An embedder whose sync `embed` hands back a coroutine (a wrapped async function)."""

    def __init__(self) -> None:
        self.inner = _AsyncEmbedder()

    def embed(self, texts: Sequence[str]) -> Any:
        return self.inner.embed(texts)


def test_an_async_embedder_is_refused_when_the_store_is_made() -> None:
    # It was accepted, and each store or search failed with "float() argument must be ... not
    # 'coroutine'" and a "coroutine was never awaited" warning.
    with pytest.raises(ar.MemoryStoreError, match="embed is async"):
        ar.SemanticStore(_AsyncEmbedder())


def test_an_embedder_returning_an_awaitable_is_a_clear_store_error_and_no_warning() -> None:
    store = ar.SemanticStore(_ReturnsAwaitable())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ar.MemoryStoreError, match="embed is async"):
            store.store("k", "hello")
        with pytest.raises(ar.MemoryStoreError, match="embed is async"):
            store.search("hello")
        gc.collect()  # a coroutine dropped unawaited warns as it is collected
    assert "k" not in store and len(store) == 0


# --- OpenAIEmbedder's client ------------------------------------------------------------------


@pytest.mark.parametrize("make", [httpx.AsyncClient, lambda: "http://127.0.0.1:9"])
def test_openai_embedder_refuses_a_client_that_is_no_sync_httpx_client(make: Any) -> None:
    # An AsyncClient (what the chat providers take) was accepted, then every embed failed
    # with a bare TypeError about the context manager protocol.
    client = make()
    with pytest.raises(ar.MemoryStoreError, match=r"client must be an httpx\.Client"):
        ar.OpenAIEmbedder(base_url="http://127.0.0.1:9/v1", client=client)


def test_openai_embedder_uses_a_given_sync_client_and_leaves_it_open(
    embeddings_url: tuple[list[dict[str, Any]], str],
) -> None:
    requests, url = embeddings_url
    with httpx.Client() as client:
        embedder = ar.OpenAIEmbedder(base_url=url, client=client, batch_size=2)
        store = ar.SemanticStore(embedder)
        store.store("a", "ab")
        store.store("b", "abcd")
        rows = embedder.embed(["x", "", "xyz"])
        assert not client.is_closed
    np.testing.assert_array_equal(rows, [[1, 1], [0, 0], [3, 1]])
    assert [r["input"] for r in requests] == [["ab"], ["abcd"], ["x", "xyz"]]
    assert [h.key for h in store.search([4.0, 1.0], k=1)] == ["b"]


# --- fit_to_token_budget ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (None, "got NoneType"),
        (5, "got int"),
        (b"abc", "got one bytes"),
        (bytearray(b"abc"), "got one bytearray"),
    ],
)
def test_fit_to_token_budget_refuses_texts_that_are_no_iterable_of_str(
    texts: Any, message: str
) -> None:
    # None and 5 escaped as a bare TypeError ("object is not iterable"); bytes was read a
    # byte a text and refused as "int at index 0".
    with pytest.raises(ValueError, match=message):
        ar.fit_to_token_budget(texts, 5)


def test_fit_to_token_budget_passes_on_what_the_texts_iterator_raises() -> None:
    def texts() -> Iterator[str]:
        yield "a"
        raise TypeError("from the generator")

    with pytest.raises(TypeError, match="from the generator"):
        ar.fit_to_token_budget(texts(), 5)
