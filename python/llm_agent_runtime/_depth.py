"""How deep tool-call arguments may nest: one limit for every way they come in."""

from __future__ import annotations

from typing import Any

MAX_ARGUMENT_DEPTH = 200
"""Most levels of objects and arrays in a tool call's arguments. Deeper ones are refused
before the tool runs (in ReAct input, they stay text; `rust/react.rs` has the same limit):
a session holding them could not be copied nor saved within Python's recursion limit, so
the run would fail after its tool ran, and so would every resume."""
TOO_DEEP = f"nested too deeply (over {MAX_ARGUMENT_DEPTH} levels of objects and arrays)"
"""What is said of such arguments."""


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests dicts, lists and tuples (subclasses too) over `limit` levels.

    JSON data, or what a user's provider or hook made of it (an `OrderedDict`, say); walked
    level by level, without recursion.
    """
    layer = [value]
    for _ in range(limit + 1):
        containers = [v for v in layer if isinstance(v, (dict, list, tuple))]
        if not containers:
            return False
        layer = [item for v in containers for item in (v.values() if isinstance(v, dict) else v)]
    return True
