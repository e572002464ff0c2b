import contextlib
import gc
import json
import time
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
tool_names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True).filter(
    lambda s: s.lower() != "final_answer"
)
thoughts = st.text(
    # No control or line-separator characters: Python's str.strip and Rust's trim disagree on some.
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
    max_size=60,
).filter(lambda t: ":" not in t)


def test_seed_form() -> None:
    step = ar.parse_react_step('Thought: I need to add\nAction: add {"a": 2, "b": 40}')
    assert step.thought == "I need to add"
    assert step.action == "add"
    assert step.action_input == {"a": 2, "b": 40}
    assert step.final_answer is None
    assert not step.is_final


def test_seed_final_answer() -> None:
    step = ar.parse_react_step("Thought: done\nAction: FINAL_ANSWER 42")
    assert step.final_answer == "42"
    assert step.action is None and step.action_input is None and step.is_final


def test_final_answer_tool_in_the_langchain_form() -> None:
    # `Action: FINAL_ANSWER` then `Action Input: 42` used to answer '' (the input was ignored).
    step = ar.parse_react_step("Thought: done\nAction: FINAL_ANSWER\nAction Input: 42")
    assert step.final_answer == "42" and step.is_final
    assert step.action is None and step.action_input is None
    quoted = ar.parse_react_step('Action: final_answer\nAction Input: "the end"\nObservation: x')
    assert quoted.final_answer == "the end"
    # With no input at all (the seeds never show it) the answer stays empty.
    assert ar.parse_react_step("Thought: done\nAction: FINAL_ANSWER").final_answer == ""
    assert ar.parse_react_step("Action: FINAL_ANSWER\nAction Input:").final_answer == ""


@settings(max_examples=300, deadline=None)
@given(
    thought=thoughts,
    answer=st.one_of(
        thoughts,
        json_values.map(json.dumps),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40).filter(
            lambda t: "\n" not in t and "\r" not in t
        ),
    ),
    spelling=st.sampled_from(["FINAL_ANSWER", "final_answer", "Final_Answer"]),
)
def test_final_answer_tool_reads_the_same_in_both_forms(
    thought: str, answer: str, spelling: str
) -> None:
    seed = ar.parse_react_step(f"Thought: {thought}\nAction: {spelling} {answer}")
    langchain = ar.parse_react_step(
        f"Thought: {thought}\nAction: {spelling}\nAction Input: {answer}"
    )
    assert langchain.is_final and seed.is_final
    assert langchain.final_answer == seed.final_answer
    assert langchain.thought == seed.thought


def test_langchain_form() -> None:
    step = ar.parse_react_step("Thought: look it up\nAction: search\nAction Input: rust pyo3\n")
    assert (step.action, step.action_input) == ("search", "rust pyo3")
    final = ar.parse_react_step("Thought: I know\nFinal Answer: Paris is\nthe capital")
    assert final.final_answer == "Paris is\nthe capital"


def test_multiline_thought_case_and_whitespace() -> None:
    text = '  thought :  first line\n second line\n\n  ACTION:   lookup   {"q": "x"}  '
    step = ar.parse_react_step(text)
    assert step.thought == "first line\n second line"
    assert step.action == "lookup"
    assert step.action_input == {"q": "x"}


def test_nested_braces_strings_and_trailing_chatter() -> None:
    text = 'Action: t {"a": {"b": "}{\\"}"}, "c": [1, {"d": []}]} I hope this helps!'
    assert ar.parse_react_step(text).action_input == {"a": {"b": '}{"}'}, "c": [1, {"d": []}]}


def test_input_is_decoded_once_and_cached() -> None:
    step = ar.parse_react_step('Action: t {"x": [1, 2]}')
    assert step.action_input is step.action_input
    assert ar.parse_react_step("Final Answer: 1").action_input is None


def test_json_fence() -> None:
    text = 'Thought: t\nAction: run\nAction Input: ```json\n{"code": "print(1)"}\n```\nDone.'
    assert ar.parse_react_step(text).action_input == {"code": "print(1)"}


def test_non_json_input_is_kept_raw() -> None:
    assert ar.parse_react_step("Action: shell ls -la /tmp").action_input == "ls -la /tmp"
    assert ar.parse_react_step('Action: t {"broken": ').action_input == '{"broken":'


def test_observation_ends_the_input() -> None:
    step = ar.parse_react_step("Action: search\nAction Input: cats\nObservation: made up")
    assert step.action_input == "cats"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected a line starting with 'Action:'"),
        ("Thought: only thinking", "expected a line starting with 'Action:'"),
        ("Action:   \nAction Input: x", "expected a tool name"),
        ("Action: calc", "expected the input of tool 'calc'"),
        ('Action: calc {"a": 1}\nFinal Answer: 3', "both an action"),
    ],
)
def test_errors_say_what_was_expected_and_where(text: str, fragment: str) -> None:
    with pytest.raises(ar.ParseError, match=fragment) as info:
        ar.parse_react_step(text)
    assert info.value.position is not None
    assert 0 <= info.value.position <= len(text.encode())


def test_repr_and_eq() -> None:
    a = ar.parse_react_step('Action: t {"x": 1}')
    b = ar.parse_react_step('Thought:\nAction: t {"x": 1}')
    assert a == b
    assert a != ar.parse_react_step('Action: t {"x": 2}')
    assert a != "not a step"
    assert repr(a) == "ReActStep(thought='', action='t', action_input={'x': 1}, final_answer=None)"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        step = ar.parse_react_step(text)
    except ar.ParseError as err:
        assert err.position is not None
    else:
        assert (step.action is None) == step.is_final


@settings(max_examples=200, deadline=None)
@given(
    thought=thoughts,
    tool=tool_names,
    value=json_values,
    chatter=st.sampled_from(["", " ok", "\nbye"]),
)
def test_seed_form_round_trip(thought: str, tool: str, value: object, chatter: str) -> None:
    payload = json.dumps({"v": value})
    step = ar.parse_react_step(f"Thought: {thought}\nAction: {tool} {payload}{chatter}")
    assert step.thought == thought.strip()
    assert step.action == tool
    assert step.action_input == {"v": value}


@settings(max_examples=200, deadline=None)
@given(thought=thoughts, tool=tool_names, value=json_values)
def test_langchain_form_round_trip(thought: str, tool: str, value: object) -> None:
    payload = json.dumps([value])
    text = f"Thought: {thought}\nAction: {tool}\nAction Input: {payload}"
    step = ar.parse_react_step(text)
    assert (step.action, step.action_input) == (tool, [value])


def test_adversarial_inputs_take_linear_time() -> None:
    cases = [
        "Action: t " + "[" * 200_000,
        "Action: t " + '{"a": "' + "\\" * 200_001,
        "Thought: x\n" * 50_000 + "Action: t {}",
        "Action" * 100_000,
    ]
    for text in cases:
        start = time.perf_counter()
        with contextlib.suppress(ar.ParseError):
            ar.parse_react_step(text)
        # Generous bound: a quadratic parser would take minutes on these inputs.
        assert time.perf_counter() - start < 1.0


def test_steps_stay_out_of_the_cycle_collector_until_they_hold_a_container() -> None:
    raw = ar.parse_react_step("Thought: t\nAction: search rust pyo3")
    assert not gc.is_tracked(raw)  # it holds only strings: it cannot be part of a cycle
    assert raw.action_input == "rust pyo3" and not gc.is_tracked(raw)
    step = ar.parse_react_step('Thought: t\nAction: add {"a": 1}')
    assert not gc.is_tracked(step)
    assert step.action_input == {"a": 1}
    assert gc.is_tracked(step)  # a dict input could come to hold the step itself


def test_a_step_inside_its_own_input_is_collected() -> None:
    class Marker:
        pass

    step = ar.parse_react_step('Thought: t\nAction: add {"a": 1}')
    marker = Marker()
    alive = weakref.ref(marker)
    step.action_input["cycle"] = step
    step.action_input["marker"] = marker
    del step, marker
    gc.collect()
    assert alive() is None


wide_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: hypothesis also draws ints far beyond 64 bits
    | st.integers(-(2**200), 2**200)
    | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 0])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6),
            inner,
            max_size=4,
        )
    ),
    max_leaves=16,
)


@settings(max_examples=300, deadline=None)
@given(value=st.dictionaries(st.text(max_size=6), wide_json_values, max_size=5))
def test_action_input_decodes_as_json_loads(value: dict[str, object]) -> None:
    # Integers beyond 64 bits used to come back as the nearest float.
    payload = json.dumps(value)
    step = ar.parse_react_step(f"Thought: t\nAction: get_order {payload}")
    expected = json.loads(payload)
    assert step.action_input == expected
    # Same types too (1 == 1.0 in Python), compared through an exact re-encoding.
    assert json.dumps(step.action_input) == json.dumps(expected)


def test_big_and_negative_zero_integers_are_exact_ints() -> None:
    text = (
        'Thought: t\nAction: get_order {"order_id": 123456789012345678901234567890, '
        '"n": -99999999999999999999, "z": -0, "f": 1e30, "g": -0.0}'
    )
    got = ar.parse_react_step(text).action_input
    assert got == {
        "order_id": 123456789012345678901234567890,
        "n": -99999999999999999999,
        "z": 0,
        "f": 1e30,
        "g": -0.0,
    }
    assert [type(v) for v in got.values()] == [int, int, int, float, float]
    final = ar.parse_react_step('Action: FINAL_ANSWER {"n": 123456789012345678901234567890}')
    assert final.final_answer == '{"n": 123456789012345678901234567890}'
