"""Checkpoint keys of sessions whose ids contain ':', loads racing a concurrent prune, and
journal entries taken back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.events import RunStarted
from llm_agent_runtime.persistence.base import (
    escape_session_id,
    session_key,
    split_session_key,
    step_key,
)
from llm_agent_runtime.persistence.checkpoints import CheckpointStore, StepRecord, idempotency_key
from llm_agent_runtime.session import AgentSession, Step

from .test_backends import close_backend, make_backend
from .test_durable import FINAL, Effects, add_step, fails_after, script


@pytest.fixture(params=["memory", "sqlite", "file", "postgres", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CheckpointStore]:
    if request.param == "memory":
        backend: ar.PersistenceBackend = ar.InMemoryBackend()
    else:
        backend = make_backend(request.param, tmp_path)
    yield CheckpointStore(backend)
    await close_backend(backend)


def record(n: int) -> StepRecord:
    return StepRecord(
        Step(thought=f"t{n}", action="add", action_input={"n": n}, observation=str(n))
    )


async def start(cs: CheckpointStore, session_id: str, steps: int = 0) -> AgentSession:
    session = AgentSession(session_id=session_id, agent_id="agent", prompt=f"q {session_id}")
    await cs.save_meta(session, "react")
    if steps:
        await cs.save_steps(session_id, 1, [record(n) for n in range(1, steps + 1)])
    return session


async def finish(cs: CheckpointStore, session_id: str, steps: int = 0) -> None:
    session = await start(cs, session_id, steps)
    await cs.save_final(session, {})


async def test_sweep_deletes_only_the_finished_sessions_own_keys(store: CheckpointStore) -> None:
    await finish(store, "a", steps=2)
    await store.journal("a", 1, 0, {"state": "done"})
    await store.append_events("a", [RunStarted("a", "x", "q")])
    running = "a:b"  # before ids were escaped, its keys all started with `session:a:`
    await start(store, running, steps=3)
    await store.journal(running, 1, 0, {"state": "intent"})
    await store.append_events(running, [RunStarted(running, "x", "q")])
    await finish(store, "user:42", steps=1)
    kept = await store.backend.list_keys(f"{session_key(running)}:")
    assert kept and all(k.startswith("session:a%3Ab:") for k in kept)

    swept = await store.sweep(older_than=-1000)

    assert sorted(swept) == ["a", "user:42"]
    assert await store.backend.list_keys("session:") == kept
    state = await store.load(running)
    assert [r.step.observation for r in state.records] == ["1", "2", "3"]
    assert await store.load_journal(running, 1) == [{"state": "intent"}]
    assert len(await store.events(running)) == 1
    assert await store.sweep(older_than=-1000) == []


async def test_sweep_finds_finished_sessions_without_meta_and_keeps_running_ones(
    store: CheckpointStore,
) -> None:
    # A final checkpoint alone (older records) still identifies its session.
    await store.save_final(AgentSession(session_id="team:7:run", agent_id="x", prompt="p"), {})
    await start(store, "team:7", steps=1)  # running: no final checkpoint
    assert await store.sweep(older_than=-1000) == ["team:7:run"]
    assert await store.backend.list_keys("session:") == [
        "session:team%3A7:meta",
        "session:team%3A7:run:0",
        "session:team%3A7:step:1",
    ]


async def test_sweep_passes_over_a_record_of_another_kind_at_a_final_key(
    store: CheckpointStore,
) -> None:
    await start(store, "a", steps=3)
    # Its meta names a session "a:step:3": `session:a:step:3` holds a step of "a", not the
    # final checkpoint of "a:step:3".
    await start(store, "a:step:3")
    await finish(store, "done")
    assert await store.sweep(older_than=-1000) == ["done"]
    assert len((await store.load("a")).records) == 3


async def test_a_session_is_not_confused_with_one_whose_id_extends_it(
    store: CheckpointStore,
) -> None:
    await start(store, "a", steps=1)
    # Their meta, step, journal and event keys all start with one of session a's prefixes.
    for other in ("a:step", "a:call:1", "a:event"):
        await start(store, other, steps=2)
        await store.journal(other, 1, 0, {"state": other})
        await store.append_events(other, [RunStarted(other, "x", "q")])
    await store.journal("a", 1, 0, {"state": "mine"})

    state = await store.load("a")
    assert [r.step.observation for r in state.records] == ["1"]
    assert await store.load_journal("a", 1) == [{"state": "mine"}]
    assert await store.events("a") == []
    assert await store.prune("a", keep_last=0) == 1
    # The prune of `a` deleted its own step and journal, nothing of the other sessions.
    for other in ("a:step", "a:call:1", "a:event"):
        assert len((await store.load(other)).records) == 2
        assert await store.load_journal(other, 1) == [{"state": other}]
        assert len(await store.events(other)) == 1
    assert [r.step.observation for r in (await store.load("a")).records] == ["1"]
    # A new process's first events of `a` start its log, past no other session's events.
    fresh = CheckpointStore(store.backend)
    await fresh.append_events("a", [RunStarted("a", "x", "q")])
    assert [e["type"] for e in await fresh.events("a")] == ["RunStarted"]


class Interleaved(ar.InMemoryBackend):
    """Runs `hook` once, at `moment`: just before the first step-key listing, base-key
    listing, base-record read, or step-record batch read (whichever order a load does them
    in)."""

    def __init__(self) -> None:
        super().__init__()
        self.moment = ""
        self.hook: Callable[[], Awaitable[object]] | None = None

    async def _at(self, moment: str) -> None:
        if self.hook is not None and moment == self.moment:
            hook, self.hook = self.hook, None  # the hook's own calls do not trigger it
            await hook()

    async def list_keys(self, prefix: str = "") -> list[str]:
        if prefix.endswith(":step:"):
            await self._at("list steps")
        elif prefix.endswith(":base"):
            await self._at("list bases")
        return await super().list_keys(prefix)

    async def load(self, key: str) -> bytes | None:
        if ":base" in key:
            await self._at("read base")
        return await super().load(key)

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        if any(":step:" in k for k in keys):
            await self._at("read steps")
        return await super().batch_load(keys)


@pytest.mark.parametrize("keep_last", [0, 1, 3])
@pytest.mark.parametrize(
    ("moment", "already_pruned"),
    [
        *[(moment, n) for moment in ("list steps", "list bases", "read steps") for n in (0, 2)],
        ("read base", 2),  # before a first prune, a load has no base to read
    ],
)
async def test_load_during_a_concurrent_prune_sees_every_step(
    moment: str, keep_last: int, already_pruned: int
) -> None:
    backend = Interleaved()
    reader, pruner = CheckpointStore(backend), CheckpointStore(backend)
    await start(reader, "s", steps=5)
    if already_pruned:
        await pruner.prune("s", keep_last=5 - already_pruned)
    folded: list[int] = []

    async def prune() -> None:
        folded.append(await pruner.prune("s", keep_last=keep_last))

    backend.moment, backend.hook = moment, prune
    state = await reader.load("s")
    assert folded == [5 - keep_last - already_pruned]  # the prune did run, mid-load
    assert [r.step.observation for r in state.records] == ["1", "2", "3", "4", "5"]
    assert len(await backend.list_keys("session:s:step:")) == keep_last


async def test_a_step_that_is_really_missing_is_still_reported() -> None:
    backend = ar.InMemoryBackend()
    cs = CheckpointStore(backend)
    await start(cs, "s", steps=3)
    await backend.delete("session:s:step:2")
    with pytest.raises(ar.PersistenceError, match="missing before this one") as info:
        await cs.load("s")
    assert info.value.key == "session:s:step:3"


async def test_sweep_reports_a_final_record_of_the_wrong_shape() -> None:
    from llm_agent_runtime.persistence.codec import encode

    backend = ar.InMemoryBackend()
    await backend.save("session:bad", encode("session", {"finished_at": 1.0}))
    with pytest.raises(ar.PersistenceError, match="holds no 'session'") as caught:
        await CheckpointStore(backend).sweep(older_than=0)
    assert caught.value.key == "session:bad"


def test_ids_are_escaped_in_keys_and_ids_without_percent_or_colon_keep_their_keys() -> None:
    # The keys of every id written before escaping came in, but those with '%' or ':'.
    assert session_key("run-7_a.b") == "session:run-7_a.b"
    assert step_key("run-7_a.b", 3) == "session:run-7_a.b:step:3"
    assert session_key("user:42") == "session:user%3A42"
    assert step_key("user:42", 1) == "session:user%3A42:step:1"
    assert escape_session_id("50%:x") == "50%25%3Ax"
    assert split_session_key("session:user%3A42:step:1") == ("user:42", "step:1")
    assert split_session_key("session:50%25%3Ax") == ("50%:x", "")
    assert split_session_key("session:50%") is None  # no id escapes to it
    assert split_session_key("session:a%3a") is None  # nor to a lower-case escape
    assert split_session_key("sessions:a") is None
    # The idempotency key goes to tools, unescaped: the run, step and index end it.
    assert idempotency_key("user:42", 1, 0, "r7") == "user:42:r7:1:0"
    assert idempotency_key("user:42", 1, 0, None) == "user:42:1:0"  # a run of old records


@given(st.text(), st.text(), st.sampled_from(["", ":meta", ":step:1", ":call:1:0", ":base:2"]))
def test_a_key_names_one_session_only(first: str, second: str, suffix: str) -> None:
    key = session_key(first) + suffix
    assert split_session_key(key) == (first, suffix[1:])
    if first != second:  # no key of one session is, or starts as, a key of another
        assert key != session_key(second) + suffix
        assert not key.startswith(session_key(second) + ":")


async def test_sessions_whose_ids_hold_colons_keep_to_their_own_keys(
    store: CheckpointStore,
) -> None:
    backend = store.backend
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)

    async def interrupted(session_id: str, prompt: str, steps: int) -> None:
        session = runtime.create_session("a", session_id)
        model = fails_after(*(add_step(i) for i in range(steps)))
        with pytest.raises(ConnectionError):
            await runtime.run_agent("a", prompt, model, session=session)

    async def finished(session_id: str) -> None:
        session = runtime.create_session("a", session_id)
        await runtime.run_agent("a", f"q {session_id}", script(FINAL), session=session)

    await interrupted("user:42", "q user", steps=2)
    await interrupted("x", "q x", steps=1)
    # Without escaping, their final checkpoints are step 1 of `user:42`, the meta record of
    # `x`, the journal entry of its next step, and its first event; the meta record of
    # `user:42:step:1` is a step of `user:42:step`'s, and so on.
    others = ["user:42:step:1", "x:meta", "x:call:2:0", "x:event:0000000000", "50%", "50%25"]
    for other in others:
        await finished(other)

    assert (await runtime.session_events("x"))[0]["type"] == "RunStarted"
    resumed = await runtime.resume("user:42", script(FINAL))
    assert resumed.prompt == "q user"
    assert [s.action for s in resumed.steps] == ["add", "add", "FINAL_ANSWER"]
    resumed = await runtime.resume("x", script(FINAL))
    assert resumed.prompt == "q x" and resumed.final_answer == "finished"
    for other in others:
        saved = await ar.AgentSession.load_checkpoint(backend, other)
        assert saved.session_id == other and saved.prompt == f"q {other}"
    # Ids are escaped in keys only: sweep gives them back as they are.
    assert sorted(await runtime.sweep(older_than=-1000)) == sorted(["user:42", "x", *others])
    assert await backend.list_keys("session:") == []


async def test_an_intent_is_taken_back_only_while_its_key_holds_it(store: CheckpointStore) -> None:
    # `withdraw_intent`, for a call cut off as its intent was journaled: the key gets back
    # what it held (nothing, or the step's reply), and another worker's entry stays.
    await start(store, "s")
    intent = {"index": 0, "tool": "charge", "arguments": {"amount": 5}, "state": "intent"}
    intent |= {"key": "s:r1:2:0", "run": "r1", "reply": "Action: charge"}
    reply = {"index": 0, "reply": "Action: charge", "state": "received", "run": "r1"}
    assert await store.journal("s", 2, 0, intent, new=True) is None
    assert await store.withdraw_intent("s", 2, 0, intent) is True
    assert await store.load_journal("s", 2) == []
    assert await store.withdraw_intent("s", 2, 0, intent) is False  # nothing to take back
    await store.journal("s", 2, 0, reply)
    assert await store.journal("s", 2, 0, intent, new=True, replacing=reply) is None
    assert await store.load_journal("s", 2) == [intent]
    assert await store.withdraw_intent("s", 2, 0, intent, replacing=reply) is True
    assert await store.load_journal("s", 2) == [reply]
    others = {**intent, "run": "r2"}  # another worker's, written since
    await store.journal("s", 2, 0, others)
    assert await store.withdraw_intent("s", 2, 0, intent) is False
    assert await store.withdraw_intent("s", 2, 0, intent, replacing=reply) is False
    assert await store.load_journal("s", 2) == [others]
