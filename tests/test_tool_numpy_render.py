"""A tool's float32 and float16 numpy results are shown as numpy shows them (`0.1`).

`tolist()` widens such a number to a Python float, whose text has float64's digits
(`0.10000000149011612`): the model saw a value the tool never meant. float64 and integer
values, NaN and infinities are shown as before.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

import llm_agent_runtime as ar

np = pytest.importorskip("numpy")


async def _rendered(result: object) -> str:
    obs = await ar.ToolRegistry([ar.ToolSpec("give", "d", lambda a: result)]).call(
        "give", {}, max_chars=1_000_000
    )
    assert obs.ok
    return obs.content


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda: np.float32(0.1), "0.1"),
        (lambda: np.float16(0.1), "0.1"),
        (lambda: np.float32(1e20), "1e+20"),
        (lambda: np.float32(-0.0), "-0.0"),
        (lambda: np.array(np.float32(0.3)), "0.3"),
        (lambda: np.array([0.1, 0.2], dtype=np.float32), "[0.1, 0.2]"),
        (lambda: np.array([[0.1], [0.7]], dtype=np.float16), "[[0.1], [0.7]]"),
        (lambda: np.array([], dtype=np.float32), "[]"),
        (lambda: {"scores": np.array([0.1, 0.2], dtype=np.float32)}, '{"scores": [0.1, 0.2]}'),
        (lambda: [np.float32(0.1), {"m": np.float16(0.2)}], '[0.1, {"m": 0.2}]'),
        (lambda: (np.array([0.1], dtype=np.float32),), "[[0.1]]"),
    ],
    ids=[
        "float32",
        "float16",
        "float32-large",
        "float32-negative-zero",
        "0d-array",
        "array",
        "2d-float16-array",
        "empty-array",
        "array-in-dict",
        "scalars-in-structures",
        "array-in-tuple",
    ],
)
async def test_a_float32_or_float16_value_is_shown_as_numpy_shows_it(
    make: Callable[[], object], text: str
) -> None:
    assert await _rendered(make()) == text


async def test_each_float32_reads_back_as_the_same_number() -> None:
    rng = np.random.default_rng(0)
    scale = np.float32(10) ** rng.integers(-40, 38, 2000).astype(np.float32)
    values = rng.standard_normal(2000).astype(np.float32) * scale
    shown = json.loads(await _rendered(values))
    assert np.array_equal(np.array(shown, dtype=np.float32), values)
    # The shortest text for each: numpy's own.
    assert [float(str(v)) for v in values] == shown


async def test_an_object_array_of_float32_scalars_shows_each_as_numpy_does() -> None:
    array = np.empty(2, dtype=object)
    array[:] = [np.float32(0.1), "x"]
    assert await _rendered(array) == '[0.1, "x"]'
    assert await _rendered({"a": array}) == '{"a": [0.1, "x"]}'


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda: np.float64(0.1), "0.1"),
        (lambda: np.array([0.1, 1 / 3]), "[0.1, 0.3333333333333333]"),
        (lambda: np.array([1, 2], dtype=np.int32), "[1, 2]"),
        (lambda: np.int64(7), "7"),
        (lambda: {"x": np.array([1 / 3])}, '{"x": [0.3333333333333333]}'),
        (lambda: np.float32("nan"), "nan"),
        (lambda: np.float16("-inf"), "-inf"),
        (lambda: np.array(np.nan, dtype=np.float32), "nan"),
        (lambda: np.array([np.nan, np.inf, 0.1], dtype=np.float32), '["nan", "inf", 0.1]'),
        (lambda: {"v": np.float32("inf")}, '{"v": "inf"}'),
        (lambda: np.complex64(1 + 2j), "(1+2j)"),
    ],
    ids=[
        "float64",
        "float64-array",
        "int-array",
        "int64",
        "float64-array-in-dict",
        "float32-nan",
        "float16-inf",
        "0d-nan",
        "nan-and-inf-in-array",
        "inf-in-dict",
        "complex64",
    ],
)
async def test_other_numpy_values_and_nan_are_shown_as_before(
    make: Callable[[], object], text: str
) -> None:
    assert await _rendered(make()) == text


def test_rendering_a_plain_result_does_not_import_numpy() -> None:
    code = textwrap.dedent(
        """
        import asyncio, sys
        import llm_agent_runtime as ar
        spec = ar.ToolSpec("give", "d", lambda a: {"a": [1, 2.5, "x"], "b": (None, True)})
        obs = asyncio.run(ar.ToolRegistry([spec]).call("give", {}))
        assert obs.content == '{"a": [1, 2.5, "x"], "b": [null, true]}', obs
        print("numpy" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


async def test_long_doubles_are_shown_as_numbers_not_as_their_elided_text() -> None:
    # `tolist()` left them numpy numbers, which JSON cannot write: the whole result fell
    # back to `str`, which elides a long array's middle (`...`).
    values = np.arange(2000, dtype=np.longdouble) / 4
    text = await _rendered({"samples": values})
    assert json.loads(text) == {"samples": [i / 4 for i in range(2000)]}
    assert await _rendered(values[:3]) == "[0.0, 0.25, 0.5]"
    assert await _rendered(np.longdouble(0.1)) == "0.1"
