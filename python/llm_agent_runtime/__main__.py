"""`python -m llm_agent_runtime`: the `llm-agent-runtime` console script (see `cli`)."""

import sys

from llm_agent_runtime.cli import main

if __name__ == "__main__":
    sys.exit(main())
