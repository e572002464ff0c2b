"""A resumed run goes on with the context it started with (system prompt, recalled
memories, working memory), saved with its first step: memories are not recalled again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from probes import RecordingProvider

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore, StepRecord

from .conftest import cut_off

ADD = 'Thought: add\nAction: add {"a": 1, "b": 2}'
DONE = "Thought: done\nAction: FINAL_ANSWER done"
OpenBackend = Callable[..., ar.SqliteBackend]


class Model:
    """A ReAct model that records its prompts; it answers `replies` in turn, then holds."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.prompts: list[str] = []
        self.waiting = asyncio.Event()

    async def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.replies:
            self.waiting.set()
            await asyncio.Event().wait()
        return self.replies.pop(0)


def runtime(
    backend: ar.SqliteBackend, memory: ar.EpisodicStore, system_prompt: str
) -> ar.AgentRuntime:
    @ar.tool
    async def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    working = ar.WorkingMemory(capacity=4)
    working.set("task", f"for {system_prompt}")
    return ar.AgentRuntime(
        ar.AgentConfig(system_prompt=system_prompt, max_iterations=5),
        memory=memory,
        working_memory=working,
        tools=[add],
        checkpoint_backend=backend,
    )


@pytest.mark.parametrize("turn", [False, True])
async def test_a_resumed_run_keeps_its_context_and_recalls_nothing(
    open_backend: OpenBackend, turn: bool
) -> None:
    memory = ar.EpisodicStore()
    memory.add_episode("a", "the vault code is 1234", 0.5)
    first = runtime(open_backend("runs.db"), memory, "You guard the vault.")
    model = Model(ADD)
    session = first.create_session("a")
    if turn:
        run = first.run_turn(session, "open it", model)
    else:
        run = first.run_agent("a", "open it", model, session=session)
    await cut_off(run, "cancel", model.waiting)
    started_with = model.prompts[0].split("Question: open it")[0]
    assert "the vault code is 1234" in started_with and "You guard the vault." in started_with
    assert first.metrics.snapshot().memory_recall_count == 1
    [episode] = memory.episodes("a")
    assert episode.recall_count == 1

    # Meanwhile the memories and the settings changed; a new process resumes the run.
    memory.add_episode("a", "the vault code is now 9999", 0.9)
    resumer = runtime(open_backend("runs.db"), memory, "You are someone else.")
    closing = Model(DONE)
    resumed = await resumer.resume(session.session_id, closing)

    assert resumed.final_answer == "done" and resumed.memory_hits == 1
    [prompt] = closing.prompts
    assert prompt.startswith(started_with)  # the same context, and the question after it
    assert "9999" not in prompt and "someone else" not in prompt
    assert resumer.metrics.snapshot().memory_recall_count == 0
    assert [e.recall_count for e in memory.episodes("a")] == [1, 0]


@pytest.mark.parametrize(
    "start",
    [
        {"context": 3, "memory_hits": 0},
        {"context": "You guard the vault."},
        {"context": "You guard the vault.", "memory_hits": -1},
    ],
)
def test_a_malformed_saved_context_is_a_persistence_error(start: dict[str, object]) -> None:
    step = ar.Step(thought="add", action="add", action_input={"a": 1}, observation="3")
    record = {"step": step.to_dict(), "run_start": {"prompt": "q", "turn": False, "messages": 0}}
    record["run_start"].update(start)  # type: ignore[attr-defined]
    with pytest.raises(ar.PersistenceError, match="'run_start' must be an object"):
        StepRecord.from_dict(record)


class HeldProvider(ar.ScriptedProvider):
    """Records each request's assistant tool calls; holds at its call `hold_at`."""

    def __init__(self, *args: Any, hold_at: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold_at = hold_at
        self.sent_back: list[list[Any]] = []
        self.waiting = asyncio.Event()

    async def chat(self, messages: Any, *args: Any, **kwargs: Any) -> ar.ChatResponse:
        self.sent_back.append([c.arguments for m in messages for c in m.tool_calls or ()])
        if len(self.sent_back) - 1 == self.hold_at:
            self.waiting.set()
            await asyncio.Event().wait()
        return await super().chat(messages, *args, **kwargs)


@pytest.mark.parametrize("arguments", [[], "", None, 0])
async def test_a_resumed_round_sends_back_the_arguments_the_model_sent(
    open_backend: OpenBackend, arguments: Any
) -> None:
    # Arguments that are no object fail the call (a `permanent` observation); the resumed
    # run sent them back to the model as `{}`, which is not what it said.
    @ar.tool
    def echo(text: str = "") -> str:
        """Echoes."""
        return text

    def make() -> ar.AgentRuntime:
        config = ar.AgentConfig(mode="tools", max_iterations=4)
        return ar.AgentRuntime(config, tools=[echo], checkpoint_backend=open_backend("r.db"))

    reply = ar.ChatResponse(
        tool_calls=[ar.ToolCall("c1", "echo", arguments)], stop_reason="tool_calls"
    )
    first = make()
    session = first.create_session("a")
    model = HeldProvider([reply], hold_at=1)
    await cut_off(first.run_turn(session, "q", model), "cancel", model.waiting)
    assert model.sent_back[1] == [arguments]
    closing = HeldProvider(["done"])
    resumed = await make().resume(session.session_id, closing)
    assert resumed.final_answer == "done"
    assert closing.sent_back == [[arguments]]


async def test_a_run_cut_off_before_its_first_step_keeps_its_context(
    open_backend: OpenBackend,
) -> None:
    # Cut off while its first round's tool runs: no step saved, the reply journaled. The
    # context comes from the run's meta record, saved before the first model call.
    release = asyncio.Event()
    started = asyncio.Event()

    @ar.tool(idempotent=True)
    async def lookup(item: str) -> str:
        """Looks an item up."""
        started.set()
        await release.wait()
        return f"{item}: 3"

    def make(system_prompt: str) -> ar.AgentRuntime:
        config = ar.AgentConfig(mode="tools", system_prompt=system_prompt, max_iterations=4)
        backend = open_backend("r.db")
        return ar.AgentRuntime(config, memory=memory, tools=[lookup], checkpoint_backend=backend)

    memory = ar.EpisodicStore()
    memory.add_episode("a", "the vault code is 1234", 0.5)
    first = make("You guard the vault.")
    session = first.create_session("a")
    call = ar.ToolCall("c1", "lookup", {"item": "pen"})
    model = ar.ScriptedProvider([ar.ChatResponse(tool_calls=[call], stop_reason="tool_calls")])
    await cut_off(first.run_turn(session, "price?", model), "cancel", started)

    memory.add_episode("a", "the vault code is now 9999", 0.9)
    release.set()
    resumer = make("You are someone else.")
    closing = RecordingProvider(["done"])
    resumed = await resumer.resume(session.session_id, closing)
    assert resumed.final_answer == "done" and resumed.memory_hits == 1
    [system] = [m.content for m in closing.requests[0] if m.role == "system"]
    assert "You guard the vault." in system and "1234" in system
    assert "9999" not in system and "someone else" not in system
    assert [e.recall_count for e in memory.episodes("a")] == [1, 0]
    assert resumer.metrics.snapshot().memory_recall_count == 0


@pytest.mark.parametrize(
    "start",
    [{"context": 3, "memory_hits": 0}, {"context": "c"}, {"context": "c", "memory_hits": -1}],
)
async def test_a_malformed_context_in_the_meta_record_is_a_persistence_error(
    open_backend: OpenBackend, start: dict[str, Any]
) -> None:
    from llm_agent_runtime.persistence.codec import decode, encode

    backend = open_backend("r.db")
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    session = runtime.create_session("a", "s")
    await runtime.run_turn(session, "q", Model(DONE))
    key = "session:s:meta"
    raw = await backend.load(key)
    assert raw is not None
    meta = decode(raw, key)
    assert isinstance(meta["context"], str) and meta["memory_hits"] == 0
    meta.pop("memory_hits")
    meta.update(start)
    await backend.save(key, encode("meta", meta))
    with pytest.raises(ar.PersistenceError, match="'context' with a count 'memory_hits'"):
        await ar.AgentSession.load_checkpoint(backend, "s")


def vault_runtime(
    backend: ar.SqliteBackend, memory: ar.EpisodicStore, system_prompt: str
) -> ar.AgentRuntime:
    config = ar.AgentConfig(system_prompt=system_prompt, max_iterations=5)
    return ar.AgentRuntime(config, memory=memory, checkpoint_backend=backend)


async def cut_before_its_first_step(
    backend: ar.SqliteBackend,
) -> tuple[ar.EpisodicStore, str]:
    """A run of agent "a" cut off while its first model call is out; then the memories
    change (the resumes that follow must not see them)."""
    memory = ar.EpisodicStore()
    memory.add_episode("a", "the vault code is 1234", 0.5)
    first = vault_runtime(backend, memory, "You guard the vault.")
    session = first.create_session("a")
    model = Model()  # holds at once
    await cut_off(first.run_turn(session, "open it", model), "cancel", model.waiting)
    memory.add_episode("a", "the vault code is now 9999", 0.9)
    return memory, session.session_id


def assert_kept(prompt: str) -> None:
    assert "You guard the vault." in prompt and "1234" in prompt
    assert "9999" not in prompt and "someone else" not in prompt


async def test_a_resume_claimed_and_cut_off_keeps_the_runs_saved_context(
    open_backend: OpenBackend,
) -> None:
    # A resume's claim record (its process died holding it) stands for the meta record when
    # the session is loaded: it keeps the context too.
    _, session_id = await cut_before_its_first_step(open_backend("r.db"))
    store = CheckpointStore(open_backend("r.db"))
    state = await store.load(session_id)
    assert state.start is not None and "1234" in state.start["context"]
    await store.claim_resumed(state)
    assert (await CheckpointStore(open_backend("r.db")).load(session_id)).start == state.start


@pytest.mark.parametrize("steps_before", [0, 1])
async def test_a_fork_at_a_runs_start_keeps_its_context(
    open_backend: OpenBackend, steps_before: int
) -> None:
    if steps_before:  # a run with a step, forked at its start
        memory = ar.EpisodicStore()
        memory.add_episode("a", "the vault code is 1234", 0.5)
        first = vault_runtime(open_backend("r.db"), memory, "You guard the vault.")
        session = first.create_session("a")
        await first.run_turn(session, "open it", Model(ADD, DONE))
        memory.add_episode("a", "the vault code is now 9999", 0.9)
        session_id = session.session_id
    else:  # a run cut off before its first step
        memory, session_id = await cut_before_its_first_step(open_backend("r.db"))
    resumer = vault_runtime(open_backend("r.db"), memory, "You are someone else.")
    fork = await resumer.fork(session_id, 0)
    closing = Model(DONE)
    resumed = await resumer.resume(fork, closing)
    assert resumed.final_answer == "done" and resumed.memory_hits == 1
    assert_kept(closing.prompts[0])
    assert [e.recall_count for e in memory.episodes("a")] == [1, 0]


async def test_a_loaded_interrupted_run_counts_the_memories_its_context_shows(
    open_backend: OpenBackend,
) -> None:
    _, session_id = await cut_before_its_first_step(open_backend("r.db"))
    loaded = await ar.AgentSession.load_checkpoint(open_backend("r.db"), session_id)
    assert loaded.memory_hits == 1


async def test_a_listener_failing_on_run_started_leaves_the_memories_counted(
    open_backend: OpenBackend,
) -> None:
    memory = ar.EpisodicStore()
    memory.add_episode("a", "the vault code is 1234", 0.5)
    runtime = vault_runtime(open_backend("r.db"), memory, "You guard the vault.")

    def fails(event: object) -> None:
        if isinstance(event, ar.RunStarted):
            raise RuntimeError("listener down")

    runtime.events.on(fails)
    with pytest.raises(RuntimeError, match="listener down"):
        await runtime.run_agent("a", "open it", Model(DONE))
    assert [e.recall_count for e in memory.episodes("a")] == [1]
    assert runtime.metrics.snapshot().memory_recall_count == 1


async def test_a_new_session_refused_before_it_starts_saves_nothing(
    open_backend: OpenBackend,
) -> None:
    class Refuses(ar.Middleware):
        def on_user_message(self, session: ar.AgentSession, text: str) -> str:
            raise ValueError("refused")

    backend = open_backend("r.db")
    runtime = ar.AgentRuntime(checkpoint_backend=backend, middlewares=[Refuses()])
    with pytest.raises(ValueError, match="refused"):
        await runtime.run_agent("a", "q", Model(DONE))
    assert await backend.list_keys("") == []
