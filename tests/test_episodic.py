import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import llm_agent_runtime as ar


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def test_importance_ranking_recall_counts_and_helpers() -> None:
    clock = Clock()
    store = ar.EpisodicStore(clock=clock)
    store.add_episode("a", "met alice", 0.3)
    store.add_episode("a", "deadline friday", 0.9)
    store.add_episode("a", "alice likes tea", 0.6)
    store.add_episode("b", "other agent", 0.5)
    top = store.recall("a", 2)
    assert [e.content for e in top] == ["deadline friday", "alice likes tea"]
    assert [e.recall_count for e in top] == [1, 1]
    assert top[0].last_recalled_at == clock.t and top[0].agent_id == "a"
    assert store.recall("nobody", 5) == [] and store.recall("a", 0) == []
    assert store.episode_count_for("a") == 3 and len(store) == 4
    assert store.agents_with_episodes() == ["a", "b"]
    assert store.content_lengths("a") == [9, 15, 15]
    assert store.total_content_bytes("a") == 39
    assert store.avg_content_length("a") == 13.0
    assert (store.max_content_length("a"), store.min_content_length("a")) == (15, 9)
    assert store.high_importance_count("a", 0.5) == 2
    assert store.episodes_by_importance("a") == ["deadline friday", "alice likes tea", "met alice"]
    assert store.content_contains_count("a", "alice") == 2
    assert store.avg_content_length("nobody") == 0.0 and store.max_content_length("nobody") == 0
    assert store.clear("b") == 1 and store.agents_with_episodes() == ["a"]
    assert store.clear() == 3 and len(store) == 0


def test_validation() -> None:
    store = ar.EpisodicStore()
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(ar.MemoryStoreError, match="importance"):
            store.add_episode("a", "x", bad)
    with pytest.raises(ar.MemoryStoreError):
        ar.EpisodicStore(per_agent_capacity=0)
    with pytest.raises(ar.MemoryStoreError):
        ar.DecayPolicy.exponential(0)
    with pytest.raises(ar.MemoryStoreError):
        ar.RecallPolicy.hybrid(-1, 0)
    with pytest.raises(ar.MemoryStoreError, match="not an exported"):
        ar.EpisodicStore.from_json("{}")


def test_negative_limits_and_capacities_are_memory_store_errors() -> None:
    store = ar.EpisodicStore()
    store.add_episode("a", "x", 0.5)
    # These used to raise Python's OverflowError.
    with pytest.raises(ar.MemoryStoreError, match="limit must be >= 0, got -1"):
        store.recall("a", -1)
    # 0 is refused too, so the message says "at least 1", not ">= 0".
    with pytest.raises(ar.MemoryStoreError, match="per_agent_capacity must be at least 1, got -3"):
        ar.EpisodicStore(per_agent_capacity=-3)
    with pytest.raises(ar.MemoryStoreError, match="per_agent_capacity must be at least 1, got 0"):
        ar.EpisodicStore(per_agent_capacity=0)
    with pytest.raises(
        ar.MemoryStoreError, match="limit must be >= 0, got -2361183241434822606848"
    ):
        store.recall("a", -(2**71))
    assert [e.recall_count for e in store.episodes("a")] == [0]  # the failed recall counted none
    assert [e.content for e in store.recall("a", 2**62)] == ["x"]


@pytest.mark.parametrize("flag", [True, False, np.True_, np.False_])
def test_a_bool_is_no_recall_limit(flag: bool) -> None:
    # True recalled one episode (and counted it), False none: a bool is no count.
    store = ar.EpisodicStore()
    store.add_episode("a", "x", 0.5)
    with pytest.raises(ar.MemoryStoreError, match="limit must be an int, got bool"):
        store.recall("a", flag)
    assert [e.recall_count for e in store.episodes("a")] == [0]


@pytest.mark.parametrize("huge", [2**63, 2**64, 10**30])
def test_a_limit_beyond_64_bits_means_all(huge: int) -> None:
    # These used to raise Python's OverflowError ("int too large to convert").
    store = ar.EpisodicStore(clock=lambda: 0.0)
    store.add_episode("a", "x", 0.5)
    store.add_episode("a", "y", 0.7)
    assert [e.content for e in store.recall("a", huge)] == ["y", "x"]
    assert [e.content for e in store.recall("a", limit=huge)] == ["y", "x"]


def test_capacity_never_evicts_the_episode_just_added() -> None:
    # The new episode used to be the victim when it mattered least: add_episode returned the
    # id 2, but only 0 and 1 were stored. An older episode makes room instead.
    store = ar.EpisodicStore(per_agent_capacity=2, clock=lambda: 0.0)
    store.add_episode("a", "x", 0.5)
    store.add_episode("a", "y", 0.6)
    new_id = store.add_episode("a", "new", 0.1)
    assert new_id == 2
    assert [(e.id, e.content) for e in store.episodes("a")] == [(1, "y"), (2, "new")]
    one = ar.EpisodicStore(per_agent_capacity=1)
    one.add_episode("a", "important", 1.0)
    minor = one.add_episode("a", "minor", 0.0)
    assert [(e.id, e.content) for e in one.episodes("a")] == [(minor, "minor")]


def test_equal_scores_recall_in_insertion_order() -> None:
    # Ties used to come back newest first; a stable sort by descending score keeps insertion
    # order, oldest first, for recall and episodes_by_importance alike.
    store = ar.EpisodicStore(clock=lambda: 0.0)
    for content in ("first", "second", "third"):
        store.add_episode("a", content, 0.5)
    store.add_episode("a", "top", 0.9)
    assert [e.content for e in store.recall("a", 4)] == ["top", "first", "second", "third"]
    assert [e.content for e in store.recall("a", 2)] == ["top", "first"]
    assert store.episodes_by_importance("a") == ["top", "first", "second", "third"]


def test_an_importance_of_minus_zero_is_zero() -> None:
    # -0.0 (say, round(-0.001, 2)) is in [0, 1]; it ranks and is evicted as 0.0, so equal
    # importances keep insertion order, and a JSON export keeps it as 0.0 too.
    store = ar.EpisodicStore(clock=lambda: 0.0)
    store.add_episode("a", "old", -0.0)
    store.add_episode("a", "new", 0.0)
    assert [e.content for e in store.recall("a", 2)] == ["old", "new"]
    assert store.episodes_by_importance("a") == ["old", "new"]
    assert str(store.episodes("a")[0].importance) == "0.0"
    capped = ar.EpisodicStore(clock=lambda: 0.0, per_agent_capacity=2)
    capped.add_episode("a", "oldest", 0.0)
    capped.add_episode("a", "second", -0.0)
    capped.add_episode("a", "third", 0.5)
    assert [e.content for e in capped.episodes("a")] == ["second", "third"]
    exported = json.loads(store.to_json())
    for episodes in exported["by_agent"].values():
        for episode in episodes:
            episode["importance"] = -0.0
    back = ar.EpisodicStore.from_json(json.dumps(exported), clock=lambda: 0.0)
    assert str(back.episodes("a")[0].importance) == "0.0"
    assert back.episodes_by_importance("a") == ["old", "new"]


def test_per_agent_capacity_evicts_lowest_importance() -> None:
    store = ar.EpisodicStore(per_agent_capacity=2)
    store.add_episode("a", "keep", 0.5)
    store.add_episode("a", "drop", 0.1)
    store.add_episode("a", "new", 0.7)
    store.add_episode("b", "untouched", 0.0)
    assert [e.content for e in store.episodes("a")] == ["keep", "new"]
    assert store.episode_count_for("b") == 1


def test_decay_matches_the_formula_with_a_fake_clock() -> None:
    clock = Clock()
    store = ar.EpisodicStore(decay=ar.DecayPolicy.exponential(2.0), clock=clock)
    store.add_episode("a", "old but important", 0.9)
    clock.t += 4 * 3600  # two half-lives: 0.9 -> 0.225
    store.add_episode("a", "fresh", 0.3)
    assert [e.content for e in store.recall("a", 2)] == ["fresh", "old but important"]
    clock.t += 0
    # 0.225 vs 0.3: fresh wins; one hour later 0.9*0.5**2.5=0.159 vs 0.3*0.5**0.5=0.212.
    clock.t += 3600
    assert store.recall("a", 1)[0].content == "fresh"


def test_hybrid_scores_match_the_formula() -> None:
    clock = Clock()
    policy = ar.RecallPolicy.hybrid(recency_weight=1.0, frequency_weight=0.5)
    store = ar.EpisodicStore(recall_policy=policy, clock=clock)
    store.add_episode("a", "old", 0.5)
    clock.t += 3600
    store.add_episode("a", "new", 0.2)
    # old: 0.5 + 1/(1+1) + 0 = 1.0 ; new: 0.2 + 1/(1+0) + 0 = 1.2
    assert [e.content for e in store.recall("a", 2)] == ["new", "old"]
    # Both now recalled once: old 0.5+0.5+0.25=1.25, new 0.2+1+0.25=1.45.
    assert store.recall("a", 1)[0].content == "new"
    # new recalled twice: 0.2+1+0.5*2/3=1.533...; old once: 1.25. Still new first.
    assert [e.recall_count for e in store.episodes("a")] == [1, 2]


def test_json_round_trip_keeps_settings_and_counts() -> None:
    clock = Clock()
    store = ar.EpisodicStore(
        decay=ar.DecayPolicy.exponential(1.0),
        recall_policy=ar.RecallPolicy.hybrid(0.2, 0.1),
        per_agent_capacity=5,
        clock=clock,
    )
    store.add_episode("a", "x", 0.4)
    store.add_episode("a", "y", 0.8)
    store.recall("a", 1)
    text = store.to_json()
    assert json.loads(text)["per_agent_capacity"] == 5
    back = ar.EpisodicStore.from_json(text, clock=clock)
    assert back.episodes("a") == store.episodes("a")
    assert back.recall("a", 2) == store.recall("a", 2)
    assert back.add_episode("a", "z", 0.1) == store.add_episode("a", "z", 0.1)


def _exported() -> str:
    """An export with every setting and an embedding, to be broken one field at a time."""
    store = ar.EpisodicStore(
        decay=ar.DecayPolicy.exponential(1.0),
        recall_policy=ar.RecallPolicy.hybrid(0.5, 0.5),
        per_agent_capacity=2,
        clock=lambda: 1000.0,
        similarity_weight=0.3,
    )
    store.add_episode("a", "first", 0.5, embedding=[1.0, 2.0, 3.0])
    store.add_episode("a", "second", 0.7)
    store.recall("a", 1)
    return store.to_json()


def _set_store(**fields: object) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.update(fields)


def _set_episode(n: int, **fields: object) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["by_agent"]["a"][n].update(fields)


@pytest.mark.parametrize(
    ("breaks", "message"),
    [
        (_set_store(per_agent_capacity=0), "per_agent_capacity must be at least 1"),
        (_set_store(per_agent_capacity=1), "over per_agent_capacity 1"),
        (_set_store(decay={"Exponential": {"half_life_hours": 0.0}}), "half_life_hours"),
        (_set_store(decay={"Exponential": {"half_life_hours": -2.0}}), "half_life_hours"),
        (
            _set_store(recall={"Hybrid": {"recency_weight": -1.0, "frequency_weight": 0.0}}),
            "recency_weight must be >= 0",
        ),
        (_set_store(similarity_weight=-5.0), "similarity_weight must be >= 0"),
        (_set_episode(0, importance=7.5), "importance must be in"),
        (_set_episode(1, importance=-0.5), "importance must be in"),
        (_set_episode(1, embedding=[1.0, 0.0]), "dimension 2, the store's embeddings have 3"),
        (
            lambda doc: (doc.update(embedding_dim=None), _set_episode(1, embedding=[1.0])(doc)),
            "dimension",
        ),
        (_set_episode(1, agent_id="b"), "another agent"),
        (_set_episode(1, id=0), "ids must increase"),
        (_set_store(next_id=1), "below next_id"),
        (_set_episode(0, embedding=[0.0, 0.0, 0.0]), "zero vector"),
        (
            lambda doc: doc["by_agent"].update(
                b=[dict(doc["by_agent"]["a"][0], agent_id="b", embedding=None)]
            ),
            "ids are store-wide",
        ),
    ],
)
def test_from_json_enforces_what_the_constructor_and_add_episode_do(
    breaks: Callable[[dict[str, Any]], None], message: str
) -> None:
    # These used to load: a capacity-0 store that silently dropped every episode, NaN
    # scores from a zero half-life, importance 7.5, cosines of vectors of different lengths.
    # (Infinite numbers cannot reach the checks: JSON has none, and 1e400 does not parse.)
    doc = json.loads(_exported())
    breaks(doc)
    with pytest.raises(ar.MemoryStoreError, match=message):
        ar.EpisodicStore.from_json(json.dumps(doc))


def test_an_embedding_past_float32s_range_is_named_so() -> None:
    # 1e39 is finite, but float32's largest is about 3.4e38: read as inf, it was refused as
    # holding "NaN or infinite values", which the caller never gave.
    message = re.escape(
        "embedding contains NaN or infinite values (or values beyond float32's range, "
        "about ±3.4e38)"
    )
    store = ar.EpisodicStore(clock=lambda: 0.0)
    with pytest.raises(ar.MemoryStoreError, match=message):
        store.add_episode("a", "x", 0.5, embedding=[1e39, 1.0])
    store.add_episode("a", "x", 0.5, embedding=[1.0, 1.0])
    doc = json.loads(store.to_json())
    doc["by_agent"]["a"][0]["embedding"] = [1e39, 1.0]  # an export's is read as float32
    with pytest.raises(ar.MemoryStoreError, match="number out of range at line 1 column"):
        ar.EpisodicStore.from_json(json.dumps(doc))


def test_from_json_refuses_an_embedding_dimension_of_zero() -> None:
    # It used to load a store that refused every embedding ("the store's embeddings have 0").
    doc = json.loads(ar.EpisodicStore().to_json())
    doc["embedding_dim"] = 0
    with pytest.raises(ar.MemoryStoreError, match="embedding_dim must be at least 1"):
        ar.EpisodicStore.from_json(json.dumps(doc))
    doc["embedding_dim"] = None  # absent: fixed by the first embedding
    store = ar.EpisodicStore.from_json(json.dumps(doc), clock=lambda: 0.0)
    store.add_episode("a", "x", 0.5, embedding=[1.0, 2.0])
    assert json.loads(store.to_json())["embedding_dim"] == 2


def test_a_store_with_no_embedding_left_takes_embeddings_of_any_length() -> None:
    # Cleared (or its last embedded episode evicted), the store kept the old length: it
    # refused the vectors of a new embedding model, as no new store does.
    store = ar.EpisodicStore(clock=lambda: 0.0, per_agent_capacity=1)
    store.add_episode("a", "old", 0.1, embedding=[1.0, 0.0, 0.0])
    store.clear()
    store.add_episode("a", "new", 0.5, embedding=[1.0, 0.0, 0.0, 0.0])
    assert [e.content for e in store.recall("a", 1, query=[0.0, 0.0, 0.0, 1.0])] == ["new"]
    store.add_episode("a", "plain", 0.9)  # evicts the one embedded episode (capacity 1)
    store.add_episode("b", "two", 0.5, embedding=[1.0, 0.0])
    exported = json.loads(store.to_json())
    assert exported["embedding_dim"] == 2
    store.clear("b")
    assert json.loads(store.to_json())["embedding_dim"] is None
    # An export that names a length no episode has loads without it.
    exported["by_agent"].pop("b")
    loaded = ar.EpisodicStore.from_json(json.dumps(exported), clock=lambda: 0.0)
    loaded.add_episode("c", "any", 0.5, embedding=[1.0] * 5)


def test_from_json_drops_agents_listed_without_episodes() -> None:
    # A hand-made "ghost": [] used to be kept, counted by repr but not agents_with_episodes,
    # and written back by to_json.
    doc = json.loads(_exported())
    doc["by_agent"]["ghost"] = []
    store = ar.EpisodicStore.from_json(json.dumps(doc), clock=lambda: 1000.0)
    assert store.agents_with_episodes() == ["a"]
    assert repr(store) == "EpisodicStore(episodes=2, agents=1)"
    assert "ghost" not in json.loads(store.to_json())["by_agent"]
    # The store never makes one itself: eviction keeps the newest episode, and clear
    # forgets the agent, so to_json writes no empty list either.
    store = ar.EpisodicStore(per_agent_capacity=1, clock=lambda: 0.0)
    store.add_episode("a", "x", 0.9)
    store.add_episode("a", "y", 0.1)
    store.add_episode("b", "z", 0.5)
    store.clear("b")
    assert json.loads(store.to_json())["by_agent"].keys() == {"a"}
    assert repr(store) == "EpisodicStore(episodes=1, agents=1)"
    assert store.agents_with_episodes() == ["a"]


def test_from_json_stores_embeddings_at_unit_length_as_add_episode_does() -> None:
    # A longer vector used to be kept as it was, giving cosines outside [-1, 1].
    doc = json.loads(_exported())
    exported = np.array(doc["by_agent"]["a"][0]["embedding"], dtype=np.float32)
    doc["by_agent"]["a"][0]["embedding"] = [0.0, 50.0, 0.0]
    store = ar.EpisodicStore.from_json(json.dumps(doc), clock=lambda: 1000.0)
    np.testing.assert_array_equal(store.episodes("a")[0].embedding, [0.0, 1.0, 0.0])
    # A vector add_episode stored reads back bit for bit.
    back = ar.EpisodicStore.from_json(_exported())
    np.testing.assert_array_equal(back.episodes("a")[0].embedding, exported)


def test_episode_ids_never_wrap_and_recall_counts_saturate() -> None:
    # Both used to wrap to 0 in release builds, repeating ids.
    doc = json.loads(ar.EpisodicStore().to_json())
    doc["next_id"] = 2**64 - 2
    store = ar.EpisodicStore.from_json(json.dumps(doc), clock=lambda: 0.0)
    assert store.add_episode("a", "last", 0.5) == 2**64 - 2
    with pytest.raises(ar.MemoryStoreError, match="ids are exhausted"):
        store.add_episode("a", "one too many", 0.5)
    assert [e.content for e in store.episodes("a")] == ["last"]
    assert json.loads(store.to_json())["next_id"] == 2**64 - 1

    doc = json.loads(store.to_json())
    doc["by_agent"]["a"][0]["recall_count"] = 2**64 - 1
    store = ar.EpisodicStore.from_json(json.dumps(doc), clock=lambda: 0.0)
    assert store.recall("a", 1)[0].recall_count == 2**64 - 1


def test_from_json_takes_the_embedding_length_of_an_export_without_one() -> None:
    doc = json.loads(_exported())
    del doc["embedding_dim"]  # exports from before embedding_dim existed
    store = ar.EpisodicStore.from_json(json.dumps(doc), clock=lambda: 1000.0)
    with pytest.raises(ar.MemoryStoreError, match="dimension 2"):
        store.add_episode("a", "third", 0.9, embedding=[1.0, 0.0])
    assert len(store.recall("a", 2, query=[1.0, 2.0, 3.0])) == 2


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_clock_returning_a_non_finite_time_is_refused(bad: float) -> None:
    # A NaN clock used to be stored as "created_at": null, an export no store can read.
    clock = Clock()
    store = ar.EpisodicStore(clock=clock)
    store.add_episode("a", "kept", 0.5)
    clock.t = bad
    with pytest.raises(ar.MemoryStoreError, match="clock returned"):
        store.add_episode("a", "x", 0.5)
    with pytest.raises(ar.MemoryStoreError, match="clock returned"):
        store.recall("a", 1)
    assert [(e.content, e.recall_count) for e in store.episodes("a")] == [("kept", 0)]
    assert ar.EpisodicStore.from_json(store.to_json()).episodes("a") == store.episodes("a")


@dataclass
class RefEpisode:
    id: int
    content: str
    importance: float
    recall_count: int = 0


class EpisodicModel(RuleBasedStateMachine):
    """EpisodicStore (importance policy, capacity 4) against a list-based reference."""

    def __init__(self) -> None:
        super().__init__()
        self.store = ar.EpisodicStore(per_agent_capacity=4, clock=lambda: 0.0)
        self.ref: dict[str, list[RefEpisode]] = {}
        self.next_id = 0

    @rule(agent=st.sampled_from(["a", "b"]), importance=st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    def add(self, agent: str, importance: float) -> None:
        content = f"e{self.next_id}"
        assert self.store.add_episode(agent, content, importance) == self.next_id
        episodes = self.ref.setdefault(agent, [])
        episodes.append(RefEpisode(self.next_id, content, importance))
        self.next_id += 1
        if len(episodes) > 4:  # the lowest-importance older one goes, never the new one
            victim = min(range(len(episodes) - 1), key=lambda i: (episodes[i].importance, i))
            del episodes[victim]

    @rule(agent=st.sampled_from(["a", "b", "c"]), limit=st.integers(0, 6))
    def recall(self, agent: str, limit: int) -> None:
        episodes = self.ref.get(agent, [])
        # A stable sort by descending importance: ties keep insertion order.
        order = sorted(range(len(episodes)), key=lambda i: -episodes[i].importance)[:limit]
        for i in order:
            episodes[i].recall_count += 1
        got = self.store.recall(agent, limit)
        assert [e.content for e in got] == [episodes[i].content for i in order]
        assert [e.recall_count for e in got] == [episodes[i].recall_count for i in order]

    @rule(agent=st.sampled_from(["a", "b"]))
    def clear(self, agent: str) -> None:
        assert self.store.clear(agent) == len(self.ref.pop(agent, []))

    @invariant()
    def same_contents(self) -> None:
        for agent in ("a", "b"):
            assert [(e.content, e.recall_count) for e in self.store.episodes(agent)] == [
                (e.content, e.recall_count) for e in self.ref.get(agent, [])
            ]


TestEpisodicModel = EpisodicModel.TestCase
TestEpisodicModel.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize("flag", [True, False, np.True_])
def test_a_bool_is_no_real_number(flag: Any) -> None:
    # Each was taken as 1.0 or 0.0: a flag passed by mistake became an importance or a time.
    store = ar.EpisodicStore()
    with pytest.raises(ar.MemoryStoreError, match=r"importance must be in .*got a bool"):
        store.add_episode("a", "x", flag)
    with pytest.raises(ar.MemoryStoreError, match="got a bool"):
        ar.EpisodicStore(similarity_weight=flag)
    with pytest.raises(ar.MemoryStoreError, match="got a bool"):
        ar.RecallPolicy.hybrid(flag, 0.5)
    with pytest.raises(ar.MemoryStoreError, match="got a bool"):
        ar.DecayPolicy.exponential(flag)
    with pytest.raises(ar.MemoryStoreError, match="clock"):
        ar.EpisodicStore(clock=lambda: flag).add_episode("a", "x", 0.5)
    assert store.episodes("a") == []


def test_a_refused_importance_asks_no_embedder() -> None:
    calls: list[list[str]] = []

    class CountingEmbedder:
        dim = 4

        def embed(self, texts: list[str]) -> np.ndarray:
            calls.append(list(texts))
            return np.ones((len(texts), 4), dtype=np.float32)

    store = ar.EpisodicStore(embedder=CountingEmbedder())
    for bad in (1.5, -1.0, math.nan):
        with pytest.raises(ar.MemoryStoreError, match="importance must be in"):
            store.add_episode("a", "x", bad)
    assert calls == []
    store.add_episode("a", "x", 0.5)
    assert calls == [["x"]]


@pytest.mark.parametrize(
    "value",
    [
        ar.DecayPolicy.exponential(12.5),
        ar.RecallPolicy.importance(),
        ar.RecallPolicy.hybrid(0.25, 1.5),
        ar.HashingEmbedder(64, word_ngrams=3, char_ngrams=(2, 4)),
    ],
    ids=repr,
)
def test_immutable_memory_settings_copy_and_pickle(value: Any) -> None:
    # They refused copy and pickle alike ("cannot pickle"): a settings object holding one
    # could not be deep-copied, nor an embedder sent to a process pool.
    import copy
    import pickle

    assert copy.copy(value) is value and copy.deepcopy(value) is value
    back = pickle.loads(pickle.dumps(value))
    assert repr(back) == repr(value)
    if isinstance(value, ar.HashingEmbedder):
        texts = ["the same text", "embeds the same"]
        assert np.array_equal(back.embed(texts), value.embed(texts))
    else:
        assert back == value and hash(back) == hash(value)


def test_an_episode_copies_as_itself() -> None:
    import copy

    store = ar.EpisodicStore()
    store.add_episode("a", "x", 0.5)
    [episode] = store.episodes("a")
    assert copy.copy(episode) is episode and copy.deepcopy({"e": episode})["e"] is episode
