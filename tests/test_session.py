from __future__ import annotations

import asyncio
import copy
import json
import math
import threading
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore, StepRecord
from llm_agent_runtime.persistence.codec import decode, encode


def make_session() -> ar.AgentSession:
    session = ar.AgentSession(session_id="s1", agent_id="a", duration_ms=1500.0)
    session.steps = [
        ar.Step("look up", "search", {"q": "x"}, "found x", None, 3, 2, 1.0, 2.0, 0.5),
        ar.Step("again", "search", {"q": "y"}, "error: down", "transient"),
        ar.Step("the longest thought", "calc", "1+1", "2"),
        ar.Step("", "FINAL_ANSWER", "2", ""),
    ]
    session.final_answer = "2"
    return session


def test_introspection_helpers() -> None:
    s = make_session()
    assert s.step_count == 4 and s.has_final_answer() and s.duration_secs() == 1.5
    assert s.failed_tool_call_count() == 1 and s.step_success_count() == 3
    assert s.all_actions() == ["search", "search", "calc", "FINAL_ANSWER"]
    assert s.action_lengths() == [6, 6, 4, 12]
    assert s.total_thought_bytes() == len("look upagainthe longest thought")
    assert s.avg_action_length() == 7.0
    assert s.longest_thought() == "the longest thought"
    assert s.shortest_action() == "calc"
    assert s.first_step_action() == "search" and s.last_step_action() == "FINAL_ANSWER"
    assert s.most_common_action() == "search"
    assert s.count_steps_with_action("search") == 2
    assert s.thought_contains_count("o") == 2
    assert s.observation_contains_count("x") == 1
    assert s.count_nonempty_thoughts() == 3
    assert s.steps_above_thought_length(5) == 2
    assert s.model_ms() == 1.0 and s.tool_ms() == 2.0 and s.overhead_ms() == 0.5


def test_empty_session_helpers() -> None:
    s = ar.AgentSession(session_id="e", agent_id="a")
    assert s.longest_thought() is None and s.most_common_action() is None
    assert s.avg_thought_length() == 0.0 and not s.has_final_answer()


def test_json_round_trip() -> None:
    s = make_session()
    assert ar.AgentSession.from_json(s.to_json()) == s


def test_bad_json_is_persistence_error() -> None:
    with pytest.raises(ar.PersistenceError):
        ar.AgentSession.from_json("[1, 2]")
    with pytest.raises(ar.PersistenceError):
        ar.AgentSession.from_json("{not json")


def test_json_nested_too_deeply_is_persistence_error() -> None:
    # json.loads recurses: 100,000 brackets used to escape as a raw RecursionError.
    deep = "[" * 100_000 + "]" * 100_000
    step = '{"thought": "t", "action": "x", "action_input": ' + deep + "}"
    text = '{"session_id": "s", "agent_id": "a", "steps": [' + step + "]}"
    with pytest.raises(ar.PersistenceError, match="nests too deeply to decode"):
        ar.AgentSession.from_json(text)
    nested: Any = []
    for _ in range(100_000):
        nested = [nested]
    session = ar.AgentSession("s", "a", steps=[ar.Step("t", "x", nested)])
    with pytest.raises(ar.PersistenceError, match="nests too deeply to copy"):
        session.to_json()  # it copies the session first (`to_dict`)


def test_to_json_refuses_a_key_json_has_no_type_for_as_a_checkpoint_does() -> None:
    # A middleware or an approval edit can put any dict in a step's action_input.
    step = ar.Step("t", "tool", {("a", "b"): 1})
    session = ar.AgentSession("s", "a", steps=[step])
    with pytest.raises(ar.PersistenceError, match=r"keys must be str.*not tuple"):
        session.to_json()
    assert step.action_input == {("a", "b"): 1}  # refused, not renamed
    # Keys JSON does write become strings, as in a checkpoint record.
    step.action_input = {1: "one", None: "none", 2.5: "x", False: "no"}
    record = decode(encode("step", step.to_dict()), "k")
    assert json.loads(session.to_json())["steps"][0] == record
    assert record["action_input"] == {"1": "one", "null": "none", "2.5": "x", "false": "no"}


@pytest.mark.parametrize(
    "arguments",
    [{1: "int", "1": "str"}, {"deep": [{None: "none", "null": "text"}]}, {True: 1, "true": 2}],
)
def test_to_json_refuses_keys_written_alike_as_a_checkpoint_does(arguments: Any) -> None:
    # Written as one JSON object with a key twice: a reader kept the last value only.
    session = ar.AgentSession("s", "a", steps=[ar.Step("t", "tool", arguments)])
    with pytest.raises(ar.PersistenceError, match=r"both written .* one would be lost"):
        session.to_json()
    with pytest.raises(ar.PersistenceError, match=r"both written .* one would be lost"):
        encode("step", session.steps[0].to_dict())


def test_an_int_too_long_to_write_is_a_persistence_error_not_a_bare_value_error() -> None:
    huge = 10**5000  # past Python's 4,300 digits for an int's conversion to text
    session = ar.AgentSession("s", "a", steps=[ar.Step("t", "tool", {"n": huge})])
    with pytest.raises(ar.PersistenceError, match="session cannot be encoded as JSON"):
        session.to_json()
    with pytest.raises(ar.PersistenceError, match="cannot encode a step record as JSON"):
        encode("step", session.steps[0].to_dict())
    looped: dict[str, Any] = {}
    looped["self"] = looped
    with pytest.raises(ar.PersistenceError, match="cannot encode a step record as JSON"):
        encode("step", {"action_input": looped})


async def test_a_checkpointed_run_whose_tool_call_cannot_be_written_fails_typed() -> None:
    class Huge(ar.Middleware):  # a middleware may put any value in a call's arguments
        def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
            return tool, {"text": 10**5000}

    @ar.tool
    async def echo(text: str) -> str:
        """Echoes."""
        return text

    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=[echo],
        checkpoint_backend=ar.InMemoryBackend(),
        middlewares=[Huge()],
    )
    script = [
        ar.providers.base.ChatResponse(
            tool_calls=[ar.providers.base.ToolCall("c1", "echo", {"text": "hi"})]
        ),
        ar.providers.base.ChatResponse(text="done"),
    ]
    with pytest.raises(ar.PersistenceError, match="cannot encode a call record as JSON"):
        await runtime.run_agent_with_provider("a", "hi", ar.ScriptedProvider(script))


def test_to_dict_copies_dict_subclasses_as_the_dicts_they_hold() -> None:
    # `asdict` rebuilt a Counter from (key, value) pairs, counting the pairs, and failed on
    # a defaultdict; both are plain dicts of their items in the copy, as JSON writes them.
    from collections import Counter, OrderedDict, defaultdict, namedtuple

    Point = namedtuple("Point", "x y")
    votes = Counter({"yes": 2, "no": 1})
    tally: defaultdict[str, list[int]] = defaultdict(list, {"a": [1]})
    arguments = {"votes": votes, "tally": tally, "order": OrderedDict(b=1), "at": Point(1, 2)}
    session = ar.AgentSession("s", "a", steps=[ar.Step("t", "vote", arguments, "ok")])
    copied = session.to_dict()["steps"][0]["action_input"]
    assert copied == {
        "votes": {"yes": 2, "no": 1},
        "tally": {"a": [1]},
        "order": {"b": 1},
        "at": Point(1, 2),
    }
    assert type(copied["votes"]) is dict and type(copied["at"]) is Point
    assert copied["tally"]["a"] is not tally["a"]  # deep-copied
    loaded = ar.AgentSession.from_json(session.to_json())
    assert loaded.steps[0].action_input == json.loads(json.dumps(arguments))


async def test_a_checkpointed_run_whose_tool_arguments_hold_a_counter_is_saved_whole() -> None:
    from collections import Counter

    class Tally(ar.Middleware):  # a middleware may put any value in a call's arguments
        def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
            return tool, {"votes": Counter({"yes": 2, "no": 1})}

    @ar.tool
    async def count(votes: dict[str, int]) -> str:
        """Counts the votes."""
        return f"{sum(votes.values())} votes"

    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=[count],
        checkpoint_backend=backend,
        middlewares=[Tally()],
    )
    script = [
        ar.providers.base.ChatResponse(
            tool_calls=[ar.providers.base.ToolCall("c1", "count", {"votes": {}})]
        ),
        ar.providers.base.ChatResponse(text="done"),
    ]
    session = await runtime.run_agent_with_provider("a", "hi", ar.ScriptedProvider(script))
    assert session.steps[0].observation == "3 votes"
    loaded = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert loaded.final_answer == "done"
    assert loaded.steps[0].action_input == {"votes": {"yes": 2, "no": 1}}


def test_non_finite_timings_come_back_from_json_as_the_floats_they_were() -> None:
    import math

    step = ar.Step("t", "x", model_ms=math.nan, tool_ms=math.inf, overhead_ms=-math.inf)
    session = ar.AgentSession("s", "a", duration_ms=math.inf, steps=[step])
    text = session.to_json()
    assert '"duration_ms": "inf"' in text  # strict JSON has no number for it
    loaded = ar.AgentSession.from_json(text)
    assert loaded.duration_ms == math.inf
    timings = loaded.steps[0]
    assert math.isnan(timings.model_ms)
    assert (timings.tool_ms, timings.overhead_ms) == (math.inf, -math.inf)
    with pytest.raises(ar.PersistenceError, match="'model_ms' must be a number, got str"):
        ar.Step.from_dict({"thought": "t", "action": "x", "model_ms": "infinity"})


def test_timings_load_as_floats_and_one_beyond_the_float_range_is_refused() -> None:
    # An int timing was kept as it was: one beyond the float range failed every helper
    # (duration_secs, the next turn's sums) with an OverflowError.
    session = ar.AgentSession("s", "a")
    data = {**json.loads(session.to_json()), "duration_ms": 1500}
    loaded = ar.AgentSession.from_json(json.dumps(data))
    assert type(loaded.duration_ms) is float and loaded.duration_secs() == 1.5
    with pytest.raises(ar.PersistenceError, match="'duration_ms' is beyond the float range"):
        ar.AgentSession.from_json(json.dumps({**data, "duration_ms": 10**400}))
    with pytest.raises(ar.PersistenceError, match="'tool_ms' is beyond the float range"):
        ar.Step.from_dict({"thought": "t", "action": "x", "tool_ms": -(10**400)})


def test_byte_length_helpers_count_a_lone_surrogate_as_3_bytes() -> None:
    # A tool's result or a model's reply may hold half an emoji; the session keeps it.
    session = ar.AgentSession("s", "a")
    session.steps = [
        ar.Step("smile \ud83d", "tool\udc00", None, "half \ud83d"),
        ar.Step("\U0001f600", "FINAL_ANSWER", None, "ok"),
    ]
    assert session.thought_lengths() == [9, 4]
    assert session.total_thought_bytes() == 13
    assert session.avg_thought_length() == 6.5
    assert session.longest_thought() == "smile \ud83d"
    assert session.steps_above_thought_length(8) == 1
    assert session.total_observation_bytes() == 10
    assert session.action_lengths() == [7, 12]
    assert session.avg_action_length() == 9.5
    assert session.shortest_action() == "tool\udc00"


async def test_load_checkpoint() -> None:
    backend = ar.InMemoryBackend()
    s = make_session()
    await CheckpointStore(backend).save_final(s, {})
    assert await ar.AgentSession.load_checkpoint(backend, "s1") == s
    with pytest.raises(ar.PersistenceError, match="session:nope"):
        await ar.AgentSession.load_checkpoint(backend, "nope")
    backend.data["session:s1"] = backend.data["session:s1"][:-5]  # truncated
    with pytest.raises(ar.PersistenceError, match="checksum"):
        await ar.AgentSession.load_checkpoint(backend, "s1")


GOOD_STEP = {"thought": "t", "action": "a"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "lacks the field"),
        ({"session_id": "x"}, "lacks the field.*agent_id"),
        ({"session_id": "x", "agent_id": "y", "bogus": 1}, "unknown field.*bogus"),
        ({"session_id": 1, "agent_id": "y"}, "'session_id' must be a string, got int"),
        ({"session_id": "x", "agent_id": None}, "'agent_id' must be a string, got null"),
        ({"session_id": "x", "agent_id": "y", "steps": None}, "'steps' must be a list"),
        ({"session_id": "x", "agent_id": "y", "steps": "ab"}, "'steps' must be a list"),
        ({"session_id": "x", "agent_id": "y", "steps": {"thought": "t"}}, "must be a list"),
        ({"session_id": "x", "agent_id": "y", "steps": [1]}, "step 1: a step must be an object"),
        (
            {"session_id": "x", "agent_id": "y", "steps": [GOOD_STEP, {"thought": "t"}]},
            "step 2: step lacks the field.*action",
        ),
        (
            {"session_id": "x", "agent_id": "y", "steps": [{"thought": 5, "action": "a"}]},
            "'thought' must be a string, got int",
        ),
        (
            {"session_id": "x", "agent_id": "y", "steps": [{"thought": "t", "action": None}]},
            "'action' must be a string, got null",
        ),
        (
            {"session_id": "x", "agent_id": "y", "steps": [{**GOOD_STEP, "input_tokens": 1.5}]},
            "'input_tokens' must be an integer",
        ),
        (
            {"session_id": "x", "agent_id": "y", "steps": [{**GOOD_STEP, "model_ms": "1"}]},
            "'model_ms' must be a number",
        ),
        (
            {"session_id": "x", "agent_id": "y", "steps": [{**GOOD_STEP, "zz": 1}]},
            "unknown field.*zz",
        ),
        ({"session_id": "x", "agent_id": "y", "memory_hits": "many"}, "'memory_hits'"),
        ({"session_id": "x", "agent_id": "y", "memory_hits": True}, "got bool"),
        ({"session_id": "x", "agent_id": "y", "duration_ms": None}, "'duration_ms'"),
        ({"session_id": "x", "agent_id": "y", "final_answer": 42}, "'final_answer'"),
        ({"session_id": "x", "agent_id": "y", "graph_entity_count": "3"}, "graph_entity_count"),
        ({"session_id": "x", "agent_id": "y", "messages": [1]}, "'messages' must be a list"),
        ({"session_id": "x", "agent_id": "y", "messages": {}}, "'messages' must be a list"),
        (
            {"session_id": "x", "agent_id": "y", "messages": [{"role": "user"}]},
            "message 1: 'content' must be a string, got null",
        ),
        (
            {"session_id": "x", "agent_id": "y", "messages": [{"content": "hi"}]},
            "message 1: 'role' must be one of 'system', 'user', 'assistant', 'tool', got None",
        ),
        (
            {
                "session_id": "x",
                "agent_id": "y",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "robot", "content": "beep"},
                ],
            },
            "message 2: 'role' must be one of .* got 'robot'",
        ),
        (
            {"session_id": "x", "agent_id": "y", "messages": [{"role": "user", "content": 5}]},
            "'content' must be a string, got int",
        ),
        # Tool fields of the wrong shape loaded, then failed in a turn (they go to the provider).
        (
            {
                "session_id": "x",
                "agent_id": "y",
                "messages": [{"role": "assistant", "content": "", "tool_calls": {"id": "c1"}}],
            },
            "message 1: 'tool_calls' must be a list, got dict",
        ),
        (
            {
                "session_id": "x",
                "agent_id": "y",
                "messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]}],
            },
            "message 1: tool call 1 must be a dict with a string 'id' and 'name'",
        ),
        (
            {
                "session_id": "x",
                "agent_id": "y",
                "messages": [
                    {"role": "user", "content": "", "tool_calls": [{"id": "c", "name": "f"}]}
                ],
            },
            "'tool_calls' belong to an assistant message, not a user message",
        ),
        (
            {
                "session_id": "x",
                "agent_id": "y",
                "messages": [{"role": "tool", "content": "sunny", "tool_call_id": 7}],
            },
            "message 1: 'tool_call_id' must be a string, got int",
        ),
        (None, "must be an object, got null"),
        ([], "must be an object, got list"),
    ],
)
def test_malformed_sessions_are_persistence_errors_on_load(data: Any, message: str) -> None:
    # These used to raise TypeError/KeyError from from_dict, or load and fail later with
    # AttributeError in a helper (thought=5: `5.encode`).
    with pytest.raises(ar.PersistenceError, match=message):
        ar.AgentSession.from_dict(data)
    with pytest.raises(ar.PersistenceError, match=f"not a serialized AgentSession: .*{message}"):
        ar.AgentSession.from_json(json.dumps(data))


def test_from_dict_accepts_what_to_dict_writes_and_ints_for_floats() -> None:
    s = make_session()
    assert ar.AgentSession.from_dict(s.to_dict()) == s
    loaded = ar.AgentSession.from_dict(
        {
            "session_id": "x",
            "agent_id": "y",
            "duration_ms": 5,
            "steps": [{**GOOD_STEP, "tool_ms": 2}],
        }
    )
    assert loaded.duration_ms == 5.0 and loaded.steps[0].tool_ms == 2.0
    assert ar.Step.from_dict({**GOOD_STEP, "action_input": {"any": [1, None]}}).action_input == {
        "any": [1, None]
    }


async def test_sessions_loaded_from_one_dict_share_no_history() -> None:
    # They shared the dict's list (and message dicts): a turn of one grew the other's
    # history and the caller's dict.
    # Then they shared the tool calls of the messages (and their arguments).
    data = ar.AgentSession("s", "a").to_dict()
    call = {"id": "c1", "name": "add", "arguments": {"a": 1}}
    given = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "1", "tool_call_id": "c1", "name": "add"},
        {"role": "assistant", "content": "hi"},
    ]
    data["messages"] = copy.deepcopy(given)
    first, second = ar.AgentSession.from_dict(data), ar.AgentSession.from_dict(data)
    provider = ar.ScriptedProvider(["Thought: x\nAction: FINAL_ANSWER A"])
    await ar.AgentRuntime().run_turn(first, "again", provider)
    first.messages[0]["content"] = "edited"
    first.messages[1]["tool_calls"][0]["arguments"]["a"] = 2
    first.messages[1]["tool_calls"].append(call)
    assert len(first.messages) == 6
    assert second.messages == data["messages"] == given


def _record_of(backend: ar.InMemoryBackend, key: str) -> Any:
    return decode(backend.data[key], key)


async def test_load_checkpoint_of_a_wrong_shape_record_is_a_persistence_error_naming_it() -> None:
    # A valid, checksummed record whose payload has the wrong shape used to leak
    # KeyError/TypeError from load.
    for payload, message in [
        ({"session": {"session_id": "x"}}, "final checkpoint: session lacks the field"),
        ({"nosession": 1}, "final checkpoint holds no 'session'"),
        ([1, 2], "final checkpoint holds no 'session'"),
        ({"session": {"session_id": "x", "agent_id": "a", "steps": [{"thought": "t"}]}}, "step 1"),
        ({"session": {"session_id": "x", "agent_id": "a"}, "finished_at": "late"}, "finished_at"),
    ]:
        backend = ar.InMemoryBackend()
        await backend.save("session:x", encode("session", payload))
        with pytest.raises(ar.PersistenceError, match=message) as caught:
            await ar.AgentSession.load_checkpoint(backend, "x")
        assert caught.value.key == "session:x"


META = {"agent_id": "a", "prompt": "p", "mode": "react"}


async def test_wrong_shape_step_meta_and_base_records_are_persistence_errors_naming_them() -> None:
    store = CheckpointStore(ar.InMemoryBackend())
    session = ar.AgentSession("x", "a", prompt="p")
    await store.save_meta(session, "react")
    records = [StepRecord(ar.Step("t", "calc", {"x": 1}, "2")), StepRecord(ar.Step("u", "calc"))]
    await store.save_steps("x", 1, records)
    assert [r.step for r in (await store.load("x")).records] == [r.step for r in records]
    backend = store.backend
    assert isinstance(backend, ar.InMemoryBackend)
    good = dict(backend.data)
    broken = [
        ("session:x:step:2", "step", {"step": {"thought": "t"}}, "step lacks the field"),
        ("session:x:step:2", "step", {"nostep": 1}, "'step' field"),
        ("session:x:step:2", "step", [1], "'step' field"),
        ("session:x:step:2", "step", {"step": GOOD_STEP, "reply": 3}, "'reply'"),
        ("session:x:step:2", "step", {"step": GOOD_STEP, "round_start": "yes"}, "round_start"),
        ("session:x:step:2", "step", {"step": GOOD_STEP, "extra": 1}, "unknown field"),
        ("session:x:step:1", "step", {"step": {**GOOD_STEP, "observation": None}}, "observation"),
        ("session:x:meta", "meta", {"agent_id": "a"}, "meta record"),
        ("session:x:meta", "meta", {"agent_id": "a", "prompt": "p", "mode": 3}, "meta record"),
        # A mode no run has: a resume said to go on "in nan mode" with another runtime.
        ("session:x:meta", "meta", {**META, "mode": "nan"}, "'react' or 'tools'"),
        ("session:x:step:2", "step", {"step": {**GOOD_STEP, "requested": "x"}}, "'requested'"),
        ("session:x:meta", "meta", {**META, "turn": "yes"}, "a bool 'turn'"),
        ("session:x:meta", "meta", {**META, "first_step": -1}, "a count 'first_step'"),
        ("session:x:meta", "meta", {**META, "history": [{"role": "user"}]}, "'history'"),
        ("session:x:step:2", "step", {"step": GOOD_STEP, "run_start": {"prompt": 1}}, "run_start"),
        ("session:x:base", "base", {"records": None}, "base record"),
        (
            "session:x:base",
            "base",
            {"records": [{"step": {"thought": 1, "action": "a"}}]},
            "'thought'",
        ),
    ]
    for key, kind, payload, message in broken:
        backend.data = {**good, key: encode(kind, payload)}
        with pytest.raises(ar.PersistenceError, match=message) as caught:
            await store.load("x")
        assert caught.value.key == key
    backend.data = dict(good)
    assert _record_of(backend, "session:x:step:1")["step"]["thought"] == "t"
    with pytest.raises(ar.PersistenceError, match="must be an object"):
        StepRecord.from_dict(None)  # type: ignore[arg-type]


def test_step_to_dict_has_every_field_as_asdict_does() -> None:
    from dataclasses import asdict

    step = ar.Step("t", "add", {"a": [1, 2]}, "3", "permanent", 1, 2, 0.5, 0.25, 0.125)
    assert step.to_dict() == asdict(step)
    assert ar.Step.from_dict(step.to_dict()) == step


async def test_a_sessions_duration_adds_up_its_turns_as_its_steps_do() -> None:
    rt = ar.AgentRuntime()
    session = rt.create_session("a")
    finished: list[float] = []
    rt.events.on(
        lambda e: finished.append(e.duration_ms) if isinstance(e, ar.RunFinished) else None
    )

    async def slow(prompt: str) -> str:
        await asyncio.sleep(0.03)
        return "Thought: t\nAction: FINAL_ANSWER x"

    for turn in range(3):
        await rt.run_turn(session, f"q{turn}", slow)
    assert session.step_count == 3
    assert session.duration_ms >= session.model_ms() >= 90.0  # all three turns, not the last
    assert finished == sorted(finished) and finished[-1] == session.duration_ms
    restored = ar.AgentSession.from_json(session.to_json())
    await rt.run_turn(restored, "q3", slow)
    assert restored.duration_ms >= session.duration_ms + 30.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", ()),
        ("steps", ["junk"]),  # a run went on, and saved JSON its own from_json refused
        ("duration_ms", None),
        ("memory_hits", True),
        ("session_id", ["x"]),
        ("final_answer", 42),
    ],
)
async def test_a_session_field_of_the_wrong_type_is_refused_before_the_model_is_called(
    field: str, value: object
) -> None:
    # The run used to fail on it as it went (a bare AttributeError or TypeError), after the
    # model was paid, with the turn half recorded.
    provider = ar.ScriptedProvider(["Thought: t\nAction: FINAL_ANSWER ok"])
    runtime = ar.AgentRuntime()
    session = runtime.create_session("agent")
    setattr(session, field, value)
    with pytest.raises(ar.AgentRuntimeError, match=f"session.{field} must be"):
        await runtime.run_turn(session, "hi", provider)
    with pytest.raises(ar.AgentRuntimeError, match=f"session.{field} must be"):
        await runtime.run_agent("agent", "hi", provider.complete, session=session)
    assert provider.calls == 0 and session.messages == []


async def test_an_agent_id_with_a_lone_surrogate_is_refused_at_once() -> None:
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    with pytest.raises(ar.AgentRuntimeError, match=r"agent_id is not valid Unicode.*index 5"):
        runtime.create_session("agent\ud800")
    provider = ar.ScriptedProvider(["done"])
    with pytest.raises(ar.AgentRuntimeError, match="agent_id is not valid Unicode"):
        await runtime.run_agent_with_provider("agent\ud800", "q", provider)
    assert provider.calls == 0
    assert runtime.create_session("agent é").agent_id == "agent é"


@pytest.mark.parametrize("owner", ["a\ud800", "", "other-agent"])
async def test_a_run_refuses_a_session_of_another_agent_before_the_model_is_called(
    owner: str,
) -> None:
    # The session's agent id counted the run's tool calls in the metrics (and one with a
    # lone surrogate failed the run there, its model paid), its memories were the run's.
    call = ar.ScriptedProvider.tool_call_reply([("echo", {"text": "x"})])
    provider = ar.ScriptedProvider([call, "done"])

    @ar.tool
    async def echo(text: str) -> str:
        """Echoes text."""
        return text

    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[echo])
    session = ar.AgentSession(session_id="s1", agent_id=owner)
    with pytest.raises(ar.AgentRuntimeError, match="belongs to agent"):
        await runtime.run_agent_with_provider("agent-A", "q", provider, session=session)
    assert provider.calls == 0 and runtime.metrics.snapshot().tool_calls == {}


def _deeply_nested() -> dict[str, object]:
    arguments: dict[str, object] = {}
    for _ in range(2_000):
        arguments = {"a": arguments}
    return arguments


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (_deeply_nested(), "nest too deeply to copy"),
        ({"lock": threading.Lock()}, "cannot be copied"),
    ],
    ids=["too-deep", "a-lock"],
)
def test_from_dict_of_messages_that_cannot_be_copied_is_a_persistence_error(
    arguments: dict[str, object], said: str
) -> None:
    # A bare RecursionError or TypeError.
    call = {"id": "c1", "name": "t", "arguments": arguments}
    data = {
        "session_id": "s",
        "agent_id": "a",
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "r", "tool_call_id": "c1", "name": "t"},
        ],
    }
    with pytest.raises(ar.PersistenceError, match=said):
        ar.AgentSession.from_dict(data)


def test_reprs_stay_short_whatever_a_session_holds() -> None:
    # The dataclass reprs showed every step and message whole: a session with one 1 MB
    # observation printed 2 MB at the REPL or in a debugger (an episode's content too).
    big = "o" * 1_000_000
    step = ar.Step("t", "read", {"path": "a.txt"}, big)
    session = ar.AgentSession("s1", "a", prompt=big, steps=[step] * 50, final_answer="42")
    session.messages = [{"role": "user", "content": big}]
    shown, shown_step = repr(session), repr(step)
    assert len(shown) < 400 and len(shown_step) < 400
    assert "steps=50" in shown and "final_answer='42'" in shown and "messages=1" in shown
    assert "action='read'" in shown_step and "'o" in shown_step
    # Hand-built with values of other types (the dataclasses check none): shown, not raised.
    assert "overhead_ms=0.047)" in repr(ar.Step("t", "a", overhead_ms=0.047))  # sub-ms shown
    odd: Any = ar.Step("t", "a", None, "o", None, 0, 0, None, "x", math.nan)
    assert "model_ms=None, tool_ms='x', overhead_ms=nan" in repr(odd)
    odd_session: Any = ar.AgentSession("s", "a", steps=None, duration_ms=None)
    assert "steps=None" in repr(odd_session) and "duration_ms=None" in repr(odd_session)
    store = ar.EpisodicStore()
    store.add_episode("a", "é" * 10_000, 0.5)
    episode = repr(store.episodes("a")[0])
    assert len(episode) < 200 and episode.endswith("...)") and "'éé" in episode
