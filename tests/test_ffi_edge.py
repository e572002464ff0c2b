"""Edges of the Rust/Python boundary: locks and the GIL, the cycle collector, huge ints, lone
surrogates, allocation failures, panics.

Scenarios that used to hang the process run in a subprocess with a timeout, so that a
regression fails the test instead of hanging the suite; so do those that set a memory limit.
"""

import gc
import os
import resource
import subprocess
import sys
import textwrap
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from probes import gil_released_during

import llm_agent_runtime as ar

BIG = 2**64
BEYOND = 10**400  # an int no float can hold


def run_python(code: str, timeout: float = 20.0, env: dict[str, str] | None = None) -> str:
    """Runs `code` in a fresh interpreter; returns its stdout. A hang fails the test."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the scenario hung (no exit within {timeout} s)")
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


# ------------------------------------------------------------------ locks and the GIL

# A finalizer that writes to the store runs inside the read call when allocating a result
# starts the cycle collector: it must not meet the read lock still held.
FINALIZER_SCENARIO = """
    import gc
    import numpy as np
    import llm_agent_runtime as ar

    vi = ar.VectorIndex(4)
    vi.add([1, 2], np.eye(2, 4, dtype=np.float32))
    g = ar.GraphStore()
    g.add_entity("a", properties={"p": [1]})
    g.add_entity("b")
    g.add_relationship("a", "b", properties={"q": {"r": 2}})
    added = []

    class Garbage:
        def __init__(self, write):
            self.me = self  # only the cycle collector frees it
            self.write = write

        def __del__(self):
            self.write()

    def under_collection(call, write):
        gc.collect()
        gc.disable()
        Garbage(write)
        gc.set_threshold(1)  # the call's first allocation collects the garbage
        gc.enable()
        try:
            return call()
        finally:
            gc.set_threshold(700)

    def new_entity():
        added.append(f"n{len(added)}")
        g.add_entity(added[-1])

    got = under_collection(lambda: vi.get(1), lambda: vi.remove([2]))
    assert got.tolist() == [1.0, 0.0, 0.0, 0.0] and len(vi) == 1
    rels = under_collection(g.relationships, new_entity)
    assert rels[0]["properties"] == {"q": {"r": 2}}
    assert under_collection(lambda: g.edges_from("a"), new_entity)[0]["to"] == "b"
    assert under_collection(lambda: g.entity("a"), new_entity)["properties"] == {"p": [1]}
    assert under_collection(lambda: g.bfs("a"), new_entity) == ["a", "b"]
    assert set(added) <= set(g.entity_ids())
    print("done")
"""


def test_finalizers_that_write_during_a_read_do_not_deadlock() -> None:
    assert run_python(FINALIZER_SCENARIO).strip() == "done"


# Two threads, no callback touching the store: the reader's allocations run a harmless
# finalizer, which hands the GIL to the writer; the writer must not wait for the lock with
# the GIL held while the reader holds it.
TWO_THREAD_SCENARIO = """
    import sys, threading, time
    import numpy as np
    import llm_agent_runtime as ar

    sys.setswitchinterval(1e-5)
    g = ar.GraphStore()
    for i in range(100):
        g.add_entity(str(i))
    for i in range(99):
        g.add_relationship(str(i), str(i + 1), properties={"w": [i]})
    vi = ar.VectorIndex(8)
    vi.add(np.arange(100), np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32))

    class Node:
        def __init__(self):
            self.me = self

        def __del__(self):
            x = 0
            for _ in range(200):
                x += 1

    stop = time.monotonic() + 1.0

    def reader():
        while time.monotonic() < stop:
            for _ in range(20):
                Node()
            g.relationships()
            for i in range(20):
                vi.get(i)

    def writer():
        one = np.ones((1, 8), np.float32)
        i = 0
        while time.monotonic() < stop:
            g.add_entity(f"w{i}")
            i += 1
            vi.remove([99])
            vi.add([99], one)

    threads = [threading.Thread(target=f) for f in (reader, writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("done")
"""


def test_readers_and_writers_on_two_threads_with_finalizers_do_not_deadlock() -> None:
    assert run_python(TWO_THREAD_SCENARIO).strip() == "done"


def test_neighborhood_is_consistent_while_another_thread_mutates() -> None:
    # The walk ran on a snapshot and its node indices were then used on the live store: an
    # entity moved by a removal in between gave wrong entities or an index panic.
    n = 10_000
    g = ar.GraphStore()
    g.add_entity("z")  # removed and re-added: the last entity moves into its slot
    g.add_entities([f"c{i}" for i in range(n)])
    g.add_relationships([(f"c{i}", f"c{i + 1}") for i in range(n - 1)])
    last = f"c{n - 1}"
    must = {f"c{i}" for i in range(n - 1)}
    stop = threading.Event()

    def mutate() -> None:
        while not stop.is_set():
            g.remove_entity("z")
            g.add_entity("z")
            g.remove_entity(last)
            g.add_entity(last)
            g.add_relationship(f"c{n - 2}", last)

    thread = threading.Thread(target=mutate)
    thread.start()
    try:
        for _ in range(30):
            got = set(g.neighborhood("c0", hops=n, directed=True).entity_ids())
            assert must <= got <= must | {last}
    finally:
        stop.set()
        thread.join()


def _big_graph() -> ar.GraphStore:
    n = 100_000
    return ar.GraphStore.from_edge_list(n, [(i % n, (i * 7 + 1) % n) for i in range(4 * n)])


def _fresh_big_graphs() -> list[ar.GraphStore]:
    """20 graphs as `from_edge_list` leaves them: for a change whose first call alone is O(n)."""
    n = 100_000
    rows = np.arange(4 * n)
    edges = np.stack([rows % n, (rows * 7 + 1) % n], axis=1)
    return [ar.GraphStore.from_edge_list(n, edges) for _ in range(20)]


def _many_agents_metrics() -> ar.RuntimeMetrics:
    metrics = ar.RuntimeMetrics()
    for i in range(100_000):
        metrics.record_tool_call("search", f"agent-{i}")
    return metrics


def _long_memory() -> ar.EpisodicStore:
    store = ar.EpisodicStore()
    for i in range(100_000):
        store.add_episode("a", f"episode {i}", (i % 97) / 97)
    return store


@pytest.mark.parametrize(
    ("build", "op"),
    [
        (_big_graph, lambda g: g.bidirectional_count()),
        (_big_graph, lambda g: g.isolated_entity_count()),
        (_big_graph, lambda g: g.avg_relationship_weight()),
        (_big_graph, lambda g: g.entities_with_self_loops()),
        (_big_graph, lambda g: g.remove_entity(str(g.entity_count() - 1))),
        (ar.GraphStore, lambda g: g.add_entities([f"{len(g)}-{i}" for i in range(20_000)])),
        # A scan of every relationship, each call.
        (_big_graph, lambda g: g.remove_relationship("0", "1")),
        (_big_graph, lambda g: g.update_relationship("0", "1", "related", weight=2.0)),
        # The first change after `from_edge_list` stores its edge list or its entities: each
        # call takes a fresh graph.
        (_fresh_big_graphs, lambda gs: gs.pop().add_relationship("0", "1")),
        (_fresh_big_graphs, lambda gs: gs.pop().add_entity("new")),
        (_fresh_big_graphs, lambda gs: gs.pop().update_entity("0", label="x")),
        (_many_agents_metrics, lambda m: m.snapshot()),
        (_many_agents_metrics, lambda m: m.to_prometheus()),
        (_many_agents_metrics, lambda m: m.snapshot().to_json()),
        (_long_memory, lambda s: s.episodes_by_importance("a")),
    ],
    ids=[
        "bidirectional_count",
        "isolated_entity_count",
        "avg_relationship_weight",
        "entities_with_self_loops",
        "remove_entity",
        "add_entities",
        "remove_relationship",
        "update_relationship",
        "first add_relationship",
        "first add_entity",
        "first update_entity",
        "metrics.snapshot",
        "metrics.to_prometheus",
        "snapshot.to_json",
        "episodes_by_importance",
    ],
)
def test_calls_whose_work_grows_with_the_data_release_the_gil(
    build: Callable[[], Any], op: Callable[[Any], object]
) -> None:
    # They held it whenever the store's lock was free: every other thread stopped meanwhile.
    target = build()
    assert gil_released_during(lambda: op(target))


# ------------------------------------------------------------------ panics


def test_properties_whose_conversion_changes_the_dict_are_not_a_panic() -> None:
    props: dict[str, Any] = {}

    class Sneaky(list[int]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            props["added"] = 1  # the dict being converted grows meanwhile
            return super().__iter__()

    props["a"] = Sneaky([1, 2])
    g = ar.GraphStore()
    g.add_entity("x", properties=props)  # used to raise pyo3's PanicException
    assert g.entity("x")["properties"] == {"a": [1, 2]}  # the items as the call began
    g.add_relationship("x", "x", properties=props)
    assert g.relationships()[0]["properties"]["a"] == [1, 2]


# ------------------------------------------------------------------ the cycle collector


class Payload:
    owner: Any = None

    def embed(self, texts: list[str]) -> list[list[float]]:
        """An embedder too: a store takes no object without this method as one."""
        return [[1.0] for _ in texts]


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("WorkingMemory value", lambda p: _memory_holding(p)),
        ("EpisodicStore clock", lambda p: ar.EpisodicStore(clock=lambda: p and 0.0)),
        ("EpisodicStore embedder", lambda p: ar.EpisodicStore(embedder=p)),
    ],
)
def test_reference_cycles_through_rust_objects_are_collected(
    name: str, build: Callable[[Payload], Any]
) -> None:
    payload = Payload()
    payload.owner = build(payload)  # payload -> rust object -> payload
    ref = weakref.ref(payload)
    del payload
    gc.collect()
    assert ref() is None, f"a cycle through the {name} was never collected"


def _memory_holding(value: object) -> ar.WorkingMemory:
    wm = ar.WorkingMemory(4)
    wm.set("k", value)
    return wm


def test_a_store_whose_clock_is_a_bound_method_of_its_owner_is_freed() -> None:
    class Agent:
        def __init__(self) -> None:
            self.store = ar.EpisodicStore(clock=self.now)

        def now(self) -> float:
            return 0.0

    agent = Agent()
    agent.store.add_episode("a", "x", 0.5)
    ref = weakref.ref(agent)
    del agent
    gc.collect()
    assert ref() is None


def test_collecting_a_memory_runs_value_finalizers_that_use_it() -> None:
    seen: list[int] = []

    class Value:
        def __init__(self, memory: ar.WorkingMemory) -> None:
            self.memory = memory  # value -> memory -> value

        def __del__(self) -> None:
            seen.append(len(self.memory))  # the memory is usable from a finalizer

    def make() -> "weakref.ref[Value]":
        wm = ar.WorkingMemory(4)
        value = Value(wm)
        wm.set("v", value)
        return weakref.ref(value)

    ref = make()
    gc.collect()  # runs __del__ (the memory still holds the value), then frees the cycle
    assert seen == [1] and ref() is None


# ------------------------------------------------------------------ lone surrogates

LONE = "emoji cut in two: \ud83d"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: ar.parse_react_step(f"Thought: ok\nAction: FINAL_ANSWER {LONE}"), ar.ParseError),
        (lambda: ar.GraphStore().add_entity(LONE), ar.GraphError),
        (lambda: ar.GraphStore().add_entity("a", label=LONE), ar.GraphError),
        (lambda: ar.GraphStore().add_entity("a", properties={"k": LONE}), ar.GraphError),
        (lambda: ar.GraphStore().add_entity("a", properties={LONE: 1}), ar.GraphError),
        (lambda: ar.GraphStore().add_relationships([("a", LONE)], True), ar.GraphError),
        (lambda: ar.WorkingMemory(2).set(LONE, 1), ar.MemoryStoreError),
        (lambda: ar.EpisodicStore().add_episode("a", LONE, 0.5), ar.MemoryStoreError),
        (lambda: ar.HashingEmbedder(8).embed(["ok", LONE]), ar.MemoryStoreError),
        (lambda: ar.RuntimeMetrics().record_tool_call(LONE), ar.AgentRuntimeError),
        (lambda: ar.EpisodicStore.from_json(LONE), ar.MemoryStoreError),
        (lambda: ar.MetricsSnapshot.from_json(LONE), ar.AgentRuntimeError),
        (
            lambda: ar.EpisodicStore(embedder=ar.HashingEmbedder(8)).recall("a", query=LONE),
            ar.MemoryStoreError,
        ),
    ],
)
def test_lone_surrogates_are_typed_errors(call: Callable[[], object], error: type) -> None:
    with pytest.raises(error, match="not valid Unicode"):
        call()


def test_lookups_of_a_name_with_a_lone_surrogate_find_nothing() -> None:
    # No writer stores such a name, so a lookup finds nothing (these raised the built-in
    # UnicodeEncodeError).
    wm = ar.WorkingMemory(2)
    wm.set("k", 1)
    assert LONE not in wm
    assert wm.get(LONE) is None and wm.get(LONE, 7) == 7
    assert wm.delete(LONE) is False
    with pytest.raises(KeyError):
        wm[LONE]
    with pytest.raises(KeyError):
        del wm[LONE]
    assert wm.items() == [("k", 1)]

    store = ar.EpisodicStore(clock=lambda: 0.0)
    store.add_episode("a", "x", 0.5, embedding=[1.0, 0.0])
    assert store.recall(LONE) == [] and store.episodes(LONE) == []
    assert store.clear(LONE) == 0 and len(store) == 1
    assert store.episode_count_for(LONE) == 0 and store.content_lengths(LONE) == []
    assert store.total_content_bytes(LONE) == 0 and store.avg_content_length(LONE) == 0.0
    assert (store.max_content_length(LONE), store.min_content_length(LONE)) == (0, 0)
    assert store.high_importance_count(LONE, 0.0) == 0
    assert store.episodes_by_importance(LONE) == []
    assert store.content_contains_count(LONE, "x") == 0
    assert store.content_contains_count("a", LONE) == 0
    # The other arguments are checked as for any agent without episodes.
    with pytest.raises(ar.MemoryStoreError, match="zero vector"):
        store.recall(LONE, query=[0.0, 0.0])

    metrics = ar.RuntimeMetrics()
    metrics.record_tool_call("t")
    snap = metrics.snapshot()
    assert (snap.tool_call_count(LONE), snap.tool_failure_count(LONE)) == (0, 0)
    assert (snap.tool_success_count(LONE), snap.failed_tool_ratio_for(LONE)) == (0, 0.0)


def test_a_react_step_with_a_lone_surrogate_says_where() -> None:
    with pytest.raises(ar.ParseError, match=r"lone surrogate .*\(at index 3\)$") as error:
        ar.parse_react_step("Hi \ud83d, Action: t {}")
    assert error.value.position == 3  # as every ParseError's, where in the text
    with pytest.raises(ar.ParseError, match=r"lone surrogate .*\(at index 0\)$") as error:
        ar.parse_react_step("\udc00Action: t {}")
    assert error.value.position == 0


# ------------------------------------------------------------------ ints beyond 64 bits


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: ar.VectorIndex(BIG), ar.MemoryStoreError, "dim must be between 1 and"),
        (lambda: ar.VectorIndex(4, "int8", rescore=BIG), ar.MemoryStoreError, "rescore must be"),
        (lambda: ar.WorkingMemory(BIG), ar.MemoryStoreError, "capacity .* is too large"),
        (lambda: ar.WorkingMemory(-BIG), ar.MemoryStoreError, "capacity must be at least 1"),
        (
            lambda: ar.EpisodicStore(per_agent_capacity=BIG),
            ar.MemoryStoreError,
            "per_agent_capacity 18446744073709551616 is too large",
        ),
        (lambda: ar.HashingEmbedder(dim=BIG), ar.MemoryStoreError, r"dim must be at most 1048576"),
        (lambda: ar.HashingEmbedder(8, char_ngrams=(-BIG, 2)), ar.MemoryStoreError, ">= 0"),
        # N-grams are at most 32 long: no limit made embedding cubic in the text.
        (lambda: ar.HashingEmbedder(8, word_ngrams=BIG), ar.MemoryStoreError, "at most 32"),
        (lambda: ar.HashingEmbedder(8, char_ngrams=(3, BIG)), ar.MemoryStoreError, "at most 32"),
        (lambda: ar.GraphStore.from_edge_list(BIG, []), ar.GraphError, "n must be between 0"),
        (lambda: _people().betweenness_centrality(k=BIG), ar.GraphError, "k must be between 1"),
        (lambda: _people().bfs("a", max_depth=-BIG), ar.GraphError, "max_depth must be >= 0"),
        (lambda: _people().neighborhood("a", hops=-BIG), ar.GraphError, "hops must be >= 0"),
        (lambda: _people().cycles(cap=-BIG), ar.GraphError, "cap must be positive"),
        (lambda: _people().label_propagation(max_rounds=-BIG), ar.GraphError, "max_rounds"),
        (lambda: _index().search(np.ones(2, np.float32), -BIG), ar.MemoryStoreError, "k must be"),
    ],
)
def test_ints_beyond_64_bits_are_typed_errors(
    call: Callable[[], object], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ar.EpisodicStore().add_episode("a", "x", BEYOND), "importance must be in"),
        (lambda: ar.DecayPolicy.exponential(BEYOND), "half_life_hours must be"),
        (lambda: ar.RecallPolicy.hybrid(BEYOND, 0), "recency_weight must be"),
        (lambda: ar.RecallPolicy.hybrid(0, -BEYOND), "frequency_weight must be"),
        (lambda: ar.EpisodicStore(similarity_weight=BEYOND), "similarity_weight must be"),
        (lambda: ar.EpisodicStore().high_importance_count("a", BEYOND), "threshold"),
        (
            lambda: ar.EpisodicStore(clock=lambda: BEYOND).add_episode("a", "x", 0.5),
            "the clock returned",
        ),
    ],
)
def test_numbers_beyond_the_float_range_are_typed_errors(
    call: Callable[[], object], message: str
) -> None:
    # These raised the built-in OverflowError.
    with pytest.raises(ar.MemoryStoreError, match=f"{message}.*beyond the float range"):
        call()


def _people() -> ar.GraphStore:
    g = ar.GraphStore()
    g.add_entities(["a", "b", "c"])
    g.add_relationships([("a", "b"), ("b", "c"), ("c", "a")])
    return g


def _index() -> ar.VectorIndex:
    index = ar.VectorIndex(2)
    index.add([1, 2], np.eye(2, dtype=np.float32))
    return index


def test_huge_limits_mean_no_limit() -> None:
    g = _people()
    assert g.bfs("a", max_depth=BIG) == g.bfs("a")
    assert g.dfs("a", max_depth=2**100) == g.dfs("a")
    assert sorted(g.neighborhood("a", hops=BIG).entity_ids()) == ["a", "b", "c"]
    assert g.cycles(cap=BIG) == g.cycles()
    assert g.label_propagation(max_rounds=BIG) == g.label_propagation()
    index = _index()
    ids, _ = index.search(np.ones(2, np.float32), BIG)
    assert sorted(ids.tolist()) == [1, 2]
    batch_ids, _ = index.search_batch(np.ones((3, 2), np.float32), BIG)
    assert batch_ids.shape == (3, 2)
    store = ar.EpisodicStore()
    store.add_episode("a", "x", 0.5)
    assert len(store.recall("a", BIG)) == 1


# ------------------------------------------------------------------ memory


def test_hashing_embedder_dim_is_capped_at_2_to_the_20() -> None:
    assert ar.HashingEmbedder(dim=2**20).dim == 2**20
    with pytest.raises(ar.MemoryStoreError, match=r"at most 1048576 \(2\*\*20\), got 1048577"):
        ar.HashingEmbedder(dim=2**20 + 1)
    with pytest.raises(ar.MemoryStoreError, match="at most 1048576"):
        ar.HashingEmbedder(dim=2**30)  # used to be accepted, then abort the process in embed


# Scenarios under an address-space limit set just above what the process has mapped.
VM_BYTES = """
    def vm_bytes():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")
"""


NEEDS_ADDRESS_LIMIT = pytest.mark.skipif(
    not hasattr(resource, "RLIMIT_AS") or not os.path.exists("/proc/self/status"),
    reason="needs RLIMIT_AS and /proc (Linux)",
)
"""The scenarios set an address-space limit and read what the process has mapped."""


# Allocations that do not fit under an address-space limit must raise, not abort. The limit
# is set just above what the process has mapped, so any request bigger than the allocator's
# spare reserve (mimalloc keeps about 1 GiB) fails; the inputs are lazily zeroed, so no
# memory is touched.
ALLOCATION_SCENARIO = (
    VM_BYTES
    + """
    import resource
    import numpy as np
    import llm_agent_runtime as ar

    x = np.zeros((1_500_000, 400), np.float32)  # 2.4 GB of untouched (virtual) memory
    ids = np.arange(len(x))
    vi = ar.VectorIndex(400)
    embedder = ar.HashingEmbedder(dim=2**20)
    embedder.embed(["warm up"])
    limit = vm_bytes() + 64 * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    for name, call in [
        ("add", lambda: vi.add(ids, x)),  # its normalized copy does not fit
        ("embed", lambda: embedder.embed(["hello"] * 1000)),  # 4 GB of output
    ]:
        try:
            call()
            print(name, "fit")
        except ar.MemoryStoreError as e:
            assert "out of memory" in str(e), e
            print(name, "MemoryStoreError")
    print("len", len(vi))
"""
)


@NEEDS_ADDRESS_LIMIT
def test_allocations_that_do_not_fit_raise_instead_of_aborting() -> None:
    out = run_python(ALLOCATION_SCENARIO, env={"OPENBLAS_NUM_THREADS": "1"})
    assert out.split() == ["add", "MemoryStoreError", "embed", "MemoryStoreError", "len", "0"]


# The graph's algorithms allocate a few slots per entity (adjacency rows, distances, marks,
# scratch): under an address-space limit these must raise GraphError, the class every
# caller of the graph catches, not abort the interpreter (Rust's infallible allocations did)
# nor raise MemoryStoreError. The graph is built first (8 bytes an entity), then the limit
# is set just above what the process has mapped; MIMALLOC_ARENA_RESERVE=0 keeps mimalloc
# from mapping a spare arena in advance, so every buffer of an algorithm (32 MiB and up
# for 2**23 entities) needs memory the limit refuses, and none is touched.
GRAPH_ALLOCATION_SCENARIO = (
    VM_BYTES
    + """
    import resource
    import llm_agent_runtime as ar

    g = ar.GraphStore.from_edge_list(2**23, [(0, 1), (1, 2), (2, 0)])
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + 16 * 2**20, hard))
    calls = [
        ("shortest_path", lambda: g.shortest_path("0", "2")),
        ("distances", lambda: g.distances("0")),
        ("bfs", lambda: g.bfs("0")),
        ("dfs", lambda: g.dfs("0", directed=False)),
        ("reachable", lambda: g.reachable("0")),
        ("reachable_undirected", lambda: g.reachable("0", directed=False)),
        ("neighbors_of", lambda: g.neighbors_of("0")),
        ("neighborhood", lambda: g.neighborhood("0")),
        ("subgraph", lambda: g.subgraph(["0", "1"])),
        ("edges_from", lambda: g.edges_from("0")),
        ("has_cycle", lambda: g.has_cycle()),
        ("cycles", lambda: g.cycles()),
        ("transitive_closure", lambda: g.transitive_closure()),
        ("degree_centrality", lambda: g.degree_centrality()),
        ("betweenness_centrality", lambda: g.betweenness_centrality(k=1)),
        ("betweenness_from", lambda: g.betweenness_from(["0"])),
        ("communities", lambda: g.communities()),
        ("label_propagation", lambda: g.label_propagation()),
    ]
    for name, call in calls:
        try:
            call()
            print(name, "fit")
        except ar.GraphError as e:
            assert str(e).startswith("out of memory: "), e
            print(name, "GraphError")
    # A view whose build failed is not cached: with the limit lifted, every query works.
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    print("after", g.shortest_path("0", "2")[0], len(g.neighborhood("0")), g.has_cycle())
"""
)


@NEEDS_ADDRESS_LIMIT
def test_graph_algorithms_out_of_memory_raise_graph_error_instead_of_aborting() -> None:
    out = run_python(GRAPH_ALLOCATION_SCENARIO, env={"MIMALLOC_ARENA_RESERVE": "0"})
    lines = out.splitlines()
    assert lines[:-1] == [
        f"{name} GraphError"
        for name in (
            "shortest_path",
            "distances",
            "bfs",
            "dfs",
            "reachable",
            "reachable_undirected",
            "neighbors_of",
            "neighborhood",
            "subgraph",
            "edges_from",
            "has_cycle",
            "cycles",
            "transitive_closure",
            "degree_centrality",
            "betweenness_centrality",
            "betweenness_from",
            "communities",
            "label_propagation",
        )
    ]
    assert lines[-1] == "after ['0', '1', '2'] 3 True"


# Listing every id makes a Python string per entity: past the algorithm's buffers (which
# fit here, the snapshot built before the limit), those strings and the lists holding them
# must fail as GraphError too. pyo3's string constructor panicked (a BaseException) on a
# failed allocation, and the copy of `entity_ids` aborted the interpreter. A short answer
# from the same graph makes only its own strings, so it fits.
GRAPH_STRINGS_SCENARIO = (
    VM_BYTES
    + """
    import resource
    import llm_agent_runtime as ar

    g = ar.GraphStore.from_edge_list(2**23, [(0, 1), (1, 2), (2, 0)])
    g.shortest_path("0", "2")  # the snapshot is built before the limit
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + 160 * 2**20, hard))
    for name, call in [
        ("entity_ids", g.entity_ids),
        ("degree_centrality", g.degree_centrality),
        ("distances", lambda: g.distances("0")),
    ]:
        try:
            print(name, "fit", len(call()))
        except ar.GraphError as e:
            assert str(e).startswith("out of memory: "), e
            print(name, "GraphError")
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    print("after", len(g.entity_ids()), len(g.degree_centrality()))
"""
)


@NEEDS_ADDRESS_LIMIT
def test_graph_results_listing_every_id_out_of_memory_raise_graph_error() -> None:
    out = run_python(GRAPH_STRINGS_SCENARIO, env={"MIMALLOC_ARENA_RESERVE": "0"})
    assert out.splitlines() == [
        "entity_ids GraphError",
        "degree_centrality GraphError",
        "distances fit 3",
        f"after {2**23} {2**23}",
    ]


# Under limits a megabyte or so apart, a result's strings, its list, its dict or its floats
# may be what does not fit: each such failure must be a GraphError (pyo3's list and float
# constructors panicked, a BaseException, and with RUST_BACKTRACE set the panic's own
# backtrace could hang the process).
GRAPH_RESULT_LIMITS_SCENARIO = (
    VM_BYTES
    + """
    import resource
    import llm_agent_runtime as ar

    n = 2**20
    g = ar.GraphStore.from_edge_list(n, [(i, i + 1) for i in range(n - 1)])
    g.shortest_path("0", "2")  # the snapshot is built before the limits
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    outcomes = set()
    for extra_mib in range(80, 150, 5):
        for name, call in [
            ("entity_ids", g.entity_ids),
            ("bfs", lambda: g.bfs("0")),
            ("degree_centrality", g.degree_centrality),
            ("reachable", lambda: g.reachable("0")),
        ]:
            resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + extra_mib * 2**20, hard))
            try:
                assert len(call()) >= n - 1
                outcomes.add("fit")
            except ar.GraphError as e:
                assert str(e).startswith("out of memory: "), e
                outcomes.add("GraphError")
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    print(sorted(outcomes), len(g.entity_ids()))
"""
)


@NEEDS_ADDRESS_LIMIT
def test_graph_results_under_tight_limits_fit_or_raise_graph_error() -> None:
    out = run_python(
        GRAPH_RESULT_LIMITS_SCENARIO,
        timeout=60,
        env={"MIMALLOC_ARENA_RESERVE": "0", "RUST_BACKTRACE": "1"},
    )
    outcomes, count = out.rsplit(" ", 1)
    assert count.strip() == str(2**20)
    assert "GraphError" in outcomes  # some limits were too tight: the failures were seen


GRAPH_TOO_LARGE_SCENARIO = (
    VM_BYTES
    + """
    import resource
    import llm_agent_runtime as ar

    limit = vm_bytes() + 256 * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    for edges in ([], [(0, 1)]):
        try:
            ar.GraphStore.from_edge_list(2**32 - 1, edges)  # 32 GiB of degree counts
            print("built")
        except ar.GraphError as e:
            print("GraphError", str(e).startswith("out of memory: graph snapshot"))
        except ar.MemoryStoreError as e:
            print("MemoryStoreError", e)
"""
)


@NEEDS_ADDRESS_LIMIT
def test_a_graph_too_large_for_memory_is_a_graph_error_not_a_memory_store_error() -> None:
    # It used to raise MemoryStoreError, which `except GraphError` around graph code misses.
    out = run_python(GRAPH_TOO_LARGE_SCENARIO, env={"MIMALLOC_ARENA_RESERVE": "0"})
    assert out.split() == ["GraphError", "True", "GraphError", "True"]


# A change of the graph that needs more memory than there is must leave the graph as it was
# with a GraphError: the id index and the duplicate check are hash tables, whose own growth
# aborted the interpreter when it failed. Each change needs tens of MiB more than the limit
# leaves (the new ids' check; the index of the numbered ids after a removed one, which are
# hashed from then on); the graph's entities are made before the limit is set.
GRAPH_CHANGE_OUT_OF_MEMORY_SCENARIO = (
    VM_BYTES
    + """
    import resource
    import llm_agent_runtime as ar

    n = 2**22
    g = ar.GraphStore.from_edge_list(n, [(0, 1)])
    g.update_entity("0", label="first")  # the entities are stored one by one from now on
    new_ids = [f"new-{i}" for i in range(2**21)]
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    for name, call, room in [
        # Room for the ids read from the list (24 bytes each), not for their check too.
        ("add_entities", lambda: g.add_entities(new_ids), len(new_ids) * 24),
        ("remove_entity", lambda: g.remove_entity("0"), 0),
    ]:
        resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + room + 16 * 2**20, hard))
        try:
            call()
            print(name, "fit")
        except ar.GraphError as e:
            print(name, "GraphError", str(e))
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    print("after", len(g) == n, g.entity("0")["label"], g.has_entity("new-0"))
    g.remove_entity("0")
    print("removed", len(g) == n - 1, g.has_entity("0"), g.neighbors_of("1"))
"""
)


@NEEDS_ADDRESS_LIMIT
def test_a_graph_change_out_of_memory_is_a_graph_error_and_changes_nothing() -> None:
    out = run_python(GRAPH_CHANGE_OUT_OF_MEMORY_SCENARIO, env={"MIMALLOC_ARENA_RESERVE": "0"})
    assert out.splitlines() == [
        "add_entities GraphError out of memory: the check of the new ids cannot be allocated",
        "remove_entity GraphError out of memory: the id index cannot grow",
        "after True first False",
        "removed True False []",
    ]


# ------------------------------------------------------------------ protocols


def test_working_memory_iterates_over_a_snapshot_of_its_keys() -> None:
    wm = ar.WorkingMemory(4)
    for key in "abc":
        wm[key] = key.upper()
    wm.get("a")
    assert list(wm) == wm.keys() == ["a", "c", "b"]
    for key in wm:  # a snapshot: changing the memory while iterating is allowed
        del wm[key]
    assert len(wm) == 0 and list(wm) == []
    assert dict.fromkeys(ar.WorkingMemory(1)) == {}


def test_policies_compare_and_hash_by_value() -> None:
    decay = ar.DecayPolicy.exponential(1.0)
    assert decay == ar.DecayPolicy.exponential(1.0)
    assert decay != ar.DecayPolicy.exponential(2.0)
    assert hash(decay) == hash(ar.DecayPolicy.exponential(1.0))
    hybrid = ar.RecallPolicy.hybrid(0.5, 0.0)
    assert hybrid == ar.RecallPolicy.hybrid(0.5, -0.0)  # 0.0 == -0.0, so they hash alike
    assert hash(hybrid) == hash(ar.RecallPolicy.hybrid(0.5, -0.0))
    assert ar.RecallPolicy.importance() == ar.RecallPolicy.importance()
    assert hybrid != ar.RecallPolicy.importance() and hybrid != ar.RecallPolicy.hybrid(0.5, 1)
    assert decay != "DecayPolicy.exponential(1.0)"
    assert len({decay, ar.DecayPolicy.exponential(1.0), hybrid, ar.RecallPolicy.importance()}) == 3


# Building a whole-graph result (the JSON document, the relationship rows) and growing the
# entity list used allocations that abort the interpreter when memory runs out.
GRAPH_EXPORT_SCENARIO = (
    VM_BYTES
    + """
    import resource
    import llm_agent_runtime as ar

    n = 2**22
    g = ar.GraphStore.from_edge_list(n, [(i, (i * 7 + 1) % n) for i in range(n)])
    g.bfs("0")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + 150 * 2**20, hard))
    for name, call in [
        ("to_json", g.to_json),
        ("relationships", g.relationships),
        ("add_entity", lambda: g.add_entity("x")),
    ]:
        try:
            call()
            print(name, "fit")
        except ar.GraphError as e:
            assert str(e).startswith("out of memory: "), e
            print(name, "GraphError")
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    g.add_entity("x")  # left as it was: the id is free, and the graph takes it now
    print("after", g.entity_count(), g.relationship_count())
"""
)


@NEEDS_ADDRESS_LIMIT
def test_graph_exports_and_growth_out_of_memory_raise_graph_error() -> None:
    out = run_python(GRAPH_EXPORT_SCENARIO, env={"MIMALLOC_ARENA_RESERVE": "0"})
    assert out.splitlines() == [
        "to_json GraphError",
        "relationships GraphError",
        "add_entity GraphError",
        f"after {2**22 + 1} {2**22}",
    ]
