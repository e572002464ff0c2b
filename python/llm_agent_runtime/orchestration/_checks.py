"""Checks of constructor arguments shared by the orchestration primitives."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

__all__ = ["check_count", "check_flag", "check_names", "check_real"]


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

    A real number is what `float()` takes by `__float__` or `__index__`: any `numbers.Real`
    (an int, a float, a `Fraction`), a `Decimal`, a numpy scalar or 0-d array of ints or
    floats. Not a bool (a numpy one included): `True` is no number of seconds or tokens, as
    it is no count; nor a string (`float("1")` parses it), None, or a complex number. The
    float makes the value safe to hand on (Redis takes no numpy scalar) and to compute with:
    an int too large for a float is infinite, NaN stays NaN, as does a signalling Decimal NaN
    (both fail the caller's range check).

    Raises:
        ValueError: `value` is a bool, or not a real number.
    """
    if type(value) is float:
        return value
    cls = type(value)
    if not (_is_real(value) and (hasattr(cls, "__float__") or hasattr(cls, "__index__"))):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int (or a Fraction) beyond the largest float
        return -math.inf if value < 0 else math.inf  # type: ignore[operator]
    except ValueError:  # a signalling Decimal NaN
        return math.nan
    except TypeError as error:  # a `__float__` that refuses (a numpy array of many values)
        raise ValueError(f"{name} must be a number, got {value!r}") from error


def _is_real(value: object) -> bool:
    """Whether `value`, taken by `float()`, is no bool, complex number or string.

    numpy (optional, not imported here) is told by its dtype: a numpy scalar or array of
    bools, complex numbers or strings converts to a float too.
    """
    if isinstance(value, (bool, complex, str, bytes)):
        return False
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        return getattr(dtype, "kind", None) in ("i", "u", "f") and getattr(value, "ndim", 0) == 0
    return True


def check_flag(name: str, value: object) -> bool:
    """Returns `value` as a bool when it is a bool, a numpy bool, or the int 0 or 1.

    Raises:
        TypeError: `value` is anything else (a string, any of which would read as true).
    """
    if isinstance(value, bool):
        return value
    dtype = getattr(value, "dtype", None)
    if dtype is not None and getattr(dtype, "kind", None) == "b" and getattr(value, "ndim", 1) == 0:
        return bool(value)  # a numpy bool
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


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
