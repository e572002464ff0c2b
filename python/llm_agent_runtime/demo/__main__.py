"""`python -m llm_agent_runtime.demo`: runs the demo (see `llm_agent_runtime.demo`)."""

import sys

from llm_agent_runtime.demo import main

if __name__ == "__main__":
    sys.exit(main())
