"""`to_networkx` reads the graph once, and what a networkx round trip keeps of the order."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar


def _ring(n: int) -> ar.GraphStore:
    g = ar.GraphStore()
    for i in range(n):
        g.add_entity(f"n{i}", "person", {"i": i})
    for i in range(n):
        g.add_relationship(f"n{i}", f"n{(i + 1) % n}", "next", 1.0 + i)
    return g


def _export(g: Any) -> tuple[list[Any], list[Any]]:
    exported = ar.to_networkx(g)
    return list(exported.nodes(data=True)), list(exported.edges(keys=True, data=True))


class _WriterBetweenReads:
    """A graph that another thread writes to after each read made of it: the last entity
    goes, as `remove_entity` from another thread would remove it."""

    def __init__(self, graph: ar.GraphStore) -> None:
        self.graph = graph

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.graph, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            ids = self.graph.entity_ids()
            if ids:
                self.graph.remove_entity(ids[-1])
            return result

        return call


def test_to_networkx_is_one_read_of_the_graph() -> None:
    # It read the ids, then each entity, then the relationships: an entity removed in
    # between was a GraphError ("unknown entity"), a relationship added in between made a
    # node without label or properties.
    expected = _export(_ring(10))
    g = _ring(10)
    assert _export(_WriterBetweenReads(g)) == expected
    assert g.entity_count() == 9  # one read, one write after it


def test_to_networkx_while_another_thread_writes() -> None:
    g = _ring(50)
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            x = f"n{i % 50}"
            g.remove_entity(x)
            g.add_entity(x, "person", {"i": i % 50})
            g.add_relationship(x, f"n{(i + 1) % 50}", "next", 1.0)
            i += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    writer = threading.Thread(target=churn)
    writer.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            exported = ar.to_networkx(g)
            assert exported.number_of_nodes() in (49, 50)
            for node, data in exported.nodes(data=True):
                assert data["label"] == "person"
                assert data["properties"]["i"] == int(node[1:])
    finally:
        stop.set()
        writer.join()
        sys.setswitchinterval(interval)


def test_to_networkx_properties_are_dicts_as_the_graph_gives_them() -> None:
    g = ar.GraphStore()
    g.add_entity("a", "x", {"k": [1, 2.5, None, {"z": 1, "a": 2}]})
    g.add_entity("b")
    g.add_relationship("a", "b", "r", 0.42451918914251396, {"since": 2020})
    g.add_relationship("b", "a")
    exported = ar.to_networkx(g)
    assert dict(exported.nodes(data=True)) == {
        i: {"label": g.entity(i)["label"], "properties": g.entity(i)["properties"]}
        for i in g.entity_ids()
    }
    assert list(exported.nodes["a"]["properties"]["k"][3]) == ["z", "a"]
    edges = [{"from": u, "to": v, **data} for u, v, data in exported.edges(data=True)]
    assert edges == g.relationships()


Rel = tuple[int, int, str]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.sampled_from("abc")),
                max_size=25,
            ),
        )
    )
)
def test_networkx_round_trip_keeps_what_its_docstring_says(spec: tuple[int, list[Rel]]) -> None:
    n, rels = spec
    g = ar.GraphStore()
    for i in range(n):
        g.add_entity(f"v{i}")
    for number, (a, b, kind) in enumerate(rels):
        g.add_relationship(f"v{a}", f"v{b}", kind, float(number))
    back = ar.from_networkx(ar.to_networkx(g))
    assert back.entity_ids() == g.entity_ids()
    # The relationships from one source to one target keep their order ...
    for source in g.entity_ids():
        for target in g.entity_ids():

            def between(graph: ar.GraphStore, s: str = source, t: str = target) -> list[Any]:
                return [r for r in graph.edges_from(s) if r["to"] == t]

            assert between(back) == between(g)
        # ... and a directed traversal visits as before.
        assert back.bfs(source) == g.bfs(source)
        assert back.dfs(source) == g.dfs(source)
    # Each source's relationships come grouped by target, in the order it first reached them.
    for source in g.entity_ids():
        rows = g.edges_from(source)
        targets = list(dict.fromkeys(r["to"] for r in rows))
        assert back.edges_from(source) == [r for t in targets for r in rows if r["to"] == t]
    expected = nx.MultiDiGraph(ar.to_networkx(g))
    assert list(ar.to_networkx(back).edges(keys=True, data=True)) == list(
        expected.edges(keys=True, data=True)
    )
