"""What `@tool` makes of signatures real tools have: an Enum of tuples, a partial fixing a
client typed for type checkers only, a Literal of Enum members, typed `**kwargs`."""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import TYPE_CHECKING, Any, Literal

import pytest

import llm_agent_runtime as ar

if TYPE_CHECKING:
    from httpx import AsyncClient  # for type checkers only: never resolvable at run time


class Size(enum.Enum):
    SMALL = (640, 480)
    LARGE = (1920, 1080)


class Prio(enum.Enum):
    LOW = 1
    HIGH = 2


class Ratio(enum.Enum):
    HALF = 0.5
    ONE = 1.0


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0


def _arrays(node: Any) -> list[dict[str, Any]]:
    """Every schema node of `node` whose type allows an array."""
    found, stack = [], [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == "array":
                found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


async def test_an_enum_of_tuples_is_an_array_with_items() -> None:
    # `{"type": "array", "enum": [[640, 480], ...]}` had no `items`: OpenAI and Gemini
    # refuse the whole request ("array schema missing items").
    @ar.tool
    def screenshot(size: Size = Size.SMALL, nothing: tuple[()] = ()) -> str:
        """Takes a screenshot."""
        return size.name

    arrays = _arrays(screenshot.definition()["parameters"])
    assert len(arrays) == 2 and all("items" in node for node in arrays)
    registry = ar.ToolRegistry([screenshot])
    assert await registry.call("screenshot", {"size": [1920, 1080]}) == ("LARGE", None)


async def test_a_partials_fixed_argument_needs_no_resolvable_annotation() -> None:
    # The client's type, imported under TYPE_CHECKING, was resolved all the same: a
    # ToolError, though a fixed argument is neither shown nor checked.
    async def fetch(url: str, client: AsyncClient) -> str:
        """Fetches a URL."""
        return f"{client} fetched {url}"

    spec = ar.tool(functools.partial(fetch, client="the client"), name="fetch")
    assert list(spec.parameters["properties"]) == ["url"]
    result = await ar.ToolRegistry([spec]).call("fetch", {"url": "http://x"})
    assert result == ("the client fetched http://x", None)


async def test_a_literal_of_int_enum_members_takes_an_integral_float() -> None:
    # JSON has one number type: 2.0 was refused, as neither member, where `Prio` takes it.
    @ar.tool
    def rank(p: Literal[Prio.LOW, Prio.HIGH], q: Prio) -> str:
        """Ranks."""
        return f"{p.name} {q.name}"

    @ar.tool
    def scale(r: Literal[Ratio.HALF, Ratio.ONE]) -> str:
        """Scales."""
        return r.name

    registry = ar.ToolRegistry([rank, scale])
    assert await registry.call("rank", {"p": 2.0, "q": 2.0}) == ("HIGH HIGH", None)
    assert await registry.call("scale", {"r": 1}) == ("ONE", None)  # and 1 is 1.0
    content, kind = await registry.call("rank", {"p": 2.5, "q": 2})
    assert kind == "permanent" and content.startswith("error: invalid arguments: p:")


async def test_typed_keyword_arguments_are_shown_as_checked() -> None:
    # Shown without `additionalProperties: false`, a point with a key the dataclass lacks
    # was allowed by the schema and refused by the check.
    @ar.tool
    def plot(title: str, **points: Point) -> str:
        """Plots points.

        Args:
            title: The plot's title.
            **points: The points, by label.
        """
        return ", ".join(f"{k}=({p.x}, {p.y})" for k, p in points.items())

    extra = plot.definition()["parameters"]["additionalProperties"]
    assert extra["additionalProperties"] is False
    assert extra["description"] == "The points, by label."  # it was dropped
    registry = ar.ToolRegistry([plot])
    assert await registry.call("plot", {"title": "t", "a": {"x": 1}}) == ("a=(1.0, 0.0)", None)


def test_a_references_array_siblings_keep_the_items_it_names() -> None:
    # The siblings of a `$ref`, made alone, got `items: {}`, which won over the definition's.
    parameters = {
        "type": "object",
        "properties": {
            "ids": {"$ref": "#/$defs/Ids", "type": ["array", "null"], "description": "ids"}
        },
        "$defs": {"Ids": {"type": "array", "items": {"type": "integer"}}},
    }
    spec = ar.ToolSpec("f", "Does f.", lambda arguments: "ok", parameters=parameters)
    shown = spec.definition()["parameters"]["properties"]["ids"]
    assert shown == {"type": ["array", "null"], "items": {"type": "integer"}, "description": "ids"}


async def test_a_tools_description_can_be_given_where_no_docstring_is() -> None:
    # Under `python -OO` a function has no docstring: the model was told nothing of the tool,
    # and `@tool` took no description.
    @ar.tool(description="Refunds part or all of an order.")
    def refund(order: int) -> str:
        return f"refunded {order}"

    assert refund.definition()["description"] == "Refunds part or all of an order."
    assert await ar.ToolRegistry([refund]).call("refund", {"order": 7}) == ("refunded 7", None)

    def documented() -> str:
        """Its own summary."""
        return "ok"

    assert ar.tool(documented, description="Given instead.").description == "Given instead."
    with pytest.raises(ar.ToolError, match="description"):
        ar.tool(documented, description=5)  # type: ignore[call-overload]
