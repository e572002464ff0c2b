"""A command's output to stdout, whatever became of stdout."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

__all__ = ["run_printing"]


class _OutputLost(Exception):
    """The output could not be written to stdout (a full disk, say)."""


def run_printing(command: Callable[[], int]) -> int:
    """Runs `command`, which prints to stdout; returns its exit status, 1 if its output is lost.

    A reader that closed stdout early (`... | head -1`) ends the command quietly. A stdout
    that is closed (no file at all) or that cannot take the output (a full disk) is reported
    on stderr. Either way the status is 1, and nothing more is tried at exit. Characters
    stdout's encoding lacks are written as backslash escapes, as stderr writes them.
    """
    stdout = sys.stdout
    if stdout is None:
        _report("no standard output to write to")
        return 1
    sys.stdout = _Guarded(stdout)
    try:
        try:
            status = command()
        finally:  # argparse's exit too: a failed write must fail here, not at exit
            sys.stdout = stdout
            with _writing():
                stdout.flush()
    except BrokenPipeError:
        _discard_output()
        return 1
    except _OutputLost as lost:
        _report(f"cannot write the output: {lost}")
        _discard_output()
        return 1
    return status


class _Guarded:
    """stdout, whose failed writes say so.

    An `OSError` of the command's own (a file it could not open) is then not taken for a
    lost output.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        with _writing():
            try:
                return self._stream.write(text)
            except UnicodeEncodeError:
                # A model's reply or a path may hold characters stdout's encoding lacks
                # (`LC_ALL=C`, `PYTHONIOENCODING=ascii`): escaped as stderr escapes them, not
                # a traceback. The encoder refused the whole text, so none of it is written.
                encoding = getattr(self._stream, "encoding", None) or "ascii"
                escaped = text.encode(encoding, "backslashreplace").decode(encoding)
                return self._stream.write(escaped)

    def flush(self) -> None:
        with _writing():
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _writing() -> Iterator[None]:
    """A write to stdout that fails (but for a closed pipe) raises `_OutputLost`."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as error:
        raise _OutputLost(error.strerror or str(error)) from error


def _discard_output() -> None:
    """Points stdout at /dev/null, as the Python docs advise for a closed pipe.

    What is left in its buffer goes there at exit: the interpreter's last flush raises
    nothing more.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _report(message: str) -> None:
    if sys.stderr is not None:
        print(f"error: {message}", file=sys.stderr)
