"""Checks of constructor arguments shared by the orchestration primitives."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

__all__ = ["check_count", "check_names", "check_real"]


def check_count(name: str, value: object, minimum: int) -> int:
    """Returns `value` as an int when it is a whole count of at least `minimum`.

    A count is an integer (`int`, or any `numbers.Integral` such as a numpy integer): a float
    is refused even when it is whole (`2.0`), and so is a bool (`True` is no count).

    Raises:
        ValueError: `value` is not an integer, is a bool, or is below `minimum`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int (a whole count), got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_real(name: str, value: object) -> float:
    """Returns `value` as a float when it is a real number; the caller checks its range.

    A real number is any `numbers.Real` (an int, a float, a `Fraction`, a numpy scalar), but
    not a bool: `True` is no number of seconds or tokens, as it is no count. The float makes
    the value safe to hand on (Redis takes no numpy scalar) and to compute with: an int too
    large for a float is infinite, NaN stays NaN (both fail the caller's range check).

    Raises:
        ValueError: `value` is a bool, or not a real number.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int (or a Fraction) beyond the largest float
        return -math.inf if value < 0 else math.inf


def check_names(name: str, names: Iterable[str] | None) -> frozenset[str] | None:
    """Returns the set of `names` (None stays None).

    Raises:
        TypeError: `names` is a single string (which would read as a set of letters), is not
            iterable, or holds something other than strings.
    """
    if names is None:
        return None
    if isinstance(names, (str, bytes)):
        raise TypeError(
            f"{name} must be a collection of names, not a single {type(names).__name__} "
            f"({names!r}); write [{names!r}]"
        )
    try:
        result = frozenset(names)
    except TypeError as error:
        raise TypeError(f"{name} must be a collection of names: {error}") from error
    for item in result:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold strings, got {item!r}")
    return result
