"""Long graph computations run with the GIL released, and still stop on Ctrl-C: they look
for pending signals once a pass and return the exception a handler raises."""

from __future__ import annotations

import _thread
import random
import sys
import threading
import time
from typing import Any

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


def test_communities_off_the_main_thread_does_not_wait_for_the_gil() -> None:
    # Signal handlers run in the main thread only. A worker thread's run looked for them
    # anyway, each look waiting for the GIL a busy main thread held (up to a switch
    # interval): 11x slower here, for looks that could find nothing.
    n, m = 20_000, 80_000
    rnd = random.Random(1)
    edges = [(rnd.randrange(n), rnd.randrange(n)) for _ in range(m)]
    start = time.perf_counter()
    expected = ar.GraphStore.from_edge_list(n, edges).communities()
    alone = time.perf_counter() - start
    found: list[Any] = []

    def work() -> None:
        began = time.perf_counter()
        found.append(ar.GraphStore.from_edge_list(n, edges).communities())
        found.append(time.perf_counter() - began)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        while worker.is_alive():  # the main thread busy in Python, holding the GIL
            sum(range(1000))
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert found[0] == expected
    assert found[1] < 3 * alone + 0.3
