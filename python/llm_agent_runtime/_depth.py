"""How deep tool-call arguments may nest: one limit for every way they come in."""

from __future__ import annotations

from llm_agent_runtime._core import nested_deeper_than

__all__ = ["MAX_ARGUMENT_DEPTH", "TOO_DEEP", "nested_deeper_than"]

MAX_ARGUMENT_DEPTH = 200
"""Most levels of objects and arrays in a tool call's arguments. Deeper ones are refused
before the tool runs (in ReAct input, they stay text; `rust/react.rs` has the same limit):
a session holding them could not be copied nor saved within Python's recursion limit, so
the run would fail after its tool ran, and so would every resume."""
TOO_DEEP = f"nested too deeply (over {MAX_ARGUMENT_DEPTH} levels of objects and arrays)"
"""What is said of such arguments."""
