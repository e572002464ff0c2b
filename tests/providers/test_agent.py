"""End-to-end agent runs through the fake server: ReAct text mode and native tool calls."""

from __future__ import annotations

import math
from typing import Any

import pytest

import llm_agent_runtime as ar

from .conftest import API_KEY, PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, Turn

pytestmark = pytest.mark.parametrize("kind", PROVIDERS)


@ar.tool
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


def tool_results(kind: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """(call id, content) of the tool results a request sends back, in either wire format."""
    if kind == "openai":
        return [(m["tool_call_id"], m["content"]) for m in body["messages"] if m["role"] == "tool"]
    return [
        (block["tool_use_id"], block["content"])
        for message in body["messages"]
        if message["role"] == "user"
        for block in message["content"]
        if block["type"] == "tool_result"
    ]


async def test_react_text_mode(kind: str, server: FakeLlmServer) -> None:
    server.script(
        Turn('Thought: I should add.\nAction: add {"a": 2, "b": 3}'),
        Turn("Thought: I know it.\nAction: FINAL_ANSWER 5"),
    )
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(ar.AgentConfig(), tools=[add], checkpoint_backend=backend)
    async with make_provider(kind, server) as llm:
        session = await runtime.run_agent_with_provider("agent-1", "What is 2 + 3?", llm)
    assert session.final_answer == "5"
    assert [(s.action, s.observation) for s in session.steps] == [
        ("add", "5"),
        ("FINAL_ANSWER", ""),
    ]
    assert len(server.requests) == 2
    second_prompt = server.requests[1].body.decode()
    assert "What is 2 + 3?" in second_prompt
    assert "Observation: 5" in second_prompt
    assert all(not r.streamed for r in server.requests)
    assert backend.data
    assert all(API_KEY.encode() not in saved for saved in backend.data.values())


@ar.tool
def list_files() -> str:
    """Lists the files here."""
    # What os.listdir makes of a Latin-1 name: each byte that is not UTF-8 a lone surrogate.
    return "notes.txt\nr\udce9sum\udce9.txt"


async def test_lone_surrogates_reach_the_api_as_replacement_characters(
    kind: str, server: FakeLlmServer
) -> None:
    # Their `\\u` escapes went out as they were: the APIs refuse such a body as not valid
    # JSON ("no low surrogate in string"), and the session, checkpointed with the text,
    # failed alike at every resume.
    server.script(
        Turn("", tool_calls=[("c1", "list_files", {})]), Turn("There is a r\ufffdsum\ufffd.")
    )
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[list_files], checkpoint_backend=backend
    )
    async with make_provider(kind, server) as llm:
        session = await runtime.run_agent_with_provider("a", "Files in d\udcfcr/?", llm)
    assert session.final_answer == "There is a r\ufffdsum\ufffd."
    assert session.steps[0].observation == "notes.txt\nr\udce9sum\udce9.txt"  # as the tool said
    sent = server.requests[1].json
    assert tool_results(kind, sent) == [("c1", "notes.txt\nr\ufffdsum\ufffd.txt")]
    assert "Files in d\ufffdr/?" in server.requests[1].body.decode()


@pytest.mark.parametrize("streaming", [False, True])
async def test_native_tool_calls(kind: str, streaming: bool, server: FakeLlmServer) -> None:
    server.script(
        Turn(
            "Let me add.",
            tool_calls=[("call_1", "add", {"a": 2, "b": 3}), ("call_2", "add", {"a": 4, "b": 5})],
            input_tokens=50,
            output_tokens=20,
        ),
        Turn("2 + 3 = 5 and 4 + 5 = 9.", input_tokens=80, output_tokens=12),
    )
    metrics = ar.RuntimeMetrics()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools", model="model-x"), tools=[add], metrics=metrics
    )
    deltas: list[str] = []
    if streaming:  # with a listener the runtime streams and forwards the text deltas
        runtime.events.on(
            lambda event: deltas.append(event.text) if isinstance(event, ar.LlmTextDelta) else None
        )
    async with make_provider(kind, server) as llm:
        session = await runtime.run_agent_with_provider("agent-1", "2+3 and 4+5?", llm)
    assert session.final_answer == "2 + 3 = 5 and 4 + 5 = 9."
    assert [(s.action, s.action_input, s.observation) for s in session.steps] == [
        ("add", {"a": 2, "b": 3}, "5"),
        ("add", {"a": 4, "b": 5}, "9"),
        ("FINAL_ANSWER", "2 + 3 = 5 and 4 + 5 = 9.", ""),
    ]
    snapshot = metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (130, 32)
    first, second = (r.json for r in server.requests)
    assert all(r.streamed is streaming for r in server.requests)
    assert first["model"] == second["model"] == "model-x"
    tool_names = [t["function"]["name"] if kind == "openai" else t["name"] for t in first["tools"]]
    assert tool_names == ["add"]
    assert tool_results(kind, second) == [("call_1", "5"), ("call_2", "9")]
    if streaming:
        assert "".join(deltas) == "Let me add." + "2 + 3 = 5 and 4 + 5 = 9."


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_tool_call_the_model_wrote_wrong_is_answered_for_it_to_mend(
    kind: str, streaming: bool, server: FakeLlmServer
) -> None:
    # Not JSON (a brace missing), as open models write it; Anthropic's non-streamed input is
    # an object, so there it holds a NaN, which no JSON has.
    broken: dict[str, Any] | str = (
        {"a": math.nan, "b": 1} if kind == "anthropic" and not streaming else '{"a": 2, "b": 3'
    )
    server.script(
        Turn(tool_calls=[("call_1", "add", broken), ("call_2", "add", {"a": 4, "b": 5})]),
        Turn("Sorry: 4 + 5 = 9."),
    )
    metrics = ar.RuntimeMetrics()
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add], metrics=metrics)
    events: list[Any] = []
    runtime.events.on(events.append)  # a listener: the runtime streams
    async with make_provider(kind, server) as llm:
        if not streaming:
            llm.streams_text = False
        session = await runtime.run_agent_with_provider("agent-1", "2+3 and 4+5?", llm)
    assert all(r.streamed is streaming for r in server.requests)
    assert session.final_answer == "Sorry: 4 + 5 = 9."
    wrong, right = session.steps[:2]
    assert (wrong.action, wrong.action_input, wrong.error_kind) == ("add", {}, "permanent")
    assert wrong.observation.startswith("error: tool call 'add' arguments are not valid JSON")
    assert (right.action, right.action_input, right.observation) == ("add", {"a": 4, "b": 5}, "9")
    second = server.requests[1].json
    # Every call is answered, and the one written wrong is repeated with no arguments.
    assert tool_results(kind, second) == [("call_1", wrong.observation), ("call_2", "9")]
    if kind == "openai":
        echoed = [
            c["function"]["arguments"] for m in second["messages"] for c in m.get("tool_calls", [])
        ]
        assert echoed == ["{}", '{"a": 4, "b": 5}']
    else:
        echoed = [
            b["input"] for m in second["messages"] if m["role"] == "assistant" for b in m["content"]
        ]
        assert echoed == [{}, {"a": 4, "b": 5}]
    finished = [(e.tool, e.error_kind) for e in events if isinstance(e, ar.ToolCallFinished)]
    assert finished == [("add", "permanent"), ("add", None)]
    snapshot = metrics.snapshot()
    assert (snapshot.total_tool_calls, snapshot.failed_tool_calls) == (2, 1)


async def test_provider_failure_surfaces_from_the_loop(kind: str, server: FakeLlmServer) -> None:
    server.script(Reply(401, body=b'{"error": {"message": "invalid key"}}'))
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add])
    async with make_provider(kind, server) as llm:
        with pytest.raises(ar.ProviderError) as caught:
            await runtime.run_agent_with_provider("agent-1", "hi", llm)
    assert (caught.value.status, caught.value.retryable) == (401, False)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("mode", "streaming"), [("react", False), ("tools", False), ("tools", True)]
)
async def test_stop_sequences_are_sent_and_replies_cut_there(
    kind: str, mode: str, streaming: bool, server: FakeLlmServer
) -> None:
    # The server ignores `stop` and invents an observation: the runtime cuts it off itself.
    if mode == "react":
        first = Turn('Thought: add.\nAction: add {"a": 2, "b": 3}\nObservation: 99')
        last = Turn("Thought: I know it.\nAction: FINAL_ANSWER 5\nObservation: none")
    else:
        first = Turn("Adding.\nObservation: 99", tool_calls=[("call_1", "add", {"a": 2, "b": 3})])
        last = Turn("5\nObservation: none")
    server.script(first, last)
    config = ar.AgentConfig(mode=mode, stop_sequences=["\nObservation:"])  # type: ignore[arg-type]
    runtime = ar.AgentRuntime(config, tools=[add])
    if streaming:  # a listener makes the runtime stream
        runtime.events.on(lambda event: None)
    async with make_provider(kind, server) as llm:
        session = await runtime.run_agent_with_provider("agent-1", "2+3?", llm)
    assert session.final_answer == "5"
    assert session.steps[0].observation == "5"
    assert all(r.streamed is streaming for r in server.requests)
    sent = [r.json["stop" if kind == "openai" else "stop_sequences"] for r in server.requests]
    assert sent == [["\nObservation:"]] * 2
    second = server.requests[1].body.decode()
    assert "99" not in second  # the invented observation never reaches the model again
    if mode == "react":
        assert "Observation: 5" in second
    else:
        assert session.steps[0].thought == "Adding."
        assert tool_results(kind, server.requests[1].json) == [("call_1", "5")]


@pytest.mark.parametrize("mode", ["react", "tools"])
@pytest.mark.parametrize("streaming", [False, True])
async def test_a_runtime_budget_counts_the_money_its_provider_prices(
    kind: str, mode: str, streaming: bool, server: FakeLlmServer
) -> None:
    """The provider prices each call (`Usage.cost_usd`); the runtime charges that cost to its
    own budget, so a dollar limit stops runs (it used to be charged tokens only: $0)."""
    per_call = (11 * 1000.0 + 7 * 2000.0) / 1e6  # the fake server's usage: 11 in, 7 out
    final = "Thought: done\nAction: FINAL_ANSWER 5"  # a final answer in either mode
    server.script(Turn(final), Turn(final), Turn(final))
    budget = ar.CostBudget(max_cost_usd=per_call * 1.5)
    runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode), budget=budget)
    if streaming:
        runtime.events.on(lambda event: None)  # a listener makes the calls stream, in both modes
    prices = {"input_cost_per_million": 1000.0, "output_cost_per_million": 2000.0}
    async with make_provider(kind, server, **prices) as llm:
        await runtime.run_agent_with_provider("a", "q", llm)
        assert budget.used_cost_usd == pytest.approx(per_call)
        await runtime.run_agent_with_provider("a", "q", llm)  # admitted: $0.025 of $0.0375
        assert budget.used_cost_usd == pytest.approx(2 * per_call)
        with pytest.raises(ar.BudgetExceededError, match="cost budget spent"):
            await runtime.run_agent_with_provider("a", "q", llm)
    assert len(server.requests) == 2
    assert all(r.streamed == streaming for r in server.requests)
