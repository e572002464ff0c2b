from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.codec import decode
from llm_agent_runtime.runtime import _cut_at_stop


@ar.tool
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


def react(*replies: str) -> Any:
    it = iter(replies)
    prompts: list[str] = []

    async def infer(prompt: str) -> str:
        prompts.append(prompt)
        return next(it)

    infer.prompts = prompts  # type: ignore[attr-defined]
    return infer


ADD = 'Thought: add them\nAction: add {"a": 2, "b": 3}'
FINAL = "Thought: done\nAction: FINAL_ANSWER 5"


class DictBackend(ar.InMemoryBackend):
    """In-memory checkpoints that can fail on step or final writes."""

    def __init__(self, fail_steps: bool = False, fail_final: bool = False) -> None:
        super().__init__()
        self.fail_steps = fail_steps
        self.fail_final = fail_final

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        step = any(":step:" in key for key in items)
        if (step and self.fail_steps) or (not step and self.fail_final):
            raise OSError("disk full")
        await super().batch_save(items)


@dataclass
class Episode:
    content: str


class FakeEpisodic:
    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.limits: list[int] = []

    def recall(self, agent_id: str, limit: int) -> list[Episode]:
        self.limits.append(limit)
        return [Episode(t) for t in self.texts[:limit]]


class FakeWorking:
    def to_prompt(self) -> str:
        return "mood: curious"


class FakeGraph:
    def entity_count(self) -> int:
        return 7


async def test_react_loop_runs_tool_and_final_answer() -> None:
    rt = ar.AgentRuntime(tools=[add])
    infer = react(ADD, FINAL)
    s = await rt.run_agent("agent", "2+3?", infer)
    assert s.final_answer == "5" and s.step_count == 2
    assert s.steps[0].observation == "5" and s.steps[0].action_input == {"a": 2, "b": 3}
    assert "Observation: 5" in infer.prompts[1]
    snap = rt.metrics.snapshot()
    assert (snap.total_sessions, snap.total_steps, snap.total_tool_calls) == (1, 2, 1)
    assert snap.active_sessions == 0 and snap.tool_call_count("add") == 1
    step = s.steps[0]
    assert step.model_ms >= 0 and step.tool_ms > 0 and step.overhead_ms >= 0


async def test_max_iterations_ends_without_answer() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(max_iterations=3), tools=[add])
    s = await rt.run_agent("a", "loop", react(ADD, ADD, ADD, ADD))
    assert s.step_count == 3 and s.final_answer is None


async def test_unparseable_output_is_agent_loop_error_and_reprompt() -> None:
    rt = ar.AgentRuntime()
    with pytest.raises(ar.AgentLoopError):
        await rt.run_agent("a", "q", react("gibberish"))
    assert rt.metrics.snapshot().active_sessions == 0
    rt2 = ar.AgentRuntime(ar.AgentConfig(corrective_reprompt=True))
    infer = react("gibberish", FINAL)
    s = await rt2.run_agent("a", "q", infer)
    assert s.final_answer == "5" and "not a ReAct step" in infer.prompts[1]
    with pytest.raises(ar.AgentLoopError):
        await rt2.run_agent("a", "q", react("gibberish", "still gibberish"))


async def test_tool_failures_become_observations_and_are_counted() -> None:
    rt = ar.AgentRuntime(tools=[add])
    s = await rt.run_agent(
        "a",
        "q",
        react('Thought: t\nAction: nope {"x": 1}', 'Thought: t\nAction: add {"a": 1}', FINAL),
    )
    assert [st.error_kind for st in s.steps] == ["not_found", "permanent", None]
    snap = rt.metrics.snapshot()
    assert snap.failed_tool_calls == 2 and s.failed_tool_call_count() == 2


async def test_error_recovery_stop() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(error_recovery="stop"), tools=[add])
    s = await rt.run_agent("a", "q", react('Thought: t\nAction: add {"a": 1}', FINAL))
    assert s.step_count == 1 and s.final_answer is None


async def test_memory_working_memory_and_graph_in_prompt() -> None:
    memory = FakeEpisodic(["alpha fact", "beta fact", "gamma " * 40, "delta"])
    # The budget stops at the first episode that does not fit (rank order is kept).
    rt = ar.AgentRuntime(
        ar.AgentConfig(max_memory_recalls=3, max_memory_tokens=10),
        memory=memory,
        working_memory=FakeWorking(),
        graph=FakeGraph(),
    )
    infer = react(FINAL)
    s = await rt.run_agent("a", "q", infer)
    prompt = infer.prompts[0]
    assert memory.limits == [3]
    assert "alpha fact" in prompt and "beta fact" in prompt and "gamma" not in prompt
    assert "delta" not in prompt  # beyond max_memory_recalls
    assert "mood: curious" in prompt
    assert s.memory_hits == 2 and s.graph_entity_count == 7
    assert rt.metrics.snapshot().memory_recall_count == 2


async def test_backpressure_sheds_at_once() -> None:
    guard = ar.BackpressureGuard(capacity=1)
    rt = ar.AgentRuntime(backpressure=guard)
    gate = asyncio.Event()

    async def slow(prompt: str) -> str:
        await gate.wait()
        return FINAL

    first = asyncio.create_task(rt.run_agent("a", "q", slow))
    await asyncio.sleep(0)
    with pytest.raises(ar.BackpressureShedError) as info:
        await rt.run_agent("b", "q", react(FINAL))
    assert (info.value.depth, info.value.capacity) == (1, 1)
    gate.set()
    assert (await first).final_answer == "5"
    assert rt.metrics.snapshot().backpressure_shed_count == 1 and guard.depth == 0


async def test_checkpoints_per_step_and_final() -> None:
    backend = DictBackend()
    rt = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    s = await rt.run_agent("a", "q", react(ADD, FINAL))
    sid = s.session_id
    keys = set(backend.data)
    assert {f"session:{sid}:meta", f"session:{sid}:step:1", f"session:{sid}:step:2"} <= keys
    assert {f"session:{sid}", f"session:{sid}:call:1:0"} <= keys
    step_one = decode(backend.data[f"session:{sid}:step:1"], "k", "step")
    assert step_one["step"]["observation"] == "5" and step_one["reply"] == ADD
    assert await ar.AgentSession.load_checkpoint(backend, sid) == s


async def test_step_checkpoint_failures_counted_final_failure_raised() -> None:
    rt = ar.AgentRuntime(tools=[add], checkpoint_backend=DictBackend(fail_steps=True))
    s = await rt.run_agent("a", "q", react(ADD, FINAL))
    assert s.checkpoint_error_count() == 2 and rt.metrics.snapshot().checkpoint_errors == 2
    rt2 = ar.AgentRuntime(checkpoint_backend=DictBackend(fail_final=True))
    with pytest.raises(ar.PersistenceError, match="session:"):
        await rt2.run_agent("a", "q", react(FINAL))


async def test_native_tool_mode_runs_parallel_calls_concurrently() -> None:
    running = 0
    peak = 0

    @ar.tool
    async def slow_add(a: int, b: int) -> int:
        """Adds slowly."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return a + b

    calls = [("slow_add", {"a": i, "b": 1}) for i in range(5)]
    provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools", max_parallel_tool_calls=2), tools=[slow_add])
    s = await rt.run_agent_with_provider("a", "q", provider)
    assert [st.observation for st in s.steps[:5]] == ["1", "2", "3", "4", "5"]
    assert peak == 2 and s.final_answer == "done"
    assert rt.metrics.snapshot().total_tool_calls == 5


async def test_provider_react_mode() -> None:
    rt = ar.AgentRuntime(tools=[add])
    s = await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([ADD, FINAL]))
    assert s.final_answer == "5" and rt.metrics.snapshot().input_tokens > 0


async def test_loop_timeout_leaves_consistent_session() -> None:
    async def slow(prompt: str) -> str:
        await asyncio.sleep(1)
        return FINAL

    guard = ar.BackpressureGuard(capacity=2)
    rt = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=20), backpressure=guard)
    session = rt.create_session("a")
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await rt.run_agent("a", "q", slow, session=session)
    assert session.step_count == 0 and session.duration_ms > 0
    assert guard.depth == 0 and rt.metrics.snapshot().active_sessions == 0


async def test_cancellation_mid_tool() -> None:
    started = asyncio.Event()

    @ar.tool
    async def hang() -> str:
        """Never returns."""
        started.set()
        await asyncio.sleep(60)
        return "never"

    rt = ar.AgentRuntime(tools=[hang])
    session = rt.create_session("a")
    task = asyncio.create_task(
        rt.run_agent("a", "q", react(FINAL.replace("FINAL_ANSWER 5", "hang {}")), session=session)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert session.step_count == 0 and session.final_answer is None
    snap = rt.metrics.snapshot()
    assert snap.active_sessions == 0 and snap.total_tool_calls == 1


async def test_capabilities_and_budget_enforced() -> None:
    rt = ar.AgentRuntime(tools=[add], capabilities=ar.CapabilitySet(allowed_tools=["other"]))
    with pytest.raises(ar.PolicyDeniedError):
        await rt.run_agent("a", "q", react(ADD, FINAL))
    rt2 = ar.AgentRuntime(tools=[add], budget=ar.CostBudget(max_tokens=10))
    with pytest.raises(ar.BudgetExceededError):
        await rt2.run_agent("a", "q", react(ADD, FINAL))


async def test_approval_handler_deny_edit_and_cache() -> None:
    seen: list[Any] = []

    def approve(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        seen.append(args)
        if args.get("a") == 2:
            return ar.ApprovalDecision("edit", arguments={"a": 10, "b": 1}, remember=True)
        return ar.ApprovalDecision("deny", reason="no")

    rt = ar.AgentRuntime(tools=[add], approval_handler=approve)
    s = await rt.run_agent("a", "q", react(ADD, ADD, FINAL))
    assert [st.observation for st in s.steps[:2]] == ["11", "11"]
    assert len(seen) == 1  # second call reused the remembered decision
    s2 = await rt.run_agent("a", "q", react('Thought: t\nAction: add {"a": 1, "b": 1}', FINAL))
    assert s2.steps[0].error_kind == "permanent" and "denied: no" in s2.steps[0].observation


async def test_middlewares_rewrite() -> None:
    class Rewriter(ar.Middleware):
        def on_user_message(self, session: ar.AgentSession, text: str) -> str:
            return text.upper()

        async def on_pre_llm(self, session: ar.AgentSession, prompt: str) -> str:
            return prompt + "\n[pre]"

        def on_post_llm(self, session: ar.AgentSession, text: str) -> str | None:
            return ADD if "garbage" in text else None

        def on_tool_call(self, session: ar.AgentSession, tool: str, args: Any) -> Any:
            return tool, {"a": 100, "b": 1}

    rt = ar.AgentRuntime(tools=[add], middlewares=[Rewriter()])
    infer = react("garbage", FINAL)
    s = await rt.run_agent("a", "question", infer)
    assert "QUESTION" in infer.prompts[0] and infer.prompts[0].endswith("[pre]")
    assert s.steps[0].observation == "101"


async def test_multi_turn_session_trims_history() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(context_window_tokens=40, system_prompt="sys"))
    session = rt.create_session("a")
    provider = ar.ScriptedProvider(
        rule=lambda p: "Thought: ok\nAction: FINAL_ANSWER " + ("long " * 10), loop=False
    )
    for i in range(4):
        await rt.run_turn(session, f"turn {i}", provider)
    assert len(session.messages) == 8
    kept = rt.trim_history(session.messages)
    assert kept and kept[-1] == session.messages[-1] and len(kept) < 8
    assert sum(len(m["content"]) for m in kept) <= 40 * 4


async def test_misconfiguration_is_caught_at_construction() -> None:
    with pytest.raises(ar.AgentRuntimeError):
        ar.AgentRuntime(config={"max_iterations": 3})  # type: ignore[arg-type]
    with pytest.raises(ar.AgentRuntimeError, match="recall"):
        ar.AgentRuntime(memory=object())
    with pytest.raises(ar.AgentRuntimeError, match="Middleware"):
        ar.AgentRuntime(middlewares=[object()])  # type: ignore[list-item]
    with pytest.raises(ar.AgentRuntimeError, match="checkpoint_backend"):
        ar.AgentRuntime(checkpoint_backend=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ar.AgentConfig(max_iterations=0)


async def test_thousand_concurrent_sessions_exact_metrics() -> None:
    rt = ar.AgentRuntime(tools=[ar.ToolSpec("add", "", lambda a: a["a"] + a["b"], run_inline=True)])

    async def one(i: int) -> ar.AgentSession:
        return await rt.run_agent(f"agent-{i % 10}", "q", react(ADD, ADD, FINAL))

    sessions = await asyncio.gather(*(one(i) for i in range(1000)))
    assert all(s.final_answer == "5" for s in sessions)
    snap = rt.metrics.snapshot()
    assert snap.total_sessions == 1000 and snap.active_sessions == 0
    assert snap.total_steps == 3000 and snap.total_tool_calls == 2000
    assert snap.tool_call_count("add") == 2000 and snap.failed_tool_calls == 0


def test_session_ids_are_unique_and_differ_in_a_forked_child() -> None:
    import os

    from llm_agent_runtime.runtime import new_session_id

    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id, then leave without running pytest's teardown
        os.write(write_end, new_session_id().encode())
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 64).decode()
    os.waitpid(pid, 0)
    parent_id = new_session_id()
    assert child_id[:16] != parent_id[:16]


async def test_memory_with_an_embedder_recalls_what_matches_the_request() -> None:
    memory = ar.EpisodicStore(embedder=ar.HashingEmbedder(), similarity_weight=5.0)
    for fact in ["the user's cat is called Tom", "the deadline is Friday", "rent is due monthly"]:
        memory.add_episode("a", fact, 0.5)
    prompts: list[str] = []

    async def infer(prompt: str) -> str:
        prompts.append(prompt)
        return "Thought: done\nAction: FINAL_ANSWER ok"

    runtime = ar.AgentRuntime(ar.AgentConfig(max_memory_recalls=1), memory=memory)
    await runtime.run_agent("a", "when is the deadline?", infer)
    assert "the deadline is Friday" in prompts[0]
    assert "cat" not in prompts[0] and "rent" not in prompts[0]
    await runtime.run_agent("a", "what is my cat called?", infer)
    assert "the user's cat is called Tom" in prompts[1]


async def test_stop_sequences_cut_replies_of_an_infer_function() -> None:
    config = ar.AgentConfig(stop_sequences=["\nObservation:", "<end>"])
    rt = ar.AgentRuntime(config, tools=[add])
    infer = react(ADD + "\nObservation: 42 (made up)", FINAL + "<end> trailing")
    s = await rt.run_agent("a", "q", infer)
    assert s.steps[0].observation == "5" and s.final_answer == "5"
    assert "made up" not in infer.prompts[1] and "Observation: 5" in infer.prompts[1]


def test_stop_sequences_must_be_non_empty() -> None:
    with pytest.raises(ValueError, match="stop_sequences"):
        ar.AgentConfig(stop_sequences=[""])


@given(text=st.text("ab\n:", max_size=30), stops=st.lists(st.text("ab\n:", min_size=1), max_size=3))
def test_cut_at_stop_keeps_the_longest_prefix_without_a_stop(text: str, stops: list[str]) -> None:
    cut = _cut_at_stop(text, stops)
    ends = [text.find(s) for s in stops if s in text]
    assert cut == text[: min(ends, default=len(text))]
    assert not any(s in cut for s in stops)
