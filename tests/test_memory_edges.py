"""The memory layer given awkward input: token budgets, vectors that are not numbers,
embedders given no texts, graphs passed the wrong way round; and search against numpy."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.graph import from_networkx, to_networkx
from llm_agent_runtime.memory import CHARS_PER_TOKEN

# --- fit_to_token_budget ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "shown"),
    [
        # A list was costed by its len() (one item: 1 token) and kept in the prompt's texts.
        ([["x" * 400], "ok"], "list at index 0"),
        # bytes were costed by their length and kept, though a prompt holds text.
        (["ok", b"y" * 8], "bytes at index 1"),
        # None and a number escaped as a bare TypeError from len().
        (["ok", None], "NoneType at index 1"),
        ([3], "int at index 0"),
        # Checked wherever it stands: not only before the budget runs out.
        (["a" * 40, "b", 7], "int at index 2"),
    ],
)
def test_fit_to_token_budget_refuses_an_item_that_is_not_a_str(
    texts: list[Any], shown: str
) -> None:
    with pytest.raises(ValueError, match=f"texts must hold only str, got {shown}"):
        ar.fit_to_token_budget(texts, 5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=12), st.integers(0, 40))
def test_fit_to_token_budget_matches_a_greedy_reference(texts: list[str], budget: int) -> None:
    kept, used = [], 0
    for text in texts:
        cost = max(1, -(-len(text) // CHARS_PER_TOKEN))
        if used + cost <= budget:
            kept.append(text)
            used += cost
    assert ar.fit_to_token_budget(iter(texts), budget) == kept


# --- SemanticStore: vectors must hold numbers -------------------------------------------------

NOT_NUMBERS = [
    ["1", "0", "0"],  # numpy parsed the strings
    np.array(["1", "0", "0"]),
    [1, "0", 0.0],  # numpy made every item text, then parsed it back
    np.array([1 + 1j, 0, 0]),  # numpy dropped the imaginary part (with only a warning)
    np.array([1, 2, 3], dtype=np.complex64),
    np.array([1, "0", 0.0], dtype=object),
]


@pytest.mark.parametrize("vector", NOT_NUMBERS, ids=repr)
def test_an_embedding_or_query_that_holds_no_numbers_is_a_store_error(vector: Any) -> None:
    store = ar.SemanticStore(dim=3)
    with pytest.raises(ar.MemoryStoreError, match="embedding must be a vector of numbers"):
        store.store("k", "v", embedding=vector)
    assert "k" not in store and store.entry_count_with_embedding() == 0
    store.store("x", "v", embedding=[1.0, 0.0, 0.0])
    with pytest.raises(ar.MemoryStoreError, match="query must be a string or a vector"):
        store.search(vector)


class _Returns:
    """An embedder that returns one fixed row for any text."""

    def __init__(self, row: Any) -> None:
        self.row = row

    def embed(self, texts: Sequence[str]) -> Any:
        return [self.row for _ in texts]


@pytest.mark.parametrize("row", [["0.5", "1.0"], np.array([1j, 1.0])], ids=repr)
def test_an_embedder_row_that_holds_no_numbers_is_a_store_error(row: Any) -> None:
    store = ar.SemanticStore(_Returns(row))
    with pytest.raises(ar.MemoryStoreError, match=r"must return a \(1, dim\) array of numbers"):
        store.store("k", "apples")
    with pytest.raises(ar.MemoryStoreError, match=r"must return a \(1, dim\) array of numbers"):
        store.search("apples")
    assert len(store) == 0


@pytest.mark.parametrize(
    "vector",
    [
        [1, 0, 0],
        np.array([1, 0, 0], dtype=np.int8),
        np.array([1.0, 0.0, 0.0], dtype=np.float64),
        np.array([1, 0, 0], dtype=object),
        [Fraction(1, 2), 0, 0],
        [np.float16(1.0), 0.0, 0.0],
    ],
    ids=repr,
)
def test_numbers_of_any_real_type_are_still_vectors(vector: Any) -> None:
    store = ar.SemanticStore(dim=3)
    store.store("k", "v", embedding=vector)
    store.store("other", "w", embedding=[0.0, 1.0, 0.0])
    assert [(h.key, h.score) for h in store.search(vector, 1)] == [("k", 1.0)]


VECTOR = st.lists(st.integers(-3, 3), min_size=4, max_size=4).filter(any)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcdefgh"),
            st.none() | VECTOR,
            st.frozensets(st.sampled_from("xyz"), max_size=2),
        ),
        min_size=1,
        max_size=14,
    ),
    st.lists(st.sampled_from("abcdefgh"), max_size=3),
    VECTOR,
    st.integers(1, 16),
    st.frozensets(st.sampled_from("xyz"), max_size=2),
)
def test_search_agrees_with_a_numpy_cosine_reference(
    items: list[tuple[str, list[int] | None, frozenset[str]]],
    deleted: list[str],
    query: list[int],
    k: int,
    tags: frozenset[str],
) -> None:
    store = ar.SemanticStore(dim=4)
    model: dict[str, tuple[np.ndarray | None, frozenset[str]]] = {}
    for key, vector, key_tags in items:
        store.store(key, key.upper(), key_tags, vector, embed=False)
        model[key] = (None if vector is None else np.array(vector, np.float64), key_tags)
    for key in deleted:
        store.delete(key)
        model.pop(key, None)
    q = np.array(query, np.float64)
    expected = sorted(
        (
            (float(v @ q / np.linalg.norm(v) / np.linalg.norm(q)), key)
            for key, (v, key_tags) in model.items()
            if v is not None and tags <= key_tags
        ),
        reverse=True,
    )
    hits = store.search(query, k, tags=tags or None)
    assert len(hits) == min(k, len(expected))
    # Best first, the reference's scores (ties may come in any order).
    np.testing.assert_allclose(
        [h.score for h in hits], [s for s, _ in expected[: len(hits)]], atol=1e-5
    )
    for hit in hits:
        vector, key_tags = model[hit.key]
        assert vector is not None and tags <= key_tags and hit.value == hit.key.upper()
        assert hit.score == pytest.approx(
            float(vector @ q / np.linalg.norm(vector) / np.linalg.norm(q)), abs=1e-5
        )


@pytest.mark.parametrize("tag", [["news"], ("news", "sport"), 5, None])
def test_a_tag_lookup_with_no_string_is_a_store_error(tag: Any) -> None:
    # A list escaped as "unhashable type: 'list'"; a number or None matched nothing, silently.
    store = ar.SemanticStore(dim=2)
    store.store("k", "v", tags=["news"], embedding=[1.0, 0.0])
    with pytest.raises(ar.MemoryStoreError, match="tag must be a string"):
        store.retrieve_by_tag(tag)
    with pytest.raises(ar.MemoryStoreError, match="tag must be a string"):
        store.count_by_tag(tag)
    assert [e.key for e in store.retrieve_by_tag("news")] == ["k"]
    assert store.count_by_tag("news") == 1


# --- networkx ---------------------------------------------------------------------------------


def test_networkx_conversions_given_the_wrong_graph_raise_graph_errors() -> None:
    # Each of these escaped as an AttributeError naming `to_json` or `nodes`.
    store = ar.GraphStore()
    store.add_entity("a")
    with pytest.raises(ar.GraphError, match="to_networkx takes a GraphStore, got MultiDiGraph"):
        to_networkx(nx.MultiDiGraph())
    with pytest.raises(ar.GraphError, match="from_networkx takes a networkx graph, got GraphStore"):
        from_networkx(store)
    for bad in (None, {"a": ["b"]}, ar.GraphStore):
        with pytest.raises(ar.GraphError, match="takes a"):
            to_networkx(bad)
        with pytest.raises(ar.GraphError, match="takes a"):
            from_networkx(bad)
    assert from_networkx(to_networkx(store)).entity_ids() == ["a"]


# --- embedders given to the stores -----------------------------------------------------------

NO_EMBEDDERS = [384, "text-embedding-3-small", ar.HashingEmbedder]


@pytest.mark.parametrize("embedder", NO_EMBEDDERS, ids=repr)
def test_a_semantic_store_refuses_an_embedder_that_cannot_embed(embedder: Any) -> None:
    # `SemanticStore(384)` (the dimension given positionally) was accepted; the first store
    # then failed with "AttributeError: 'int' object has no attribute 'embed'".
    with pytest.raises(ar.MemoryStoreError, match="embedder must be an Embedder instance"):
        ar.SemanticStore(embedder)
    store = ar.SemanticStore(ar.HashingEmbedder(16))
    store.store("k", "apples and pears")
    assert [h.key for h in store.search("apples")] == ["k"]


@pytest.mark.parametrize("embedder", NO_EMBEDDERS, ids=repr)
def test_an_episodic_store_refuses_an_embedder_that_cannot_embed(embedder: Any) -> None:
    # Accepted; `add_episode` then failed with a bare AttributeError or TypeError.
    with pytest.raises(ar.MemoryStoreError, match="embedder must be an Embedder instance"):
        ar.EpisodicStore(embedder=embedder)
    with pytest.raises(ar.MemoryStoreError, match="embedder must be an Embedder instance"):
        ar.EpisodicStore.from_json(ar.EpisodicStore().to_json(), embedder=embedder)
    store = ar.EpisodicStore(embedder=ar.HashingEmbedder(16))
    store.add_episode("agent", "apples", 0.5)
    assert [e.content for e in store.recall("agent", query="apples")] == ["apples"]


class _AsyncEmbedder:
    dim = 4

    async def embed(self, texts: list[str]) -> Any:
        return [[1.0, 0.0, 0.0, 0.0] for _ in texts]


class _AwaitableEmbedder:
    """A sync `embed` that hands back a coroutine (an async function wrapped by mistake)."""

    dim = 4

    def embed(self, texts: list[str]) -> Any:
        return _AsyncEmbedder().embed(texts)


def test_an_episodic_store_refuses_an_async_embedder() -> None:
    # Accepted; every episode then failed with "must return one row" and a coroutine left
    # never awaited.
    with pytest.raises(ar.MemoryStoreError, match=r"embedder\.embed is async"):
        ar.EpisodicStore(embedder=_AsyncEmbedder())
    with pytest.raises(ar.MemoryStoreError, match=r"embedder\.embed is async"):
        ar.EpisodicStore.from_json(ar.EpisodicStore().to_json(), embedder=_AsyncEmbedder())


@pytest.mark.filterwarnings("error")  # a coroutine left never awaited fails the test
def test_an_awaitable_from_embed_is_a_store_error_and_is_closed() -> None:
    store = ar.EpisodicStore(embedder=_AwaitableEmbedder())
    with pytest.raises(ar.MemoryStoreError, match=r"embedder\.embed returned an awaitable"):
        store.add_episode("agent", "apples", 0.5)
    assert store.episode_count_for("agent") == 0
    gc.collect()
