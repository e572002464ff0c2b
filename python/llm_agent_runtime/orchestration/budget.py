"""Cost budgets: tokens and money spent by model calls."""

from __future__ import annotations

import math

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
        ValueError: a limit is negative, NaN or infinite (None is the unlimited budget).
    """

    def __init__(self, max_tokens: int | None = None, max_cost_usd: float | None = None) -> None:
        # Written so that NaN fails the checks (each comparison with NaN is false).
        if (max_tokens is not None and not 0 <= max_tokens < math.inf) or (
            max_cost_usd is not None and not 0 <= max_cost_usd < math.inf
        ):
            raise ValueError(
                f"budget limits must be finite and >= 0, got {max_tokens} and {max_cost_usd}"
            )
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
            ValueError: a count or cost is negative, NaN or infinite (nothing is recorded).
            BudgetExceededError: this usage went past a limit.
        """
        if not (
            0 <= input_tokens < math.inf
            and 0 <= output_tokens < math.inf
            and 0 <= cost_usd < math.inf
        ):
            raise ValueError(
                f"usage must be finite and >= 0, got {input_tokens}, {output_tokens}, {cost_usd}"
            )
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
