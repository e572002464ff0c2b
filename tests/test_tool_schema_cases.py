"""`@tool` and `ToolSpec` cases: schemas the providers accept, docstrings, failures described."""

from __future__ import annotations

import functools
import warnings

import pytest

import llm_agent_runtime as ar

_SENTINEL = object()


async def test_a_default_with_no_json_form_is_left_out_without_a_warning() -> None:
    def lookup(query: str, marker: object = _SENTINEL) -> str:
        """Looks up."""
        return "default" if marker is _SENTINEL else repr(marker)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic's "not JSON serializable" warning, say
        spec = ar.tool(lookup)
    marker = spec.parameters["properties"]["marker"]
    assert "default" not in marker
    assert spec.parameters["required"] == ["query"]
    registry = ar.ToolRegistry([spec])
    assert await registry.call("lookup", {"query": "q"}) == ("default", None)
    assert await registry.call("lookup", {"query": "q", "marker": 3}) == ("3", None)


@pytest.mark.parametrize("schema", [{"type": "object"}, {"required": []}, {}])
def test_a_hand_made_schema_without_properties_is_given_empty_ones(
    schema: dict[str, object],
) -> None:
    # OpenAI refuses an object schema with no "properties" ("object schema missing
    # properties"), even for a tool without arguments.
    given = dict(schema)
    spec = ar.ToolSpec("ping", "Pings.", lambda arguments: "pong", parameters=given)
    assert spec.parameters["properties"] == {}
    assert spec.parameters["type"] == "object"
    assert given == schema  # the caller's dict is left as it was


async def test_a_key_error_is_named_in_the_observation() -> None:
    @ar.tool
    def user(user_id: str) -> str:
        """Finds a user."""
        return {"u1": "Ada"}[user_id]

    observation = await ar.ToolRegistry([user]).call("user", {"user_id": "u2"})
    # `str(KeyError("u2"))` is just "'u2'": without its type the model cannot tell what failed.
    assert observation == ("error: KeyError: 'u2'", "permanent")


def test_a_documented_parameter_the_function_lacks_is_warned_of() -> None:
    def search(query: str, limit: int = 5) -> str:
        """Searches.

        Args:
            query: What to look for.
            limt: How many results.
        """
        return query

    with pytest.warns(UserWarning, match=r"'search'.*'limt'"):
        spec = ar.tool(search)
    assert "description" not in spec.parameters["properties"]["limit"]


def test_documented_parameters_a_partial_fixes_or_the_model_is_not_shown_are_not_warned_of() -> (
    None
):
    def fetch(url: str, session: str, idempotency_key: str, *args: int, **options: str) -> str:
        """Fetches.

        Args:
            url: The address.
            session: The HTTP session (fixed by the caller).
            idempotency_key: Deduplicates.
            *args: Extra numbers.
            **options: Extra options.
        """
        return url

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = ar.tool(functools.partial(fetch, session="s"), name="fetch")
    assert spec.parameters["properties"]["url"]["description"] == "The address."
