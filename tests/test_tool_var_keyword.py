"""A tool with **kwargs: its extra arguments take **kwargs' type, and nothing more.

The arguments' dataclasses and TypedDicts still refuse keys they do not declare (a
validator's `extra` setting reaches them: taking any key there let a model's key hide a
method), and the schema the model is shown says so.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import pydantic
import pytest
from typing_extensions import TypedDict

import llm_agent_runtime as ar
from llm_agent_runtime.tools import ToolRegistry


@dataclasses.dataclass
class Order:
    qty: int
    price: float

    def total(self) -> float:
        return self.qty * self.price


class Address(TypedDict):
    city: str


@ar.tool
def place(order: Order, to: Address | None = None, **tags: str) -> str:
    """Places an order."""
    return f"total={order.total()} to={to} tags={tags}"


class Shop:
    class Item(pydantic.BaseModel):
        sku: str


class Stock:
    class Item(pydantic.BaseModel):
        count: int


@ar.tool
def restock(item: Shop.Item, **levels: Stock.Item) -> str:
    """Restocks."""
    return f"{item.sku}: {sorted(levels)}"


@ar.tool
def move(source: Annotated[str, pydantic.Field(alias="from")], **options: str) -> str:
    """Moves."""
    return f"from {source} {options}"


async def call(spec: ar.ToolSpec, arguments: Any) -> Any:
    return await ToolRegistry([spec]).call(spec.name, arguments)


@pytest.mark.parametrize(
    ("arguments", "refused"),
    [
        ({"order": {"qty": 2, "price": 1.5, "total": 0}}, "order.total"),
        ({"order": {"qty": 2, "price": 1.5, "qty_typo": 3}}, "order.qty_typo"),
        ({"order": {"qty": 2, "price": 1.5}, "to": {"city": "Oslo", "zip": 1}}, "to.zip"),
        ({"order": {"qty": 2, "price": 1.5}, "team": 7}, "team"),  # **tags: str
    ],
)
async def test_unknown_keys_inside_the_arguments_are_refused(arguments: Any, refused: str) -> None:
    result = await call(place, arguments)
    assert result.error_kind == "permanent"
    assert result.content.startswith(f"error: invalid arguments: {refused}")


async def test_extra_arguments_go_to_kwargs_checked_as_its_type() -> None:
    arguments = {"order": {"qty": 2, "price": 1.5}, "to": {"city": "Oslo"}, "team": "x"}
    result = await call(place, arguments)
    assert result == ar.Observation("total=3.0 to={'city': 'Oslo'} tags={'team': 'x'}", None)


def test_the_schema_refuses_unknown_keys_inside_and_types_the_extra_ones() -> None:
    schema = place.parameters
    assert schema["additionalProperties"] == {"type": "string"}
    assert schema["$defs"]["Order"]["additionalProperties"] is False
    assert schema["$defs"]["Address"]["additionalProperties"] is False


async def test_classes_of_one_name_in_the_arguments_and_kwargs_are_told_apart() -> None:
    schema = restock.parameters
    item_ref = schema["properties"]["item"]["$ref"]
    level_ref = schema["additionalProperties"]["$ref"]
    assert item_ref != level_ref
    defs = schema["$defs"]
    assert defs[item_ref.rsplit("/", 1)[1]]["required"] == ["sku"]
    assert defs[level_ref.rsplit("/", 1)[1]]["required"] == ["count"]
    result = await call(restock, {"item": {"sku": "a"}, "b": {"count": 1}})
    assert result == ar.Observation("a: ['b']", None)


async def test_an_extra_argument_named_as_an_aliased_parameter_is_refused() -> None:
    # "source" is the parameter's own name, its argument "from": as a **kwargs argument it
    # would have replaced the value checked for "from".
    assert (await call(move, {"from": "a", "mode": "fast"})).content == "from a {'mode': 'fast'}"
    result = await call(move, {"from": "a", "source": "b"})
    assert result.error_kind == "permanent"
    assert result.content.startswith("error: invalid arguments: source: unexpected argument")


@ar.tool
def tag(**tags: Order) -> str:
    """Tags."""
    return str(sorted(tags))


async def test_a_kwargs_dataclass_refuses_unknown_keys_too() -> None:
    result = await call(tag, {"a": {"qty": 1, "price": 2.0, "total": 0}})
    assert result.error_kind == "permanent" and "total" in result.content
    assert (await call(tag, {"a": {"qty": 1, "price": 2.0}})).content == "['a']"
