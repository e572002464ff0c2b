"""GraphStore, its networkx interop and VectorIndex checked against networkx and numpy.

Random multigraphs here have parallel edges of different kinds, self-loops and zero
weights (weights are small multiples of 0.5, so tied sums are exact in floating point).
"""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

Edge = tuple[int, int, str, float]
SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def multigraphs(draw: Any) -> tuple[int, list[Edge]]:
    n = draw(st.integers(1, 8))
    edge = st.tuples(
        st.integers(0, n - 1),
        st.integers(0, n - 1),
        st.sampled_from("ab"),
        st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]),
    )
    return n, draw(st.lists(edge, max_size=18))


def build(n: int, edges: list[Edge]) -> tuple[ar.GraphStore, Any, Any]:
    ours, directed, undirected = ar.GraphStore(), nx.MultiDiGraph(), nx.MultiGraph()
    for i in range(n):
        ours.add_entity(str(i))
        directed.add_node(str(i))
        undirected.add_node(str(i))
    for a, b, kind, w in edges:
        ours.add_relationship(str(a), str(b), kind, w)
        directed.add_edge(str(a), str(b), weight=w)
        undirected.add_edge(str(a), str(b), weight=w)
    return ours, directed, undirected


def _rows(graph: ar.GraphStore) -> list[tuple[str, str, str, float, str]]:
    """Relationships as sortable rows (properties as JSON text)."""
    return sorted(
        (r["from"], r["to"], r["kind"], r["weight"], json.dumps(r["properties"]))
        for r in graph.relationships()
    )


# --- from_networkx reads a weight as add_relationship does --------------------------------


class _Indexed:
    def __index__(self) -> int:
        return 3


@pytest.mark.parametrize(
    "weight",
    [Decimal("1.5"), np.array(2.5), _Indexed(), Fraction(1, 3), np.float32(0.5), np.int64(4)],
    ids=["decimal", "numpy_0d", "index", "fraction", "float32", "int64"],
)
def test_from_networkx_takes_every_weight_add_relationship_takes(weight: object) -> None:
    # A Decimal (as a database driver gives numbers), a 0-d array or an __index__ type was
    # refused as "not a real number" though the store takes each.
    store = ar.GraphStore()
    store.add_entities(["a", "b"])
    store.add_relationship("a", "b", "k", weight)  # type: ignore[arg-type]
    g = nx.DiGraph()
    g.add_edge("a", "b", kind="k", cost=weight)
    imported = ar.from_networkx(g, weight="cost")
    assert imported.relationships() == store.relationships()


_NO_WEIGHTS = {
    "none": None,
    "str": "1.5",
    "bool": True,
    "numpy_bool": np.True_,
    "array": np.array([1.5, 2.0]),
    "complex": 1 + 0j,
    "nan": float("nan"),
    "decimal_nan": Decimal("NaN"),
    "decimal_huge": Decimal("1e400"),
    "int_huge": 10**400,
}


@pytest.mark.parametrize("weight", list(_NO_WEIGHTS.values()), ids=list(_NO_WEIGHTS))
def test_from_networkx_refuses_every_weight_add_relationship_refuses(weight: object) -> None:
    store = ar.GraphStore()
    store.add_entities(["a", "b"])
    with pytest.raises(ar.GraphError):
        store.add_relationship("a", "b", "k", weight)  # type: ignore[arg-type]
    g = nx.DiGraph()
    g.add_edge("a", "b", cost=weight)
    with pytest.raises(ar.GraphError, match=r"edge 'a' -> 'b'.*(weight|finite)"):
        ar.from_networkx(g, weight="cost")


# --- networkx and JSON round trips ---------------------------------------------------------

_names = st.sampled_from(["label", "kind", "weight", "properties", "id", "é", "🙂", "x"])
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_names, inner, max_size=3),
    max_leaves=6,
)
_properties = st.none() | st.dictionaries(_names, _values, max_size=4)


@SETTINGS
@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=3), st.text(max_size=3), _properties))
    .map(lambda rows: list({row[0]: row for row in rows}.values()))
    .filter(bool),
    st.data(),
)
def test_round_trips_keep_properties_with_clashing_names_unicode_and_big_ints(
    entities: list[tuple[str, str, dict[str, Any] | None]], data: st.DataObject
) -> None:
    g = ar.GraphStore()
    for id_, label, props in entities:
        g.add_entity(id_, label, props)
    ids = g.entity_ids()
    endpoint = st.sampled_from(ids)
    for a, b, kind, w, props in data.draw(
        st.lists(
            st.tuples(
                endpoint, endpoint, st.text(max_size=3), st.floats(-1e300, 1e300), _properties
            ),
            max_size=8,
        )
    ):
        g.add_relationship(a, b, kind, w, props)

    from_json = ar.GraphStore.from_json(g.to_json())
    assert from_json.to_json() == g.to_json()
    back = ar.from_networkx(ar.to_networkx(g))
    assert back.entity_ids() == ids
    assert [back.entity(i) for i in ids] == [g.entity(i) for i in ids]
    assert _rows(back) == _rows(g)
    copy = g.copy()
    copy.update_entity(ids[0], "changed", {"new": 1})
    copy.add_relationship(ids[0], ids[-1], "added")
    assert g.to_json() == from_json.to_json()


# --- analytics against networkx -------------------------------------------------------------


@SETTINGS
@given(multigraphs(), st.data(), st.floats(0, 3))
def test_modularity_of_any_partition_matches_networkx(
    graph: tuple[int, list[Edge]], data: st.DataObject, resolution: float
) -> None:
    ours, _, undirected = build(*graph)
    if undirected.size(weight="weight") == 0:
        return  # networkx divides by the total weight
    ids = ours.entity_ids()
    labels = data.draw(st.lists(st.integers(0, 3), min_size=len(ids), max_size=len(ids)))
    parts: dict[int, list[str]] = {}
    for entity, label in zip(ids, labels, strict=True):
        parts.setdefault(label, []).append(entity)
    partition = list(parts.values())
    expected = nx.community.modularity(
        undirected, [set(p) for p in partition], weight="weight", resolution=resolution
    )
    assert ours.modularity(partition, resolution) == pytest.approx(expected, abs=1e-9)


@SETTINGS
@given(multigraphs(), st.integers(0, 5))
def test_label_propagation_is_a_seeded_partition_into_connected_groups(
    graph: tuple[int, list[Edge]], seed: int
) -> None:
    ours, _, undirected = build(*graph)
    groups = ours.label_propagation(seed)
    assert groups == build(*graph)[0].label_propagation(seed) == ours.copy().label_propagation(seed)
    assert sorted(i for group in groups for i in group) == sorted(ours.entity_ids())
    for group in groups:
        assert nx.is_connected(undirected.subgraph(group))


@SETTINGS
@given(multigraphs(), st.integers(0, 3), st.booleans())
def test_neighborhoods_are_networkx_ego_graphs_with_every_relationship(
    graph: tuple[int, list[Edge]], hops: int, directed: bool
) -> None:
    ours, reference, _ = build(*graph)
    for entity in ours.entity_ids():
        near = ours.neighborhood(entity, hops, directed)
        ego = nx.ego_graph(reference, entity, radius=hops, undirected=not directed)
        assert set(near.entity_ids()) == set(ego.nodes)
        inside = [
            r for r in ours.relationships() if r["from"] in ego.nodes and r["to"] in ego.nodes
        ]
        assert sorted(map(json.dumps, near.relationships())) == sorted(map(json.dumps, inside))


@SETTINGS
@given(multigraphs())
def test_transitive_closure_is_networkx_descendants_plus_cycles(
    graph: tuple[int, list[Edge]],
) -> None:
    ours, reference, _ = build(*graph)
    on_a_cycle = {v for cycle in nx.simple_cycles(nx.DiGraph(reference)) for v in cycle}
    closure = ours.transitive_closure()
    assert closure.keys() == set(reference.nodes)
    for entity, reached in closure.items():
        expected = set(nx.descendants(reference, entity)) | ({entity} & on_a_cycle)
        assert reached == sorted(expected)
        assert ours.reachable(entity) == expected


@SETTINGS
@given(multigraphs(), st.booleans())
def test_zero_weight_paths_are_networkx_dijkstra_paths(
    graph: tuple[int, list[Edge]], directed: bool
) -> None:
    ours, directed_ref, undirected_ref = build(*graph)
    reference = directed_ref if directed else undirected_ref
    for source in ours.entity_ids():
        lengths = nx.single_source_dijkstra_path_length(reference, source)
        assert ours.distances(source, directed) == lengths
        for target in ours.entity_ids():
            found = ours.shortest_path(source, target, directed)
            if target not in lengths:
                assert found is None
            else:
                assert found == (nx.dijkstra_path(reference, source, target), lengths[target])


# --- VectorIndex against numpy ---------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(1, 8),
    st.integers(1, 40),
    st.sampled_from([("float16", False), ("int8", False), ("int8", True)]),
    st.integers(0, 2**32),
)
def test_compressed_search_scores_are_numpys_cosines(
    n: int, dim: int, k: int, mode: tuple[str, bool], seed: int
) -> None:
    dtype, exact = mode
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32) + np.float32(0.05)
    ids = rng.permutation(1000)[:n].astype(np.int64)
    index = ar.VectorIndex(dim, dtype=dtype, exact_rescore=exact)
    index.add(ids, vectors)
    query = rng.standard_normal(dim).astype(np.float32) + np.float32(0.05)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = dict(
        zip(ids.tolist(), (unit @ (query / np.linalg.norm(query))).tolist(), strict=True)
    )
    tolerance = 1e-5 if exact else (2e-3 if dtype == "float16" else 3e-2)

    found, scores = index.search(query, k)
    assert len(found) == min(k, n) and len(set(found.tolist())) == len(found)
    assert np.all(np.diff(scores) <= 0) and np.all(np.abs(scores) <= 1)
    for i, score in zip(found.tolist(), scores.tolist(), strict=True):
        assert score == pytest.approx(cosines[i], abs=tolerance)
    # Nothing left out scores clearly better than the worst returned.
    left_out = [cosines[i] for i in ids.tolist() if i not in set(found.tolist())]
    assert all(c <= cosines[found[-1]] + 2 * tolerance for c in left_out)
    batch_ids, batch_scores = index.search_batch(np.stack([query, query]), k)
    assert batch_ids.shape == (2, len(found))
    for row in range(2):
        assert np.allclose(batch_scores[row], scores, atol=1e-5)


def test_a_weight_whose_float_conversion_fails_is_a_graph_error() -> None:
    # A signaling NaN (Decimal("sNaN")) has no float: float() raises ValueError, which
    # escaped as it was.
    snan = Decimal("sNaN")
    store = ar.GraphStore()
    store.add_entities(["a", "b"])
    store.add_relationship("a", "b", "k", 1.0)
    for call in (
        lambda: store.add_relationship("a", "b", "j", snan),
        lambda: store.add_relationships([("a", "b", "j", snan)]),
        lambda: store.update_relationship("a", "b", "k", snan),
        lambda: ar.GraphStore.from_edge_list(2, [(0, 1, snan)]),
        lambda: store.communities(resolution=snan),
        lambda: store.modularity([["a", "b"]], resolution=snan),
    ):
        with pytest.raises(ar.GraphError, match="sNaN"):
            call()
    assert [r["weight"] for r in store.relationships()] == [1.0]
    memory = ar.EpisodicStore()
    with pytest.raises(ar.MemoryStoreError, match="sNaN"):
        memory.add_episode("a", "x", snan)
