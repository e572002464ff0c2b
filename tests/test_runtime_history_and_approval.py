from __future__ import annotations

import asyncio
from typing import Any

import pytest

import llm_agent_runtime as ar


@ar.tool
def echo(text: str) -> str:
    """Echoes the text."""
    return text


async def test_a_handler_cleared_while_a_round_waits_for_approval_is_no_crash() -> None:
    # The round's second call waited for the first one's answer (one question per tool at a
    # time); meanwhile the handler was cleared from outside the run. The second call then
    # failed the run with a bare AssertionError.
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[echo])
    asked: list[Any] = []
    answered = asyncio.Event()

    async def handler(session: ar.AgentSession, name: str, arguments: Any) -> Any:
        asked.append(arguments)
        await answered.wait()
        return ar.ApprovalDecision("edit", {"text": arguments["text"].upper()})

    rt.approval_handler = handler
    calls = [("echo", {"text": "a"}), ("echo", {"text": "b"})]
    provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
    run = asyncio.ensure_future(rt.run_agent_with_provider("a", "q", provider))
    while not asked:
        await asyncio.sleep(0)
    rt.approval_handler = None  # an operator turns approvals off while the run goes on
    answered.set()
    session = await run
    # The round asked the handler it started with about each of its calls.
    assert asked == [{"text": "a"}, {"text": "b"}]
    assert [(s.action_input, s.observation) for s in session.steps[:2]] == [
        ({"text": "A"}, "A"),
        ({"text": "B"}, "B"),
    ]
    assert session.final_answer == "done"


@pytest.mark.parametrize("tools", [[], [echo]])
@pytest.mark.parametrize("calls", [0, 1, 8])
async def test_a_react_prompt_with_its_kept_history_fits_the_context_window(
    tools: list[Any], calls: int
) -> None:
    # The blank lines between the prompt's parts, its headers ("Tools:", "Question: ") and
    # the `Action: ` lines of the history's tool calls were not counted: a history that
    # just fitted made the prompt longer than the window.
    window = 120
    config = ar.AgentConfig(context_window_tokens=window, system_prompt="S")
    kept = 0
    for size in range(window * 4):
        rt = ar.AgentRuntime(config, tools=tools)
        prompts: list[str] = []

        async def infer(prompt: str, prompts: list[str] = prompts) -> str:
            prompts.append(prompt)
            return "Action: FINAL_ANSWER ok"

        session = rt.create_session("a")
        asked = [{"id": f"c{i}", "name": "t", "arguments": {}} for i in range(calls)]
        session.messages = [
            {"role": "user", "content": "§" * size},
            {"role": "assistant", "content": "", "tool_calls": asked},
        ]
        await rt.run_turn(session, "q", infer)
        if "§" * size + "\n" in prompts[0]:  # the old turn was kept
            kept += 1
            assert len(prompts[0]) <= window * 4, (size, len(prompts[0]))
    assert kept  # some did fit


@pytest.mark.parametrize(
    ("messages", "reserved", "message"),
    [
        (None, None, "messages must be a list of chat messages, got None"),
        (7, None, "messages must be a list of chat messages, got int"),
        ([], "10", "reserved_chars must be an int"),
        ([], -400, "reserved_chars must be >= 0"),
        ([], True, "reserved_chars must be an int"),
    ],
)
def test_trim_history_refuses_what_is_no_history_or_no_size_typed(
    messages: Any, reserved: Any, message: str
) -> None:
    # They failed with a bare TypeError from inside, or (a negative size) widened the window.
    rt = ar.AgentRuntime(ar.AgentConfig(context_window_tokens=16))
    with pytest.raises(ar.AgentRuntimeError, match=message):
        rt.trim_history(messages, reserved)


def test_trim_history_takes_any_iterable_of_messages_and_a_size() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(context_window_tokens=16, system_prompt=""))
    turn = ({"role": "user", "content": "u"}, {"role": "assistant", "content": "a"})
    assert rt.trim_history(turn, 0) == list(turn)  # type: ignore[arg-type]
    assert rt.trim_history(list(turn), 64 - 34) == list(turn)  # 17 + 17 of 64: it just fits
    assert rt.trim_history(list(turn), 64 - 34 + 1) == []
