"""Semantic memory and embedders: a store's dimension and its embedder's, the messages of a
refused embedding, and the width an OpenAI embedder gives texts it does not send."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from test_embeddings import _Server, server  # noqa: F401 (the loopback server fixture)

import llm_agent_runtime as ar

# --- a store's dimension and its embedder's --------------------------------------------------


def test_a_store_given_only_a_dim_embeds_its_texts_at_that_dim() -> None:
    # `SemanticStore(dim=128)` kept the 384-wide default embedder: every text stored or
    # searched failed with "vectors have shape [1, 384], expected (1, 128)".
    store = ar.SemanticStore(dim=128)
    store.store("router", "How to reset the router password", tags=["it"])
    store.store("tax", "Filing a tax return before the deadline")
    assert store.entry_count_with_embedding() == 2
    assert [h.key for h in store.search("reset my router password", k=1)] == ["router"]
    store.store("vector", "given", embedding=np.ones(128, dtype=np.float32))
    assert len(store) == 3


def test_a_dim_that_differs_from_the_embedders_is_refused_when_the_store_is_made() -> None:
    # Accepted, such a store could embed no text: the first store failed, naming shapes.
    with pytest.raises(ar.MemoryStoreError, match=r"dim=8, but the embedder's rows have 16"):
        ar.SemanticStore(ar.HashingEmbedder(16), dim=8)
    assert ar.SemanticStore(ar.HashingEmbedder(16), dim=16).search("anything") == []


class _Rows:
    """An embedder without a `dim`, returning one fixed row for any text."""

    def __init__(self, row: list[float]) -> None:
        self.row = row

    def embed(self, texts: Sequence[str]) -> Any:
        return np.array([self.row for _ in texts], dtype=np.float32)


# --- the messages of a refused embedding -----------------------------------------------------

NOT_FINITE = re.escape(
    "contains NaN or infinite values (or values beyond float32's range, about ±3.4e38)"
)


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        ([1.0, 0.0], r"^embedding has shape \(2,\), the store's vectors have shape \(3,\)$"),
        ([1, 0, 0, 0], r"^embedding has shape \(4,\), the store's vectors have shape \(3,\)$"),
        ([0.0, 0.0, 0.0], r"^embedding is the zero vector: cosine similarity is undefined$"),
        ([float("nan"), 1.0, 0.0], rf"^embedding {NOT_FINITE}$"),
        ([float("inf"), 1.0, 0.0], rf"^embedding {NOT_FINITE}$"),
        # Finite, but past float32's largest (about 3.4e38): it became inf as it was read.
        ([1e39, 1.0, 0.0], rf"^embedding {NOT_FINITE}$"),
    ],
)
def test_a_refused_embedding_is_named_as_the_caller_gave_it(
    embedding: list[float], message: str
) -> None:
    # These read "vectors have shape [1, 2], expected (1, 3)" and "vector 0 (id 1) is the
    # zero vector": the index's batch and internal ids, which the caller never sees.
    store = ar.SemanticStore(dim=3)
    store.store("a", "first", embedding=[1.0, 0.0, 0.0])
    with pytest.raises(ar.MemoryStoreError, match=message):
        store.store("k", "v", embedding=embedding)
    assert "k" not in store and store.entry_count_with_embedding() == 1


def test_an_embedders_row_of_another_length_is_named_as_the_embedders() -> None:
    store = ar.SemanticStore(_Rows([1.0, 0.0, 0.0]))
    store.store("a", "first")
    store._embedder = _Rows([1.0, 0.0])  # a model swapped for one of another width
    with pytest.raises(
        ar.MemoryStoreError,
        match=r"^the embedder's row has shape \(2,\), the store's vectors have shape \(3,\)$",
    ):
        store.store("b", "second")
    store._embedder = _Rows([float("nan"), 0.0, 1.0])
    with pytest.raises(ar.MemoryStoreError, match=rf"^the embedder's row {NOT_FINITE}$"):
        store.store("b", "second")
    assert store.all_keys() == ["a"]


# --- the width of texts an OpenAI embedder does not send -------------------------------------


def test_openai_embedder_width_of_unsent_texts_follows_the_requested_dimensions(
    server: tuple[_Server, str],  # noqa: F811
) -> None:
    # The width learned with `dimensions=2` was kept for the model's own width: empty texts
    # got rows of 2 zeros while every other text got 3 values.
    state, url = server
    embedder = ar.OpenAIEmbedder(base_url=url, dimensions=2)
    assert embedder.embed(["a"]).shape == (1, 2)
    embedder.dimensions = None  # back to the model's own width (3 on this server)
    assert embedder.embed(["", ""]).shape == (2, 3)
    assert embedder.embed([]).shape == (0, 3)
    assert embedder.embed(["a", ""]).shape == (2, 3)
    embedder.dimensions = 2
    assert embedder.embed([""]).shape == (1, 2)
    assert [body["input"] for _, body in state.requests] == [["a"], [" "], ["a"]]
