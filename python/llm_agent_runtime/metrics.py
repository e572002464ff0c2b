"""Runtime metrics, counted lock-free in Rust (`rust/metrics.rs`), and their snapshots.

Sessions, steps, tool calls (per tool and per agent), tokens and checkpoint errors.

`RuntimeMetrics` is what an `AgentRuntime` counts into (`metrics=`, or its own); any agent can
use one alone. `MetricsSnapshot` is a point-in-time copy with the seed's helpers (rates,
deltas, JSON and Prometheus text).
"""

from __future__ import annotations

from llm_agent_runtime._core import MetricsSnapshot, RuntimeMetrics

__all__ = ["MetricsSnapshot", "RuntimeMetrics"]
