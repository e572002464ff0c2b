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
    benchmark.extra_info["ns_per_op"] = round(benchmark.stats.stats.median / N_OPS * 1e9, 1)
