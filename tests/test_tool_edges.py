"""Tools: keys written alike inside converted results, numpy scalar results, path aliases,
an inherited `__init__`, what a registry is made of, a lone surrogate beside a bad argument."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Annotated, Any

import pytest
from pydantic import AliasChoices, AliasPath, Field

import llm_agent_runtime as ar


async def _rendered(result: object) -> str:
    obs = await ar.ToolRegistry([ar.ToolSpec("give", "d", lambda a: result)]).call("give", {})
    assert obs.ok
    return obs.content


@dataclasses.dataclass
class _Counts:
    by_id: dict[Any, str]


@pytest.mark.parametrize(
    "result",
    [
        _Counts({1: "int", "1": "text"}),
        [_Counts({None: "none", "null": "text"})],
        {"outer": _Counts({2: "int", "2": "text"})},
    ],
    ids=["dataclass", "dataclass-in-list", "dataclass-in-dict"],
)
async def test_keys_written_alike_inside_a_converted_object_show_the_result_by_its_text(
    result: object,
) -> None:
    # `json` wrote both keys ('{"by_id": {"1": "int", "1": "text"}}'): a reader keeps one.
    text = await _rendered(result)
    assert text == str(result)


async def test_keys_written_alike_inside_a_numpy_object_array_show_it_by_its_text() -> None:
    np = pytest.importorskip("numpy")
    array = np.empty(1, dtype=object)
    array[0] = {3: "int", "3": "text"}
    assert await _rendered(array) == str(array)


async def test_non_str_keys_apart_inside_a_converted_object_stay_json() -> None:
    text = await _rendered([_Counts({1: "a", None: "b"})])
    assert json.loads(text) == [{"by_id": {"1": "a", "null": "b"}}]


async def _path_alias_tool(
    query: Annotated[str, Field(validation_alias=AliasPath("q"))],
    limit: int = Field(3, validation_alias=AliasChoices(AliasPath("n"), "count")),
) -> str:
    return f"{query}:{limit}"


async def test_a_path_alias_is_shown_by_the_key_validation_takes() -> None:
    spec = ar.tool(_path_alias_tool)
    # Not the internal field names ("f0", "f1") the validation refuses.
    assert list(spec.parameters["properties"]) == ["q", "n"]
    assert spec.parameters["required"] == ["q"]
    registry = ar.ToolRegistry([spec])
    assert await registry.call(spec.name, {"q": "x", "n": 5}) == ("x:5", None)
    assert await registry.call(spec.name, {"q": "x"}) == ("x:3", None)


async def test_a_path_alias_into_a_nested_value_is_refused_naming_the_parameter() -> None:
    async def nested(limit: Annotated[int, Field(validation_alias=AliasPath("cfg", "n"))]) -> int:
        return limit

    with pytest.raises(ar.ToolError, match="'limit'"):
        ar.tool(nested)


@dataclasses.dataclass
class _Point:
    x: int
    y: int


class _Marker:
    def __init__(self, at: _Point, label: str = "") -> None:
        self.at, self.label = at, label

    def __repr__(self) -> str:
        return f"{self.label}@{self.at.x},{self.at.y}"


class _Pin(_Marker):
    """Pins a point (its `__init__` is its base's, its annotations strings)."""


async def test_a_class_with_an_inherited_init_resolves_its_string_annotations() -> None:
    spec = ar.tool(_Pin)
    assert list(spec.parameters["properties"]) == ["at", "label"]
    obs = await ar.ToolRegistry([spec]).call("_Pin", {"at": {"x": 1, "y": 2}, "label": "p"})
    assert obs == ("p@1,2", None)


_LONE = ar.ToolSpec("lone", "d", lambda a: None)


@pytest.mark.parametrize("tools", [_LONE, None, 3], ids=["a-lone-tool", "none", "int"])
def test_a_registry_of_what_is_no_list_of_tools_is_a_tool_error(tools: Any) -> None:
    with pytest.raises(ar.ToolError, match="tools must be a list of ToolSpec"):
        ar.ToolRegistry(tools)


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda np: np.float32("nan"), "nan"),
        (lambda np: np.float16("-inf"), "-inf"),
        (lambda np: np.array(np.nan, dtype=np.float32), "nan"),
        (lambda np: np.complex64(1 + 2j), "(1+2j)"),
        (lambda np: np.datetime64("2024-01-02"), "2024-01-02"),
    ],
    ids=["float32-nan", "float16-inf", "0d-array-nan", "complex64", "datetime64"],
)
async def test_a_numpy_scalar_result_is_shown_as_its_python_value(
    make: Callable[[Any], object], text: str
) -> None:
    np = pytest.importorskip("numpy")
    # As `float("nan")`, `complex(1, 2)` or a `date` are shown: not as a quoted JSON string.
    assert await _rendered(make(np)) == text
    assert await _rendered(np.float32(1.5)) == "1.5"
    assert await _rendered(np.array([np.float32("nan"), 2], dtype=np.float32)) == '["nan", 2.0]'


async def _count(times: int, note: str) -> str:
    return note * times


async def test_a_wrong_argument_beside_a_lone_surrogate_is_named_not_called_invalid_json() -> None:
    # A reply's broken escape may leave half a surrogate pair in a string argument: the
    # JSON-mode retry cannot parse that, and its error must not hide the real one.
    obs = await ar.ToolRegistry([ar.tool(_count)]).call("_count", {"times": "x", "note": "\ud83d"})
    assert obs.error_kind == "permanent"
    assert "times" in obs.content and "valid integer" in obs.content
    assert "Invalid JSON" not in obs.content


async def test_an_ellipsis_default_is_required_as_the_schema_says() -> None:
    # The schema said required, but an omitted argument passed validation and the function
    # got Ellipsis.
    @ar.tool
    def scale(x: int = ...) -> str:  # type: ignore[assignment]
        """Shows x."""
        return repr(x)

    assert scale.parameters["required"] == ["x"]
    registry = ar.ToolRegistry([scale])
    missing = await registry.call("scale", {})
    assert missing.error_kind == "permanent" and "x" in missing.content
    assert (await registry.call("scale", {"x": 3})).content == "3"


@pytest.mark.parametrize("nest", [lambda m: m, lambda m: {"data": [m]}], ids=["alone", "nested"])
async def test_a_mock_result_is_shown_by_its_text_at_once(nest: Any) -> None:
    # A mock's `tolist()` gives a new mock, whose `tolist()` gives another: followed a
    # thousand levels deep, rendering took seconds, the event loop blocked all along (a
    # tool returning a patched client's reply, in a user's test).
    from unittest import mock

    reply = mock.MagicMock(name="client.get().json()")
    registry = ar.ToolRegistry([ar.ToolSpec("fetch", "d", lambda a: nest(reply))])
    observation = await registry.call("fetch", {})
    assert observation.ok and "client.get().json()" in observation.content
    assert reply.tolist.call_count == 1
    assert reply.tolist.return_value.tolist.call_count == 0  # not followed
