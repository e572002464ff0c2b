"""Parallel Rust calls in a fork()ed child (a multiprocessing worker) after the parent used them.

The core runs its parallel work on a rayon pool built for the calling process: a child forked
from a parent whose pool threads are running (threads that do not exist in the child) builds
its own pool instead of waiting forever for the parent's.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import llm_agent_runtime as ar

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform == "darwin",
    reason="needs fork() (not used on macOS: fork without exec is unsafe there)",
)

ROWS = 20_000  # above the parallel thresholds of search (4096) and search_batch (2048)
DIM = 64
TEXTS = [f"text number {i} about {i % 7} things" for i in range(100)]  # >= 64: parallel
NODES = 300  # >= 256: parallel betweenness and transitive closure
CHILD_SECONDS = 60  # a hung child is killed after this


def build() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    data = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    indexes = {}
    for dtype in ("float32", "float16", "int8"):
        index = ar.VectorIndex(DIM, dtype=dtype)
        index.add(np.arange(ROWS), data)
        indexes[dtype] = index
    edges = [(int(a), int(b)) for a, b in rng.integers(0, NODES, size=(4 * NODES, 2))]
    return {
        "indexes": indexes,
        "queries": rng.standard_normal((8, DIM)).astype(np.float32),
        "embedder": ar.HashingEmbedder(dim=128),
        "graph": ar.GraphStore.from_edge_list(NODES, edges),
    }


def run_all(world: dict[str, Any]) -> dict[str, Any]:
    """Every parallel path of the core, as JSON-able results."""
    out: dict[str, Any] = {}
    queries = world["queries"]
    for dtype, index in world["indexes"].items():
        ids, scores = index.search(queries[0], 5)
        out[f"search_{dtype}"] = [ids.tolist(), np.round(scores, 5).tolist()]
        ids, _ = index.search_batch(queries, 5)
        out[f"search_batch_{dtype}"] = ids.tolist()
    out["embed"] = np.round(world["embedder"].embed(TEXTS), 6).tolist()
    graph = world["graph"]
    out["betweenness"] = graph.betweenness_centrality()
    out["closure"] = graph.transitive_closure()
    return out


def in_child(work: Callable[[], Any]) -> Any:
    """Runs `work` in a fork()ed child and returns its JSON result; fails (never hangs) when
    the child does not answer within CHILD_SECONDS."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multithreaded process (the pool's threads) may
        # deadlock: what this module checks the core never does.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            signal.alarm(CHILD_SECONDS + 30)  # a last resort should the parent be gone
            payload = json.dumps(work()).encode()
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks: list[bytes] = []

    def read_all() -> None:
        chunks.extend(iter(lambda: os.read(read_end, 1 << 16), b""))

    reader = threading.Thread(target=read_all)  # the child may write more than a pipe holds
    reader.start()
    deadline = time.monotonic() + CHILD_SECONDS
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        reader.join()
        os.close(read_end)
        pytest.fail(f"the forked child hung: no answer within {CHILD_SECONDS} s")
    reader.join()
    os.close(read_end)
    assert status is not None and os.waitstatus_to_exitcode(status) == 0
    return json.loads(b"".join(chunks))


def assert_same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal results; betweenness sums partial scores in an order that depends on how the
    sources were split over threads, so it agrees within float rounding."""
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key == "betweenness":
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12)
        else:
            assert got[key] == value, key


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    return build()


def test_parallel_calls_work_in_a_forked_child_after_the_parent_used_them(
    world: dict[str, Any],
) -> None:
    expected = json.loads(json.dumps(run_all(world)))  # the parent's pool threads now run
    assert len(expected["closure"]) == NODES and expected["search_float32"][0]
    assert_same(in_child(lambda: run_all(world)), expected)
    assert_same(json.loads(json.dumps(run_all(world))), expected)  # the parent's pool works


def test_a_grandchild_and_racing_threads_each_get_a_working_pool(world: dict[str, Any]) -> None:
    expected = json.loads(json.dumps(run_all(world)))

    def child() -> Any:
        # Eight threads race to build this process's pool: every search completes.
        results: list[Any] = [None] * 8

        def one(i: int) -> None:
            index = world["indexes"]["float32"]
            ids, _ = index.search(world["queries"][0], 5)
            results[i] = ids.tolist()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # The child's pool threads now run: its own fork must not wait for them either.
        return {"threads": results, "grandchild": in_child(lambda: run_all(world))}

    got = in_child(child)
    assert got["threads"] == [expected["search_float32"][0]] * 8
    assert_same(got["grandchild"], expected)


def pool_search(kind: str) -> list[int]:
    """A multiprocessing worker's task (module level, so a fork pool can run it)."""
    world = POOL_WORLD
    if kind == "search":
        ids = world["indexes"]["float32"].search(world["queries"][0], 3)[0]
    elif kind == "search_batch":
        ids = world["indexes"]["int8"].search_batch(world["queries"], 3)[0][0]
    else:
        ids = np.array(world["embedder"].embed(TEXTS).shape[:1])
    return [int(i) for i in ids]


POOL_WORLD: dict[str, Any] = {}


def test_a_fork_pool_worker_runs_parallel_searches(world: dict[str, Any]) -> None:
    POOL_WORLD.update(world)
    try:
        expected = [pool_search(kind) for kind in ("search", "search_batch", "embed")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pool = multiprocessing.get_context("fork").Pool(1)
        try:
            got = [
                pool.apply_async(pool_search, (kind,)).get(timeout=CHILD_SECONDS)
                for kind in ("search", "search_batch", "embed")
            ]
        except multiprocessing.TimeoutError:
            pytest.fail(f"the pool worker hung: no answer within {CHILD_SECONDS} s")
        finally:
            pool.terminate()
            pool.join()
        assert got == expected
    finally:
        POOL_WORLD.clear()


def test_a_child_forked_as_a_loop_resource_was_being_made_makes_its_own() -> None:
    # The Redis clients are kept one per event loop, under a lock: a child forked while
    # another thread held it (making its loop's client) waited for it forever.
    import asyncio

    from llm_agent_runtime._loops import PerLoop

    async def nothing_to_close(resource: object) -> None:
        return None

    clients = PerLoop(lambda: os.getpid(), nothing_to_close)

    async def client() -> int:
        return clients.get()

    with clients._lock:  # as held by another thread at the fork
        made_by = in_child(lambda: asyncio.run(client()))
    assert made_by != os.getpid()
