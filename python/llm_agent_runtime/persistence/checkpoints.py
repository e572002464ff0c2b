"""Durable sessions on any `PersistenceBackend`: step deltas, tool-call journal, event log.

Also the operations on them: load, resume state, prune, sweep, fork.

Keys of session `<id>` (every value is a codec record of strict JSON, see `_encode`; `<id>`
is escaped, `%` as `%25` and `:` as `%3A`, see `escape_session_id`, so no key of one session
is a key of another):

- `session:<id>:meta`: who runs what (agent, prompt, mode, start time, the run's id, whether
  it is a turn of a multi-turn session, how many steps the session had before it, and the
  chat history it started with; `deleting`, naming the sweep or `delete_session` deleting it);
- `session:<id>:run:<n>`: the claim of the run that started the session from step n, written
  insert-if-absent before its meta record, and holding it: of runs starting from one step at
  once, in any process, one runs (the claim is deleted when its run ends before its first
  step, so the session may run again, and emptied with that step);
- `session:<id>:resume:<n>`: the claim of the worker resuming the run that started from
  step n (a nonce of its own, its host and process id, and, under a lease, the wall-clock
  time it expires, `expires_at`, which its holder renews; written insert-if-absent: one
  worker resumes a run at once), deleted when that resumed run ends; and
  `session:<id>:resume:<n>:<nonce>`, written insert-if-absent by the one worker that takes
  over the claim of nonce `<nonce>` (its process ended on this host, or its lease passed),
  deleted with that worker's claim (see `CheckpointStore.claim_resumed`);
- `session:<id>:fence:<n>`: the fence of the resume claim `session:<id>:resume:<n>`, the
  nonce of the worker holding it, whose writes of the run alone land (see
  `CheckpointStore.claim_resumed`), deleted with the claim;
- `session:<id>:run:<n>:<digest>`: written insert-if-absent by the one run (or sweep) that
  deletes a sweep's claim `:run:<n>`, `<digest>` naming that claim: of those deleting one at
  once, one deletes it (a read, then a delete, by two would delete a run's claim made
  between them); deleted once it did (see `CheckpointStore.sweep`);
- `session:<id>:fork:<digest>`: written insert-if-absent by the one fork (or sweep) that takes
  over the id of an incomplete fork, `<digest>` naming that fork's marker (its meta record):
  of forks taking one over at once, one deletes it; deleted once that fork is (see
  `CheckpointStore.fork`);
- `session:<id>:step:<n>`: what step n added (a delta: storage grows linearly with steps);
- `session:<id>:base:<n>`: steps 1 to n, folded by `prune`, so a running session stays
  resumable (`session:<id>:base`, without `<n>`, as older versions wrote it, is read too);
- `session:<id>:call:<n>:<i>`: tool call i of step n, written as an intent before the call and,
  for a call of a parallel round, as a result after it (even when the run is cancelled or
  times out meanwhile; a lone call's result is its step), the journal that makes resume
  at-most-once, naming the run that wrote it and the call's idempotency key (see
  `idempotency_key`): an entry is valid for that run alone (another run's is stale, as if
  absent); a lone call of an idempotent tool that does not take the key has none (its step
  is run again, model reply included). Call 0's key first holds its step's model reply
  when the runtime has guards (an approval handler, `on_tool_call` middlewares,
  capabilities), written before they decide, or a corrective re-prompt whose answer has
  not come (`REPLY_STATES`); the call's own entry then replaces it;
- `session:<id>:event:<seq>`: the append-only event log (every event but `LlmTextDelta`,
  whose text `LlmResponse` holds, and `CheckpointSaved`);
- `session:<id>:ended`: the end of the session's latest run (its id, the session's
  `duration_ms` and, for a run that failed, `ended_at`), written with its final checkpoint,
  by a failed run (`save_run_end`), or by `fork` for the fork's run;
- `session:<id>`: the final checkpoint (the whole session, with the working memory's entries;
  a multi-turn session's is its latest finished turn's), naming the run it closes.

A sweep (or `delete_session`) claims a session it deletes as a run does (`:run:<n>`), its
claim naming the digest of its anchor, the final checkpoint it found (or, for a session
whose latest run failed and that has none, its end record), and when it claimed (`at`,
renewed as it deletes, so a long sweep keeps its claim; a sweep whose process stalls stops);
it deletes that anchor last, if it is still the one it found, then its claim. A run from that
step is refused while the claim is there, before it writes anything. A claim left by a sweep
cut short is told by there being no anchor at all, or by its age (older than
`_GRACE_SECONDS`): the next run from that step, or the next sweep, deletes it (and that
sweep deletes the session; one whose latest run failed, a sweep with `failed` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import logging
import math
import os
import re
import socket
import sys
import time
import uuid
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, ParamSpec, TypeVar

from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.orchestration._calls import is_async_callable
from llm_agent_runtime.persistence._waiting import retrieve_outcome, wait_through_cancellation
from llm_agent_runtime.persistence.base import (
    PersistenceBackend,
    call_key,
    session_key,
    split_session_key,
    step_key,
)
from llm_agent_runtime.persistence.codec import (
    UnreadableHere,
    decode,
    encode,
    record_kind,
    stored_bytes,
)
from llm_agent_runtime.session import (
    AgentSession,
    Step,
    finite_floats,
    message_problem,
    requested_call_problem,
)

__all__ = [
    "CheckpointStore",
    "SessionState",
    "StepRecord",
    "idempotency_key",
    "is_stale_entry",
    "reprompt_problem",
    "stored_form",
]

REPLY_STATES = frozenset({"received", "reprompted"})
"""States of a journal entry that holds a step's model reply, not a tool call's intent or
outcome: `received` (the reply, before its calls' guards decided) and `reprompted` (a
corrective re-prompt sent, its answer not yet received). Kept under the step's call 0,
which the call's own entry then replaces."""

logger = logging.getLogger("llm_agent_runtime")


class _DamagedSession(Exception):
    """A session `sweep` leaves as it is: its records are damaged (`error` says how).

    Raised only where a record read back does not decode: a failure of the backend ends
    the sweep at once.
    """

    def __init__(self, error: PersistenceError) -> None:
        super().__init__(error)
        self.error = error


def _encode(kind: str, payload: Any) -> bytes:
    """The `kind` record of `payload`, strict JSON (see `codec.encode`).

    A float JSON has no number for (a NaN or an infinity, in a tool call's arguments, say)
    is written as its `str` (`"nan"`, `"inf"`), as `AgentSession.to_json` writes it, and
    loads as that string: JSON readers other than Python's refuse `NaN` and `Infinity`. A
    record whose text holds neither word is written in one pass.
    """
    raw = encode(kind, payload)
    if b"NaN" in raw or b"Infinity" in raw:
        raw = encode(kind, finite_floats(payload))
    return raw


def stored_form(value: Any) -> Any:
    """`value` as a record gives it back once stored (see `_encode`).

    Tuples come back as lists, non-str dict keys as strings, a NaN as `"nan"`, and any
    other object JSON has no form for as its `str`: compare a value read from a record with
    this, not with the value that was written.
    """
    return decode(_encode("value", value), "(value)")


def idempotency_key(session_id: str, step: int, call_index: int, run: str | None) -> str:
    """The idempotency key of tool call `call_index` of step `step` of run `run` of a session.

    The key names the run (its id, which a resumed run keeps): a call repeated by `resume`
    gets the key it first went out with, so an API that deduplicates by key makes it once,
    while a turn run again instead of resumed (a new run) gets fresh keys, so its calls,
    new ones, are not taken for the interrupted run's. The id is not escaped here (the key
    goes to tools, and is not a storage key): it is already one call's only, as the run,
    step and index (a run id holds no `:`) are the last three `:`-separated fields. A run
    whose records name no id (`run` None: older versions) has the keys those versions gave,
    without it.
    """
    if run is None:
        return f"{session_id}:{step}:{call_index}"
    return f"{session_id}:{run}:{step}:{call_index}"


@dataclass(slots=True)
class StepRecord:
    """One persisted step: the step, and what the loop needs to rebuild its context.

    `reply` is the model's raw text (ReAct mode). In native mode a model round that requested
    several tool calls yields one step per call; `round_text` and `call_id` rebuild the chat,
    and the round's first step keeps the provider's reasoning blocks of the round's response
    (`round_reasoning`, `ChatResponse.reasoning`), which a resumed run sends back with it.
    The step holds the call that ran and, when a middleware or an approval changed it, the
    call the model asked for (`Step.requested`), which a resumed run sends back as the
    model's (records without it asked for the call that ran). Records of earlier versions
    kept it beside the step, as the record's own `requested`: it loads into the step.

    The first step of each run keeps what the run started with (`run_start`: its `prompt`,
    whether it is a `turn` of a multi-turn session, how many chat `messages` the session
    had, its `context`: the system prompt, recalled memories and working memory before the
    question, and the session's `memory_hits` with that recall), so a fork inside any run
    of a session knows that run's question and history, and a resumed run goes on with the
    context it started with (the run's meta record keeps it too, for a run cut off before
    its first step; records of older versions, without it, are resumed with a context built
    again).

    `stopped` marks the step a run stopped at without an answer (`error_recovery="stop"`: a
    failed tool step, or the last step of a round with a failed call): the run ended there,
    whatever the config of the runtime that resumes it, as with a final answer (records
    without it, of older versions too, did not stop the run).

    `reprompt` is the corrective re-prompt (`AgentConfig.corrective_reprompt`) the step's
    reply answered, in a round's first step: the reply that was not a step (its `reply`
    text, and in native mode the provider's `reasoning` blocks) and the `nudge` sent after
    it. A resumed run sends both again, before the step's reply, as the run did (its
    re-prompt took an iteration too); the step's tokens and model time hold the wasted call.
    """

    step: Step
    reply: str | None = None
    round_text: str | None = None
    call_id: str | None = None
    round_start: bool = False
    round_reasoning: list[dict[str, Any]] | None = None
    run_start: dict[str, Any] | None = None
    stopped: bool = False
    reprompt: dict[str, Any] | None = None

    @property
    def is_final(self) -> bool:
        """Whether the step is a run's final answer (the end of a turn).

        A final answer's step has the action `FINAL_ANSWER`, no tool call id and no error.
        A tool call's step is none: in native mode it has a call id, and a call of
        `FINAL_ANSWER` (a name no tool may have: the model made it up, or a middleware)
        fails as `not_found`. Records of older versions are read the same way.
        """
        step = self.step
        return self.call_id is None and step.action == "FINAL_ANSWER" and step.error_kind is None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-compatible data (sharing the step's `action_input`: encode it).

        `round_reasoning`, `run_start` and `reprompt` are left out when there are none, and
        `stopped` when false: most records have none.
        """
        data: dict[str, Any] = {
            "step": self.step.to_dict(),
            "reply": self.reply,
            "round_text": self.round_text,
            "call_id": self.call_id,
            "round_start": self.round_start,
        }
        if self.round_reasoning:
            data["round_reasoning"] = self.round_reasoning
        if self.run_start is not None:
            data["run_start"] = self.run_start
        if self.stopped:
            data["stopped"] = True
        if self.reprompt is not None:
            data["reprompt"] = self.reprompt
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        """Rebuilds a record from `to_dict` output, checking its shape and field types.

        Raises:
            PersistenceError: When `data` is not a dict, lacks `step`, has an unknown field,
                or a field (or a field of its step, see `Step.from_dict`) of the wrong type.
        """
        if not isinstance(data, dict) or "step" not in data:
            raise PersistenceError("a step record must be an object with a 'step' field")
        unknown = sorted(str(k) for k in data if k not in _RECORD_FIELDS)
        if unknown:
            raise PersistenceError(f"step record has unknown field(s) {unknown}")
        fields = dict(data)
        for name in ("reply", "round_text", "call_id"):
            if not isinstance(fields.get(name), str | None):
                raise PersistenceError(f"step record field {name!r} must be a string or null")
        for name in ("round_start", "stopped"):
            if not isinstance(fields.get(name, False), bool):
                raise PersistenceError(f"step record field {name!r} must be a bool")
        reasoning = fields.get("round_reasoning")
        if reasoning is not None and not (
            isinstance(reasoning, list) and all(isinstance(block, dict) for block in reasoning)
        ):
            raise PersistenceError(
                "step record field 'round_reasoning' must be a list of objects or null"
            )
        start = fields.get("run_start")
        if start is not None and not (
            isinstance(start, dict)
            and isinstance(start.get("prompt"), str)
            and isinstance(start.get("turn"), bool)
            and _is_count(start.get("messages"))
            and (
                "context" not in start
                or (isinstance(start["context"], str) and _is_count(start.get("memory_hits")))
            )
            and ("history_crc" not in start or _is_count(start["history_crc"]))
        ):
            raise PersistenceError(
                "step record field 'run_start' must be an object with a string 'prompt', a "
                "bool 'turn', a count of 'messages' (and maybe a string 'context' with a count "
                "of 'memory_hits', and a count 'history_crc'), or null"
            )
        # An earlier version's place for the step's requested call (see the class doc).
        requested = fields.pop("requested", None)
        if (problem := requested_call_problem(requested)) is not None:
            raise PersistenceError(f"step record field 'requested' {problem}")
        reprompt = fields.get("reprompt")
        if reprompt is not None and (problem := reprompt_problem(reprompt)) is not None:
            raise PersistenceError(f"step record field 'reprompt' {problem}")
        fields["step"] = step = Step.from_dict(fields["step"])
        if requested is not None and step.requested is None:
            step.requested = requested
        record = cls(**fields)
        if record.is_final and not isinstance(record.step.action_input, str):
            # It is the session's final answer, which a final checkpoint must hold as text.
            raise PersistenceError("step record of a final answer must hold it as a string")
        return record


_RECORD_FIELDS = frozenset(
    {
        "step",
        "reply",
        "round_text",
        "call_id",
        "round_start",
        "round_reasoning",
        "run_start",
        "requested",
        "stopped",
        "reprompt",
    }
)

_REPROMPT_FIELDS = frozenset({"reply", "nudge", "reasoning", "tokens", "model_ms"})


def reprompt_problem(reprompt: Any) -> str | None:
    """What is wrong with a saved corrective re-prompt (None: nothing).

    It is a step record's (`StepRecord.reprompt`) or a journal entry's, which also keeps
    the wasted call's `tokens` ([input, output]) and `model_ms` until its step is saved.
    """
    if not (
        isinstance(reprompt, dict)
        and isinstance(reprompt.get("reply"), str)
        and isinstance(reprompt.get("nudge"), str)
    ):
        return f"must be an object with a 'reply' and a 'nudge' string, got {reprompt!r:.60}"
    unknown = sorted(str(k) for k in reprompt if k not in _REPROMPT_FIELDS)
    if unknown:
        return f"has unknown field(s) {unknown}"
    reasoning = reprompt.get("reasoning")
    if reasoning is not None and not (
        isinstance(reasoning, list) and all(isinstance(block, dict) for block in reasoning)
    ):
        return "field 'reasoning' must be a list of objects"
    tokens = reprompt.get("tokens")
    if tokens is not None and not (
        isinstance(tokens, list) and len(tokens) == 2 and all(map(_is_count, tokens))
    ):
        return f"field 'tokens' must be a list of two counts, got {tokens!r:.40}"
    model_ms = reprompt.get("model_ms")
    if model_ms is not None and not (_is_number(model_ms) and 0 <= model_ms < math.inf):
        return f"field 'model_ms' must be a number of milliseconds >= 0, got {model_ms!r:.40}"
    return None


@dataclass(slots=True)
class SessionState:
    """Everything saved of a session: its meta data, folded steps, final checkpoint."""

    session_id: str
    agent_id: str
    prompt: str
    mode: str
    records: list[StepRecord] = field(default_factory=list)
    final: dict[str, Any] | None = None
    interrupted_turn: bool = False
    """A later turn of a multi-turn session started after the final checkpoint, unfinished."""
    earlier: dict[str, Any] | None = None
    """With `interrupted_turn`: the final checkpoint of the earlier turns."""
    run: str | None = None
    """The id of the saved run (from the meta record): a resumed run's final names it."""
    turn: bool = False
    """Whether the saved run is a turn of a multi-turn session (`run_turn`): it adds its
    question and answer to the chat history when it ends."""
    first_step: int = 0
    """How many steps the session had when the saved run started: its own steps are the
    records after them (`run_records`)."""
    history: list[dict[str, Any]] | None = None
    """The chat history (`AgentSession.messages`) the saved run started with (a turn or not:
    a run that is no turn leaves it as it is); None in records of older versions, for a run
    that was no turn."""
    start: dict[str, Any] | None = None
    """What the saved run started with, as its meta record keeps it: its `context` (the
    prompt's preamble) and the session's `memory_hits` with its recall; None in records of
    older versions."""
    duration_ms: float | None = None
    """The session's `duration_ms` as the saved run left it when it failed (see
    `CheckpointStore.save_run_end`); None when the run saved none (it finished, or its process
    ended first)."""

    @property
    def run_records(self) -> list[StepRecord]:
        """The saved run's own steps: those after the `first_step` steps before it."""
        return self.records[self.first_step :]

    @property
    def stopped(self) -> bool:
        """Whether the saved run stopped, unanswered, at its last saved step.

        See `StepRecord.stopped`: the run ended there, as if that step were a final answer.
        """
        records = self.run_records
        return bool(records) and records[-1].stopped

    def session(self) -> AgentSession:
        """The session as saved: the final checkpoint, else the folded steps.

        A session whose latest run did not finish is the earlier turns' session (chat
        history, memory hits, ...: the final checkpoint they left, if any) with the steps
        saved after them; its `prompt` is the latest run's, and its `final_answer` that run's
        when its last saved step is one. The chat history is the one the run started with;
        for a turn that answered, the turn is added to it too, as a run adds it before its
        final checkpoint.

        Raises:
            PersistenceError: When the final checkpoint does not hold a valid session.
        """
        key = session_key(self.session_id)
        if self.final is not None:
            return _final_session(self.final, key)
        if self.earlier is not None:
            session = _final_session(self.earlier, key)
        else:
            session = AgentSession(session_id=self.session_id, agent_id=self.agent_id)
        session.steps += [r.step for r in self.records[len(session.steps) :]]
        session.prompt = self.prompt
        if self.duration_ms is not None:  # the failed run's time too, as the session counts it
            session.duration_ms = self.duration_ms
        session.final_answer = _answer(self.run_records)
        start = started_with(self, self.first_step)
        if start is not None:  # the hits with the run's own recall, as its session had them
            session.memory_hits = start["memory_hits"]
        if self.history is not None:
            session.messages = [dict(m) for m in self.history]
        if self.turn and session.final_answer is not None:
            session.messages.append({"role": "user", "content": self.prompt})
            session.messages.append({"role": "assistant", "content": session.final_answer})
        return session


def _answer(records: list[StepRecord]) -> str | None:
    """The final answer of a run whose saved steps are `records`: its last, if it is one."""
    last = records[-1] if records else None
    return last.step.action_input if last is not None and last.is_final else None


_PREFIX = session_key("")
# What follows `session:<id>:` in the keys of session `<id>` itself. Ids are escaped in keys,
# but keys written before they were hold ids with ':' as they are (`session:a:b:meta`, then
# session `a:b`'s): a key is a session's own only when its rest is exactly one of these.
_OWN_SUFFIX = re.compile(
    r"(?:meta|run:[0-9]+(?::[0-9a-f]+)?|resume:[0-9]+(?::[0-9a-f]+)?|fence:[0-9]+|fork:[0-9a-f]+"
    r"|base|base:[0-9]+|step:[0-9]+|call:[0-9]+:[0-9]+|event:[0-9]+|ended)\Z"
)
_RUN_CLAIM = re.compile(r"run:[0-9]+\Z")  # what follows `session:<id>:` in a run's claim
_RUN_TAKEOVER = re.compile(r"(run:[0-9]+):([0-9a-f]+)\Z")  # ... in a sweep claim's takeover key
_FORK_TAKEOVER = re.compile(r"fork:([0-9a-f]+)\Z")  # ... in a fork takeover's key
# How long a fork's copy, or a sweep's deletion of a session, may take (wall-clock seconds,
# so hosts' clocks must agree to well within it): a fork whose marker is younger is being
# written, and no fork takes its id over; a sweep whose claim is younger is deleting, and
# runs from that step are refused. Older, their process is taken as ended.
_GRACE_SECONDS = 60.0
_RESUME = re.compile(r"[0-9]+(?::[0-9a-f]+)?\Z")  # what follows `session:<id>:resume:`
_NONCE = re.compile(r"[0-9a-f]+\Z")
_CALL = re.compile(r"([0-9]+):[0-9]+\Z")  # what follows `session:<id>:call:` in a journal key
_LOAD_ATTEMPTS = 3  # folds of a session that a concurrent prune may force a load to redo
_SNAPSHOT_ATTEMPTS = 5  # reads of a session that turns ending meanwhile may force a load to redo
_EVENTS_READ_BACK = 16  # event records read at a time from the log's end


def _event(event: Any, key: str) -> dict[str, Any]:
    """The logged event an event record (stored under `key`) holds.

    Raises:
        PersistenceError: Naming `key`, when the record is not an object with a `type`.
    """
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise PersistenceError("event record is not an object with a 'type'", key=key)
    return event


def _final_session(final: Any, key: str) -> AgentSession:
    """The session a final checkpoint (stored under `key`) holds.

    Raises:
        PersistenceError: Naming `key`, when the record is not an object with a valid
            `session` (see `AgentSession.from_dict`) and a numeric `finished_at`.
    """
    if not isinstance(final, dict) or "session" not in final:
        raise PersistenceError("final checkpoint holds no 'session'", key=key)
    if not _is_number(final.get("finished_at", 0.0)):
        raise PersistenceError("final checkpoint's 'finished_at' is not a number", key=key)
    try:
        return AgentSession.from_dict(final["session"])
    except PersistenceError as error:
        raise PersistenceError(f"final checkpoint: {error.args[0]}", key=key) from error


def _step_record(data: Any, key: str) -> StepRecord:
    """`StepRecord.from_dict(data)`, a record stored under `key`.

    Raises:
        PersistenceError: Naming `key`, when the record has the wrong shape.
    """
    try:
        return StepRecord.from_dict(data)
    except PersistenceError as error:
        raise PersistenceError(str(error.args[0]), key=key) from error


_JOURNAL_FIELDS: dict[str, type] = {
    "run": str,
    "key": str,
    "tool": str,
    "observation": str,
    "state": str,
}
"""Journal entry fields read back as they are, and the type each must have when present."""


def _journal_entry(raw: bytes, key: str) -> dict[str, Any]:
    """The journal entry stored under `key`.

    Raises:
        PersistenceError: The record is not a journal entry: not an object, or a field the
            runtime acts on of another type. A `run` that is not a string would make the
            entry another run's, and its call run again; others would fail later, untyped.
    """
    entry = decode(raw, key, "call")
    if not isinstance(entry, dict):
        raise PersistenceError(
            f"journal entry must be an object, got {type(entry).__name__}", key=key
        )
    for name, kind in _JOURNAL_FIELDS.items():
        value = entry.get(name)
        if value is not None and not isinstance(value, kind):
            raise PersistenceError(
                f"journal entry field {name!r} must be a {kind.__name__}, got "
                f"{type(value).__name__}",
                key=key,
            )
    return entry


def _digest(raw: bytes) -> str:
    """The digest that names a record in another key or record: its SHA-256, in hex."""
    return hashlib.sha256(raw).hexdigest()


def _is_number(value: Any) -> bool:
    """Whether `value` is an int or a float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sweep_seconds(name: str, value: Any) -> float:
    """`value`, a number of seconds given to `sweep`, as a float.

    An int beyond the floats' range is the infinity of its sign (it is further than any
    time a float holds).

    Raises:
        PersistenceError: `value` is not a number, or is NaN.
    """
    # A NaN compares false with every time: it would keep every finished session but
    # delete every incomplete fork, one being copied right now too.
    if _is_number(value):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf if value > 0 else -math.inf
        if not math.isnan(seconds):
            return seconds
    raise PersistenceError(f"{name} must be a number of seconds, got {value!r}")


def _is_count(value: Any) -> bool:
    """Whether `value` is an int >= 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_history(value: Any) -> bool:
    """Whether `value` is a chat history: a list of a session's messages (`message_problem`).

    Checked as the final checkpoint checks the session's own: a history a resume took in
    would otherwise be saved into a final checkpoint that no load takes back.
    """
    return isinstance(value, list) and all(message_problem(m) is None for m in value)


_META_SHAPE = (
    "meta record needs string 'agent_id' and 'prompt', a 'mode' of 'react' or 'tools' (and a "
    "numeric 'started_at', a string 'run', a bool 'turn', a count 'first_step', a list of "
    "messages 'history', a string 'context' with a count 'memory_hits')"
)
_MODES = ("react", "tools")


def _is_meta(meta: Any) -> bool:
    """Whether a decoded meta record has the shape `load` takes back (see `_META_SHAPE`)."""
    return (
        isinstance(meta, dict)
        and all(isinstance(meta.get(f), str) for f in ("agent_id", "prompt"))
        and meta.get("mode") in _MODES
        and _is_number(meta.get("started_at", 0.0))
        and isinstance(meta.get("run", ""), str)
        and isinstance(meta.get("turn", False), bool)
        and _is_count(meta.get("first_step", 0))
        and (meta.get("history") is None or _is_history(meta["history"]))
        and (
            "context" not in meta
            or (isinstance(meta["context"], str) and _is_count(meta.get("memory_hits")))
        )
    )


def _check_final(raw: bytes, key: str) -> None:
    """Checks that the final checkpoint `raw`, to be stored under `key`, loads back.

    Before it is written: written, it would replace the last checkpoint that did with one
    no load takes back (a chat message of another shape than a session's, say).

    Raises:
        PersistenceError: Naming `key` and what is wrong, as `load` would.
    """
    _final_session(decode(raw, key, "session"), key)


def is_stale_entry(entry: dict[str, Any], run: str | None) -> bool:
    """Whether a journal entry is another run's than `run` (so, for `run`, absent).

    An entry that names no run (written by versions before entries were tagged) is taken
    for the run's own: honouring it may refuse a call, ignoring it could repeat one.
    """
    written_by = entry.get("run")
    return run is not None and written_by is not None and written_by != run


def _turn_after(meta: dict[str, Any], final: dict[str, Any]) -> bool:
    """Whether the run of `meta` is not the one the final checkpoint closed: a later turn.

    That turn is running or was interrupted; the final checkpoint is an earlier turn's. The
    meta record names its run, and the final record the run it closes: no clocks are
    compared, so hosts whose clocks disagree agree on it. Records of older versions, which
    name no run, are compared by their times (`started_at` after `finished_at`) as they were.
    """
    if not isinstance(meta, dict):
        return False
    run, closed = meta.get("run"), final.get("run")
    if isinstance(run, str) and isinstance(closed, str):
        return run != closed
    started = meta.get("started_at", 0.0)
    finished = final.get("finished_at", 0.0)
    return _is_number(started) and _is_number(finished) and started > finished


def _base_records(raw: bytes, key: str, steps: int | None = None) -> list[StepRecord]:
    """The steps a base record (stored under `key`) holds: `steps` of them when given.

    Raises:
        PersistenceError: Naming `key`, when the record is corrupt, has the wrong shape, or
            holds another number of steps than its key says.
    """
    folded = decode(raw, key, "base")
    if not isinstance(folded, dict) or not isinstance(folded.get("records"), list):
        raise PersistenceError("base record holds no list of records", key=key)
    records = [_step_record(r, key) for r in folded["records"]]
    if steps is not None and len(records) != steps:
        raise PersistenceError(
            f"base record holds {len(records)} steps, its key says {steps}", key=key
        )
    return records


_HELD_RESUMES: weakref.WeakValueDictionary[str, CheckpointStore] = weakref.WeakValueDictionary()
"""The stores of this process by the nonce of each resume claim they hold, or are writing: a
claim that names this process and a nonce not here was left behind (its deletion failed, or
its store is gone)."""


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of `/proc/<pid>/stat` after the process's name (Linux): its state first.

    None where they cannot be read (no such process, another system, no file descriptor).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux); None where not known.

    With its pid, it names one process: a pid is reused, by a container restarted (its entry
    point is pid 1 again, under the same host name) or after the pids wrapped around.
    """
    fields = _stat_fields(pid)
    try:
        return None if fields is None else int(fields[19])  # field 22, `starttime`
    except (IndexError, ValueError):
        return None


_OWN_START: dict[int, int | None] = {}
"""This process's start time (`_process_start`), read once per pid (a forked child's own)."""


def _own_start() -> int | None:
    """This process's start time, read once per pid.

    A read that fails later (no file descriptor left) must not make the live claims of this
    process look like another process's.
    """
    pid = os.getpid()
    if pid not in _OWN_START:
        _OWN_START[pid] = _process_start(pid)
    return _OWN_START[pid]


def _holder_tag() -> dict[str, Any]:
    """What a claim says of the process that wrote it: host name, pid and start time."""
    tag: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    started = _own_start()
    if started is not None:
        tag["started"] = started
    return tag


def _ended_here(holder: Any) -> bool:
    """Whether a resume claim's holder is a process of this host that is no longer running.

    Told by the claim's `host` (the host's name), `pid` and `started` (the process's start
    time, where known). A claim that names neither host nor pid (older versions wrote none),
    another host's, or one whose process runs (under any user) is not; neither is any on
    Windows, where no signal 0 tests a process. A claim naming this process is one no store
    of it holds any more (its deletion failed); one naming this pid with another start time,
    or a running process started after it, is an earlier process's that had the same pid.
    """
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    started = holder.get("started")
    if not isinstance(started, int) or isinstance(started, bool):
        started = None
    if pid == os.getpid():
        own = _own_start()
        if started is not None and own is not None and started != own:
            return True
        nonce = holder.get("resume")  # a takeover's record has none: it is under way here
        return isinstance(nonce, str) and nonce not in _HELD_RESUMES
    if sys.platform == "win32":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it runs, as another user
        pass
    # Signal 0 reaches a zombie too: a process that ended, not yet reaped by its parent (a
    # supervisor that noticed its death by a timeout, say). Linux tells one by its state.
    fields = _stat_fields(pid)
    if fields is None:
        return False
    if fields[:1] in ([b"Z"], [b"X"]):
        return True
    return started is not None and fields[19:20] != [str(started).encode()]


def _lease_passed(holder: Any) -> bool:
    """Whether a resume claim's lease has passed: its `expires_at` is before now.

    Its holder renews it while its resumed run goes on: one that passed is a holder's that
    stopped (its process ended or stalled, on any host). A claim without one (no lease, or
    written by older versions) never passes.
    """
    expires_at = holder.get("expires_at") if isinstance(holder, dict) else None
    if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
        return False
    return expires_at < time.time()


MIN_LEASE_SECONDS = 0.1
"""The shortest resume lease: one renewed every third of a shorter one would be renewing
back to back, each renewal a write, with the claim expired before its renewal lands."""


def _lease_seconds(value: Any) -> float | None:
    """`value` as a resume lease: None (no lease), or seconds from `MIN_LEASE_SECONDS`.

    Raises:
        PersistenceError: Any other value.
    """
    if value is None:
        return None
    if _is_number(value):
        with contextlib.suppress(OverflowError):  # an int too large for a float
            seconds = float(value)
            if MIN_LEASE_SECONDS <= seconds < math.inf:
                return seconds
    raise PersistenceError(
        f"resume_lease_seconds must be a positive finite number of seconds, at least "
        f"{MIN_LEASE_SECONDS}, or None for no lease, got {value!r}"
    )


def _type_name(value: object) -> str:
    """How an error message names the type of a backend's result."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"


def _numbered(keys: Iterable[str], prefix: str) -> list[tuple[int, str]]:
    """The keys that are exactly `prefix` then a number (no other session's), by number.

    `session:a:step:` may list `session:a:step:meta`, the meta record that session `a:step`
    had before ids were escaped in keys.
    """
    start = len(prefix)
    found = []
    for key in keys:
        rest = key[start:]
        if key.startswith(prefix) and rest.isascii() and rest.isdigit():
            found.append((int(rest), key))
    found.sort()
    return found


P = ParamSpec("P")
R = TypeVar("R")

# What `CheckpointStore` calls on its backend (`save_new`, where there is one, too).
_BACKEND_METHODS = ("save", "load", "delete", "batch_save", "batch_load", "list_keys")
# The optional conditional writes of a `FencedPersistenceBackend`, used where a backend has them.
_CONDITIONAL_WRITES = ("save_new", "batch_save_if", "batch_delete_if")

_PRUNE_ATTEMPTS = 3
"""How many times `prune` starts over when the session's meta record changed as it pruned."""
_PRUNED_AS_DELETED = "the session is being deleted (a sweep or delete_session): not pruned"

_SWEEP_BATCH = 500
"""Keys a sweep (or `delete_session`) deletes in one batch, its claim renewed before each (see
`_delete_ended`)."""


def _backend_failures_typed(
    doing: str,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """A `CheckpointStore` method whose backend's own errors come out as `PersistenceError`s.

    A backend's own error (an `OSError`, a driver's) says what failed, with the error as its
    cause, as the run's writes do: a caller's `except PersistenceError` covers a resume, a
    fork or a sweep too. `doing` names the work: `f"{doing} session 'id' failed: ..."` for a
    method taking a session id first, `f"{doing} failed: ..."` for another.
    """

    def decorate(method: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(method)
        async def typed(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await method(*args, **kwargs)
            except PersistenceError:
                raise
            except Exception as error:
                session_id = args[1] if len(args) > 1 and isinstance(args[1], str) else None
                what = doing if session_id is None else f"{doing} session {session_id!r}"
                raise PersistenceError(f"{what} failed: {type(error).__name__}: {error}") from error

        return typed

    return decorate


class _AwaitedBackend:
    """A backend whose methods `blocking` may not be async.

    Each call's result is awaited, and one that is no awaitable (a synchronous method) is a
    `PersistenceError` naming it, not a bare "can't be used in 'await' expression" from deep
    in a load. Its other attributes are the backend's.
    """

    def __init__(self, backend: Any, blocking: list[str]) -> None:
        self._backend = backend
        for name in blocking:
            setattr(self, name, self._awaited(getattr(backend, name), name))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def _awaited(self, method: Callable[..., Any], name: str) -> Callable[..., Awaitable[Any]]:
        owner = type(self._backend).__name__

        async def awaited(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isasyncgen(result):
                raise PersistenceError(
                    f"a checkpoint backend's {name} must return its result, not yield it: "
                    f"{owner}.{name} is an async generator"
                )
            if not inspect.isawaitable(result):
                raise PersistenceError(
                    f"a checkpoint backend's methods must be async (async def {name}(...)): "
                    f"{owner}.{name} is synchronous and returned {_type_name(result)}"
                )
            return await result

        return awaited


def delete_claims_apart(session_id: str, deletion: Awaitable[Any], left: str) -> asyncio.Task[Any]:
    """Runs the `deletion` of a run's claims as a task of its own, and logs its failure.

    A cancellation of the caller then cannot cut it half way: a claim left behind, naming
    this live process, refuses later runs or resumes of the session. `left` says, for the
    log, what such a claim refuses and until when.
    """

    def log_failure(deleting: asyncio.Task[Any]) -> None:
        error = None if deleting.cancelled() else deleting.exception()
        if error is not None:
            logger.warning(
                "a claim of session %s was not deleted (%s): %r", session_id, left, error
            )

    deleting = asyncio.ensure_future(deletion)
    deleting.add_done_callback(log_failure)
    return deleting


@dataclass(frozen=True)
class _Claim:
    """A run's claim on the step it started the session from (see `CheckpointStore._claim`)."""

    key: str
    run: str
    meta: bytes
    """The run's meta record: saved again with its first step."""
    owned: bool = True
    """Whether this run made the claim (a resumed run may continue another's)."""


@dataclass
class _Lease:
    """A leased resume claim this store holds (see `CheckpointStore.claim_resumed`)."""

    key: str
    claim: dict[str, Any]
    """The claim's record, without its expiry (its nonce names this worker's claim)."""
    lost: Callable[[PersistenceError], None] | None
    renew_by: float
    """When, by `time.monotonic()`, two thirds of the lease last written are gone: a write of
    the run after that first checks that the claim is still this worker's, and renews it."""
    renewing: asyncio.Task[None] | None = None
    """The task renewing the claim (`CheckpointStore._renew`) until the run ends or the claim
    is lost."""

    @property
    def fence(self) -> str:
        """The key of the claim's fence: the nonce whose writes the run takes."""
        return _fence_of(self.key)

    @property
    def nonce(self) -> bytes:
        """This worker's nonce, as its fence holds it."""
        return str(self.claim["resume"]).encode()


@dataclass
class _Resume:
    """The records of a resume claim this store wrote (see `CheckpointStore.claim_resumed`)."""

    key: str
    nonce: str
    """This worker's nonce: its claim and fence hold it until another worker takes them over."""
    keys: list[str]
    """What of it is written: its fence, then the claim, then this worker's takeover key."""


def _fence_of(resume_key: str) -> str:
    """The key of the fence of resume claim `resume_key` (see `CheckpointStore.claim_resumed`).

    `session:<id>:fence:<n>` for `session:<id>:resume:<n>` (an escaped id holds no `:`). A
    fence is deleted with its claim, or before it (once the claim is gone, another worker may
    claim it and write its own fence), and only while it holds its deleter's nonce (see
    `CheckpointStore._deletions`).
    """
    session, _, first_step = resume_key.rpartition(":resume:")
    return f"{session}:fence:{first_step}"


_RUN_SAVED_ADVICE = (
    "load it (AgentSession.load_checkpoint) and run that, resume it (runtime.resume), delete it "
    "(runtime.delete_session), or start the new session under a new id"
)
_UNDER_WAY = "is being run by another run, which started from the same step"
_NOT_ENDED = "cannot run from a copy holding steps of its latest run: that run has not ended"
_NOT_ENDED_ADVICE = (
    "another worker runs it, or its process ended and runtime.resume finishes it; load the "
    "session (AgentSession.load_checkpoint) again once it has ended"
)
_SWEPT = "is being deleted by a sweep or delete_session (its latest run had ended)"
_SWEPT_ADVICE = "run the turn again once the sweep has ended: the session is then saved anew"
_DELETED_IN_PART = "is being deleted, or was in part, by a sweep or delete_session"
_SWEPT_RESUME_ADVICE = (
    "it is not resumed: what the deletion left is deleted by the next delete_session or "
    "sweep(failed=True)"
)
_RESUMED = "is being resumed by another worker"
_RESUMED_ADVICE = (
    "load it (AgentSession.load_checkpoint) when that resume has ended; a claim under a lease "
    "is taken over once its lease passed; if that worker's process ended on another host (or "
    "its claim names none) and its claim has no lease, call release_resume, then resume the "
    "session again"
)
_RUN_UNDER_WAY_ADVICE = (
    "start the new session under a new id, or load it (AgentSession.load_checkpoint) when that "
    "run has ended and run that; if that run's process ended before it saved a step, resume "
    "the session (runtime.resume)"
)


class CheckpointStore:
    """Session checkpoints, journal and event log on a `PersistenceBackend`.

    Args:
        backend: Where records are kept.
        resume_lease_seconds: The lease of this store's resume claims (see `claim_resumed`):
            None (the default) for none, else a finite number of seconds, at least
            `MIN_LEASE_SECONDS` (0.1).

    Raises:
        PersistenceError: A backend that lacks a method (or a backend class, not an instance),
            or a lease that is not valid.
    """

    def __init__(
        self, backend: PersistenceBackend, resume_lease_seconds: float | None = None
    ) -> None:
        if isinstance(backend, type):  # its methods are there, as functions: each call fails
            raise PersistenceError(
                f"a checkpoint backend must be an instance, got the class {backend.__name__} "
                f"(call it: {backend.__name__}(...))"
            )
        missing = [m for m in _BACKEND_METHODS if not callable(getattr(backend, m, None))]
        if missing:
            raise PersistenceError(
                f"a checkpoint backend needs {', '.join(missing)}: got {type(backend).__name__} "
                "(see PersistenceBackend)"
            )
        blocking = [
            m
            for m in (*_BACKEND_METHODS, *_CONDITIONAL_WRITES)
            if callable(getattr(backend, m, None)) and not is_async_callable(getattr(backend, m))
        ]
        self.backend = _AwaitedBackend(backend, blocking) if blocking else backend
        # A conditional write that answered None (see `_wrote`), named in refusals.
        self._answered_none: str | None = None
        self.resume_lease_seconds = _lease_seconds(resume_lease_seconds)
        self._next_event: dict[str, int] = {}  # per running session: the log's next number
        # Per session, the step records and events of its last failed `save_steps`, encoded
        # (by `id`, with the object, so that an id reused by another is no hit): the runtime
        # sends them again with its next steps, and an outage of k steps would otherwise
        # encode O(k^2) records, on the event loop.
        self._unsent: dict[str, _Encoded] = {}
        # Sessions whose run `save_meta` refused, until `forget`: nothing of that run is
        # written (its events would go into the log of the run the id belongs to).
        self._refused: set[str] = set()
        # The claims of the running sessions that saved no step yet (`save_meta`), until
        # their first step, `release` or `forget`.
        self._claims: dict[str, _Claim] = {}
        # The resume claims (`claim_resumed`) of the resumed runs of this store, by session,
        # until the run's final checkpoint or `release`.
        self._resumes: dict[str, _Resume] = {}
        # The leased resume claims of those runs, by session, until the run ends or the
        # claim is lost.
        self._leases: dict[str, _Lease] = {}
        # Resumed runs whose claim another worker took over, until `forget`: the error
        # every write of theirs raises (the taker writes the same steps).
        self._lost: dict[str, PersistenceError] = {}
        self._background: set[asyncio.Future[Any]] = set()  # deletions of claims left behind

    # ------------------------------------------------------------------ writing
    async def save_meta(
        self,
        session: AgentSession,
        mode: str,
        run: str | None = None,
        *,
        turn: bool = False,
        history: Sequence[dict[str, Any]] | None = None,
        before: tuple[str, str | None] | None = None,
        context: str | None = None,
        memory_hits: int = 0,
    ) -> str:
        """Records who runs what, before the first step; returns the run's id.

        `run` names the run (a fresh id when None): pass it to `save_final` when the run
        ends, so a later load knows that final checkpoint closes this run and not an earlier
        turn (see `SessionState.interrupted_turn`). `turn` says the run is a turn of a
        multi-turn session, and `history` is the chat history it starts with (that of the
        session, for a run that is no turn, which leaves it as it is); the record
        also keeps how many steps the session has before the run (`SessionState.first_step`),
        and, given a `context`, the run's context and the session's `memory_hits` with its
        recall (`SessionState.start`: a run cut off before its first step is resumed with
        them).

        A session whose steps the store does not all hold (one restored with
        `AgentSession.from_json`, or run before on a runtime without checkpoints) has them
        saved in the same write, as a base record, and the session as the final checkpoint
        of its earlier turns: the stored session is whole, and loads and resumes. `before`
        is the (prompt, final answer) the session had before this run set its own: that
        checkpoint holds them (without it, the session's are taken as they are).

        The run claims the step it starts the session from (`session:<id>:run:<n>`, with
        `save_new`; on a backend without it, a read then a write, which is not atomic): of
        runs starting one session from one step at once (two workers each running a turn on
        their copy), in any process, one runs. Call `release` if the run ends before its
        first step. While a sweep deletes the session (it holds that step's claim), the run is
        refused before it writes anything; the claim of a sweep cut short is no run's: it is
        deleted, and the step claimed again (see `_drop_stranded_sweep`).

        Raises:
            PersistenceError: Before anything is written, when the store holds more of the
                session than `session` does: more steps, or, for a session with none, a
                final checkpoint or steps (a new session under the id of a saved one, whose
                records would mix with the new run's), or when `session` holds steps of the
                store's latest run and that run has not ended (a copy loaded while it ran, in
                another worker, or before its process ended); or when another run took the step
                first (it runs, or its process ended before its first step, and
                `runtime.resume` continues it), a sweep deletes the session, a fork took
                the fresh id, or a record would not load back (a `mode` that is not a
                string, a chat history or message of another shape than a session's). Nothing
                of a refused run is written after it either (its steps, final checkpoint and
                events raise `PersistenceError`) until `forget` or another `save_meta` of the
                session.
        """
        self._answered_none = None  # a None of an earlier call is no refusal's of this one
        key = session_key(session.session_id)
        run = uuid.uuid4().hex if run is None else run
        meta_key, meta = _meta_item(
            session,
            mode,
            run,
            turn=turn,
            first_step=session.step_count,
            history=history,
            start=None if context is None else {"context": context, "memory_hits": memory_hits},
        )
        # Before anything is written: a record no load takes back makes the session
        # unloadable (a chat history of another shape than a session's, say).
        if not _is_meta(decode(meta, meta_key, "meta")):
            self._refuse(session.session_id, "cannot start", _META_SHAPE)
        meta_read: bytes | None = None  # the stored run's meta record, read before the count
        if session.steps:
            # Before the steps are counted: a run that ends in between has written them all.
            ended, meta_read = await self._latest_run_ended(key, session.step_count)
            if not ended:
                self._refuse(session.session_id, _NOT_ENDED, _NOT_ENDED_ADVICE)
            stored = await self._stored_steps(key)
            fresh = False
            taken = stored > len(session.steps)
        else:
            # Any run under the id wrote its meta record first: one read by key tells a
            # fresh id (a listing is a query of the backend's key index at every run).
            found = await self._batch_load([key, meta_key])
            fresh = not found
            stored = 0 if fresh else await self._stored_steps(key)
            taken = key in found or stored > 0
        if taken:
            # A final checkpoint without step records: a run that saved none, or a sweep
            # deleting the session (its step records go first).
            saved = f"{stored} steps saved" if stored else "a final checkpoint saved"
            why = f"already has checkpoints ({saved}, the session has {len(session.steps)})"
            self._refuse(session.session_id, why, _RUN_SAVED_ADVICE)
        save_new = getattr(self.backend, "save_new", None)
        # A fresh id's meta record first, insert-if-absent: of runs (and forks) starting it
        # at once, one writes it.
        if (
            fresh
            and callable(save_new)
            and not self._wrote(await save_new(meta_key, meta), "save_new")
        ):
            why = "was just taken by another run or a fork starting under it"
            self._refuse(session.session_id, why, _RUN_UNDER_WAY_ADVICE)
        claim = f"{key}:run:{session.step_count}"
        if stored < len(session.steps):
            # A run that claimed the store's last step and saved no step yet (its meta
            # record may not be written: `_latest_run_ended` could not tell it) runs.
            under_way = await self.backend.load(f"{key}:run:{stored}")
            if under_way is not None and record_kind(under_way) == "meta":
                self._refuse(session.session_id, _UNDER_WAY, _RUN_UNDER_WAY_ADVICE)
            # Not while a sweep deletes the session (its claim on the step): it would delete
            # what is written here. A claim its sweep left, cut short, is deleted.
            if await self._swept(claim) and not await self._drop_stranded_sweep(key, claim):
                self._refuse(session.session_id, _SWEPT, _SWEPT_ADVICE)
            # The steps the store lacks first, as the final checkpoint of the earlier turns (a
            # crash after it leaves the session whole and unclaimed), then the claim. Written
            # only over the final checkpoint read here (or none): another copy's run may have
            # saved them meanwhile, and run on, even finished.
            found_final = await self.backend.load(key)
            records = [StepRecord(step).to_dict() for step in session.steps]
            closed = session.to_dict()
            if before is not None:  # as the earlier turns left it, not as this run set it
                closed["prompt"], closed["final_answer"] = before
            earlier = {"session": closed, "finished_at": time.time()}
            # It closes the stored run (the session loads whole and finished, should this
            # run die before its claim), not this one.
            earlier["run"] = await self.current_run(session.session_id) or uuid.uuid4().hex
            closing = _encode("session", earlier)
            try:
                _check_final(closing, key)
            except PersistenceError as error:
                self._refuse(session.session_id, "cannot start", error.args[0])
            base = {f"{key}:base:{len(records)}": _encode("base", {"records": records})}
            if found_final is None:
                if not await self._save_if_absent(key, closing):
                    self._refuse(session.session_id, _UNDER_WAY, _RUN_UNDER_WAY_ADVICE)
                await self.backend.batch_save(base)
            elif not await self._save_guarded(key, found_final, {**base, key: closing}):
                self._refuse(session.session_id, _UNDER_WAY, _RUN_UNDER_WAY_ADVICE)
        claimed = await self._claim(session.session_id, session.step_count, run, meta)
        if not claimed and await self._drop_stranded_sweep(key, claim):
            claimed = await self._claim(session.session_id, session.step_count, run, meta)
        if not claimed:
            if fresh and callable(save_new):
                # Its meta record, written above, would be left for a run that never ran
                # (which `resume` would then run).
                await self._delete_if(meta_key, meta)
            if await self._swept(claim):
                self._refuse(session.session_id, _SWEPT, _SWEPT_ADVICE)
            self._refuse(session.session_id, _UNDER_WAY, _RUN_UNDER_WAY_ADVICE)
        # A sweep may have deleted the whole session between the count and the claim (its
        # claim gone with it): the run would write its steps over nothing, or over a new
        # session another run started under the id since (its meta record another one).
        if session.steps and stored == len(session.steps):
            # The meta record read before tells it alone; the session's own record, which
            # grows with every turn, is read only where there was no meta record to compare.
            found = await self._batch_load([meta_key] if meta_read is not None else [key, meta_key])
            if not found or found.get(meta_key) != meta_read:
                await self.release(session.session_id)
                self._refuse(session.session_id, _SWEPT, _SWEPT_ADVICE)
        if not (fresh and callable(save_new)):
            await self.backend.save(meta_key, meta)
        self._refused.discard(session.session_id)
        if fresh:
            # A new id has no event log: events are logged after the meta record only, and
            # a sweep deletes them before the final checkpoint (no listing, a query of the
            # backend's key index, at every run).
            self._next_event[session.session_id] = 0
        else:
            # Another process may have logged events since this one last wrote: count afresh.
            self._next_event.pop(session.session_id, None)
        return run

    async def _claim(
        self,
        session_id: str,
        step: int,
        run: str,
        meta: bytes,
        fence: tuple[str, bytes] | None = None,
    ) -> bool:
        """Claims the run starting the session from step `step` (`:run:<step>`).

        Insert-if-absent; the claim holds the run's meta record (`load` reads it, should the
        process end before the meta record is written). Returns whether this run has it. A
        claim that lands is `release`d if the run ends before its first step, or deleted once
        it lands when the wait for the write was cancelled: a resumed run's (its resume
        claim's `fence` key and this worker's nonce) only while the fence holds the nonce
        (see `_claimed`).
        """
        claim = f"{session_key(session_id)}:run:{step}"
        won = await self._claimed(self._save_if_absent(claim, meta), {claim: meta}, fence)
        if won:
            self._claims[session_id] = _Claim(claim, run, meta)
        return won

    async def _claimed(
        self,
        write: Awaitable[bool],
        items: dict[str, bytes],
        fence: tuple[str, bytes] | None = None,
    ) -> bool:
        """Awaits `write`, which writes `items` if it returns True (a claim's write).

        A cancellation does not cut the write half way. `items` that land all the same, or
        may have (the write failed: its reply may be what was lost), are deleted then, where
        each still holds what was written: held by no one (the caller never learnt it won),
        a claim would refuse every later run or resume of the session. With a `fence` (a
        resume claim's fence key and this worker's nonce), only while the fence holds the
        nonce: a worker that took the resume over meanwhile continues the same run, and the
        claim that landed is its own then. The deletion is not waited for: a backend that
        hangs would hang the cancellation.
        """
        landing = asyncio.ensure_future(write)
        try:
            return bool(await asyncio.shield(landing))
        except BaseException:
            landing.add_done_callback(functools.partial(self._drop_landed, items, fence))
            raise

    def _drop_landed(
        self,
        items: dict[str, bytes],
        fence: tuple[str, bytes] | None,
        write: asyncio.Future[bool],
    ) -> None:
        """Deletes `items` unless `write` is known not to have written them."""
        if write.cancelled() or (write.exception() is None and not write.result()):
            return
        if fence is None:
            self._in_background(self._delete_each_if(items))
        else:
            self._in_background(self._delete_guarded(*fence, list(items)))

    def _in_background(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        """Runs `work` as a task of its own, kept until it ends (its error retrieved)."""
        task = asyncio.ensure_future(work)
        self._background.add(task)  # a task only weakly referenced may be collected
        task.add_done_callback(self._background.discard)
        task.add_done_callback(retrieve_outcome)
        return task

    async def _delete_each_if(self, items: dict[str, bytes]) -> None:
        """Deletes each of `items` that still holds its value (see `_delete_if`)."""
        for key, raw in items.items():
            await self._delete_if(key, raw)

    async def _drop_stranded_sweep(self, key: str, claim: str) -> bool:
        """Deletes `claim`, a sweep's run claim on session key `key`, if its sweep is over.

        A sweep deletes its anchor last (the final checkpoint; for `delete_session` of a
        session whose latest run failed, the end record, which its claim then names), then
        its claim: one cut short (its process ended) leaves its claim, which would refuse
        every run of the session from that step. Its sweep is over when there is no anchor at
        all (a final checkpoint there may be one a run wrote as the sweep deleted:
        `save_meta` writes it before it claims), or when its claim is older than
        `_GRACE_SECONDS` (its `at`; a claim of an older version has none, and is). The claim
        is deleted by the one that takes it over (see `_drop_claim`). Returns whether it was
        deleted here.
        """
        raw = await self.backend.load(claim)
        holder = decode(raw, claim) if raw is not None else None
        if raw is None or not (isinstance(holder, dict) and "sweep" in holder):
            return False
        # Its anchor, deleted last: the end record for `delete_session` of a session whose
        # latest run failed, else the final checkpoint.
        anchor = f"{key}:ended" if "ended" in holder else key
        if not _outlived(holder, "at") and await self.backend.load(anchor) is not None:
            return False  # its sweep may be deleting the session right now
        return await self._drop_claim(claim, raw)

    async def _drop_claim(self, claim: str, raw: bytes) -> bool:
        """Deletes the sweep's claim `claim` if it still holds `raw`; whether it did.

        Only the one that writes its takeover key (`<claim>:<digest of raw>`,
        insert-if-absent) deletes it, then the key: two deleting it at once (a read, then a
        delete) would delete a run's claim made between them. A takeover key older than
        `_GRACE_SECONDS` is one whose writer ended before it deleted the key: it is replaced
        (a write guarded by the record read, so that one caller of two does), and the claim
        taken over then (a deletion of the session that found nothing else left both
        behind). Deleted, then written again, the key of a caller that had just written it
        was deleted by another that had read the old one: both took the claim over.
        """
        takeover = f"{claim}:{_digest(raw)}"
        mine = _encode("claim", {"takeover": uuid.uuid4().hex, "at": time.time()})
        for _ in range(3):  # the key deleted by its writer between the two reads: again
            if await self._save_if_absent(takeover, mine):
                break
            held = await self.backend.load(takeover)
            if held is None:
                continue
            if _outlived(decode(held, takeover), "at") and await self._save_guarded(
                takeover, held, {takeover: mine}
            ):
                break
            return False  # a live caller's, or another caller replaced it first
        else:
            return False
        try:
            return await self._delete_if(claim, raw)
        finally:
            await self._delete_if(takeover, mine)

    async def _delete_if(self, key: str, raw: bytes) -> bool:
        """Deletes `key` if it still holds `raw`; returns whether it did.

        A read, then a delete (backends have no atomic compare-and-delete): it spares a
        record written over `raw` before the read.
        """
        if await self.backend.load(key) != raw:
            return False
        await self.backend.delete(key)
        return True

    async def _swept(self, claim: str) -> bool:
        """Whether the run claim `claim` is a sweep's (see `sweep`)."""
        raw = await self.backend.load(claim)
        holder = decode(raw, claim) if raw is not None else None
        return isinstance(holder, dict) and "sweep" in holder

    async def _save_if_absent(self, key: str, value: bytes) -> bool:
        """`save_new` where the backend has it; else a read, then a write if the key is absent.

        The fallback (for backends written before `save_new`) is not atomic: two writers may
        both write. It still keeps out a writer that comes once the other has written, the
        common case (a run that starts while another waits on its model).
        """
        save_new = getattr(self.backend, "save_new", None)
        if callable(save_new):
            return self._wrote(await save_new(key, value), "save_new")
        if await self.backend.load(key) is not None:
            return False
        await self.backend.save(key, value)
        return True

    async def claim_resumed(
        self, state: SessionState, lost: Callable[[PersistenceError], None] | None = None
    ) -> None:
        """Claims the resumed run of `state`, exclusively, and the step it continues from.

        A resume first takes `session:<id>:resume:<first_step>` (the run's first step number
        names the run in its session) insert-if-absent, holding a nonce of its own: of
        workers resuming one session at once, in any process, one runs; the others are
        refused. The resume claim is deleted when the resumed run ends (its final checkpoint,
        or `release` when it fails). A resumer whose process ended leaves it, as does a
        deletion that fails (a database down). The claim names the resumer's host, process id
        and (on Linux) the process's start time: a claim of a process of this host that is no
        longer running (a pid reused by a later process, a restarted container's entry point,
        is told by its start time), or of this process that no store of it holds any more, is
        taken over, by one worker (it writes
        `session:<id>:resume:<first_step>:<that claim's nonce>` insert-if-absent, checks
        that the claim is still the one it read, then writes its own over it, and deletes
        both when its run ends); the others are refused. Hosts are told apart by name:
        processes of one host name must see each other's process ids.

        Under a lease (`resume_lease_seconds`), the claim also holds the wall-clock time it
        expires (`expires_at`, now plus the lease), and a task renews it every third of the
        lease (the same nonce, a new expiry) until the run ends (`save_final`, `release`,
        `forget`: no renewal is written after them). A claim whose `expires_at` passed is
        taken over as above by a worker of any host, whatever its own lease (the holder
        stopped renewing: its process ended, or stalled longer than the lease). A taker's
        key holds its lease too: one left by a taker that ended between its two writes is
        taken over in its turn once that lease passed, its process is known to have ended
        here, or a minute after it was written, whichever comes first, so a worker that
        died mid-takeover blocks the session no longer than its lease either. Before each
        renewal the holder checks that its claim still holds its nonce and that no takeover
        key names it; else it has lost the claim: it stops renewing, gives the claim up
        (deleting nothing but its own takeover key) and calls `lost` with a
        `PersistenceError` (the runtime then stops the run). Hosts' clocks must agree to
        well within the lease. Once two thirds of its lease are gone with no renewal (its
        process stalled, or the backend failed the renewals), the holder checks its claim
        the same way before each write of its run (steps, events, journal, final
        checkpoint), and renews it: a holder that wakes from a stall longer than the lease
        writes nothing over its taker's records, whichever of its run and its renewal goes
        first. A write already on its way to the backend when the holder stalled is refused
        too, where the backend has `batch_save_if` (all of this package's do): the claim's
        fence, `session:<id>:fence:<first_step>`, holds the nonce of the worker whose
        writes of the run's steps, events and final checkpoint, and renewals of the claim,
        land: each is written only if the fence still holds its writer's. A claimant writes
        the fence only while the claim is its own, a taker with the claim in one write (if
        the claim still holds what it read), both before they check the stored steps; the
        fence is deleted with its claim, and only while it holds the deleter's nonce (a
        holder that wakes from a stall past its lease deletes nothing of its taker's). The
        tool-call journal's writes are not fenced: its idempotency keys and intents written
        insert-if-absent keep at-most-once tools safe.

        Without a lease, whether a process of another host runs cannot be told from here,
        nor that of a claim naming no host and no lease (older versions), nor any on
        Windows: those keep every later resume out until `release_resume` deletes them
        (call that once that process is known to have ended).

        Then the step is claimed as a new run claims it, so that a new run of a copy of the
        session is refused while it runs. The claim of the run resumed (its process ended
        before its first step) is kept until the resumed run's first step: `release` gives up
        only a claim this run made.

        Raises:
            PersistenceError: Another worker resumes the session (or its process ended on
                another host while it did, its claim without a lease: see `release_resume`),
                or takes over the claim of one whose process ended or whose lease passed, or
                resumed it since `state` was loaded (load it again), or another run claimed
                the step after the session was loaded.
        """
        nonce = uuid.uuid4().hex
        _HELD_RESUMES[nonce] = self  # before the claim is written (see `_ended_here`)
        try:
            await self._claim_resumed(state, lost, nonce)
        except BaseException:
            held = self._resumes.get(state.session_id)
            if held is None or held.nonce != nonce:
                _HELD_RESUMES.pop(nonce, None)
            # Cut off or failed before it held the session: nothing of the run is written,
            # its end neither, where another worker may be resuming it.
            self._refused.add(state.session_id)
            raise

    def _pop_resume(self, session_id: str, deleting: bool = False) -> _Resume | None:
        """Takes the resume claim this store holds of the session from it, if any.

        Its nonce is no longer held in this process (with `deleting`, once its deletion was
        tried: see `_delete_all`): a claim left behind is taken over by the next resume here
        (see `_ended_here`).
        """
        resume = self._resumes.pop(session_id, None)
        if resume is not None and not deleting:
            _HELD_RESUMES.pop(resume.nonce, None)
        return resume

    async def _claim_resumed(
        self, state: SessionState, lost: Callable[[PersistenceError], None] | None, nonce: str
    ) -> None:
        self._answered_none = None  # a None of an earlier call is no refusal's of this one
        run = state.run or ""
        key = session_key(state.session_id)
        resume_key = f"{key}:resume:{state.first_step}"
        claim: dict[str, Any] = {"run": run, "resume": nonce, **_holder_tag()}
        # Taken before the expiry is: the lease counts from no later (see `_Lease.renew_by`).
        written = time.monotonic() if self.resume_lease_seconds is not None else 0.0
        mine = self._leased(claim)
        fence = {_fence_of(resume_key): nonce.encode()}
        if await self._claimed(self._save_if_absent(resume_key, mine), {resume_key: mine}):
            # The fence is written while the claim holds `mine` (no renewal has run yet; a
            # stall past the lease may have lost it), and is this worker's to delete only
            # once written (before the claim: see `_fence_of`).
            self._resumes[state.session_id] = _Resume(resume_key, nonce, [resume_key])
            if not await self._claimed(self._save_guarded(resume_key, mine, fence), fence):
                self._pop_resume(state.session_id)  # another worker's claim now
                self._refuse(state.session_id, _RESUMED, _RESUMED_ADVICE)
            self._resumes[state.session_id] = _Resume(resume_key, nonce, [*fence, resume_key])
        elif not await self._take_over(state.session_id, resume_key, nonce, mine):
            self._refuse(state.session_id, _RESUMED, _RESUMED_ADVICE)
        # A resume that ended just before this one took the claim: the state is out of date.
        final_raw = await self.backend.load(key)
        final = decode(final_raw, key, "session") if final_raw is not None else None
        closed = isinstance(final, dict) and run != "" and final.get("run") == run
        if closed or await self._stored_steps(key) != len(state.records):
            await self._drop_resume(state.session_id)
            self._refuse(
                state.session_id,
                "was resumed by another worker since it was loaded",
                "load it again (AgentSession.load_checkpoint), or resume it again",
            )
        _, record = _meta_item(
            AgentSession(session_id=state.session_id, agent_id=state.agent_id, prompt=state.prompt),
            state.mode,
            run,
            turn=state.turn,
            first_step=state.first_step,
            history=state.history,
            start=state.start,
        )
        step = len(state.records)  # where a new run of a copy loaded now would start from
        fence_nonce = (_fence_of(resume_key), nonce.encode())
        claim_key = f"{key}:run:{step}"
        claimed = await self._claim(state.session_id, step, run, record, fence_nonce)
        if not claimed and await self._swept(claim_key):
            # A sweep's or `delete_session`'s claim: one cut short (its process ended) is
            # deleted, and the step claimed again, as a new run does (see `save_meta`); not
            # one that marked the meta record, and may have deleted part of the session (its
            # journal: an at-most-once call would run again). The next deletion finishes it.
            meta_raw = await self.backend.load(f"{key}:meta")
            marked = meta_raw is not None and _being_deleted(
                decode(meta_raw, f"{key}:meta", "meta")
            )
            if marked or not (
                await self._drop_stranded_sweep(key, claim_key)
                and await self._claim(state.session_id, step, run, record, fence_nonce)
            ):
                await self._drop_resume(state.session_id)
                self._refuse(state.session_id, _DELETED_IN_PART, _SWEPT_RESUME_ADVICE)
            claimed = True
        if not claimed:
            raw = await self.backend.load(claim_key)
            holder = decode(raw, claim_key) if raw is not None else None
            if isinstance(holder, dict) and holder.get("run") != run:
                # Another run claimed the step after this session was loaded: it runs.
                await self._drop_resume(state.session_id)
                self._refuse(state.session_id, _UNDER_WAY, _RUN_UNDER_WAY_ADVICE)
            # The run's own claim (its process ended): the meta record, which the claim may
            # hold alone, is saved with the first step all the same.
            self._claims[state.session_id] = _Claim(claim_key, run, record, owned=False)
        # A deletion may have ended between the count above and the claim (its claim gone
        # with it), or been taken over once it had deleted its anchor: the run would write
        # its steps over what is left of the session, or over nothing. (More steps than
        # loaded: a write of the run resumed, cut off, that landed since; not a deletion.)
        now = await self._batch_load([key, f"{key}:meta"])
        marked = f"{key}:meta" in now and _being_deleted(
            decode(now[f"{key}:meta"], f"{key}:meta", "meta")
        )
        if marked or not now or await self._stored_steps(key) < len(state.records):
            # Its claims go: the step's if still its own (a deletion that ended may have
            # deleted the resume claim's fence, which guards their deletion together).
            made = self._claims.pop(state.session_id, None)
            if made is not None and made.owned:
                await self._delete_if(made.key, made.meta)
            await self._drop_resume(state.session_id)
            why = _DELETED_IN_PART if marked else "was deleted as it was resumed"
            self._refuse(state.session_id, why, _SWEPT_RESUME_ADVICE)
        await self._mark_resumed(key, run, fence_nonce)
        if self.resume_lease_seconds is not None:
            renew_by = written + self.resume_lease_seconds * 2 / 3
            lease = _Lease(resume_key, claim, lost, renew_by)
            self._leases[state.session_id] = lease
            lease.renewing = asyncio.ensure_future(self._renew(state.session_id, lease))
            lease.renewing.add_done_callback(retrieve_outcome)

    async def _mark_resumed(self, key: str, run: str, fence: tuple[str, bytes]) -> None:
        """Marks the end record of run `run` (session key `key`), if any, as resumed.

        A failed run's end record names it: a copy loaded while its resume goes on holds
        the resume's steps, and must not take the run for ended (`_latest_run_ended`). The
        resume's own end (a final checkpoint, or `save_run_end`) writes the record anew.
        Written while `fence` (the resume claim's fence key and this worker's nonce) holds.
        """
        ended_key = f"{key}:ended"
        raw = await self.backend.load(ended_key)
        record = decode(raw, ended_key, "ended") if raw is not None else None
        if isinstance(record, dict) and record.get("run") == run:
            marked = {ended_key: _encode("ended", {**record, "resumed": True})}
            await self._save_guarded(*fence, marked)

    async def _save_guarded(
        self, guard_key: str, guard_value: bytes, items: dict[str, bytes]
    ) -> bool:
        """`batch_save_if` where the backend has it; else a read, then a write if it holds.

        The fallback (for backends written before `batch_save_if`) is not atomic: a write of
        the guard between the read and the write is missed.
        """
        save_if = getattr(self.backend, "batch_save_if", None)
        if callable(save_if):
            return self._wrote(await save_if(guard_key, guard_value, items), "batch_save_if")
        if await self.backend.load(guard_key) != guard_value:
            return False
        await self.backend.batch_save(items)
        return True

    def _leased(self, claim: dict[str, Any]) -> bytes:
        """The record of resume claim `claim`, expiring a lease from now (under a lease)."""
        if self.resume_lease_seconds is None:
            return _encode("claim", claim)
        return _encode("claim", {**claim, "expires_at": time.time() + self.resume_lease_seconds})

    async def _renew(self, session_id: str, lease: _Lease) -> None:
        """Renews this worker's resume claim every third of the lease until it is lost.

        Runs until cancelled (`_stop_renewing`) or the claim is lost (see `claim_resumed`):
        then `_lose`. A renewal the backend fails is tried again at the next (the claim is
        lost only once another worker took it over).
        """
        assert self.resume_lease_seconds is not None
        failing = False  # logged once an outage begins, not at each renewal
        while True:
            await asyncio.sleep(self.resume_lease_seconds / 3)
            self._check_renewing(session_id)
            try:
                if not await self._holds(lease):
                    break
                self._check_renewing(session_id)
                if not await self._extend(lease):
                    break
            except Exception as error:
                level = logging.DEBUG if failing else logging.WARNING
                logger.log(level, "resume claim %s not renewed: %r", lease.key, error)
                failing = True
            else:
                if failing:
                    logger.info("resume claim %s renewed, after failing", lease.key)
                failing = False
        self._check_renewing(session_id)  # not if the run ended meanwhile (`forget`)
        self._lose(session_id, lease)

    async def _holds(self, lease: _Lease) -> bool:
        """Whether `lease`'s claim is still this worker's.

        It is when no takeover key names it (a taker writes one before its own claim) and it
        holds this worker's nonce.
        """
        if await self.backend.load(f"{lease.key}:{lease.claim['resume']}") is not None:
            return False
        raw = await self.backend.load(lease.key)
        holder = decode(raw, lease.key) if raw is not None else None
        return isinstance(holder, dict) and holder.get("resume") == lease.claim["resume"]

    async def _extend(self, lease: _Lease) -> bool:
        """Writes `lease`'s claim again, expiring a lease from now; returns whether it did.

        Fenced as the run's writes are (see `claim_resumed`): a renewal that left before a
        takeover and lands after it is refused, rather than write this worker's claim over
        the taker's. False then: the claim is lost.
        """
        assert self.resume_lease_seconds is not None
        written = time.monotonic()
        if not await self._save_guarded(
            lease.fence, lease.nonce, {lease.key: self._leased(lease.claim)}
        ):
            return False
        lease.renew_by = max(lease.renew_by, written + self.resume_lease_seconds * 2 / 3)
        return True

    async def _keep_lease(self, session_id: str, lease: _Lease) -> None:
        """Checks that `lease`'s claim is still this worker's, and renews it.

        Before a write of a resumed run whose lease is two thirds gone: its renewals fell
        behind (its process stalled, or the backend failed them).

        Raises:
            PersistenceError: The claim is lost (see `_lose`), or the check or the renewal
                failed: nothing is written then, as the claim may be another worker's.
        """
        try:
            held = await self._holds(lease)
            if held and self._leases.get(session_id) is lease:  # not once the run ended
                held = await self._extend(lease)
        except PersistenceError:
            raise
        except Exception as error:  # a backend's own error, typed for the caller
            raise PersistenceError(
                f"resume claim not renewed, so nothing is written: {error}", key=lease.key
            ) from error
        if not held:
            raise self._lose(session_id, lease)

    def _lose(self, session_id: str, lease: _Lease) -> PersistenceError:
        """Gives up `lease`'s claim, which another worker took over (or deleted).

        The claim, and the claim of the step it continues from, are the taker's now (it
        continues the same run): not this worker's to delete; this worker's takeover key,
        if it took the claim over, is deleted. The renewal stops, `lost` is called, and
        every later write of the run raises the returned `PersistenceError` (until
        `forget`). Once only: a claim lost already, or of a run that ended, is left as it is.
        """
        error = self._lost.get(session_id) or PersistenceError(
            f"session {session_id!r} is no longer resumed by this worker: its resume "
            "claim was taken over by another worker (not renewed within its lease of "
            f"{self.resume_lease_seconds:g} s: this process stalled, or could not "
            "reach the backend) or deleted (release_resume); this run stops here: "
            "load the session (AgentSession.load_checkpoint) once that resume ended",
            key=lease.key,
        )
        if self._leases.get(session_id) is not lease:
            return error
        del self._leases[session_id]
        if lease.renewing is not None and lease.renewing is not asyncio.current_task():
            lease.renewing.cancel()
        self._claims.pop(session_id, None)
        resume = self._pop_resume(session_id)
        for key in resume.keys if resume is not None else []:
            if key in (lease.key, lease.fence):  # the taker's now
                continue
            self._in_background(self.backend.delete(key))
        # Kept for the run's writes on its way out (the steps and events whose save failed),
        # which would land over the taker's records of the same step numbers.
        self._lost[session_id] = error
        if lease.lost is not None:
            lease.lost(error)
        return error

    def _check_renewing(self, session_id: str) -> None:
        """Raises CancelledError in a renewal `_stop_renewing` stopped.

        Its cancellation alone may be lost: a backend's driver may swallow it (asyncio's
        `wait_for` before Python 3.12 does, when what it waits for ends at that moment), and
        the renewal would go on, and its `release`, which waits for it to end, never return.
        """
        lease = self._leases.get(session_id)
        if lease is None or lease.renewing is not asyncio.current_task():
            raise asyncio.CancelledError

    def _stop_renewing(self, session_id: str) -> asyncio.Task[None] | None:
        """Cancels the renewal of the session's resume claim, if any; returns it to await.

        The run ended: none of its writes checks the claim any more (see `_keep_lease`).
        """
        lease = self._leases.pop(session_id, None)
        renewing = lease.renewing if lease is not None else None
        if renewing is not None:
            renewing.cancel()
        return renewing

    async def _take_over(self, session_id: str, resume_key: str, nonce: str, mine: bytes) -> bool:
        """Takes over the resume claim `resume_key` if its process ended or its lease passed.

        See `claim_resumed`. Writes `mine` over it, and this worker's `nonce` over its
        fence, in one step and only if the claim still holds what was read: a renewal
        of its holder that lands meanwhile keeps the claim its holder's, and one that lands
        after finds the fence changed (see `_extend`). Returns whether this worker took it
        over.
        """
        raw = await self.backend.load(resume_key)
        holder = decode(raw, resume_key) if raw is not None else None
        theirs = holder.get("resume") if isinstance(holder, dict) else None
        if not (isinstance(theirs, str) and _NONCE.match(theirs)):
            return False
        if not (_lease_passed(holder) or _ended_here(holder)):
            return False
        takeover = f"{resume_key}:{theirs}"
        # Under a lease, the takeover key expires as a claim would: a worker that dies
        # between its two writes blocks the session no longer than its lease.
        record = self._leased({"takeover": theirs, "at": time.time(), **_holder_tag()})
        if not await self._claimed(self._save_if_absent(takeover, record), {takeover: record}):
            # Another worker's takeover: under way, done (the claim is its own now, so it
            # holds something else than `raw`), or cut short between its two writes (its
            # process ended, its lease passed, or it is older than `_GRACE_SECONDS`).
            # That one's key would refuse every later takeover: it is deleted, and the
            # claim taken over here.
            held = await self.backend.load(takeover)
            if held is None or await self.backend.load(resume_key) != raw:
                return False
            other = decode(held, takeover)
            if not (_ended_here(other) or _lease_passed(other) or _outlived(other, "at")):
                return False  # under way
            if not await self._delete_if(takeover, held):
                return False
            if not await self._claimed(self._save_if_absent(takeover, record), {takeover: record}):
                return False  # another worker took it over meanwhile
        self._resumes[session_id] = _Resume(resume_key, nonce, [takeover])
        assert raw is not None
        # The claim and the fence are this worker's to delete only once the write returned:
        # one that failed may not have landed, and the claim may then be a live holder's.
        fence = _fence_of(resume_key)
        taken = {fence: nonce.encode(), resume_key: mine}
        if not await self._claimed(self._save_guarded(resume_key, raw, taken), taken):
            # Taken over and ended meanwhile (its taker deletes the claim before this key),
            # or renewed: the claim there now, if any, is a later resume's or its holder's.
            await self._drop_resume(session_id)
            return False
        self._resumes[session_id] = _Resume(resume_key, nonce, [fence, resume_key, takeover])
        return True

    def _deletions(
        self, keys: Sequence[str], resume: _Resume | None
    ) -> list[Callable[[], Awaitable[Any]]]:
        """The deletions of `keys` (a run's claim) and of what `resume` wrote, in order.

        A resumed run's, only while they are this worker's: one that stalled past its lease
        before this may find its claim taken over, and the claim, its fence and the claim of
        the step it continues from are the taker's then, and stay. A taker writes the claim
        and the fence at once (see `_take_over`): the fence still holding this worker's nonce
        tells that they are still its own, and they go in one guarded step
        (`batch_delete_if`, where the backend has it; else a read, then the deletes). A
        claim written without its fence yet (its run claimed no step then) goes while it
        holds this worker's nonce (a read, then a delete, as `_delete_if`). Its takeover
        key is its own.
        """
        if resume is None:
            return [functools.partial(self.backend.delete, key) for key in keys]
        fence = _fence_of(resume.key)
        mine: list[Callable[[], Awaitable[Any]]]
        if fence in resume.keys:
            guarded = [*keys, fence, resume.key]
            nonce = resume.nonce.encode()
            mine = [functools.partial(self._delete_guarded, fence, nonce, guarded)]
        else:
            mine = [*self._deletions(keys, None), functools.partial(self._delete_claim, resume)]
        rest = [k for k in resume.keys if k not in (fence, resume.key)]
        return [*mine, *self._deletions(rest, None)]

    async def _delete_guarded(self, guard_key: str, guard_value: bytes, keys: list[str]) -> bool:
        """`batch_delete_if` where the backend has it; else a read, then the deletes.

        A `batch_delete_if` that fails is done the other way: one key that cannot be deleted
        (a fence) must not keep the others (its claim, which would refuse every later
        resume) with it.
        """
        delete_if = getattr(self.backend, "batch_delete_if", None)
        if callable(delete_if):
            try:
                return self._wrote(await delete_if(guard_key, guard_value, keys), "batch_delete_if")
            except Exception as error:
                logger.debug("guarded deletion of %s failed, done key by key: %r", keys, error)
        if await self.backend.load(guard_key) != guard_value:
            return False
        await self._delete_all(keys)
        return True

    async def _delete_claim(self, resume: _Resume) -> None:
        """Deletes `resume`'s claim if it still holds this worker's nonce."""
        raw = await self.backend.load(resume.key)
        holder = decode(raw, resume.key) if raw is not None else None
        if isinstance(holder, dict) and holder.get("resume") == resume.nonce:
            await self.backend.delete(resume.key)

    async def _drop_resume(self, session_id: str) -> None:
        """Deletes the resume claim this store holds of the session, its fence and takeover key.

        In a task of its own: cut half way by a cancellation, it would leave the claim,
        naming this live process, and every later resume of the session would be refused.
        """
        resume = self._pop_resume(session_id, deleting=True)
        if resume is not None:
            await asyncio.shield(self._in_background(self._delete_all([], resume)))

    @_backend_failures_typed("releasing the resume claims of")
    async def release_resume(self, session_id: str) -> bool:
        """Deletes the stored resume claims of a session; returns whether there were any.

        For a session whose resumer's process ended where `claim_resumed` cannot tell it
        (on another host, or a claim of an older version) and whose claim has no lease
        (one under a lease is taken over once it passed): every later resume is refused
        until then. Call it only once that process is known to have ended: a resume under
        way would then run alongside the next one (under a lease, it stops at its next
        renewal). The keys of takeovers, and the claims' fences, go too.
        """
        fences = f"{session_key(session_id)}:fence:"
        for fence in await self._list_keys(fences):
            if fence[len(fences) :].isdigit():
                await self.backend.delete(fence)
        prefix = f"{session_key(session_id)}:resume:"
        keys = await self._list_keys(prefix)
        claims = sorted(k for k in keys if k.startswith(prefix) and _RESUME.match(k, len(prefix)))
        for claim in claims:
            await self.backend.delete(claim)
        self._pop_resume(session_id)
        return bool(claims)

    async def _latest_run_ended(self, key: str, steps: int) -> tuple[bool, bytes | None]:
        """Whether session key `key`'s latest run, if it began before step `steps`, ended.

        Returned with the meta record read (None: none).

        A copy loaded while a run was under way holds that run's saved steps: a run started
        from it would claim the step after them, which no other run claimed, and write the
        same step keys as the run under way. That run ended when its end record (written
        with its final checkpoint, by `save_run_end`, or by `fork` for the fork's run) names
        it and no resume of it has begun since (see `_mark_resumed`), or, in records of older
        versions, a final checkpoint closes it; a run whose process ended first did not
        (`runtime.resume` ends it).

        Raises:
            PersistenceError: A record read is corrupt.
        """
        meta_key, ended_key = f"{key}:meta", f"{key}:ended"
        found = await self._batch_load([meta_key, ended_key])
        meta_raw = found.get(meta_key)
        if meta_raw is None:
            return True, None  # a final checkpoint alone (older records, a pruned session)
        meta = decode(meta_raw, meta_key, "meta")
        if not _is_meta(meta):
            return True, meta_raw  # not a run's record at all: the load refuses it
        run, first = meta.get("run"), meta.get("first_step")
        if not (isinstance(run, str) and _is_count(first) and first < steps):
            return True, meta_raw  # a record of an older version, or a run its claim tells
        ended = decode(found[ended_key], ended_key, "ended") if ended_key in found else None
        if isinstance(ended, dict) and ended.get("run") == run:
            return not ended.get("resumed"), meta_raw
        raw = await self.backend.load(key)  # the whole session: older records only
        if raw is None:
            return False, meta_raw
        final = decode(raw, key, "session")
        if not isinstance(final, dict):
            raise PersistenceError("final checkpoint holds no 'session'", key=key)
        return not _turn_after(meta, final), meta_raw

    def _refuse(self, session_id: str, why: str, advice: str) -> NoReturn:
        """Refuses the run of the session (see `save_meta`): nothing of it is written after."""
        self._refused.add(session_id)
        key = session_key(session_id)
        answered, self._answered_none = self._answered_none, None
        if answered is not None:  # this refusal's: maybe a write that landed, read as none
            advice += (
                f" (the backend's {answered} answered None here, read as 'not written': if "
                "it did write, it must return True)"
            )
        raise PersistenceError(f"session {session_id!r} {why}: {advice}", key=key)

    async def _batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The backend's `batch_load(keys)`, checked to be a dict.

        Raises:
            PersistenceError: The backend returned something else (it breaks its protocol).
        """
        found = await self.backend.batch_load(keys)
        if not isinstance(found, dict):
            raise PersistenceError(
                f"the backend's batch_load returned a {type(found).__name__}, not a dict"
            )
        return found

    def _wrote(self, outcome: object, method: str) -> bool:
        """Whether a backend's conditional write wrote: the bool it returned.

        The conditional writes are `save_new`, `batch_save_if` and `batch_delete_if`. An int
        0 or 1 (what a script of a key-value server returns) is taken too, and None as False
        (redis-py's `set(..., nx=True)` answers None when it did not write): a write that did
        land and forgot its `return True` is then refused as another worker's, a refusal
        that names the None (see `_refuse`).

        Raises:
            PersistenceError: It returned anything else. Read as false, it would say another
                worker holds the key, which none may.
        """
        if outcome is True or outcome is False:
            return outcome
        if outcome is None:
            self._answered_none = method
            return False
        if type(outcome) is int and outcome in (0, 1):
            return bool(outcome)
        raise PersistenceError(
            f"the backend's {method} returned {_type_name(outcome)}, not a bool (True when it "
            "wrote, False when it did not)"
        )

    async def _list_keys(self, prefix: str) -> list[str]:
        """The backend's `list_keys(prefix)`, as a list of strs.

        Any iterable of strs is taken (a generator would be used up by the first of the
        several passes some callers make over the keys, and the others would see none).

        Raises:
            PersistenceError: The backend returned something else (it breaks its protocol).
        """
        found = await self.backend.list_keys(prefix)
        if type(found) is list:
            keys = found
        elif isinstance(found, (str, bytes, dict)) or not hasattr(found, "__iter__"):
            raise PersistenceError(
                f"the backend's list_keys returned {_type_name(found)}, not a list of strs"
            )
        else:
            keys = list(found)
        for key in keys:
            if not isinstance(key, str):
                raise PersistenceError(
                    f"the backend's list_keys returned a key that is {_type_name(key)}, not a str"
                )
        return keys

    async def _stored_steps(self, key: str, listed: list[str] | None = None) -> int:
        """How many steps the store holds of session key `key` (the highest step saved).

        `listed`: the keys under `key:`, listed already (else the steps and bases are).
        """
        prefix = f"{key}:step:"
        deltas = _numbered(await self._list_keys(prefix) if listed is None else listed, prefix)
        return max(deltas[-1][0] if deltas else 0, await self._longest_base(key, listed))

    def forget(self, session_id: str) -> None:
        """Drops what this store keeps in memory of a session's run (it ended, any way)."""
        self._next_event.pop(session_id, None)
        self._unsent.pop(session_id, None)
        self._refused.discard(session_id)
        self._lost.pop(session_id, None)
        self._claims.pop(session_id, None)
        self._pop_resume(session_id)
        self._stop_renewing(session_id)

    def release(self, session_id: str) -> Awaitable[Any]:
        """Gives up the claim of a session's run that saved no step (see `save_meta`).

        Call it when the run ends before its first step (a provider down, a spent budget, a
        timeout): until then, another run starting from the same step is refused, as a run
        under way cannot be told from one that ended. A resumed run's resume claim (see
        `claim_resumed`) goes too, at any step, once its renewal stopped (none is written
        after). Does nothing else once the run saved a step (the steps keep other runs out
        then). Returns the deletion to await: the claim is this store's no more from the call
        on (`forget` cannot lose it), and the deletion may run as its own task, which a
        cancellation of the run does not cut half way.
        """
        return self._drop_claims(session_id, another_runs=False) or asyncio.sleep(0)

    def _drop_claims(self, session_id: str, another_runs: bool) -> Awaitable[Any] | None:
        """Takes the run's claims from this store; returns their deletion (None: none).

        The claim of the step the run started from goes if this run made it, or, with
        `another_runs`, if a run this one resumed made it; a resume claim goes once its
        renewal stopped (see `_release_leased`).
        """
        claim = self._claims.pop(session_id, None)
        keys = [claim.key] if claim is not None and (claim.owned or another_runs) else []
        resume = self._pop_resume(session_id, deleting=True)
        renewing = self._stop_renewing(session_id)
        if renewing is not None:
            return self._release_leased(renewing, keys, resume)
        if resume is not None:
            return self._delete_all(keys, resume)
        if not keys:
            return None
        return self.backend.delete(keys[0])  # a run's claim on its first step, alone

    async def _release_leased(
        self, renewing: asyncio.Task[None], keys: list[str], resume: _Resume | None
    ) -> None:
        """`release` of a leased resume claim: `keys` and `resume`'s, unless it was lost.

        Waits for its renewal (cancelled) to end first, so that no renewal lands after the
        claim is deleted. A renewal that ended of itself lost the claim: the claims are
        another worker's then (see `_lose`), and this worker's takeover key is deleted
        already.
        """
        try:
            await asyncio.wait([renewing])
            if renewing.cancelled():
                await self._delete_all(keys, resume)
        finally:
            if resume is not None:  # lost: the claim is another worker's
                _HELD_RESUMES.pop(resume.nonce, None)

    async def _delete_all(self, keys: Sequence[str], resume: _Resume | None = None) -> None:
        """Deletes `keys`, then what `resume` wrote (see `_deletions`), one after the other.

        Each is tried even when one before it failed; the first failure is raised once all
        were tried: a fence that could not be deleted must not leave its claim behind too.
        """
        failures: list[Exception] = []
        try:
            for deletion in self._deletions(keys, resume):
                try:
                    await deletion()
                except Exception as error:
                    failures.append(error)
        finally:
            if resume is not None:  # tried: a claim left now is no store's (`_ended_here`)
                _HELD_RESUMES.pop(resume.nonce, None)
        if failures:
            raise failures[0]

    async def save_steps(
        self,
        session_id: str,
        first: int,
        records: Sequence[StepRecord],
        events: Iterable[Any] = (),
    ) -> list[str]:
        """Saves steps `first`, `first + 1`, ... (and pending events) in one transaction.

        Returns their keys. A round of tool calls is saved whole, so a resume never finds
        part of a round.
        """
        prefix = f"{session_key(session_id)}:step:"  # as `step_key`, the id escaped once
        keys = [f"{prefix}{first + i}" for i in range(len(records))]
        unsent = self._unsent.pop(session_id, None)
        encoded: _Encoded = {}
        items = {
            key: _encoded_once("step", r, unsent, encoded)
            for key, r in zip(keys, records, strict=True)
        }
        claim = self._claims.get(session_id) if records else None
        if claim is not None:
            # The run's first step: its meta record goes with it (the run's own, whatever
            # another run wrote meanwhile), and its claim, of no more use, is emptied (a
            # claim keeps a turn's chat history: kept whole, one per turn would add up).
            items[f"{session_key(session_id)}:meta"] = claim.meta
            items[claim.key] = _encode("claim", {"run": claim.run})
        try:
            await self._save_with_events(session_id, items, events, (unsent, encoded))
        except BaseException:
            self._unsent[session_id] = encoded  # sent again with the next steps
            raise
        if claim is not None:
            self._claims.pop(session_id, None)
        return keys

    async def save_final(
        self,
        session: AgentSession,
        extra: dict[str, Any],
        events: Iterable[Any] = (),
        unsaved: tuple[int, Sequence[StepRecord]] | None = None,
        run: str | None = None,
        *,
        folded: bool = False,
    ) -> str:
        """Saves the whole session, as `write_final`, then waits for its claims' deletion.

        Returns its key. Raises as `write_final`.
        """
        key, deleting = await self.write_final(session, extra, events, unsaved, run, folded=folded)
        if deleting is not None:
            await asyncio.wait([deleting])
        return key

    async def write_final(
        self,
        session: AgentSession,
        extra: dict[str, Any],
        events: Iterable[Any] = (),
        unsaved: tuple[int, Sequence[StepRecord]] | None = None,
        run: str | None = None,
        *,
        folded: bool = False,
    ) -> tuple[str, asyncio.Task[Any] | None]:
        """Saves the whole session (and `extra`, e.g. working memory entries); returns its key.

        `unsaved` (first step number, records) are steps whose own save failed: they are
        written in the same transaction, so a finished session's steps have no gap. With
        `folded`, the session's steps go instead as one base record (`:base:<n>`, as `prune`
        folds them), for a backend that refused the step records themselves: `unsaved`'s
        records, and those of the steps saved before them as the store holds them, so the
        base keeps what a fork's resume rebuilds the model's context from (replies, rounds,
        run starts; a step whose record cannot be read has its step alone). `run`
        is the id of the run this checkpoint closes (`save_meta`'s, or `SessionState.run`
        for a resumed run); without it, whether a later turn began after this checkpoint is
        told by the clock, as in records of older versions.

        Returns its key, and the deletion of the run's claims (None: it held none), running
        in a task of its own once the write landed: a caller cancelled while awaiting it knows
        the checkpoint, and its events, saved.

        Raises:
            PersistenceError: The write failed, or, before anything is written, the
                checkpoint would not load back (a chat message of another shape than a
                session's, say): the one saved before it is kept.
        """
        key = session_key(session.session_id)
        payload = {"session": session.to_dict(), "finished_at": time.time(), **extra}
        if run is not None:
            payload["run"] = run
        items = {key: _encode("session", payload)}
        _check_final(items[key], key)
        if run is not None:
            # Names the run that ended, as a failed run's end does: the next run reads this
            # small record, not the whole session, to know it (`_latest_run_ended`).
            ended = {"run": run, "duration_ms": session.duration_ms}
            items[f"{key}:ended"] = _encode("ended", ended)
        if folded:
            folded_records = await self._records_to_fold(key, session, unsaved)
            base = _encode("base", {"records": folded_records})
            items[f"{key}:base:{len(folded_records)}"] = base
        elif unsaved is not None:
            first, records = unsaved
            for i, record in enumerate(records):
                items[step_key(session.session_id, first + i)] = _encode("step", record.to_dict())
        await self._save_with_events(session.session_id, items, events)
        self._next_event.pop(session.session_id, None)
        # The run ended: its claims go (one on the step it started from, when it saved no
        # step of its own, whichever run made it), so the next run or resume may start.
        # Taken from this store at once and deleted in a task of their own: a cancellation
        # of the caller now must not leave one behind, refusing every later resume (the
        # failed run's `release` then finds nothing of this run's to delete).
        deletion = self._drop_claims(session.session_id, another_runs=True)
        if deletion is None:
            return key, None
        left = "its later resumes are refused until release_resume, or its lease passes"
        return key, delete_claims_apart(session.session_id, deletion, left)

    async def _records_to_fold(
        self,
        key: str,
        session: AgentSession,
        unsaved: tuple[int, Sequence[StepRecord]] | None,
    ) -> list[dict[str, Any]]:
        """The records of `session`'s steps for the base record of a folded final checkpoint.

        The base supersedes the step records saved before it (`_fold` reads the longest
        base, then the deltas after it): built from the bare steps, it would drop their
        replies, rounds and run starts, and a fork's resume would send the model a chat
        without its calls (a tool result answering no call, which providers refuse). So the
        records are the unsaved ones and, before them, the saved ones; a step neither gives
        (a read that failed, in this failure path) keeps its step alone.
        """
        records = [StepRecord(step) for step in session.steps]
        if unsaved is None:
            return [r.to_dict() for r in records]
        first, own = unsaved
        if first > 1:
            try:
                saved = await self._fold(key)
            except Exception as error:  # a backend failing now: the bare steps, as before
                logger.warning("steps of %s not read for its folded record: %r", key, error)
                saved = []
            records[: min(len(saved), first - 1)] = saved[: first - 1]
        if first - 1 + len(own) == len(records):
            records[first - 1 :] = own
        return [r.to_dict() for r in records]

    async def journal(
        self,
        session_id: str,
        step: int,
        index: int,
        entry: dict[str, Any],
        *,
        new: bool = False,
        replacing: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Writes the journal entry of tool call `index` of step `step`; None when written.

        With `new` (an intent, written before the call runs) the entry is written only if
        the call has none yet, atomically (`save_new`, one round trip): of several workers
        resuming one session, one alone records the intent and runs the call. Returns the
        entry found instead, another worker's intent or result: the caller honours it as one
        found at resume. `replacing` is the entry of the step's model reply (a `REPLY_STATES`
        one) the key holds, as the caller read or wrote it: written over only if the key
        still holds it (one round trip too). A reply entry found instead of the one expected
        is written over once, if it still holds then.

        Raises:
            PersistenceError: The write (or the read of the entry found) failed, a backend's
                own error included, or this worker's resume claim is lost.
        """
        key = call_key(session_id, step, index)
        record = _encode("call", entry)
        await self._check_writable(session_id)
        try:
            if not new:
                await self.backend.save(key, record)
                return None
            if replacing is not None:
                if await self._save_guarded(key, _encode("call", replacing), {key: record}):
                    return None
            elif await self._save_if_absent(key, record):
                return None
            raw = await self.backend.load(key)
            if raw is None and replacing is not None:  # its write failed: the key has none
                if await self._save_if_absent(key, record):
                    return None
                raw = await self.backend.load(key)
            if raw is not None:
                found = _journal_entry(raw, key)
                # Another reply entry than expected (written again after a failed write
                # that landed): still no call's.
                if found.get("state") in REPLY_STATES and not is_stale_entry(
                    found, entry.get("run")
                ):
                    if await self._save_guarded(key, raw, {key: record}):
                        return None
                    raw = await self.backend.load(key)
        except PersistenceError:
            raise
        except Exception as error:  # a backend's own error, typed for the caller
            raise PersistenceError(f"journal entry not written: {error}", key=key) from error
        # Gone meanwhile (pruned): a call that may have run.
        return _journal_entry(raw, key) if raw is not None else {"state": "intent"}

    async def withdraw_intent(
        self,
        session_id: str,
        step: int,
        index: int,
        intent: dict[str, Any],
        replacing: dict[str, Any] | None = None,
    ) -> bool:
        """Takes back the intent of tool call `index` of step `step`, for a call that never ran.

        For a caller cut off (cancelled) while `journal` wrote `intent`: the write may have
        landed, and a resume would take it for a call that may have run. The key gets back
        what it held before, the step's reply entry `replacing` or nothing, only while it
        holds `intent` itself (another worker's entry is left alone), in one guarded step.
        Returns whether it did.

        Raises:
            PersistenceError: As `journal`.
        """
        key = call_key(session_id, step, index)
        record = _encode("call", intent)
        await self._check_writable(session_id)
        try:
            if replacing is None:
                return await self._delete_guarded(key, record, [key])
            return await self._save_guarded(key, record, {key: _encode("call", replacing)})
        except PersistenceError:
            raise
        except Exception as error:  # a backend's own error, typed for the caller
            raise PersistenceError(f"journal entry not taken back: {error}", key=key) from error

    async def _event_items(
        self,
        session_id: str,
        events: Iterable[Any],
        cache: tuple[_Encoded | None, _Encoded] | None = None,
    ) -> dict[str, bytes]:
        """The events' records, keyed by their numbers in the session's log.

        `cache` (a failed write's records, this write's) as `_encoded_once` takes them.
        """
        events = list(events)
        if not events:
            return {}
        prefix = f"{session_key(session_id)}:event:"
        start = self._next_event.get(session_id)
        if start is None:  # first events of this process for the session: find the log's end
            existing = _numbered(await self._list_keys(prefix), prefix)
            start = existing[-1][0] + 1 if existing else 0
        self._next_event[session_id] = start + len(events)
        if cache is None:
            return {
                f"{prefix}{start + i:010d}": _encode("event", _event_dict(e))
                for i, e in enumerate(events)
            }
        return {
            f"{prefix}{start + i:010d}": _encoded_once("event", e, *cache)
            for i, e in enumerate(events)
        }

    async def _save_with_events(
        self,
        session_id: str,
        items: dict[str, bytes],
        events: Iterable[Any],
        cache: tuple[_Encoded | None, _Encoded] | None = None,
    ) -> None:
        """Writes `items` and the events (appended to the session's log) in one batch.

        A write that fails gives its event numbers back, so the events, saved again with the
        next write (the runtime keeps them), take the same keys: a write that failed for its
        caller but landed all the same (cancelled while the backend finished it) is then
        overwritten, not logged twice.
        """
        await self._check_writable(session_id)
        numbered = await self._event_items(session_id, events, cache)
        end = self._next_event.get(session_id)
        lease = self._leases.get(session_id)
        try:
            if lease is None:
                await self.backend.batch_save({**items, **numbered})
            # Fenced: refused once another worker took the claim over, even when this write
            # left before the takeover and lands after it (see `claim_resumed`).
            elif not await self._save_guarded(lease.fence, lease.nonce, {**items, **numbered}):
                raise self._lose(session_id, lease)
        except BaseException:
            if numbered and end is not None and self._next_event.get(session_id) == end:
                self._next_event[session_id] = end - len(numbered)
            raise

    def refuses(self, session_id: str) -> bool:
        """Whether the store refuses to write the session's run.

        It does when the run was refused at its start (another run or worker holds the
        session, say), or lost its resume claim: a write of such a run fails by the store's
        refusal, not by its backend's failure.
        """
        return session_id in self._refused or session_id in self._lost

    async def _check_writable(self, session_id: str) -> None:
        """Raises `PersistenceError` when the session's run may not write.

        It may not when it was refused at its start, or when its resume claim is another
        worker's (see `_lose`, `_keep_lease`).
        """
        if session_id in self._refused:
            raise PersistenceError(
                f"session {session_id!r}: its run was refused at its start (see save_meta), "
                "so nothing of the run is saved",
                key=session_key(session_id),
            )
        lost = self._lost.get(session_id)
        if lost is not None:
            raise PersistenceError(lost.args[0], key=lost.key)
        lease = self._leases.get(session_id)
        if lease is not None and time.monotonic() >= lease.renew_by:
            await self._keep_lease(session_id, lease)

    async def save_run_end(
        self, session: AgentSession, run: str, events: Iterable[Any] = ()
    ) -> None:
        """Saves the end of run `run` that failed: the session's `duration_ms`, and events.

        A failed run writes no final checkpoint (a resume continues it), so this record
        (`session:<id>:ended`) keeps how long the session has run, the failed run included,
        as the session in memory counts it: `load` gives it back while `run` is the saved
        run and no final checkpoint closes it (a later run's end, or final checkpoint,
        supersedes it; a final checkpoint writes the record too, naming its run).
        """
        record = {"run": run, "duration_ms": session.duration_ms, "ended_at": time.time()}
        key = f"{session_key(session.session_id)}:ended"
        await self._save_with_events(session.session_id, {key: _encode("ended", record)}, events)

    async def append_events(self, session_id: str, events: Iterable[Any]) -> None:
        """Appends events to the session's log."""
        events = list(events)
        if events:
            await self._save_with_events(session_id, {}, events)

    # ------------------------------------------------------------------ reading
    @_backend_failures_typed("loading")
    async def load(self, session_id: str) -> SessionState:
        """Loads a session: meta, the folded step deltas, and the final checkpoint if any.

        Safe while `prune` runs: steps it folds into the base while the load reads are
        found in the base (see `_fold`). Safe while turns run: one state of the session is
        loaded, read again when a turn ended or began between its reads.

        Raises:
            PersistenceError: When nothing is saved for the session, a record is corrupt, or
                turns kept ending at every read.
        """
        base_key = session_key(session_id)
        meta_key = f"{base_key}:meta"
        for _ in range(_SNAPSHOT_ATTEMPTS):
            final_raw = await self.backend.load(base_key)
            meta_raw = await self.backend.load(meta_key)
            # Checked before they are compared with `batch_load`'s: a `load` giving another
            # type would make every comparison fail ("the session changed at each read").
            for raw, key in ((final_raw, base_key), (meta_raw, meta_key)):
                if raw is not None:
                    stored_bytes(raw, key)
            if meta_raw is None and final_raw is None:
                raise PersistenceError("no checkpoint saved", key=base_key)
            records = await self._fold(base_key)
            # A run that claimed the session from its last step is the latest run, whether
            # or not its meta record was written (its process may have ended in between).
            claim_key = f"{base_key}:run:{len(records)}"
            claim_raw = await self.backend.load(claim_key)
            # Turns that ended (or began) meanwhile changed the records read first: the
            # steps read since may be theirs. Read again, for one state of the session.
            again = await self._batch_load([base_key, meta_key])
            if again.get(base_key) == final_raw and again.get(meta_key) == meta_raw:
                break
        else:
            raise PersistenceError(
                f"the session changed at each of {_SNAPSHOT_ATTEMPTS} reads (turns ending one "
                "after the other): load it again",
                key=base_key,
            )
        if claim_raw is not None and record_kind(claim_raw) == "meta":
            meta_key, meta_raw = claim_key, claim_raw
        final = decode(final_raw, base_key, "session") if final_raw is not None else None
        # A record there that holds no session (`null` too) is a corrupt one, not none.
        saved = _final_session(final, base_key) if final_raw is not None else None
        if meta_raw is not None:
            meta = decode(meta_raw, meta_key, "meta")
            if not _is_meta(meta):
                raise PersistenceError(_META_SHAPE, key=meta_key)
            if _is_incomplete_fork(meta):
                raise PersistenceError(
                    "the session is a fork whose steps were never copied (the fork was cut "
                    "short): fork again, into this id or a new one",
                    key=meta_key,
                )
        else:  # a final checkpoint alone (older records, or a pruned session)
            assert saved is not None
            meta = {"agent_id": saved.agent_id, "prompt": saved.prompt, "mode": "react"}
        state = SessionState(session_id, meta["agent_id"], meta["prompt"], meta["mode"])
        state.run = meta.get("run")
        earlier = None
        if final is not None and meta_raw is not None and _turn_after(meta, final):
            state.interrupted_turn = True  # the final checkpoint is an earlier turn's
            state.earlier = final
            earlier = _final_session(final, base_key)
        else:
            state.final = final
        # Records of versions before the meta record told these: a run after an earlier
        # turn's final checkpoint was a turn, and started after that turn's steps.
        state.turn = meta.get("turn", earlier is not None)
        state.first_step = meta.get("first_step", len(earlier.steps) if earlier else 0)
        state.history = meta.get("history")
        if "context" in meta:
            state.start = {"context": meta["context"], "memory_hits": meta["memory_hits"]}
        if state.history is None and earlier is not None:  # a record without it: a run's
            state.history = earlier.messages  # history is its earlier turns' (older versions)
        state.records = records
        if state.final is None and state.run is not None:
            state.duration_ms = await self._run_end(f"{base_key}:ended", state.run)
        # Another process may have logged events since this one last wrote: count afresh.
        self._next_event.pop(session_id, None)
        return state

    async def _run_end(self, key: str, run: str) -> float | None:
        """The session's `duration_ms` that run `run` saved as it failed (`save_run_end`).

        None when there is no such record, or it is another run's (an earlier one's).

        Raises:
            PersistenceError: The record is corrupt.
        """
        raw = await self.backend.load(key)
        if raw is None:
            return None
        record = decode(raw, key, "ended")
        if not (
            isinstance(record, dict)
            and isinstance(record.get("run"), str)
            and _is_number(record.get("duration_ms"))
        ):
            raise PersistenceError(
                "a run's end record must be an object with a string 'run' and a number "
                "'duration_ms'",
                key=key,
            )
        return float(record["duration_ms"]) if record["run"] == run else None

    async def _fold(self, base_key: str) -> list[StepRecord]:
        """The longest base record's steps, then the step deltas after them.

        `prune` writes a base before it deletes the deltas it folded, and deletes a base only
        when a longer one is there, so the deltas are listed before the bases: a delta
        deleted before the listing is in the longest base listed after it. A listed base or
        delta gone by the time it is read was folded into a newer base; the load then starts
        again. Only a gap that stays is a missing checkpoint.
        """
        prefix = f"{base_key}:step:"
        missing = prefix
        for _ in range(_LOAD_ATTEMPTS):
            listed = _numbered(await self._list_keys(prefix), prefix)
            folded = await self._folded(base_key)
            if folded is None:
                missing = f"{base_key}:base"  # replaced meanwhile (read again)
                continue
            records = folded
            numbered = [(n, k) for n, k in listed if n > len(records)]
            values = await self._batch_load([k for _, k in numbered])
            for number, key in numbered:
                raw = values.get(key)
                if raw is None or number != len(records) + 1:
                    missing = key  # pruned meanwhile (read again), or really missing
                    break
                records.append(_step_record(decode(raw, key, "step"), key))
            else:
                return records
        raise PersistenceError("a step checkpoint is missing before this one", key=missing)

    async def _bases(
        self, base_key: str, listed: list[str] | None = None
    ) -> tuple[list[tuple[int, str]], bool]:
        """The keys of the session's base records, `:base:<n>`, by n.

        And whether the `:base` that versions before them wrote is there. `listed`: the keys
        under `base_key:`, listed already.
        """
        if listed is None:
            listed = await self._list_keys(f"{base_key}:base")
        return _numbered(listed, f"{base_key}:base:"), f"{base_key}:base" in listed

    async def _folded(self, base_key: str) -> list[StepRecord] | None:
        """The steps of the longest base record (none without one).

        None when a listed base was gone by the time it was read: a longer one replaced it,
        list them again.
        """
        numbered, legacy = await self._bases(base_key)
        records: list[StepRecord] = []
        if numbered:
            steps, key = numbered[-1]
            raw = await self.backend.load(key)
            if raw is None:
                return None
            records = _base_records(raw, key, steps)
        if legacy:
            key = f"{base_key}:base"
            raw = await self.backend.load(key)
            if raw is None:
                return None
            older = _base_records(raw, key)
            if len(older) > len(records):
                records = older
        return records

    @_backend_failures_typed("reading the journal of")
    async def load_journal(
        self, session_id: str, step: int, run: str | None = None
    ) -> list[dict[str, Any]]:
        """The journal entries of step `step`, by call index.

        With `run`, only that run's: an entry another run wrote (a turn that was interrupted,
        then run again instead of resumed) is stale, so left out. Entries that name no run
        (older versions) are kept.
        """
        prefix = f"{session_key(session_id)}:call:{step}:"
        keys = [k for _, k in _numbered(await self._list_keys(prefix), prefix)]
        values = await self._batch_load(keys)
        entries = [_journal_entry(values[k], k) for k in keys if k in values]
        return [e for e in entries if not is_stale_entry(e, run)]

    @_backend_failures_typed("counting the saved steps of")
    async def saved_steps(self, session_id: str) -> int:
        """How many steps of the session the store holds (its deltas and base records)."""
        return await self._stored_steps(session_key(session_id))

    @_backend_failures_typed("reading the run of")
    async def current_run(self, session_id: str) -> str | None:
        """The id of the session's latest run (its meta record's), None without one."""
        key = f"{session_key(session_id)}:meta"
        raw = await self.backend.load(key)
        meta = decode(raw, key, "meta") if raw is not None else None
        run = meta.get("run") if isinstance(meta, dict) else None
        return run if isinstance(run, str) else None

    @_backend_failures_typed("reading the events of")
    async def events(self, session_id: str) -> list[dict[str, Any]]:
        """The session's event log, oldest first.

        Raises:
            PersistenceError: Naming the key, when an event record is corrupt or is not an
                object with a `type` (a foreign record), or the session has no checkpoint
                record at all (an unknown id).
        """
        prefix = f"{session_key(session_id)}:event:"
        keys = [k for _, k in _numbered(await self._list_keys(prefix), prefix)]
        if not keys and not await self.exists(session_id):  # a mistyped id is no empty log
            raise PersistenceError("no checkpoint saved", key=session_key(session_id))
        values = await self._batch_load(keys)
        return [_event(decode(values[k], k, "event"), k) for k in keys if k in values]

    @_backend_failures_typed("reading the events of")
    async def run_end_logged(self, session_id: str) -> bool:
        """Whether the session's latest run logged its `RunFinished` event.

        It did when the event log's latest `RunStarted` or `RunFinished` is a `RunFinished`
        (a run whose final checkpoint failed after it emitted that event, say). The log is
        read from its end, a few records at a time, back to the first such event.
        """
        async for event in self._events_back(session_id):
            kind = event.get("type")
            if kind in ("RunStarted", "RunFinished"):
                return bool(kind == "RunFinished")
        return False

    @_backend_failures_typed("reading the events of")
    async def events_of_steps_from(
        self, session_id: str, step: int, run: str | None
    ) -> list[dict[str, Any]]:
        """Run `run`'s logged events of step `step` (0-based) and later, newest first.

        For `resume`, which logs what it reuses of an interrupted step only when the log
        lacks it: a run that failed there (cancelled, timed out) logged its events with its
        end record, which names it; a process that died logged nothing of the step. So the
        events are those after the log's latest event of an earlier step when the latest
        end record is run `run`'s, else none (another run's events of the step, one whose
        turn was run again instead of resumed, are not this run's). The log is read from its
        end, a few records at a time.
        """
        if run is None or await self._run_end(f"{session_key(session_id)}:ended", run) is None:
            return []
        found = []
        async for event in self._events_back(session_id):
            at = event.get("step")
            if type(at) is int and at < step:
                break
            found.append(event)
        return found

    async def _events_back(self, session_id: str) -> AsyncIterator[dict[str, Any]]:
        """The session's logged events from the newest back, read a few at a time."""
        prefix = f"{session_key(session_id)}:event:"
        keys = [k for _, k in _numbered(await self._list_keys(prefix), prefix)]
        while keys:
            chunk, keys = keys[-_EVENTS_READ_BACK:], keys[:-_EVENTS_READ_BACK]
            values = await self._batch_load(chunk)
            for key in reversed(chunk):
                raw = values.get(key)
                event = decode(raw, key, "event") if raw is not None else None
                if isinstance(event, dict):
                    yield event

    # ------------------------------------------------------------------ maintenance
    @_backend_failures_typed("pruning")
    async def prune(self, session_id: str, keep_last: int) -> int:
        """Folds all but the last `keep_last` step deltas into a base record.

        The folded deltas and their journal entries are deleted; returns how many steps this
        call folded beyond the longest base it found.

        Safe while the session runs, and while other prunes of it run (in this process or
        another): each writes the steps it folds as a base record of its own,
        `:base:<n>` for steps 1 to n, before it deletes any delta, and a base is deleted only
        when a longer one is there. A prune's write, however late it lands, never replaces
        a longer base, so no step another prune folded is lost; a reader that sees a base and
        the deltas it holds skips the duplicates.

        Raises:
            PersistenceError: When `keep_last` is not an int >= 0, the session cannot be
                loaded, a sweep or `delete_session` deletes it (nothing is written), or its
                meta record changed each of `_PRUNE_ATTEMPTS` times it was pruned (turns
                began meanwhile).
        """
        if not _is_count(keep_last):
            raise PersistenceError(f"keep_last must be an int >= 0, got {keep_last!r}")
        key = session_key(session_id)
        meta_key = f"{key}:meta"
        base_key = ""
        for _ in range(_PRUNE_ATTEMPTS):
            # The base is kept only while the meta record is the one read before the load:
            # a base written for a session a sweep or `delete_session` then deletes, landing
            # after it listed the keys, would be left, and read by a new session under the
            # id. A deletion marks the meta record before it lists (see `_delete_ended`); a
            # turn that begins rewrites it too: then the prune starts over.
            meta_raw = await self.backend.load(meta_key)
            if (
                meta_raw is not None
                and _being_deleted(decode(meta_raw, meta_key, "meta"))
                and await self._deletion_under_way(key)
            ):
                raise PersistenceError(_PRUNED_AS_DELETED, key=key)
            state = await self.load(session_id)
            cut = len(state.records) - keep_last
            already = await self._longest_base(key)  # read again right before writing
            if cut <= already:
                return 0
            folded = {"records": [r.to_dict() for r in state.records[:cut]]}
            base = _encode("base", folded)
            base_key = f"{key}:base:{cut}"
            if meta_raw is None:
                # A session of an older version, without a meta record: written, then checked.
                await self.backend.save(base_key, base)
                if not await self._batch_load([key, meta_key]):  # swept meanwhile: none is left
                    await self._delete_if(base_key, base)
                    raise PersistenceError(_PRUNED_AS_DELETED, key=key)
                break
            if callable(getattr(self.backend, "batch_save_if", None)):
                if await self._save_guarded(meta_key, meta_raw, {base_key: base}):
                    break
                continue
            # No conditional write: written, then taken back if a deletion marked or deleted
            # the meta record meanwhile. Not when a turn rewrote it: the steps folded are the
            # session's all the same, and the base may be another prune's (the same bytes),
            # whose deltas that prune deleted.
            await self.backend.save(base_key, base)
            now_raw = await self.backend.load(meta_key)
            if now_raw == meta_raw or (
                now_raw is not None and not _being_deleted(decode(now_raw, meta_key, "meta"))
            ):
                break
            # Marked meanwhile, it is kept when a delta it holds is gone: the same base is
            # another prune's, which deleted its deltas (that base was there before the
            # deletion listed the keys, and goes with them). Gone, the session is deleted.
            steps = f"{key}:step:"
            stored = {n for n, _ in _numbered(await self._list_keys(steps), steps)}
            if now_raw is not None and not all(n in stored for n in range(already + 1, cut + 1)):
                break
            await self._delete_if(base_key, base)
        else:
            raise PersistenceError(
                f"session {session_id!r} changed each time it was pruned (turns began, or it "
                "was deleted and started anew): prune it again",
                key=key,
            )
        # What that base holds: the deltas and the journal entries of steps 1 to `cut`.
        steps, calls = f"{key}:step:", f"{key}:call:"
        doomed = [k for n, k in _numbered(await self._list_keys(steps), steps) if n <= cut]
        for call in await self._list_keys(calls):
            number = _CALL.match(call, len(calls))
            if number is not None and call.startswith(calls) and int(number[1]) <= cut:
                doomed.append(call)
        # In one transaction where the backend can (one a key cost an fsync each on SQLite),
        # while the base that holds them is there: gone, a longer one's prune (or a sweep)
        # deletes them.
        if doomed:
            await self._delete_guarded(base_key, base, doomed)
        # Then the bases shorter than the longest (this one's, or a longer one's of another
        # prune): what they hold, the longest holds.
        numbered, legacy = await self._bases(key)
        for _, shorter in numbered[:-1]:
            await self.backend.delete(shorter)
        if legacy and numbered and len(await self._legacy_base(key)) <= numbered[-1][0]:
            await self.backend.delete(f"{key}:base")
        return cut - already

    async def _deletion_under_way(self, key: str) -> bool:
        """Whether a sweep or `delete_session` deletes session key `key` now.

        Told by a deletion's claim on one of its steps (`:run:<n>`) younger than
        `_GRACE_SECONDS`: a deletion under way renews its claim, and one cut short leaves
        its mark on the meta record.
        """
        claims = [
            k for k in await self._list_keys(f"{key}:run:") if _RUN_CLAIM.match(k, len(key) + 1)
        ]
        for claim, raw in (await self._batch_load(claims)).items():
            holder = decode(raw, claim)
            if isinstance(holder, dict) and "sweep" in holder and not _outlived(holder, "at"):
                return True
        return False

    async def _legacy_base(self, key: str) -> list[StepRecord]:
        """The steps of the `:base` record of versions before `:base:<n>` (none if none)."""
        raw = await self.backend.load(f"{key}:base")
        return [] if raw is None else _base_records(raw, f"{key}:base")

    async def _longest_base(self, key: str, listed: list[str] | None = None) -> int:
        """How many steps the longest base record of session key `key` holds.

        `listed`: see `_bases`.
        """
        numbered, legacy = await self._bases(key, listed)
        longest = numbered[-1][0] if numbered else 0
        if legacy:
            longest = max(longest, len(await self._legacy_base(key)))
        return longest

    @_backend_failures_typed("the sweep")
    async def sweep(
        self,
        older_than: float,
        now: float | None = None,
        *,
        failed: bool = False,
        on_deleted: Callable[[str], object] | None = None,
    ) -> list[str]:
        """Deletes finished sessions that ended more than `older_than` seconds ago.

        With `failed`, sessions whose latest run ended without finishing (an error, a
        timeout, a cancel; a fork not resumed since it was made) more than `older_than`
        seconds ago too: they can no longer be resumed. An end record of an older version
        holds no time, and is old.

        Running sessions are never touched. Returns the ids of the deleted sessions. Each
        session is claimed before it is deleted, as a run starting its next turn claims it
        (`session:<id>:run:<n>`): a turn that starts while it is deleted is refused
        (`PersistenceError`, which says so), and one that started first keeps it.

        Incomplete forks (cut before their steps were copied, see `fork`) whose marker was
        written more than `older_than` seconds ago are deleted too, and their ids returned:
        the age keeps out a fork being written now. A marker without a start time (none is
        written without one) is old, as `load` reads it. What sweeps and fork takeovers cut
        short left of sessions with neither a final checkpoint nor a meta record (a sweep's
        claim, a takeover key) is deleted as well. A session whose sweep was cut short (its
        claim older than `_GRACE_SECONDS`, see `_drop_stranded_sweep`) is deleted by the next
        sweep, as are the base records a prune wrote as its session was swept.

        A session is found by its `:meta` record or its final checkpoint, and only its own
        keys (`:meta`, `:base:<n>`, `:step:<n>`, `:call:<n>:<i>`, `:event:<n>`, ...) are
        deleted, never those of another session (ids are escaped in keys: see
        `escape_session_id`).

        `on_deleted` is called with each deleted session's id as soon as it is deleted, and
        with the id of the session a failing sweep was deleting (its records may be gone):
        the runtime forgets their approvals so.

        Raises:
            PersistenceError: When `older_than` (or `now`) is not a number (or is NaN), both
                are infinite alike, `failed` is not a bool, or the backend fails. When a
                session's final checkpoint (or the meta record of one without it) is
                corrupt: only after the pass, which sweeps the other sessions and logs each
                damaged one; the error counts both and quotes the first damage.
        """
        older_than = _sweep_seconds("older_than", older_than)
        now = time.time() if now is None else _sweep_seconds("now", now)
        if type(failed) is not bool:
            raise PersistenceError(f"failed must be True or False, got {failed!r}")
        if math.isnan(now - older_than):  # both infinite alike: a NaN cut-off (see above)
            raise PersistenceError(
                f"now ({now}) and older_than ({older_than}) leave no time to sweep by"
            )
        keys = await self._list_keys(_PREFIX)
        present = set(keys)
        candidates: dict[str, None] = {}  # session ids, in key order
        claimed = set()  # sessions with a run's claim
        leftovers: dict[str, None] = {}  # sessions with a run's claim or a takeover key
        for key in keys:
            parsed = split_session_key(key)
            # With `failed`, an end record too: a failed session's deletion cut short may
            # leave it alone (its anchor, deleted last).
            if parsed is not None and (
                parsed[1] in ("", "meta") or (failed and parsed[1] == "ended")
            ):
                candidates[parsed[0]] = None
            elif parsed is not None and parsed[1].startswith("run:"):
                claimed.add(parsed[0])
                leftovers[parsed[0]] = None
            elif parsed is not None and (
                parsed[1].startswith("fork:") or parsed[1].split(":", 1)[0] == "base"
            ):
                leftovers[parsed[0]] = None
        swept: list[str] = []
        damaged: list[tuple[str, PersistenceError]] = []
        failed_before = (now - older_than) if failed else None
        for session_id in candidates:
            try:
                deleted = await self._sweep_candidate(
                    session_id, present, claimed, now, older_than, failed_before
                )
            except _DamagedSession as damage:
                # One damaged session must not keep every one after it from being swept (a
                # failing backend still ends the sweep at once).
                logger.warning("sweep: session %r left as it is: %s", session_id, damage.error)
                damaged.append((session_id, damage.error))
                continue
            except BaseException:
                # Cut short, maybe once its records went (its claim is dropped last): told
                # as deleted, since a session told so wrongly costs only a question again.
                if on_deleted is not None:
                    on_deleted(session_id)
                raise
            if deleted:
                swept.append(session_id)
                if on_deleted is not None:
                    on_deleted(session_id)
        for session_id in leftovers:
            key = session_key(session_id)
            if key not in present and f"{key}:meta" not in present:
                await self._drop_leftovers(key)
        if damaged:
            first_id, first = damaged[0]
            # Not for a record that is not damaged, only unreadable here (see `decode`).
            advice = "" if isinstance(first, UnreadableHere) else f" ({_FORCE_ADVICE})"
            raise PersistenceError(
                f"sweep deleted {len(swept)} session(s) and left {len(damaged)} whose records "
                f"are damaged, each logged{advice}; the first, {first_id!r}: {first.args[0]}",
                first.key,
            ) from first
        return swept

    @_backend_failures_typed("deleting")
    async def delete_session(self, session_id: str, *, force: bool = False) -> bool:
        """Deletes every record of a session whose latest run ended: finished or failed.

        Its final checkpoint, steps, base records, tool-call journal, event log, meta and end
        records, and its runs' claims. A failed run (an error, a timeout, a cancel) wrote an
        end record: its session is deleted as a finished one is, and can no longer be
        resumed. An incomplete fork (its copy cut short, see `fork`) is deleted once its
        marker is older than `_GRACE_SECONDS`. Returns False when nothing of the session is
        stored (what cut-short sweeps and forks left under its id is deleted then, as `sweep`
        deletes it).

        The session is claimed as `sweep` claims it (see `_delete_ended`): a turn or resume
        that starts while it is deleted is refused, and one that started first keeps it. A
        copy of the session held in memory can still run a turn afterwards: it is then
        saved anew, whole.

        With `force`, every record of the session is deleted unread, for one whose records
        are damaged (which a deletion refuses, since whether its latest run ended cannot be
        told, and a sweep leaves): nothing is checked or claimed, so a run of it still going
        writes its later records anew. Only the session's own keys go (see `sweep`), its
        final checkpoint last.

        Raises:
            PersistenceError: Nothing deleted: the session's latest run has not ended (it
                runs, or its process ended before it saved its end: `runtime.resume`
                finishes it), a fork is being copied into it, a run or sweep took it
                meanwhile, or its records are corrupt (`force` deletes it then); `force` is
                not a bool. Or the deletion was cut short (a run or a sweep took the session
                as it deleted, or the backend failed): what is left loads as before or is
                deleted by the next call or sweep.
        """
        if type(force) is not bool:
            raise PersistenceError(f"force must be True or False, got {force!r}")
        key = session_key(session_id)
        listed = await self._list_keys(f"{key}:")
        if force:
            return await self._delete_unread(key, listed)
        found = await self._batch_load(_anchor_keys(key))
        meta_raw = found.get(f"{key}:meta")
        if not found:
            if listed:  # no session: what cut-short sweeps, forks and prunes left
                await self._drop_leftovers(key)
            return False
        try:
            meta = decode(meta_raw, f"{key}:meta", "meta") if meta_raw is not None else None
            fork = _is_incomplete_fork(meta)
            ended = fork or _latest_run_end(key, found) is not None
        except UnreadableHere:
            raise  # not damaged: written by a newer version, or a backend's wrong type
        except PersistenceError as error:
            raise PersistenceError(
                f"session {session_id!r} cannot be deleted: its records are damaged, so "
                f"whether its latest run ended cannot be told ({_FORCE_ADVICE}): "
                f"{error.args[0]}",
                key=error.key,
            ) from error
        if fork:
            if await self._sweep_fork(key, time.time() - _GRACE_SECONDS):
                return True
            raise PersistenceError(
                f"session {session_id!r} cannot be deleted: a fork is being copied into it "
                f"(delete it once the fork ended, or {_GRACE_SECONDS:.0f} s after it began)",
                key=key,
            )
        if not ended:
            raise PersistenceError(
                f"session {session_id!r} cannot be deleted: its latest run has not ended (it "
                "runs, or its process ended before the run's end was saved: runtime.resume "
                "finishes it)",
                key=key,
            )
        if not await self._delete_ended(key, found, listed):
            raise PersistenceError(
                f"session {session_id!r} was not deleted, or not wholly: a run, resume or "
                "sweep took it as it was deleted, or a deletion cut short holds it (for up to "
                f"{_GRACE_SECONDS:.0f} s); load it, or delete it again once that ended",
                key=key,
            )
        return True

    async def _delete_unread(self, key: str, listed: list[str]) -> bool:
        """Deletes session key `key`'s own records (`listed`: the keys under it) unread.

        See `delete_session`'s `force`. The final checkpoint last, and the meta record before
        it: a deletion cut short leaves a session the next forced one finds. Returns whether
        anything was stored.
        """
        prefix = f"{key}:"
        own = [k for k in listed if _OWN_SUFFIX.match(k, len(prefix))]
        _meta_and_end_last(prefix, own)
        for doomed in own:
            await self.backend.delete(doomed)
        # Not read (a file backend checks a record file's header as it loads it).
        anchored = await self.backend.delete(key)
        return bool(anchored) or bool(own)

    async def _sweep_candidate(
        self,
        session_id: str,
        present: set[str],
        claimed: set[str],
        now: float,
        older_than: float,
        failed_before: float | None,
    ) -> bool:
        """Sweeps one session `sweep` found, if finished long enough ago; returns whether it did.

        `present`: the keys listed; `claimed`: the sessions with a run's claim;
        `failed_before`: with `sweep(failed=True)`, when a run that ended without finishing
        must have ended by (see `_sweep_failed`).
        """
        key = session_key(session_id)
        if key not in present:
            # Running, never finished, failed, or an incomplete fork.
            if f"{key}:meta" in present and await self._sweep_fork(key, now - older_than):
                return True
            return failed_before is not None and await self._sweep_failed(key, failed_before)
        found = await self._batch_load(_anchor_keys(key))
        raw = found.get(key)
        if raw is None:
            return False  # deleted meanwhile
        meta_raw = found.get(f"{key}:meta")
        try:
            final = decode(raw, key, "session")
            _final_session(final, key)  # a record of the wrong shape: PersistenceError
            later = meta_raw is not None and _turn_after(
                decode(meta_raw, f"{key}:meta", "meta"), final
            )
        except PersistenceError as error:
            raise _DamagedSession(error) from error
        if later:  # a later turn runs, was interrupted or failed: not finished
            return failed_before is not None and await self._sweep_failed(key, failed_before, found)
        if not final.get("finished_at", now) < now - older_than:  # (a NaN time: never old)
            # Too recent: nothing listed (every finished session keeps its runs' claims, and
            # a listing reads every key on some backends: a sweep with nothing due was
            # quadratic in the sessions stored).
            return False
        # The session's keys, listed once for what follows (on a backend whose listing
        # reads every key, a sweep of many sessions paid for four listings a session).
        own = await self._list_keys(f"{key}:")
        if session_id in claimed and await self._claimed_after(key, final, own):
            return False  # a later turn claimed the session (its meta record not yet written)
        return await self._delete_ended(key, found, own)

    async def _sweep_failed(
        self, key: str, failed_before: float, found: dict[str, bytes] | None = None
    ) -> bool:
        """Deletes session key `key` if its latest run ended unfinished before `failed_before`.

        `found`: its records (see `_anchor_keys`), read here if None. A run under way, or
        whose process ended before it saved its end, has not ended: it is kept
        (`runtime.resume` finishes it).
        """
        if found is None:
            found = await self._batch_load(_anchor_keys(key))
        try:
            end = _latest_run_end(key, found) if found else None
        except PersistenceError as error:
            raise _DamagedSession(error) from error
        if end is None or end[0] or end[1] >= failed_before:
            return False
        return await self._delete_ended(key, found, await self._list_keys(f"{key}:"))

    async def _drop_leftovers(self, key: str) -> None:
        """Deletes what cut-short sweeps and fork takeovers left of session key `key`.

        A sweep's claim whose final checkpoint is gone (see `_drop_stranded_sweep`), a fork
        takeover key whose marker is not the meta record, the takeover key of a sweep's
        claim that is not that claim's, and base records of a session with neither a final
        checkpoint nor a meta record (a prune's, as the session was swept). Takeover keys:
        listed before the record they name is read, that record was there before, and once
        gone never returns (a marker, a claim, each unique); they are told by their record
        (see `_is_takeover`).
        """
        prefix = f"{key}:"
        listed = await self._list_keys(prefix)
        meta = await self.backend.load(f"{key}:meta")
        current = _digest(meta) if meta is not None else None
        # Neither record: a base record left is one a prune wrote as a sweep deleted the
        # session. Left, it made every turn of a new session under the id refused.
        orphaned = meta is None and await self.backend.load(key) is None
        for leftover in listed:
            if orphaned and leftover[len(prefix) :].split(":", 1)[0] == "base":
                raw = await self.backend.load(leftover)
                if raw is not None:
                    await self._delete_if(leftover, raw)
                continue
            fork = _FORK_TAKEOVER.match(leftover, len(prefix))
            run = _RUN_TAKEOVER.match(leftover, len(prefix))
            if run is not None:
                held = await self.backend.load(f"{prefix}{run[1]}")
                stale = held is None or _digest(held) != run[2]
            else:
                stale = fork is not None and fork[1] != current
            if stale:
                await self._drop_takeover(leftover)
            elif _RUN_CLAIM.match(leftover, len(prefix)):
                await self._drop_stranded_sweep(key, leftover)

    async def _drop_takeover(self, key: str) -> None:
        """Deletes `key` if it holds a takeover key's record (see `_is_takeover`)."""
        raw = await self.backend.load(key)
        if raw is not None and _is_takeover(raw, key):
            await self._delete_if(key, raw)

    async def _delete_ended(self, key: str, found: dict[str, bytes], listed: list[str]) -> bool:
        """Deletes the session of key `key`, whose latest run ended, as `found` tells.

        `found`: its final checkpoint, meta and end records as read (`_anchor_keys`), which
        told that its latest run ended: a final checkpoint closes it (`sweep`), or, with
        `delete_session`, its end record names it. `listed`: the keys under `key:`, listed
        as the session was found.

        The deletion first claims the session as a run starting its next turn would
        (`:run:<n>`, insert-if-absent, a sweep's record), so that a turn or resume starting
        while it deletes is refused; then it reads those records and the steps again, and
        deletes nothing when a run claimed the session first or wrote any of them since. It
        marks the meta record (`deleting`, see `prune`) before it lists the keys to delete,
        and deletes that record with the last batch. Its
        anchor, the final checkpoint (or, without one, the end record), is deleted after the
        other records (a deletion cut short finds the session again), if it is still as
        found, then the claim, if it is still this deletion's. The claim names its anchor
        and when it was made (renewed as the deletion goes, see `_hold_sweep`): one a
        deletion cut short leaves is deleted by the next run from that step, or the next
        sweep, which then deletes the session (`_drop_stranded_sweep`). Returns whether it
        deleted.
        """
        prefix = f"{key}:"
        anchor = key if key in found else f"{key}:ended"
        anchor_raw = found[anchor]
        meta_key = f"{prefix}meta"
        marked_raw: bytes | None = None  # the mark, once written
        deleting = False  # whether a deletion was sent (the mark stays then)
        steps = await self._stored_steps(key, listed)
        claim = f"{key}:run:{steps}"
        claimed = {"sweep": uuid.uuid4().hex, "at": time.time()}
        claimed["final" if anchor == key else "ended"] = _digest(anchor_raw)
        mine = _encode("claim", claimed)
        if not await self._save_if_absent(claim, mine) and not (
            await self._drop_stranded_sweep(key, claim) and await self._save_if_absent(claim, mine)
        ):
            return False  # a run claimed the session's next step (or a sweep): it runs
        try:
            if await self._batch_load(_anchor_keys(key)) != found:
                return False  # a run went on meanwhile: its latest run is another
            # The meta record is marked before the keys are listed: a prune writes its base
            # only while the meta record is the one it read (see `prune`), so any base it
            # writes lands before the listing, and is deleted. The mark names this deletion
            # (a prune past the mark of one cut short is refused by this one's), and is
            # written only over the record found, never over a later run's (a copy's, saved
            # anew under a claim of its own). A record of another shape is left unmarked: no
            # load (and no prune) takes its session, and a finished one is deleted all the same.
            meta = decode(found[meta_key], meta_key, "meta") if meta_key in found else None
            if meta is not None and _is_meta(meta):
                held = await self._hold_sweep(claim, claimed, mine)
                if held is None:
                    return False
                mine = held
                marked = _encode("meta", {**meta, "deleting": claimed["sweep"]})
                if not await self._save_guarded(meta_key, found[meta_key], {meta_key: marked}):
                    return False
                marked_raw = marked
            listed = await self._list_keys(prefix)
            if await self._stored_steps(key, listed) != steps:
                return False  # likewise
            # The keys as listed once claimed: a run writes none under the claim. Deleted a
            # batch at a time, in one transaction guarded by the claim, where the backend can
            # (a key at a time cost an fsync each on SQLite); else a key at a time. The claim
            # is kept from aging before each. The meta record goes with the last batch: while
            # any step is left, a new run under the id finds it, and is refused (without it
            # and a final checkpoint, the id reads as fresh).
            batched = callable(getattr(self.backend, "batch_delete_if", None))
            doomed = [
                k for k in listed if k not in (claim, anchor) and _OWN_SUFFIX.match(k, len(prefix))
            ]
            _meta_and_end_last(prefix, doomed)
            size = _SWEEP_BATCH if batched else 1
            deleting = True
            for start in range(0, len(doomed), size):
                held = await self._hold_sweep(claim, claimed, mine)
                if held is None:
                    return False
                mine = held
                if not batched:
                    await self.backend.delete(doomed[start])
                elif not await self._delete_guarded(claim, mine, doomed[start : start + size]):
                    return False
            held = await self._hold_sweep(claim, claimed, mine)
            if held is None:
                return False
            mine = held
            # Last (a deletion cut short finds it again), and not one a run wrote meanwhile.
            return await self._delete_if(anchor, anchor_raw)
        finally:
            if marked_raw is not None and not deleting and meta_key in found:
                # Given up before it deleted anything: the mark goes, else a resume would
                # take the session for a partly deleted one (and refuse it).
                with contextlib.suppress(Exception):
                    await self._save_guarded(meta_key, marked_raw, {meta_key: found[meta_key]})
            # Not a run's claim made once a stranded claim of this deletion was deleted.
            await self._drop_claim(claim, mine)

    async def _hold_sweep(self, claim: str, found: dict[str, Any], mine: bytes) -> bytes | None:
        """Keeps this sweep's claim `claim` (its record `mine`, made of `found`) from aging.

        A claim older than `_GRACE_SECONDS` is taken for a sweep cut short, and taken over:
        a sweep of a large session, or on a slow backend, would lose it as it deletes. Once
        a third of the period old, the claim is written anew with the time now (`found`'s
        `at` updated). A claim half the period old, or no longer `mine`, is one this sweep
        cannot be sure of keeping (its process stalled; another may be taking it over): the
        sweep stops, as if cut short, and the next sweep deletes the session. Returns the
        claim's record (renewed or not), or None to stop.
        """
        now = time.time()
        if now < found["at"] + _GRACE_SECONDS / 3:
            return mine
        # Half the period leaves a taker (at a full period) far behind the write below.
        if now >= found["at"] + _GRACE_SECONDS / 2 or await self.backend.load(claim) != mine:
            return None
        found["at"] = now
        renewed = _encode("claim", found)
        await self.backend.save(claim, renewed)
        return renewed

    async def _sweep_fork(self, key: str, cut_off: float) -> bool:
        """Deletes the incomplete fork of session key `key` if it started before `cut_off`.

        Told by its marker (see `fork`), whose `started_at` is when the fork began (a
        marker without one is old). The sweep takes the id over as a fork does (its
        takeover key, insert-if-absent): a fork taking it over right now keeps it. A
        takeover key written before `cut_off` is a takeover cut short: the sweep goes on.
        Returns whether it deleted the fork.
        """
        meta_key = f"{key}:meta"
        raw = await self.backend.load(meta_key)
        if raw is None:
            return False
        try:
            meta = decode(raw, meta_key, "meta")
        except PersistenceError as error:
            raise _DamagedSession(error) from error
        if not _is_incomplete_fork(meta):
            return False
        started = meta.get("started_at", 0.0)
        if _is_number(started) and started >= cut_off:
            return False  # it may be being written right now
        takeover = f"{key}:fork:{_digest(raw)}"
        mine = _encode("claim", {"sweep": uuid.uuid4().hex, "at": time.time()})
        if not await self._save_if_absent(takeover, mine):
            held = await self.backend.load(takeover)
            try:
                holder = decode(held, takeover) if held is not None else None
            except PersistenceError as error:
                raise _DamagedSession(error) from error
            at: Any = holder.get("at") if isinstance(holder, dict) else None
            if held is None or (_is_number(at) and at >= cut_off):
                return False  # a fork (or another sweep) takes the id over right now
        return await self._drop_fork(key, raw, takeover)

    @_backend_failures_typed("forking")
    async def fork(self, session_id: str, step: int, new_session_id: str) -> AgentSession:
        """Starts session `new_session_id` from step `step` of `session_id` (time travel).

        Its first `step` steps are copied (with a meta record, in one transaction); `resume`
        continues it from there: it continues the run that took step `step` (in a multi-turn
        session, that turn, with the question it asked and the chat history of the turns
        before it). `new_session_id` must be new: a session that has checkpoints is never
        written over (its records would mix with the fork's). Of forks racing into one new id,
        one alone writes: the meta record claims the id insert-if-absent (`save_new`), and
        the fork then claims it as a run does (`session:<id>:run:0`), before the steps are
        copied: a run starting under the id meanwhile is refused.

        An id that holds only an incomplete fork (one cut before its steps were copied: its
        marker, maybe its claim) is taken over once the fork started more than 60 seconds
        ago (a marker without a start time, as older versions wrote, is old); a younger one
        may be copying still: the id has checkpoints. Of forks taking it over at once, the one
        that writes the takeover key (`session:<id>:fork:<digest of the marker>`,
        insert-if-absent) deletes the incomplete fork, and forks into the id as into a new
        one; the others are refused. A takeover cut short leaves its key, which refuses
        other takeovers until `sweep` deletes the incomplete fork, once old enough.

        Raises:
            PersistenceError: When `step` is not an int >= 0, the source is missing or has
                fewer than `step` steps, `step` is in a run before the saved one that saved
                no record of its start (run without checkpoints, or under an older version:
                its question is not known), or when `new_session_id` already has checkpoints
                (the source's own id too, or an incomplete fork that started less than 60
                seconds ago), another fork claimed it meanwhile, or another fork takes over
                the incomplete fork there.
        """
        if not _is_count(step):  # told as such: "cannot fork at step 2.0" read as a range
            raise PersistenceError(
                f"cannot fork: step must be an int >= 0, got {step!r}",
                key=session_key(session_id),
            )
        state = await self.load(session_id)
        if step > len(state.records):
            raise PersistenceError(
                f"cannot fork at step {step!r}: the session has {len(state.records)} steps",
                key=session_key(session_id),
            )
        first, prompt, turn, history = _run_at(state, step)  # before anything is written
        if await self.exists(new_session_id) and not await self._drop_incomplete_fork(
            new_session_id
        ):
            raise PersistenceError(
                f"cannot fork into session {new_session_id!r}: it already has checkpoints "
                "(fork into a new session id)",
                key=session_key(new_session_id),
            )
        fork = AgentSession(
            session_id=new_session_id,
            agent_id=state.agent_id,
            prompt=prompt,
            steps=[r.step for r in state.records[:step]],
            messages=history,
        )
        run = uuid.uuid4().hex
        shape: dict[str, Any] = {
            "turn": turn,
            "first_step": first,
            "history": history,
            "start": started_with(state, first),  # the run's, copied or not
        }
        meta_key, meta = _meta_item(fork, state.mode, run, **shape)
        # A meta record marking the fork incomplete claims the id first, insert-if-absent: of
        # two forks racing into one new id (both passed the check above), one alone writes.
        # Then the fork claims the id as a run does, so that a run starting under it while
        # the steps are copied is refused; the claim names the fork's run, which `resume`
        # continues. The real meta record comes with the steps: a fork cut before them is
        # told by its marker (`load` refuses it, and a fork may take its id over).
        _, marker = _meta_item(fork, state.mode, run, **shape, incomplete_fork=True)
        save_new = getattr(self.backend, "save_new", None)
        if save_new is not None and not self._wrote(await save_new(meta_key, marker), "save_new"):
            raise PersistenceError(
                f"cannot fork into session {new_session_id!r}: another fork took it meanwhile "
                "(fork into a new session id)",
                key=meta_key,
            )
        if save_new is None:
            await self.backend.save(meta_key, marker)
        claim = f"{session_key(new_session_id)}:run:0"
        claimed = _encode("claim", {"run": run, "fork": True})
        try:
            wrote = await self._save_if_absent(claim, claimed)
        except BaseException:
            # The marker goes (and the claim, had it landed all the same), as after a failed
            # copy: left, it kept the id from every fork for the grace period.
            cleanup = asyncio.ensure_future(
                self._delete_own([(claim, claimed), (meta_key, marker)])
            )
            await wait_through_cancellation(cleanup)
            retrieve_outcome(cleanup)  # the original error is what is raised
            raise
        if not wrote:
            # A run took the id meanwhile, and wrote its meta record over the fork's.
            raise PersistenceError(
                f"cannot fork into session {new_session_id!r}: a run took it meanwhile "
                "(fork into a new session id)",
                key=claim,
            )
        # No worker runs the fork until it is resumed: a turn may start from a loaded copy.
        ended = {"run": run, "duration_ms": fork.duration_ms, "ended_at": time.time()}
        items = {meta_key: meta, f"{session_key(new_session_id)}:ended": _encode("ended", ended)}
        for n, record in enumerate(state.records[:step], 1):
            items[step_key(new_session_id, n)] = _encode("step", record.to_dict())
        try:
            await self.backend.batch_save(items)
        except BaseException:
            # The claim goes with the failed copy, so the id is free. The copy may have landed
            # all the same (cancelled while the backend finished it): its steps go too, before
            # the claim that keeps other forks out. The cleanup runs as its own task, waited
            # for through further cancellations: stopped half way, it would leave the claim
            # over fewer steps, a fork that resumes from the wrong step.
            cleanup = asyncio.ensure_future(self._unclaim([*reversed(items), claim]))
            await wait_through_cancellation(cleanup)
            retrieve_outcome(cleanup)  # the original error is what is raised
            raise
        # The copy is whole: runs may start it. Its own task, not cut by a cancellation.
        await asyncio.shield(asyncio.ensure_future(self.backend.delete(claim)))
        self._next_event.pop(new_session_id, None)
        return fork

    async def _claimed_after(self, key: str, final: dict[str, Any], listed: list[str]) -> bool:
        """Whether another run than the one `final` closes claimed session key `key`.

        From its last step, and has saved no step yet (see `save_meta`). `listed`: the keys
        under `key:`.

        Raises:
            _DamagedSession: The claim does not decode.
        """
        claim = f"{key}:run:{await self._stored_steps(key, listed)}"
        raw = await self.backend.load(claim)
        if raw is None or record_kind(raw) != "meta":
            return False  # none, or emptied by its run's first step
        try:
            meta = decode(raw, claim, "meta")
        except PersistenceError as error:  # it stops no sweep of the sessions after it
            raise _DamagedSession(error) from error
        closed = final.get("run")  # a final that names no run (older records) closes any
        return closed is not None and (not isinstance(meta, dict) or meta.get("run") != closed)

    async def _delete_own(self, records: Sequence[tuple[str, bytes]]) -> None:
        """Deletes each `(key, raw)` record whose key still holds `raw` (see `_delete_if`).

        Each is tried even when one before it failed (that failure suppressed).
        """
        for key, raw in records:
            with contextlib.suppress(Exception):
                await self._delete_if(key, raw)

    async def _unclaim(self, keys: Sequence[str]) -> None:
        """Deletes a failed fork's `keys`: its steps, its meta record, then its claim, last.

        Each is tried even when one before it failed (that failure suppressed): the claim goes
        in any case, so no fork is left to resume as if whole; a stray step under no meta is
        refused by `fork`'s existence check and ignored by `load`.
        """
        with contextlib.suppress(Exception):
            await self._delete_all(keys)

    async def _drop_incomplete_fork(self, session_id: str) -> bool:
        """Deletes the records of an incomplete fork into `session_id`; whether it did.

        A fork cut before its steps were copied leaves its marked meta record (see `fork`),
        and maybe its claim `:run:0`. One that started less than `_GRACE_SECONDS` ago may be
        copying still: it is not taken over. One fork takes the id over: the one that writes
        the takeover key naming that marker, insert-if-absent; it deletes them (see
        `_drop_fork`), so the id can be forked into again.

        Raises:
            PersistenceError: When another fork (or a sweep) takes the id over.
        """
        key = session_key(session_id)
        meta_key = f"{key}:meta"
        raw = await self.backend.load(meta_key)
        meta = decode(raw, meta_key, "meta") if raw is not None else None
        if raw is None or not _is_incomplete_fork(meta) or not _outlived(meta, "started_at"):
            return False  # none, or one that may be copying still
        takeover = f"{key}:fork:{_digest(raw)}"
        mine = _encode("claim", {"takeover": uuid.uuid4().hex, "at": time.time()})
        if not await self._save_if_absent(takeover, mine):
            raise PersistenceError(
                f"cannot fork into session {session_id!r}: another fork (or a sweep) takes "
                "over the incomplete fork there (fork into a new session id; if that takeover "
                "was cut short, sweep deletes the incomplete fork once it is old enough)",
                key=takeover,
            )
        return await self._drop_fork(key, raw, takeover)

    async def _drop_fork(self, key: str, marker: bytes, takeover: str) -> bool:
        """Deletes the incomplete fork of `marker` at session key `key`; whether it did.

        Called holding the takeover key `takeover`, deleted last whatever happens. Only when
        the session holds nothing but that marker, the fork's claim `:run:0` (naming the
        marker's run) and takeover keys: the claim goes first, then the marker (if still
        it), then the other takeover keys, stale once the marker is gone. Cut short, it
        leaves the marker, or nothing that refuses the id.
        """
        meta_key, claim = f"{key}:meta", f"{key}:run:0"
        prefix = f"{key}:"
        try:
            own = [k for k in await self._list_keys(prefix) if _OWN_SUFFIX.match(k, len(prefix))]
            takeovers = [k for k in own if _FORK_TAKEOVER.match(k, len(prefix))]
            if not set(own) - set(takeovers) <= {meta_key, claim}:
                return False  # steps or other records: not an incomplete fork's id alone
            if await self.backend.load(key) is not None:
                return False
            if await self.backend.load(meta_key) != marker:
                return False  # taken over and forked into, or run, meanwhile
            held = await self.backend.load(claim)
            if held is not None:
                holder = decode(held, claim)
                run = decode(marker, meta_key, "meta").get("run")
                if not (
                    isinstance(holder, dict) and holder.get("fork") and holder.get("run") == run
                ):
                    return False  # a run's claim: it runs under the id
                await self.backend.delete(claim)
            if not await self._delete_if(meta_key, marker):
                return False  # a run wrote its meta record meanwhile
            for stale in takeovers:
                if stale != takeover:
                    await self._drop_takeover(stale)
            return True
        finally:
            await self.backend.delete(takeover)

    @_backend_failures_typed("looking up")
    async def exists(self, session_id: str) -> bool:
        """Whether the session has any checkpoint record (final, meta, step, event, ...).

        A takeover key alone is none: one a takeover cut short left after it deleted the
        incomplete fork (see `_drop_fork`), or a sweep's claim (see `_drop_claim`).
        """
        key = session_key(session_id)
        if await self.backend.load(key) is not None:
            return True
        prefix = f"{key}:"
        return any(
            _OWN_SUFFIX.match(k, len(prefix))
            and not _FORK_TAKEOVER.match(k, len(prefix))
            and not _RUN_TAKEOVER.match(k, len(prefix))
            for k in await self._list_keys(prefix)
        )


def _meta_item(
    session: AgentSession,
    mode: str,
    run: str,
    *,
    turn: bool = False,
    first_step: int = 0,
    history: Sequence[dict[str, Any]] | None = None,
    incomplete_fork: bool = False,
    start: dict[str, Any] | None = None,
) -> tuple[str, bytes]:
    """The key and record of a run's meta data: who runs what, since when, which run.

    And whether it is a turn, after how many steps it started, the chat history it started
    with (a turn's only), and `start`'s `context` and `memory_hits` (`SessionState.start`).
    With `incomplete_fork`, the record is marked as a fork's whose steps are not copied yet
    (see `CheckpointStore.fork`).
    """
    meta: dict[str, Any] = {
        "session_id": session.session_id,
        "agent_id": session.agent_id,
        "prompt": session.prompt,
        "mode": mode,
        "started_at": time.time(),
        "run": run,
        "turn": turn,
        "first_step": first_step,
    }
    if history is not None:
        meta["history"] = list(history)
    if start is not None:
        meta["context"], meta["memory_hits"] = start["context"], start["memory_hits"]
    if incomplete_fork:
        meta["incomplete_fork"] = True
    return f"{session_key(session.session_id)}:meta", _encode("meta", meta)


def _latest_run_end(key: str, found: dict[str, bytes]) -> tuple[bool, float] | None:
    """How the latest run of session key `key` ended, as its records `found` tell.

    `found`: read with `_anchor_keys`. (True, when) if it finished, (False, when) if it
    failed (an error, a timeout, a cancel; or it is a fork not resumed since); None if it
    has not ended (it runs, or its process ended first).

    A failed run's end record of an older version holds no time: it is taken as old (0.0).
    Without a meta record, the session is what a sweep or deletion cut short left: ended.

    Raises:
        PersistenceError: A record is corrupt.
    """
    meta_key, ended_key = f"{key}:meta", f"{key}:ended"
    meta = decode(found[meta_key], meta_key, "meta") if meta_key in found else None
    if meta is not None and not _is_meta(meta):
        raise PersistenceError(_META_SHAPE, key=meta_key)
    final = decode(found[key], key, "session") if key in found else None
    if final is not None:
        _final_session(final, key)
        if meta is None or not _turn_after(meta, final):
            finished: Any = final.get("finished_at")
            return True, float(finished) if _is_number(finished) else 0.0
    end = decode(found[ended_key], ended_key, "ended") if ended_key in found else None
    if meta is None:
        return False, 0.0
    if isinstance(end, dict) and not end.get("resumed") and end.get("run") == meta.get("run"):
        ended: Any = end.get("ended_at")
        return False, float(ended) if _is_number(ended) else 0.0
    return None


def _being_deleted(meta: Any) -> bool:
    """Whether a decoded meta record is marked by a sweep or `delete_session` deleting it.

    The mark of one cut short stays: see `CheckpointStore._deletion_under_way`.
    """
    return isinstance(meta, dict) and isinstance(meta.get("deleting"), str)


_FORCE_ADVICE = "delete_session(session_id, force=True) deletes such a session unread"


def _meta_and_end_last(prefix: str, keys: list[str]) -> None:
    """Sorts a deletion's `keys` (under `prefix`): the meta record, then the end record, last.

    The final checkpoint, which is not in `keys`, goes after them. Without the meta record,
    what is left reads as ended; without the end record alone, as a run that never ended,
    which no deletion takes. The other keys keep their order.
    """
    last = {f"{prefix}meta": 1, f"{prefix}ended": 2}
    keys.sort(key=lambda k: last.get(k, 0))


def _anchor_keys(key: str) -> list[str]:
    """The records of session key `key` that tell whether its latest run ended.

    The final checkpoint, the meta record and the end record (see `_delete_ended`).
    """
    return [key, f"{key}:meta", f"{key}:ended"]


def _is_incomplete_fork(meta: Any) -> bool:
    """Whether a meta record is the marker of a fork whose steps are not copied yet."""
    return isinstance(meta, dict) and meta.get("incomplete_fork") is True


def _outlived(record: Any, field: str) -> bool:
    """Whether the time `record[field]` is more than `_GRACE_SECONDS` ago (or there is none)."""
    at: Any = record.get(field) if isinstance(record, dict) else None
    return not _is_number(at) or bool(at < time.time() - _GRACE_SECONDS)


def _is_takeover(raw: bytes, key: str) -> bool:
    """Whether `raw`, stored under `key`, is a takeover key's record (a fork's or a sweep's).

    Not told by its key alone: a session id with ':' written before ids were escaped (its
    final checkpoint `session:a:fork:2`, say) names as many.
    """
    if record_kind(raw) != "claim":
        return False
    holder = decode(raw, key)
    return isinstance(holder, dict) and ("takeover" in holder or "sweep" in holder)


def _run_at(state: SessionState, step: int) -> tuple[int, str, bool, list[dict[str, Any]]]:
    """The run of a saved session that took step `step` (the first run for step 0).

    Returns how many steps came before it, its prompt, whether it is a turn, and the chat
    history it started with. A run is told by the `run_start` of its first step, its
    history being the start of the session's (a chat history only grows). Steps saved
    without `run_start` (by older versions, or before the session had checkpoints) give the
    run after the last final answer before the step: the latest run's data when that is it.

    Raises:
        PersistenceError: The step is in an earlier run saved without `run_start`: nothing
            saved holds that run's question (it was the latest run's, silently).
    """
    records = state.records
    if state.final is not None:
        longest = _final_session(state.final, session_key(state.session_id)).messages
    else:
        longest = state.history or []
    for index in range(min(max(step, 1), len(records)) - 1, -1, -1):
        start = records[index].run_start
        if start is not None:
            history = [dict(m) for m in longest[: start["messages"]]]
            if "history_crc" in start and history_crc(history) != start["history_crc"]:
                raise PersistenceError(
                    f"cannot fork at step {step}: the chat history was changed (not only "
                    "added to) after the run that took it started, by a hook or the "
                    "application, and the history that run started with is not saved; fork "
                    "at a step of a run that started after the change",
                    key=session_key(state.session_id),
                )
            return index, start["prompt"], start["turn"], history
    before = records[: max(step - 1, 0)]
    first = next((n + 1 for n in range(len(before) - 1, -1, -1) if before[n].is_final), 0)
    if first != state.first_step:
        raise PersistenceError(
            f"cannot fork at step {step}: the run that took it saved no record of its question "
            "(it ran without checkpoints, or under an older version); fork at a step of the "
            f"saved run: {state.first_step + 1} or later",
            key=session_key(state.session_id),
        )
    return first, state.prompt, state.turn, [dict(m) for m in state.history or []]


def history_crc(messages: Sequence[Any]) -> int:
    """The CRC-32 of a chat history's record, as a run's start saves it.

    A fork tells by it whether the session's later history still starts with the run's (a
    hook or the application may rewrite a history between turns, not only add to it). The
    same for a history and its stored form: a record's text is what it reads back as.

    Raises:
        PersistenceError: As `codec.encode`, for a history JSON cannot hold.
    """
    return zlib.crc32(_encode("history", list(messages)))


def started_with(state: SessionState, first: int) -> dict[str, Any] | None:
    """The context and memory hits of the run that started after step `first`, as saved.

    Its first step's `run_start` keeps them, and the meta record the saved run's (which may
    have no step yet); None when neither does (records of older versions).
    """
    if first < len(state.records):
        start = state.records[first].run_start
        if start is not None and "context" in start:
            return {"context": start["context"], "memory_hits": start["memory_hits"]}
    return state.start if first == state.first_step else None


_Encoded = dict[int, tuple[Any, bytes]]
"""Records encoded, by the `id` of the step record or event, with that object."""


def _encoded_once(kind: str, item: Any, unsent: _Encoded | None, encoded: _Encoded) -> bytes:
    """The record of a step record or event (`kind`), taken from `unsent` when it is there.

    `unsent` holds what a failed write encoded (`CheckpointStore._unsent`); the record is
    added to `encoded`, this write's.
    """
    hit = unsent.get(id(item)) if unsent else None
    if hit is not None and hit[0] is item:
        raw = hit[1]
    else:
        raw = _encode(kind, item.to_dict() if kind == "step" else _event_dict(item))
    encoded[id(item)] = (item, raw)
    return raw


def _event_dict(event: Any) -> dict[str, Any]:
    """An event as JSON data: its type and fields (an error as its repr)."""
    fields = event._asdict() if hasattr(event, "_asdict") else dict(vars(event))
    return {"type": type(event).__name__, **{k: _plain(v) for k, v in fields.items()}}


def _plain(value: Any) -> Any:
    if isinstance(value, BaseException):
        # An error's repr may raise (a library's reads an attribute its constructor left
        # unset): the write of the failed run's end and events must not fail with it.
        try:
            return repr(value)
        except Exception:
            return f"<{type(value).__name__} (its repr failed)>"
    return value
