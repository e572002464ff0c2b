"""Tools: iterator results, a classmethod decorated in its class body, an empty argument key."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import llm_agent_runtime as ar


async def _observed(result: Callable[[], object]) -> ar.Observation:
    @ar.tool
    async def give() -> object:
        """Returns the result under test."""
        return result()

    return await ar.ToolRegistry([give]).call("give", {})


class _Countdown:
    """An iterator of its own making (`__iter__` and `__next__`)."""

    def __init__(self) -> None:
        self.left = 2

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if not self.left:
            raise StopIteration
        self.left -= 1
        return self.left


class _Ticks:
    """An async iterator that is no async generator."""

    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        raise StopAsyncIteration


# --- 1. an iterator returned in place of its items ---------------------------------------------


@pytest.mark.parametrize(
    ("result", "kind"),
    [
        (lambda: map(str.upper, ["a", "b"]), "map"),
        (lambda: filter(None, [0, 1]), "filter"),
        (lambda: zip([1], [2], strict=True), "zip"),
        (lambda: iter([1, 2]), "list_iterator"),
        (lambda: reversed([1, 2]), "list_reverseiterator"),
        (lambda: itertools.chain([1], [2]), "chain"),
        (lambda: _Countdown(), "_Countdown"),
        (lambda: _Ticks(), "_Ticks"),
    ],
)
async def test_an_iterator_result_is_a_permanent_failure_not_its_repr(
    result: Callable[[], object], kind: str
) -> None:
    # Its text (`<map object at 0x...>`) would pass for a successful result, as a generator's.
    obs = await _observed(result)
    assert obs.error_kind == "permanent"
    assert f"an iterator ({kind})" in obs.content and "return a list instead" in obs.content
    assert "object at 0x" not in obs.content


async def test_an_iterator_inside_a_result_is_a_permanent_failure() -> None:
    obs = await _observed(lambda: {"names": map(str.title, ["ann", "bob"])})
    assert obs.error_kind == "permanent"
    assert "an iterator (map) inside its result" in obs.content
    assert "return a list instead" in obs.content
    nested = await _observed(lambda: [1, {"k": iter(range(3))}])
    assert nested.error_kind == "permanent" and "inside its result" in nested.content


async def test_iterables_that_are_not_iterators_still_render() -> None:
    # Collections hold their items: they are shown, never refused.
    assert (await _observed(lambda: range(3))).content == "range(0, 3)"
    assert (await _observed(lambda: {"a": 1}.keys())).content == "dict_keys(['a'])"
    assert (await _observed(lambda: [1, 2])).content == "[1, 2]"
    assert (await _observed(lambda: "text")).content == "text"


# --- 2. a classmethod decorated in its class body ----------------------------------------------


def test_tool_on_a_classmethod_in_its_class_body_says_how_to_make_it() -> None:
    with pytest.raises(ar.ToolError, match=r"tool\(Rates\.convert\)") as caught:

        class Rates:
            @ar.tool
            @classmethod
            def convert(cls, amount: float) -> float:
                """Converts an amount."""
                return amount

    assert "not callable" not in str(caught.value)
    assert caught.value.tool == "convert"


def test_a_classmethod_taken_from_its_class_still_makes_a_tool() -> None:
    class Rates:
        @classmethod
        def convert(cls, amount: float) -> float:
            """Converts an amount."""
            return amount * 2

    spec = ar.tool(Rates.convert)
    assert spec.parameters["required"] == ["amount"]


# --- 3. an empty argument name -----------------------------------------------------------------


async def test_an_empty_argument_name_is_named_as_such_not_as_arguments() -> None:
    @ar.tool
    async def lookup(key: str, arguments: str = "") -> str:
        """Looks a key up."""
        return key + arguments

    registry = ar.ToolRegistry([lookup])
    obs = await registry.call("lookup", {"key": "k", "": "x"})
    assert obs.error_kind == "permanent"
    # Not "arguments: unexpected argument", which names the tool's real argument.
    assert obs.content.startswith("error: invalid arguments: '': unexpected argument")


def _explained(arguments: dict[str, Any]) -> str:
    @ar.tool
    def place(where: dict[str, int]) -> str:
        """Places a thing."""
        return str(where)

    try:
        place.check_arguments(arguments)
    except ValueError as error:
        return str(error)
    raise AssertionError("the arguments were accepted")


def test_an_empty_key_inside_an_argument_is_named_as_such() -> None:
    assert _explained({"where": {"": "x"}}) == (
        "invalid arguments: where.'': Input should be a valid integer, unable to parse string "
        "as an integer"
    )
