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

    Each setting may be set again later, checked as the constructor checks it (a bad value
    raises, and the old one stays): a collection of names is kept as a frozenset, so a single
    string can never become a set of letters matched by substring. A `max_actions` set below
    the actions taken refuses the next one.

    Args:
        allowed_tools: tool names allowed, a collection of strings (None: every tool).
        allowed_state_keys: state keys that may be read or written, a collection of strings
            (None: every key). Checked by `check_state_key`, which the application calls
            where it reads or writes its state (an `AgentRuntime` checks tools and actions).
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
        # The settings' backing attributes: the checks read them, not the properties.
        self._max_actions = _checked_max_actions(max_actions)
        self._allowed_tools = check_names("allowed_tools", allowed_tools)
        self._allowed_state_keys = check_names("allowed_state_keys", allowed_state_keys)
        self.actions_taken = 0
        """Actions recorded so far."""

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"CapabilitySet(allowed_tools={names_repr(self._allowed_tools, ordered=False)}, "
            f"allowed_state_keys={names_repr(self._allowed_state_keys, ordered=False)}, "
            f"max_actions={self._max_actions}, actions_taken={self.actions_taken})"
        )

    @property
    def allowed_tools(self) -> frozenset[str] | None:
        """Tool names allowed (None: every tool); checked when set, kept as a frozenset."""
        return self._allowed_tools

    @allowed_tools.setter
    def allowed_tools(self, allowed_tools: Iterable[str] | None) -> None:
        # Checked as in the constructor: a str set here matched every substring of itself.
        self._allowed_tools = check_names("allowed_tools", allowed_tools)

    @property
    def allowed_state_keys(self) -> frozenset[str] | None:
        """State keys allowed (None: every key); checked when set, kept as a frozenset."""
        return self._allowed_state_keys

    @allowed_state_keys.setter
    def allowed_state_keys(self, allowed_state_keys: Iterable[str] | None) -> None:
        self._allowed_state_keys = check_names("allowed_state_keys", allowed_state_keys)

    @property
    def max_actions(self) -> int | None:
        """Most actions in total (None: unlimited); checked when set, as by the constructor."""
        return self._max_actions

    @max_actions.setter
    def max_actions(self, max_actions: int | None) -> None:
        self._max_actions = _checked_max_actions(max_actions)

    def allows_tool(self, name: str) -> bool:
        """Whether the tool `name` may be called."""
        allowed = self._allowed_tools
        return allowed is None or name in allowed

    def check_tool(self, name: str) -> None:
        """Raises `PolicyDeniedError` unless the tool `name` may be called."""
        if not self.allows_tool(name):
            raise PolicyDeniedError(f"tool {name!r} is not in this agent's capabilities")

    def check_state_key(self, key: str) -> None:
        """Raises `PolicyDeniedError` unless the state key may be used."""
        allowed = self._allowed_state_keys
        if allowed is not None and key not in allowed:
            raise PolicyDeniedError(f"state key {key!r} is not in this agent's capabilities")

    def record_action(self) -> None:
        """Counts one action.

        Raises:
            PolicyDeniedError: the action limit is already reached (it is not counted).
        """
        limit = self._max_actions
        if limit is not None and self.actions_taken >= limit:
            raise PolicyDeniedError(f"action limit reached ({limit} actions)")
        self.actions_taken += 1

    def record_actions(self, count: int) -> None:
        """Counts `count` actions together (a round of parallel tool calls): all or none.

        Checks the limit for all of them first, then adds them up at once; a subclass that
        overrides `record_action` has each recorded with it instead (it sees every action).

        Raises:
            PolicyDeniedError: they would go past the action limit (none is counted). A
                count of 0 never does, even with a limit lowered below the actions taken.
            ValueError: `count` is negative or not an int.
        """
        count = check_count("count", count, 0)
        limit = self._max_actions
        # A count of 0 adds nothing: it cannot go past a limit already passed.
        if count and limit is not None and self.actions_taken + count > limit:
            if self.actions_taken >= limit:
                raise PolicyDeniedError(f"action limit reached ({limit} actions)")
            raise PolicyDeniedError(
                f"action limit: {count} actions would go past it ({self.actions_taken} of "
                f"{limit} taken)"
            )
        if type(self).record_action is CapabilitySet.record_action:
            self.actions_taken += count  # one step: a count of any size, all or none
            return
        for _ in range(count):
            self.record_action()

    def release_actions(self, count: int) -> None:
        """Gives back `count` recorded actions whose calls never ran (never below 0).

        An `AgentRuntime` calls it for a round cut off (a timeout, a cancel, a failing
        approval handler) after its actions were recorded and before it was decided: a
        resume guards the round again and records them again, so they count once.

        Raises:
            ValueError: `count` is negative or not an int.
        """
        count = check_count("count", count, 0)
        self.actions_taken = max(0, self.actions_taken - count)


def _checked_max_actions(max_actions: object) -> int | None:
    """`max_actions` as an int of at least 0 (None stays None: unlimited).

    Raises:
        ValueError: `max_actions` is negative or not an int (a float, or a bool).
    """
    return None if max_actions is None else check_count("max_actions", max_actions, 0)
