"""Threads, the GIL, Ctrl-C and copies around the Rust classes: long graph queries that stop
on Ctrl-C, work that lets other threads run, searches and traversals next to writers,
copies and pickles, and callbacks that call back into their store."""

from __future__ import annotations

import copy
import itertools
import pickle
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from probes import gil_released_during, run_until_ctrl_c

import llm_agent_runtime as ar


def _random_graph(n: int, m: int, seed: int) -> tuple[ar.GraphStore, set[tuple[str, str]]]:
    rnd = random.Random(seed)
    edges = [(rnd.randrange(n), rnd.randrange(n)) for _ in range(m)]
    return ar.GraphStore.from_edge_list(n, edges), {(str(a), str(b)) for a, b in edges}


def _ctrl_c_delay(run: Callable[[], object]) -> float:
    """Seconds from a Ctrl-C, sent while `run` is called over and over, to the
    KeyboardInterrupt in this (the main) thread."""
    return run_until_ctrl_c(run)[1]


# ------------------------------------------------------------------ Ctrl-C


def test_transitive_closure_stops_soon_after_ctrl_c_and_leaves_the_store_usable() -> None:
    # About 2 s a call here (most of it making a string per listed id, and sorting each
    # list by its strings); Ctrl-C went unnoticed until the call ended.
    n, m = 3000, 12_000
    g, _ = _random_graph(n, m, seed=0)
    assert _ctrl_c_delay(g.transitive_closure) < 0.5
    assert g.entity_count() == n and g.relationship_count() == m
    g.add_relationship("0", "1", "k")
    assert "1" in g.reachable("0")
    part = g.subgraph([str(i) for i in range(200)])
    closure = part.transitive_closure()
    assert closure == {v: sorted(part.reachable(v)) for v in sorted(part.entity_ids())}


def test_transitive_closure_lists_entities_and_what_they_reach_in_string_order() -> None:
    # Numbered ids (from an edge list) sort as strings: "10" before "2".
    g = ar.GraphStore.from_edge_list(12, [(11, 10), (10, 2), (2, 11), (0, 9), (9, 1)])
    g.add_entity("b")
    g.add_entity("a")
    g.add_relationship("b", "a")
    g.add_relationship("1", "b")
    closure = g.transitive_closure()
    assert list(closure) == sorted(g.entity_ids())
    assert closure["0"] == ["1", "9", "a", "b"]
    assert closure["10"] == ["10", "11", "2"]
    assert closure["a"] == [] and closure["b"] == ["a"]
    for v, reached in closure.items():
        assert reached == sorted(g.reachable(v))


def test_cycles_stop_soon_after_ctrl_c_and_leave_the_store_usable() -> None:
    # Such a graph holds far more cycles than any run can list: asking for many took 2 s a
    # call here (40 s and gigabytes for 10**5), and Ctrl-C went unnoticed until it ended.
    n, m = 2000, 4000
    g, edges = _random_graph(n, m, seed=0)
    assert _ctrl_c_delay(lambda: g.cycles(cap=20_000)) < 0.5
    assert g.entity_count() == n and g.relationship_count() == m
    found = g.cycles(cap=5)
    assert len(found) == 5
    for cycle in found:
        steps = zip(cycle, cycle[1:] + cycle[:1], strict=True)
        assert all(step in edges for step in steps)
        assert len(set(cycle)) == len(cycle)


def test_cycles_off_the_main_thread_give_what_the_main_thread_gets() -> None:
    g, _ = _random_graph(300, 600, seed=3)
    expected = g.cycles(cap=500)
    found: list[list[list[str]]] = []
    worker = threading.Thread(target=lambda: found.append(g.cycles(cap=500)))
    worker.start()
    worker.join()
    assert found == [expected] and len(expected) == 500


@pytest.mark.parametrize(("dtype", "queries"), [("float32", 6000), ("int8", 1500)])
def test_a_big_vector_batch_stops_soon_after_ctrl_c_and_the_index_stays_usable(
    dtype: str, queries: int
) -> None:
    rng = np.random.default_rng(0)
    n, dim = 100_000, 64
    index = ar.VectorIndex(dim, dtype=dtype)
    index.add(np.arange(n), rng.standard_normal((n, dim), dtype=np.float32))
    batch = rng.standard_normal((queries, dim), dtype=np.float32)
    started = time.perf_counter()
    index.search_batch(batch, 10)
    whole = time.perf_counter() - started
    delay = _ctrl_c_delay(lambda: index.search_batch(batch, 10))
    # A batch here takes most of a second or more (the Ctrl-C waited for its end); a stop
    # waits for a block of rows (fused float32 scan) or a query (int8) at most.
    assert delay < 0.25, (delay, whole)
    assert len(index) == n
    ids, _ = index.search_batch(batch[:3], 1)
    assert ids.shape == (3, 1)


# ------------------------------------------------------------------ the GIL


def test_clearing_many_episodes_lets_other_threads_run() -> None:
    # Freeing 50,000 episodes took about 1 ms here (10 ms once memory is fragmented), with
    # the GIL held: every other Python thread stopped meanwhile.
    source = ar.EpisodicStore()
    for i in range(50_000):
        source.add_episode("a", f"episode {i}", (i % 97) / 97)
    text = source.to_json()
    stores = [ar.EpisodicStore.from_json(text) for _ in range(20)]
    cleared: list[int] = []

    def clear() -> None:
        store = stores.pop()
        cleared.append(store.clear("a" if len(stores) % 2 else None))
        assert len(store) == 0

    assert gil_released_during(clear)
    assert cleared == [50_000] * 20


# ------------------------------------------------------------------ threads


def test_searches_next_to_a_writer_see_whole_batches_of_vectors() -> None:
    rng = np.random.default_rng(0)
    dim, n = 16, 5000
    base = rng.standard_normal((n, dim)).astype(np.float32)
    batch = rng.standard_normal((64, dim)).astype(np.float32)
    new_ids = np.arange(n, n + 64)
    index = ar.VectorIndex(dim)
    index.add(np.arange(n), base)
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    unit_batch = batch / np.linalg.norm(batch, axis=1, keepdims=True)
    query = unit_batch[0]
    stop = threading.Event()
    problems: list[Any] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            # The batch, then its opposite in its place, then nothing.
            index.add(new_ids, batch if i % 2 else -batch)
            i += 1
            if i % 3 == 0:
                index.remove(new_ids)

    def reader() -> None:
        while not stop.is_set():
            ids, scores = index.search(query, 100)
            signs = set()
            for i, score in zip(ids.tolist(), scores.tolist(), strict=True):
                if i < n:
                    if abs(float(unit[i] @ query) - score) > 1e-4:
                        problems.append(("base", i, score))
                    continue
                plain = float(unit_batch[i - n] @ query)
                sign = 1 if abs(plain - score) <= 1e-4 else -1 if abs(plain + score) <= 1e-4 else 0
                signs.add(sign)
            if len(set(ids.tolist())) != len(ids) or np.any(np.diff(scores) > 0):
                problems.append(("order", ids, scores))
            if 0 in signs or len(signs) > 1:  # a torn vector, or two versions of the batch
                problems.append(("batch", signs))
            if len(index) not in (n, n + 64):
                problems.append(("len", len(index)))

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(interval)
    assert problems == []


def test_closures_and_cycles_next_to_a_writer_match_one_version_of_the_graph() -> None:
    n = 200
    g = ar.GraphStore()
    names = [f"n{i:03}" for i in range(n)]
    g.add_entities(names)
    for a, b in itertools.pairwise(names):
        g.add_relationship(a, b, "next")
    stop = threading.Event()
    problems: list[Any] = []
    ring = [names]

    def writer() -> None:
        while not stop.is_set():
            g.add_relationship(names[-1], names[0], "back")  # the chain becomes a ring
            g.add_entity("x")
            g.add_relationship("n005", "x", "k")
            g.remove_relationship(names[-1], names[0])
            g.remove_entity("x")

    def reader() -> None:
        while not stop.is_set():
            closure = g.transitive_closure()
            has_x = "x" in closure
            via_x = "x" in closure["n005"]
            closed = "n000" in closure["n000"]
            if set(closure) - {"x"} != set(names) or (via_x and not has_x):
                problems.append(("entities", sorted(closure)))
            if list(closure) != sorted(closure):
                problems.append("key order")
            wanted = n + via_x if closed else n - 11  # "n005" (and "x") only round the ring
            if len(closure["n010"]) != wanted:
                problems.append(("n010", len(closure["n010"]), closed, via_x))
            if g.cycles() not in ([], ring):
                problems.append(("cycles", g.cycles()))

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(interval)
    assert problems == []


# ------------------------------------------------------------------ copies


def _stores() -> list[Any]:
    index = ar.VectorIndex(2)
    index.add([1], np.ones((1, 2), np.float32))
    graph = ar.GraphStore()
    graph.add_entity("a")
    memory = ar.WorkingMemory(2)
    memory.set("k", [1])
    episodes = ar.EpisodicStore()
    episodes.add_episode("a", "x", 0.5)
    metrics = ar.RuntimeMetrics()
    metrics.record_step()
    semantic = ar.SemanticStore()
    semantic.store("k", "v")
    return [index, graph, memory, episodes, metrics, semantic]


@pytest.mark.parametrize(
    "how",
    [copy.copy, copy.deepcopy, pickle.dumps],
    ids=["copy", "deepcopy", "pickle"],
)
def test_mutable_stores_refuse_copies_with_a_type_error_naming_them(
    how: Callable[[Any], object],
) -> None:
    # A copy sharing its state, or copying half of it, would be worse than none.
    for store in _stores():
        with pytest.raises(TypeError, match=type(store).__name__):
            how(store)


def test_immutable_values_copy_and_pickle_as_equal_values() -> None:
    metrics = ar.RuntimeMetrics()
    metrics.record_tool_call("search", "agent")
    values: list[Any] = [
        ar.HashingEmbedder(32),
        metrics.snapshot(),
        ar.DecayPolicy.exponential(2.0),
        ar.RecallPolicy.hybrid(0.5, 0.25),
    ]
    for value in values:
        for clone in (copy.copy(value), copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
            assert type(clone) is type(value)
            if isinstance(value, ar.HashingEmbedder):
                assert np.array_equal(clone.embed(["a b"]), value.embed(["a b"]))
            else:
                assert clone == value
    store = ar.EpisodicStore()
    store.add_episode("a", "x", 0.5)
    (episode,) = store.episodes("a")
    assert copy.deepcopy(episode) == episode
    store.recall("a")  # the store changes; the episode read before does not
    assert episode.recall_count == 0 and store.episodes("a")[0].recall_count == 1


# ------------------------------------------------------------------ callbacks


class _ReenteringEmbedder:
    """Embeds texts by their length; its first calls use the store it embeds for."""

    dim = 4

    def __init__(self) -> None:
        self.store: Any = None
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        if self.calls <= 2 and isinstance(self.store, ar.EpisodicStore):
            self.store.recall("a", 3, query="inner")
            self.store.add_episode("a", "added inside embed", 0.25)
        elif self.calls <= 2 and self.store is not None:
            self.store.search("inner", 2)
            self.store.store("inner", "stored inside embed")
        return np.array([[len(t), 1.0, 2.0, 3.0] for t in texts], dtype=np.float32)


def test_an_embedder_that_uses_its_own_episodic_store_works() -> None:
    embedder = _ReenteringEmbedder()
    store = ar.EpisodicStore(embedder=embedder)
    embedder.store = store
    store.add_episode("a", "outer", 0.5)
    contents = [e.content for e in store.episodes("a")]
    assert sorted(contents) == ["added inside embed", "added inside embed", "outer"]
    assert {e.content for e in store.recall("a", 5, query="q")} == set(contents)


def test_a_clock_that_uses_its_own_episodic_store_works() -> None:
    ticks = [0]

    def clock() -> float:
        ticks[0] += 1
        if ticks[0] == 1:
            store.add_episode("b", "added by the clock", 0.1)
            store.recall("b", 2)
        return 1000.0 + ticks[0]

    store = ar.EpisodicStore(clock=clock)
    store.add_episode("b", "outer", 0.2)
    assert [e.content for e in store.episodes("b")] == ["added by the clock", "outer"]


def test_an_embedder_that_uses_its_own_semantic_store_works() -> None:
    embedder = _ReenteringEmbedder()
    store = ar.SemanticStore(embedder)
    embedder.store = store
    store.store("k", "value")
    assert store.all_keys() == ["inner", "k"]
    assert {hit.key for hit in store.search("q", 5)} == {"inner", "k"}
