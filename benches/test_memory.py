"""Working-memory LRU: ours vs cachetools, an OrderedDict LRU, lru-dict and a plain dict."""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any

import pytest

import llm_agent_runtime as ar

CAPACITY = 1_024
N_OPS = 1_000_000
N_KEYS = 4_096


def _ops(seed: int = 3) -> list[tuple[bool, str]]:
    """80% get / 20% set over Zipf-like keys (weight 1 / rank**1.1)."""
    rng = random.Random(seed)
    keys = [f"key-{i}" for i in range(N_KEYS)]
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(N_KEYS)]
    chosen = rng.choices(keys, weights=weights, k=N_OPS)
    return [(rng.random() < 0.2, key) for key in chosen]


OPS = _ops()


class OrderedDictLru:
    """The usual hand-written LRU over OrderedDict."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        try:
            self.data.move_to_end(key)
        except KeyError:
            return None
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        if len(self.data) > self.capacity:
            self.data.popitem(last=False)


def _make(lib: str) -> Any:
    if lib == "llm_agent_runtime":
        return ar.WorkingMemory(CAPACITY)
    if lib == "cachetools":
        import cachetools

        return cachetools.LRUCache(maxsize=CAPACITY)
    if lib == "lru-dict":
        import lru

        return lru.LRU(CAPACITY)
    if lib == "OrderedDict LRU":
        return OrderedDictLru(CAPACITY)
    return {}  # plain dict: no eviction, the floor


def _run(store: Any) -> int:
    hits = 0
    get = store.get
    for is_set, key in OPS:
        if is_set:
            store[key] = 1
        elif get(key) is not None:
            hits += 1
    return hits


EXPECTED_HITS = _run(OrderedDictLru(CAPACITY))


@pytest.mark.parametrize(
    "lib", ["llm_agent_runtime", "cachetools", "lru-dict", "OrderedDict LRU", "dict (floor)"]
)
def test_lru_mixed_workload(benchmark: Any, lib: str) -> None:
    benchmark.group = "working memory: 1,000,000 ops (80% get / 20% set), capacity 1,024"

    def run() -> int:
        return _run(_make(lib))

    hits = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["lib"] = lib
    # Every exact LRU sees the same hits; the dict floor never evicts.
    benchmark.extra_info["correct"] = lib == "dict (floor)" or hits == EXPECTED_HITS
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_op"] = round(benchmark.stats.stats.median / N_OPS * 1e9, 1)


N_EPISODES = 100_000
RECENCY, FREQUENCY = 0.3, 0.2
NOW = 10_000_000.0


def _episode_data(seed: int = 11) -> list[tuple[str, float, float]]:
    rng = random.Random(seed)
    return [
        (f"episode {i}", rng.random(), NOW - rng.uniform(0, 30 * 86_400)) for i in range(N_EPISODES)
    ]


EPISODES = _episode_data()


class PythonEpisodic:
    """A straightforward Python episodic store: a list and heapq.nlargest."""

    def __init__(self) -> None:
        self.items: list[list[Any]] = []  # [content, importance, created_at, recall_count]

    def add(self, content: str, importance: float, created_at: float) -> None:
        self.items.append([content, importance, created_at, 0])

    def recall(self, limit: int, now: float) -> list[str]:
        import heapq

        def score(i: int) -> tuple[float, int]:
            _, importance, created_at, count = self.items[i]
            age_h = max(0.0, (now - created_at) / 3600.0)
            value = importance + RECENCY / (1.0 + age_h) + FREQUENCY * count / (1.0 + count)
            return value, i

        best = heapq.nlargest(limit, range(len(self.items)), key=score)
        for i in best:
            self.items[i][3] += 1
        return [self.items[i][0] for i in best]


def _ours() -> Any:
    clock_value = [0.0]
    store = ar.EpisodicStore(
        recall_policy=ar.RecallPolicy.hybrid(RECENCY, FREQUENCY), clock=lambda: clock_value[0]
    )
    for content, importance, created_at in EPISODES:
        clock_value[0] = created_at
        store.add_episode("agent", content, importance)
    clock_value[0] = NOW
    return store


def _theirs() -> PythonEpisodic:
    store = PythonEpisodic()
    for content, importance, created_at in EPISODES:
        store.add(content, importance, created_at)
    return store


@pytest.mark.parametrize("lib", ["llm_agent_runtime", "python list + heapq"])
def test_episodic_recall_top10_of_100k(benchmark: Any, lib: str) -> None:
    benchmark.group = "episodic: recall top 10 of 100,000 episodes (hybrid policy)"
    expected = _theirs().recall(10, NOW)
    if lib == "llm_agent_runtime":
        store = _ours()
        correct = [e.content for e in store.recall("agent", 10)] == expected

        def run() -> Any:
            return store.recall("agent", 10)
    else:
        reference = _theirs()
        correct = True

        def run() -> Any:
            return reference.recall(10, NOW)

    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = correct
