"""A fenced block in an action's input or a final answer is read whole: a line in it that
looks like a label (a YAML `action:` key, a Python `thought: str` annotation) is its text."""

from __future__ import annotations

import pytest

import llm_agent_runtime as ar

YAML = "name: web\naction: restart\nreplicas: 3"
PYTHON = "@dataclass\nclass Step:\n    thought: str\n    Action: str\n    observation: str"


@pytest.mark.parametrize("body", [YAML, PYTHON])
@pytest.mark.parametrize(
    "shape",
    [
        "Action Input:\n```{lang}\n{body}\n```",
        "Action Input: ```{lang}\n{body}\n```",
        "Action Input:\n  ```{lang}\n{body}\n  ```",
    ],
)
def test_a_fenced_input_is_read_whole(body: str, shape: str) -> None:
    # Cut at the label-like line: the tool ran with part of its input, and no error.
    reply = "Thought: apply it\nAction: apply\n" + shape.format(lang="yaml", body=body)
    step = ar.parse_react_step(reply)
    assert step.action == "apply"
    assert step.action_input == body
    assert step.end == len(reply)


def test_a_fenced_input_ends_where_its_fence_closes() -> None:
    reply = f"Thought: t\nAction: apply\nAction Input:\n```yaml\n{YAML}\n```\nObservation: made up"
    step = ar.parse_react_step(reply)
    assert step.action_input == YAML
    assert reply[step.end :].strip() == "Observation: made up"


@pytest.mark.parametrize("label", ["Action: FINAL_ANSWER", "Final Answer:"])
def test_a_fenced_final_answer_is_read_whole(label: str) -> None:
    # The seed form was cut at `action:`; the LangChain form failed ("found both an action
    # and a final answer").
    answer = "Here is the automation:\n```yaml\n- alias: sunset\n  action:\n    service: on\n```"
    step = ar.parse_react_step(f"Thought: I can write it.\n{label} {answer}")
    assert step.is_final and step.final_answer == answer


def test_a_label_after_the_fence_closes_is_read_again() -> None:
    reply = 'Thought: t\nAction: apply\nAction Input: ```json\n{"a": 1}\n```\nThought: next'
    step = ar.parse_react_step(reply)
    assert step.action_input == {"a": 1}
    assert reply[step.end :].strip() == "Thought: next"


def test_a_step_wrapped_whole_in_a_fence_still_ends_at_an_invented_observation() -> None:
    # The closing line of the wrapping fence comes after the input: it opens no fence, and
    # the step ends there.
    reply = '```\nThought: t\nAction: apply\nAction Input: {"a": 1}\n```\nObservation: made up'
    step = ar.parse_react_step(reply)
    assert step.action == "apply" and step.action_input == {"a": 1}
    assert reply[step.end :].strip() == "```\nObservation: made up"


MARKDOWN = "# Tool\nInstall it:\n```bash\npip install tool\n```\nthen\naction: restart"


@pytest.mark.parametrize(
    ("fenced", "body"),
    [
        # Backticks inside a line are the code's own: the input was cut at them (`fence = "`).
        ('```python\nfence = "```"\nprint(fence)\n```', 'fence = "```"\nprint(fence)'),
        (
            "```\nUse `x`, e.g. ``` inline ``` markers\nend\n```",
            "Use `x`, e.g. ``` inline ``` markers\nend",
        ),
        # A longer fence holds shorter ones (Markdown showing a code block): a YAML-like
        # `action:` line after the inner block became a step label.
        (f"````markdown\n{MARKDOWN}\n````", MARKDOWN),
        # A line of backticks naming a language opens no fence's close.
        ("```\nfirst\n```python\nsecond\n```", "first\n```python\nsecond"),
        # Left open, a fence runs to the end.
        (
            "```js\n// markdown uses ``` for code\nconsole.log(1)",
            "// markdown uses ``` for code\nconsole.log(1)",
        ),
    ],
)
@pytest.mark.parametrize("form", ["Action Input: {fenced}", "Action Input:\n{fenced}"])
def test_a_fence_closes_at_a_bare_line_of_as_many_backticks(
    fenced: str, body: str, form: str
) -> None:
    reply = "Thought: t\nAction: write_file\n" + form.format(fenced=fenced)
    step = ar.parse_react_step(reply)
    assert step.action == "write_file"
    assert step.action_input == body


@pytest.mark.parametrize(
    ("fenced", "value"),
    [
        ("```ls -la /tmp```", "ls -la /tmp"),  # it lost its first word, taken for a language
        ("```print(42)```", "print(42)"),
        ("````a ``` b````", "a ``` b"),
        ('```json {"q": 1}```', {"q": 1}),
        ('```{"q": 1}```', {"q": 1}),
        ('```json {"q": "```"}```', {"q": "```"}),
    ],
)
def test_a_fence_on_one_line_holds_its_whole_text(fenced: str, value: object) -> None:
    step = ar.parse_react_step(f"Thought: t\nAction: run\nAction Input: {fenced}")
    assert step.action_input == value
