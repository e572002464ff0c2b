"""The `llm-agent-runtime` console script, also `python -m llm_agent_runtime`.

`demo` runs the bundled demo; `version` prints the version.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from llm_agent_runtime._stdout import run_printing

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["main"]

_DEMO_HELP = """\
Runs an agent end to end on embedded defaults (no keys, no servers): tools, episodic and
semantic memory and a knowledge graph seeded from a bundled text, the offline scripted model,
SQLite checkpoints. It prints the trace step by step, the final answer, the metrics and where
the session was saved.

environment:
  OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL
                        run on an OpenAI model instead, or on an OpenAI-compatible
                        server (OPENAI_BASE_URL alone: no key needed)
  ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL, ANTHROPIC_MODEL
                        run on an Anthropic model instead (needs ANTHROPIC_API_KEY);
                        the OPENAI_* variables win when both are set
  LLM_AGENT_RUNTIME_DEMO_DB
                        the SQLite file of the checkpoints (default:
                        llm-agent-runtime/demo.db in the user's cache directory)

A real model's server silent for 120 s on each of its 3 tries (a timed-out request is
retried), or a run longer than 10 minutes, fails the run.

exit status: 0 when the agent answered; 1 when it gave no final answer or the run failed
(the reason goes to stderr); 130 when interrupted."""


def _version() -> str:
    from llm_agent_runtime import __version__

    return f"llm-agent-runtime {__version__}"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose help and version output fails as any output does.

    argparse drops a failed write of it (a closed pipe, a full disk) and exits with status
    0, as if the output had been written. Its errors still go to stderr alone, and a failed
    write of one still leaves the status 2.
    """

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if not message:
            return
        target = file or sys.stderr
        if target is sys.stdout:
            target.write(message)
            return
        # stderr: argparse's error, whose status (2) says it when stderr cannot.
        try:
            target.write(message)
        except OSError:  # a full disk, say
            _discard_stderr()

    def error(self, message: str) -> NoReturn:
        """Exits with status 2, saying why (and the usage) on stderr, if there is one.

        Without a stderr, argparse would print the usage to stdout, among the output.
        """
        if sys.stderr is None:
            self.exit(2)
        super().error(message)


def _discard_stderr() -> None:
    """Points stderr at /dev/null after a failed write.

    What the write left in stderr's buffer then goes there at exit: flushed to the full
    disk, it would fail again and turn the exit status into 120.
    """
    with contextlib.suppress(OSError, ValueError):  # ValueError: stderr has no descriptor
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stderr.fileno())
        finally:
            os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llm-agent-runtime",
        description="A fast, dependable runtime for LLM agents (Rust core, Python async API).",
    )
    parser.add_argument("--version", action="version", version=_version())
    # Required, but checked in `_run`: argparse checks a required command before it names
    # an unknown flag, so `--verison` alone was refused as a missing command.
    commands = parser.add_subparsers(dest="command", metavar="command")
    commands.add_parser(
        "demo",
        help="run the bundled agent demo",
        description=_DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands.add_parser(
        "version", help="print the version", description="Prints the installed version."
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the console script.

    When the reader of stdout closes it early (`llm-agent-runtime --help | head -1`), it
    stops quietly with status 1, as the demo does; when stdout is closed, or cannot take
    the output (a full disk), it says so on stderr, with status 1 too. Interrupted (Ctrl-C),
    it says so and returns 130, as the demo does, from the moment it is called (the demo's
    own import included); an interrupt while Python is still loading the package, before
    this function runs, ends the process as Python ends it.

    Args:
        argv: Arguments (default: `sys.argv[1:]`).

    Returns:
        The process exit status.

    Raises:
        SystemExit: From argparse: after `--help` or `--version` (status 0), or for arguments
            it refuses (status 2).
    """
    try:
        return run_printing(lambda: _run(argv))
    except KeyboardInterrupt:
        # Ctrl-C before the demo's own handler is in place (while its modules load, which
        # takes a while on a cold start) printed a traceback instead.
        if sys.stderr is not None:
            try:
                print("error: interrupted", file=sys.stderr)
            except OSError:  # a full disk, say
                _discard_stderr()
        return 130


def _run(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.error("the following arguments are required: command")
    if args.command == "version":
        print(_version())
        return 0
    # Part of the package (`llm_agent_runtime.demo`, its data read with importlib.resources),
    # so it runs from any install, not only from a source checkout.
    from llm_agent_runtime.demo import main as demo

    return demo()


if __name__ == "__main__":
    sys.exit(main())
