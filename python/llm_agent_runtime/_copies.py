"""What a copy of the package's stateful Python objects is.

Python's default `copy.copy` shares an object's attributes: a copy of a breaker, a guard or a
backend would share part of its state (a table, a lock, a connection) and not the rest, and
break what ties them (a guard of capacity 1 let two callers in; a breaker opened by its
copy's failures). Each such class says what a copy of it is with one of these mixins.
"""

from __future__ import annotations

import copy
from typing import Any, NoReturn, SupportsIndex


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
    """Plain state: a copy (`copy.copy` too) is a whole, independent one, as a pickle is.

    Its clock (`_clock`, when it has one) is kept, not copied: both go on by the same time.
    While it is in use (`_in_use` says how: callers waiting, calls under way), copying and
    pickling raise a `TypeError` naming the class.
    """

    __slots__ = ()

    def _in_use(self) -> str | None:
        """What makes the object uncopyable now ("callers wait in it"); None: nothing."""
        return None

    def __copy__(self) -> Any:
        return self.__deepcopy__({})

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        _check_idle(self)
        clock = getattr(self, "_clock", None)
        if clock is not None:
            memo.setdefault(id(clock), clock)
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for name, value in vars(self).items():
            object.__setattr__(clone, name, copy.deepcopy(value, memo))
        return clone

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        _check_idle(self)
        return super().__reduce_ex__(protocol)


def _check_idle(value: CopiedWhole) -> None:
    in_use = value._in_use()
    if in_use is not None:
        raise TypeError(f"a {type(value).__name__} cannot be copied or pickled while {in_use}")
