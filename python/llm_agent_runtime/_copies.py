"""What a copy of the package's stateful Python objects is.

Python's default `copy.copy` shares an object's attributes: a copy of a breaker, a guard or a
backend would share part of its state (a table, a lock, a connection) and not the rest, and
break what ties them (a guard of capacity 1 let two callers in; a breaker opened by its
copy's failures). Each such class says what a copy of it is with one of these mixins.
"""

from __future__ import annotations

import copy
from typing import Any, NoReturn, SupportsIndex, cast


class Unshared:
    """Live state (locks, connections, tasks, listeners): not copied, nor pickled.

    `copy.copy`, `copy.deepcopy` and pickling raise a `TypeError` naming the class (not one
    about a lock deep inside it): make a new object with the same settings instead.
    """

    __slots__ = ()

    def __copy__(self) -> NoReturn:
        name = type(self).__name__
        raise TypeError(
            f"{name} objects cannot be copied or pickled: they hold live state (locks, "
            f"connections, tasks or listeners) a copy would share in part: make a new {name} "
            "instead"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        self.__copy__()
        raise AssertionError("unreachable")

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        self.__copy__()
        raise AssertionError("unreachable")


class CopiedWhole:
    """Plain state: a copy has its own, as a pickle has.

    `copy.copy` copies the object's tables (its keys and values shared, as `dict.copy`
    shares them); `copy.deepcopy` copies what they hold too. The clock (`_clock`, when it
    has one) is kept, not copied: both go on by the same time. What `__getstate__` leaves
    out is not copied either. While the object is in use (`_in_use` says how: callers
    waiting, calls under way), copying and pickling raise a `TypeError` naming the class.
    """

    __slots__ = ()

    def _in_use(self) -> str | None:
        """What makes the object uncopyable now ("callers wait in it"); None: nothing."""
        return None

    def __copy__(self) -> Any:
        _check_idle(self)
        clone = object.__new__(type(self))
        for name, value in cast(dict[str, Any], self.__getstate__()).items():
            if name != "_clock":
                # A table gets its own (its keys and values shared); the rest (numbers, and
                # the bookkeeping of callers, empty while idle) is copied whole.
                value = copy.copy(value) if type(value) in _TABLES else copy.deepcopy(value)
            object.__setattr__(clone, name, value)
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        _check_idle(self)
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for name, value in cast(dict[str, Any], self.__getstate__()).items():
            if name != "_clock":
                value = copy.deepcopy(value, memo)
            object.__setattr__(clone, name, value)
        return clone

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        _check_idle(self)
        return super().__reduce_ex__(protocol)


_TABLES = (dict, list, set)
"""The containers `CopiedWhole.__copy__` gives a copy its own of."""


def _check_idle(value: CopiedWhole) -> None:
    in_use = value._in_use()
    if in_use is not None:
        raise TypeError(f"a {type(value).__name__} cannot be copied or pickled while {in_use}")
