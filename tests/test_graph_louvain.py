"""Louvain (`GraphStore.communities`) ends on every input and does not depend on the scale
of the weights: modularity is the same when every weight is multiplied by one constant, and
so must be the communities found.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from typing import Any

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

Edge = tuple[int, int, float]

# Eleven accounts paying money-like amounts: the rounding residue of an emptied community's
# total made two nodes trade places forever (communities() never returned, nor heard Ctrl-C).
MONEY: list[Edge] = [
    (5, 9, 12345.67),
    (2, 10, 12345.67),
    (4, 3, 12345.67),
    (3, 8, 37037.01),
    (2, 10, 37037.01),
    (10, 6, 12345.67),
    (4, 5, 24691.34),
    (3, 0, 37037.01),
    (8, 6, 37037.01),
    (9, 1, 37037.01),
]

TWO_TRIANGLES: list[tuple[int, int]] = [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3), (2, 3)]


def test_louvain_ends_on_money_like_weights() -> None:
    # In a child process: a hang must fail the test, not stall the suite.
    code = textwrap.dedent(
        f"""
        import json
        import llm_agent_runtime as ar
        edges = {MONEY!r}
        g = ar.GraphStore()
        for i in range(11):
            g.add_entity(f"acct{{i}}")
        for a, b, w in edges:
            g.add_relationship(f"acct{{a}}", f"acct{{b}}", "paid", w)
        print(json.dumps(g.communities()))
        for seed in range(50):
            g.communities(seed=seed)
        unit = [(a, b, w / 12345.67) for a, b, w in edges]
        print(json.dumps(ar.GraphStore.from_edge_list(11, unit).communities()))
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("communities() did not return within 60 s")
    assert done.returncode == 0, done.stderr
    communities, q = json.loads(done.stdout.splitlines()[0])
    expected, q_unit = json.loads(done.stdout.splitlines()[1])
    assert communities == [[f"acct{v}" for v in c] for c in expected]
    assert q == pytest.approx(q_unit, abs=1e-12)
    assert len(communities) == 5 and q == pytest.approx(0.536281179138322, abs=1e-9)


@pytest.mark.parametrize("scale", [1e-300, 1e-15, 1e-13, 1e-6, 1.0, 1e6, 1e200, 1e300, 1e307])
def test_two_triangles_split_at_every_weight_scale(scale: float) -> None:
    # Tiny weights were all singletons (gains under an absolute tolerance), huge ones too
    # (totals times degrees overflowed); 1e307 weights gave a NaN modularity.
    g = ar.GraphStore.from_edge_list(6, [(a, b, scale) for a, b in TWO_TRIANGLES])
    communities, q = g.communities()
    assert communities == [["0", "1", "2"], ["3", "4", "5"]]
    assert q == pytest.approx(5 / 14, abs=1e-12)
    assert g.modularity(communities) == pytest.approx(5 / 14, abs=1e-12)
    assert g.modularity([[str(v)] for v in range(6)]) == pytest.approx(-17 / 98, abs=1e-12)


@st.composite
def weighted_graphs(draw: Any) -> tuple[int, list[Edge]]:
    n = draw(st.integers(2, 40))
    weight = st.one_of(
        st.sampled_from([0.5, 1.0, 2.0, 3.0, 12345.67, 37037.01, 0.1]),
        st.floats(0.001, 1000.0),
    )
    edge = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), weight)
    return n, draw(st.lists(edge, min_size=1, max_size=120))


@settings(max_examples=150, deadline=None)
@given(weighted_graphs(), st.integers(0, 1000))
def test_louvain_communities_do_not_depend_on_the_scale_of_the_weights(
    graph: tuple[int, list[Edge]], seed: int
) -> None:
    n, edges = graph
    communities, q = ar.GraphStore.from_edge_list(n, edges).communities(seed=seed)
    undirected = nx.MultiGraph()
    undirected.add_nodes_from(str(v) for v in range(n))
    undirected.add_weighted_edges_from((str(a), str(b), w) for a, b, w in edges)
    assert q == pytest.approx(
        nx.community.modularity(undirected, [set(c) for c in communities]), abs=1e-9
    )
    for scale in (1e-13, 1e-6, 1e6, 1e200):
        scaled = ar.GraphStore.from_edge_list(n, [(a, b, w * scale) for a, b, w in edges])
        found, q_scaled = scaled.communities(seed=seed)
        assert found == communities, scale
        assert q_scaled == pytest.approx(q, abs=1e-9), scale


def test_louvain_is_as_good_as_networkx_on_average() -> None:
    r = random.Random(3)
    differences = []
    for trial in range(80):
        n = r.randrange(5, 120)
        weights = [1.0, 2.0, 3.0, 0.5, 12345.67]
        edges = [
            (r.randrange(n), r.randrange(n), r.choice(weights))
            for _ in range(r.randrange(n, 4 * n))
        ]
        _, q = ar.GraphStore.from_edge_list(n, edges).communities(seed=trial)
        undirected = nx.MultiGraph()
        undirected.add_nodes_from(str(v) for v in range(n))
        undirected.add_weighted_edges_from((str(a), str(b), w) for a, b, w in edges)
        peer = nx.community.louvain_communities(undirected, weight="weight", seed=trial)
        differences.append(q - nx.community.modularity(undirected, peer))
    assert sum(differences) / len(differences) >= -0.002
    assert min(differences) >= -0.05
