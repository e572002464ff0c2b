"""Cost budgets: tokens and money spent by model calls."""

from __future__ import annotations

import math
import numbers
from decimal import Context, Decimal

from llm_agent_runtime.errors import BudgetExceededError
from llm_agent_runtime.orchestration._checks import check_count, check_real, safe_repr

__all__ = ["CostBudget"]

_PICO = 10**12
"""Money is kept in whole picodollars (10**-12 US dollars): sums and comparisons are exact."""

_DECIMAL = Context(prec=60)
"""Our own context: the thread's current one may have been set to a lower precision."""


def _checked_dollars(name: str, value: object) -> Decimal:
    """`value`, an amount of US dollars, as the decimal it prints as, when finite and >= 0.

    Any real number (`check_real`: a `Decimal` too, not a bool) is an amount. A `Decimal`
    or an int is taken as it is, every digit of it; a float is read as the shortest decimal
    that it prints as (`0.1` is 0.1, not the binary 0.1000000000000000055...), so decimal
    prices add up exactly; a numpy float of another precision (a `float32` from a price
    table, say) as the decimal it prints as at its own precision (`float32(0.1)` is 0.1 too,
    not the float 0.10000000149...).

    Raises:
        ValueError: `value` is negative, NaN (a `Decimal` NaN included), infinite or beyond
            the float range, or is not a number.
    """
    dollars = check_real(name, value)  # beyond the float range: infinite
    if not 0 <= dollars < math.inf:  # NaN fails too
        raise ValueError(f"{name} must be finite and >= 0, got {value!r:.60}")
    if isinstance(value, Decimal):
        return value  # not through a float, which keeps some 16 digits of it
    if isinstance(value, numbers.Integral):
        return Decimal(int(value))
    dtype = getattr(value, "dtype", None)
    if getattr(dtype, "kind", None) == "f":  # a numpy scalar or 0-d array: its own digits
        return Decimal(str(value[()]))  # type: ignore[index]
    return Decimal(repr(dollars))


def _picodollars(dollars: Decimal) -> int:
    """`dollars` (finite, >= 0) in whole picodollars.

    Anything below half a picodollar is rounded away (prices are quoted in far coarser
    units).
    """
    scaled = _DECIMAL.multiply(dollars, _PICO)
    return int(scaled.to_integral_value(context=_DECIMAL))


def _shown(picodollars: int) -> str:
    """An amount for a message, exact: `$0.30`, `$0.00005`.

    Rounded to 4 places, both amounts of a sub-cent budget read as `$0.0001` (or `$0.0000`).
    A sum past the float range is `$inf`, as `used_cost_usd` says.
    """
    if _dollars(picodollars) == math.inf:
        return "$inf"
    dollars = Decimal(picodollars).scaleb(-12, _DECIMAL).normalize(_DECIMAL)
    exponent = dollars.as_tuple().exponent
    return f"${dollars:.2f}" if isinstance(exponent, int) and exponent >= -2 else f"${dollars:f}"


def _dollars(picodollars: int) -> float:
    """US dollars, as the float nearest; inf past the float range (where a sum may go)."""
    try:
        return picodollars / _PICO
    except OverflowError:
        return math.inf


class CostBudget:
    """Tracks tokens and money spent and refuses to go past the limits.

    `check()` before a call refuses it once a limit is reached (spending equal to the limit
    is reached); `record()` after a call adds its usage and raises when that pushed spending
    past a limit (the usage is still recorded). Money is counted exactly (in whole
    picodollars, reading each float as the decimal it prints as), so three $0.10 calls spend
    exactly a $0.30 budget: the third is not "past" it, and a fourth is refused.

    The check and the record are separate steps: calls already in flight when a limit is
    reached were admitted by `check()` before it was, and their usage is still recorded, so
    a budget shared by concurrent calls may end above its limit (by at most what those calls
    spend). Only calls that ask after the limit is reached are refused.

    Both limits may be set again later (to raise one, say): the next `check()` and
    `record()` go by the new limit, checked as the constructor checks it.

    Args:
        max_tokens: most input + output tokens, an int (None: unlimited).
        max_cost_usd: most money in US dollars (None: unlimited).

    Raises:
        ValueError: a limit is negative, NaN or infinite (or beyond the float range), or is
            not a number (a bool included), or `max_tokens` is not an int (None is the
            unlimited budget).
    """

    def __init__(self, max_tokens: int | None = None, max_cost_usd: float | None = None) -> None:
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.used_tokens = 0
        """Input + output tokens recorded."""
        self._used_cost = 0  # picodollars

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"CostBudget(max_tokens={self.max_tokens}, max_cost_usd={self.max_cost_usd}, "
            f"used_tokens={self.used_tokens}, used_cost_usd={self.used_cost_usd})"
        )

    @property
    def max_tokens(self) -> int | None:
        """Most input + output tokens (None: unlimited)."""
        return self._max_tokens

    @max_tokens.setter
    def max_tokens(self, max_tokens: int | None) -> None:
        # Checked as in the constructor: a str failed each later `check()` with a TypeError.
        self._max_tokens = None if max_tokens is None else check_count("max_tokens", max_tokens, 0)

    @property
    def max_cost_usd(self) -> float | None:
        """Most money in US dollars (None: unlimited)."""
        return self._max_cost_usd

    @max_cost_usd.setter
    def max_cost_usd(self, max_cost_usd: float | None) -> None:
        # The limit enforced is the exact one in picodollars: set together with the float
        # shown (setting only the float changed the repr, not the limit).
        max_cost = None if max_cost_usd is None else _checked_dollars("max_cost_usd", max_cost_usd)
        self._max_cost_usd = None if max_cost is None else float(max_cost)
        self._max_cost = None if max_cost is None else _picodollars(max_cost)

    @property
    def used_cost_usd(self) -> float:
        """Money recorded, in US dollars (the float nearest the exact sum)."""
        return _dollars(self._used_cost)

    @property
    def remaining_tokens(self) -> int | None:
        """Tokens left (None when unlimited)."""
        limit = self._max_tokens
        return None if limit is None else max(0, limit - self.used_tokens)

    @property
    def remaining_cost_usd(self) -> float | None:
        """Money left (None when unlimited)."""
        if self._max_cost is None:
            return None
        return _dollars(max(0, self._max_cost - self._used_cost))

    def check(self) -> None:
        """Raises `BudgetExceededError` when a limit has been reached."""
        max_tokens = self._max_tokens
        if max_tokens is not None and self.used_tokens >= max_tokens:
            raise BudgetExceededError(
                f"token budget spent: {self.used_tokens} of {max_tokens} tokens"
            )
        if self._max_cost is not None and self._used_cost >= self._max_cost:
            raise BudgetExceededError(
                f"cost budget spent: {_shown(self._used_cost)} of {_shown(self._max_cost)}"
            )

    def record(self, input_tokens: int, output_tokens: int, cost_usd: float = 0.0) -> None:
        """Adds one call's usage.

        Raises:
            ValueError: a token count is negative or not an int, or the cost is negative, NaN,
                infinite (or beyond the float range) or not a number, a bool included
                (nothing is recorded).
            BudgetExceededError: this usage went past a limit: it adds to it, and spending
                is then past it (a limit only reached is not past; a record of no usage
                never raises).
        """
        try:
            tokens = check_count("input_tokens", input_tokens, 0) + check_count(
                "output_tokens", output_tokens, 0
            )
        except ValueError as error:
            raise ValueError(f"usage must be whole token counts >= 0: {error}") from None
        cost = _picodollars(_checked_dollars("usage cost", cost_usd))
        self.used_tokens += tokens
        self._used_cost += cost
        # Only usage that adds to a limit can go past it: a call admitted before another
        # went past, that used nothing (a cached answer), is not refused after the fact.
        max_tokens = self._max_tokens
        if tokens and max_tokens is not None and self.used_tokens > max_tokens:
            raise BudgetExceededError(
                f"token budget exceeded: {self.used_tokens} of {max_tokens} tokens"
            )
        if cost and self._max_cost is not None and self._used_cost > self._max_cost:
            raise BudgetExceededError(
                f"cost budget exceeded: {_shown(self._used_cost)} of {_shown(self._max_cost)}"
            )
