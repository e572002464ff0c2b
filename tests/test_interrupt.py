"""Long graph computations run with the GIL released, and still stop on Ctrl-C: they look
for pending signals once a pass (betweenness: every few milliseconds while its threads run)
and return the exception a handler raises."""

from __future__ import annotations

import _thread
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from probes import run_until_ctrl_c

import llm_agent_runtime as ar


def test_communities_stops_on_ctrl_c_and_leaves_the_store_usable() -> None:
    # Louvain on this graph takes about 5 s here; Ctrl-C went unnoticed until it ended.
    n, m = 100_000, 400_000
    rnd = random.Random(0)
    g = ar.GraphStore.from_edge_list(n, [(rnd.randrange(n), rnd.randrange(n)) for _ in range(m)])
    elapsed, _ = run_until_ctrl_c(g.communities, after=0.2)
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


def _random_graph(n: int, m: int, seed: int) -> tuple[ar.GraphStore, list[tuple[int, int, float]]]:
    rnd = random.Random(seed)
    edges = [(rnd.randrange(n), rnd.randrange(n), rnd.choice([1.0, 2.0, 3.0])) for _ in range(m)]
    return ar.GraphStore.from_edge_list(n, edges), edges


@pytest.mark.parametrize(
    "run",
    [
        lambda g: g.betweenness_centrality(k=2000),
        lambda g: g.betweenness_centrality(weighted=True, directed=False, k=1000),
        lambda g: g.betweenness_from([str(i) for i in range(2000)]),
    ],
    ids=["sampled", "weighted", "from_sources"],
)
def test_betweenness_stops_on_ctrl_c_and_leaves_the_store_usable(
    run: Callable[[ar.GraphStore], object],
) -> None:
    # Each takes several seconds here, its sources spread over rayon's threads: Ctrl-C went
    # unnoticed until the run ended.
    n, m = 20_000, 80_000
    g, edges = _random_graph(n, m, seed=4)
    elapsed, _ = run_until_ctrl_c(lambda: run(g), after=0.2)
    assert elapsed < 1.0
    # The store and its snapshot are as they were (a few sources: one thread, exact sums).
    few = ["0", "1", "2"]
    assert g.betweenness_from(few) == ar.GraphStore.from_edge_list(n, edges).betweenness_from(few)
    g.add_relationship("0", "1", "k")
    assert "1" in g.bfs("0", max_depth=1)
    assert g.relationship_count() == m + 1


def test_betweenness_runs_signal_handlers_as_it_goes_and_gives_one_result_on_any_thread() -> None:
    # A tree: every path count is 1 and every sum an integer, so the scores are exact
    # whichever thread adds up which sources.
    n = 8000
    rnd = random.Random(5)
    g = ar.GraphStore.from_edge_list(n, [(rnd.randrange(i), i) for i in range(1, n)])
    handled: list[float] = []
    previous = signal.signal(signal.SIGINT, lambda *_: handled.append(time.perf_counter()))
    timer = threading.Timer(0.1, _thread.interrupt_main)
    try:
        start = time.perf_counter()
        timer.start()
        on_main = g.betweenness_centrality(directed=False)
        elapsed = time.perf_counter() - start
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, previous)
    # A handler that does not raise ran while the run went on (not once it had ended), and
    # the run was not cut short by it.
    assert len(handled) == 1 and handled[0] - start < elapsed / 2
    found: list[dict[str, float]] = []
    worker = threading.Thread(target=lambda: found.append(g.betweenness_centrality(directed=False)))
    worker.start()
    worker.join()
    assert found == [on_main]
    assert len(on_main) == n and max(on_main.values()) > 0


def test_the_ctrl_c_tests_hold_when_the_suite_starts_with_ctrl_c_ignored() -> None:
    """A shell without job control starts a background job (`make test &` in a script) with
    SIGINT ignored, which Python keeps, and so do the processes it starts: the suite gives
    it back its default handler, so its Ctrl-C tests, in process and in a child, still run.
    """
    tests = Path(__file__).parent
    chosen = [
        f"{tests / 'test_interrupt.py'}"
        "::test_communities_stops_on_ctrl_c_and_leaves_the_store_usable",
        f"{tests / 'test_cli_sweep5_cases.py'}"
        "::test_ctrl_c_while_the_demo_loads_exits_130_without_a_traceback",
    ]
    code = (
        "import signal, sys, pytest\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *{chosen!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 passed" in out.stdout


@pytest.mark.parametrize(
    "first_use",
    [
        "ar.EpisodicStore(embedder=ar.HashingEmbedder()).add_episode('a', 'Mars', 0.5)",
        "ar.HashingEmbedder(8).embed(['Mars'])",
    ],
    ids=["episode", "embed"],
)
def test_ctrl_c_in_numpys_first_import_is_a_keyboard_interrupt(first_use: str) -> None:
    # The Rust core imports numpy at its first use of an array; rust-numpy panics when that
    # import fails, so a Ctrl-C landing in it was a PanicException (no `except
    # KeyboardInterrupt` caught it, and the demo exited with a Rust backtrace).
    script = f"""
import importlib.abc, sys
import llm_agent_runtime as ar

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "numpy.lib":
            sys.meta_path.remove(self)
            raise KeyboardInterrupt  # as a Ctrl-C landing in numpy's import

assert "numpy" not in sys.modules
sys.meta_path.insert(0, Interrupt())
try:
    {first_use}
except KeyboardInterrupt:
    print("interrupted")
{first_use}  # and the next call works
print("then ran")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    shown = (done.returncode, done.stdout.splitlines())
    assert shown == (0, ["interrupted", "then ran"]), done.stderr
