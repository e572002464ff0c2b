"""`@tool` schemas: parameters hidden with `SkipJsonSchema`, `Literal`s of plain Enum members."""

from __future__ import annotations

import enum
import functools
from typing import Annotated, Literal

import pytest
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

import llm_agent_runtime as ar


class Color(enum.Enum):
    """A plain Enum: its members are not equal to their values."""

    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Size(enum.Enum):
    SMALL = 1
    LARGE = 2


async def _call(spec: ar.ToolSpec, arguments: object) -> ar.Observation:
    return await ar.ToolRegistry([spec]).call(spec.name, arguments)


# --- 1. a parameter hidden from the schema with `SkipJsonSchema` -------------------------------


async def test_a_parameter_hidden_with_skip_json_schema_is_left_out_of_the_schema() -> None:
    # Such a tool was refused with "more than one parameter goes by the name of an alias".
    @ar.tool
    def search(query: str, debug: SkipJsonSchema[bool] = False, limit: int = 5) -> str:
        """Searches.

        Args:
            query: the text to find.
            debug: log the scan (for the tool's author, not the model).
            limit: most hits.
        """
        return f"{query} {debug} {limit}"

    properties = search.parameters["properties"]
    assert list(properties) == ["query", "limit"]
    # Each description stays with its own parameter.
    assert properties["query"]["description"] == "the text to find."
    assert properties["limit"]["description"] == "most hits."
    assert search.parameters["required"] == ["query"]
    assert (await _call(search, {"query": "q"})).content == "q False 5"
    assert (await _call(search, {"query": "q", "limit": 2})).content == "q False 2"
    # The model is not shown it, and may not set it: it is refused as any unknown argument.
    refused = await _call(search, {"query": "q", "debug": True})
    assert refused.error_kind == "permanent"
    assert "debug: unexpected argument" in refused.content


async def test_a_hidden_positional_parameter_keeps_the_others_in_place() -> None:
    @ar.tool
    def scale(x: int, trace: SkipJsonSchema[bool] = False, /, factor: int = 2) -> str:
        """Scales x."""
        return f"{x} {trace} {factor}"

    assert list(scale.parameters["properties"]) == ["x", "factor"]
    assert (await _call(scale, {"x": 3, "factor": 4})).content == "3 False 4"


def test_a_hidden_parameter_without_a_default_is_refused_with_a_clear_message() -> None:
    # The model could never pass it: every call would fail.
    with pytest.raises(ar.ToolError) as caught:

        @ar.tool
        def fetch(url: str, session: SkipJsonSchema[str]) -> str:
            """Fetches."""
            return url + session

    message = str(caught.value)
    assert "'session'" in message and "SkipJsonSchema" in message and "default" in message
    assert "alias" not in message


# --- 2. a `Literal` of plain Enum members ------------------------------------------------------


async def test_a_literal_of_plain_enum_members_takes_the_values_its_schema_lists() -> None:
    # The schema lists the members' values, which pydantic's Literal refused (the member
    # itself is not equal to its value): every call failed, and the default was dropped.
    @ar.tool
    def paint(
        color: Literal[Color.RED, Color.BLUE] = Color.RED,
        sizes: list[Literal[Size.SMALL, Size.LARGE]] | None = None,
    ) -> str:
        """Paints."""
        return f"{color!r} {sizes!r}"

    properties = paint.parameters["properties"]
    assert properties["color"]["enum"] == ["red", "blue"]
    assert properties["color"]["default"] == "red"
    assert (await _call(paint, {"color": "blue"})).content == "<Color.BLUE: 'blue'> None"
    assert (await _call(paint, {})).content == "<Color.RED: 'red'> None"
    both = await _call(paint, {"sizes": [2, 1]})
    assert both.content == "<Color.RED: 'red'> [<Size.LARGE: 2>, <Size.SMALL: 1>]"
    # Values outside the Literal are still refused, a member left out of it included.
    assert (await _call(paint, {"color": "green"})).error_kind == "permanent"
    assert (await _call(paint, {"sizes": [3]})).error_kind == "permanent"
    # A bool is not taken for the member whose value is 1.
    assert (await _call(paint, {"sizes": [True]})).error_kind == "permanent"


async def test_a_literal_of_enum_members_under_annotated_keeps_its_field() -> None:
    @ar.tool
    def pick(color: Annotated[Literal[Color.GREEN], Field(description="the only one")]) -> str:
        """Picks."""
        return repr(color)

    prop = pick.parameters["properties"]["color"]
    assert prop["description"] == "the only one"
    assert (await _call(pick, {"color": "green"})).content == "<Color.GREEN: 'green'>"


class Corner(enum.Enum):
    TOP_LEFT = (0, 0)
    BOTTOM_RIGHT = (1, 1)


async def test_a_literal_of_tuple_valued_enum_members_takes_their_json_arrays() -> None:
    # Shown as `[0, 0]`, which JSON sends as an array: it was refused (list is not tuple).
    @ar.tool
    def anchor(corner: Literal[Corner.TOP_LEFT, Corner.BOTTOM_RIGHT]) -> str:
        """Anchors."""
        return repr(corner)

    assert anchor.parameters["properties"]["corner"]["enum"] == [[0, 0], [1, 1]]
    assert (await _call(anchor, {"corner": [1, 1]})).content == repr(Corner.BOTTOM_RIGHT)
    assert (await _call(anchor, {"corner": (0, 0)})).content == repr(Corner.TOP_LEFT)
    assert (await _call(anchor, {"corner": [0, 1]})).error_kind == "permanent"
    assert (await _call(anchor, {"corner": [True, True]})).error_kind == "permanent"


# --- 3. **kwargs taking a parameter the model is not shown -------------------------------------


def _send(to: str, account: str = "default", **headers: str) -> str:
    """Sends a message from `account`."""
    return f"{account} -> {to} {headers}"


async def test_kwargs_cannot_set_an_argument_a_partial_fixes() -> None:
    # The model's `account` went in through **headers and replaced the one the partial fixed
    # (the function got the value, never checked as its own type).
    send = ar.tool(functools.partial(_send, account="alice"), name="send")
    assert list(send.parameters["properties"]) == ["to"]
    sent = await _call(send, {"to": "bob", "x-id": "1"})
    assert sent.content == "alice -> bob {'x-id': '1'}"
    refused = await _call(send, {"to": "bob", "account": "mallory"})
    assert refused.error_kind == "permanent"
    assert "account: unexpected argument" in refused.content
    with pytest.raises(ValueError, match="account"):
        send.check_arguments({"to": "bob", "account": "mallory"})


async def test_kwargs_cannot_set_a_parameter_hidden_from_the_schema() -> None:
    @ar.tool
    def lookup(q: str, admin: SkipJsonSchema[bool] = False, **filters: int) -> str:
        """Looks up."""
        return f"{q} {admin} {filters}"

    assert (await _call(lookup, {"q": "x", "year": 2020})).content == "x False {'year': 2020}"
    refused = await _call(lookup, {"q": "x", "admin": 1})
    assert refused.error_kind == "permanent" and "admin" in refused.content


async def test_an_enum_of_tuple_values_takes_their_json_arrays() -> None:
    @ar.tool
    def place(corner: Corner) -> str:
        """Places."""
        return repr(corner)

    assert (await _call(place, {"corner": [1, 1]})).content == repr(Corner.BOTTOM_RIGHT)
    assert (await _call(place, {"corner": (0, 0)})).content == repr(Corner.TOP_LEFT)
    assert (await _call(place, {"corner": [2, 2]})).error_kind == "permanent"
