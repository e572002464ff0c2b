"""A tool's arguments are checked as its schema shows them, before the tool runs: iterables
(which pydantic checks lazily, inside the tool) and the names of dict keys that are not str."""

from __future__ import annotations

import collections
import enum
import re
import typing
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal, NewType, TypeVar

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typing_extensions import TypeAliasType

import llm_agent_runtime as ar


async def call(spec: ar.ToolSpec, arguments: Any) -> ar.Observation:
    return await ar.ToolRegistry([spec]).call(spec.name, arguments)


@pytest.mark.parametrize("iterable", [Iterable[int], typing.Iterable[int]])
async def test_an_iterable_is_checked_whole_before_the_tool_runs(iterable: Any) -> None:
    ran: list[list[int]] = []

    def total(xs: Iterable[int]) -> int:
        """Adds numbers, recording what it read."""
        seen = []
        for x in xs:
            seen.append(x)
        ran.append(seen)
        return sum(seen)

    total.__annotations__["xs"] = iterable  # typing's or collections.abc's
    spec = ar.tool(total)
    assert spec.parameters["properties"]["xs"] == {"items": {"type": "integer"}, "type": "array"}
    assert await call(spec, {"xs": [1, 2]}) == ("3", None)
    # A bad item was the tool's own error, raised after it had read the items before it.
    bad = await call(spec, {"xs": [1, "a"]})
    assert bad.error_kind == "permanent" and "invalid arguments: xs.1" in bad.content
    # A str (the schema shows an array) was taken for its characters: "12" gave 3.
    refused = await call(spec, {"xs": "12"})
    assert refused.error_kind == "permanent" and "valid array" in refused.content
    assert ran == [[1, 2]]


Numbers = TypeAliasType("Numbers", Iterable[int])
T = TypeVar("T")
Items = TypeAliasType("Items", Iterable[T], type_params=(T,))
NumberIds = NewType("NumberIds", Iterable[int])  # type: ignore[misc]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


Red = TypeAliasType("Red", Literal[Color.RED])


@pytest.mark.parametrize("alias", [Numbers, Items[int], NumberIds, Annotated[Numbers, "x"]])
async def test_an_iterable_behind_a_type_alias_or_newtype_is_checked_whole(alias: Any) -> None:
    # An alias hid the iterable from the check: "12" was summed as 3, and a bad item failed
    # inside the tool with pydantic's raw text.
    def total(xs: Any) -> int:
        """Adds numbers."""
        return sum(xs)

    total.__annotations__["xs"] = alias
    spec = ar.tool(total)
    assert spec.parameters["properties"]["xs"] == {"items": {"type": "integer"}, "type": "array"}
    assert await call(spec, {"xs": [1, 2]}) == ("3", None)
    refused = await call(spec, {"xs": "12"})
    assert refused.error_kind == "permanent" and "valid array" in refused.content
    bad = await call(spec, {"xs": [1, "a"]})
    assert bad.error_kind == "permanent" and "invalid arguments: xs.1" in bad.content


async def test_a_literal_of_enum_members_behind_a_type_alias_takes_its_values() -> None:
    @ar.tool
    def paint(color: Red) -> str:
        """Paints."""
        return repr(color)

    assert paint.parameters["properties"]["color"]["const"] == "red"
    assert await call(paint, {"color": "red"}) == ("<Color.RED: 'red'>", None)


async def test_a_recursive_type_alias_is_looked_through_once() -> None:
    Tree = TypeAliasType("Tree", "list[Tree] | int")

    def depth(tree: Any) -> int:
        """Counts nesting."""
        return 1 + max(map(depth, tree), default=0) if isinstance(tree, list) else 0

    depth.__annotations__["tree"] = Tree
    assert await call(ar.tool(depth), {"tree": [[1], 2]}) == ("2", None)


async def test_an_iterator_gets_an_iterator_and_nested_iterables_are_lists() -> None:
    @ar.tool
    def first(xs: Iterator[str], groups: list[Iterable[int]] | None = None) -> str:
        """The first item, and the types received."""
        inner = [type(g).__name__ for g in groups or []]
        return f"{next(xs)} {type(xs).__name__} {inner}"

    assert await call(first, {"xs": ["a", "b"], "groups": [[1], []]}) == (
        "a list_iterator ['list', 'list']",
        None,
    )
    nested = await call(first, {"xs": ["a"], "groups": [[1, "x"]]})
    assert nested.error_kind == "permanent" and "groups.0.1" in nested.content


@ar.tool
def by_key(ints: dict[int, float], floats: dict[float, str], flags: dict[bool, int]) -> str:
    """Reads maps keyed by numbers and booleans."""
    return repr((ints, floats, flags))


def test_number_and_boolean_keys_show_the_names_they_take() -> None:
    properties = by_key.parameters["properties"]
    assert properties["ints"]["propertyNames"] == {"pattern": "^-?(0|[1-9][0-9]*)$"}
    assert properties["floats"]["propertyNames"]["pattern"].startswith("^-?(0|[1-9][0-9]*)")
    assert properties["flags"]["propertyNames"] == {"enum": ["true", "false"]}


@given(
    st.from_regex(re.compile(by_key.parameters["properties"]["ints"]["propertyNames"]["pattern"])),
    st.from_regex(
        re.compile(by_key.parameters["properties"]["floats"]["propertyNames"]["pattern"])
    ),
    st.sampled_from(["true", "false"]),
)
async def test_every_key_name_the_schema_allows_is_taken(i: str, f: str, b: str) -> None:
    observation = await call(by_key, {"ints": {i: 1.5}, "floats": {f: "x"}, "flags": {b: 1}})
    assert observation.error_kind is None, observation.content
    assert observation.content == repr(({int(i): 1.5}, {float(f): "x"}, {b == "true": 1}))


async def test_a_name_the_schema_refuses_is_refused() -> None:
    observation = await call(by_key, {"ints": {"alice": 1.0}, "floats": {}, "flags": {}})
    assert observation.error_kind == "permanent" and "ints.alice" in observation.content


class Priority(enum.Enum):
    LOW = 1
    HIGH = 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Weight(enum.Enum):
    HALF = 0.5
    UNSET = None


@pytest.mark.parametrize(
    ("key", "names", "sent", "received"),
    [
        (Priority, ["1", "2"], {"2": "x"}, {Priority.HIGH: "x"}),
        (Level, ["1", "2"], {"1": "x"}, {Level.LOW: "x"}),
        (Weight, ["0.5", "null"], {"null": "x"}, {Weight.UNSET: "x"}),
        (Literal[1, 2], ["1", "2"], {"1": "x"}, {1: "x"}),
        (Literal[True], ["true"], {"true": "x"}, {True: "x"}),
    ],
)
async def test_enum_and_literal_keys_of_numbers_take_and_show_their_json_names(
    key: Any, names: list[str], sent: dict[str, str], received: dict[Any, str]
) -> None:
    # A plain Enum's or a Literal's keys of numbers were shown as numbers (or not at all),
    # which no JSON name is, and every name sent was refused: the tool could never run.
    def owners(by: Any) -> str:
        """Reads a map."""
        return repr(by)

    owners.__annotations__["by"] = dict[key, str]
    spec = ar.tool(owners)
    assert spec.parameters["properties"]["by"]["propertyNames"] == {"enum": names}
    assert await call(spec, {"by": sent}) == (repr(received), None)
    refused = await call(spec, {"by": {"3": "x"}})
    assert refused.error_kind == "permanent" and "by.3.[key]" in refused.content


def test_text_keys_of_an_enum_or_literal_are_shown_as_before() -> None:
    @ar.tool
    def colors(by: dict[Color, int], names: dict[Literal["a", "b"], int]) -> str:
        """Reads maps."""
        return repr((by, names))

    properties = colors.parameters["properties"]
    assert "enum" not in properties["by"]["propertyNames"]  # the Enum's definition, by $ref
    assert properties["names"]["propertyNames"] == {"enum": ["a", "b"]}


Forward = TypeAliasType("Forward", Iterable["Named"])
Tree = TypeAliasType("Tree", "list[Tree] | int")


class Named(pydantic.BaseModel):
    name: str


async def test_an_alias_naming_a_type_by_a_string_is_left_to_pydantic() -> None:
    # Looked through, the alias's value lost what resolves "Named": no tool could be made.
    def add(items: Forward) -> str:
        """Adds items."""
        return repr(list(items))

    spec = ar.tool(add)
    assert await call(spec, {"items": [{"name": "a"}]}) == ("[Named(name='a')]", None)


PriorityKey = TypeAliasType("PriorityKey", Priority)


@pytest.mark.parametrize(
    "mapping",
    [
        dict[Annotated[Priority, pydantic.Field(description="who")], str],
        dict[PriorityKey, str],
        dict[NewType("Ranked", Literal[1, 2]), str],  # type: ignore[misc]
        collections.OrderedDict[Priority, str],
        collections.defaultdict[Priority, str],
    ],
)
async def test_keys_behind_annotated_aliases_and_other_mappings_take_their_names(
    mapping: Any,
) -> None:
    def owners(by: Any) -> str:
        """Reads a map."""
        return repr(sorted((getattr(k, "value", k), v) for k, v in by.items()))

    owners.__annotations__["by"] = mapping
    spec = ar.tool(owners)
    assert spec.parameters["properties"]["by"]["propertyNames"] == {"enum": ["1", "2"]}
    assert await call(spec, {"by": {"2": "x"}}) == ("[(2, 'x')]", None)


async def test_a_counter_of_enum_keys_takes_their_names() -> None:
    def tally(counts: collections.Counter[Priority]) -> str:
        """Reads counts."""
        return repr(counts[Priority.HIGH])

    spec = ar.tool(tally)
    assert spec.parameters["properties"]["counts"]["propertyNames"] == {"enum": ["1", "2"]}
    assert await call(spec, {"counts": {"2": 3}}) == ("3", None)


def test_mutually_recursive_key_aliases_are_a_tool_error_not_a_recursion_error() -> None:
    # As Python 3.12's `type A = B` and `type B = A`, whose values are evaluated lazily.
    first = TypeAliasType("First", int)
    second = TypeAliasType("Second", first)
    object.__setattr__(first, "__value__", second)

    def owners(by: Any) -> str:
        """Reads a map."""
        return repr(by)

    owners.__annotations__["by"] = dict[first, str]  # type: ignore[valid-type]
    with pytest.raises(ar.ToolError, match="no JSON schema"):
        ar.tool(owners)
