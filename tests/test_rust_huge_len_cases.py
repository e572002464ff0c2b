"""Sequences whose len() is huge, long sequences read item by item, and arguments whose repr
is deep, failing or huge, given to the Rust core.

A sequence such as ``range(2**62)`` made PyO3's list conversion (which reserves len() slots
up front) panic with "capacity overflow": a ``PanicException``, a ``BaseException`` that
``except Exception`` misses. The episodic store instead walked every item, for ever, and
Ctrl-C did not stop it. Each such call runs in a child process, so that a hang or a crash is
a failed test, not a stuck run.

Two error messages held the argument's full repr: a deeply nested list raised a bare
``RecursionError``, an object whose ``__repr__`` raises gave that exception, and a big list
made a message of megabytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

import llm_agent_runtime as ar

_PRELUDE = textwrap.dedent(
    """
    import itertools, signal, time
    import numpy as np
    import llm_agent_runtime as ar

    # A child started with SIGINT ignored (a background job's) would ignore Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    big = range(2**62)
    vi = ar.VectorIndex(4)
    g = ar.GraphStore()
    g.add_entity("a")
    store = ar.EpisodicStore()
    store.add_episode("a", "x", 0.5, embedding=[1.0] * 4)


    class RowsOf:
        def __init__(self, rows):
            self.rows = rows

        def embed(self, texts):
            return self.rows
    """
)


def _child(code: str, timeout: float = 10.0) -> str:
    """What `code` prints, run after the prelude in a fresh interpreter (killed, and the test
    failed, after `timeout` seconds)."""
    result = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        check=False,
    )
    return result.stdout.strip() or f"no output, exit code {result.returncode}: {result.stderr}"


_HUGE = {
    "VectorIndex.add ids": ("vi.add(big, np.ones((1, 4), np.float32))", "MemoryStoreError"),
    "VectorIndex.remove ids": ("vi.remove(big)", "MemoryStoreError"),
    "GraphStore.subgraph": ("g.subgraph(big)", "GraphError"),
    "GraphStore.add_entities": ("g.add_entities(big)", "GraphError"),
    "GraphStore.betweenness_from": ("g.betweenness_from(big)", "GraphError"),
    "GraphStore.modularity communities": ("g.modularity(big)", "GraphError"),
    "GraphStore.modularity one community": ("g.modularity([big])", "GraphError"),
    "HashingEmbedder.embed": ("ar.HashingEmbedder(8).embed(big)", "MemoryStoreError"),
    "EpisodicStore.add_episode embedding": (
        'store.add_episode("a", "y", 0.5, embedding=big)',
        "MemoryStoreError",
    ),
    "EpisodicStore.recall query": ('store.recall("a", query=big)', "MemoryStoreError"),
    "embedder rows": (
        'ar.EpisodicStore(embedder=RowsOf(big)).add_episode("a", "y", 0.5)',
        "MemoryStoreError",
    ),
    "embedder row": (
        'ar.EpisodicStore(embedder=RowsOf([big])).add_episode("a", "y", 0.5)',
        "MemoryStoreError",
    ),
}


@pytest.mark.parametrize("name", list(_HUGE))
def test_a_sequence_of_huge_len_is_a_typed_out_of_memory_error(name: str) -> None:
    call, expected = _HUGE[name]
    out = _child(
        f"""
        try:
            {call}
            print("returned")
        except ar.AgentRuntimeError as e:
            print(type(e).__name__, "out of memory" in str(e), len(str(e)) < 300)
        except BaseException as e:
            print("raised", type(e).__module__, type(e).__name__, e)
        """
    )
    assert out == f"{expected} True True", out


# Each would take seconds uninterrupted: Ctrl-C (a real SIGINT, as a terminal sends; a
# thread could not run to simulate it while the call holds the GIL) comes after 0.2 s.
_LONG = {
    # Walked item by item for values that are no real number, then read.
    "EpisodicStore.recall query": 'store.recall("a", query=range(3 * 10**7))',
    # An object array of one item, broadcast: long, and taking no memory.
    "VectorIndex.remove ids": "vi.remove(np.broadcast_to(np.array(5, dtype=object), (5 * 10**7,)))",
    "GraphStore.from_edge_list edges": (
        "ar.GraphStore.from_edge_list(1, itertools.repeat((0, 0), 3 * 10**7))"
    ),
    "GraphStore.add_relationships": 'g.add_relationships(itertools.repeat(("a", "a"), 10**7))',
}


@pytest.mark.parametrize("name", list(_LONG))
def test_reading_a_long_sequence_stops_on_ctrl_c(name: str) -> None:
    code = _PRELUDE + textwrap.dedent(
        f"""
        print("ready", flush=True)
        start = time.perf_counter()
        try:
            {_LONG[name]}
            print("returned")
        except KeyboardInterrupt:
            print("KeyboardInterrupt", time.perf_counter() - start < 1.0)
        except BaseException as e:
            print("raised", type(e).__name__, e)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(0.2)
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=20)
        finally:
            child.kill()
    assert out.strip() == "KeyboardInterrupt True", out + err


# ------------------------------------------------------------------ reprs in error messages


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr failed")


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


_BAD_REPRS: dict[str, Callable[[], object]] = {
    "deeply nested list": lambda: _nested(5000),
    "failing repr": BadRepr,
    "1M-item list": lambda: list(range(1_000_000)),
}
_REPR_SITES: dict[str, tuple[Callable[[Any], object], type[Exception], str]] = {
    "VectorIndex.get": (
        lambda v: ar.VectorIndex(4).get(v),
        ar.MemoryStoreError,
        "ids go from 0 to 2\\*\\*63 - 1, got",
    ),
    "HashingEmbedder char_ngrams": (
        lambda v: ar.HashingEmbedder(16, 2, v),
        TypeError,
        r"char_ngrams must be a \(min, max\) tuple of ints, got",
    ),
    "GraphStore.add_relationship weight": (
        lambda v: _graph().add_relationship("a", "b", "k", v),
        ar.GraphError,
        "relationship weight must be a real number, got",
    ),
    "GraphStore.from_edge_list index": (
        lambda v: ar.GraphStore.from_edge_list(2, [(0, v)]),
        ar.GraphError,
        "an edge index must be an int, got",
    ),
    "EpisodicStore clock": (
        lambda v: ar.EpisodicStore(clock=lambda: v).add_episode("a", "x", 0.5),
        ar.MemoryStoreError,
        "the clock returned a list|the clock returned a BadRepr",
    ),
    "EpisodicStore embedder": (
        lambda v: ar.EpisodicStore(embedder=v),
        ar.MemoryStoreError,
        "embedder must be an Embedder instance",
    ),
}


def _graph() -> ar.GraphStore:
    g = ar.GraphStore()
    g.add_entity("a")
    g.add_entity("b")
    return g


@pytest.mark.parametrize("value", list(_BAD_REPRS))
@pytest.mark.parametrize("site", list(_REPR_SITES))
def test_an_argument_error_shows_a_short_repr(site: str, value: str) -> None:
    call, error, message = _REPR_SITES[site]
    with pytest.raises(error, match=message) as raised:
        call(_BAD_REPRS[value]())
    assert len(str(raised.value)) < 300, str(raised.value)[:100]


def test_short_reprs_keep_their_text() -> None:
    with pytest.raises(ar.MemoryStoreError, match=r"ids go from 0 to 2\*\*63 - 1, got -1$"):
        ar.VectorIndex(4).get(-1)
    with pytest.raises(TypeError, match=r"tuple of ints, got \[1, 2, 3\]\n"):
        ar.HashingEmbedder(16, 2, [1, 2, 3])  # type: ignore[arg-type]
    long = "x" * 100
    with pytest.raises(ar.MemoryStoreError, match=r"got 'x{39}\.\.\.$") as raised:
        ar.VectorIndex(4).get(long)  # type: ignore[arg-type]
    assert len(str(raised.value)) < 100
