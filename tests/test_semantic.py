"""SemanticStore against a plain Python reference model (hypothesis stateful) and numpy."""

from __future__ import annotations

import copy
import pickle
import re
import sys
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import llm_agent_runtime as ar

DIM = 6
KEYS = st.sampled_from([f"k{i}" for i in range(8)])
TAGS = st.frozensets(st.sampled_from(["a", "b", "c", "d"]), max_size=3)
VALUES = st.text(alphabet="xyz é日", max_size=6)
VECTORS = st.lists(st.integers(-3, 3), min_size=DIM, max_size=DIM).filter(any)


class SemanticStoreMachine(RuleBasedStateMachine):
    """Every operation applied to the store and to a dict model must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.store = ar.SemanticStore(dim=DIM)
        self.model: dict[str, tuple[str, frozenset[str], np.ndarray | None]] = {}

    @rule(key=KEYS, value=VALUES, tags=TAGS, vector=st.none() | VECTORS)
    def store_entry(self, key: str, value: str, tags: frozenset[str], vector: Any) -> None:
        embedding = None if vector is None else np.array(vector, dtype=np.float32)
        self.store.store(key, value, tags, embedding, embed=False)
        self.model[key] = (value, tags, embedding)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        assert self.store.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(vector=VECTORS, k=st.integers(1, 10), tags=st.none() | TAGS)
    def search(self, vector: list[int], k: int, tags: frozenset[str] | None) -> None:
        q = np.array(vector, dtype=np.float32)
        hits = self.store.search(q, k, tags=tags)
        scored = []
        for key, (_, entry_tags, emb) in self.model.items():
            if emb is not None and (tags is None or tags <= entry_tags):
                scored.append((float(emb @ q / np.linalg.norm(emb) / np.linalg.norm(q)), key))
        scored.sort(reverse=True)
        assert len(hits) == min(k, len(scored))
        want_scores = [s for s, _ in scored[: len(hits)]]
        np.testing.assert_allclose([h.score for h in hits], want_scores, atol=1e-5)
        exact = dict((key, s) for s, key in scored)
        for hit in hits:
            assert abs(exact[hit.key] - hit.score) < 1e-5
            assert hit.value == self.model[hit.key][0] and hit.tags == self.model[hit.key][1]

    @invariant()
    def helpers_agree(self) -> None:
        model, store = self.model, self.store
        tag_counts = Counter(t for _, tags, _ in model.values() for t in tags)
        sizes = [len(v.encode()) for v, _, _ in model.values()]
        assert len(store) == len(model)
        assert store.all_keys() == sorted(model)
        assert store.list_tags() == sorted(tag_counts)
        assert store.tag_count() == len(tag_counts)
        for tag in "abcd":
            assert store.count_by_tag(tag) == tag_counts[tag]
            assert [e.key for e in store.retrieve_by_tag(tag)] == sorted(
                k for k, (_, tags, _) in model.items() if tag in tags
            )
        expected_common = min(tag_counts, key=lambda t: (-tag_counts[t], t)) if tag_counts else None
        assert store.most_common_tag() == expected_common
        assert store.total_value_bytes() == sum(sizes)
        assert store.max_value_bytes() == max(sizes, default=0)
        assert store.min_value_bytes() == min(sizes, default=0)
        assert store.avg_value_bytes() == pytest.approx(sum(sizes) / len(sizes) if sizes else 0.0)
        assert store.entry_count_with_embedding() == sum(
            e is not None for _, _, e in model.values()
        )
        for key, (value, tags, emb) in model.items():
            entry = store.get_entry(key)
            assert entry is not None and store.get(key) == value and key in store
            assert entry.tags == tags and entry.has_embedding == (emb is not None)


TestSemanticStoreMachine = SemanticStoreMachine.TestCase
TestSemanticStoreMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_text_search_with_the_default_hashing_embedder() -> None:
    store = ar.SemanticStore()
    store.store("router", "How to reset the router password", tags=["it"])
    store.store("vpn", "Connecting to the office VPN from home", tags=["it"])
    store.store("lunch", "The cafeteria serves lunch from noon", tags=["office"])
    store.store("silent", "!!!")  # nothing to embed: stored, not searchable
    hits = store.search("reset my router password", k=2)
    assert hits[0].key == "router" and hits[0].score > hits[1].score
    assert [h.key for h in store.search("lunch at noon", k=1, tags=["office"])] == ["lunch"]
    assert store.search("lunch at noon", k=3, tags=["it"])[0].key in {"router", "vpn"}
    assert store.search("anything", tags=["missing"]) == []
    assert store.entry_count_with_embedding() == 3 and len(store) == 4
    assert store.get("nothing") is None and store.get("nothing", "x") == "x"
    store.store("router", "unrelated words now", embed=False)
    assert store.entry_count_with_embedding() == 2
    assert "router" not in [h.key for h in store.search("router password", k=5)]
    store.clear()
    assert len(store) == 0 and store.search("lunch") == []


def test_dtype_and_custom_embedder_and_errors() -> None:
    class Fixed:
        def embed(self, texts: Any) -> np.ndarray:
            return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)

    store = ar.SemanticStore(Fixed(), dtype="int8")
    store.store("a", "xx")
    store.store("b", "xxxxxxxxxx")
    assert store.search("xxxxxxxxx", k=1)[0].key == "b"
    with pytest.raises(ar.MemoryStoreError, match="shape"):
        store.store("c", "v", embedding=[1.0, 0.0])
    with pytest.raises(ar.MemoryStoreError, match="dimension"):
        store.search([1.0, 2.0])
    with pytest.raises(ar.MemoryStoreError, match="zero vector"):
        store.store("c", "v", embedding=[0.0, 0.0, 0.0])
    with pytest.raises(ar.MemoryStoreError, match="NaN"):
        store.search([np.nan, 1.0, 0.0])
    with pytest.raises(ar.MemoryStoreError, match="k must be"):
        store.search("x", k=0)
    with pytest.raises(ar.MemoryStoreError, match="strings"):
        store.store("c", 5)  # type: ignore[arg-type]
    with pytest.raises(ar.MemoryStoreError, match="strings"):
        store.store("c", "v", tags=[1])  # type: ignore[list-item]
    assert "c" not in store and len(store) == 2
    with pytest.raises(ar.MemoryStoreError, match="unknown dtype"):
        ar.SemanticStore(dtype="float64")
    lazy = ar.SemanticStore(Fixed())
    with pytest.raises(ar.MemoryStoreError, match="zero vector"):
        lazy.store("z", "", embedding=[0.0, 0.0, 0.0, 0.0])
    lazy.store("ok", "abc")  # the refused vector did not fix the dimension at 4
    assert lazy.search([3.0, 1.0, 0.0], k=1)[0].key == "ok"


@given(tag=st.text(min_size=2, max_size=6))
def test_a_single_string_is_one_tag_in_store_and_search(tag: str) -> None:
    # `frozenset("news")` used to store the tags "n", "e", "w", "s".
    store = ar.SemanticStore(dim=2)
    store.store("k", "v", tag, [1.0, 0.0])
    store.store("other", "w", [tag[0]], [1.0, 0.0])
    assert store.get_entry("k").tags == frozenset({tag})  # type: ignore[union-attr]
    assert [e.key for e in store.retrieve_by_tag(tag)] == ["k"]
    assert [h.key for h in store.search([1.0, 0.0], k=5, tags=tag)] == ["k"]
    assert [h.key for h in store.search([1.0, 0.0], k=5, tags=[tag])] == ["k"]
    assert [h.key for h in store.search([1.0, 0.0], k=5, tags=tag[0])] == ["other"]


class _Rows:
    """An embedder that returns whatever `make(texts)` builds."""

    def __init__(self, make: Any) -> None:
        self.make = make

    def embed(self, texts: Any) -> Any:
        return self.make(texts)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        # A 1-D row (the batch axis forgotten) used to make an index of dimension 1 in which
        # every score was +-1; two rows for one text were accepted, the first one used.
        (lambda texts: np.array([len(texts[0]), 1.0, 2.0], dtype=np.float32), r"\(3,\)"),
        (lambda texts: np.ones((2, 4), dtype=np.float32), r"\(2, 4\)"),
        (lambda texts: np.ones((1, 0), dtype=np.float32), r"\(1, 0\)"),
        (lambda texts: np.ones((1, 1, 4), dtype=np.float32), r"\(1, 1, 4\)"),
        (lambda texts: np.float32(3.0), r"\(\)"),
    ],
)
def test_the_embedder_must_return_one_row_per_text(make: Any, shape: str) -> None:
    store = ar.SemanticStore(_Rows(make))
    with pytest.raises(ar.MemoryStoreError, match=rf"shape \(1, dim\), got shape {shape}"):
        store.store("a", "apples")
    with pytest.raises(ar.MemoryStoreError, match="shape"):
        store.search("apples")
    assert len(store) == 0 and store._index is None  # nothing stored, no dimension fixed
    lists = ar.SemanticStore(_Rows(lambda texts: [[1.0, 2.0, 3.0] for _ in texts]))
    lists.store("a", "apples")  # a (1, dim) list of lists is fine
    assert [h.key for h in lists.search([1.0, 2.0, 3.0])] == ["a"]


@pytest.mark.parametrize(
    "make",
    [
        lambda texts: [[10**400, 1.0]],  # an int beyond any float
        lambda texts: np.array([[1e300, 1.0]]),  # beyond float32
    ],
)
def test_an_embedders_value_beyond_the_float_range_is_a_memory_store_error(make: Any) -> None:
    # It escaped as a bare OverflowError, or numpy's RuntimeWarning (an error under -W error).
    store = ar.SemanticStore(_Rows(make))
    with pytest.raises(ar.MemoryStoreError, match=r"float range|NaN or infinite"):
        store.store("a", "apples")
    with pytest.raises(ar.MemoryStoreError, match=r"float range|NaN or infinite"):
        store.search("apples")
    assert len(store) == 0


@pytest.mark.parametrize("embedding", [3.0, np.float32(2.0), np.array(1.0), [[1.0]], []])
def test_an_embedding_must_be_one_non_empty_vector(embedding: Any) -> None:
    # A scalar used to become a 1-vector (ascontiguousarray makes 0-d arrays 1-d).
    store = ar.SemanticStore(dim=1)
    with pytest.raises(ar.MemoryStoreError, match="embedding must"):
        store.store("k", "v", embedding=embedding)
    assert "k" not in store


def test_tags_none_means_no_tags_and_bad_tags_are_memory_store_errors() -> None:
    store = ar.SemanticStore(dim=2)
    store.store("k", "v", tags=None, embedding=[1.0, 0.0])  # used to raise a raw TypeError
    assert store.get_entry("k").tags == frozenset()  # type: ignore[union-attr]
    for bad, message in [
        ([["x"]], "tags must be strings, got list"),  # used to be "unhashable type: 'list'"
        (5, "tags must be a string or an iterable of strings, got int"),
        ([1], "tags must be strings, got int"),
    ]:
        with pytest.raises(ar.MemoryStoreError, match=re.escape(message)):
            store.store("bad", "v", tags=bad, embedding=[1.0, 0.0])
        with pytest.raises(ar.MemoryStoreError, match=re.escape(message)):
            store.search([1.0, 0.0], tags=bad)
    assert "bad" not in store


def test_search_arguments_are_checked_with_clear_messages() -> None:
    store = ar.SemanticStore()
    store.store("cat", "the cat sat on the mat")
    store.store("money", "quarterly revenue grew")
    # A non-string, non-vector query used to be reported as "query has dimension 1".
    with pytest.raises(ar.MemoryStoreError, match="query must be a string or a vector of numbers"):
        store.search(None)  # type: ignore[arg-type]
    with pytest.raises(ar.MemoryStoreError, match="k must be an int, got float"):
        store.search("cat", 2.5)  # type: ignore[arg-type]
    # A huge k means "all": it used to raise Python's OverflowError.
    for k in (2**63, 10**20):
        assert {h.key for h in store.search("cat", k)} == {"cat", "money"}
        assert [h.key for h in store.search("cat", k, tags=["none"])] == []


def test_numpy_integers_are_ints_for_k_and_dim() -> None:
    # Both were refused, while VectorIndex and HashingEmbedder take numpy integers.
    store = ar.SemanticStore(dim=np.int64(4))
    store.store("a", "x", embedding=[1.0, 0.0, 0.0, 0.0])
    store.store("b", "y", embedding=[0.0, 1.0, 0.0, 0.0])
    assert [h.key for h in store.search([1.0, 0.1, 0.0, 0.0], np.int64(1))] == ["a"]
    assert len(store.search([1.0, 0.1, 0.0, 0.0], np.uint8(5))) == 2
    with pytest.raises(ar.MemoryStoreError, match="k must be an int, got bool"):
        store.search([1.0, 0.0, 0.0, 0.0], True)
    with pytest.raises(ar.MemoryStoreError, match="k must be at least 1, got 0"):
        store.search([1.0, 0.0, 0.0, 0.0], np.int64(0))
    with pytest.raises(ar.MemoryStoreError, match="dim must be an int of at least 1"):
        ar.SemanticStore(dim=np.int64(0))


@pytest.mark.parametrize("dim", [0, -1, 2.5, True, np.bool_(True), np.float64(4.0)])
def test_dim_must_be_at_least_one(dim: Any) -> None:
    # dim=0 used to mean "auto" silently (None is the documented auto), and dim=-1 was told
    # "dim must be >= 0" although 0 is refused too.
    with pytest.raises(ar.MemoryStoreError, match="dim must be an int of at least 1"):
        ar.SemanticStore(dim=dim)


def test_a_bad_query_is_refused_even_when_nothing_can_match() -> None:
    # The query was only checked once some entry had an embedding: before that, a NaN or zero
    # vector (or a text with nothing to embed) returned [] instead of an error.
    nan, zero = np.full(384, np.nan, np.float32), np.zeros(384, np.float32)
    empty = ar.SemanticStore()
    unembedded = ar.SemanticStore()
    unembedded.store("note", "only text", embed=False)
    tagged = ar.SemanticStore()
    tagged.store("x", "hello world", tags=["a"])
    lazy = ar.SemanticStore(dim=None, embedder=_NoDim())  # no dimension fixed yet
    for store in (empty, unembedded, tagged, lazy):
        tags = ["missing"] if store is tagged else None
        with pytest.raises(ar.MemoryStoreError, match="NaN or infinite"):
            store.search(nan, tags=tags)
        with pytest.raises(ar.MemoryStoreError, match="zero vector"):
            store.search(zero, tags=tags)
        with pytest.raises(ar.MemoryStoreError, match="zero vector"):
            store.search("!!!", tags=tags)  # nothing to embed
        with pytest.raises(ar.MemoryStoreError, match="NaN or infinite"):
            store.search(np.where(np.arange(384) == 5, np.inf, 1.0), tags=tags)
    for store in (empty, unembedded, tagged):
        with pytest.raises(ar.MemoryStoreError, match="dimension 3, the store has 384"):
            store.search([1.0, 2.0, 3.0])
    assert empty.search("hello") == [] and unembedded.search("hello") == []
    assert tagged.search("hello", tags=["missing"]) == []
    assert lazy.search([1.0, 2.0, 3.0]) == []


class _NoDim:
    """An embedder without a `dim` attribute: the store learns its dimension from a vector."""

    def embed(self, texts: Any) -> np.ndarray:
        return np.zeros((len(texts), 3), dtype=np.float32)


class _SlowIndex:
    """A VectorIndex whose add, remove and search sleep first: they release the GIL as the
    Rust calls do, only for long enough that other threads surely run meanwhile."""

    def __init__(self, index: ar.VectorIndex) -> None:
        self._index = index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)

    def __len__(self) -> int:
        return len(self._index)

    def add(self, ids: Any, vectors: Any) -> None:
        time.sleep(0.0002)
        self._index.add(ids, vectors)

    def remove(self, ids: Any) -> None:
        time.sleep(0.0002)
        self._index.remove(ids)

    def search(self, query: Any, k: int) -> Any:
        time.sleep(0.0002)
        return self._index.search(query, k)


def test_threads_storing_replacing_deleting_and_searching_keep_the_store_consistent() -> None:
    # store() read the next vector id, released the GIL inside the index's add, then bumped
    # it: two threads shared an id, one vector overwrote the other, and delete() later
    # raised KeyError. Searches mapped ids to keys unguarded as well.
    dim, threads, per = 256, 4, 60
    rng = np.random.default_rng(0)
    # Made beforehand, so that the writers spend their time inside store().
    vectors = {
        (f"t{t}-{i}", version): rng.standard_normal(dim).astype(np.float32)
        for t in range(threads)
        for i in range(per)
        for version in (0, 1)
    }

    def vector(key: str, version: int) -> np.ndarray:
        return vectors[key, version]

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    store = ar.SemanticStore(dim=dim)
    store._index = _SlowIndex(store._index)  # type: ignore[assignment,arg-type]
    expected: dict[str, int] = {}  # key -> version of its vector, after the writers
    errors: list[BaseException] = []
    mismatched: list[tuple[str, float, float]] = []
    done = threading.Event()

    def writer(t: int) -> None:
        try:
            for i in range(per):
                key = f"t{t}-{i}"
                store.store(key, f"{key}:0", tags=[f"t{t}"], embedding=vector(key, 0))
                if i % 3 == 0:  # replaced: a new vector under the same key
                    store.store(key, f"{key}:1", tags=[f"t{t}"], embedding=vector(key, 1))
                if i % 5 == 0:
                    assert store.delete(key)
        except BaseException as e:
            errors.append(e)

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                query = rng.standard_normal(dim).astype(np.float32)
                tags = [f"t{rng.integers(threads)}"] if rng.integers(2) else None
                for hit in store.search(query, int(rng.integers(1, 8)), tags=tags):
                    # Each hit's score is that of the vector stored with its value.
                    key, version = hit.value.rsplit(":", 1)
                    want = float(unit(vector(key, int(version))) @ unit(query))
                    if abs(hit.score - want) > 1e-4 or (tags and tags[0] not in hit.tags):
                        mismatched.append((hit.value, hit.score, want))
        except BaseException as e:
            errors.append(e)

    for t in range(threads):
        for i in range(per):
            if i % 5:
                expected[f"t{t}-{i}"] = 1 if i % 3 == 0 else 0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        searchers = [threading.Thread(target=searcher, args=(s,)) for s in range(2)]
        writers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
        for thread in searchers + writers:
            thread.start()
        for thread in writers:
            thread.join()
        done.set()
        for thread in searchers:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == [] and mismatched == []
    assert len(store) == store.entry_count_with_embedding() == len(expected)
    for key, version in expected.items():
        [hit] = store.search(vector(key, version), 1)
        assert (hit.key, hit.value) == (key, f"{key}:{version}") and hit.score > 0.999
    for key in expected:
        assert store.delete(key)
    assert len(store) == store.entry_count_with_embedding() == 0
    assert store.search(vector("t0-1", 0), 5) == []


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, pickle.dumps])
def test_a_store_is_not_copied(how: Any) -> None:
    # A shallow copy shared the index and the entries but not the id counter: the copy and
    # the store then gave one id to two vectors, and each overwrote the other's.
    store = ar.SemanticStore()
    store.store("a", "the sky is blue")
    with pytest.raises(TypeError, match="cannot pickle or copy a SemanticStore"):
        how(store)
    assert [hit.key for hit in store.search("sky", k=1)] == ["a"]


class _DimMethod:
    """An embedder whose `dim` is a method (the protocol leaves `dim` optional)."""

    def dim(self) -> int:
        return 4

    def embed(self, texts: Any) -> np.ndarray:
        rows = np.zeros((len(texts), 4), dtype=np.float32)
        rows[:, 0] = 1.0
        return rows


@pytest.mark.parametrize("dim", ["method", 4.0, "4", True, 0, -3])
def test_an_embedders_dim_that_is_no_size_leaves_the_first_vector_to_fix_it(dim: Any) -> None:
    embedder = _DimMethod()
    if dim != "method":
        embedder.dim = dim  # type: ignore[assignment, method-assign]
    store = ar.SemanticStore(embedder)
    store.store("a", "anything")
    assert [hit.key for hit in store.search("query")] == ["a"]
    with pytest.raises(ar.MemoryStoreError, match="dimension 3, the store has 4"):
        store.search([1.0, 0.0, 0.0])


def test_a_value_beyond_the_float_range_is_refused_with_a_store_error() -> None:
    store = ar.SemanticStore(dim=3)
    with pytest.raises(ar.MemoryStoreError, match="infinite"):
        store.store("a", "x", embedding=[10**400, 0, 0])
    store.store("a", "x", embedding=[1.0, 0.0, 0.0])
    with pytest.raises(ar.MemoryStoreError, match="infinite"):
        store.search([10**400, 0, 0])


@pytest.mark.parametrize("field", ["key", "value"])
def test_a_text_with_a_lone_surrogate_is_refused_even_unembedded(field: str) -> None:
    store = ar.SemanticStore(dim=3)
    texts = {"key": "k", "value": "v", field: "caf\ud800"}
    with pytest.raises(ar.MemoryStoreError, match=f"{field} is not valid Unicode"):
        store.store(texts["key"], texts["value"], embed=False)
    store.store("k", "caf\u00e9", embed=False)  # valid non-ASCII text is stored
    assert store.total_value_bytes() == 5 and len(store) == 1


@pytest.mark.parametrize("dtype", [None, 32, b"int8"])
def test_a_dtype_that_is_no_str_is_a_store_error(dtype: Any) -> None:
    with pytest.raises(ar.MemoryStoreError, match="dtype must be"):
        ar.SemanticStore(dtype=dtype)


@pytest.mark.parametrize("k", [3, 7, 50])
def test_a_rare_tags_search_goes_wide_and_finds_its_entries_best_first(k: int) -> None:
    # Past 1,024 hits the tagged entries' ids filter the hits in numpy: the same results as
    # ranking the tagged entries alone, fewer than k of them included.
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((3_000, 16)).astype(np.float32)
    store = ar.SemanticStore(dim=16)
    rare = {5, 900, 1_777, 2_048, 2_500, 2_999, 42}
    for n, vector in enumerate(vectors):
        tags = ["rare", "other"] if n in rare else ["common"]
        store.store(f"k{n}", f"v{n}", tags=tags, embedding=vector)
    store.store("k900", "untagged now", embedding=vectors[900])  # its tags are replaced
    query = rng.standard_normal(16).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    tagged = sorted(rare - {900}, key=lambda n: -scores[n])
    for tags in ("rare", ["rare", "other"]):
        hits = store.search(query, k=k, tags=tags)
        assert [h.key for h in hits] == [f"k{n}" for n in tagged[:k]]
        assert [h.score for h in hits] == pytest.approx([scores[n] for n in tagged[:k]], abs=1e-5)
    assert store.search(query, k=k, tags=["rare", "common"]) == []


def test_a_rare_tags_search_scans_the_index_once() -> None:
    # The first scan asks for twice the hits that hold k tagged ones at the tag's share of
    # the entries: it asked for k, then 4x as many at each scan (7 scans at 20,000 entries).
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((20_000, 16)).astype(np.float32)
    store = ar.SemanticStore(dim=16)
    for n, vector in enumerate(vectors):
        store.store(f"k{n}", f"v{n}", tags="rare" if n % 1_000 == 0 else "common", embedding=vector)
    index = store._index
    scans: list[int] = []

    class CountsScans:
        dim = index.dim

        def __len__(self) -> int:
            return len(index)

        def search(self, vector: Any, k: int) -> Any:
            scans.append(k)
            return index.search(vector, k)

    store._index = CountsScans()  # type: ignore[assignment]
    query = rng.standard_normal(16).astype(np.float32)
    hits = store.search(query, k=5, tags="rare")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit[::1_000] @ (query / np.linalg.norm(query))
    assert [h.key for h in hits] == [f"k{1_000 * n}" for n in np.argsort(-scores)[:5]]
    assert len(scans) == 1
