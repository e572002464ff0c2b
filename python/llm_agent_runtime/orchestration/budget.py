"""Cost budgets: tokens and money spent by model calls."""

from __future__ import annotations

from llm_agent_runtime.errors import BudgetExceededError

__all__ = ["CostBudget"]


class CostBudget:
    """Tracks tokens and money spent and refuses to go past the limits.

    `check()` before a call refuses once a limit is reached; `record()` after a call adds its
    usage and raises when that pushed spending past a limit (the usage is still recorded).

    Args:
        max_tokens: most input + output tokens (None: unlimited).
        max_cost_usd: most money in US dollars (None: unlimited).

    Raises:
        ValueError: a limit is negative.
    """

    def __init__(self, max_tokens: int | None = None, max_cost_usd: float | None = None) -> None:
        if (max_tokens is not None and max_tokens < 0) or (
            max_cost_usd is not None and max_cost_usd < 0
        ):
            raise ValueError("budget limits must be >= 0")
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.used_tokens = 0
        """Input + output tokens recorded."""
        self.used_cost_usd = 0.0
        """Money recorded, in US dollars."""

    @property
    def remaining_tokens(self) -> int | None:
        """Tokens left (None when unlimited)."""
        return None if self.max_tokens is None else max(0, self.max_tokens - self.used_tokens)

    @property
    def remaining_cost_usd(self) -> float | None:
        """Money left (None when unlimited)."""
        if self.max_cost_usd is None:
            return None
        return max(0.0, self.max_cost_usd - self.used_cost_usd)

    def check(self) -> None:
        """Raises `BudgetExceededError` when a limit has been reached."""
        if self.max_tokens is not None and self.used_tokens >= self.max_tokens:
            raise BudgetExceededError(
                f"token budget spent: {self.used_tokens} of {self.max_tokens} tokens"
            )
        if self.max_cost_usd is not None and self.used_cost_usd >= self.max_cost_usd:
            raise BudgetExceededError(
                f"cost budget spent: ${self.used_cost_usd:.4f} of ${self.max_cost_usd:.4f}"
            )

    def record(self, input_tokens: int, output_tokens: int, cost_usd: float = 0.0) -> None:
        """Adds one call's usage.

        Raises:
            ValueError: a count or cost is negative.
            BudgetExceededError: this usage went past a limit.
        """
        if input_tokens < 0 or output_tokens < 0 or cost_usd < 0:
            raise ValueError("usage must be >= 0")
        self.used_tokens += input_tokens + output_tokens
        self.used_cost_usd += cost_usd
        if self.max_tokens is not None and self.used_tokens > self.max_tokens:
            raise BudgetExceededError(
                f"token budget exceeded: {self.used_tokens} of {self.max_tokens} tokens"
            )
        if self.max_cost_usd is not None and self.used_cost_usd > self.max_cost_usd:
            raise BudgetExceededError(
                f"cost budget exceeded: ${self.used_cost_usd:.4f} of ${self.max_cost_usd:.4f}"
            )
