"""`VectorIndex.search_batch` stops on Ctrl-C: thousands of queries against a big index take
seconds, and the KeyboardInterrupt used to come only once the whole batch was done."""

from __future__ import annotations

import _thread
import gc
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

import llm_agent_runtime as ar


def _ctrl_c_delay(run: Callable[[], object]) -> float:
    """Seconds from a Ctrl-C (sent by a timer thread while `run` is called over and over) to
    the KeyboardInterrupt in the main thread."""
    sent: list[float] = []

    def ctrl_c() -> None:
        sent.append(time.perf_counter())
        _thread.interrupt_main()

    timer = threading.Timer(0.1, ctrl_c)
    # No collections meanwhile: a KeyboardInterrupt raised in a gc callback (hypothesis
    # leaves one installed) or a finalizer cannot propagate, and the Ctrl-C would be lost.
    collecting = gc.isenabled()
    gc.disable()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            give_up = time.perf_counter() + 60.0
            while time.perf_counter() < give_up:
                run()
        raised = time.perf_counter()
    finally:
        timer.cancel()
        timer.join()
        if collecting:
            gc.enable()
    return raised - sent[0]


@pytest.mark.parametrize(("dtype", "queries"), [("float32", 6000), ("int8", 1500)])
def test_a_big_batch_stops_soon_after_ctrl_c_and_the_index_stays_usable(
    dtype: str, queries: int
) -> None:
    rng = np.random.default_rng(0)
    n, dim = 100_000, 64
    index = ar.VectorIndex(dim, dtype=dtype)
    index.add(np.arange(n), rng.standard_normal((n, dim), dtype=np.float32))
    batch = rng.standard_normal((queries, dim), dtype=np.float32)
    started = time.perf_counter()
    index.search_batch(batch, 10)
    whole = time.perf_counter() - started
    delay = _ctrl_c_delay(lambda: index.search_batch(batch, 10))
    # A batch here takes most of a second or more (the Ctrl-C waited for its end); a stop
    # waits for a block of rows (fused float32 scan) or a query (int8) at most.
    assert delay < 0.25, (delay, whole)
    assert len(index) == n
    ids, _ = index.search_batch(batch[:3], 1)
    assert ids.shape == (3, 1)
