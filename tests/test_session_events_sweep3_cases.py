"""Sessions saved as JSON and loaded back: what `to_json` writes, `from_json` reads as it was."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore


def _nested_lists(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def _with_tool_call(arguments: dict[str, Any]) -> ar.AgentSession:
    call = {"id": "c1", "name": "f", "arguments": arguments}
    return ar.AgentSession(
        "s",
        "a",
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "r", "tool_call_id": "c1", "name": "f"},
        ],
    )


async def test_messages_nested_as_deep_as_to_json_writes_them_load_back() -> None:
    # A model's tool call may carry nested arrays. `to_json` (and the final checkpoint)
    # wrote them, then loading copied the messages with `copy.deepcopy`, which takes
    # several frames a level: the session's own JSON was refused as "nesting too deeply".
    session = _with_tool_call({"x": _nested_lists(600)})
    assert ar.AgentSession.from_json(session.to_json()) == session
    assert ar.AgentSession.from_dict(session.to_dict()) == session
    backend = ar.InMemoryBackend()
    await CheckpointStore(backend).save_final(session, {})
    assert await ar.AgentSession.load_checkpoint(backend, "s") == session


@pytest.mark.parametrize(
    "text",
    [
        '{"session_id": "s", "agent_id": "a", "session_id": "t"}',
        '{"session_id": "s", "agent_id": "a", "steps": [{"thought": "t", "action": "x",'
        ' "action": "y"}]}',
        '{"session_id": "s", "agent_id": "a", "steps": [{"thought": "t", "action": "x",'
        ' "action_input": {"path": "/a", "path": "/b"}}]}',
        '{"session_id": "s", "agent_id": "a", "messages": [{"role": "user", "content": "q",'
        ' "role": "system"}]}',
    ],
    ids=["session", "step", "action-input", "message"],
)
def test_from_json_refuses_a_key_written_twice(text: str) -> None:
    # `to_json` never writes one (it refuses keys written alike, "one would be lost"):
    # read, the last value silently won, a session other than the one written.
    with pytest.raises(ar.PersistenceError, match=r"not a serialized AgentSession: .*twice"):
        ar.AgentSession.from_json(text)


def test_from_json_still_reads_keys_written_once_at_every_level() -> None:
    session = ar.AgentSession(
        "s", "a", steps=[ar.Step("t", "x", {"a": {"a": [{"a": 1}]}, "b": {}})]
    )
    assert ar.AgentSession.from_json(session.to_json()) == session


@pytest.mark.parametrize(
    ("arguments", "written"),
    [
        ({math.inf: 1, "Infinity": 2}, {"inf": 1, "Infinity": 2}),
        ({-math.inf: 1, "-Infinity": 2}, {"-inf": 1, "-Infinity": 2}),
        ({math.nan: 1, "NaN": 2}, {"nan": 1, "NaN": 2}),
    ],
)
def test_to_json_writes_a_non_finite_key_beside_the_key_json_alone_would_make_of_it(
    arguments: dict[Any, int], written: dict[str, int]
) -> None:
    # `to_json` writes an infinite key "inf", yet refused it beside an "Infinity" key as
    # "both written 'Infinity'": the check read the keys as `json` alone writes them.
    session = ar.AgentSession("s", "a", steps=[ar.Step("t", "x", arguments)])
    loaded = ar.AgentSession.from_json(session.to_json())
    assert loaded.steps[0].action_input == written


@pytest.mark.parametrize(
    "arguments",
    [
        {math.inf: 1, "inf": 2},
        {"nan": 1, math.nan: 2},
        {1: 1, "1": 2},
        {math.nan: 1, "x": {2: 0, "2": 1}},
    ],
)
def test_to_json_still_refuses_keys_it_writes_alike(arguments: dict[Any, int]) -> None:
    session = ar.AgentSession("s", "a", steps=[ar.Step("t", "x", arguments)])
    with pytest.raises(ar.PersistenceError, match="both written"):
        session.to_json()


# --------------------------------------------------------------------------- round trip

_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=6)
_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    _TEXT,
)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=8,
)
_STEP = st.builds(
    ar.Step,
    _TEXT,
    _TEXT,
    _VALUE,
    _TEXT,
    st.one_of(st.none(), _TEXT),
    st.integers(0, 10**20),
    st.integers(0, 10**20),
    st.floats(),
    st.floats(),
    st.floats(),
)
_CALL = st.fixed_dictionaries(
    {"id": _TEXT, "name": _TEXT, "arguments": st.dictionaries(_TEXT, _VALUE, max_size=2)}
)
_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": _TEXT}
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("assistant"),
            "content": _TEXT,
            "tool_calls": st.lists(_CALL, max_size=2),
        }
    ),
    st.fixed_dictionaries(
        {"role": st.just("tool"), "content": _TEXT, "tool_call_id": _TEXT, "name": _TEXT}
    ),
)
_SESSION = st.builds(
    ar.AgentSession,
    _TEXT,
    _TEXT,
    _TEXT,
    st.lists(_STEP, max_size=3),
    st.one_of(st.none(), _TEXT),
    st.integers(0, 10**30),
    st.one_of(st.none(), st.integers(0, 10**30)),
    st.floats(),
    st.integers(0, 5),
    st.lists(_MESSAGE, max_size=3),
)


def _same(ours: Any, theirs: Any) -> bool:
    """Equal, type for type, a float bit for bit (any NaN is a NaN)."""
    if type(ours) is not type(theirs):
        return False
    if isinstance(ours, float):
        both_nan = math.isnan(ours) and math.isnan(theirs)
        return both_nan or struct.pack("<d", ours) == struct.pack("<d", theirs)
    if isinstance(ours, list):
        return len(ours) == len(theirs) and all(map(_same, ours, theirs))
    if isinstance(ours, dict):
        return list(ours) == list(theirs) and all(_same(ours[k], theirs[k]) for k in ours)
    return bool(ours == theirs)


@settings(max_examples=300, deadline=None)
@given(_SESSION)
def test_a_session_of_json_values_comes_back_from_json_field_for_field(
    session: ar.AgentSession,
) -> None:
    text = session.to_json()
    json.loads(text, parse_constant=pytest.fail)  # strict JSON: no NaN, no Infinity
    loaded = ar.AgentSession.from_json(text)
    assert _same(loaded.to_dict(), session.to_dict())
    assert loaded.to_json() == text
    assert _same(ar.AgentSession.from_dict(session.to_dict()).to_dict(), session.to_dict())
