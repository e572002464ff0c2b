"""`ToolSpec` and `@tool` settings refused as they are given, not at the first call or run."""

from __future__ import annotations

import functools
import re
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

import llm_agent_runtime as ar


def _handler(arguments: dict[str, Any]) -> str:
    return "ok"


def test_a_schema_holding_itself_is_refused() -> None:
    # Taken, a runtime given the tool walked its references for ever, its memory growing.
    schema: dict[str, Any] = {"type": "object", "properties": {}}
    schema["properties"]["again"] = schema
    with pytest.raises(ar.ToolError, match=r"must be JSON data.*[Cc]ircular"):
        ar.ToolSpec("loop", "d", _handler, parameters=schema)
    spec = ar.ToolSpec("loop", "d", _handler)
    with pytest.raises(ar.ToolError, match="must be JSON data"):
        spec.parameters = schema
    assert spec.parameters == {"type": "object", "properties": {}}


def test_a_schema_nested_too_deeply_or_holding_no_json_is_refused() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(5000):  # a bare RecursionError once a runtime encoded it
        deep = {"type": "array", "items": deep}
    with pytest.raises(ar.ToolError, match="nested too deeply"):
        ar.ToolSpec("deep", "d", _handler, {"type": "object", "properties": {"x": deep}})
    # The bound is the library's, whatever the Python version: 3.12 and 3.13 encode deeper
    # JSON, and a schema their encoder took failed the runtime with a bare RecursionError.
    for depth, taken in ((125, True), (126, False)):  # a level a step, three around them
        deep = {"type": "string"}
        for _ in range(depth):
            deep = {"type": "array", "items": deep}
        schema = {"type": "object", "properties": {"x": deep}}
        if taken:
            ar.AgentRuntime(
                ar.AgentConfig(mode="tools"), tools=[ar.ToolSpec("d", "d", _handler, schema)]
            )
        else:
            with pytest.raises(ar.ToolError, match=r"nested too deeply \(over 128 levels\)"):
                ar.ToolSpec("deep", "d", _handler, schema)
    for value in ({1, 2}, float("nan"), b"x"):
        with pytest.raises(ar.ToolError, match="must be JSON data"):
            ar.ToolSpec("odd", "d", _handler, {"type": "object", "default": value})


@pytest.mark.parametrize("setting", ["idempotent", "run_inline", "takes_idempotency_key"])
def test_a_flag_that_is_no_bool_is_refused(setting: str) -> None:
    # `idempotent="false"` read as true: a resumed run repeated a call that may have run.
    for bad in ("false", "no", None, 2, 0.0, [True]):
        # The message quotes the value given.
        refused = f"{setting} of tool 'charge' must be a bool, got {re.escape(repr(bad))}"
        with pytest.raises(ar.ToolError, match=refused):
            ar.ToolSpec("charge", "d", _handler, **{setting: bad})
        if setting == "idempotent":  # the one `@tool` takes (it infers the others)
            with pytest.raises(ar.ToolError, match="idempotent of tool 'charge' must be a bool"):
                ar.tool(name="charge", idempotent=bad)(_handler)
    spec = ar.ToolSpec("charge", "d", _handler)
    with pytest.raises(ar.ToolError, match="must be a bool"):
        setattr(spec, setting, "false")
    assert getattr(spec, setting) is False
    for good, read in ((True, True), (np.True_, True), (0, False), (1, True)):
        setattr(spec, setting, good)
        assert getattr(spec, setting) is read


def test_a_timeout_beyond_the_float_range_is_a_tool_error() -> None:
    for timeout in (10**400, Fraction(10**400)):
        with pytest.raises(ar.ToolError, match="finite number of seconds"):
            ar.ToolSpec("slow", "d", _handler, timeout=timeout)
        with pytest.raises(ar.ToolError, match="finite number of seconds"):
            ar.tool(name="slow", timeout=timeout)(_handler)
    assert ar.ToolSpec("slow", "d", _handler, timeout=Fraction(1, 2)).timeout == Fraction(1, 2)


def _add(a: int, b: int) -> int:
    return a + b


def _now() -> str:
    return "12:00"


def _keywords(**arguments: Any) -> str:
    return str(arguments)


@pytest.mark.parametrize("handler", [_add, _now, _keywords])
def test_a_handler_that_cannot_take_the_arguments_dict_is_refused(handler: Any) -> None:
    # Taken before: each call then failed, told to the model as the tool's "permanent" error.
    with pytest.raises(ar.ToolError, match=r"must take the call's arguments as one dict"):
        ar.ToolSpec("t", "d", handler)


class _Handler:
    def __call__(self, arguments: dict[str, Any], retries: int = 0) -> str:
        return str(arguments)


@pytest.mark.parametrize(
    "handler",
    [_Handler(), lambda arguments: arguments, functools.partial(_add, 1), print, dict],
)
def test_a_handler_taking_one_argument_is_taken(handler: Any) -> None:
    assert ar.ToolSpec("t", "d", handler).handler is handler


def test_a_handler_set_later_is_checked_as_given() -> None:
    spec = ar.ToolSpec("t", "d", _handler)
    with pytest.raises(ar.ToolError, match=r"must take the call's arguments as one dict"):
        spec.handler = _add
    assert spec.handler is _handler


def test_a_handler_wrapping_a_function_of_named_parameters_is_taken() -> None:
    # `inspect.signature` follows `__wrapped__`: the wrapper looked like `add(a, b)`, refused.
    def handler_of(fn: Any) -> Any:
        @functools.wraps(fn)
        def handler(arguments: dict[str, Any]) -> Any:
            return fn(**arguments)

        return handler

    spec = ar.ToolSpec("add", "d", handler_of(_add))
    assert spec.handler({"a": 1, "b": 2}) == 3
