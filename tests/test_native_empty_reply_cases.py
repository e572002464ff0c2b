"""Native tools mode: a reply with neither a tool call nor text is no final answer.

ReAct mode refuses an empty reply (it is no ReAct step); native mode took it as an empty
final answer, a run that "succeeded" with nothing. It now fails with `AgentLoopError`, or with
`corrective_reprompt` asks the model once more, counting the wasted call in the next step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from providers.conftest import make_provider
from providers.fake_server import FakeLlmServer, Turn

import llm_agent_runtime as ar

EMPTY = "neither a tool call nor any text"


@pytest.fixture
def server() -> Iterator[FakeLlmServer]:
    with FakeLlmServer() as llm_server:
        yield llm_server


@ar.tool
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


class Recording(ar.ScriptedProvider):
    """A scripted provider that keeps the messages of each call."""

    def __init__(self, replies: list[Any]) -> None:
        super().__init__(replies)
        self.sent: list[list[ar.Message]] = []

    async def chat(self, messages: Any, **kwargs: Any) -> ar.ChatResponse:
        self.sent.append(list(messages))
        return await super().chat(messages, **kwargs)


def reply(text: str = "", calls: list[ar.ToolCall] | None = None, n: int = 1) -> ar.ChatResponse:
    """A reply with usage (`n`*10 in, `n` out) so the tokens of each call can be told apart."""
    return ar.ChatResponse(
        text=text,
        tool_calls=calls or [],
        usage=ar.Usage(input_tokens=10 * n, output_tokens=n),
        stop_reason="tool_calls" if calls else "stop",
    )


def runtime(**config: Any) -> ar.AgentRuntime:
    return ar.AgentRuntime(ar.AgentConfig(mode="tools", **config), tools=[add])


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
async def test_an_empty_or_blank_reply_fails_the_run(text: str) -> None:
    with pytest.raises(ar.AgentLoopError, match=EMPTY + r".*\(corrective_reprompt=True asks"):
        await runtime().run_agent_with_provider("a", "q", ar.ScriptedProvider([text]))


async def test_an_empty_reply_after_tool_rounds_fails_and_keeps_their_steps() -> None:
    session = ar.AgentSession("s", "a")
    provider = ar.ScriptedProvider([reply(calls=[ar.ToolCall("c1", "add", {"a": 1, "b": 2})]), ""])
    with pytest.raises(ar.AgentLoopError, match=EMPTY):
        await runtime().run_agent_with_provider("a", "q", provider, session=session)
    assert [(s.action, s.observation) for s in session.steps] == [("add", "3")]
    assert session.final_answer is None


async def test_a_reply_cut_to_nothing_by_a_stop_sequence_is_empty() -> None:
    provider = ar.ScriptedProvider(["STOP and then the rest"])
    with pytest.raises(ar.AgentLoopError, match=EMPTY):
        await runtime(stop_sequences=["STOP"]).run_agent_with_provider("a", "q", provider)


async def test_a_text_answer_is_still_the_final_answer() -> None:
    session = await runtime().run_agent_with_provider("a", "q", ar.ScriptedProvider([" 42 "]))
    assert session.final_answer == " 42 "


async def test_corrective_reprompt_asks_once_and_counts_the_wasted_call() -> None:
    metrics = ar.RuntimeMetrics()
    provider = Recording([reply("", n=1), reply("the answer", n=2)])
    rt = ar.AgentRuntime(
        ar.AgentConfig(mode="tools", corrective_reprompt=True), tools=[add], metrics=metrics
    )
    session = await rt.run_agent_with_provider("a", "q", provider)
    assert session.final_answer == "the answer"
    assert len(provider.sent) == 2
    first, second = provider.sent
    # The second call sees the first's messages, the empty reply and the nudge after them.
    assert second[: len(first)] == first
    assert [m.role for m in second[len(first) :]] == ["assistant", "user"]
    assert second[-1].content.startswith("Your reply was empty.")
    (step,) = session.steps
    assert (step.action, step.input_tokens, step.output_tokens) == ("FINAL_ANSWER", 30, 3)
    snapshot = metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (30, 3)


async def test_the_reprompt_cost_goes_to_a_tool_round_that_follows() -> None:
    call = ar.ToolCall("c1", "add", {"a": 2, "b": 2})
    provider = ar.ScriptedProvider([reply("", n=1), reply(calls=[call], n=2), reply("4", n=4)])
    session = await runtime(corrective_reprompt=True).run_agent_with_provider("a", "q", provider)
    assert session.final_answer == "4"
    assert [(s.action, s.input_tokens, s.output_tokens) for s in session.steps] == [
        ("add", 30, 3),
        ("FINAL_ANSWER", 40, 4),
    ]


async def test_a_second_empty_reply_in_a_row_fails() -> None:
    provider = ar.ScriptedProvider(["", "", "too late"])
    with pytest.raises(ar.AgentLoopError, match=EMPTY + r".*\(it replied so again when asked"):
        await runtime(corrective_reprompt=True).run_agent_with_provider("a", "q", provider)
    assert provider.calls == 2


async def test_each_empty_reply_after_a_tool_round_gets_its_own_reprompt() -> None:
    call = ar.ToolCall("c1", "add", {"a": 1, "b": 1})
    provider = ar.ScriptedProvider(["", reply(calls=[call]), "", "2"])
    session = await runtime(corrective_reprompt=True).run_agent_with_provider("a", "q", provider)
    assert session.final_answer == "2"
    assert provider.calls == 4


async def test_no_reprompt_without_an_iteration_left_to_answer_it() -> None:
    provider = ar.ScriptedProvider(["", "never asked"])
    rt = runtime(corrective_reprompt=True, max_iterations=1)
    # It said "corrective_reprompt=True asks the model once more", of a run that set it.
    with pytest.raises(ar.AgentLoopError, match=EMPTY + r".*\(no iteration was left to ask"):
        await rt.run_agent_with_provider("a", "q", provider)
    assert provider.calls == 1


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_an_empty_reply_over_http_fails_the_run(kind: str, server: FakeLlmServer) -> None:
    server.script(Turn(""))
    async with make_provider(kind, server) as llm:
        with pytest.raises(ar.AgentLoopError, match=EMPTY):
            await runtime().run_agent_with_provider("a", "q", llm)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_reprompt_over_http_is_accepted_by_the_wire_format(
    kind: str, server: FakeLlmServer
) -> None:
    server.script(Turn(""), Turn("fine"))
    async with make_provider(kind, server) as llm:
        session = await runtime(corrective_reprompt=True).run_agent_with_provider("a", "q", llm)
    assert session.final_answer == "fine"
    body = server.requests[1].json
    roles = [m["role"] for m in body["messages"]]
    if kind == "anthropic":  # the empty assistant turn is left out, the user turns merged
        assert roles == ["user"]
    else:
        assert roles == ["system", "user", "assistant", "user"]
    assert "Your reply was empty." in server.requests[1].body.decode()


async def test_a_session_turn_with_an_empty_reply_fails_and_the_session_goes_on() -> None:
    rt = runtime()
    session = rt.create_session("a")
    provider = Recording(["", "ok"])
    with pytest.raises(ar.AgentLoopError, match=EMPTY):
        await rt.run_turn(session, "first", provider)
    assert await rt.run_turn(session, "second", provider) == "ok"
    # The failed turn left nothing in the history: the next turn is asked afresh.
    assert [(m.role, m.content) for m in provider.sent[1][1:]] == [("user", "second")]
