"""Edge cases of tools: threads, rendering, arguments, signatures, docstrings, names."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import copy
import dataclasses
import datetime
import enum
import functools
import json
import logging
import math
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
import pydantic
import pytest
from pydantic import AfterValidator, Field, Strict
from test_runtime import react

import llm_agent_runtime as ar
from llm_agent_runtime.tools import _truncate

# --- 1. a timed-out sync tool does not hold a worker other tools need ---------------------


async def test_timed_out_sync_tools_do_not_starve_other_sync_tools() -> None:
    release = threading.Event()
    daemon: list[bool] = []

    @ar.tool(timeout=0.05)
    def hang(q: str) -> str:
        """Waits on a server that never answers."""
        daemon.append(threading.current_thread().daemon)
        release.wait(10)
        return "late"

    @ar.tool
    def quick(q: str) -> str:
        """Answers at once."""
        return "quick ok"

    registry = ar.ToolRegistry([hang, quick])
    workers = min(32, (os.cpu_count() or 1) + 4)  # the default executor's size
    try:
        hung = await asyncio.gather(*[registry.call("hang", {"q": "x"}) for _ in range(workers)])
        assert {o.content for o in hung} == {"error: timed out after 0.05 s"}
        assert all(o.error_kind == "transient" for o in hung)
        obs = await asyncio.wait_for(registry.call("quick", {"q": "x"}), 2)
        assert obs.ok and obs.content == "quick ok"
        assert daemon and all(daemon)
    finally:
        release.set()


def test_a_timed_out_sync_tool_does_not_hold_up_asyncio_run() -> None:
    release = threading.Event()

    @ar.tool(timeout=0.05)
    def stuck(q: str) -> str:
        """Never returns in time."""
        release.wait(3)
        return "late"

    async def main() -> ar.Observation:
        return await ar.ToolRegistry([stuck]).call("stuck", {"q": "x"})

    start = time.monotonic()
    try:
        obs = asyncio.run(main())
        assert time.monotonic() - start < 2
        assert obs.error_kind == "transient" and "timed out after 0.05 s" in obs.content
    finally:
        release.set()


async def test_sync_tool_with_a_timeout_returns_its_result_and_raises_its_errors() -> None:
    @ar.tool(timeout=5)
    def fine(q: str) -> str:
        """Works."""
        return q.upper()

    @ar.tool(timeout=5)
    def broken(q: str) -> str:
        """Fails."""
        raise ConnectionError("reset by peer")

    registry = ar.ToolRegistry([fine, broken])
    assert (await registry.call("fine", {"q": "a"})).content == "A"
    failed = await registry.call("broken", {"q": "a"})
    assert failed == ("error: reset by peer", "transient")


# --- 2. rendering failures are observations -------------------------------------------------


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr boom")

    __str__ = __repr__


class _BadMessage(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str boom")


@pytest.mark.parametrize(
    "result", [10**5000, [10**5000], _BadRepr()], ids=["huge int", "in a list", "bad repr"]
)
async def test_a_result_that_cannot_be_rendered_is_a_permanent_observation(result: object) -> None:
    @ar.tool
    def give() -> object:
        """Returns the result under test."""
        return result

    obs = await ar.ToolRegistry([give]).call("give", {})
    assert obs.error_kind == "permanent"
    assert obs.content.startswith("error: the tool ran, but its result could not be rendered: ")


async def test_an_error_whose_message_cannot_be_rendered_is_still_an_observation() -> None:
    @ar.tool
    async def fail() -> str:
        """Fails oddly."""
        raise _BadMessage()

    obs = await ar.ToolRegistry([fail]).call("fail", {})
    assert obs.error_kind == "permanent" and "_BadMessage" in obs.content


# --- 3. a validator's own exception ---------------------------------------------------------

UNITS = {"c": "celsius", "f": "fahrenheit"}


async def test_a_validator_raising_a_key_error_is_an_invalid_arguments_observation() -> None:
    @ar.tool
    def convert(value: float, unit: Annotated[str, AfterValidator(lambda u: UNITS[u])]) -> str:
        """Converts."""
        return f"{value} {unit}"

    registry = ar.ToolRegistry([convert])
    assert (await registry.call("convert", {"value": 1, "unit": "c"})).content == "1.0 celsius"
    obs = await registry.call("convert", {"value": 1, "unit": "kelvin"})
    assert obs.error_kind == "permanent"
    assert obs.content.startswith("error: invalid arguments") and "KeyError" in obs.content


# --- 4. a `Field(...)` default ----------------------------------------------------------------


async def test_a_field_default_is_applied_and_its_constraints_checked() -> None:
    @ar.tool
    def search(query: str, limit: int = Field(default=5, ge=1, le=50)) -> str:
        """Searches."""
        return f"limit={limit!r}"

    props = search.parameters["properties"]["limit"]
    assert props["default"] == 5 and props["maximum"] == 50
    registry = ar.ToolRegistry([search])
    assert (await registry.call("search", {"query": "x"})).content == "limit=5"
    assert (await registry.call("search", {"query": "x", "limit": 7})).content == "limit=7"
    refused = await registry.call("search", {"query": "x", "limit": 500})
    assert refused.error_kind == "permanent" and "limit" in refused.content
    extra = await registry.call("search", {"query": "x", "limt": 3})
    assert extra.error_kind == "permanent" and "limt" in extra.content


# --- 5. arguments that are not a dict -------------------------------------------------------


@ar.tool
def search(query: str, limit: int = 10) -> str:
    """Searches the web."""
    return f"query={query!r} limit={limit}"


@ar.tool
def noargs() -> str:
    """Takes nothing."""
    return "ran"


@ar.tool
def maybe(n: int = 1) -> str:
    """Takes an optional number."""
    return f"n={n}"


async def test_a_json_object_in_a_string_is_the_arguments_object() -> None:
    registry = ar.ToolRegistry([search])
    obs = await registry.call("search", '{"query": "cats", "limit": 3}')
    assert obs.ok and obs.content == "query='cats' limit=3"
    obs = await registry.call("search", '  {"query": "cats"} ')
    assert obs.ok and obs.content == "query='cats' limit=10"
    assert (await registry.call("search", "cats")).content == "query='cats' limit=10"


@pytest.mark.parametrize(
    "arguments",
    ["{'query': 'cats', 'limit': 3}", '{"query": "cats", "limit": 3,}', "{not json"],
)
async def test_text_that_looks_like_an_object_but_is_not_json_is_refused(arguments: str) -> None:
    obs = await ar.ToolRegistry([search]).call("search", arguments)
    assert obs.error_kind == "permanent" and "must be a JSON object" in obs.content


@pytest.mark.parametrize("arguments", [None, "", "  ", "{}", {}])
async def test_no_arguments_for_a_tool_that_requires_none(arguments: object) -> None:
    plain = ar.ToolSpec("plain", "d", lambda a: f"got {a!r}")
    registry = ar.ToolRegistry([noargs, maybe, plain])
    assert (await registry.call("noargs", arguments)).content == "ran"
    assert (await registry.call("maybe", arguments)).content == "n=1"
    assert (await registry.call("plain", arguments)).content == "got {}"


async def test_a_plain_tool_gets_a_json_object_string_as_a_dict() -> None:
    plain = ar.ToolSpec("plain", "d", lambda a: f"got {a!r}")
    assert (await ar.ToolRegistry([plain]).call("plain", '{"a": 1}')).content == "got {'a': 1}"


# --- 6. unknown arguments -------------------------------------------------------------------


async def test_unknown_arguments_are_refused_and_named() -> None:
    assert search.parameters["additionalProperties"] is False
    obs = await ar.ToolRegistry([search]).call("search", {"query": "cats", "limt": 3})
    assert obs.error_kind == "permanent"
    assert "limt: unexpected argument" in obs.content and "query, limit" in obs.content


async def test_a_tool_taking_an_idempotency_key_still_gets_it_and_refuses_extras() -> None:
    keys: list[str] = []

    @ar.tool
    async def charge(amount: int, idempotency_key: str) -> str:
        """Charges an amount."""
        keys.append(idempotency_key)
        return f"charged {amount}"

    assert charge.parameters["additionalProperties"] is False
    registry = ar.ToolRegistry([charge])
    assert (await registry.call("charge", {"amount": 5}, idempotency_key="k1")).ok
    assert keys == ["k1"]
    refused = await registry.call("charge", {"amount": 5, "currency": "EUR"})
    assert refused.error_kind == "permanent" and "currency" in refused.content
    assert keys == ["k1"]


# --- 7. a tool's own TimeoutError -----------------------------------------------------------


@pytest.mark.parametrize("timeout", [None, 30.0])
@pytest.mark.parametrize("is_async", [False, True])
async def test_a_tools_own_timeout_error_keeps_its_message(
    timeout: float | None, is_async: bool
) -> None:
    def fetch(url: str) -> str:
        """Fetches."""
        raise TimeoutError("upstream read timed out")

    async def afetch(url: str) -> str:
        """Fetches."""
        raise TimeoutError("upstream read timed out")

    spec = ar.tool(afetch if is_async else fetch, name="fetch", timeout=timeout)
    obs = await ar.ToolRegistry([spec]).call("fetch", {"url": "x"})
    assert obs == ("error: upstream read timed out", "transient")


async def test_the_per_tool_timeout_says_how_long_it_was() -> None:
    @ar.tool(timeout=0.05)
    async def slow() -> str:
        """Takes its time."""
        await asyncio.sleep(5)
        return "late"

    obs = await ar.ToolRegistry([slow]).call("slow", {})
    assert obs == ("error: timed out after 0.05 s", "transient")


class _LongUpLoop(asyncio.SelectorEventLoop):
    """A loop whose clock reads as a host's up for 34 years: float32 steps 128 s there."""

    def time(self) -> float:
        return super().time() + 2**30


def test_a_numpy_float32_timeout_is_kept_as_a_float() -> None:
    # Kept as given, it made the deadline a float32 (`loop.time() + timeout`), rounded by
    # seconds to days on a host up that long: a call failed at once, or ran on unchecked.
    spec = ar.tool(timeout=np.float32(0.5))(_napping)
    assert type(spec.timeout) is float and spec.timeout == 0.5
    registry = ar.ToolRegistry([spec])
    with asyncio.Runner(loop_factory=_LongUpLoop) as runner:
        assert runner.run(registry.call("_napping", {"seconds": 0.05})) == ("napped", None)
        start = time.monotonic()
        timed_out = runner.run(registry.call("_napping", {"seconds": 3.0}))
    assert timed_out == ("error: timed out after 0.5 s", "transient")
    assert time.monotonic() - start < 2.0
    assert type(ar.tool(timeout=np.int64(3))(_napping).timeout) is float
    assert ar.tool(timeout=2)(_napping).timeout == 2  # an int stays one: "after 2 s"


async def _napping(seconds: float) -> str:
    """Sleeps, then says so."""
    await asyncio.sleep(seconds)
    return "napped"


async def test_a_tools_exception_is_logged_with_its_traceback_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The model sees the message; nothing kept where it was raised.
    @ar.tool
    def lookup(order_id: int) -> str:
        """Finds an order."""
        return {"customer": {}}["customer"].email  # type: ignore[attr-defined,no-any-return]

    registry = ar.ToolRegistry([lookup])
    with caplog.at_level(logging.DEBUG, logger="llm_agent_runtime"):
        obs = await registry.call("lookup", {"order_id": 1})
    assert obs == ("error: 'dict' object has no attribute 'email'", "permanent")
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == "tool 'lookup' raised AttributeError"
    assert record.exc_info is not None and record.exc_info[0] is AttributeError
    assert "lookup" in {frame.name for frame in traceback.extract_tb(record.exc_info[2])}


# --- 8. SystemExit, a tool's own CancelledError, KeyboardInterrupt ----------------------------


@pytest.mark.parametrize("is_async", [False, True])
async def test_system_exit_in_a_tool_is_a_permanent_observation(is_async: bool) -> None:
    def convert(args: dict[str, Any]) -> str:
        parser = argparse.ArgumentParser(prog="convert", add_help=False)
        parser.add_argument("n", type=int)
        return str(parser.parse_args([str(args["n"])]).n)

    async def aconvert(args: dict[str, Any]) -> str:
        raise SystemExit(2)

    spec = ar.ToolSpec("convert", "d", aconvert if is_async else convert)
    obs = await ar.ToolRegistry([spec]).call("convert", {"n": "ten"})
    assert obs.error_kind == "permanent" and "SystemExit: 2" in obs.content


async def test_a_cancelled_subtask_of_the_tool_is_an_observation_not_a_cancellation() -> None:
    async def fetch(args: dict[str, Any]) -> str:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        await asyncio.sleep(0)
        inner.cancel()
        await inner  # the tool's own subtask was cancelled (say, a closed client)
        return "unreachable"

    obs = await ar.ToolRegistry([ar.ToolSpec("fetch", "d", fetch)]).call("fetch", {})
    assert obs.error_kind == "transient" and "CancelledError" in obs.content


@pytest.mark.parametrize("task_given", [False, True], ids=["looked-up", "given"])
async def test_a_cancelled_subtask_is_an_observation_in_a_task_that_was_cancelled_before(
    task_given: bool,
) -> None:
    # A task whose earlier cancellation was handled without `uncancel()` (its count stays
    # raised) took every cancelled subtask of a tool for a cancellation of the call. The
    # caller may hand the registry its task (as the agent loop does): read alike.
    async def fetch(args: dict[str, Any]) -> str:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        await asyncio.sleep(0)
        inner.cancel()
        try:
            await inner
        except asyncio.CancelledError as error:
            if args.get("group"):  # also inside an exception group
                raise BaseExceptionGroup("own work", [error]) from None
            raise
        return "unreachable"

    async def handled_a_cancellation_then_calls(args: dict[str, Any]) -> ar.Observation:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1)
        assert task.cancelling() == 1
        registry = ar.ToolRegistry([ar.ToolSpec("fetch", "d", fetch)])
        if task_given:
            return await registry.call("fetch", args, task=task)
        return await registry.call("fetch", args)

    obs = await asyncio.ensure_future(handled_a_cancellation_then_calls({}))
    assert obs.error_kind == "transient" and "CancelledError" in obs.content
    # A group of the tool's own is a failure of the tool, as any group it raises.
    obs = await asyncio.ensure_future(handled_a_cancellation_then_calls({"group": True}))
    assert obs.error_kind == "permanent" and "own work" in obs.content


@pytest.mark.parametrize("task_given", [False, True], ids=["looked-up", "given"])
async def test_cancelling_the_call_still_propagates(task_given: bool) -> None:
    started = asyncio.Event()

    async def slow(args: dict[str, Any]) -> str:
        started.set()
        await asyncio.sleep(10)
        return "late"

    registry = ar.ToolRegistry([ar.ToolSpec("slow", "d", slow)])

    async def call() -> ar.Observation:
        if task_given:
            return await registry.call("slow", {}, task=asyncio.current_task())
        return await registry.call("slow", {})

    task = asyncio.ensure_future(call())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_keyboard_interrupt_in_a_tool_propagates() -> None:
    async def stop(args: dict[str, Any]) -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await ar.ToolRegistry([ar.ToolSpec("stop", "d", stop)]).call("stop", {})


# --- 9. the handler's own copy of the arguments ---------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_plain_handler_changing_its_arguments_leaves_the_callers_dict(
    is_async: bool,
) -> None:
    def consume(args: dict[str, Any]) -> str:
        query = args.pop("query")
        args["internal_token"] = "secret"
        return f"results for {query}"

    async def aconsume(args: dict[str, Any]) -> str:
        return consume(args)

    spec = ar.ToolSpec("search", "d", aconsume if is_async else consume, required_fields=["query"])
    arguments = {"query": "cats"}
    obs = await ar.ToolRegistry([spec]).call("search", arguments)
    assert obs.content == "results for cats"
    assert arguments == {"query": "cats"}


# --- 10. *args, **kwargs, positional-only ---------------------------------------------------


async def test_var_positional_var_keyword_and_positional_only_parameters() -> None:
    @ar.tool
    def total(*numbers: float) -> float:
        """Sums numbers."""
        return sum(numbers)

    assert total.parameters["properties"]["numbers"] == {
        "items": {"type": "number"},
        "type": "array",
    }
    assert "required" not in total.parameters

    @ar.tool
    def weather(city: str, **options: str) -> str:
        """Weather with options."""
        return f"{city} {sorted(options.items())}"

    assert weather.parameters["additionalProperties"] == {"type": "string"}
    assert list(weather.parameters["properties"]) == ["city"]

    @ar.tool
    def scale(x: int, factor: int = 2, /, *rest: int, label: str = "") -> str:
        """Positional-only, varargs and keyword-only together."""
        return f"{x * factor} {list(rest)} {label}"

    registry = ar.ToolRegistry([total, weather, scale])
    assert (await registry.call("total", {"numbers": [1, 2.5]})).content == "3.5"
    assert (await registry.call("total", {})).content == "0"
    assert (await registry.call("weather", {"city": "Paris", "unit": "C"})).content == (
        "Paris [('unit', 'C')]"
    )
    bad = await registry.call("weather", {"city": "Paris", "unit": 3})
    assert bad.error_kind == "permanent" and "unit" in bad.content
    assert (await registry.call("scale", {"x": 3})).content == "6 [] "
    assert (await registry.call("scale", {"x": 3, "rest": [7], "label": "y"})).content == (
        "6 [7] y"
    )
    assert (await registry.call("scale", {"x": 3, "factor": 3})).content == "9 [] "


# --- 11. parameters starting with an underscore; pydantic's own names ---------------------


async def test_underscore_and_pydantic_reserved_parameter_names_are_in_the_schema() -> None:
    def pick(_private: int, model_config: str, schema: str = "s") -> str:
        """Picks."""
        return f"{_private} {model_config} {schema}"

    spec = ar.tool(pick)
    assert list(spec.parameters["properties"]) == ["_private", "model_config", "schema"]
    assert spec.parameters["required"] == ["_private", "model_config"]
    registry = ar.ToolRegistry([spec])
    ok = await registry.call("pick", {"_private": 1, "model_config": "m"})
    assert ok.content == "1 m s"
    missing = await registry.call("pick", {"model_config": "m"})
    assert missing.error_kind == "permanent" and "_private" in missing.content


# --- 12. partials, callable objects, unresolvable annotations -------------------------------


def _add(a: int, b: int) -> int:
    """Adds two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


class _Search:
    def __call__(self, q: str) -> str:
        """Searches for q.

        Args:
            q: What to look for.
        """
        return f"found {q}"


class _AsyncSearch:
    """Searches asynchronously."""

    async def __call__(self, q: str) -> str:
        return f"async {q}"


async def test_partials_and_callable_objects_become_tools() -> None:
    add1 = ar.tool(functools.partial(_add, b=1), name="add1")
    assert add1.name == "add1" and add1.description == "Adds two integers."
    assert list(add1.parameters["properties"]) == ["a"]  # b is fixed by the partial
    plain = ar.tool(functools.partial(_add, b=1))
    assert plain.name == "_add"
    search_obj = ar.tool(_Search())
    assert search_obj.name == "_Search" and search_obj.description == "Searches for q."
    assert search_obj.parameters["properties"]["q"]["description"] == "What to look for."
    async_obj = ar.tool(_AsyncSearch(), name="asearch")
    assert async_obj.is_async and async_obj.description == "Searches asynchronously."
    registry = ar.ToolRegistry([add1, search_obj, async_obj])
    assert (await registry.call("add1", {"a": 2})).content == "3"
    assert (await registry.call("add1", {"a": 2, "b": 5})).error_kind == "permanent"
    assert (await registry.call("_Search", {"q": "x"})).content == "found x"
    assert (await registry.call("asearch", {"q": "x"})).content == "async x"


def test_an_unresolvable_annotation_is_a_tool_error_naming_the_parameter() -> None:
    class Filter(pydantic.BaseModel):  # local: a string annotation cannot see it
        field: str

    def find(limit: int, f: Filter) -> str:
        """Finds."""
        return f.field

    with pytest.raises(ar.ToolError, match=r"'find'.*'Filter'.*parameter 'f'"):
        ar.tool(find)


class _Point(pydantic.BaseModel):
    x: int
    y: int


def _annotated_as(annotation: object) -> Callable[..., str]:
    """A tool function whose parameter `p` has `annotation` as it is: an object, as in a
    module without `from __future__ import annotations`, or text, as in one with it."""

    def where(p: object = None) -> str:
        """Says where."""
        return repr(p)

    where.__annotations__ = {"p": annotation}
    return where


@pytest.mark.parametrize(
    ("annotate", "passed", "received"),
    [
        pytest.param(lambda n: list[n], [{"x": 1, "y": 2}], "[_Point(x=1, y=2)]"),
        pytest.param(lambda n: f'list["{n}"]', [{"x": 1, "y": 2}], "[_Point(x=1, y=2)]"),
        (lambda n: Optional[n], {"x": 1, "y": 2}, "_Point(x=1, y=2)"),  # noqa: UP045 (a str | None fails)
        (lambda n: f'Optional["{n}"]', {"x": 1, "y": 2}, "_Point(x=1, y=2)"),
    ],
)
async def test_a_name_quoted_inside_a_generic_is_resolved_in_the_functions_module(
    annotate: Callable[[str], object], passed: object, received: str
) -> None:
    spec = ar.tool(_annotated_as(annotate("_Point")), name="where")
    assert "_Point" in spec.parameters["$defs"]
    assert await ar.ToolRegistry([spec]).call("where", {"p": passed}) == (received, None)
    # A name the module does not have is still an error naming the parameter.
    with pytest.raises(ar.ToolError, match=r"'where'.*parameter 'p'"):
        ar.tool(_annotated_as(annotate("_Nowhere")), name="where")


class _Cat(pydantic.BaseModel):
    kind: Literal["cat"]


class _Dog(pydantic.BaseModel):
    kind: Literal["dog"]


async def test_the_react_catalog_drops_a_discriminator_mapping_to_inlined_definitions() -> None:
    @ar.tool
    def pet(p: Annotated[Union[_Cat, _Dog], Field(discriminator="kind")]) -> str:  # noqa: UP007
        """Pets."""
        return repr(p)

    mapping = pet.parameters["properties"]["p"]["discriminator"]["mapping"]
    assert mapping == {"cat": "#/$defs/_Cat", "dog": "#/$defs/_Dog"}  # sent as it is
    infer = react("Thought: done\nAction: FINAL_ANSWER ok")
    await ar.AgentRuntime(tools=[pet]).run_agent("a", "q", infer)
    line = next(x for x in infer.prompts[0].splitlines() if x.startswith("- pet:"))
    # The definitions are inlined and gone: nothing may point at them.
    assert '"discriminator": {"propertyName": "kind"}' in line and "$defs" not in line


def test_a_parameter_type_without_a_schema_is_a_tool_error_naming_it() -> None:
    def weird(n: int, cb: Callable[[int], int]) -> str:
        """Takes a callback."""
        return "x"

    with pytest.raises(ar.ToolError, match=r"'weird'.*parameter 'cb'"):
        ar.tool(weird)


# --- 13. docstring styles -------------------------------------------------------------------


def test_sphinx_numpy_and_wrapped_google_docstrings() -> None:
    def sphinx(city: str, days: int = 1) -> str:
        """Get the weather forecast.

        :param city: Name of the city,
            spelled out.
        :param int days: Number of days.
        :type city: str
        :returns: The forecast.
        """
        return city

    def numpy(city: str, days: int = 1) -> str:
        """Get the weather forecast.

        Parameters
        ----------
        city : str
            Name of the city,
            spelled out.
        days : int, optional
            Number of days.

        Returns
        -------
        str
            The forecast.
        """
        return city

    def google(city: str, days: int = 1) -> str:
        """Get the weather forecast.

        Args:
            city (str): Name of the city,
                spelled out.
            days: Number of days.

        Returns:
            The forecast.
        """
        return city

    for fn in (sphinx, numpy, google):
        spec = ar.tool(fn)
        assert spec.description == "Get the weather forecast.", fn.__name__
        props = spec.parameters["properties"]
        assert props["city"]["description"] == "Name of the city, spelled out.", fn.__name__
        assert props["days"]["description"] == "Number of days.", fn.__name__


def test_a_field_description_wins_over_the_docstring() -> None:
    def lookup(key: str = Field(default="k", description="From the field.")) -> str:
        """Looks up.

        Args:
            key: From the docstring.
        """
        return key

    assert ar.tool(lookup).parameters["properties"]["key"]["description"] == "From the field."


# --- 14. required_fields ----------------------------------------------------------------------


async def test_required_fields_are_added_to_a_copy_of_the_schemas_required() -> None:
    spec = ar.ToolSpec("lookup", "d", lambda a: a, required_fields=["id"])
    assert spec.definition()["parameters"]["required"] == ["id"]
    parameters = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "required": ["a"],
    }
    both = ar.ToolSpec("both", "d", lambda a: a, parameters=parameters, required_fields=["b"])
    assert both.required_fields == ("a", "b") and both.parameters["required"] == ["a", "b"]
    assert parameters["required"] == ["a"]  # the caller's schema is left as it was
    missing = await ar.ToolRegistry([both]).call("both", {"b": "x"})
    assert missing.error_kind == "permanent" and "a" in missing.content


# --- 16. names --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["my tool", "<lambda>", "a\nb", "a\n", "x" * 65, "né"])
def test_invalid_tool_names_are_refused(name: str) -> None:
    with pytest.raises(ar.ToolError, match="invalid"):
        ar.ToolSpec(name, "d", lambda a: a)


def test_valid_tool_names_and_a_lambda_needs_a_name() -> None:
    for name in ("a", "get-weather_2", "x" * 64):
        assert ar.ToolSpec(name, "d", lambda a: a).name == name
    with pytest.raises(ar.ToolError, match="name="):
        ar.tool(lambda q: q)
    assert ar.tool(lambda q: q, name="echo").name == "echo"


# --- 18. run_inline with a timeout -------------------------------------------------------------


def test_run_inline_with_a_timeout_is_refused() -> None:
    with pytest.raises(ar.ToolError, match="run_inline"):
        ar.ToolSpec("inl", "d", lambda a: "done", timeout=0.1, run_inline=True)


def test_run_inline_and_a_timeout_set_later_are_refused_together() -> None:
    inline = ar.ToolSpec("inl", "d", lambda a: "done", run_inline=True)
    with pytest.raises(ar.ToolError, match="run_inline"):
        inline.timeout = 0.1  # would be ignored: nothing interrupts a call on the loop
    assert inline.timeout is None
    timed = ar.tool(lambda q: q, name="timed", timeout=0.1)
    with pytest.raises(ar.ToolError, match="run_inline"):
        timed.run_inline = True
    assert timed.run_inline is False
    # One at a time, either may be changed; and copies (set slot by slot) still work.
    timed.timeout = None
    timed.run_inline = True
    inline.run_inline = False
    inline.timeout = 0.1
    for spec in (timed, inline):
        clone = copy.copy(spec)
        assert (clone.run_inline, clone.timeout) == (spec.run_inline, spec.timeout)


# --- 19. truncation to tiny limits -------------------------------------------------------------


def test_truncation_never_exceeds_max_chars() -> None:
    assert _truncate("x" * 100, 5) == "xxxxx"
    assert _truncate("x" * 100, 0) == ""
    assert _truncate("x" * 100, -1) == ""
    assert _truncate("x" * 100, 14) == "x" + " …[truncated]"
    assert _truncate("short", 5) == "short"
    for limit in range(0, 30):
        assert len(_truncate("y" * 100, limit)) == limit


async def test_tiny_observation_limits_are_honoured() -> None:
    registry = ar.ToolRegistry([ar.ToolSpec("e", "d", lambda a: "y" * 100)])
    assert (await registry.call("e", {}, max_chars=10)).content == "y" * 10
    assert (await registry.call("e", {}, max_chars=0)).content == ""


# --- 20. structured results as JSON ------------------------------------------------------------


class _Place(pydantic.BaseModel):
    city: str
    tags: list[str]


@dataclasses.dataclass
class _Reading:
    city: str
    celsius: int


class _Unit(enum.Enum):
    C = "celsius"


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (_Place(city="Paris", tags=["x"]), '{"city": "Paris", "tags": ["x"]}'),
        ([_Place(city="Oslo", tags=[])], '[{"city": "Oslo", "tags": []}]'),
        (_Reading("Rome", 21), '{"city": "Rome", "celsius": 21}'),
        (_Unit.C, '"celsius"'),
        ({"unit": _Unit.C}, '{"unit": "celsius"}'),
        (b"hello \xff", "hello \ufffd"),
        ({"raw": b"abc"}, '{"raw": "abc"}'),
    ],
)
async def test_structured_results_are_rendered_as_json(result: object, text: str) -> None:
    spec = ar.ToolSpec("give", "d", lambda a: result)
    obs = await ar.ToolRegistry([spec]).call("give", {})
    assert obs.ok and obs.content == text
    if text.startswith(("{", "[")):
        json.loads(obs.content)


class _Status(str, enum.Enum):  # noqa: UP042 (the str mixin, as much code writes it)
    ACTIVE = "active"


class _Level(enum.Enum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class _Tally:
    counts: dict[_Level, int]


async def _rendered(result: object) -> str:
    obs = await ar.ToolRegistry([ar.ToolSpec("give", "d", lambda a: result)]).call("give", {})
    assert obs.ok
    return obs.content


async def test_a_str_based_enum_result_is_rendered_by_its_value() -> None:
    assert await _rendered([_Status.ACTIVE]) == '["active"]'  # nested: by value
    assert await _rendered(_Status.ACTIVE) == "active"  # not `_Status.ACTIVE`


async def test_dict_keys_json_refuses_are_made_text_not_the_whole_result_a_repr() -> None:
    assert await _rendered({_Level.LOW: 3, _Level.HIGH: 4}) == '{"1": 3, "2": 4}'
    assert await _rendered({"by_unit": {_Unit.C: [_Level.LOW]}}) == (
        '{"by_unit": {"celsius": [1]}}'
    )
    assert await _rendered({(1, 2): "pair", None: True}) == '{"(1, 2)": "pair", "null": true}'
    assert await _rendered(_Tally({_Level.HIGH: 1})) == '{"counts": {"2": 1}}'
    looped: dict[object, object] = {_Level.LOW: 1}
    looped["self"] = looped
    assert await _rendered(looped) == str(looped)  # a cycle: `str`, as before
    # Keys that would become the same text: `str`, which keeps both entries.
    collisions: list[dict[object, str]] = [
        {_Level.LOW: "enum", 1: "int"},
        {(1, 2): "a", "(1, 2)": "b"},
        {_Level.LOW: "enum", "1": "text"},  # the same once `json` writes the int as text
        {(0,): "tuple", None: "none", "null": "text"},
    ]
    for colliding in collisions:
        assert await _rendered(colliding) == str(colliding)


# --- 21. aliases -------------------------------------------------------------------------------


def _alias_annotated(x: Annotated[int, Field(alias="xx")]) -> str:
    """Takes x by its alias.

    Args:
        x: The x.
    """
    return f"x={x}"


def _alias_validation(x: Annotated[int, Field(validation_alias="xx")]) -> str:
    """Takes x by its validation alias.

    Args:
        x: The x.
    """
    return f"x={x}"


def _alias_default(x: int = Field(1, alias="xx")) -> str:
    """Takes x by its alias, with a default.

    Args:
        x: The x.
    """
    return f"x={x}"


@pytest.mark.parametrize("fn", [_alias_annotated, _alias_validation, _alias_default])
async def test_a_parameter_with_an_alias_goes_by_its_alias(fn: Callable[..., str]) -> None:
    spec = ar.tool(fn, name="aliased")
    assert list(spec.parameters["properties"]) == ["xx"]
    assert spec.parameters["properties"]["xx"]["description"] == "The x."
    registry = ar.ToolRegistry([spec])
    assert await registry.call("aliased", {"xx": 5}) == ("x=5", None)
    assert await registry.call("aliased", '{"xx": "6"}') == ("x=6", None)
    by_name = await registry.call("aliased", {"x": 5})
    assert by_name.error_kind == "permanent"
    assert "x: unexpected argument (the arguments are: xx)" in by_name.content
    if fn is _alias_default:
        assert spec.parameters["properties"]["xx"]["default"] == 1
        assert await registry.call("aliased", {}) == ("x=1", None)
    else:
        assert spec.parameters["required"] == ["xx"]
        assert await registry.call("aliased", 7) == ("x=7", None)  # the only required argument
        assert "xx: Field required" in by_name.content


async def test_an_alias_lets_a_tool_take_a_keyword_as_an_argument_name() -> None:
    @ar.tool
    async def trip(from_: Annotated[str, Field(alias="from")], to: str, /) -> str:
        """Plans a trip."""
        return f"{from_}->{to}"

    assert list(trip.parameters["properties"]) == ["from", "to"]
    assert await ar.ToolRegistry([trip]).call("trip", {"from": "A", "to": "B"}) == ("A->B", None)


def test_an_alias_clashing_with_another_parameter_is_a_tool_error() -> None:
    def clash(x: Annotated[int, Field(alias="y")], y: int) -> str:
        """Clashes."""
        return "x"

    with pytest.raises(ar.ToolError, match=r"'clash'.*'y'"):
        ar.tool(clash)


# --- 22. a default filled in from `Annotated[..., Field(default=...)]` --------------------------


async def test_unknown_arguments_are_refused_when_an_annotated_field_has_a_default() -> None:
    @ar.tool
    async def search(
        query: str,
        limit: Annotated[int, Field(default=10, ge=1)],
        tags: Annotated[list[str], Field(default_factory=list)],
    ) -> str:
        """Searches."""
        return f"{query} limit={limit} tags={tags}"

    registry = ar.ToolRegistry([search])
    assert (await registry.call("search", {"query": "q"})).content == "q limit=10 tags=[]"
    for arguments in ({"query": "q", "limt": 1}, {"query": "q", "typo": 1, "tags": []}):
        obs = await registry.call("search", arguments)
        assert obs.error_kind == "permanent", arguments
        assert "unexpected argument (the arguments are: query, limit, tags)" in obs.content


# --- 23. text starting with '{' for a tool whose only argument is a string -----------------------


@ar.tool
def run_code(code: str) -> str:
    """Runs Python code."""
    return code


@pytest.mark.parametrize(
    "text", ["{x for x in range(3)}", "{'a': 1}", '{"a": 1}', "{}", "  {", '{"b": 2} trailing']
)
async def test_text_that_is_no_valid_arguments_object_is_the_only_arguments_value(
    text: str,
) -> None:
    plain = ar.ToolSpec("plain", "d", lambda a: a["code"], required_fields=["code"])
    registry = ar.ToolRegistry([run_code, plain])
    assert await registry.call("run_code", text) == (text, None)
    assert await registry.call("plain", text) == (text, None)


async def test_text_that_is_a_valid_arguments_object_is_that_object() -> None:
    registry = ar.ToolRegistry([run_code])
    assert await registry.call("run_code", '{"code": "print(1)"}') == ("print(1)", None)


async def test_a_brace_text_that_fits_neither_way_reports_the_objects_error() -> None:
    @ar.tool
    def double(n: int) -> int:
        """Doubles."""
        return 2 * n

    registry = ar.ToolRegistry([double])
    assert await registry.call("double", '{"n": 4}') == ("8", None)
    missing = await registry.call("double", '{"m": 4}')
    assert missing.error_kind == "permanent" and "n: Field required" in missing.content
    not_json = await registry.call("double", "{n: 4}")
    assert not_json.error_kind == "permanent" and "must be a JSON object" in not_json.content


# --- 24. docstrings: nested parentheses in a type; an underlined summary ------------------------


def test_a_google_argument_type_with_nested_parentheses_keeps_its_description() -> None:
    def total(scale: float, weights: dict[str, int]) -> float:
        """Weighted total.

        Args:
            scale (float): Multiplier applied to the total.
            weights (dict(str, int)): Weight of each item, by name.
        """
        return scale

    props = ar.tool(total).parameters["properties"]
    assert props["scale"]["description"] == "Multiplier applied to the total."
    assert props["weights"]["description"] == "Weight of each item, by name."


def test_an_underlined_line_that_names_no_section_is_prose() -> None:
    def search(query: str) -> str:
        """Search the web.
        ==================

        Args:
            query: What to search for.
        """
        return query

    def fetch(url: str) -> str:
        """Fetch a page.
        ---------------
        Returns its text.

        Parameters
        ----------
        url : str
            The address.
        """
        return url

    spec = ar.tool(search)
    assert spec.description == "Search the web."
    assert spec.parameters["properties"]["query"]["description"] == "What to search for."
    spec = ar.tool(fetch)
    assert spec.description == "Fetch a page. Returns its text."
    assert spec.parameters["properties"]["url"]["description"] == "The address."


# --- 25. results that contain themselves, or nest deeply ---------------------------------------


@dataclasses.dataclass(eq=False)
class _Node:
    name: str
    next: _Node | None = None


@dataclasses.dataclass
class _Chain:
    child: _Chain | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass
class _Locked:
    name: str
    lock: Any


async def test_a_dataclass_that_contains_itself_or_nests_deeply_is_rendered_by_str() -> None:
    node = _Node("a")
    node.next = node
    chain = _Chain()
    for _ in range(5000):
        chain = _Chain(chain)
    for result, text in ((node, "_Node(name='a', next=...)"), (chain, "_Chain()")):
        spec = ar.ToolSpec("give", "d", functools.partial(lambda r, a: r, result))
        assert await ar.ToolRegistry([spec]).call("give", {}) == (text, None)


async def test_a_dataclass_field_is_rendered_without_a_deep_copy() -> None:
    result = _Locked("x", threading.Lock())  # a lock cannot be deep-copied
    obs = await ar.ToolRegistry([ar.ToolSpec("give", "d", lambda a: result)]).call("give", {})
    assert obs.ok and json.loads(obs.content)["name"] == "x"


# --- 26. SystemExit from a tool with a timeout -------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_system_exit_from_a_tool_with_a_timeout_is_a_permanent_observation(
    is_async: bool,
) -> None:
    def convert(args: dict[str, Any]) -> str:
        raise SystemExit(2)

    async def aconvert(args: dict[str, Any]) -> str:
        raise SystemExit(2)

    spec = ar.ToolSpec("convert", "d", aconvert if is_async else convert, timeout=5)

    async def main() -> ar.Observation:
        return await ar.ToolRegistry([spec]).call("convert", {})

    obs = asyncio.run(main())  # a loop of its own: an escaping SystemExit would stop it
    assert obs == ("error: the tool tried to exit the program (SystemExit: 2)", "permanent")


# --- 27. the worker pool of sync tools with a timeout -------------------------------------------


_POOL_SIZE = min(32, (os.cpu_count() or 1) + 4)


async def test_timed_sync_calls_share_a_pool_of_reused_daemon_workers() -> None:
    threads: list[threading.Thread] = []

    @ar.tool(timeout=5)
    def quick(q: str) -> str:
        """Answers at once."""
        threads.append(threading.current_thread())
        time.sleep(0.001)
        return q

    registry = ar.ToolRegistry([quick])
    before = threading.active_count()
    peak = before
    for _ in range(2):
        calls = [asyncio.ensure_future(registry.call("quick", str(i))) for i in range(200)]
        while not all(c.done() for c in calls):
            peak = max(peak, threading.active_count())
            await asyncio.sleep(0.001)
        assert [c.result().content for c in calls] == [str(i) for i in range(200)]
    assert len({id(t) for t in threads}) <= _POOL_SIZE
    assert peak <= before + _POOL_SIZE
    assert all(t.daemon for t in threads)


async def test_a_full_pool_of_hung_timed_calls_does_not_block_a_timed_call() -> None:
    release = threading.Event()

    @ar.tool(timeout=0.1)
    def hang(q: str) -> str:
        """Waits on a server that never answers."""
        release.wait(10)
        return "late"

    @ar.tool(timeout=5)
    def quick(q: str) -> str:
        """Answers at once."""
        return "quick ok"

    registry = ar.ToolRegistry([hang, quick])
    try:
        hung = [registry.call("hang", {"q": "x"}) for _ in range(_POOL_SIZE)]
        *outcomes, obs = await asyncio.gather(*hung, registry.call("quick", {"q": "x"}))
        assert {o.content for o in outcomes} == {"error: timed out after 0.1 s"}
        assert obs == ("quick ok", None)  # run by a worker that took a stuck one's place
        assert await asyncio.wait_for(registry.call("quick", {"q": "x"}), 2) == ("quick ok", None)
    finally:
        release.set()


async def test_a_timed_call_that_times_out_waiting_for_a_worker_never_runs() -> None:
    release = threading.Event()
    ran: list[str] = []

    started: list[str] = []

    @ar.tool(timeout=5)
    def busy(q: str) -> str:
        """Holds a worker."""
        started.append(q)
        release.wait(10)
        return "done"

    @ar.tool(timeout=0.05)
    def late(q: str) -> str:
        """Must not run once its call has given up."""
        ran.append(q)
        return "ran"

    registry = ar.ToolRegistry([busy, late])
    calls = [asyncio.ensure_future(registry.call("busy", {"q": "x"})) for _ in range(_POOL_SIZE)]
    try:
        while len(started) < _POOL_SIZE:  # every worker busy
            await asyncio.sleep(0.001)
        timed_out = await registry.call("late", {"q": "x"})
        assert timed_out == ("error: timed out after 0.05 s", "transient")
    finally:
        release.set()
    assert {o.content for o in await asyncio.gather(*calls)} == {"done"}
    assert await registry.call("late", {"q": "y"}) == ("ran", None)
    assert ran == ["y"]


async def test_slow_recall_embeddings_hold_no_worker_a_tool_needs() -> None:
    # Recalls embedded their queries on the sync tools' pool: runs waiting on a slow
    # embeddings server filled it, and another runtime's instant tool "timed out after 1 s"
    # without having run.
    release = threading.Event()
    embedding: list[str] = []

    class SlowEmbedder:
        dim = 4

        def embed(self, texts: list[str]) -> np.ndarray:
            embedding.extend(texts)
            release.wait(10)
            return np.ones((len(texts), 4), dtype=np.float32)

    store = ar.EpisodicStore(embedder=SlowEmbedder(), similarity_weight=1.0)
    store.add_episode("a", "x", 0.5, embedding=[1.0, 0.0, 0.0, 0.0])
    recalling = ar.AgentRuntime(memory=store)

    @ar.tool(timeout=2)
    def ping() -> str:
        """Answers at once."""
        return "pong"

    answer = ar.ScriptedProvider(["Thought: t\nAction: FINAL_ANSWER ok"], loop=True)
    recalls = [
        asyncio.ensure_future(recalling.run_agent_with_provider("a", f"q{i}", answer))
        for i in range(_POOL_SIZE + 2)
    ]
    try:
        while len(embedding) < _POOL_SIZE:  # every recall worker waits on the server
            await asyncio.sleep(0.001)
        assert await ar.ToolRegistry([ping]).call("ping", {}) == ("pong", None)
    finally:
        release.set()
    assert {s.final_answer for s in await asyncio.gather(*recalls)} == {"ok"}


async def test_the_queued_calls_of_cancelled_runs_never_run() -> None:
    # Each cancelled running call gave its place to a new worker, which took the next queued
    # call, not yet abandoned by its task: every queued call of the cancelled runs ran, each
    # on a thread of its own, past the pool's size.
    release = threading.Event()
    started: list[str] = []

    @ar.tool(timeout=5)
    def send(q: str) -> str:
        """Sends an email (a side effect no cancelled run may have)."""
        started.append(q)
        release.wait(10)
        return "sent"

    rt = ar.AgentRuntime(ar.AgentConfig(), tools=[send])

    def infer(i: int) -> Any:
        async def reply(prompt: str) -> str:
            return f'Thought: t\nAction: send {{"q": "{i}"}}'

        return reply

    runs = [asyncio.ensure_future(rt.run_agent("a", "q", infer(i))) for i in range(_POOL_SIZE + 4)]
    try:
        while len(started) < _POOL_SIZE:  # every worker busy, four calls queued
            await asyncio.sleep(0.001)
        for run in runs:
            run.cancel()
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
        await asyncio.sleep(0.2)  # a worker taking a queued call would have by now
        assert len(started) == _POOL_SIZE
    finally:
        release.set()
    assert await ar.ToolRegistry([send]).call("send", {"q": "after"}) == ("sent", None)


async def test_a_timed_sync_call_sees_the_callers_context_variables() -> None:
    @ar.tool(timeout=5)
    def whoami() -> str:
        """Reads a context variable."""
        return _USER.get()

    token = _USER.set("alice")
    try:
        assert await ar.ToolRegistry([whoami]).call("whoami", {}) == ("alice", None)
    finally:
        _USER.reset(token)


_USER: contextvars.ContextVar[str] = contextvars.ContextVar("_USER", default="nobody")


# --- 28. settings changed after `@tool` -----------------------------------------------------------


async def test_a_handler_or_settings_set_after_the_decorator_apply() -> None:
    @ar.tool
    async def greet(name: str) -> str:
        """Greets."""
        return f"hello {name}"

    registry = ar.ToolRegistry([greet])
    assert (await registry.call("greet", {"name": "a"})).content == "hello a"
    greet.handler = lambda arguments: f"hi {arguments['name']}"
    assert (await registry.call("greet", {"name": "a"})).content == "hi a"


async def test_a_sync_handler_set_in_place_of_an_async_one_runs_off_the_loop_in_its_timeout() -> (
    None
):
    @ar.tool(timeout=0.2)
    async def lookup() -> str:
        """Looks up."""
        return "async"

    ran: list[bool] = []

    def blocking(arguments: dict[str, Any]) -> str:  # a sync stand-in, as a test stubs one
        ran.append(threading.current_thread() is threading.main_thread())
        time.sleep(1.0)
        return "sync"

    lookup.handler = blocking
    assert not lookup.is_async
    started = time.monotonic()
    observation = await ar.ToolRegistry([lookup]).call("lookup", {})
    # Before, it ran on the event loop, past its timeout, and its str result was awaited.
    assert time.monotonic() - started < 0.9
    assert observation.error_kind == "transient"
    assert "timed out" in observation.content
    assert ran == [False]
    lookup.handler = lambda arguments: "fast"
    assert (await ar.ToolRegistry([lookup]).call("lookup", {})).content == "fast"


# --- 29. defaults: `Annotated[..., Field(default=...)]` against the signature's; bad defaults ----


def _oracle(fn: Callable[..., str]) -> str:
    """What `fn` returns (the repr of its argument) when pydantic's `validate_call` calls it
    with no arguments, or "refused"."""
    try:
        return pydantic.validate_call(fn)()
    except pydantic.ValidationError:
        return "refused"


def _annotated_5_signature_3(x: Annotated[int, Field(default=5)] = 3) -> str:
    """Takes x."""
    return repr(x)


def _annotated_5_field_7(x: Annotated[int, Field(default=5)] = Field(default=7)) -> str:
    """Takes x."""
    return repr(x)


def _annotated_5_field_ge_0(x: Annotated[int, Field(default=5)] = Field(ge=0)) -> str:
    """Takes x."""
    return repr(x)


def _annotated_5_signature_none(x: Annotated[int, Field(default=5)] = None) -> str:  # type: ignore[assignment]  # noqa: RUF013
    """Takes x."""
    return repr(x)


def _annotated_5_keyword_only(q: str, *, x: Annotated[int, Field(default=5, ge=0)] = 3) -> str:
    """Takes x."""
    return repr(x)


def _annotated_5_positional_only(x: Annotated[int, Field(default=5)] = 3, /) -> str:
    """Takes x."""
    return repr(x)


@pytest.mark.parametrize(
    ("fn", "filled"),
    [
        (_annotated_5_signature_3, 3),
        (_annotated_5_field_7, 7),
        (_annotated_5_field_ge_0, 5),
        (_annotated_5_signature_none, None),
        (_annotated_5_positional_only, 3),
    ],
)
async def test_an_omitted_argument_gets_the_default_validate_call_gives(
    fn: Callable[..., str], filled: int | None
) -> None:
    assert _oracle(fn) == repr(filled)  # pydantic's own answer: the signature's default wins
    spec = ar.tool(fn, name="f")
    registry = ar.ToolRegistry([spec])
    assert await registry.call("f", {}) == (repr(filled), None)
    assert spec.check_arguments({}).get("x", filled) == filled
    shown = spec.parameters["properties"]["x"]
    if filled is None:  # `int` refuses the None the model would pass back: not shown
        assert "default" not in shown
    else:
        assert shown["default"] == filled


async def test_a_signature_default_replaces_an_annotated_one_and_keeps_its_constraints() -> None:
    spec = ar.tool(_annotated_5_keyword_only, name="f")
    registry = ar.ToolRegistry([spec])
    assert spec.parameters["properties"]["x"] == {"default": 3, "minimum": 0, "type": "integer"}
    assert await registry.call("f", {"q": "a"}) == ("3", None)
    assert await registry.call("f", {"q": "a", "x": 9}) == ("9", None)
    refused = await registry.call("f", {"q": "a", "x": -1})
    assert refused.error_kind == "permanent" and "x: Input should be greater" in refused.content
    unknown = await registry.call("f", {"q": "a", "y": 1})
    assert unknown.error_kind == "permanent" and "y: unexpected argument" in unknown.content


def _factory_and_signature(x: Annotated[int, Field(default_factory=lambda: 5)] = 3) -> str:
    """Takes x."""
    return repr(x)


def _factory_and_field(x: Annotated[int, Field(default_factory=lambda: 5)] = Field(3)) -> str:
    """Takes x."""
    return repr(x)


def _default_and_field_factory(
    x: Annotated[int, Field(default=5)] = Field(default_factory=lambda: 7),
) -> str:
    """Takes x."""
    return repr(x)


@pytest.mark.parametrize(
    "fn", [_factory_and_signature, _factory_and_field, _default_and_field_factory]
)
def test_a_default_and_a_default_factory_are_a_tool_error_naming_the_parameter(
    fn: Callable[..., str],
) -> None:
    with pytest.raises(TypeError, match="both default and default_factory"):
        pydantic.validate_call(fn)  # refused when decorated
    with pytest.raises(ar.ToolError, match=r"'f'.*parameter 'x'.*default_factory"):
        ar.tool(fn, name="f")


async def test_field_defaults_and_annotated_constraints_keep_working() -> None:
    @ar.tool
    def f(a: int = Field(default=5, ge=0), b: Annotated[int, Field(ge=0)] = 3) -> str:
        """Takes a and b."""
        return f"{a} {b}"

    registry = ar.ToolRegistry([f])
    assert f.parameters["properties"]["a"] == {"default": 5, "minimum": 0, "type": "integer"}
    assert f.parameters["properties"]["b"] == {"default": 3, "minimum": 0, "type": "integer"}
    assert await registry.call("f", {}) == ("5 3", None)
    for name in ("a", "b"):
        refused = await registry.call("f", {name: -1})
        assert refused.error_kind == "permanent" and f"{name}: Input should be" in refused.content


def _int_default_none(x: int = None) -> str:  # type: ignore[assignment]  # noqa: RUF013
    """Takes x."""
    return repr(x)


def _int_default_text(x: int = "a") -> str:  # type: ignore[assignment]
    """Takes x."""
    return repr(x)


def _annotated_ge_10_default_3(x: Annotated[int, Field(ge=10)] = 3) -> str:
    """Takes x."""
    return repr(x)


def _field_ge_10_default_3(x: int = Field(default=3, ge=10)) -> str:
    """Takes x."""
    return repr(x)


def _annotated_default_3_ge_10(x: Annotated[int, Field(default=3, ge=10)]) -> str:
    """Takes x."""
    return repr(x)


@pytest.mark.parametrize(
    "fn",
    [
        _int_default_none,
        _int_default_text,
        _annotated_ge_10_default_3,
        _field_ge_10_default_3,
        _annotated_default_3_ge_10,
    ],
)
async def test_a_default_a_call_refuses_is_not_shown_but_still_filled_in(
    fn: Callable[..., str],
) -> None:
    spec = ar.tool(fn, name="f")
    shown = spec.parameters["properties"]["x"]
    assert "default" not in shown
    assert "required" not in spec.parameters  # still optional
    registry = ar.ToolRegistry([spec])
    # Omitted, it gets its default unvalidated, as from `validate_call`.
    assert await registry.call("f", {}) == (_oracle(fn), None)


async def test_a_default_of_a_type_annotated_with_unhashable_metadata_is_shown() -> None:
    @ar.tool
    def wait(seconds: Annotated[int, {"unit": "s"}] = 3) -> str:
        """Waits."""
        return repr(seconds)

    assert wait.parameters["properties"]["seconds"] == {"default": 3, "type": "integer"}
    assert await ar.ToolRegistry([wait]).call("wait", {}) == ("3", None)


async def test_every_default_shown_is_one_the_model_may_pass() -> None:
    @ar.tool
    def f(
        q: str,
        n: int = 2,
        o: int | None = None,
        u: _Unit = _Unit.C,
        t: tuple[int, int] = (1, 2),
        m: Annotated[int, Field(ge=0)] = 3,
        k: Annotated[str, Field(alias="kk", max_length=3)] = "abc",
        bad: int = None,  # type: ignore[assignment]  # noqa: RUF013
    ) -> str:
        """Takes defaults."""
        return "ok"

    properties = f.parameters["properties"]
    shown = {k: p["default"] for k, p in properties.items() if "default" in p}
    assert shown == {"n": 2, "o": None, "u": "celsius", "t": [1, 2], "m": 3, "kk": "abc"}
    registry = ar.ToolRegistry([f])
    assert await registry.call("f", {"q": "x", **shown}) == ("ok", None)
    assert await registry.call("f", json.dumps({"q": "x", **shown})) == ("ok", None)


class _StrictOrder(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)
    when: datetime.date
    ids: tuple[int, int]


async def test_strict_types_take_the_json_their_schema_asks_for() -> None:
    @ar.tool
    def f(
        order: _StrictOrder,
        day: Annotated[datetime.date, Strict()],
        uid: Annotated[uuid.UUID, Strict()],
        tags: Annotated[tuple[str, ...], Strict()] = (),
        pair: Annotated[tuple[int, int], Field(strict=True)] = (1, 2),
    ) -> str:
        """Takes strict arguments."""
        return repr((order, day, uid, tags, pair))

    registry = ar.ToolRegistry([f])
    day, uid = datetime.date(2024, 1, 2), uuid.UUID(int=1)
    sent = {
        "order": {"when": "2024-01-02", "ids": [1, 2]},
        "day": "2024-01-02",
        "uid": str(uid),
        "tags": ["a"],
        "pair": [3, 4],
    }
    expected = repr((_StrictOrder(when=day, ids=(1, 2)), day, uid, ("a",), (3, 4)))
    assert await registry.call("f", sent) == (expected, None)
    assert await registry.call("f", json.dumps(sent)) == (expected, None)
    # Python objects (a middleware's, say) still validate in Python mode.
    objects = {"order": _StrictOrder(when=day, ids=(1, 2)), "day": day, "uid": uid}
    assert await registry.call("f", {**objects, "tags": ("a",), "pair": (3, 4)}) == (
        expected,
        None,
    )
    # A bad value is named, and only it: not the good JSON that Python mode refuses.
    bad = await registry.call("f", {**sent, "day": "2024-13-02"})
    assert bad.error_kind == "permanent"
    assert bad.content.startswith("error: invalid arguments: day: Input should be a valid date")
    assert "order" not in bad.content and "uid" not in bad.content
    # So the defaults, as JSON arrays, are ones the model may pass back: they are shown.
    properties = f.parameters["properties"]
    assert properties["tags"]["default"] == [] and properties["pair"]["default"] == [1, 2]


def _lookup(unit: str) -> str:
    return {"c": "celsius"}[unit]  # a KeyError, not a ValueError, for an unknown unit


async def test_a_default_whose_validator_raises_is_not_shown_and_others_are() -> None:
    @ar.tool
    def f(
        a: Annotated[str, AfterValidator(_lookup)] = "kelvin",
        b: Annotated[str, AfterValidator(_lookup)] = "c",
    ) -> str:
        """Converts."""
        return f"{a} {b}"

    properties = f.parameters["properties"]
    assert "default" not in properties["a"] and properties["b"]["default"] == "c"
    registry = ar.ToolRegistry([f])
    assert await registry.call("f", {}) == ("kelvin c", None)  # omitted: unvalidated
    assert await registry.call("f", {"b": "c"}) == ("kelvin celsius", None)


_FACTORY_CALLS: list[int] = []


def _counted_factory() -> list[str]:
    _FACTORY_CALLS.append(1)
    return []


async def test_checking_the_defaults_calls_no_default_factory() -> None:
    _FACTORY_CALLS.clear()

    @ar.tool
    def f(
        tags: Annotated[list[str], Field(default_factory=_counted_factory)],
        limit: Annotated[int, Field(default=5)] = None,  # type: ignore[assignment]  # noqa: RUF013
    ) -> str:
        """Takes tags."""
        return f"{tags} {limit}"

    assert _FACTORY_CALLS == []
    assert "default" not in f.parameters["properties"]["limit"]
    assert await ar.ToolRegistry([f]).call("f", {}) == ("[] None", None)
    assert _FACTORY_CALLS == [1]


def _validated_7(x: Annotated[int, Field(validate_default=True)] = "7") -> str:  # type: ignore[assignment]
    """Takes x."""
    return repr(x)


def _validated_ge_10(x: Annotated[int, Field(ge=10, validate_default=True)] = 3) -> str:
    """Takes x."""
    return repr(x)


def _validated_field_text(x: int = Field(default="a", validate_default=True)) -> str:
    """Takes x."""
    return repr(x)


async def test_validate_default_on_an_annotated_field_validates_the_signature_default() -> None:
    assert _oracle(_validated_7) == "7"  # the int 7
    spec = ar.tool(_validated_7, name="f")
    assert await ar.ToolRegistry([spec]).call("f", {}) == ("7", None)
    assert spec.parameters["properties"]["x"]["default"] == "7"  # and "7" passes, as 7


@pytest.mark.parametrize("fn", [_validated_ge_10, _validated_field_text])
async def test_a_validated_default_that_fails_makes_the_argument_required(
    fn: Callable[..., str],
) -> None:
    assert _oracle(fn) == "refused"  # every call without x fails in `validate_call` too
    spec = ar.tool(fn, name="f")
    assert spec.parameters["required"] == ["x"]
    assert "default" not in spec.parameters["properties"]["x"]
    registry = ar.ToolRegistry([spec])
    omitted = await registry.call("f", {})
    assert omitted.error_kind == "permanent" and "x: Input should be" in omitted.content
    assert await registry.call("f", {"x": 12}) == ("12", None)
    assert await registry.call("f", 12) == ("12", None)  # the only required argument


def _far(
    place: str,
    max_km: float = math.inf,
    min_km: float = -math.inf,
    ratio: float = math.nan,
    marks: tuple[float, ...] = (1.0, math.inf),
    step: float = 0.5,
) -> str:
    """Places near `place`."""
    return f"{max_km} {min_km} {ratio} {marks} {step}"


async def test_a_default_with_no_json_form_is_not_shown_but_still_filled_in() -> None:
    spec = ar.tool(_far)
    properties = spec.parameters["properties"]
    shown = {k: p["default"] for k, p in properties.items() if "default" in p}
    assert shown == {"step": 0.5}
    assert spec.parameters["required"] == ["place"]  # the others still optional
    json.dumps(spec.definition(), allow_nan=False)  # no `Infinity` nor `NaN` in a request
    registry = ar.ToolRegistry([spec])
    assert await registry.call("_far", {"place": "x"}) == ("inf -inf nan (1.0, inf) 0.5", None)


def test_sync_tools_that_run_sub_agents_with_sync_tools_do_not_starve() -> None:
    """As many delegating calls as a thread pool has workers, each running an agent whose
    own tool is sync: every sub-agent's loop has its own executor, so all finish."""

    @ar.tool
    def leaf(x: int) -> int:
        """Returns x."""
        return x

    @ar.tool
    def delegate(x: int) -> int:
        """Runs a sub-agent."""
        time.sleep(0.05)
        inner = ar.AgentRuntime(tools=[leaf])
        infer = react(f'Thought: t\nAction: leaf {{"x": {x}}}', "Action: FINAL_ANSWER ok")
        session = asyncio.run(inner.run_agent("inner", "q", infer))
        return int(session.steps[0].observation)

    workers = min(32, (os.cpu_count() or 1) + 4)
    outer = ar.AgentRuntime(tools=[delegate])

    async def one(x: int) -> str:
        infer = react(f'Thought: t\nAction: delegate {{"x": {x}}}', "Action: FINAL_ANSWER ok")
        session = await outer.run_agent("outer", "q", infer)
        return session.steps[0].observation

    async def all_runs() -> list[str]:
        return await asyncio.wait_for(asyncio.gather(*(one(x) for x in range(workers))), 30)

    assert asyncio.run(all_runs()) == [str(x) for x in range(workers)]


class _Forecast:
    """A result with no JSON form: shown by its `str`."""

    def __str__(self) -> str:
        return "Weather: sunny\nWind: 5 km/h"


async def test_a_result_with_no_json_form_is_shown_by_its_text_not_quoted() -> None:
    # Its `str` went out as a JSON string: quoted, its line breaks as `\n`.
    assert await _rendered(_Forecast()) == "Weather: sunny\nWind: 5 km/h"
    assert await _rendered(datetime.datetime(2024, 1, 2, 3, 4)) == "2024-01-02 03:04:00"
    assert await _rendered([_Forecast()]) == '["Weather: sunny\\nWind: 5 km/h"]'  # inside: JSON


@pytest.mark.parametrize(
    "result",
    [{101: 5, "101": 0}, {None: 1, "null": 2}, [{"x": {1: "a", "1": "b"}}]],
    ids=["int-and-str", "none-and-null", "nested"],
)
async def test_dict_keys_json_writes_alike_show_the_result_by_its_text(result: object) -> None:
    # `json` wrote both keys ('{"101": 5, "101": 0}'): whoever read it kept one value.
    assert await _rendered(result) == str(result)


async def test_dict_keys_that_are_not_str_but_apart_once_written_stay_json() -> None:
    assert await _rendered({1: "a", 2: "b", None: "c"}) == '{"1": "a", "2": "b", "null": "c"}'


async def test_a_cancellation_asked_just_before_a_tool_call_is_kept() -> None:
    # Ctrl-C under `asyncio.run` cancels the main task from inside whatever it runs: asked
    # just before a call, it was taken for the tool's own work being cancelled (a
    # `transient` observation), and the run went on.
    calls: list[int] = []

    @ar.tool
    async def add(a: int, b: int) -> int:
        """Adds."""
        await asyncio.sleep(0)
        calls.append(a + b)
        return a + b

    registry = ar.ToolRegistry([add])
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await registry.call("add", {"a": 2, "b": 3})
    assert task.uncancel() == 0 and calls == []


async def test_a_cancellation_asked_as_a_tool_returns_is_kept_for_the_next_call() -> None:
    # Asked after the tool's last await (its own `cancel()` here, a Ctrl-C there): before
    # Python 3.13 the count was put back and the next call's tool took the cancellation for
    # its own.
    @ar.tool
    async def stop() -> str:
        """Asks its task to stop, and returns."""
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        return "asked"

    @ar.tool
    async def wait() -> str:
        """Waits a little."""
        await asyncio.sleep(0.01)
        return "waited"

    registry = ar.ToolRegistry([stop, wait])
    with pytest.raises(asyncio.CancelledError):
        await registry.call("stop", {})
        await registry.call("wait", {})
    task = asyncio.current_task()
    assert task is not None
    while task.cancelling():
        task.uncancel()


async def test_a_cancellation_asked_as_a_timed_tool_is_entered_is_kept() -> None:
    # Counted in the timeout's baseline, it was turned into "timed out after 0.05 s" when
    # the tool took longer than that to unwind, and the call's task was uncancelled: lost.
    from llm_agent_runtime.tools import _with_timeout

    async def slow_to_unwind() -> str:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.shield(asyncio.sleep(0.2))  # cleanup outlasting the timeout
        return "done"

    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await _with_timeout(slow_to_unwind(), 0.05)
    assert task.uncancel() == 0
