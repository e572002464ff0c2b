"""`python -m llm_agent_runtime.demo`: `llm-agent-runtime demo` (see `llm_agent_runtime.cli`)."""

import sys

from llm_agent_runtime.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
