"""ReAct steps written as a Markdown list: each label line after a bullet or a number.

Chat models asked for a ReAct step often answer with a list (`- Thought: ...`,
`1. Action: ...`); LangChain's parser reads such a step as it reads the plain one. Those
lines used to hold no label, and the step failed to parse.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

MARKERS = ["- ", "* ", "+ ", "\u2022 ", "1. ", "2) ", "10. ", "-\t", "-   ", "  - "]
words = st.text(
    alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters=" .,?"),
    min_size=1,
    max_size=20,
).filter(lambda t: t.strip() and not t.lstrip()[0].isdigit())
steps = st.one_of(
    st.tuples(words, st.sampled_from(["search", "calc", "Search Tool"]), words).map(
        lambda p: [f"Thought: {p[0]}", f"Action: {p[1]}", f"Action Input: {p[2]}"]
    ),
    st.tuples(words, st.sampled_from(["calc"]), st.integers(0, 99)).map(
        lambda p: [f"Thought: {p[0]}", f'Action: {p[1]} {{"n": {p[2]}}}']
    ),
    st.tuples(words, words).map(lambda p: [f"Thought: {p[0]}", f"Final Answer: {p[1]}"]),
)


def fields(step: ar.ReActStep) -> tuple[object, ...]:
    return (step.thought, step.action, step.action_input, step.final_answer)


@settings(max_examples=200, deadline=None)
@given(lines=steps, markers=st.lists(st.sampled_from(MARKERS), min_size=3, max_size=3))
def test_a_step_written_as_a_list_parses_as_the_plain_step(
    lines: list[str], markers: list[str]
) -> None:
    plain = ar.parse_react_step("\n".join(lines))
    listed = "\n".join(marker + line for marker, line in zip(markers, lines, strict=False))
    assert fields(ar.parse_react_step(listed)) == fields(plain)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- Thought: look\n- Action: search\n- Action Input: cats", ("look", "search", "cats")),
        ("1. Thought: look\n2. Action: search\n3. Action Input: cats", ("look", "search", "cats")),
        ('* **Action:** calc {"n": 2}', ("", "calc", {"n": 2})),
        ("\u2022 Thought: done\n\u2022 Final Answer: 42", ("done", None, None)),
    ],
)
def test_list_forms(text: str, expected: tuple[object, ...]) -> None:
    step = ar.parse_react_step(text)
    assert (step.thought, step.action, step.action_input) == expected


def test_an_invented_observation_in_a_list_ends_the_step() -> None:
    kept = "- Action: search\n- Action Input: cats"
    step = ar.parse_react_step(kept + "\n- Observation: dogs")
    assert (step.action, step.action_input) == ("search", "cats")
    assert step.end == len(kept)  # as the plain step's ends before its line break


@pytest.mark.parametrize(
    "text",
    [
        "-Action: t {}",  # no blank after the dash: a word, not a bullet
        "1.Action: t {}",
        "2024. Action: t {}",  # a year, not a list's number
        "a) Action: t {}",
    ],
)
def test_what_is_not_a_list_marker(text: str) -> None:
    with pytest.raises(ar.ParseError):
        ar.parse_react_step(text)


async def test_an_agent_answering_in_lists_runs() -> None:
    @ar.tool
    async def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    replies = iter(
        [
            '- Thought: add them\n- Action: add\n- Action Input: {"a": 2, "b": 3}',
            "1. Thought: got it\n2. Final Answer: 5",
        ]
    )

    async def infer(prompt: str) -> str:
        return next(replies)

    runtime = ar.AgentRuntime(ar.AgentConfig(mode="react"), tools=[add])
    session = await runtime.run_agent("a", "2 + 3?", infer)
    assert [(s.action, s.action_input, s.observation) for s in session.steps] == [
        ("add", {"a": 2, "b": 3}, "5"),
        ("FINAL_ANSWER", "5", ""),
    ]
    assert session.final_answer == "5"
