"""Orchestration primitives: each works on its own around any sync or async callable.

Each primitive's module loads on first use, so a program pays only for those it uses.
"""

from typing import TYPE_CHECKING

from llm_agent_runtime._lazy import lazy_exports

if TYPE_CHECKING:
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

_EXPORTS = {
    "BackpressureGuard": "llm_agent_runtime.orchestration.backpressure",
    "CapabilitySet": "llm_agent_runtime.orchestration.capabilities",
    "CircuitBreaker": "llm_agent_runtime.orchestration.circuit_breaker",
    "CircuitState": "llm_agent_runtime.orchestration.circuit_breaker",
    "CircuitStateBackend": "llm_agent_runtime.orchestration.circuit_breaker",
    "CircuitStateChange": "llm_agent_runtime.orchestration.circuit_breaker",
    "Clock": "llm_agent_runtime.orchestration.clock",
    "CostBudget": "llm_agent_runtime.orchestration.budget",
    "Deduplicator": "llm_agent_runtime.orchestration.dedup",
    "FakeClock": "llm_agent_runtime.orchestration.clock",
    "InMemoryCircuitStateBackend": "llm_agent_runtime.orchestration.circuit_breaker",
    "Pipeline": "llm_agent_runtime.orchestration.pipeline",
    "RateLimiter": "llm_agent_runtime.orchestration.rate_limit",
    "RedisCircuitStateBackend": "llm_agent_runtime.orchestration.redis_state",
    "RedisDeduplicator": "llm_agent_runtime.orchestration.redis_state",
    "RedisRateLimiter": "llm_agent_runtime.orchestration.redis_state",
    "ResultCache": "llm_agent_runtime.orchestration.cache",
    "RetryPolicy": "llm_agent_runtime.orchestration.retry",
    "SystemClock": "llm_agent_runtime.orchestration.clock",
    "canonical_key": "llm_agent_runtime.orchestration.dedup",
}

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

if not TYPE_CHECKING:  # type checkers read the names above (see the package's)
    __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
