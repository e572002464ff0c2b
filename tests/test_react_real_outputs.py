"""parse_react_step on replies real chat models wrote, as reported against ReAct parsers.

Each row is a reply shape that broke a ReAct parser in LangChain, LlamaIndex, smolagents,
CrewAI or Dify ("Could not parse LLM output", "Invalid Format: Missing 'Action:'", a tool
named "Final Answer is not a valid tool"), with the step a user expects from it.
"""

import ast
import asyncio
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime import ParseError, parse_react_step

# (name, reply, thought, action, action_input, final_answer)
READ: list[tuple[str, str, str, str | None, Any, str | None]] = [
    # --- shapes that were already read as expected (kept here as a regression table) ---
    (
        "json in a ```json fence",
        'Thought: look it up\nAction: search\nAction Input: ```json\n{"query": "rust"}\n```',
        "look it up",
        "search",
        {"query": "rust"},
        None,
    ),
    (
        "fence on the line after the label",
        'Action: search\nAction Input:\n```\n{"query": "rust"}\n```\n',
        "",
        "search",
        {"query": "rust"},
        None,
    ),
    ("quoted string", 'Action: search\nAction Input: "query"', "", "search", "query", None),
    (
        "json over several lines",
        'Action: search\nAction Input: {\n  "query": "rust",\n  "k": 3\n}',
        "",
        "search",
        {"query": "rust", "k": 3},
        None,
    ),
    (
        "text after the json",
        'Action: search\nAction Input: {"query": "rust"} I will wait for the result.',
        "",
        "search",
        {"query": "rust"},
        None,
    ),
    ("call syntax", 'Action: search("query")', "", "search", "query", None),
    (
        "thought without its label",
        "I should look it up.\nAction: search\nAction Input: rust",
        "I should look it up.",
        "search",
        "rust",
        None,
    ),
    (
        "labels in capitals",
        "THOUGHT: x\nACTION: search\nACTION INPUT: rust",
        "x",
        "search",
        "rust",
        None,
    ),
    (
        "extra spaces",
        "  Thought :   x  \n  Action :   search   \n  Action Input :   rust  ",
        "x",
        "search",
        "rust",
        None,
    ),
    (
        "windows line endings",
        'Thought: x\r\nAction: search\r\nAction Input: {"q": "rust"}\r\n',
        "x",
        "search",
        {"q": "rust"},
        None,
    ),
    ("windows line endings, answer", "Thought: x\r\nFinal Answer: 42\r\n", "x", None, None, "42"),
    (
        "tool name with dots",
        'Action: github.search\nAction Input: {"q": 1}',
        "",
        "github.search",
        {"q": 1},
        None,
    ),
    ("tool name with a dash", 'Action: web-search {"q": 1}', "", "web-search", {"q": 1}, None),
    (
        "unicode",
        'Thought: 日本語で考える\nAction: 検索\nAction Input: {"q": "東京"}',
        "日本語で考える",
        "検索",
        {"q": "東京"},
        None,
    ),
    (
        "unicode answer",
        "Thought: 完了\nFinal Answer: 東京です 🎉",
        "完了",
        None,
        None,
        "東京です 🎉",
    ),
    (
        "an action, an invented observation, then a final answer",
        "Thought: x\nAction: search\nAction Input: rust\nObservation: 42\nThought: ok\n"
        "Final Answer: 42",
        "x",
        "search",
        "rust",
        None,
    ),
    (
        "python code in a fence after a blank line (LangChain #1358)",
        "Action: python\nAction Input:\n\n```python\nprint(1)\n```",
        "",
        "python",
        "print(1)",
        None,
    ),
    # --- shapes that were misread or refused before ---
    (
        "ReAct paper bracket form",
        "Thought: I need to search\nAction: search[Colorado orogeny]",
        "I need to search",
        "search",
        "Colorado orogeny",
        None,
    ),
    (
        "ReAct paper bracket form, numbered, with its observation",
        "Thought 1: I need to search\nAction 1: Search[Colorado orogeny]\nObservation 1: x",
        "I need to search",
        "Search",
        "Colorado orogeny",
        None,
    ),
    (
        "bracket form holding a JSON array stays the array",
        "Action: search[1, 2]",
        "",
        "search",
        [1, 2],
        None,
    ),
    (
        "bracket form, the paper's Finish is a tool like any other",
        "Action: Finish[1,800 to 7,000 ft]",
        "",
        "Finish",
        "1,800 to 7,000 ft",
        None,
    ),
    (
        "'Final Answer' written as the action, LangChain form",
        'Thought: done\nAction: Final Answer\nAction Input: "Paris"',
        "done",
        None,
        None,
        "Paris",
    ),
    (
        "'Final Answer' written as the action, answer on the next label",
        "Action: Final Answer\nFinal Answer: 42",
        "",
        None,
        None,
        "42",
    ),
    (
        "'Final Answer:' written after 'Action:'",
        "Thought: done\nAction: Final Answer: Paris is the capital",
        "done",
        None,
        None,
        "Paris is the capital",
    ),
    (
        "'Action: None' before the final answer (LangChain #1345)",
        "Thought: I can answer directly\nAction: None\nFinal Answer: 42",
        "I can answer directly",
        None,
        None,
        "42",
    ),
    (
        # Its line was part of the answer ('42\nAction: None'), as no other action's is.
        "'Action: None' after the final answer",
        "Thought: I can answer directly\nFinal Answer: 42\nAction: None",
        "I can answer directly",
        None,
        None,
        "42",
    ),
    (
        "'Action: N/A' and 'Action Input: N/A' before the final answer",
        "Thought: no tool needed\nAction: N/A\nAction Input: N/A\nFinal Answer: 42",
        "no tool needed",
        None,
        None,
        "42",
    ),
    (
        "LangChain JSON agent blob in a fence",
        'Thought: x\nAction:\n```json\n{"action": "search", "action_input": {"q": "rust"}}\n```',
        "x",
        "search",
        {"q": "rust"},
        None,
    ),
    (
        "LangChain JSON agent blob, no fence",
        'Action: {"action": "search", "action_input": "rust"}',
        "",
        "search",
        "rust",
        None,
    ),
    (
        "LangChain JSON agent blob giving the final answer",
        'Thought: done\nAction:\n```\n{"action": "Final Answer", "action_input": "42"}\n```',
        "done",
        None,
        None,
        "42",
    ),
    (
        "reasoning model: a <think> block drafting another action",
        '<think>\nMaybe Action: calc {"n": 1} first? No.\nAction: calc\n</think>\n'
        "Thought: search it\nAction: search\nAction Input: rust",
        "search it",
        "search",
        "rust",
        None,
    ),
    (
        "reasoning model: the <think> block is the only thought",
        "<think>I should search</think>\n\nAction: search\nAction Input: rust",
        "I should search",
        "search",
        "rust",
        None,
    ),
    (
        "reasoning model: a draft answer in the <think> block",
        "<think>\nFinal Answer: maybe 41\n</think>\nFinal Answer: 42",
        "Final Answer: maybe 41",
        None,
        None,
        "42",
    ),
    (
        "reasoning model whose opening tag was in the prompt: a lone </think> line",
        'Okay, maybe Action: calc {"n": 1}\nAction: calc\nAction Input: {"n": 1}\n'
        "Observation: 2\n</think>\n\nThought: search it\nAction: search\nAction Input: rust",
        "search it",
        "search",
        "rust",
        None,
    ),
    (
        "a lone </think> line: the reasoning is the only thought",
        "I should search.\n  </think>Action: search\nAction Input: rust",
        "I should search.",
        "search",
        "rust",
        None,
    ),
    (
        "a lone </thinking> line after a draft answer",
        "Final Answer: maybe 41\n</THINKING>\nFinal Answer: 42",
        "Final Answer: maybe 41",
        None,
        None,
        "42",
    ),
    (
        "a closing tag inside a line is text, not the end of a reasoning block",
        "Thought: tags\nAction: write\nAction Input: close it with </think>",
        "tags",
        "write",
        "close it with </think>",
        None,
    ),
    (
        "full-width colons after the labels (models writing Chinese)",
        "Thought\uff1a\u67e5\u4e00\u4e0b\nAction\uff1a search\nAction Input\uff1a rust",
        "\u67e5\u4e00\u4e0b",
        "search",
        "rust",
        None,
    ),
    (
        "a full-width colon after a bold label and after 'Final Answer'",
        "**Thought\uff1a** done\nFinal Answer\uff1a 42",
        "done",
        None,
        None,
        "42",
    ),
    (
        "a Python dict as the input (single quotes, True, None), as LlamaIndex reads it",
        "Thought: x\nAction: search\nAction Input: {'q': 'a b', 'exact': True, 'page': None}",
        "x",
        "search",
        {"q": "a b", "exact": True, "page": None},
        None,
    ),
    (
        "JSON with trailing commas",
        'Action: add\nAction Input: {"a": 1, "b": [2, 3,],}',
        "",
        "add",
        {"a": 1, "b": [2, 3]},
        None,
    ),
    (
        "a Python dict in the seed form, a double-quoted string in it",
        "Action: say {'text': \"it's\", 'n': -1.5e3} and more",
        "",
        "say",
        {"text": "it's", "n": -1500.0},
        None,
    ),
    (
        "brackets and a double quote inside a single-quoted string",
        "Action: say\nAction Input: {'text': 'he said \"} ]\"'}",
        "",
        "say",
        {"text": 'he said "} ]"'},
        None,
    ),
    (
        "unquoted keys are neither JSON nor Python: the text stays as written",
        "Action: search\nAction Input: {q: 1}",
        "",
        "search",
        "{q: 1}",
        None,
    ),
    (
        "a thought written after the final answer is not the step's",
        "Final Answer: 42\n\nObservation: done\nThought: ok",
        "",
        None,
        None,
        "42\n\nObservation: done\nThought: ok",
    ),
    (
        "a comma after the tool name before 'Action Input:' on its line",
        "Action: search, Action Input: rust",
        "",
        "search",
        "rust",
        None,
    ),
    # --- a tool without arguments, written LangChain's way ---
    ("an empty Action Input", "Action: get_time\nAction Input:", "", "get_time", {}, None),
    # --- a step wrapped whole in a code fence: its closing fence ends the step ---
    (
        "a fenced step, then an invented observation",
        '```\nThought: search\nAction: search {"q": "rust"}\n```\nObservation: cancelled.\n'
        "Thought: I now know.\nFinal Answer: It was cancelled.",
        "search",
        "search",
        {"q": "rust"},
        None,
    ),
    (
        "a fenced bare action",
        "```\nThought: what time is it\nAction: get_time\n```",
        "what time is it",
        "get_time",
        {},
        None,
    ),
    (
        "a fenced FINAL_ANSWER",
        "```\nThought: done\nAction: FINAL_ANSWER Paris\n```",
        "done",
        None,
        None,
        "Paris",
    ),
    (
        "a fenced final answer",
        "```text\nThought: done\nFinal Answer: Paris\n```\n",
        "done",
        None,
        None,
        "Paris",
    ),
    (
        "a fenced raw input",
        "```\nThought: look\nAction: search\nAction Input: rust\n```",
        "look",
        "search",
        "rust",
        None,
    ),
    (
        "a fenced step whose input is fenced with its language",
        '```\nAction: search\nAction Input:\n```json\n{"q": "rust"}\n```\n```',
        "",
        "search",
        {"q": "rust"},
        None,
    ),
    (
        "a fenced step whose input opens with a bare fence",
        '```\nThought: x\nAction: write_file\nAction Input:\n```\n{"path": "a.txt"}\n```\n```',
        "x",
        "write_file",
        {"path": "a.txt"},
        None,
    ),
    (
        "a fenced final answer holding a code block",
        "```\nFinal Answer: code:\n```\nx = 1\n```\ndone\n```",
        "",
        None,
        None,
        "code:\n```\nx = 1\n```\ndone",
    ),
    (
        "a fenced step in the marker form",
        "```\nThought: I now know. Final Answer: 42\n```",
        "I now know.",
        None,
        None,
        "42",
    ),
    (
        "a fenced step in the marker form, in emphasis",
        "```\nThought: done. **Final Answer: 42**\n```",
        "done.",
        None,
        None,
        "42",
    ),
    (
        "a thought, then a fenced final answer",
        "Thought: I know it.\n```\nFinal Answer: 42\n```",
        "I know it.",
        None,
        None,
        "42",
    ),
    (
        "a thought, then a fenced final answer holding a code block",
        "Thought: t\n```\nFinal Answer: Run:\n```sh\nmake\n```\n```",
        "t",
        None,
        None,
        "Run:\n```sh\nmake\n```",
    ),
    (
        "a thought, then a fenced action and an invented observation",
        'Thought: look\n```\nAction: search\nAction Input: {"q": "rust"}\n```\n'
        "Observation: made up",
        "look",
        "search",
        {"q": "rust"},
        None,
    ),
    (
        "a thought showing code in a fence it leaves open, then an action",
        "Thought: I'll write the file:\n```python\nprint('hi')\nAction: write_file\n"
        'Action Input: {"path": "a.py"}',
        "I'll write the file:\n```python\nprint('hi')",
        "write_file",
        {"path": "a.py"},
        None,
    ),
    (
        "a thought quoting a query in a fence it leaves open, then a final answer",
        "Thought: The failing query is\n```sql\nSELECT * FROM t\nFinal Answer: index t.id",
        "The failing query is\n```sql\nSELECT * FROM t",
        None,
        None,
        "index t.id",
    ),
    (
        "a fence after the thought left open, the input closing a block of its own",
        "Thought: I will write the README\n```\nAction: write_file\n"
        "Action Input: README.md\n# Demo\n```bash\nmake\n```",
        "I will write the README",
        "write_file",
        "README.md\n# Demo\n```bash\nmake\n```",
        None,
    ),
    (
        "a thought holding a whole code block, then a final answer",
        "Thought: I ran\n```py\nx = 1\n```\nFinal Answer: 1",
        "I ran\n```py\nx = 1\n```",
        None,
        None,
        "1",
    ),
    (
        "a step wrapped in four backticks, its answer holding a three-backtick block",
        "````\nFinal Answer: Run this:\n```\npip install foo\n```\nThen restart.\n````",
        "",
        None,
        None,
        "Run this:\n```\npip install foo\n```\nThen restart.",
    ),
    (
        "a reasoning block closed in capitals",
        "<THINK>plan</THINK>\nFinal Answer: 1",
        "plan",
        None,
        None,
        "1",
    ),
    (
        "a reasoning block opened with one tag and closed with the other",
        "<think>plan</thinking>\nAction: search\nAction Input: a",
        "plan",
        "search",
        "a",
        None,
    ),
    (
        "reasoning closed only, quoting the format in a fence",
        "The format I must follow is:\n```\nThought: ...\n"
        'Action: get_weather {"city": "London"}\n```\nSo I will ask for Paris.\n</think>\n\n'
        'Thought: I need the weather in Paris.\nAction: get_weather {"city": "Paris"}',
        "I need the weather in Paris.",
        "get_weather",
        {"city": "Paris"},
        None,
    ),
]


@pytest.mark.parametrize(
    ("reply", "thought", "action", "action_input", "final_answer"),
    [row[1:] for row in READ],
    ids=[row[0] for row in READ],
)
def test_real_replies_read_as_a_user_expects(
    reply: str, thought: str, action: str | None, action_input: Any, final_answer: str | None
) -> None:
    step = parse_react_step(reply)
    assert (step.thought, step.action, step.action_input, step.final_answer) == (
        thought,
        action,
        action_input,
        final_answer,
    )


# (name, reply, words the message must hold)
REFUSED: list[tuple[str, str, str]] = [
    (
        "an action and a final answer in one reply (LangChain refuses it too)",
        "Thought: x\nAction: search\nAction Input: rust\nFinal Answer: 42",
        "both an action ('search') and a final answer",
    ),
    (
        "a bare action, then a final answer",
        "Thought: x\nAction: search\nFinal Answer: 42",
        "both an action ('search') and a final answer",
    ),
    (
        "a thought with no action (CrewAI's \"Missing 'Action:'\")",
        "Thought: I should search the web",
        "expected a line starting with 'Action:' or 'Final Answer:'",
    ),
    (
        "a reply that is only an answer, with no label",
        "The capital of France is Paris.",
        "expected a line starting with 'Action:' or 'Final Answer:'",
    ),
    ("an empty reply", "", "expected a line starting with 'Action:' or 'Final Answer:'"),
    (
        "a JSON blob naming no action",
        'Action:\n```json\n{"tool": "search"}\n```',
        "expected a tool name after 'Action:'",
    ),
    (
        "an empty final answer (as FINAL_ANSWER with nothing after it is refused)",
        "Thought: x\nFinal Answer:   \n",
        "expected the final answer after 'Final Answer:'",
    ),
    (
        "an empty final answer after the marker in a thought",
        "Thought: I know it. Final Answer:",
        "expected the final answer after 'Final Answer:'",
    ),
    (
        "no action, then an empty final answer",
        "Action: None\nFinal Answer:",
        "expected the final answer after 'Final Answer:'",
    ),
    (
        "a lone </think> with no step after it (the reply was cut)",
        "Action: search\nAction Input: rust\n</think>\n",
        "expected a line starting with 'Action:' or 'Final Answer:'",
    ),
    (
        "an unclosed <think> block (the reply was cut)",
        "<think>\nI should search",
        "the reasoning block that opens the reply never closes",
    ),
    (
        "an unclosed <think> block drafting an action (cut at a stop sequence)",
        "<think>\nThe format is Thought / Action. I could write:\n"
        'Action: delete_logs {"days": 0}\n',
        "the reasoning block that opens the reply never closes",
    ),
    (
        "an unclosed <thinking> block drafting an answer",
        "<thinking>\nMy first guess would be\nFinal Answer: 1912\n",
        "the reasoning block that opens the reply never closes",
    ),
]


@pytest.mark.parametrize(
    ("reply", "message"), [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED]
)
def test_replies_that_are_no_step_are_refused_clearly(reply: str, message: str) -> None:
    with pytest.raises(ParseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_react_step(reply)


def test_error_positions_after_a_think_block_index_the_whole_reply() -> None:
    reply = "<think>x</think>\nThought: y\nAction: search\nAction Input: a\nFinal Answer: 1"
    with pytest.raises(ParseError) as caught:
        parse_react_step(reply)
    assert caught.value.position == reply.index("Final Answer:")


def test_step_end_after_a_think_block_indexes_the_whole_reply() -> None:
    reply = "<think>plan</think>\nAction: search\nAction Input: rust\nObservation: made up"
    step = parse_react_step(reply)
    assert reply[: step.end] == "<think>plan</think>\nAction: search\nAction Input: rust"


def test_positions_after_a_lone_closing_tag_index_the_whole_reply() -> None:
    reply = "draft\n</think>\nThought: y\nAction: search\nAction Input: a\nFinal Answer: 1"
    with pytest.raises(ParseError) as caught:
        parse_react_step(reply)
    assert caught.value.position == reply.index("Final Answer:")
    reply = "dr\u00e4ft\n</think>\nAction: search\nAction Input: rust\nObservation: made up"
    assert reply[: parse_react_step(reply).end] == reply[: reply.index("\nObservation")]


_words = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n<>`[]"), max_size=30)


# A reasoning block, with a draft of a step in it, before the step: opened in the text, or
# only closed (the opening tag was in the prompt, as the chat templates of R1 distills put it).
DRAFT = "\nAction: other {}\nObservation: 1\nFinal Answer: 2\n</think>\n"


@pytest.mark.parametrize("opening", ["<think>\n", ""], ids=["opened", "closed only"])
@settings(max_examples=200, deadline=None)
@given(reasoning=_words, thought=_words.filter(lambda t: t.strip() != ""))
def test_a_reasoning_block_never_changes_the_step(
    opening: str, reasoning: str, thought: str
) -> None:
    body = f"Thought: {thought}\nAction: search\nAction Input: rust"
    try:
        plain = parse_react_step(body)
    except ParseError:
        return
    step = parse_react_step(opening + reasoning + DRAFT + body)
    assert (step.thought, step.action, step.action_input) == (
        plain.thought,
        plain.action,
        plain.action_input,
    )


def _strict(name: str) -> float:
    """Refuses NaN and Infinity, which are no JSON: `Search[Infinity]` is the paper's form."""
    raise ValueError(name)


@settings(max_examples=200, deadline=None)
@given(
    query=st.text(alphabet=st.characters(codec="utf-8", exclude_characters='[]"\r\n'), min_size=1)
)
def test_the_bracket_form_gives_the_text_inside(query: str) -> None:
    reply = f"Action: Search[{query}]"
    step = parse_react_step(reply)
    assert step.action == "Search"
    try:
        assert step.action_input == json.loads(f"[{query}]", parse_constant=_strict)
    except ValueError:
        pass  # not JSON: the paper's form
    else:
        return
    if query.strip() and not query.lstrip().startswith(("[", "{")):
        expected = parse_react_step(f"Action: Search\nAction Input: {query}").action_input
        assert step.action_input == expected


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_containers = st.lists(_values, max_size=4) | st.dictionaries(
    st.text(max_size=6), _values, max_size=4
)


def _with_trailing_commas(value: Any) -> str:
    """JSON text of `value` with a comma after the last item of each non-empty container."""
    if isinstance(value, dict) and value:
        items = ", ".join(f"{json.dumps(k)}: {_with_trailing_commas(v)}" for k, v in value.items())
        return f"{{{items},}}"
    if isinstance(value, list) and value:
        return f"[{', '.join(_with_trailing_commas(v) for v in value)},]"
    return json.dumps(value)


def _same(a: Any, b: Any) -> bool:
    """Equal, with types (True is not 1) and float signs (-0.0 is not 0.0) told apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(value=_containers)
def test_a_python_literal_input_decodes_as_literal_eval_reads_it(value: Any) -> None:
    """`repr` of a dict or list: single-quoted strings with Python's escapes, True/None."""
    step = parse_react_step(f"Action: t\nAction Input: {value!r}")
    assert _same(step.action_input, value)


@settings(max_examples=300, deadline=None)
@given(value=_containers)
def test_a_python_literal_in_call_parentheses_decodes_as_literal_eval_reads_it(
    value: Any,
) -> None:
    # A `)`, `(` or `"` inside a single-quoted string closed the call early (or opened a
    # string): the tool was given the text, parentheses and all.
    step = parse_react_step(f"Action: t({value!r})")
    assert _same(step.action_input, value)


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ("Action: note({'text': 'Steps: 1) wash 2) dry'})", {"text": "Steps: 1) wash 2) dry"}),
        ("Action: regex( {'pattern': '[a-z]+)'} )", {"pattern": "[a-z]+)"}),
        ("Action: say({'text': 'He said \"hi'})", {"text": 'He said "hi'}),
        ("Action: say(['a)', 'b'])\nObservation: x", ["a)", "b"]),
    ],
)
def test_call_parentheses_around_a_python_literal(reply: str, value: Any) -> None:
    assert parse_react_step(reply).action_input == value


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        ("Action: f({'a': 1}, 2)", "{'a': 1}, 2"),
        ("Action: f(what's up)", "what's up"),
        # A `)` in a single-quoted string of one of several arguments.
        ("Action: note({'t': ')'}, {'u': 1})", "{'t': ')'}, {'u': 1}"),
        ("Action: f('a)b', 2)", "'a)b', 2"),
        # Arguments opening with a keyword, or a number, boolean or None then another.
        ("Action: search(query='1) wash')", "query='1) wash'"),
        ("Action: search(query = 'He said \"hi', n=3)", "query = 'He said \"hi', n=3"),
        ("Action: f(3, 'a)b')", "3, 'a)b'"),
        ("Action: f(-2.5e3 , 'a)b')", "-2.5e3 , 'a)b'"),
        ("Action: f(None, 'x)')\nObservation: y", "None, 'x)'"),
        ("Action: f(true, 'x)')", "true, 'x)'"),
        # Plain words stay plain: nothing is read as a Python string in them.
        ("Action: f(it's (new))", "it's (new)"),
        ("Action: f(x == 'a)b')", "(x == 'a)b')"),
        ("Action: f(3 apples, 'a)b')", "(3 apples, 'a)b')"),
        ("Action: f(inf, 'a)b')", "(inf, 'a)b')"),
        # After a keyword or a number, an apostrophe where no value starts is prose's.
        ("Action: lookup(name=O'Brien) (the author's page)", "(name=O'Brien) (the author's page)"),
        ("Action: search(1, it's) or (that's)", "(1, it's) or (that's)"),
        ("Action: search(q=r'a)b', n=2)", "q=r'a)b', n=2"),
        ("Action: search(pattern = r'\\d+)')", "pattern = r'\\d+)'"),
        ("Action: search(q='Steps: 1) wash ' '2) dry')", "q='Steps: 1) wash ' '2) dry'"),
        ("Action: search(q='1) ' + 'wash')", "q='1) ' + 'wash'"),
        ("Action: f(q='a)b'.upper())", "q='a)b'.upper()"),
        ("Action: f(q='%s)' % x)", "q='%s)' % x"),
        ("Action: f(\n    q='1) wash',  # step one\n)", "q='1) wash',  # step one"),
        ("Action: f(\n    q='1) wash'  # step one\n)", "q='1) wash'  # step one"),
        # A string that ends where no value does is prose's apostrophes paired up.
        ("Action: search(q=C++'s) and (Rust's)", "(q=C++'s) and (Rust's)"),
        ("Action: search(q='Bob''s car) or (Ann's)", "(q='Bob''s car) or (Ann's)"),
        (
            "Action: search(lang=R, R's plotting) or (Python's)",
            "(lang=R, R's plotting) or (Python's)",
        ),
    ],
)
def test_call_parentheses_around_more_than_a_literal_give_their_text(reply: str, text: str) -> None:
    assert parse_react_step(reply).action_input_text == text


@settings(max_examples=300, deadline=None)
@given(
    name=st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
    value=st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
)
def test_a_keyword_argument_in_call_parentheses_is_given_whole(name: str, value: str) -> None:
    # Python's repr: quotes of either kind, `)` and `(` inside, escapes for line breaks.
    step = parse_react_step(f"Action: t({name}={value!r})")
    assert step.action == "t"
    assert step.action_input_text == f"{name}={value!r}"


@settings(max_examples=300, deadline=None)
@given(value=_containers)
def test_json_with_trailing_commas_decodes_as_without_them(value: Any) -> None:
    step = parse_react_step(f"Action: t\nAction Input: {_with_trailing_commas(value)}")
    assert _same(step.action_input, value)


@pytest.mark.parametrize(
    "literal",
    [
        r"{'a': '\x41\u00e9\U0001F600\n\t\\ \' \012 \0'}",  # Python's escapes
        "{'a': -0.0, 'b': 1e400, 'c': 123456789012345678901234567890}",
        "[[], {}, [[1]], 'x']",
        # A backslash before a line break continues the string (\n, \r\n or \r).
        "{'s': 'a\\\nb', 't': 'c\\\r\nd', 'u': 'e\\\rf'}",
    ],
)
def test_python_literal_inputs_decode_as_literal_eval_reads_them(literal: str) -> None:
    step = parse_react_step(f"Action: t\nAction Input: {literal}")
    assert _same(step.action_input, ast.literal_eval(literal))


def test_an_unknown_escape_keeps_its_backslash_as_in_python() -> None:
    step = parse_react_step(r"Action: t {'pattern': '\d+\.\w'}")
    assert step.action_input == {"pattern": "\\d+\\.\\w"}
    # `\/` is JSON's escape, not Python's: it was read as '/' in a quoted Python string.
    step = parse_react_step("Action: t {'pattern': 'a\\/b', 'json': \"c\\/d\",}")
    assert step.action_input == {"pattern": "a\\/b", "json": "c/d"}


@pytest.mark.parametrize(
    "text",
    [
        r"['\ud800']",  # a lone surrogate: no str of Rust's, and no UTF-8
        "[,]",  # a comma after no item
        "[1,,]",
        "{'a': 10**3}",  # an expression
        "{'k': 'never closed}",
        "{'a': (1, 2)}",  # a tuple: JSON has none
        # A character by its name: not read rather than read with its backslash kept.
        r"{'unit': '\N{DEGREE SIGN}C'}",
    ],
)
def test_inputs_neither_json_nor_a_python_literal_stay_as_written(text: str) -> None:
    assert parse_react_step(f"Action: t\nAction Input: {text}").action_input == text


@pytest.mark.parametrize("stops", [["Observation:"], []])
@pytest.mark.parametrize("tail", ["\nObservation: invented", "\n", "  \n\n", ""])
def test_the_transcript_puts_the_observation_right_under_the_action(
    stops: list[str], tail: str
) -> None:
    # A reply cut at the stop sequence kept the line break before it: a blank line came
    # between each action and its observation in every later prompt.
    @ar.tool
    def echo(text: str) -> str:
        """Echoes."""
        return text

    prompts: list[str] = []
    replies = iter(['Thought: x\nAction: echo {"text": "hi"}' + tail, "Final Answer: ok"])

    async def infer(prompt: str) -> str:
        prompts.append(prompt)
        return next(replies)

    runtime = ar.AgentRuntime(ar.AgentConfig(stop_sequences=stops), tools=[echo])
    session = asyncio.run(runtime.run_agent("a", "Q", infer))
    assert session.final_answer == "ok"
    assert prompts[1].endswith('Action: echo {"text": "hi"}\nObservation: hi')


def test_a_fenced_step_ends_at_its_closing_fence() -> None:
    # The invented observation after it was kept as part of the step (and sent to the
    # model as if it had happened).
    reply = (
        '```\nThought: search\nAction: search {"q": "rust"}\n```\nObservation: cancelled.\n'
        "Final Answer: It was cancelled."
    )
    kept = reply[: parse_react_step(reply).end]
    assert kept == reply[: reply.index("```\nObservation")].rstrip()
