"""Property tests of the ReAct parser and the episodic store against plain references."""

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

# --- ReAct parsing ----------------------------------------------------------------------------

_LABEL = re.compile(r"(?im)^[ \t]*(thought|action|observation|final answer)")

_label_words = st.sampled_from(
    ["Thought: ", "Action: ", "Action Input: ", "Observation: ", "Final Answer: ", "", "  "]
)
_bodies = st.sampled_from(
    [
        "x",
        "t",
        "t {}",
        't {"a": 1}',
        "FINAL_ANSWER",
        "FINAL_ANSWER 42",
        '{"q": "}"}',
        "rust",
        "",
        "Search Tool",
        "I know. Final Answer: 5",
        "```json",
        "```",
        '"s"',
        "t(1)",
        "t Action Input: 3",
        "[1, 2]",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(st.tuples(_label_words, _bodies), min_size=1, max_size=7),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_the_kept_part_of_a_reply_parses_to_the_same_step(
    lines: list[tuple[str, str]], newline: str
) -> None:
    # The runtime keeps reply[:end] in its history: read again, it must be the same step.
    text = newline.join(label + body for label, body in lines)
    try:
        step = ar.parse_react_step(text)
    except ar.ParseError:
        return
    kept = text[: step.end]
    again = ar.parse_react_step(kept)
    assert again == step
    assert again.end == len(kept)


_tool_names = st.from_regex(
    r"[A-Za-z][A-Za-z0-9_.-]{0,8}( [A-Za-z][A-Za-z0-9_.-]{0,8}){0,3}", fullmatch=True
).filter(
    # Names the final answer takes (`Action: Final Answer`) are no tools.
    lambda n: not n.upper().startswith(("FINAL_ANSWER", "FINAL ANSWER")) and "Action" not in n
)
_raw_inputs = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
    min_size=1,
    max_size=30,
).filter(
    lambda s: (
        s.strip()
        and not _LABEL.search(s)
        and "Final Answer" not in s
        and s.strip()[0] not in '{["`'
    )
)


@settings(max_examples=300, deadline=None)
@given(
    name=_tool_names,
    value=_raw_inputs,
    newline=st.sampled_from(["\n", "\r\n"]),
    same_line=st.booleans(),
)
def test_langchain_form_reads_the_whole_name_and_the_text_input(
    name: str, value: str, newline: str, same_line: bool
) -> None:
    gap = " " if same_line else newline
    text = f"Thought: t{newline}Action: {name}{gap}Action Input: {value}{newline}Observation: o"
    step = ar.parse_react_step(text)
    assert (step.action, step.action_input) == (name, value.strip())


# --- Episodic memory --------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _score(
    episode: dict[str, Any], now: float, half_life: float | None, hybrid: tuple[float, float] | None
) -> float:
    age_h = max(0.0, (now - episode["created"]) / 3600.0)
    score: float = episode["importance"]
    if half_life is not None:
        score *= 0.5 ** (age_h / half_life)
    if hybrid is not None:
        recency, frequency = hybrid
        n = float(episode["recalls"])
        score += recency / (1.0 + age_h) + frequency * n / (1.0 + n)
    return score


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("ab"), st.floats(0, 1), st.floats(0, 20_000)),
        st.tuples(
            st.just("recall"), st.sampled_from("ab"), st.integers(0, 6), st.floats(0, 20_000)
        ),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(
    ops=_ops,
    half_life=st.none() | st.floats(0.01, 10),
    hybrid=st.none() | st.tuples(st.floats(0, 5), st.floats(0, 5)),
    capacity=st.sampled_from([None, 1, 2, 3]),
)
def test_recall_and_eviction_match_a_reference_and_survive_a_round_trip(
    ops: list[tuple[Any, ...]],
    half_life: float | None,
    hybrid: tuple[float, float] | None,
    capacity: int | None,
) -> None:
    clock = _Clock()
    store = ar.EpisodicStore(
        decay=None if half_life is None else ar.DecayPolicy.exponential(half_life),
        recall_policy=None if hybrid is None else ar.RecallPolicy.hybrid(*hybrid),
        per_agent_capacity=capacity,
        clock=clock,
    )
    ref: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    next_id = 0
    for kind, agent, value, elapsed in ops:
        clock.now += elapsed
        if kind == "add":
            assert store.add_episode(agent, f"c{next_id}", value) == next_id
            ref[agent].append(
                {"id": next_id, "importance": value, "created": clock.now, "recalls": 0}
            )
            next_id += 1
            if capacity is not None and len(ref[agent]) > capacity:
                older = ref[agent][:-1]
                victim = min(range(len(older)), key=lambda k: (older[k]["importance"], k))
                del ref[agent][victim]
            continue
        episodes = ref[agent]
        ranked = sorted(
            range(len(episodes)),
            key=lambda k: (-_score(episodes[k], clock.now, half_life, hybrid), k),
        )[:value]
        got = store.recall(agent, value)
        for k in ranked:
            episodes[k]["recalls"] += 1
        assert [(e.id, e.recall_count) for e in got] == [
            (episodes[k]["id"], episodes[k]["recalls"]) for k in ranked
        ]
    for agent in "ab":
        assert [e.id for e in store.episodes(agent)] == [e["id"] for e in ref[agent]]
    text = store.to_json()
    back = ar.EpisodicStore.from_json(text, clock=clock)
    assert back.to_json() == text
    assert all(back.episodes(agent) == store.episodes(agent) for agent in "ab")
