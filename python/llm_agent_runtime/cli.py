"""The `llm-agent-runtime` console script: `demo` runs the bundled demo, `version` prints it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the console script.

    Args:
        argv: Arguments (default: `sys.argv[1:]`).

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(prog="llm-agent-runtime")
    parser.add_argument("command", choices=["demo", "version"])
    args = parser.parse_args(argv)
    if args.command == "version":
        from llm_agent_runtime import __version__

        print(f"llm-agent-runtime {__version__}")
        return 0
    # Part of the package (`llm_agent_runtime.demo`, its data read with importlib.resources),
    # so it runs from any install, not only from a source checkout.
    from llm_agent_runtime.demo import main as demo

    return demo()


if __name__ == "__main__":
    sys.exit(main())
