"""Tools layer, sweep 7: a bad `max_chars` or tool name given to `ToolRegistry.call`,
arguments given as a read-only mapping, settings changed after a spec is made, a circuit
breaker that is none, and `@tool("name")`."""

from __future__ import annotations

import copy
import types
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.errors import ToolError
from llm_agent_runtime.tools import ToolRegistry, ToolSpec, tool

# --- 1. a max_chars that is no count of characters ------------------------------------------


@pytest.mark.parametrize("max_chars", [None, "100", 5.5, float("nan"), True, -1])
@pytest.mark.parametrize("arguments", [{"text": "hello"}, {"text": 1}, {}])
async def test_a_bad_max_chars_is_a_tool_error_before_the_tool_runs(
    max_chars: Any, arguments: dict[str, Any]
) -> None:
    ran: list[str] = []

    @tool
    def echo(text: str) -> str:
        """Echoes."""
        ran.append(text)
        return text

    registry = ToolRegistry([echo])
    with pytest.raises(ToolError, match="max_chars"):
        await registry.call("echo", arguments, max_chars=max_chars)
    with pytest.raises(ToolError, match="max_chars"):
        await registry.call("missing", arguments, max_chars=max_chars)
    assert ran == []  # refused before the tool had any effect


async def test_an_index_like_max_chars_still_truncates() -> None:
    class Limit:
        def __index__(self) -> int:
            return 20

    @tool
    def echo(text: str) -> str:
        """Echoes."""
        return text

    observation = await ToolRegistry([echo]).call("echo", {"text": "x" * 50}, max_chars=Limit())  # type: ignore[arg-type]
    assert observation.ok
    assert len(observation.content) == 20


# --- 2. a tool name that cannot be a dict key ------------------------------------------------


@pytest.mark.parametrize("name", [["echo"], {"echo": 1}, {"echo"}])
async def test_an_unhashable_tool_name_is_not_found(name: Any) -> None:
    registry = ToolRegistry([ToolSpec("echo", "Echoes.", lambda a: a)])
    observation = await registry.call(name, {})
    assert observation.error_kind == "not_found"
    assert "unknown tool" in observation.content


# --- 3. arguments given as a mapping that is not a dict --------------------------------------


@tool
def _search(query: str, limit: int = 3) -> str:
    """Searches."""
    return f"{query}:{limit}"


_HAND = ToolSpec(
    "hand",
    "Takes a query.",
    lambda arguments: f"query={arguments['query']!r}",
    {"type": "object", "properties": {"query": {"type": "string"}}},
    required_fields=["query"],
)


async def test_a_read_only_mapping_of_arguments_is_taken_as_the_arguments() -> None:
    registry = ToolRegistry([_search, _HAND, ToolSpec("free", "Takes any.", lambda a: sorted(a))])
    proxy = types.MappingProxyType
    # Before: the whole mapping was taken for the only required argument's value.
    assert (await registry.call("hand", proxy({"query": "x"}))).content == "query='x'"
    assert (await registry.call("free", proxy({"b": 1, "a": 2}))).content == '["a", "b"]'
    wrong = await registry.call("_search", proxy({"query": "x", "bogus": 1}))
    assert wrong.error_kind == "permanent"
    assert "bogus: unexpected argument" in wrong.content
    typed = await registry.call("_search", proxy({"query": 5}))
    assert typed.error_kind == "permanent"
    assert "query: Input should be a valid string" in typed.content


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["query", "limit", "bogus"]),
        st.one_of(st.text(max_size=5), st.integers(-5, 5), st.none()),
    )
)
async def test_a_mapping_of_arguments_is_checked_as_the_same_dict(
    arguments: dict[str, Any],
) -> None:
    registry = ToolRegistry([_search, _HAND])
    for name in ("_search", "hand"):
        as_dict = await registry.call(name, dict(arguments))
        as_mapping = await registry.call(name, types.MappingProxyType(dict(arguments)))
        assert as_mapping == as_dict


# --- 4. settings changed after the spec is made ----------------------------------------------


@pytest.mark.parametrize("name", ["bad name!", "", "FINAL_ANSWER", None, "x" * 65])
def test_a_name_set_later_is_checked_as_the_constructor_checks_it(name: Any) -> None:
    spec = copy.copy(_search)
    with pytest.raises(ToolError, match="tool name"):
        spec.name = name
    assert spec.name == "_search"


def test_a_valid_name_set_on_a_copy_renames_it() -> None:
    spec = copy.copy(_search)
    spec.name = "search_v2"
    assert spec.definition()["name"] == "search_v2"
    assert _search.name == "_search"


@pytest.mark.parametrize(
    "parameters", ["nope", {"type": "string"}, {"properties": {"bad key": {}}}, None]
)
def test_parameters_set_later_are_checked_as_the_constructor_checks_them(
    parameters: Any,
) -> None:
    spec = copy.copy(_HAND)
    with pytest.raises(ToolError, match="tool 'hand'"):
        spec.parameters = parameters
    assert spec.parameters["properties"] == {"query": {"type": "string"}}


# --- 5. a circuit breaker that is none -------------------------------------------------------


@pytest.mark.parametrize("breaker", [5, object(), "breaker"])
def test_a_circuit_breaker_that_is_none_is_refused_when_the_tool_is_made(breaker: Any) -> None:
    with pytest.raises(ToolError, match="circuit_breaker"):
        ToolSpec("t", "d", lambda a: 1, circuit_breaker=breaker)

    def plain(x: int) -> int:
        """Returns x."""
        return x

    with pytest.raises(ToolError, match="circuit_breaker"):
        tool(plain, circuit_breaker=breaker)
    spec = ToolSpec("t", "d", lambda a: 1)
    with pytest.raises(ToolError, match="circuit_breaker"):
        spec.circuit_breaker = breaker
    assert spec.circuit_breaker is None


async def test_a_real_circuit_breaker_is_still_taken() -> None:
    breaker = ar.CircuitBreaker("t")
    spec = ToolSpec("t", "d", lambda a: "ran", circuit_breaker=breaker)
    spec.circuit_breaker = None
    spec.circuit_breaker = breaker
    assert (await ToolRegistry([spec]).call("t", {})).content == "ran"


# --- 6. the name given to @tool positionally -------------------------------------------------


def test_a_name_given_to_tool_positionally_says_to_pass_name() -> None:
    # Before: "cannot make a tool of 'search': it is not callable".
    with pytest.raises(ToolError, match=r"@tool\(name='search'\)") as caught:
        tool("search")  # type: ignore[call-overload]  # as `@tool("search")` calls it
    assert caught.value.tool == "search"
