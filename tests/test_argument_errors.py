"""Wrong-typed arguments to the Rust classes raise errors naming the argument and what it takes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import llm_agent_runtime as ar


def _graph() -> ar.GraphStore:
    g = ar.GraphStore()
    g.add_entities(["a", "b"])
    g.add_relationship("a", "b")
    return g


@pytest.mark.parametrize("method", ["subgraph", "betweenness_from", "add_entities"])
def test_one_name_where_a_list_of_names_is_expected_says_to_wrap_it(method: str) -> None:
    with pytest.raises(TypeError, match=r"takes a list of entity names, got one str \('ab'\)"):
        getattr(_graph(), method)("ab")
    with pytest.raises(TypeError, match=rf"^{method} takes .*wrap it in a list"):
        getattr(_graph(), method)("ab")


@pytest.mark.parametrize("method", ["subgraph", "betweenness_from", "add_entities"])
@pytest.mark.parametrize(
    ("value", "got"),
    [(None, "got None"), (1.5, r"got float \(1\.5\)"), ({"a": 1}, "got dict")],
)
def test_a_non_list_for_a_list_of_names_is_named(method: str, value: Any, got: str) -> None:
    with pytest.raises(TypeError, match=rf"^{method} takes a list of entity names, {got}"):
        getattr(_graph(), method)(value)


def test_bytes_for_a_list_of_names_is_not_reported_as_ints() -> None:
    with pytest.raises(
        TypeError, match=r"add_entities takes a list of entity names, got bytes"
    ) as info:
        _graph().add_entities(b"ab")  # type: ignore[arg-type]
    assert "'int'" not in str(info.value)


def test_a_name_of_the_wrong_type_in_the_list_is_named_by_its_index() -> None:
    with pytest.raises(
        TypeError, match=r"subgraph takes a list of entity names: item 1 is int \(7\)"
    ):
        _graph().subgraph(["a", 7])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"item 0 is bytes \(b'a'\)"):
        _graph().betweenness_from([b"a"])  # type: ignore[list-item]


def test_a_lone_surrogate_in_a_list_of_names_is_still_a_graph_error() -> None:
    with pytest.raises(ar.GraphError, match="lone surrogate"):
        _graph().subgraph(["\ud83d"])


def test_modularity_names_a_community_given_as_one_name() -> None:
    g = _graph()
    with pytest.raises(TypeError, match=r"modularity takes a list of communities.*got one str"):
        g.modularity("ab")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"each community as a list of entity names: community 0.*got one str \('a'\)",
    ):
        g.modularity(["a", "b"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"modularity takes a list of communities.*got bytes"):
        g.modularity(b"ab")  # type: ignore[arg-type]


def test_a_float_array_of_edges_is_described_as_given() -> None:
    edges = np.array([[0, 1, 0.5], [1, 2, 0.25]])
    with pytest.raises(
        ar.GraphError, match=r"edges is a numpy array of shape \(2, 3\) and dtype float64"
    ):
        ar.GraphStore.from_edge_list(3, edges)
    with pytest.raises(
        ar.GraphError, match=r"edges is a numpy array of shape \(1, 2, 2\) and dtype int64"
    ):
        ar.GraphStore.from_edge_list(3, np.zeros((1, 2, 2), dtype=np.int64))
    # Empty: no edge, nothing to refuse (as before).
    assert ar.GraphStore.from_edge_list(2, np.zeros((0, 3))).relationship_count() == 0


@pytest.mark.parametrize(
    ("value", "got"), [("01", r"got one str \('01'\)"), (b"01", r"got bytes \(b'01'\)")]
)
def test_text_for_a_list_of_edges_is_named(value: Any, got: str) -> None:
    with pytest.raises(
        ar.GraphError, match=rf"from_edge_list takes a list of edges \(u, v\[, weight\]\), {got}"
    ):
        ar.GraphStore.from_edge_list(3, value)


@pytest.mark.parametrize(
    ("value", "got"), [(None, "got None"), (5, r"got int \(5\)"), (np.array(7), "got")]
)
def test_edges_that_cannot_be_iterated_are_named(value: Any, got: str) -> None:
    # Python's bare TypeError came out ("'NoneType' object is not iterable").
    with pytest.raises(
        ar.GraphError, match=rf"from_edge_list takes a list of edges \(u, v\[, weight\]\), {got}"
    ):
        ar.GraphStore.from_edge_list(3, value)


# --- A wrong-typed single argument: "<argument> must be <what>, got <value>" -------------


def _store() -> ar.EpisodicStore:
    store = ar.EpisodicStore()
    store.add_episode("a", "x", 0.5)
    return store


def _working() -> ar.WorkingMemory:
    memory = ar.WorkingMemory(4)
    memory.set("k", 1)
    return memory


def _index() -> ar.VectorIndex:
    index = ar.VectorIndex(2)
    index.add(np.array([1]), np.array([[1.0, 0.0]], dtype=np.float32))
    return index


_QUERY = np.array([1.0, 0.0], dtype=np.float32)

_STR = "must be a str"
_INT = "must be an int"
_BOOL = "must be a bool"
_REAL = "must be a real number"

WRONG_TYPES: list[tuple[str, Any, type[Exception], str]] = [
    # GraphStore
    (
        "add_entity id",
        lambda: _graph().add_entity([1]),
        TypeError,
        rf"^id {_STR}, got list \(\[1\]\)",
    ),
    (
        "add_entity label",
        lambda: _graph().add_entity("c", 1),
        TypeError,
        rf"^label {_STR} or None, got int \(1\)",
    ),
    (
        "update_entity id",
        lambda: _graph().update_entity(1),
        TypeError,
        rf"^id {_STR}, got int \(1\)",
    ),
    ("update_entity label", lambda: _graph().update_entity("a", 1), TypeError, rf"^label {_STR}"),
    ("remove_entity", lambda: _graph().remove_entity(1), TypeError, rf"^id {_STR}"),
    ("has_entity", lambda: _graph().has_entity(1), TypeError, rf"^id {_STR}, got int \(1\)"),
    ("entity", lambda: _graph().entity(None), TypeError, rf"^id {_STR}, got None"),
    (
        "from_edge_list n",
        lambda: ar.GraphStore.from_edge_list("3", []),
        TypeError,
        rf"^n {_INT}, got str \('3'\)",
    ),
    (
        "from_edge_list kind",
        lambda: ar.GraphStore.from_edge_list(3, [], 1),
        TypeError,
        rf"^kind {_STR}",
    ),
    (
        "add_relationship from_id",
        lambda: _graph().add_relationship(1, "b"),
        TypeError,
        rf"^from_id {_STR}",
    ),
    (
        "add_relationship to_id",
        lambda: _graph().add_relationship("a", 1),
        TypeError,
        rf"^to_id {_STR}",
    ),
    (
        "add_relationship kind",
        lambda: _graph().add_relationship("a", "b", 1),
        TypeError,
        rf"^kind {_STR}",
    ),
    (
        "add_relationships create_missing",
        lambda: _graph().add_relationships([], None),
        TypeError,
        rf"^create_missing {_BOOL}, got None",
    ),
    (
        "update_relationship kind",
        lambda: _graph().update_relationship("a", "b", None),
        TypeError,
        rf"^kind {_STR}, got None",
    ),
    (
        "remove_relationship from_id",
        lambda: _graph().remove_relationship(1, "b"),
        TypeError,
        rf"^from_id {_STR}",
    ),
    (
        "remove_relationship kind",
        lambda: _graph().remove_relationship("a", "b", 1),
        TypeError,
        rf"^kind {_STR}",
    ),
    ("edges_from", lambda: _graph().edges_from(1), TypeError, rf"^id {_STR}"),
    ("bfs start", lambda: _graph().bfs(1), TypeError, rf"^start {_STR}"),
    (
        "bfs max_depth",
        lambda: _graph().bfs("a", "2"),
        TypeError,
        rf"^max_depth {_INT}.*, got str \('2'\)",
    ),
    (
        "bfs directed",
        lambda: _graph().bfs("a", None, None),
        TypeError,
        rf"^directed {_BOOL}, got None",
    ),
    (
        "dfs directed",
        lambda: _graph().dfs("a", directed="x"),
        TypeError,
        rf"^directed {_BOOL}, got str \('x'\)",
    ),
    (
        "dfs max_depth",
        lambda: _graph().dfs("a", 1.5),
        TypeError,
        rf"^max_depth {_INT}.*, got float \(1\.5\)",
    ),
    ("shortest_path source", lambda: _graph().shortest_path(1, "b"), TypeError, rf"^source {_STR}"),
    ("shortest_path target", lambda: _graph().shortest_path("a", 1), TypeError, rf"^target {_STR}"),
    (
        "shortest_path directed",
        lambda: _graph().shortest_path("a", "b", None),
        TypeError,
        rf"^directed {_BOOL}",
    ),
    ("distances directed", lambda: _graph().distances("a", None), TypeError, rf"^directed {_BOOL}"),
    ("reachable source", lambda: _graph().reachable(1), TypeError, rf"^source {_STR}"),
    ("reachable directed", lambda: _graph().reachable("a", None), TypeError, rf"^directed {_BOOL}"),
    (
        "neighborhood hops",
        lambda: _graph().neighborhood("a", "1"),
        TypeError,
        rf"^hops {_INT}, got str",
    ),
    (
        "neighborhood directed",
        lambda: _graph().neighborhood("a", 1, None),
        TypeError,
        rf"^directed {_BOOL}",
    ),
    ("degree_centrality mode", lambda: _graph().degree_centrality(1), TypeError, rf"^mode {_STR}"),
    (
        "degree_centrality normalized",
        lambda: _graph().degree_centrality("total", None),
        TypeError,
        rf"^normalized {_BOOL}",
    ),
    (
        "betweenness normalized",
        lambda: _graph().betweenness_centrality(None),
        TypeError,
        rf"^normalized {_BOOL}, got None",
    ),
    (
        "betweenness weighted",
        lambda: _graph().betweenness_centrality(weighted=None),
        TypeError,
        rf"^weighted {_BOOL}",
    ),
    (
        "betweenness directed",
        lambda: _graph().betweenness_centrality(directed=[]),
        TypeError,
        rf"^directed {_BOOL}, got list \(\[\]\)",
    ),
    (
        "betweenness k",
        lambda: _graph().betweenness_centrality(k="1"),
        TypeError,
        rf"^k {_INT}.*, got str \('1'\)",
    ),
    (
        "betweenness seed",
        lambda: _graph().betweenness_centrality(seed="1"),
        TypeError,
        rf"^seed {_INT}, got str \('1'\)",
    ),
    (
        "betweenness_from normalized",
        lambda: _graph().betweenness_from(["a"], None),
        TypeError,
        rf"^normalized {_BOOL}",
    ),
    (
        "betweenness_from directed",
        lambda: _graph().betweenness_from(["a"], directed=None),
        TypeError,
        rf"^directed {_BOOL}",
    ),
    (
        "communities resolution",
        lambda: _graph().communities("x"),
        TypeError,
        rf"^resolution {_REAL}, got str \('x'\)",
    ),
    (
        "communities seed",
        lambda: _graph().communities(seed=1.5),
        TypeError,
        rf"^seed {_INT}, got float",
    ),
    (
        "label_propagation seed",
        lambda: _graph().label_propagation("1"),
        TypeError,
        rf"^seed {_INT}",
    ),
    (
        "label_propagation max_rounds",
        lambda: _graph().label_propagation(0, "1"),
        TypeError,
        rf"^max_rounds {_INT}",
    ),
    (
        "modularity resolution",
        lambda: _graph().modularity([["a"]], None),
        TypeError,
        rf"^resolution {_REAL}, got None",
    ),
    ("cycles cap", lambda: _graph().cycles("1"), TypeError, rf"cap {_INT}, got str"),
    (
        "relationship_count_between",
        lambda: _graph().relationship_count_between("a", 1),
        TypeError,
        rf"^to_id {_STR}",
    ),
    ("neighbors_of", lambda: _graph().neighbors_of(1), TypeError, rf"^id {_STR}"),
    ("GraphStore.from_json", lambda: ar.GraphStore.from_json(1), TypeError, rf"^text {_STR}"),
    # WorkingMemory
    (
        "WorkingMemory capacity",
        lambda: ar.WorkingMemory("10"),
        TypeError,
        rf"capacity {_INT}, got str \('10'\)",
    ),
    (
        "WorkingMemory capacity float",
        lambda: ar.WorkingMemory(1.5),
        TypeError,
        rf"capacity {_INT}, got float \(1\.5\)",
    ),
    ("WorkingMemory.set", lambda: _working().set(1, 2), TypeError, rf"^key {_STR}, got int \(1\)"),
    ("WorkingMemory.get", lambda: _working().get(1), TypeError, rf"^key {_STR}, got int \(1\)"),
    ("WorkingMemory.delete", lambda: _working().delete(None), TypeError, rf"^key {_STR}, got None"),
    ("WorkingMemory getitem", lambda: _working()[1], TypeError, rf"^key {_STR}"),
    ("WorkingMemory setitem", lambda: _working().__setitem__(1, 2), TypeError, rf"^key {_STR}"),
    ("WorkingMemory delitem", lambda: _working().__delitem__(1), TypeError, rf"^key {_STR}"),
    # EpisodicStore
    (
        "EpisodicStore per_agent_capacity",
        lambda: ar.EpisodicStore(per_agent_capacity="3"),
        TypeError,
        rf"^per_agent_capacity {_INT}",
    ),
    (
        "EpisodicStore similarity_weight",
        lambda: ar.EpisodicStore(similarity_weight="x"),
        TypeError,
        rf"^similarity_weight {_REAL}, got str",
    ),
    (
        "add_episode agent_id",
        lambda: _store().add_episode(1, "x", 0.5),
        TypeError,
        rf"^agent_id {_STR}, got int \(1\)",
    ),
    (
        "add_episode content",
        lambda: _store().add_episode("a", 1, 0.5),
        TypeError,
        rf"^content {_STR}",
    ),
    (
        "add_episode importance",
        lambda: _store().add_episode("a", "x", "0.5"),
        TypeError,
        rf"^importance {_REAL}, got str \('0\.5'\)",
    ),
    (
        "add_episode importance None",
        lambda: _store().add_episode("a", "x", None),
        TypeError,
        rf"^importance {_REAL}, got None",
    ),
    ("recall agent_id", lambda: _store().recall(1), TypeError, rf"^agent_id {_STR}"),
    (
        "recall limit",
        lambda: _store().recall("a", "3"),
        TypeError,
        rf"^limit {_INT}, got str \('3'\)",
    ),
    (
        "recall counted",
        lambda: _store().recall("a", 3, counted=None),
        TypeError,
        rf"^counted {_BOOL}, got None",
    ),
    (
        "mark_recalled agent_id",
        lambda: _store().mark_recalled(1, [1]),
        TypeError,
        rf"^agent_id {_STR}",
    ),
    (
        "mark_recalled ids str",
        lambda: _store().mark_recalled("a", "ab"),
        TypeError,
        r"^ids must be .*episode ids.*got .*str \('ab'\)",
    ),
    (
        "mark_recalled ids int",
        lambda: _store().mark_recalled("a", 5),
        TypeError,
        r"^ids must be .*episode ids.*got int \(5\)",
    ),
    (
        "mark_recalled ids item",
        lambda: _store().mark_recalled("a", [1, "x"]),
        TypeError,
        r"^ids must be .*episode ids.*item 1 is str \('x'\)",
    ),
    ("episodes", lambda: _store().episodes(1), TypeError, rf"^agent_id {_STR}"),
    ("clear", lambda: _store().clear(1), TypeError, rf"^agent_id {_STR} or None, got int"),
    ("episode_count_for", lambda: _store().episode_count_for(1), TypeError, rf"^agent_id {_STR}"),
    ("content_lengths", lambda: _store().content_lengths(1), TypeError, rf"^agent_id {_STR}"),
    (
        "total_content_bytes",
        lambda: _store().total_content_bytes(1),
        TypeError,
        rf"^agent_id {_STR}",
    ),
    ("avg_content_length", lambda: _store().avg_content_length(1), TypeError, rf"^agent_id {_STR}"),
    ("max_content_length", lambda: _store().max_content_length(1), TypeError, rf"^agent_id {_STR}"),
    ("min_content_length", lambda: _store().min_content_length(1), TypeError, rf"^agent_id {_STR}"),
    (
        "high_importance_count agent_id",
        lambda: _store().high_importance_count(1, 0.5),
        TypeError,
        rf"^agent_id {_STR}",
    ),
    (
        "high_importance_count threshold",
        lambda: _store().high_importance_count("a", "x"),
        TypeError,
        rf"^threshold {_REAL}, got str",
    ),
    (
        "episodes_by_importance",
        lambda: _store().episodes_by_importance(1),
        TypeError,
        rf"^agent_id {_STR}",
    ),
    (
        "content_contains_count needle",
        lambda: _store().content_contains_count("a", 1),
        TypeError,
        rf"^needle {_STR}",
    ),
    ("EpisodicStore.from_json", lambda: ar.EpisodicStore.from_json(1), TypeError, rf"^text {_STR}"),
    # DecayPolicy, RecallPolicy
    (
        "DecayPolicy.exponential",
        lambda: ar.DecayPolicy.exponential("x"),
        TypeError,
        rf"^half_life_hours {_REAL}, got str",
    ),
    (
        "RecallPolicy.hybrid recency",
        lambda: ar.RecallPolicy.hybrid("x", 1.0),
        TypeError,
        rf"^recency_weight {_REAL}",
    ),
    (
        "RecallPolicy.hybrid frequency",
        lambda: ar.RecallPolicy.hybrid(1.0, None),
        TypeError,
        rf"^frequency_weight {_REAL}, got None",
    ),
    # RuntimeMetrics, MetricsSnapshot
    (
        "record_tool_call tool",
        lambda: ar.RuntimeMetrics().record_tool_call(1),
        TypeError,
        rf"^tool {_STR}, got int \(1\)",
    ),
    (
        "record_tool_call agent_id",
        lambda: ar.RuntimeMetrics().record_tool_call("t", 1),
        TypeError,
        rf"^agent_id {_STR} or None",
    ),
    (
        "record_tool_failure tool",
        lambda: ar.RuntimeMetrics().record_tool_failure(None),
        TypeError,
        rf"^tool {_STR}, got None",
    ),
    (
        "record_memory_recall",
        lambda: ar.RuntimeMetrics().record_memory_recall("1"),
        TypeError,
        rf"^count {_INT}, got str",
    ),
    (
        "record_tokens input",
        lambda: ar.RuntimeMetrics().record_tokens("1", 1),
        TypeError,
        rf"^input_tokens {_INT}",
    ),
    (
        "record_tokens output",
        lambda: ar.RuntimeMetrics().record_tokens(1, 1.5),
        TypeError,
        rf"^output_tokens {_INT}, got float",
    ),
    (
        "snapshot tool_call_count",
        lambda: ar.RuntimeMetrics().snapshot().tool_call_count(1),
        TypeError,
        rf"^name {_STR}",
    ),
    (
        "MetricsSnapshot.from_json",
        lambda: ar.MetricsSnapshot.from_json(1),
        TypeError,
        rf"^text {_STR}",
    ),
    # VectorIndex
    ("VectorIndex dim", lambda: ar.VectorIndex("2"), TypeError, rf"^dim {_INT}, got str \('2'\)"),
    ("VectorIndex dtype", lambda: ar.VectorIndex(2, 1), TypeError, rf"^dtype {_STR}, got int"),
    ("VectorIndex rescore", lambda: ar.VectorIndex(2, rescore="1"), TypeError, rf"^rescore {_INT}"),
    (
        "VectorIndex exact_rescore",
        lambda: ar.VectorIndex(2, exact_rescore=None),
        TypeError,
        rf"^exact_rescore {_BOOL}, got None",
    ),
    (
        "VectorIndex.search k",
        lambda: _index().search(_QUERY, "1"),
        TypeError,
        rf"^k {_INT}, got str \('1'\)",
    ),
    (
        "VectorIndex.search_batch k",
        lambda: _index().search_batch(_QUERY[None], 1.5),
        TypeError,
        rf"^k {_INT}, got float",
    ),
    # HashingEmbedder
    ("HashingEmbedder dim", lambda: ar.HashingEmbedder("3"), TypeError, rf"^dim {_INT}, got str"),
    (
        "HashingEmbedder word_ngrams",
        lambda: ar.HashingEmbedder(8, "2"),
        TypeError,
        rf"^word_ngrams {_INT}",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [pytest.param(call, error, words, id=name) for name, call, error, words in WRONG_TYPES],
)
def test_a_wrong_typed_argument_is_named_with_what_it_takes(
    call: Any, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words) as info:
        call()
    # Not PyO3's generic wording.
    message = str(info.value)
    assert "is not an instance of" not in message
    assert "cannot be interpreted as an integer" not in message
    assert "must be real number" not in message


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        # Already named: the rule of the argument, with its typed error.
        (lambda: ar.WorkingMemory(True), ar.MemoryStoreError, "capacity must be an int, got bool"),
        (lambda: ar.WorkingMemory(0), ar.MemoryStoreError, "capacity must be at least 1"),
        (lambda: _graph().bfs("a", -1), ar.GraphError, "max_depth must be >= 0, got -1"),
        (
            lambda: _graph().add_relationship("a", "b", "k", "x"),
            ar.GraphError,
            "weight must be a real number",
        ),
        (
            lambda: _store().add_episode("a", "x", 2.0),
            ar.MemoryStoreError,
            r"importance must be in \[0, 1\]",
        ),
        (lambda: _index().search(_QUERY, 0), ar.MemoryStoreError, "k must be at least 1, got 0"),
        (
            lambda: ar.RuntimeMetrics().record_memory_recall(-1),
            ar.AgentRuntimeError,
            "counts must be",
        ),
        (
            lambda: _store().mark_recalled("a", [-1]),
            ar.MemoryStoreError,
            "episode ids must be ints >= 0",
        ),
        (lambda: _graph().cycles(0), ar.GraphError, "cap must be positive"),
    ],
)
def test_arguments_with_their_own_rules_keep_their_errors(
    call: Any, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        call()


def test_arguments_of_the_right_type_still_work() -> None:
    g = _graph()
    assert g.bfs("a", 1, True) == ["a", "b"]
    assert g.bfs("a", np.int64(5), np.bool_(False)) == ["a", "b"]
    store = _store()
    ids = [episode.id for episode in store.episodes("a")]
    assert store.mark_recalled("a", (i for i in ids)) == 1
    assert _store().recall("a", np.int64(2), counted=False)[0].content == "x"
    assert ar.RecallPolicy.hybrid(1, np.float64(0.5)) == ar.RecallPolicy.hybrid(1.0, 0.5)
    assert len(_index().search(_QUERY, np.int32(1))[0]) == 1


class OldNumpyBool:
    """A numpy bool as numpy before 2.3 has it: a `dtype` of kind "b", and an `__index__`
    (so `operator.index` takes it for 0 or 1)."""

    dtype = np.dtype(bool)

    def __index__(self) -> int:
        return 1


async def test_a_numpy_bool_is_no_count_on_any_numpy() -> None:
    flag: Any = OldNumpyBool()
    with pytest.raises(TypeError, match="input_tokens must be an int"):
        ar.Usage(input_tokens=flag)
    with pytest.raises(ar.MemoryStoreError, match="dim must be an int"):
        ar.SemanticStore(dim=flag)
    store = ar.SemanticStore()
    store.store("sun", "the sun is a star")
    with pytest.raises(ar.MemoryStoreError, match="k must be an int"):
        store.search("sun", k=flag)
    with pytest.raises(ar.MemoryStoreError, match="batch_size must be an int"):
        ar.OpenAIEmbedder(api_key="k", batch_size=flag)
    registry = ar.ToolRegistry()
    registry.register(ar.ToolSpec("echo", "Echoes.", lambda text: text))
    with pytest.raises(ar.ToolError, match="max_chars must be an int"):
        await registry.call("echo", {"text": "hi"}, max_chars=flag)
    # A numpy integer is still a count.
    assert ar.Usage(input_tokens=np.int64(3)).input_tokens == 3
    assert len(store.search("sun", k=np.int32(1))) == 1
