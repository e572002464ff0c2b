"""llm-agent-runtime: a Python agent runtime with a Rust core.

Everything public is re-exported here by name; other modules are implementation detail. The
fast parts (vector search, graph, memory, metrics, parsing, orchestration, persistence) load
with the package; the agent layer (pydantic), the HTTP providers (httpx) and the database
drivers load on first use, so a program using only the fast parts never pays for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_agent_runtime._core import (
    DecayPolicy,
    Episode,
    EpisodicStore,
    GraphStore,
    HashingEmbedder,
    MetricsSnapshot,
    ReActStep,
    RecallPolicy,
    RuntimeMetrics,
    VectorIndex,
    WorkingMemory,
    __version__,
    parse_react_step,
)
from llm_agent_runtime.embeddings import Embedder, OpenAIEmbedder, SentenceTransformerEmbedder
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
from llm_agent_runtime.events import (
    CheckpointSaved,
    ErrorEvent,
    Event,
    EventBus,
    LlmResponse,
    LlmTextDelta,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
)
from llm_agent_runtime.graph import from_networkx, to_networkx
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
    RedisCircuitStateBackend,
    RedisDeduplicator,
    RedisRateLimiter,
    ResultCache,
    RetryPolicy,
    SystemClock,
)
from llm_agent_runtime.persistence import (
    FileBackend,
    InMemoryBackend,
    PersistenceBackend,
    SqliteBackend,
)
from llm_agent_runtime.semantic import SemanticEntry, SemanticHit, SemanticStore
from llm_agent_runtime.session import AgentSession, Step

if TYPE_CHECKING:
    from llm_agent_runtime.config import AgentConfig
    from llm_agent_runtime.persistence.postgres import PostgresBackend
    from llm_agent_runtime.persistence.redis import RedisBackend
    from llm_agent_runtime.providers import provider_from_env
    from llm_agent_runtime.providers.anthropic import AnthropicProvider
    from llm_agent_runtime.providers.base import LlmProvider
    from llm_agent_runtime.providers.offline import ScriptedProvider
    from llm_agent_runtime.providers.openai import OpenAIProvider
    from llm_agent_runtime.runtime import (
        AgentRuntime,
        ApprovalDecision,
        ApprovalHandler,
        InferFn,
        Middleware,
    )
    from llm_agent_runtime.tools import Observation, ToolRegistry, ToolSpec, tool

# Loaded on first use: name -> module that defines it.
_LAZY = {
    "AgentConfig": "llm_agent_runtime.config",
    "AgentRuntime": "llm_agent_runtime.runtime",
    "AnthropicProvider": "llm_agent_runtime.providers.anthropic",
    "ApprovalDecision": "llm_agent_runtime.runtime",
    "ApprovalHandler": "llm_agent_runtime.runtime",
    "InferFn": "llm_agent_runtime.runtime",
    "LlmProvider": "llm_agent_runtime.providers.base",
    "Middleware": "llm_agent_runtime.runtime",
    "Observation": "llm_agent_runtime.tools",
    "OpenAIProvider": "llm_agent_runtime.providers.openai",
    "PostgresBackend": "llm_agent_runtime.persistence.postgres",
    "RedisBackend": "llm_agent_runtime.persistence.redis",
    "ScriptedProvider": "llm_agent_runtime.providers.offline",
    "ToolRegistry": "llm_agent_runtime.tools",
    "ToolSpec": "llm_agent_runtime.tools",
    "provider_from_env": "llm_agent_runtime.providers",
    "tool": "llm_agent_runtime.tools",
}

__all__ = [
    "AgentConfig",
    "AgentLoopError",
    "AgentRuntime",
    "AgentRuntimeError",
    "AgentSession",
    "AnthropicProvider",
    "ApprovalDecision",
    "ApprovalHandler",
    "BackpressureGuard",
    "BackpressureShedError",
    "BudgetExceededError",
    "CapabilitySet",
    "CheckpointSaved",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStateBackend",
    "CircuitStateChange",
    "Clock",
    "CostBudget",
    "DecayPolicy",
    "Deduplicator",
    "Embedder",
    "Episode",
    "EpisodicStore",
    "ErrorEvent",
    "Event",
    "EventBus",
    "FakeClock",
    "FileBackend",
    "GraphError",
    "GraphStore",
    "HashingEmbedder",
    "InMemoryBackend",
    "InMemoryCircuitStateBackend",
    "InferFn",
    "LlmProvider",
    "LlmResponse",
    "LlmTextDelta",
    "MemoryStoreError",
    "MetricsSnapshot",
    "Middleware",
    "Observation",
    "OpenAIEmbedder",
    "OpenAIProvider",
    "ParseError",
    "PersistenceBackend",
    "PersistenceError",
    "Pipeline",
    "PipelineStageError",
    "PolicyDeniedError",
    "PostgresBackend",
    "ProviderError",
    "RateLimiter",
    "ReActStep",
    "RecallPolicy",
    "RedisBackend",
    "RedisCircuitStateBackend",
    "RedisDeduplicator",
    "RedisRateLimiter",
    "ResultCache",
    "RetryPolicy",
    "RunFinished",
    "RunStarted",
    "RuntimeMetrics",
    "ScriptedProvider",
    "SemanticEntry",
    "SemanticHit",
    "SemanticStore",
    "SentenceTransformerEmbedder",
    "SqliteBackend",
    "Step",
    "SystemClock",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolError",
    "ToolRegistry",
    "ToolSpec",
    "VectorIndex",
    "WorkingMemory",
    "__version__",
    "fit_to_token_budget",
    "from_networkx",
    "parse_react_step",
    "provider_from_env",
    "to_networkx",
    "tool",
]


def __getattr__(name: str) -> Any:
    import importlib

    if name == "providers":  # the subpackage itself
        return importlib.import_module("llm_agent_runtime.providers")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
