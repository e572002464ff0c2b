"""Edge cases of the knowledge graph found by a bug hunt, each checked against what it
should answer (networkx's answer where networkx has a sound one)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
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


# ------------------------------------------------------------------ the GIL


def _gil_released_during(op: Callable[[], object]) -> bool:
    """Whether another thread gets the GIL while `op` (a Rust call) runs in a worker thread.

    (tests/test_ffi_edge.py's check.) With a switch interval far longer than the work, the
    worker keeps the GIL unless `op` lets go of it: the main thread, waiting for the GIL
    from the worker's start, resumes while the worker calls `op` (20 times) only if `op`
    released it, and once the worker is done otherwise.
    """
    times: dict[str, float] = {}

    def work() -> None:
        for _ in range(20):
            op()
        times["ended"] = time.perf_counter()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        resumed = time.perf_counter()
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    return resumed < times["ended"]


def _big_graph() -> ar.GraphStore:
    n = 100_000
    return ar.GraphStore.from_edge_list(n, [(i % n, (i * 7 + 1) % n) for i in range(4 * n)])


@pytest.mark.parametrize(
    "op",
    [
        # A scan of every relationship, each call.
        lambda g: g.remove_relationship("0", "1"),
        lambda g: g.update_relationship("0", "1", "related", weight=2.0),
        # The first change after `from_edge_list` stores its entities or its edge list.
        lambda g: g.add_relationship("0", "1"),
        lambda g: g.add_entity(f"e{len(g)}"),
        lambda g: g.update_entity("0", label="x"),
    ],
    ids=[
        "remove_relationship",
        "update_relationship",
        "add_relationship",
        "add_entity",
        "update_entity",
    ],
)
def test_mutations_whose_work_grows_with_the_graph_release_the_gil(
    op: Callable[[ar.GraphStore], object],
) -> None:
    # They held the GIL for O(n + m) work whenever the store's lock was free: 0.6 s for the
    # first add_relationship after from_edge_list of 5M edges, every other thread stopped.
    g = _big_graph()
    assert _gil_released_during(lambda: op(g))


def test_mutations_that_release_the_gil_still_do_their_work() -> None:
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
