"""Modularity with negative weights, and mutations that release the GIL, checked against what
they should answer (networkx's answer where networkx has a sound one)."""

from __future__ import annotations

from typing import Any

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

# ------------------------------------------------------------------ modularity


def test_modularity_refuses_negative_weights_as_communities_does() -> None:
    # With only negative weights the total weight is <= 0 and modularity came out as 0.0,
    # where networkx (which computes on) gives -0.375 for the same partition: a wrong
    # answer, not an error. Modularity is defined for non-negative weights, as `communities`
    # and `label_propagation` say with a GraphError.
    g = ar.GraphStore.from_edge_list(3, [(0, 1, -1.0), (1, 2, -1.0)])
    peer = nx.MultiGraph([("0", "1", {"weight": -1.0}), ("1", "2", {"weight": -1.0})])
    partition = [["0"], ["1"], ["2"]]
    assert nx.community.modularity(peer, [set(c) for c in partition]) == -0.375
    with pytest.raises(ar.GraphError, match="non-negative weights"):
        g.modularity(partition)
    with pytest.raises(ar.GraphError, match="non-negative weights"):
        g.communities()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 4), st.sampled_from([-2.0, -0.5, 1.0, 3.0])),
        min_size=1,
        max_size=10,
    )
)
def test_modularity_with_a_negative_weight_is_an_error_whatever_the_mix(
    edges: list[tuple[int, int, float]],
) -> None:
    # Mixed signs gave networkx's value when the total stayed positive and 0.0 otherwise.
    g = ar.GraphStore.from_edge_list(5, edges)
    whole = [[str(i) for i in range(5)]]
    if any(w < 0 for _, _, w in edges):
        with pytest.raises(ar.GraphError, match="modularity needs non-negative weights"):
            g.modularity(whole)
    else:
        peer = nx.MultiGraph()
        peer.add_nodes_from(str(i) for i in range(5))
        peer.add_weighted_edges_from((str(a), str(b), w) for a, b, w in edges)
        assert g.modularity(whole) == pytest.approx(nx.community.modularity(peer, [set(whole[0])]))


# ------------------------------------------------------------------ mutations


def test_mutations_that_release_the_gil_do_their_work() -> None:
    g = ar.GraphStore.from_edge_list(3, [(0, 1), (0, 1, 2.0), (1, 2)])
    assert g.update_relationship("0", "1", "related", weight=5.0) == 2
    g.add_relationship("2", "0", "k", 1.5)
    g.add_entity("x")
    g.update_entity("0", label="first")
    assert g.entity("0")["label"] == "first"
    assert g.remove_relationship("0", "1") == 2
    rows: list[Any] = [(r["from"], r["to"], r["kind"], r["weight"]) for r in g.relationships()]
    assert rows == [("1", "2", "related", 1.0), ("2", "0", "k", 1.5)]
    assert g.entity_ids() == ["0", "1", "2", "x"]
    assert g.shortest_path("1", "0") == (["1", "2", "0"], 2.5)
