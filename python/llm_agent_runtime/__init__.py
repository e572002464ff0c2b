"""llm-agent-runtime: a Python agent runtime with a Rust core.

Everything public is re-exported here by name; other modules are implementation detail.
"""

from __future__ import annotations

from llm_agent_runtime._core import (
    MetricsSnapshot,
    ReActStep,
    RuntimeMetrics,
    WorkingMemory,
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
    PipelineStageError,
    PolicyDeniedError,
    ProviderError,
    ToolError,
)
from llm_agent_runtime.memory import fit_to_token_budget
from llm_agent_runtime.orchestration import (
    BackpressureGuard,
    CapabilitySet,
    CircuitBreaker,
    CircuitState,
    CircuitStateBackend,
    CircuitStateChange,
    Clock,
    CostBudget,
    Deduplicator,
    FakeClock,
    InMemoryCircuitStateBackend,
    Pipeline,
    RateLimiter,
    ResultCache,
    RetryPolicy,
    SystemClock,
)

__all__ = [
    "AgentLoopError",
    "AgentRuntimeError",
    "BackpressureGuard",
    "BackpressureShedError",
    "BudgetExceededError",
    "CapabilitySet",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStateBackend",
    "CircuitStateChange",
    "Clock",
    "CostBudget",
    "Deduplicator",
    "FakeClock",
    "GraphError",
    "InMemoryCircuitStateBackend",
    "MemoryStoreError",
    "MetricsSnapshot",
    "ParseError",
    "PersistenceError",
    "Pipeline",
    "PipelineStageError",
    "PolicyDeniedError",
    "ProviderError",
    "RateLimiter",
    "ReActStep",
    "ResultCache",
    "RetryPolicy",
    "RuntimeMetrics",
    "SystemClock",
    "ToolError",
    "WorkingMemory",
    "__version__",
    "fit_to_token_budget",
    "parse_react_step",
]
