"""Durable sessions on any `PersistenceBackend`: step deltas, tool-call journal, event log.

Also the operations on them: load, resume state, prune, sweep, fork.

Keys of session `<id>` (every value is a codec record):

- `session:<id>:meta`: who runs what (agent, prompt, mode, start time);
- `session:<id>:step:<n>`: what step n added (a delta: storage grows linearly with steps);
- `session:<id>:base`: steps folded by `prune`, so a running session stays resumable;
- `session:<id>:call:<n>:<i>`: tool call i of step n, written as an intent before the call and
  as a result after it (the journal that makes resume at-most-once);
- `session:<id>:event:<seq>`: the append-only event log;
- `session:<id>`: the final checkpoint (the whole session, memory state included).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.persistence.base import PersistenceBackend, session_key, step_key
from llm_agent_runtime.persistence.codec import decode, encode
from llm_agent_runtime.session import AgentSession, Step

__all__ = ["CheckpointStore", "SessionState", "StepRecord", "idempotency_key"]


def idempotency_key(session_id: str, step: int, call_index: int) -> str:
    """The idempotency key of tool call `call_index` of step `step` of a session."""
    return f"{session_id}:{step}:{call_index}"


@dataclass(slots=True)
class StepRecord:
    """One persisted step: the step, and what the loop needs to rebuild its context.

    `reply` is the model's raw text (ReAct mode). In native mode a model round that requested
    several tool calls yields one step per call; `round_text` and `call_id` rebuild the chat.
    """

    step: Step
    reply: str | None = None
    round_text: str | None = None
    call_id: str | None = None
    round_start: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-compatible data."""
        data = asdict(self)
        data["step"] = asdict(self.step)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        """Rebuilds a record from `to_dict` output."""
        fields = dict(data)
        fields["step"] = Step(**fields["step"])
        return cls(**fields)


@dataclass(slots=True)
class SessionState:
    """Everything saved of a session: its meta data, folded steps, final checkpoint."""

    session_id: str
    agent_id: str
    prompt: str
    mode: str
    records: list[StepRecord] = field(default_factory=list)
    final: dict[str, Any] | None = None

    def session(self) -> AgentSession:
        """The session as saved: the final checkpoint, else the folded steps."""
        if self.final is not None:
            return AgentSession.from_dict(self.final["session"])
        steps = [r.step for r in self.records]
        last = steps[-1] if steps else None
        return AgentSession(
            session_id=self.session_id,
            agent_id=self.agent_id,
            prompt=self.prompt,
            steps=steps,
            final_answer=last.action_input if last and last.action == "FINAL_ANSWER" else None,
        )


def _number(key: str) -> int:
    return int(key.rsplit(":", 1)[1])


class CheckpointStore:
    """Session checkpoints, journal and event log on a `PersistenceBackend`.

    Args:
        backend: Where records are kept.
    """

    def __init__(self, backend: PersistenceBackend) -> None:
        self.backend = backend
        self._next_event: dict[str, int] = {}  # per running session: the log's next number

    # ------------------------------------------------------------------ writing
    async def save_meta(self, session: AgentSession, mode: str) -> None:
        """Records who runs what, before the first step."""
        meta = {
            "session_id": session.session_id,
            "agent_id": session.agent_id,
            "prompt": session.prompt,
            "mode": mode,
            "started_at": time.time(),
        }
        key = f"{session_key(session.session_id)}:meta"
        await self.backend.save(key, encode("meta", meta))

    async def save_step(
        self, session_id: str, number: int, record: StepRecord, events: Iterable[Any] = ()
    ) -> str:
        """Saves step `number` (and pending events, in the same transaction); returns its key."""
        key = step_key(session_id, number)
        items = {key: encode("step", record.to_dict())}
        items.update(await self._event_items(session_id, events))
        await self.backend.batch_save(items)
        return key

    async def save_final(
        self, session: AgentSession, extra: dict[str, Any], events: Iterable[Any] = ()
    ) -> str:
        """Saves the whole session (and `extra`, e.g. memory state); returns its key."""
        key = session_key(session.session_id)
        payload = {"session": session.to_dict(), "finished_at": time.time(), **extra}
        items = {key: encode("session", payload)}
        items.update(await self._event_items(session.session_id, events))
        await self.backend.batch_save(items)
        self._next_event.pop(session.session_id, None)
        return key

    async def journal(self, session_id: str, step: int, index: int, entry: dict[str, Any]) -> None:
        """Writes the journal entry of tool call `index` of step `step`."""
        key = f"{session_key(session_id)}:call:{step}:{index}"
        await self.backend.save(key, encode("call", entry))

    async def _event_items(self, session_id: str, events: Iterable[Any]) -> dict[str, bytes]:
        events = list(events)
        if not events:
            return {}
        prefix = f"{session_key(session_id)}:event:"
        start = self._next_event.get(session_id)
        if start is None:  # first events of this process for the session: find the log's end
            existing = await self.backend.list_keys(prefix)
            start = _number(existing[-1]) + 1 if existing else 0
        self._next_event[session_id] = start + len(events)
        return {
            f"{prefix}{start + i:010d}": encode("event", _event_dict(e))
            for i, e in enumerate(events)
        }

    async def append_events(self, session_id: str, events: Iterable[Any]) -> None:
        """Appends events to the session's log."""
        items = await self._event_items(session_id, events)
        if items:
            await self.backend.batch_save(items)

    # ------------------------------------------------------------------ reading
    async def load(self, session_id: str) -> SessionState:
        """Loads a session: meta, the folded step deltas, and the final checkpoint if any.

        Raises:
            PersistenceError: When nothing is saved for the session, or a record is corrupt.
        """
        base_key = session_key(session_id)
        final_raw = await self.backend.load(base_key)
        meta_raw = await self.backend.load(f"{base_key}:meta")
        if meta_raw is None and final_raw is None:
            raise PersistenceError("no checkpoint saved", key=base_key)
        final = decode(final_raw, base_key, "session") if final_raw is not None else None
        if meta_raw is not None:
            meta = decode(meta_raw, f"{base_key}:meta", "meta")
        else:  # a final checkpoint alone (older records, or a pruned session)
            assert final is not None
            saved = final["session"]
            meta = {"agent_id": saved["agent_id"], "prompt": saved["prompt"], "mode": "react"}
        state = SessionState(session_id, meta["agent_id"], meta["prompt"], meta["mode"])
        state.final = final
        folded_raw = await self.backend.load(f"{base_key}:base")
        if folded_raw is not None:
            folded = decode(folded_raw, f"{base_key}:base", "base")
            state.records = [StepRecord.from_dict(r) for r in folded["records"]]
        keys = sorted(await self.backend.list_keys(f"{base_key}:step:"), key=_number)
        keys = [k for k in keys if _number(k) > len(state.records)]
        values = await self.backend.batch_load(keys)
        for key in keys:
            if key not in values:  # pruned meanwhile: it is in the base now
                continue
            if _number(key) != len(state.records) + 1:
                raise PersistenceError("a step checkpoint is missing before this one", key=key)
            state.records.append(StepRecord.from_dict(decode(values[key], key, "step")))
        return state

    async def load_journal(self, session_id: str, step: int) -> list[dict[str, Any]]:
        """The journal entries of step `step`, by call index."""
        prefix = f"{session_key(session_id)}:call:{step}:"
        keys = sorted(await self.backend.list_keys(prefix), key=_number)
        values = await self.backend.batch_load(keys)
        return [decode(values[k], k, "call") for k in keys if k in values]

    async def events(self, session_id: str) -> list[dict[str, Any]]:
        """The session's event log, oldest first."""
        prefix = f"{session_key(session_id)}:event:"
        keys = await self.backend.list_keys(prefix)
        values = await self.backend.batch_load(keys)
        return [decode(values[k], k, "event") for k in keys if k in values]

    # ------------------------------------------------------------------ maintenance
    async def prune(self, session_id: str, keep_last: int) -> int:
        """Folds all but the last `keep_last` step deltas into the base record.

        The folded deltas and their journal entries are deleted; returns how many were folded.

        Safe while the session runs: the base is written before any delta is deleted, and a
        reader that sees both skips the duplicates.

        Raises:
            ValueError: When `keep_last` is negative.
        """
        if keep_last < 0:
            raise ValueError("keep_last must be >= 0")
        state = await self.load(session_id)
        cut = len(state.records) - keep_last
        base_key = f"{session_key(session_id)}:base"
        existing = await self.backend.load(base_key)
        already = len(decode(existing, base_key, "base")["records"]) if existing else 0
        if cut <= already:
            return 0
        folded = {"records": [r.to_dict() for r in state.records[:cut]]}
        await self.backend.save(base_key, encode("base", folded))
        doomed = [step_key(session_id, n) for n in range(already + 1, cut + 1)]
        for n in range(already + 1, cut + 1):
            doomed += await self.backend.list_keys(f"{session_key(session_id)}:call:{n}:")
        for key in doomed:
            await self.backend.delete(key)
        return cut - already

    async def sweep(self, older_than: float, now: float | None = None) -> list[str]:
        """Deletes finished sessions that ended more than `older_than` seconds ago.

        Running sessions are never touched. Returns the ids of the deleted sessions.
        """
        now = time.time() if now is None else now
        swept = []
        for key in await self.backend.list_keys("session:"):
            if key.count(":") != 1:
                continue
            raw = await self.backend.load(key)
            if raw is None:
                continue
            if decode(raw, key, "session").get("finished_at", now) < now - older_than:
                session_id = key.split(":", 1)[1]
                for doomed in await self.backend.list_keys(f"{key}:"):
                    await self.backend.delete(doomed)
                await self.backend.delete(key)
                swept.append(session_id)
        return swept

    async def fork(self, session_id: str, step: int, new_session_id: str) -> AgentSession:
        """Starts session `new_session_id` from step `step` of `session_id` (time travel).

        Its first `step` steps are copied; `resume` continues it from there.

        Raises:
            PersistenceError: When the source is missing or has fewer than `step` steps.
        """
        state = await self.load(session_id)
        if not 0 <= step <= len(state.records):
            raise PersistenceError(
                f"cannot fork at step {step}: the session has {len(state.records)} steps",
                key=session_key(session_id),
            )
        fork = AgentSession(
            session_id=new_session_id,
            agent_id=state.agent_id,
            prompt=state.prompt,
            steps=[r.step for r in state.records[:step]],
        )
        await self.save_meta(fork, state.mode)
        items = {
            step_key(new_session_id, n): encode("step", r.to_dict())
            for n, r in enumerate(state.records[:step], 1)
        }
        if items:
            await self.backend.batch_save(items)
        return fork


def _event_dict(event: Any) -> dict[str, Any]:
    """An event as JSON data: its type and fields (an error as its repr)."""
    fields = event._asdict() if hasattr(event, "_asdict") else dict(vars(event))
    return {"type": type(event).__name__, **{k: _plain(v) for k, v in fields.items()}}


def _plain(value: Any) -> Any:
    if isinstance(value, BaseException):
        return repr(value)
    return value
