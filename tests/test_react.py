import contextlib
import copy
import gc
import json
import pickle
import time
import weakref
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime._depth import MAX_ARGUMENT_DEPTH, nested_deeper_than

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# The names tools.py allows.
tool_names = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True).filter(
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
    # With no input at all, and no `Final Answer:` after it, there is no answer: no step.
    for text in ["Thought: done\nAction: FINAL_ANSWER", "Action: FINAL_ANSWER\nAction Input:"]:
        with pytest.raises(ar.ParseError, match="expected the final answer"):
            ar.parse_react_step(text)


@settings(max_examples=300, deadline=None)
@given(
    thought=thoughts,
    answer=st.one_of(
        thoughts,
        json_values.map(json.dumps),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40).filter(
            lambda t: "\n" not in t and "\r" not in t
        ),
    ).filter(
        # A separator after the name; no answer at all is no step.
        lambda t: t.strip() and not t.lstrip().startswith((":", "=", ",", ";"))
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


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # These used to come back cut, re-serialized or missing a quote.
        ('"Paris" is the capital of France', '"Paris" is the capital of France'),
        ("[1, 2, 3] are the primes", "[1, 2, 3] are the primes"),
        ('{"price": 3.10, "b": 1, "a": 2}', '{"price": 3.10, "b": 1, "a": 2}'),
        ('The word is "cat"', 'The word is "cat"'),
        ('"unclosed', '"unclosed'),
        ('"a" and "b"', '"a" and "b"'),
        # Exactly one JSON string literal: its value.
        ('"the end"', "the end"),
        ('"say \\"hi\\"\\n"', 'say "hi"\n'),
        ("42", "42"),
        ("  spaced out  ", "spaced out"),
    ],
)
def test_final_answer_tool_keeps_the_answer_as_written(answer: str, expected: str) -> None:
    seed = ar.parse_react_step(f"Thought: t\nAction: FINAL_ANSWER {answer}")
    langchain = ar.parse_react_step(f"Thought: t\nAction: FINAL_ANSWER\nAction Input: {answer}")
    assert seed.final_answer == langchain.final_answer == expected


answers = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=40
).filter(lambda t: t.strip() and not t.lstrip().startswith((":", "=", ",", ";")))


@settings(max_examples=300, deadline=None)
@given(answer=st.one_of(answers, json_values.map(json.dumps), st.text(max_size=10).map(json.dumps)))
def test_final_answer_tool_answer_is_the_text_or_one_decoded_string(answer: str) -> None:
    expected = answer.strip()
    with contextlib.suppress(ValueError):
        value = json.loads(expected)
        # A lone surrogate escape (`"\\ud800"`) has no UTF-8 form: such a literal stays as written.
        if isinstance(value, str) and not any("\ud800" <= c <= "\udfff" for c in value):
            expected = value
    step = ar.parse_react_step(f"Thought: t\nAction: FINAL_ANSWER {answer}")
    assert step.final_answer == expected


def test_raw_input_loses_only_a_matching_pair_of_quotes() -> None:
    langchain = ar.parse_react_step('Thought: t\nAction: t\nAction Input: he said "hi"')
    assert langchain.action_input == 'he said "hi"'  # used to be 'he said "hi'
    assert ar.parse_react_step('Action: t "a\\qb"').action_input == "a\\qb"  # invalid JSON
    assert ar.parse_react_step('Action: t "open').action_input == '"open'


@pytest.mark.parametrize(
    "action",
    [
        "FINAL_ANSWER: 42",
        "FINAL_ANSWER:42",
        "FINAL_ANSWER(42)",
        "FINAL_ANSWER=42",
        "final_answer = 42",
        'Final_Answer("42")',
        "FINAL_ANSWER : 42",
    ],
)
def test_final_answer_tool_after_a_separator_or_in_call_syntax(action: str) -> None:
    # `FINAL_ANSWER: 42` used to call a tool 'FINAL_ANSWER:'; the others raised ParseError.
    step = ar.parse_react_step(f"Thought: done\nAction: {action}")
    assert (step.action, step.action_input, step.final_answer) == (None, None, "42")


@pytest.mark.parametrize(
    ("action", "tool", "tool_input"),
    [
        ('double: {"n": 1}', "double", {"n": 1}),
        ('double={"n": 1}', "double", {"n": 1}),
        ('double({"n": 1})', "double", {"n": 1}),
        ("calc(2*(3+4))", "calc", "2*(3+4)"),
        ("calc (1) + (2)", "calc", "(1) + (2)"),  # not one pair of call parentheses
        ('f("a)")', "f", "a)"),
        ('search-web_2{"q": 1}', "search-web_2", {"q": 1}),
        ("search web x", "search", "web x"),  # the name ends at the first other character
        # Dots join runs of name characters (they used to split `github` from its tool).
        ('github.search_issues {"q": 1}', "github.search_issues", {"q": 1}),
        ("mcp.fs.read_file(/tmp/x)", "mcp.fs.read_file", "/tmp/x"),
        ("calc. 2+2", "calc", ". 2+2"),  # a dot not followed by a name character
    ],
)
def test_tool_name_is_letters_digits_underscores_hyphens_and_inner_dots(
    action: str, tool: str, tool_input: object
) -> None:
    step = ar.parse_react_step(f"Thought: t\nAction: {action}")
    assert (step.action, step.action_input) == (tool, tool_input)


@settings(max_examples=200, deadline=None)
@given(
    tool=tool_names,
    value=json_values,
    form=st.sampled_from(["{} {}", "{}: {}", "{}:{}", "{}={}", "{} = {}", "{}({})", "{}{}"]),
)
def test_tool_input_after_any_separator(tool: str, value: object, form: str) -> None:
    payload = json.dumps([value])
    step = ar.parse_react_step("Thought: t\nAction: " + form.format(tool, payload))
    assert (step.action, step.action_input) == (tool, [value])


def test_first_action_wins_with_its_own_input() -> None:
    # The whole first Action line used to be the name, paired with the next action's input.
    text = 'Thought: x\nAction: double {"n":1}\nAction: double\nAction Input: {"n":2}'
    step = ar.parse_react_step(text)
    assert (step.action, step.action_input) == ("double", {"n": 1})
    later = "Action: a\nAction Input: 1\nAction: b\nAction Input: 2"
    assert (ar.parse_react_step(later).action, ar.parse_react_step(later).action_input) == (
        "a",
        "1",
    )
    named = ar.parse_react_step("Action: search:\nAction Input: cats")
    assert (named.action, named.action_input) == ("search", "cats")
    # An Action Input serves only the first action, and only before another Action: the
    # action is then a bare one, a call without arguments.
    for text in ["Action: a\nAction: b\nAction Input: 1", "Action Input: 1\nAction: a"]:
        step = ar.parse_react_step(text)
        assert (step.action, step.action_input) == ("a", {})


@pytest.mark.parametrize(
    ("text", "tool", "tool_input"),
    [
        # These used to call 'Search' with 'Tool', and 'github' with '.search_issues'.
        ("Thought: x\nAction: Search Tool\nAction Input: rust pyo3", "Search Tool", "rust pyo3"),
        (
            'Thought: x\nAction: github.search_issues\nAction Input: {"q": "panic"}',
            "github.search_issues",
            {"q": "panic"},
        ),
        ("Action: search web\nAction Input: cats", "search web", "cats"),
        ("Action: search:\nAction Input: cats", "search", "cats"),
        # On one line: this used to give the input 'Action Input: rust'.
        ("Thought: x\nAction: search Action Input: rust", "search", "rust"),
        ("Action: Search Tool  Action Input :  rust\npyo3", "Search Tool", "rust\npyo3"),
        # Inside a JSON input, the words are the input's.
        ('Action: t {"q": "Action Input: x"}', "t", {"q": "Action Input: x"}),
        ('Action: t "see Action Input: x"', "t", "see Action Input: x"),
        # A name may hold brackets and quotes: the label after them still counts.
        ("Action: Search Tool (beta) Action Input: rust", "Search Tool (beta)", "rust"),
        ('Action: Search Pro "2" Action Input: rust', 'Search Pro "2"', "rust"),
        ("Action: Search Tool {open Action Input: x", "Search", "Tool {open Action Input: x"),
        # Also right after a one-word name: the label was part of the input.
        ("Action: calculator (python) Action Input: 2 + 2", "calculator (python)", "2 + 2"),
        ('Action: search "web" Action Input: cats', 'search "web"', "cats"),
        ("Action: search [beta] Action Input: cats", "search [beta]", "cats"),
        # A value the line ends with is the seed form's input, label or not.
        ('Action: search("Action Input: x")', "search", "Action Input: x"),
        ('Action: search "cats"\nAction Input: dogs', "search", "cats"),
    ],
)
def test_an_action_input_label_makes_the_action_line_the_tool_name(
    text: str, tool: str | None, tool_input: object
) -> None:
    step = ar.parse_react_step(text)
    assert (step.action, step.action_input) == (tool, tool_input)
    if tool is None:
        assert step.final_answer == "done"


@pytest.mark.parametrize(
    ("text", "tool", "tool_input", "final"),
    [
        # Both used to raise ParseError, which LangChain accepts.
        ("Thought: x\nAction 1: search\nAction 1 Input: rust", "search", "rust", None),
        ("Thought: I now know the final answer. Final Answer: 42", None, None, "42"),
        ("Action2 : search\nAction 2 Input 2: rust", "search", "rust", None),
        ("Thought 1: x\nAction 1: t {}\nObservation 1: made up", "t", {}, None),
        ("I know it. Final Answer: Paris\nis the capital", None, None, "Paris\nis the capital"),
    ],
)
def test_numbered_labels_and_a_final_answer_later_on_a_line(
    text: str, tool: str | None, tool_input: object, final: str | None
) -> None:
    step = ar.parse_react_step(text)
    assert (step.action, step.action_input, step.final_answer) == (tool, tool_input, final)
    if final is not None:
        assert step.thought in {"I now know the final answer.", "I know it."}
    else:
        assert "Observation" not in text[: step.end]


@pytest.mark.parametrize(
    "text",
    [
        # Mentions of the final answer in prose end nothing.
        "Thought: I now know the final answer.",
        "Thought: I now know the Final Answer, it is 42",
        "Thought: the final answer: 42",  # LangChain's marker is capitalized
        "Thought: my PreFinal Answer: 42",
    ],
)
def test_a_final_answer_in_prose_is_no_answer(text: str) -> None:
    with pytest.raises(ar.ParseError, match="expected a line starting with 'Action:'"):
        ar.parse_react_step(text)


def test_a_final_answer_later_on_a_line_does_not_outweigh_an_action() -> None:
    step = ar.parse_react_step("Thought: then give the Final Answer: soon\nAction: t {}")
    assert (step.thought, step.action, step.final_answer) == (
        "then give the Final Answer: soon",
        "t",
        None,
    )


@pytest.mark.parametrize(
    ("text", "tool", "tool_input", "final"),
    [
        # These used to call 'double {"n": 21}' and 'search("rust")', and answer nothing.
        (
            'Thought: x\nAction: double {"n": 21}\nAction Input: {"n": 21}',
            "double",
            {"n": 21},
            None,
        ),
        ('Thought: x\nAction: search("rust")\nAction Input: rust', "search", "rust", None),
        ("Thought: I know it.\nAction: FINAL_ANSWER 42\nAction Input: 42", None, None, "42"),
        ("Action: FINAL_ANSWER\nAction Input: 42", None, None, "42"),
        ("Action: search: \nAction Input: cats", "search", "cats", None),
        # On the action's line the label is matched as LangChain writes it, and never after
        # FINAL_ANSWER: prose saying `action input:` is no label (these were split there).
        (
            "Thought: answer\n"
            "Action: FINAL_ANSWER To call a tool, write the action input: as JSON.",
            None,
            None,
            "To call a tool, write the action input: as JSON.",
        ),
        (
            "Thought: note\nAction: note remember the action input: must be JSON",
            "note",
            "remember the action input: must be JSON",
            None,
        ),
        ('Action: FINAL_ANSWER Action Input: "done"', None, None, "done"),  # its label dropped
    ],
)
def test_a_seed_form_action_line_is_not_read_whole_as_the_tool_name(
    text: str, tool: str | None, tool_input: object, final: str | None
) -> None:
    step = ar.parse_react_step(text)
    assert (step.action, step.action_input, step.final_answer) == (tool, tool_input, final)


async def test_a_seed_form_action_with_an_action_input_line_runs_the_tool() -> None:
    calls: list[object] = []

    def double(args: dict[str, int]) -> str:
        calls.append(args)
        return str(2 * args["n"])

    tool = ar.ToolSpec(
        name="double",
        description="doubles",
        handler=double,
        parameters={"type": "object", "properties": {"n": {"type": "integer"}}},
    )
    replies = iter(
        [
            'Thought: x\nAction: double {"n": 21}\nAction Input: {"n": 21}',
            "Thought: done\nAction: FINAL_ANSWER 42\nAction Input: 42",
        ]
    )

    async def infer(prompt: str) -> str:
        return next(replies)

    rt = ar.AgentRuntime(ar.AgentConfig(max_iterations=3), tools=[tool])
    session = await rt.run_agent("a", "q", infer)
    assert calls == [{"n": 21}]
    assert session.final_answer == "42"


@pytest.mark.parametrize(
    ("text", "final", "step"),
    [
        # The answer used to run on to the end of the text, past the step's end.
        (
            "Thought: done\nAction: FINAL_ANSWER\nFinal Answer: 5\n"
            "Observation: the user replied thanks\nThought: I should also",
            "5",
            "Thought: done\nAction: FINAL_ANSWER\nFinal Answer: 5",
        ),
        (
            "Action: FINAL_ANSWER\nFinal Answer: 5\nsix\nThought: more",
            "5\nsix",
            "Action: FINAL_ANSWER\nFinal Answer: 5\nsix",
        ),
        # Before the action, the section is the answer, up to the next label.
        (
            "Thought: done\nFinal Answer: 42\nAction: FINAL_ANSWER",
            "42",
            "Thought: done\nFinal Answer: 42\nAction: FINAL_ANSWER",
        ),
        # No section: a `Final Answer:` later on a line after the action (this answered '').
        (
            "Thought: x\nAction: FINAL_ANSWER\nThought: I know. Final Answer: 5",
            "5",
            "Thought: x\nAction: FINAL_ANSWER\nThought: I know. Final Answer: 5",
        ),
    ],
)
def test_a_bare_final_answer_tool_answers_with_a_final_answer_within_the_step(
    text: str, final: str, step: str
) -> None:
    parsed = ar.parse_react_step(text)
    assert (parsed.action, parsed.final_answer, text[: parsed.end]) == (None, final, step)


def test_a_bare_final_answer_tool_with_no_answer_anywhere_is_no_step() -> None:
    with pytest.raises(ar.ParseError, match="expected the final answer"):
        ar.parse_react_step("Thought: x\nAction: FINAL_ANSWER\nThought: I know.")


@pytest.mark.parametrize(
    ("text", "step"),
    [
        ("Action: get_time", "Action: get_time"),
        ("Thought: what time?\nAction 1: get_time  ", "Thought: what time?\nAction 1: get_time  "),
        ("Action: get_time\nObservation: 12:00", "Action: get_time"),
        # What the model went on with is not read: the next action, or a next thought.
        ('Action: get_time\nAction: search {"q": "cats"}', "Action: get_time"),
        ("Thought: t\nAction 1: get_time\nThought: then", "Thought: t\nAction 1: get_time"),
    ],
)
def test_a_bare_action_is_a_call_without_arguments(text: str, step: str) -> None:
    # The seed's loop calls `Action: tool` with `{}`; this was a ParseError, which ended the
    # run of a model that calls a tool taking no arguments so.
    parsed = ar.parse_react_step(text)
    assert (parsed.action, parsed.action_input, text[: parsed.end]) == ("get_time", {}, step)


@pytest.mark.parametrize(
    "chatter", ["\n\nI'll wait for the result.", "\r\n\r\nLet me check.", "  \n \t\nok", "\r\rSo."]
)
def test_a_paragraph_below_a_bare_action_is_chatter_not_its_input(chatter: str) -> None:
    # It was the call's input: a tool taking no arguments got a string, refused ("must be a
    # JSON object"), and the model lost a step.
    parsed = ar.parse_react_step("Thought: what time?\nAction: get_time" + chatter)
    assert (parsed.action, parsed.action_input) == ("get_time", {})


@pytest.mark.parametrize(
    ("below", "expected"),
    [
        ("weather in paris", "weather in paris"),  # on the next line: the input
        ('\n{"q": 1}', {"q": 1}),  # past a blank line, opening as an input does
        ('\n```json\n{"q": 2}\n```', {"q": 2}),
        ('\n"cats"', "cats"),
        ("\n[1, 2]", [1, 2]),
    ],
)
def test_an_input_below_a_bare_action_is_read(below: str, expected: object) -> None:
    parsed = ar.parse_react_step("Thought: t\nAction: search\n" + below)
    assert (parsed.action, parsed.action_input) == ("search", expected)


def test_an_answer_a_paragraph_below_a_bare_final_answer_tool_gives_is_read() -> None:
    parsed = ar.parse_react_step("Thought: t\nAction: FINAL_ANSWER\n\n42")
    assert (parsed.action, parsed.final_answer) == (None, "42")


async def test_a_run_calls_a_bare_actions_tool_without_arguments() -> None:
    @ar.tool
    def get_time() -> str:
        """The time."""
        return "12:00"

    @ar.tool
    def double(n: int) -> int:
        """Twice n."""
        return 2 * n

    replies = iter(
        ["Action: get_time", "Action: double", "Thought: done\nAction: FINAL_ANSWER 12:00"]
    )

    async def infer(prompt: str) -> str:
        return next(replies)

    rt = ar.AgentRuntime(ar.AgentConfig(), tools=[get_time, double])
    session = await rt.run_agent("a", "q", infer)
    assert [(s.action, s.action_input, s.error_kind) for s in session.steps] == [
        ("get_time", {}, None),
        ("double", {}, "permanent"),  # a missing argument: the model sees it and goes on
        ("FINAL_ANSWER", "12:00", None),
    ]
    assert session.steps[0].observation == "12:00"


def test_final_answer_tool_takes_a_final_answer_section() -> None:
    # This used to answer '' (the Final Answer line was ignored).
    step = ar.parse_react_step("Thought: x\nAction: FINAL_ANSWER\nFinal Answer: 5")
    assert (step.action, step.final_answer, step.thought) == (None, "5", "x")
    # An input of its own still wins.
    assert ar.parse_react_step("Action: FINAL_ANSWER 4\nFinal Answer: 5").final_answer == "4"


@pytest.mark.parametrize(
    ("tool_input", "expected"),
    [
        # These used to give 'New York' and 'a': the text after the literal was lost.
        ('"New York" weather tomorrow', '"New York" weather tomorrow'),
        ('"a" and "b"', '"a" and "b"'),
        ('"New York"  ', "New York"),
        ('"a\\"b"', 'a"b'),
        ('{"q": 1} and chatter', {"q": 1}),
        # Chatter on later lines is ignored (this used to give the whole text).
        ('"rust"\n\nI will now wait for the observation.', "rust"),
        ('"rust"  \nmore', "rust"),
        ('"New York" weather\nmore', '"New York" weather\nmore'),
        # A trailing backslash before the closing quote: the quotes still go.
        ('"C:\\Users\\bob\\"', "C:\\Users\\bob\\"),
    ],
)
def test_a_leading_string_literal_is_json_only_when_it_is_the_whole_input(
    tool_input: str, expected: object
) -> None:
    step = ar.parse_react_step(f"Thought: x\nAction: search\nAction Input: {tool_input}")
    assert step.action_input == expected
    assert ar.parse_react_step(f"Action: search {tool_input}").action_input == expected


def test_an_invented_observation_ends_the_step() -> None:
    # This used to raise ParseError: "found both an action and a final answer".
    text = 'Thought: x\nAction: double {"n":21}\nObservation: 42\nThought: I know\nFinal Answer: 42'
    step = ar.parse_react_step(text)
    assert (step.thought, step.action, step.action_input) == ("x", "double", {"n": 21})
    assert step.final_answer is None
    assert text[: step.end] == 'Thought: x\nAction: double {"n":21}'
    # `end` counts characters, not bytes.
    text = "Thought: été 🙂\nAction: t {}  \n  observation: x\nThought: later"
    step = ar.parse_react_step(text)
    assert text[: step.end] == "Thought: été 🙂\nAction: t {}"
    assert step.thought == "été 🙂"
    # What follows the observation is not read, a thought included.
    assert ar.parse_react_step("Action: t {}\nObservation: x\nThought: y").thought == ""
    final = ar.parse_react_step("Thought: t\nAction: FINAL_ANSWER 5\nObservation: none")
    assert (final.final_answer, final.end) == ("5", len("Thought: t\nAction: FINAL_ANSWER 5"))


def test_a_next_thought_or_action_ends_the_step() -> None:
    # The model went on to its next step without the observation: only the first action is
    # the step's, and what follows it (which that action's observation must precede) is cut.
    two = 'Thought: two sums\nAction: add {"a": 1}\nThought: and\nAction: add {"a": 5}'
    step = ar.parse_react_step(two)
    assert (step.thought, step.action, step.action_input) == ("two sums", "add", {"a": 1})
    assert two[: step.end] == 'Thought: two sums\nAction: add {"a": 1}'
    bare = "Action: a\nAction Input: 1\n\nAction: b\nAction Input: 2"
    step = ar.parse_react_step(bare)
    assert (step.action, step.action_input) == ("a", "1")
    assert bare[: step.end] == "Action: a\nAction Input: 1"
    # A thought after the action is the next step's, as after an invented observation.
    after = ar.parse_react_step("Action: t {}\nThought: later")
    assert (after.thought, after.end) == ("", len("Action: t {}"))
    # Before the action has its input, a thought is still part of the step.
    text = "Action: search\nThought: I need the weather\nAction Input: paris"
    step = ar.parse_react_step(text)
    assert (step.thought, step.action, step.action_input, step.end) == (
        "I need the weather",
        "search",
        "paris",
        len(text),
    )


@pytest.mark.parametrize(
    "text",
    [
        "Thought: t\nAction: t {}",
        "Thought: t\nAction: t {}\n\n",
        "Thought: a\nObservation: before the action\nAction: t {}",
        "Thought: t\nFinal Answer: a\nObservation: b",
        "Thought: ü\nAction: search\nAction Input: cats",
    ],
)
def test_end_is_the_length_when_nothing_is_cut(text: str) -> None:
    assert ar.parse_react_step(text).end == len(text)


def test_fields_are_made_once_and_cached() -> None:
    step = ar.parse_react_step("Thought: t\nAction: search rust")
    # Reading one twice gives the same object (the thought is made on first access).
    assert step.thought is step.thought and step.action is step.action
    final = ar.parse_react_step("Thought: t\nFinal Answer: done")
    assert final.final_answer is final.final_answer
    assert final.final_answer == "done" and not gc.is_tracked(final)
    decoded = ar.parse_react_step('Action: FINAL_ANSWER "Paris"')
    assert decoded.final_answer == "Paris" and decoded.final_answer is decoded.final_answer


@pytest.mark.parametrize(
    ("text", "thought", "answer"),
    [
        ("Thought: café 😀 naïve\nFinal Answer: ünïcode ✓", "café 😀 naïve", "ünïcode ✓"),
        ("Thought: é 😀. Final Answer: 東京", "é 😀.", "東京"),
        ('  ü  \nAction: FINAL_ANSWER "😀 \\u00e9"', "ü", "😀 é"),
        ("Thought: ü\nAction: FINAL_ANSWER\nFinal Answer: ß 😀\nThought: x", "ü", "ß 😀"),
    ],
)
def test_lazy_fields_are_cut_from_the_text_by_characters(
    text: str, thought: str, answer: str
) -> None:
    step = ar.parse_react_step(text)
    del text  # the step keeps what it needs
    gc.collect()
    assert (step.thought, step.final_answer) == (thought, answer)


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
        # An empty code fence is no input either (these parsed with the input '').
        ("Action: search ```\n```", "expected the input of tool 'search'"),
        ("Action: search\nAction Input: ```json\n```", "expected the input of tool 'search'"),
        ("Action: search ```json", "expected the input of tool 'search'"),
        ('Action: calc {"a": 1}\nFinal Answer: 3', "both an action"),
    ],
)
def test_errors_say_what_was_expected_and_where(text: str, fragment: str) -> None:
    with pytest.raises(ar.ParseError, match=fragment) as info:
        ar.parse_react_step(text)
    assert info.value.position is not None
    assert 0 <= info.value.position <= len(text)


@pytest.mark.parametrize(
    ("text", "at"),
    [
        # The position used to count UTF-8 bytes: 34 here, pointing at the '}'.
        ("Thought: café 😀 naïve\nAction: ét {}", "ét {}"),
        ("Thought: ü\nAction:  é x", "é x"),
        ("Thought: 😀\nAction: search\nAction Input: ```\n```", " ```\n```"),
        ("Thought: 😀😀\nAction: t {}\nFinal Answer: x", "Final Answer: x"),
    ],
)
def test_error_position_is_a_character_index(text: str, at: str) -> None:
    with pytest.raises(ar.ParseError) as info:
        ar.parse_react_step(text)
    assert info.value.position == text.index(at)


def test_error_position_at_the_end_is_the_length_in_characters() -> None:
    text = "Thought: é😀 only thinking"
    with pytest.raises(ar.ParseError) as info:
        ar.parse_react_step(text)
    assert info.value.position == len(text)


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


@settings(max_examples=200, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=120),
        st.builds(
            lambda t, tool, v: f"Thought: {t}\nAction: {tool} {json.dumps(v)}\nObservation: x",
            thoughts,
            tool_names,
            json_values,
        ),
        st.builds(lambda t, a: f"Thought: {t}\nFinal Answer: {a}", thoughts, st.text(max_size=20)),
    )
)
def test_a_step_pickles_and_copies_as_an_equal_step(text: str) -> None:
    try:
        step = ar.parse_react_step(text)
    except ar.ParseError:
        return
    for again in (
        pickle.loads(pickle.dumps(step)),
        copy.copy(step),
        copy.deepcopy(step),
    ):
        assert type(again) is ar.ReActStep
        assert repr(again) == repr(step)  # not ==: an input may hold a NaN (`[NaN]`)
        assert (again.end, again.is_final, again.action) == (step.end, step.is_final, step.action)


INVISIBLE = ["\ufeff", "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a"]
INVISIBLE += ["\u202e", "\u2060", "\u2066", "\u2069", "\u00a0", "\u2003", "\u202f", "\u3000"]
INVISIBLE += ["\u061c", "\u1680"]  # the Arabic letter mark and the Ogham space: no label


@pytest.mark.parametrize("lead", ["\u061c", "\u1680"])
def test_the_arabic_letter_mark_and_ogham_space_hide_no_label(lead: str) -> None:
    # Both were a ParseError, unlike the other direction marks and Unicode spaces.
    step = ar.parse_react_step(f"{lead}Thought: t\n{lead}Action: search {{}}")
    assert (step.thought, step.action, step.action_input) == ("t", "search", {})


@settings(max_examples=200, deadline=None)
@given(
    thought=thoughts,
    tool=tool_names,
    value=json_values,
    leads=st.lists(
        st.lists(st.sampled_from([*INVISIBLE, " ", "\t"]), max_size=3).map("".join),
        min_size=3,
        max_size=3,
    ),
    langchain=st.booleans(),
)
def test_unicode_blanks_before_a_label_hide_nothing(
    thought: str, tool: str, value: object, leads: list[str], langchain: bool
) -> None:
    # A byte order mark, zero-width space, direction mark or no-break space (as tokenizers
    # and right-to-left text leave) before a label hid it: the step was a ParseError, or its
    # thought held the label.
    payload = json.dumps({"v": value})
    if langchain:
        lines = [f"Thought: {thought}", f"Action: {tool}", f"Action Input: {payload}"]
    else:
        lines = [f"Thought: {thought}", f"Action: {tool} {payload}", "Observation: 1"]
    plain = ar.parse_react_step("\n".join(lines))
    led = ar.parse_react_step(
        "\n".join(lead + line for lead, line in zip(leads, lines, strict=True))
    )
    assert (led.thought, led.action, led.action_input) == (
        plain.thought,
        plain.action,
        plain.action_input,
    )
    answer = ar.parse_react_step(f"{leads[0]}Thought: {thought}\n{leads[1]}Final Answer: 42")
    assert (answer.thought, answer.final_answer) == (thought.strip(), "42")


def test_a_visible_character_before_a_label_still_hides_it() -> None:
    for text in ("x Action: t {}", "Thought: a\n\u00adAction: t {}", "Thought: a\n.Action: t"):
        with pytest.raises(ar.ParseError):
            ar.parse_react_step(text)


def test_adversarial_inputs_take_linear_time() -> None:
    cases = [
        "Action: t " + "[" * 200_000,
        "Action: t " + '{"a": "' + "\\" * 200_001,
        "Thought: x\n" * 50_000 + "Action: t {}",
        "Action" * 100_000,
        # A long action section without its input, then many labels before the input.
        "Action: " + "a" * 100_000 + "\n" + "Thought: x\n" * 100_000 + "Action Input: 1",
        # A bare action, many thoughts, then its input: the input is looked for once.
        "Action: a\n" + "Thought: x\n" * 100_000 + "Action Input: 1",
        # A bare FINAL_ANSWER padded, then many actions: its name is read once.
        "Action: FINAL_ANSWER" + " " * 100_000 + "\n" + "Action: x\n" * 100_000,
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


def _nested(depth: int, leaf: str) -> str:
    return '{"a": ' * depth + leaf + "}" * depth


@pytest.mark.parametrize(
    "payload",
    [
        _nested(128, "1"),  # deeper than serde_json's limit
        "[" * 200 + "]" * 200,  # the deepest decoded (MAX_ARGUMENT_DEPTH)
        '{"x": 1e400, "y": [-1e999]}',  # beyond the float range: json.loads gives inf
        '{"text": "cut emoji \\ud83d"}',  # an escaped lone surrogate
        '["\\udc00", "ok"]',
        '{"n": NaN, "i": -Infinity}',
    ],
)
def test_json_that_serde_refuses_but_json_loads_accepts_is_decoded(payload: str) -> None:
    # These used to come back as the raw text.
    got = ar.parse_react_step(f"Thought: t\nAction: tool {payload} and chatter").action_input
    expected = json.loads(payload)
    assert not isinstance(got, str)
    assert json.dumps(got) == json.dumps(expected)


def test_json_too_deep_for_json_loads_stays_raw_text() -> None:
    payload = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):
        json.loads(payload)
    assert ar.parse_react_step(f"Action: tool {payload}").action_input == payload


def test_json_deeper_than_tool_arguments_may_nest_stays_raw_text() -> None:
    # 500 levels decoded (json.loads takes about 1,000): a session holding them could not be
    # copied for its final checkpoint, after the tool ran.
    for payload in ("[" * 201 + "]" * 201, _nested(201, '"deep"'), _nested(500, "1")):
        assert ar.parse_react_step(f"Action: tool {payload}").action_input == payload
    assert ar.parse_react_step('Action: tool ["[[[", {"a": "{{{"}]').action_input == [
        "[[[",
        {"a": "{{{"},
    ]


@settings(max_examples=200, deadline=None)
@given(
    value=st.recursive(
        st.floats()
        | st.integers()
        | st.text(st.characters(categories=["Cs"]) | st.characters(), max_size=4),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=8,
    ),
    depth=st.integers(0, 200),
)
def test_action_input_decodes_as_json_loads_beyond_serde(value: object, depth: int) -> None:
    # Lone surrogates, NaN and infinities (json.dumps writes them), and deep nesting.
    payload = "[" * depth + json.dumps([value]) + "]" * depth
    got = ar.parse_react_step(f"Action: tool {payload}").action_input
    decoded = json.loads(payload)
    if nested_deeper_than(decoded, MAX_ARGUMENT_DEPTH):  # what no tool call may take
        assert got == payload
    else:
        assert json.dumps(got) == json.dumps(decoded)


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


@pytest.mark.parametrize(
    "fence", ["```json\n{body}\n```", "```\n{body}\n```", "```json {body} ```"]
)
def test_a_fenced_json_input_may_hold_a_fence_in_a_string(fence: str) -> None:
    value = {"title": "howto", "body": "Run ```pip install x``` first", "list": ["```"]}
    body = json.dumps(value)
    step = ar.parse_react_step("Action: write_note " + fence.replace("{body}", body))
    assert step.action_input == value
    step = ar.parse_react_step(
        "Action: note\nAction Input: " + fence.replace("{body}", '"a ```b```"')
    )
    assert step.action_input == "a ```b```"


@pytest.mark.parametrize("text", ['Action: t {"q": 1}', "Thought: é\nFinal Answer: 42"])
def test_a_step_parsed_from_a_str_subclass_is_collected_in_a_cycle(text: str) -> None:
    class Reply(str):
        """A reply string that carries its parsed step (as some SDKs annotate replies)."""

        step: ar.ReActStep

    alive: list[weakref.ref[Reply]] = []
    for _ in range(50):
        reply = Reply(text)
        reply.step = ar.parse_react_step(reply)
        assert reply.step.thought in ("", "é")
        alive.append(weakref.ref(reply))
        del reply
    gc.collect()
    assert [ref for ref in alive if ref() is not None] == []


def test_a_str_subclass_with_its_own_len_parses_as_its_text() -> None:
    # Its `__len__` (here its UTF-8 size) was taken for the character count: a non-ASCII
    # text passed for ASCII, and byte offsets were used as character indexes.
    class Sized(str):
        def __len__(self) -> int:
            return len(str(self).encode())

    for text in ['Thought: héllo wörld\nAction: search {"q": "ünï"}\nObservation: z', "é"]:
        try:
            plain = ar.parse_react_step(text)
        except ar.ParseError as error:
            with pytest.raises(ar.ParseError) as refused:
                ar.parse_react_step(Sized(text))
            assert refused.value.position == error.position
            continue
        sub = ar.parse_react_step(Sized(text))
        assert (sub.thought, sub.action_input_text, sub.end) == (
            plain.thought,
            plain.action_input_text,
            plain.end,
        )
        assert plain.end == 48


@pytest.mark.parametrize(
    ("text", "tool", "tool_input"),
    [
        ('Action: search({"q": "cats"})\nI hope this helps', "search", {"q": "cats"}),
        ('Action: search({"q": "cats"})  \n\nI will wait.', "search", {"q": "cats"}),
        ("Action: calc(2*(3+4))\nthen I add one", "calc", "2*(3+4)"),
        # Text after the parentheses on their line: no call syntax, the raw text as before.
        ('Action: search({"q": "cats"}) and then summarize', "search", None),
    ],
)
def test_call_syntax_then_chatter_on_later_lines(text: str, tool: str, tool_input: object) -> None:
    # The chatter made the whole rest of the section the raw input, which a one-argument
    # tool then received as its argument.
    step = ar.parse_react_step(f"Thought: look it up\n{text}")
    assert step.action == tool
    if tool_input is None:
        assert step.action_input == '({"q": "cats"}) and then summarize'
    else:
        assert step.action_input == tool_input
    answer = ar.parse_react_step("Thought: done\nAction: FINAL_ANSWER(42)\nAnything else?")
    assert answer.final_answer == "42"


# Chat models often write their labels in Markdown emphasis: `**Thought:**` or `**Thought**:`.
EMPHASES = [
    lambda label: f"**{label}:**",
    lambda label: f"**{label}**:",
    lambda label: f"__{label}:__",
    lambda label: f"*{label}:*",
    lambda label: f"_{label}_:",
]


@settings(max_examples=200, deadline=None)
@given(
    thought=thoughts,
    tool=tool_names,
    value=json_values,
    answer=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).filter(
        str.strip  # an empty answer is refused
    ),
    emphasis=st.sampled_from(EMPHASES),
    form=st.sampled_from(["seed", "langchain", "final"]),
)
def test_labels_in_markdown_emphasis_read_as_plain_labels(
    thought: str, tool: str, value: object, answer: str, emphasis: Any, form: str
) -> None:
    # They were no labels: a ParseError, or a thought holding the action's line.
    def step(label: Any) -> str:
        payload = json.dumps([value])
        if form == "seed":
            return f"{label('Thought')} {thought}\n{label('Action')} {tool} {payload}"
        if form == "langchain":
            return (
                f"{label('Thought')} {thought}\n{label('Action')} {tool}\n"
                f"{label('Action Input')} {payload}"
            )
        return f"{label('Thought')} {thought}\n{label('Final Answer')} {answer}"

    plain = ar.parse_react_step(step(lambda label: f"{label}:"))
    emphasized = ar.parse_react_step(step(emphasis))
    fields = ("thought", "action", "action_input", "final_answer")
    assert [getattr(emphasized, f) for f in fields] == [getattr(plain, f) for f in fields]


def test_an_emphasized_observation_ends_the_step_before_its_markers() -> None:
    text = '**Thought:** t\n**Action:** add {"a": 1}\n**Observation:** 2\n**Thought:** more'
    step = ar.parse_react_step(text)
    assert (step.action, step.action_input) == ("add", {"a": 1})
    assert text[: step.end] == '**Thought:** t\n**Action:** add {"a": 1}'


@pytest.mark.parametrize(
    ("text", "thought", "action", "action_input", "answer"),
    [
        # Each answered or thought with the closing marker (`Paris**`), or was no step.
        ("**Final Answer: Paris**", "", None, None, "Paris"),
        ("Thought: x\n**Final Answer: Paris** \n", "x", None, None, "Paris"),
        ("*Final Answer: a b*", "", None, None, "a b"),
        ("**Thought: I know**\nFinal Answer: 1", "I know", None, None, "1"),
        ("**Thought: I know. Final Answer: 42**", "I know.", None, None, "42"),
        ('**Thought: t**\n**Action: add {"a": 1}**', "t", "add", {"a": 1}, None),
        ("**Action: FINAL_ANSWER**\n**Final Answer: x**", "", None, None, "x"),
        # An answer going on after the closing marker, later in its line or on later lines.
        ("**Final Answer: Paris**\nmore", "", None, None, "Paris\nmore"),
        ("**Final Answer: Paris** and more", "", None, None, "Paris and more"),
        ("Thought: I know.\n**Final Answer: Paris**.", "I know.", None, None, "Paris."),
        (
            "Thought: t\n**Final Answer: Paris**\n```py\nx = 1\n```",
            "t",
            None,
            None,
            "Paris\n```py\nx = 1\n```",
        ),
        ("***Final Answer:*** Paris", "", None, None, "Paris"),
        ("***Thought: t***\n***Final Answer: Paris***", "t", None, None, "Paris"),
        ('**Thought: t**\n\n**Action: add {"a": 1}**\n', "t", "add", {"a": 1}, None),
        # A marker mid-line in emphasis: its asterisks went to the thought and the answer.
        ("Thought: I know. **Final Answer:** 42", "I know.", None, None, "42"),
        ("I know. **Final Answer: 42**", "I know.", None, None, "42"),
        ("Thought: I know. *Final Answer: 2**3*", "I know.", None, None, "2**3"),
        ("**Final Answer:**Paris", "", None, None, "Paris"),
    ],
)
def test_emphasis_wrapping_a_whole_label_line(
    text: str, thought: str, action: str | None, action_input: object, answer: str | None
) -> None:
    step = ar.parse_react_step(text)
    assert (step.thought, step.action, step.action_input, step.final_answer) == (
        thought,
        action,
        action_input,
        answer,
    )


@settings(max_examples=200, deadline=None)
@given(
    thought=st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=20
    ),
    answer=st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=20
    ),
    marker=st.sampled_from(["**", "*"]),
)
def test_a_wrapped_line_reads_as_its_plain_label(thought: str, answer: str, marker: str) -> None:
    # One-line sections whose text does not start or end with a marker or a blank.
    assume(thought.strip(" *") == thought and answer.strip(" *") == answer)
    assume(thought.strip() and answer.strip())  # an empty answer is refused
    assume("\r" not in thought + answer and "\n" not in thought + answer)
    plain = ar.parse_react_step(f"Thought: {thought}\nFinal Answer: {answer}")
    wrapped = ar.parse_react_step(
        f"{marker}Thought: {thought}{marker}\n{marker}Final Answer: {answer}{marker}"
    )
    assert (wrapped.thought, wrapped.final_answer) == (plain.thought, plain.final_answer)


@pytest.mark.parametrize(
    "text",
    [
        "**Thought: unclosed, so prose\nFinal Answer: 1",  # no closing marker: no label
        # A wrapped thought or action line whose section goes on: its closing marker would
        # be in the text (a tool got '**\n{"q": 1}' as its input).
        "**Thought: wrapped**\nand more\nFinal Answer: 1",
        '**Action: search**\n{"q": 1}\nFinal Answer: 1',
        "Thought: the word **Action:** mid-line is prose\nFinal Answer: 1",
        "* Thought: a bullet, not emphasis\nFinal Answer: 1",
    ],
)
def test_emphasis_that_wraps_no_label_is_text(text: str) -> None:
    step = ar.parse_react_step(text)
    assert step.final_answer == "1" and step.action is None


@settings(max_examples=200, deadline=None)
@given(thought=thoughts, tool=tool_names, value=json_values, form=st.sampled_from(["seed", "lc"]))
def test_a_tool_name_in_backticks_is_the_name(
    thought: str, tool: str, value: object, form: str
) -> None:
    # A model writing Markdown quotes the name: it was a ParseError (seed form) or a tool
    # named with its backticks, which no tool is (LangChain form).
    payload = json.dumps([value])
    if form == "seed":
        text = f"Thought: {thought}\nAction: `{tool}` {payload}"
    else:
        text = f"Thought: {thought}\nAction: `{tool}`\nAction Input: {payload}"
    step = ar.parse_react_step(text)
    assert (step.action, step.action_input) == (tool, [value])


@pytest.mark.parametrize(
    ("action", "tool"),
    [
        ("`Search Tool`\nAction Input: cats", "Search Tool"),  # a whole line, quoted whole
        ("`a` and `b`\nAction Input: cats", "`a` and `b`"),  # not one quoted name
        ("`add\nAction Input: cats", "`add"),  # no closing backtick
    ],
)
def test_only_a_name_quoted_whole_loses_its_backticks(action: str, tool: str) -> None:
    assert ar.parse_react_step(f"Thought: t\nAction: {action}").action == tool


@pytest.mark.parametrize(
    "text",
    [
        "**Action:** search **Action Input:** cats",
        "Action: search **Action Input**: cats",
        "Action: search *Action Input:* cats",
    ],
)
def test_an_action_input_label_in_asterisks_on_the_actions_line(text: str) -> None:
    # The label was read as the input's text: '**Action Input:** cats'.
    step = ar.parse_react_step(text)
    assert (step.action, step.action_input) == ("search", "cats")


@pytest.mark.parametrize("tool", ["search", "Search Tool"])
def test_a_name_in_backticks_then_action_input_on_its_line(tool: str) -> None:
    # The label after a backtick went unread: `search` got 'Action Input: cats' as its
    # input, and `Search Tool` was a ParseError.
    step = ar.parse_react_step(f"Action: `{tool}` Action Input: cats")
    assert (step.action, step.action_input) == (tool, "cats")
    # An unclosed backtick still opens code: no label is read after it.
    step = ar.parse_react_step("Action: run `x Action Input: y")
    assert (step.action, step.action_input) == ("run", "`x Action Input: y")


@pytest.mark.parametrize("tool", ["FINAL_ANSWER", "Final Answer", "`FINAL_ANSWER`"])
def test_a_final_answer_tool_with_action_input_on_its_line(tool: str) -> None:
    # FINAL_ANSWER answered 'Action Input: 42' (its seed form read the label as the answer).
    assert ar.parse_react_step(f"Action: {tool} Action Input: 42").final_answer == "42"


@pytest.mark.parametrize("marker", ["**Final Answer:** Paris", "**Final Answer: Paris**"])
def test_final_answer_tool_then_a_later_marker_in_asterisks(marker: str) -> None:
    # It answered '** Paris' or 'Paris**'.
    step = ar.parse_react_step(f"Action: FINAL_ANSWER\nThought: done. {marker}")
    assert step.final_answer == "Paris"


def test_a_final_answer_tool_in_backticks_answers() -> None:
    assert ar.parse_react_step("Action: `FINAL_ANSWER` 42").final_answer == "42"


@pytest.mark.parametrize(
    ("text", "tool", "tool_input", "final"),
    [
        # A comma or semicolon after the name separates it from its input, as `:` and `=`
        # do: the tool got ', {"a": 1}' and the answers kept their separator.
        ('Action: add, {"a": 1}', "add", {"a": 1}, None),
        ('Action: add; {"a": 1}', "add", {"a": 1}, None),
        ("Action: FINAL_ANSWER, 42", None, None, "42"),
        ("Action: FINAL_ANSWER; 42", None, None, "42"),
        ("Action: FINAL_ANSWER, Action Input: 42", None, None, "42"),
        ("Action: FINAL_ANSWER,\nAction Input: 42", None, None, "42"),
        ('Action: add , {"a": 1}', "add", {"a": 1}, None),
        ("Action: Final Answer, Paris", None, None, "Paris"),
    ],
)
def test_a_comma_after_the_tool_name_separates_its_input(
    text: str, tool: str | None, tool_input: object, final: str | None
) -> None:
    step = ar.parse_react_step(text)
    assert (step.action, step.action_input, step.final_answer) == (tool, tool_input, final)


@pytest.mark.parametrize(
    ("text", "thought"),
    [
        ("Action: FINAL_ANSWER\nThought: done. Final Answer: Paris", "done."),
        ("Action: FINAL_ANSWER\nThought: done. **Final Answer:** Paris", "done."),
        # A thought before the action is the step's thought: the later one is not read.
        ("Thought: a\nAction: FINAL_ANSWER\nThought: so Final Answer: Paris", "a"),
    ],
)
def test_a_thought_after_a_bare_final_answer_tool_ends_at_its_marker(
    text: str, thought: str
) -> None:
    # The thought kept the marker and the answer ('done. Final Answer: Paris').
    step = ar.parse_react_step(text)
    assert (step.thought, step.final_answer) == (thought, "Paris")


@settings(max_examples=200, deadline=None)
@given(
    tool=tool_names,
    value=json_values,
    form=st.sampled_from(["{} {}", "{}: {}", "{}={}", "{}({})", "{}\nAction Input: {}"]),
)
def test_the_input_as_written_is_the_text_the_input_decodes_from(
    tool: str, value: object, form: str
) -> None:
    payload = json.dumps([value])
    step = ar.parse_react_step("Thought: t\nAction: " + form.format(tool, payload) + "  \n")
    assert step.action_input_text == payload
    assert json.loads(step.action_input_text) == step.action_input


# Raw text on one line: any script, no label colon, no fence, no JSON opening.
raw_inputs = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters=":`{[\"'"
    ),
    min_size=1,
    max_size=40,
).filter(lambda t: t.strip() != "")


@settings(max_examples=300, deadline=None)
@given(thought=thoughts, tool=tool_names, raw=raw_inputs)
@example(thought="pure ascii", tool="t", raw="also ascii")
@example(thought="Grüße, 東京", tool="t", raw="naïve café 🙂")
@example(thought="ascii", tool="t", raw="ümlaut after ascii")
def test_parts_are_slices_of_the_text_whether_it_is_ascii_or_not(
    thought: str, tool: str, raw: str
) -> None:
    # An ASCII text is sliced as stored, any other through UTF-8: both give the same parts.
    text = f"Thought: {thought}\nAction: {tool}\nAction Input: {raw}\nObservation: seen"
    step = ar.parse_react_step(text)
    assert step.thought == thought.strip()
    assert step.action == tool
    assert step.action_input_text == raw.strip()
    assert text[: step.end] == text[: text.index("\nObservation")].rstrip()
    answered = ar.parse_react_step(f"Thought: {thought}\nFinal Answer: {raw}")
    assert answered.final_answer == raw.strip()
    assert answered.end == len(f"Thought: {thought}\nFinal Answer: {raw}")


def test_the_input_as_written_is_never_decoded() -> None:
    fenced = 'Action: run\nAction Input: ```json\n{"code": "print(1)"}\n```\nDone.'
    assert ar.parse_react_step(fenced).action_input_text == '{"code": "print(1)"}'
    quoted = ar.parse_react_step('Action: echo "hi there"')
    assert (quoted.action_input_text, quoted.action_input) == ('"hi there"', "hi there")
    assert ar.parse_react_step("Action: shell ls -la").action_input_text == "ls -la"
    assert ar.parse_react_step("Action: now").action_input_text == ""  # none written
    assert ar.parse_react_step("Action: now").action_input == {}
    assert ar.parse_react_step("Final Answer: 1").action_input_text is None
