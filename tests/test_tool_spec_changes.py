"""A spec changed after it was made: its schema is taken as the constructor takes it, and a
runtime shows the model the change from its next run on."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

import pytest
from pydantic import Field, PlainValidator, SkipValidation

import llm_agent_runtime as ar
from llm_agent_runtime.tools import ToolRegistry


def lookup(arguments: dict[str, Any]) -> str:
    return f"found {arguments['q']}"


async def test_parameters_set_later_are_required_and_normalized() -> None:
    spec = ar.ToolSpec("lookup", "Looks up.", lookup)
    spec.parameters = {"properties": {"q": {"type": "string"}}, "required": ["q"]}
    assert spec.parameters == {
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
    }
    assert spec.required_fields == ("q",)
    registry = ToolRegistry([spec])
    missing = await registry.call("lookup", {})
    assert missing.error_kind == "permanent" and "q" in missing.content
    assert (await registry.call("lookup", "x")).content == "found x"  # the sole argument

    other = ar.ToolSpec("other", "Other.", lookup, required_fields=["q"])
    other.parameters = {"properties": {"z": {"type": "string"}}}
    assert other.required_fields == ()
    assert other.parameters == {"type": "object", "properties": {"z": {"type": "string"}}}


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_runtime_shows_a_changed_description_at_its_next_run(mode: str) -> None:
    @ar.tool
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode), tools=[add])  # type: ignore[arg-type]
    reply = "Thought: d\nAction: FINAL_ANSWER ok" if mode == "react" else "ok"
    shown: list[str] = []

    class Recording(ar.ScriptedProvider):
        async def chat(self, messages: Any, tools: Any = None, **kwargs: Any) -> ar.ChatResponse:
            if mode == "tools":
                shown.append(" ".join(t.description for t in tools))
            else:
                shown.append(messages[0].content)
            return await super().chat(messages, tools, **kwargs)

    await runtime.run_agent_with_provider("a", "q", Recording([reply]))
    add.description = "Adds two integers, exactly."
    await runtime.run_agent_with_provider("a", "q", Recording([reply]))
    assert "exactly" not in shown[0] and "Adds two integers, exactly." in shown[1]


async def test_required_fields_set_later_are_checked_and_shown_to_the_model() -> None:
    # Set later, they went unchecked: "abc" was three one-letter fields, 5 failed each call
    # with a bare TypeError, and the model was not shown the fields a call then had to have.
    spec = ar.ToolSpec("lookup", "Looks up.", lookup, {"properties": {"q": {}, "n": {}}})
    for bad in ("abc", 5, ["q", 1]):
        with pytest.raises(ar.ToolError, match="required_fields of tool 'lookup' must be a list"):
            spec.required_fields = bad
    assert spec.required_fields == ()
    spec.required_fields = ["q", "q"]
    assert spec.required_fields == ("q",)
    assert spec.definition()["parameters"]["required"] == ["q"]
    registry = ToolRegistry([spec])
    missing = await registry.call("lookup", {"n": 1})
    assert missing.error_kind == "permanent" and "q" in missing.content
    spec.required_fields = []
    assert "required" not in spec.definition()["parameters"]
    assert (await registry.call("lookup", {"q": "x"})).content == "found x"


async def test_a_spec_renamed_once_registered_is_offered_by_the_name_it_is_called_by() -> None:
    @ar.tool
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @ar.tool
    def mul(a: int, b: int) -> int:
        """Multiplies two integers."""
        return a * b

    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add, mul])
    offered: list[list[str]] = []

    class Recording(ar.ScriptedProvider):
        async def chat(self, messages: Any, tools: Any = None, **kwargs: Any) -> ar.ChatResponse:
            offered.append([t.name for t in tools])
            return await super().chat(messages, tools, **kwargs)

    add.name = mul.name = "plus"  # after registration: two offered "plus" tools before
    call = ar.ScriptedProvider.tool_call_reply([("add", {"a": 2, "b": 3})])
    session = await runtime.run_agent_with_provider("a", "q", Recording([call, "5"]))
    assert offered == [["add", "mul"], ["add", "mul"]]
    assert session.steps[0].observation == "5"


async def test_a_tool_that_changes_its_arguments_leaves_the_recorded_call_as_sent() -> None:
    # `record` has no type hint: validation passes the model's dict on as it is.
    @ar.tool
    def tag(record, labels: list[str], options: dict[str, Any]) -> str:  # type: ignore[no-untyped-def]
        """Tags a record."""
        record["label"] = labels.pop()
        options.clear()
        return "tagged"

    sent = {"record": {"id": 7}, "labels": ["vip"], "options": {"deep": [1]}}
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[tag])
    requests: list[Any] = []

    class Recording(ar.ScriptedProvider):
        async def chat(self, messages: Any, tools: Any = None, **kwargs: Any) -> ar.ChatResponse:
            requests.append([m.tool_calls for m in messages if m.tool_calls])
            return await super().chat(messages, tools, **kwargs)

    call = ar.ScriptedProvider.tool_call_reply([("tag", sent)])
    session = await runtime.run_agent_with_provider("a", "q", Recording([call, "done"]))
    assert session.steps[0].observation == "tagged"
    assert session.steps[0].action_input == sent
    assert requests[1][0][0].arguments == sent
    assert sent == {"record": {"id": 7}, "labels": ["vip"], "options": {"deep": [1]}}


async def test_the_copy_a_tool_gets_shares_the_objects_in_its_containers() -> None:
    # Lists, dicts and tuples are the tool's own; any other object (a middleware's
    # collector, say) is the one the call holds, as the runtime's guards copy a call.
    class Sink:
        def __init__(self) -> None:
            self.items: list[int] = []

    @ar.tool
    def collect(ctx, n: int) -> str:  # type: ignore[no-untyped-def]
        """Collects."""
        ctx["sink"].items.append(n)
        ctx["seen"].append(n)
        return "ok"

    sink, seen = Sink(), [0]
    arguments = {"ctx": {"sink": sink, "seen": seen}, "n": 1}
    observation = await ar.ToolRegistry([collect]).call("collect", arguments)
    assert observation == ("ok", None)
    assert sink.items == [1]
    assert seen == [0]


class _Unit(Enum):
    C = "c"


def test_types_validation_builds_anew_skip_the_copy() -> None:
    @ar.tool
    def anew(
        a: int,
        b: list[int],
        c: dict[str, float] | None,
        d: tuple[str, ...],
        e: Literal["x", "y"],
        f: _Unit,
        g: Annotated[set[int], Field(max_length=3)] = set(),  # noqa: B006
    ) -> str:
        """Takes types validation builds anew."""
        return "ok"

    @ar.tool
    def passed_on(a: int, b: list[Any]) -> str:
        """Takes items validation passes on as they are."""
        return "ok"

    @ar.tool
    def rest(a: int, *items: list[int]) -> str:  # `*args` of any type: copied
        """Takes more."""
        return "ok"

    @ar.tool
    def skipped(a: SkipValidation[list[int]]) -> str:
        """Takes a list as it is."""
        return "ok"

    @ar.tool
    def plain(a: Annotated[list[int], PlainValidator(lambda v: v)]) -> str:
        """Takes a list its own validator passes on."""
        return "ok"

    assert anew._validated_anew
    assert not any(t._validated_anew for t in (passed_on, rest, skipped, plain))


async def test_a_tool_changing_the_items_of_its_args_leaves_the_call_as_sent() -> None:
    @ar.tool
    def tag_all(*items) -> str:  # type: ignore[no-untyped-def]
        """Tags each item."""
        for item in items:
            item.append("tagged")
        return "ok"

    arguments = {"items": [["a"], ["b"]]}
    assert await ToolRegistry([tag_all]).call("tag_all", arguments) == ("ok", None)
    assert arguments == {"items": [["a"], ["b"]]}
