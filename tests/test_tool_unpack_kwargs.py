"""A tool whose **kwargs is `Unpack[SomeTypedDict]` (PEP 692): the keys are its arguments.

Each key is a property of the schema, required as the TypedDict says; no other key is
taken; a key the model omits is not passed (the function's kwargs lack it), as a
`NotRequired` key means. pydantic's `validate_call` reads such a signature the same way,
except that it ignores an unknown key where a tool refuses it.
"""

from __future__ import annotations

import functools
import typing
import warnings
from typing import Annotated, Any, NotRequired, Required

import pydantic
import pytest
import typing_extensions
from pydantic.json_schema import SkipJsonSchema
from typing_extensions import ReadOnly, TypedDict, Unpack

import llm_agent_runtime as ar
from llm_agent_runtime.tools import ToolRegistry


class Address(TypedDict):
    city: str


class Options(TypedDict, total=False):
    limit: Annotated[int, pydantic.Field(ge=1)]
    tag: Required[str]
    to: Address


def _search(query: str, **options: Unpack[Options]) -> str:
    """Searches.

    Args:
        query: What to look for.
        limit: How many results at most.
    """
    return f"{query} {options}"


search = ar.tool(_search)


async def call(spec: ar.ToolSpec, arguments: Any, **kwargs: Any) -> ar.Observation:
    return await ToolRegistry([spec]).call(spec.name, arguments, **kwargs)


def test_the_keys_are_properties_after_the_named_parameters() -> None:
    assert search.parameters == {
        "$defs": {
            "Address": {
                "additionalProperties": False,
                "properties": {"city": {"title": "City", "type": "string"}},
                "required": ["city"],
                "title": "Address",
                "type": "object",
            }
        },
        "additionalProperties": False,
        "properties": {
            "query": {"description": "What to look for.", "type": "string"},
            "limit": {
                "description": "How many results at most.",
                "minimum": 1,
                "type": "integer",
            },
            "tag": {"type": "string"},
            "to": {"$ref": "#/$defs/Address"},
        },
        "required": ["query", "tag"],
        "type": "object",
    }


@pytest.mark.parametrize(
    ("arguments", "received"),
    [
        ({"query": "q", "tag": "t"}, "q {'tag': 't'}"),
        ({"query": "q", "tag": "t", "limit": 2}, "q {'limit': 2, 'tag': 't'}"),
        (
            {"query": "q", "tag": "t", "to": {"city": "Oslo"}},
            "q {'tag': 't', 'to': {'city': 'Oslo'}}",
        ),
    ],
)
async def test_given_keys_are_passed_and_omitted_ones_are_not(
    arguments: dict[str, Any], received: str
) -> None:
    assert await call(search, arguments) == ar.Observation(received, None)


@pytest.mark.parametrize(
    ("arguments", "refused"),
    [
        ({"query": "q", "tag": "t", "other": 1}, "other: unexpected argument"),
        ({"query": "q", "tag": "t", "options": {}}, "options: unexpected argument"),
        ({"query": "q"}, "tag: Field required"),
        ({"query": "q", "tag": "t", "limit": "many"}, "limit: Input should be a valid integer"),
        ({"query": "q", "tag": "t", "limit": 0}, "limit: Input should be greater than or equal"),
        ({"query": "q", "tag": "t", "to": {"city": "Oslo", "zip": 1}}, "to.zip: unexpected key"),
        ({"query": "q", "tag": "t", "to": {}}, "to.city: Field required"),
    ],
)
async def test_unknown_missing_and_wrong_keys_are_refused(
    arguments: dict[str, Any], refused: str
) -> None:
    result = await call(search, arguments)
    assert result.error_kind == "permanent"
    assert result.content.startswith(f"error: invalid arguments: {refused}")


@ar.tool
def plain(query: str, tag: str, limit: Annotated[int, pydantic.Field(ge=1)] | None = None) -> str:
    """Searches."""
    return f"{query} {tag} {limit}"


async def test_values_are_converted_as_an_ordinary_parameters_are() -> None:
    # "3" for an int: as the module takes it for a parameter, so for a key.
    arguments = {"query": "q", "tag": "t", "limit": "3"}
    assert (await call(plain, arguments)).content == "q t 3"
    assert (await call(search, arguments)).content == "q {'limit': 3, 'tag': 't'}"


class TotalWithNotRequired(TypedDict):
    a: int
    b: NotRequired[int]
    c: typing.NotRequired[ReadOnly[int]]


class PartialWithRequired(TypedDict, total=False):
    a: int
    b: typing.Required[int]
    c: Annotated[Required[ReadOnly[int]], pydantic.Field(le=9)]


class Inherited(PartialWithRequired):
    d: int


class PlainTyping(typing.TypedDict, total=False):
    a: int
    b: typing.Required[int]


@pytest.mark.parametrize(
    ("keys", "required"),
    [
        (TotalWithNotRequired, ["a"]),
        (PartialWithRequired, ["b", "c"]),
        (Inherited, ["b", "c", "d"]),
        (PlainTyping, ["b"]),  # `typing.TypedDict`, which pydantic refuses before 3.12
    ],
)
async def test_totality_and_required_qualifiers_say_what_is_required(
    keys: type, required: list[str]
) -> None:
    def echo(**kwargs: Any) -> str:
        return str(kwargs)

    echo.__annotations__["kwargs"] = Unpack[keys]
    spec = ar.tool(echo)
    assert spec.parameters["required"] == required
    assert list(spec.parameters["properties"]) == list(typing.get_type_hints(keys))
    assert all(
        p == {"type": "integer"} for k, p in spec.parameters["properties"].items() if k != "c"
    )
    arguments = {k: "7" for k in required}  # converted, as the type says
    assert await call(spec, arguments) == ar.Observation(str(dict.fromkeys(required, 7)), None)


@pytest.mark.parametrize("unpack", [typing.Unpack, typing_extensions.Unpack])
def test_unpack_of_typing_and_of_typing_extensions(unpack: Any) -> None:
    def echo(**kwargs: Any) -> str:
        return str(kwargs)

    echo.__annotations__["kwargs"] = unpack[Options]
    assert list(ar.tool(echo).parameters["properties"]) == ["limit", "tag", "to"]


def test_readonly_is_unwrapped() -> None:
    props = ar.tool(_echo_with(PartialWithRequired)).parameters["properties"]
    assert props["c"] == {"maximum": 9, "type": "integer"}


def _echo_with(keys: Any) -> Any:
    def echo(**kwargs: Any) -> str:
        return str(kwargs)

    echo.__annotations__["kwargs"] = Unpack[keys]
    return echo


class Clashing(TypedDict):
    query: str


def test_a_key_named_as_a_parameter_is_refused() -> None:
    def clash(query: str, **options: Unpack[Clashing]) -> str:
        return query

    with pytest.raises(ar.ToolError, match=r"key 'query' of Clashing.* parameter 'query'"):
        ar.tool(clash)


def test_a_key_named_as_a_positionally_fixed_parameter_is_refused() -> None:
    # The partial passes `query` already: passed again as a key, the call would fail.
    def clash(query: str, **options: Unpack[Clashing]) -> str:
        return query

    with pytest.raises(ar.ToolError, match="key 'query' of Clashing"):
        ar.tool(functools.partial(clash, "q"), name="clash")


def test_unpack_of_no_typeddict_is_refused() -> None:
    with pytest.raises(ar.ToolError, match=r"Unpack\[int\].* is no TypedDict"):
        ar.tool(_echo_with(int))


def _labelled(query: str, **options: Unpack[Options]) -> str:
    """Searches.

    :param query: What to look for.
    :key tag: A label.
    """
    return f"{query} {options}"


async def test_a_key_fixed_by_a_partial_is_neither_shown_nor_taken() -> None:
    fixed = ar.tool(functools.partial(_labelled, limit=3), name="fixed")
    assert list(fixed.parameters["properties"]) == ["query", "tag", "to"]
    assert fixed.parameters["properties"]["tag"]["description"] == "A label."
    result = await call(fixed, {"query": "q", "tag": "t"})
    assert result == ar.Observation("q {'limit': 3, 'tag': 't'}", None)
    refused = await call(fixed, {"query": "q", "tag": "t", "limit": 5})
    assert refused.error_kind == "permanent"
    assert refused.content.startswith("error: invalid arguments: limit: unexpected argument")


def _paged(query: str, **options: Unpack[Options]) -> str:
    """Searches.

    Parameters
    ----------
    query : str
        What to look for.
    limit : int
        How many results at most.
    tag : str
        A label.
    """
    return f"{query} {options}"


def test_docstring_descriptions_apply_to_keys_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = ar.tool(_paged)
        fixed = ar.tool(functools.partial(_paged, limit=3), name="fixed")
    props = spec.parameters["properties"]
    assert props["limit"]["description"] == "How many results at most."
    assert props["tag"]["description"] == "A label."
    assert "limit" not in fixed.parameters["properties"]  # documented, fixed: no warning


class Secret(TypedDict, total=False):
    note: str
    trace: SkipJsonSchema[str]
    idempotency_key: str


@ar.tool
async def post(**fields: Unpack[Secret]) -> str:
    """Posts."""
    return str(sorted(fields.items()))


async def test_a_hidden_key_is_never_passed_and_the_idempotency_key_is_the_calls() -> None:
    assert post.parameters == {
        "additionalProperties": False,
        "properties": {"note": {"type": "string"}},
        "type": "object",
    }
    assert post.takes_idempotency_key
    result = await call(post, {"note": "n"}, idempotency_key="k1")
    assert result.content == "[('idempotency_key', 'k1'), ('note', 'n')]"
    refused = await call(post, {"trace": "x"})
    assert refused.error_kind == "permanent"
    assert refused.content.startswith("error: invalid arguments: trace: unexpected argument")


class RequiredSecret(TypedDict):
    trace: SkipJsonSchema[str]


def test_a_hidden_required_key_is_refused() -> None:
    with pytest.raises(ar.ToolError, match=r"key 'trace' of RequiredSecret.*SkipJsonSchema"):
        ar.tool(_echo_with(RequiredSecret))


class Aliased(TypedDict, total=False):
    max_results: Annotated[int, pydantic.Field(alias="max-results")]
    size: Annotated[int, pydantic.Field(default=10)]


@ar.tool
async def aliased(**options: Unpack[Aliased]) -> str:
    """Lists."""
    return str(options)


async def test_a_key_goes_by_its_alias_and_gets_its_field_default_as_in_pydantic() -> None:
    assert aliased.parameters["properties"] == {
        "max-results": {"type": "integer"},
        "size": {"default": 10, "type": "integer"},
    }
    result = await call(aliased, {"max-results": 2})
    assert result.content == "{'max_results': 2, 'size': 10}"
    by_name = await call(aliased, {"max_results": 2})
    assert by_name.content.startswith("error: invalid arguments: max_results: unexpected")


class Odd(TypedDict):
    naïve: int


Keyword = TypedDict("Keyword", {"from": int})


def test_a_key_name_providers_refuse_is_refused_as_a_parameters_name() -> None:
    def naive(naïve: int) -> str:
        return ""

    with pytest.raises(ar.ToolError) as by_parameter:
        ar.tool(naive, name="odd")
    with pytest.raises(ar.ToolError) as by_key:
        ar.tool(_echo_with(Odd), name="odd")
    assert str(by_key.value) == str(by_parameter.value)


def test_a_key_no_parameter_can_be_named_is_refused() -> None:
    with pytest.raises(ar.ToolError, match=r"key 'from' of Keyword .*alias"):
        ar.tool(_echo_with(Keyword))


@pydantic.with_config(pydantic.ConfigDict(strict=True))
class Configured(TypedDict):
    a: int


def test_a_typeddict_with_a_pydantic_config_is_refused() -> None:
    with pytest.raises(ar.ToolError, match=r"Configured.*config"):
        ar.tool(_echo_with(Configured))


class Extra(TypedDict, extra_items=int):
    a: str


async def test_extra_items_are_taken_as_kwargs_of_their_type() -> None:
    spec = ar.tool(_echo_with(Extra))
    assert spec.parameters["additionalProperties"] == {"type": "integer"}
    assert (await call(spec, {"a": "x", "b": "2"})).content == "{'a': 'x', 'b': 2}"
    refused = await call(spec, {"a": "x", "b": "two"})
    assert refused.content.startswith("error: invalid arguments: b: Input should be a valid")


def _both(query: str, *words: str, **options: Unpack[Options]) -> str:
    return f"{query} {words} {options}"


async def test_with_var_positional_too() -> None:
    spec = ar.tool(_both)
    assert list(spec.parameters["properties"]) == ["query", "words", "limit", "tag", "to"]
    result = await call(spec, {"query": "q", "words": ["a"], "tag": "t"})
    assert result.content == "q ('a',) {'tag': 't'}"


@pytest.mark.parametrize(
    "arguments",
    [
        {"query": "q", "tag": "t"},
        {"query": "q", "tag": "t", "limit": "2", "to": {"city": "Oslo"}},
        {"query": "q", "tag": 5},
        {"query": "q", "limit": 2},
        {"query": "q", "tag": "t", "limit": 0},
        {"query": "q", "tag": "t", "to": {"city": 1}},
    ],
)
async def test_accepted_and_refused_as_pydantics_validate_call(arguments: dict[str, Any]) -> None:
    try:
        expected: str | None = pydantic.validate_call(_search)(**arguments)
    except pydantic.ValidationError:
        expected = None
    result = await call(search, arguments)
    if expected is None:
        assert result.error_kind == "permanent"
    else:
        assert result == ar.Observation(expected, None)


T = typing.TypeVar("T")


class Page(TypedDict, typing.Generic[T]):
    items: list[T]
    cursor: NotRequired[T]


def _page_of_ints(**page: Unpack[Page[int]]) -> str:
    """Lists a page."""
    return repr(page)


async def test_a_generic_typeddict_takes_its_type_arguments() -> None:
    # Refused before: `Page[int]` is no class, and the message said `Page` was no TypedDict.
    paged = ar.tool(_page_of_ints)
    assert paged.parameters["properties"] == {
        "items": {"items": {"type": "integer"}, "type": "array"},
        "cursor": {"type": "integer"},
    }
    assert (await call(paged, {"items": ["1", 2], "cursor": 3})).content == (
        "{'items': [1, 2], 'cursor': 3}"
    )
    refused = await call(paged, {"items": ["a"]})
    assert refused.error_kind == "permanent" and "items.0" in refused.content


async def test_a_recursive_typeddict_of_a_function_names_itself() -> None:
    class Node(TypedDict):
        name: str
        kids: NotRequired[list[Node]]

    def tree(**node: Any) -> str:
        """Stores a tree."""
        return repr(node)

    tree.__annotations__ = {"node": Unpack[Node], "return": str}  # as without the future import
    spec = ar.tool(tree)
    given = {"name": "a", "kids": [{"name": "b", "kids": []}]}
    assert (await call(spec, given)).content == repr(given)
    assert (await call(spec, {"name": "a", "kids": [{}]})).error_kind == "permanent"


class _SelfKey(TypedDict):
    self: str


class _Poster:
    def __call__(self, **keys: Unpack[_SelfKey]) -> str:
        return repr(keys)


class _Record:
    def __init__(self, **keys: Unpack[_SelfKey]) -> None:
        self.keys = keys


@pytest.mark.parametrize("fn", [_Poster(), _Record], ids=["callable object", "class"])
def test_a_key_named_as_the_self_of_a_callable_object_or_class_is_refused(fn: Any) -> None:
    # Shown to the model as required, it failed every call ("multiple values for 'self'").
    with pytest.raises(ar.ToolError, match="key 'self' of _SelfKey has the name of parameter"):
        ar.tool(fn, name="post")


async def test_plain_kwargs_of_a_callable_object_refuse_its_self() -> None:
    class Plain:
        def __call__(self, **extra: int) -> str:
            return repr(extra)

    spec = ar.tool(Plain(), name="plain")
    refused = await call(spec, {"self": 1})
    # Refused as an argument the tool sets, not run into "multiple values for 'self'".
    assert refused == ar.Observation(
        "error: invalid arguments: self: unexpected argument (the tool sets it)", "permanent"
    )
    assert (await call(spec, {"n": 1})).content == "{'n': 1}"
