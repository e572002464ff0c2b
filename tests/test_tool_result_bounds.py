"""A tool's result far longer than the observation limit is rendered only as far as the
model is shown it: the same text, without rendering millions of rows to cut them."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import llm_agent_runtime as ar
from llm_agent_runtime._core import shown_part
from llm_agent_runtime.tools import _render, _rendered_to_show, _truncate

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(0, 9)  # one character each: the fewest a value takes
    | st.integers()
    | st.floats()  # NaN and the infinities too: they change how the whole is written
    | st.text(max_size=12)  # escapes, non-ASCII, lone surrogates
    | st.binary(max_size=6)
    | hnp.arrays(
        st.sampled_from([np.int8, np.int64, np.float32, np.float64]),
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=12),
    )
)
_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=40)
        | st.lists(inner, max_size=8).map(tuple)
        # Keys of one kind: `1` and "1" in one dict make the whole result's text its `str`,
        # which a part without one of them is not (what lies past the part is not looked at).
        | st.dictionaries(st.text(max_size=4), inner, max_size=6)
        | st.dictionaries(st.integers(-3, 3), inner, max_size=6)
    ),
    max_leaves=120,
)


def _observed(result: Any, max_chars: int) -> str:
    return _truncate(_render(result), max_chars)


@settings(max_examples=400, deadline=None)
@given(_values, st.integers(16, 120))
def test_the_part_shown_reads_as_the_whole_result_cut(value: Any, max_chars: int) -> None:
    shown = _truncate(_rendered_to_show(value, max_chars), max_chars)
    assert shown == _observed(value, max_chars)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(), min_size=1, max_size=30), st.integers(16, 60))
def test_a_result_that_fits_is_rendered_whole(value: list[int], max_chars: int) -> None:
    if len(_render(value)) <= max_chars:
        assert shown_part(value, max_chars) is None


class Counted:
    """An item whose text (`str`) counts how often it was made."""

    made = 0

    def __str__(self) -> str:
        Counted.made += 1
        return "item"


async def test_a_huge_result_renders_only_what_the_observation_shows() -> None:
    rows = [{"id": i, "item": Counted()} for i in range(1_000_000)]

    @ar.tool
    def query() -> dict[str, Any]:
        """Every row."""
        return {"total": len(rows), "rows": rows}

    Counted.made = 0
    observation = await ar.ToolRegistry([query]).call("query", {}, max_chars=200)
    assert observation.ok
    assert observation.content.startswith('{"total": 1000000, "rows": [{"id": 0, "item": "item"}')
    assert observation.content.endswith(" …[truncated]") and len(observation.content) == 200
    assert 0 < Counted.made < 200 // 3  # rows past the first few were never made text


@pytest.mark.parametrize("shape", [(4_000_000,), (20_000, 384), (50, 60, 70)])
async def test_a_huge_array_renders_only_what_the_observation_shows(
    shape: tuple[int, ...],
) -> None:
    array = np.arange(math.prod(shape), dtype=np.float32).reshape(shape) / 7

    @ar.tool
    def embed() -> Any:
        """The array."""
        return array

    observation = await ar.ToolRegistry([embed]).call("embed", {}, max_chars=500)
    corner = array[tuple(slice(0, 200) for _ in shape)]  # more than 500 characters' worth
    assert observation.content == _observed(corner, 500)
    assert observation.content.startswith("[" * len(shape) + "0.0, 0.14285715, ")


def test_a_result_holding_itself_is_left_whole() -> None:
    looped: list[Any] = [1, 2]
    looped.append(looped)
    assert shown_part(looped, 10) is None
    assert _observed(looped, 100) == "[1, 2, [...]]"  # its `str`, as before


def test_a_result_nested_too_deep_to_walk_is_left_whole() -> None:
    deep: list[Any] = []
    for _ in range(5_000):
        deep = [deep]
    assert shown_part(deep, 100_000) is None


@pytest.mark.parametrize(
    "result",
    [
        [i % 2 for i in range(3000)],  # one character an item
        [[(r + c) % 2 for c in range(7)] for r in range(500)],
        [[i % 10, (i * 7) % 10] for i in range(1000)],
        {"total": 3000, "bits": [i % 2 for i in range(3000)]},
        [[[[[[1]]]]]] * 1000,
        {"summary": "s" * 4003, "features": np.zeros((5, 0))},
        ["a" * 4003, np.empty((3, 0)), 1],
        [np.arange(3, dtype=np.int8) for _ in range(2000)],
    ],
    ids=["flags", "board", "points", "nested flags", "deep", "empty array", "empty 2", "arrays"],
)
def test_results_of_short_items_read_as_cut(result: Any) -> None:
    # Counted a character too many each, the part shown was shorter than the limit: no
    # truncation mark, and its last row cut short (`[4]` for `[4, 8]`), read as complete.
    assert _truncate(_rendered_to_show(result, 4000), 4000) == _observed(result, 4000)


class AttrDict(dict[str, Any]):
    """A dict whose attributes are its items (`__getattr__` raises KeyError)."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


async def test_a_dict_subclass_reading_attributes_as_items_is_rendered() -> None:
    # Asked for its `shape`, it raised KeyError: the call failed to render.
    @ar.tool
    def users() -> Any:
        """Users."""
        return [AttrDict(id=7, name="Ada")] * 2

    observation = await ar.ToolRegistry([users]).call("users", {})
    assert observation == ar.Observation('[{"id": 7, "name": "Ada"}, {"id": 7, "name": "Ada"}]')


@pytest.mark.parametrize("max_chars", [sys.maxsize, 2**63, 10**20])
async def test_a_limit_past_what_can_be_counted_shows_every_result_whole(max_chars: int) -> None:
    # Past 2**63 - 1 the walk's count overflowed: every list or dict result failed.
    @ar.tool
    def count() -> dict[str, int]:
        """A count."""
        return {"count": 3}

    observation = await ar.ToolRegistry([count]).call("count", {}, max_chars=max_chars)
    assert observation == ar.Observation('{"count": 3}')


@pytest.mark.parametrize("stand_in", ["None", "types.ModuleType('numpy')"])
def test_a_blocked_or_stubbed_numpy_is_not_called(stand_in: str) -> None:
    # numpy's C API was asked for whenever `sys.modules` named numpy: with None there (how
    # tests block it) or a stub, the Rust core panicked and every result failed to render.
    code = textwrap.dedent(
        f"""
        import asyncio, sys, types
        sys.modules["numpy"] = {stand_in}
        import llm_agent_runtime as ar
        spec = ar.ToolSpec("give", "d", lambda a: {{"count": [3] * 2000}})
        obs = asyncio.run(ar.ToolRegistry([spec]).call("give", {{}}, max_chars=100))
        print(obs.error_kind, obs.content[:20])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == 'None {"count": [3, 3, 3,'
    assert "panicked" not in out.stderr


def test_a_deep_result_on_a_small_thread_stack() -> None:
    # The walk went one Rust call deeper a level: 300 levels crashed a thread of 128 KiB.
    deep: Any = "x" * 5000
    for _ in range(450):
        deep = {"k": deep}
    texts: list[str] = []
    previous = threading.stack_size(128 * 1024)
    try:
        worker = threading.Thread(target=lambda: texts.append(_rendered_to_show(deep, 4000)))
        worker.start()
        worker.join()
    finally:
        threading.stack_size(previous)
    assert _truncate(texts[0], 4000) == _observed(deep, 4000)


def test_a_part_whose_text_falls_back_to_str_gives_the_whole_results() -> None:
    # Keys written alike (1 and "1") make the text `str`: of the part, numpy wrote the
    # array's slice whole, which read as the complete array; the whole's elides it.
    result = {1: "one", "1": "uno", "data": np.zeros(1_000_000)}
    assert _truncate(_rendered_to_show(result, 4000), 4000) == _observed(result, 4000)
    assert "shape=(1000000,)" in _rendered_to_show(result, 4000)
