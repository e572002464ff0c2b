"""The ReAct prompt's tool schemas: what they show resolves to the tool's whole schema, and
their size stays linear in it, whatever the definitions' sharing (hypothesis)."""

from __future__ import annotations

import enum
import json
from typing import Any

import pydantic
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.tools import _INLINE_CHARS, shown_schema


def _resolved(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with every local `$ref` replaced by what it names and every title dropped (the
    reference reading; the schemas generated here have no cycles)."""
    if isinstance(node, list):
        return [_resolved(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _resolved({**defs[node["$ref"]], **rest}, defs)
    return {
        k: _resolved(v, defs) for k, v in node.items() if k not in ("title", "$defs", "definitions")
    }


def _defs_of(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        f"#/{section}/{name}": body
        for section in ("$defs", "definitions")
        for name, body in schema.get(section, {}).items()
    }


@st.composite
def _shared_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """Definitions D0..Dn, each an object whose fields are integers, strings, lists or
    references to earlier definitions (so one may be used many times over), and a tool
    schema using some of them."""
    count = draw(st.integers(1, 16))
    section = draw(st.sampled_from(["$defs", "definitions"]))
    defs: dict[str, Any] = {}
    for i in range(count):
        fields: dict[str, Any] = {}
        for f in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["int", "str", "ref", "ref", "list", "described"]))
            # The one before half of the time: chains, where sharing multiplies.
            back = draw(st.one_of(st.just(i - 1), st.integers(0, i - 1))) if i else 0
            earlier = f"#/{section}/D{back}" if i else None
            if kind == "int" or earlier is None:
                fields[f"f{f}"] = {"type": "integer", "title": f"F{f}"}
            elif kind == "str":
                fields[f"f{f}"] = {"type": "string", "enum": ["a", "b"]}
            elif kind == "ref":
                fields[f"f{f}"] = {"$ref": earlier}
            elif kind == "list":
                fields[f"f{f}"] = {"type": "array", "items": {"$ref": earlier}}
            else:
                fields[f"f{f}"] = {"$ref": earlier, "description": f"field {f}"}
        defs[f"D{i}"] = {
            "type": "object",
            "title": f"D{i}",
            "properties": fields,
            "required": sorted(fields),
        }
    used = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=3))
    return {
        section: defs,
        "type": "object",
        "properties": {f"p{n}": {"$ref": f"#/{section}/D{i}"} for n, i in enumerate(used)},
        "required": [f"p{n}" for n in range(len(used))],
    }


@settings(max_examples=300, deadline=None)
@given(_shared_schemas())
def test_a_shown_schema_reads_as_the_whole_schema_and_stays_linear(
    schema: dict[str, Any],
) -> None:
    shown = shown_schema(schema)
    text = json.dumps(shown)
    assert '"title"' not in text
    # Every reference it keeps names a definition it carries: read with its own
    # definitions, it is the tool's schema, references resolved and titles dropped.
    assert _resolved(shown, _defs_of(shown)) == _resolved(schema, _defs_of(schema))
    # A definition used more than once is shown once, or inlined while short: each use
    # adds at most that much, where whole copies would multiply with each level.
    given_text = json.dumps(schema)
    assert len(text) <= len(given_text) + _INLINE_CHARS * given_text.count("$ref")


def test_a_definition_used_once_is_inlined_however_long() -> None:
    long_def = {"type": "object", "properties": {f"f{i}": {"type": "integer"} for i in range(200)}}
    schema = {
        "$defs": {"Long": long_def},
        "type": "object",
        "properties": {"x": {"$ref": "#/$defs/Long"}},
    }
    assert shown_schema(schema) == {"type": "object", "properties": {"x": long_def}}


def _dangling(schema: dict[str, Any]) -> list[str]:
    """The local references of a shown schema that name no definition it holds."""
    named = {f"#/$defs/{n}" for n in schema.get("$defs", {})}
    return [ref for ref in _refs(schema) if ref not in named]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


class Item(pydantic.BaseModel):
    sku: str
    qty: int


@ar.tool
def order(items: pydantic.Json[list[Item]]) -> str:
    """Orders items."""
    return "ok"


def test_a_json_string_arguments_schema_is_shown_whole() -> None:
    # `Json[list[Item]]`: the item's schema is under `contentSchema`, which was left with a
    # reference to a definition the shown schema no longer held.
    shown = shown_schema(order.parameters)
    assert _dangling(shown) == []
    content = shown["properties"]["items"]["contentSchema"]
    assert content["items"]["properties"].keys() == {"sku", "qty"}


def test_a_reference_under_a_keyword_not_walked_keeps_its_definition() -> None:
    a = {"type": "object", "properties": {"n": {"type": "integer"}}}
    schema = {
        "type": "object",
        "properties": {"x": {"type": "string", "x-shape": {"$ref": "#/$defs/A"}}},
        "$defs": {"A": a, "B": {"type": "string"}},
    }
    shown = shown_schema(schema)
    assert _dangling(shown) == []
    assert shown["$defs"] == {"A": a}  # B, named nowhere, is not shown


class Color(enum.StrEnum):
    RED = "red"
    GREEN = "green"


class Person(pydantic.BaseModel):
    name: str
    age: int


@ar.tool
def view(path: str, view_range: tuple[int, int] | None = None) -> str:
    """Shows lines of a file."""
    return path


@ar.tool
def paint(color: Color = Color.RED, who: Person | None = None) -> str:
    """Paints."""
    return "done"


def test_what_the_model_is_shown_is_what_providers_take() -> None:
    # A tuple's schema (`prefixItems`, no `items`) made OpenAI refuse every request that
    # offered the tool with a 400 ("array schema missing items"), whatever tool the model
    # meant to call; enums and models went as `$ref`s, which Ollama's tool decoding drops
    # (the model saw `{}`); required fields a `ToolSpec` named without a schema were no
    # properties, which Gemini refuses.
    shown = view.definition()["parameters"]
    pair = shown["properties"]["view_range"]["anyOf"][0]
    assert pair["items"] == {"type": "integer"} and pair["prefixItems"] == [{"type": "integer"}] * 2
    mixed = shown_schema(
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}
    )
    assert mixed["items"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    shown = paint.definition()["parameters"]
    assert "$defs" not in shown and "$ref" not in json.dumps(shown)
    assert shown["properties"]["color"]["enum"] == ["red", "green"]
    assert shown["properties"]["who"]["anyOf"][0]["required"] == ["name", "age"]
    bare = ar.ToolSpec("get_weather", "The weather.", lambda city: city, required_fields=["city"])
    assert bare.definition()["parameters"] == {
        "type": "object",
        "properties": {"city": {}},
        "required": ["city"],
    }
    assert bare.parameters["properties"] == {}  # the spec's own schema is as it was given


async def test_native_mode_sends_the_shown_schemas() -> None:
    sent: list[Any] = []

    class Recording(ar.ScriptedProvider):
        async def chat(self, messages: Any, tools: Any = None, **params: Any) -> ar.ChatResponse:
            sent.append(tools)
            return await super().chat(messages, tools, **params)

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[view, paint])
    await rt.run_agent_with_provider("a", "q", Recording(["done"]))
    assert [t.parameters for t in sent[0]] == [
        view.definition()["parameters"],
        paint.definition()["parameters"],
    ]


def _dangling(schema: dict[str, Any]) -> list[str]:
    """The local references of `schema` that name nothing in it."""
    found = []
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                at: Any = schema
                for token in ref[2:].split("/"):
                    token = token.replace("~1", "/").replace("~0", "~")
                    at = at.get(token) if isinstance(at, dict) else None
                if at is None:
                    found.append(ref)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def test_a_given_schema_is_shown_whole_whatever_its_references() -> None:
    # A schema that is a reference (zod-to-json-schema's named output) was shown with no
    # property: the spec's empty `properties` beside the reference replaced the definition's.
    search = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
    spec = ar.ToolSpec(
        "search",
        "Searches.",
        lambda query: query,
        parameters={"$ref": "#/definitions/Search", "definitions": {"Search": search}},
    )
    shown = spec.definition()["parameters"]
    assert shown["properties"] == {"query": {"type": "string"}} and shown["required"] == ["query"]
    # References into a definition, to an escaped name or to nested `$defs` dangled once
    # the definitions were inlined and dropped: such a schema is shown as it is.
    span = {"type": "object", "properties": {"start": {"type": "integer"}}}
    into = {
        "type": "object",
        "properties": {
            "span": {"$ref": "#/definitions/Span"},
            "start": {"$ref": "#/definitions/Span/properties/start"},
        },
        "definitions": {"Span": span},
    }
    assert shown_schema(into) == into and not _dangling(shown_schema(into))
    nested = {
        "type": "object",
        "properties": {"p": {"$ref": "#/properties/p/$defs/Q", "$defs": {"Q": {"type": "string"}}}},
    }
    assert not _dangling(shown_schema(nested))
    escaped = {"type": "object", "properties": {"p": {"$ref": "#/$defs/a~1b"}}}
    escaped["$defs"] = {"a/b": {"type": "integer"}}
    assert shown_schema(escaped) == {"type": "object", "properties": {"p": {"type": "integer"}}}


def test_a_reference_shown_whole_still_shows_its_properties() -> None:
    # A schema that is a reference, with a pointer into its definition (a sub-schema used
    # twice), is shown whole; its root was the spec's empty `properties` beside the
    # reference, so a client that ignores `$ref` saw a tool without arguments.
    address = {"type": "object", "properties": {"city": {"type": "string"}}}
    order = {
        "type": "object",
        "properties": {
            "shipping": address,
            "billing": {"$ref": "#/definitions/Order/properties/shipping"},
        },
        "required": ["shipping"],
    }
    spec = ar.ToolSpec(
        "order",
        "Orders.",
        lambda shipping, billing=None: shipping,
        parameters={"$ref": "#/definitions/Order", "definitions": {"Order": order}},
    )
    shown = spec.definition()["parameters"]
    assert sorted(shown["properties"]) == ["billing", "shipping"]
    assert shown["required"] == ["shipping"] and not _dangling(shown)
    # A `$ref` in a value (an example, a default) is no reference of the schema: the real
    # ones are still inlined.
    target = {"type": "object", "properties": {"path": {"type": "string"}}}
    schema = {
        "type": "object",
        "properties": {
            "target": {"$ref": "#/$defs/Target"},
            "spec": {"type": "object", "examples": [{"$ref": "#/components/schemas/Pet"}]},
        },
        "$defs": {"Target": target},
    }
    assert shown_schema(schema)["properties"]["target"] == target
