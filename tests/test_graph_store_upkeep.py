"""What the store keeps up to date as it changes: per-entity queries answered from the
entity's own relationships (no snapshot rebuilt after each write), the table of kinds in use,
and the same property limits however properties come in.
"""

from __future__ import annotations

import ctypes
import gc
import json
import random
import sys
from typing import Any

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import llm_agent_runtime as ar


def _nested(levels: int) -> dict[str, Any]:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return {"deep": value}


def _document(properties: dict[str, Any]) -> str:
    return json.dumps(
        {
            "format": "llm-agent-runtime/graph",
            "version": 1,
            "entities": [
                {"id": "a", "label": "", "properties": properties},
                {"id": "b", "label": "", "properties": None},
            ],
            "relationships": [
                {"from": "a", "to": "b", "kind": "k", "weight": 1.0, "properties": None}
            ],
        }
    )


def test_from_json_refuses_properties_deeper_than_add_entity_accepts() -> None:
    # from_json read up to JSON's 128 levels, so a graph could hold properties that its own
    # networkx round trip, or add_entity, then refused.
    deepest = max(
        levels
        for levels in range(100)
        if _accepted(lambda p: ar.GraphStore().add_entity("a", "", p), levels)
    )
    assert deepest == 63  # {"deep": [[...0...]]}: the object, "deep", and 63 lists
    g = ar.GraphStore.from_json(_document(_nested(deepest)))
    assert g.entity("a")["properties"] == _nested(deepest)
    assert ar.from_networkx(ar.to_networkx(g)).to_json() == g.to_json()
    for levels in (deepest + 1, 100):
        with pytest.raises(ar.GraphError, match=r'entity "a" nest deeper than 64 levels'):
            ar.GraphStore.from_json(_document(_nested(levels)))
    relationship = json.loads(_document({}))
    relationship["relationships"][0]["properties"] = _nested(deepest + 1)
    with pytest.raises(ar.GraphError, match=r'"a" -> "b" nest deeper than 64 levels'):
        ar.GraphStore.from_json(json.dumps(relationship))


def _accepted(add: Any, levels: int) -> bool:
    try:
        add(_nested(levels))
    except ar.GraphError:
        return False
    return True


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_kinds_no_relationship_uses_are_forgotten() -> None:
    # Every kind ever used stayed in the table (and copy() and subgraph() cloned it all):
    # 250k kinds added and removed in turn grew the process by about 60 MiB, then 100 more
    # for a copy and a subgraph.
    g = ar.GraphStore()
    g.add_entities(["a", "b"])
    g.add_relationship("a", "b", "kept")
    before = _rss_mib()
    for i in range(250_000):
        kind = f"observed-{i}-" + "x" * 40
        g.add_relationship("a", "b", kind)
        g.remove_relationship("a", "b", kind)
    copies = [g.copy(), g.subgraph(["a", "b"]), g.neighborhood("a")]
    assert _rss_mib() - before < 20
    for graph in (g, *copies):
        assert graph.relationship_kinds() == ["kept"]
        assert graph.relationships() == [
            {"from": "a", "to": "b", "kind": "kept", "weight": 1.0, "properties": {}}
        ]
    assert g.update_relationship("a", "b", "observed-7-" + "x" * 40, weight=2.0) == 0


# ---------------------------------------------------------------- a reference model


Rel = tuple[str, str, str, float]
IDS = [f"v{i}" for i in range(8)] + ["0", "1"]
KINDS = ["a", "b", "c"]


class GraphMachine(RuleBasedStateMachine):
    """Mutations and per-entity queries, checked against a Python model of the store: a list
    of ids (a removal moves the last one into the gap) and relationships in insertion order."""

    def __init__(self) -> None:
        super().__init__()
        self.g = ar.GraphStore()
        self.ids: list[str] = []
        self.rels: list[Rel] = []

    # ------------------------------------------------------------ mutations
    @rule(data=st.data())
    def start_from_an_edge_list(self, data: Any) -> None:
        n = data.draw(st.integers(0, 5))
        edges = data.draw(
            st.lists(
                st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, max(n - 1, 0))), max_size=8
            )
            if n
            else st.just([])
        )
        self.g = ar.GraphStore.from_edge_list(n, edges, kind="a")
        self.ids = [str(i) for i in range(n)]
        self.rels = [(str(u), str(v), "a", 1.0) for u, v in edges]

    @rule(id=st.sampled_from(IDS))
    def add_entity(self, id: str) -> None:
        if id in self.ids:
            with pytest.raises(ar.GraphError):
                self.g.add_entity(id)
        else:
            self.g.add_entity(id)
            self.ids.append(id)

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), kind=st.sampled_from(KINDS), weight=st.sampled_from([1.0, 0.5, 2.0]))
    def add_relationship(self, data: Any, kind: str, weight: float) -> None:
        a, b = data.draw(st.sampled_from(self.ids)), data.draw(st.sampled_from(self.ids))
        self.g.add_relationship(a, b, kind, weight)
        self.rels.append((a, b, kind, weight))

    @rule(
        rows=st.lists(
            st.tuples(st.sampled_from(IDS), st.sampled_from(IDS), st.sampled_from(KINDS)),
            max_size=4,
        )
    )
    def add_relationships(self, rows: list[tuple[str, str, str]]) -> None:
        self.g.add_relationships(rows, create_missing=True)
        for a, b, kind in rows:
            for x in (a, b):
                if x not in self.ids:
                    self.ids.append(x)
            self.rels.append((a, b, kind, 1.0))

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), kind=st.one_of(st.none(), st.sampled_from([*KINDS, "never"])))
    def remove_relationship(self, data: Any, kind: str | None) -> None:
        a, b = data.draw(st.sampled_from(self.ids)), data.draw(st.sampled_from(self.ids))
        matches = [r for r in self.rels if r[0] == a and r[1] == b and kind in (None, r[2])]
        assert self.g.remove_relationship(a, b, kind) == len(matches)
        self.rels = [r for r in self.rels if r not in matches]

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), kind=st.sampled_from(KINDS))
    def update_relationship(self, data: Any, kind: str) -> None:
        a, b = data.draw(st.sampled_from(self.ids)), data.draw(st.sampled_from(self.ids))
        count = 0
        for i, r in enumerate(self.rels):
            if r[:3] == (a, b, kind):
                self.rels[i] = (a, b, kind, 3.0)
                count += 1
        assert self.g.update_relationship(a, b, kind, weight=3.0) == count

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def remove_entity(self, data: Any) -> None:
        x = data.draw(st.sampled_from(self.ids))
        self.g.remove_entity(x)
        at = self.ids.index(x)
        last = self.ids.pop()
        if last != x:
            self.ids[at] = last
        self.rels = [r for r in self.rels if x not in (r[0], r[1])]

    @rule()
    def take_a_snapshot(self) -> None:
        # Algorithms build the snapshot; later writes keep the store's own rows up to date.
        self.g.betweenness_centrality()

    @rule()
    def replace_by_a_copy(self) -> None:
        self.g = self.g.copy() if self.ids else self.g

    # ------------------------------------------------------------ queries
    def _leaving(self, x: str) -> list[Rel]:
        return [r for r in self.rels if r[0] == x]

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def per_entity_queries(self, data: Any) -> None:
        x, y = data.draw(st.sampled_from(self.ids)), data.draw(st.sampled_from(self.ids))
        leaving = self._leaving(x)
        assert self.g.edges_from(x) == [
            {"from": a, "to": b, "kind": k, "weight": w, "properties": {}} for a, b, k, w in leaving
        ]
        assert self.g.neighbors_of(x) == sorted({r[1] for r in leaving})
        assert self.g.relationship_count_between(x, y) == sum(r[1] == y for r in leaving)
        first_reached = [x, *dict.fromkeys(r[1] for r in leaving if r[1] != x)]
        for walk in (self.g.bfs, self.g.dfs):
            assert walk(x, max_depth=0) == [x]
            assert walk(x, max_depth=1) == first_reached
        peer = nx.MultiDiGraph()
        peer.add_nodes_from(self.ids)
        peer.add_edges_from(r[:2] for r in self.rels)
        assert self.g.bfs(x, max_depth=1) == list(nx.bfs_tree(peer, x, depth_limit=1))
        assert self.g.dfs(x, max_depth=1) == list(nx.dfs_preorder_nodes(peer, x, depth_limit=1))

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def subgraph(self, data: Any) -> None:
        chosen = data.draw(st.lists(st.sampled_from(self.ids), max_size=len(self.ids) + 2))
        keep = list(dict.fromkeys(chosen))
        sub = self.g.subgraph(chosen)
        assert sub.entity_ids() == keep
        expected = [r for r in self.rels if r[0] in keep and r[1] in keep]
        assert [
            (r["from"], r["to"], r["kind"], r["weight"]) for r in sub.relationships()
        ] == expected
        assert sub.relationship_kinds() == sorted({r[2] for r in expected})

    @invariant()
    def whole_graph(self) -> None:
        assert self.g.entity_ids() == self.ids
        assert self.g.relationship_count() == len(self.rels)
        assert self.g.relationship_kinds() == sorted({r[2] for r in self.rels})


TestGraphMachine = GraphMachine.TestCase
TestGraphMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


# ---------------------------------------------------------------- subgraphs


def test_subgraph_matches_a_reference_on_random_graphs() -> None:
    # A few entities read their own relationships (and a plain edge list in place); many
    # scan every relationship: both give every relationship among them, in order.
    rnd = random.Random(3)
    for case in range(150):
        n = rnd.randrange(1, 40)
        edges = [(rnd.randrange(n), rnd.randrange(n), rnd.choice([1.0, 0.5])) for _ in range(3 * n)]
        g = ar.GraphStore.from_edge_list(n, edges, kind="plain")
        rels = [(str(a), str(b), "plain", w) for a, b, w in edges]
        if case % 3 == 1:
            for _ in range(n):  # stored relationships, of several kinds
                a, b, kind = str(rnd.randrange(n)), str(rnd.randrange(n)), rnd.choice("xy")
                g.add_relationship(a, b, kind, 2.0)
                rels.append((a, b, kind, 2.0))
        # Entities only relationships reach (no relationship leaves them).
        sinks = [f"sink{i}" for i in range(rnd.randrange(4))]
        g.add_entities(sinks)
        for s in sinks:
            for _ in range(rnd.randrange(3)):
                a = str(rnd.randrange(n))
                g.add_relationship(a, s, "in", 1.0)
                rels.append((a, s, "in", 1.0))
        ids = g.entity_ids()
        if case % 2 == 0:
            g.neighbors_of("0")  # links built before the subgraph, or by it
        whole = ar.to_networkx(g)
        for size in (1, 2, 3, len(ids) // 2, len(ids)):
            keep = rnd.sample(ids, min(size, len(ids))) + sinks[:1]
            keep = list(dict.fromkeys(keep))
            sub = g.subgraph(keep)
            expected = [r for r in rels if r[0] in keep and r[1] in keep]
            assert sub.entity_ids() == keep
            assert [(r["from"], r["to"], r["kind"], r["weight"]) for r in sub.relationships()] == (
                expected
            )
            assert sub.relationship_kinds() == sorted({r[2] for r in expected})
            peer = whole.subgraph(keep)
            assert sorted(peer.edges(keys=True)) == sorted(ar.to_networkx(sub).edges(keys=True))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_subgraph_of_a_few_entities_copies_no_relationship_list() -> None:
    # A subgraph of 10 entities made every relationship of a from_edge_list graph at once
    # (32 bytes each, kept): +32 MiB here, and O(m) time for a few entities' rows.
    n, m = 100_000, 1_000_000
    g = ar.GraphStore.from_edge_list(n, [(i % n, (i * 7919) % n) for i in range(m)])
    g.neighbors_of("0")  # the per-entity links: built here, not counted below
    before = _rss_mib()
    subs = [g.subgraph([str(i * 997 + j) for j in range(10)]) for i in range(5)]
    assert _rss_mib() - before < 8
    keeps = [[i * 997 + j for j in range(10)] for i in range(5)]
    # Relationship i leaves i % n: those leaving an entity are i = v + t * n.
    expected = [
        sum((v + t * n) * 7919 % n in keep for v in keep for t in range(m // n)) for keep in keeps
    ]
    assert [s.relationship_count() for s in subs] == expected


def test_edges_from_of_one_entity_makes_no_relationship_list() -> None:
    # `edges_from` of one entity of a from_edge_list graph made every relationship at once
    # (32 bytes each, kept): +32 MiB here for one entity's ten rows.
    n, m = 100_000, 1_000_000
    g = ar.GraphStore.from_edge_list(n, [(i % n, (i * 7919) % n) for i in range(m)])
    g.neighbors_of("0")  # the per-entity links: built here, not counted below
    before = _rss_mib()
    rows = g.edges_from("3")
    assert _rss_mib() - before < 8
    # Relationship i leaves i % n: those leaving 3 are i = 3 + t * n, in that order.
    assert [r["to"] for r in rows] == [str((3 + t * n) * 7919 % n) for t in range(m // n)]
    assert {(r["from"], r["weight"]) for r in rows} == {("3", 1.0)}


@pytest.mark.parametrize(
    "call",
    [
        lambda g: g.bfs("0", max_depth=True),
        lambda g: g.dfs("0", max_depth=False),
        lambda g: g.neighborhood("0", hops=True),
        lambda g: g.cycles(cap=True),
        lambda g: g.communities(seed=True),
        lambda g: g.betweenness_centrality(k=True),
        lambda g: ar.GraphStore.from_edge_list(True, []),
        lambda g: ar.GraphStore.from_edge_list(2, [(False, True)]),
    ],
    ids=["bfs", "dfs", "neighborhood", "cycles", "seed", "k", "n", "edge-index"],
)
def test_graph_int_arguments_refuse_a_bool(call: Any) -> None:
    # A bool is an int to Python: True read as 1 (depth 1, an edge 0 -> 1) answered silently,
    # where the vector, memory and embedding arguments refuse it.
    g = ar.GraphStore.from_edge_list(3, [(0, 1), (1, 2)])
    with pytest.raises(ar.GraphError, match="must be an int, got bool"):
        call(g)


@pytest.mark.parametrize(
    "call",
    [
        lambda g, flag: g.bfs("0", max_depth=flag),
        lambda g, flag: g.neighborhood("0", hops=flag),
        lambda g, flag: g.cycles(cap=flag),
        lambda g, flag: g.communities(seed=flag),
        lambda g, flag: ar.GraphStore.from_edge_list(flag, []),
        lambda g, flag: ar.GraphStore.from_edge_list(2, [(flag, 1)]),
    ],
    ids=["bfs", "neighborhood", "cycles", "seed", "n", "edge-index"],
)
def test_graph_int_arguments_refuse_numpys_bool(call: Any) -> None:
    # numpy's bool passed the check for Python's, then failed PyO3's int conversion with a
    # bare TypeError.
    g = ar.GraphStore.from_edge_list(3, [(0, 1), (1, 2)])
    for flag in (np.True_, np.False_):
        with pytest.raises(ar.GraphError, match="must be an int, got bool"):
            call(g, flag)


def test_edges_come_as_tuples_lists_or_the_rows_of_an_integer_array() -> None:
    # Only tuples were taken, though numpy is the usual source of index pairs.
    expected = [("0", "1", 1.0), ("1", "2", 1.0), ("2", "0", 1.0)]
    pairs = np.array([[0, 1], [1, 2], [2, 0]])
    weighted = np.array([[0, 1, 2], [1, 2, 3]])
    for edges in (pairs, pairs.tolist(), [(0, 1), [1, 2], pairs[2]]):
        g = ar.GraphStore.from_edge_list(3, edges)  # type: ignore[arg-type]
        assert [(r["from"], r["to"], r["weight"]) for r in g.relationships()] == expected
    g = ar.GraphStore.from_edge_list(3, weighted)
    assert [r["weight"] for r in g.relationships()] == [2.0, 3.0]
    for edges, message in [
        (["01"], "got str"),
        ([b"01"], "got bytes"),
        ([{0: 1, 1: 2}], "got dict"),
        ([np.array(1)], r"got a row of 0 dimension\(s\)"),
        ([[0]], "an edge has 2 or 3 items, got 1"),
        (np.array([[0, 1, 0.5]]), r"shape \(1, 3\) and dtype float64: .* integer array"),
        (np.zeros((1, 2, 2), dtype=int), r"shape \(1, 2, 2\) and dtype int64: .* \(m, 2\)"),
        (np.array([[0, 1, 2, 3]]), "an edge has 2 or 3 items, got 4"),
        ([[0, 3]], r"edge \(0, 3\) is out of range for 3 entities"),
    ]:
        with pytest.raises(ar.GraphError, match=message):
            ar.GraphStore.from_edge_list(3, edges)  # type: ignore[arg-type]


_EDGE_DTYPES = ["int64", "int32", "uint64", "uint32", "int16", "uint16", "int8", "uint8", ">i8"]


def _relationships(g: ar.GraphStore) -> list[tuple[str, str, float]]:
    return [(r["from"], r["to"], r["weight"]) for r in g.relationships()]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 9),
    rows=st.lists(
        st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 100)), max_size=12
    ),
    dtype=st.sampled_from(_EDGE_DTYPES),
    weighted=st.booleans(),
    strided=st.booleans(),
)
def test_an_integer_array_of_edges_builds_the_graph_of_its_rows_as_tuples(
    n: int, rows: list[tuple[int, int, int]], dtype: str, weighted: bool, strided: bool
) -> None:
    # A native integer array is read in place (a byte-swapped one row by row): whatever the
    # dtype or layout, the graph, or the error, is the one its rows as tuples give.
    width = 3 if weighted else 2
    array = np.array(rows, dtype=dtype).reshape(len(rows), 3)[:, :width]
    if strided:  # a transposed copy's view: the same rows, not contiguous
        array = np.ascontiguousarray(array.T).T
    tuples = [tuple(int(v) for v in row) for row in array]
    try:
        expected: Any = _relationships(ar.GraphStore.from_edge_list(n, tuples))
    except ar.GraphError as error:
        expected = str(error)
    try:
        got: Any = _relationships(ar.GraphStore.from_edge_list(n, array))
    except ar.GraphError as error:
        got = str(error)
    assert got == expected


def test_an_array_of_edges_refuses_what_its_rows_would() -> None:
    for edges, message in [
        (np.array([[0, -1]]), "edge index -1 is out of range for 3 entities"),
        (np.array([[2**64 - 1, 0]], dtype=np.uint64), f"edge index {2**64 - 1} is out of range"),
        (np.array([[0, 2**40]]), f"edge index {2**40} is out of range"),
        (np.array([[0, 3]], dtype=np.int8), r"edge \(0, 3\) is out of range for 3 entities"),
        (np.zeros((0, 4), dtype=np.int64), "an edge has 2 or 3 items, got 4"),
        (np.zeros((2, 1), dtype=np.int32), "an edge has 2 or 3 items, got 1"),
    ]:
        with pytest.raises(ar.GraphError, match=message):
            ar.GraphStore.from_edge_list(3, edges)
    # Empty and read-only arrays are edges too.
    assert ar.GraphStore.from_edge_list(3, np.zeros((0, 2), dtype=np.int64)).entity_count() == 3
    frozen = np.array([[0, 1], [1, 2]])
    frozen.flags.writeable = False
    assert _relationships(ar.GraphStore.from_edge_list(3, frozen))[1] == ("1", "2", 1.0)


def _empty_slots(items: list[Any]) -> int:
    """How many of a list's slots hold no object (CPython's list layout)."""
    pointer = ctypes.sizeof(ctypes.c_void_p)
    address = ctypes.c_void_p.from_address(id(items) + 3 * pointer).value
    if not items or address is None:
        return 0
    return sum(p is None for p in (ctypes.c_void_p * len(items)).from_address(address))


@pytest.mark.parametrize("call", ["cycles", "label_propagation", "communities", "entity_ids"])
def test_a_result_list_never_shows_an_empty_slot_to_the_collector(call: str) -> None:
    # The lists of lists were made at their full size and filled as their items were made:
    # making an item may run the collector, whose callbacks saw the list with empty slots
    # (and one reading them crashed the interpreter).
    n = 300
    g = ar.GraphStore.from_edge_list(
        n, [edge for i in range(0, n, 2) for edge in ((i, i + 1), (i + 1, i))]
    )
    seen: list[int] = []

    def look(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.extend(
                slots for o in gc.get_objects() if type(o) is list and (slots := _empty_slots(o))
            )

    threshold = gc.get_threshold()
    gc.set_threshold(5)
    gc.callbacks.append(look)
    try:
        result = getattr(g, call)()
    finally:
        gc.callbacks.remove(look)
        gc.set_threshold(*threshold)
    assert result and seen == []
