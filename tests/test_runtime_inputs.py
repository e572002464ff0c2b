"""What a run takes from the application's own parts (a config changed after validation, a
custom provider, memory store or graph) is checked: a typed error naming the part, never a
bare TypeError, a hang, or a session its own loader refuses."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydantic
import pytest
from test_runtime import add, react

import llm_agent_runtime as ar
import llm_agent_runtime.runtime as runtime_module
from llm_agent_runtime.providers.base import ChatResponse, ToolCall, Usage

FINAL = "Thought: done\nAction: FINAL_ANSWER ok"


@pytest.fixture(autouse=True)
def _quiet_failed_runs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="llm_agent_runtime")


async def final(prompt: str) -> str:
    return FINAL


def assert_loads_back(session: ar.AgentSession) -> None:
    assert ar.AgentSession.from_json(session.to_json()).to_dict() == session.to_dict()


# ------------------------------------------------------------------ the config
@pytest.mark.parametrize(
    ("update", "named"),
    [
        ({"max_parallel_tool_calls": 0}, "max_parallel_tool_calls"),
        ({"max_iterations": "3"}, "max_iterations"),
        ({"mode": "tool"}, "mode"),
        ({"bogus": 1}, "bogus"),
        ({"model_params": {"messages": []}}, "model_params"),
    ],
)
def test_a_config_copied_past_validation_is_refused_at_construction(
    update: dict[str, Any], named: str
) -> None:
    config = ar.AgentConfig(mode="tools").model_copy(update=update)  # no validation here
    with pytest.raises(ar.AgentRuntimeError, match=f"(?s)not a valid AgentConfig.*{named}"):
        ar.AgentRuntime(config)


def test_a_stop_sequence_emptied_in_place_is_refused_at_construction() -> None:
    config = ar.AgentConfig(stop_sequences=["x"])
    config.stop_sequences.append("")  # the model is frozen, its list is not
    with pytest.raises(ar.AgentRuntimeError, match="stop_sequences"):
        ar.AgentRuntime(config)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("model", r"cannot set \['model'\]"),
        ("messages", r"cannot set \['messages'\]"),
        (3, "keys must be strings, got 3"),
    ],
)
async def test_model_params_changed_in_place_are_checked_when_a_run_reads_them(
    key: Any, message: str
) -> None:
    config = ar.AgentConfig(mode="tools", model="m", model_params={"temperature": 0.0})
    rt = ar.AgentRuntime(config)
    config.model_params[key] = "other"
    with pytest.raises(ar.AgentRuntimeError, match=f"config.model_params {message}"):
        await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider(["done"]))
    react = ar.AgentRuntime(ar.AgentConfig(model_params={"temperature": 0.0}))
    react.config.model_params[key] = "other"
    with pytest.raises(ar.AgentRuntimeError, match=message):
        await react.run_agent_with_provider("a", "q", ar.ScriptedProvider([FINAL]))
    assert not rt._running and not react._running


def test_a_valid_config_is_kept_as_given() -> None:
    config = ar.AgentConfig(max_iterations=5, model_params={"temperature": 0.5})
    assert ar.AgentRuntime(config).config is config


# ------------------------------------------------------------------ a custom provider
class OneRound:
    """A custom provider: one reply with the calls `calls()` builds, then a final answer."""

    def __init__(self, calls: Any) -> None:
        self.calls = calls
        self.n = 0

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> ChatResponse:
        self.n += 1
        if self.n == 1:
            return ChatResponse(text="", tool_calls=self.calls(), usage=Usage(1, 1))
        return ChatResponse(text="done", usage=Usage(1, 1))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ToolCall("c1", None, {}), "ToolCall.name must be a str, got None"),
        (lambda: ToolCall("c1", ["add"], {}), "ToolCall.name must be a str, got list"),
        (lambda: ToolCall(None, "add", {}), "ToolCall.id must be a str, got None"),
        (
            lambda: ChatResponse(tool_calls=[{"id": "c1", "name": "add"}]),
            r"ChatResponse.tool_calls\[0\] must be a ToolCall, got dict",
        ),
        (
            lambda: ChatResponse(tool_calls="add"),
            "ChatResponse.tool_calls must be a list of ToolCall, got str",
        ),
        (lambda: ChatResponse(usage=None), "ChatResponse.usage must be a Usage, got None"),
        # OpenAI's "content": null read as is: a ScriptedProvider failed on len(None).
        (lambda: ChatResponse(text=None), r"ChatResponse.text must be a str \(\"\" for"),
        (lambda: ChatResponse(text=b"hi"), "ChatResponse.text must be a str .* got bytes"),
        (lambda: Usage(1.5, 2), "Usage.input_tokens must be an int, got 1.5"),
        (lambda: Usage(3, True), "Usage.output_tokens must be an int, got True"),
        (lambda: Usage(3, 2, "1"), "Usage.cached_input_tokens must be an int, got '1'"),
    ],
)
def test_what_a_run_keeps_of_a_reply_is_checked_when_it_is_built(build: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        build()


async def test_a_custom_providers_malformed_call_fails_where_it_is_built() -> None:
    backend = ar.InMemoryBackend()
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add], checkpoint_backend=backend)
    session = rt.create_session("a")
    with pytest.raises(TypeError, match=r"ToolCall\.name must be a str"):
        await rt.run_agent_with_provider(
            "a", "q", OneRound(lambda: [ToolCall("c1", None, {})]), session=session
        )
    assert session.steps == [] and not rt._running
    loaded = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert loaded is not None and loaded.steps == []
    ok = await rt.run_agent_with_provider(
        "a", "q", OneRound(lambda: [ToolCall("c", "add", {"a": 1, "b": 1})])
    )
    assert ok.final_answer == "done" and rt.metrics.snapshot().active_sessions == 0


async def test_a_tuple_of_calls_is_taken() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add])
    calls = (ToolCall("c1", "add", {"a": 1, "b": 2}), ToolCall("c2", "add", {"a": 3, "b": 4}))
    session = await rt.run_agent_with_provider("a", "q", OneRound(lambda: calls))
    assert [s.observation for s in session.steps[:2]] == ["3", "7"]
    assert session.final_answer == "done"


def test_integer_counts_of_any_integer_type_are_kept_as_ints() -> None:
    usage = Usage(np.int64(7), np.uint16(2), np.int32(1), 0, 0)  # type: ignore[arg-type]
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) == (7, 2, 1)
    assert {type(usage.input_tokens), type(usage.output_tokens)} == {int}


@pytest.mark.parametrize("mode", ["tools", "react"])
async def test_numpy_token_counts_reach_steps_and_checkpoints_as_ints(mode: str) -> None:
    class Replies:
        async def chat(self, messages: Any, tools: Any = None, **params: Any) -> ChatResponse:
            return ChatResponse(text=FINAL, usage=Usage(np.int64(7), np.int64(2)))  # type: ignore[arg-type]

    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode))  # type: ignore[arg-type]
    session = await rt.run_agent_with_provider("a", "q", Replies())
    step = session.steps[0]
    assert (step.input_tokens, step.output_tokens) == (7, 2)
    assert (rt.metrics.snapshot().input_tokens, rt.metrics.snapshot().output_tokens) == (7, 2)
    assert_loads_back(session)


# ------------------------------------------------------------------ a custom memory store
class Episode:
    def __init__(self, content: Any) -> None:
        self.content = content


class Store:
    """A memory store that returns what it was given, whatever the limit."""

    def __init__(self, recalled: Any) -> None:
        self.recalled = recalled

    def recall(self, agent_id: str, limit: int) -> Any:
        return self.recalled() if callable(self.recalled) else self.recalled


def ten() -> Iterator[Episode]:
    return (Episode(f"memory {i}") for i in range(10))


@pytest.mark.parametrize("recalled", [[Episode(f"memory {i}") for i in range(10)], ten])
async def test_a_store_that_returns_more_than_the_limit_is_cut_to_it(recalled: Any) -> None:
    prompts: list[str] = []

    async def infer(prompt: str) -> str:
        prompts.append(prompt)
        return FINAL

    config = ar.AgentConfig(max_memory_recalls=2)
    rt = ar.AgentRuntime(config, memory=Store(recalled))
    session = await rt.run_agent("a", "q", infer)
    assert session.memory_hits == 2
    assert "memory 1" in prompts[0] and "memory 2" not in prompts[0]


@pytest.mark.parametrize(
    ("recalled", "message"),
    [
        (None, "Store.recall must return a list of episodes, got None"),
        (["text"], "Store.recall returned an episode without a string content: str"),
        ([Episode(3)], "Store.recall returned an episode without a string content: Episode"),
        # Bytes have a `strip` too: not text all the same.
        ([Episode(b"bytes memory")], "Store.recall returned an episode without a string"),
        ([Episode("text"), Episode(b" ")], "Store.recall returned an episode without a string"),
    ],
)
async def test_a_store_that_returns_no_episodes_is_named(recalled: Any, message: str) -> None:
    rt = ar.AgentRuntime(memory=Store(recalled))
    with pytest.raises(ar.AgentRuntimeError, match=message):
        await rt.run_agent("a", "q", final)
    assert not rt._running and rt.metrics.snapshot().active_sessions == 0


@pytest.mark.parametrize(("block", "kind"), [({"user": "bob"}, "dict"), (["user: bob"], "list")])
async def test_a_working_memory_whose_block_is_no_string_is_named(block: Any, kind: str) -> None:
    class Scratchpad:
        def to_prompt(self) -> Any:
            return block

    rt = ar.AgentRuntime(working_memory=Scratchpad())
    message = f"working memory Scratchpad.to_prompt must return a string, got {kind}"
    with pytest.raises(ar.AgentRuntimeError, match=message):
        await rt.run_agent("a", "q", final)
    assert not rt._running and rt.metrics.snapshot().active_sessions == 0


# ------------------------------------------------------------------ a custom graph
class Graph:
    def __init__(self, count: Any) -> None:
        self.count = count

    def entity_count(self) -> Any:
        return self.count


async def test_a_numpy_entity_count_is_kept_as_an_int() -> None:
    backend = ar.InMemoryBackend()
    rt = ar.AgentRuntime(graph=Graph(np.int64(3)), checkpoint_backend=backend)
    session = await rt.run_agent("a", "q", final)
    assert session.graph_entity_count == 3 and type(session.graph_entity_count) is int
    assert_loads_back(session)
    loaded = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert loaded is not None and loaded.graph_entity_count == 3


@pytest.mark.parametrize("count", [True, 2.0, -1, "3", None])
async def test_an_entity_count_that_is_no_count_is_named(count: Any) -> None:
    rt = ar.AgentRuntime(graph=Graph(count))
    with pytest.raises(ar.AgentRuntimeError, match=r"graph Graph.entity_count\(\) must return"):
        await rt.run_agent("a", "q", final)


# ------------------------------------------------------------------ sessions
@pytest.mark.parametrize(
    ("agent_id", "session_id", "message"),
    [
        ("a", 7, "session_id must be None or a string, got int"),
        ("", None, "agent_id must be a non-empty string"),
        (None, None, "agent_id must be a non-empty string"),
    ],
)
def test_create_session_refuses_ids_a_session_cannot_keep(
    agent_id: Any, session_id: Any, message: str
) -> None:
    with pytest.raises(ar.AgentRuntimeError, match=message):
        ar.AgentRuntime().create_session(agent_id, session_id)


def test_create_session_keeps_a_given_id_and_makes_fresh_ones() -> None:
    rt = ar.AgentRuntime()
    assert rt.create_session("a", "mine").session_id == "mine"
    assert rt.create_session("a").session_id != rt.create_session("a").session_id
    assert rt.create_session("a", "").session_id  # as None: a header that was absent


def test_a_config_subclass_is_validated_by_its_own_fields() -> None:
    class TenantConfig(ar.AgentConfig):
        tenant: str = "acme"

    config = TenantConfig(tenant="other")
    assert ar.AgentRuntime(config).config is config
    broken = config.model_copy(update={"tenant": 3})
    with pytest.raises(ar.AgentRuntimeError, match="tenant"):
        ar.AgentRuntime(broken)

    class AliasedConfig(ar.AgentConfig):
        tenant: str = pydantic.Field(alias="tenantId")

    aliased = AliasedConfig(tenantId="t1")  # built by its alias
    assert ar.AgentRuntime(aliased).config is aliased


async def test_to_dict_of_an_uncopyable_argument_is_a_persistence_error() -> None:
    session = await ar.AgentRuntime().run_agent("a", "q", final)
    session.steps[0].action_input = {"lock": threading.Lock()}
    with pytest.raises(ar.PersistenceError, match="cannot be copied"):
        session.to_dict()
    with pytest.raises(ar.PersistenceError, match="cannot be copied"):
        session.to_json()


# ------------------------------------------------------------------ a tool name made up
@pytest.mark.parametrize("mode", ["tools", "react"])
async def test_a_made_up_tool_name_is_not_found_under_capabilities_and_approvals(
    mode: str,
) -> None:
    asked: list[str] = []

    def approve(session: Any, name: str, arguments: Any) -> ar.ApprovalDecision:
        asked.append(name)
        return ar.ApprovalDecision("approve")

    capabilities = ar.CapabilitySet(allowed_tools=["add"], max_actions=1)
    rt = ar.AgentRuntime(
        ar.AgentConfig(mode=mode),  # type: ignore[arg-type]
        tools=[add],
        capabilities=capabilities,
        approval_handler=approve,
    )
    if mode == "tools":
        provider: Any = ar.ScriptedProvider(
            [
                ar.ScriptedProvider.tool_call_reply([("dda", {"a": 1, "b": 2})]),
                ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})]),
                "done",
            ]
        )
    else:
        provider = ar.ScriptedProvider(
            [
                'Thought: t\nAction: dda {"a": 1, "b": 2}',
                'Thought: t\nAction: add {"a": 1, "b": 2}',
                "Thought: d\nAction: FINAL_ANSWER done",
            ]
        )
    session = await rt.run_agent_with_provider("a", "q", provider)
    assert [s.error_kind for s in session.steps[:2]] == ["not_found", None]
    assert session.steps[1].observation == "3"
    assert asked == ["add"] and capabilities.actions_taken == 1


async def test_a_registered_tool_outside_the_capabilities_is_still_refused() -> None:
    rt = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=[add],
        capabilities=ar.CapabilitySet(allowed_tools=["other"]),
    )
    call = ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})])
    with pytest.raises(ar.PolicyDeniedError, match="'add' is not in this agent's capabilities"):
        await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([call, "done"]))


def test_an_edit_approval_needs_arguments() -> None:
    with pytest.raises(ar.AgentRuntimeError, match="'edit' approval needs the arguments"):
        ar.ApprovalDecision("edit")
    assert ar.ApprovalDecision("edit", arguments={}).arguments == {}


@pytest.mark.parametrize("remember", ["no", "false", 0, 1, None])
def test_an_approval_remembers_only_for_a_bool(remember: object) -> None:
    # "no" would read as true: a denial remembered for the rest of the session.
    with pytest.raises(ar.AgentRuntimeError, match="remember must be True or False"):
        ar.ApprovalDecision("deny", remember=remember)  # type: ignore[arg-type]
    assert ar.ApprovalDecision("deny", remember=True).remember is True


async def test_remembered_approvals_are_kept_for_the_latest_sessions_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime_module, "REMEMBERED_APPROVAL_SESSIONS", 3)
    asked: list[str] = []

    def approve(session: Any, name: str, arguments: Any) -> ar.ApprovalDecision:
        asked.append(session.session_id)
        return ar.ApprovalDecision("approve", remember=True)

    rt = ar.AgentRuntime(tools=[add], approval_handler=approve)
    adds = ['Thought: t\nAction: add {"a": 1, "b": 2}', FINAL]
    sessions = [rt.create_session("a", f"s{i}") for i in range(5)]
    for session in sessions:
        await rt.run_agent("a", "q", react(*adds), session=session)
    assert list(rt._approvals) == ["s2", "s3", "s4"]
    assert rt._approval_locks == {}  # a run's locks end with it
    await rt.run_agent("a", "q", react(*adds), session=sessions[2])  # remembered
    assert asked == ["s0", "s1", "s2", "s3", "s4"]
    assert list(rt._approvals) == ["s3", "s4", "s2"]  # the latest run last
    await rt.run_agent("a", "q", react(*adds), session=sessions[0])  # forgotten: asked
    assert asked[-1] == "s0" and list(rt._approvals) == ["s4", "s2", "s0"]


async def test_at_the_cap_a_run_reads_only_the_oldest_remembered_sessions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each run's end copied every remembered session id (10,000 of them at the cap, where a
    # service with a session a user stays): about 50 us a run.
    monkeypatch.setattr(runtime_module, "REMEMBERED_APPROVAL_SESSIONS", 50)

    class Counted(dict[str, Any]):
        read = 0

        def __iter__(self) -> Any:
            for key in super().__iter__():
                self.read += 1
                yield key

    rt = ar.AgentRuntime(
        tools=[add], approval_handler=lambda s, n, a: ar.ApprovalDecision("approve", remember=True)
    )
    adds = ['Thought: t\nAction: add {"a": 1, "b": 2}', FINAL]
    blocked, release = asyncio.Event(), asyncio.Event()

    async def held(prompt: str) -> str:  # the oldest session's run goes on meanwhile
        blocked.set()
        await release.wait()
        return FINAL

    oldest = rt.create_session("a", "oldest")
    await rt.run_agent("a", "q", react(*adds), session=oldest)
    running = asyncio.ensure_future(rt.run_agent("a", "q", held, session=oldest))
    await blocked.wait()
    for i in range(49):
        await rt.run_agent("a", "q", react(*adds), session=rt.create_session("a", f"s{i}"))
    rt._approvals = Counted(rt._approvals)
    for i in range(49, 60):
        await rt.run_agent("a", "q", react(*adds), session=rt.create_session("a", f"s{i}"))
    assert rt._approvals.read <= 11 * 3  # a few of the oldest a run, not all fifty-one
    # The running session is the oldest: passed over, the idle ones after it forgotten.
    assert list(rt._approvals)[:2] == ["oldest", "s11"] and len(rt._approvals) == 50
    release.set()
    await running
    assert list(rt._approvals)[-1] == "oldest"


async def test_a_running_session_that_remembers_nothing_takes_no_remembered_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every session that asked held an entry, so a run in progress that remembered nothing
    # took one of the places, and an idle session's remembered decisions went instead.
    monkeypatch.setattr(runtime_module, "REMEMBERED_APPROVAL_SESSIONS", 2)
    asked: list[str] = []
    waiting, release = asyncio.Event(), asyncio.Event()

    async def approve(session: Any, name: str, arguments: Any) -> ar.ApprovalDecision:
        asked.append(session.session_id)
        if session.session_id == "c":  # a run in progress, its question not remembered
            waiting.set()
            await release.wait()
            return ar.ApprovalDecision("approve")
        return ar.ApprovalDecision("approve", remember=True)

    rt = ar.AgentRuntime(tools=[add], approval_handler=approve)
    adds = ['Thought: t\nAction: add {"a": 1, "b": 2}', FINAL]
    a, b, c, d = (rt.create_session("x", name) for name in "abcd")
    for session in (a, b):
        await rt.run_agent("x", "q", react(*adds), session=session)
    running = asyncio.ensure_future(rt.run_agent("x", "q", react(*adds), session=c))
    await waiting.wait()
    await rt.run_agent("x", "q", react(*adds), session=d)
    release.set()
    await running
    await rt.run_agent("x", "q", react(*adds), session=b)  # remembered: not asked
    assert asked == ["a", "b", "c", "d"]


@pytest.mark.parametrize("approving", [False, True])
async def test_a_tool_registered_while_its_round_waits_is_still_not_found(
    approving: bool,
) -> None:
    """Guarded as unknown, a call is never run unchecked by a later registration."""
    ran: list[str] = []

    @ar.tool
    async def search(q: str) -> str:
        """Searches."""
        await asyncio.sleep(0.01)  # meanwhile the application registers `wipe`
        rt.tools.register(wipe)
        return "found"

    @ar.tool
    def wipe(path: str) -> str:
        """Wipes."""
        ran.append(path)
        return "wiped"

    def approve(session: Any, name: str, arguments: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("approve" if name == "search" else "deny")

    rt = ar.AgentRuntime(
        ar.AgentConfig(mode="tools", max_parallel_tool_calls=1),
        tools=[search],
        capabilities=ar.CapabilitySet(allowed_tools=["search"]),
        approval_handler=approve if approving else None,
    )
    round_ = ar.ScriptedProvider.tool_call_reply(
        [("search", {"q": "x"}), ("wipe", {"path": "/data"})]
    )
    session = await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([round_, "done"]))
    assert ran == []
    assert [s.error_kind for s in session.steps[:2]] == [None, "not_found"]
    snapshot = rt.metrics.snapshot()
    assert "wipe" not in snapshot.tool_calls  # never reached, whatever it is called now
    assert snapshot.tool_failures.get("(unknown tool)") == 1


def test_a_journaled_call_without_an_id_gets_one() -> None:
    calls = runtime_module._journaled_calls(
        [{"id": None, "name": "add", "arguments": {"a": 1}}, {"id": "c9", "name": "add"}]
    )
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("call_0", "add", {"a": 1}),
        ("c9", "add", {}),
    ]
    with pytest.raises(ar.PersistenceError, match="journaled tool call 0 has no name"):
        runtime_module._journaled_calls([{"id": "c", "name": None}])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "not JSON compliant"),
        (float("inf"), "not JSON compliant"),
        ({1, 2}, "set is not JSON serializable"),
        ({(1, 2): 3}, "keys must be str"),
    ],
)
async def test_model_params_values_must_be_json_data(value: Any, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"model_params\['p'\] is not JSON data"):
        ar.AgentConfig(model_params={"p": value})
    config = ar.AgentConfig(mode="tools", model_params={"p": 0.5})
    rt = ar.AgentRuntime(config)
    config.model_params["p"] = value  # changed in place: checked when a run reads it
    with pytest.raises(ar.AgentRuntimeError, match=message):
        await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider(["done"]))


# ------------------------------------------------------------------ providers and sessions
@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_provider_class_given_for_an_instance_is_refused_before_the_run(mode: str) -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode))  # type: ignore[arg-type]
    provider: Any = ar.ScriptedProvider
    with pytest.raises(ar.AgentRuntimeError, match="must be an instance, got the class"):
        await rt.run_agent_with_provider("a", "q", provider)
    with pytest.raises(ar.AgentRuntimeError, match="must be an instance, got the class"):
        await rt.run_turn(rt.create_session("a"), "q", provider)
    assert rt.metrics.snapshot().total_sessions == 0  # no run started


async def test_a_provider_that_is_callable_too_is_asked_through_its_chat() -> None:
    class ChatOnly:
        """A provider with `chat` alone (no `complete`, no streams), callable for another use."""

        def __init__(self, reply: str) -> None:
            self.scripted = ar.ScriptedProvider([reply])

        async def chat(self, *args: Any, **kwargs: Any) -> ChatResponse:
            return await self.scripted.chat(*args, **kwargs)

        async def __call__(self, prompt: str) -> str:
            return "not a ReAct step"

    for mode in ("react", "tools"):
        rt = ar.AgentRuntime(ar.AgentConfig(mode=mode))
        provider: Any = ChatOnly(FINAL if mode == "react" else "ok")
        assert await rt.run_turn(rt.create_session("a"), "q", provider) == "ok"


@pytest.mark.parametrize("messages", [(), None, {"role": "user"}])
async def test_session_messages_that_are_no_list_are_refused_before_the_model_is_asked(
    messages: Any,
) -> None:
    asked: list[str] = []

    async def model(prompt: str) -> str:
        asked.append(prompt)
        return FINAL

    rt = ar.AgentRuntime()
    session = rt.create_session("a")
    session.messages = messages
    with pytest.raises(ar.AgentRuntimeError, match=r"session\.messages must be a list"):
        await rt.run_turn(session, "q", model)
    assert asked == [] and session.final_answer is None and session.steps == []


@pytest.mark.parametrize("mode", ["react", "tools"])
@pytest.mark.parametrize("checkpoints", [False, True])
async def test_a_hook_leaving_session_messages_no_list_is_refused_before_the_model_is_asked(
    mode: str, checkpoints: bool
) -> None:
    # A hook may summarise the chat (it rewrites `session.messages`); the answered turn is
    # appended to it, so a tuple would fail only after the model was paid.
    class Summarise(ar.Middleware):
        def on_user_message(self, session: ar.AgentSession, text: str) -> None:
            session.messages = tuple(session.messages[-2:])  # type: ignore[assignment]

    provider = ar.ScriptedProvider([FINAL if mode == "react" else "ok"])
    backend = ar.InMemoryBackend() if checkpoints else None
    config = ar.AgentConfig(mode=mode)  # type: ignore[arg-type]
    rt = ar.AgentRuntime(config, middlewares=[Summarise()], checkpoint_backend=backend)
    session = rt.create_session("a", "s")
    session.messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(
        ar.AgentRuntimeError,
        match=r"session\.messages must be a list of messages \(as an on_user_message hook left "
        r"it\), got tuple",
    ):
        await rt.run_turn(session, "q", provider)
    assert provider.calls == 0 and session.final_answer is None and session.steps == []
    if backend is not None:
        assert await backend.list_keys("session:s") == []


@pytest.mark.parametrize("mode", ["react", "tools"])
@pytest.mark.parametrize("hook", ["on_pre_llm", "on_post_llm"])
async def test_a_step_hook_leaving_session_messages_no_list_fails_the_turn_with_a_clear_error(
    mode: str, hook: str
) -> None:
    # The answered turn is appended to the history: a tuple failed with a bare AttributeError
    # once the model was paid, and left the answer set without its turn in the history.
    def summarise(self: ar.Middleware, session: ar.AgentSession, text: str) -> None:
        session.messages = tuple(session.messages)  # type: ignore[assignment]

    middleware = type("Summarise", (ar.Middleware,), {hook: summarise})()
    tool_step = 'Thought: t\nAction: add {"a": 1, "b": 2}'
    replies: list[Any] = [tool_step, FINAL]
    if mode == "tools":
        replies = [ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})]), "ok"]
    provider = ar.ScriptedProvider(replies)
    config = ar.AgentConfig(mode=mode)  # type: ignore[arg-type]
    rt = ar.AgentRuntime(config, tools=[add], middlewares=[middleware])
    session = rt.create_session("a")
    if mode == "tools" and hook == "on_pre_llm":  # a text prompt's hook: tools mode has none
        assert await rt.run_turn(session, "q", provider) == "ok"
        return
    with pytest.raises(
        ar.AgentRuntimeError,
        match=rf"session\.messages must be a list of messages \(as an {hook} hook left it\)",
    ):
        await rt.run_turn(session, "q", provider)
    # Before the model is asked (a prompt's hook), or before the reply's tool runs.
    assert provider.calls == (0 if hook == "on_pre_llm" else 1)
    assert session.steps == [] and session.final_answer is None


async def test_a_listener_leaving_session_messages_no_list_leaves_no_answer_without_its_turn() -> (
    None
):
    rt = ar.AgentRuntime(tools=[add])
    session = rt.create_session("a")

    def replace(event: Any) -> None:
        if isinstance(event, ar.ToolCallFinished):
            session.messages = tuple(session.messages)  # type: ignore[assignment]

    rt.events.on(replace)
    provider = ar.ScriptedProvider(['Thought: t\nAction: add {"a": 1, "b": 2}', FINAL])
    with pytest.raises(
        ar.AgentRuntimeError,
        match=r"session\.messages must be a list of messages \(as the run's tools or listeners",
    ):
        await rt.run_turn(session, "q", provider)
    assert provider.calls == 2 and session.final_answer is None


@pytest.mark.parametrize("arguments", [{(1, 2): 3}, "loop"])
async def test_history_tool_call_arguments_that_are_not_json_data_are_named(
    arguments: Any,
) -> None:
    if arguments == "loop":
        arguments = {}
        arguments["self"] = arguments
    call = {"id": "c1", "name": "add", "arguments": arguments}
    rt = ar.AgentRuntime(tools=[add])
    session = rt.create_session("a")
    session.messages = [
        {"role": "user", "content": "add"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "3", "tool_call_id": "c1", "name": "add"},
    ]
    with pytest.raises(ar.AgentRuntimeError, match="session message 2: a tool call's arguments"):
        await rt.run_turn(session, "q", final)


async def test_a_session_runs_one_turn_at_a_time_across_runtimes() -> None:
    release = asyncio.Event()

    async def slow(prompt: str) -> str:
        await release.wait()
        return FINAL

    first, second = ar.AgentRuntime(), ar.AgentRuntime()
    session = first.create_session("a")
    running = asyncio.create_task(first.run_turn(session, "one", slow))
    await asyncio.sleep(0)
    with pytest.raises(ar.AgentRuntimeError, match="already running a turn"):
        await second.run_turn(session, "two", final)
    release.set()
    assert await running == "ok"
    assert await second.run_turn(session, "two", final) == "ok"  # free once it ended
    assert [m["content"] for m in session.messages] == ["one", "ok", "two", "ok"]
    # A run the other runtime's backpressure sheds leaves the session free too.
    shedding = ar.AgentRuntime(backpressure=ar.BackpressureGuard(capacity=1))
    assert shedding.backpressure is not None
    shedding.backpressure.acquire()
    with pytest.raises(ar.BackpressureShedError):
        await shedding.run_turn(session, "three", final)
    assert await first.run_turn(session, "three", final) == "ok"
    assert not runtime_module._SESSIONS_RUNNING


async def test_one_runtime_on_two_threads_runs_a_session_one_turn_at_a_time() -> None:
    # The first run waits in its guard's acquire (as a shared counter's may) while another
    # thread starts a turn of the same session with the same runtime: that one is refused,
    # and the first still ends cleanly once let go.
    in_acquire, let_go = threading.Event(), threading.Event()

    class WaitingGuard:
        def acquire(self) -> None:
            if not in_acquire.is_set():
                in_acquire.set()
                let_go.wait(5)

        def release(self) -> None:
            pass

    rt = ar.AgentRuntime(backpressure=WaitingGuard())  # type: ignore[arg-type]
    session = rt.create_session("a")
    outcome: list[object] = []

    def first() -> None:
        try:
            outcome.append(asyncio.run(rt.run_turn(session, "one", final)))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert await asyncio.to_thread(in_acquire.wait, 5)
        with pytest.raises(ar.AgentRuntimeError, match="already running a turn"):
            await rt.run_turn(session, "two", final)
    finally:
        let_go.set()
        await asyncio.to_thread(thread.join, 5)
    assert outcome == ["ok"]
    assert [m["content"] for m in session.messages] == ["one", "ok"]
    assert not rt._running and not runtime_module._SESSIONS_RUNNING


async def test_a_run_lets_go_of_its_session_only_once_its_state_is_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A run of the session starting on another thread as soon as it is let go must find
    # none of the ended run's state (that run's clean-up dropped the new run's record).
    runtime = ar.AgentRuntime(checkpoint_backend=ar.InMemoryBackend())
    left: list[bool] = []
    unmark = runtime_module._unmark

    def checking_unmark(*args: Any) -> None:
        left.append(session.session_id in runtime._durable_runs)
        unmark(*args)

    monkeypatch.setattr(runtime_module, "_unmark", checking_unmark)
    session = runtime.create_session("a")
    await runtime.run_turn(session, "q", react("Thought: t\nAction: FINAL_ANSWER done"))
    assert left == [False]
