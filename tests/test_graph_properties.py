"""GraphStore checked against networkx on random graphs (hypothesis).

Random directed multigraphs with self-loops and parallel edges and small positive integer
weights (so tied path lengths are exact in floating point, as networkx assumes).
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import networkx as nx
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

Edge = tuple[int, int, float]


@st.composite
def graphs(draw: Any, max_nodes: int = 12, max_edges: int = 30) -> tuple[int, list[Edge]]:
    n = draw(st.integers(min_value=0, max_value=max_nodes))
    if n == 0:
        return 0, []
    edge = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.integers(1, 9).map(float))
    return n, draw(st.lists(edge, max_size=max_edges))


def build(n: int, edges: list[Edge]) -> tuple[ar.GraphStore, Any, Any]:
    ours = ar.GraphStore()
    directed, undirected = nx.MultiDiGraph(), nx.MultiGraph()
    for i in range(n):
        ours.add_entity(str(i))
        directed.add_node(str(i))
        undirected.add_node(str(i))
    for a, b, w in edges:
        ours.add_relationship(str(a), str(b), "k", w)
        directed.add_edge(str(a), str(b), weight=w)
        undirected.add_edge(str(a), str(b), weight=w)
    return ours, directed, undirected


def close(a: dict[str, float], b: dict[str, float], tol: float = 1e-9) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or abs(a[k] - b[k]) <= tol for k in a
    )


SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(graphs())
def test_dijkstra_distances_match(graph: tuple[int, list[Edge]]) -> None:
    ours, directed, undirected = build(*graph)
    for source in directed:
        assert ours.distances(source) == nx.single_source_dijkstra_path_length(directed, source)
        assert ours.distances(source, directed=False) == nx.single_source_dijkstra_path_length(
            undirected, source
        )
        for target in directed:
            found = ours.shortest_path(source, target)
            if nx.has_path(directed, source, target):
                assert found is not None
                path, cost = found
                assert cost == nx.dijkstra_path_length(directed, source, target)
                assert path[0] == source and path[-1] == target
                assert (
                    sum(
                        min(d["weight"] for d in directed[u][v].values())
                        for u, v in itertools.pairwise(path)
                    )
                    == cost
                )
            else:
                assert found is None


@SETTINGS
@given(graphs(), st.booleans(), st.booleans(), st.booleans())
def test_betweenness_matches(
    graph: tuple[int, list[Edge]], weighted: bool, normalized: bool, directed: bool
) -> None:
    ours, g_directed, g_undirected = build(*graph)
    peer_graph = g_directed if directed else g_undirected
    expected = nx.betweenness_centrality(
        peer_graph, normalized=normalized, weight="weight" if weighted else None
    )
    got = ours.betweenness_centrality(normalized=normalized, weighted=weighted, directed=directed)
    assert close(got, expected)


@SETTINGS
@given(graphs(), st.integers(1, 12), st.integers(0, 2**32), st.booleans(), st.data())
def test_sampled_betweenness_matches_networkx_sample(
    graph: tuple[int, list[Edge]], k: int, seed: int, normalized: bool, data: st.DataObject
) -> None:
    ours, directed, _ = build(*graph)
    if k > len(directed):
        return
    # networkx draws its k sources with random.Random(seed).sample over the node list.
    sources = random.Random(seed).sample(list(directed.nodes()), k)
    expected = nx.betweenness_centrality(directed, k=k, seed=seed, normalized=normalized)
    assert close(ours.betweenness_from(sources, normalized=normalized), expected)
    # networkx's sample never repeats a node; a source listed twice (which used to be summed
    # twice but rescaled as distinct sources) is refused, naming it.
    repeated = data.draw(st.sampled_from(sources))
    listed = sources.copy()
    listed.insert(data.draw(st.integers(0, k)), repeated)
    with pytest.raises(ar.GraphError, match=f'entity "{repeated}" is listed twice in sources'):
        ours.betweenness_from(listed, normalized=normalized)


@SETTINGS
@given(graphs())
def test_reachability_and_cycles_match(graph: tuple[int, list[Edge]]) -> None:
    ours, directed, _ = build(*graph)
    closure = ours.transitive_closure()
    for node in directed:
        descendants = nx.descendants(directed, node)
        on_cycle = any(node in nx.descendants(directed, w) | {w} for w in directed.successors(node))
        assert ours.reachable(node) == descendants | ({node} if on_cycle else set())
        assert set(closure[node]) == ours.reachable(node)
    assert ours.has_cycle() == (not nx.is_directed_acyclic_graph(directed))


def _canonical(cycle: list[str]) -> tuple[str, ...]:
    start = cycle.index(min(cycle))
    return tuple(cycle[start:] + cycle[:start])


@settings(max_examples=150, deadline=None)
@given(graphs(max_nodes=7, max_edges=14))
def test_cycles_listed_are_networkx_simple_cycles(graph: tuple[int, list[Edge]]) -> None:
    ours, directed, _ = build(*graph)
    expected = {_canonical(c) for c in nx.simple_cycles(nx.DiGraph(directed))}
    listed = ours.cycles(cap=10_000)
    assert len(listed) == len(expected)
    assert {_canonical(c) for c in listed} == expected
    if expected:
        assert len(ours.cycles(cap=1)) == 1


@SETTINGS
@given(graphs(), st.integers(0, 3))
def test_traversal_orders_match(graph: tuple[int, list[Edge]], depth: int) -> None:
    ours, directed, undirected = build(*graph)
    for source in directed:
        for peer, is_directed in ((directed, True), (undirected, False)):
            bfs = [source] + [v for _, v in nx.bfs_edges(peer, source)]
            assert ours.bfs(source, directed=is_directed) == bfs
            limited = [source] + [v for _, v in nx.bfs_edges(peer, source, depth_limit=depth)]
            assert ours.bfs(source, max_depth=depth, directed=is_directed) == limited
            assert ours.dfs(source, directed=is_directed) == list(
                nx.dfs_preorder_nodes(peer, source)
            )
            limited_dfs = ours.dfs(source, max_depth=depth, directed=is_directed)
            if depth == 0:  # networkx still lists the start's children at depth_limit=0
                assert limited_dfs == [source]
            else:
                assert limited_dfs == list(nx.dfs_preorder_nodes(peer, source, depth_limit=depth))


@SETTINGS
@given(graphs())
def test_degree_centrality_matches(graph: tuple[int, list[Edge]]) -> None:
    ours, directed, _ = build(*graph)
    assert close(ours.degree_centrality("total"), nx.degree_centrality(directed))
    assert close(ours.degree_centrality("in"), nx.in_degree_centrality(directed))
    assert close(ours.degree_centrality("out"), nx.out_degree_centrality(directed))


@settings(max_examples=100, deadline=None)
@given(graphs(max_nodes=40, max_edges=120), st.integers(0, 1000))
@example(
    (
        12,
        [(0, 4, 1.0), (0, 4, 6.0), (1, 9, 1.0), (1, 9, 1.0), (2, 3, 5.0), (2, 9, 2.0), (3, 4, 9.0)],
    ),
    199,
)
def test_louvain_modularity_close_to_networkx(graph: tuple[int, list[Edge]], seed: int) -> None:
    ours, _, undirected = build(*graph)
    if undirected.number_of_edges() == 0:
        assert ours.communities()[1] == 0.0
        return
    communities, q = ours.communities(seed=seed)
    assert sorted(v for c in communities for v in c) == sorted(undirected.nodes())
    # The reported modularity is networkx's for the same partition.
    assert q == pytest.approx(
        nx.community.modularity(undirected, [set(c) for c in communities]), abs=1e-9
    )
    peer = nx.community.louvain_communities(undirected, weight="weight", seed=seed)
    # Both are heuristics whose local optimum depends on the order nodes are visited in: on
    # a small graph one draw of either may stop at a worse one (seed 199 on a 12-node graph
    # stops at 0.158 where networkx reaches 0.185, as do the orders of seeds 200 to 205). The
    # best of five orders of ours, far apart, is compared with networkx's.
    best = max([q] + [ours.communities(seed=seed + 1_000_003 * k)[1] for k in range(1, 5)])
    assert best >= nx.community.modularity(undirected, peer) - 0.02


def _answers(g: ar.GraphStore) -> list[Any]:
    """What a graph answers, from its stored form to every algorithm (for comparing builds)."""
    ids = g.entity_ids()
    out: list[Any] = [ids, g.to_json(), g.relationships(), g.relationship_kinds()]
    for source in ids:
        for directed in (True, False):
            out += [
                g.bfs(source, directed=directed),
                g.bfs(source, max_depth=1, directed=directed),
                g.dfs(source, directed=directed),
                g.distances(source, directed=directed),
                g.reachable(source, directed=directed),
            ]
        out += [g.neighbors_of(source), g.entity(source), g.edges_from(source)]
        out += [g.shortest_path(source, target) for target in ids]
    out += [
        g.degree_centrality("total"),
        g.betweenness_centrality(),
        g.betweenness_centrality(directed=False, weighted=True),
        g.transitive_closure(),
        g.has_cycle(),
        g.cycles(),
        g.communities(seed=1),
        g.entities_with_self_loops(),
        g.bidirectional_count(),
        g.isolated_entity_count(),
        g.subgraph(ids[::2]).to_json(),
        g.neighborhood(ids[0]).to_json() if ids else None,
        [g.has_entity(x) for x in ("0", "00", "01", "+1", "-0", " 1", "1.0", str(len(ids)))],
    ]
    return out


@settings(max_examples=100, deadline=None)
@given(graphs(max_nodes=9, max_edges=20), st.data())
def test_from_edge_list_answers_as_a_graph_built_one_by_one(
    graph: tuple[int, list[Edge]], data: Any
) -> None:
    # from_edge_list implies its entities, shares its edge list and makes its snapshot while
    # reading: every answer, before and after each kind of change, is the one-by-one graph's.
    n, edges = graph
    bulk = ar.GraphStore.from_edge_list(n, edges, kind="k")
    one_by_one, _, _ = build(n, edges)
    assert _answers(bulk) == _answers(one_by_one)
    if n == 0:
        return
    node = str(data.draw(st.integers(0, n - 1)))
    changes = [
        lambda g: g.remove_entity(node),
        lambda g: g.add_entity(str(n)),
        lambda g: g.add_entity("x"),
        lambda g: g.update_entity(node, label="l", properties={"p": 1}),
        lambda g: g.add_relationship(node, node, "j", 2.0),
        lambda g: g.remove_relationship(node, node),
        lambda g: g.update_relationship(node, node, "k", weight=3.0),
        lambda g: g.add_relationships([(node, "y", "j", 1.0)], create_missing=True),
    ]
    change = data.draw(st.sampled_from(changes))
    for g in (bulk, one_by_one):
        change(g)
    assert _answers(bulk) == _answers(one_by_one)


# Items of an edge tuple: the usual ints and floats, and what only the full read may take
# (or must refuse): bools, int and float subclasses, ints past u32 or the float range,
# non-finite floats.
EDGE_ITEMS = st.one_of(
    st.integers(-2, 4),
    st.integers(2**32 - 1, 2**32 + 1),
    st.just(2**1024),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.booleans(),
    st.integers(0, 4).map(np.int64),
    st.floats(-9, 9).map(np.float64),
)


def _outcome(n: int, edges: list[Any]) -> Any:
    try:
        return ar.GraphStore.from_edge_list(n, edges, kind="k").relationships()
    except ar.GraphError as error:
        return ("error", str(error))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(EDGE_ITEMS, min_size=1, max_size=4), max_size=6))
def test_from_edge_list_reads_tuples_as_it_reads_lists(rows: list[list[Any]]) -> None:
    # Exact tuples of exact ints and floats take a fast read; lists always take the full one:
    # both give the same graph, or the same error.
    assert _outcome(5, [tuple(row) for row in rows]) == _outcome(5, rows)


@st.composite
def tied_graphs(draw: Any, max_nodes: int = 10, max_edges: int = 30) -> tuple[int, list[Edge]]:
    """Graphs whose weights are 1 or 2 (some all 1): many equal-cost paths."""
    n = draw(st.integers(min_value=1, max_value=max_nodes))
    weights = st.sampled_from([1.0]) if draw(st.booleans()) else st.sampled_from([1.0, 2.0])
    edge = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), weights)
    return n, draw(st.lists(edge, max_size=max_edges))


@settings(max_examples=300, deadline=None)
@given(tied_graphs())
def test_equal_cost_shortest_paths_are_networkx_dijkstra_paths(
    graph: tuple[int, list[Edge]],
) -> None:
    # Ties used to go to the smaller entity index; networkx's heap breaks them by push order.
    ours, directed, undirected = build(*graph)
    for peer, is_directed in ((directed, True), (undirected, False)):
        for source in peer:
            for target in peer:
                found = ours.shortest_path(source, target, directed=is_directed)
                if not nx.has_path(peer, source, target):
                    assert found is None
                    continue
                expected = nx.dijkstra_path(peer, source, target)
                assert found == (expected, nx.dijkstra_path_length(peer, source, target))


@settings(max_examples=150, deadline=None)
@given(graphs(max_nodes=7, max_edges=12))
def test_undirected_reachability_matches(graph: tuple[int, list[Edge]]) -> None:
    # The source is in its own set only on a cycle of the multigraph (networkx's
    # simple_cycles of a MultiGraph: a self-loop, a pair of parallel edges, or a longer
    # cycle); walking one relationship there and back is none.
    ours, _, undirected = build(*graph)
    on_cycle = {v for cycle in nx.simple_cycles(undirected) for v in cycle}
    for node in undirected:
        expected = nx.descendants(undirected, node) | ({node} if node in on_cycle else set())
        assert ours.reachable(node, directed=False) == expected


@SETTINGS
@given(graphs())
def test_per_entity_queries_match_networkx(graph: tuple[int, list[Edge]]) -> None:
    ours, directed, _ = build(*graph)
    relationships = ours.relationships()
    for node in directed:
        assert ours.neighbors_of(node) == sorted(set(directed.successors(node)))
        assert ours.edges_from(node) == [r for r in relationships if r["from"] == node]
        for other in directed:
            assert ours.relationship_count_between(node, other) == directed.number_of_edges(
                node, other
            )


@SETTINGS
@given(graphs(), st.lists(st.sampled_from([1.0, 3.0, 6e307, 1e308]), min_size=30, max_size=30))
def test_distances_past_the_float_range_match(
    graph: tuple[int, list[Edge]], weights: list[float]
) -> None:
    # Finite weights whose sums overflow to inf: the node is reached at cost inf, as in
    # networkx, rather than left out as unreachable.
    n, edges = graph
    ours, directed, undirected = build(n, [(a, b, weights[i]) for i, (a, b, _) in enumerate(edges)])
    for source in directed:
        for peer, is_directed in ((directed, True), (undirected, False)):
            expected = nx.single_source_dijkstra_path_length(peer, source)
            assert ours.distances(source, directed=is_directed) == expected
            for target in peer:
                found = ours.shortest_path(source, target, directed=is_directed)
                assert (found is None) == (target not in expected)
                if found is not None:
                    assert found[1] == expected[target]
                    assert found[0][0] == source and found[0][-1] == target
