"""VectorIndex searches with a huge k ("all rows") over a large index.

Every task of a parallel scan used to make its heap room for k hits (the whole index), not for
the rows it scans, and the tasks' heaps were merged into more heaps of k, all allocated
infallibly. So search and search_batch needed several times the memory their check (one set of
heaps) allowed for, and aborted the interpreter (SIGABRT, "memory allocation failed") instead of
raising MemoryStoreError or returning. An address-space limit (RLIMIT_AS, set in a child
interpreter) stands in for a machine with that much free memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="needs RLIMIT_AS as Linux has it")

CHILD_SECONDS = 60

# Runs in a child interpreter: an index of ROWS x DIM float32 rows, then, with the address
# space limited to what the process uses plus ROOM MiB, one search (mode "search") or a batch
# of QUERIES (mode "batch") with k beyond 64 bits; prints what it got as JSON.
HUGE_K_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    import llm_agent_runtime as ar

    mode, rows, dim, queries, room = sys.argv[1], *map(int, sys.argv[2:])
    index = ar.VectorIndex(dim)
    rng = np.random.default_rng(0)
    index.add(np.arange(rows), rng.standard_normal((rows, dim)).astype(np.float32))
    qs = rng.standard_normal((queries, dim)).astype(np.float32)
    q = qs[0].copy()
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmSize"))
    limit = int(line.split()[1]) * 1024 + room * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        if mode == "batch":
            ids, scores = index.search_batch(qs, 2**70)
        else:
            ids, scores = index.search(q, 2**70)
        ok = bool(np.all(np.diff(scores, axis=-1) <= 0))
        print(json.dumps({"shape": list(ids.shape), "sorted": ok}))
    except ar.AgentRuntimeError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
    """
)


def run_huge_k(mode: str, rows: int, dim: int, queries: int, room_mib: int) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, "-c", HUGE_K_SCRIPT, mode, *map(str, (rows, dim, queries, room_mib))],
        capture_output=True,
        text=True,
        timeout=CHILD_SECONDS,
        # As in test_vector_save_memory: without mimalloc's 1 GiB reservations the limit binds.
        env={**os.environ, "RUST_BACKTRACE": "0", "MIMALLOC_ARENA_RESERVE": "0"},
        check=False,
    )
    assert child.returncode == 0, (
        f"child exited with {child.returncode}: {child.stderr.strip()[-500:]}"
    )
    result: dict[str, Any] = json.loads(child.stdout)
    return result


@linux_only
def test_search_with_huge_k_needs_one_heap_not_one_per_task() -> None:
    # 4M one-dimensional rows: the ranked result (64 MB of heap) fits the room several
    # times over, but the old scan made 2 heaps of 4M hits per thread.
    got = run_huge_k("search", 4_000_000, 1, 1, 360)
    assert got == {"shape": [4_000_000], "sorted": True}


@linux_only
def test_search_batch_with_huge_k_needs_one_set_of_heaps_not_one_per_task() -> None:
    # 1,024 queries x 16,384 rows: 268 MB of heaps, results 201 MB; the old batch made a
    # set of 1,024 heaps of 16,384 hits for each of 4 tasks per thread, and as many again
    # to merge them (over 2.4 GB).
    got = run_huge_k("batch", 16_384, 4, 1_024, 1_200)
    assert got == {"shape": [1_024, 16_384], "sorted": True}


@linux_only
@pytest.mark.parametrize(
    ("mode", "rows", "queries", "room_mib"),
    [
        ("search", 4_000_000, 1, 100),
        ("search", 4_000_000, 1, 200),
        ("batch", 16_384, 1_024, 450),
        ("batch", 16_384, 1_024, 550),
        ("batch", 16_384, 1_024, 600),
    ],
)
def test_huge_k_without_the_memory_is_a_memory_error_not_an_abort(
    mode: str, rows: int, queries: int, room_mib: int
) -> None:
    dim = 1 if mode == "search" else 4
    got = run_huge_k(mode, rows, dim, queries, room_mib)
    if "error" in got:
        assert got["error"] == "MemoryStoreError", got
        assert "out of memory" in got["message"], got
    else:
        assert got["sorted"], got
