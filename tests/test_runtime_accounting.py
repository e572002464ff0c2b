"""What a run reports and checks about itself: hook rewrites taken at their word, context
trimming that counts the whole request, timings and tokens that add up, denials that the
event stream sees, and components given in a form that cannot work refused at once."""

from __future__ import annotations

import asyncio
import copy
import math
import pickle
import time
from typing import Any

import pytest
from test_runtime import ADD, FINAL, add, react

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import ChatResponse, Message, Usage


# ------------------------------------------------------------------ hooks
class Redact(ar.Middleware):
    """Redacts to nothing: an empty string is a rewrite, not "keep the value"."""

    def on_user_message(self, session: ar.AgentSession, text: str) -> str:
        return ""

    def on_post_llm(self, session: ar.AgentSession, text: str) -> str:
        return "" if "secret" in text else text


async def test_a_hook_that_rewrites_to_an_empty_string_is_obeyed() -> None:
    infer = react("Thought: ok\nAction: FINAL_ANSWER fine")
    s = await ar.AgentRuntime(middlewares=[Redact()]).run_agent("a", "sk-live-123", infer)
    assert s.prompt == "" and "sk-live-123" not in infer.prompts[0]

    # The model's reply redacted to nothing is no final answer carrying the secret.
    with pytest.raises(ar.AgentLoopError, match="not a ReAct step"):
        await ar.AgentRuntime(middlewares=[Redact()]).run_agent(
            "a", "q", react("Thought: x\nAction: FINAL_ANSWER the secret is 42")
        )
    provider = ar.ScriptedProvider(["the secret is 42"])
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), middlewares=[Redact()])
    assert (await rt.run_agent_with_provider("a", "q", provider)).final_answer == ""


class Fallback(ar.Middleware):
    """Answers for a model that said nothing."""

    def on_post_llm(self, session: ar.AgentSession, text: str) -> str | None:
        return "Sorry, no answer." if not text.strip() else None


async def test_a_hook_that_rewrites_an_empty_native_reply_to_words_is_obeyed() -> None:
    # Tools mode judged emptiness by the model's text: the run failed with "neither a tool
    # call nor any text" (its LlmResponse carrying the hook's words), or, re-prompting, sent
    # the hook's words back as the model's reply and then said that reply was empty.
    for reprompt in (False, True):
        config = ar.AgentConfig(mode="tools", corrective_reprompt=reprompt)
        provider = ar.ScriptedProvider(["", "unused"])
        rt = ar.AgentRuntime(config, middlewares=[Fallback()])
        session = await rt.run_agent_with_provider("a", "q", provider)
        assert session.final_answer == "Sorry, no answer." and session.step_count == 1
        assert provider.calls == 1


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ({"a": 5, "b": 6}, "got dict"),  # read as tool 'a' with arguments 'b' before
        (("add", {"a": 1}, "extra"), "got \\('add'"),  # a raw unpacking ValueError before
        ((1, {"a": 1}), "got \\(1,"),
        ("add", "got str"),
    ],
)
async def test_an_on_tool_call_return_that_is_no_name_and_arguments_pair_is_refused(
    returned: Any, message: str
) -> None:
    class Rewrite(ar.Middleware):
        def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
            return returned

    rt = ar.AgentRuntime(tools=[add], middlewares=[Rewrite()])
    with pytest.raises(ar.AgentRuntimeError, match=f"on_tool_call must return .*{message}"):
        await rt.run_agent("a", "q", react(ADD, FINAL))


async def test_an_on_tool_call_pair_given_as_a_list_still_rewrites() -> None:
    class Rewrite(ar.Middleware):
        def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
            return ["add", {"a": 40, "b": 2}]

    rt = ar.AgentRuntime(tools=[add], middlewares=[Rewrite()])
    s = await rt.run_agent("a", "q", react(ADD, FINAL))
    assert s.steps[0].observation == "42"


class InstanceRedactor(ar.Middleware):
    """Chooses its hook per instance, in `__init__`: it used to be skipped silently."""

    def __init__(self, secret: str) -> None:
        self.on_post_llm = lambda session, text: text.replace(secret, "[REDACTED]")


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_hook_set_on_a_middleware_instance_runs(mode: str) -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode), middlewares=[InstanceRedactor("hunter2")])  # type: ignore[arg-type]
    reply = "the password is hunter2"
    if mode == "react":
        reply = "Thought: x\nAction: FINAL_ANSWER " + reply
    s = await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([reply]))
    assert s.final_answer == "the password is [REDACTED]"


def test_a_hook_set_on_a_middleware_instance_must_be_callable() -> None:
    class Broken(ar.Middleware):
        def __init__(self) -> None:
            self.on_pre_llm = "not a function"

    with pytest.raises(ar.AgentRuntimeError, match="Broken's on_pre_llm must be callable, got str"):
        ar.AgentRuntime(middlewares=[Broken()])


class Guardrail(ar.Middleware):
    """An output guardrail that rejects the model's reply by raising."""

    def on_post_llm(self, session: ar.AgentSession, text: str) -> str:
        raise ar.AgentRuntimeError("guardrail: reply rejected")


class SlowReview(ar.Middleware):
    """A review of the reply that outlasts the run's deadline."""

    async def on_post_llm(self, session: ar.AgentSession, text: str) -> str:
        await asyncio.sleep(10)
        return text


@pytest.mark.parametrize("mode", ["react", "tools"])
@pytest.mark.parametrize("hook", [Guardrail, SlowReview])
async def test_a_model_call_is_paid_for_when_its_post_llm_hook_fails_or_times_out(
    mode: str, hook: type[ar.Middleware]
) -> None:
    # The call was charged after the hooks: a hook that raised, or a timeout while one ran,
    # left a paid model call out of the budget and the token metrics.
    budget = ar.CostBudget(max_tokens=10_000)
    config = ar.AgentConfig(mode=mode, loop_timeout_ms=100)  # type: ignore[arg-type]
    rt = ar.AgentRuntime(config, middlewares=[hook()], budget=budget)
    reply = ChatResponse(text="Thought: x\nAction: FINAL_ANSWER 4", usage=Usage(120, 30))
    with pytest.raises(ar.AgentRuntimeError, match=r"guardrail|timed out"):
        await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([reply]))
    snapshot = rt.metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (120, 30)
    assert budget.used_tokens == 150


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_the_response_event_carries_the_rewritten_reply_charged_once(mode: str) -> None:
    class Shout(ar.Middleware):
        def on_post_llm(self, session: ar.AgentSession, text: str) -> str:
            return text.upper()

    budget = ar.CostBudget(max_tokens=10_000)
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode), middlewares=[Shout()], budget=budget)  # type: ignore[arg-type]
    seen: list[ar.Event] = []
    rt.events.on(seen.append)
    reply = ChatResponse(text="Thought: x\nAction: FINAL_ANSWER four", usage=Usage(12, 3))
    await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([reply]))
    responses = [e.text for e in seen if isinstance(e, ar.LlmResponse)]
    assert responses == ["THOUGHT: X\nACTION: FINAL_ANSWER FOUR"]
    assert budget.used_tokens == 15 and rt.metrics.snapshot().input_tokens == 12


# ------------------------------------------------------------------ context trimming
class Recorder(ar.ScriptedProvider):
    """Scripted replies; records the characters of every request it is sent."""

    def __init__(self, replies: list[Any]) -> None:
        super().__init__(replies)
        self.sent: list[list[Message]] = []

    async def chat(self, messages: list[Message], *args: Any, **kwargs: Any) -> ChatResponse:
        self.sent.append(list(messages))
        return await super().chat(messages, *args, **kwargs)


async def test_trimming_counts_the_new_message_and_the_recalled_memories() -> None:
    memory = ar.EpisodicStore()
    memory.add_episode("a", "M" * 200, 0.9)
    config = ar.AgentConfig(mode="tools", context_window_tokens=100, system_prompt="S")
    rt = ar.AgentRuntime(config, memory=memory)
    session = rt.create_session("a")
    turn = [{"role": "user", "content": "u" * 40}, {"role": "assistant", "content": "a" * 40}]
    session.messages = turn * 3
    assert len(rt.trim_history(session.messages)) == 6  # the system prompt alone: all fit
    provider = Recorder(["ok"])
    await rt.run_turn(session, "Q" * 150, provider)
    sent = provider.sent[0]
    # Every old turn that fit beside the memories and the question was kept, no more.
    assert sum(len(m.content) for m in sent) <= 100 * 4
    history = sent[1:-1]
    assert len(history) % 2 == 0 and history == [Message(**m) for m in turn][: len(history)]
    assert sent[-1].content == "Q" * 150 and "M" * 200 in sent[0].content


async def test_trimming_in_text_mode_counts_the_tool_catalog_too() -> None:
    config = ar.AgentConfig(context_window_tokens=200, system_prompt="S")
    rt = ar.AgentRuntime(config, tools=[add])
    session = rt.create_session("a")
    session.messages = [
        {"role": "user", "content": "u" * 60},
        {"role": "assistant", "content": "a"},
    ]
    infer = react(FINAL)
    await rt.run_turn(session, "q" * 330, infer)
    assert rt.trim_history(session.messages[:2]) == session.messages[:2]  # alone, it fits
    # Beside the catalog, the answer format and the question it does not: it was dropped.
    assert "u" * 60 not in infer.prompts[0] and len(infer.prompts[0]) <= 200 * 4


def test_trimming_counts_characters_not_json_escapes() -> None:
    # Non-ASCII arguments and schemas were measured as `\\uXXXX` escapes (6 characters each):
    # a Japanese turn was dropped where an English one of the same length was kept.
    from llm_agent_runtime.providers.base import (
        ToolCall,
        ToolDefinition,
        estimated_output_tokens,
        tool_definitions_chars,
    )

    rt = ar.AgentRuntime(ar.AgentConfig(context_window_tokens=25, system_prompt="S"))

    def turn(city: str) -> list[dict[str, Any]]:
        call = {"id": "c1", "name": "find", "arguments": {"q": city}}
        return [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "ok", "tool_call_id": "c1", "name": "find"},
        ]

    ascii_city, cjk_city = "Shinjuku-nishi2", "東京都新宿区西新宿二丁目七番地"
    assert len(ascii_city) == len(cjk_city)
    assert len(rt.trim_history(turn(ascii_city))) == 3
    assert len(rt.trim_history(turn(cjk_city))) == 3
    estimates, sizes = set(), set()
    for city in (ascii_city, cjk_city):
        estimates.add(estimated_output_tokens("", [ToolCall("c", "f", {"q": city})]))
        schema = {"type": "object", "description": city}
        sizes.add(tool_definitions_chars([ToolDefinition(name="f", parameters=schema)]))
    assert len(estimates) == 1 and len(sizes) == 1


def test_trimming_reads_the_history_once() -> None:
    # Read twice, a history another thread's turn added to in between failed with a bare
    # ValueError (zip's); read once, the trim is of what was there when it began.
    class Growing(list[dict[str, Any]]):
        def __iter__(self) -> Any:
            items = list(super().__iter__())
            self.append({"role": "user", "content": "later"})  # the other thread's turn
            return iter(items)

    history = Growing([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}])
    rt = ar.AgentRuntime(ar.AgentConfig())
    assert rt.trim_history(history) == [
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]


def test_trimming_keeps_the_historys_system_messages_in_their_places() -> None:
    # A leading system message was a "turn" of its own, the oldest: the first thing dropped.
    rt = ar.AgentRuntime(ar.AgentConfig(context_window_tokens=50, system_prompt="S"))
    persona = {"role": "system", "content": "Always answer in French."}
    rule = {"role": "system", "content": "Be brief."}
    turns = [
        [
            {"role": "user", "content": f"question {i} " + "z" * 40},
            {"role": "assistant", "content": f"a{i}"},
        ]
        for i in range(3)
    ]
    history = [persona, *turns[0], *turns[1], rule, *turns[2]]
    kept = rt.trim_history(history)
    assert kept == [persona, rule, *turns[2]]  # in the order given, the oldest turns dropped
    # Their size comes first: system messages that fill the window leave no turn.
    big = {"role": "system", "content": "x" * 240}
    assert rt.trim_history([big, *turns[2]]) == [big]
    assert rt.trim_history([*turns[2], persona]) == [*turns[2], persona]


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_system_message_of_the_history_is_sent_with_every_turn(mode: str) -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode, context_window_tokens=60))  # type: ignore[arg-type]
    session = rt.create_session("a")
    session.messages = [{"role": "system", "content": "Always answer in French."}]
    for i in range(3):
        provider = Recorder(["Thought: t\nAction: FINAL_ANSWER oui" if mode == "react" else "oui"])
        await rt.run_turn(session, f"question {i} " + "z" * 40, provider)
        sent = "\n".join(m.content for m in provider.sent[0])
        assert "Always answer in French." in sent
        assert f"question {i - 2} " not in sent  # older turns are still trimmed
    assert session.messages[0]["role"] == "system" and len(session.messages) == 7


# ------------------------------------------------------------------ accounting
async def test_a_parallel_rounds_overhead_holds_the_approval_time() -> None:
    @ar.tool
    async def slow(a: int) -> int:
        """Sleeps a while."""
        await asyncio.sleep(0.2)
        return a

    async def approve(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        await asyncio.sleep(0.1)
        return ar.ApprovalDecision("approve")

    calls = [("slow", {"a": 1}), ("slow", {"a": 2})]
    provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[slow], approval_handler=approve)
    started = time.perf_counter()
    s = await rt.run_agent_with_provider("a", "q", provider)
    wall_ms = (time.perf_counter() - started) * 1000.0
    round_steps = s.steps[:2]
    # Two approvals one after the other (0.2 s), then both tools at once (0.2 s): the
    # approvals are the runtime's time, not hidden behind the overlapping tool times.
    assert sum(st.overhead_ms for st in round_steps) >= 180
    assert all(st.tool_ms >= 195 for st in round_steps)
    busy = sum(st.overhead_ms + st.model_ms for st in round_steps) + 200
    assert busy <= wall_ms + 5


async def test_a_reprompted_reply_is_counted_in_the_step_that_answers_it() -> None:
    replies = iter(["not a react step at all", FINAL])

    async def slow_model(prompt: str) -> str:
        await asyncio.sleep(0.05)
        return next(replies)

    rt = ar.AgentRuntime(ar.AgentConfig(corrective_reprompt=True))
    s = await rt.run_agent("a", "q", slow_model)
    usage = rt.metrics.snapshot()
    assert len(s.steps) == 1 and s.final_answer == "5"
    tokens = (sum(st.input_tokens for st in s.steps), sum(st.output_tokens for st in s.steps))
    assert tokens == (usage.input_tokens, usage.output_tokens)
    assert s.model_ms() >= 95  # both model calls
    parts = s.model_ms() + s.tool_ms() + s.overhead_ms()
    assert parts == pytest.approx(s.duration_ms, abs=2.0)


class SlowWrites(ar.InMemoryBackend):
    """Checkpoints whose writes take 30 ms each, as a slow disk's would."""

    async def batch_save(self, items: Any) -> None:
        await asyncio.sleep(0.03)
        await super().batch_save(items)

    async def batch_save_if(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.03)
        return await super().batch_save_if(*args, **kwargs)

    async def batch_delete_if(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.03)
        return await super().batch_delete_if(*args, **kwargs)


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_steps_checkpoint_write_is_in_the_next_steps_overhead(mode: str) -> None:
    # Step times ended before the step's checkpoint write, and the next began after it:
    # the runtime's own writes were in no step, so `overhead_ms()` hid most of its cost.
    config = ar.AgentConfig(mode=mode)  # type: ignore[arg-type]
    rt = ar.AgentRuntime(config, tools=[add], checkpoint_backend=SlowWrites())
    if mode == "react":
        s = await rt.run_agent("a", "q", react(ADD, ADD, FINAL))
    else:
        call = ar.ScriptedProvider.tool_call_reply([("add", {"a": 2, "b": 3})])
        s = await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([call, call, "5"]))
    assert [st.action for st in s.steps] == ["add", "add", "FINAL_ANSWER"]
    # Each step after the first holds the write of the one before (at least one 30 ms save).
    assert all(st.overhead_ms >= 28 for st in s.steps[1:])
    assert s.steps[0].overhead_ms < 28
    parts = s.model_ms() + s.tool_ms() + s.overhead_ms()
    assert 56 <= parts <= s.duration_ms


async def test_a_reprompted_provider_reply_charges_its_real_usage_once() -> None:
    replies = [
        ChatResponse(text="gibberish", usage=Usage(100, 7)),
        ChatResponse(text=FINAL, usage=Usage(130, 9)),
    ]
    rt = ar.AgentRuntime(ar.AgentConfig(corrective_reprompt=True))
    s = await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider(replies))
    assert (s.steps[0].input_tokens, s.steps[0].output_tokens) == (230, 16)
    snapshot = rt.metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (230, 16)


# ------------------------------------------------------------------ events of a denial
@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_denied_call_starts_and_fails_in_the_event_stream(mode: str) -> None:
    def deny(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("deny", reason="not now")

    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode), tools=[add], approval_handler=deny)  # type: ignore[arg-type]
    seen: list[Any] = []
    rt.events.on(seen.append)
    if mode == "react":
        s = await rt.run_agent("a", "q", react(ADD, FINAL))
    else:
        calls = [("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2})]
        provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
        s = await rt.run_agent_with_provider("a", "q", provider)
    denied = [st for st in s.steps if st.error_kind == "permanent"]
    started = [e for e in seen if isinstance(e, ar.ToolCallStarted)]
    finished = [e for e in seen if isinstance(e, ar.ToolCallFinished)]
    assert len(started) == len(finished) == len(denied) >= 1
    assert [e.step for e in started] == [e.step for e in finished] == list(range(len(denied)))
    assert all(e.error_kind == "permanent" and "denied: not now" in e.observation for e in finished)
    assert rt.metrics.snapshot().total_tool_calls == len(started)


# ------------------------------------------------------------------ construction
@pytest.mark.parametrize(
    "component",
    [
        {"memory": ar.EpisodicStore},
        {"working_memory": ar.WorkingMemory},
        {"graph": ar.GraphStore},
        {"backpressure": ar.BackpressureGuard},
        {"checkpoint_backend": ar.InMemoryBackend},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_component_given_as_its_class_is_refused_at_construction(
    component: dict[str, Any],
) -> None:
    name, cls = next(iter(component.items()))
    with pytest.raises(ar.AgentRuntimeError, match=f"{name} must be an instance.*{cls.__name__}"):
        ar.AgentRuntime(**component)


def test_one_tool_or_one_middleware_instead_of_a_list_is_refused_at_construction() -> None:
    with pytest.raises(ar.AgentRuntimeError, match=r"tools must be a list of ToolSpec.*'add'"):
        ar.AgentRuntime(tools=add)  # type: ignore[arg-type]
    with pytest.raises(ar.AgentRuntimeError, match="middlewares must be a list of Middleware"):
        ar.AgentRuntime(middlewares=ar.Middleware())  # type: ignore[arg-type]


@pytest.mark.parametrize("durable", [False, True])
async def test_a_parallel_rounds_questions_about_different_tools_are_asked_at_once(
    durable: bool,
) -> None:
    @ar.tool
    def double(a: int) -> int:
        """Doubles."""
        return 2 * a

    asking = peak = 0

    async def approve(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        nonlocal asking, peak
        asking += 1
        peak = max(peak, asking)
        await asyncio.sleep(0.05)
        asking -= 1
        return ar.ApprovalDecision("approve")

    calls = [("add", {"a": 1, "b": 2}), ("double", {"a": 4}), ("add", {"a": 3, "b": 4})]
    provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
    rt = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=[add, double],
        approval_handler=approve,
        checkpoint_backend=ar.InMemoryBackend() if durable else None,
    )
    s = await rt.run_agent_with_provider("a", "q", provider)
    assert [st.observation for st in s.steps[:3]] == ["3", "8", "7"]
    # `add` and `double` are asked about together; the second `add` waits for the first
    # answer (it may be remembered for it).
    assert peak == 2


@pytest.mark.parametrize("durable", [False, True])
async def test_a_round_with_a_refused_call_charges_no_action_and_asks_nothing(
    durable: bool,
) -> None:
    @ar.tool
    def other(a: int) -> int:
        """Not allowed."""
        return a

    asked: list[str] = []

    async def approve(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        asked.append(tool)
        return ar.ApprovalDecision("approve")

    capabilities = ar.CapabilitySet(allowed_tools=["add"], max_actions=10)
    calls = [("add", {"a": 1, "b": 2}), ("other", {"a": 1}), ("add", {"a": 3, "b": 4})]
    provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
    rt = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=[add, other],
        capabilities=capabilities,
        approval_handler=approve,
        checkpoint_backend=ar.InMemoryBackend() if durable else None,
    )
    with pytest.raises(ar.PolicyDeniedError, match="other"):
        await rt.run_agent_with_provider("a", "q", provider)
    assert capabilities.actions_taken == 0 and asked == []


def test_a_component_class_of_classmethods_and_staticmethods_is_accepted() -> None:
    class Caps:
        @staticmethod
        def check_tool(name: str) -> None:
            return None

        @classmethod
        def record_action(cls) -> None:
            return None

    ar.AgentRuntime(capabilities=Caps)  # type: ignore[arg-type]


async def test_a_native_model_reporting_no_usage_is_charged_an_estimate() -> None:
    # It was charged nothing, so a token budget never stopped a usage-less local server.
    class NoUsage(ar.ScriptedProvider):
        async def chat(self, messages: list[Message], *args: Any, **kwargs: Any) -> ChatResponse:
            reply = await super().chat(messages, *args, **kwargs)
            return ChatResponse(text=reply.text, tool_calls=reply.tool_calls)

    calls = [("add", {"a": 1, "b": 2})]
    script = [ar.ScriptedProvider.tool_call_reply(calls)] * 20
    budget = ar.CostBudget(max_tokens=2_000)
    config = ar.AgentConfig(mode="tools", max_iterations=20, system_prompt="S" * 2_000)
    rt = ar.AgentRuntime(config, tools=[add], budget=budget)
    with pytest.raises(ar.BudgetExceededError):
        await rt.run_agent_with_provider("a", "q", NoUsage(script))
    snapshot = rt.metrics.snapshot()
    assert snapshot.input_tokens >= 500 and budget.used_tokens >= 2_000
    assert snapshot.total_steps < 20  # stopped by the budget, not by max_iterations


@pytest.mark.parametrize("cut", [False, True])
async def test_a_native_estimate_counts_every_message_sent_at_each_call(cut: bool) -> None:
    # Counted once per message as the run's list grows (counting all of it at each call
    # made a long run quadratic); a list a provider cut is counted afresh.
    from llm_agent_runtime.providers.base import estimated_input_tokens, tool_definitions_chars

    expected: list[int] = []

    class NoUsage(ar.ScriptedProvider):
        async def chat(self, messages: list[Message], *args: Any, **kwargs: Any) -> ChatResponse:
            reply = await super().chat(messages, *args, **kwargs)
            if cut and len(messages) > 6:
                del messages[1:5]
            chars = tool_definitions_chars(kwargs.get("tools") or ())
            expected.append(estimated_input_tokens(messages, chars))
            return ChatResponse(text=reply.text, tool_calls=reply.tool_calls)

    calls = [("add", {"a": 1, "b": 2})]
    script = [ar.ScriptedProvider.tool_call_reply(calls)] * 8 + ["done"]
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools", max_iterations=10), tools=[add])
    session = await rt.run_agent_with_provider("a", "q" * 40, NoUsage(script))
    assert [step.input_tokens for step in session.steps] == expected
    assert expected == sorted(expected) or cut  # the list grew at each call


async def test_a_durable_reprompt_then_a_usage_less_reply_is_estimated() -> None:
    class NoUsage(ar.ScriptedProvider):
        async def chat(self, messages: list[Message], *args: Any, **kwargs: Any) -> ChatResponse:
            reply = await super().chat(messages, *args, **kwargs)
            return ChatResponse(text=reply.text, tool_calls=reply.tool_calls)

    script = ["", ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})]), "done"]
    config = ar.AgentConfig(mode="tools", corrective_reprompt=True)
    rt = ar.AgentRuntime(config, tools=[add], checkpoint_backend=ar.InMemoryBackend())
    session = await rt.run_agent_with_provider("a", "q", NoUsage(script))
    assert session.final_answer == "done" and all(s.input_tokens > 0 for s in session.steps)


def test_a_scripted_tool_call_reply_reports_its_output_usage() -> None:
    reply = ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})])
    assert reply.usage.output_tokens >= 1


async def test_a_scripted_response_counts_the_whole_request_as_its_input() -> None:
    # Only the last message used to count (a tool result, "3"): a token budget never saw
    # the system prompt, the history or the tool definitions, and scripted runs ran free.
    calls = [("add", {"a": 1, "b": 2})]
    budget = ar.CostBudget(max_tokens=1_000)
    config = ar.AgentConfig(mode="tools", system_prompt="S" * 20_000)
    rt = ar.AgentRuntime(config, tools=[add], budget=budget)
    script = [ar.ScriptedProvider.tool_call_reply(calls)] * 3 + ["done"]
    with pytest.raises(ar.BudgetExceededError):
        await rt.run_agent_with_provider("a", "q" * 4_000, ar.ScriptedProvider(script))
    assert rt.metrics.snapshot().input_tokens >= 24_000 // 4
    assert budget.used_tokens > 1_000

    sent: list[Message] = [Message("system", "s" * 400), Message("user", "u" * 40)]
    definition = ar.providers.base.ToolDefinition(name="add", description="Adds.")
    tools_chars = ar.providers.base.tool_definitions_chars([definition])
    for reply in ("text", ChatResponse(text="done"), ar.ScriptedProvider.tool_call_reply(calls)):
        response = await ar.ScriptedProvider([reply]).chat(sent, tools=[definition])
        assert response.usage.input_tokens == (440 + tools_chars) // 4
        assert response.usage.output_tokens >= 1
    # A scripted usage that counts both is kept as it is, the very response.
    given = ChatResponse(text="done", usage=Usage(input_tokens=7, output_tokens=1))
    assert await ar.ScriptedProvider([given]).chat(sent) is given
    assert (await ar.ScriptedProvider(["x"]).complete("p" * 40)).startswith("x")


async def test_a_scripted_provider_counts_answered_calls_and_refuses_one_str() -> None:
    provider = ar.ScriptedProvider(["one"])
    assert await provider.complete("q") == "one"
    with pytest.raises(ar.ProviderError, match="ran out of replies"):
        await provider.complete("q")
    assert provider.calls == 1  # the call that got no reply is not counted
    chatting = ar.ScriptedProvider([ChatResponse(text="a"), "b"])
    assert [(await chatting.chat([Message("user", "q")])).text for _ in range(2)] == ["a", "b"]
    with pytest.raises(ar.ProviderError, match="ran out of replies"):
        await chatting.chat([Message("user", "q")])
    assert chatting.calls == 2
    with pytest.raises(ValueError, match="a list of replies"):
        ar.ScriptedProvider("Thought: t\nAction: FINAL_ANSWER 42")  # type: ignore[arg-type]


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize(
    "twin", [copy.copy, copy.deepcopy, lambda p: pickle.loads(pickle.dumps(p))]
)
async def test_a_copied_or_pickled_scripted_provider_replays_the_rest_on_its_own(
    loop: bool, twin: Any
) -> None:
    # A shallow copy shared the script's iterator: each took the other's next reply. And a
    # looping one held an `itertools.cycle`, whose copying and pickling Python 3.12
    # deprecates (a warning, an error under -W error) and 3.14 removes.
    original = ar.ScriptedProvider(["a", "b", "c"], loop=loop)
    assert await original.complete("q") == "a"
    copied = twin(original)
    assert copied.calls == 1 and repr(copied) == repr(original)
    rest = ["b", "c", "a", "b"] if loop else ["b", "c"]
    for provider in (copied, original):
        assert [await provider.complete("q") for _ in rest] == rest
        if not loop:
            with pytest.raises(ar.ProviderError, match="ran out of replies"):
                await provider.complete("q")
        assert provider.calls == 1 + len(rest)


@pytest.mark.parametrize("mode", ["react", "tools"])
@pytest.mark.parametrize(("returned", "kind"), [(None, "None"), (42, "int"), (["x"], "list")])
async def test_a_scripted_rule_returning_no_reply_is_a_provider_error(
    mode: str, returned: Any, kind: str
) -> None:
    # It was a raw TypeError from deep in the usage estimate.
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode))  # type: ignore[arg-type]
    provider = ar.ScriptedProvider(rule=lambda prompt: returned)
    message = f"scripted rule's reply must be a str or a ChatResponse, got {kind}"
    with pytest.raises(ar.ProviderError, match=message):
        await rt.run_agent_with_provider("a", "q", provider)
    with pytest.raises(ar.ProviderError, match=message):
        await provider.complete("q")
    assert provider.calls == 0


def test_scripted_replies_that_are_no_replies_are_refused_at_construction() -> None:
    with pytest.raises(ar.ProviderError, match=r"scripted reply 2 must be .* got None"):
        ar.ScriptedProvider(["fine", None])  # type: ignore[list-item]
    with pytest.raises(ar.ProviderError, match=r"scripted reply 1 must be .* got dict"):
        ar.ScriptedProvider([{"text": "hi"}], loop=True)  # type: ignore[list-item]


@pytest.mark.parametrize("mode", ["tools", "react"])
async def test_a_price_without_token_counts_is_charged_to_the_budget(mode: str) -> None:
    # The counts were estimated and the price dropped with them: a provider pricing each
    # call spent past a dollar limit unchecked.
    class PricedPerCall:
        def __init__(self, text: str) -> None:
            self.text = text

        async def chat(self, messages: list[Message], **settings: Any) -> ChatResponse:
            return ChatResponse(text=self.text, usage=Usage(cost_usd=5.0), stop_reason="stop")

    budget = ar.CostBudget(max_cost_usd=1.0)
    runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode), budget=budget)  # type: ignore[arg-type]
    text = "Thought: t\nAction: FINAL_ANSWER 42" if mode == "react" else "42"
    session = await runtime.run_agent_with_provider("a", "q", PricedPerCall(text))
    assert session.final_answer == "42"
    assert budget.used_cost_usd == 5.0 and budget.used_tokens > 0  # counts estimated
    with pytest.raises(ar.BudgetExceededError):
        budget.check()


async def test_remembered_decisions_take_arguments_json_cannot_sort() -> None:
    # A middleware may rewrite arguments into keys of several types: with an approval
    # handler, remembering the decision failed the run with a bare TypeError.
    class Rewrite(ar.Middleware):
        def on_tool_call(self, session: Any, tool: str, arguments: Any) -> Any:
            return tool, {1: "one", "b": 2}

    asked: list[Any] = []

    def approve(session: Any, name: str, arguments: Any) -> ar.ApprovalDecision:
        asked.append(arguments)
        return ar.ApprovalDecision("approve", remember=True)

    echo = ar.ToolSpec("echo", "echo", lambda args: sorted(map(str, args)))
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=[echo],
        middlewares=[Rewrite()],
        approval_handler=approve,
    )
    call = ar.providers.base.ToolCall("c1", "echo", {"x": 1})
    script = [ChatResponse(tool_calls=[call]), ChatResponse(tool_calls=[call]), ChatResponse("ok")]
    session = await runtime.run_agent_with_provider("a", "q", ar.ScriptedProvider(script))
    assert session.final_answer == "ok"
    assert [s.observation for s in session.steps[:2]] == ['["1", "b"]'] * 2
    assert len(asked) == 1  # remembered for the second call


def _tool_events_by_step(events: list[Any]) -> dict[int, tuple[str, str | None]]:
    """Each tool call event's step number -> its tool and how it finished."""
    finished = [e for e in events if isinstance(e, ar.ToolCallFinished)]
    return {e.step: (e.tool, e.error_kind) for e in finished}


async def test_a_parallel_round_that_fails_keeps_one_step_per_call() -> None:
    # Without checkpoints, a policy error in one call of a parallel round used to drop the
    # whole round: the session had no step for a call that ran (and was counted).
    @ar.tool
    async def spend(a: int) -> int:
        """Calls a sub-agent whose budget is spent."""
        await asyncio.sleep(0.02)  # after its sibling finished
        raise ar.BudgetExceededError("sub-agent budget spent")

    calls = [("add", {"a": 1, "b": 2}), ("spend", {"a": 1}), ("add", {"a": 3, "b": 4})]
    reply = ar.ScriptedProvider.tool_call_reply(calls)
    reply.usage = Usage(input_tokens=50, output_tokens=5)
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add, spend])
    seen: list[Any] = []
    rt.events.on(seen.append)
    session = rt.create_session("a")
    with pytest.raises(ar.BudgetExceededError, match="spent"):
        await rt.run_turn(session, "q", ar.ScriptedProvider([reply, "done"]))
    assert [(s.action, s.action_input, s.observation, s.error_kind) for s in session.steps] == [
        ("add", {"a": 1, "b": 2}, "3", None),
        (
            "spend",
            {"a": 1},
            "error: the call ended with BudgetExceededError: sub-agent budget spent",
            "permanent",
        ),
        ("add", {"a": 3, "b": 4}, "7", None),
    ]
    # Numbered as the round's events were.
    by_step = _tool_events_by_step(seen)
    assert by_step == {i: (s.action, s.error_kind) for i, s in enumerate(session.steps)}
    # The round's tokens go to its first step, as in a round that ends well.
    assert [(s.input_tokens, s.output_tokens) for s in session.steps] == [(50, 5), (0, 0), (0, 0)]
    snapshot = rt.metrics.snapshot()
    assert (snapshot.total_steps, snapshot.tool_calls) == (3, {"add": 2, "spend": 1})
    assert session.final_answer is None and session.messages == []
    # The next turn numbers its steps after them, as its events do.
    seen.clear()
    await rt.run_turn(session, "again", ar.ScriptedProvider(["done"]))
    assert [s.action for s in session.steps][3:] == ["FINAL_ANSWER"]


async def test_a_round_failing_before_its_calls_start_keeps_no_step() -> None:
    caps = ar.CapabilitySet(allowed_tools=["add"])
    calls = [("add", {"a": 1, "b": 2}), ("other", {})]
    reply = ar.ScriptedProvider.tool_call_reply(calls)

    @ar.tool
    async def other() -> int:
        """Not this agent's."""
        return 0

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add, other], capabilities=caps)
    session = rt.create_session("a")
    with pytest.raises(ar.PolicyDeniedError):
        await rt.run_turn(session, "q", ar.ScriptedProvider([reply, "done"]))
    assert session.steps == [] and rt.metrics.snapshot().total_steps == 0


async def test_a_cancelled_parallel_round_keeps_one_step_per_call() -> None:
    @ar.tool
    async def slow(a: int) -> int:
        """Never returns in time."""
        await asyncio.sleep(30)
        return a

    # One call at a time: the third has not started when the run is cancelled.
    calls = [("add", {"a": 1, "b": 2}), ("slow", {"a": 1}), ("add", {"a": 2, "b": 2})]
    config = ar.AgentConfig(mode="tools", max_parallel_tool_calls=1)
    rt = ar.AgentRuntime(config, tools=[add, slow])
    seen: list[Any] = []
    rt.events.on(seen.append)
    session = rt.create_session("a")
    provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
    run = asyncio.ensure_future(rt.run_turn(session, "q", provider))
    while sum(rt.metrics.snapshot().tool_calls.values()) < 2:
        await asyncio.sleep(0.005)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert [(s.action, s.observation, s.error_kind) for s in session.steps] == [
        ("add", "3", None),
        ("slow", "error: the call ended with CancelledError", "transient"),
        (
            "add",
            "error: the call did not start: its round ended with CancelledError",
            "transient",
        ),
    ]
    by_step = _tool_events_by_step(seen)
    assert by_step == {0: ("add", None), 1: ("slow", "transient")}


@pytest.mark.parametrize("durable", [False, True])
@pytest.mark.parametrize("failure", ["policy", "listener"])
async def test_a_call_waiting_for_a_slot_never_starts_once_its_round_failed(
    durable: bool, failure: str
) -> None:
    # The failed call's slot woke the next waiting call before the round heard of the
    # failure: with one call at a time, the round's second call still ran (charged a card).
    charged: list[int] = []

    @ar.tool
    async def spend(a: int) -> int:
        """Calls a sub-agent whose budget is spent."""
        if failure == "policy":
            raise ar.BudgetExceededError("sub-agent budget spent")
        return a

    @ar.tool
    async def charge(a: int) -> int:
        """Charges a card, with no await before it does."""
        charged.append(a)
        return a

    def listener(event: Any) -> None:
        if isinstance(event, ar.ToolCallFinished) and event.tool == "spend":
            raise RuntimeError("listener broke")

    config = ar.AgentConfig(mode="tools", max_parallel_tool_calls=1)
    backend = ar.InMemoryBackend() if durable else None
    rt = ar.AgentRuntime(config, tools=[spend, charge], checkpoint_backend=backend)
    if failure == "listener":
        rt.events.on(listener)
    calls = [("spend", {"a": 1}), ("charge", {"a": 2})]
    provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
    error = ar.BudgetExceededError if failure == "policy" else RuntimeError
    with pytest.raises(error):
        await rt.run_agent_with_provider("a", "q", provider)
    assert charged == []
    assert rt.metrics.snapshot().tool_calls == {"spend": 1}


async def test_a_call_waiting_for_a_slot_never_starts_once_a_denial_failed_its_round() -> None:
    charged: list[int] = []

    @ar.tool
    async def plus(a: int, b: int) -> int:
        """Adds, with no await: its slot is free again before the next call's turn."""
        return a + b

    @ar.tool
    async def charge(a: int) -> int:
        """Charges a card."""
        charged.append(a)
        return a

    def listener(event: Any) -> None:
        if isinstance(event, ar.ToolCallFinished) and event.error_kind == "permanent":
            raise RuntimeError("listener broke")

    def approve(session: ar.AgentSession, name: str, arguments: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("deny" if arguments.get("a") == 2 else "approve")

    config = ar.AgentConfig(mode="tools", max_parallel_tool_calls=1)
    rt = ar.AgentRuntime(config, tools=[plus, charge], approval_handler=approve)
    rt.events.on(listener)
    session = rt.create_session("a")
    # The first call is done (its slot free) when the denial's listener fails the round.
    calls = [("plus", {"a": 1, "b": 2}), ("plus", {"a": 2, "b": 2}), ("charge", {"a": 3})]
    provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
    with pytest.raises(RuntimeError, match="listener broke"):
        await rt.run_turn(session, "q", provider)
    assert charged == []
    assert [(s.action, s.error_kind) for s in session.steps] == [
        ("plus", None),
        ("plus", "permanent"),
        ("charge", "permanent"),
    ]
    assert session.steps[2].observation == (
        "error: the call did not start: its round ended with RuntimeError: listener broke"
    )


@ar.tool
async def stall(a: int) -> int:
    """Never returns in time."""
    await asyncio.sleep(30)
    return a


@pytest.mark.parametrize("mode", ["tools", "react"])
async def test_a_lone_call_the_loop_timeout_cuts_off_keeps_its_step(mode: str) -> None:
    # Only a parallel round used to keep its steps: a lone call cut off left its events
    # numbered for a step the session never had, and the next turn's step took that number.
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode, loop_timeout_ms=100), tools=[add, stall])
    seen: list[Any] = []
    rt.events.on(seen.append)
    session = rt.create_session("a")
    if mode == "tools":
        reply: Any = ar.ScriptedProvider.tool_call_reply([("stall", {"a": 1})])
        reply.usage = Usage(input_tokens=40, output_tokens=4)
    else:
        reply = 'Thought: wait for it\nAction: stall {"a": 1}'
    with pytest.raises(ar.AgentLoopError, match=r"timed out after 100 ms \(1 steps done\)"):
        await rt.run_turn(session, "q", ar.ScriptedProvider([reply, "done"]))
    [step] = session.steps
    assert (step.action, step.action_input, step.observation, step.error_kind) == (
        "stall",
        {"a": 1},
        "error: the call ended with the run's timeout (agent loop timed out after 100 ms)",
        "transient",
    )
    assert step.thought == ("" if mode == "tools" else "wait for it")
    if mode == "tools":  # the reply's reported usage; ReAct's is estimated
        assert (step.input_tokens, step.output_tokens) == (40, 4)
    assert step.tool_ms > 50
    assert _tool_events_by_step(seen) == {0: ("stall", "transient")}
    assert rt.metrics.snapshot().total_steps == 1
    # The next turn numbers its steps after it, as its events do.
    seen.clear()
    final = "done" if mode == "tools" else FINAL
    second = ar.ScriptedProvider(
        [
            ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})])
            if mode == "tools"
            else ADD,
            final,
        ]
    )
    await rt.run_turn(session, "again", second)
    assert _tool_events_by_step(seen) == {1: ("add", None)}
    assert [s.action for s in session.steps] == ["stall", "add", "FINAL_ANSWER"]


@pytest.mark.parametrize("mode", ["tools", "react"])
async def test_a_lone_call_refused_before_it_starts_keeps_no_step(mode: str) -> None:
    caps = ar.CapabilitySet(allowed_tools=["add"])
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode), tools=[add, stall], capabilities=caps)
    seen: list[Any] = []
    rt.events.on(seen.append)
    session = rt.create_session("a")
    if mode == "tools":
        reply: Any = ar.ScriptedProvider.tool_call_reply([("stall", {"a": 1})])
    else:
        reply = 'Thought: wait\nAction: stall {"a": 1}'
    with pytest.raises(ar.PolicyDeniedError):
        await rt.run_turn(session, "q", ar.ScriptedProvider([reply, "done"]))
    assert session.steps == [] and _tool_events_by_step(seen) == {}
    assert rt.metrics.snapshot().total_steps == 0


@pytest.mark.parametrize(
    ("mode", "parallel"), [("tools", False), ("tools", True), ("react", False)]
)
async def test_a_listener_failing_on_a_finished_call_keeps_its_step(
    mode: str, parallel: bool
) -> None:
    # The call's run was recorded after its ToolCallFinished event: a listener failing on
    # that event left a call that returned 3 as "did not start", or with no step at all.
    def listener(event: Any) -> None:
        if isinstance(event, ar.ToolCallFinished) and event.tool == "add":
            raise RuntimeError("listener broke")

    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode), tools=[add, stall])
    rt.events.on(listener)
    session = rt.create_session("a")
    if mode == "react":
        reply: Any = ADD
    else:
        calls = [("add", {"a": 2, "b": 3})] + ([("stall", {"a": 1})] if parallel else [])
        reply = ar.ScriptedProvider.tool_call_reply(calls)
    with pytest.raises(RuntimeError, match="listener broke"):
        await rt.run_turn(session, "q", ar.ScriptedProvider([reply, "done"]))
    kept = [(s.action, s.observation, s.error_kind) for s in session.steps]
    assert kept[0] == ("add", "5", None)
    if parallel:  # its sibling was cut off by the round's failure
        assert kept[1] == ("stall", "error: the call ended with CancelledError", "transient")
    assert len(kept) == (2 if parallel else 1)


async def test_a_listener_failing_on_a_denied_call_keeps_its_step() -> None:
    def listener(event: Any) -> None:
        if isinstance(event, ar.ToolCallFinished):
            raise RuntimeError("listener broke")

    def deny(session: Any, name: str, arguments: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("deny", reason="not today")

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add], approval_handler=deny)
    rt.events.on(listener)
    session = rt.create_session("a")
    reply = ar.ScriptedProvider.tool_call_reply([("add", {"a": 2, "b": 3})])
    with pytest.raises(RuntimeError, match="listener broke"):
        await rt.run_turn(session, "q", ar.ScriptedProvider([reply, "done"]))
    [step] = session.steps
    assert step.action == "add" and "not today" in step.observation


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise AttributeError("no message")


@pytest.mark.parametrize("mode", ["tools", "react"])
@pytest.mark.parametrize("on", [ar.ToolCallStarted, ar.ToolCallFinished])
async def test_an_error_whose_message_fails_stays_the_runs_error(mode: str, on: type) -> None:
    # Describing the cut-off call ran str() on the error unguarded: an AttributeError
    # replaced the listener's own error, and no step was kept.
    def listener(event: Any) -> None:
        if isinstance(event, on):
            raise _Unprintable

    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode), tools=[add])  # type: ignore[arg-type]
    rt.events.on(listener)
    session = rt.create_session("a")
    call = [("add", {"a": 2, "b": 3})]
    reply: Any = ADD if mode == "react" else ar.ScriptedProvider.tool_call_reply(call)
    with pytest.raises(_Unprintable):
        await rt.run_turn(session, "q", ar.ScriptedProvider([reply, "done"]))
    [step] = session.steps
    if on is ar.ToolCallFinished:  # it had returned
        assert step.observation == "5"
    else:
        assert step.observation == (
            "error: the call ended with _Unprintable (its message could not be rendered: "
            "AttributeError)"
        )


class _NoStr:
    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize("arguments", ["tuple key", "cycle", "huge int", "str fails"])
async def test_arguments_json_cannot_hold_are_estimated_and_refused_as_an_observation(
    arguments: str,
) -> None:
    # A provider that reports no usage has its reply estimated: arguments JSON cannot encode
    # (its own objects) failed that estimate with a bare TypeError or ValueError.
    values: dict[str, Any] = {
        "tuple key": {(1, 2): 1},
        "cycle": {},
        "huge int": {"text": 10**5000},
        "str fails": {"text": _NoStr()},
    }
    value = values[arguments]
    if arguments == "cycle":
        value["self"] = value

    @ar.tool
    def echo(text: str) -> str:
        """Echoes the text."""
        return text

    class Own:
        async def chat(self, messages: Any, tools: Any = None, **kwargs: Any) -> ar.ChatResponse:
            if len(messages) > 2:
                return ar.ChatResponse(text="done", usage=ar.Usage())
            return ar.ChatResponse(tool_calls=[ar.ToolCall("c1", "echo", value)], usage=ar.Usage())

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[echo])
    session = await rt.run_agent_with_provider("a", "q", Own())
    assert session.final_answer == "done"
    assert session.steps[0].error_kind == "permanent"
    assert session.steps[0].output_tokens > 0
    assert rt.metrics.snapshot().output_tokens > 0


async def test_a_refused_streamed_reply_is_charged_when_a_listener_failed_first() -> None:
    # A listener's error, raised in place of the stream's own, hid the usage of the reply
    # the provider refused: the run's metrics and budget never counted it.
    class BreaksOff:
        async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
            raise AssertionError("streamed")

        async def chat_stream(self, messages: Any, tools: Any = None, **params: Any) -> Any:
            yield ar.TextDelta("hello ")
            error = ar.ProviderError("the stream broke off after its usage", retryable=True)
            error.usage = ar.Usage(1000, 500)
            raise error

    budget = ar.CostBudget(max_tokens=10_000)
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), budget=budget)

    def listener(event: ar.Event) -> None:
        if isinstance(event, ar.LlmTextDelta):
            raise RuntimeError("listener failed")

    runtime.events.on(listener)
    with pytest.raises(RuntimeError, match="listener failed"):
        await runtime.run_agent_with_provider("a", "q", BreaksOff())
    snapshot = runtime.metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (1000, 500)
    assert budget.used_tokens == 1500


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_refused_reply_whose_cost_is_no_amount_is_charged_nowhere(mode: str) -> None:
    # Its metrics counted its tokens, then its budget refused the cost: half charged.
    class Refuses:
        async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
            error = ar.ProviderError("refused")
            error.usage = ar.Usage(50, 5, cost_usd=math.nan)
            raise error

    budget = ar.CostBudget(max_tokens=1000)
    runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode), budget=budget)  # type: ignore[arg-type]
    with pytest.raises(ar.ProviderError, match="refused"):
        await runtime.run_agent_with_provider("a", "q", Refuses())
    snapshot = runtime.metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens, budget.used_tokens) == (0, 0, 0)
