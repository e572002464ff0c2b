"""Walks of depth 1 and one-hop neighborhoods, in either direction, answered from the
entity's own relationships (leaving and reaching it): the same answer as the snapshot's
views, with no snapshot rebuilt after each write."""

from __future__ import annotations

import random
import time

import networkx as nx

import llm_agent_runtime as ar

Rel = tuple[str, str, str, float]


class Model:
    """The store as Python lists: ids (a removal moves the last one into the gap) and
    relationships in insertion order."""

    def __init__(self, ids: list[str], rels: list[Rel]) -> None:
        self.ids = ids
        self.rels = rels

    def first_hop(self, x: str, directed: bool) -> list[str]:
        peer: nx.MultiDiGraph[str] | nx.MultiGraph[str] = (
            nx.MultiDiGraph() if directed else nx.MultiGraph()
        )
        peer.add_nodes_from(self.ids)
        peer.add_edges_from(r[:2] for r in self.rels)
        return list(nx.bfs_tree(peer, x, depth_limit=1))

    def among(self, keep: list[str]) -> list[Rel]:
        kept = set(keep)
        return [r for r in self.rels if r[0] in kept and r[1] in kept]


def _rels(g: ar.GraphStore) -> list[Rel]:
    return [(r["from"], r["to"], r["kind"], r["weight"]) for r in g.relationships()]


def _start(rnd: random.Random) -> tuple[ar.GraphStore, Model]:
    n = rnd.randrange(1, 12)
    if rnd.random() < 0.5:
        # Relationships as a plain list, read without being made one by one.
        edges = [(rnd.randrange(n), rnd.randrange(n)) for _ in range(rnd.randrange(3 * n))]
        g = ar.GraphStore.from_edge_list(n, edges, kind="e")
        return g, Model([str(i) for i in range(n)], [(str(a), str(b), "e", 1.0) for a, b in edges])
    g = ar.GraphStore()
    ids = [f"v{i}" for i in range(n)]
    g.add_entities(ids)
    return g, Model(ids, [])


def _write(rnd: random.Random, g: ar.GraphStore, model: Model) -> None:
    ids, step = model.ids, rnd.randrange(10)
    if step < 5 and ids:
        a, b = rnd.choice(ids), rnd.choice(ids)
        if rnd.random() < 0.2:
            b = a  # a self-loop: one undirected neighbour, itself
        kind, weight = rnd.choice("xyz"), rnd.choice([1.0, 0.5, 2.0])
        g.add_relationship(a, b, kind, weight)
        model.rels.append((a, b, kind, weight))
    elif step == 5:
        new = f"n{len(ids)}-{rnd.randrange(10**9)}"
        g.add_entity(new)
        ids.append(new)
    elif step == 6 and ids:
        a, b = rnd.choice(ids), rnd.choice(ids)
        g.remove_relationship(a, b)
        model.rels = [r for r in model.rels if r[:2] != (a, b)]
    elif step == 7 and len(ids) > 1:
        x = rnd.choice(ids)
        g.remove_entity(x)
        at, last = ids.index(x), ids.pop()
        if last != x:
            ids[at] = last
        model.rels = [r for r in model.rels if x not in r[:2]]
    elif step == 8:
        g.betweenness_centrality()  # builds the snapshot; later writes drop it again


def test_depth_one_walks_and_neighborhoods_match_networkx_after_every_write() -> None:
    rnd = random.Random(7)
    for _ in range(60):
        g, model = _start(rnd)
        for _ in range(25):
            _write(rnd, g, model)
            assert g.entity_ids() == model.ids and _rels(g) == model.rels
            for x in rnd.sample(model.ids, min(3, len(model.ids))):
                for directed in (True, False):
                    hop = model.first_hop(x, directed)
                    for walk in (g.bfs, g.dfs):
                        assert walk(x, max_depth=1, directed=directed) == hop
                        assert walk(x, max_depth=0, directed=directed) == [x]
                    for hops, keep in ((0, [x]), (1, hop)):
                        sub = g.neighborhood(x, hops=hops, directed=directed)
                        assert sub.entity_ids() == keep
                        assert _rels(sub) == model.among(keep)


def test_depth_one_queries_after_each_write_rebuild_no_snapshot() -> None:
    # Each write dropped the snapshot and each undirected depth-1 walk or neighborhood built
    # it anew (O(n + m)): 300 rounds of each took about 3.5 s here.
    n, m = 20_000, 400_000
    rnd = random.Random(0)
    g = ar.GraphStore.from_edge_list(n, [(rnd.randrange(n), rnd.randrange(n)) for _ in range(m)])
    g.bfs("0", max_depth=1, directed=False)
    start = time.perf_counter()
    for i in range(300):
        g.add_relationship(str(i), str(i + 1))
        assert str(i + 1) in g.bfs(str(i), max_depth=1, directed=False)
    walks = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(300):
        g.add_relationship(str(i + 2), str(i))
        assert g.neighborhood(str(i)).has_entity(str(i + 2))
    neighborhoods = time.perf_counter() - start
    assert walks < 0.5 and neighborhoods < 0.5
