"""llm-agent-runtime: a Python agent runtime with a Rust core.

Everything public is re-exported here by name; other modules are implementation detail.
"""

from __future__ import annotations

from llm_agent_runtime._core import (
    MetricsSnapshot,
    ReActStep,
    RuntimeMetrics,
    __version__,
    parse_react_step,
)
from llm_agent_runtime.errors import (
    AgentLoopError,
    AgentRuntimeError,
    BackpressureShedError,
    BudgetExceededError,
    CircuitOpenError,
    GraphError,
    MemoryStoreError,
    ParseError,
    PersistenceError,
    PolicyDeniedError,
    ProviderError,
    ToolError,
)

__all__ = [
    "AgentLoopError",
    "AgentRuntimeError",
    "BackpressureShedError",
    "BudgetExceededError",
    "CircuitOpenError",
    "GraphError",
    "MemoryStoreError",
    "MetricsSnapshot",
    "ParseError",
    "PersistenceError",
    "PolicyDeniedError",
    "ProviderError",
    "ReActStep",
    "RuntimeMetrics",
    "ToolError",
    "__version__",
    "parse_react_step",
]
