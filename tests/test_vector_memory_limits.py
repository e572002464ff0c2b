"""VectorIndex.save and .load under memory pressure, and file-backed copies after fork().

* save and load stream the file a chunk at a time: an index that fits in memory once but not
  twice saves and loads (they used to build or read the whole file in one buffer and copy it
  out, aborting the interpreter with SIGABRT when the second copy did not fit); one that does
  not fit even once raises MemoryStoreError. An address-space limit (RLIMIT_AS, set in a
  child interpreter) stands in for a machine whose free memory holds the index once.
* float32 copies kept in a file (originals_path) belong to the process that opened it: a
  fork()ed child that inherits the index gets PersistenceError for every use of them, so its
  writes can no longer change the parent's index through the shared file.
* a search with a huge k ("all rows") over a large index: every task of a parallel scan used
  to make its heap room for k hits (the whole index), not for the rows it scans, and the
  tasks' heaps were merged into more heaps of k, all allocated infallibly, so search and
  search_batch needed several times the memory their check allowed for and aborted the
  interpreter (SIGABRT) instead of raising MemoryStoreError or returning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="needs fork() and RLIMIT_AS as Linux has them"
)

CHILD_SECONDS = 60  # a child that takes longer has hung

# Runs in a child interpreter: builds and saves (modes "write", and "save" with the address
# space limited), or loads (modes "load", "load_tight", limited) an index of ROWS x DIM
# float32 (128 MiB), and prints what it did as JSON. A limit is what the process uses when
# it is set plus some room, and binds the save or load only: it is lifted before the index
# is searched, whose rayon threads may each map a 32 MiB mimalloc segment on first use (64
# MiB while it is aligned), which would make the test depend on thread scheduling. The room
# is three quarters of the index: a save or load that needs a second copy (128 MiB) fails,
# one that streams has room for the main thread's next segment.
MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, sys
    import numpy as np
    import llm_agent_runtime as ar

    ROWS, DIM = 131072, 256
    mode, path = sys.argv[1], sys.argv[2]
    HARD_LIMIT = resource.getrlimit(resource.RLIMIT_AS)[1]

    def limit_room(room):
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmSize"))
        limit = int(line.split()[1]) * 1024 + room
        resource.setrlimit(resource.RLIMIT_AS, (limit, HARD_LIMIT))

    def lift_limit():
        resource.setrlimit(resource.RLIMIT_AS, (HARD_LIMIT, HARD_LIMIT))

    def summary(index):
        query = np.ones(DIM, np.float32)
        ids, scores = index.search(query, 3)
        rows = [index.get(i).tolist()[:4] for i in (0, ROWS // 2, ROWS - 1)]
        return {"len": len(index), "ids": ids.tolist(), "scores": scores.tolist(),
                "rows": rows}

    try:
        if mode in ("write", "save"):
            index = ar.VectorIndex(DIM)
            data = np.random.default_rng(0).random((ROWS, DIM), dtype=np.float32)
            index.add(np.arange(ROWS), data - 0.5)
            del data
            if mode == "save":
                limit_room(index.nbytes * 3 // 4)  # three quarters of a second copy
            index.save(path)
            lift_limit()
            print(json.dumps({"saved": summary(index)}))
        else:
            size = os.path.getsize(path)
            # The index and three quarters of a second copy, or half of the index.
            limit_room(size + size * 3 // 4 if mode == "load" else size // 2)
            loaded = ar.VectorIndex.load(path)
            lift_limit()
            print(json.dumps({"loaded": summary(loaded)}))
    except ar.AgentRuntimeError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
    """
)


def run_child(script: str, *args: str) -> dict[str, Any]:
    """Runs `script` in a child interpreter; its JSON output. Fails when it dies of a
    signal (SIGABRT from a failed allocation) or exits with an error."""
    child = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=CHILD_SECONDS,
        # mimalloc reserves address space 1 GiB at a time and serves later allocations from
        # it: the limit would not bind. Without the reservation, allocations map memory as
        # they are made, and the limit stands for the machine's free memory.
        env={**os.environ, "RUST_BACKTRACE": "0", "MIMALLOC_ARENA_RESERVE": "0"},
        check=False,
    )
    assert child.returncode == 0, (
        f"child exited with {child.returncode}: {child.stderr.strip()[-500:]}"
    )
    result: dict[str, Any] = json.loads(child.stdout)
    return result


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """An index file saved without a limit, and what its index held."""
    path = str(tmp_path_factory.mktemp("index") / "big.bin")
    return path, run_child(MEMORY_SCRIPT, "write", path)["saved"]


def test_an_index_that_fits_once_but_not_twice_saves(
    tmp_path: Path, written: tuple[str, dict[str, Any]]
) -> None:
    path = tmp_path / "big.bin"
    assert run_child(MEMORY_SCRIPT, "save", str(path)) == {"saved": written[1]}
    assert path.read_bytes() == Path(written[0]).read_bytes()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_an_index_that_fits_once_but_not_twice_loads(written: tuple[str, dict[str, Any]]) -> None:
    path, held = written
    assert held["len"] == 131072
    assert run_child(MEMORY_SCRIPT, "load", path) == {"loaded": held}


def test_an_index_that_does_not_fit_once_is_a_memory_error(
    written: tuple[str, dict[str, Any]],
) -> None:
    path = written[0]
    tight = run_child(MEMORY_SCRIPT, "load_tight", path)
    assert tight["error"] == "MemoryStoreError", tight
    assert tight["message"].startswith(f"cannot load {path}: out of memory"), tight


# Runs in a child interpreter: an int8 index with its float32 copies in a file, forked; the
# forked child tries every use of the copies, and loads its own index from a saved file.
FORK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, warnings
    import numpy as np
    import llm_agent_runtime as ar

    folder = sys.argv[1]
    copies = os.path.join(folder, "copies.f32")
    index = ar.VectorIndex(4, dtype="int8", originals_path=copies)
    index.add([0, 1, 2], np.eye(3, 4, dtype=np.float32))
    index.save(os.path.join(folder, "index.bin"))
    query = np.array([1, 0, 0, 0], np.float32)

    def state():
        ids, scores = index.search(query, 3)
        with open(copies, "rb") as f:
            file = f.read().hex()
        return {"len": len(index), "get0": index.get(0).tolist(), "ids": ids.tolist(),
                "scores": scores.tolist(), "file": file}

    before = state()
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            calls = {
                "upsert": lambda: index.add([0], np.array([[0, 0, 0, 1]], np.float32)),
                "add": lambda: index.add([7], np.array([[0, 0, 1, 1]], np.float32)),
                "remove": lambda: index.remove([1]),
                "get": lambda: index.get(0),
                "search": lambda: index.search(query, 1),
                "save": lambda: index.save(os.path.join(folder, "child.bin")),
            }
            results = {}
            for name, call in calls.items():
                try:
                    call()
                    results[name] = "no error"
                except Exception as e:
                    results[name] = f"{type(e).__name__}: {e}"
            results["len"] = len(index)
            # The way out: an index of the child's own, loaded from the saved file.
            own = ar.VectorIndex.load(os.path.join(folder, "index.bin"),
                                      originals_path=os.path.join(folder, "child.f32"))
            own.add([0], np.array([[0, 0, 0, 1]], np.float32))
            results["own_get0"] = own.get(0).tolist()
            with os.fdopen(write_end, "w") as pipe:
                pipe.write(json.dumps(results))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = json.loads(pipe.read() or "{}")
    _, status = os.waitpid(pid, 0)
    after = state()
    index.add([0], np.array([[0, 1, 0, 0]], np.float32))  # the parent still writes
    print(json.dumps({"status": status, "child": child, "before": before, "after": after,
                      "parent_get0": index.get(0).tolist()}))
    """
)


def test_a_forked_child_cannot_use_the_parents_originals_file(tmp_path: Path) -> None:
    result = run_child(FORK_SCRIPT, str(tmp_path))
    assert result["status"] == 0
    child = result["child"]
    for call in ("upsert", "add", "remove", "get", "search", "save"):
        assert child[call].startswith("PersistenceError: cannot use the float32 copies"), (
            call,
            child[call],
        )
        assert "a fork() of it" in child[call] and "load the index again" in child[call]
    assert child["len"] == 3  # the refused remove changed nothing
    assert child["own_get0"] == [0.0, 0.0, 0.0, 1.0]
    # The parent's index, and its copies file, are as they were before the fork.
    assert result["after"] == result["before"]
    assert result["before"]["get0"] == [1.0, 0.0, 0.0, 0.0]
    assert result["before"]["ids"][0] == 0 and result["before"]["scores"][0] == 1.0
    assert result["parent_get0"] == [0.0, 1.0, 0.0, 0.0]
    assert not (tmp_path / "child.bin").exists()


def test_the_in_memory_copies_of_a_forked_child_are_its_own() -> None:
    """Without originals_path nothing is shared: the child's writes work, on its copy."""
    script = textwrap.dedent(
        """
        import json, os, warnings
        import numpy as np
        import llm_agent_runtime as ar

        index = ar.VectorIndex(4, dtype="int8", exact_rescore=True)
        index.add([0], np.array([[1, 0, 0, 0]], np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            index.add([0], np.array([[0, 0, 0, 1]], np.float32))
            os._exit(0 if index.get(0).tolist() == [0, 0, 0, 1] else 1)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status, "get0": index.get(0).tolist()}))
        """
    )
    assert run_child(script) == {"status": 0, "get0": [1.0, 0.0, 0.0, 0.0]}


# Runs in a child interpreter: an int8 index whose float32 copies live in a file grows, with
# little address space left, until an add is refused for memory; then, the limit lifted, a
# new vector is added and looked for.
GROWTH_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, sys
    import numpy as np
    import llm_agent_runtime as ar

    DIM, BATCH = 64, 1000
    path = sys.argv[1]
    index = ar.VectorIndex(DIM, dtype="int8", originals_path=path)
    rows = np.random.default_rng(0).standard_normal((BATCH, DIM)).astype(np.float32)
    next_id = 0
    for _ in range(20):
        index.add(np.arange(next_id, next_id + BATCH), rows)
        next_id += BATCH
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmSize"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    # Room for a batch's own buffers, not for the index's buffers to double.
    resource.setrlimit(resource.RLIMIT_AS, (int(line.split()[1]) * 1024 + 2**20, hard))
    refused = None
    try:
        for _ in range(1000):
            try:
                index.add(np.arange(next_id, next_id + BATCH), rows)
                next_id += BATCH
            except ar.MemoryStoreError as e:
                refused = str(e)
                break
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    unit = np.zeros(DIM, np.float32)
    unit[1] = 1.0
    index.add([10**9], unit[None, :])
    ids, scores = index.search(unit, 1)
    print(json.dumps({
        "refused": refused, "len": len(index), "added": next_id + 1,
        "file_rows": os.path.getsize(path) // (DIM * 4), "found": ids.tolist(),
        "score": float(scores[0]), "get": index.get(10**9).tolist()[:3],
    }))
    """
)


def test_an_add_refused_for_memory_leaves_the_copies_file_in_step(tmp_path: Path) -> None:
    # The copies were appended to the file before the index's own buffers grew: an add
    # refused then left the file rows ahead, and every later vector was re-scored (and
    # returned by get) against another vector's copy, silently.
    out = run_child(GROWTH_SCRIPT, str(tmp_path / "copies.f32"))
    assert out["refused"] is not None and "out of memory" in out["refused"], out
    assert out["len"] == out["added"] == out["file_rows"], out
    assert out["found"] == [10**9] and out["score"] == pytest.approx(1.0, abs=1e-6), out
    assert out["get"] == pytest.approx([0.0, 1.0, 0.0], abs=1e-6), out


# Runs in a child interpreter: an index of ROWS x DIM float32 rows, then, with the address
# space limited to what the process uses plus ROOM MiB, one search (mode "search") or a batch
# of QUERIES (mode "batch") with k beyond 64 bits; prints what it got as JSON. With a sixth
# argument of 1, the process runs on one CPU (so on one search thread, as in a container
# given one CPU); a seventh names the index's dtype (float32 by default). A small search
# before the limit starts the search threads, whose first allocations would otherwise map
# their allocator's segments under it.
HUGE_K_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, sys

    mode, rows, dim, queries, room, *rest = sys.argv[1], *sys.argv[2:]
    rows, dim, queries, room = map(int, (rows, dim, queries, room))
    if rest[:1] == ["1"]:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import numpy as np
    import llm_agent_runtime as ar

    index = ar.VectorIndex(dim, dtype=rest[1] if len(rest) > 1 else "float32")
    rng = np.random.default_rng(0)
    index.add(np.arange(rows), rng.standard_normal((rows, dim)).astype(np.float32))
    qs = rng.standard_normal((queries, dim)).astype(np.float32)
    q = qs[0].copy()
    index.search(q, 10)
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


def test_search_with_huge_k_needs_one_heap_not_one_per_task() -> None:
    # 4M one-dimensional rows: the ranked result (64 MB of heap) fits the room several
    # times over, but the old scan made 2 heaps of 4M hits per thread.
    got = run_child(HUGE_K_SCRIPT, "search", "4000000", "1", "1", "360")
    assert got == {"shape": [4_000_000], "sorted": True}


def test_search_batch_with_huge_k_needs_one_set_of_heaps_not_one_per_task() -> None:
    # 1,024 queries x 16,384 rows: 268 MB of heaps, results 201 MB; the old batch made a
    # set of 1,024 heaps of 16,384 hits for each of 4 tasks per thread, and as many again
    # to merge them (over 2.4 GB).
    got = run_child(HUGE_K_SCRIPT, "batch", "16384", "4", "1024", "1200")
    assert got == {"shape": [1_024, 16_384], "sorted": True}


@pytest.mark.parametrize(
    ("mode", "rows", "queries", "room_mib"),
    [
        ("search", 4_000_000, 1, 100),
        ("search", 4_000_000, 1, 200),
        # Well short of what the results and heaps take: their own (fallible) allocation is
        # what fails. Nearer the need, a big allocation may succeed and leave too little for
        # a small one that no allocator error can reach (a thread pool's, a Vec's).
        ("batch", 16_384, 1_024, 450),
    ],
)
def test_huge_k_without_the_memory_is_a_memory_error_not_an_abort(
    mode: str, rows: int, queries: int, room_mib: int
) -> None:
    dim = 1 if mode == "search" else 4
    got = run_child(HUGE_K_SCRIPT, mode, *map(str, (rows, dim, queries, room_mib)))
    if "error" in got:
        assert got["error"] == "MemoryStoreError", got
        assert "out of memory" in got["message"], got
    else:
        assert got["sorted"], got


@pytest.mark.parametrize(
    ("dtype", "room_mib", "fits"),
    [
        # On one thread a search scans into one heap of all 4M hits (64 MB), with no merge to
        # fail first: the ranking's stable sort then took 32 MB of scratch room, and the ids
        # (32 MB) and scores (16 MB) it returns were allocated infallibly, so the process
        # aborted where the heap fitted but they did not.
        ("float32", 80, False),
        ("float32", 100, False),
        ("float32", 200, True),
        # int8 re-scores a shortlist of all rows (64 MB) into a second heap of k hits, which
        # was allocated infallibly beside it.
        ("int8", 90, False),
        ("int8", 300, True),
    ],
)
def test_huge_k_on_one_cpu_is_a_memory_error_not_an_abort(
    dtype: str, room_mib: int, fits: bool
) -> None:
    got = run_child(HUGE_K_SCRIPT, "search", "4000000", "1", "1", str(room_mib), "1", dtype)
    if fits:
        assert got == {"shape": [4_000_000], "sorted": True}
    else:
        assert got["error"] == "MemoryStoreError", got
        assert got["message"].startswith("out of memory"), got
