"""Tool execution: awaitables a tool returns in place of its result, network failures that
only an errno names, and a per-tool timeout an async tool swallows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import gc
import urllib.error
import warnings
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers.offline import ScriptedProvider
from llm_agent_runtime.tools import ToolRegistry, classify_error, tool

# --- 1. an async tool that returns an awaitable (a missing `await`) -------------------------


async def _fetch(ran: list[str]) -> str:
    ran.append("fetched")
    return "the real result"


@pytest.mark.parametrize("settings", [{}, {"timeout": 5.0}, {"circuit_breaker": True}])
async def test_an_async_tool_returning_a_coroutine_is_a_permanent_failure(
    settings: dict[str, Any],
) -> None:
    ran: list[str] = []
    if settings.get("circuit_breaker"):
        settings = {"circuit_breaker": ar.CircuitBreaker("forgot")}

    @tool(name="forgot", **settings)
    async def forgot() -> str:
        """Forgets to await."""
        return _fetch(ran)  # type: ignore[return-value]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "never awaited" warning fails the test
        observation = await ToolRegistry([forgot]).call("forgot", {})
        gc.collect()
    assert observation.error_kind == "permanent"
    assert "coroutine" in observation.content
    assert "await" in observation.content
    assert "<coroutine object" not in observation.content  # not its repr as a result
    assert ran == []


async def test_an_async_tool_returning_a_task_is_a_permanent_failure() -> None:
    ran: list[str] = []

    @tool
    async def spawns() -> str:
        """Returns a task instead of its result."""
        return asyncio.ensure_future(_fetch(ran))  # type: ignore[return-value]

    observation = await ToolRegistry([spawns]).call("spawns", {})
    assert observation.error_kind == "permanent"
    assert "Task" in observation.content and "await" in observation.content
    await asyncio.sleep(0)  # the task is the tool's own: left to run, not cancelled
    assert ran == ["fetched"]


async def test_coroutines_inside_a_result_are_a_permanent_failure() -> None:
    ran: list[str] = []

    @tool
    async def gathers_not() -> list[str]:
        """Forgets `asyncio.gather`."""
        return [_fetch(ran), _fetch(ran)]  # type: ignore[list-item]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "never awaited": they are not
        observation = await ToolRegistry([gathers_not]).call("gathers_not", {})
        gc.collect()
    assert observation.error_kind == "permanent"
    assert "coroutine" in observation.content and "inside" in observation.content
    assert ran == []


async def test_a_run_reports_a_missing_await_to_the_model() -> None:
    ran: list[str] = []

    @tool
    async def lookup(city: str) -> str:
        """Looks a city up."""
        return _fetch(ran)  # type: ignore[return-value]

    provider = ScriptedProvider(
        [ScriptedProvider.tool_call_reply([("lookup", {"city": "Oslo"})]), "done"]
    )
    runtime = ar.AgentRuntime(config=ar.AgentConfig(mode="tools"), tools=[lookup])
    session = await runtime.run_agent_with_provider("a", "go", provider)
    gc.collect()
    assert "coroutine" in session.steps[0].observation
    assert "<coroutine object" not in session.steps[0].observation
    assert ran == []


# --- 2. network failures named only by their errno ------------------------------------------


@pytest.mark.parametrize(
    "code", [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN]
)
def test_an_unreachable_network_is_transient(code: int) -> None:
    failure = OSError(code, "unreachable")
    assert classify_error(failure) == "transient"
    # urllib wraps it, as it wraps a refused connection (transient already).
    assert classify_error(urllib.error.URLError(failure)) == "transient"


def test_other_os_errors_stay_permanent() -> None:
    assert classify_error(OSError(errno.ENOENT, "no such file")) == "permanent"
    assert classify_error(PermissionError(errno.EACCES, "denied")) == "permanent"
    assert classify_error(OSError("no errno")) == "permanent"


# --- 3. a tool's own work cancelled, on every path alike ------------------------------------


def _cancelled_work() -> int:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(int)
        future.cancel()
        raise concurrent.futures.CancelledError  # what `future.result()` raises then


@pytest.mark.parametrize("kind", ["sync", "sync_timeout", "async", "async_timeout"])
async def test_a_cancelled_concurrent_future_in_a_tool_is_transient_on_every_path(
    kind: str,
) -> None:
    timeout = 30.0 if kind.endswith("timeout") else None
    if kind.startswith("sync"):

        @tool(name="work", timeout=timeout)
        def work() -> int:
            """Works through an executor."""
            return _cancelled_work()

    else:

        @tool(name="work", timeout=timeout)
        async def work() -> int:
            """Works through an executor."""
            return _cancelled_work()

    observation = await ToolRegistry([work]).call("work", {})
    assert observation.error_kind == "transient", observation
    assert "CancelledError" in observation.content


def test_classify_error_takes_a_concurrent_cancellation_for_transient() -> None:
    assert classify_error(concurrent.futures.CancelledError()) == "transient"


@ar.tool
def get_weather(city: str, unit: str = "C") -> str:
    """The weather in a city."""
    return f"sunny in {city} ({unit})"


@ar.tool
def lookup(query: str) -> str:
    """Looks the query up."""
    return f"found {query}"


@ar.tool
def find(query: str, exact: bool = False) -> str:
    """Finds the query."""
    return f"found {query}, exact={exact}"


@pytest.mark.parametrize(
    ("tool", "reply", "observation"),
    [
        # Python call syntax, as code-trained models write it: its keywords are the arguments
        # (the whole text went to the only required one: `city='city="Paris"'`).
        (get_weather, 'Action: get_weather(city="Paris")', "sunny in Paris (C)"),
        (get_weather, "Action: get_weather(city='Oslo', unit='F')", "sunny in Oslo (F)"),
        (
            get_weather,
            'Action: get_weather\nAction Input: city="Rome", unit="K"',
            "sunny in Rome (K)",
        ),
        # Not the tool's keywords, or no literals: the text as it was, for the only argument.
        (lookup, "Action: lookup\nAction Input: a=1", "found a=1"),
        (lookup, "Action: lookup\nAction Input: query=rust", "found query=rust"),
        (lookup, 'Action: lookup("x = 1")', "found x = 1"),
        # JSON's literals, as models write them among Python's.
        (find, 'Action: find(query="rust", exact=true)', "found rust, exact=True"),
        # A text Python reads as another call: not arguments.
        (lookup, "Action: lookup\nAction Input: query=1)(query=2", "found query=1)(query=2"),
        # A `)` in a string, a comment after the arguments (the comment hid the `)`).
        (
            find,
            "Action: find(\n    query='1) wash',  # step one\n    exact=True  # only that\n)",
            "found 1) wash, exact=True",
        ),
    ],
)
async def test_keyword_arguments_written_as_a_call_are_the_tools_arguments(
    tool: ar.ToolSpec, reply: str, observation: str
) -> None:
    assert await _first_observation(tool, reply) == (observation, None)


async def _first_observation(tool: ar.ToolSpec, reply: str) -> tuple[str, str | None]:
    """The observation, and its error kind, of a ReAct run's first step, `reply`."""
    rt = ar.AgentRuntime(tools=[tool])
    final = "Thought: done\nAction: FINAL_ANSWER ok"
    session = await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([reply, final]))
    return session.steps[0].observation, session.steps[0].error_kind


@ar.tool
def get_time() -> str:
    """The time."""
    return "noon"


@ar.tool
def set_cache(policy: str = "lru") -> str:
    """Sets the cache policy ("lru" or "none")."""
    return f"cache policy is {policy}"


@pytest.mark.parametrize(
    ("tool", "written", "observation"),
    [
        # LangChain-style replies for a tool without arguments.
        (get_time, "None", "noon"),
        (get_time, "N/A", "noon"),
        (get_time, "", "noon"),
        # A tool that takes one: the word may be its value, so it is no "no arguments" (run
        # with its default, the opposite of what was asked); the model is told to write JSON.
        (set_cache, "none", "error: arguments of set_cache must be a JSON object"),
    ],
)
async def test_an_input_saying_there_is_none_calls_a_tool_without_arguments(
    tool: ar.ToolSpec, written: str, observation: str
) -> None:
    reply = f"Thought: t\nAction: {tool.name}\nAction Input: {written}"
    kind = "permanent" if observation.startswith("error:") else None
    assert await _first_observation(tool, reply) == (observation, kind)
