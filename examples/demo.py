"""Demo of llm-agent-runtime on embedded defaults: no keys, no servers."""

import llm_agent_runtime as ar

print(f"llm-agent-runtime {ar.__version__}")
