"""Tool schemas against what calls accept, and results as the model sees them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import llm_agent_runtime as ar


async def _rendered(result: object) -> str:
    spec = ar.ToolSpec("give", "Gives the result under test.", lambda a: result)
    obs = await ar.ToolRegistry([spec]).call("give", {})
    assert obs.ok, obs
    return obs.content


# --- bytes dict keys are text, as bytes values are ------------------------------------------


@pytest.mark.parametrize(
    ("result", "text"),
    [
        # Raw HTTP headers, as some clients give them.
        ({b"content-type": b"text/html"}, '{"content-type": "text/html"}'),
        ({"headers": {b"x-id": 7}}, '{"headers": {"x-id": 7}}'),
        ({memoryview(b"k"): 1}, '{"k": 1}'),  # not the view's address
        ({b"caf\xc3\xa9": 1}, '{"café": 1}'),
        ({b"\xff": 1}, '{"\ufffd": 1}'),  # undecodable bytes replaced, as in a value
    ],
)
async def test_a_bytes_dict_key_is_rendered_as_its_text(result: object, text: str) -> None:
    content = await _rendered(result)
    assert content == text
    json.loads(content)


async def test_a_bytes_key_that_collides_with_a_str_key_keeps_both_entries() -> None:
    both = {b"k": 1, "k": 2}
    assert await _rendered(both) == str(both)


@given(st.dictionaries(st.binary(max_size=8), st.integers(-5, 5), max_size=5))
async def test_bytes_keys_render_as_a_dict_keyed_by_their_text(raw: dict[bytes, int]) -> None:
    as_text = {k.decode("utf-8", "replace"): v for k, v in raw.items()}
    content = await _rendered(raw)
    if len(as_text) < len(raw):  # two keys made the same text: shown whole by `str`
        assert content == str(raw)
    else:
        assert json.loads(content) == as_text


# --- the schema shows only what a call accepts ------------------------------------------------


@dataclasses.dataclass
class _Ticket:
    title: str
    priority: int = 3
    # Set by the dataclass itself, never passed: no argument for the model.
    status: str = dataclasses.field(default="open", init=False)


@ar.tool
def open_ticket(ticket: _Ticket) -> str:
    """Opens a ticket.

    Args:
        ticket: The ticket to open.
    """
    return f"{ticket.title}/{ticket.priority}/{ticket.status}"


def _shown_fields(spec: ar.ToolSpec, definition: str) -> dict[str, object]:
    properties: dict[str, object] = spec.parameters["$defs"][definition]["properties"]
    return properties


def test_a_dataclass_field_the_constructor_does_not_take_is_not_in_the_schema() -> None:
    assert set(_shown_fields(open_ticket, "_Ticket")) == {"title", "priority"}


async def test_every_field_the_schema_shows_for_a_dataclass_is_accepted() -> None:
    # The model passes each field it is shown, defaults included: the call must not be
    # refused for it.
    shown = _shown_fields(open_ticket, "_Ticket")
    ticket = {
        name: prop.get("default", "x") if isinstance(prop, dict) else "x"
        for name, prop in shown.items()
    }
    obs = await ar.ToolRegistry([open_ticket]).call("open_ticket", {"ticket": ticket})
    assert obs.ok, obs
    assert obs.content == "x/3/open"


# --- a generator inside a result is refused, as a returned one is -----------------------------


async def _agen() -> AsyncIterator[int]:
    yield 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: {"rows": (n for n in range(3))},
        lambda: [1, (n for n in range(3))],
        lambda: {"pages": [{"items": (n for n in range(2))}]},
        lambda: [_agen()],
        lambda: _Holder(rows=(n for n in range(3))),
    ],
    ids=["in a dict", "in a list", "nested deeper", "async generator", "in a dataclass"],
)
async def test_a_generator_inside_a_result_is_a_permanent_observation(
    make: Callable[[], object],
) -> None:
    @ar.tool
    def rows() -> object:
        """Returns rows."""
        return make()

    obs = await ar.ToolRegistry([rows]).call("rows", {})
    # Not a success showing `<generator object ... at 0x...>` for the rows.
    assert obs.error_kind == "permanent"
    assert obs.content.startswith("error: the tool ran, but its result could not be rendered: ")
    assert "generator" in obs.content and "return a list instead" in obs.content
    assert " at 0x" not in obs.content


@dataclasses.dataclass
class _Holder:
    rows: object
