"""A look at a socket without waiting, for the clients that keep idle connections."""

from __future__ import annotations

import select

__all__ = ["readable"]

_poll = getattr(select, "poll", None)


def readable(fd: int) -> bool:
    """Whether the socket `fd` has data (or its end) to read now.

    An idle connection has nothing to read but what its server sent on its own: a notice, or
    the end of the stream of a connection it closed (a restart, an idle timeout), which the
    event loop may not have read yet.
    """
    if _poll is None:  # pragma: no cover - Windows
        return bool(select.select([fd], [], [], 0)[0])
    poller = _poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
