"""The agents the loop benchmark runs: a hand-written minimal asyncio loop (the floor), ours,
and peers' agents with their own zero-latency fake models.

Kept apart from the tests so that the peak-RSS child (`python loop_agents.py MODE LIB`)
imports only the library it measures: no pytest, and not our package for a peer's row.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import itertools
import json
import re
import sys
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def _require(module: str) -> Any:
    """`module`, imported; a missing one skips the test that asked (pytest loaded then only)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        import pytest

        pytest.skip(f"{module} is not installed")


N_TOOL_CALLS = 10
STEPS = N_TOOL_CALLS + 1
EXPECTED = sum(range(N_TOOL_CALLS)) + N_TOOL_CALLS  # sum of add(i, 1)
GROUP = f"agent loop: {N_TOOL_CALLS} add() calls + final answer, zero-latency model"


REACT_SCRIPT = [
    f'Thought: step {i}\nAction: add {{"a": {i}, "b": 1}}' for i in range(N_TOOL_CALLS)
] + ["Thought: done\nAction: FINAL_ANSWER done"]


async def add_plain(a: int, b: int) -> int:
    """The floor's tool: the same addition, no decorator."""
    return a + b


FLOOR_TOOLS = {"add": add_plain}
NATIVE_REPLIES = [
    {"tool_calls": [{"id": f"call_{i}", "name": "add", "arguments": {"a": i, "b": 1}}]}
    for i in range(N_TOOL_CALLS)
] + [{"content": "done", "tool_calls": []}]
REACT_ACTION = re.compile(r"Action:\s*(\w+)\s*(.*)", re.DOTALL)


async def _floor_native(yields: bool = False) -> int:
    """Native floor: a chat history and one dict lookup + await per tool call, nothing else.

    `yields`: the model call yields to the loop once, as a real one suspends (the concurrent
    group's, whose runs then overlap); else it never suspends (the per-step group's).
    """
    replies = iter(NATIVE_REPLIES)

    if yields:

        async def model(messages: list[dict[str, Any]]) -> dict[str, Any]:
            await asyncio.sleep(0)
            return next(replies)

    else:

        async def model(messages: list[dict[str, Any]]) -> dict[str, Any]:
            return next(replies)

    messages: list[dict[str, Any]] = [{"role": "user", "content": "sum"}]
    total = 0
    for _ in range(STEPS):
        reply = await model(messages)
        messages.append(reply)
        if not reply["tool_calls"]:
            return total
        for call in reply["tool_calls"]:
            result = await FLOOR_TOOLS[call["name"]](**call["arguments"])
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": str(result)})
            total += result
    return total


async def _floor_react() -> int:
    """ReAct floor: the same text replies, parsed with one regex and json.loads."""
    replies = iter(REACT_SCRIPT)

    async def model(prompt: str) -> str:
        return next(replies)

    transcript = ["Question: sum"]
    total = 0
    for _ in range(STEPS):
        reply = await model("\n".join(transcript))
        match = REACT_ACTION.search(reply)
        if match is None:
            raise ValueError(reply)
        name, argument = match.groups()
        if name == "FINAL_ANSWER":
            return total
        result = await FLOOR_TOOLS[name](**json.loads(argument))
        transcript.append(f"{reply}\nObservation: {result}")
        total += result
    return total


def _ours(mode: str, concurrent: bool = False) -> Any:
    """Our runtime in `mode`, with events, metrics and memory on (imported here: the peak-RSS
    child of another library does not load it); `concurrent`: see `_one_run`."""
    import llm_agent_runtime as ar

    @ar.tool
    async def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    # Replies report their usage, as real providers do (without it, it is estimated per call).
    usage = ar.Usage(input_tokens=100, output_tokens=10)
    native_script = [
        ar.ChatResponse(
            tool_calls=[ar.ToolCall(f"call_{i}", "add", {"a": i, "b": 1})],
            usage=usage,
            stop_reason="tool_calls",
        )
        for i in range(N_TOOL_CALLS)
    ] + [ar.ChatResponse(text="done", usage=usage, stop_reason="stop")]
    config = ar.AgentConfig(mode=mode, max_iterations=STEPS)  # type: ignore[arg-type]
    memory = ar.EpisodicStore()
    memory.add_episode("bench", "adding numbers is easy", 0.5)
    runtime = ar.AgentRuntime(config, tools=[add], memory=memory)
    runtime.events.on(lambda event: None)  # events on, as a listening application has them
    if concurrent:

        class YieldingProvider(ar.ScriptedProvider):
            """The script, whose call yields to the loop once, as a real model call suspends."""

            async def chat(
                self, messages: Any, tools: Any = None, model: str | None = None, **params: Any
            ) -> ar.ChatResponse:
                await asyncio.sleep(0)
                return await super().chat(messages, tools, model, **params)

        # Each run its own script (runs that overlap would take each other's replies from
        # one), and a call that suspends: the runs overlap, as the peers' do.
        async def run_concurrent() -> int:
            own = YieldingProvider(native_script)
            session = await runtime.run_agent_with_provider("bench", "sum", own)
            return sum(int(s.observation) for s in session.steps if s.action == "add")

        return run_concurrent

    # One provider for every run, as an application keeps one and as the peers keep their
    # models: its script starts over at each run's first call. A zero-latency run never
    # suspends, so runs never overlap to take each other's replies.
    provider = ar.ScriptedProvider(native_script, loop=True)

    async def run() -> int:
        if mode == "tools":
            session = await runtime.run_agent_with_provider("bench", "sum", provider)
        else:
            replies = iter(REACT_SCRIPT)

            async def infer(prompt: str) -> str:
                return next(replies)

            session = await runtime.run_agent("bench", "sum", infer)
        return sum(int(s.observation) for s in session.steps if s.action == "add")

    return run


def _langgraph() -> Any:
    """LangGraph's prebuilt ReAct agent on a zero-latency chat model answering from its input."""
    _require("langgraph")
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.tools import tool as lc_tool
    from langgraph.prebuilt import create_react_agent

    class FakeToolModel(BaseChatModel):
        """Calls add(i, 1) for the i-th tool round, then answers; binding tools is a no-op."""

        @property
        def _llm_type(self) -> str:
            return "scripted"

        def _generate(self, messages: Any, *args: Any, **kwargs: Any) -> ChatResult:
            done = sum(1 for m in messages if isinstance(m, ToolMessage))
            if done < N_TOOL_CALLS:
                call = {"name": "add", "args": {"a": done, "b": 1}, "id": f"c{done}"}
                reply = AIMessage(content="", tool_calls=[call])
            else:
                reply = AIMessage(content="done")
            return ChatResult(generations=[ChatGeneration(message=reply)])

        async def _agenerate(self, messages: Any, *args: Any, **kwargs: Any) -> ChatResult:
            return self._generate(messages)

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

    @lc_tool
    async def lc_add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    lc_add.name = "add"
    with warnings.catch_warnings():  # moved to langchain.agents (not installed), same graph
        warnings.simplefilter("ignore")
        agent = create_react_agent(FakeToolModel(), [lc_add])

    async def run() -> int:
        out = await agent.ainvoke({"messages": [("user", "sum")]})
        return sum(int(m.content) for m in out["messages"] if isinstance(m, ToolMessage))

    return run


def _pydantic_ai() -> Any:
    """pydantic-ai's Agent driven by its own FunctionModel (zero latency)."""
    pydantic_ai = _require("pydantic_ai")
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    # Async, as pydantic-ai's own models are: a sync function runs in a thread per call.
    async def model_fn(messages: list[Any], info: AgentInfo) -> ModelResponse:
        done = sum(
            1 for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)
        )
        if done < N_TOOL_CALLS:
            return ModelResponse(parts=[ToolCallPart("add", {"a": done, "b": 1})])
        return ModelResponse(parts=[TextPart("done")])

    agent = pydantic_ai.Agent(FunctionModel(model_fn))

    @agent.tool_plain(name="add")
    async def add_tool(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    async def run() -> int:
        result = await agent.run("sum")
        return sum(
            int(p.content)
            for m in result.all_messages()
            for p in m.parts
            if isinstance(p, ToolReturnPart)
        )

    return run


def _smolagents() -> Any:
    """smolagents' ToolCallingAgent on a scripted `Model` (its loop is synchronous)."""
    smolagents = _require("smolagents")
    from smolagents.models import ChatMessage, ChatMessageToolCall, ChatMessageToolCallFunction

    def call(i: int, name: str, arguments: dict[str, Any]) -> ChatMessage:
        function = ChatMessageToolCallFunction(name=name, arguments=arguments)
        return ChatMessage(
            role="assistant",  # type: ignore[arg-type]
            content="",
            tool_calls=[ChatMessageToolCall(id=f"c{i}", type="function", function=function)],
        )

    script = [call(i, "add", {"a": i, "b": 1}) for i in range(N_TOOL_CALLS)]
    script.append(call(N_TOOL_CALLS, "final_answer", {"answer": "done"}))

    class ScriptedModel(smolagents.Model):
        def __init__(self) -> None:
            super().__init__(model_id="scripted")
            self.replies = itertools.cycle(script)

        def generate(self, messages: Any, **kwargs: Any) -> ChatMessage:
            return next(self.replies)

    def add(a: int, b: int) -> int:
        """Adds two integers.

        Args:
            a: First addend.
            b: Second addend.
        """
        return a + b

    with warnings.catch_warnings():  # it warns that a nested function may not serialize
        warnings.simplefilter("ignore")
        add_tool = smolagents.tool(add)

    agent = smolagents.ToolCallingAgent(
        tools=[add_tool], model=ScriptedModel(), max_steps=STEPS + 1, verbosity_level=0
    )

    async def run() -> int:
        agent.run("sum")
        return sum(
            int(step.observations)
            for step in agent.memory.steps
            if getattr(step, "observations", None) and str(step.observations).isdigit()
        )

    return run


PEERS = {"langgraph": _langgraph, "pydantic-ai": _pydantic_ai, "smolagents": _smolagents}
"""Peer agents with their own zero-latency fake models, by package name."""


FLOOR = "asyncio-floor"
"""`extra_info["lib"]` of the hand-written minimal asyncio loop."""


def _one_run(mode: str, lib: str, concurrent: bool = False) -> Callable[[], Awaitable[int]]:
    """The run function of `lib` in `mode`.

    `concurrent` (native tool calls only): for runs gathered at once. The floor's and our
    model calls then yield to the loop once, as the peers' runs suspend, so that the runs
    overlap instead of running one after the other; the peers' runs are the same either way.
    """
    if concurrent and mode != "tools":
        raise ValueError("the concurrent runs are native tool calls only")
    if lib in PEERS:
        return PEERS[lib]()  # type: ignore[no-any-return]
    if lib == FLOOR:
        if concurrent:
            return functools.partial(_floor_native, yields=True)
        return _floor_native if mode == "tools" else _floor_react
    return _ours(mode, concurrent)  # type: ignore[no-any-return]


CONCURRENT = 100
"""Runs at once in the concurrent group and in the peak-RSS child."""


def _reset_peak_rss() -> bool:
    """Resets this process's peak RSS (VmHWM) to its current RSS; False without /proc."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _own_peak_rss_mb(proc: bool) -> float:
    """This process's peak RSS since the reset, in MB."""
    if proc:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        if match is not None:
            return int(match.group(1)) / 1024
    import resource

    # No /proc (not Linux): ru_maxrss, which on Linux would carry over the parent's
    # (pytest's) peak from the fork, so it is only the fallback.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":  # `python loop_agents.py MODE LIB`: peak RSS of 100 concurrent runs
    # First thing: the peak counts this child's imports and runs, not its parent's memory
    # (this module imports only asyncio and the standard library; each library is imported
    # by its own factory).
    has_proc = _reset_peak_rss()
    run_fn = _one_run(sys.argv[1], sys.argv[2], concurrent=True)

    async def _all() -> None:
        await asyncio.gather(*(run_fn() for _ in range(CONCURRENT)))

    asyncio.run(_all())
    print(_own_peak_rss_mb(has_proc))
