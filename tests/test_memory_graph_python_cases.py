"""Semantic memory, token budgets and the networkx bridge given inputs users do hand them:
vectors that numpy keeps unaligned, tags with no UTF-8 form, objects that are no graph."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.memory import estimate_tokens

# --- vectors not aligned in memory ----------------------------------------------------------


def _unaligned(values: list[float]) -> npt.NDArray[np.float32]:
    """A float32 vector at an odd byte offset, as `np.frombuffer` over a record gives one."""
    raw = np.asarray(values, dtype=np.float32).tobytes()
    vector = np.frombuffer(b"\x00" + raw, dtype=np.float32, offset=1)
    assert not vector.flags.aligned
    return vector


def test_an_unaligned_embedding_and_query_are_taken_as_any_other_vector() -> None:
    # Refused before with "must be aligned in memory ... pass a copy": the store converts
    # every other layout (dtype, byte order, strides) itself, and the user never sees the
    # index it copies into.
    store = ar.SemanticStore(dim=4)
    store.store("a", "first", embedding=_unaligned([1.0, 2.0, 3.0, 4.0]))
    store.store("b", "second", embedding=[4.0, 3.0, 2.0, 1.0])
    hits = store.search(_unaligned([1.0, 2.0, 3.0, 4.0]), k=2)
    assert [h.key for h in hits] == ["a", "b"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-6)


def test_an_embedder_returning_unaligned_rows_works_for_store_and_search() -> None:
    class FromBuffer:
        """Embeds from a byte record, as an embedding cache read back from disk does."""

        dim = 3

        def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
            base = [1.0, 0.5, 0.0] if texts[0].startswith("x") else [0.0, 0.5, 1.0]
            return _unaligned(base).reshape(1, 3)

    store = ar.SemanticStore(FromBuffer())
    store.store("x", "x-ray")
    store.store("y", "yak")
    assert [h.key for h in store.search("xylophone", k=1)] == ["x"]
    assert store.entry_count_with_embedding() == 2


# --- tags with no UTF-8 form ----------------------------------------------------------------


@pytest.mark.parametrize("tags", [["ok", "bad\ud800"], "\udfff", ("\ud83d",)])
def test_a_tag_with_a_lone_surrogate_is_refused_and_nothing_changes(tags: Any) -> None:
    # Keys and values with a lone surrogate are refused, but such a tag was stored: then
    # `list_tags()` (or an entry's tags) could not be written as UTF-8 anywhere.
    store = ar.SemanticStore(dim=2)
    store.store("k", "old", tags=["keep"], embedding=[1.0, 0.0])
    with pytest.raises(ar.MemoryStoreError, match="tag is not valid Unicode"):
        store.store("k", "new", tags=tags, embedding=[0.0, 1.0])
    with pytest.raises(ar.MemoryStoreError, match="tag is not valid Unicode"):
        store.store("other", "new", tags=tags, embed=False)
    assert store.get("k") == "old"
    assert store.list_tags() == ["keep"]
    assert "other" not in store
    assert json.dumps(store.list_tags(), ensure_ascii=False).encode()


# --- estimate_tokens -------------------------------------------------------------------------


@pytest.mark.parametrize("text", [b"abcdefgh", ["x" * 100], None, 12345678])
def test_estimate_tokens_refuses_what_is_no_str(text: Any) -> None:
    # bytes were costed by their length and a list as 1 token (a silent wrong count), None
    # and ints failed inside len() with a bare TypeError.
    with pytest.raises(ValueError, match="text must be a str"):
        estimate_tokens(text)


def test_estimate_tokens_and_fit_agree_at_the_edges() -> None:
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde", "😀" * 8)] == [1, 1, 1, 2, 2]
    assert ar.fit_to_token_budget(["abcd", "abcde", "", "x" * 100], 0) == []
    assert ar.fit_to_token_budget(["abcde", "abcd", "x"], 1) == ["abcd"]
    assert ar.fit_to_token_budget(["x" * 100, "abcdefgh", "y"], 3) == ["abcdefgh", "y"]


# --- to_networkx given an object that is no graph ----------------------------------------------


class _ToJson:
    def __init__(self, text: Any) -> None:
        self.text = text

    def to_json(self) -> Any:
        return self.text


@pytest.mark.parametrize(
    "obj",
    [
        ar.EpisodicStore(),
        ar.RuntimeMetrics().snapshot(),
        _ToJson("not json"),
        _ToJson(5),
        _ToJson("[1, 2]"),
        _ToJson('{"entities": []}'),
        _ToJson('{"format": "other", "entities": [], "relationships": []}'),
    ],
    ids=["episodic", "metrics", "not-json", "not-str", "list", "no-format", "other-format"],
)
def test_to_networkx_of_an_object_with_to_json_that_is_no_graph_is_a_graph_error(
    obj: Any,
) -> None:
    # Another runtime object with a to_json (an EpisodicStore, a metrics snapshot) failed
    # with a bare KeyError('entities'); text that is no JSON with a JSONDecodeError.
    with pytest.raises(ar.GraphError, match="to_networkx takes a GraphStore"):
        ar.to_networkx(obj)


def test_to_networkx_still_reads_a_graphs_json_through_a_wrapper() -> None:
    g = ar.GraphStore()
    g.add_entity("a", "A", {"x": 1})
    g.add_entity("b")
    g.add_relationship("a", "b", "k", 2.0)
    g.add_relationship("a", "a", "self", 0.5)
    exported = ar.to_networkx(_ToJson(g.to_json()))
    assert dict(exported.nodes(data=True)) == {
        "a": {"label": "A", "properties": {"x": 1}},
        "b": {"label": "", "properties": {}},
    }
    assert ar.from_networkx(exported).to_json() == g.to_json()


def test_from_networkx_keeps_parallel_edges_but_not_their_keys() -> None:
    import networkx as nx

    multi = nx.MultiDiGraph()
    multi.add_edge(1, 2, key="knows", weight=2)
    multi.add_edge(1, 2, key="likes", kind="likes", weight=3)
    multi.add_edge(2, 2, key=7)
    rels = ar.from_networkx(multi).relationships()
    assert [(r["from"], r["to"], r["kind"], r["weight"], r["properties"]) for r in rels] == [
        ("1", "2", "related", 2.0, {}),
        ("1", "2", "likes", 3.0, {}),
        ("2", "2", "related", 1.0, {}),
    ]
