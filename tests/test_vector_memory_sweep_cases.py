"""VectorIndex, EpisodicStore and WorkingMemory: defects found by a sweep of their edges.

* search_batch over a float32 index of long vectors: every scan task allocated scratch for
  128 packed rows of the index's dimension, whatever the index held, infallibly: a batch of
  two queries over a two-row index of 2**20 dimensions (8 MiB of vectors) asked for 512 MiB
  more and aborted the interpreter (SIGABRT) where that memory was not to be had, instead
  of answering (it needs far less) or raising MemoryStoreError.
* EpisodicStore.mark_recalled refused an id above 2**64 - 1 (no episode can have it) with
  "episode ids must be ints >= 0, got 18446744073709551616": a message the id it names
  meets, which left the caller guessing what was wrong; it now names both bounds.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
from test_vector_memory_limits import run_child

import llm_agent_runtime as ar

# Runs in a child interpreter: a float32 index of two rows of 2**20 dimensions, searched by
# a batch of two queries with the address space limited to what the process uses plus
# argv[1] MiB; prints the results (or the error) as JSON, with those of an unlimited search.
BATCH_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    import llm_agent_runtime as ar

    DIM = 1 << 20
    room = int(sys.argv[1]) << 20
    rng = np.random.default_rng(0)
    index = ar.VectorIndex(DIM)
    index.add([10, 20], rng.standard_normal((2, DIM), dtype=np.float32))
    queries = rng.standard_normal((2, DIM), dtype=np.float32)
    queries[1] = index.get(20) + 0.01 * queries[1]
    want = [a.tolist() for a in index.search_batch(queries, 5)]
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmSize"))
    limit = int(line.split()[1]) * 1024 + room
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        got = [a.tolist() for a in index.search_batch(queries, 5)]
        print(json.dumps({"want": want, "got": got}))
    except ar.AgentRuntimeError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="needs RLIMIT_AS as Linux has it")
def test_batch_search_of_long_vectors_needs_scratch_for_the_rows_it_has() -> None:
    # 384 MiB of room: the index is 8 MiB, the queries 8 MiB.
    result = run_child(BATCH_SCRIPT, "384")
    assert "error" not in result, result
    assert result["got"] == result["want"]
    ids, scores = result["got"]
    assert ids[1][0] == 20  # the second query is row 20 plus a little noise
    assert len(scores) == 2 and all(len(row) == 2 for row in scores)


@pytest.mark.skipif(sys.platform != "linux", reason="needs RLIMIT_AS as Linux has it")
def test_batch_search_without_room_for_its_scratch_is_a_memory_error() -> None:
    # 24 MiB of room: not enough for the packed rows (a panel of 2**20 dimensions), which
    # must be an error the caller can handle, not an abort of the interpreter.
    result = run_child(BATCH_SCRIPT, "24")
    assert result.get("error") == "MemoryStoreError", result
    assert "out of memory" in result["message"], result


@pytest.mark.parametrize("bad", [2**64, 2**70, -1])
def test_mark_recalled_names_the_range_of_episode_ids(bad: int) -> None:
    store = ar.EpisodicStore(clock=lambda: 0.0)
    first = store.add_episode("a", "x", 0.5)
    with pytest.raises(ar.MemoryStoreError) as raised:
        store.mark_recalled("a", [first, bad])
    message = str(raised.value)
    assert "at most 2**64 - 1" in message, message
    assert str(bad) in message, message
    # Nothing was marked: the ids are checked before any episode changes.
    assert store.episodes("a")[0].recall_count == 0
    assert store.mark_recalled("a", [first, 2**64 - 1]) == 1
