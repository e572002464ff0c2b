"""Episodic recall with a query: policy score + similarity_weight * cosine, on a fake clock."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def expected_score(
    importance: float,
    age_h: float,
    recalls: int,
    cos: float,
    half_life: float,
    recency_w: float,
    frequency_w: float,
    similarity_w: float,
) -> float:
    decayed = importance * 0.5 ** (age_h / half_life)
    return (
        decayed
        + recency_w / (1 + age_h)
        + frequency_w * recalls / (1 + recalls)
        + similarity_w * cos
    )


@settings(max_examples=100, deadline=None)
@given(
    episodes=st.lists(
        st.tuples(
            st.floats(0, 1),
            st.floats(0, 48),
            st.none() | st.lists(st.integers(-4, 4), min_size=3, max_size=3).filter(any),
        ),
        min_size=1,
        max_size=12,
    ),
    query=st.lists(st.integers(-4, 4), min_size=3, max_size=3).filter(any),
    weights=st.tuples(st.floats(0.1, 5), st.floats(0, 2), st.floats(0, 2), st.floats(0, 3)),
    limit=st.integers(1, 12),
)
def test_recall_with_a_query_follows_the_formula(
    episodes: list[tuple[float, float, Any]],
    query: list[int],
    weights: tuple[float, float, float, float],
    limit: int,
) -> None:
    half_life, recency_w, frequency_w, similarity_w = weights
    clock = Clock()
    store = ar.EpisodicStore(
        decay=ar.DecayPolicy.exponential(half_life),
        recall_policy=ar.RecallPolicy.hybrid(recency_w, frequency_w),
        clock=clock,
        similarity_weight=similarity_w,
    )
    created = []
    for i, (importance, hours_later, vector) in enumerate(episodes):
        clock.now += hours_later * 3600
        embedding = None if vector is None else np.array(vector, dtype=np.float32)
        store.add_episode("a", f"e{i}", importance, embedding=embedding)
        created.append(clock.now)
    clock.now += 3600
    q = np.array(query, dtype=np.float64)
    scored = []
    for i, (importance, _, vector) in enumerate(episodes):
        cos = (
            0.0
            if vector is None
            else float(np.dot(vector, q) / np.linalg.norm(vector) / np.linalg.norm(q))
        )
        age_h = (clock.now - created[i]) / 3600
        args = (half_life, recency_w, frequency_w, similarity_w)
        scored.append((expected_score(importance, age_h, 0, cos, *args), i))
    recalled = store.recall("a", limit, query=q.astype(np.float32))
    assert len(recalled) == min(limit, len(episodes))
    got = [scored[int(e.content[1:])][0] for e in recalled]
    want = sorted((s for s, _ in scored), reverse=True)[: len(recalled)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert all(e.recall_count == 1 for e in recalled)


def test_text_queries_use_the_embedder_and_exports_keep_embeddings() -> None:
    clock = Clock()
    embedder = ar.HashingEmbedder(dim=64)
    store = ar.EpisodicStore(clock=clock, embedder=embedder, similarity_weight=2.0)
    store.add_episode("a", "the deploy failed because the database was down", 0.3)
    store.add_episode("a", "user prefers short answers", 0.6)
    store.add_episode("a", "!!!", 0.5)  # nothing to embed: no embedding
    episodes = store.episodes("a")
    assert [e.embedding is None for e in episodes] == [False, False, True]
    first = episodes[0].embedding
    assert first is not None and first.shape == (64,)
    np.testing.assert_allclose(np.linalg.norm(first), 1.0, atol=1e-5)
    assert [e.content for e in store.recall("a", 1)] == ["user prefers short answers"]
    hit = store.recall("a", 1, query="why did the deploy fail? database down")
    assert hit[0].content.startswith("the deploy failed")
    # A query with nothing to embed ranks by the policy alone.
    assert store.recall("a", 1, query="???")[0].content == "user prefers short answers"
    restored = ar.EpisodicStore.from_json(store.to_json(), clock=clock, embedder=embedder)
    assert [e.embedding is None for e in restored.episodes("a")] == [False, False, True]
    np.testing.assert_array_equal(restored.episodes("a")[0].embedding, first)
    assert json.loads(store.to_json())["similarity_weight"] == 2.0


def test_exports_without_embeddings_still_load() -> None:
    store = ar.EpisodicStore()
    store.add_episode("a", "x", 0.5)
    data = json.loads(store.to_json())
    del data["similarity_weight"], data["embedding_dim"]
    restored = ar.EpisodicStore.from_json(json.dumps(data))
    assert restored.episodes("a")[0].embedding is None
    assert restored.recall("a", 1, query=[1.0, 0.0])[0].content == "x"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.recall("a", 1, query="text"), "needs an embedder"),
        (lambda s: s.recall("a", 1, query=[1.0, 2.0]), "dimension 2"),
        (lambda s: s.recall("a", 1, query=[0.0, 0.0, 0.0]), "zero vector"),
        (lambda s: s.recall("a", 1, query=[np.nan, 0.0, 1.0]), "NaN"),
        (lambda s: s.recall("a", 1, query=["x"]), "sequence of numbers"),
        # Undecoded text: its byte values were taken as a vector before.
        (lambda s: s.recall("a", 1, query=b"abc"), "got bytes \\(decode text first\\)"),
        (lambda s: s.recall("a", 1, query=bytearray(b"abc")), "got bytearray"),
        (lambda s: s.add_episode("a", "x", 0.5, embedding=b"abc"), "got bytes"),
        (lambda s: s.add_episode("a", "x", 0.5, embedding=[1.0]), "dimension 1"),
        (lambda s: s.add_episode("a", "x", 0.5, embedding=[0.0, 0.0, 0.0]), "zero"),
        (lambda s: ar.EpisodicStore(similarity_weight=-1.0), "similarity_weight"),
    ],
)
def test_bad_queries_and_embeddings(call: Any, message: str) -> None:
    store = ar.EpisodicStore()
    store.add_episode("a", "x", 0.5, embedding=np.array([1.0, 0.0, 0.0], dtype=np.float32))
    with pytest.raises(ar.MemoryStoreError, match=message):
        call(store)
    assert len(store) == 1


def test_an_embedder_returning_the_wrong_shape_is_a_clear_error() -> None:
    class Broken:
        def embed(self, texts: Any) -> np.ndarray:
            return np.zeros((2, 3), dtype=np.float32)

    store = ar.EpisodicStore(embedder=Broken())
    with pytest.raises(ar.MemoryStoreError, match="one row"):
        store.add_episode("a", "x", 0.5)


@pytest.mark.parametrize("row", [np.zeros((1, 0), dtype=np.float32), [[]]])
def test_an_embedder_returning_a_row_of_no_values_is_a_clear_error(row: Any) -> None:
    # It was taken as a text with nothing to embed: every episode stored without an
    # embedding, and similarity recall off with no sign of it.
    class Sliced:
        def embed(self, texts: Any) -> Any:
            return row

    store = ar.EpisodicStore(embedder=Sliced())
    with pytest.raises(ar.MemoryStoreError, match="dim >= 1"):
        store.add_episode("a", "x", 0.5)
    assert len(store) == 0


def test_from_json_refuses_an_embedder_of_another_dimension() -> None:
    # Accepted, it failed every recall by similarity, and so every run, later on.
    store = ar.EpisodicStore(embedder=ar.HashingEmbedder(16))
    store.add_episode("a", "the sky is blue", 0.5)
    text = store.to_json()
    with pytest.raises(ar.MemoryStoreError, match="dimension 8, the store's have 16"):
        ar.EpisodicStore.from_json(text, embedder=ar.HashingEmbedder(8))
    same = ar.EpisodicStore.from_json(text, embedder=ar.HashingEmbedder(16))
    assert [e.content for e in same.recall("a", 1, "sky")] == ["the sky is blue"]

    class Untold:
        """An embedder that does not say its dimension (dim is optional)."""

        def embed(self, texts: list[str]) -> list[list[float]]:
            return [[1.0] * 16 for _ in texts]

    assert len(ar.EpisodicStore.from_json(text, embedder=Untold())) == 1
    # A store without embeddings takes any embedder.
    plain = ar.EpisodicStore()
    plain.add_episode("a", "x", 0.5)
    assert len(ar.EpisodicStore.from_json(plain.to_json(), embedder=ar.HashingEmbedder(8))) == 1


def test_an_embedding_of_another_length_than_the_embedders_is_refused() -> None:
    # Taken, it set the store's length: every embedding of text and every recall by text
    # then failed, and the store's JSON did not load back with its own embedder.
    store = ar.EpisodicStore(embedder=ar.HashingEmbedder(8))
    with pytest.raises(ar.MemoryStoreError, match="dimension 8, the given embedding has 3"):
        store.add_episode("a", "x", 0.5, embedding=[1.0, 2.0, 3.0])
    assert store.episodes("a") == []
    # So is a query vector, before any episode has an embedding to compare it with (it
    # ranked by the policy alone, and failed only once one had).
    store.add_episode("a", "", 0.5)
    with pytest.raises(ar.MemoryStoreError, match="dimension 8, the query vector has 3"):
        store.recall("a", 2, np.ones(3, np.float32))
    assert [e.content for e in store.recall("a", 2, np.ones(8, np.float32))] == [""]
    store.add_episode("a", "hello", 0.5)
    store.add_episode("a", "given", 0.5, embedding=np.ones(8, np.float32))
    assert store.recall("a", 2, "hello")[0].content == "hello"
    ar.EpisodicStore.from_json(store.to_json(), embedder=ar.HashingEmbedder(8))


class BufferEmbedder:
    """Returns its rows as a `memoryview` (a buffer of float32)."""

    dim = 4

    def embed(self, texts: Any) -> Any:
        return memoryview(np.tile(np.array([1, 0, 0, 0], np.float32), (len(texts), 1)))


def test_memoryviews_are_read_as_numpy_reads_them() -> None:
    # A 2-D memoryview cannot be iterated: it raised NotImplementedError.
    store = ar.EpisodicStore(embedder=BufferEmbedder())
    store.add_episode("a", "x", 0.5)
    store.add_episode("a", "y", 0.5, embedding=memoryview(np.array([0, 1, 0, 0], np.float32)))
    assert [e.content for e in store.recall("a", 2, memoryview(np.ones(4, np.float32)))] == [
        "x",
        "y",
    ]
    bools = memoryview(np.array([True, False, True, False]))
    with pytest.raises(ar.MemoryStoreError, match="bool"):
        store.add_episode("a", "z", 0.5, embedding=bools)
    semantic = ar.SemanticStore(BufferEmbedder())
    semantic.store("k", "x")
    [hit] = semantic.search(memoryview(np.array([1, 0, 0, 0], np.float32)), 1)
    assert hit.key == "k"
    for rows in (memoryview(np.ones((2, 2), np.float32)), memoryview(np.ones((1, 4), np.float32))):
        with pytest.raises(ar.MemoryStoreError, match="one vector"):
            semantic.store("j", "y", embedding=rows)


def test_a_numpy_int_dim_is_the_embedders_dim_too() -> None:
    class NumpyDim(BufferEmbedder):
        dim = np.int64(4)  # type: ignore[assignment]

    store = ar.EpisodicStore(embedder=NumpyDim())
    with pytest.raises(ar.MemoryStoreError, match="dimension 4, the given embedding has 3"):
        store.add_episode("a", "x", 0.5, embedding=[1.0, 2.0, 3.0])


def test_a_released_memoryview_is_a_memory_store_error() -> None:
    view = memoryview(np.ones(4, np.float32))
    view.release()
    store = ar.EpisodicStore()
    with pytest.raises(ar.MemoryStoreError, match="released memoryview"):
        store.add_episode("a", "x", 0.5, embedding=view)
    store.add_episode("a", "x", 0.5, embedding=np.ones(4, np.float32))
    with pytest.raises(ar.MemoryStoreError, match="released memoryview"):
        store.recall("a", 5, query=view)


def test_an_embedders_row_of_another_length_than_its_dim_is_refused() -> None:
    # Taken, the store's JSON did not load back with the embedder that made it.
    class Longer:
        dim = 4

        def embed(self, texts: list[str]) -> Any:
            return np.ones((len(texts), 5), np.float32)

    store = ar.EpisodicStore(embedder=Longer())
    with pytest.raises(ar.MemoryStoreError, match=r"5 values.*dim is 4"):
        store.add_episode("a", "hello", 0.5)
    assert store.episodes("a") == []
    store.add_episode("a", "given", 0.5, embedding=np.ones(4, np.float32))
    with pytest.raises(ar.MemoryStoreError, match=r"5 values.*dim is 4"):
        store.recall("a", 1, "hello")
    ar.EpisodicStore.from_json(store.to_json(), embedder=Longer())
