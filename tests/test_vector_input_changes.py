"""A numpy input changed while a `VectorIndex` call runs (another thread, or a `__del__`
run by the garbage collector) must not abort the interpreter: the call reads its own copy.

Each case runs in a child process, whose abort (SIGABRT) the test would see.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# The collector, run by an allocation after the scan, calls a `__del__` that views the
# input as float16 (same memory, another dtype) while the call still holds it.
_BY_COLLECTOR = """
import gc, sys
import numpy as np
import llm_agent_runtime as ar

method = sys.argv[1]
data = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
index = ar.VectorIndex(8)
index.add(np.arange(10), data)
arg = data[0].copy() if method == "search" else data[:3].copy()
want = getattr(index, method)(arg, 3)


class Flip:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it

    def __del__(self) -> None:
        arg.dtype = np.float16


gc.set_threshold(1)
answered = 0
for _ in range(300):
    arg.dtype = np.float32
    Flip()
    try:
        got = getattr(index, method)(arg, 3)
    except ar.MemoryStoreError:
        continue  # collected before the call read it: seen as float16, refused
    assert all((g == w).all() for g, w in zip(got, want)), (got, want)
    answered += 1
assert answered > 0
print("ok")
"""

# `add` waits for the write lock (GIL released) behind a search holding the read lock,
# while the main thread views its input as float16 and back.
_WHILE_ADD_WAITS = """
import threading, time
import numpy as np
import llm_agent_runtime as ar

dim = 256
index = ar.VectorIndex(dim)
rng = np.random.default_rng(0)
index.add(np.arange(20_000), rng.standard_normal((20_000, dim)).astype(np.float32))
rows = rng.standard_normal((64, dim)).astype(np.float32)
queries = rng.standard_normal((200, dim)).astype(np.float32)
done = threading.Event()


def search() -> None:
    while not done.is_set():
        index.search_batch(queries, 5)


added = 0


def add() -> None:
    global added
    # Until 20 calls have read the rows as float32 (the float16 views are refused).
    while added < 20 and time.monotonic() < deadline:
        try:
            index.add(np.arange(10**6, 10**6 + 64), rows)
            added += 1
        except ar.MemoryStoreError:
            pass  # seen as float16 when the call began: refused
    done.set()


deadline = time.monotonic() + 60
threading.Thread(target=search, daemon=True).start()
adder = threading.Thread(target=add)
adder.start()
while not done.is_set():
    rows.dtype = np.float16
    time.sleep(0.0005)
    rows.dtype = np.float32
    time.sleep(0.0005)
adder.join()
assert added == 20, added
got = index.get(10**6)
assert got is not None and np.allclose(got, rows[0] / np.linalg.norm(rows[0]), atol=1e-6)
print("ok")
"""


def _run(code: str, *args: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "ok"


@pytest.mark.parametrize("method", ["search", "search_batch"])
def test_a_query_changed_by_the_collector_mid_call(method: str) -> None:
    _run(_BY_COLLECTOR, method)


def test_rows_changed_while_add_waits_for_the_index() -> None:
    _run(_WHILE_ADD_WAITS)
