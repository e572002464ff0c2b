"""Reprs of the public Python classes: informative, short, never a secret, never raising."""

from __future__ import annotations

import math
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.orchestration import (
    BackpressureGuard,
    CapabilitySet,
    CostBudget,
    Deduplicator,
    FakeClock,
    InMemoryCircuitStateBackend,
    Pipeline,
    RateLimiter,
    ResultCache,
    SystemClock,
)

SECRET = "s3cret-Zq7"
MANY = 1000


def many_specs(count: int = MANY) -> list[ar.ToolSpec]:
    return [ar.ToolSpec(f"tool_{i:04d}", "A tool.", lambda arguments: "ok") for i in range(count)]


@ar.tool
async def add(a: int, b: int) -> int:
    """Adds."""
    return a + b


@ar.tool
async def search(query: str) -> str:
    """Searches."""
    return query


def test_a_runtime_shows_its_mode_model_tools_and_backend() -> None:
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools", model="gpt-4o"),
        tools=[add, search],
        checkpoint_backend=ar.InMemoryBackend(),
    )
    assert repr(runtime) == (
        "AgentRuntime(mode='tools', model='gpt-4o', tools=['add', 'search'], "
        "checkpoint_backend=InMemoryBackend(keys=0))"
    )
    assert repr(ar.AgentRuntime()) == (
        "AgentRuntime(mode='react', model=None, tools=[], checkpoint_backend=None)"
    )


async def test_a_runtime_repr_shows_no_password_nor_model_params() -> None:
    config = ar.AgentConfig(model="m", model_params={"api_key": SECRET})
    backends = [
        ar.PostgresBackend(f"postgresql://user:{SECRET}@127.0.0.1:1/db"),
        ar.RedisBackend(f"redis://:{SECRET}@127.0.0.1:1/0"),
    ]
    for backend in backends:
        text = repr(ar.AgentRuntime(config, checkpoint_backend=backend))
        assert SECRET not in text
        assert f"checkpoint_backend={type(backend).__name__}(" in text
        await backend.close()


def test_reprs_of_many_tools_or_long_names_are_bounded() -> None:
    specs = many_specs()
    runtime = ar.AgentRuntime(ar.AgentConfig(model="m" * 100_000), tools=specs)
    text = repr(runtime)
    assert len(text) < 400
    assert "'tool_0000', 'tool_0001', 'tool_0002', 'tool_0003', 'tool_0004', ... (995 more)" in text
    registry = repr(ar.ToolRegistry(specs))
    assert registry.startswith("ToolRegistry(tools=['tool_0000', ") and len(registry) < 200
    assert registry.endswith("... (995 more)])")
    names = [f"tool_{i:04d}" for i in range(MANY)]
    capabilities = repr(CapabilitySet(allowed_tools=reversed(names), allowed_state_keys=["k"]))
    assert len(capabilities) < 300
    # A set shows smallest first, the same in every process.
    assert "allowed_tools=['tool_0000', 'tool_0001', 'tool_0002'," in capabilities
    pipeline = repr(Pipeline(*[(f"s{i}", str) for i in range(MANY)]))
    assert pipeline == "Pipeline(stages=['s0', 's1', 's2', 's3', 's4', ... (995 more)])"


def test_a_backend_with_a_long_or_failing_repr_leaves_the_runtime_repr_bounded() -> None:
    class Loud(ar.InMemoryBackend):
        def __repr__(self) -> str:
            return "Loud(" + "x" * 100_000 + ")"

    class Broken(ar.InMemoryBackend):
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    assert len(repr(ar.AgentRuntime(checkpoint_backend=Loud()))) < 400
    assert repr(ar.AgentRuntime(checkpoint_backend=Broken())).endswith(
        "checkpoint_backend=<Broken>)"
    )


def test_the_scripted_provider_shows_counts_not_the_script() -> None:
    provider = ar.ScriptedProvider([f"the reply is {SECRET}", "two"])
    assert repr(provider) == "ScriptedProvider(replies=2, loop=False, calls=0)"
    assert repr(ar.ScriptedProvider(["a"], loop=True)) == (
        "ScriptedProvider(replies=1, loop=True, calls=0)"
    )

    def echo(prompt: str) -> str:
        return prompt

    assert repr(ar.ScriptedProvider(rule=echo)) == "ScriptedProvider(rule='echo', calls=0)"


async def test_the_scripted_provider_repr_counts_calls() -> None:
    provider = ar.ScriptedProvider(["a", "b"])
    await provider.complete("q")
    assert repr(provider) == "ScriptedProvider(replies=2, loop=False, calls=1)"


def test_a_middleware_shows_the_hooks_it_overrides() -> None:
    class Logging(ar.Middleware):
        def on_pre_llm(self, session: ar.AgentSession, prompt: str) -> Any:
            return None

    middleware = Logging()
    middleware.on_tool_call = lambda session, tool, arguments: None  # type: ignore[method-assign]
    assert repr(middleware) == "Logging(hooks=['on_pre_llm', 'on_tool_call'])"
    assert repr(ar.Middleware()) == "Middleware(hooks=[])"


def test_orchestration_primitives_show_their_settings_and_state() -> None:
    budget = CostBudget(max_tokens=100, max_cost_usd=0.5)
    budget.record(10, 5, 0.25)
    assert repr(budget) == (
        "CostBudget(max_tokens=100, max_cost_usd=0.5, used_tokens=15, used_cost_usd=0.25)"
    )
    assert repr(CapabilitySet(["search", "add"], None, 3)) == (
        "CapabilitySet(allowed_tools=['add', 'search'], allowed_state_keys=None, "
        "max_actions=3, actions_taken=0)"
    )
    cache = ResultCache(ttl=30, max_entries=8)
    cache.put("add", {"a": 1}, 2)
    assert repr(cache) == "ResultCache(ttl=30.0, max_entries=8, entries=1)"
    assert repr(InMemoryCircuitStateBackend()) == "InMemoryCircuitStateBackend(services=0)"
    assert repr(SystemClock()) == "SystemClock()"
    clock = FakeClock(2.0)
    clock.advance(0.5)
    assert repr(clock) == "FakeClock(now=2.5)"
    assert repr(Deduplicator(ttl=math.inf)) == "Deduplicator(ttl=inf, in_flight=0, executions=0)"
    assert repr(RateLimiter(rate=2, capacity=5)) == "RateLimiter(rate=2.0, capacity=5.0)"
    assert repr(Pipeline(str, ("shout", str.upper))) == "Pipeline(stages=['str', 'shout'])"


async def test_the_in_memory_backend_shows_how_many_keys_it_holds() -> None:
    backend = ar.InMemoryBackend()
    await backend.save("a", b"1")
    assert repr(backend) == "InMemoryBackend(keys=1)"


@pytest.mark.parametrize(
    "cls",
    [
        ar.AgentRuntime,
        ar.ToolRegistry,
        ar.ScriptedProvider,
        ar.Middleware,
        ar.InMemoryBackend,
        CostBudget,
        CapabilitySet,
        ResultCache,
        InMemoryCircuitStateBackend,
        FakeClock,
        Deduplicator,
        RateLimiter,
        Pipeline,
        SystemClock,
    ],
)
def test_a_half_built_object_has_a_repr_that_does_not_raise(cls: type) -> None:
    # A traceback or debugger shows `self` from inside an `__init__` that failed.
    text = repr(cls.__new__(cls))
    assert text.startswith(cls.__name__ + "(") and len(text) < 100


def test_no_repr_is_the_default_one() -> None:
    objects: list[object] = [
        ar.AgentRuntime(),
        ar.ToolRegistry(),
        ar.ScriptedProvider(["a"]),
        ar.Middleware(),
        ar.InMemoryBackend(),
        CostBudget(),
        CapabilitySet(),
        ResultCache(1),
        InMemoryCircuitStateBackend(),
        SystemClock(),
        FakeClock(),
        Deduplicator(1),
        RateLimiter(1, 1),
        Pipeline(),
        BackpressureGuard(1),
    ]
    for value in objects:
        assert " object at 0x" not in repr(value), repr(value)
