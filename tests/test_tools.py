from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable

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


class _AsyncCallable:
    """A handler object whose `__call__` is a coroutine function."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    async def __call__(self, args: dict[str, object]) -> dict[str, object]:
        self.threads.append(threading.get_ident())
        await asyncio.sleep(0)
        return {"got": args.get("q")}


async def test_object_with_async_call_is_awaited_not_rendered_as_a_coroutine() -> None:
    handler = _AsyncCallable()
    spec = ar.ToolSpec("t", "d", handler)
    assert spec.is_async
    obs = await ar.ToolRegistry([spec]).call("t", {"q": 1})
    assert obs.ok and obs.content == '{"got": 1}'
    assert handler.threads == [threading.get_ident()]  # awaited on the loop, not in a thread


async def test_partial_of_async_handlers_counts_as_async() -> None:
    async def handler(args: dict[str, object], suffix: str) -> str:
        return f"{args['q']}{suffix}"

    partial_fn = ar.ToolSpec("f", "d", functools.partial(handler, suffix="!"))
    partial_obj = ar.ToolSpec("o", "d", functools.partial(_AsyncCallable()))
    assert partial_fn.is_async and partial_obj.is_async
    registry = ar.ToolRegistry([partial_fn, partial_obj])
    assert (await registry.call("f", {"q": "hi"})).content == "hi!"
    assert (await registry.call("o", {"q": 2})).content == '{"got": 2}'
    assert not ar.ToolSpec("s", "d", functools.partial(lambda a: a)).is_async


@pytest.mark.parametrize(
    ("run_inline", "timeout"),
    [(False, None), (False, 5.0), (True, None)],  # run_inline takes no timeout
)
async def test_awaitable_from_a_sync_handler_is_awaited(
    run_inline: bool, timeout: float | None
) -> None:
    async def later(q: object) -> str:
        await asyncio.sleep(0)
        return f"done {q}"

    def handler(args: dict[str, object]) -> Awaitable[str]:
        return later(args["q"])  # a sync function handing back a coroutine

    spec = ar.ToolSpec("t", "d", handler, timeout=timeout, run_inline=run_inline)
    assert not spec.is_async
    obs = await ar.ToolRegistry([spec]).call("t", {"q": 3})
    assert obs.ok and obs.content == "done 3"


async def test_error_observations_are_truncated_to_max_chars() -> None:
    registry = ar.ToolRegistry(
        [ar.ToolSpec(f"tool_{i:03}", "d", lambda a: a) for i in range(100)] + [add]
    )
    unknown = await registry.call("nope", {}, max_chars=80)
    assert unknown.error_kind == "not_found"
    assert len(unknown.content) == 80 and unknown.content.endswith("[truncated]")
    assert unknown.content.startswith("error: unknown tool 'nope'")
    invalid = await registry.call("add", {"a": "x" * 500, "b": "y" * 500}, max_chars=60)
    assert invalid.error_kind == "permanent"
    assert len(invalid.content) == 60 and invalid.content.startswith("error: invalid arguments")
    missing = await ar.ToolRegistry(
        [ar.ToolSpec("r", "d", lambda a: a, required_fields=["x" * 200])]
    ).call("r", {}, max_chars=40)
    assert missing.error_kind == "permanent" and len(missing.content) == 40


def test_docstring_sections_other_than_the_summary_stay_out_of_the_description() -> None:
    @ar.tool
    def plus(a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: first
            b: second

        Returns:
            The sum of a and b.

        Raises:
            OverflowError: Never.

        Examples:
            plus(1, 2) == 3
        """
        return a + b

    assert plus.description == "Add two numbers."
    props = plus.parameters["properties"]
    assert props["a"]["description"] == "first" and props["b"]["description"] == "second"

    @ar.tool
    def gen(n: int) -> int:
        """Counts to n.

        Yields:
            Each number.

        Note:
            Slow for big n.
        """
        return n

    assert gen.description == "Counts to n."

    @ar.tool
    def late_args(x: int) -> int:
        """Echoes x.

        Returns:
            x itself.

        Args:
            x: the value
        """
        return x

    assert late_args.description == "Echoes x."
    assert late_args.parameters["properties"]["x"]["description"] == "the value"


async def test_tool_taking_an_idempotency_key_gets_a_fresh_one_without_checkpoints() -> None:
    keys: list[str] = []

    @ar.tool
    async def charge(amount: int, idempotency_key: str) -> str:
        """Charges an amount."""
        keys.append(idempotency_key)
        return f"charged {amount}"

    assert "idempotency_key" not in charge.parameters["properties"]
    registry = ar.ToolRegistry([charge])
    first = await registry.call("charge", {"amount": 5})
    second = await registry.call("charge", {"amount": 5})
    assert first.ok and first.content == "charged 5" and second.ok
    assert len(keys) == 2 and keys[0] != keys[1] and all(keys)
    given = await registry.call("charge", {"amount": 1}, idempotency_key="s1:2:0")
    assert given.ok and keys[-1] == "s1:2:0"

    seen: list[object] = []

    def raw(args: dict[str, object]) -> str:
        seen.append(args.get("idempotency_key"))
        return "ok"

    spec = ar.ToolSpec("raw", "d", raw, takes_idempotency_key=True)
    assert (await ar.ToolRegistry([spec]).call("raw", {})).ok
    assert isinstance(seen[0], str) and seen[0]
