"""More `@tool` cases: docstring descriptions, forward references, types a model sends."""

from __future__ import annotations

import asyncio
import enum
import importlib
import sys
import textwrap
import time
from pathlib import Path
from typing import NotRequired

import pytest
from typing_extensions import TypedDict

import llm_agent_runtime as ar
from llm_agent_runtime.errors import ToolError
from llm_agent_runtime.providers.offline import ScriptedProvider


class Unit(enum.IntEnum):
    CELSIUS = 1
    FAHRENHEIT = 2


class Filters(TypedDict):
    tag: str
    limit: NotRequired[int]


# --- descriptions from the docstring's prose --------------------------------------------------


def test_a_summary_that_wraps_is_the_description_whole_not_cut_mid_sentence() -> None:
    def search(query: str) -> str:
        """Search the knowledge base for documents matching the query, ranked
        by relevance. Only documents the user may read are returned, so an
        empty result does not mean that none exist.

        Args:
            query: What to look for.
        """
        return query

    spec = ar.tool(search)
    assert spec.description == (
        "Search the knowledge base for documents matching the query, ranked by relevance. "
        "Only documents the user may read are returned, so an empty result does not mean "
        "that none exist."
    )
    assert spec.parameters["properties"]["query"]["description"] == "What to look for."


def test_every_prose_paragraph_is_in_the_description_on_one_line() -> None:
    def fetch(url: str) -> str:
        """Fetch a web page.

        Use it when the user gives a link; the text comes back without
        markup.

        Parameters
        ----------
        url : str
            The address.

        Returns
        -------
        str
            The text.
        """
        return url

    spec = ar.tool(fetch)
    assert spec.description == (
        "Fetch a web page. Use it when the user gives a link; the text comes back without markup."
    )
    assert spec.parameters["properties"]["url"]["description"] == "The address."


# --- annotations in a module with `from __future__ import annotations` ------------------------


def _import(tmp_path: Path, name: str, source: str) -> object:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_a_class_defined_below_the_tool_is_named_as_the_cause(tmp_path: Path) -> None:
    source = """
        from __future__ import annotations
        from llm_agent_runtime import tool

        @tool
        def place(p: Point) -> str:
            return repr(p)

        class Point:
            pass
    """
    with pytest.raises(ToolError) as caught:
        _import(tmp_path, "tools_defined_below", source)
    message = str(caught.value)
    assert "'Point'" in message and "'p'" in message
    assert "before the tool is made" in message


async def test_string_annotations_of_a_user_module_resolve_and_validate(tmp_path: Path) -> None:
    source = """
        from __future__ import annotations
        from typing import Annotated, Optional
        from pydantic import BaseModel, Field
        from llm_agent_runtime import tool

        class Point(BaseModel):
            x: int

        def near(p: Point, others: Optional[list[Point]] = None,
                 k: Annotated[int, Field(ge=1)] = 1) -> str:
            return f"{p.x} {len(others or [])} {k}"

        near_tool = tool(near)
    """
    module = _import(tmp_path, "tools_string_annotations", source)
    spec = module.near_tool  # type: ignore[attr-defined]
    props = spec.parameters["properties"]
    assert props["p"] == {"$ref": "#/$defs/Point"} and "Point" in spec.parameters["$defs"]
    assert props["k"]["minimum"] == 1 and spec.parameters["required"] == ["p"]
    registry = ar.ToolRegistry([spec])
    ok = await registry.call("near", {"p": {"x": 1.0}, "others": [{"x": 2}], "k": 2.0})
    assert ok == ("1 1 2", None)
    refused = await registry.call("near", {"p": {"x": 1}, "k": 0})
    assert refused.error_kind == "permanent" and "k: Input should be greater" in refused.content


# --- what a model sends ---------------------------------------------------------------------


async def test_an_int_enum_takes_its_value_as_a_json_float_and_refuses_its_name() -> None:
    @ar.tool
    def temperature(city: str, unit: Unit = Unit.CELSIUS) -> str:
        """Current temperature."""
        return f"{city} {unit.name}"

    assert temperature.parameters["$defs"]["Unit"]["enum"] == [1, 2]
    registry = ar.ToolRegistry([temperature])
    assert await registry.call("temperature", {"city": "Oslo", "unit": 2.0}) == (
        "Oslo FAHRENHEIT",
        None,
    )
    wrong = await registry.call("temperature", {"city": "Oslo", "unit": "FAHRENHEIT"})
    assert wrong.error_kind == "permanent" and wrong.content.startswith("error: invalid arguments")


async def test_tuples_in_a_list_and_a_typed_dict_with_a_not_required_key() -> None:
    @ar.tool
    def pick(pairs: list[tuple[int, str]], filters: Filters) -> str:
        """Picks."""
        return f"{pairs!r} {sorted(filters.items())!r}"

    pairs = pick.parameters["properties"]["pairs"]["items"]
    assert pairs["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert pick.parameters["$defs"]["Filters"]["required"] == ["tag"]
    registry = ar.ToolRegistry([pick])
    ok = await registry.call("pick", {"pairs": [[1.0, "a"]], "filters": {"tag": "x"}})
    assert ok == ("[(1, 'a')] [('tag', 'x')]", None)
    extra = await registry.call("pick", {"pairs": [], "filters": {"tag": "x", "sort": 1}})
    assert extra.error_kind == "permanent" and "filters.sort: unexpected key" in extra.content


# --- the loop ---------------------------------------------------------------------------------


async def test_a_blocked_sync_tool_times_out_while_the_loop_keeps_running() -> None:
    @ar.tool(timeout=0.2)
    def stuck() -> str:
        """Blocks."""
        time.sleep(1.0)
        return "late"

    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[stuck])
    script = [ScriptedProvider.tool_call_reply([("stuck", {})]), "gave up"]
    try:
        started = time.monotonic()
        session = await runtime.run_agent_with_provider("a", "go", ScriptedProvider(script))
        elapsed = time.monotonic() - started
    finally:
        ticker.cancel()
    assert session.final_answer == "gave up"
    assert session.steps[0].observation == "error: timed out after 0.2 s"
    assert elapsed < 0.9  # the call did not wait for the thread
    assert ticks >= 5  # the loop ran while the handler blocked its thread
