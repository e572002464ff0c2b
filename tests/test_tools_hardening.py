"""Tools: exceptions futures cannot carry, definitions refused at once, network failures
classified, results rendered faithfully (non-ASCII, numpy), generators refused."""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import functools
import http.server
import json
import math
import socket
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, Generic, NewType, TypeVar

import pytest
from pydantic import BaseModel, Field
from typing_extensions import TypeAliasType, TypedDict

import llm_agent_runtime as ar
from llm_agent_runtime.providers.offline import ScriptedProvider
from llm_agent_runtime.tools import _TRUNCATION_MARK, _truncate, classify_error

# --- 1. StopIteration and other exceptions a future cannot carry ------------------------------


def _first_match(args: dict[str, Any]) -> str:
    return next(r for r in ["apple", "banana"] if args["query"] in r)  # StopIteration: no match


@pytest.mark.parametrize("settings", [{}, {"timeout": 5.0}, {"run_inline": True}])
async def test_a_sync_tool_raising_stop_iteration_is_a_permanent_observation(
    settings: dict[str, Any],
) -> None:
    registry = ar.ToolRegistry([ar.ToolSpec("first_match", "d", _first_match, **settings)])
    obs = await asyncio.wait_for(registry.call("first_match", {"query": "zzz"}), 5)
    assert obs.error_kind == "permanent" and "StopIteration" in obs.content


async def test_an_async_tool_raising_stop_iteration_is_a_permanent_observation() -> None:
    @ar.tool
    async def first(query: str) -> str:
        """Returns the first match."""
        return next(r for r in ["apple"] if query in r)

    # PEP 479 makes it a RuntimeError at the coroutine's edge.
    obs = await asyncio.wait_for(ar.ToolRegistry([first]).call("first", {"query": "z"}), 5)
    assert obs.error_kind == "permanent" and "StopIteration" in obs.content


async def test_a_run_with_a_tool_raising_stop_iteration_finishes() -> None:
    first_match = ar.tool(lambda query: next(r for r in ["apple"] if query in r), name="first")
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[first_match])
    provider = ScriptedProvider(
        [ScriptedProvider.tool_call_reply([("first", {"query": "zzz"})]), "done"]
    )
    session = await asyncio.wait_for(runtime.run_agent_with_provider("a", "find", provider), 5)
    step = session.steps[0]
    assert step.error_kind == "permanent" and "StopIteration" in step.observation
    assert session.final_answer == "done"


@pytest.mark.parametrize(
    ("is_async", "settings"),
    [
        (False, {}),
        (False, {"timeout": 5.0}),
        (False, {"run_inline": True}),
        (True, {}),
        (True, {"timeout": 5.0}),
    ],
)
async def test_a_generator_exit_from_a_tool_is_a_permanent_observation(
    is_async: bool, settings: dict[str, Any]
) -> None:
    def close(args: dict[str, Any]) -> str:
        raise GeneratorExit

    async def aclose(args: dict[str, Any]) -> str:
        raise GeneratorExit

    spec = ar.ToolSpec("close", "d", aclose if is_async else close, **settings)
    obs = await asyncio.wait_for(ar.ToolRegistry([spec]).call("close", {}), 5)
    assert obs.error_kind == "permanent" and "GeneratorExit" in obs.content


# --- 9. other BaseExceptions become observations; the ones meant to stop things propagate -----


class _Abort(BaseException):
    """Like gevent's Timeout or pytest's outcome exceptions: not an Exception."""


@pytest.mark.parametrize("settings", [{}, {"timeout": 5.0}])
@pytest.mark.parametrize("is_async", [False, True])
async def test_a_base_exception_from_a_tool_is_a_permanent_observation(
    settings: dict[str, Any], is_async: bool
) -> None:
    def abort(args: dict[str, Any]) -> str:
        raise _Abort("stop")

    async def aabort(args: dict[str, Any]) -> str:
        raise _Abort("stop")

    spec = ar.ToolSpec("abort", "d", aabort if is_async else abort, **settings)
    obs = await ar.ToolRegistry([spec]).call("abort", {})
    assert obs == ("error: _Abort: stop", "permanent")


async def test_a_cancellation_landing_as_a_timed_tool_returns_is_not_lost() -> None:
    # The caller is cancelled in the loop iteration in which the tool returns (a TaskGroup
    # sibling failing, an outer timeout): the call must end cancelled, not return its result.
    caller: asyncio.Task[Any] | None = None

    async def lookup(args: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        assert caller is not None
        asyncio.get_running_loop().call_soon(caller.cancel)
        return "result"

    registry = ar.ToolRegistry([ar.ToolSpec("lookup", "d", lookup, timeout=5.0)])

    async def call_then_continue() -> str:
        observation = await registry.call("lookup", {})
        await asyncio.sleep(0)  # where the run would go on: the cancellation lands by here
        return observation.content

    caller = asyncio.create_task(call_then_continue())
    with pytest.raises(asyncio.CancelledError):
        await caller


def test_a_timed_tool_ends_with_its_own_result_when_its_timeout_cancels_it() -> None:
    async def degrade(args: dict[str, Any]) -> str:
        try:
            await asyncio.sleep(10)
            return "full result"
        except asyncio.CancelledError:
            return "partial result"

    registry = ar.ToolRegistry([ar.ToolSpec("search", "d", degrade, timeout=0.05)])
    assert asyncio.run(registry.call("search", {})) == ar.Observation("partial result")


@pytest.mark.parametrize("timeout", [None, 10.0])
@pytest.mark.parametrize("decorated", [True, False], ids=["@tool", "ToolSpec"])
@pytest.mark.parametrize("ending", ["returns", "raises"])
async def test_a_tool_that_swallows_its_callers_cancellation(
    timeout: float | None, decorated: bool, ending: str
) -> None:
    # The tool runs in the caller's task. From Python 3.13 a cancellation of the caller (the
    # run) still ends the call cancelled when the tool caught it and returned, or failed
    # another way (the run used to go on to its next model call). Before 3.13 asyncio cannot
    # tell it from a TaskGroup's own cancellation (see the test after this one): the tool's
    # choice stands, as documented.
    started = asyncio.Event()
    delays = [10.0, 0.0]  # the first call is cancelled, the second is not

    async def degrade(query: str) -> str:
        started.set()
        try:
            await asyncio.sleep(delays.pop(0))
        except asyncio.CancelledError:
            if ending == "raises":
                raise RuntimeError("interrupted") from None
        return "partial result"

    if decorated:
        spec = ar.tool(name="search", timeout=timeout)(degrade)
    else:

        async def handler(args: dict[str, Any]) -> str:
            return await degrade(**args)

        spec = ar.ToolSpec("search", "d", handler, timeout=timeout)
    registry = ar.ToolRegistry([spec])
    caller = asyncio.create_task(registry.call("search", {"query": "q"}))
    await started.wait()
    caller.cancel()
    if sys.version_info >= (3, 13):
        with pytest.raises(asyncio.CancelledError):
            await caller
    else:
        observation = await caller
        assert observation.content == (
            "partial result" if ending == "returns" else "error: interrupted"
        )
    # Not cancelled, the same tool gives its result.
    assert (await registry.call("search", {"query": "q"})) == ar.Observation("partial result")


@pytest.mark.parametrize("timeout", [None, 5.0])
async def test_a_tool_that_handles_a_failure_in_its_task_group_is_not_cancelled(
    timeout: float | None,
) -> None:
    # Before Python 3.13 such a TaskGroup leaves its task's count of cancellation requests
    # raised: read as a cancellation of the call, it ended the run as cancelled.
    async def fan_out(args: dict[str, Any]) -> str:
        async def fine() -> None:
            await asyncio.sleep(0)

        async def failing() -> None:
            raise ValueError("one source failed")

        failed = False
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(fine())
                group.create_task(failing())
        except* ValueError:
            failed = True
        return "partial result" if failed else "full result"

    registry = ar.ToolRegistry([ar.ToolSpec("fan_out", "d", fan_out, timeout=timeout)])
    assert await registry.call("fan_out", {}) == ar.Observation("partial result")
    await asyncio.sleep(0)  # nor is the caller cancelled later
    # Nor is a cancellation request left on the caller's task, where the next timeout would
    # take its expiry for a cancellation: a run's loop_timeout_ms ended it `CancelledError`.
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0

    class SlowSecondCall(ScriptedProvider):
        async def chat(self, *args: Any, **kwargs: Any) -> Any:
            if self.calls == 1:
                await asyncio.sleep(5)  # the run's loop timeout passes here
            return await super().chat(*args, **kwargs)

    config = ar.AgentConfig(mode="tools", loop_timeout_ms=200)
    runtime = ar.AgentRuntime(config, tools=registry)
    provider = SlowSecondCall([ScriptedProvider.tool_call_reply([("fan_out", {})]), "done"])
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await runtime.run_agent_with_provider("a", "q", provider)


def test_a_call_driven_outside_asyncio_runs_its_tool() -> None:
    # The task lookup for cancellations raised a bare RuntimeError without a running
    # asyncio loop (a coroutine driven by hand, or by another event loop).
    @ar.tool
    async def add(a: int, b: int) -> int:
        """Adds."""
        return a + b

    call = ar.ToolRegistry([add]).call("add", {"a": 1, "b": 2})
    with pytest.raises(StopIteration) as done:
        call.send(None)
    assert done.value.value == ar.Observation("3")

    async def own_work_cancelled(args: dict[str, Any]) -> str:
        raise asyncio.CancelledError  # a subtask of its own was cancelled, say

    registry = ar.ToolRegistry([ar.ToolSpec("own", "d", own_work_cancelled)])
    call = registry.call("own", {})
    with pytest.raises(StopIteration) as done:
        call.send(None)
    assert done.value.value.error_kind == "transient"


async def test_policy_errors_from_a_tool_still_propagate() -> None:
    async def deny(args: dict[str, Any]) -> str:
        raise ar.PolicyDeniedError("not allowed")

    with pytest.raises(ar.PolicyDeniedError):
        await ar.ToolRegistry([ar.ToolSpec("deny", "d", deny)]).call("deny", {})


@pytest.mark.parametrize(
    "error", [ar.BudgetExceededError("token budget spent"), ar.PolicyDeniedError("not allowed")]
)
async def test_a_policy_error_from_a_tools_task_group_propagates_as_itself(
    error: Exception,
) -> None:
    async def fan_out(args: dict[str, Any]) -> str:  # sub-agents, say, one of which hits it
        async def fine() -> None:
            await asyncio.sleep(0)

        async def refused() -> None:
            raise error

        async with asyncio.TaskGroup() as group:
            group.create_task(fine())
            group.create_task(refused())
        return "all done"

    # Before, it came back as an observation ("unhandled errors in a TaskGroup") and the run
    # went on past the spent budget.
    with pytest.raises(type(error)) as raised:
        await ar.ToolRegistry([ar.ToolSpec("fan_out", "d", fan_out)]).call("fan_out", {})
    assert raised.value is error
    assert isinstance(raised.value.__cause__, ExceptionGroup)


async def test_a_policy_error_from_a_tools_pipeline_stage_propagates_as_itself() -> None:
    # As from a task group: the refusal a stage met ends the run, not an observation.
    refusal = ar.BudgetExceededError("token budget spent")

    def spend(value: Any) -> Any:
        raise refusal

    pipeline = ar.Pipeline(("spend", spend))

    async def staged(args: dict[str, Any]) -> str:
        return str(await pipeline.run(args))

    with pytest.raises(ar.BudgetExceededError) as raised:
        await ar.ToolRegistry([ar.ToolSpec("staged", "d", staged)]).call("staged", {})
    assert raised.value is refusal
    assert isinstance(raised.value.__cause__, ar.PipelineStageError)


async def test_an_exception_group_without_a_policy_error_is_an_observation() -> None:
    async def fails(args: dict[str, Any]) -> str:
        raise ExceptionGroup("workers", [ValueError("bad row"), KeyError("id")])

    obs = await ar.ToolRegistry([ar.ToolSpec("fails", "d", fails)]).call("fails", {})
    assert obs.error_kind == "permanent"
    assert "bad row" in obs.content


async def test_a_keyboard_interrupt_inside_an_exception_group_propagates() -> None:
    async def stop(args: dict[str, Any]) -> str:
        raise BaseExceptionGroup("workers", [KeyboardInterrupt()])

    with pytest.raises(BaseExceptionGroup):
        await ar.ToolRegistry([ar.ToolSpec("stop", "d", stop)]).call("stop", {})


# --- 2. non-ASCII results as they are; escapes and surrogate pairs never cut --------------------


async def test_non_ascii_text_in_a_structured_result_is_not_escaped() -> None:
    spec = ar.ToolSpec("lookup", "d", lambda a: {"city": "東京", "note": "café 😀"})
    obs = await ar.ToolRegistry([spec]).call("lookup", {})
    assert obs == ('{"city": "東京", "note": "café 😀"}', None)


async def test_a_lone_surrogate_in_a_structured_result_stays_escaped_and_encodable() -> None:
    spec = ar.ToolSpec("names", "d", lambda a: {"name": "\udcff", "city": "東京"})
    obs = await ar.ToolRegistry([spec]).call("names", {})
    assert obs.content == '{"name": "\\udcff", "city": "東京"}'
    assert json.loads(obs.content) == {"name": "\udcff", "city": "東京"}
    obs.content.encode("utf-8")  # no lone surrogate left: UTF-8 (files, sockets) takes it
    assert json.loads(json.dumps(obs)) == list(obs)  # as a checkpoint or a wire body holds it


async def test_a_non_ascii_and_surrogate_result_goes_through_a_checkpointed_run(
    tmp_path: Path,
) -> None:
    @ar.tool
    def list_dir(path: str) -> dict[str, str]:
        """Lists a directory."""
        return {"file": "caf\udce9.txt", "city": "東京"}

    provider = ScriptedProvider(
        [ScriptedProvider.tool_call_reply([("list_dir", {"path": "/tmp"})]), "done"]
    )
    with ar.SqliteBackend(str(tmp_path / "ck.db")) as backend:
        runtime = ar.AgentRuntime(
            ar.AgentConfig(mode="tools"), tools=[list_dir], checkpoint_backend=backend
        )
        session = await runtime.run_agent_with_provider("a", "list", provider)
    assert session.steps[0].observation == '{"file": "caf\\udce9.txt", "city": "東京"}'
    assert session.final_answer == "done"


def test_truncation_never_cuts_inside_an_escape() -> None:
    text = json.dumps(["x" * 10 + "\x01\n\\" + "y" * 40])  # escapes: \u0001 \n \\
    assert text.startswith('["xxxxxxxxxx\\u0001\\n\\\\y')
    whole = json.loads(text)[0]
    for limit in range(len(_TRUNCATION_MARK) + 2, 40):
        cut = _truncate(text, limit)
        assert len(cut) <= limit and cut.endswith(_TRUNCATION_MARK)
        kept = cut[: -len(_TRUNCATION_MARK)]
        # Whole escapes only: what is kept parses once its string and list are closed.
        assert text.startswith(kept) and whole.startswith(json.loads(kept + '"]')[0])
    # 15 characters would end inside "\u0001" (characters 12 to 17): the cut comes before it.
    assert _truncate(text, 15 + len(_TRUNCATION_MARK)) == text[:12] + _TRUNCATION_MARK


def test_truncation_never_splits_a_surrogate_pair() -> None:
    text = "ab\ud83d\ude00" + "c" * 40  # a pair (as UTF-16 decoding with surrogatepass gives)
    assert _truncate(text, 3 + len(_TRUNCATION_MARK)) == "ab" + _TRUNCATION_MARK
    assert _truncate(text, 3) == "ab"
    assert _truncate(text, 4 + len(_TRUNCATION_MARK)) == text[:4] + _TRUNCATION_MARK


# --- 3. bad definitions refused with ToolError ------------------------------------------------

_SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}}


def _echo(args: dict[str, Any]) -> str:
    return "ok"


@pytest.mark.parametrize(
    "settings",
    [
        {"required_fields": "query"},  # not split into q, u, e, r, y
        {"required_fields": [1]},
        {"required_fields": None},
        {"parameters": ["query"]},
        {"parameters": {"type": "array", "items": {}}},
        {"parameters": {"type": "object", "properties": ["query"]}},
        {"parameters": {"type": "object", "properties": {}, "required": "query"}},
        {"parameters": {"type": "object", "properties": {}, "required": 1}},
        {"timeout": "5"},
        {"timeout": True},
        {"timeout": math.nan},
        {"timeout": math.inf},
        {"timeout": 0},
        {"timeout": -1.0},
    ],
)
def test_a_bad_tool_spec_definition_is_a_tool_error(settings: dict[str, Any]) -> None:
    settings.setdefault("parameters", _SCHEMA)
    with pytest.raises(ar.ToolError):
        ar.ToolSpec("search", "d", _echo, **settings)


@pytest.mark.parametrize("description", [None, 1, b"d"])
def test_a_description_that_is_not_a_str_is_a_tool_error(description: Any) -> None:
    with pytest.raises(ar.ToolError, match="description of tool 'search' must be a str") as e:
        ar.ToolSpec("search", description, _echo)
    assert e.value.tool == "search"
    spec = ar.ToolSpec("search", "d", _echo)
    with pytest.raises(ar.ToolError, match="description of tool 'search' must be a str"):
        spec.description = description
    assert spec.description == "d"


def test_a_bad_timeout_is_refused_by_tool_and_when_set_later() -> None:
    with pytest.raises(ar.ToolError, match="finite number"):
        ar.tool(lambda q: q, name="t", timeout=math.nan)
    spec = ar.ToolSpec("t", "d", _echo, timeout=1)
    with pytest.raises(ar.ToolError, match="finite number"):
        spec.timeout = math.nan
    assert spec.timeout == 1


async def test_good_definitions_are_still_accepted() -> None:
    spec = ar.ToolSpec("search", "d", _echo, parameters=_SCHEMA, required_fields=["query"])
    assert spec.parameters["required"] == ["query"]
    assert ar.ToolSpec("t", "d", _echo, timeout=2).timeout == 2
    assert ar.ToolSpec("t", "d", _echo, parameters={"properties": {}}).parameters
    assert (await ar.ToolRegistry([spec]).call("search", {"query": "x"})).ok


def test_a_schema_without_a_type_is_given_the_object_type() -> None:
    parameters = {"properties": {"word": {"type": "string"}}, "required": ["word"]}
    for spec in (
        ar.ToolSpec("lookup", "d", _echo, parameters=parameters),
        ar.ToolSpec("lookup", "d", _echo, parameters=parameters, required_fields=["n"]),
    ):
        assert spec.definition()["parameters"]["type"] == "object"  # providers require it
        assert spec.parameters["properties"] == parameters["properties"]
    assert "type" not in parameters  # a copy: the caller's schema stays as it was


# --- 4. a method decorated in its class body ----------------------------------------------------


def test_tool_on_a_method_in_its_class_body_is_a_tool_error() -> None:
    with pytest.raises(ar.ToolError, match=r"tool\(instance\.forecast\)"):

        class Weather:
            @ar.tool
            def forecast(self, city: str) -> str:
                """Forecast for a city."""
                return city


class _Weather:
    unit = "C"

    def forecast(self, city: str) -> str:
        """Forecast for a city."""
        return f"{city}: 20{self.unit}"

    @classmethod
    def units(cls, system: str) -> str:
        """Units of a system."""
        return f"{system}: {cls.unit}"

    @staticmethod
    def normalise(city: str) -> str:
        """Normalises a city name."""
        return city.title()


def test_tool_on_a_method_taken_from_its_class_is_a_tool_error() -> None:
    with pytest.raises(ar.ToolError, match="bound method"):
        ar.tool(_Weather.forecast)


async def test_bound_methods_classmethods_staticmethods_and_partials_still_work() -> None:
    weather = _Weather()
    specs = [
        ar.tool(weather.forecast),
        ar.tool(_Weather.units),
        ar.tool(_Weather.normalise),
        ar.tool(functools.partial(_Weather.forecast, weather), name="paris"),
    ]
    assert [list(s.parameters["properties"]) for s in specs] == [
        ["city"],
        ["system"],
        ["city"],
        ["city"],
    ]
    registry = ar.ToolRegistry(specs)
    assert (await registry.call("forecast", {"city": "Oslo"})).content == "Oslo: 20C"
    assert (await registry.call("units", {"system": "SI"})).content == "SI: C"
    assert (await registry.call("normalise", {"city": "rome"})).content == "Rome"
    assert (await registry.call("paris", {"city": "Paris"})).content == "Paris: 20C"


def test_a_local_function_with_a_self_parameter_is_not_taken_for_a_method() -> None:
    def helper(self: str, n: int) -> str:
        """A local function whose first parameter happens to be called self."""
        return self * n

    assert list(ar.tool(helper).parameters["properties"]) == ["self", "n"]


# --- 5. argument names Anthropic refuses ---------------------------------------------------------


def test_a_parameter_name_anthropic_refuses_is_a_tool_error_naming_it() -> None:
    def resize(größe: int) -> str:
        """Resizes."""
        return "ok"

    with pytest.raises(ar.ToolError, match="größe"):
        ar.tool(resize)
    with pytest.raises(ar.ToolError, match="größe"):
        ar.ToolSpec("resize", "d", _echo, parameters={"properties": {"größe": {}}})


def test_an_alias_anthropic_refuses_is_a_tool_error_naming_the_parameter() -> None:
    def drive_list(top: Annotated[int, Field(alias="$top")] = 10) -> str:
        """Lists items."""
        return "ok"

    with pytest.raises(ar.ToolError, match=r"parameter 'top' goes by .*'\$top'"):
        ar.tool(drive_list)


@pytest.mark.parametrize("key", ["filter[id]", "a b", "x" * 65, "", "é"])
def test_schema_property_keys_anthropic_refuses_are_tool_errors(key: str) -> None:
    with pytest.raises(ar.ToolError):
        ar.ToolSpec("t", "d", _echo, parameters={"type": "object", "properties": {key: {}}})


async def test_property_keys_anthropic_accepts_are_accepted() -> None:
    def search(q: Annotated[str, Field(alias="filter.name-1")], limit: int = 3) -> str:
        """Searches."""
        return f"{q}/{limit}"

    spec = ar.tool(search)
    assert list(spec.parameters["properties"]) == ["filter.name-1", "limit"]
    ar.ToolSpec("t", "d", _echo, parameters={"properties": {"x" * 64: {}}})
    obs = await ar.ToolRegistry([spec]).call("search", {"filter.name-1": "a"})
    assert obs.content == "a/3"


# --- 6. network failures are transient ---------------------------------------------------------


def _fake(module: str, name: str, *bases: type) -> type[Exception]:
    """A class as a library defines it, without the library."""
    klass: type[Exception] = type(name, bases or (Exception,), {"__module__": module})
    return klass


_RequestException = _fake("requests.exceptions", "RequestException", OSError)
_RequestsConnectionError = _fake("requests.exceptions", "ConnectionError", _RequestException)
_RequestsTimeout = _fake("requests.exceptions", "Timeout", _RequestException)
_HttpxTransportError = _fake("httpx", "TransportError")
_AiohttpConnectionError = _fake("aiohttp.client_exceptions", "ClientConnectionError")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (_RequestsConnectionError("Connection refused"), "transient"),
        (_fake("requests.exceptions", "ReadTimeout", _RequestsTimeout)("slow"), "transient"),
        (
            _fake(
                "requests.exceptions", "ConnectTimeout", _RequestsConnectionError, _RequestsTimeout
            )("slow"),
            "transient",
        ),
        (_fake("requests.exceptions", "SSLError", _RequestsConnectionError)("cert"), "permanent"),
        (_fake("requests.exceptions", "HTTPError", _RequestException)("404"), "permanent"),
        (_fake("httpx", "ConnectError", _HttpxTransportError)("refused"), "transient"),
        (_fake("httpx", "ReadTimeout", _HttpxTransportError)("slow"), "transient"),
        (_fake("httpx", "UnsupportedProtocol", _HttpxTransportError)("no scheme"), "permanent"),
        (
            _fake(
                "aiohttp.client_exceptions", "ServerDisconnectedError", _AiohttpConnectionError
            )(),
            "transient",
        ),
        (
            _fake("aiohttp.client_exceptions", "ClientSSLError", _AiohttpConnectionError)(),
            "permanent",
        ),
        (_fake("mylib", "ConnectionError")("not a network library"), "permanent"),
        (socket.gaierror(-3, "Temporary failure in name resolution"), "transient"),
        (ConnectionResetError("reset"), "transient"),
        (FileNotFoundError("x"), "permanent"),
    ],
)
def test_network_failures_of_http_clients_are_transient(error: Exception, kind: str) -> None:
    assert classify_error(error) == kind


def test_real_httpx_transport_errors_are_transient() -> None:
    httpx = pytest.importorskip("httpx")
    assert classify_error(httpx.ConnectError("refused")) == "transient"
    assert classify_error(httpx.ReadTimeout("slow")) == "transient"
    assert classify_error(httpx.UnsupportedProtocol("no scheme")) == "permanent"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, "transient"),
        (503, "transient"),
        (408, "transient"),
        (404, "permanent"),
        (401, "permanent"),
    ],
)
def test_http_error_statuses_are_transient_when_a_retry_may_help(status: int, kind: str) -> None:
    import httpx

    request = httpx.Request("GET", "http://127.0.0.1/x")
    response = httpx.Response(status, request=request)
    raised = httpx.HTTPStatusError("status", request=request, response=response)
    assert classify_error(raised) == kind

    class Response:  # what requests' HTTPError carries
        status_code = status

    requests_error = _fake("requests.exceptions", "HTTPError", _RequestException)("status")
    requests_error.response = Response()  # type: ignore[attr-defined]
    assert classify_error(requests_error) == kind

    aiohttp_error = _fake("aiohttp.client_exceptions", "ClientResponseError")("status")
    aiohttp_error.status = status  # type: ignore[attr-defined]
    assert classify_error(aiohttp_error) == kind

    with _serving(status) as url, pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=5)
    caught.value.close()  # it holds the response
    assert classify_error(caught.value) == kind


@contextlib.contextmanager
def _serving(status: int) -> Iterator[str]:
    """The URL of a loopback HTTP server answering every GET with `status`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_urllib_failures_are_classified_by_the_failure_they_wrap() -> None:
    with socket.socket() as probe:  # a port nobody listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{closed}/", timeout=5)
    assert isinstance(refused.value.reason, ConnectionRefusedError)
    assert classify_error(refused.value) == "transient"
    assert classify_error(urllib.error.URLError(TimeoutError("timed out"))) == "transient"
    assert classify_error(urllib.error.URLError(ssl.SSLError("bad certificate"))) == "permanent"
    with pytest.raises(urllib.error.URLError) as unknown:
        urllib.request.urlopen("nope://x", timeout=5)
    assert classify_error(unknown.value) == "permanent"  # its reason is text


def test_an_exception_group_is_transient_when_all_its_members_are() -> None:
    group = ExceptionGroup
    assert classify_error(group("g", [ConnectionError("a"), TimeoutError("b")])) == "transient"
    nested = group("g", [group("h", [socket.gaierror(-3, "dns")]), TimeoutError()])
    assert classify_error(nested) == "transient"
    assert classify_error(group("g", [ConnectionError("a"), ValueError("b")])) == "permanent"


async def test_a_task_group_failure_names_its_members_in_the_observation() -> None:
    async def fetch_all(args: dict[str, Any]) -> str:
        async def fail(n: int) -> None:
            raise ConnectionError(f"reset by peer {n}")

        async with asyncio.TaskGroup() as group:
            for n in range(args["n"]):
                group.create_task(fail(n))
        return "unreachable"

    registry = ar.ToolRegistry([ar.ToolSpec("fetch_all", "d", fetch_all)])
    obs = await registry.call("fetch_all", {"n": 1})
    assert obs.error_kind == "transient"
    assert obs.content.endswith("(1 sub-exception): ConnectionError: reset by peer 0")
    many = await registry.call("fetch_all", {"n": 12}, max_chars=100_000)
    assert many.error_kind == "transient" and many.content.endswith("; and 2 more")
    assert many.content.count("ConnectionError: reset by peer") == 10


# --- 7. generator tools are refused ------------------------------------------------------------


def _rows(n: int) -> Iterator[dict[str, int]]:
    """Yields rows."""
    yield from ({"row": i} for i in range(n))


async def _stream_rows(n: int) -> AsyncIterator[dict[str, int]]:
    """Streams rows."""
    for i in range(n):
        yield {"row": i}


class _RowSource:
    def __call__(self, n: int) -> Iterator[int]:
        yield from range(n)


@pytest.mark.parametrize(
    "fn",
    [_rows, _stream_rows, _RowSource(), functools.partial(_rows, n=2)],
    ids=["generator", "async_generator", "callable_object", "partial"],
)
def test_a_generator_function_is_refused_as_a_tool(fn: Any) -> None:
    with pytest.raises(ar.ToolError, match="return a list"):
        ar.tool(fn, name="rows")
    with pytest.raises(ar.ToolError, match="return a list"):
        ar.ToolSpec("rows", "d", fn)


def test_a_generator_handler_set_later_is_refused() -> None:
    spec = ar.ToolSpec("rows", "d", _echo)
    with pytest.raises(ar.ToolError, match="return a list"):
        spec.handler = _rows
    assert spec.handler is _echo


async def test_a_generator_returned_at_run_time_is_a_permanent_observation() -> None:
    spec = ar.ToolSpec("rows", "d", lambda a: (i for i in range(3)))
    obs = await ar.ToolRegistry([spec]).call("rows", {})
    assert obs.error_kind == "permanent" and "return a list" in obs.content


# --- 8. numpy results ----------------------------------------------------------------------------


async def test_numpy_scalars_and_arrays_are_rendered_as_json_numbers() -> None:
    np = pytest.importorskip("numpy")
    values = np.arange(2000)
    result = {
        "count": np.int64(5),
        "mean": np.float32(0.5),
        "flag": np.bool_(True),
        "values": values,
        "grid": np.eye(2, dtype=np.int8),
    }
    obs = await ar.ToolRegistry([ar.ToolSpec("stats", "d", lambda a: result)]).call(
        "stats", {}, max_chars=100_000
    )
    assert obs.ok
    assert json.loads(obs.content) == {
        "count": 5,
        "mean": 0.5,
        "flag": True,
        "values": list(range(2000)),  # all of them: no "..." in the middle
        "grid": [[1, 0], [0, 1]],
    }
    top = await ar.ToolRegistry([ar.ToolSpec("arr", "d", lambda a: np.arange(3))]).call("arr", {})
    assert top.content == "[0, 1, 2]"


async def test_an_object_with_tolist_is_rendered_by_it() -> None:
    spec = ar.ToolSpec("arr", "d", lambda a: {"a": array.array("i", [1, 2])})
    assert (await ar.ToolRegistry([spec]).call("arr", {})).content == '{"a": [1, 2]}'


def test_a_tls_failure_wrapped_by_an_http_client_is_permanent() -> None:
    import ssl

    import httpx

    # As httpx reports a bad certificate: its ConnectError raised from httpcore's, which
    # was raised while handling the ssl error, with that context suppressed.
    httpcore_error = _fake("httpcore", "ConnectError")
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed")
        except ssl.SSLError as tls:
            raise httpcore_error(str(tls)) from None
    except Exception as inner:
        outer = httpx.ConnectError("certificate verify failed")
        outer.__cause__ = inner
    assert classify_error(outer) == "permanent"
    assert classify_error(httpx.ConnectError("refused")) == "transient"  # no TLS failure


def test_a_tool_spec_copies() -> None:
    import copy

    spec = ar.tool(timeout=5)(_module_level_add)
    for clone in (copy.copy(spec), copy.deepcopy(spec)):
        assert (clone.name, clone.timeout, clone.parameters) == (
            spec.name,
            spec.timeout,
            spec.parameters,
        )


def _module_level_add(a: int, b: int) -> int:
    """Adds."""
    return a + b


# --- keys inside structured arguments, shared defaults, models that JSON cannot write -----------
@dataclasses.dataclass
class Query:
    """A search query."""

    text: str
    limit: int = 10


class Filter(TypedDict, total=False):
    """A search filter."""

    author: str


@ar.tool
async def search(q: Query, f: Filter) -> str:
    """Searches.

    Args:
        q: The query.
        f: The filter.
    """
    return f"{q.text} limit={q.limit} filter={f}"


T = TypeVar("T")


@dataclasses.dataclass
class Box(Generic[T]):
    """A generic holder."""

    v: T


class Tagged(TypedDict, Generic[T]):
    """A generic TypedDict."""

    v: T


@ar.tool
async def unbox(b: Box[int], bs: list[Box[int]], t: Tagged[int]) -> int:
    """Sums the values."""
    return b.v + sum(x.v for x in bs) + t["v"]


Points = TypeAliasType("Points", list[Query])
QueryId = NewType("QueryId", Query)


@ar.tool
async def plot(points: Points, one: QueryId) -> int:
    """Counts the points."""
    return len(points) + 1


async def test_a_mistyped_key_behind_a_type_alias_or_a_new_type_is_refused() -> None:
    # The check for dataclasses read annotations, and an alias or a NewType hid them.
    registry = ar.ToolRegistry([plot])
    assert await registry.call("plot", {"points": [{"text": "a"}], "one": {"text": "b"}}) == (
        "2",
        None,
    )
    for bad, where in [
        ({"points": [{"text": "a", "lmit": 1}], "one": {"text": "b"}}, "points.0.lmit"),
        ({"points": [], "one": {"text": "b", "lmit": 1}}, "one.lmit"),
    ]:
        observation = await registry.call("plot", bad)
        assert observation.error_kind == "permanent" and where in observation.content


async def test_a_mistyped_key_inside_a_generic_structured_argument_is_refused() -> None:
    # `Box[int]` is no class: the check for dataclasses missed it, and the key was dropped.
    registry = ar.ToolRegistry([unbox])
    good = {"b": {"v": 1}, "bs": [{"v": 2}], "t": {"v": 3}}
    assert await registry.call("unbox", good) == ("6", None)
    for bad, where in [
        ({**good, "b": {"v": 1, "typo": 0}}, "b.typo"),
        ({**good, "bs": [{"v": 2, "typo": 0}]}, "bs.0.typo"),
        ({**good, "t": {"v": 3, "typo": 0}}, "t.typo"),
    ]:
        observation = await registry.call("unbox", bad)
        assert observation.error_kind == "permanent" and where in observation.content


async def test_a_mistyped_key_inside_a_structured_argument_is_refused() -> None:
    # The fast check dropped unknown keys, and its setting reached the dataclass and the
    # TypedDict inside: `max_results` and `authr` were dropped, and the tool ran unfiltered.
    registry = ar.ToolRegistry([search])
    ok = await registry.call("search", {"q": {"text": "cats", "limit": 2}, "f": {"author": "a"}})
    assert ok == ("cats limit=2 filter={'author': 'a'}", None)
    for arguments, where in [
        ({"q": {"text": "cats", "max_results": 2}, "f": {}}, "q.max_results"),
        ({"q": {"text": "cats"}, "f": {"authr": "a"}}, "f.authr"),
    ]:
        observation = await registry.call("search", arguments)
        assert observation.error_kind == "permanent"
        assert f"{where}: unexpected" in observation.content.lower()
        assert "the arguments are" not in observation.content  # that is for top-level keys


async def test_a_mutable_default_is_a_fresh_one_for_each_call() -> None:
    # The signature's list was the one object every call shared: one agent's notes showed
    # in another's observation, and grew for the life of the process.
    @ar.tool
    def note(text: str, notes: list[str] = []) -> list[str]:  # noqa: B006 - the case at hand
        """Adds a note."""
        notes.append(text)
        return notes

    registry = ar.ToolRegistry([note])
    first = await registry.call("note", {"text": "agent A's secret"})
    second = await registry.call("note", {"text": "agent B"})
    assert (first.content, second.content) == ('["agent A\'s secret"]', '["agent B"]')
    assert note.parameters["properties"]["notes"]["default"] == []


TABLE = {f"k{i}": i for i in range(10)}


async def test_a_default_object_other_than_an_empty_container_is_the_functions_own() -> None:
    # Every unhashable default was deep-copied at each call: slow for a big table (and a
    # failure for an object that cannot be copied).
    @ar.tool
    def lookup(key: str, table: dict[str, int] = TABLE) -> bool:
        """Looks a key up."""
        return table is TABLE

    assert await ar.ToolRegistry([lookup]).call("lookup", {"key": "k1"}) == ("true", None)


class Blob(BaseModel):
    """A file's bytes, which need not be UTF-8."""

    name: str
    data: bytes


async def test_a_model_json_cannot_write_renders_as_json_all_the_same() -> None:
    # Its `model_dump(mode="json")` failed on bytes that are not UTF-8, and the whole result
    # fell back to Python's repr.
    @ar.tool
    def files() -> dict[str, Any]:
        """Lists files."""
        return {"count": 2, "blobs": [Blob(name="a", data=b"hi"), Blob(name="b", data=b"\x89P")]}

    observation = await ar.ToolRegistry([files]).call("files", {})
    assert json.loads(observation.content) == {
        "count": 2,
        "blobs": [{"name": "a", "data": "hi"}, {"name": "b", "data": "\ufffdP"}],
    }


def test_tool_above_staticmethod_is_checked_as_its_function() -> None:
    # Python 3.11's `inspect` does not look inside a staticmethod: an async one was taken
    # for sync, and a generator was accepted, its every call then failing.
    class Numbers:
        @ar.tool
        @staticmethod
        async def double(n: int) -> int:
            """Doubles n."""
            return 2 * n

    assert Numbers.double.is_async
    with pytest.raises(ar.ToolError, match="generator"):

        class Counting:
            @ar.tool
            @staticmethod
            def count(n: int) -> Iterator[int]:
                """Counts to n."""
                yield from range(n)

    with pytest.raises(ar.ToolError, match="generator"):

        class AsyncCounting:
            @ar.tool
            @staticmethod
            async def count(n: int) -> AsyncIterator[int]:
                """Counts to n."""
                for i in range(n):
                    yield i


async def test_an_async_tool_above_staticmethod_runs() -> None:
    class Numbers:
        @ar.tool
        @staticmethod
        async def double(n: int) -> int:
            """Doubles n."""
            return 2 * n

    assert (await ar.ToolRegistry([Numbers.double]).call("double", {"n": 4})).content == "8"
