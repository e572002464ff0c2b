"""The `llm-agent-runtime` console script: `demo` runs the bundled example, `version` prints it."""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

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
    demo = Path(__file__).resolve().parents[2] / "examples" / "demo.py"
    if not demo.is_file():
        print(f"demo not found at {demo} (it ships with the source tree)", file=sys.stderr)
        return 1
    runpy.run_path(str(demo), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
