"""`nested_deeper_than` (Rust) against a plain Python walk, level by level."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_agent_runtime._depth import MAX_ARGUMENT_DEPTH, nested_deeper_than
from llm_agent_runtime.errors import AgentRuntimeError


def reference(value: Any, limit: int) -> bool:
    """The levels of dicts, lists and tuples, counted one layer at a time (tree data only:
    a part held twice is walked twice)."""
    layer = [value]
    for _ in range(limit + 1):
        containers = [v for v in layer if isinstance(v, (dict, list, tuple))]
        if not containers:
            return False
        layer = [item for v in containers for item in (v.values() if isinstance(v, dict) else v)]
    return True


class Tagged(dict):  # type: ignore[type-arg]
    """A dict subclass: read through its own `values()`."""


class Row(list):  # type: ignore[type-arg]
    """A list subclass: read through its own iteration."""


leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3))
data = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.lists(inner, max_size=3).map(Row),
        st.dictionaries(st.text(max_size=2), inner, max_size=3),
        st.dictionaries(st.text(max_size=2), inner, max_size=3).map(Tagged),
        st.dictionaries(st.text(max_size=2), inner, max_size=3).map(OrderedDict),
    ),
    max_leaves=40,
)


@given(data, st.integers(0, 12))
def test_agrees_with_the_level_by_level_walk(value: Any, limit: int) -> None:
    assert nested_deeper_than(value, limit) is reference(value, limit)


def chain(levels: int, leaf: Any = 1) -> Any:
    """`levels` nested containers, alternating dict, list and tuple."""
    value = leaf
    for level in range(levels):
        value = ({"v": value}, [value], (value,))[level % 3]
    return value


@pytest.mark.parametrize("levels", [1, 2, MAX_ARGUMENT_DEPTH, MAX_ARGUMENT_DEPTH + 1, 5_000])
def test_a_chain_is_as_deep_as_its_containers(levels: int) -> None:
    value = chain(levels)
    assert nested_deeper_than(value, MAX_ARGUMENT_DEPTH) is (levels > MAX_ARGUMENT_DEPTH)
    assert nested_deeper_than(value, levels) is False
    assert nested_deeper_than(value, levels - 1) is True


def test_flat_values_and_scalars() -> None:
    assert nested_deeper_than({"a": 1, "b": "x"}, 1) is False
    assert nested_deeper_than({"a": 1}, 0) is True  # the dict is a level itself
    assert nested_deeper_than({}, 0) is True
    assert nested_deeper_than("a string", 0) is False
    assert nested_deeper_than(None, 0) is False
    assert nested_deeper_than({"a": {1, 2}, "b": b"x"}, 1) is False  # sets, bytes: no level


def test_a_container_holding_itself_is_nested_without_end() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert nested_deeper_than(loop, MAX_ARGUMENT_DEPTH) is True
    inner: dict[str, Any] = {}
    outer = {"a": [inner]}
    inner["back"] = outer
    assert nested_deeper_than(outer, 10_000) is True


@pytest.mark.timeout(30)
def test_parts_held_many_times_are_walked_once_a_depth() -> None:
    """3**60 paths through 61 lists: the level-by-level walk would never end."""
    shared: Any = [1]
    for _ in range(60):
        shared = [shared, shared, shared]
    assert nested_deeper_than(shared, 61) is False
    assert nested_deeper_than(shared, 60) is True
    assert nested_deeper_than({"deep": shared, "deeper": [[shared]]}, 62) is True


def test_each_container_is_looked_into_once() -> None:
    """A chain of 190 dicts, each held by the root too, the bottom one met first: a walk
    that looks a container over again whenever it meets it deeper reads the bottom one 190
    times, and what it holds with it."""
    reads: list[int] = []

    class Counted(dict):  # type: ignore[type-arg]
        def values(self) -> Any:
            reads.append(id(self))
            return super().values()

    chain: list[Any] = [Counted(inner=[[] for _ in range(1_000)])]
    for _ in range(189):
        chain.append(Counted(inner=chain[-1]))
    root = chain[::-1]
    assert nested_deeper_than(root, MAX_ARGUMENT_DEPTH) is False
    assert sorted(reads) == sorted(map(id, chain))
    # The root, 190 dicts, the list of lists and an empty one.
    assert nested_deeper_than(root, 193) is False
    assert nested_deeper_than(root, 192) is True


@pytest.mark.timeout(30)
@pytest.mark.parametrize("limit", [10**7, 2**64])
def test_a_container_holding_itself_is_told_at_once_whatever_the_limit(limit: int) -> None:
    loop: list[Any] = []
    loop.append({"again": (loop,)})
    assert nested_deeper_than(loop, limit) is True


def test_items_are_read_in_order() -> None:
    class Broken(dict):  # type: ignore[type-arg]
        def values(self) -> Any:
            raise RuntimeError("no values here")

    # The broken one comes first: read before the chain after it is found too deep.
    with pytest.raises(RuntimeError, match="no values here"):
        nested_deeper_than([Broken(), chain(5)], 3)


@pytest.mark.parametrize(("limit", "error"), [(-1, AgentRuntimeError), (1.0, TypeError)])
def test_a_limit_below_0_or_no_int_is_refused(limit: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="limit"):
        nested_deeper_than([], limit)


@pytest.mark.parametrize("deep_first", [True, False])
def test_a_part_met_again_deeper_is_walked_again(deep_first: bool) -> None:
    part = chain(5)
    # Held at level 2 (6 levels in all) and at level 4 (8 levels), met in either order.
    value = [[[part]], part] if deep_first else [part, [[part]]]
    assert nested_deeper_than(value, 7) is True
    assert nested_deeper_than(value, 8) is False


def test_subclasses_are_read_through_their_own_methods() -> None:
    class Hidden(dict):  # type: ignore[type-arg]
        def values(self) -> Any:
            return [chain(3)]

    class Lying(list):  # type: ignore[type-arg]
        def __iter__(self) -> Iterator[Any]:
            return iter([[[1]]])

    assert nested_deeper_than(Hidden(a=1), 3) is True  # its values() hold 3 more levels
    assert nested_deeper_than(Lying(), 2) is True
    assert nested_deeper_than(Lying([[[[[1]]]]]), 3) is False  # its items are not read


def test_a_subclass_failing_to_list_its_items_propagates() -> None:
    class Broken(dict):  # type: ignore[type-arg]
        def values(self) -> Any:
            raise RuntimeError("no values here")

    with pytest.raises(RuntimeError, match="no values here"):
        nested_deeper_than({"a": [Broken()]}, 10)
