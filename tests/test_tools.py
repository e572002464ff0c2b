from __future__ import annotations

import asyncio
import threading

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.tools import classify_error


@ar.tool
def add(a: int, b: int = 0) -> int:
    """Adds two integers.

    Args:
        a: The first addend.
        b: The second addend.
    """
    return a + b


def test_tool_schema_from_hints_and_docstring() -> None:
    assert add.name == "add"
    assert add.description == "Adds two integers."
    props = add.parameters["properties"]
    assert props["a"] == {"type": "integer", "description": "The first addend."}
    assert props["b"]["default"] == 0
    assert add.parameters["required"] == ["a"]


async def test_sync_handler_runs_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def handler(args: dict[str, object]) -> str:
        seen.append(threading.get_ident())
        return "ok"

    registry = ar.ToolRegistry([ar.ToolSpec("t", "d", handler)])
    obs = await registry.call("t", {})
    assert obs.ok and obs.content == "ok"
    assert seen and seen[0] != loop_thread


async def test_async_handler_awaited_and_dict_results_rendered_as_json() -> None:
    async def handler(args: dict[str, object]) -> dict[str, object]:
        return {"echo": args["q"]}

    registry = ar.ToolRegistry([ar.ToolSpec("t", "d", handler, required_fields=["q"])])
    obs = await registry.call("t", {"q": "x"})
    assert obs.content == '{"echo": "x"}'


async def test_bad_arguments_are_permanent_observations() -> None:
    registry = ar.ToolRegistry([add])
    missing = await registry.call("add", {"b": 1})
    assert missing.error_kind == "permanent" and "a" in missing.content
    wrong = await registry.call("add", {"a": "not a number"})
    assert wrong.error_kind == "permanent" and "invalid arguments" in wrong.content


async def test_unknown_tool_is_not_found() -> None:
    obs = await ar.ToolRegistry([add]).call("nope", {})
    assert obs.error_kind == "not_found" and "add" in obs.content


async def test_timeout_is_transient() -> None:
    async def slow(args: dict[str, object]) -> str:
        await asyncio.sleep(5)
        return "late"

    registry = ar.ToolRegistry([ar.ToolSpec("slow", "d", slow, timeout=0.01)])
    obs = await registry.call("slow", {})
    assert obs.error_kind == "transient" and "timed out" in obs.content


async def test_exceptions_classified_and_truncated() -> None:
    def boom(args: dict[str, object]) -> str:
        raise ValueError("x" * 500)

    def flaky(args: dict[str, object]) -> str:
        raise ConnectionError("reset")

    def big(args: dict[str, object]) -> str:
        return "y" * 1000

    registry = ar.ToolRegistry(
        [
            ar.ToolSpec("boom", "", boom),
            ar.ToolSpec("flaky", "", flaky),
            ar.ToolSpec("big", "", big),
        ]
    )
    boom_obs = await registry.call("boom", {}, max_chars=100)
    assert boom_obs.error_kind == "permanent" and len(boom_obs.content) == 100
    assert (await registry.call("flaky", {})).error_kind == "transient"
    big_obs = await registry.call("big", {}, max_chars=50)
    assert big_obs.ok and len(big_obs.content) == 50 and big_obs.content.endswith("[truncated]")


def test_classify_provider_errors() -> None:
    assert classify_error(ar.ProviderError("x", 503, retryable=True)) == "transient"
    assert classify_error(ar.ProviderError("x", 400)) == "permanent"


async def test_circuit_breaker_fast_fails_tool() -> None:
    calls = 0

    def failing(args: dict[str, object]) -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("down")

    breaker = ar.CircuitBreaker("failing", failure_threshold=2, clock=ar.FakeClock())
    registry = ar.ToolRegistry([ar.ToolSpec("failing", "", failing, circuit_breaker=breaker)])
    for _ in range(2):
        assert (await registry.call("failing", {})).error_kind == "permanent"
    third = await registry.call("failing", {})
    assert third.error_kind == "transient" and "circuit open" in third.content
    assert calls == 2


def test_registry_refuses_duplicates_and_non_specs() -> None:
    with pytest.raises(ar.ToolError):
        ar.ToolRegistry([add, add])
    with pytest.raises(ar.ToolError):
        ar.ToolRegistry([lambda x: x])  # type: ignore[list-item]
    with pytest.raises(ar.ToolError):
        ar.ToolSpec("", "d", lambda a: a)


async def test_bare_value_is_the_only_required_argument() -> None:
    @ar.tool
    async def shout(text: str, times: int = 1) -> str:
        """Repeats text in capitals."""
        return text.upper() * times

    registry = ar.ToolRegistry([shout])
    assert (await registry.call("shout", "hi")).content == "HI"
    assert shout.check_arguments("hi") == {"text": "hi"}

    @ar.tool
    async def pair(a: int, b: int) -> int:
        """Needs both."""
        return a * b

    refused = await ar.ToolRegistry([pair]).call("pair", 3)
    assert refused.error_kind == "permanent" and "must be a JSON object" in refused.content
    with pytest.raises(ValueError, match="invalid arguments: times"):
        shout.check_arguments({"text": "x", "times": "many"})


@pytest.mark.parametrize(
    ("result", "text"),
    [
        ("plain", "plain"),
        (7, "7"),
        (2.5, "2.5"),
        (True, "true"),  # a bool is not rendered as an int
        (None, "null"),
        ([1, "a"], '[1, "a"]'),
    ],
)
async def test_results_rendered_for_the_model(result: object, text: str) -> None:
    @ar.tool
    async def give() -> object:
        """Returns the result under test."""
        return result

    assert (await ar.ToolRegistry([give]).call("give", {})).content == text


async def test_timeout_and_breaker_set_after_the_decorator_apply() -> None:
    @ar.tool
    async def slow() -> str:
        """Takes its time."""
        await asyncio.sleep(5)
        return "late"

    slow.timeout = 0.01
    registry = ar.ToolRegistry([slow])
    assert (await registry.call("slow", {})).error_kind == "transient"
    slow.circuit_breaker = ar.CircuitBreaker("slow", failure_threshold=1)
    await registry.call("slow", {})  # fails and opens the breaker
    refused = await registry.call("slow", {})
    assert refused.error_kind == "transient" and "open" in refused.content.lower()
