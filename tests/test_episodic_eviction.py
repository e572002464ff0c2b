"""Eviction at `per_agent_capacity` against a plain reference model of the rule.

The rule: when an agent goes over capacity, the lowest-importance episode among the older
ones goes (never the one being added); among equals, the oldest. The store evicts through an
index and removes evicted episodes later, in one pass: every view (listing, counts, export,
recall, `mark_recalled`) must show exactly what the model shows, whenever it is asked.
"""

import json
import random
from dataclasses import dataclass
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import llm_agent_runtime as ar

AGENTS = ("a", "b", "c")
LEVELS = (0.0, 0.25, 0.5, 1.0)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class RefEpisode:
    id: int
    agent_id: str
    content: str
    importance: float
    created_at: float
    dim: int | None
    last_recalled_at: float | None = None
    recall_count: int = 0

    def row(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.agent_id,
            self.content,
            self.importance,
            self.created_at,
            self.last_recalled_at,
            self.recall_count,
            self.dim,
        )


def row_of(e: Any) -> tuple[Any, ...]:
    """An `Episode` (or its exported dict) as a `RefEpisode.row()`."""
    if isinstance(e, dict):
        embedding = e.get("embedding")
        return (
            e["id"],
            e["agent_id"],
            e["content"],
            e["importance"],
            e["created_at"],
            e["last_recalled_at"],
            e["recall_count"],
            None if embedding is None else len(embedding),
        )
    return (
        e.id,
        e.agent_id,
        e.content,
        e.importance,
        e.created_at,
        e.last_recalled_at,
        e.recall_count,
        None if e.embedding is None else len(e.embedding),
    )


class Model:
    """The store as lists, with the eviction rule written as a scan."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.agents: dict[str, list[RefEpisode]] = {}
        self.next_id = 0
        self.dim: int | None = None
        self.evicted: list[int] = []

    def add(self, agent: str, content: str, importance: float, now: float, dim: int | None) -> bool:
        """Whether the store must accept it (an embedding of another length is refused)."""
        if dim is not None and self.dim is not None and dim != self.dim:
            return False
        if dim is not None:
            self.dim = dim
        episodes = self.agents.setdefault(agent, [])
        episodes.append(RefEpisode(self.next_id, agent, content, importance, now, dim))
        self.next_id += 1
        if len(episodes) > self.capacity:
            older = range(len(episodes) - 1)
            self.evicted.append(
                episodes.pop(min(older, key=lambda i: (episodes[i].importance, i))).id
            )
            self.forget_unused_dim()
        return True

    def forget_unused_dim(self) -> None:
        if not any(e.dim is not None for v in self.agents.values() for e in v):
            self.dim = None

    def recall(self, agent: str, limit: int, now: float, counted: bool) -> list[RefEpisode]:
        episodes = self.agents.get(agent, [])
        # A stable sort by descending importance: ties keep insertion order.
        order = sorted(episodes, key=lambda e: -e.importance)[:limit]
        if counted:
            for e in order:
                e.recall_count += 1
                e.last_recalled_at = now
        return order

    def mark_recalled(self, agent: str, ids: list[int], now: float) -> int:
        found = [e for e in self.agents.get(agent, []) if e.id in set(ids)]
        for e in found:
            e.recall_count += 1
            e.last_recalled_at = now
        return len(found)

    def clear(self, agent: str | None) -> int:
        if agent is None:
            n = sum(map(len, self.agents.values()))
            self.agents.clear()
        else:
            n = len(self.agents.pop(agent, []))
        if n:
            self.forget_unused_dim()
        return n

    def rows(self, agent: str) -> list[tuple[Any, ...]]:
        return [e.row() for e in self.agents.get(agent, [])]


def embedding_of(dim: int | None) -> list[float] | None:
    return None if dim is None else [1.0] + [0.5] * (dim - 1)


def check_without_compacting(store: ar.EpisodicStore, model: Model) -> None:
    """The views that read evicted-but-not-removed episodes as they are (no compaction)."""
    doc = json.loads(store.to_json())
    assert {a: [row_of(e) for e in v] for a, v in doc["by_agent"].items()} == {
        a: model.rows(a) for a in model.agents
    }
    assert doc["embedding_dim"] == model.dim
    assert doc["next_id"] == model.next_id
    total = sum(map(len, model.agents.values()))
    assert len(store) == total
    assert store.agents_with_episodes() == sorted(model.agents)
    assert repr(store) == f"EpisodicStore(episodes={total}, agents={len(model.agents)})"
    for agent in AGENTS:
        assert store.episode_count_for(agent) == len(model.agents.get(agent, []))


def check_listings(store: ar.EpisodicStore, model: Model, agent: str) -> None:
    """The views that compact the agent first."""
    rows = model.rows(agent)
    assert [row_of(e) for e in store.episodes(agent)] == rows
    assert store.content_lengths(agent) == [len(r[2]) for r in rows]
    by_importance = sorted(model.agents.get(agent, []), key=lambda e: -e.importance)
    assert store.episodes_by_importance(agent) == [e.content for e in by_importance]


class EvictionModel(RuleBasedStateMachine):
    """EpisodicStore at small capacities against `Model`, over every operation."""

    @initialize(capacity=st.integers(1, 6))
    def start(self, capacity: int) -> None:
        self.clock = Clock()
        self.store = ar.EpisodicStore(per_agent_capacity=capacity, clock=self.clock)
        self.model = Model(capacity)

    def tick(self) -> float:
        self.clock.t += 1.0
        return self.clock.t

    @rule(
        agent=st.sampled_from(AGENTS),
        importance=st.one_of(
            st.sampled_from(LEVELS), st.floats(0.0, 1.0, allow_subnormal=False, width=32)
        ),
        dim=st.sampled_from([None, None, None, 2, 3]),
    )
    def add(self, agent: str, importance: float, dim: int | None) -> None:
        now = self.tick()
        content = f"e{self.model.next_id}"
        if self.model.add(agent, content, importance, now, dim):
            got = self.store.add_episode(agent, content, importance, embedding_of(dim))
            assert got == self.model.next_id - 1
        else:
            try:
                self.store.add_episode(agent, content, importance, embedding_of(dim))
            except ar.MemoryStoreError:
                pass
            else:
                raise AssertionError("an embedding of another length was accepted")

    @rule(agent=st.sampled_from(AGENTS), limit=st.integers(0, 7), counted=st.booleans())
    def recall(self, agent: str, limit: int, counted: bool) -> None:
        now = self.tick()
        want = [e.row() for e in self.model.recall(agent, limit, now, counted)]
        assert [row_of(e) for e in self.store.recall(agent, limit, counted=counted)] == want

    @rule(agent=st.sampled_from(AGENTS), data=st.data())
    def mark_recalled(self, agent: str, data: st.DataObject) -> None:
        # Live, evicted (maybe not yet removed), other agents' and unknown ids, repeats.
        likely = [*self.model.evicted[-3:], *(e.id for e in self.model.agents.get(agent, []))]
        any_id = st.integers(0, self.model.next_id + 1)
        ids = data.draw(
            st.lists(st.sampled_from(likely) | any_id if likely else any_id, max_size=6)
        )
        now = self.tick()
        assert self.store.mark_recalled(agent, ids) == self.model.mark_recalled(agent, ids, now)

    @rule(agent=st.sampled_from(AGENTS))
    def clear(self, agent: str) -> None:
        assert self.store.clear(agent) == self.model.clear(agent)

    @precondition(lambda self: self.model.next_id % 7 == 0)
    @rule()
    def clear_all(self) -> None:
        assert self.store.clear() == self.model.clear(None)

    @rule()
    def round_trip(self) -> None:
        self.store = ar.EpisodicStore.from_json(self.store.to_json(), clock=self.clock)

    @rule(agent=st.sampled_from(AGENTS))
    def listing(self, agent: str) -> None:
        check_listings(self.store, self.model, agent)

    @invariant()
    def same_store(self) -> None:
        check_without_compacting(self.store, self.model)


TestEvictionModel = EvictionModel.TestCase
TestEvictionModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_long_random_runs_match_the_model() -> None:
    # Larger capacities and many evictions between two reads: compaction at scale.
    for seed, capacity in [(1, 7), (2, 50), (3, 200)]:
        rng = random.Random(seed)
        clock = Clock()
        store = ar.EpisodicStore(per_agent_capacity=capacity, clock=clock)
        model = Model(capacity)
        for step in range(6 * capacity + 300):
            clock.t += 1.0
            agent = rng.choice("ab")
            roll = rng.random()
            if roll < 0.85:
                imp = rng.choice(LEVELS) if rng.random() < 0.6 else rng.random()
                dim = 2 if rng.random() < 0.05 else None
                assert model.add(agent, f"s{step}", imp, clock.t, dim)
                store.add_episode(agent, f"s{step}", imp, embedding_of(dim))
            elif roll < 0.93:
                ids = [rng.randrange(model.next_id + 1) for _ in range(5)]
                assert store.mark_recalled(agent, ids) == model.mark_recalled(agent, ids, clock.t)
            elif roll < 0.97:
                want = [e.row() for e in model.recall(agent, 5, clock.t, True)]
                assert [row_of(e) for e in store.recall(agent, 5)] == want
            else:
                check_listings(store, model, agent)
            if step % 37 == 0:
                check_without_compacting(store, model)
        check_without_compacting(store, model)
        for agent in "ab":
            check_listings(store, model, agent)


def test_a_store_imported_at_capacity_evicts_on_the_next_add() -> None:
    store = ar.EpisodicStore(per_agent_capacity=3)
    for content, importance in [("x", 0.5), ("y", 0.2), ("z", 0.2)]:
        store.add_episode("a", content, importance)
    imported = ar.EpisodicStore.from_json(store.to_json())
    imported.add_episode("a", "new", 0.1)  # the oldest of the two 0.2s goes, not the new one
    assert [e.content for e in imported.episodes("a")] == ["x", "z", "new"]
    imported.add_episode("a", "newer", 0.9)
    assert [e.content for e in imported.episodes("a")] == ["x", "z", "newer"]
    assert len(imported) == 3


def test_an_imported_negative_zero_ties_with_zero() -> None:
    # -0.0 is read as 0.0: the two are equal, so the older one goes first.
    doc = {
        "decay": None,
        "recall": "Importance",
        "per_agent_capacity": 2,
        "next_id": 2,
        "by_agent": {
            "a": [
                {
                    "id": i,
                    "agent_id": "a",
                    "content": c,
                    "importance": imp,
                    "created_at": 0.0,
                    "last_recalled_at": None,
                    "recall_count": 0,
                }
                for i, (c, imp) in enumerate([("zero", 0.0), ("minus-zero", -0.0)])
            ]
        },
    }
    store = ar.EpisodicStore.from_json(json.dumps(doc))
    store.add_episode("a", "new", 1.0)
    assert [e.content for e in store.episodes("a")] == ["minus-zero", "new"]
    assert store.episodes("a")[0].importance == 0.0


def test_an_evicted_episode_is_gone_from_every_view_at_once() -> None:
    clock = Clock()
    store = ar.EpisodicStore(per_agent_capacity=2, clock=clock)
    old = store.add_episode("a", "old", 0.1, [1.0, 0.0])
    store.add_episode("a", "keep", 0.9)
    store.add_episode("a", "new", 0.5)  # evicts "old", the only embedded episode
    assert store.mark_recalled("a", [old]) == 0
    assert len(store) == 2 and store.episode_count_for("a") == 2
    doc = json.loads(store.to_json())
    assert [e["content"] for e in doc["by_agent"]["a"]] == ["keep", "new"]
    assert doc["embedding_dim"] is None
    store.add_episode("a", "other length", 0.5, [1.0, 0.0, 0.0])  # the old length is forgotten
    assert [e.content for e in store.recall("a", 5)] == ["keep", "other length"]
