"""Orchestration primitives: each works on its own around any sync or async callable."""

from llm_agent_runtime.orchestration.backpressure import BackpressureGuard
from llm_agent_runtime.orchestration.budget import CostBudget
from llm_agent_runtime.orchestration.cache import ResultCache
from llm_agent_runtime.orchestration.capabilities import CapabilitySet
from llm_agent_runtime.orchestration.circuit_breaker import (
    CircuitBreaker,
    CircuitState,
    CircuitStateBackend,
    CircuitStateChange,
    InMemoryCircuitStateBackend,
)
from llm_agent_runtime.orchestration.clock import Clock, FakeClock, SystemClock
from llm_agent_runtime.orchestration.dedup import Deduplicator, canonical_key
from llm_agent_runtime.orchestration.pipeline import Pipeline
from llm_agent_runtime.orchestration.rate_limit import RateLimiter
from llm_agent_runtime.orchestration.redis_state import (
    RedisCircuitStateBackend,
    RedisDeduplicator,
    RedisRateLimiter,
)
from llm_agent_runtime.orchestration.retry import RetryPolicy

__all__ = [
    "BackpressureGuard",
    "CapabilitySet",
    "CircuitBreaker",
    "CircuitState",
    "CircuitStateBackend",
    "CircuitStateChange",
    "Clock",
    "CostBudget",
    "Deduplicator",
    "FakeClock",
    "InMemoryCircuitStateBackend",
    "Pipeline",
    "RateLimiter",
    "RedisCircuitStateBackend",
    "RedisDeduplicator",
    "RedisRateLimiter",
    "ResultCache",
    "RetryPolicy",
    "SystemClock",
    "canonical_key",
]
