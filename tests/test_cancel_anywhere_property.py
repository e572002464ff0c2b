"""A run without checkpoints, cancelled at any await point, leaves the runtime consistent.

The property: a run (ReAct text mode or native tools mode, `run_agent` or `run_turn`) whose
task is cancelled at its N-th point (N drawn) ends with `CancelledError`, promptly, and
leaves:

- a session holding the uninterrupted run's steps up to the round it was cut in, that round
  kept as `run_agent` documents it (one step per call once any call began, saying how each
  call ended: as it did, "the call ended with CancelledError", or "the call did not start"),
  and no final answer; cut in its `on_user_message` hook, the session as it was;
- events that start with `RunStarted`, give every `ToolCallStarted` one `ToolCallFinished`
  (with its step's observation) and end with the cancellation's `ErrorEvent` (that event
  alone when cut before the run started);
- the tokens of the replies the model gave before the cut, charged once, in the metrics and
  the budget, and tool call counters that agree with the steps;
- nothing held: no task of the run pending (once the sync tools' threads, which cannot be
  stopped, are done), no backpressure slot, no failure of a circuit breaker's for a
  cancelled call; a session that runs its next turn (tool calls included) and a runtime
  that runs other agents;
- no tool effect twice, none of a call that did not start, and the effect of a sync tool
  cut mid-way done all the same (it finishes in its thread).

A cut after the run's last point lets it end as the uninterrupted run did; one that lands
while a finished run waits for its async event callbacks stops that wait (as `EventBus.on`
documents), the run done.

The points are counted, not timed: every await of the test's own model, tools, middleware
hooks, approval handler and async event callback (and every step of a sync tool, in its
worker thread) passes through `World.point`, which cancels the run's task at the N-th one
(or at the N-th of a kind).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from probes import native_reply, react_reply

import llm_agent_runtime as ar
from llm_agent_runtime.memory import tokens_of_chars

CUT = "error: the call ended with CancelledError"
NOT_STARTED = "error: the call did not start: its round ended with CancelledError"
SYNC_TOOLS = ("spay", "tpay")  # in a worker thread (tpay: the tool pool, under a timeout)
TOOLS = ("apay", "bpay", "look", *SYNC_TOOLS)  # bpay: behind a circuit breaker
HOOKS = ("user", "pre_llm", "post_llm", "tool_call")
HANG_S = 10.0  # a run that has not ended this long after its cut hangs

# --- the drawn scenario ----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    tool: str
    n: int  # unique in the script: names the call's effect (+1000 once edited)
    pre: int  # points before the effect
    post: int  # and after it
    fails: bool  # the tool raises after its effect
    decision: str  # the approval handler's (when there is one)


@dataclass(frozen=True)
class Scenario:
    mode: str
    entry: str  # "run": run_agent(_with_provider); "turn": run_turn
    parallel: int
    rounds: tuple[tuple[Call, ...], ...]
    model_pauses: tuple[int, ...]  # per model call, the last one answering
    approval: bool
    hooks: frozenset[str]  # the middleware's: user, pre_llm (text mode), post_llm, tool_call
    listener: str
    deadline: bool  # a (generous) loop_timeout_ms: the run goes on under asyncio.timeout

    def round_of(self, n: int) -> int:
        for index, round_ in enumerate(self.rounds):
            if any(call.n == n % 1000 for call in round_):
                return index
        raise AssertionError(n)

    def call(self, n: int) -> Call:
        if n in dict(AGAIN):  # a later run's: plain
            return Call(dict(AGAIN)[n], n, 0, 0, False, "approve")
        for round_ in self.rounds:
            for call in round_:
                if call.n == n % 1000:
                    return call
        raise AssertionError(n)

    def ran_as(self, call: Call) -> int:
        """The `n` the call runs with: the approval handler's edit adds 1000."""
        return call.n + 1000 if self.approval and call.decision == "edit" else call.n


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    mode = draw(st.sampled_from(["react", "tools"]))
    ns = itertools.count(1)
    width = st.integers(1, 3) if mode == "tools" else st.just(1)
    rounds = []
    for _ in range(draw(st.integers(1, 3))):
        rounds.append(
            tuple(
                Call(
                    draw(st.sampled_from(TOOLS)),
                    next(ns),
                    draw(st.integers(0, 2)),
                    draw(st.integers(0, 2)),
                    draw(st.booleans()),
                    draw(st.sampled_from(["approve", "edit", "deny"])),
                )
                for _ in range(draw(width))
            )
        )
    return Scenario(
        mode=mode,
        entry=draw(st.sampled_from(["run", "turn"])),
        parallel=draw(st.integers(1, 3)),
        rounds=tuple(rounds),
        model_pauses=tuple(draw(st.integers(0, 2)) for _ in range(len(rounds) + 1)),
        approval=draw(st.booleans()),
        hooks=frozenset(
            h for h in HOOKS if (mode == "react" or h != "pre_llm") and draw(st.booleans())
        ),
        listener=draw(st.sampled_from(["callback", "async_callback", "subscription"])),
        deadline=draw(st.booleans()),
    )


# --- one world: the tools' effects, the model's replies, the interrupter ----------------------


@dataclass
class World:
    scenario: Scenario
    loop: asyncio.AbstractEventLoop
    lock: threading.Lock = field(default_factory=threading.Lock)
    points: int = 0
    cut_at: int | tuple[str, int] | None = None  # the N-th point, or a kind's N-th
    seen: Counter[str] = field(default_factory=Counter)  # points by kind
    cut: tuple[str, int, str] | None = None  # the point cut at: kind, call n (or reply), stage
    target: asyncio.Task[Any] | None = None
    delivered: threading.Event = field(default_factory=threading.Event)
    effects: list[int] = field(default_factory=list)
    replies: list[tuple[int, int]] = field(default_factory=list)  # usage of replies given
    threads: int = 0  # sync tool calls running in a worker thread
    entered: int = 0  # sync tool calls whose handler started
    # Never opens here: it counts the failures it saw (a cancellation is none).
    breaker: ar.CircuitBreaker = field(
        default_factory=lambda: ar.CircuitBreaker("bpay", failure_threshold=1000)
    )

    def _due(self, kind: str, n: int, stage: str) -> bool:
        with self.lock:  # sync tools count their points from their threads
            self.points += 1
            self.seen[kind] += 1
            due = self.cut_at in (self.points, (kind, self.seen[kind]))
            if not due or self.target is None:
                return False
            self.cut_at, self.cut = None, (kind, n, stage)
            return True

    async def point(self, kind: str, n: int = 0, stage: str = "") -> None:
        if self._due(kind, n, stage):
            assert self.target is not None
            self.target.cancel()
        await asyncio.sleep(0)

    def thread_point(self, n: int, stage: str) -> None:
        if self._due("thread", n, stage):
            self.loop.call_soon_threadsafe(self._cancel_from_thread)
            # The tool goes on once its caller was cancelled: it cannot be stopped.
            self.delivered.wait(HANG_S)

    def _cancel_from_thread(self) -> None:
        assert self.target is not None
        self.target.cancel()
        self.delivered.set()

    def _record(self, n: int) -> None:
        with self.lock:
            self.effects.append(n)

    def _outcome(self, call: Call, n: int) -> str:
        if call.fails:
            raise RuntimeError(f"declined {n}")
        return f"done {n}"

    async def effect(self, n: int) -> str:
        call = self.scenario.call(n)
        for _ in range(call.pre):
            await self.point("tool", n, "pre")
        self._record(n)
        for _ in range(call.post):
            await self.point("tool", n, "post")
        return self._outcome(call, n)

    def effect_in_thread(self, n: int) -> str:
        with self.lock:
            self.threads += 1
            self.entered += 1
        try:
            call = self.scenario.call(n)
            for _ in range(call.pre):
                self.thread_point(n, "pre")
            self._record(n)
            for _ in range(call.post):
                self.thread_point(n, "post")
            return self._outcome(call, n)
        finally:
            with self.lock:
                self.threads -= 1

    async def threads_done(self, started: int) -> None:
        """Waits for the sync tools' threads; `started`: sync calls the run started.

        A call started as the run was cut may reach its worker a moment later (or never):
        a short grace lets such a worker enter the tool, so that it is waited for too.
        """
        deadline = self.loop.time() + HANG_S
        grace = self.entered < started
        while True:
            with self.lock:
                busy = self.threads
            if not busy:
                if not grace:
                    return
                grace = False
                await asyncio.sleep(0.02)
                continue
            assert self.loop.time() < deadline, "a sync tool's thread never ended"
            await asyncio.sleep(0.001)

    def tools(self) -> list[ar.ToolSpec]:
        world = self

        @ar.tool
        async def apay(n: int) -> str:
            """Pays (async)."""
            return await world.effect(n)

        @ar.tool(circuit_breaker=self.breaker)
        async def bpay(n: int) -> str:
            """Pays (async, through a circuit breaker)."""
            return await world.effect(n)

        @ar.tool(idempotent=True, timeout=30)
        async def look(n: int) -> str:
            """Looks a number up (async, safe to repeat, under a timeout)."""
            return await world.effect(n)

        @ar.tool
        def spay(n: int) -> str:
            """Pays (sync: in a worker thread)."""
            return world.effect_in_thread(n)

        @ar.tool(timeout=30)
        def tpay(n: int) -> str:
            """Pays (sync, under a timeout: on the tool pool)."""
            return world.effect_in_thread(n)

        return [apay, bpay, look, spay, tpay]

    async def approve(self, session: Any, tool: str, arguments: Any) -> ar.ApprovalDecision:
        n = arguments["n"]
        await self.point("approval", n)
        decision = self.scenario.call(n).decision
        if decision == "edit":
            return ar.ApprovalDecision("edit", arguments={"n": n + 1000})
        if decision == "deny":
            return ar.ApprovalDecision("deny", reason=f"not {n}")
        return ar.ApprovalDecision("approve")

    def middlewares(self) -> list[ar.Middleware]:
        world, hooks = self, self.scenario.hooks
        if not hooks:
            return []

        class Watch(ar.Middleware):
            pass

        watch = Watch()
        if "user" in hooks:

            async def on_user_message(session: Any, text: str) -> Any:
                await world.point("user")

            watch.on_user_message = on_user_message  # type: ignore[method-assign]
        if "pre_llm" in hooks:

            async def on_pre_llm(session: Any, prompt: str) -> Any:
                await world.point("pre_llm", prompt.count("\nObservation:"))

            watch.on_pre_llm = on_pre_llm  # type: ignore[method-assign]
        if "post_llm" in hooks:

            async def on_post_llm(session: Any, text: str) -> Any:
                await world.point("post_llm", len(world.replies) - 1)

            watch.on_post_llm = on_post_llm  # type: ignore[method-assign]
        if "tool_call" in hooks:

            async def on_tool_call(session: Any, tool: str, arguments: Any) -> Any:
                await world.point("hook", arguments["n"])

            watch.on_tool_call = on_tool_call  # type: ignore[method-assign]
        return [watch]

    def model(self) -> Any:
        rounds, pauses, world = self.scenario.rounds, self.scenario.model_pauses, self
        if self.scenario.mode == "tools":

            class Model(ar.ScriptedProvider):
                async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
                    index = sum(m.role == "assistant" for m in messages)
                    for _ in range(pauses[index]):
                        await world.point("model", index)
                    usage = ar.Usage(100 + index, 10 + index)
                    reply = native_reply(rounds, index, usage)
                    world.replies.append((usage.input_tokens, usage.output_tokens))
                    return reply

            return Model([])

        async def infer(prompt: str) -> str:
            index = prompt.count("\nObservation:")
            for _ in range(pauses[index]):
                await world.point("model", index)
            reply = react_reply(rounds, index)
            # A text model reports no usage: the run charges its estimate.
            world.replies.append((tokens_of_chars(len(prompt)), tokens_of_chars(len(reply))))
            return reply

        return infer


AGAIN = tuple(enumerate(TOOLS, 501))
"""The calls of a later run on the session, one of each tool (each `n` its own)."""


def again_model(mode: str, calls: tuple[tuple[int, str], ...] = AGAIN) -> Any:
    """A later run's model: calls each tool once (in one round in tools mode), answers."""
    if mode == "tools":
        round_ = ar.ChatResponse("", [ar.ToolCall(f"c{n}", t, {"n": n}) for n, t in calls])
        return ar.ScriptedProvider([round_, "again"] if calls else ["again"])

    async def infer(prompt: str) -> str:
        done = prompt.count("\nObservation:")
        if done == len(calls):
            return "Thought: t\nAction: FINAL_ANSWER again"
        n, tool = calls[done]
        return f'Thought: t\nAction: {tool} {{"n": {n}}}'

    return infer


# --- running ---------------------------------------------------------------------------------

StepView = tuple[str, Any, str, "str | None", int, int]


def view(session: ar.AgentSession) -> list[StepView]:
    return [
        (s.action, s.action_input, s.observation, s.error_kind, s.input_tokens, s.output_tokens)
        for s in session.steps
    ]


@dataclass
class Outcome:
    world: World
    ended: str  # "cancelled", "returned", "hung", or the error's repr
    steps: list[StepView]
    step_count: int
    prompt: str
    duration_ms: float
    final: str | None
    messages: list[dict[str, Any]]
    events: list[Any]
    snapshot: ar.MetricsSnapshot
    budget_used: int
    left: list[str]  # tasks still pending once the run ended
    effects: list[int]  # the run's, once its threads ended
    depth: int  # the backpressure guard's holders once the run ended
    breaker: ar.CircuitState
    seen: Counter[str]  # the run's points by kind (not the later runs')
    again: tuple[str | None, list[StepView], list[dict[str, Any]], float] | None = None
    other: str | None = None
    active_after: int = -1


def start(
    runtime: ar.AgentRuntime, scenario: Scenario, session: ar.AgentSession, model: Any
) -> Any:
    if scenario.entry == "turn":
        return runtime.run_turn(session, "q", model)
    if scenario.mode == "tools":
        return runtime.run_agent_with_provider("a", "q", model, session=session)
    return runtime.run_agent("a", "q", model, session=session)


async def attempt(scenario: Scenario, cut_at: int | tuple[str, int] | None) -> Outcome:
    world = World(scenario, asyncio.get_running_loop(), cut_at=cut_at)
    metrics, budget = ar.RuntimeMetrics(), ar.CostBudget(max_tokens=10**9)
    guard = ar.BackpressureGuard(capacity=1)  # a slot left taken sheds every later run
    config = ar.AgentConfig(
        mode=scenario.mode,
        max_parallel_tool_calls=scenario.parallel,
        max_iterations=10,
        loop_timeout_ms=60_000 if scenario.deadline else None,
    )
    runtime = ar.AgentRuntime(
        config,
        tools=world.tools(),
        metrics=metrics,
        budget=budget,
        backpressure=guard,
        approval_handler=world.approve if scenario.approval else None,
        middlewares=world.middlewares(),
    )
    events: list[Any] = []
    subscription = reader = None
    if scenario.listener == "callback":
        runtime.events.on(events.append)
    elif scenario.listener == "async_callback":

        async def record(e: Any) -> None:
            await world.point("callback")  # the run goes on meanwhile: cut where it is then
            events.append(e)

        runtime.events.on(record)
    else:
        subscription = runtime.events.subscribe()

        async def read() -> None:
            assert subscription is not None
            async for e in subscription:
                events.append(e)

        reader = asyncio.ensure_future(read())
    await asyncio.sleep(0)
    own = asyncio.all_tasks()  # this test's (and the reader's)
    session = runtime.create_session("a")
    task = asyncio.ensure_future(start(runtime, scenario, session, world.model()))
    world.target = task
    done, _ = await asyncio.wait({task}, timeout=HANG_S)
    world.target = None
    if not done:
        ended = "hung"
    elif task.cancelled():
        ended = "cancelled"
    elif task.exception() is not None:
        ended = repr(task.exception())
    else:
        ended = "returned"
    for _ in range(5):  # async callbacks of the run's last events
        await asyncio.sleep(0)
    started_sync = sum(isinstance(e, ar.ToolCallStarted) and e.tool in SYNC_TOOLS for e in events)
    await world.threads_done(started_sync)
    for _ in range(5):
        await asyncio.sleep(0)
    left = [repr(t) for t in asyncio.all_tasks() - own]
    outcome = Outcome(
        world,
        ended,
        view(session),
        session.step_count,
        session.prompt,
        session.duration_ms,
        session.final_answer,
        [dict(m) for m in session.messages],
        list(events),
        metrics.snapshot(),
        budget.used_tokens,
        left,
        list(world.effects),
        guard.depth,
        await world.breaker.current_state(),
        Counter(world.seen),
    )
    if ended in ("cancelled", "returned"):
        # The session runs its next turn (it is not left marked running), and the runtime
        # runs another agent's.
        again = again_model(scenario.mode)
        if scenario.entry == "turn":
            answer = await asyncio.wait_for(runtime.run_turn(session, "q2", again), HANG_S)
        elif scenario.mode == "tools":
            run = runtime.run_agent_with_provider("a", "q2", again, session=session)
            answer = (await asyncio.wait_for(run, HANG_S)).final_answer
        else:
            run = runtime.run_agent("a", "q2", again, session=session)
            answer = (await asyncio.wait_for(run, HANG_S)).final_answer
        outcome.again = (
            answer,
            view(session),
            [dict(m) for m in session.messages],
            session.duration_ms,
        )
        other = again_model(scenario.mode, ())
        if scenario.mode == "tools":
            other_run = runtime.run_agent_with_provider("b", "q3", other)
        else:
            other_run = runtime.run_agent("b", "q3", other)
        outcome.other = (await asyncio.wait_for(other_run, HANG_S)).final_answer
        outcome.active_after = metrics.snapshot().active_sessions
    if subscription is not None and reader is not None:
        await subscription.aclose()
        await reader
    return outcome


# --- the property ----------------------------------------------------------------------------


def began(steps: list[StepView]) -> list[StepView]:
    """The tool calls that began (a call that did not start has no event, no metric)."""
    return [s for s in steps if s[0] != "FINAL_ANSWER" and s[2] != NOT_STARTED]


def check(scenario: Scenario, expected: Outcome, got: Outcome) -> None:
    assert expected.ended == "returned" and expected.final == "all done"
    assert got.step_count == len(got.steps)
    assert got.left == [], f"tasks left pending by the run: {got.left}"
    assert got.depth == 0, "the run kept its backpressure slot"
    # The breaker counts the failures it saw, of calls that ended (a cancellation is none).
    declined = sum(s[0] == "bpay" and s[2].startswith("error: declined") for s in got.steps)
    assert got.breaker.status == "closed" and got.breaker.trial_calls == 0, got.breaker
    assert got.breaker.failures <= declined, (got.breaker, got.steps)
    if got.ended == "returned":  # the cut came after the run's end (or never)
        assert got.world.cut is None or got.world.cut[0] == "callback", got.world.cut
        assert got.steps == expected.steps
        assert got.final == "all done"
        assert got.world.replies == expected.world.replies
        assert sorted(got.effects) == sorted(expected.effects)
    else:
        assert got.ended == "cancelled", got.ended
        assert got.world.cut is not None
        check_cut_session(scenario, expected, got)
    check_events(got)
    check_metrics(got)
    # The session and the runtime run again.
    assert got.again is not None
    answer, steps, messages, duration_ms = got.again
    assert answer == "again"
    # The session's runs' time: the cut one's too, unless it never started (cut in its
    # on_user_message hook), which leaves the session as it was.
    never_started = got.world.cut is not None and got.world.cut[0] == "user"
    assert (got.duration_ms == 0) if never_started else (got.duration_ms > 0), got.world.cut
    assert got.duration_ms < duration_ms
    assert steps[: len(got.steps)] == got.steps
    later = steps[len(got.steps) :]
    assert [s[:4] for s in later] == [
        *((t, {"n": n}, f"done {n}", None) for n, t in AGAIN),
        ("FINAL_ANSWER", "again", "", None),
    ]
    assert sorted(got.world.effects) == sorted([*got.effects, *dict(AGAIN)])
    if scenario.entry == "turn":
        assert messages[len(got.messages) :] == [
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "again"},
        ]
    assert got.other == "again"
    assert got.active_after == 0


def check_cut_session(scenario: Scenario, expected: Outcome, got: Outcome) -> None:
    """The steps of whole rounds as the uninterrupted run's, then maybe the round cut in."""
    sizes = [len(r) for r in scenario.rounds] + [1]  # the rounds, then the final answer
    assert len(expected.steps) == sum(sizes)
    first, whole = 0, 0
    while (
        whole < len(sizes)
        and got.steps[first : first + sizes[whole]]
        == (expected.steps[first : first + sizes[whole]])
    ):
        first += sizes[whole]
        whole += 1
    kept = got.steps[first:]
    effects = Counter(got.effects)
    assert all(times == 1 for times in effects.values()), f"an effect twice: {effects}"
    done_before = set(expected.effects)
    for round_ in scenario.rounds[:whole]:
        for call in round_:
            ran = scenario.ran_as(call)
            assert effects[ran] == (ran in done_before), call
    if whole == len(sizes):
        # Finished, then cancelled while it waited for its async callbacks: as documented,
        # that stops the wait; the run is done.
        assert got.final == "all done"
        assert got.world.replies == expected.world.replies
        assert got.world.cut is not None and got.world.cut[0] == "callback", got.world.cut
        return
    assert got.final is None
    kind, n, stage = got.world.cut or ("", 0, "")
    # The run never started when cut in its on_user_message hook: the session is as it was.
    assert got.prompt == ("" if kind == "user" else "q"), got.prompt
    if scenario.entry == "turn":  # a turn that never answered is no turn of the history
        assert got.messages in (
            [],
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
        ), got.messages
    partial = bool(kept)
    if partial:
        assert whole < len(scenario.rounds), kept  # a final answer is never cut
        check_cut_round(scenario, expected, got, first, whole, effects)
    # Each reply the model gave before the cut, its own (prompt included) and charged once.
    replies = got.world.replies
    assert replies == expected.world.replies[: len(replies)]
    assert len(replies) in ((whole + 1,) if partial else (whole, whole + 1)), replies
    later = scenario.rounds[whole + partial :]
    for call in (c for r in later for c in r):
        assert effects[call.n] == effects[call.n + 1000] == 0, call
    # Where the cut landed says more.
    if kind == "user":
        assert (whole, partial, len(replies)) == (0, False, 0)
    elif kind in ("model", "pre_llm"):  # before the n-th reply came
        assert (whole, partial, len(replies)) == (n, False, n)
    elif kind == "post_llm":  # the n-th reply came (and was charged), nothing acted on it
        assert (whole, partial, len(replies)) == (n, False, n + 1)
    elif kind in ("hook", "approval"):  # the round's calls were being guarded: none began
        assert (whole, partial, len(replies)) == (scenario.round_of(n), False, whole + 1)
    elif kind in ("tool", "thread"):
        assert (whole, partial) == (scenario.round_of(n), True)
        calls = scenario.rounds[whole]
        index = [c.n for c in calls].index(n % 1000)
        call, step = calls[index], kept[index]
        assert step[2] == CUT, step
        if kind == "thread":  # a sync tool cannot be stopped: it finished in its thread
            assert effects[scenario.ran_as(call)] == 1, call
        else:
            assert effects[scenario.ran_as(call)] == (stage == "post"), (call, stage)


def check_cut_round(
    scenario: Scenario,
    expected: Outcome,
    got: Outcome,
    first: int,
    cut_round: int,
    effects: Counter[int],
) -> None:
    """The round a tool call was cut in: one step a call, each saying how the call ended."""
    calls = scenario.rounds[cut_round]
    kept = got.steps[first:]
    want = expected.steps[first : first + len(calls)]
    assert len(kept) == len(calls), (kept, want)
    done_before = set(expected.effects)
    for call, step, ref in zip(calls, kept, want, strict=True):
        action, arguments, observation, error_kind, *tokens = step
        assert action == ref[0]
        assert tokens == list(ref[4:]), (step, ref)  # the round's tokens on its first step
        ran = scenario.ran_as(call)
        if observation == NOT_STARTED:
            assert error_kind == "transient"
            assert arguments in (ref[1], {"n": call.n})  # as decided, or as the model asked
            assert effects[ran] == effects[call.n] == 0, f"call {call.n} did not start, yet ran"
        elif observation == CUT:
            assert (arguments, error_kind) == (ref[1], "transient"), step
        else:  # it ended before the cut: as it ended in the uninterrupted run
            assert step == ref, (step, ref)
            assert effects[ran] == (ran in done_before), call
    assert any(s[2] != NOT_STARTED for s in kept), kept  # kept once a call began


def check_events(got: Outcome) -> None:
    events = [e for e in got.events if not isinstance(e, ar.LlmTextDelta)]
    types = [type(e).__name__ for e in events]
    kind = got.world.cut[0] if got.world.cut else ""
    if kind == "user":  # cut before it started: its ErrorEvent alone
        assert types == ["ErrorEvent"], types
        assert isinstance(events[0].error, asyncio.CancelledError), events
        return
    assert types and types[0] == "RunStarted" and types.count("RunStarted") == 1, types
    if got.final is not None:  # it ran to its end
        assert types[-1] == "RunFinished" and types.count("RunFinished") == 1, types
        assert "ErrorEvent" not in types, types
    else:  # its end, as a cancellation: an ErrorEvent, last
        assert "RunFinished" not in types, types
        assert types[-1] == "ErrorEvent" and types.count("ErrorEvent") == 1, types
        assert isinstance(events[-1].error, asyncio.CancelledError), events[-1]
    # Emitted once the on_post_llm hooks are done with the reply.
    responses = {len(got.world.replies)}
    if kind == "post_llm":
        responses = {len(got.world.replies) - 1}
    elif kind == "callback":  # the run was cut wherever it was then: maybe in that hook
        responses.add(len(got.world.replies) - 1)
    assert types.count("LlmResponse") in responses, types
    # A reply's event counts the steps before its round.
    sizes = [len(r) for r in got.world.scenario.rounds]
    steps_before = [e.step for e in events if isinstance(e, ar.LlmResponse)]
    assert steps_before == list(itertools.accumulate([0, *sizes]))[: len(steps_before)]
    starts = {e.step: i for i, e in enumerate(events) if isinstance(e, ar.ToolCallStarted)}
    ends = {e.step: i for i, e in enumerate(events) if isinstance(e, ar.ToolCallFinished)}
    assert types.count("ToolCallStarted") == len(starts), types
    assert types.count("ToolCallFinished") == len(ends), types
    assert set(starts) == set(ends), (starts, ends)  # each start finishes, once
    assert all(starts[step] < ends[step] for step in starts)
    # Numbered as the steps: the events of a step's call are its.
    steps = got.steps
    with_call = {i for i, s in enumerate(steps) if s[0] != "FINAL_ANSWER" and s[2] != NOT_STARTED}
    assert set(starts) == with_call, (starts, steps)
    for e in events:
        if isinstance(e, ar.ToolCallStarted):
            assert (e.tool, e.arguments) == steps[e.step][:2], (e, steps[e.step])
        elif isinstance(e, ar.ToolCallFinished):
            assert (e.tool, e.observation, e.error_kind) == (
                steps[e.step][0],
                *steps[e.step][2:4],
            ), (e, steps[e.step])


def check_metrics(got: Outcome) -> None:
    snap = got.snapshot
    tokens = [sum(t) for t in zip(*got.world.replies, strict=True)] or [0, 0]
    assert [snap.input_tokens, snap.output_tokens] == tokens, got.world.replies
    assert got.budget_used == sum(tokens)
    calls = began(got.steps)
    assert snap.total_steps == len(got.steps)
    assert snap.total_tool_calls == len(calls)
    assert snap.failed_tool_calls == sum(s[3] is not None for s in calls)
    assert {k: v for k, v in snap.tool_calls.items() if v} == Counter(s[0] for s in calls)
    assert snap.active_sessions == 0 and snap.total_sessions == 1


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios(), data=st.data())
def test_a_run_cancelled_anywhere_leaves_a_consistent_runtime(
    scenario: Scenario, data: st.DataObject
) -> None:
    expected = asyncio.run(attempt(scenario, None))
    # Anywhere; or, as often, at a point of each kind (a tool's, a hook's, ...), counted by
    # kind: a sync tool's thread and the async callbacks interleave with the rest by chance.
    anywhere = st.integers(1, expected.seen.total() + 2)
    of_kind = [st.tuples(st.just(k), st.integers(1, n)) for k, n in expected.seen.items()]
    cut_at = data.draw(st.one_of(anywhere, *of_kind), label="cut")
    got = asyncio.run(attempt(scenario, cut_at))
    cut = "after the end" if got.world.cut is None else got.world.cut[0]
    event(f"mode={scenario.mode} cut in: {cut}")  # shown by --hypothesis-show-statistics
    event(f"run ended: {got.ended}, final answer: {got.final is not None}")
    if got.ended == "cancelled" and got.final is None:
        ends = Counter(
            "not started" if s[2] == NOT_STARTED else "cut" if s[2] == CUT else "ended"
            for s in got.steps
        )
        if ends["cut"] or ends["not started"]:
            event(f"round cut: {ends['cut']} cut, {ends['not started']} not started")
    check(scenario, expected, got)
