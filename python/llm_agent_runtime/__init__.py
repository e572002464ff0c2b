"""llm-agent-runtime: a Python agent runtime with a Rust core.

Everything public is re-exported here by name; other modules are implementation detail.
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
from llm_agent_runtime.config import AgentConfig
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
from llm_agent_runtime.providers import provider_from_env
from llm_agent_runtime.providers.offline import ScriptedProvider
from llm_agent_runtime.runtime import AgentRuntime, ApprovalDecision, Middleware
from llm_agent_runtime.semantic import SemanticEntry, SemanticHit, SemanticStore
from llm_agent_runtime.session import AgentSession, Step
from llm_agent_runtime.tools import Observation, ToolRegistry, ToolSpec, tool

if TYPE_CHECKING:
    from llm_agent_runtime.persistence.postgres import PostgresBackend
    from llm_agent_runtime.persistence.redis import RedisBackend
    from llm_agent_runtime.providers.anthropic import AnthropicProvider
    from llm_agent_runtime.providers.openai import OpenAIProvider

__all__ = [
    "AgentConfig",
    "AgentLoopError",
    "AgentRuntime",
    "AgentRuntimeError",
    "AgentSession",
    "AnthropicProvider",
    "ApprovalDecision",
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
    # The HTTP providers load httpx: import them on first use, not with the package.
    if name in ("AnthropicProvider", "OpenAIProvider"):
        from llm_agent_runtime import providers

        value = getattr(providers, name)
        globals()[name] = value
        return value
    # The server backends import their database drivers.
    if name in ("PostgresBackend", "RedisBackend"):
        from llm_agent_runtime import persistence

        value = getattr(persistence, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
