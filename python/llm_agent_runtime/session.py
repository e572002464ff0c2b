"""`AgentSession`: the record of one agent run, with introspection helpers."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_agent_runtime._core import dicts_with_keys_made_text
from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.orchestration._checks import safe_repr, short_repr

if TYPE_CHECKING:
    from llm_agent_runtime.persistence.base import PersistenceBackend

__all__ = ["AgentSession", "Step"]


def _ms(value: object, digits: int = 1) -> str:
    """A time in ms as a repr shows it: a number to `digits` decimals, else its repr."""
    return f"{value:.{digits}f}" if type(value) in (float, int) else short_repr(value)


def _count(items: object) -> str:
    """How many items a list holds, as a repr shows it (what it is, if it is no list)."""
    return str(len(items)) if isinstance(items, list) else short_repr(items)


@dataclass(slots=True)
class Step:
    """One Thought-Action-Observation cycle.

    Timings split the step's wall time into the model's time, the tools' time and the
    runtime's own overhead (everything else), so framework cost is visible. A step's wall
    time runs from the end of the step before, so the step before's checkpoint write is in
    this one's overhead (the run's last write, after its last step, is in no step). The
    steps of one round of tool calls share its model time and overhead evenly; each keeps its own
    tool's time, so a parallel round's tool times overlap (their sum exceeds the round's).
    A step that answers a corrective re-prompt holds the unparseable reply's model time and
    tokens too. A step a resume finishes keeps the model time of a reply, and the tool time
    of a call, that an earlier run journaled; its overhead is this run's own.

    `action` and `action_input` are the call that ran. When an `on_tool_call` middleware or
    the approval handler changed it, `requested` holds the call the model asked for, as
    `{"name": ..., "arguments": ...}`; it is None when the call ran as asked (or was denied).
    """

    thought: str
    action: str
    action_input: Any = None
    observation: str = ""
    error_kind: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    model_ms: float = 0.0
    tool_ms: float = 0.0
    overhead_ms: float = 0.0
    requested: dict[str, Any] | None = None

    @safe_repr
    def __repr__(self) -> str:
        # Short: an observation may be megabytes (a session's repr shows no step at all).
        return (
            f"Step(thought={short_repr(self.thought)}, action={short_repr(self.action)}, "
            f"action_input={short_repr(self.action_input)}, "
            f"observation={short_repr(self.observation)}, "
            f"error_kind={short_repr(self.error_kind)}, model_ms={_ms(self.model_ms)}, "
            f"tool_ms={_ms(self.tool_ms)}, overhead_ms={_ms(self.overhead_ms, 3)})"
        )

    @property
    def failed(self) -> bool:
        """Whether the step's tool call failed."""
        return self.error_kind is not None

    def to_dict(self) -> dict[str, Any]:
        """The step's fields by name, as `asdict` gives them but without copying.

        `action_input` is the step's own object, not a copy: encode the dict, don't keep it.
        """
        return {
            "thought": self.thought,
            "action": self.action,
            "action_input": self.action_input,
            "observation": self.observation,
            "error_kind": self.error_kind,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "model_ms": self.model_ms,
            "tool_ms": self.tool_ms,
            "overhead_ms": self.overhead_ms,
            "requested": self.requested,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Step:
        """Rebuilds a step from `to_dict` output, checking its shape and field types.

        `thought` and `action` are required; `action_input` may be any JSON value; integer
        fields take ints, timing fields take ints or floats (never bools; a NaN or an infinity
        as the string `to_json` makes of it: `"nan"`, `"inf"`, `"-inf"`); `requested` is null
        or an object of a string `name` and any `arguments`.

        Raises:
            PersistenceError: When `data` is not a dict, lacks a required field, has an
                unknown field, or a field of the wrong type (the message names it).
        """
        fields = _checked(data, _STEP_FIELDS, ("thought", "action"), "step")
        problem = requested_call_problem(fields.get("requested"))
        if problem is not None:
            raise PersistenceError(f"step field 'requested' {problem}")
        return cls(**fields)


def requested_call_problem(requested: Any) -> str | None:
    """What is wrong with a step's `requested` call as loaded, or None when it is valid."""
    if requested is None or (
        isinstance(requested, dict)
        and set(requested) == {"name", "arguments"}
        and isinstance(requested["name"], str)
    ):
        return None
    return "must be an object with a string 'name' and 'arguments', or null"


@dataclass(slots=True)
class AgentSession:
    """Everything a session's runs did: steps, final answer, memory hits, timings.

    A multi-turn session (`AgentRuntime.run_turn`) adds up its turns: `steps`, `memory_hits`,
    `duration_ms` (the wall time of all its runs) and `checkpoint_errors` grow with each
    turn; `prompt` and `final_answer` are the latest turn's. A run refused before it started
    (a hook or the checkpoint store refused it) leaves every field as it was.
    """

    session_id: str
    agent_id: str
    prompt: str = ""
    steps: list[Step] = field(default_factory=list)
    final_answer: str | None = None
    memory_hits: int = 0
    graph_entity_count: int | None = None
    duration_ms: float = 0.0
    """Wall time of the session's runs, in ms: all its turns (a failed run's too)."""
    checkpoint_errors: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Chat history of a multi-turn session (role/content dicts; a tool exchange's also carry
    `tool_calls`, `tool_call_id` and `name`, see `message_problem`)."""

    @safe_repr
    def __repr__(self) -> str:
        # Short: its steps and messages (each of which may be megabytes) are counted only.
        return (
            f"AgentSession(session_id={short_repr(self.session_id)}, "
            f"agent_id={short_repr(self.agent_id)}, prompt={short_repr(self.prompt)}, "
            f"steps={_count(self.steps)}, final_answer={short_repr(self.final_answer)}, "
            f"messages={_count(self.messages)}, duration_ms={_ms(self.duration_ms)})"
        )

    # --- introspection (the seed's helpers) ---
    @property
    def step_count(self) -> int:
        """Number of Thought-Action-Observation cycles."""
        return len(self.steps)

    def has_final_answer(self) -> bool:
        """Whether the run ended with a final answer."""
        return self.final_answer is not None

    def duration_secs(self) -> float:
        """Wall-clock duration in seconds (all the session's turns, as `duration_ms`)."""
        return self.duration_ms / 1000.0

    def failed_tool_call_count(self) -> int:
        """Steps whose tool call failed, or never started (its round failed first)."""
        return sum(1 for s in self.steps if s.error_kind is not None)

    def step_success_count(self) -> int:
        """Steps without a tool failure."""
        return self.step_count - self.failed_tool_call_count()

    def checkpoint_error_count(self) -> int:
        """Per-step checkpoint saves that failed.

        Counted in memory and saved with a run's final checkpoint: a session loaded or
        resumed from a run cut off before that has its finished runs' count only.
        """
        return self.checkpoint_errors

    def all_thoughts(self) -> list[str]:
        """Thoughts in step order."""
        return [s.thought for s in self.steps]

    def all_actions(self) -> list[str]:
        """Actions in step order."""
        return [s.action for s in self.steps]

    def all_observations(self) -> list[str]:
        """Observations in step order."""
        return [s.observation for s in self.steps]

    def action_lengths(self) -> list[int]:
        """UTF-8 byte length of each action (a lone surrogate counts 3 bytes)."""
        return [_utf8_len(s.action) for s in self.steps]

    def thought_lengths(self) -> list[int]:
        """UTF-8 byte length of each thought (a lone surrogate counts 3 bytes)."""
        return [_utf8_len(s.thought) for s in self.steps]

    def total_thought_bytes(self) -> int:
        """Sum of thought byte lengths (a lone surrogate counts 3 bytes)."""
        return sum(self.thought_lengths())

    def total_observation_bytes(self) -> int:
        """Sum of observation UTF-8 byte lengths (a lone surrogate counts 3 bytes)."""
        return sum(_utf8_len(s.observation) for s in self.steps)

    def avg_action_length(self) -> float:
        """Mean action byte length (0.0 without steps; a lone surrogate counts 3 bytes)."""
        lengths = self.action_lengths()
        return sum(lengths) / len(lengths) if lengths else 0.0

    def avg_thought_length(self) -> float:
        """Mean thought byte length (0.0 without steps; a lone surrogate counts 3 bytes)."""
        lengths = self.thought_lengths()
        return sum(lengths) / len(lengths) if lengths else 0.0

    def longest_thought(self) -> str | None:
        """The thought with the most bytes (the first on ties; a lone surrogate counts 3)."""
        return max(self.all_thoughts(), key=_utf8_len, default=None)

    def shortest_action(self) -> str | None:
        """The action with the fewest bytes (the first on ties; a lone surrogate counts 3)."""
        return min(self.all_actions(), key=_utf8_len, default=None)

    def first_step_action(self) -> str | None:
        """Action of the first step."""
        return self.steps[0].action if self.steps else None

    def last_step_action(self) -> str | None:
        """Action of the last step."""
        return self.steps[-1].action if self.steps else None

    def most_common_action(self) -> str | None:
        """The most frequent action (the first seen on ties)."""
        if not self.steps:
            return None
        return Counter(self.all_actions()).most_common(1)[0][0]

    def count_steps_with_action(self, action: str) -> int:
        """Steps whose action equals `action`."""
        return sum(1 for s in self.steps if s.action == action)

    def thought_contains_count(self, text: str) -> int:
        """Steps whose thought contains `text`."""
        return sum(1 for s in self.steps if text in s.thought)

    def observation_contains_count(self, text: str) -> int:
        """Steps whose observation contains `text`."""
        return sum(1 for s in self.steps if text in s.observation)

    def count_nonempty_thoughts(self) -> int:
        """Steps with a non-empty thought."""
        return sum(1 for s in self.steps if s.thought)

    def steps_above_thought_length(self, n: int) -> int:
        """Steps whose thought exceeds `n` bytes (a lone surrogate counts 3)."""
        return sum(1 for length in self.thought_lengths() if length > n)

    def model_ms(self) -> float:
        """Total time spent waiting for the model."""
        return sum((s.model_ms for s in self.steps), 0.0)  # 0.0, not 0, without steps

    def tool_ms(self) -> float:
        """Total time spent in tools."""
        return sum((s.tool_ms for s in self.steps), 0.0)  # 0.0, not 0, without steps

    def overhead_ms(self) -> float:
        """Total time the runtime itself took in the steps (neither model nor tools).

        Checkpoint writes between steps included; what a run does before its first step (its
        start checkpoint) is in `duration_ms` only, and its final checkpoint, written once the
        duration is measured (the saved session holds it), is in neither.
        """
        return sum((s.overhead_ms for s in self.steps), 0.0)  # 0.0, not 0, without steps

    # --- serialization ---
    def to_dict(self) -> dict[str, Any]:
        """Returns the session as dicts, lists and values, deep-copied.

        Its steps and messages become dicts; values are kept as they are, so an argument the
        approval handler or a tool call gave (a `Decimal`, a NaN) stays one: `to_json`
        writes what JSON has no type or number for as text.

        Raises:
            PersistenceError: When a value cannot be copied (an argument holding a lock, say)
                or the session nests too deeply to copy.
        """
        try:
            return _plain_copy(self)  # type: ignore[no-any-return]
        except RecursionError:
            raise PersistenceError("session nests too deeply to copy") from None
        except Exception as error:  # whatever a value's own copy hooks raise
            raise PersistenceError(f"session cannot be copied: {error!r}") from error

    def to_json(self) -> str:
        """Serializes the session to strict JSON.

        As a checkpoint record does: a value JSON has no type for becomes its `str`, and so
        does a float it has no number for (a NaN or an infinity in a step's `action_input`,
        say: `"nan"`, `"inf"`); a dict key that is an int, float, bool or None becomes a
        string; any other key is refused, not renamed (a checkpoint record writes such a key
        as its `str` instead). `from_json` gives the session back with those values as the
        strings they became (a timing field's as its float again).

        Raises:
            PersistenceError: When a dict key (in a step's `action_input`, say) is not a str,
                int, float, bool or None, such as a tuple, or two keys of a dict are written
                alike (`1` and `"1"`, a NaN and `"nan"`), or a value's `str` fails, or the
                session holds itself, nests too deeply to encode, or holds an int past
                Python's limit of digits for a conversion to text (checkpointing the session
                fails then too).
        """
        data = self.to_dict()
        try:
            try:
                text = json.dumps(data, default=json_text, allow_nan=False)
            except ValueError:  # a NaN or an infinity, which strict JSON has no number for
                data = finite_floats(data)
                text = json.dumps(data, default=json_text, allow_nan=False)
            # The keys as written: an infinite key is "inf" here, not the "Infinity" `json`
            # alone would make of it (`finite_floats` checked those it renamed).
            check_keys_written_apart(data)
            return text
        # `default` covers values, never keys; a ValueError left is no NaN's (an int too
        # long to write, a circular reference).
        except (TypeError, ValueError) as error:
            raise PersistenceError(f"session cannot be encoded as JSON: {error}") from error
        except RecursionError:  # nested deeper than the stack this call runs on allows
            raise PersistenceError("session nests too deeply to encode as JSON") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentSession:
        """Rebuilds a session from `to_dict` output, checking its shape and field types.

        `session_id` and `agent_id` are required; `steps` is a list of step dicts (see
        `Step.from_dict`) and `messages` a list of dicts, each with a `role` (`system`,
        `user`, `assistant` or `tool`) and a string `content` (and tool fields, see
        `message_problem`); integer fields take ints, timing fields ints or floats (never
        bools; a NaN or an infinity as the string `to_json` makes of it). A session that
        loads has the types its helpers rely on. The session gets its own list of messages
        and its own message dicts: two sessions loaded from one dict share no history, and
        `data` is not changed by the session's later turns.

        Raises:
            PersistenceError: When `data` is not a dict, lacks a required field, has an
                unknown field, or a field (or a step's field) of the wrong type; the message
                names it.
        """
        fields = _checked(data, _SESSION_FIELDS, ("session_id", "agent_id"), "session")
        steps = []
        for n, step in enumerate(fields.get("steps", []), 1):
            try:
                steps.append(Step.from_dict(step))
            except PersistenceError as error:
                raise PersistenceError(f"step {n}: {error}") from error
        fields["steps"] = steps
        for n, message in enumerate(fields.get("messages", []), 1):
            if not isinstance(message, dict):
                raise PersistenceError("session field 'messages' must be a list of dicts")
            if (problem := message_problem(message)) is not None:
                raise PersistenceError(f"message {n}: {problem}")
        if "messages" in fields:  # the session's own, tool calls and all: `data` stays as is
            try:
                # As `to_dict` copies them, so whatever nesting `to_json` wrote loads back
                # (`deepcopy` takes several frames a level, and refused half as deep).
                fields["messages"] = _plain_copy(fields["messages"])
            except RecursionError:  # nested deeper than the stack this call runs on allows
                raise PersistenceError("session messages nest too deeply to copy") from None
            except Exception as error:  # a value that cannot be copied (a lock, say)
                raise PersistenceError(f"session messages cannot be copied: {error}") from error
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str | bytes) -> AgentSession:
        """Rebuilds a session from `to_json` output.

        Raises:
            PersistenceError: When the text is not a serialized session: not JSON, JSON
                nested too deeply to decode, an object with a key written twice (which
                `to_json` never writes), or a value of the wrong shape or type (see
                `from_dict`).
        """
        try:
            data = json.loads(text, object_pairs_hook=object_of_pairs)
        # A PersistenceError here is `object_of_pairs`' (a key written twice).
        except (ValueError, TypeError, PersistenceError) as error:
            raise PersistenceError(f"not a serialized AgentSession: {error}") from error
        except RecursionError:  # nested deeper than the stack this call runs on allows
            raise PersistenceError(
                "not a serialized AgentSession: JSON nests too deeply to decode"
            ) from None
        try:
            return cls.from_dict(data)
        except PersistenceError as error:
            raise PersistenceError(f"not a serialized AgentSession: {error}") from error

    @classmethod
    async def load_checkpoint(cls, backend: PersistenceBackend, session_id: str) -> AgentSession:
        """Loads a saved session: its final checkpoint, or the steps an interrupted run saved.

        A multi-turn session whose latest turn was interrupted loads as its earlier turns
        (chat history, memory hits, ...) followed by the steps that turn saved, with the chat
        history that turn started with (and the turn itself when its last saved step is its
        final answer). `AgentRuntime.resume` continues that turn.

        Raises:
            PersistenceError: When nothing is saved for the session, or a record is corrupt,
                truncated or from a newer version.
        """
        from llm_agent_runtime.persistence.checkpoints import CheckpointStore

        state = await CheckpointStore(backend).load(session_id)
        return state.session()


# The roles a message of a session's chat history (`AgentSession.messages`) may have.
_MESSAGE_ROLES = ("system", "user", "assistant", "tool")

# Field name -> (accepted types, description) of what `from_dict` loads. Floats take ints too
# (JSON writers may drop the ".0"), never bools (a bool is an int to `isinstance`).
_Spec = tuple[tuple[type, ...], str]
_ANY: _Spec = ((object,), "any value")
_STR: _Spec = ((str,), "a string")
_OPT_STR: _Spec = ((str, type(None)), "a string or null")
_INT: _Spec = ((int,), "an integer")
_OPT_INT: _Spec = ((int, type(None)), "an integer or null")
_FLOAT: _Spec = ((int, float), "a number")
_NON_FINITE = frozenset(("nan", "inf", "-inf"))
"""A timing field's NaN or infinity as `to_json` writes it (`finite_floats`): read back."""
_LIST: _Spec = ((list,), "a list")

_STEP_FIELDS: dict[str, _Spec] = {
    "thought": _STR,
    "action": _STR,
    "action_input": _ANY,
    "observation": _STR,
    "error_kind": _OPT_STR,
    "input_tokens": _INT,
    "output_tokens": _INT,
    "model_ms": _FLOAT,
    "tool_ms": _FLOAT,
    "overhead_ms": _FLOAT,
    "requested": _ANY,  # checked by `requested_call_problem`
}
_SESSION_FIELDS: dict[str, _Spec] = {
    "session_id": _STR,
    "agent_id": _STR,
    "prompt": _STR,
    "steps": _LIST,
    "final_answer": _OPT_STR,
    "memory_hits": _INT,
    "graph_entity_count": _OPT_INT,
    "duration_ms": _FLOAT,
    "checkpoint_errors": _INT,
    "messages": _LIST,
}


def session_problem(session: AgentSession, messages: bool = True) -> str | None:
    """What keeps `session` from running a turn (None when nothing does).

    That is a field whose value is not of its type (as `from_dict` checks them), a step that
    is not a `Step` or has such a field, or a chat message that is not one (see
    `message_problem`), which the run would fail on as it goes, once its model was paid (or
    save as JSON that `from_json` refuses): a user may set any field. `messages` False
    leaves the messages to the caller (a turn's history trim has checked them).
    """
    for name, spec in _SESSION_FIELDS.items():
        value = getattr(session, name)
        if not _fits(value, spec):
            return f"session.{name} must be {spec[1]}, got {_kind(value)}"
    for n, step in enumerate(session.steps, 1):
        if not isinstance(step, Step):
            return f"session.steps must be a list of Step objects, got {_kind(step)} as step {n}"
        for name, spec in _STEP_FIELDS.items():  # as `Step.from_dict` checks them
            if not _fits(value := getattr(step, name), spec):
                return f"session step {n}: '{name}' must be {spec[1]}, got {_kind(value)}"
        if (problem := requested_call_problem(step.requested)) is not None:
            return f"session step {n}: 'requested' {problem}"
    if messages:
        for n, message in enumerate(session.messages, 1):
            if (problem := message_problem(message)) is not None:
                return f"session message {n}: {problem}"
    return None


def message_problem(message: Any) -> str | None:
    """What keeps `message` from being a chat message of a session (None when it is one).

    A message is a dict with a `role` (system, user, assistant or tool) and a string
    `content`, as `AgentSession.messages` holds them. A tool exchange's messages carry more,
    each optional: an assistant message's `tool_calls`, a list of dicts with a string `id`
    and `name` and a dict `arguments`; a tool message's `tool_call_id` (the id of the call it
    answers) and `name` (the tool's), strings. In tools mode they go to the provider.
    """
    if not isinstance(message, dict):
        return f"a message must be a dict, got {_kind(message)}"
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or role not in _MESSAGE_ROLES:
        return f"'role' must be one of {', '.join(map(repr, _MESSAGE_ROLES))}, got {role!r}"
    if not isinstance(content, str):
        return f"'content' must be a string, got {_kind(content)}"
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            return f"'tool_calls' must be a list, got {_kind(calls)}"
        if calls and role != "assistant":
            return f"'tool_calls' belong to an assistant message, not a {role} message"
        for n, call in enumerate(calls, 1):
            if not (
                isinstance(call, dict)
                and isinstance(call.get("id"), str)
                and isinstance(call.get("name"), str)
                and isinstance(call.get("arguments", {}), dict)
            ):
                return (
                    f"tool call {n} must be a dict with a string 'id' and 'name' (and a dict "
                    "'arguments')"
                )
    for key in ("tool_call_id", "name"):
        value = message.get(key)
        if value is not None and not isinstance(value, str):
            return f"{key!r} must be a string, got {_kind(value)}"
    return None


def _plain_copy(value: Any) -> Any:
    """A deep copy of `value` as plain data: what `dataclasses.asdict` makes of it, but dicts.

    Dataclasses become dicts of their fields, lists and tuples are copied item by item (a
    named tuple stays one), and every dict, a subclass too, becomes a plain dict: `asdict`
    rebuilds a dict subclass from a generator of pairs, which a `Counter` counts (its
    `{"yes": 2}` became `{("yes", 2): 1}`) and a `defaultdict` refuses. Anything else is
    `copy.deepcopy`'d, but for str, int, float, bool and None, which are their own copy.

    Raises:
        RecursionError: `value` nests deeper than the stack allows (or contains itself).
    """
    kind = type(value)
    if kind in _IMMUTABLE_SCALARS:  # most of a session: no call into `copy` for them
        return value
    if kind is dict:
        return {_plain_copy(k): _plain_copy(v) for k, v in value.items()}
    names = _FIELD_NAMES.get(kind)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = tuple(f.name for f in dataclasses.fields(value))
        if len(_FIELD_NAMES) < _FIELD_NAMES_MAX:
            _FIELD_NAMES[kind] = names
    if names is not None:
        return {name: _plain_copy(getattr(value, name)) for name in names}
    if isinstance(value, dict):
        return {_plain_copy(k): _plain_copy(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return kind(*map(_plain_copy, value))
    if isinstance(value, list):
        return list(map(_plain_copy, value))
    if isinstance(value, tuple):
        return tuple(map(_plain_copy, value))
    return copy.deepcopy(value)


_IMMUTABLE_SCALARS = frozenset({str, int, float, bool, type(None)})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
"""The field names of each dataclass `_plain_copy` met (a class's fields are fixed once it is
made), so a session's hundreds of steps do not ask `dataclasses.fields` each."""
_FIELD_NAMES_MAX = 1024
"""Classes kept at most: a program that makes dataclasses on the fly does not grow it."""


def json_text(value: Any) -> str:
    """The text JSON writes for a value it has no form for: its `str`.

    Raises:
        TypeError: Its `str` failed (the encoders turn this into a `PersistenceError`).
    """
    try:
        return str(value)
    except Exception as error:
        raise TypeError(
            f"a {type(value).__name__} has no JSON form, and its str() failed: {error!r:.200}"
        ) from error


JSON_KEY_TYPES = (str, int, float, bool, type(None))
"""The dict keys `json` writes (as text): others it refuses, or a writer makes them text."""
_KEY_TEXT = json.JSONEncoder()
"""What `json` writes for a scalar key (`True` as "true", a NaN as "NaN")."""


def check_keys_written_apart(value: Any) -> None:
    """Raises when a dict in `value` (nested ones too) has two keys JSON writes alike.

    Raises:
        PersistenceError: Two keys of one dict are written alike (see
            `refuse_keys_written_alike`).
    """
    for mapping in dicts_with_keys_made_text(value):
        refuse_keys_written_alike(mapping)


def refuse_keys_written_alike(mapping: dict[Any, Any]) -> None:
    """Raises when two keys of `mapping` are written alike in JSON.

    `1` is written "1", `None` "null", and a key JSON has no form for as its `str`.

    Raises:
        PersistenceError: Two keys are written alike: a reader would keep one of them.
    """
    written: set[str] = set()
    for key in mapping:
        kind = type(key)
        if kind is str or kind is int:  # the usual ones: as json writes them
            name = str(key) if kind is int else key
        elif isinstance(key, JSON_KEY_TYPES):
            name = key if isinstance(key, str) else _KEY_TEXT.encode(key)
        else:
            name = json_text(key)
        if name in written:
            raise _keys_written_alike(name)
        written.add(name)


def _keys_written_alike(name: str) -> PersistenceError:
    return PersistenceError(f"two dict keys are both written {name!r} in JSON: one would be lost")


def object_of_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object JSON read as `pairs`, refusing a key written twice in it.

    The `object_pairs_hook` of every reader of what this library writes (`from_json`, the
    record codec): `json` alone keeps the last value of such a key without a word, and no
    writer here writes one so (see `check_keys_written_apart`).

    Raises:
        PersistenceError: A key is written twice (the message names it).
    """
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise PersistenceError(f"the key {key!r} is written twice in one object")
            seen.add(key)
    return mapping


def finite_floats(value: Any) -> Any:
    """`value` with each float JSON has no number for (a NaN, an infinity) made its `str`.

    At any depth of dicts (their keys too), lists and tuples (made lists, as JSON writes
    them); other values are kept as they are. So strict JSON (`allow_nan=False`) takes what
    `json` alone would write as `NaN` or `Infinity`.

    Raises:
        PersistenceError: A key made its `str` is another key of its dict too (a NaN key
            beside a "nan" key, or two NaN keys): one of them would be lost.
        RecursionError: `value` nests deeper than the stack allows (or contains itself).
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        copied = {}
        for key, item in value.items():
            if isinstance(key, float) and not math.isfinite(key):
                key = str(key)
                # Another NaN key (NaNs are not equal) made the same text, or a str key.
                if key in copied or key in value:
                    raise _keys_written_alike(key)
            copied[key] = finite_floats(item)
        return copied
    if isinstance(value, list | tuple):
        return [finite_floats(v) for v in value]
    return value


def _utf8_len(text: str) -> int:
    r"""The UTF-8 byte length of `text`, a lone surrogate counting 3 bytes.

    A session keeps what tools and models gave, and that may hold half a surrogate pair
    (a tool's "half \ud83d", a JSON reply's escape): a bare `encode()` raises on it.
    """
    return len(text.encode("utf-8", "surrogatepass"))


def _fits(value: Any, spec: _Spec) -> bool:
    """Whether `value` is of a field's type (a bool is no int here, unless any value is)."""
    types = spec[0]
    if isinstance(value, bool) and bool not in types and object not in types:
        return False
    return isinstance(value, types)


def _kind(value: Any) -> str:
    """How an error message names the type of `value`."""
    return "null" if value is None else type(value).__name__


def _checked(
    data: Any, spec: dict[str, _Spec], required: tuple[str, ...], what: str
) -> dict[str, Any]:
    """A copy of the dict `data` whose fields all match `spec`, with the `required` ones.

    Raises:
        PersistenceError: When `data` is not a dict, or a field is missing, unknown or of
            the wrong type.
    """
    if not isinstance(data, dict):
        raise PersistenceError(f"a {what} must be an object, got {_kind(data)}")
    missing = [name for name in required if name not in data]
    if missing:
        raise PersistenceError(f"{what} lacks the field(s) {', '.join(map(repr, missing))}")
    unknown = sorted(str(name) for name in data if name not in spec)
    if unknown:
        raise PersistenceError(f"{what} has unknown field(s) {', '.join(map(repr, unknown))}")
    checked = dict(data)
    for name, value in data.items():
        if spec[name] is _FLOAT and type(value) is str and value in _NON_FINITE:
            checked[name] = float(value)  # as `to_json` writes a NaN or an infinity
            continue
        if not _fits(value, spec[name]):
            expected = spec[name][1]
            raise PersistenceError(f"{what} field {name!r} must be {expected}, got {_kind(value)}")
        if spec[name] is _FLOAT and isinstance(value, int):
            # A float, as the field is: an int beyond the float range would fail every
            # helper (and the next turn's timings) with an OverflowError.
            try:
                checked[name] = float(value)
            except OverflowError:
                raise PersistenceError(
                    f"{what} field {name!r} is beyond the float range (an int of "
                    f"{value.bit_length()} bits)"
                ) from None
    return checked
