"""Capabilities: which tools and state keys an agent may use, and how many actions."""

from __future__ import annotations

from collections.abc import Iterable

from llm_agent_runtime.errors import PolicyDeniedError
from llm_agent_runtime.orchestration._checks import (
    check_count,
    check_names,
    names_repr,
    safe_repr,
)

__all__ = ["CapabilitySet"]


class CapabilitySet:
    """What an agent is allowed to do; anything else raises `PolicyDeniedError`.

    Args:
        allowed_tools: tool names allowed, a collection of strings (None: every tool).
        allowed_state_keys: state keys that may be read or written, a collection of strings
            (None: every key).
        max_actions: most actions (tool calls) in total, an int (None: unlimited).

    Raises:
        TypeError: `allowed_tools` or `allowed_state_keys` is a single string (it would read
            as a set of letters: write `["search"]`), or holds something other than strings.
        ValueError: `max_actions` is negative or not an int (a float such as 1.5, NaN or
            infinity, or a bool).
    """

    def __init__(
        self,
        allowed_tools: Iterable[str] | None = None,
        allowed_state_keys: Iterable[str] | None = None,
        max_actions: int | None = None,
    ) -> None:
        if max_actions is not None:
            max_actions = check_count("max_actions", max_actions, 0)
        self.allowed_tools = check_names("allowed_tools", allowed_tools)
        self.allowed_state_keys = check_names("allowed_state_keys", allowed_state_keys)
        self.max_actions = max_actions
        self.actions_taken = 0
        """Actions recorded so far."""

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"CapabilitySet(allowed_tools={names_repr(self.allowed_tools, ordered=False)}, "
            f"allowed_state_keys={names_repr(self.allowed_state_keys, ordered=False)}, "
            f"max_actions={self.max_actions}, actions_taken={self.actions_taken})"
        )

    def allows_tool(self, name: str) -> bool:
        """Whether the tool `name` may be called."""
        return self.allowed_tools is None or name in self.allowed_tools

    def check_tool(self, name: str) -> None:
        """Raises `PolicyDeniedError` unless the tool `name` may be called."""
        if not self.allows_tool(name):
            raise PolicyDeniedError(f"tool {name!r} is not in this agent's capabilities")

    def check_state_key(self, key: str) -> None:
        """Raises `PolicyDeniedError` unless the state key may be used."""
        if self.allowed_state_keys is not None and key not in self.allowed_state_keys:
            raise PolicyDeniedError(f"state key {key!r} is not in this agent's capabilities")

    def record_action(self) -> None:
        """Counts one action.

        Raises:
            PolicyDeniedError: the action limit is already reached (it is not counted).
        """
        if self.max_actions is not None and self.actions_taken >= self.max_actions:
            raise PolicyDeniedError(f"action limit reached ({self.max_actions} actions)")
        self.actions_taken += 1

    def record_actions(self, count: int) -> None:
        """Counts `count` actions together (a round of parallel tool calls): all or none.

        Checks the limit for all of them first, then records each with `record_action` (so
        a subclass that overrides it sees every action).

        Raises:
            PolicyDeniedError: they would go past the action limit (none is counted).
            ValueError: `count` is negative or not an int.
        """
        count = check_count("count", count, 0)
        limit = self.max_actions
        if limit is not None and self.actions_taken + count > limit:
            if self.actions_taken >= limit:
                raise PolicyDeniedError(f"action limit reached ({limit} actions)")
            raise PolicyDeniedError(
                f"action limit: {count} actions would go past it ({self.actions_taken} of "
                f"{limit} taken)"
            )
        for _ in range(count):
            self.record_action()
