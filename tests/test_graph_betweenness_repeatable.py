"""Betweenness is the same to the last bit from run to run and whatever the thread count.

Parallel runs add the per-source sums in a fixed grouping and order, so a cache keyed on the
graph, a regression test or a rerun analysis sees the very same floats each time.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import llm_agent_runtime as ar

N = 3000
RUNS = 10
# Enough sources for the parallel path, in an order of their own.
SOURCES = [str(i) for i in random.Random(2).sample(range(N), 1000)]


def random_graph() -> ar.GraphStore:
    """3,000 entities, 9,000 random relationships of weights 1 to 9 (seeded)."""
    rng = random.Random(5)
    edges = [(rng.randrange(N), rng.randrange(N), float(rng.randint(1, 9))) for _ in range(3 * N)]
    return ar.GraphStore.from_edge_list(N, edges, kind="k")


CASES: dict[str, Callable[[ar.GraphStore], dict[str, float]]] = {
    "exact": lambda g: g.betweenness_centrality(),
    "undirected sample": lambda g: g.betweenness_centrality(k=800, seed=6, directed=False),
    "sources": lambda g: g.betweenness_from(SOURCES),
    "sample": lambda g: g.betweenness_centrality(k=500, seed=3),
    "weighted sample": lambda g: g.betweenness_centrality(k=300, seed=4, weighted=True),
}


@pytest.fixture(scope="module")
def graph() -> ar.GraphStore:
    return random_graph()


@pytest.mark.parametrize("case", list(CASES))
def test_repeated_runs_give_identical_scores(graph: ar.GraphStore, case: str) -> None:
    run = CASES[case]
    first = run(graph)
    assert len(first) == N and any(score > 0 for score in first.values())
    for attempt in range(RUNS - 1):
        assert run(graph) == first, f"run {attempt + 2} differs"


def scores_in_subprocess(threads: int) -> dict[str, Any]:
    """Every case's scores as exact float text, computed with `threads` rayon threads."""
    code = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import test_graph_betweenness_repeatable as t\n"
        "g = t.random_graph()\n"
        "print(json.dumps({c: {k: v.hex() for k, v in run(g).items()}"
        " for c, run in t.CASES.items()}))\n"
    )
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    done = subprocess.run(
        [sys.executable, "-c", code, os.path.dirname(__file__)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_scores_do_not_depend_on_the_thread_count(graph: ar.GraphStore) -> None:
    here = {case: {k: v.hex() for k, v in run(graph).items()} for case, run in CASES.items()}
    for threads in (1, 3):
        assert scores_in_subprocess(threads) == here, f"{threads} threads"
