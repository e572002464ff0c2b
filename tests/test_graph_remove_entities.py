"""`GraphStore.remove_entities`: many entities in one pass, the same graph as one at a time."""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar


def _state(g: ar.GraphStore) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Everything removal can change: ids in order, relationships in order, entities."""
    ids = g.entity_ids()
    return ids, g.relationships(), [g.entity(i) for i in ids]


@st.composite
def graphs_and_removals(draw: st.DrawFn) -> tuple[Any, list[str]]:
    """A graph (numbered from an edge list, or built by name) and distinct ids to remove."""
    n = draw(st.integers(0, 30))
    edges = draw(st.lists(st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, max(n - 1, 0)))))
    edges = edges if n else []
    numbered = draw(st.booleans())
    kinds = draw(
        st.lists(st.sampled_from(["a", "b", "c"]), min_size=len(edges), max_size=len(edges))
    )

    def build() -> ar.GraphStore:
        if numbered:
            g = ar.GraphStore.from_edge_list(n, np.array(edges, dtype=np.int64).reshape(-1, 2))
            if n:
                g.add_entity("named", label="x", properties={"p": 1})
                g.add_relationship("named", "0", "b", 2.0)
            return g
        g = ar.GraphStore()
        for i in range(n):
            g.add_entity(f"e{i}", label=f"l{i % 3}", properties={"i": i} if i % 2 else None)
        for (a, b), kind in zip(edges, kinds, strict=True):
            g.add_relationship(f"e{a}", f"e{b}", kind, float(a + b))
        return g

    ids = build().entity_ids()
    removed = draw(st.lists(st.sampled_from(ids), unique=True) if ids else st.just([]))
    return build, removed


@settings(max_examples=300, deadline=None)
@given(graphs_and_removals(), st.booleans())
def test_matches_removing_one_at_a_time(case: tuple[Any, list[str]], read_first: bool) -> None:
    build, removed = case
    batch, one_by_one = build(), build()
    if read_first:  # the per-entity links and the snapshot are built: the removal drops them
        for g in (batch, one_by_one):
            g.neighbors_of(g.entity_ids()[0]) if g.entity_count() else None
            g.degree_centrality()
    batch.remove_entities(removed)
    for id_ in removed:
        one_by_one.remove_entity(id_)
    assert _state(batch) == _state(one_by_one)
    assert batch.relationship_kind_count() == one_by_one.relationship_kind_count()
    # Queries after the removal read the new graph: as networkx reads the same edges.
    reference = nx.MultiDiGraph()
    reference.add_nodes_from(batch.entity_ids())
    reference.add_edges_from((r["from"], r["to"]) for r in batch.relationships())
    for node in batch.entity_ids()[:5]:
        # By paths of one step or more (so a node on a cycle reaches itself).
        after_one = set(reference.successors(node))
        expected = after_one.union(*(nx.descendants(reference, s) for s in after_one))
        assert batch.reachable(node) == expected
    for id_ in removed:
        assert id_ not in batch


def test_removes_relationships_and_moves_the_last_entities_into_the_gaps() -> None:
    g = ar.GraphStore()
    for node in "abcde":
        g.add_entity(node)
    g.add_relationship("a", "b", "x")
    g.add_relationship("b", "e", "y")
    g.add_relationship("e", "c", "x")
    g.add_relationship("d", "d", "z")
    g.remove_entities(["b", "d"])
    # b's slot takes e (the last), then d's slot takes c (then the last).
    assert g.entity_ids() == ["a", "e", "c"]
    assert [(r["from"], r["to"], r["kind"]) for r in g.relationships()] == [("e", "c", "x")]
    assert g.relationship_kind_count() == 1  # "y" and "z" were used only by removed ones
    assert g.shortest_path("e", "c") == (["e", "c"], 1.0)


def test_unknown_or_repeated_ids_remove_nothing() -> None:
    g = ar.GraphStore()
    for node in "abc":
        g.add_entity(node)
    g.add_relationship("a", "b")
    before = _state(g)
    with pytest.raises(ar.GraphError, match='unknown entity "zoe"'):
        g.remove_entities(["a", "zoe"])
    with pytest.raises(ar.GraphError, match='entity "a" is named twice'):
        g.remove_entities(["a", "b", "a"])
    with pytest.raises(ar.GraphError):
        g.remove_entities(["a", "\ud800"])
    assert _state(g) == before
    g.remove_entities([])
    assert _state(g) == before


def test_takes_a_sequence_of_names_and_refuses_other_types() -> None:
    g = ar.GraphStore()
    g.add_entities(["a", "b", "c"])
    g.remove_entities(["c"])
    g.remove_entities(("a",))
    assert g.entity_ids() == ["b"]
    with pytest.raises(TypeError, match="remove_entities takes a list of entity names"):
        g.remove_entities("b")  # type: ignore[arg-type]  # a str is not a list of names
    with pytest.raises(TypeError, match="remove_entities takes a list of entity names"):
        g.remove_entities([1])  # type: ignore[list-item]
    assert g.entity_ids() == ["b"]
