"""Edge cases of the ReAct parser, the runtime metrics and the hashing embedder."""

from __future__ import annotations

import copy
import pickle
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

# --- HashingEmbedder -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # Thai tone marks (Mn, not Alphabetic): news / rice / white.
        ("ข่าว", "ข้าว"),
        ("ข่าว", "ขาว"),
        # not / wood.
        ("ไม่", "ไม้"),
        # Devanagari virama (Mn): "pakka" (sure) / "paka" (cooked) + "ka".
        ("पक्का", "पक का"),
        # A combining mark NFKC cannot compose away stays with its letter.
        ("q\u0303uery", "q uery"),
    ],
)
def test_hashing_keeps_combining_marks_inside_their_word(a: str, b: str) -> None:
    # A combining mark that is not Alphabetic (a Thai tone mark, a virama) used to split its
    # word in two, so words differing only in such marks embedded identically (cosine 1.0).
    rows = ar.HashingEmbedder(256).embed([a, b])
    assert float(rows[0] @ rows[1]) < 0.9


def test_hashing_a_word_with_marks_is_one_word() -> None:
    embedder = ar.HashingEmbedder(256, word_ngrams=1, char_ngrams=(0, 0))
    # With words only, one word embeds to a single +-1 entry.
    for word in ["ข่าว", "पक्का", "हिन्दी"]:
        row = embedder.embed([word])[0]
        assert np.count_nonzero(row) == 1, word


@settings(max_examples=100)
@given(
    st.lists(
        st.text(
            alphabet=st.sampled_from("aeq1 .ขาวไม\u0e48\u0e49\u0303\u0301\u094dपक"),
            max_size=20,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_hashing_marks_keep_normal_forms_and_batches_alike(texts: list[str]) -> None:
    embedder = ar.HashingEmbedder(64)
    batch = embedder.embed(texts)
    for form in ("NFC", "NFD", "NFKC", "NFKD"):
        np.testing.assert_array_equal(
            embedder.embed([unicodedata.normalize(form, t) for t in texts]), batch
        )
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(embedder.embed([text])[0], batch[i])


# --- RuntimeMetrics / MetricsSnapshot --------------------------------------------------------


def _busy_snapshot() -> ar.MetricsSnapshot:
    m = ar.RuntimeMetrics()
    m.session_started()
    m.record_step()
    m.record_tool_call('we"ird\\tool\n', "agent-1")
    m.record_tool_call("search", None)
    m.record_tool_failure("search", "agent-1")
    m.record_tokens(2**64 - 1, 3)
    return m.snapshot()


def test_a_metrics_snapshot_pickles_and_copies() -> None:
    # A snapshot is a plain value ("safe to log or serialize"): it used to raise
    # TypeError("cannot pickle 'MetricsSnapshot' object") for pickle, copy and deepcopy, so it
    # could not be returned from a multiprocessing worker or kept in a deep-copied state.
    snapshot = _busy_snapshot()
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(snapshot, protocol=protocol))
        assert back == snapshot
        assert back.to_json() == snapshot.to_json()
        assert back.to_prometheus() == snapshot.to_prometheus()
    assert copy.copy(snapshot) == snapshot
    assert copy.deepcopy({"s": snapshot})["s"] == snapshot
    delta = ar.MetricsSnapshot.delta(snapshot, ar.RuntimeMetrics().snapshot())
    assert pickle.loads(pickle.dumps(delta)) == delta


# --- parse_react_step ------------------------------------------------------------------------


def _fields(step: ar.ReActStep) -> tuple[object, ...]:
    return (step.thought, step.action, step.action_input, step.final_answer)


@pytest.mark.parametrize(
    "text",
    [
        "Thought: look it up\nAction: search\nAction Input: rust pyo3\nObservation: found",
        'Thought: add\nAction: add {"a": 1}\nObservation: 2',
        "Thought: done\nAction: FINAL_ANSWER\nAction Input: 42",
        "Thought: I know it\nFinal Answer: 42",
        'Action: Search Tool\nAction Input: ```json\n{"q": "x"}\n```\nThought: next',
        'Thought: x\nAction: t\nAction Input: "New York"\nI will wait.',
        "Action: f(1)\nchatter",
    ],
)
def test_a_lone_carriage_return_ends_a_line_as_a_newline_does(text: str) -> None:
    # Lines ended by a lone "\r" (old Mac line ends, a terminal's output) used to be one
    # line: "Thought: x\rAction: search" was a thought only, and no step (ParseError).
    expected = ar.parse_react_step(text)
    for newline in ["\r", "\r\n"]:
        step = ar.parse_react_step(text.replace("\n", newline))
        assert _fields(step) == _fields(expected), repr(newline)
        cut = text.replace("\n", newline)[: step.end]
        assert cut.replace(newline, "\n") == text[: expected.end]


_LINES = st.lists(
    st.sampled_from(
        [
            "Thought: think",
            "Action: search",
            "Action: Search Tool",
            'Action: add {"a": 1}',
            "Action: FINAL_ANSWER",
            "Action Input: rust",
            'Action Input: {"q": [1, 2]}',
            "```json",
            "```",
            '{"k": "v"}',
            "Observation: seen",
            "Final Answer: 42",
            "I know. Final Answer: 7",
            "chatter",
            "",
            "  ",
        ]
    ),
    max_size=8,
)


def _outcome(text: str) -> tuple[object, ...]:
    try:
        step = ar.parse_react_step(text)
    except ar.ParseError as err:
        return ("error", err.position)
    return (*_fields(step), step.end)


def _as_newlines(value: object) -> object:
    return json_like_replace(value, "\r", "\n")


def json_like_replace(value: object, old: str, new: str) -> object:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [json_like_replace(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: json_like_replace(v, old, new) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(json_like_replace(v, old, new) for v in value)
    return value


@settings(max_examples=300)
@given(lines=_LINES)
def test_lone_carriage_returns_parse_as_newlines(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert _as_newlines(_outcome(text.replace("\n", "\r"))) == _outcome(text)
