"""Memory and knowledge layers, sweep 7: a shared sentence-transformers model under threads,
and networkx edge weights that are 0-d numpy arrays of text or bools."""

from __future__ import annotations

import pickle
import sys
import threading
import time
import types
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.graph import from_networkx


class _BorrowCheckedModel:
    """A stand-in `SentenceTransformer` whose tokenizer is used as the real fast one is.

    The Rust tokenizer behind sentence-transformers keeps a PyO3 borrow flag and releases the
    GIL while it encodes: a second thread entering it meanwhile gets
    ``RuntimeError: Already borrowed`` (huggingface/tokenizers#537,
    sentence-transformers#794 and #910). The sleep releases the GIL, as that encoding does.
    """

    def __init__(self, path: str, device: str) -> None:
        self._borrowed = False
        self.calls = 0

    def get_embedding_dimension(self) -> int:
        return 3

    def encode(self, texts: Sequence[str], **options: Any) -> np.ndarray:
        if self._borrowed:
            raise RuntimeError("Already borrowed")
        self._borrowed = True
        try:
            time.sleep(0.002)
            self.calls += 1
            return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)
        finally:
            self._borrowed = False


@pytest.fixture
def borrow_checked(monkeypatch: Any) -> type[_BorrowCheckedModel]:
    monkeypatch.setitem(
        sys.modules,
        "sentence_transformers",
        types.SimpleNamespace(SentenceTransformer=_BorrowCheckedModel),
    )
    return _BorrowCheckedModel


def test_a_sentence_transformer_embedder_shared_by_threads_serializes_its_model(
    borrow_checked: type[_BorrowCheckedModel],
) -> None:
    # Each thread used to enter the one model at once: "RuntimeError: Already borrowed" from
    # the tokenizer, under a thread pool or a server's worker threads.
    embedder = ar.SentenceTransformerEmbedder("some/model")
    texts = [["a" * (i % 7 + 1), "b" * (i % 5 + 1)] for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(embedder.embed, texts))
    for batch, got in zip(texts, rows, strict=True):
        np.testing.assert_array_equal(got[:, 0], [len(t) for t in batch])


def test_a_semantic_store_over_a_sentence_transformer_serves_threads(
    borrow_checked: type[_BorrowCheckedModel],
) -> None:
    # The store embeds outside its lock (its searches run in parallel), so its threads met
    # in the model too.
    store = ar.SemanticStore(ar.SentenceTransformerEmbedder("some/model"))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            store.store(f"k{i}", "x" * (i + 1))
            for hit in store.search("x" * (i + 1), k=3):
                assert -1.0 <= hit.score <= 1.0
        except BaseException as error:  # collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store) == 16 and store.entry_count_with_embedding() == 16


def test_a_sentence_transformer_embedder_still_pickles_and_works_after(
    monkeypatch: Any,
) -> None:
    # The lock that serializes the model is no part of its state: a copy gets its own.
    monkeypatch.setitem(
        sys.modules,
        "sentence_transformers",
        types.SimpleNamespace(SentenceTransformer=_PicklableModel),
    )
    embedder = ar.SentenceTransformerEmbedder("some/model")
    copy = pickle.loads(pickle.dumps(embedder))
    assert copy is not embedder and copy.dim == 2
    np.testing.assert_array_equal(copy.embed(["abc"]), [[3.0, 1.0]])
    with ThreadPoolExecutor(4) as pool:
        assert len(list(pool.map(copy.embed, [["a"]] * 8))) == 8


class _PicklableModel:
    def __init__(self, path: str, device: str) -> None:
        self.path = path

    def get_embedding_dimension(self) -> int:
        return 2

    def encode(self, texts: Sequence[str], **options: Any) -> np.ndarray:
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


# --- from_networkx: weights given as 0-d numpy arrays -----------------------------------------


@pytest.mark.parametrize(
    "weight",
    [
        np.array("1.5"),  # text: float() parses it
        np.array(b"2.0"),
        np.array("1.5", dtype=object),
        np.array(True),  # a bool, as np.True_ is refused
        np.array(False, dtype=object),
    ],
    ids=["str-array", "bytes-array", "object-str-array", "bool-array", "object-bool-array"],
)
def test_from_networkx_refuses_a_weight_of_text_or_bool_in_a_0d_array(weight: Any) -> None:
    # A 0-d array of text was parsed into a weight, and one of a bool became 1.0 or 0.0,
    # though a str, np.str_ and np.True_ are refused as no real number.
    graph = nx.DiGraph()
    graph.add_edge("a", "b", weight=weight)
    with pytest.raises(ar.GraphError, match=r"edge 'a' -> 'b': weight \('weight'\) must be a real"):
        from_networkx(graph)


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False),
        st.integers(-(2**53), 2**53),
    ),
    st.sampled_from(["float64", "float32", "float16", "int64", "uint8", "object", "python"]),
)
def test_from_networkx_reads_numeric_weights_of_every_form_as_float_does(
    number: float, form: str
) -> None:
    # The reference: the weight as a Python float of the value numpy holds.
    if form == "python":
        weight: Any = number
    elif form == "uint8":
        weight = np.array(abs(int(number)) % 256, dtype=np.uint8)
    elif form == "int64":
        weight = np.array(max(min(int(number), 2**62), -(2**62)), dtype=np.int64)
    else:
        with np.errstate(over="ignore"):
            weight = np.array(number, dtype=form)
        if not np.isfinite(float(weight)):
            return  # beyond float16 / float32: refused by the store as not finite
    graph = nx.DiGraph()
    graph.add_edge("a", "b", weight=weight)
    (rel,) = from_networkx(graph).relationships()
    assert rel["weight"] == float(weight)


# -- The Rust stores' number arguments: a 0-d numpy array of no number is refused ----------

_NO_NUMBERS = [
    np.array("0.5"),
    np.array(b"0.5"),
    np.array(True),
    np.array(0.5, dtype=object),
    np.array("2024-01-01", dtype="datetime64[D]"),
]


@pytest.mark.parametrize("weight", _NO_NUMBERS, ids=repr)
def test_a_relationship_weight_of_text_or_bool_in_a_0d_array_is_refused(weight: Any) -> None:
    # numpy's float conversion parsed array("0.5") as 0.5 and read array(True) as 1.0, where
    # "0.5" and np.True_ themselves were refused: such a weight was stored as a number.
    store = ar.GraphStore()
    store.add_entity("a", "node")
    store.add_entity("b", "node")
    with pytest.raises((TypeError, ar.GraphError), match="weight must be a real number"):
        store.add_relationship("a", "b", "knows", weight)
    assert store.relationship_count() == 0


@pytest.mark.parametrize("importance", _NO_NUMBERS, ids=repr)
def test_an_importance_of_text_or_bool_in_a_0d_array_is_refused(importance: Any) -> None:
    store = ar.EpisodicStore()
    with pytest.raises((TypeError, ar.MemoryStoreError), match="importance"):
        store.add_episode("agent", "text", importance)
    assert store.episode_count_for("agent") == 0


@pytest.mark.parametrize(
    "number", [np.array(0.5), np.array(1, dtype=np.int8), np.float32(0.25), np.array(0.5)[()]]
)
def test_numbers_in_numpy_forms_are_still_read(number: Any) -> None:
    graph = ar.GraphStore()
    graph.add_entity("a", "node")
    graph.add_entity("b", "node")
    graph.add_relationship("a", "b", "knows", number)
    assert graph.avg_relationship_weight() == float(number)
    memory = ar.EpisodicStore()
    memory.add_episode("agent", "text", number)
    assert memory.episodes("agent")[0].importance == float(number)
