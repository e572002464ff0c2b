"""ReAct parser cases found by a fault sweep (the fifth)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

# Spaces a model may write between words: no-break, en/em/thin, narrow no-break,
# medium mathematical and ideographic (as CJK text has).
UNICODE_SPACES = ["\u00a0", "\u2002", "\u2003", "\u2009", "\u202f", "\u205f", "\u3000"]
TOOLS = ["search", "Search Tool", "github.search_issues", "Python REPL", "検索", "wiki-lookup"]
inputs = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30
).filter(lambda t: t.strip() and '"' not in t and "Action" not in t and "Final" not in t)


@settings(max_examples=300, deadline=None)
@given(
    tool=st.sampled_from(TOOLS),
    space=st.sampled_from(UNICODE_SPACES),
    tool_input=inputs,
    thought=st.sampled_from(["", "Thought: I should look it up\n"]),
)
def test_an_action_input_label_after_a_unicode_space_on_the_action_line_is_a_label(
    tool: str, space: str, tool_input: str, thought: str
) -> None:
    # With a Unicode space before the label, the label and all after it were the input
    # (or the tool name's): `Action: search\u3000Action Input: cats` called 'search' with
    # 'Action Input: cats'. LangChain's parser, and this one after an ASCII space, read a
    # label: the tool is the text before it, the input the text after it, both stripped.
    text = f"{thought}Action: {tool}{space}Action Input: {tool_input}"
    step = ar.parse_react_step(text)
    ascii_spaced = ar.parse_react_step(f"{thought}Action: {tool} Action Input: {tool_input}")
    assert (step.action, step.action_input) == (ascii_spaced.action, ascii_spaced.action_input)
    assert step.action == tool
    if isinstance(step.action_input, str):
        assert step.action_input == tool_input.strip()
    else:  # an object or a list, decoded (`{}`, say), as after an ASCII space
        assert tool_input.strip()[0] in "{["
    assert step.end == len(text)


@pytest.mark.parametrize(
    ("text", "tool", "tool_input"),
    [
        ("Action: search\u3000Action Input: cats", "search", "cats"),
        ('Action: Search Tool\u00a0Action Input: {"q": "cats"}', "Search Tool", {"q": "cats"}),
        ("Action 1: search\u3000Action 1 Input\uff1acats", "search", "cats"),
        # Not a blank before the word: no label, as after a letter.
        ("Action: t x\u00adAction Input: y", "t", "x\u00adAction Input: y"),
        ("Action: t x\u200bAction Input: y", "t", "x\u200bAction Input: y"),
        ("Action: t éAction Input: y", "t", "éAction Input: y"),
    ],
)
def test_which_character_before_the_label_makes_it_one(
    text: str, tool: str, tool_input: object
) -> None:
    step = ar.parse_react_step(text)
    assert (step.action, step.action_input) == (tool, tool_input)
