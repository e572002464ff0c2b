"""Saved forms of the Rust stores: round trips keep everything, bad input is a typed error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

# --------------------------------------------------------------------------- vector index


def _index(dtype: str = "float32", exact: bool = False) -> ar.VectorIndex:
    rng = np.random.default_rng(7)
    if exact:
        index = ar.VectorIndex(5, dtype="int8", exact_rescore=True)
    else:
        index = ar.VectorIndex(5, dtype=dtype)
    ids = np.array([0, 2**63 - 1, 3, 4], dtype=np.int64)
    index.add(ids, rng.standard_normal((4, 5)).astype(np.float32))
    return index


@pytest.mark.parametrize("length", [240, 255])
def test_vector_save_to_a_long_file_name(tmp_path: Path, length: int) -> None:
    # Any name the file system accepts is one save can write: the temporary file beside it
    # must not need a longer name than the target's own.
    index = _index()
    path = tmp_path / ("v" * length)
    index.save(path)
    loaded = ar.VectorIndex.load(path)
    assert len(loaded) == len(index)
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_vector_save_to_a_long_unicode_file_name(tmp_path: Path) -> None:
    index = _index()
    path = tmp_path / ("\u00e9" * 127)  # 254 bytes in UTF-8
    index.save(path)
    assert len(ar.VectorIndex.load(path)) == len(index)
    assert sorted(os.listdir(tmp_path)) == [path.name]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_vector_load_of_a_named_pipe_is_an_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code = textwrap.dedent(
        f"""
        import llm_agent_runtime as ar
        try:
            ar.VectorIndex.load({str(fifo)!r})
        except ar.PersistenceError as e:
            print("PersistenceError", e)
        """
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=20,
            env=os.environ.copy(),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("VectorIndex.load hung on a named pipe")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("PersistenceError"), out.stdout


def test_vector_load_of_a_directory_is_a_persistence_error(tmp_path: Path) -> None:
    with pytest.raises(ar.PersistenceError):
        ar.VectorIndex.load(tmp_path)


def test_vector_save_over_another_index_originals_file_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "exact.idx"
    _index(exact=True).save(source)
    originals = tmp_path / "copies.f32"
    owner = ar.VectorIndex.load(source, originals_path=originals)
    before = originals.read_bytes()
    other = _index()
    # Replacing the file would take it from the index that holds it: a later load with the
    # same originals_path could then take (and empty) it while that index still uses it.
    with pytest.raises(ar.PersistenceError, match="in use"):
        other.save(originals)
    assert originals.read_bytes() == before
    with pytest.raises(ar.PersistenceError, match="in use"):
        ar.VectorIndex.load(source, originals_path=originals)
    query = np.ones(5, np.float32)
    assert (
        owner.search(query, 2)[0].tolist()
        == ar.VectorIndex.load(source).search(query, 2)[0].tolist()
    )
    assert sorted(os.listdir(tmp_path)) == ["copies.f32", "exact.idx"]


def test_vector_save_over_a_released_originals_file_works(tmp_path: Path) -> None:
    source = tmp_path / "exact.idx"
    _index(exact=True).save(source)
    originals = tmp_path / "copies.f32"
    owner = ar.VectorIndex.load(source, originals_path=originals)
    del owner
    other = _index()
    other.save(originals)
    assert len(ar.VectorIndex.load(originals)) == len(other)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dtype=st.sampled_from(["float32", "float16", "int8"]),
    ids=st.lists(st.integers(0, 2**63 - 1), unique=True, max_size=12),
    dim=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_vector_round_trip_is_bit_for_bit(
    tmp_path: Path, dtype: str, ids: list[int], dim: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    index = ar.VectorIndex(dim, dtype=dtype, rescore=3)
    if ids:
        vectors = rng.standard_normal((len(ids), dim)).astype(np.float32)
        vectors[np.all(vectors == 0, axis=1)] = 1.0
        index.add(np.array(ids, dtype=np.int64), vectors)
    path = tmp_path / f"rt-{dtype}-{dim}-{seed}.idx"
    index.save(path)
    loaded = ar.VectorIndex.load(path)
    assert (loaded.dim, loaded.dtype, loaded.rescore, len(loaded)) == (
        dim,
        dtype,
        3,
        len(ids),
    )
    for i in ids:
        a, b = index.get(i), loaded.get(i)
        assert a is not None and b is not None
        assert a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------- graph store


def test_graph_document_version_zero_is_refused() -> None:
    g = ar.GraphStore()
    g.add_entity("a")
    doc = json.loads(g.to_json())
    doc["version"] = 0
    with pytest.raises(ar.GraphError, match="version"):
        ar.GraphStore.from_json(json.dumps(doc))


def test_graph_round_trip_keeps_parallel_edges_unicode_and_properties() -> None:
    g = ar.GraphStore()
    g.add_entity("\U0001f600", "L\u00e9", {"x": [1, 2.5, None, True], "n": 2**63 - 1})
    g.add_entity("b\x00", "", None)
    g.add_relationship("\U0001f600", "b\x00", "k", 0.1)
    g.add_relationship("\U0001f600", "b\x00", "k", 0.1)
    g.add_relationship("\U0001f600", "b\x00", "\u2603", -0.0, {"p": {"q": "r"}})
    text = g.to_json()
    again = ar.GraphStore.from_json(text)
    assert again.to_json() == text


# --------------------------------------------------------------------------- episodic store


def _episodic_doc() -> dict:
    store = ar.EpisodicStore(clock=lambda: 10.0)
    store.add_episode("a", "first", 0.5)
    store.add_episode("b", "second", 0.25)
    store.add_episode("a", "third", 1.0)
    return json.loads(store.to_json())


def test_episodic_duplicate_agent_key_is_refused() -> None:
    doc = _episodic_doc()
    first_a = json.dumps(doc["by_agent"]["a"][:1])
    text = json.dumps(doc)
    # The same agent listed twice: one of the two lists would be dropped without a word.
    twice = text.replace('"by_agent": {', '"by_agent": {"a": ' + first_a + ", ", 1)
    assert twice != text
    with pytest.raises(ar.MemoryStoreError, match="listed twice"):
        ar.EpisodicStore.from_json(twice)


def test_episodic_round_trip_keeps_everything() -> None:
    now = [5.0]
    store = ar.EpisodicStore(
        decay=ar.DecayPolicy.exponential(3.5),
        recall_policy=ar.RecallPolicy.hybrid(0.25, 0.75),
        per_agent_capacity=4,
        clock=lambda: now[0],
        similarity_weight=0.5,
    )
    store.add_episode("\U0001f600", "c\u00e9\x00", 0.125, np.array([3.0, 4.0], np.float32))
    store.add_episode("z", "x" * 1000, 1.0)
    now[0] = 7.25
    store.recall("\U0001f600", 1)
    text = store.to_json()
    again = ar.EpisodicStore.from_json(text, clock=lambda: now[0])
    assert again.to_json() == text
    assert again.recall("\U0001f600", 5, counted=False)[0].recall_count == 1
