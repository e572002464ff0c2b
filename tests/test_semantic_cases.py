"""Semantic memory and embedders given the wrong kind of argument: keys that are no strings,
async embedders and clients, texts that are no iterable."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

import llm_agent_runtime as ar

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


# --- vectors too small for float32 ------------------------------------------------------------


def _cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("scale", [1e-44, 1e-50, 1e-300])
def test_a_float64_vector_below_float32s_range_keeps_its_direction(scale: float) -> None:
    # Cosine similarity is blind to length, but the cast to float32 kept a few digits of
    # such a vector (1e-44: a score 4e-3 off) or made it zero (refused as "the zero vector").
    stored, query = [3.0, 4.0, 0.0], [1.0, 1.7, 2.3]
    store = ar.SemanticStore(dim=3)
    store.store("a", "a", embedding=stored)
    store.store("tiny", "tiny", embedding=np.array(query) * scale)
    (hit,) = store.search(np.array(query) * scale, 1)
    assert hit.key == "tiny" and hit.score == pytest.approx(1.0, abs=1e-6)
    scores = {h.key: h.score for h in store.search(np.array(query) * scale, 2)}
    assert scores["a"] == pytest.approx(_cosine(stored, query), abs=1e-6)


def test_an_embedders_row_below_float32s_range_keeps_its_direction() -> None:
    class Tiny:
        dim = 2

        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
            return np.array([[1e-50 if text == "x" else 0.0, 1e-50] for text in texts])

    store = ar.SemanticStore(embedder=Tiny())
    store.store("x", "x")
    store.store("y", "y")
    scores = {h.key: h.score for h in store.search("x", 2)}
    assert scores == {"x": pytest.approx(1.0, abs=1e-6), "y": pytest.approx(0.5**0.5, abs=1e-6)}


def test_a_float64_zero_or_nan_vector_is_still_refused() -> None:
    store = ar.SemanticStore(dim=2)
    with pytest.raises(ar.MemoryStoreError, match="zero vector"):
        store.search(np.zeros(2), 1)
    with pytest.raises(ar.MemoryStoreError, match="NaN or infinite"):
        store.store("k", "v", embedding=[1e-50, float("nan")])


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int64, np.uint8])
def test_a_list_of_numpy_scalars_is_a_vector_and_a_bool_among_them_is_refused(
    dtype: Any,
) -> None:
    # `list(array)` holds numpy scalars: each was checked one by one (3 ms a vector).
    store = ar.SemanticStore(dim=3)
    store.store("k", "v", embedding=list(np.array([1, 2, 3], dtype=dtype)))
    (hit,) = store.search([1.0, 2.0, 3.0], 1)
    assert hit.key == "k" and hit.score == pytest.approx(1.0, abs=1e-6)
    mixed = [*np.array([1, 2], dtype=dtype), np.bool_(True)]
    with pytest.raises(ar.MemoryStoreError, match="bool"):
        store.store("b", "v", embedding=mixed)
