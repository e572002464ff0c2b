"""Per-step overhead of the agent loop with a zero-latency model.

One run = 10 tool calls `add(a, b)` + a final answer (11 model calls). Compared: a hand-written
minimal asyncio loop (the floor), our native tool-calling mode and ReAct text mode, and peers'
agents with their own fake models where they install offline. Reported in µs per step.
"""

from __future__ import annotations

import asyncio
import compileall
import itertools
import json
import re
import statistics
import subprocess
import sys
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar

N_TOOL_CALLS = 10
STEPS = N_TOOL_CALLS + 1
RUNS = 200
EXPECTED = sum(range(N_TOOL_CALLS)) + N_TOOL_CALLS  # sum of add(i, 1)
GROUP = f"agent loop: {N_TOOL_CALLS} add() calls + final answer, zero-latency model"


@ar.tool
async def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


# Replies report their usage, as real providers do (without it, it is estimated per call).
_USAGE = ar.providers.base.Usage(input_tokens=100, output_tokens=10)
NATIVE_SCRIPT = [
    ar.providers.base.ChatResponse(
        tool_calls=[ar.providers.base.ToolCall(f"call_{i}", "add", {"a": i, "b": 1})],
        usage=_USAGE,
        stop_reason="tool_calls",
    )
    for i in range(N_TOOL_CALLS)
] + [ar.providers.base.ChatResponse(text="done", usage=_USAGE, stop_reason="stop")]
REACT_SCRIPT = [
    f'Thought: step {i}\nAction: add {{"a": {i}, "b": 1}}' for i in range(N_TOOL_CALLS)
] + ["Thought: done\nAction: FINAL_ANSWER done"]


def _total(session: ar.AgentSession) -> int:
    return sum(int(s.observation) for s in session.steps if s.action == "add")


async def add_plain(a: int, b: int) -> int:
    """The floor's tool: the same addition, no decorator."""
    return a + b


FLOOR_TOOLS = {"add": add_plain}
NATIVE_REPLIES = [
    {"tool_calls": [{"id": f"call_{i}", "name": "add", "arguments": {"a": i, "b": 1}}]}
    for i in range(N_TOOL_CALLS)
] + [{"content": "done", "tool_calls": []}]
REACT_ACTION = re.compile(r"Action:\s*(\w+)\s*(.*)", re.DOTALL)


async def _floor_native() -> int:
    """Native floor: a chat history and one dict lookup + await per tool call, nothing else."""
    replies = iter(NATIVE_REPLIES)

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


def _ours(mode: str) -> Any:
    config = ar.AgentConfig(mode=mode, max_iterations=STEPS)  # type: ignore[arg-type]
    memory = ar.EpisodicStore()
    memory.add_episode("bench", "adding numbers is easy", 0.5)
    runtime = ar.AgentRuntime(config, tools=[add], memory=memory)
    runtime.events.on(lambda event: None)  # events on, as a listening application has them

    async def run() -> int:
        if mode == "tools":
            provider = ar.ScriptedProvider(NATIVE_SCRIPT)
            session = await runtime.run_agent_with_provider("bench", "sum", provider)
        else:
            replies = iter(REACT_SCRIPT)

            async def infer(prompt: str) -> str:
                return next(replies)

            session = await runtime.run_agent("bench", "sum", infer)
        return _total(session)

    return run


def _langgraph() -> Any:
    """LangGraph's prebuilt ReAct agent on a zero-latency chat model answering from its input."""
    pytest.importorskip("langgraph")
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
    pydantic_ai = pytest.importorskip("pydantic_ai")
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
    smolagents = pytest.importorskip("smolagents")
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
CASES = [
    ("tools", FLOOR),
    ("tools", "llm_agent_runtime"),
    *(("tools", peer) for peer in PEERS),
    ("react", FLOOR),
    ("react", "llm_agent_runtime"),
]


def group_for(mode: str) -> str:
    """Benchmark group of one loop mode (the floor is measured in each)."""
    return f"{GROUP} ({'native tool calls' if mode == 'tools' else 'ReAct text'})"


def _one_run(mode: str, lib: str) -> Callable[[], Awaitable[int]]:
    """The run function of `lib` in `mode`."""
    if lib in PEERS:
        return PEERS[lib]()  # type: ignore[no-any-return]
    if lib == FLOOR:
        return _floor_native if mode == "tools" else _floor_react
    return _ours(mode)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("mode", "lib"), CASES)
def test_loop(benchmark: Any, mode: str, lib: str) -> None:
    one_run = _one_run(mode, lib)
    runs = 20 if lib in PEERS else RUNS  # peers take milliseconds per run
    # A round of ours takes ~15 ms, so more rounds are cheap and steady the median on a
    # shared machine; a peer's round takes up to half a second.
    rounds = 7 if lib in PEERS else 21

    def many() -> list[int]:
        async def all_runs() -> list[int]:
            return [await one_run() for _ in range(runs)]

        return asyncio.run(all_runs())

    benchmark.group = group_for(mode)
    results = benchmark.pedantic(many, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = all(r == EXPECTED for r in results)
    benchmark.extra_info["units"] = runs * STEPS  # medians are compared per step
    benchmark.extra_info["runs_per_s"] = round(runs / benchmark.stats.stats.median)


CONCURRENT = 100
# smolagents' loop is synchronous: it has no concurrent form to compare.
CONCURRENT_CASES = [
    ("tools", lib) for lib in (FLOOR, "llm_agent_runtime", "langgraph", "pydantic-ai")
]


@pytest.mark.parametrize(("mode", "lib"), CONCURRENT_CASES)
def test_loop_concurrent(benchmark: Any, mode: str, lib: str) -> None:
    one_run = _one_run(mode, lib)

    def together() -> list[int]:
        async def all_runs() -> list[int]:
            return list(await asyncio.gather(*(one_run() for _ in range(CONCURRENT))))

        return asyncio.run(all_runs())

    benchmark.group = f"agent loop: {CONCURRENT} concurrent runs (native tool calls)"
    results = benchmark.pedantic(together, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = len(results) == CONCURRENT and all(
        r == EXPECTED for r in results
    )
    benchmark.extra_info["runs_per_s"] = round(CONCURRENT / benchmark.stats.stats.median)
    benchmark.extra_info["peak_rss_mb"] = _peak_rss_mb(mode, lib)


def _peak_rss_mb(mode: str, lib: str) -> float:
    """Peak RSS of a fresh process that imports `lib` and runs 100 concurrent runs."""
    out = subprocess.run(
        [sys.executable, __file__, mode, lib],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    return round(float(out.stdout.split()[-1]), 1)


IMPORTS = {
    "llm_agent_runtime": "llm_agent_runtime",
    "langgraph": "langgraph.prebuilt",
    "pydantic-ai": "pydantic_ai",
    "smolagents": "smolagents",
}
# What a program that runs an agent imports: the agent class and the tool decorator. Ours
# resolves `AgentRuntime` & co. lazily, so `import llm_agent_runtime` alone loads little.
AGENT_IMPORTS = {
    "llm_agent_runtime": "from llm_agent_runtime import AgentRuntime, AgentConfig, tool",
    "langgraph": (
        "from langgraph.prebuilt import create_react_agent; from langchain_core.tools import tool"
    ),
    "pydantic-ai": "from pydantic_ai import Agent",
    "smolagents": "from smolagents import ToolCallingAgent, tool",
}
IMPORT_FLOOR = "python floor: asyncio + pydantic.BaseModel"
"""Informational row: what any async agent class with a pydantic config imports at least."""
AGENT_IMPORTS[IMPORT_FLOOR] = "import asyncio; from pydantic import BaseModel"


@pytest.fixture(scope="module")
def installed_bytecode() -> None:
    """Our package byte-compiled, as pip leaves an installed wheel (and left the peers').

    A source checkout run under PYTHONDONTWRITEBYTECODE (as here) would otherwise compile
    every module of ours at every import, which no installed copy does.
    """
    compileall.compile_dir(Path(ar.__file__).parent, quiet=1)


def _time_import(benchmark: Any, lib: str, statement: str, group: str) -> None:
    """Times a fresh interpreter running `statement` (the benchmark's median); the import's
    own time, measured inside that process, is reported alongside."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"

    own: list[float] = []

    def measure() -> float:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{statement!r} failed: {out.stderr.strip()[-500:]}")
        own.append(float(out.stdout))
        return own[-1]

    benchmark.group = group
    benchmark.pedantic(measure, rounds=5, iterations=1)
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = all(seconds > 0 for seconds in own)
    benchmark.extra_info["import_seconds"] = round(statistics.median(own), 3)


@pytest.mark.usefixtures("installed_bytecode")
@pytest.mark.parametrize("lib", IMPORTS)
def test_import_time(benchmark: Any, lib: str) -> None:
    module = IMPORTS[lib]
    pytest.importorskip(module)
    _time_import(
        benchmark,
        lib,
        f"import {module}",
        "import time (fresh subprocess, interpreter start included)",
    )


@pytest.mark.usefixtures("installed_bytecode")
@pytest.mark.parametrize("lib", AGENT_IMPORTS)
def test_agent_import_time(benchmark: Any, lib: str) -> None:
    pytest.importorskip(IMPORTS.get(lib, "pydantic"))
    _time_import(
        benchmark,
        lib,
        AGENT_IMPORTS[lib],
        "import time of an agent class and the tool decorator "
        "(fresh subprocess, interpreter start included)",
    )


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


if __name__ == "__main__":  # `python test_loop.py MODE LIB`: peak RSS of 100 concurrent runs
    # First thing: the peak counts this child's imports and runs, not its parent's memory.
    has_proc = _reset_peak_rss()
    run_fn = _one_run(sys.argv[1], sys.argv[2])

    async def _all() -> None:
        await asyncio.gather(*(run_fn() for _ in range(CONCURRENT)))

    asyncio.run(_all())
    print(_own_peak_rss_mb(has_proc))
