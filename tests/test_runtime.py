from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.codec import decode
from llm_agent_runtime.providers.base import cut_at_stop


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


async def test_made_up_tool_names_add_no_counters() -> None:
    """Calls of unregistered tools count under one name (each made-up name was a counter, and
    a Prometheus series, of its own); a tool registered later counts by its name."""
    rt = ar.AgentRuntime(ar.AgentConfig(max_iterations=30))
    calls = [f"Thought: t\nAction: tool_{i} {{}}" for i in range(20)]
    s = await rt.run_agent("a", "q", react(*calls, FINAL))
    assert [st.error_kind for st in s.steps[:-1]] == ["not_found"] * 20
    snap = rt.metrics.snapshot()
    assert snap.tool_calls == snap.tool_failures == {"(unknown tool)": 20}
    assert snap.total_tool_calls == snap.failed_tool_calls == 20
    rt.tools.register(add)
    await rt.run_agent("a", "q", react('Thought: t\nAction: add {"a": 1, "b": 2}', FINAL))
    assert rt.metrics.snapshot().tool_calls == {"(unknown tool)": 20, "add": 1}

    # A tool registered during a run (here, by another tool) counts under its own name.
    @ar.tool
    def enable_mul() -> str:
        """Registers mul."""
        rt.tools.register(mul)
        return "mul loaded"

    @ar.tool
    def mul(a: int, b: int) -> int:
        """Multiplies."""
        return a * b

    rt.tools.register(enable_mul)
    s = await rt.run_agent(
        "a",
        "q",
        react(
            "Thought: t\nAction: enable_mul {}", 'Thought: t\nAction: mul {"a": 2, "b": 3}', FINAL
        ),
    )
    assert s.steps[1].observation == "6"
    assert rt.metrics.snapshot().tool_calls == {
        "(unknown tool)": 20,
        "add": 1,
        "enable_mul": 1,
        "mul": 1,
    }
    native = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add])
    provider = ar.ScriptedProvider(
        [ar.ScriptedProvider.tool_call_reply([("ghost", {}), ("add", {"a": 1, "b": 1})]), "ok"]
    )
    await native.run_agent_with_provider("a", "q", provider)
    snap = native.metrics.snapshot()
    assert snap.tool_calls == {"(unknown tool)": 1, "add": 1}
    assert snap.tool_failures == {"(unknown tool)": 1, "add": 0}


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


@pytest.mark.parametrize("guard_metrics", ["none", "the runtime's", "other"])
async def test_a_shed_is_counted_once_in_the_runtimes_metrics(guard_metrics: str) -> None:
    # Whatever metrics the guard counts into: a guard counting into other metrics used to
    # leave the runtime's at 0.
    runtime_metrics, other = ar.RuntimeMetrics(), ar.RuntimeMetrics()
    chosen = {"none": None, "the runtime's": runtime_metrics, "other": other}[guard_metrics]
    guard = ar.BackpressureGuard(capacity=1, metrics=chosen)
    rt = ar.AgentRuntime(backpressure=guard, metrics=runtime_metrics)
    guard.acquire()  # full
    with pytest.raises(ar.BackpressureShedError):
        await rt.run_agent("a", "q", react(FINAL))
    assert runtime_metrics.snapshot().backpressure_shed_count == 1
    assert other.snapshot().backpressure_shed_count == (guard_metrics == "other")


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
    backend = DictBackend(fail_steps=True)
    rt = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    session = rt.create_session("a")
    # Unsaved steps go with every later save, the final record's too. When that write fails
    # for them again, the session's record (every step is in it) is written alone: a step's
    # failure is logged and counted, never raised (the run that finished used to fail).
    s = await rt.run_agent("a", "q", react(ADD, FINAL), session=session)
    assert s.final_answer == "5" and s.step_count == 2
    # Two step saves, then the final write with them; the same three in the metrics.
    assert session.checkpoint_error_count() == 3
    assert rt.metrics.snapshot().checkpoint_errors == 3
    assert await ar.AgentSession.load_checkpoint(backend, s.session_id) == s
    assert not any(":step:" in key for key in backend.data)
    # The steps went folded into one base record: a fork reads them (it said "0 steps").
    assert f"session:{s.session_id}:base:2" in backend.data
    backend.fail_steps = False  # the disk has room again: the fork writes its own steps
    forked = await rt.fork(s.session_id, 1)
    assert (await ar.AgentSession.load_checkpoint(backend, forked)).step_count == 1
    # The final record's own failure is raised.
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
    # The call began: its step says how it ended, as its ToolCallFinished event does.
    [step] = session.steps
    assert (step.action, step.observation) == ("hang", "error: the call ended with CancelledError")
    assert session.final_answer is None
    snap = rt.metrics.snapshot()
    assert snap.active_sessions == 0 and snap.total_tool_calls == 1
    # Failed, as its ToolCallFinished says: a cut-off call is no success.
    assert snap.failed_tool_calls == 1 and snap.tool_failures == {"hang": 1}


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


async def test_a_remembered_denial_then_an_edit_of_the_same_arguments_win_over_an_approval() -> (
    None
):
    asked: list[Any] = []

    def approve(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        asked.append(args)
        if args["a"] == 2:  # these arguments, and these only, run as 10 + 1
            return ar.ApprovalDecision("edit", arguments={"a": 10, "b": 1}, remember=True)
        if args["a"] == 4:
            return ar.ApprovalDecision("deny", reason="no", remember=True)
        return ar.ApprovalDecision("approve", remember=True)

    other = 'Thought: t\nAction: add {"a": 1, "b": 1}'
    denied = 'Thought: t\nAction: add {"a": 4, "b": 1}'
    rt = ar.AgentRuntime(tools=[add], approval_handler=approve)
    s = await rt.run_agent("a", "q", react(ADD, other, ADD, FINAL))
    assert [st.observation for st in s.steps[:3]] == ["11", "2", "11"]  # the edit, still
    assert len(asked) == 2
    rt = ar.AgentRuntime(tools=[add], approval_handler=approve)
    s = await rt.run_agent("a", "q", react(ADD, denied, ADD, FINAL))
    assert s.steps[0].observation == "11"
    assert [st.error_kind for st in s.steps[1:3]] == ["permanent", "permanent"]
    assert "denied: no" in s.steps[2].observation  # the tool's denial wins over the edit
    assert len(asked) == 4


async def test_capabilities_and_an_approval_handler_set_after_construction_apply() -> None:
    rt = ar.AgentRuntime(tools=[add])
    rt.capabilities = ar.CapabilitySet(allowed_tools=["other"])
    with pytest.raises(ar.PolicyDeniedError):
        await rt.run_agent("a", "q", react(ADD, FINAL))
    rt.capabilities = None
    rt.approval_handler = lambda session, tool, args: ar.ApprovalDecision("deny", reason="no")
    s = await rt.run_agent("a", "q", react(ADD, FINAL))
    assert "denied: no" in s.steps[0].observation
    rt.approval_handler = None
    assert (await rt.run_agent("a", "q", react(ADD, FINAL))).steps[0].observation == "5"
    with pytest.raises(ar.AgentRuntimeError, match="callable"):
        rt.approval_handler = "yes"  # type: ignore[assignment]
    with pytest.raises(ar.AgentRuntimeError, match="capabilities"):
        rt.capabilities = object()  # type: ignore[assignment]
    assert rt.approval_handler is None and rt.capabilities is None  # refused: unchanged


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

    for middlewares in ([Rewriter()], (m for m in [Rewriter()])):  # any iterable, read once
        rt = ar.AgentRuntime(tools=[add], middlewares=middlewares)  # type: ignore[arg-type]
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


class WaitingEmbedder:
    """Embeds once `ready` (a threading.Event) is set, waiting at most 5 s: as a network
    embedder waits on its server, here on a coroutine of the event loop."""

    def __init__(self) -> None:
        self.inner = ar.HashingEmbedder()
        self.ready = threading.Event()
        self.waited_out = False

    def embed(self, texts: Any) -> Any:
        self.waited_out = self.waited_out or not self.ready.wait(5.0)
        return self.inner.embed(texts)


async def test_memory_recall_with_an_embedder_leaves_the_event_loop_free() -> None:
    # The request was embedded on the event loop: a slow embeddings server stalled every
    # other run, and the run's own timeout, for as long as it took.
    embedder = WaitingEmbedder()
    memory = ar.EpisodicStore(embedder=embedder)
    embedder.ready.set()  # the stored memory's embedding
    memory.add_episode("a", "the deadline is Friday", 0.5)
    embedder.ready.clear()

    async def set_ready() -> None:
        await asyncio.sleep(0.01)
        embedder.ready.set()

    runtime = ar.AgentRuntime(memory=memory)
    setting = asyncio.ensure_future(set_ready())
    session = await runtime.run_agent("a", "when is the deadline?", react(FINAL))
    await setting
    assert not embedder.waited_out
    assert session.final_answer == "5" and session.memory_hits == 1


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
def test_cut_at_stop_ends_where_the_first_stop_sequence_completes(
    text: str, stops: list[str]
) -> None:
    cut = cut_at_stop(text, stops)
    # Reference: write the text a character at a time; stop once the written part holds a
    # stop sequence, dropping that sequence.
    written = ""
    for char in text:
        written += char
        done = [s for s in stops if written.endswith(s)]
        if done:
            written = written[: -max(map(len, done))]
            break
    assert cut == written


async def test_each_turn_of_a_session_gets_all_its_iterations_and_its_own_answer() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(max_iterations=2), tools=[add])
    session = rt.create_session("a")
    answers = []
    for turn in range(3):
        final = FINAL.replace("5", f"answer {turn}")
        answers.append(await rt.run_turn(session, f"q{turn}", react(ADD, final)))
    assert answers == ["answer 0", "answer 1", "answer 2"]
    assert session.step_count == 6
    # A turn that runs out of iterations answers None, not the previous turn's answer.
    assert await rt.run_turn(session, "q3", react(ADD, ADD)) is None


async def test_a_failure_before_the_loop_releases_the_slot_and_is_typed() -> None:
    class NoMeta(ar.InMemoryBackend):
        async def save(self, key: str, value: bytes) -> None:
            raise OSError("disk full")

        async def save_new(self, key: str, value: bytes) -> bool:  # a fresh id's meta
            raise OSError("disk full")

    guard = ar.BackpressureGuard(capacity=1)
    rt = ar.AgentRuntime(checkpoint_backend=NoMeta(), backpressure=guard)
    with pytest.raises(ar.PersistenceError, match="disk full"):
        await rt.run_agent("a", "q", react(FINAL))
    rt2 = ar.AgentRuntime(backpressure=guard)

    def failing_listener(event: ar.Event) -> None:
        if isinstance(event, ar.RunStarted):
            raise RuntimeError("listener broke")

    rt2.events.on(failing_listener)
    with pytest.raises(RuntimeError, match="listener broke"):
        await rt2.run_agent("a", "q", react(FINAL))
    assert guard.depth == 0
    assert rt.metrics.snapshot().active_sessions == rt2.metrics.snapshot().active_sessions == 0


async def test_a_remembered_edit_holds_for_the_same_arguments_only() -> None:
    seen: list[Any] = []

    def cap(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        seen.append(args)
        return ar.ApprovalDecision("edit", arguments={**args, "b": 0}, remember=True)

    rt = ar.AgentRuntime(ar.AgentConfig(max_iterations=4), tools=[add], approval_handler=cap)
    other = 'Thought: t\nAction: add {"a": 7, "b": 3}'
    s = await rt.run_agent("a", "q", react(ADD, ADD, other, FINAL))
    assert [st.observation for st in s.steps[:3]] == ["2", "2", "7"]
    assert seen == [{"a": 2, "b": 3}, {"a": 7, "b": 3}]  # the repeat reused its decision
    # Steps record the call that ran.
    assert [st.action_input for st in s.steps[:3]] == [{"a": 2, "b": 0}] * 2 + [{"a": 7, "b": 0}]


async def test_a_new_approval_handler_is_asked_what_the_former_one_remembered() -> None:
    # A stricter handler set between turns was never asked: the former handler's remembered
    # approval went on running the calls it would deny.
    def lenient(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("approve", remember=True)

    asked: list[Any] = []

    def strict(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        asked.append(args)
        return ar.ApprovalDecision("deny", reason="not now")

    rt = ar.AgentRuntime(tools=[add], approval_handler=lenient)
    session = rt.create_session("a")
    await rt.run_turn(session, "q", react(ADD, FINAL))
    assert session.steps[0].observation == "5"
    rt.approval_handler = strict
    await rt.run_turn(session, "q", react(ADD, FINAL))
    assert asked == [{"a": 2, "b": 3}]
    assert session.steps[2].error_kind == "permanent" and "not now" in session.steps[2].observation


async def test_setting_the_same_method_as_approval_handler_again_keeps_its_memory() -> None:
    # Each `desk.approve` is a new bound method: setting it again dropped its decisions.
    class Desk:
        def __init__(self) -> None:
            self.asked = 0

        def approve(self, session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
            self.asked += 1
            return ar.ApprovalDecision("approve", remember=True)

    desk = Desk()
    rt = ar.AgentRuntime(tools=[add], approval_handler=desk.approve)
    session = rt.create_session("a")
    await rt.run_turn(session, "q", react(ADD, FINAL))
    rt.approval_handler = desk.approve
    await rt.run_turn(session, "q", react(ADD, FINAL))
    assert desk.asked == 1


async def test_a_remembered_edit_made_in_place_holds_for_the_call_asked_about() -> None:
    # The key was worked out after the handler returned: one that edited the dict it was
    # given filed its decision under the edited arguments, and the same call asked again.
    seen: list[Any] = []

    def cap(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        seen.append(dict(args))
        args["b"] = 0
        return ar.ApprovalDecision("edit", arguments=args, remember=True)

    rt = ar.AgentRuntime(ar.AgentConfig(max_iterations=4), tools=[add], approval_handler=cap)
    s = await rt.run_agent("a", "q", react(ADD, ADD, FINAL))
    assert [st.observation for st in s.steps[:2]] == ["2", "2"]
    assert seen == [{"a": 2, "b": 3}]  # the repeat reused the decision


async def test_denials_are_truncated_like_other_observations() -> None:
    def deny(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("deny", reason="x" * 500)

    config = ar.AgentConfig(max_observation_chars=40)
    rt = ar.AgentRuntime(config, tools=[add], approval_handler=deny)
    s = await rt.run_agent("a", "q", react(ADD, FINAL))
    assert s.steps[0].error_kind == "permanent" and len(s.steps[0].observation) == 40


async def test_hooks_inherited_from_a_base_middleware_run() -> None:
    class Upper(ar.Middleware):
        def on_post_llm(self, session: ar.AgentSession, text: str) -> str:
            return text.replace("FINAL_ANSWER 5", "FINAL_ANSWER 6")

    class Child(Upper):
        pass

    rt = ar.AgentRuntime(middlewares=[Child()])
    assert (await rt.run_agent("a", "q", react(FINAL))).final_answer == "6"


async def test_parallel_calls_events_carry_each_call_its_step_index() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add])
    seen: list[tuple[str, int, Any]] = []
    rt.events.on(
        lambda e: (
            seen.append((type(e).__name__, e.step, e.arguments))
            if isinstance(e, ar.ToolCallStarted)
            else None
        )
    )
    calls = [("add", {"a": i, "b": 0}) for i in range(3)]
    provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
    s = await rt.run_agent_with_provider("a", "q", provider)
    assert sorted((step, args["a"]) for _, step, args in seen) == [(0, 0), (1, 1), (2, 2)]
    assert [st.action_input["a"] for st in s.steps[:3]] == [0, 1, 2]


def test_history_trimming_keeps_whole_turns() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(context_window_tokens=100, system_prompt="S"))
    history = [
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "U" * 380},
        {"role": "assistant", "content": "short answer"},
    ]
    assert rt.trim_history(history) == []  # the last turn alone is over the budget
    assert rt.trim_history(history[:2] + history[:2]) == history[:2] + history[:2]
    roomy = ar.AgentRuntime(ar.AgentConfig(context_window_tokens=110, system_prompt="S"))
    assert roomy.trim_history(history) == history[2:]


def test_none_means_no_tools_or_middlewares_and_metrics_are_checked() -> None:
    rt = ar.AgentRuntime(tools=None, middlewares=None)
    assert len(rt.tools) == 0
    with pytest.raises(ar.AgentRuntimeError, match="RuntimeMetrics"):
        ar.AgentRuntime(metrics="x")  # type: ignore[arg-type]


class ChunkedStream(ar.ScriptedProvider):
    """Streams each scripted reply in pieces of `size` characters."""

    streams_text = True

    def __init__(self, replies: list[str], size: int) -> None:
        super().__init__(replies)
        self.size = size

    async def chat_stream(
        self, messages: Any, tools: Any = None, model: Any = None, **params: Any
    ) -> Any:
        response = self._next(messages[-1].content)
        text = response.text
        for start in range(0, len(text), self.size):
            yield ar.providers.base.TextDelta(text=text[start : start + self.size])
        yield ar.providers.base.StreamEnd(response=response)


@settings(max_examples=60, deadline=None)
@given(
    text=st.text("abST\n", max_size=40),
    stops=st.lists(st.text("abST\n", min_size=1, max_size=4), max_size=3),
    size=st.integers(1, 6),
)
def test_streamed_deltas_end_where_the_reply_is_cut(text: str, stops: list[str], size: int) -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools", stop_sequences=stops))
    deltas: list[str] = []
    rt.events.on(lambda e: deltas.append(e.text) if isinstance(e, ar.LlmTextDelta) else None)
    run = rt.run_agent_with_provider("a", "q", ChunkedStream([text], size))
    expected = cut_at_stop(text, stops)
    if expected.strip():
        assert asyncio.run(run).final_answer == expected
    else:  # nothing said: no final answer
        with pytest.raises(ar.AgentLoopError, match="neither a tool call nor any text"):
            asyncio.run(run)
    assert "".join(deltas) == expected and all(deltas)


async def test_a_spent_budget_is_refused_before_the_model_is_called() -> None:
    budget = ar.CostBudget(max_tokens=1)
    rt = ar.AgentRuntime(ar.AgentConfig(max_iterations=3), budget=budget)
    infer = react(FINAL, FINAL)
    # The call that goes past the budget is paid for: its answer is kept.
    assert (await rt.run_agent("a", "q", infer)).final_answer == "5"
    spent = budget.used_tokens
    assert spent > 1
    with pytest.raises(ar.BudgetExceededError, match="spent"):
        await rt.run_agent("a", "q", infer)
    assert len(infer.prompts) == 1 and budget.used_tokens == spent
    tools_rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), budget=budget)
    provider = ar.ScriptedProvider(["never"])
    with pytest.raises(ar.BudgetExceededError, match="spent"):
        await tools_rt.run_agent_with_provider("a", "q", provider)
    assert provider.calls == 0


async def test_capabilities_check_the_call_a_middleware_leaves() -> None:
    @ar.tool
    def danger() -> str:
        """Not allowed."""
        return "ran"

    class Rename(ar.Middleware):
        def on_tool_call(self, session: ar.AgentSession, tool: str, args: Any) -> Any:
            return "danger", {}

    caps = ar.CapabilitySet(allowed_tools=["add"])
    rt = ar.AgentRuntime(tools=[add, danger], capabilities=caps, middlewares=[Rename()])
    with pytest.raises(ar.PolicyDeniedError):
        await rt.run_agent("a", "q", react(ADD, FINAL))


def test_an_unknown_approval_action_is_refused() -> None:
    with pytest.raises(ar.AgentRuntimeError, match="'reject'"):
        ar.ApprovalDecision("reject", reason="nope")  # type: ignore[arg-type]


async def test_a_denial_records_the_call_as_the_middleware_left_it() -> None:
    class Rewrite(ar.Middleware):
        def on_tool_call(self, session: ar.AgentSession, tool: str, args: Any) -> Any:
            return tool, {"a": 9, "b": 9}

    def deny(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("deny")

    rt = ar.AgentRuntime(tools=[add], middlewares=[Rewrite()], approval_handler=deny)
    s = await rt.run_agent("a", "q", react(ADD, FINAL))
    assert s.steps[0].action_input == {"a": 9, "b": 9} and s.steps[0].error_kind == "permanent"


async def test_a_remembered_approval_is_asked_once_for_a_parallel_round() -> None:
    asked: list[Any] = []

    async def approve(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        asked.append(args)
        await asyncio.sleep(0.01)
        return ar.ApprovalDecision("approve", remember=True)

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add], approval_handler=approve)
    calls = [("add", {"a": i, "b": 1}) for i in range(4)]
    provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
    s = await rt.run_agent_with_provider("a", "q", provider)
    assert len(asked) == 1 and [st.observation for st in s.steps[:4]] == ["1", "2", "3", "4"]


async def test_a_rewritten_user_message_is_what_the_session_keeps_and_saves() -> None:
    class Redact(ar.Middleware):
        def on_user_message(self, session: ar.AgentSession, text: str) -> str:
            return text.replace("SECRET", "[redacted]")

    backend = ar.InMemoryBackend()
    rt = ar.AgentRuntime(middlewares=[Redact()], checkpoint_backend=backend)
    session = rt.create_session("a")
    infer = react(FINAL, FINAL)
    await rt.run_turn(session, "my pw is SECRET", infer)
    await rt.run_turn(session, "and now?", infer)
    assert "SECRET" not in infer.prompts[1] and "[redacted]" in infer.prompts[1]
    assert all(b"SECRET" not in value for value in backend.data.values())
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert saved.messages == session.messages and len(saved.messages) == 4


async def test_a_models_own_timeout_is_not_reported_as_the_loops() -> None:
    async def times_out(prompt: str) -> str:
        raise TimeoutError("socket read timed out")

    rt = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=60_000))
    with pytest.raises(TimeoutError, match="socket read") as caught:
        await rt.run_agent("a", "q", times_out)
    assert not isinstance(caught.value, ar.AgentLoopError)


async def test_a_reprompt_with_no_iteration_left_is_an_agent_loop_error() -> None:
    config = ar.AgentConfig(corrective_reprompt=True, max_iterations=1)
    with pytest.raises(ar.AgentLoopError, match="not a ReAct step"):
        await ar.AgentRuntime(config).run_agent("a", "q", react("nonsense"))
