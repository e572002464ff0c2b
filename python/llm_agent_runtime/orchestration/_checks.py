"""Checks of constructor arguments, and bounded reprs, shared by the orchestration primitives.

The repr helpers serve the runtime's other public classes too.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import numbers
import operator
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

__all__ = [
    "check_count",
    "check_flag",
    "check_names",
    "check_real",
    "names_repr",
    "safe_repr",
    "short_repr",
]

_T = TypeVar("_T")
_SHOWN_NAMES = 5
"""Names a repr shows of a collection before it says how many more there are."""
_REPR_CHARS = 60
"""Characters a repr shows of one name or value."""


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


def as_index(value: Any) -> int | None:
    """`value` as an int when it is an integer of any type (numpy's too), else None.

    Not a bool, a numpy bool included: numpy before 2.3 gives one an `__index__`, so
    `operator.index(np.bool_(True))` is 1 there.
    """
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b":
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


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


def check_seconds(name: str, value: object) -> float:
    """Returns `value` as a float when it is a finite, positive number of seconds.

    Raises:
        ValueError: `value` is not positive, is NaN or infinite, or is not a number (a bool
            included).
    """
    seconds = check_real(name, value)
    # Written so that NaN fails the check (each comparison with NaN is false).
    if not 0 < seconds < math.inf:
        raise ValueError(f"{name} must be finite and > 0, got {seconds}")
    return seconds


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
            # A bounded repr that never raises: else an item's repr could replace the error.
            raise TypeError(f"{name} must hold strings, got {short_repr(item)}")
    return result


def short_repr(value: object, limit: int = _REPR_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters, `...` marking the cut.

    A str is cut before its repr is made (a huge one costs nothing); a repr that raises
    shows the value's type instead (a repr never raises).
    """
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def names_repr(names: Collection[str] | None, ordered: bool = True) -> str:
    """A bounded repr of `names`: `['a', 'b']`, or the first few then `... (N more)`.

    Names in no order of their own (`ordered` false: a set) show smallest first, so a repr
    is the same in every process. None is `None`.
    """
    if names is None:
        return "None"
    if ordered:
        head = list(itertools.islice(names, _SHOWN_NAMES))
    else:
        head = heapq.nsmallest(_SHOWN_NAMES, names)
    shown = [short_repr(name) for name in head]
    if len(names) > len(head):
        shown.append(f"... ({len(names) - len(head)} more)")
    return "[" + ", ".join(shown) + "]"


def safe_repr(method: Callable[[_T], str]) -> Callable[[_T], str]:
    """Makes a `__repr__` never raise: an object it fails on shows as `Name(...)`.

    A traceback or a debugger shows `self` from inside an `__init__` that failed, before
    the attributes the repr reads are set.
    """

    @functools.wraps(method)
    def guarded(self: _T) -> str:
        try:
            return method(self)
        except Exception:
            return f"{type(self).__name__}(...)"

    return guarded
