"""`@tool` specs pickle by reference, as functions do, so they cross process boundaries."""

from __future__ import annotations

import asyncio
import copy
import multiprocessing
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

import llm_agent_runtime as ar


@ar.tool(idempotent=True)
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@ar.tool
async def shout(text: str) -> str:
    """Upper-cases a text."""
    return text.upper()


def _double(arguments: dict[str, Any]) -> int:
    return 2 * int(arguments["x"])


HAND_MADE = ar.ToolSpec("double", "Doubles x.", _double, required_fields=["x"])


def search(query: str) -> str:
    """Searches."""
    return f"results for {query}"


search_tool = ar.tool(search)  # the function keeps its name; the spec has another


class _Client:
    def lookup(self, key: str) -> str:
        """Looks a key up."""
        return key.upper()


lookup_tool = ar.tool(_Client().lookup)  # a tool of a method, as `tool` advises

# Specs bound to no name of the module: they pickle as what they were made of.
LISTED = [ar.tool(search, name="find", idempotent=True), ar.tool(_Client().lookup, timeout=5)]
LISTED[0].description = "Finds things."


def test_a_module_level_tool_unpickles_as_itself() -> None:
    # A `@tool` spec's handler closes over pydantic's validator model: pickling failed.
    for spec in (add, shout):
        assert pickle.loads(pickle.dumps(spec)) is spec


def _run_in_child(spec: ar.ToolSpec, arguments: dict[str, Any]) -> tuple[str, bool, Any]:
    registry = ar.ToolRegistry([spec])
    observation = asyncio.run(registry.call(spec.name, arguments))
    return spec.name, spec.idempotent, observation.content


def test_a_tool_runs_in_a_spawned_process() -> None:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        assert pool.submit(_run_in_child, add, {"a": 2, "b": 3}).result(timeout=120) == (
            "add",
            True,
            "5",
        )
        name, _, content = pool.submit(_run_in_child, shout, {"text": "hi"}).result(timeout=60)
        assert (name, content) == ("shout", "HI")


def test_a_module_level_tool_bound_to_another_name_unpickles_as_itself() -> None:
    # Before, these pickled by value, which fails: their handler is a local function.
    for spec in (search_tool, lookup_tool):
        assert pickle.loads(pickle.dumps(spec)) is spec
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        result = pool.submit(_run_in_child, lookup_tool, {"key": "k"}).result(timeout=120)
        assert result == ("lookup", False, "K")


def test_a_tool_in_a_list_unpickles_made_again_with_its_settings() -> None:
    # Before, it pickled by value, which fails: its handler is a local function.
    found, looked = pickle.loads(pickle.dumps(LISTED))
    assert found is not LISTED[0]
    for clone, spec in ((found, LISTED[0]), (looked, LISTED[1])):
        assert (clone.name, clone.description, clone.parameters) == (
            spec.name,
            spec.description,
            spec.parameters,
        )
        assert (clone.idempotent, clone.timeout) == (spec.idempotent, spec.timeout)
    assert asyncio.run(ar.ToolRegistry([found]).call("find", {"query": "q"})).content == (
        "results for q"
    )
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        result = pool.submit(_run_in_child, LISTED[1], {"key": "k"}).result(timeout=120)
        assert result == ("lookup", False, "K")


def test_a_hand_made_spec_pickles_by_value() -> None:
    clone = pickle.loads(pickle.dumps(HAND_MADE))
    assert clone is not HAND_MADE
    assert (clone.name, clone.required_fields, clone.handler) == ("double", ("x",), _double)
    assert asyncio.run(ar.ToolRegistry([clone]).call("double", {"x": 4})).content == "8"


def test_a_tool_defined_in_a_function_is_not_pickled_by_a_wrong_reference() -> None:
    @ar.tool
    def add(a: int) -> int:  # the same name as the module's `add`
        """Adds nothing."""
        return a

    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(add)  # by value: its handler is a local function


def test_a_renamed_tool_fails_to_unpickle_with_a_tool_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = pickle.dumps(add)
    monkeypatch.delattr(f"{__name__}.add")
    with pytest.raises(ar.ToolError, match=r"no tool is defined as .*\.add"):
        pickle.loads(data)


def test_copies_are_new_specs_that_change_on_their_own() -> None:
    for clone in (copy.copy(add), copy.deepcopy(add)):
        assert clone is not add
        assert (clone.name, clone.parameters, clone.idempotent) == (
            add.name,
            add.parameters,
            add.idempotent,
        )
        clone.timeout = 3.0
        assert add.timeout is None
        assert asyncio.run(ar.ToolRegistry([clone]).call("add", {"a": 1, "b": 1})).content == "2"
    deep = copy.deepcopy(add)
    assert deep.parameters is not add.parameters


def test_a_deep_copy_shares_what_the_spec_calls() -> None:
    # The user's breaker (it holds a lock) and a method's object are the user's: a deep copy
    # of the spec calls them, not copies of them.
    class Client:
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.calls = 0

        async def lookup(self, q: str) -> str:
            """Looks up."""
            self.calls += 1
            return q

    client = Client()
    breaker = ar.CircuitBreaker("search-api")
    spec = ar.tool(client.lookup, circuit_breaker=breaker)
    clone = copy.deepcopy(spec)
    assert clone.circuit_breaker is breaker
    assert asyncio.run(ar.ToolRegistry([clone]).call("lookup", {"q": "x"})).content == "x"
    assert client.calls == 1
    assert clone.parameters == spec.parameters and clone.parameters is not spec.parameters


def test_copies_check_arguments_with_their_own_settings() -> None:
    # A hand-made spec's check is a method of the spec: a copy's must read the copy's
    # required fields, not the original's.
    spec = ar.ToolSpec("t", "d", lambda args: args, required_fields=["a"])
    for clone in (copy.copy(spec), copy.deepcopy(spec)):
        spec.required_fields = ("a", "b")
        assert clone.check_arguments({"a": 1}) == {"a": 1}
        with pytest.raises(ValueError, match="missing required argument"):
            spec.check_arguments({"a": 1})
        spec.required_fields = ("a",)


def test_a_tool_in_a_list_whose_handler_was_replaced_does_not_pickle_as_made() -> None:
    # Made again of its function, it would run that function, not the handler set since.
    spec = ar.tool(search)
    spec.handler = _double
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps([spec])
