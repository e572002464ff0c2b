"""llm-agent-runtime: a Python agent runtime with a Rust core.

Everything public is re-exported here by name; other modules are implementation detail. The
Rust core, the errors, events and sessions load with the package; everything else (the
agent layer's pydantic models, orchestration, persistence backends, the HTTP providers and
the database drivers) loads on first use, so a program pays only for the parts it uses.
"""

# No `from __future__ import annotations` here: it would make `annotations` a public name of
# the package, and nothing here needs it. Helpers are imported under private names, so that
# the public names are `__all__`'s (and the package's submodules).
import typing as _typing

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
from llm_agent_runtime._lazy import lazy_exports as _lazy_exports
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
    RateLimitExceededError,
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
    Subscription,
    ToolCallFinished,
    ToolCallStarted,
)
from llm_agent_runtime.session import AgentSession, Step

if _typing.TYPE_CHECKING:
    # The submodules as attributes (`ar.persistence.SqliteBackend`): pyright binds them only
    # when imported so, not through the `from llm_agent_runtime.x import ...` lines below.
    from llm_agent_runtime import config as config
    from llm_agent_runtime import embeddings as embeddings
    from llm_agent_runtime import graph as graph
    from llm_agent_runtime import memory as memory
    from llm_agent_runtime import orchestration as orchestration
    from llm_agent_runtime import persistence as persistence
    from llm_agent_runtime import providers as providers
    from llm_agent_runtime import runtime as runtime
    from llm_agent_runtime import semantic as semantic
    from llm_agent_runtime import tools as tools
    from llm_agent_runtime.config import AgentConfig
    from llm_agent_runtime.embeddings import Embedder, OpenAIEmbedder, SentenceTransformerEmbedder
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
        FencedPersistenceBackend,
        FileBackend,
        InMemoryBackend,
        PersistenceBackend,
        SqliteBackend,
    )
    from llm_agent_runtime.persistence.postgres import PostgresBackend
    from llm_agent_runtime.persistence.redis import RedisBackend
    from llm_agent_runtime.providers import provider_from_env
    from llm_agent_runtime.providers.anthropic import AnthropicProvider
    from llm_agent_runtime.providers.base import (
        ChatProvider,
        ChatResponse,
        CompletionProvider,
        LlmProvider,
        Message,
        StreamEnd,
        StreamEvent,
        TextDelta,
        ToolCall,
        ToolCallDelta,
        ToolDefinition,
        UnreadableArgumentsError,
        Usage,
    )
    from llm_agent_runtime.providers.offline import ScriptedProvider
    from llm_agent_runtime.providers.openai import OpenAIProvider
    from llm_agent_runtime.runtime import (
        REMEMBERED_APPROVAL_SESSIONS,
        AgentRuntime,
        ApprovalDecision,
        ApprovalHandler,
        InferFn,
        Middleware,
        SupportsContent,
        SupportsEntityCount,
        SupportsRecall,
        SupportsToPrompt,
    )
    from llm_agent_runtime.semantic import SemanticEntry, SemanticHit, SemanticStore
    from llm_agent_runtime.tools import Observation, ToolRegistry, ToolSpec, tool

# Loaded on first use: name -> module that defines it (or the subpackage itself).
_LAZY = {
    "Embedder": "llm_agent_runtime.embeddings",
    "OpenAIEmbedder": "llm_agent_runtime.embeddings",
    "SentenceTransformerEmbedder": "llm_agent_runtime.embeddings",
    "from_networkx": "llm_agent_runtime.graph",
    "to_networkx": "llm_agent_runtime.graph",
    "fit_to_token_budget": "llm_agent_runtime.memory",
    "BackpressureGuard": "llm_agent_runtime.orchestration",
    "CapabilitySet": "llm_agent_runtime.orchestration",
    "CircuitBreaker": "llm_agent_runtime.orchestration",
    "CircuitState": "llm_agent_runtime.orchestration",
    "CircuitStateBackend": "llm_agent_runtime.orchestration",
    "CircuitStateChange": "llm_agent_runtime.orchestration",
    "Clock": "llm_agent_runtime.orchestration",
    "CostBudget": "llm_agent_runtime.orchestration",
    "Deduplicator": "llm_agent_runtime.orchestration",
    "FakeClock": "llm_agent_runtime.orchestration",
    "InMemoryCircuitStateBackend": "llm_agent_runtime.orchestration",
    "Pipeline": "llm_agent_runtime.orchestration",
    "RateLimiter": "llm_agent_runtime.orchestration",
    "RedisCircuitStateBackend": "llm_agent_runtime.orchestration",
    "RedisDeduplicator": "llm_agent_runtime.orchestration",
    "RedisRateLimiter": "llm_agent_runtime.orchestration",
    "ResultCache": "llm_agent_runtime.orchestration",
    "RetryPolicy": "llm_agent_runtime.orchestration",
    "SystemClock": "llm_agent_runtime.orchestration",
    "FencedPersistenceBackend": "llm_agent_runtime.persistence",
    "FileBackend": "llm_agent_runtime.persistence",
    "InMemoryBackend": "llm_agent_runtime.persistence",
    "PersistenceBackend": "llm_agent_runtime.persistence",
    "SqliteBackend": "llm_agent_runtime.persistence",
    "SemanticEntry": "llm_agent_runtime.semantic",
    "SemanticHit": "llm_agent_runtime.semantic",
    "SemanticStore": "llm_agent_runtime.semantic",
    "AgentConfig": "llm_agent_runtime.config",
    "AgentRuntime": "llm_agent_runtime.runtime",
    "AnthropicProvider": "llm_agent_runtime.providers.anthropic",
    "ApprovalDecision": "llm_agent_runtime.runtime",
    "ApprovalHandler": "llm_agent_runtime.runtime",
    "InferFn": "llm_agent_runtime.runtime",
    "LlmProvider": "llm_agent_runtime.providers.base",
    "ChatProvider": "llm_agent_runtime.providers.base",
    "CompletionProvider": "llm_agent_runtime.providers.base",
    "ChatResponse": "llm_agent_runtime.providers.base",
    "Message": "llm_agent_runtime.providers.base",
    "StreamEnd": "llm_agent_runtime.providers.base",
    "StreamEvent": "llm_agent_runtime.providers.base",
    "TextDelta": "llm_agent_runtime.providers.base",
    "ToolCall": "llm_agent_runtime.providers.base",
    "ToolCallDelta": "llm_agent_runtime.providers.base",
    "ToolDefinition": "llm_agent_runtime.providers.base",
    "UnreadableArgumentsError": "llm_agent_runtime.providers.base",
    "Usage": "llm_agent_runtime.providers.base",
    "Middleware": "llm_agent_runtime.runtime",
    "REMEMBERED_APPROVAL_SESSIONS": "llm_agent_runtime.runtime",
    "SupportsContent": "llm_agent_runtime.runtime",
    "SupportsEntityCount": "llm_agent_runtime.runtime",
    "SupportsRecall": "llm_agent_runtime.runtime",
    "SupportsToPrompt": "llm_agent_runtime.runtime",
    "Observation": "llm_agent_runtime.tools",
    "OpenAIProvider": "llm_agent_runtime.providers.openai",
    "PostgresBackend": "llm_agent_runtime.persistence.postgres",
    "RedisBackend": "llm_agent_runtime.persistence.redis",
    "ScriptedProvider": "llm_agent_runtime.providers.offline",
    "ToolRegistry": "llm_agent_runtime.tools",
    "ToolSpec": "llm_agent_runtime.tools",
    "provider_from_env": "llm_agent_runtime.providers",
    "tool": "llm_agent_runtime.tools",
    # The submodules type checkers see (imported from above): each loads on first use, as
    # `ar.persistence.SqliteBackend` is read.
    "config": "llm_agent_runtime.config",
    "embeddings": "llm_agent_runtime.embeddings",
    "graph": "llm_agent_runtime.graph",
    "memory": "llm_agent_runtime.memory",
    "orchestration": "llm_agent_runtime.orchestration",
    "persistence": "llm_agent_runtime.persistence",
    "providers": "llm_agent_runtime.providers",
    "runtime": "llm_agent_runtime.runtime",
    "semantic": "llm_agent_runtime.semantic",
    "tools": "llm_agent_runtime.tools",
}

__all__ = [
    "REMEMBERED_APPROVAL_SESSIONS",
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
    "ChatProvider",
    "ChatResponse",
    "CheckpointSaved",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStateBackend",
    "CircuitStateChange",
    "Clock",
    "CompletionProvider",
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
    "FencedPersistenceBackend",
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
    "Message",
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
    "RateLimitExceededError",
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
    "StreamEnd",
    "StreamEvent",
    "Subscription",
    "SupportsContent",
    "SupportsEntityCount",
    "SupportsRecall",
    "SupportsToPrompt",
    "SystemClock",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolDefinition",
    "ToolError",
    "ToolRegistry",
    "ToolSpec",
    "UnreadableArgumentsError",
    "Usage",
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


# Not for type checkers: a module `__getattr__` tells them any name exists (a misspelled
# import would be `Any`); they read the names above, under TYPE_CHECKING.
if not _typing.TYPE_CHECKING:
    __getattr__, __dir__ = _lazy_exports(__name__, globals(), _LAZY)
