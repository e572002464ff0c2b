"""`dicts_with_keys_made_text` (Rust) against a plain Python walk, and `_plain_copy`'s
field-name cache against `dataclasses`."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_agent_runtime._core import dicts_with_keys_made_text
from llm_agent_runtime.session import _plain_copy

_SCALARS = (str, int, float, bool, type(None))


def reference(value: Any) -> list[dict[Any, Any]]:
    """The walk in plain Python: depth first, last pushed first, each container once."""
    found: list[dict[Any, Any]] = []
    pending = [value]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, dict):
            if any(type(key) is not str for key in current):
                found.append(current)
            pending.extend(v for v in current.values() if type(v) not in _SCALARS)
        elif isinstance(current, (list, tuple)):
            pending.extend(v for v in current if type(v) not in _SCALARS)
    return found


class Tagged(dict):  # type: ignore[type-arg]
    """A dict subclass: walked through its own iteration."""


keys = st.one_of(
    st.text(max_size=3), st.integers(-3, 3), st.booleans(), st.none(), st.floats(), st.tuples()
)
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=3)
)
data = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=4),
        st.dictionaries(keys, inner, max_size=4).map(Tagged),
        st.dictionaries(keys, inner, max_size=4).map(OrderedDict),
    ),
    max_leaves=30,
)


@given(data)
def test_walk_matches_the_python_reference(value: Any) -> None:
    found = dicts_with_keys_made_text(value)
    expected = reference(value)
    assert [id(d) for d in found] == [id(d) for d in expected]


def test_shared_and_self_holding_containers_are_walked_once() -> None:
    inner = {1: "a"}
    loop: list[Any] = [inner, inner]
    loop.append(loop)
    holder = {"x": loop, "y": (inner,)}
    assert dicts_with_keys_made_text(holder) == [inner]
    assert dicts_with_keys_made_text(holder)[0] is inner


def test_str_subclass_key_is_flagged_and_other_objects_not_looked_into() -> None:
    class Name(str):
        pass

    @dataclasses.dataclass
    class Box:
        held: dict[int, str]

    flagged = {Name("a"): 1}
    assert dicts_with_keys_made_text([flagged, Box({1: "x"}), {"plain": [1.5, None]}]) == [flagged]


def test_a_failing_dict_subclass_raises_its_own_error() -> None:
    class Broken(dict):  # type: ignore[type-arg]
        def values(self) -> Any:
            raise LookupError("no values here")

    with pytest.raises(LookupError, match="no values here"):
        dicts_with_keys_made_text({"a": Broken(b=1)})


def test_deep_nesting_needs_no_stack() -> None:
    value: Any = {1: None}
    innermost = value
    for _ in range(100_000):
        value = [value]
    assert dicts_with_keys_made_text(value) == [innermost]


def test_walks_from_threads_agree() -> None:
    value = [{i: [i, {"k": {None: i}}]} for i in range(200)]
    expected = [id(d) for d in reference(value)]
    results: list[list[int]] = []

    def walk() -> None:
        for _ in range(50):
            results.append([id(d) for d in dicts_with_keys_made_text(value)])

    threads = [threading.Thread(target=walk) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 200 and all(r == expected for r in results)


def copy_reference(value: Any) -> Any:
    """`_plain_copy` as `dataclasses` and `copy` alone make it (no cache, no fast path)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: copy_reference(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {copy_reference(k): copy_reference(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*map(copy_reference, value))
    if isinstance(value, list):
        return list(map(copy_reference, value))
    if isinstance(value, tuple):
        return tuple(map(copy_reference, value))
    return copy.deepcopy(value)


@dataclasses.dataclass
class Outer:
    first: Any
    second: list[Any]


@given(data)
def test_plain_copy_matches_the_reference(value: Any) -> None:
    made = Outer(value, [value, Outer(1, [value])])
    for _ in range(2):  # the second copy reads the cached field names
        copied = _plain_copy(made)
        # repr tells a list from a tuple and a dict from its subclasses (all plain dicts).
        assert repr(copied) == repr(copy_reference(made))
        assert list(copied) == ["first", "second"]
