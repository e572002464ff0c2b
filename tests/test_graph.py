"""GraphStore behaviour: mutations, errors, the seed's queries, export and interop."""

from __future__ import annotations

import json
import math
import numbers
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

import networkx as nx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import llm_agent_runtime as ar


@pytest.fixture
def people() -> ar.GraphStore:
    g = ar.GraphStore()
    g.add_entity("alice", "person", {"age": 31, "tags": ["a", "b"]})
    g.add_entity("bob", "person")
    g.add_entity("acme", "company", {"founded": 1999})
    g.add_entity("loner")
    g.add_relationship("alice", "bob", "knows", 2.0)
    g.add_relationship("bob", "alice", "knows", 1.0)
    g.add_relationship("alice", "acme", "works_at", 1.0, {"since": 2020})
    g.add_relationship("alice", "acme", "invests_in", 3.0)
    g.add_relationship("acme", "acme", "owns")
    return g


def test_entities_and_relationships_round_trip(people: ar.GraphStore) -> None:
    assert len(people) == 4 and people.relationship_count() == 5
    assert "alice" in people and "zoe" not in people
    assert people.entity("alice") == {
        "id": "alice",
        "label": "person",
        "properties": {"age": 31, "tags": ["a", "b"]},
    }
    assert people.entity("loner")["properties"] == {}
    people.update_entity("loner", label="ghost", properties={"x": None})
    assert people.entity("loner") == {"id": "loner", "label": "ghost", "properties": {"x": None}}
    assert people.edges_from("alice")[1] == {
        "from": "alice",
        "to": "acme",
        "kind": "works_at",
        "weight": 1.0,
        "properties": {"since": 2020},
    }


def test_seed_queries(people: ar.GraphStore) -> None:
    assert people.relationship_kinds() == ["invests_in", "knows", "owns", "works_at"]
    assert people.relationship_kind_count() == 4
    assert people.relationship_count_between("alice", "acme") == 2
    assert people.relationship_count_between("acme", "alice") == 0
    assert people.neighbors_of("alice") == ["acme", "bob"]
    assert people.entities_with_self_loops() == ["acme"]
    assert people.bidirectional_count() == 1
    assert people.isolated_entity_count() == 1
    assert people.total_in_degree() == 5
    assert people.avg_relationship_weight() == pytest.approx(8.0 / 5)
    assert people.avg_out_degree() == people.avg_in_degree() == pytest.approx(5 / 4)


def test_updates_and_removals(people: ar.GraphStore) -> None:
    assert people.update_relationship("alice", "bob", "knows", weight=5.0) == 1
    assert people.shortest_path("alice", "bob") == (["alice", "bob"], 5.0)
    assert people.remove_relationship("alice", "acme", "invests_in") == 1
    assert people.relationship_count_between("alice", "acme") == 1
    assert people.remove_relationship("alice", "acme") == 1
    people.remove_entity("bob")
    assert people.entity_ids() == ["alice", "loner", "acme"]  # the last moved into the gap
    assert people.relationship_count() == 1  # only acme's self-loop is left
    assert people.bfs("alice") == ["alice"]


def test_snapshot_follows_mutations() -> None:
    g = ar.GraphStore()
    for node in "abc":
        g.add_entity(node)
    g.add_relationship("a", "b")
    assert g.reachable("a") == {"b"}
    g.add_relationship("b", "c")
    assert g.reachable("a") == {"b", "c"}
    assert not g.has_cycle()
    g.add_relationship("c", "a")
    assert g.has_cycle() and g.cycles() == [["a", "b", "c"]]


def test_errors_are_graph_errors(people: ar.GraphStore) -> None:
    with pytest.raises(ar.GraphError, match='unknown entity "zoe"'):
        people.add_relationship("alice", "zoe")
    with pytest.raises(ar.GraphError, match="already exists"):
        people.add_entity("alice")
    with pytest.raises(ar.GraphError, match="finite"):
        people.add_relationship("alice", "bob", "knows", float("nan"))
    with pytest.raises(ar.GraphError, match="JSON-compatible"):
        people.add_entity("x", properties={"when": object()})
    with pytest.raises(ar.GraphError, match="keys must be strings"):
        people.add_entity("y", properties={1: "one"})
    with pytest.raises(ar.GraphError, match="must be a dict"):
        people.add_entity("z", properties=["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ar.GraphError, match="cap must be positive"):
        people.cycles(cap=0)
    with pytest.raises(ar.GraphError, match="unknown entity"):
        people.bfs("zoe")
    with pytest.raises(ar.GraphError, match="k must be between"):
        people.betweenness_centrality(k=99)
    with pytest.raises(ar.GraphError, match="degree mode"):
        people.degree_centrality("sideways")
    people.add_relationship("bob", "loner", "owes", -1.0)
    with pytest.raises(ar.GraphError, match="non-negative"):
        people.shortest_path("alice", "loner")
    with pytest.raises(ar.GraphError, match="non-negative"):
        people.communities()
    # Unweighted algorithms do not care about the sign of a weight.
    assert people.bfs("bob") == ["bob", "alice", "loner", "acme"]


def test_empty_and_single_entity_graphs_give_obvious_results() -> None:
    empty = ar.GraphStore()
    assert empty.betweenness_centrality() == {}
    assert empty.degree_centrality() == {}
    assert empty.communities() == ([], 0.0)
    assert empty.label_propagation() == []
    assert not empty.has_cycle() and empty.cycles() == []
    assert empty.transitive_closure() == {}
    one = ar.GraphStore()
    one.add_entity("only")
    assert one.betweenness_centrality() == {"only": 0.0}
    assert one.degree_centrality() == {"only": 1.0}  # networkx's convention
    assert one.communities() == ([["only"]], 0.0)
    assert one.bfs("only") == one.dfs("only") == ["only"]
    assert one.distances("only") == {"only": 0.0}
    assert one.shortest_path("only", "only") == (["only"], 0.0)


def test_subgraph_and_neighborhood(people: ar.GraphStore) -> None:
    sub = people.subgraph(["alice", "acme", "alice"])
    assert sub.entity_ids() == ["alice", "acme"]
    assert sub.relationship_count() == 3
    around_bob = people.neighborhood("bob", hops=1)
    assert set(around_bob.entity_ids()) == {"bob", "alice"}
    two_hops = people.neighborhood("bob", hops=2, directed=True)
    assert set(two_hops.entity_ids()) == {"bob", "alice", "acme"}
    sub.add_entity("new")  # a subgraph is independent of its source
    assert "new" not in people


def test_json_round_trip_and_bad_documents(people: ar.GraphStore) -> None:
    text = people.to_json()
    back = ar.GraphStore.from_json(text)
    assert back.to_json() == text
    assert back.relationships() == people.relationships()
    doc = json.loads(text)
    doc["version"] = 99
    with pytest.raises(ar.GraphError, match="newer"):
        ar.GraphStore.from_json(json.dumps(doc))
    with pytest.raises(ar.GraphError, match="not a graph document"):
        ar.GraphStore.from_json('{"entities": []}')
    with pytest.raises(ar.GraphError, match="not a graph document"):
        ar.GraphStore.from_json(text[:-10])


def test_networkx_round_trip(people: ar.GraphStore) -> None:
    exported = ar.to_networkx(people)
    assert isinstance(exported, nx.MultiDiGraph)
    assert exported.number_of_edges() == 5
    assert exported.nodes["alice"]["properties"] == {"age": 31, "tags": ["a", "b"]}
    back = ar.from_networkx(exported)
    assert [back.entity(i) for i in back.entity_ids()] == [
        people.entity(i) for i in people.entity_ids()
    ]

    def key(rel: dict[str, object]) -> str:
        return json.dumps(rel, sort_keys=True)

    # networkx lists edges grouped by source, so only the order may differ.
    assert sorted(back.relationships(), key=key) == sorted(people.relationships(), key=key)
    karate = nx.karate_club_graph()
    from_karate = ar.from_networkx(karate)
    assert from_karate.entity_count() == 34 and from_karate.relationship_count() == 78
    assert from_karate.entity("0")["properties"] == {"club": "Mr. Hi"}
    expected = nx.betweenness_centrality(karate, weight="weight")
    got = from_karate.betweenness_centrality(weighted=True, directed=False)
    assert all(abs(got[str(k)] - v) < 1e-9 for k, v in expected.items())
    clash = nx.Graph([(1, "1")])
    with pytest.raises(ar.GraphError, match="share the id"):
        ar.from_networkx(clash)


def test_to_networkx_without_networkx_names_the_extra(
    people: ar.GraphStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to raise a bare ModuleNotFoundError, which `except GraphError` does not catch.
    monkeypatch.setitem(sys.modules, "networkx", None)  # `import networkx` now fails
    with pytest.raises(
        ar.GraphError, match=r"pip install 'llm-agent-runtime\[networkx\]'"
    ) as caught:
        ar.to_networkx(people)
    assert isinstance(caught.value.__cause__, ImportError)


@pytest.mark.parametrize("bad", [["not", "a", "dict"], ("k", 1), "text", 3, 1.5])
def test_properties_that_are_not_a_dict_are_graph_errors(
    people: ar.GraphStore, bad: object
) -> None:
    # These used to raise TypeError, which `except GraphError` does not catch.
    before = people.to_json()
    calls = [
        lambda: people.add_entity("z", "", bad),  # type: ignore[arg-type]
        lambda: people.update_entity("alice", properties=bad),  # type: ignore[arg-type]
        lambda: people.add_relationship("alice", "bob", "k", 1.0, bad),  # type: ignore[arg-type]
        lambda: people.update_relationship("alice", "bob", "knows", properties=bad),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(
            ar.GraphError, match=f"must be a dict or None, got a {type(bad).__name__}"
        ):
            call()
    assert people.to_json() == before  # nothing changed


def test_from_networkx_merges_properties_with_the_other_attributes() -> None:
    g = nx.MultiDiGraph()
    g.add_node(1, label="L", properties={"p": 1, "color": "blue"}, color="red", size=3)
    g.add_node(2, color="green")
    g.add_node(3, properties={"only": True})
    g.add_edge(1, 2, weight=3, kind="k", properties={"q": 1, "extra": "explicit"}, extra="e", n=2)
    g.add_edge(2, 1, cost=4.5, weight=7)
    out = ar.from_networkx(g)
    # The explicit `properties` dict wins on a key both have ("color", "extra").
    assert out.entity("1") == {
        "id": "1",
        "label": "L",
        "properties": {"p": 1, "color": "blue", "size": 3},
    }
    assert out.entity("2")["properties"] == {"color": "green"}
    assert out.entity("3")["properties"] == {"only": True}
    assert out.relationships() == [
        {
            "from": "1",
            "to": "2",
            "kind": "k",
            "weight": 3.0,
            "properties": {"q": 1, "extra": "explicit", "n": 2},
        },
        {"from": "2", "to": "1", "kind": "related", "weight": 7.0, "properties": {"cost": 4.5}},
    ]
    # With another weight attribute, the edge's `weight` attribute is an ordinary property.
    by_cost = ar.from_networkx(g, weight="cost")
    assert [(r["weight"], r["properties"]) for r in by_cost.relationships()] == [
        (1.0, {"q": 1, "extra": "explicit", "n": 2, "weight": 3}),
        (4.5, {"weight": 7}),
    ]


@given(
    attrs=st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(-(2**63), 2**63 - 1) | st.text(max_size=3),
        max_size=4,
    ),
    explicit=st.dictionaries(st.sampled_from(["b", "c", "e"]), st.booleans(), max_size=3),
)
def test_from_networkx_properties_are_attributes_updated_by_the_explicit_dict(
    attrs: dict[str, object], explicit: dict[str, object]
) -> None:
    g = nx.DiGraph()
    g.add_node("n", properties=explicit, **attrs)
    g.add_edge("n", "n", properties=explicit, **attrs)
    out = ar.from_networkx(g)
    assert out.entity("n")["properties"] == {**attrs, **explicit}
    assert out.relationships()[0]["properties"] == {**attrs, **explicit}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda g: g.add_edge("x", "y", weight=None), r"edge 'x' -> 'y'.*weight.*got None"),
        (lambda g: g.add_edge("x", "y", weight="heavy"), r"edge 'x' -> 'y'.*got 'heavy'"),
        (lambda g: g.add_edge("x", "y", weight=True), r"edge 'x' -> 'y'.*got True"),
        (lambda g: g.add_edge("x", "y", weight=math.nan), r"edge 'x' -> 'y'.*finite"),
        (lambda g: g.add_edge("x", "y", properties=[1]), r"edge 'x' -> 'y'.*must be a dict"),
        (lambda g: g.add_edge("x", "y", when=object()), r"edge 'x' -> 'y'.*JSON-compatible"),
        (lambda g: g.add_node("n", properties=[1, 2]), r"node 'n'.*must be a dict, got list"),
        (lambda g: g.add_node(7, properties={1: "x"}), r"node 7.*keys must be strings"),
        (lambda g: g.add_node("n", when=object()), r"node 'n'.*JSON-compatible"),
    ],
)
def test_from_networkx_bad_data_are_graph_errors_naming_the_node_or_edge(
    build: Callable[[Any], None], message: str
) -> None:
    # weight=None and weight="heavy" used to raise TypeError and ValueError; a list of
    # properties, TypeError.
    g = nx.Graph()
    build(g)
    with pytest.raises(ar.GraphError, match=message):
        ar.from_networkx(g)


def test_from_networkx_names_the_key_of_a_multigraph_edge_and_defaults_none() -> None:
    g = nx.MultiGraph()
    g.add_edge("x", "y", weight=1.0)
    g.add_edge("x", "y", weight=None)
    with pytest.raises(ar.GraphError, match=r"edge 'x' -> 'y' \(key 1\)"):
        ar.from_networkx(g)
    h = nx.DiGraph()
    h.add_node("n", label=None)  # used to become the label "None"
    h.add_node("m", label=5)
    h.add_edge("n", "m", kind=None)
    out = ar.from_networkx(h)
    assert out.entity("n")["label"] == "" and out.entity("m")["label"] == "5"
    assert out.relationships()[0]["kind"] == "related"


def test_bulk_add_is_all_or_nothing() -> None:
    g = ar.GraphStore()
    g.add_entity("a")
    with pytest.raises(ar.GraphError, match='unknown entity "b"'):
        g.add_relationships([("a", "a"), ("a", "b")])
    assert g.relationship_count() == 0
    assert g.add_relationships([("a", "b", "k", 2.5), ("b", "c")], create_missing=True) == 2
    assert g.entity_ids() == ["a", "b", "c"]
    assert g.shortest_path("a", "c") == (["a", "b", "c"], 3.5)
    with pytest.raises(ar.GraphError, match="2 to 4 items"):
        g.add_relationships([("a",)])


def test_communities_label_propagation_and_modularity() -> None:
    g = ar.from_networkx(nx.karate_club_graph())
    communities, q = g.communities(seed=1)
    assert q > 0.38  # networkx's louvain reaches ~0.42-0.44 on this graph
    assert g.modularity(communities) == pytest.approx(q)
    labels = g.label_propagation(seed=3)
    assert sorted(v for c in labels for v in c) == sorted(g.entity_ids())
    with pytest.raises(ar.GraphError, match="two communities"):
        g.modularity([["0", "0"]])
    with pytest.raises(ar.GraphError, match="cover every entity"):
        g.modularity([["0"]])


def test_concurrent_readers_and_a_writer() -> None:
    g = ar.GraphStore()
    g.add_relationships([(str(i), str(i + 1)) for i in range(500)], create_missing=True)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(20):
                assert len(g.bfs("0")) >= 501
                g.betweenness_centrality(k=10)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def write() -> None:
        for i in range(500, 600):
            g.add_relationship(str(i), str(i + 1)) if str(i + 1) in g else g.add_relationships(
                [(str(i), str(i + 1))], create_missing=True
            )

    threads = [threading.Thread(target=read) for _ in range(3)] + [threading.Thread(target=write)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(g.bfs("0")) == 601


def test_bulk_builders() -> None:
    g = ar.GraphStore.from_edge_list(4, [(0, 1), (1, 2, 2.5), (3, 3)], kind="link")
    assert g.entity_ids() == ["0", "1", "2", "3"]
    assert g.relationship_kinds() == ["link"]
    assert g.shortest_path("0", "2") == (["0", "1", "2"], 3.5)
    with pytest.raises(ar.GraphError, match="out of range"):
        ar.GraphStore.from_edge_list(2, [(0, 2)])
    with pytest.raises(ar.GraphError, match="finite"):
        ar.GraphStore.from_edge_list(2, [(0, 1, float("inf"))])
    with pytest.raises(ar.GraphError, match="2 or 3 items"):
        ar.GraphStore.from_edge_list(2, [(0, 1, 1.0, 9)])
    # A large graph: its entities are implied (not stored) and its snapshot made as it is read.
    n = 6_000
    edges = [(i % n, (i * 7 + 1) % n, float(i % 5 + 1)) for i in range(3 * n)]
    big = ar.GraphStore.from_edge_list(n, edges)
    assert big.entity_count() == n and big.relationship_count() == 3 * n
    assert big.entity_ids()[:3] == ["0", "1", "2"] and big.has_entity(str(n - 1))
    assert big.shortest_path("0", "1") == (["0", "1"], 1.0)
    with pytest.raises(ar.GraphError, match="out of range"):
        ar.GraphStore.from_edge_list(n, [*edges, (0, n)])
    with pytest.raises(ar.GraphError, match="tuple, a list or a numpy array row"):
        ar.GraphStore.from_edge_list(n, [*edges[:10], {0, 1}])  # type: ignore[list-item]
    g.add_entities(["x", "y"])
    assert g.entity_count() == 6
    with pytest.raises(ar.GraphError, match="already exists"):
        g.add_entities(["z", "z"])
    with pytest.raises(ar.GraphError, match="already exists"):
        g.add_entities(["w", "x"])
    assert "z" not in g and "w" not in g


@pytest.mark.parametrize("n", [0, 1, 2, 3, 6])
def test_betweenness_from_no_sources_is_a_graph_error(n: int) -> None:
    g = ar.GraphStore.from_edge_list(n, [(i, (i + 1) % n) for i in range(n)])
    # An empty sample used to rescale by zero sources: NaN for every entity.
    for options in ({}, {"normalized": False}, {"directed": False}, {"weighted": True}):
        with pytest.raises(ar.GraphError, match="at least one source"):
            g.betweenness_from([], **options)
    with pytest.raises(ar.GraphError, match="k must be between 1"):
        g.betweenness_centrality(k=0)
    if n:  # every entity as a source is the exact answer, as networkx computes it
        cycle = nx.DiGraph(nx.cycle_graph(n, create_using=nx.DiGraph))
        assert g.betweenness_from([str(i) for i in range(n)]) == pytest.approx(
            {str(v): b for v, b in nx.betweenness_centrality(cycle).items()}
        )


def test_betweenness_from_a_source_listed_twice_is_a_graph_error() -> None:
    g = ar.GraphStore()
    for entity in "abcd":
        g.add_entity(entity)
    for a, b in ["ab", "bc", "cd"]:
        g.add_relationship(a, b, "k")
    exact = g.betweenness_from(list("abcd"))
    assert exact == pytest.approx({"a": 0.0, "b": 1 / 3, "c": 1 / 3, "d": 0.0})
    assert exact == pytest.approx(g.betweenness_centrality())
    # A repeated source was summed twice but rescaled as distinct sources: list("abcda")
    # gave b=0.5, c=0.375. It is refused, naming the entity, as modularity refuses one.
    for options in ({}, {"normalized": False}, {"directed": False}, {"weighted": True}):
        with pytest.raises(ar.GraphError, match=r'entity "a" is listed twice in sources'):
            g.betweenness_from(list("abcda"), **options)
        with pytest.raises(ar.GraphError, match=r'entity "c" is listed twice'):
            g.betweenness_from(["c", "c"], **options)
    with pytest.raises(ar.GraphError, match=r'entity "a" is in two communities'):
        g.modularity([["a", "b"], ["c", "d", "a"]])
    assert g.betweenness_from(list("abcd")) == exact  # nothing was left changed


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda g: g.bfs("alice", max_depth=-1), "max_depth must be >= 0, got -1"),
        (lambda g: g.dfs("alice", max_depth=-2), "max_depth must be >= 0, got -2"),
        (lambda g: g.neighborhood("alice", hops=-1), "hops must be >= 0, got -1"),
        (lambda g: g.betweenness_centrality(k=-1), r"k must be between 1 and .*got -1"),
        (lambda g: g.betweenness_centrality(k=2, seed=-1), "seed must be between 0"),
        (lambda g: g.communities(seed=-5), "seed must be between 0"),
        (lambda g: g.label_propagation(seed=2**64), "seed must be between 0"),
        (lambda g: g.label_propagation(max_rounds=-1), "max_rounds must be >= 0, got -1"),
        (lambda g: g.cycles(-1), "cap must be positive"),
        (lambda _: ar.GraphStore.from_edge_list(-1, []), "n must be between 0"),
        (lambda _: ar.GraphStore.from_edge_list(2, [(0, -1)]), "edge index -1 is out of range"),
        (lambda _: ar.GraphStore.from_edge_list(2, [(2**40, 1)]), "out of range"),
        # A float or a string index was a bare TypeError.
        (lambda _: ar.GraphStore.from_edge_list(2, [(0, 1.0)]), "index must be an int, got 1.0"),
        (lambda _: ar.GraphStore.from_edge_list(2, [["1", 0]]), "index must be an int, got '1'"),
    ],
)
def test_negative_integer_arguments_are_graph_errors(
    people: ar.GraphStore, call, message: str
) -> None:  # type: ignore[no-untyped-def]
    # These used to raise Python's OverflowError, which `except GraphError` does not catch.
    with pytest.raises(ar.GraphError, match=message):
        call(people)
    assert people.bfs("alice", max_depth=0) == ["alice"]
    assert people.label_propagation(seed=2**64 - 1, max_rounds=0)


@pytest.mark.parametrize("where", ["entities", "relationships"])
def test_from_json_refuses_properties_that_are_not_an_object(where: str) -> None:
    g = ar.GraphStore()
    g.add_entity("a", "x")
    g.add_entity("b", "x")
    g.add_relationship("a", "b", "knows")
    doc = json.loads(g.to_json())
    doc[where][0]["properties"] = [1, 2]
    with pytest.raises(ar.GraphError, match="not an object"):
        ar.GraphStore.from_json(json.dumps(doc))


@pytest.mark.parametrize("where", ["entities", "relationships"])
@pytest.mark.parametrize("big", [2**64, -(2**63) - 1, 10**30])
def test_from_json_refuses_integers_beyond_64_bits_rather_than_rounding_them(
    where: str, big: int
) -> None:
    # add_entity refuses such an int; a document holding one (written by another program)
    # would otherwise come back as the nearest float.
    g = ar.GraphStore()
    g.add_entity("a 18446744073709551616", "x")
    g.add_entity("b", "x")
    g.add_relationship("a 18446744073709551616", "b", "knows")
    doc = json.loads(g.to_json())
    doc[where][0]["properties"] = {"n": [2**63 - 1, -(2**63), 2**64 - 1]}
    assert ar.GraphStore.from_json(json.dumps(doc)).entity_count() == 2  # digits in ids are fine
    doc[where][0]["properties"] = {"n": [1.5, {"big": big}]}
    with pytest.raises(ar.GraphError, match=f"the integer {big} does not fit in 64 bits"):
        ar.GraphStore.from_json(json.dumps(doc))


def test_from_json_reads_a_weight_written_as_a_wide_integer() -> None:
    # A weight is a float: 1e20 written out in full (as another program may) is that float,
    # not a property integer that would lose digits.
    g = ar.GraphStore()
    g.add_entity("a", "x", {"n": 2**64 - 1})
    g.add_entity("b", "x")
    g.add_relationship("a", "b", "knows", 1.0, {"m": -(2**63)})
    doc = json.loads(g.to_json())
    text = json.dumps(doc).replace('"weight": 1.0', f'"weight": {10**20}')
    assert f'"weight": {10**20}' in text
    back = ar.GraphStore.from_json(text)
    assert [r["weight"] for r in back.relationships()] == [1e20]
    assert back.entity("a")["properties"] == {"n": 2**64 - 1}


def test_from_json_errors_in_properties_name_whose_they_are_and_where() -> None:
    # Read apart from the document, their errors gave the position where the properties
    # ended, and never said whose they were.
    g = ar.GraphStore()
    g.add_entity("a", "x", {"k": 1, "m": [1, 2, 3]})
    g.add_entity("b", "x")
    g.add_relationship("a", "b", "knows", 1.0, {"n": 5})
    text = json.dumps(json.loads(g.to_json()), indent=2)
    twice = text.replace('"k": 1,', '"k": 1, "k": 2,')
    line = next(i for i, row in enumerate(twice.splitlines(), 1) if '"k": 2' in row)
    column = twice.splitlines()[line - 1].index('"k": 2') + 1
    with pytest.raises(ar.GraphError) as repeated:
        ar.GraphStore.from_json(twice)
    message = str(repeated.value)
    assert message.startswith('not a graph document: the properties of entity "a": the key "k"')
    at = re.search(r"at line (\d+) column (\d+)$", message)
    assert at is not None and int(at[1]) == line  # the column: where the parser stopped
    assert column <= int(at[2]) <= column + len('"k": 2')
    wide = text.replace('"n": 5', f'"n": {2**64}')
    line = next(i for i, row in enumerate(wide.splitlines(), 1) if str(2**64) in row)
    column = wide.splitlines()[line - 1].index(str(2**64)) + 1
    with pytest.raises(ar.GraphError) as refused:
        ar.GraphStore.from_json(wide)
    assert str(refused.value) == (
        'not a graph document: the properties of relationship "a" -> "b": the integer '
        f"{2**64} does not fit in 64 bits at line {line} column {column}"
    )


LONE = "x\ud800"  # a str with no UTF-8 form (a surrogate pair cut in two)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda g: g.add_entity(LONE), id="add_entity"),
        pytest.param(lambda g: g.add_entity("new", LONE), id="add_entity_label"),
        pytest.param(lambda g: g.update_entity(LONE, label="l"), id="update_entity"),
        pytest.param(lambda g: g.remove_entity(LONE), id="remove_entity"),
        pytest.param(lambda g: g.entity(LONE), id="entity"),
        pytest.param(lambda g: g.add_entities(["new", LONE]), id="add_entities"),
        pytest.param(lambda g: g.add_relationship("alice", LONE), id="add_relationship_to"),
        pytest.param(lambda g: g.add_relationship(LONE, "alice"), id="add_relationship_from"),
        pytest.param(
            lambda g: g.add_relationship("alice", "bob", LONE), id="add_relationship_kind"
        ),
        pytest.param(
            lambda g: g.add_relationships([("alice", LONE)], create_missing=True),
            id="add_relationships",
        ),
        pytest.param(
            lambda g: g.update_relationship(LONE, "bob", "knows", weight=2.0),
            id="update_relationship_from",
        ),
        pytest.param(
            lambda g: g.update_relationship("alice", "bob", LONE, weight=2.0),
            id="update_relationship_kind",
        ),
        pytest.param(lambda g: g.remove_relationship("alice", LONE), id="remove_relationship_to"),
        pytest.param(
            lambda g: g.remove_relationship("alice", "bob", LONE), id="remove_relationship_kind"
        ),
        pytest.param(lambda g: g.edges_from(LONE), id="edges_from"),
        pytest.param(lambda g: g.neighbors_of(LONE), id="neighbors_of"),
        pytest.param(
            lambda g: g.relationship_count_between("alice", LONE), id="relationship_count_between"
        ),
        pytest.param(lambda g: g.bfs(LONE), id="bfs"),
        pytest.param(lambda g: g.dfs(LONE), id="dfs"),
        pytest.param(lambda g: g.shortest_path(LONE, "alice"), id="shortest_path_source"),
        pytest.param(lambda g: g.shortest_path("alice", LONE), id="shortest_path_target"),
        pytest.param(lambda g: g.distances(LONE), id="distances"),
        pytest.param(lambda g: g.reachable(LONE), id="reachable"),
        pytest.param(lambda g: g.neighborhood(LONE), id="neighborhood"),
        pytest.param(lambda g: g.subgraph(["alice", LONE]), id="subgraph"),
        pytest.param(lambda g: g.degree_centrality(LONE), id="degree_centrality"),
        pytest.param(lambda g: g.betweenness_from(["alice", LONE]), id="betweenness_from"),
        pytest.param(
            lambda g: g.modularity([["alice", "bob", "acme"], ["loner", LONE]]), id="modularity"
        ),
        pytest.param(lambda g: ar.GraphStore.from_json(LONE), id="from_json"),
        pytest.param(
            lambda g: ar.GraphStore.from_edge_list(2, [(0, 1)], kind=LONE), id="from_edge_list_kind"
        ),
        pytest.param(
            lambda g: ar.from_networkx(nx.path_graph([LONE, "b"])), id="from_networkx_node"
        ),
        pytest.param(
            lambda g: ar.from_networkx(nx.Graph([("a", "b", {"kind": LONE})])),
            id="from_networkx_kind",
        ),
    ],
)
def test_text_that_is_not_valid_unicode_is_a_graph_error(
    people: ar.GraphStore, call: Callable[[ar.GraphStore], object]
) -> None:
    # These raised the built-in UnicodeEncodeError (add_entity alone gave GraphError).
    before = people.to_json()
    with pytest.raises(ar.GraphError, match="not valid Unicode"):
        call(people)
    assert people.to_json() == before


def test_an_id_that_is_not_valid_unicode_is_never_an_entity(people: ar.GraphStore) -> None:
    assert LONE not in people
    assert not people.has_entity(LONE)
    assert "alice" in people and people.has_entity("alice")
    with pytest.raises(TypeError):
        people.has_entity(1)  # type: ignore[arg-type]
    for other in (1, None, b"alice", ("alice",)):  # `in` answers, as a dict's does
        assert other not in people


@pytest.mark.parametrize("weight", ["heavy", True, np.True_, [1.0]])
def test_a_weight_that_is_no_real_number_is_a_graph_error(
    people: ar.GraphStore, weight: object
) -> None:
    # A str was a bare TypeError; a bool was stored as 1.0 (from_networkx refused both).
    before = people.to_json()
    calls: list[Callable[[], object]] = [
        lambda: people.add_relationship("alice", "bob", "k", weight),  # type: ignore[arg-type]
        lambda: people.add_relationships([("alice", "bob", "k", weight)]),  # type: ignore[list-item]
        lambda: people.update_relationship("alice", "bob", "knows", weight=weight),  # type: ignore[arg-type]
        lambda: ar.GraphStore.from_edge_list(2, [(0, 1, weight)]),  # type: ignore[list-item]
    ]
    for call in calls:
        with pytest.raises(ar.GraphError, match="weight must be a real number, got"):
            call()
    assert people.to_json() == before


@pytest.mark.parametrize("weight", [10**400, -(10**400)], ids=["huge", "huge_negative"])
def test_a_weight_beyond_the_float_range_is_a_graph_error(
    people: ar.GraphStore, weight: int
) -> None:
    # These raised the built-in OverflowError.
    from fractions import Fraction

    before = people.to_json()
    calls: list[Callable[[], object]] = [
        lambda: people.add_relationship("alice", "bob", "k", weight),
        lambda: people.add_relationship("alice", "bob", weight=weight),
        lambda: people.add_relationships([("alice", "bob", "k", weight)]),
        lambda: people.update_relationship("alice", "bob", "knows", weight=weight),
    ]
    for call in calls:
        with pytest.raises(ar.GraphError, match=r"weight must be finite.*beyond the float range"):
            call()
    assert people.to_json() == before
    with pytest.raises(ar.GraphError, match="beyond the float range"):
        ar.GraphStore.from_edge_list(2, [(0, 1, weight)])
    for value in (weight, Fraction(weight, 3)):
        g = nx.DiGraph()
        g.add_edge("a", "b", weight=value)
        with pytest.raises(ar.GraphError, match=r"edge 'a' -> 'b'.*finite real number"):
            ar.from_networkx(g)
    # A big int within the float range is still a weight.
    people.add_relationship("alice", "bob", "k", 10**300)
    assert people.relationship_count_between("alice", "bob") == 2


@pytest.mark.parametrize(
    "resolution",
    [math.nan, math.inf, -math.inf, -0.5, 10**400],
    ids=["nan", "inf", "-inf", "-0.5", "huge"],
)
def test_resolution_must_be_a_finite_non_negative_number(
    people: ar.GraphStore, resolution: float
) -> None:
    # NaN used to be accepted, giving NaN modularity.
    partition = [["alice", "bob"], ["acme", "loner"]]
    with pytest.raises(ar.GraphError, match="resolution must be a finite number >= 0"):
        people.communities(resolution=resolution)
    with pytest.raises(ar.GraphError, match="resolution must be a finite number >= 0"):
        people.modularity(partition, resolution=resolution)
    g = nx.MultiGraph()
    g.add_nodes_from(people.entity_ids())
    for r in people.relationships():
        g.add_edge(r["from"], r["to"], weight=r["weight"])
    for ok in (0, 0.0, 2.5):
        assert people.modularity(partition, resolution=ok) == pytest.approx(
            nx.community.modularity(g, [set(c) for c in partition], resolution=ok)
        )
        people.communities(resolution=ok)


def test_paths_whose_cost_overflows_are_found_at_cost_inf() -> None:
    # Finite weights summing past the float range: "c" was reported unreachable.
    g = ar.GraphStore()
    peer = nx.DiGraph()
    for a, b in [("a", "b"), ("b", "c"), ("c", "d")]:
        for x in (a, b):
            if x not in g:
                g.add_entity(x)
        weight = 1.0 if a == "c" else 1e308
        g.add_relationship(a, b, weight=weight)
        peer.add_edge(a, b, weight=weight)
    found = g.shortest_path("a", "d")
    assert found == (nx.dijkstra_path(peer, "a", "d"), nx.dijkstra_path_length(peer, "a", "d"))
    assert found[1] == math.inf
    assert g.distances("a") == nx.single_source_dijkstra_path_length(peer, "a")
    assert g.distances("a", directed=False) == nx.single_source_dijkstra_path_length(
        peer.to_undirected(), "a"
    )
    assert g.shortest_path("d", "a") is None
    expected = nx.betweenness_centrality(peer, weight="weight", normalized=False)
    assert expected == {"a": 0.0, "b": 2.0, "c": 2.0, "d": 0.0}
    assert g.betweenness_centrality(weighted=True, normalized=False) == expected
    # Undirected, the path a - b - c - d has the same answer. networkx gives b 1.75 and c 3.0
    # there: c and d are both at distance inf from a (and at 1e308 from b, as 1e308 + 1
    # rounds to 1e308), and networkx then records d, settled after c, as a predecessor of c
    # as well as c of d. Only nodes settled earlier are predecessors here.
    got = g.betweenness_centrality(weighted=True, normalized=False, directed=False)
    assert got == {"a": 0.0, "b": 2.0, "c": 2.0, "d": 0.0}


def test_reachable_undirected_lists_the_source_only_on_a_cycle() -> None:
    g = ar.GraphStore()
    for x in "abcd":
        g.add_entity(x)
    g.add_relationship("a", "b")
    # a - b - a walks one relationship twice: no cycle (networkx: descendants = {b}).
    assert g.reachable("a", directed=False) == nx.descendants(nx.Graph([("a", "b")]), "a")
    g.add_relationship("b", "a")  # two relationships between a and b: a 2-cycle
    assert g.reachable("a", directed=False) == {"a", "b"}
    assert g.reachable("a") == {"a", "b"}
    g.add_relationship("c", "b")
    g.add_relationship("c", "d")
    assert g.reachable("c", directed=False) == {"a", "b", "d"}
    g.add_relationship("d", "b")  # the triangle b - c - d
    assert g.reachable("c", directed=False) == {"a", "b", "c", "d"}
    g.add_relationship("d", "d")
    assert g.reachable("d") == {"b", "a", "d"}


def test_reachable_from_a_hub_is_one_search() -> None:
    # One breadth-first search per out-neighbour, each with its own O(n) array, took 16.7 s
    # here; a single search takes milliseconds.
    import time

    n = 20_000
    edges = [(0, i) for i in range(1, n)] + [(i, 0) for i in range(1, n)]
    g = ar.GraphStore.from_edge_list(n, edges)
    g.bfs("0")
    start = time.perf_counter()
    for directed in (True, False):
        assert len(g.reachable("0", directed=directed)) == n  # "0" lies on a cycle
        assert len(g.reachable("5", directed=directed)) == n
    assert time.perf_counter() - start < 2.0


def test_cycles_of_a_large_component_with_few_cycles_take_a_few_passes() -> None:
    # Each start node of the component recomputed its reach over the nodes after it: a ring
    # of 40k nodes took 20 s for its one cycle. Nodes found on no cycle are now left for good.
    import time

    n = 40_000
    ring = ar.GraphStore.from_edge_list(n, [(i, (i + 1) % n) for i in range(n)])
    ring.bfs("0")
    start = time.perf_counter()
    (cycle,) = ring.cycles(cap=5)
    assert len(cycle) == n and cycle[0] == "0"
    assert time.perf_counter() - start < 2.0


def test_per_entity_queries_do_not_scan_every_relationship() -> None:
    # neighbors_of, edges_from and relationship_count_between read the entity's own
    # relationships: they scanned all of them per call (about 4 s for every node here).
    import random
    import time
    from collections import Counter

    n, m = 20_000, 200_000
    rnd = random.Random(0)
    edges = [(rnd.randrange(n), rnd.randrange(n)) for _ in range(m)]
    g = ar.GraphStore.from_edge_list(n, edges)
    ids = [str(i) for i in range(n)]
    g.neighbors_of("0")
    start = time.perf_counter()
    neighbors = [g.neighbors_of(i) for i in ids]
    counts = [g.relationship_count_between(i, str((int(i) * 7) % n)) for i in ids]
    out = [g.edges_from(i) for i in ids[:2000]]
    assert time.perf_counter() - start < 2.5
    leaving: dict[int, list[tuple[str, str]]] = {}
    for a, b in edges:
        leaving.setdefault(a, []).append((str(a), str(b)))
    pairs = Counter(edges)
    assert neighbors == [sorted({b for _, b in leaving.get(i, [])}) for i in range(n)]
    assert counts == [pairs[i, (i * 7) % n] for i in range(n)]
    assert [[(r["from"], r["to"]) for r in rows] for rows in out] == [
        leaving.get(i, []) for i in range(2000)
    ]


def test_orders_follow_entity_ids_also_after_a_removal() -> None:
    # The documented order is entity_ids() order: insertion order until a removal moves the
    # last entity into the gap.
    g = ar.GraphStore()
    for x in "abcd":
        g.add_entity(x)
    for a, b in [("b", "d"), ("d", "b"), ("b", "c"), ("c", "b")]:
        g.add_relationship(a, b)
    g.remove_entity("a")
    order = g.entity_ids()
    assert order == ["d", "b", "c"]
    position = {x: i for i, x in enumerate(order)}
    cycles = g.cycles()
    assert sorted(map(sorted, cycles)) == [["b", "c"], ["b", "d"]]
    for cycle in cycles:
        assert cycle[0] == min(cycle, key=position.__getitem__)
    communities, _ = g.communities()
    for community in communities:
        assert community == sorted(community, key=position.__getitem__)
    firsts = [position[c[0]] for c in communities]
    assert firsts == sorted(firsts)


def test_numpy_integer_properties_are_ints() -> None:
    # Graphs built from pandas carry numpy ints: they were refused as not JSON-compatible.
    import networkx as nx
    import numpy as np

    g = ar.GraphStore()
    g.add_entity("a", "x", {"n": np.int64(3), "u": np.uint64(2**64 - 1), "l": [np.int32(1)]})
    assert g.entity("a")["properties"] == {"n": 3, "u": 2**64 - 1, "l": [1]}
    assert type(g.entity("a")["properties"]["n"]) is int
    source = nx.MultiDiGraph()
    source.add_node("p", rank=np.int64(7))
    source.add_node("q")
    source.add_edge("p", "q", hops=np.int16(2))
    imported = ar.from_networkx(source)
    assert imported.entity("p")["properties"] == {"rank": 7}
    assert imported.relationships()[0]["properties"] == {"hops": 2}
    with pytest.raises(ar.GraphError, match="JSON-compatible"):
        g.add_entity("b", "x", {"v": object()})


def test_numpy_bool_properties_are_bools() -> None:
    # A comparison of numpy values (or a pandas column) gives numpy bools: they were refused
    # as "got a bool", which a bool is not refused for.
    import numpy as np

    g = ar.GraphStore()
    g.add_entity("a", "x", {"t": np.bool_(True), "f": [np.float32(1) > 2]})
    g.add_entity("b", "x")
    g.add_relationship("a", "b", properties={"seen": np.bool_(False)})
    assert g.entity("a")["properties"] == {"t": True, "f": [False]}
    assert type(g.entity("a")["properties"]["t"]) is bool
    assert g.relationships()[0]["properties"] == {"seen": False}
    # An array is no bool, whatever its values.
    with pytest.raises(ar.GraphError, match="JSON-compatible; got a ndarray"):
        g.add_entity("c", "x", {"v": np.array([True])})


def test_property_keys_keep_their_order_at_every_level() -> None:
    # As a Python dict (and json) keeps them: they used to come back sorted.
    props = {"zeta": 1, "alpha": {"y": 1, "b": [{"z": 0, "a": 1}]}, "mid": None}
    g = ar.GraphStore()
    g.add_entity("n", "x", props)
    g.add_entity("m", "x")
    g.add_relationship("n", "m", "k", properties=props)

    def keys(value: object) -> object:  # the keys of every dict, in order, nested
        if isinstance(value, dict):
            return [(k, keys(v)) for k, v in value.items()]
        if isinstance(value, list):
            return [keys(v) for v in value]
        return None

    for graph in (g, g.copy(), ar.GraphStore.from_json(g.to_json())):
        assert keys(graph.entity("n")["properties"]) == keys(props)
        assert keys(graph.relationships()[0]["properties"]) == keys(props)
    assert g.to_json().index('"zeta"') < g.to_json().index('"alpha"')


class UnreadableReal:
    """A number whose `__float__` fails (registered as a `numbers.Real` below)."""

    def __float__(self) -> float:
        raise ValueError("no float here")


numbers.Real.register(UnreadableReal)


def test_numpy_float_properties_are_floats() -> None:
    # numpy.float32 (and float16) were refused while numpy ints were accepted; float64 is a
    # float subclass and always passed. Any inexact numbers.Real is a float; exact fractions
    # (which a float would round) and objects that merely have __float__ are still refused,
    # and a float must be finite.
    import decimal
    import fractions

    import networkx as nx
    import numpy as np

    g = ar.GraphStore()
    g.add_entity(
        "a",
        "x",
        {
            "f32": np.float32(0.5),
            "f16": np.float16(-2.0),
            "ld": np.longdouble(0.25),
            "l": [np.float32(1.5)],
        },
    )
    props = g.entity("a")["properties"]
    assert props == {"f32": 0.5, "f16": -2.0, "ld": 0.25, "l": [1.5]}
    assert all(type(props[k]) is float for k in ("f32", "f16", "ld"))
    g.add_entity("b")
    g.add_relationship("a", "b", properties={"score": np.float32(0.125)})
    assert g.relationships()[0]["properties"] == {"score": 0.125}
    assert ar.GraphStore.from_json(g.to_json()).entity("a")["properties"] == props
    source = nx.MultiDiGraph()
    source.add_node("p", score=np.float32(0.75))
    assert ar.from_networkx(source).entity("p")["properties"] == {"score": 0.75}
    for bad, message in [
        (np.float32("nan"), "must be finite"),
        (np.float16("inf"), "must be finite"),
        (np.longdouble("1e4000"), "must be finite"),
        (fractions.Fraction(1, 3), "JSON-compatible; got a Fraction"),
        (decimal.Decimal("0.5"), "JSON-compatible; got a Decimal"),
        (UnreadableReal(), "UnreadableReal could not be read as a float: no float here"),
        (np.complex64(1), "JSON-compatible"),
        (np.array(0.5), "JSON-compatible; got a ndarray"),
    ]:
        with pytest.raises(ar.GraphError, match=message):
            g.add_entity("c", "x", {"v": bad})
    assert "c" not in g


@pytest.mark.parametrize(
    ("weights", "mean"),
    [
        ([1e308, 1e308], 1e308),
        ([1.7e308, 1.7e308, -1.7e308], 1.7e308 / 3),
        ([-1.7e308, 1.7e308], 0.0),
        ([0.5, 1.5, 4.0], 2.0),
    ],
)
def test_the_mean_weight_of_finite_weights_is_finite(weights: list[float], mean: float) -> None:
    # Their sum went past the float range: the mean came back as inf.
    g = ar.GraphStore()
    g.add_relationships(
        [(f"a{i}", f"b{i}", "r", weight) for i, weight in enumerate(weights)],
        create_missing=True,
    )
    assert g.avg_relationship_weight() == pytest.approx(mean, rel=1e-12, abs=1e-300)


def test_updates_and_removals_read_the_entitys_own_relationships() -> None:
    # An update (and a removal that finds nothing) read `from`'s relationships through its
    # links, not a scan of the whole graph: the same results, on a bulk-loaded graph too.
    g = ar.GraphStore.from_edge_list(4, [(0, 1), (0, 1), (1, 2), (2, 0), (0, 3)])
    assert g.neighbors_of("0") == ["1", "3"]  # the links are built
    assert g.update_relationship("0", "1", "related", weight=2.5) == 2
    assert g.update_relationship("1", "0", "related", weight=9.0) == 0  # reversed: none
    assert g.update_relationship("0", "1", "other", weight=9.0) == 0
    assert g.remove_relationship("1", "0") == 0
    assert g.remove_relationship("0", "2") == 0
    assert g.relationship_count() == 5
    assert [(r["from"], r["to"], r["weight"]) for r in g.relationships()] == [
        ("0", "1", 2.5),
        ("0", "1", 2.5),
        ("1", "2", 1.0),
        ("2", "0", 1.0),
        ("0", "3", 1.0),
    ]
    g.add_relationship("0", "2", "cites", 4.0)  # linked as it is added
    assert g.update_relationship("0", "2", "cites", weight=5.0) == 1
    assert g.remove_relationship("0", "2", "related") == 0
    assert g.remove_relationship("0", "1") == 2
    assert g.neighbors_of("0") == ["2", "3"]
    assert g.update_relationship("0", "2", "cites", weight=6.0) == 1  # links rebuilt
    assert [(r["from"], r["to"], r["kind"], r["weight"]) for r in g.edges_from("0")] == [
        ("0", "3", "related", 1.0),
        ("0", "2", "cites", 6.0),
    ]
