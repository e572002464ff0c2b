"""Long graph computations run with the GIL released, and still stop on Ctrl-C: they look
for pending signals once a pass and return the exception a handler raises."""

from __future__ import annotations

import _thread
import random
import threading
import time

import pytest

import llm_agent_runtime as ar


def test_communities_stops_on_ctrl_c_and_leaves_the_store_usable() -> None:
    # Louvain on this graph takes about 5 s here; Ctrl-C went unnoticed until it ended.
    n, m = 100_000, 400_000
    rnd = random.Random(0)
    g = ar.GraphStore.from_edge_list(n, [(rnd.randrange(n), rnd.randrange(n)) for _ in range(m)])
    timer = threading.Timer(0.2, _thread.interrupt_main)
    start = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            g.communities()
        elapsed = time.perf_counter() - start
    finally:
        timer.cancel()
        timer.join()
    assert elapsed < 1.0
    # The store and its snapshot are as they were.
    assert g.entity_count() == n and g.relationship_count() == m
    g.add_relationship("0", "1", "k")
    assert "1" in g.bfs("0", max_depth=1)
    assert sum(g.degree_centrality(normalized=False).values()) == 2 * (m + 1)
