"""`AgentRuntime`: the asyncio agent loop (ReAct text mode and native tool-calling mode).

Data flow of one run: backpressure check -> episodic recall into the prompt (within
`max_memory_recalls` and `max_memory_tokens`) -> working memory appended -> graph size
recorded -> Thought-Action-Observation cycles, tools dispatched through the `ToolRegistry`
(per-tool circuit breakers, capabilities, approvals, middlewares) -> metrics -> checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import itertools
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import FunctionType, MethodType
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    NamedTuple,
    Protocol,
    SupportsIndex,
    TypeVar,
    cast,
    get_args,
)

from pydantic import ValidationError

from llm_agent_runtime._copies import Unshared
from llm_agent_runtime._core import EpisodicStore, RuntimeMetrics, parse_react_step
from llm_agent_runtime._depth import MAX_ARGUMENT_DEPTH, TOO_DEEP, nested_deeper_than
from llm_agent_runtime.config import AgentConfig, check_model_params, check_unicode
from llm_agent_runtime.errors import (
    AgentLoopError,
    AgentRuntimeError,
    BackpressureShedError,
    BudgetExceededError,
    ParseError,
    PersistenceError,
    ProviderError,
    ToolError,
)
from llm_agent_runtime.events import (
    RUN_CALLBACKS,
    CheckpointSaved,
    ErrorEvent,
    Event,
    EventBus,
    LlmResponse,
    LlmTextDelta,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
    settle_callbacks,
)
from llm_agent_runtime.memory import CHARS_PER_TOKEN, fit_to_token_budget, tokens_of_chars
from llm_agent_runtime.orchestration._calls import current_task, is_async_callable
from llm_agent_runtime.orchestration._checks import (
    check_count,
    check_real,
    names_repr,
    safe_repr,
    short_repr,
)
from llm_agent_runtime.providers.base import (
    _OPEN_CALLS,
    INCOMPLETE_STOP_REASONS,
    PAUSE_STOP_REASONS,
    SAFETY_STOP_REASONS,
    ChatProvider,
    ChatResponse,
    CompletionProvider,
    CutOffArgumentsError,
    LlmProvider,
    Message,
    StreamEnd,
    TextDelta,
    ToolCall,
    ToolDefinition,
    UnreadableArgumentsError,
    Usage,
    _kind,
    _loop_message,
    cut_at_stop,
    estimated_output_tokens,
    messages_chars,
    token_limit,
    tool_definitions_chars,
)
from llm_agent_runtime.session import AgentSession, Step, message_problem, session_problem
from llm_agent_runtime.tools import (
    SHOWN_CHANGES,
    ErrorKind,
    Observation,
    ToolRegistry,
    ToolSpec,
    _copied,
    _describe,
    _truncate,
    run_blocking,
)

# The checkpoint machinery is imported where it is used, all of it behind a checkpoint
# backend: a runtime without one (and its import) never loads it.
if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from llm_agent_runtime.orchestration import BackpressureGuard, CapabilitySet, CostBudget
    from llm_agent_runtime.persistence.base import PersistenceBackend
    from llm_agent_runtime.persistence.checkpoints import (
        CheckpointStore,
        SessionState,
        StepRecord,
    )

__all__ = [
    "REMEMBERED_APPROVAL_SESSIONS",
    "AgentRuntime",
    "ApprovalDecision",
    "Middleware",
    "SupportsContent",
    "SupportsEntityCount",
    "SupportsRecall",
    "SupportsToPrompt",
]

logger = logging.getLogger("llm_agent_runtime")

# What a claim a failed run could not delete refuses (for its warning), by the run's kind.
_RUN_CLAIM_LEFT = "later runs of the session are refused until it is resumed"
_RESUME_CLAIM_LEFT = (
    "resumes of the session by other processes are refused until release_resume (or, under "
    "a lease, until it passes); the next resume in this process takes it over"
)


class SupportsContent(Protocol):
    """A recalled memory: its text is what a run's prompt shows (`Episode` is one)."""

    @property
    def content(self) -> str:
        """The memory's text."""
        ...


class SupportsRecall(Protocol):
    """An episodic store runs recall from: `EpisodicStore`, or one of the application's.

    A store with an embedder (`has_embedder` true) is also called with the request as a
    third argument, to rank by similarity to it.
    """

    def recall(self, agent_id: str, limit: int, /) -> Iterable[SupportsContent]:
        """The agent's memories, most relevant first (the first `limit` are shown)."""
        ...


class SupportsToPrompt(Protocol):
    """A working memory whose block runs append to their context (`WorkingMemory` is one)."""

    def to_prompt(self) -> str:
        """The block, as it is shown (an empty string shows nothing)."""
        ...


class SupportsEntityCount(Protocol):
    """A knowledge graph whose size runs record (`GraphStore` is one)."""

    def entity_count(self) -> SupportsIndex:
        """How many entities it holds: an int, or an integer such as numpy's."""
        ...


T = TypeVar("T")
InferFn = Callable[[str], Awaitable[str]]
"""An async model call: prompt text in, reply text out."""
_TextStream = Callable[
    [str, AgentSession, float | None, "CostBudget | None"],
    Awaitable["tuple[_ProviderReply, _Streamed]"],
]
"""A ReAct text model's call through `chat_stream` (see `AgentRuntime._text_model`): the
prompt, and the run's session, deadline and budget, in; the reply and its stream out."""
ToolRun = tuple[Observation, float, str, Any]
"""A tool call's observation, the tool's time in ms, and the name and arguments that ran."""

# How a text-mode model is asked to answer: the format the ReAct parser reads.
_REACT_FORMAT = (
    "Answer with a thought and one action, a tool call with JSON arguments:\n"
    "Thought: ...\n"
    'Action: tool_name {"argument": "value"}\n'
    "or, when you know the answer:\n"
    "Thought: ...\n"
    "Action: FINAL_ANSWER your answer"
)
_REACT_FORMAT_NO_TOOLS = "Answer with:\nThought: ...\nAction: FINAL_ANSWER your answer"
# What a ReAct prompt puts around its parts: the catalog's header, the prompt's, and the blank
# line between two parts (context, catalog, answer format, chat history, question).
_TOOLS_HEADER = "Tools:\n"
_EMPTY_REPLY_NUDGE = (
    "Your reply was empty. Call one of the tools, or reply with your final answer as text."
)
"""The corrective re-prompt of an empty native reply (`corrective_reprompt`)."""
_QUESTION = "Question: "
_PART_BREAK = "\n\n"
# Stop reasons of a reply that ended before the model finished it: at a token limit, or
# cut by the provider's content filter (OpenAI's `content_filter`).
_CO_COROUTINE = inspect.CO_COROUTINE
_NO_SPAN = contextlib.nullcontext()
REMEMBERED_APPROVAL_SESSIONS = 10_000
"""How many sessions' remembered approval decisions a runtime keeps (see `ApprovalDecision`)."""
# What the metrics count a call of an unregistered tool under: no tool is named so (names
# are letters, digits, '_' and '-'), and made-up names add no counters.
_UNKNOWN_TOOL = "(unknown tool)"
_ERROR_KINDS: tuple[str, ...] = get_args(ErrorKind)  # what `settle_call` may record
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_CANCELLED_CLEANUP_SECONDS = 1.0
"""How long the cleanup of a run cancelled from outside may take in all, when the run has no
`loop_timeout_ms`: as long as a checkpoint backend's call cancelled on a hung server."""


class _DeadlinePassed(Exception):
    """The loop found the run's deadline passed before a step (`_run` reports the timeout)."""


_DEADLINE_PASSED = "the run's loop_timeout_ms passed"
"""The status of a span that `_DeadlinePassed` ends (the run's error names the timeout)."""


_DEADLINE_SCOPE: contextvars.ContextVar[asyncio.Timeout | None] = contextvars.ContextVar(
    "_DEADLINE_SCOPE", default=None
)
"""The `asyncio.timeout` scope of the innermost `_within_deadline` running in this context
(a parallel round's call tasks see it too): read only when a call is cut off, to tell the
run's `loop_timeout_ms` from a cancellation from outside."""

_RUN_TRACER: contextvars.ContextVar[Any] = contextvars.ContextVar("_RUN_TRACER", default=None)
"""The tracer of the run in progress in this context (None: the run has no span). A run
started before tracing was switched on (see `_run_span`) makes no span of its calls either:
they would be roots of traces of their own."""

_RUN_TASK: contextvars.ContextVar[asyncio.Task[Any] | None] = contextvars.ContextVar(
    "_RUN_TASK", default=None
)
"""The task of the run in progress in this context (a parallel round's call tasks see it
too): read only when a journal write is cut off, to tell a cancellation of the run (from
outside, or its `loop_timeout_ms`) from a call its round cancelled."""


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    """What an approval handler decided about one tool call.

    Attributes:
        action: `approve`, `deny`, or `edit` (run with `arguments` instead).
        arguments: The edited arguments, for `edit`.
        reason: Told to the model when the call is denied.
        remember: Reuse this decision for later calls of the same tool in the session (an
            edit: for later calls with the same arguments). Of two remembered decisions that
            answer a call, a denial of the tool comes first, then an edit of these
            arguments, then an approval of the tool. A runtime remembers the
            decisions of its `REMEMBERED_APPROVAL_SESSIONS` most recently run sessions (the
            handler is asked again in an older one), so one-off runs cannot pile them up.

    Raises:
        AgentRuntimeError: `action` is none of the three, an `edit` has no `arguments`, or
            `remember` is not a bool.
    """

    action: Literal["approve", "deny", "edit"]
    arguments: Any = None
    reason: str = ""
    remember: bool = False

    def __post_init__(self) -> None:
        if self.action not in ("approve", "deny", "edit"):  # a typo must not approve
            raise AgentRuntimeError(
                f"approval action must be 'approve', 'deny' or 'edit', got {self.action!r}"
            )
        if self.action == "edit" and self.arguments is None:  # the call would run without
            raise AgentRuntimeError(
                "an 'edit' approval needs the arguments to run the call with ({} for none)"
            )
        if type(self.remember) is not bool:  # "no" would read as true: remembered for good
            raise AgentRuntimeError(
                f"approval remember must be True or False, got {short_repr(self.remember)}"
            )


class _Shown(NamedTuple):
    """The memories a run's context shows, counted once the run starts (`_count_shown`)."""

    store: EpisodicStore | None
    """An `EpisodicStore` that counts each memory's recalls (`mark_recalled`), else None."""
    ids: list[int]
    """The ids of its memories shown."""
    hits: int
    """How many memories are shown: the session's memory hits."""


@dataclass(frozen=True, slots=True)
class _DurableRun:
    """A checkpointed run in progress: its id, the steps before it, what it started with."""

    run: str | None
    """The run's id: its journal entries name it (another run's entries are stale)."""
    first: int
    """How many steps the session had when the run started."""
    start: dict[str, Any]
    """Saved with the run's first step (`StepRecord.run_start`)."""
    logged: set[tuple[Any, ...]] = field(default_factory=set)
    """What the event log holds of the interrupted step a resume continues from its journal
    (`_logged_of`): what the resume reuses is logged (and emitted) only if the log lacks it."""


ApprovalHandler = Callable[
    [AgentSession, str, Any], "ApprovalDecision | Awaitable[ApprovalDecision]"
]
"""`(session, tool name, arguments) -> ApprovalDecision`, sync or async."""


TextRewrite = str | None | Awaitable[str | None]
"""What a text hook of a `Middleware` returns: the new text, or None to keep it (or an
awaitable of either: an async hook)."""
CallRewrite = tuple[str, Any] | None | Awaitable[tuple[str, Any] | None]
"""What `Middleware.on_tool_call` returns: `(tool name, arguments)`, or None to keep the
call (or an awaitable of either)."""


class Middleware:
    """Base of middlewares; override any hook. A hook returning None keeps the value.

    A hook is overridden in a subclass or set on an instance (`self.on_post_llm = ...`, which
    type checkers refuse as an assignment to a method: a subclass is the typed way); the
    runtime takes a middleware's hooks when it is built (a hook set later is not seen).
    Hooks may be sync or async. `on_tool_call` returns `(tool name, arguments)` or None.
    """

    @safe_repr
    def __repr__(self) -> str:
        hooks = [
            h for h in _HOOKS if getattr(getattr(self, h), "__func__", None) is not _BASE_HOOKS[h]
        ]
        return f"{type(self).__name__}(hooks={hooks})"

    def on_user_message(self, session: AgentSession, text: str) -> TextRewrite:
        """Sees (and may rewrite) the user's prompt before the run."""
        return None

    def on_pre_llm(self, session: AgentSession, prompt: str) -> TextRewrite:
        """Sees (and may rewrite) the prompt of a text-mode model call."""
        return None

    def on_post_llm(self, session: AgentSession, text: str) -> TextRewrite:
        """Sees (and may rewrite) the model's reply text.

        The rewrite is what the run acts on and what `LlmResponse` carries; `LlmTextDelta`
        events carry the model's text as it came (a stream's pieces arrive before the whole
        reply the hook sees), so a hook that redacts must not count on them being redacted.
        """
        return None

    def on_tool_call(self, session: AgentSession, tool: str, arguments: Any) -> CallRewrite:
        """Sees (and may rewrite) a tool call before it runs."""
        return None


_HOOKS = ("on_user_message", "on_pre_llm", "on_post_llm", "on_tool_call")
"""The hooks of a `Middleware`, in the order a run calls them."""
_BASE_HOOKS = {hook: getattr(Middleware, hook) for hook in _HOOKS}
"""`Middleware`'s own hooks (which do nothing), by name."""


def _overridden_hook(middleware: Middleware, hook: str) -> Callable[..., Any] | None:
    """The middleware's `hook`, or None when it is `Middleware`'s own (which does nothing).

    A hook may be overridden in the middleware's class (or a base), or set on the instance
    (`self.on_post_llm = ...`): both run.

    Raises:
        AgentRuntimeError: The hook is not callable (`self.on_pre_llm = None`, say).
    """
    value: Callable[..., Any] = getattr(middleware, hook)
    if getattr(value, "__func__", None) is getattr(Middleware, hook):
        return None
    if not callable(value):
        raise AgentRuntimeError(
            f"middleware {type(middleware).__name__}'s {hook} must be callable, got {_kind(value)}"
        )
    return value


def _unbound(cls: type, method: str) -> bool:
    """Whether `method` of class `cls` needs an instance.

    A classmethod or staticmethod works on the class itself.
    """
    raw = inspect.getattr_static(cls, method, None)
    if (
        isinstance(raw, (classmethod, staticmethod))
        or type(raw).__name__ == "classmethod_descriptor"
    ):
        return False
    return inspect.isfunction(raw) or inspect.ismethoddescriptor(raw)


def _saved_working_memory(memory: Any, session_id: str) -> list[list[Any]] | None:
    """Working memory's entries as a final checkpoint keeps them (for reading, not loaded).

    Those `items()` gives as (key, value) pairs (or as a mapping): None for a working memory
    of its own without such a method (only `to_prompt` is needed of one), or whose `items`
    fails. A
    value no record can hold (one that holds itself, say) is kept as the prompt showed it,
    its `str`: neither must fail the checkpoint of a run that did its work.
    """
    from llm_agent_runtime.persistence.checkpoints import stored_form

    items = getattr(memory, "items", None)
    if not callable(items):
        return None
    try:
        entries = items()
        if isinstance(entries, Mapping):  # the entries themselves, not their pairs
            entries = entries.items()
        pairs = [(key, value) for key, value in entries]
    except Exception as error:  # its own method: anything may go wrong in it
        logger.warning(
            "working memory entries of session %s not saved: %s.items failed: %r",
            session_id,
            _kind(memory),
            error,
        )
        return None
    saved = []
    for key, value in pairs:
        try:
            kept = stored_form(value)
        except Exception:  # a value's own `__str__` may raise anything
            try:
                kept = str(value)
            except Exception:  # nor is its `str` needed to go on
                kept = f"<a {type(value).__name__} that cannot be saved>"
        saved.append([key, kept])
    return saved


def _check_agent_id(agent_id: Any) -> None:
    """Refuses an `agent_id` that is not a non-empty string of valid Unicode.

    The metrics (Rust) count by agent, and refuse a lone surrogate: found there, at the
    first tool call, it would fail a run whose model was already paid.

    Raises:
        AgentRuntimeError: Saying what is wrong.
    """
    if not isinstance(agent_id, str) or not agent_id:
        raise AgentRuntimeError("agent_id must be a non-empty string")
    try:
        check_unicode("agent_id", agent_id)
    except ValueError as error:
        raise AgentRuntimeError(str(error)) from None


def _required(name: str, value: Any, methods: Sequence[str]) -> None:
    # A class given for an instance: its methods would be called unbound and fail.
    if isinstance(value, type) and any(_unbound(value, m) for m in methods):
        raise AgentRuntimeError(
            f"{name} must be an instance, got the class {value.__name__} (call it: "
            f"{value.__name__}(...))"
        )
    missing = [m for m in methods if not callable(getattr(value, m, None))]
    if missing:
        raise AgentRuntimeError(
            f"{name} must provide {', '.join(methods)}; "
            f"{type(value).__name__} lacks {', '.join(missing)}"
        )


class AgentRuntime(Unshared):
    """Runs agents: the ReAct / tool-calling loop with memory, tools, policies and checkpoints.

    With OpenTelemetry installed (the `otel` extra) and a tracer provider set, each run is
    an `agent.run` span (`agent_id`, `session_id`), its checkpoint writes and, for a failed
    run, its last save and `ErrorEvent` included; each model call an `agent.llm` span
    (`gen_ai.request.model`, `gen_ai.response.model` and the `gen_ai.usage.*` tokens the
    provider reported) and each tool call an `agent.tool` span (`tool`; `tool.error_kind`
    when it failed). A failed or cancelled call or run has the error status.

    Args:
        config: Loop settings (defaults to `AgentConfig()`); may be replaced between runs.
        memory: Episodic store (`SupportsRecall`: `recall(agent_id, limit)`, e.g.
            `EpisodicStore`, returning memories with a string `content`); one with an
            embedder (`has_embedder`) recalls the memories most similar to the request too.
            (An `EpisodicStore` or `GraphStore` in use by another thread at a `fork()`
            hangs the child's first call on it: see their docs.)
            A recalled memory that is blank is skipped (neither shown nor counted as a hit;
            it still took one of the `max_memory_recalls` slots, as the store ranks first).
        working_memory: Key-value memory (`SupportsToPrompt`, e.g. `WorkingMemory`) whose
            `to_prompt()` block (a string) is appended, as it is, to the run's context
            (`WorkingMemory`'s starts with its own `Working memory:` header). It is read
            once, when a run starts: each prompt of the run holds that snapshot (a resumed
            run too, as saved when it started), and entries set while the run goes on (by a
            tool, say) show from the next run on.
        graph: Knowledge graph (`SupportsEntityCount`: `entity_count()`, e.g. `GraphStore`),
            whose size is recorded per session.
        tools: `ToolSpec`s or a `ToolRegistry`.
        backpressure: Sheds runs beyond its capacity.
        metrics: Counters (a fresh `RuntimeMetrics` by default). Calls of a tool that is not
            registered (a name the model made up) count under one name, `(unknown tool)`:
            the per-tool counters (and their Prometheus series) stay as few as the tools.
        checkpoint_backend: Makes runs durable: each step is saved as `session:<id>:step:<n>`
            (what the step added), each tool call is journaled, the events are logged (all
            but `LlmTextDelta` and `CheckpointSaved`: see `session_events`), and the
            whole session is saved as `session:<id>` at the end; `resume` continues a run
            that was interrupted. In keys, `%` and `:` of an id are escaped as `%25` and
            `%3A` (see `persistence.base.escape_session_id`): ids may hold any text.
        resume_lease_seconds: A lease on the claim of each run `resume` continues (None,
            the default: no lease; at least 0.1 s). The claim then expires this many seconds
            (wall clock) after it was written; the resumed run renews it every third of that
            while it goes on, and a worker of any host takes over a claim whose lease
            passed, so a worker that died mid-resume (a pod gone) blocks its session no
            longer than the lease. Hosts' clocks must agree to well within it. A run whose
            claim was taken over (it stalled longer than the lease) stops with a
            `PersistenceError` at its next renewal, or at its next write, whichever comes
            first: once two thirds of its lease are gone unrenewed, a write first checks the
            claim (and renews it), so such a run writes nothing over its taker's records. A
            write already sent when it stalled may still land; the tool-call journal keeps
            at-most-once tools safe. See `CheckpointStore.claim_resumed`.
        middlewares: Hooks that may rewrite prompts, replies and tool calls.
        approval_handler: Approves, denies or edits tool calls.
        capabilities: Tools allowed and action limit, checked per call; a round of
            parallel calls takes its actions all or none (`record_actions(n)`, when the
            object has it, else `record_action()` per call). Its state keys are the
            application's to check (`check_state_key`, in a tool, say): the loop reads and
            writes no state by key.
        budget: Token / cost budget, checked before each model call and charged as soon as
            it returns (before the `on_post_llm` hooks): with its tokens, and with its cost
            as the provider priced it (`Usage.cost_usd`: give the provider its token
            prices, e.g. `input_cost_per_million`). A call the run cuts (at its
            `loop_timeout_ms`, or a cancel) is charged the usage the server had reported,
            including failed attempts its provider had billed (the package's providers
            hand it over with `bill_caller`).

    Raises:
        AgentRuntimeError: On misconfiguration (wrong types, missing methods).
    """

    def __init__(
        self,
        config: AgentConfig | None = None,
        *,
        memory: SupportsRecall | None = None,
        working_memory: SupportsToPrompt | None = None,
        graph: SupportsEntityCount | None = None,
        tools: Iterable[ToolSpec] | ToolRegistry | None = (),
        backpressure: BackpressureGuard | None = None,
        metrics: RuntimeMetrics | None = None,
        checkpoint_backend: PersistenceBackend | None = None,
        resume_lease_seconds: float | None = None,
        middlewares: Iterable[Middleware] | None = (),
        approval_handler: ApprovalHandler | None = None,
        capabilities: CapabilitySet | None = None,
        budget: CostBudget | None = None,
    ) -> None:
        self.config = AgentConfig() if config is None else config  # checked by the setter
        if checkpoint_backend is not None:
            _required(
                "checkpoint_backend",
                checkpoint_backend,
                ["save", "load", "delete", "batch_save", "batch_load", "list_keys"],
            )
        if resume_lease_seconds is not None and checkpoint_backend is None:
            raise AgentRuntimeError("resume_lease_seconds needs a checkpoint_backend")
        if isinstance(middlewares, Middleware):
            raise AgentRuntimeError("middlewares must be a list of Middleware, got one Middleware")
        try:
            listed = iter(middlewares or ())
        except TypeError:
            raise AgentRuntimeError(
                f"middlewares must be a list of Middleware, got {type(middlewares).__name__}"
            ) from None
        middlewares = tuple(listed)  # read once: a generator is read to its end
        for middleware in middlewares:
            if isinstance(middleware, type) and issubclass(middleware, Middleware):
                raise AgentRuntimeError(
                    "middlewares must be Middleware instances, got the class "
                    f"{middleware.__name__} (call it: {middleware.__name__}())"
                )
            if not isinstance(middleware, Middleware):
                raise AgentRuntimeError(
                    f"middlewares must subclass Middleware, got {type(middleware).__name__}"
                )
        # Each checked by its property's setter.
        self.tools = tools
        self.memory = memory
        self.working_memory = working_memory
        self.graph = graph
        self.backpressure = backpressure
        self.metrics = metrics if metrics is not None else RuntimeMetrics()
        self._checkpoint_backend = checkpoint_backend
        self._checkpoints: CheckpointStore | None = None
        if checkpoint_backend is not None:  # a backend holding nothing may be falsy
            from llm_agent_runtime.persistence.checkpoints import CheckpointStore

            try:
                self._checkpoints = CheckpointStore(checkpoint_backend, resume_lease_seconds)
            except PersistenceError as error:  # a lease that is not valid: misconfiguration
                raise AgentRuntimeError(str(error)) from None
        # Events waiting to be written to the event log with the next checkpoint, by session.
        self._event_log: dict[str, list[Event]] = {}
        # Steps whose checkpoint failed, by session: (first step number, records).
        self._unsaved_steps: dict[str, tuple[int, list[StepRecord]]] = {}
        # When the cleanup of a failed run must end, by session (see `_cleanup_seconds`).
        self._cleanup_deadlines: dict[str, float] = {}
        # Checkpointed runs in progress, by session.
        self._durable_runs: dict[str, _DurableRun] = {}
        # Resumed runs under a lease, in progress, by session: the task each runs in, and
        # the error of its claim, once lost (see `_unless_resume_lost`).
        self._resume_leases: dict[str, tuple[asyncio.Task[Any], list[PersistenceError]]] = {}
        self._approval_handler: ApprovalHandler | None = None
        self._capabilities: CapabilitySet | None = None
        self._guarded = False
        self.budget = budget  # checked by the property's setter
        self.events = EventBus()
        """Subscribe with `runtime.events.subscribe()` or `runtime.events.on(callback)`."""
        # Only hooks a middleware overrides (in its class, a base, or on the instance) cost a
        # call per step.
        self._hooks = {
            hook: [h for m in middlewares if (h := _overridden_hook(m, hook)) is not None]
            for hook in _HOOKS
        }
        # What the model is shown of the tools; rebuilt at a run's start when tools were
        # registered since (`_refresh_tools`).
        self._tool_definitions: list[ToolDefinition] = []
        self._tool_definitions_chars = 0
        self._tool_catalog = ""
        self._tool_names: frozenset[str] = frozenset()
        self._tools_seen: tuple[ToolRegistry | None, int, int] = (None, 0, 0)
        self._refresh_tools()
        # Sessions with a run in progress: a session runs one turn at a time.
        self._running: set[str] = set()
        # Sessions whose run's turn is over (its answer final) and has not let go of them
        # yet: the callers waiting to run the next turn.
        self._finishing: dict[str, _Finishing] = {}
        self._tracer = _load_tracer()
        # No tracer provider set yet: each run looks again until one is (`_tracer_awaited`).
        self._awaiting_tracer = self._tracer is None and _tracer_awaited()
        # Per session: remembered decisions (by tool, or by tool and arguments for an edit),
        # and, while it runs, one lock per tool so that a tool's approval is asked once at a
        # time (a lock is its run's: the next run may be on another event loop).
        self._approvals: dict[str, dict[str | tuple[str, str], ApprovalDecision]] = {}
        self._approval_locks: dict[str, dict[str, asyncio.Lock]] = {}
        self.approval_handler = approval_handler
        self.capabilities = capabilities
        if self._checkpoints is not None:  # a recorder: the log is no listener (no deltas)
            self.events._add_recorder(self._log_event)

    @property
    def config(self) -> AgentConfig:
        """Loop settings; may be replaced between runs (a run under way may read either).

        Raises:
            AgentRuntimeError: On setting one that is not an `AgentConfig`, or not a valid
                one (`model_copy(update=...)` skips validation); the config set stays.
        """
        return self._config

    @config.setter
    def config(self, config: AgentConfig) -> None:
        if not isinstance(config, AgentConfig):
            raise AgentRuntimeError(f"config must be an AgentConfig, got {type(config).__name__}")
        config = _checked_config(config)
        # Sent with every model call; replies are also cut there, for models that ignore them.
        # Kept with the config they come from: a config set between runs brings its own (a
        # plain attribute kept the first config's stop sequences for every later one).
        self._stops = list(config.stop_sequences)
        self._config = config

    @property
    def approval_handler(self) -> ApprovalHandler | None:
        """Approves, denies or edits tool calls; may be set or cleared between runs.

        A round of tool calls asks the handler set when its calls were guarded, all of them,
        even if it is replaced or cleared while they wait to be asked. Setting another
        handler (or None) drops every session's remembered decisions (`remember=True`):
        they were the former handler's, and the new one decides for itself.
        """
        return self._approval_handler

    @approval_handler.setter
    def approval_handler(self, handler: ApprovalHandler | None) -> None:
        if isinstance(handler, type):
            # Calling a class makes an instance of it, never an `ApprovalDecision`: found
            # only at the first tool call, after the model was paid.
            raise AgentRuntimeError(
                f"approval_handler must be a function or an instance, got the class "
                f"{handler.__name__} (call it: {handler.__name__}())"
            )
        if handler is not None and not callable(handler):
            raise AgentRuntimeError("approval_handler must be callable")
        if not _same_handler(handler, self._approval_handler):
            self._approvals.clear()
        self._approval_handler = handler
        self._update_guarded()

    @property
    def budget(self) -> CostBudget | None:
        """Token / cost budget of model calls (see the class docstring); may be set between runs.

        A run checks and charges the budget it started with, even if it is replaced
        meanwhile.

        Raises:
            AgentRuntimeError: On setting one without `record` and `check` methods (or its
                class).
        """
        return self._budget

    @budget.setter
    def budget(self, budget: CostBudget | None) -> None:
        if budget is not None:
            _required("budget", budget, ["record", "check"])
        self._budget = budget

    @property
    def capabilities(self) -> CapabilitySet | None:
        """Tools allowed and action limit, checked per call; may be set between runs."""
        return self._capabilities

    @capabilities.setter
    def capabilities(self, capabilities: CapabilitySet | None) -> None:
        if capabilities is not None:
            _required("capabilities", capabilities, ["check_tool", "record_action"])
        self._capabilities = capabilities
        self._update_guarded()

    def _update_guarded(self) -> None:
        # Whether a tool call passes capabilities, middlewares or an approval before it runs:
        # kept in a flag, since every call asks.
        self._guarded = bool(
            self._capabilities is not None
            or self._hooks["on_tool_call"]
            or self._approval_handler is not None
        )

    @safe_repr
    def __repr__(self) -> str:
        # Computed when asked: nothing is kept for it. The backend shows by its own repr,
        # which never holds a password (a DSN's, a URL's).
        config = self._config
        return (
            f"AgentRuntime(mode={config.mode!r}, model={short_repr(config.model)}, "
            f"tools={names_repr(self._tools._tools)}, "
            f"checkpoint_backend={short_repr(self.checkpoint_backend, 200)})"
        )

    # ------------------------------------------------------------------ public API
    async def run_agent(
        self,
        agent_id: str,
        prompt: str,
        infer: InferFn,
        *,
        session: AgentSession | None = None,
    ) -> AgentSession:
        """Runs the ReAct text loop with `infer` as the model.

        Args:
            agent_id: Whose memories are recalled.
            prompt: The user's request.
            infer: Async `prompt -> reply text` (an `async def`, or a callable returning an
                awaitable).
            session: A session to fill; a session runs one turn at a time. Its state stays
                consistent if the run is cancelled or fails: the tool calls of the round it
                ended in each keep a step, numbered as their events were, whose observation
                says how the call ended (in a run with checkpoints, `resume` makes them, from
                the round's journal). A call that had not started says so: it never ran, so
                it has no tool call events and counts in no tool call metric.

        Returns:
            The finished session: `session` itself when given. A turn another caller starts
            on it once this run's turn is over (on `RunFinished`, say: see `events`) may
            be under way as the caller reads it; `run_turn` returns its own turn's answer.

        Raises:
            AgentRuntimeError: A bad argument (checked before the run takes a slot): an
                `agent_id` that is not a non-empty string of valid Unicode, a `prompt` that
                is not a string, a `session` that is not an `AgentSession`, has a field of
                the wrong type or a malformed chat message (see `session.message_problem`),
                or is another agent's, an `infer` that is None or not callable; or `session`
                is already running a turn (a turn that is over, its final checkpoint being
                written, is waited for on its event loop). A synchronous `infer` (telling it
                apart takes a call) fails the run as it first returns no awaitable, with this
                error too.
            BackpressureShedError: The runtime is at capacity.
            AgentLoopError: Unparseable model output, a reply that is not a string, or the
                loop timeout elapsed.
            PersistenceError: The final checkpoint (the session's own record) could not be
                saved. Step records whose saves failed go with it; if that write fails, the
                session's record (which holds every step) is saved with the steps folded into
                one base record (`fork` and `prune` read it), and the failure is logged and
                counted in `checkpoint_errors`, not raised.
            BudgetExceededError: The `budget` was spent (before a call, or by one).
            PolicyDeniedError: The `capabilities` refused a call, or its action limit was
                reached.
            Exception: What `infer`, a middleware hook, the approval handler or a sync event
                callback raised, as it is (a tool's exception is an observation instead).
        """
        return await self._run(agent_id, prompt, infer, None, session)

    async def run_agent_with_provider(
        self,
        agent_id: str,
        prompt: str,
        provider: ChatProvider | CompletionProvider,
        *,
        session: AgentSession | None = None,
    ) -> AgentSession:
        """Runs the loop on an `LlmProvider`: text ReAct, or native tools (`config.mode`).

        Any object with the methods the mode calls will do (`ChatProvider`: a `chat`
        method; for the ReAct mode, `CompletionProvider`'s `complete` is enough).

        A text model is asked through `chat` (or `complete`, for a provider without `chat`).
        While the run's events are listened to (`EventBus.listening`), a provider that can
        stream (a `chat_stream` method, and no `streams_text = False`) is asked through
        `chat_stream` instead, in either mode: its text reaches `LlmTextDelta` listeners as
        it arrives (a reply that is not streamed is one delta).
        A reply that stopped before it was complete (stop reason `length`, `max_tokens`,
        `model_context_window_exceeded` or `content_filter`) is never taken as a final
        answer or a tool's input: unless the step in it ended before the cut (a ReAct reply
        that went on past its action), the run fails with `AgentLoopError`, also when a
        native tool call's arguments were cut off. Native tool calls whose arguments arrived
        whole still run, except in a reply the content filter stopped: nothing in that one
        runs. Nor in a refusal (stop reason `refusal`: Anthropic's safety stop, or an OpenAI
        refusal), which is no final answer either: `AgentLoopError` quotes what it said.
        Calls of one reply that share an id (a server's slip) each get their own: a later
        one is renamed `<id>_<position>`, in the steps and in what the model is sent back.

        Raises:
            AgentRuntimeError: `provider` lacks a method the mode needs (`chat`, or
                `complete` for a text model without stop sequences), a reply's usage has a
                cost (`Usage.cost_usd`) that is NaN, infinite or below 0 (with or without a
                budget), or as `run_agent`.
            AgentLoopError: As `run_agent`, or the reply that would end the run or name a
                tool's input was cut off (see above).
            ProviderError: The model call failed, after the provider's retries (`retryable`
                says whether a later run may succeed).
            BudgetExceededError: As `run_agent`; so are `PolicyDeniedError`,
                `PersistenceError`, `BackpressureShedError`, and what a hook or callback
                raised.
        """
        self._check_provider(provider)
        if self._config.mode == "tools":
            chat = cast("ChatProvider", provider)  # it has `chat`: checked just above
            return await self._run(agent_id, prompt, None, chat, session)
        infer, stream = self._text_model(provider)
        return await self._run(agent_id, prompt, infer, None, session, stream=stream)

    @property
    def memory(self) -> SupportsRecall | None:
        """The episodic store runs recall from (None for none).

        It may be replaced between runs, and is checked as the constructor checks it.

        Raises:
            AgentRuntimeError: On setting one without a `recall` method.
        """
        return self._memory

    @memory.setter
    def memory(self, memory: SupportsRecall | None) -> None:
        if memory is not None:
            _required("memory", memory, ["recall"])
        self._memory = memory

    @property
    def tools(self) -> ToolRegistry:
        """The tools runs may call.

        It may be replaced between runs by a `ToolRegistry` or `ToolSpec`s (made a
        registry), checked as the constructor checks them.

        Raises:
            AgentRuntimeError: On setting one `ToolSpec` rather than a list of them, or
                something that is neither a registry nor an iterable.
            ToolError: On setting a list with a non-`ToolSpec` or two tools of one name.
        """
        return self._tools

    @tools.setter
    def tools(self, tools: Iterable[ToolSpec] | ToolRegistry | None) -> None:
        if isinstance(tools, ToolSpec):
            raise AgentRuntimeError(f"tools must be a list of ToolSpec, got one ({tools.name!r})")
        if not isinstance(tools, ToolRegistry):
            try:
                listed = iter(tools or ())
            except TypeError:
                raise AgentRuntimeError(
                    f"tools must be a list of ToolSpec or a ToolRegistry, got {_kind(tools)}"
                ) from None
            tools = ToolRegistry(listed)
        self._tools = tools

    @property
    def working_memory(self) -> SupportsToPrompt | None:
        """The working memory whose `to_prompt()` block runs show (None for none).

        It may be replaced between runs, and is checked as the constructor checks it.

        Raises:
            AgentRuntimeError: On setting one without a `to_prompt` method.
        """
        return self._working_memory

    @working_memory.setter
    def working_memory(self, working_memory: SupportsToPrompt | None) -> None:
        if working_memory is not None:
            _required("working_memory", working_memory, ["to_prompt"])
        self._working_memory = working_memory

    @property
    def graph(self) -> SupportsEntityCount | None:
        """The knowledge graph whose size runs record (None for none).

        It may be replaced between runs, and is checked as the constructor checks it.

        Raises:
            AgentRuntimeError: On setting one without an `entity_count` method.
        """
        return self._graph

    @graph.setter
    def graph(self, graph: SupportsEntityCount | None) -> None:
        if graph is not None:
            _required("graph", graph, ["entity_count"])
        self._graph = graph

    @property
    def backpressure(self) -> BackpressureGuard | None:
        """The guard runs take a slot of (None for none).

        It may be replaced between runs, and is checked as the constructor checks it.

        Raises:
            AgentRuntimeError: On setting one without `acquire` and `release` methods.
        """
        return self._backpressure

    @backpressure.setter
    def backpressure(self, backpressure: BackpressureGuard | None) -> None:
        if backpressure is not None:
            _required("backpressure", backpressure, ["acquire", "release"])
        self._backpressure = backpressure

    @property
    def metrics(self) -> RuntimeMetrics:
        """The counters runs record into.

        It may be replaced by another `RuntimeMetrics` (to start counting afresh). A run
        keeps its session, step and token counts in the one it started with; its later tool
        calls (each with its failure), recalls and checkpoint errors count in the new one.

        Raises:
            AgentRuntimeError: On setting anything else.
        """
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: RuntimeMetrics) -> None:
        if not isinstance(metrics, RuntimeMetrics):
            raise AgentRuntimeError(
                f"metrics must be a RuntimeMetrics, got {type(metrics).__name__}"
            )
        self._metrics = metrics

    @property
    def checkpoint_backend(self) -> PersistenceBackend | None:
        """The backend runs are checkpointed in (None for none).

        It is fixed at construction: a run's records, claims and event log stay in one store.

        Raises:
            AgentRuntimeError: On setting it.
        """
        return self._checkpoint_backend

    @checkpoint_backend.setter
    def checkpoint_backend(self, backend: PersistenceBackend | None) -> None:
        raise AgentRuntimeError(
            "checkpoint_backend is fixed when the runtime is made: make another AgentRuntime "
            "for another backend"
        )

    def create_session(self, agent_id: str, session_id: str | None = None) -> AgentSession:
        """Starts a multi-turn session (chat history kept across `run_turn` calls).

        `session_id` None or "" gives the session a fresh id.

        Raises:
            AgentRuntimeError: `agent_id` is not a non-empty string of valid Unicode (no
                lone surrogate), or `session_id` is neither None nor a string.
        """
        _check_agent_id(agent_id)
        if session_id is None or session_id == "":
            session_id = new_session_id()
        elif not isinstance(session_id, str):
            raise AgentRuntimeError(f"session_id must be None or a string, got {_kind(session_id)}")
        else:  # refused now, as `agent_id` is: no checkpoint key could hold it
            try:
                check_unicode("session_id", session_id)
            except ValueError as error:
                raise AgentRuntimeError(str(error)) from None
        return AgentSession(session_id=session_id, agent_id=agent_id)

    async def run_turn(
        self,
        session: AgentSession,
        message: str,
        provider: ChatProvider | CompletionProvider | InferFn,
    ) -> str | None:
        """Runs one turn of a multi-turn session; returns the turn's final answer.

        The answer is this turn's own, even when an async event callback the run waited for
        ran the session's next turn meanwhile (`session.final_answer` is that turn's then).

        The history is trimmed to `config.context_window_tokens` (about 4 characters a
        token), dropping oldest turns first (its system messages are kept: see
        `trim_history`). A session runs one turn at a time.
        Once the turn's final answer is in `session.final_answer`, the turn is in
        `session.messages` too, even if a timeout or a cancellation ends the run after it.

        Each turn checks the whole session (its steps and messages, which the application
        may have changed) and, with a checkpoint backend, writes it whole as the turn's
        final checkpoint: a turn's own cost grows with the session's length (in ReAct mode,
        about 0.8 ms at 100 earlier turns and 6 ms at 1,000; with SQLite checkpoints, 10 and
        80 ms). A chat of thousands of turns does better as a new session carrying a summary.

        A tool exchange in the history (see `session.message_problem`) is sent as one in
        tools mode: the assistant message's tool calls, and each tool message with the id of
        the call it answers. Providers refuse a tool result that answers no call and a call
        left unanswered, so such a history is refused before the turn starts: a tool message
        without a `tool_call_id` is an error in tools mode, not sent as text. In ReAct mode
        the calls are shown as `Action:` lines, and every tool message as its text (a
        message's later lines indented, so that none reads as a line of the prompt's own).

        Raises:
            AgentRuntimeError: `session` is not an `AgentSession`, has a field of the wrong
                type (as `AgentSession.from_dict` checks them), or is already running a
                turn, its messages are malformed (in tools mode: a tool message answers no
                call of the assistant message before it, or a call is left unanswered),
                `message` is not a string, or `provider` is neither a provider nor an async
                callable.
            AgentLoopError: As `run_agent_with_provider`, which raises `ProviderError`,
                `BudgetExceededError`, `PolicyDeniedError`, `PersistenceError` and
                `BackpressureShedError` too, and what a hook or callback raised, as it is.
        """
        if not isinstance(session, AgentSession):
            raise AgentRuntimeError(
                f"session must be an AgentSession (see create_session), got {_kind(session)}"
            )
        _check_messages_list(session, "")
        if not isinstance(message, str):
            raise AgentRuntimeError(f"message must be a string, got {_kind(message)}")
        history = self.trim_history(session.messages)
        agent_id = session.agent_id
        # The turn's own answer: by the time the run returns, a callback it waited for may
        # have run the next turn, and `session.final_answer` be that turn's.
        answer: list[str | None] = []
        if _is_infer(provider):
            await self._run(agent_id, message, provider, None, session, history, None, answer)
        else:
            self._check_provider(provider)
            if self._config.mode == "tools":
                _check_tool_exchanges(session.messages)
                chat = cast("ChatProvider", provider)  # it has `chat`: checked just above
                await self._run(agent_id, message, None, chat, session, history, None, answer)
            else:
                infer, stream = self._text_model(provider)
                await self._run(
                    agent_id, message, infer, None, session, history, None, answer, stream=stream
                )
        return answer[0]

    def _check_provider(self, provider: Any) -> None:
        """Raises `AgentRuntimeError` when `provider` lacks the method this runtime calls.

        That is `chat` when it has one (a text model is asked through it too: see
        `_text_model`), else `chat` in tools mode or with stop sequences, else `complete`;
        and a provider's class given for an instance is refused.
        """
        chat = getattr(provider, "chat", None)
        if type(chat) is MethodType and not isinstance(provider, type):
            return  # the usual provider: an instance with a `chat` method (checked per run)
        if callable(chat):
            method = "chat"
        else:
            method = "chat" if self._config.mode == "tools" or self._stops else "complete"
        _required("provider", provider, [method])

    def _call_params(self) -> dict[str, Any]:
        """The keyword arguments of a run's model calls: model, stop sequences, model_params.

        Built once per run (not per step): a call passes them on as they are.
        """
        config = self._config
        params: dict[str, Any] = {"model": config.model}
        if self._stops:
            params["stop"] = self._stops
        if config.model_params:
            # Read at each run, so checked here too: the dict can be changed in place.
            _check_model_params(config.model_params)
            params.update(config.model_params)
        return params

    def _text_model(
        self, provider: ChatProvider | CompletionProvider
    ) -> tuple[InferFn, _TextStream | None]:
        """The provider as a ReAct text model: one user prompt in, the reply's text out.

        Asked through a one-message `chat` when the provider has one: it carries the stop
        sequences and `model_params`, and each reply comes back as a `_ProviderReply`, with
        the provider's stop reason (which tells a reply that was cut off) and token usage
        (which the run charges instead of an estimate). A provider with `complete` alone is
        asked through that (its text alone: its tokens are estimated).

        Returned with the same call through `chat_stream` (see `_chat_stream`), which the
        loop makes instead while the run's events are listened to: None for a provider that
        does not stream (see `_streams_text`) or has no `chat`.

        Raises:
            AgentRuntimeError: The provider has no `chat` to take `config.model_params`.
        """
        if not callable(getattr(provider, "chat", None)):
            if self._config.model_params:
                raise AgentRuntimeError(
                    "config.model_params need a provider with a chat method "
                    f"({type(provider).__name__} has only complete)"
                )
            # A partial of an async method is seen as async (no adapter frame per step).
            text_model = cast("CompletionProvider", provider)  # no `chat`: it has `complete`
            return functools.partial(text_model.complete, model=self._config.model), None
        chat = _async_chat(provider)
        params = self._call_params()
        requested = None if self._config.model else _requested_model(None, provider)

        async def infer(text: str) -> str:
            if requested is not None and self._tracer is not None and _RUN_TRACER.get() is not None:
                _name_requested_model(requested)  # the provider's own model
            response = await chat([Message("user", text)], **params)
            if not isinstance(response, ChatResponse):  # as the tool loop refuses it
                raise _not_chat_response(response)
            return _provider_reply(response)

        if not _streams_text(provider):
            return infer, None
        chat_provider = cast("ChatProvider", provider)  # it has `chat`: checked above

        async def stream(
            text: str, session: AgentSession, deadline: float | None, budget: CostBudget | None
        ) -> tuple[_ProviderReply, _Streamed]:
            if requested is not None and self._tracer is not None and _RUN_TRACER.get() is not None:
                _name_requested_model(requested)
            messages = [Message("user", text)]
            streamed = await self._chat_stream(
                session, chat_provider, messages, None, params, deadline, budget
            )
            return _provider_reply(streamed.response), streamed

        return infer, stream

    def trim_history(
        self, messages: list[dict[str, Any]], reserved_chars: int | None = None
    ) -> list[dict[str, Any]]:
        """Keeps the latest whole turns that fit the context window beside the rest of a request.

        A turn is a user message and the replies after it; turns are dropped oldest first and
        never split, so no reply is kept without the message it answers. The history's
        `system` messages are always kept, in their places (a persona or a standing
        instruction is not the oldest thing to drop): their size is taken from the window
        first, and the turns share what is left (system messages that fill the window leave
        no turn). An assistant message's tool calls count with its text. `reserved_chars` is
        the size of the rest of the request (a run passes its system prompt with recalled and
        working memory, the tools shown to the model and the new message); None: the system
        prompt alone.

        Raises:
            AgentRuntimeError: `messages` is not a list (or other iterable) of messages, a
                message is not a dict with a `role` (system, user, assistant or tool) and a
                string `content`, or has tool fields of the wrong shape (see
                `session.message_problem`); or `reserved_chars` is neither None nor a whole
                count from 0 up.
        """
        # Read once: another thread's turn may add to the list meanwhile.
        try:
            # Iterable, but of no messages: one message's keys, a text's characters.
            if isinstance(messages, str | bytes | bytearray | dict):
                raise TypeError
            messages = list(messages)
        except TypeError:  # None, a number: a bare TypeError would name no argument
            raise AgentRuntimeError(
                f"messages must be a list of chat messages, got {_kind(messages)}"
            ) from None
        if reserved_chars is None:
            reserved_chars = len(self._config.system_prompt)
        else:  # a negative size would widen the window, a str fail the sum below
            try:
                reserved_chars = check_count("reserved_chars", reserved_chars, 0)
            except ValueError as error:
                raise AgentRuntimeError(str(error)) from None
        budget = self._config.context_window_tokens * CHARS_PER_TOKEN - reserved_chars
        turn_sizes: list[int] = []
        turn_of: list[int] = []  # each message's turn; -1 for a system message (always kept)
        for n, message in enumerate(messages, 1):
            if (problem := message_problem(message)) is not None:
                raise AgentRuntimeError(f"session message {n}: {problem}")
            try:
                size = _history_chars(message)
            except (TypeError, ValueError, RecursionError) as error:  # not JSON data
                raise AgentRuntimeError(
                    f"session message {n}: a tool call's arguments are not JSON data ({error})"
                ) from None
            role = message["role"]
            if role == "system":
                budget -= size
                turn_of.append(-1)
                continue
            if role == "user" or not turn_sizes:
                turn_sizes.append(0)
            turn_sizes[-1] += size
            turn_of.append(len(turn_sizes) - 1)
        start = len(turn_sizes)
        for size in reversed(turn_sizes):
            budget -= size
            if budget < 0:
                break
            start -= 1
        return [m for m, turn in zip(messages, turn_of, strict=True) if turn < 0 or turn >= start]

    # ------------------------------------------------------------------ the loop
    async def _run(
        self,
        agent_id: str,
        prompt: str,
        infer: InferFn | None,
        provider: ChatProvider | None,
        session: AgentSession | None,
        history: list[dict[str, Any]] | None = None,
        resume: SessionState | None = None,
        answer: list[str | None] | None = None,
        stream: _TextStream | None = None,
    ) -> AgentSession:
        """One run: arguments checked, a slot taken, the session marked running, the deadline.

        Everything is checked before anything is taken, and everything taken is given back
        in `finally`, so no failure leaks a slot, an active-session count or a mark.
        `answer`, when given, gets the run's final answer as the run lets go of its session:
        the callbacks it waits for after that may run the session's next turn. `stream`:
        the streamed form of `infer`, for a provider that streams (see `_text_model`).
        """
        _check_agent_id(agent_id)
        if not isinstance(prompt, str):
            raise AgentRuntimeError(f"prompt must be a string, got {_kind(prompt)}")
        if session is None:
            session = AgentSession(session_id=new_session_id(), agent_id=agent_id)
        elif not isinstance(session, AgentSession):
            raise AgentRuntimeError(
                f"session must be an AgentSession (see create_session), got {_kind(session)}"
            )
        elif (problem := session_problem(session, history is None)) is not None:
            # Before the model is paid: the run writes to these fields as it goes, and saves
            # them. A turn's messages were checked by its history trim, just before.
            raise AgentRuntimeError(problem)
        elif session.agent_id != agent_id:
            # The metrics count the run's tool calls by the session's agent, its memories
            # and events are the run's: they would disagree.
            raise AgentRuntimeError(
                f"session {session.session_id!r} belongs to agent {session.agent_id!r}, not "
                f"{agent_id!r}: a session is one agent's"
            )
        # An `async def` function (the usual model) is told here, without a call.
        if provider is None and not (
            type(infer) is FunctionType and infer.__code__.co_flags & _CO_COROUTINE
        ):
            infer = _as_model(infer)
        tools, seen = self._tools, self._tools_seen
        if seen[0] is not tools or seen[1] != len(tools) or seen[2] != SHOWN_CHANGES[0]:
            self._refresh_tools()
        session_id = session.session_id
        running = self._running
        # Checked and marked in one step under the lock, before the guard is asked (its
        # acquire may take a while): no other run of this session, in this runtime or any
        # other, on this thread or another, gets past here meanwhile. The mark is this
        # run's own token, so that only this run takes it away.
        mark = object()
        while True:
            with _SESSIONS_LOCK:
                if session_id not in running and id(session) not in _SESSIONS_RUNNING:
                    _SESSIONS_RUNNING[id(session)] = mark
                    running.add(session_id)
                    break
                released = self._release_awaited(session_id)
                if released is None:
                    raise AgentRuntimeError(
                        f"session {session_id!r} is already running a turn: a session runs "
                        "one turn at a time (await the running one first)"
                    )
            await released
        guard = self._backpressure
        if guard is not None:
            try:
                guard.acquire()
            except BaseException as error:
                _unmark(running, session_id, session, mark)
                # A shed is counted once: by the guard when it counts into these metrics.
                if isinstance(error, BackpressureShedError) and (
                    getattr(guard, "_metrics", None) is not self._metrics
                ):
                    self._metrics.record_backpressure_shed()
                raise
        metrics = self._metrics
        # The async callbacks the run's events start: the run waits for them once it has let
        # go of its session and slot, within its deadline. Tracked in every run (a context
        # variable, ~0.4 us a run): one may be registered while the run goes on.
        callbacks: set[asyncio.Future[Any]] = set()
        settle = True  # not when cancelled
        deadline: float | None = None
        try:
            span, tracer = self._run_span(agent_id, session_id)  # before the run counts
            metrics.session_started()
            before = (session.prompt, session.final_answer)  # the earlier turns' session
            session.prompt = prompt
            if resume is None:
                session.final_answer = None  # a session's next turn answers afresh
            # The timeout's message counts this turn's steps (a resumed run's are its own).
            steps_before = len(session.steps) if resume is None else resume.first_step
            # A session's duration adds up its turns, as its steps do.
            earlier_ms = session.duration_ms
            started = time.perf_counter()
            timeout = self._config.loop_timeout_ms
            # Also checked by the loop at each step: a run whose model and tools never
            # suspend (an offline model, plain async tools) gives the timer no chance to fire.
            deadline = None if timeout is None else started + timeout / 1000
            events = self.events
            callbacks_token = RUN_CALLBACKS.set(callbacks)
            run_task_token = _RUN_TASK.set(current_task())
            run_tracer_token = _RUN_TRACER.set(tracer)
            try:
                # The run's span covers all of it: its checkpoints, and a failed run's last
                # save and its ErrorEvent (spans of a listener or a backend are its children).
                with span:
                    try:
                        body = self._run_body(
                            agent_id,
                            prompt,
                            infer,
                            provider,
                            session,
                            history,
                            resume,
                            started,
                            earlier_ms,
                            deadline,
                            before,
                            stream,
                        )
                        # A resumed run has a checkpoint store; other runs look no further.
                        store = self._checkpoints
                        if resume is not None and store is not None and store.resume_lease_seconds:
                            body = self._unless_resume_lost(body, session_id)
                        if timeout is None:
                            await body
                        else:
                            try:
                                expired = await _within_deadline(body, timeout / 1000)
                            except _DeadlinePassed:
                                expired = True
                            if expired:
                                raise AgentLoopError(
                                    f"{_timed_out(timeout)} "
                                    f"({session.step_count - steps_before} steps done)"
                                )
                        if answer is not None:
                            answer.append(session.final_answer)
                        return session
                    except BaseException as error:
                        settle = False  # unless this block ends as it should (not cancelled)
                        left = _RESUME_CLAIM_LEFT if resume is not None else _RUN_CLAIM_LEFT
                        await self._end_failed_run(session, error, events, left)
                        settle = isinstance(error, Exception)  # not when cancelled
                        raise
            finally:
                metrics.session_finished()
                try:
                    _RUN_TRACER.reset(run_tracer_token)
                    _RUN_TASK.reset(run_task_token)
                    RUN_CALLBACKS.reset(callbacks_token)
                except ValueError:  # closed by the GC outside its task's context: gone with it
                    pass
        finally:
            try:
                if self._checkpoints is not None:  # nothing of an ended run stays in memory
                    self._durable_runs.pop(session_id, None)
                    self._cleanup_deadlines.pop(session_id, None)
                    self._checkpoints.forget(session_id)
                if self._approval_locks or self._approvals:  # also if the handler went since
                    self._drop_unremembered_approvals(session_id)
            finally:  # given back whatever the cleanup above met
                # Only now: a run of the session starting on another thread finds none of
                # this run's state left to clear, nor has its own cleared by it.
                _unmark(running, session_id, session, mark, self._finishing, callbacks)
                if guard is not None:
                    guard.release()
            if callbacks and settle:
                await settle_callbacks(callbacks, deadline, session_id)

    def _run_span(self, agent_id: str, session_id: str) -> tuple[Any, Any]:
        """The `agent.run` span of a run starting now (`_NO_SPAN` untraced), and its tracer.

        The tracer is loaded here once a tracer provider is set after the runtime was built;
        the run's calls make their spans with the tracer it started with (`_RUN_TRACER`).
        """
        if self._awaiting_tracer and not _tracer_awaited():  # a provider set since
            self._tracer = _load_tracer()
            self._awaiting_tracer = False
        tracer = self._tracer
        if tracer is None:
            return _NO_SPAN, None
        attributes = {"agent_id": agent_id, "session_id": session_id}
        return _traced(tracer, "agent.run", attributes), tracer

    async def _end_failed_run(
        self,
        session: AgentSession,
        error: BaseException,
        events: EventBus,
        left: str = _RUN_CLAIM_LEFT,
        logged: bool = True,
    ) -> None:
        """Logs a failed run, saves what it left unsaved, and emits its `ErrorEvent`.

        The event is emitted on `events`, the bus the run started with. The event log takes
        the error with what the run left unsaved (unless not `logged`: a close whose run
        logged its end before); the listeners get it after that save's `CheckpointSaved`
        events, as the run's last event (even if the save is cancelled). A failing listener
        must not hide the run's error: it is logged. `left`: what a claim left behind
        refuses (see `_release_claims`).
        """
        session_id = session.session_id
        logger.warning("agent run %s failed: %r", session_id, error)
        error_event = ErrorEvent(session_id, error)
        try:
            if self._checkpoints is not None:
                if logged:
                    self._log_event(error_event)
                cancelled = not isinstance(error, Exception)
                await self._save_left_in_time(session, left, cancelled)
        finally:
            self._cleanup_deadlines.pop(session_id, None)
            if events.active:
                try:
                    events.emit(error_event)
                except Exception as listener_error:
                    logger.warning(
                        "a listener failed on the ErrorEvent of run %s: %r",
                        session_id,
                        listener_error,
                    )
            if self._checkpoints is not None:  # logged already, with the save
                self._event_log.pop(session_id, None)

    async def _run_body(
        self,
        agent_id: str,
        prompt: str,
        infer: InferFn | None,
        provider: ChatProvider | None,
        session: AgentSession,
        history: list[dict[str, Any]] | None,
        resume: SessionState | None,
        started: float,
        earlier_ms: float,
        deadline: float | None,
        before: tuple[str, str | None],
        stream: _TextStream | None,
    ) -> None:
        """What a run does, all under its deadline: hooks, checkpoints, the loop, events.

        `history` is None for a run that is not a turn; `earlier_ms` the session's
        `duration_ms` before this run; `deadline` the `perf_counter` time the loop must not
        start a step after (None: no timeout); `before` the session's prompt and final
        answer before this run; `stream` the streamed form of `infer` (see `_text_model`).
        """
        events = self.events
        # The run's id: its meta record names it, and so does its final checkpoint (a
        # resumed run's is the interrupted run's), which tells a later turn from this one.
        run = resume.run if resume is not None else new_session_id()
        saved = None
        if resume is not None:  # it goes on with the context it started with, as saved
            from llm_agent_runtime.persistence.checkpoints import started_with

            saved = started_with(resume, resume.first_step)
        shown: _Shown | None = None
        graph_count = session.graph_entity_count  # put back, as `before`, if the run never starts
        try:
            if resume is None:  # a resumed run's prompt was rewritten before it was saved
                hooks = self._hooks["on_user_message"]
                for hook in hooks:
                    prompt = await _rewrite(hook(session, prompt), prompt, "on_user_message")
                session.prompt = prompt  # what is kept, saved and sent: the rewritten text
                if hooks and history is not None:
                    # A hook may have changed the chat (a summary for old turns, a reset):
                    # the turn sends what it saves, and a resume sends again.
                    _check_messages_list(session, _LEFT_BY_HOOK % "on_user_message")
                    history = self.trim_history(session.messages)
                    if provider is not None:
                        _check_tool_exchanges(session.messages)
            if saved is None:
                # Before the run's start is saved, with it: a run cut off before its first
                # step is resumed with it too. Its memories count once the run has started.
                memory, recalled = self.memory, None  # read once: it may be replaced meanwhile
                if (
                    memory is not None
                    and _embeds(memory)
                    and self._recalls_memories()
                    and _has_episodes(memory, agent_id)  # else nothing to rank: no embedding
                ):
                    recalled = await self._recalled(memory, agent_id, prompt)
                context, shown = self._context(agent_id, prompt, session, memory, recalled)
                hits = session.memory_hits + (shown.hits if shown is not None else 0)
            else:  # its memories were recalled, and counted, when it started
                context, hits = saved["context"], saved["memory_hits"]
                session.memory_hits = hits
                if self._graph is not None:
                    session.graph_entity_count = _entity_count(self._graph)
            if self._checkpoints is not None:
                # A resumed run's first step, if it saved none yet, records its start too.
                first = resume.first_step if resume is not None else session.step_count
                turn = history is not None
                start = {"prompt": prompt, "turn": turn, "messages": len(session.messages)}
                if session.messages:
                    from llm_agent_runtime.persistence.checkpoints import history_crc

                    start["history_crc"] = history_crc(session.messages)
                start.update(context=context, memory_hits=hits)
                self._durable_runs[session.session_id] = _DurableRun(run, first, start)
                mode = "tools" if provider else "react"
                # The chat history goes with any run, a turn or not: a fork or a load of the
                # run rebuilt from its record alone keeps the session's messages.
                await self._save_meta(
                    session, mode, run, turn, session.messages, resume, before, start
                )
        except BaseException:
            if resume is None:
                # The run never started (a hook or the store refused it, or the recall
                # failed): the session is left as it was, rather than holding the text the
                # hook refused (a redacting hook's input) and no earlier answer.
                session.prompt, session.final_answer = before
            session.graph_entity_count = graph_count
            raise
        self._count_shown(session, agent_id, shown)  # as saved, whatever a listener does
        try:
            if events.active:
                events.emit_new(RunStarted, (session.session_id, agent_id, prompt))
            if history:  # the earlier turns that fit beside what this request holds anyway
                history = self.trim_history(history, self._request_chars(context, prompt, provider))
            if provider is not None:
                await self._tool_loop(session, context, prompt, provider, history, resume, deadline)
            else:
                infer = _need(infer)
                await self._react_loop(
                    session, context, prompt, infer, history, resume, deadline, stream
                )
            if history is not None and session.final_answer is None:  # a turn with no answer
                _add_turn(session, prompt, "")
            session.duration_ms = duration = earlier_ms + (time.perf_counter() - started) * 1000.0
            # The turn is over: one asked for from here on waits for the run to let go of the
            # session (its final checkpoint written), not refused (see `_release_awaited`).
            callbacks = RUN_CALLBACKS.get()
            if callbacks is not None:
                loop = asyncio.get_running_loop()
                with _SESSIONS_LOCK:
                    self._finishing[session.session_id] = _Finishing(callbacks, loop)
            if events.active:
                finished = (session.session_id, session.final_answer, len(session.steps), duration)
                events.emit_new(RunFinished, finished)
            if self._checkpoints is not None:  # after RunFinished, so the log records it
                await self._save_final(session, run)
        except BaseException:
            # The run started: its time counts, however it ended (one that never started
            # left the session as it was, its time included).
            session.duration_ms = earlier_ms + (time.perf_counter() - started) * 1000.0
            raise

    async def _until_let_go(self, session_id: str) -> None:
        """Returns once no run of the session goes on in this runtime, for `resume`.

        A run that only writes its final checkpoint is waited for, as `_run` waits for it.

        Raises:
            AgentRuntimeError: A run of the session goes on (see `_release_awaited`).
        """
        while True:
            with _SESSIONS_LOCK:
                if session_id not in self._running:
                    return
                released = self._release_awaited(session_id)
                if released is None:
                    raise AgentRuntimeError(
                        f"session {session_id!r} is already running a turn: it cannot be "
                        "resumed while it runs"
                    )
            await released

    def _release_awaited(self, session_id: str) -> asyncio.Future[None] | None:
        """What the caller awaits to run a turn of the session once its finished run lets go.

        A run whose turn is over (its answer final, `RunFinished` emitted) still holds the
        session while it writes its final checkpoint: a caller on its loop (an async
        `RunFinished` callback, a task that read the event from a subscription, any other)
        waits for it to let go. The run waits for nothing of theirs meanwhile (its callbacks
        only after letting go), so they cannot wait for each other. None for a caller on
        another loop (the run wakes its waiters on its own), or while the run goes on: the
        session is running a turn. Called with `_SESSIONS_LOCK` held.
        """
        finishing = self._finishing.get(session_id)
        task = asyncio.current_task()
        if finishing is None or task is None or task.get_loop() is not finishing.loop:
            return None
        waiter: asyncio.Future[None] = task.get_loop().create_future()
        finishing.waiters.append(waiter)
        return waiter

    def _refresh_tools(self) -> None:
        """Rebuilds what the model is shown of the tools (its registry changed).

        `_run` calls it when the registry is another or has another size (a registry only
        grows: `register` refuses a name twice), so a tool registered after the runtime was
        built is shown from the next run on; and when a spec's name, description or
        parameters were set since (any spec's: `SHOWN_CHANGES`). Per run, not per step.
        """
        tools = self._tools
        changes = SHOWN_CHANGES[0]  # read first: a change made meanwhile rebuilds again
        # Of one copy of the registry: its size is what was shown, so a tool registered
        # meanwhile (by another thread) makes the next run rebuild.
        definitions = [ToolDefinition(**d) for d in tools.definitions()]
        self._tool_catalog = "\n".join(
            f"- {d.name}: {d.description} Arguments: "
            + json.dumps(d.parameters, ensure_ascii=False, default=str)
            for d in definitions
        )
        self._tool_definitions = definitions
        # What the definitions take of a request (a context window counts them too).
        self._tool_definitions_chars = tool_definitions_chars(definitions)
        self._tool_names = frozenset(d.name for d in definitions)
        self._tools_seen = (tools, len(definitions), changes)

    def _request_chars(self, context: str, prompt: str, provider: ChatProvider | None) -> int:
        """Characters of a turn's request besides its history.

        That is the context, the tools as the model is shown them (a catalog in text mode,
        definitions in tools mode) and the prompt; in text mode also the text around them
        (headers, and the blank lines between the parts, the history's included), which the
        prompt holds as much as its parts.
        """
        if provider is not None:
            tools = self._tool_definitions_chars
        elif len(self._tools):
            tools = len(self._tool_catalog) + len(_REACT_FORMAT) + len(_TOOLS_HEADER)
            tools += len(_QUESTION) + 4 * len(_PART_BREAK)
        else:
            tools = len(_REACT_FORMAT_NO_TOOLS) + len(_QUESTION) + 3 * len(_PART_BREAK)
        return len(context) + tools + len(prompt)

    def _recalls_memories(self) -> bool:
        """Whether a run recalls memories at all.

        Not when its settings let none into the prompt: a recall would embed the request,
        and count recalls no prompt held.
        """
        config = self._config
        return config.max_memory_recalls > 0 and config.max_memory_tokens != 0

    async def _recalled(self, memory: Any, agent_id: str, prompt: str) -> Any:
        """What `memory`, a store with an embedder, recalls for `prompt`.

        Ranked by similarity to it too (a store without one recalls in `_context`).
        """
        # Embedding the request may be a network call (a blocking one: `Embedder.embed` is
        # sync): made off the event loop, so other runs and the run's timeout go on. A lone
        # surrogate (a file name decoded with `surrogateescape`, say) has no UTF-8 form to
        # embed: the query holds U+FFFD in its place.
        query = prompt if prompt.isascii() else _LONE_SURROGATE.sub("\ufffd", prompt)
        limit = self._config.max_memory_recalls
        if type(memory) is EpisodicStore:  # counted as shown: see `_context`
            return await run_blocking(lambda: memory.recall(agent_id, limit, query, counted=False))
        return await run_blocking(lambda: memory.recall(agent_id, limit, query))

    def _context(
        self,
        agent_id: str,
        prompt: str,
        session: AgentSession,
        memory: Any,
        recalled: Any = None,
    ) -> tuple[str, _Shown | None]:
        """Builds the prompt preamble: system prompt, recalled memories, working memory.

        `memory` is the run's store (read once: it may be replaced meanwhile). `recalled`:
        what a store with an embedder recalled for `prompt` (ranked by similarity to it too,
        off the event loop: see `_run_body`); a store without one recalls here. Returns the
        preamble and the memories it shows, which `_count_shown` counts once the run starts.
        """
        parts = [self._config.system_prompt]
        shown = None
        if memory is not None and self._recalls_memories():
            limit = self._config.max_memory_recalls
            # The store's own counts only the memories the prompt shows: one left out (blank,
            # or past `max_memory_tokens`) is not recalled, nor ranked up by the recall.
            counts_shown = type(memory) is EpisodicStore
            if recalled is not None:
                episodes = recalled
            elif counts_shown:
                episodes = memory.recall(agent_id, limit, counted=False)
            else:
                episodes = memory.recall(agent_id, limit)
            # A blank memory says nothing: it is neither shown nor counted as a hit. (The
            # store ranks before this, so a blank one still takes one of the recall slots.)
            ids: list[int] = []
            if counts_shown:  # its episodes' contents are str: one pass, no checks
                texts = []
                for episode in episodes[:limit]:
                    text = episode.content
                    if text and not text.isspace():
                        texts.append(text)
                        ids.append(episode.id)
            else:  # another store's: only text is shown (bytes have a `strip` too)
                texts = _recalled_texts(memory, episodes, limit)
            # As shown: the indent of a memory's later lines takes its part of the budget.
            texts = list(map(_indented, texts))
            if self._config.max_memory_tokens is not None:
                fitted = fit_to_token_budget(texts, self._config.max_memory_tokens)
                if counts_shown and len(fitted) < len(texts):
                    ids = _ids_shown(episodes[:limit], fitted)
                texts = fitted
            if texts:
                shown = _Shown(memory if counts_shown else None, ids, len(texts))
                parts.append(_memories_block(texts))
        if self._working_memory is not None:
            working = self._working_memory.to_prompt()
            if not isinstance(working, str):  # it would be joined into the prompt
                raise AgentRuntimeError(
                    f"working memory {type(self._working_memory).__name__}.to_prompt must "
                    f"return a string, got {_kind(working)}"
                )
            if working:  # the block as is: `WorkingMemory.to_prompt()` has its own header
                parts.append(working)
        if self._graph is not None:
            session.graph_entity_count = _entity_count(self._graph)
        return "\n\n".join(parts), shown

    def _count_shown(self, session: AgentSession, agent_id: str, shown: _Shown | None) -> None:
        """Counts the memories a run's context shows.

        As the session's hits, the metrics' recalls, and (an `EpisodicStore`'s) each
        memory's own recall.
        """
        if shown is None:
            return
        if shown.store is not None:
            shown.store.mark_recalled(agent_id, shown.ids)
        session.memory_hits += shown.hits
        self._metrics.record_memory_recall(shown.hits)

    async def _react_loop(
        self,
        session: AgentSession,
        context: str,
        prompt: str,
        infer: InferFn,
        history: list[dict[str, Any]] | None,
        resume: SessionState | None = None,
        deadline: float | None = None,
        stream: _TextStream | None = None,
    ) -> None:
        config = self._config
        head = [context]
        if len(self._tools):
            head.append(_TOOLS_HEADER + self._tool_catalog)
        head.append(_REACT_FORMAT if len(self._tools) else _REACT_FORMAT_NO_TOOLS)
        if history:
            head.append("\n".join(map(_history_line, history)))
        head.append(_QUESTION + prompt)
        transcript = [_PART_BREAK.join(head)]
        # A resumed run replays its own saved steps (not an earlier turn's) into the
        # transcript, and takes the reply of an interrupted step from the journal instead of
        # asking the model again.
        journal: list[dict[str, Any]] = []
        # The reply entry the next step's call 0 has in the journal, and the re-prompt the
        # next step answers (see `_journal_reply`).
        held: dict[str, Any] | None = None
        reprompt: dict[str, Any] | None = None
        if resume is not None:
            for r in resume.run_records:
                if r.reply:
                    if r.reprompt is not None:  # sent before the step's reply, as it was
                        transcript.append(_reprompt_part(r.reprompt))
                    transcript.append(f"{r.reply}\nObservation: {r.step.observation}")
            journal = await self._journal_of_next_step(session)
        pre_hooks = self._hooks["on_pre_llm"]
        post_hooks = self._hooks["on_post_llm"]
        # Set as the span starts: a call that fails names its model too (one through a
        # provider whose model the config does not name sets it itself: `_text_model`).
        llm_attributes = _llm_attributes(self._config.model)
        reprompted = False
        events = self.events
        budget = self.budget
        stops = self._stops
        perf = time.perf_counter
        metrics = self._metrics
        checkpoints = self._checkpoints
        task = current_task()  # the run's calls run in it: looked up once, not per call
        # Its model calls' sink for `bill_caller`, by its task (none without one).
        bill = None if task is None else functools.partial(_charge_billed, metrics, budget)
        # A resumed run counts the steps it already took, and their re-prompts (each took an
        # iteration); a session's new turn starts afresh.
        done = 0
        if resume is not None:
            done = sum(1 if r.reprompt is None else 2 for r in resume.run_records)
        iterations = config.max_iterations - done
        if iterations <= 0 and journal:
            raise _no_iteration_for_journal(config.max_iterations, done)
        # When handling a reply fails, the reply is checked: a model that returned no text is
        # an AgentLoopError. Checked then only: a `try` costs nothing until it raises.
        reply = ""
        # A re-prompted reply's tokens and model time, which the step that answers it keeps
        # (that step's time starts at the reply, too).
        reprompt_cost: tuple[int, int, float] | None = None
        # The model time of the step's reply (and re-prompt) that an earlier run took, when
        # this one reuses them from the journal: this run's clock holds none of it.
        earlier_ms = 0.0
        # A step's time runs from where the step before ended, so the step before's checkpoint
        # write is in this one's overhead (a re-prompted reply's step goes on to its answer).
        step_start = perf()
        for iteration in range(iterations):
            if deadline is not None and perf() >= deadline:
                raise _DeadlinePassed
            text_prompt = "\n".join(transcript)
            replayed = bool(journal)
            incomplete = None  # the stop reason of a reply that stopped before it was complete
            usage = None  # the provider's token counts, when it reported them
            streamed: _Streamed | None = None  # the reply's call, when it was streamed
            try:
                if replayed:  # the reply of an interrupted step, handled (hooks, charge) back then
                    entry = journal[0]
                    if entry.get("state") in _REPLY_STATES:
                        held = entry
                    if "reprompt" in entry:  # sent before the reply (or before its answer came)
                        self._reused_reprompt_event(session, entry["reprompt"])
                        transcript.append(_reprompt_part(entry["reprompt"]))
                        reprompt, in_flight = _replayed_reprompt(entry)
                        if in_flight is not None:  # it took its iteration, as it did
                            journal, reprompted, reprompt_cost = [], True, in_flight
                            earlier_ms += in_flight[2]
                            continue
                    reply = entry["reply"]
                    usage = _journaled_usage(entry)
                    model_ms = _journaled_ms(entry, "model_ms")
                    earlier_ms += model_ms
                    self._reused_reply_event(session, reply, model_ms)
                else:
                    for hook in pre_hooks:
                        text_prompt = await _rewrite(
                            hook(session, text_prompt), text_prompt, "on_pre_llm"
                        )
                        if history is not None:  # before the model is asked
                            _check_messages_list(session, _LEFT_BY_HOOK % "on_pre_llm")
                    if budget is not None:  # a spent budget pays for no further model call
                        budget.check()
                    model_start = perf()
                    outer = _OPEN_CALLS.get(task)  # a run whose model is itself a run: put back
                    _OPEN_CALLS[task] = bill
                    try:
                        # Streamed only while someone listens (the event log keeps no delta).
                        if self._tracer is not None and (tracer := _RUN_TRACER.get()) is not None:
                            with _traced(tracer, "agent.llm", llm_attributes) as span:
                                if stream is not None and events.listening:
                                    reply, streamed = await stream(
                                        text_prompt, session, deadline, budget
                                    )
                                else:
                                    reply = await infer(text_prompt)
                                # Checked in the span: a reply of the wrong type fails the call.
                                if type(reply) is not _ProviderReply and not isinstance(reply, str):
                                    raise _not_text(reply)
                                _describe_llm_call(span, reply)
                        elif stream is not None and events.listening:
                            reply, streamed = await stream(text_prompt, session, deadline, budget)
                        else:
                            reply = await infer(text_prompt)
                    except ProviderError as error:
                        _charge_refused_reply(error, metrics, budget)
                        raise
                    finally:
                        if outer is None:
                            _OPEN_CALLS.pop(task, None)
                        else:
                            _OPEN_CALLS[task] = outer
                    model_ms = (perf() - model_start) * 1000.0
                    if type(reply) is _ProviderReply:
                        usage = reply.usage
                        if usage.cost_usd != 0.0:  # no price (the usual case) is no amount
                            _check_cost(usage)
                        if reply.stop_reason in INCOMPLETE_STOP_REASONS:
                            incomplete = reply.stop_reason
                        reply = str(reply)
                    elif not isinstance(reply, str):  # before it is charged, shown or logged
                        raise _not_text(reply)
                    if stops:
                        cut = cut_at_stop(reply, stops)
                        # It ended at a stop sequence, before a token limit cut it (a
                        # filter's stop holds whatever the text: nothing in it is acted on).
                        if len(cut) < len(reply) and incomplete not in SAFETY_STOP_REASONS:
                            incomplete = None
                        reply = cut
                if usage is not None and (usage.input_tokens or usage.output_tokens):
                    input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
                    cost_usd = usage.cost_usd
                else:  # a plain `infer`, or a provider that reports no usage: estimated
                    input_tokens = tokens_of_chars(len(text_prompt))
                    output_tokens = tokens_of_chars(len(reply))
                    # The tokens are estimated; a price the provider gave is charged as is.
                    cost_usd = 0.0 if usage is None else usage.cost_usd
                if not replayed:
                    # Charged before the hooks: a hook that fails, or a timeout or cancel
                    # while one runs, leaves the call paid for all the same.
                    metrics.record_tokens(input_tokens, output_tokens)
                    if budget is not None:
                        _charge_budget(budget, input_tokens, output_tokens, cost_usd)
                    if streamed is not None:  # paid for above, whatever a listener did
                        streamed.finish(session.session_id, events)
                    elif events.listening and reply:  # a reply not streamed is whole: one delta
                        events.emit_new(LlmTextDelta, (session.session_id, reply))
                    for hook in post_hooks:
                        reply = await _rewrite(hook(session, reply), reply, "on_post_llm")
                        if history is not None:  # before the step's tool runs
                            _check_messages_list(session, _LEFT_BY_HOOK % "on_post_llm")
                    if events.active:
                        response_event = (session.session_id, len(session.steps), reply, model_ms)
                        events.emit_new(LlmResponse, response_event)
            except (TypeError, AttributeError) as error:
                if isinstance(reply, str):
                    raise
                raise _not_text(reply) from error
            if reprompt_cost is not None:  # charged when it came; counted in this step
                input_tokens += reprompt_cost[0]
                output_tokens += reprompt_cost[1]
                model_ms += reprompt_cost[2]
                reprompt_cost = None
            try:
                parsed = parse_react_step(reply)
            except TypeError as error:
                if isinstance(reply, str):
                    raise
                raise _not_text(reply) from error
            except ParseError as error:
                if incomplete is not None:  # re-prompting would be cut off again
                    raise _incomplete_reply(incomplete, "its ReAct step", reply) from error
                # A re-prompt needs an iteration left to answer it.
                if config.corrective_reprompt and not reprompted and iteration + 1 < iterations:
                    reprompted = True
                    reprompt_cost = (input_tokens, output_tokens, model_ms)
                    nudge = (
                        f"your reply was not a ReAct step ({error}). "
                        "Reply with Thought and Action lines."
                    )
                    reprompt = {"reply": reply, "nudge": nudge}
                    transcript.append(_reprompt_part(reprompt))
                    if checkpoints is not None:  # a resume sends it again, and counts it
                        cost = [input_tokens, output_tokens]
                        sent = {**reprompt, "tokens": cost, "model_ms": model_ms}
                        entry = {"index": 0, "state": "reprompted", "reprompt": sent}
                        held = await self._journal_reply(session, entry, held)
                    continue
                raise AgentLoopError(f"model output is not a ReAct step: {error}") from error
            reprompted = False  # a later unparseable reply gets its own re-prompt
            if incomplete in SAFETY_STOP_REASONS:  # even a step that ended before the cut
                what = "its final answer" if parsed.is_final else f"the input of {parsed.action!r}"
                raise _incomplete_reply(incomplete, what, reply)
            if parsed.end < len(reply):  # an Observation the model invented: not kept
                reply = reply[: parsed.end]
            elif incomplete is not None:  # the step's last part is what the cut left of it
                what = "its final answer" if parsed.is_final else f"the input of {parsed.action!r}"
                raise _incomplete_reply(incomplete, what, reply)
            # The transcript puts the observation on the next line (a reply cut at a stop
            # sequence keeps the line break before it).
            reply = reply.rstrip()
            final = parsed.final_answer
            if final is not None:
                overhead_ms = (perf() - step_start) * 1000.0 - (model_ms - earlier_ms)
                step = Step(
                    parsed.thought,
                    "FINAL_ANSWER",
                    final,
                    "",
                    None,
                    input_tokens,
                    output_tokens,
                    model_ms,
                    0.0,
                    overhead_ms,
                )
                if history is not None:  # the answered turn goes with its answer, before an await
                    _add_turn(session, prompt, final)
                session.final_answer = final
                session.steps.append(step)
                metrics.record_step()
                if checkpoints is not None:
                    record = self._step_record(session, step, reply=reply)
                    record.reprompt = reprompt
                    await self._save_steps(session, [record])
                return
            # The step records the call that ran (a middleware or an approval may change it).
            if checkpoints is None:
                ended: dict[int, ToolRun] = {}
                try:
                    observation, tool_ms, action, action_input = await self._call_tool(
                        session,
                        parsed.action or "",
                        parsed.action_input,
                        None,
                        0,
                        True,
                        None,
                        ended,
                        task,
                    )
                except BaseException as error:  # the step of a call that began says how it ended
                    call = ToolCall("", parsed.action or "", parsed.action_input)
                    usage = Usage(input_tokens, output_tokens)
                    self._keep_failed_round(
                        session, parsed.thought, [call], ended, usage, model_ms, error
                    )
                    raise
                ran_ms = tool_ms
            else:
                # Replayed after an interruption, the step records the tokens and the model
                # time its reply took.
                tokens = [input_tokens, output_tokens]
                if journal:
                    entry = journal[0]
                else:
                    entry = {"reply": reply, "tokens": tokens, "model_ms": model_ms}
                    if reprompt is not None:
                        entry["reprompt"] = reprompt
                    if self._guarded:  # paid for: kept while the guards decide
                        received = {**entry, "index": 0, "state": "received"}
                        held = await self._journal_reply(session, received, held)
                journal = []
                # The time the tool ran in this run: none for a call the journal says ran.
                ran = _BusyTime()
                observation, tool_ms, action, action_input = await self._durable_call(
                    session,
                    session.step_count + 1,
                    0,
                    parsed.action or "",
                    parsed.action_input,
                    entry,
                    busy=ran,
                    replacing=held,
                )
                ran_ms = ran.ms
            content, error_kind = observation
            step_end = perf()
            overhead_ms = (step_end - step_start) * 1000.0 - (model_ms - earlier_ms) - ran_ms
            step_start = step_end
            earlier_ms = 0.0
            step = Step(
                parsed.thought,
                action,
                action_input,
                content,
                error_kind,
                input_tokens,
                output_tokens,
                model_ms,
                tool_ms,
                overhead_ms,
                None
                if action_input is parsed.action_input and action == parsed.action
                else _requested(parsed.action or "", parsed.action_input, action, action_input),
            )
            session.steps.append(step)
            metrics.record_step()
            stop = error_kind is not None and config.error_recovery == "stop"
            if checkpoints is not None:
                record = self._step_record(session, step, reply=reply)
                record.stopped = stop  # a resume closes the run here, whatever its config
                record.reprompt = reprompt
                await self._save_steps(session, [record])
                held = reprompt = None  # of the step saved
            if stop:
                return
            transcript.append(f"{reply}\nObservation: {content}")
            if replayed:  # the step after may be journaled too (its checkpoint failed as well)
                journal = await self._journal_of_next_step(session)

    async def _tool_loop(
        self,
        session: AgentSession,
        context: str,
        prompt: str,
        provider: ChatProvider,
        history: list[dict[str, Any]] | None,
        resume: SessionState | None = None,
        deadline: float | None = None,
    ) -> None:
        config = self._config
        messages = [_loop_message("system", context, [], None, ())]
        if history:
            messages.extend(map(_chat_message, history))
        messages.append(_loop_message("user", prompt, [], None, ()))
        rounds_done = 0
        journal: list[dict[str, Any]] = []
        # The reply entry the next round's call 0 has in the journal, and the re-prompt the
        # next round answers (see `_journal_reply`).
        held: dict[str, Any] | None = None
        reprompt: dict[str, Any] | None = None
        if resume is not None:  # replay the run's saved rounds; an interrupted one is journaled
            rounds_done = _replay_rounds(resume.run_records, messages)
            journal = await self._journal_of_next_step(session)
        tool_defs = self._tool_definitions or None
        post_hooks = self._hooks["on_post_llm"]
        events = self.events
        chat = _async_chat(provider)
        streams_text = _streams_text(provider)
        budget = self.budget
        stops = self._stops
        params = self._call_params()
        # Passed by name: a call that unpacks a dict of keywords builds one each time (about
        # 250 ns a call); only stop sequences and `model_params` need the dict.
        model = params["model"]
        more_params = len(params) > 1
        llm_attributes = _llm_attributes(_requested_model(model, provider))
        perf = time.perf_counter
        metrics = self._metrics
        checkpoints = self._checkpoints
        task = current_task()  # a round's single call runs in it: looked up once, not per call
        # Its model calls' sink for `bill_caller`, by its task (none without one).
        bill = None if task is None else functools.partial(_charge_billed, metrics, budget)
        # A round's overhead runs from where the round before ended (its checkpoint write in).
        since = perf()
        rounds_left = config.max_iterations - rounds_done
        if rounds_left <= 0 and journal:
            raise _no_iteration_for_journal(config.max_iterations, rounds_done)
        sent_chars = _SentChars()
        reprompted = False
        reprompt_cost: tuple[int, int, float] | None = None
        earlier_ms = 0.0  # as in ReAct mode: the model time of a reused round (and re-prompt)
        for round_no in range(rounds_left):
            if deadline is not None and perf() >= deadline:
                raise _DeadlinePassed
            replayed = bool(journal)
            if not replayed and budget is not None:  # a spent budget pays for no model call
                budget.check()
            round_start = perf()
            # Text deltas only while someone listens (the event log does not keep them).
            stream = streams_text and events.listening
            if replayed:  # the response of an interrupted round, handled (hooks, charge) then
                entry = journal[0]
                if entry.get("state") in _REPLY_STATES:
                    held = entry
                if "reprompt" in entry:  # sent before the round (or before its answer came)
                    self._reused_reprompt_event(session, entry["reprompt"])
                    messages.extend(_reprompt_messages(entry["reprompt"]))
                    reprompt, in_flight = _replayed_reprompt(entry)
                    if in_flight is not None:  # it took its round, as it did
                        journal, reprompted, reprompt_cost = [], True, in_flight
                        earlier_ms += in_flight[2]
                        continue
                saved = entry["round"]
                response = ChatResponse(
                    text=saved["text"],
                    tool_calls=_journaled_calls(saved["calls"]),
                    usage=_journaled_usage(saved) or Usage(),
                    reasoning=saved.get("reasoning", ()),
                )
            else:
                outer = _OPEN_CALLS.get(task)  # a run whose model is itself a run: put back
                _OPEN_CALLS[task] = bill
                try:
                    # An unstreamed call is the provider's own coroutine: one frame, not two.
                    if self._tracer is not None and (tracer := _RUN_TRACER.get()) is not None:
                        # Called in the span (a provider may start its work when called), with
                        # the keywords as a dict: tracing costs far more than building it.
                        with _traced(tracer, "agent.llm", llm_attributes) as span:
                            if stream:
                                streamed = await self._chat_stream(
                                    session, provider, messages, tool_defs, params, deadline, budget
                                )
                                response = streamed.response
                            else:
                                try:
                                    response = await chat(messages, tools=tool_defs, **params)
                                except UnreadableArgumentsError as error:  # a reply all the same
                                    response = error.response
                            # Checked in the span: a reply of the wrong type fails the call.
                            if not isinstance(response, ChatResponse):
                                raise _not_chat_response(response)
                            if not isinstance(response.text, str):
                                raise _not_text(response.text)
                            stop_reason = response.stop_reason
                            if type(response.usage) is not Usage or not (
                                stop_reason is None or type(stop_reason) is str
                            ):
                                _check_reply_set_later(response)
                            _describe_llm_call(span, response)
                    elif stream:
                        streamed = await self._chat_stream(
                            session, provider, messages, tool_defs, params, deadline, budget
                        )
                        response = streamed.response
                    elif more_params:
                        response = await chat(messages, tools=tool_defs, **params)
                    else:
                        response = await chat(messages, tools=tool_defs, model=model)
                except CutOffArgumentsError as error:  # a reply cut off where it counts
                    _charge_refused_reply(error, metrics, budget)
                    raise _incomplete_reply(error.stop_reason, "a tool call's input") from error
                except UnreadableArgumentsError as error:  # the model's slip, for it to mend
                    response = error.response
                except ProviderError as error:
                    _charge_refused_reply(error, metrics, budget)
                    raise
                finally:
                    if outer is None:
                        _OPEN_CALLS.pop(task, None)
                    else:
                        _OPEN_CALLS[task] = outer
            model_ms = (perf() - round_start) * 1000.0
            if not isinstance(response, ChatResponse):
                raise _not_chat_response(response)
            text = response.text
            if not isinstance(text, str):
                raise _not_text(text)
            usage = response.usage
            incomplete = None if replayed else response.stop_reason
            if type(usage) is not Usage or not (incomplete is None or type(incomplete) is str):
                _check_reply_set_later(response)
            if not replayed:
                if usage.cost_usd != 0.0:  # no price (the usual case) is no amount
                    _check_cost(usage)
                if not (usage.input_tokens or usage.output_tokens):
                    # A server that reports no usage: estimated, as in ReAct mode, so budgets
                    # and token metrics still count the call.
                    usage = self._estimated_usage(
                        sent_chars.chars_of(messages), text, response.tool_calls, usage.cost_usd
                    )
                # Charged before the hooks: a hook that fails, or a timeout or cancel while
                # one runs, leaves the call paid for all the same.
                metrics.record_tokens(usage.input_tokens, usage.output_tokens)
                if budget is not None:
                    _charge_budget(budget, usage.input_tokens, usage.output_tokens, usage.cost_usd)
                if stops and text:
                    cut = cut_at_stop(text, stops)
                    # It ended at a stop sequence, before a token limit cut it (see ReAct's).
                    if len(cut) < len(text) and incomplete not in SAFETY_STOP_REASONS:
                        incomplete = None
                    text = cut
                if stream:  # paid for above, whatever a listener did with its deltas
                    streamed.finish(session.session_id, events)
                elif text and events.listening:
                    events.emit_new(LlmTextDelta, (session.session_id, text))
                for hook in post_hooks:
                    text = await _rewrite(hook(session, text), text, "on_post_llm")
                    if history is not None:  # before the round's tools run
                        _check_messages_list(session, _LEFT_BY_HOOK % "on_post_llm")
                if events.active:
                    response_event = (session.session_id, len(session.steps), text, model_ms)
                    events.emit_new(LlmResponse, response_event)
            else:  # the time the model took then, not the journal's read
                model_ms = _journaled_ms(saved, "model_ms")
                earlier_ms += model_ms
                self._reused_reply_event(session, text, model_ms)
            if reprompt_cost is not None:  # the empty reply before, re-prompted, counts here
                usage = replace(
                    usage,
                    input_tokens=usage.input_tokens + reprompt_cost[0],
                    output_tokens=usage.output_tokens + reprompt_cost[1],
                )
                model_ms += reprompt_cost[2]
                reprompt_cost = None
            if incomplete in SAFETY_STOP_REASONS and response.tool_calls:
                # Calls whose input arrived whole, but in a reply the filter stopped: none runs.
                raise _incomplete_reply(incomplete, "its tool calls", text)
            if not response.tool_calls:
                if incomplete in INCOMPLETE_STOP_REASONS:
                    raise _incomplete_reply(incomplete, "its final answer", text)
                # Neither a tool call nor a word from the model or its hooks (a hook's rewrite,
                # to nothing as to words, is obeyed): no answer, as ReAct mode refuses an
                # empty one.
                raw = cut_at_stop(response.text, stops) if stops else response.text
                if not raw.strip() and not text.strip():
                    # A re-prompt needs a round left to answer it.
                    if config.corrective_reprompt and not reprompted and round_no + 1 < rounds_left:
                        reprompted = True
                        reprompt_cost = (usage.input_tokens, usage.output_tokens, model_ms)
                        reprompt = {"reply": text, "nudge": _EMPTY_REPLY_NUDGE}
                        if response.reasoning:
                            reprompt["reasoning"] = list(response.reasoning)
                        messages.extend(_reprompt_messages(reprompt))
                        if checkpoints is not None:  # a resume sends it again, and counts it
                            cost = [*reprompt_cost[:2]]
                            sent = {**reprompt, "tokens": cost, "model_ms": model_ms}
                            entry = {"index": 0, "state": "reprompted", "reprompt": sent}
                            held = await self._journal_reply(session, entry, held)
                        continue
                    if not config.corrective_reprompt:
                        why = "corrective_reprompt=True asks the model once more"
                    elif reprompted:
                        why = "it replied so again when asked once more: corrective_reprompt"
                    else:
                        why = "no iteration was left to ask it once more: max_iterations"
                    raise AgentLoopError(
                        "the model replied with neither a tool call nor any text, so the run has "
                        f"no answer ({why})"
                    )
                overhead_ms = (perf() - since) * 1000.0 - (model_ms - earlier_ms)
                step = Step(
                    text,
                    "FINAL_ANSWER",
                    text,
                    "",
                    None,
                    usage.input_tokens,
                    usage.output_tokens,
                    model_ms,
                    0.0,
                    overhead_ms,
                )
                if history is not None:  # the answered turn goes with its answer, before an await
                    _add_turn(session, prompt, text)
                session.final_answer = text
                session.steps.append(step)
                metrics.record_step()
                if checkpoints is not None:
                    record = self._step_record(session, step)
                    record.reprompt = reprompt
                    await self._save_steps(session, [record])
                return
            calls = response.tool_calls
            if len(calls) > 1:
                calls = _unique_call_ids(calls)
                if any(_unreadable(call) for call in calls):
                    calls = _unreadable_marked(calls)
            elif _unreadable(calls[0]):
                calls = _unreadable_marked(calls)
            reprompted = False  # a later empty reply gets its own re-prompt
            # The provider's reasoning goes back with the reply (Anthropic needs its thinking).
            reasoning = response.reasoning
            messages.append(_loop_message("assistant", text, calls, None, reasoning))
            # The time any of a round's concurrent calls ran (their own times overlap), and in
            # a journaled round the time its calls ran in this run (a reused one's did not).
            n_calls = len(calls)
            busy = _BusyTime() if n_calls > 1 or checkpoints is not None else None
            if checkpoints is not None:
                results = await self._durable_round(
                    session, text, calls, journal, reasoning, usage, busy, model_ms, held, reprompt
                )
                journal = []
            else:
                finished: dict[int, ToolRun] = {}
                try:
                    if busy is None:
                        call = calls[0]
                        results = [
                            await self._call_tool(
                                session,
                                call.name,
                                call.arguments,
                                None,
                                0,
                                True,
                                None,
                                finished,
                                task,
                            )
                        ]
                    else:
                        results = await self._run_parallel(session, calls, busy, finished)
                except BaseException as error:
                    # A call failed the round (a policy error), or the run was cancelled or
                    # timed out: the calls that finished did run, and their steps say so.
                    self._keep_failed_round(session, text, calls, finished, usage, model_ms, error)
                    raise
            # The round's model time is shared by its steps; its tokens go to the first step.
            share = model_ms / n_calls
            input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
            tools_ms = 0.0
            failed = False
            records: list[StepRecord] = []
            first = True  # the round's first step, told by place (two calls may be equal)
            for call, (observation, tool_ms, name, arguments) in zip(calls, results, strict=True):
                content, error_kind = observation
                step = Step(
                    text,
                    name,
                    arguments,
                    content,
                    error_kind,
                    input_tokens,
                    output_tokens,
                    share,
                    tool_ms,
                )
                if arguments is not call.arguments or name != call.name:  # a guard changed it?
                    step.requested = _requested(call.name, call.arguments, name, arguments)
                result = _loop_message("tool", content, [], call.id, (), call.name)
                messages.append(result)
                session.steps.append(step)
                metrics.record_step()
                if checkpoints is not None:
                    record = self._step_record(session, step, text, call.id, first)
                    if first:  # saved with the round's first step
                        if reasoning:
                            record.round_reasoning = list(reasoning)
                        record.reprompt = reprompt
                    records.append(record)
                if error_kind is not None:
                    result.is_error = True  # a failed tool's result says so (Anthropic's)
                    failed = True
                input_tokens = output_tokens = 0
                first = False
                tools_ms += tool_ms
            # What the round took beyond the model and the tools, split evenly by its steps
            # (approvals asked before a parallel round's calls start are the runtime's).
            round_end = perf()
            elapsed = (round_end - since) * 1000.0
            since = round_end
            tools_wall = tools_ms if busy is None else busy.ms
            overhead = (elapsed - (model_ms - earlier_ms) - tools_wall) / n_calls
            earlier_ms = 0.0
            if overhead < 0.0:  # the clock's rounding
                overhead = 0.0
            if n_calls == 1:  # the step just made: no slice of the steps to build
                step.overhead_ms = overhead
            else:
                for step in session.steps[-n_calls:]:
                    step.overhead_ms = overhead
            stop = failed and config.error_recovery == "stop"
            if records:  # the round is saved whole: a resume never finds part of it
                records[-1].stopped = stop  # a resume closes the run here, whatever its config
                await self._save_steps(session, records)
                held = reprompt = None  # of the step saved
            if stop:
                return
            if replayed:  # the round after may be journaled too (its checkpoint failed as well)
                journal = await self._journal_of_next_step(session)

    def _estimated_usage(
        self, sent_chars: int, text: str, calls: Sequence[ToolCall], cost_usd: float
    ) -> Usage:
        """Tokens of a model call whose provider reported none, estimated from characters.

        `sent_chars` is the size of the messages sent (see `_SentChars`). A price the
        provider gave (`cost_usd`) stays: only the counts are estimated.
        """
        sent = tokens_of_chars(sent_chars + self._tool_definitions_chars)
        return Usage(sent, estimated_output_tokens(text, calls), cost_usd=cost_usd)

    async def _chat_stream(
        self,
        session: AgentSession,
        provider: ChatProvider,
        messages: list[Message],
        tool_defs: list[ToolDefinition] | None,
        params: dict[str, Any],
        deadline: float | None,
        budget: CostBudget | None,
    ) -> _Streamed:
        """Streams one model call, emitting its text deltas as they come.

        The stream is read to its end even when a listener fails on a delta (no delta goes
        out after that): the call is then charged before the listener's error is raised, as
        when the reply is not streamed. So is the text held back at the end (see `hold`):
        `_Streamed.finish` sends it, or raises the error, once the call is charged. Reading
        stops at the first `StreamEnd`, and at the run's `deadline` (a stream that never
        waits, such as a model computed in the event loop's thread, leaves the loop's timer
        no moment to fire).

        Raises:
            AgentLoopError: The stream ended without a `StreamEnd` event holding a
                `ChatResponse`, or sent a `TextDelta` whose text is no str.
            AgentRuntimeError: The provider's `chat_stream` returned no async iterator.
        """
        stops = self._stops
        # Called only for a provider with a `chat_stream` (see `_streams_text`).
        stream = cast("LlmProvider", provider).chat_stream(messages, tools=tool_defs, **params)
        if not (hasattr(stream, "__aiter__") and hasattr(stream, "__anext__")):
            if inspect.iscoroutine(stream):
                stream.close()  # never awaited: closed, so no warning names it
            raise AgentRuntimeError(
                "a provider's chat_stream must return an async iterator (an async generator "
                f"function: async def chat_stream(...) with yield): {type(provider).__name__}"
                f".chat_stream returned {_kind(stream)}"
            )
        # With stop sequences, the last (longest stop - 1) characters wait for the next delta,
        # so no delta carries text past a stop sequence split across deltas.
        hold = max(map(len, stops), default=1) - 1
        response: Any = _NO_STREAM_END
        pending = ""
        stopped = False
        texted = False  # a delta brought text (else the reply's text is sent whole at its end)
        listener_error: Exception | None = None
        try:
            async for event in stream:
                # The reply whole, past the deadline, is taken (as a reply not streamed is):
                # the model gave it, and it is charged.
                if (
                    deadline is not None
                    and time.perf_counter() >= deadline
                    and not isinstance(event, StreamEnd)
                ):
                    raise _DeadlinePassed
                if isinstance(event, TextDelta):
                    if type(event.text) is not str:
                        raise _not_text(event.text)
                    texted = texted or bool(event.text)
                    if stopped or listener_error is not None:
                        continue
                    pending += event.text
                    cut = len(cut_at_stop(pending, stops)) if stops else len(pending)
                    if cut < len(pending):  # a stop sequence: the text ends here
                        stopped = True
                        ready, pending = pending[:cut], ""
                    else:
                        ready_len = max(0, len(pending) - hold)
                        ready, pending = pending[:ready_len], pending[ready_len:]
                    if ready:
                        try:
                            self.events.emit(LlmTextDelta(session.session_id, ready))
                        except Exception as error:  # raised once the call is charged
                            listener_error = error
                elif isinstance(event, StreamEnd):
                    response = event.response
                    break  # its last event: what would follow is no part of the reply
        except UnreadableArgumentsError as error:  # raised in place of its `StreamEnd`
            response = error.response
        except Exception as error:
            if listener_error is None:
                raise
            # The stream failed after a listener did: the listener's error is the one that
            # came first (the stream's stays its context). A reply the stream's error refused
            # is charged all the same, as the tools loop charges it.
            if isinstance(error, ProviderError):
                _charge_refused_reply(error, self._metrics, budget)
            raise listener_error  # noqa: B904 (not caused by the stream: its context)
        finally:
            # Closed here, however the loop ends (a cancel, say): left to the garbage
            # collector, its connection would wait for it.
            close = getattr(stream, "aclose", None)
            if close is not None:
                try:
                    closed = close()
                    if inspect.isawaitable(closed):  # an iterator's own `aclose` may be sync
                        await closed
                except Exception as error:
                    if response is _NO_STREAM_END:
                        raise
                    # The reply came whole (and was paid for): closing its stream loses none.
                    logger.warning(
                        "closing a provider's stream after its reply failed (session %s): %r",
                        session.session_id,
                        error,
                    )
        if response is _NO_STREAM_END:
            raise AgentLoopError("the provider's stream ended without a StreamEnd event")
        if not isinstance(response, ChatResponse):
            raise AgentLoopError(
                f"the provider's StreamEnd must hold a ChatResponse, got {_kind(response)}"
            )
        if not texted and response.text:  # its text came in the StreamEnd alone
            pending = cut_at_stop(response.text, stops) if stops else response.text
        return _Streamed(response, pending, listener_error)

    def _keep_failed_round(
        self,
        session: AgentSession,
        text: str,
        calls: list[ToolCall],
        finished: dict[int, ToolRun],
        usage: Usage,
        model_ms: float,
        error: BaseException,
    ) -> None:
        """Adds the steps of a round that `error` ended, once any of its calls began.

        One step per call, in the round's order, so that the steps are numbered as the tool
        call events of the round were: a call that finished (or was denied) with its
        observation, one that `error` ended as it ran with the observation its
        `ToolCallFinished` event gave, and one that had not started with an observation
        saying so. The round's tokens go to the first, and each has its share of the model's
        time, as in a round that ends well; their overhead is not known (0).

        Not for a checkpointed run's round: its journal has what the round did, and a resume
        continues the round from it (a call cut off may run again), so its steps are made
        then, numbered as the events were.
        """
        if not finished:  # refused before any call began (a capability): no call to show
            return
        not_run = None
        if len(finished) < len(calls):
            not_run = _interrupted_observation(
                error, "the call did not start: its round ended with", self._config
            )
        input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
        share = model_ms / len(calls)
        for index, call in enumerate(calls):
            run = finished.get(index)
            if run is None:
                assert not_run is not None
                run = (not_run, 0.0, call.name, call.arguments)
            (content, error_kind), tool_ms, name, arguments = run
            step = Step(
                text,
                name,
                arguments,
                content,
                error_kind,
                input_tokens,
                output_tokens,
                share,
                tool_ms,
                requested=_requested(call.name, call.arguments, name, arguments),
            )
            session.steps.append(step)
            self._metrics.record_step()
            input_tokens = output_tokens = 0

    async def _run_parallel(
        self,
        session: AgentSession,
        calls: list[ToolCall],
        busy: _BusyTime,
        finished: dict[int, ToolRun],
    ) -> list[ToolRun]:
        """Runs a round's calls concurrently, up to `max_parallel_tool_calls` at a time.

        `busy` accumulates the time any of the calls' tools ran; `finished` gets each call's
        run by its index as it ends (denied, done, or ended by an error as it ran, with the
        observation its `ToolCallFinished` event gave): what a round that fails had done.

        Every call is guarded (middlewares, capabilities, approval: `_guard_calls`) before
        any starts: a round that fails there (a capability refuses a call) fails with no call
        started, rather than cut off calls that were half done.
        """
        if self._guarded:
            resolved = await self._guard_calls(session, [(c.name, c.arguments) for c in calls])
        else:
            resolved = [(c.name, c.arguments, self._unreadable_answer(c.arguments)) for c in calls]
        slots = _RoundSlots(self._config.max_parallel_tool_calls)

        async def bounded(index: int, name: str, arguments: Any, denial: Any) -> ToolRun:
            # Each call goes into `finished` as it ends (see `_call_tool`).
            if denial is not None:
                with slots.watch():  # a listener may fail on the denial's events
                    return self._denied(session, name, arguments, denial, index, finished)
            return await slots.run(
                lambda: self._call_tool(
                    session, name, arguments, None, index, False, busy, finished
                )
            )

        return await _all_or_none(bounded(i, *call) for i, call in enumerate(resolved))

    async def _call_tool(
        self,
        session: AgentSession,
        name: str,
        arguments: Any,
        key: str | None = None,
        index: int = 0,
        guard: bool = True,
        busy: _BusyTime | None = None,
        ended: dict[int, ToolRun] | None = None,
        task: asyncio.Task[Any] | Literal[False] | None = False,
        on_start: Callable[[], object] | None = None,
    ) -> ToolRun:
        """Runs one tool call through capabilities, approvals, middlewares and metrics.

        `index` is the call's place in its round. Returns the observation, the tool's time,
        and the call that ran (a middleware or an approval may have changed it). Without
        `guard`, the call was guarded already (`_guard_call`) and is run as it is. `busy`
        (a parallel round's, or a journaled call's) is told when the tool runs. Once
        guarded, the call goes into `ended` at `index` as it ended, before its
        `ToolCallFinished` event (a listener may fail on that): done, or ended by an error
        (cancelled, timed out, a policy error) with the observation that event gives. That is
        what a failed round keeps of it. `task` is the task the call runs in, when the caller
        knows it, and `on_start` is called right before the tool is (see `ToolRegistry.call`).
        """
        if type(arguments) is _Unreadable:  # written wrong: answered, before any guard
            answer = self._unreadable_answer(arguments)
            assert answer is not None
            return self._denied(session, name, arguments, answer, index, ended)
        if self._guarded and guard:
            name, arguments, denial = await self._guard_call(session, name, arguments)
            if denial is not None:
                return self._denied(session, name, arguments, denial, index, ended)
        counted = name if name in self._tool_names else self._unlisted_name(name)
        # Read once: a call and its failure count in one object, even if it is replaced.
        metrics = self._metrics
        metrics.record_tool_call(counted, session.agent_id)
        events = self.events
        # Computed also when a listener joins while the tool runs.
        step_index = len(session.steps) + index
        start: float | None = None  # until the tool starts
        busy_started = False
        try:
            # In the `try`: a listener failing on the start fails the run, the call finished.
            if events.active:
                started = (session.session_id, step_index, name, arguments)
                events.emit_new(ToolCallStarted, started)
            if busy is not None:
                busy.start()
                busy_started = True
            # The setting's backing attribute: a tool call pays no property call.
            limit = self._config.max_observation_chars
            start = time.perf_counter()
            if self._tracer is not None and (tracer := _RUN_TRACER.get()) is not None:
                with _traced(tracer, "agent.tool", {"tool": name}) as span:
                    observation = await (
                        self._tools.call(name, arguments, limit, key, task=task)
                        if on_start is None  # not passed: a registry's own `call` may not take it
                        else self._tools.call(
                            name, arguments, limit, key, task=task, on_start=on_start
                        )
                    )
                    if observation.error_kind is not None:  # a failure the tool call absorbed
                        _mark_failed(span, observation)
            else:
                observation = await (
                    self._tools.call(name, arguments, limit, key, task=task)
                    if on_start is None  # not passed: a registry's own `call` may not take it
                    else self._tools.call(name, arguments, limit, key, task=task, on_start=on_start)
                )
        except BaseException as error:  # cancelled, timed out, or a policy error: it goes on
            metrics.record_tool_failure(counted, session.agent_id)  # as the events say
            if busy is not None and busy_started:
                busy.stop()
            interrupted = _interrupted_observation(error, "the call ended with", self._config)
            tool_ms = 0.0 if start is None else (time.perf_counter() - start) * 1000.0
            if ended is not None:
                ended[index] = (interrupted, tool_ms, name, arguments)
            if events.active:  # a started call finishes in the events too, as it ended
                content, kind = interrupted
                finished = (session.session_id, step_index, name, content, kind, tool_ms)
                try:
                    events.emit_new(ToolCallFinished, finished)
                except Exception:  # a callback's failure must not replace how the call ended
                    logger.exception(
                        "event callback failed on the end of tool call %r of session %s",
                        name,
                        session.session_id,
                    )
            raise
        tool_ms = (time.perf_counter() - start) * 1000.0
        if busy is not None:
            busy.stop()
        if observation.error_kind is not None:
            metrics.record_tool_failure(counted, session.agent_id)
        run = (observation, tool_ms, name, arguments)
        if ended is not None:  # before the event: a listener failing on it fails the round
            ended[index] = run
        if events.active:
            content, error_kind = observation
            finished = (session.session_id, step_index, name, content, error_kind, tool_ms)
            events.emit_new(ToolCallFinished, finished)
        return run

    def _unlisted_name(self, name: str) -> str:
        """The name the metrics count a call under when `name` is not one of the run's tools.

        `name` when the registry has it (a tool registered during the run), else
        `(unknown tool)`.
        """
        return name if name in self._tools else _UNKNOWN_TOOL

    def _unreadable_answer(self, arguments: Any) -> Observation | None:
        """The answer to a call the model wrote wrong (its arguments `_Unreadable`), else None.

        Such a call never runs: no middleware, capability or approval handler sees it, and a
        checkpointed run journals no intent of it (a resume answers it again).
        """
        if type(arguments) is not _Unreadable:
            return None
        text = _truncate(f"error: {arguments.error}", self._config.max_observation_chars)
        return Observation(text, "permanent")

    def _denied(
        self,
        session: AgentSession,
        name: str,
        arguments: Any,
        denial: Observation,
        index: int,
        ended: dict[int, ToolRun] | None = None,
    ) -> ToolRun:
        """The run of a call that does not run (denied, or its tool unknown when guarded).

        The approval handler denied it, or its tool was not in the registry when the call
        was guarded (`not_found`). A failed call in the metrics, and a call that started and
        failed at once in the events (so listeners see the denial), and a failed tool span
        in a trace. The run goes into `ended` at `index` before the events (see `_call_tool`).
        """
        if self._tracer is not None and (tracer := _RUN_TRACER.get()) is not None:
            with tracer.start_as_current_span("agent.tool", attributes={"tool": name}) as span:
                _mark_failed(span, denial)
        if denial.error_kind == "not_found":  # even if registered since: it was not reached
            counted = _UNKNOWN_TOOL
        else:
            counted = name if name in self._tool_names else self._unlisted_name(name)
        self._metrics.record_tool_call(counted, session.agent_id)
        self._metrics.record_tool_failure(counted, session.agent_id)
        run = (denial, 0.0, name, arguments)
        if ended is not None:
            ended[index] = run
        events = self.events
        if events.active:
            step_index = len(session.steps) + index
            started = (session.session_id, step_index, name, arguments)
            content, error_kind = denial
            finished = (session.session_id, step_index, name, content, error_kind, 0.0)
            try:
                events.emit_new(ToolCallStarted, started)
            finally:  # even if a listener failed on the start: every start gets its finish
                events.emit_new(ToolCallFinished, finished)
        return run

    async def _guard_call(
        self, session: AgentSession, name: str, arguments: Any
    ) -> tuple[str, Any, Observation | None]:
        """Middlewares, capabilities and approval of one call (see `_guard_calls`)."""
        (resolved,) = await self._guard_calls(session, [(name, arguments)])
        return resolved

    async def _guard_calls(
        self, session: AgentSession, calls: Sequence[tuple[str, Any]]
    ) -> list[tuple[str, Any, Observation | None]]:
        """Middlewares, capabilities and approval of a round's calls, before any of them runs.

        Returns each call to run (as the middlewares left it) and its denial, if denied. The
        middlewares see the calls in order; the capabilities check every call they leave
        (so a rewrite cannot reach a tool the agent may not use) before any action is
        recorded, so a round with a refused call fails having charged none; the approval
        questions are then asked concurrently (one at a time per tool, see `_approve`). So
        a call the handler denies has used an action: no one is asked to approve a call the
        action limit would then refuse.

        A call of a tool the registry does not have (a name the model made up) is neither
        checked, counted nor asked about: its observation is `not_found`, with or without
        capabilities, even if the tool is registered before the call would run (it was not
        checked).
        """
        rewritten: list[tuple[str, Any]] = []
        answers: list[Observation | None] = []  # of the calls written wrong, never guarded
        guarded = bool(self._hooks["on_tool_call"]) or self.approval_handler is not None
        for name, arguments in calls:
            answer = self._unreadable_answer(arguments)
            if answer is None:
                if guarded:
                    # The guards' own copy: one that edits it in place changes the call that
                    # runs, not the model's request (its step keeps it; a resume sends it
                    # back).
                    arguments = _copied(arguments)
                for hook in self._hooks["on_tool_call"]:
                    result = await _maybe_await(hook(session, name, arguments))
                    if result is not None:
                        name, arguments = _rewritten_call(result)
            rewritten.append((name, arguments))
            answers.append(answer)
        tools = self._tools
        known = [
            name
            for (name, _), answer in zip(rewritten, answers, strict=True)
            if answer is None and name in tools
        ]
        capabilities = self.capabilities
        if capabilities is not None and known:
            for name in known:
                capabilities.check_tool(name)
            # All or none: a round the limit cannot take whole is refused having used none.
            record_actions = getattr(capabilities, "record_actions", None)
            if record_actions is not None:
                record_actions(len(known))
            else:
                for _ in known:
                    capabilities.record_action()
        limit = self._config.max_observation_chars
        # Read once: the round's calls are all asked of the handler it started with, even if
        # it is replaced or cleared (by another run's code, say) while they wait their turn.
        handler = self.approval_handler
        if handler is None:
            return [
                (n, a, answer if answer is not None or n in tools else tools.not_found(n, limit))
                for (n, a), answer in zip(rewritten, answers, strict=True)
            ]
        try:
            return await _all_or_none(
                _answered(n, a, answer)
                if answer is not None
                else self._decide(session, n, a, handler)
                if n in tools
                else _not_found(tools, n, a, limit)
                for (n, a), answer in zip(rewritten, answers, strict=True)
            )
        except BaseException:
            # Cut off (or the handler failed) before the round was decided: none of its
            # calls ran, and a resume guards and records them again.
            release = getattr(capabilities, "release_actions", None)
            if release is not None and known:
                release(len(known))
            raise

    async def _decide(
        self, session: AgentSession, name: str, arguments: Any, handler: ApprovalHandler
    ) -> tuple[str, Any, Observation | None]:
        """`handler`'s decision on one call: the call to run and its denial."""
        decision = await self._approve(session, name, arguments, handler)
        if decision.action == "deny":
            reason = decision.reason or "denied by the approval handler"
            denial = f"error: tool call {name!r} denied: {reason}"
            limit = self._config.max_observation_chars
            return name, arguments, Observation(_truncate(denial, limit), "permanent")
        if decision.action == "edit":
            arguments = decision.arguments
            if nested_deeper_than(arguments, MAX_ARGUMENT_DEPTH):  # as a hook's rewrite
                raise AgentRuntimeError(
                    f"the approval handler's edit has arguments {TOO_DEEP}: a session "
                    "holding them could not be saved"
                )
        return name, arguments, None

    async def _approve(
        self, session: AgentSession, name: str, arguments: Any, handler: ApprovalHandler
    ) -> ApprovalDecision:
        # One question per tool at a time: a later call waits for the first answer, which may
        # be remembered for it. (A round's questions are asked concurrently, before any call
        # runs: see `_guard_calls`; questions about different tools are asked at once.)
        locks = self._approval_locks.setdefault(session.session_id, {})
        async with locks.setdefault(name, asyncio.Lock()):
            # Approvals and denials are remembered per tool; an edit only for the same
            # arguments, since its edited arguments answer that call alone. A remembered
            # denial of the tool wins over all; then the edit for these arguments. The key is
            # the call's as asked: a handler may edit the arguments dict it is given.
            asked = (name, _arguments_key(arguments))
            # Read, not made: only a session that remembers a decision holds an entry (the
            # entries are what `REMEMBERED_APPROVAL_SESSIONS` counts).
            cache = self._approvals.get(session.session_id, {})
            cached = cache.get(name)
            if cached is None or cached.action != "deny":
                cached = cache.get(asked) or cached
            if cached is not None:
                return cached
            decision = await _maybe_await(handler(session, name, arguments))
            if not isinstance(decision, ApprovalDecision):
                raise AgentRuntimeError(
                    "approval handler must return an ApprovalDecision, got "
                    f"{type(decision).__name__}"
                )
            # Not remembered once the handler was replaced (its memory went with it).
            if decision.remember and _same_handler(handler, self._approval_handler):
                remembered = self._approvals.setdefault(session.session_id, {})
                remembered[asked if decision.action == "edit" else name] = decision
            return decision

    def forget_approvals(self, session_id: str) -> None:
        """Drops the approval decisions remembered for a session.

        Raises:
            TypeError: `session_id` is not a str (an `AgentSession` would forget nothing).
        """
        if not isinstance(session_id, str):
            raise TypeError(
                f"session_id must be a str, got {type(session_id).__name__} (for a session, "
                "pass session.session_id)"
            )
        self._approvals.pop(session_id, None)

    def _drop_unremembered_approvals(self, session_id: str) -> None:
        """At a run's end: drops the session's approval locks, and unremembered decisions.

        The locks are the run's own: an `asyncio.Lock` belongs to the event loop it was first
        contended on, and the session's next run may be on another (a new `asyncio.run`).
        Remembered decisions stay (per session, until `forget_approvals`), for the
        `REMEMBERED_APPROVAL_SESSIONS` sessions that ran last (the oldest idle ones are
        forgotten first); a session with none keeps nothing, so runs do not pile up entries.
        """
        self._approval_locks.pop(session_id, None)
        remembered = self._approvals.pop(session_id, None)
        if not remembered:
            return
        # Put back last: the dict keeps its order, oldest run first.
        self._approvals[session_id] = remembered
        excess = len(self._approvals) - REMEMBERED_APPROVAL_SESSIONS
        if excess > 0:
            # The oldest keys, enough to hold `excess` idle ones, copied in one C call (runs
            # on other threads change the dict); not all of them: a copy of the 10,000 a run
            # cost ~50 us at the cap, where a service with a session per user stays.
            oldest = list(itertools.islice(self._approvals, excess + len(self._running)))
            idle = [s for s in oldest if s not in self._running][:excess]
            for old in idle:
                self.forget_approvals(old)

    def _step_record(
        self,
        session: AgentSession,
        step: Step,
        round_text: str | None = None,
        call_id: str | None = None,
        round_start: bool = False,
        reply: str | None = None,
    ) -> StepRecord:
        """The checkpoint record of `step`, the session's latest (it was appended already).

        The loops add each step to the session and count it themselves, and ask for its
        record only when checkpointing: a run without checkpoints pays no call per step.
        """
        from llm_agent_runtime.persistence.checkpoints import StepRecord

        record = StepRecord(step, reply, round_text, call_id, round_start)
        durable = self._durable_runs.get(session.session_id)
        if durable is not None and len(session.steps) == durable.first + 1:
            record.run_start = durable.start  # the run's first step: what the run started with
        return record

    # ------------------------------------------------------------------ durability
    # The one place checkpoints are written: per-step deltas (failures logged and counted,
    # never raised), the tool-call journal, and the final session (failure raised).
    def _log_event(self, event: Event) -> None:
        # The log records the run, not itself, and no text deltas: `LlmResponse` holds the
        # whole text (a streamed reply would be a record per chunk).
        if not isinstance(event, (CheckpointSaved, LlmTextDelta)):
            self._event_log.setdefault(event.session_id, []).append(event)

    async def _save_steps(self, session: AgentSession, records: list[StepRecord]) -> None:
        """Saves the session's latest steps, with any whose earlier save failed.

        A failure is logged and counted, never raised: the steps stay pending and go with
        the next save, so the saved steps never have a gap. Only the loss of a resumed run's
        claim is raised: the run stops.
        """
        assert self._checkpoints is not None
        session_id = session.session_id
        first = session.step_count - len(records) + 1
        unsaved = self._unsaved_steps.pop(session_id, None)
        if unsaved is not None:
            first, records = unsaved[0], unsaved[1] + records
        last = first + len(records) - 1
        events = self._event_log.pop(session_id, [])
        try:
            keys = await self._checkpoints.save_steps(session_id, first, records, events)
        except BaseException as error:  # a lost per-step checkpoint must not end the run
            self._event_log.setdefault(session_id, [])[:0] = events
            self._unsaved_steps[session_id] = (first, records)
            if not isinstance(error, Exception):
                raise  # cancelled: the run's own handler saves what it can
            if self._resume_claim_lost(session_id):
                raise  # the run stops (`_unless_resume_lost`)
            if self._checkpoints.refuses(session_id):  # no failure of the backend: not counted
                logger.warning(
                    "checkpoint of steps %d-%d of session %s refused: %r",
                    first,
                    last,
                    session_id,
                    error,
                )
                return
            # Logged once an outage begins, not at each step (each is counted all the same):
            # the steps go with the next save, which says when they were saved.
            again = unsaved is not None
            self._count_checkpoint_error(
                session,
                logging.DEBUG if again else logging.WARNING,
                "checkpoint of steps %d-%d of session %s failed%s: %r (kept for the next save)",
                first,
                last,
                session_id,
                " again" if again else "",
                error,
            )
            return
        if unsaved is not None:
            logger.info(
                "checkpoint of steps %d-%d of session %s saved, after failing",
                first,
                last,
                session_id,
            )
        for key in keys:
            self.events.emit(CheckpointSaved(session_id, key))

    async def _save_left_in_time(self, session: AgentSession, left: str, cancelled: bool) -> None:
        """`_save_what_is_left`, within the failed run's cleanup time (`_cleanup_seconds`).

        A run that timed out, or was cancelled, must not then hang on a backend that hangs:
        once that time is up, what is not saved is dropped (and logged), and the run's error
        goes to the caller. Then the run's claim is released (see `CheckpointStore.release`),
        waited for as long as that time has left.
        """
        assert self._checkpoints is not None
        session_id = session.session_id
        try:
            await self._save_through_cancellation(session, cancelled)
        finally:
            # A run that saved no step gives up its claim, so the next run may start where it
            # did.
            await self._release_claims(
                session_id, left, self._cleanup_seconds(session_id, cancelled)
            )

    async def _save_through_cancellation(self, session: AgentSession, cancelled: bool) -> None:
        """`_save_what_is_left` in a task of its own, given the cleanup time whatever comes.

        A cancellation of the run's task meanwhile does not cut it (the run's events and end
        were lost, unsaid): it has the time `_cleanup_seconds` gives (for a run failed by an
        error, none until its task is cancelled: its clock starts then). Once that time is
        up, it is cancelled and waited for as it unwinds (its state is this run's: a run
        starting after must not have its own cleared by it; a backend's write already in
        its thread is waited for, as any cancelled call of it is), and logged. A
        cancellation that came meanwhile is raised then.
        """
        from llm_agent_runtime.persistence._waiting import (
            retrieve_outcome,
            wait_through_cancellation,
        )

        session_id = session.session_id
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        saving = asyncio.ensure_future(self._save_what_is_left(session))
        await wait_through_cancellation(
            saving, lambda: self._cleanup_seconds(session_id, cancelled)
        )
        if not saving.done():
            saving.cancel()
            await wait_through_cancellation(saving)
            timeout = self._config.loop_timeout_ms
            logger.warning(
                "failed run %s: saving its unsaved steps and events took over its cleanup "
                "time (%.3g s): cancelled, what it had not written is dropped",
                session_id,
                _CANCELLED_CLEANUP_SECONDS if timeout is None else timeout / 1000,
            )
        retrieve_outcome(saving)  # it raises nothing but its own cancellation
        if task is not None and task.cancelling() > cancels:
            raise asyncio.CancelledError

    def _cleanup_seconds(self, session_id: str, cancelled: bool) -> float | None:
        """The seconds left for the cleanup of a failed run of `session_id`; None: no bound.

        Its stages (journal writes a cancellation cut short, saving what the run left
        unsaved, giving up its claims) share one deadline, set when the first asks: after
        `loop_timeout_ms` (so a run that timed out ends within twice that), or, for a run
        `cancelled` from outside that has none, after `_CANCELLED_CLEANUP_SECONDS`. A run
        without a timeout that failed by an error waits for its saves as long as they take,
        until its task is cancelled (as its cleanup runs, say: its clock starts then). A
        call its round cancelled (a sibling call failed the round) is not the run's
        cancellation: the run's task tells (`_run_cancelled`).
        """
        deadline = self._cleanup_deadlines.get(session_id)
        now = time.monotonic()
        if deadline is None:
            timeout = self._config.loop_timeout_ms
            if timeout is not None:
                seconds = timeout / 1000
            elif cancelled or _run_cancelled():
                seconds = _CANCELLED_CLEANUP_SECONDS
            else:
                return None
            deadline = self._cleanup_deadlines[session_id] = now + seconds
        return max(0.0, deadline - now)

    async def _release_claims(self, session_id: str, left: str, timeout: float | None) -> None:
        """Gives up the claims of a run that failed (`CheckpointStore.release`).

        In a task of its own, which a cancellation does not cut half way (see
        `delete_claims_apart`, which logs its failure and what a claim left behind refuses:
        `left`); waited for up to `timeout` seconds (None: until it ends).
        """
        assert self._checkpoints is not None
        from llm_agent_runtime.persistence.checkpoints import delete_claims_apart

        releasing = delete_claims_apart(session_id, self._checkpoints.release(session_id), left)
        await asyncio.wait([releasing], timeout=timeout)

    async def _save_what_is_left(self, session: AgentSession) -> None:
        """Saves a failed run's unsaved steps, its end and its events, best effort.

        The run's end (`CheckpointStore.save_run_end`) keeps the session's `duration_ms`,
        which `_run` measured before this save, so that the saved session's is the one in
        memory (the time of this save is in neither, as a final checkpoint's is in neither).
        The run's failure is what the caller must see, so nothing here raises but a
        cancellation. Whatever is not saved is dropped: nothing of the run stays in memory.
        """
        assert self._checkpoints is not None
        session_id = session.session_id
        try:
            if session_id in self._unsaved_steps:
                try:
                    await self._save_steps(session, [])  # takes the pending events along
                except Exception as save_error:
                    # A listener failed on the saved steps' `CheckpointSaved`, or the resumed
                    # run lost its claim (the steps stay unsaved: its new holder has them).
                    logger.warning(
                        "failed run %s: saving its unsaved steps: %r", session_id, save_error
                    )
                    if self._resume_claim_lost(session_id):
                        return
            pending = self._event_log.pop(session_id, None) or []
            durable = self._durable_runs.get(session_id)
            run = None if durable is None else durable.run
            try:
                if run is not None:  # the events go in the same write
                    await self._checkpoints.save_run_end(session, run, pending)
                elif pending and await self._checkpoints.exists(session_id):
                    # A run refused before it started (by a hook, say) logs its error with
                    # the session's earlier runs, if any: alone, it would be a session of
                    # one event record, which no load, sweep or fork takes for one.
                    await self._checkpoints.append_events(session_id, pending)
            except Exception as save_error:
                if self._checkpoints.refuses(session_id):
                    # Another run or worker holds the session: the run's own error says so.
                    logger.debug("end of refused run %s not saved: %r", session_id, save_error)
                else:
                    self._count_failed_write(session_id)
                    logger.warning("end of failed run %s not saved: %r", session_id, save_error)
        finally:
            self._unsaved_steps.pop(session_id, None)
            self._event_log.pop(session_id, None)

    async def _save_meta(
        self,
        session: AgentSession,
        mode: str,
        run: str | None,
        turn: bool,
        history: list[dict[str, Any]],
        resume: SessionState | None = None,
        before: tuple[str, str | None] | None = None,
        start: dict[str, Any] | None = None,
    ) -> None:
        """Saves the run's meta record: whether it is a `turn`, the chat `history` it starts with.

        `before` is the session's prompt and final answer before the run (see
        `CheckpointStore.save_meta`), `start` what the run starts with (its context and the
        session's memory hits with its recall are saved). A resumed run's record is saved
        already: it claims the step it continues from instead.
        """
        assert self._checkpoints is not None
        try:
            if resume is not None:
                lost = functools.partial(self._resume_lost, session.session_id)
                await self._checkpoints.claim_resumed(resume, lost)
            else:
                context, hits = (start["context"], start["memory_hits"]) if start else (None, 0)
                await self._checkpoints.save_meta(
                    session,
                    mode,
                    run,
                    turn=turn,
                    history=history,
                    before=before,
                    context=context,
                    memory_hits=hits,
                )
        except PersistenceError:
            self._count_failed_write(session.session_id)
            raise
        except Exception as error:  # a backend's own error, typed for the caller
            from llm_agent_runtime.persistence.base import session_key

            self._metrics.record_checkpoint_error()
            key = session_key(session.session_id) + ":meta"
            raise PersistenceError(f"session start checkpoint failed: {error}", key=key) from error

    def _count_failed_write(self, session_id: str) -> None:
        """Counts a checkpoint write of the session's run that failed.

        Not one the store refused (`CheckpointStore.refuses`: another run holds the session),
        which is no failure of the backend.
        """
        checkpoints = self._checkpoints
        if checkpoints is None or not checkpoints.refuses(session_id):
            self._metrics.record_checkpoint_error()

    async def _unless_resume_lost(self, body: Awaitable[None], session_id: str) -> None:
        """Awaits `body`, a resumed run's under a lease, stopped once its claim is lost.

        The claim's renewal (see `CheckpointStore.claim_resumed`) calls `_resume_lost` when
        another worker took the claim over: this task is cancelled then, wherever the run
        is (a model call, a tool call), and the run ends with that `PersistenceError`, so it
        runs no further tool as if it still held the session. Only while `body` runs: the
        run's failure handling after it (saving what is left, `release`) is never cut.
        """
        task = asyncio.current_task()
        assert task is not None
        lost: list[PersistenceError] = []
        self._resume_leases[session_id] = (task, lost)
        try:
            await body
        except BaseException as error:
            if not lost:
                raise
            # A cancellation besides the one of the lost claim (the caller's, the deadline's)
            # stays one.
            if task.uncancel() > 0 and isinstance(error, asyncio.CancelledError):
                raise
            raise lost[0] from None
        finally:
            del self._resume_leases[session_id]

    def _resume_claim_lost(self, session_id: str) -> bool:
        """Whether the resumed run of `session_id` lost its claim (see `_resume_lost`)."""
        held = self._resume_leases.get(session_id)
        return held is not None and bool(held[1])

    def _count_checkpoint_error(
        self, session: AgentSession, level: int, message: str, *args: Any
    ) -> None:
        """Counts a failed checkpoint write the run goes on after, and logs it.

        The record (`message % args`, at `level`) is logged as its caller's line: it says
        where the write failed.
        """
        session.checkpoint_errors += 1
        self._metrics.record_checkpoint_error()
        logger.log(level, message, *args, stacklevel=2)

    def _resume_lost(self, session_id: str, error: PersistenceError) -> None:
        """Stops the resumed run of `session_id`: its resume claim is another worker's now.

        Found by one of the run's own writes (see `CheckpointStore._keep_lease`), the run is
        not cancelled: that write raises `error`, which ends the run.
        """
        held = self._resume_leases.get(session_id)
        if held is not None and not held[1]:
            held[1].append(error)
            if held[0] is not asyncio.current_task():
                held[0].cancel()

    async def _save_final(self, session: AgentSession, run: str | None) -> None:
        from llm_agent_runtime.persistence.base import session_key

        assert self._checkpoints is not None
        key = session_key(session.session_id)
        # The episodic store is not saved with the session: it holds every agent's memories
        # (another agent's are not this session's to keep), and nothing reads it back.
        extra: dict[str, Any] = {}
        if self._working_memory is not None:
            saved = _saved_working_memory(self._working_memory, session.session_id)
            if saved is not None:
                extra["working_memory"] = saved
        # Steps whose own save failed go in the same write: a finished session has no gap.
        unsaved = self._unsaved_steps.get(session.session_id)
        try:
            deleting = await self._save_final_record(session, extra, unsaved, run)
        except PersistenceError as error:
            if unsaved is None:
                raise
            # The step records may be what the backend refuses. They failed before, and are
            # logged and counted as such; the session's own record (every step is in it) is
            # what a finished run must not lose: it goes with the steps folded into one base
            # record (as `prune` folds them: `fork` and `prune` read it), and only the
            # failure of that write fails the run.
            first, records = unsaved
            logger.warning(
                "checkpoint of steps %d-%d of session %s failed again (%r); saving the "
                "session with its steps folded into one record",
                first,
                first + len(records) - 1,
                session.session_id,
                error.__cause__ or error,
            )
            session.checkpoint_errors += 1
            # Its records go folded too: they hold what a fork's resume rebuilds the chat from.
            deleting = await self._save_final_record(session, extra, unsaved, run, folded=True)
        self._unsaved_steps.pop(session.session_id, None)
        self.events.emit(CheckpointSaved(session.session_id, key))
        # Saved, steps and events: a cancellation while the run's claims are deleted (in a
        # task of their own) leaves nothing of this write for the failed run's save.
        if deleting is not None:
            await asyncio.wait([deleting])

    async def _save_final_record(
        self,
        session: AgentSession,
        extra: dict[str, Any],
        unsaved: tuple[int, list[StepRecord]] | None,
        run: str | None,
        *,
        folded: bool = False,
    ) -> asyncio.Task[Any] | None:
        """One attempt of `_save_final`'s write, with the events logged since the last one.

        Returns the deletion of the run's claims (see `CheckpointStore.write_final`).

        Raises:
            PersistenceError: It failed (the events stay for the next write).
        """
        from llm_agent_runtime.persistence.base import session_key

        assert self._checkpoints is not None
        events = self._event_log.pop(session.session_id, [])
        try:
            _, deleting = await self._checkpoints.write_final(
                session, extra, events, unsaved, run=run, folded=folded
            )
        except BaseException as error:  # the events stay for the next write, cancelled too
            self._event_log.setdefault(session.session_id, [])[:0] = events
            if not isinstance(error, Exception):
                raise
            self._count_failed_write(session.session_id)
            key = session_key(session.session_id)
            # A backend's error names its key itself: this one's message named it twice.
            same_key = isinstance(error, PersistenceError) and error.key == key
            reason = error.args[0] if same_key else error
            raise PersistenceError(f"final checkpoint failed: {reason}", key=key) from error
        return deleting

    async def _journal_of_next_step(self, session: AgentSession) -> list[dict[str, Any]]:
        """The running run's journal entries of the session's next step (none of another run).

        Raises:
            PersistenceError: An entry lacks what a resume reads of it (see `_entry_problem`).
        """
        assert self._checkpoints is not None
        durable = self._durable_runs[session.session_id]
        step = session.step_count + 1
        entries = await self._checkpoints.load_journal(session.session_id, step, durable.run)
        durable.logged.clear()
        if entries:
            logged = await self._checkpoints.events_of_steps_from(
                session.session_id, step - 1, durable.run
            )
            durable.logged.update(filter(None, map(_logged_of, logged)))
        for entry in entries:
            problem = _entry_problem(entry)
            if problem is not None:
                from llm_agent_runtime.persistence.base import session_key

                # Its key, if its index says it; else the prefix of the step's entries.
                index = entry.get("index")
                key = f"{session_key(session.session_id)}:call:{step}:"
                key += str(index) if type(index) is int else ""
                raise PersistenceError(f"journal entry of step {step} {problem}", key=key)
        return entries

    async def _journal_reply(
        self, session: AgentSession, entry: dict[str, Any], held: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Journals the next step's model reply, or its re-prompt, under the step's call 0.

        `entry` is a `REPLY_STATES` entry (this run's id is added), `held` the reply entry
        the key holds (None: none). Returns what the key holds then, which the call's own
        entry replaces (see `CheckpointStore.journal`). Written before the step's guards
        decide (or the re-prompted model answers), so that a run cut off meanwhile is
        resumed with the reply it paid for. A failed write is logged and counted, not raised
        (a resume would ask the model again, as before this write): `held` is returned.

        Raises:
            PersistenceError: Another worker journaled a call of the step meanwhile (it runs
                the step), or this resumed run's claim is lost.
        """
        from llm_agent_runtime.persistence.checkpoints import is_stale_entry

        checkpoints = self._checkpoints
        assert checkpoints is not None
        session_id = session.session_id
        step = session.step_count + 1
        run = entry["run"] = self._durable_runs[session_id].run
        try:
            found = await checkpoints.journal(session_id, step, 0, entry, new=True, replacing=held)
            if found is not None and is_stale_entry(found, run):  # another run's: written over
                await checkpoints.journal(session_id, step, 0, entry)
                found = None
        except Exception as error:
            if self._resume_claim_lost(session_id):
                raise  # the run stops (`_unless_resume_lost`)
            self._count_checkpoint_error(
                session,
                logging.WARNING,
                "journal entry of the model reply of step %d of session %s failed: %r",
                step,
                session_id,
                error,
            )
            return held
        if found is not None:
            from llm_agent_runtime.persistence.base import call_key

            raise PersistenceError(
                f"step {step} of session {session_id!r} was journaled by another worker "
                f"meanwhile (a call's {found.get('state', 'intent')!r} entry): it runs the "
                "step, this run stops",
                key=call_key(session_id, step, 0),
            )
        return entry

    async def _durable_call(
        self,
        session: AgentSession,
        step: int,
        index: int,
        name: str,
        arguments: Any,
        entry: dict[str, Any],
        record_result: bool = False,
        resolved: tuple[str, Any, Observation | None] | None = None,
        busy: _BusyTime | None = None,
        replacing: dict[str, Any] | None = None,
    ) -> ToolRun:
        """Runs one tool call under the journal: its intent is recorded right before it runs.

        The call is first guarded (middlewares, capabilities, approval: `_resolve_calls`,
        unless `resolved` says what it resolved to already), so the journal and the repeat
        rule concern the tool that actually runs, and a run stopped before its call was
        approved has journaled no call (only, when guarded, its step's reply: see
        `_journal_reply`), so it is resumed with its guards asked again.

        The intent is not written for a lone call of an idempotent tool that does not take
        the key: after an interruption, its step is simply run again (model reply included).
        The result is journaled too when `record_result` (a call of a parallel round, whose
        step checkpoints come only after every call ends), even when the run is cancelled or
        times out as it is written (see `_through_cancellation`); a lone call's step
        checkpoint is its result, so it costs one write less. A failed write of the result
        is logged and counted as a failed step checkpoint is, not raised (the round's step
        checkpoint holds the result); a failed write of the intent is raised, before the
        call runs, and one cut off by a cancellation is taken back (`_withdraw_intent`). An
        entry of this run is honoured: a recorded result is reused, and a call that may have
        run is repeated (as it was approved, under the key it was journaled with) only for a
        tool that is idempotent or takes the key. An entry another run wrote is stale: the
        call is run as if it had none. `replacing` is the entry of the step's model reply the
        call's key holds (see `_journal_reply`): the intent replaces it.
        """
        checkpoints = self._checkpoints
        assert checkpoints is not None
        session_id = session.session_id
        if entry.get("state") == "done":
            run = _journaled_run(entry, name, arguments)
            self._reused_call_events(session, index, run)
            return run
        if resolved is None:
            resolutions = await self._resolve_calls(
                session, step, [(index, name, arguments, entry)]
            )
            resolved = resolutions[index]
        name, arguments, denial = resolved
        from llm_agent_runtime.persistence.checkpoints import is_stale_entry, stored_form

        run_id = self._durable_runs[session_id].run
        key = self._call_key(session_id, step, index, entry)
        # A registry's own `call` (its class's or its instance's) may serve names its `get`
        # does not know, and may not tell when its tool starts (`on_start`).
        own_call = getattr(self._tools.call, "__func__", None) is ToolRegistry.call
        # A journaled call that ran no tool (see below): this run's intent says so already
        # when a resume runs it, even for a tool registered since whose call is not
        # journaled again (a lone call of an idempotent tool).
        unlisted = (
            entry.get("state") == "intent"
            and entry.get("unlisted") is True
            and not is_stale_entry(entry, run_id)
        )
        wrote_intent = False  # this call wrote its intent (see `_call_journaled`)
        intent = {
            **entry,
            "tool": name,
            "arguments": arguments,
            "key": key,
            "state": "intent",
            "run": run_id,
        }
        if denial is not None:  # denied: nothing runs, so no intent
            run = self._denied(session, name, arguments, denial, index)
        else:
            spec = self._tools.get(name)
            # An intent only matters for a call that must not run twice: a lone call of an
            # idempotent tool is simply repeated (with the step) after an interruption, which
            # saves a write per step. A tool taking the key keeps it: its key must name this
            # call.
            if record_result or spec is None or not spec.idempotent or spec.takes_idempotency_key:
                if spec is None:
                    # No tool has the name: a resume then knows the call ran no tool
                    # (`_check_repeatable`), and this run answers it so, even if its tool is
                    # registered meanwhile. Not with a registry's own `call`, which may serve
                    # the name: a resume then refuses the call, as one that may have run.
                    if own_call:
                        intent["unlisted"] = True
                        unlisted = True
                elif not spec.takes_idempotency_key:
                    # A resume then knows the call's tool got no key: repeated under one by a
                    # tool upgraded to take it, it could not tell the repeat (the charge twice).
                    intent["unkeyed"] = True
                # Written only if the call has no entry: another worker resuming this run may
                # have journaled it since this one read the journal. Its entry is honoured as
                # one found at resume: a result is reused, a call that may run (or have run)
                # elsewhere is not run again unless the tool allows it. Another run's entry is
                # stale (that run was interrupted, then its turn run again instead of
                # resumed): written over.
                try:
                    found = await checkpoints.journal(
                        session_id, step, index, intent, new=True, replacing=replacing
                    )
                    if found is not None and is_stale_entry(found, run_id):
                        await checkpoints.journal(session_id, step, index, intent)
                        found = None
                except asyncio.CancelledError:
                    await self._withdraw_intent(session, step, index, intent, replacing)
                    raise
                except Exception:
                    self._count_failed_write(session_id)
                    raise
                wrote_intent = found is None
                if found is not None:
                    if found.get("state") == "done":
                        return _journaled_run(found, name, arguments)
                    elif found.get("state") in _REPLY_STATES:  # kept changing: not this run's
                        from llm_agent_runtime.persistence.base import call_key

                        raise PersistenceError(
                            f"tool call {index} of step {step} of session {session_id!r}: "
                            "its journal entry keeps changing (another worker runs the step)",
                            key=call_key(session_id, step, index),
                        )
                    else:
                        ran = found.get("tool", name)
                        # As stored: a NaN (never equal to itself), a tuple or an int key
                        # comes back from the record changed.
                        journaled = found.get("arguments", stored_form(arguments))
                        if ran != name or journaled != stored_form(arguments):
                            raise ToolError(
                                f"tool call {index} of step {step} of session {session_id!r} "
                                f"(idempotency key {key!r}) was journaled by another worker "
                                f"as a call of {ran!r} with other arguments: this worker's "
                                "call is not run under that key",
                                tool=name,
                            )
                        self._check_repeatable(session_id, step, index, ran, found)
                        # Repeated under the key it was journaled with (see `_call_key`).
                        key = intent["key"] = self._call_key(session_id, step, index, found)
                        unlisted = found.get("unlisted") is True
            if unlisted:
                # No tool had its name when the call was made: it is what it was then, never
                # guarded, so never run by a tool registered since.
                missing = self._tools.not_found(name, self._config.max_observation_chars)
                run = self._denied(session, name, arguments, missing, index)
            elif wrote_intent and own_call:
                run = await self._call_journaled(session, step, index, intent, replacing, busy)
            else:
                run = await self._call_tool(session, name, arguments, key, index, False, busy)
        if record_result:  # a round's calls are journaled as they end (a denied one too)
            observation = run[0]
            done = {
                **intent,
                "state": "done",
                "observation": observation.content,
                "error_kind": observation.error_kind,
                "ran": [run[2], run[3]],
                "tool_ms": run[1],
            }
            try:
                # Even when the run is cancelled (or times out) meanwhile: the call ran, and a
                # resume would take an intent alone for a call that may have run.
                await _through_cancellation(
                    functools.partial(checkpoints.journal, session_id, step, index, done),
                    functools.partial(self._cleanup_seconds, session_id, False),
                )
            except Exception as error:
                # Not raised: the call ran, and its siblings run on. Its result stays with the
                # round, whose step checkpoint makes it durable; until then its intent stands
                # (a resume repeats the call only if that is safe), as when a step's save fails.
                if self._resume_claim_lost(session_id):
                    raise  # the run stops (`_unless_resume_lost`)
                self._count_checkpoint_error(
                    session,
                    logging.WARNING,
                    "journal entry of tool call %d of step %d of session %s failed: %r",
                    index,
                    step,
                    session_id,
                    error,
                )
        return run

    async def _call_journaled(
        self,
        session: AgentSession,
        step: int,
        index: int,
        intent: dict[str, Any],
        replacing: dict[str, Any] | None,
        busy: _BusyTime | None,
    ) -> ToolRun:
        """Runs the call whose `intent` `_durable_call` just journaled.

        A call that ends before its tool was called (a cancellation asked as its
        `ToolCallStarted` event went out, delivered first; a listener failing on that event)
        never ran: its intent is taken back, as that of a call cut off as it was journaled.
        """
        started = False

        def start() -> None:
            nonlocal started
            started = True

        name, arguments, key = intent["tool"], intent["arguments"], intent["key"]
        try:
            return await self._call_tool(
                session, name, arguments, key, index, False, busy, on_start=start
            )
        except BaseException:
            if not started:
                await self._withdraw_intent(session, step, index, intent, replacing)
            raise

    def _reused_call_events(self, session: AgentSession, index: int, run: ToolRun) -> None:
        """Emits a journaled call's events as a resume reuses its outcome.

        The call is not run again. Its events are emitted (and logged) unless the event log
        has them: a run cancelled there logged them, a process that died lost them with it.
        """
        observation, tool_ms, name, arguments = run
        step = len(session.steps) + index
        if self.events.active and not self._logged(
            session, ToolCallFinished, step, name, observation.content
        ):
            sid = session.session_id
            finished = (sid, step, name, observation.content, observation.error_kind, tool_ms)
            try:
                self.events.emit_new(ToolCallStarted, (sid, step, name, arguments))
            finally:  # even if a listener failed on the start: every start gets its finish
                self.events.emit_new(ToolCallFinished, finished)

    def _reused_reply_event(self, session: AgentSession, text: str, model_ms: float) -> None:
        """Emits a journaled reply's `LlmResponse` as a resume reuses it.

        The model is not asked again; the event is emitted (and logged) unless the event log
        has it (see `_reused_call_events`).
        """
        step = len(session.steps)
        if self.events.active and not self._logged(session, LlmResponse, step, text):
            self.events.emit_new(LlmResponse, (session.session_id, step, text, model_ms))

    def _reused_reprompt_event(self, session: AgentSession, reprompt: dict[str, Any]) -> None:
        """`_reused_reply_event` of the reply a journaled re-prompt answered (paid for too)."""
        reply = reprompt.get("reply")
        if isinstance(reply, str):
            self._reused_reply_event(session, reply, _reprompt_cost(reprompt)[2])

    def _logged(self, session: AgentSession, kind: type, step: int, *fields: Any) -> bool:
        """Whether the event log holds the event of `kind` of `step` with `fields`.

        A reply is logged as the model gave it, and journaled as its step was read from it
        (ReAct cuts it where the step ends): any logged reply of the step that starts with
        it is the one.
        """
        durable = self._durable_runs.get(session.session_id)
        if durable is None:
            return False
        if kind is LlmResponse:
            (text,) = fields
            return any(
                e[0] == "LlmResponse" and e[1] == step and e[2].startswith(text)
                for e in durable.logged
            )
        return (kind.__name__, step, *fields) in durable.logged

    async def _withdraw_intent(
        self,
        session: AgentSession,
        step: int,
        index: int,
        intent: dict[str, Any],
        replacing: dict[str, Any] | None,
    ) -> None:
        """Takes back the intent of a call that never ran, for `_call_journaled` too.

        A call cut off as its intent was journaled, or before its tool was called. Else a
        resume would refuse it as one that may have run (a tool neither idempotent nor taking
        the key), to be settled by hand. Done even as the run is cancelled (or times out), as
        a result's entry is (see `_through_cancellation`); a failure leaves the intent,
        logged and counted as a failed checkpoint is, and so does an intent write that lands
        after it (one a backend still runs past its grace for a cancelled call): a resume
        then refuses the call, as before.
        """
        checkpoints = self._checkpoints
        assert checkpoints is not None
        withdraw = functools.partial(
            checkpoints.withdraw_intent, session.session_id, step, index, intent, replacing
        )
        try:
            cleanup = functools.partial(self._cleanup_seconds, session.session_id, False)
            await _through_cancellation(withdraw, cleanup)
        except Exception as error:
            self._count_checkpoint_error(
                session,
                logging.WARNING,
                "intent of tool call %d of step %d of session %s not taken back: %r",
                index,
                step,
                session.session_id,
                error,
            )

    async def _resolve_calls(
        self,
        session: AgentSession,
        step: int,
        calls: Sequence[tuple[int, str, Any, dict[str, Any]]],
        decided: list[Any] | None = None,
    ) -> dict[int, tuple[str, Any, Observation | None]]:
        """What journaled tool calls run, by index: tool, arguments, and a denial if any.

        `calls` are (index, name, arguments, journal entry). A call of this run that may have
        run (its intent is journaled) is repeated as it was approved, with the tool and
        arguments the intent names, when that tool allows it; those are checked first, so no
        approval is asked in vain. A call of a round whose guards decided already before an
        interruption (`decided`, by index: see `_decision_record`) runs as they decided. The
        others are guarded now, together (middlewares, capabilities, approval:
        `_guard_calls`).

        Raises:
            ToolError: A call may have run and its tool must not run twice.
        """
        session_id = session.session_id
        resolved: dict[int, tuple[str, Any, Observation | None]] = {}
        fresh: list[tuple[int, str, Any, dict[str, Any]]] = []
        for index, name, arguments, entry in calls:
            answer = self._unreadable_answer(arguments)
            if answer is not None:  # never runs, so never journaled as an intent
                resolved[index] = (name, arguments, answer)
            elif entry.get("state") == "intent" and entry.get("run") is not None:
                name, arguments = entry.get("tool", name), entry.get("arguments", arguments)
                self._check_repeatable(session_id, step, index, name, entry)
                resolved[index] = (name, arguments, None)
            elif decided is not None:  # guarded before the interruption: not asked again
                resolved[index] = _decided_call(decided[index], name, arguments)
            else:
                fresh.append((index, name, arguments, entry))
        if self._guarded and fresh:
            guarded = await self._guard_calls(session, [(n, a) for _, n, a, _ in fresh])
        else:
            guarded = [(n, a, None) for _, n, a, _ in fresh]
        for (index, _, _, entry), call in zip(fresh, guarded, strict=True):
            # An intent of an older version named the model's call: decided by the one that
            # runs.
            self._check_repeatable(session_id, step, index, call[0], entry)
            resolved[index] = call
        return resolved

    def _call_key(self, session_id: str, step: int, index: int, entry: dict[str, Any]) -> str:
        """The idempotency key of a call of the running run (see `idempotency_key`).

        A call this run journaled keeps the key it was journaled with (an intent written by
        an older version has a key without the run's id): a repeat goes out with it.
        """
        from llm_agent_runtime.persistence.checkpoints import idempotency_key, is_stale_entry

        run = self._durable_runs[session_id].run
        key = entry.get("key")
        if (
            isinstance(key, str)
            and entry.get("state") == "intent"
            and not is_stale_entry(entry, run)
        ):
            return key
        return idempotency_key(session_id, step, index, run)

    def _check_repeatable(
        self, session_id: str, step: int, index: int, name: str, entry: dict[str, Any]
    ) -> None:
        """Raises `ToolError` when a journaled call may have run and must not run twice.

        `name` is the tool that ran (or runs): the one the middlewares and the approval left.
        A call journaled while no tool had its name (`unlisted`) ran none: it is repeated as
        the `not_found` it was, even by a runtime that has such a tool now (the call was
        never guarded: see `_durable_call`). One journaled while
        its tool took no idempotency key (`unkeyed`) is repeated only by an idempotent tool:
        a tool that takes the key now could not tell the repeat from a new call.
        """
        if entry.get("state") != "intent":
            return
        if entry.get("unlisted") is True:
            return
        spec = self._tools.get(name)
        if spec is None:
            key = self._call_key(session_id, step, index, entry)
            raise ToolError(
                f"tool call {name!r} (step {step}, call {index}, idempotency key {key!r}) "
                f"may have run before the interruption, and tool {name!r} is not registered "
                "in this runtime: register it, or check its effect and record the outcome "
                "with settle_call(), then resume (or fork the session before this step)",
                tool=name,
            )
        keyed = spec.takes_idempotency_key and entry.get("unkeyed") is not True
        if not (spec.idempotent or keyed):
            key = self._call_key(session_id, step, index, entry)
            why = (
                "the tool took no idempotency key when it ran (one it takes now cannot tell "
                "the repeat)"
                if spec.takes_idempotency_key
                else "the tool is neither idempotent nor takes an idempotency key"
            )
            raise ToolError(
                f"tool call {name!r} (step {step}, call {index}, idempotency key {key!r}) "
                f"may have run before the interruption and {why}: check its effect, record "
                "the outcome with settle_call(), then resume (or fork the session before "
                "this step)",
                tool=name,
            )

    async def _durable_round(
        self,
        session: AgentSession,
        text: str,
        calls: list[ToolCall],
        journal: list[dict[str, Any]],
        reasoning: Sequence[dict[str, Any]] = (),
        usage: Usage | None = None,
        busy: _BusyTime | None = None,
        model_ms: float = 0.0,
        held: dict[str, Any] | None = None,
        reprompt: dict[str, Any] | None = None,
    ) -> list[ToolRun]:
        """Runs a round's tool calls (concurrently up to the limit), each journaled alone.

        The round's response (text, calls, the provider's reasoning, its token usage and
        model time, the re-prompt it answered) is journaled with each call, so that a resumed
        run sends the model what this one would have. With guards, it is journaled first
        (`_journal_reply`): a run cut off while they decide is resumed with it, and they are
        asked again. Before any call starts, every call is checked and guarded: a
        call that may have run and must not run twice, or one the capabilities refuse, fails
        the round with no call started. What the guards decided for each call of a parallel
        round goes with it too: a call still waiting for its slot when the run was cut off
        is resumed as decided, not guarded (hooked, charged, asked) again. `held` is the
        reply entry the round's call 0 has in the journal (see `_journal_reply`).
        """
        # A parallel round's finished calls are journaled one by one, so an interruption
        # re-runs none of them.
        step = session.step_count + 1
        saved_round: dict[str, Any] = {
            "text": text,
            "calls": [_journaled_call(c) for c in calls],
        }
        if reasoning:
            saved_round["reasoning"] = list(reasoning)
        if usage is not None and (usage.input_tokens or usage.output_tokens):
            saved_round["tokens"] = [usage.input_tokens, usage.output_tokens]
        saved_round["model_ms"] = model_ms
        # Any entry's: call 0's may still be the reply's, written before the guards decided.
        decided = next((e["round"]["decided"] for e in journal if "decided" in e["round"]), None)
        if decided is not None:  # the entries written from here on keep it too
            saved_round["decided"] = decided
        extra = {} if reprompt is None else {"reprompt": reprompt}
        if not journal and self._guarded:  # paid for: kept while the guards decide
            received = {"round": {**saved_round}, "index": 0, "state": "received", **extra}
            held = await self._journal_reply(session, received, held)
        entries = {e["index"]: e for e in journal if e.get("state") not in _REPLY_STATES}
        for index in range(len(calls)):
            entries.setdefault(index, {"round": saved_round, "index": index, **extra})
        pending = [i for i in range(len(calls)) if entries[i].get("state") != "done"]
        resolved = await self._resolve_calls(
            session,
            step,
            [(i, calls[i].name, calls[i].arguments, entries[i]) for i in pending],
            decided,
        )
        if decided is None and len(calls) > 1 and self._guarded and len(resolved) == len(calls):
            # Before any call's entry is written: each entry holds the round (see above).
            saved_round["decided"] = [
                _decision_record(call, resolved[i]) for i, call in enumerate(calls)
            ]

        def one(index: int, call: ToolCall) -> Awaitable[ToolRun]:
            return self._durable_call(
                session,
                step,
                index,
                call.name,
                call.arguments,
                entries[index],
                len(calls) > 1,
                resolved.get(index),
                busy,
                held if index == 0 else None,
            )

        if len(calls) == 1:
            return [await one(0, calls[0])]
        slots = _RoundSlots(self._config.max_parallel_tool_calls)
        return await _all_or_none(
            slots.run(functools.partial(one, i, c)) for i, c in enumerate(calls)
        )

    async def _close_answered(
        self, session: AgentSession, state: SessionState, reported: list[bool]
    ) -> None:
        """Closes the run of `state`, interrupted after its last step (see `resume`).

        `reported` gets True once the close emits the run's `RunFinished`.
        """
        assert self._checkpoints is not None
        session_id = session.session_id
        lost = functools.partial(self._resume_lost, session_id)
        # Claimed as a resume that runs on: a second worker closing it at once is refused,
        # and its closing is not logged twice. A claim cut off as it is taken (a
        # cancellation) is released as a failed close's is.
        await self._checkpoints.claim_resumed(state, lost)
        # The run's end, which its worker did not live to report (before the save: the event
        # log keeps it, as a run that ends here keeps its own). Not when it did report it,
        # and its final checkpoint then failed: the log holds it once.
        if self.events.active and not await self._checkpoints.run_end_logged(session_id):
            finished = (session_id, session.final_answer, len(session.steps))
            reported.append(True)
            self.events.emit_new(RunFinished, (*finished, session.duration_ms))
        await self._save_final(session, state.run)

    async def resume(
        self, session_id: str, model: InferFn | ChatProvider | CompletionProvider
    ) -> AgentSession:
        """Continues an interrupted run from its last completed step.

        Completed steps are never re-executed: their results come from the checkpoints. The
        run goes on with the context it started with (its system prompt, recalled memories
        and working memory, saved as it started), whatever this runtime's config and stores
        hold now: memories are not recalled, nor counted, again. A step interrupted mid-way
        continues from its journal: its model reply is reused, a finished tool call is not
        repeated, and a tool call that may have run is repeated only for tools that are
        idempotent or take the idempotency key. What is reused is emitted as events
        (`LlmResponse`; `ToolCallStarted` and `ToolCallFinished` with the call's journaled
        observation) unless the event log has them already: a process that died lost them.
        A call that had not been decided yet (its `on_tool_call` middlewares, capability
        check or approval were still going when the run was cut off) had not run: its reply
        is reused (it was journaled before they started, and paid for: the model is not
        asked again, nor its tokens charged again), and its guards are asked again. A call
        of a parallel round that was guarded with the round's others (its hooks run, its
        action charged, its approval decided) and waited for its slot runs as decided then,
        asked of no one again. The step keeps the tokens and the model time of its journaled
        reply. Without guards, a step whose one call is of an idempotent tool that does not
        take the key is not journaled (see `ToolSpec`'s `idempotent`): it is run again, model
        reply included.

        A corrective re-prompt (`AgentConfig.corrective_reprompt`) is replayed as it was
        sent, whatever this runtime's config: the model is sent the bad reply and the nudge
        with the rest of the run's requests, as the uninterrupted run sends them, and the
        re-prompt counts as the iteration it took. A run cut off while the re-prompted call
        was out is resumed with that call, sent what the run sent (the reply it got was
        never seen, so it is asked for again; the bad reply is not, and a second bad reply
        fails the run as it would have). The step that answers the re-prompt counts the
        wasted call's tokens and model time once (they were charged when it came).

        A run that was cancelled, or cut off by `loop_timeout_ms`, has not ended (its
        completed steps, its journal and its time are saved, not a final checkpoint): it is
        resumed as a run whose process stopped there is. A call cut off that way while its
        intent was being journaled had not run: its intent is taken back (the key gets back
        what it held, the step's reply or nothing), so the call is not refused as one that
        may have run; a process that dies there leaves the intent, and the call is refused.

        The interrupted run may be any turn of a multi-turn session (`run_turn`), the first
        or a later one: it is continued as that turn, with the chat history of the turns
        before it (trimmed as `run_turn` trims it), its own completed steps replayed and
        counted against `max_iterations` (the earlier turns' are not), and, when it ends,
        the turn added to the session's chat history as `run_turn` adds it. The same holds
        for a fork (`fork`) taken inside a turn.

        Resume only a run whose worker has stopped: a first run (`run_agent`, `run_turn`)
        holds no claim while it goes on (only resumes do), so a run still going in another
        process is not seen, and both would then run its next steps. A supervisor resumes
        the sessions whose worker died, not every unfinished one.

        Args:
            session_id: The interrupted session.
            model: Async `prompt -> reply` (ReAct text), or a provider (told apart as
                `run_turn` tells them: a provider needs only the methods its mode calls, such
                as `chat` alone in tools mode); use the same mode as the interrupted run.

        Returns:
            The finished session (at once when the run had already finished, or had ended:
            a run that `error_recovery="stop"` stopped at a failed tool step is closed as
            it stopped, whatever this runtime's config, and not run on). A run that had
            ended but was not closed is closed with the `RunFinished` event its worker did
            not emit (to listeners and to the saved event log); a worker that emitted it,
            its final checkpoint failing after, logged it already: it is not emitted again.

        Raises:
            AgentRuntimeError: Without a checkpoint backend; when the session is running (in
                this runtime: a run whose turn is over, writing its final checkpoint, is
                waited for on its event loop); when the run started after steps that are not
                saved (records of older versions), as its context cannot then be rebuilt; when
                the run was interrupted in the other mode (react or tools) than this resume
                would run; when `model` lacks a method its mode calls; for a turn in tools
                mode, when its history has a tool exchange a provider would refuse (see
                `run_turn`); when `max_iterations` leaves no iteration for the journaled step
                the run stopped in (its model reply, the calls that ran of it).
            PersistenceError: When `session_id` is not a string; when nothing is saved for
                the session or a record is corrupt; when another worker resumes it (one at a
                time: the claim of a resumer whose process ended on this host, or whose lease
                passed (`resume_lease_seconds`), is taken over, by one worker; one of another
                host without a lease keeps others out until `release_resume`), or resumed it
                since it was loaded; under a lease, when this run's claim was taken over while
                it ran (it stalled longer than the lease): the run stops at once, and runs no
                further tool.
            ToolError: When a call that may have run cannot safely be repeated (its tool is
                not registered, is neither idempotent nor takes an idempotency key, or took
                no key when the call ran).
            AgentLoopError: As the run it goes on with (`run_agent_with_provider`), which
                raises `ProviderError`, `BudgetExceededError` and `PolicyDeniedError` too.
        """
        if self._checkpoints is None:
            raise AgentRuntimeError("resume needs a checkpoint_backend")
        from llm_agent_runtime.persistence.base import escape_session_id

        escape_session_id(session_id)  # refuses a non-str (the session, say) before any lookup
        while True:
            await self._until_let_go(session_id)
            state = await self._checkpoints.load(session_id)
            session = state.session()
            if state.final is not None:
                return session
            if state.first_step > len(state.records):
                raise AgentRuntimeError(
                    f"session {session_id!r} cannot be resumed: its interrupted run started after "
                    f"step {state.first_step}, but only {len(state.records)} steps are saved (the "
                    "session was not checkpointed before that run, by a version that did not save "
                    "it then), so the run's context cannot be rebuilt; load_checkpoint shows what "
                    "is saved"
                )
            # Interrupted after its last step (an answer, or a failed tool step where
            # `error_recovery="stop"` stopped it): just close it.
            if session.final_answer is not None or state.stopped:
                if state.turn and session.final_answer is None:  # a turn with no answer
                    _add_turn(session, state.prompt, "")
                # Its async callbacks are waited for, and it is timed, as a run is (see `_run`);
                # its turn is over: a caller of the next one waits for it (`_release_awaited`).
                callbacks: set[asyncio.Future[Any]] = set()
                with _SESSIONS_LOCK:
                    taken = session_id in self._running  # a run of it began while this one loaded
                    if not taken:
                        self._running.add(session_id)
                        loop = asyncio.get_running_loop()
                        self._finishing[session_id] = _Finishing(callbacks, loop)
                if taken:  # waited for as above (or refused), then loaded again
                    continue
                callbacks_token = RUN_CALLBACKS.set(callbacks)
                settle = True  # unless cancelled
                timeout = self._config.loop_timeout_ms
                deadline = None if timeout is None else time.perf_counter() + timeout / 1000
                try:
                    # A run's span, as `_run` makes, around the close and its failure's end.
                    span, _ = self._run_span(session.agent_id, session_id)
                    with span:
                        try:
                            reported: list[bool] = []
                            closing = self._close_answered(session, state, reported)
                            if timeout is None:
                                await closing
                            elif await _within_deadline(closing, timeout / 1000):
                                raise AgentLoopError(f"{_timed_out(timeout)} (closing the session)")
                        except BaseException as error:
                            # As a run's failure ends: the ErrorEvent emitted, its claims
                            # released; and, after the RunFinished this close reported, logged
                            # with the session (a run that reported its end logged its own
                            # failure then).
                            left = _RESUME_CLAIM_LEFT
                            settle = False
                            await self._end_failed_run(
                                session, error, self.events, left, bool(reported)
                            )
                            settle = isinstance(error, Exception)
                            raise
                finally:
                    # Closed by the GC outside its task's context: the context went with it.
                    with contextlib.suppress(ValueError):
                        RUN_CALLBACKS.reset(callbacks_token)
                    self._checkpoints.forget(session_id)  # nothing of it stays in memory
                    self._event_log.pop(session_id, None)  # saved, or of no later write
                    with _SESSIONS_LOCK:
                        self._running.discard(session_id)
                        _let_go(self._finishing, session_id, callbacks)
                    if callbacks and settle:
                        await settle_callbacks(callbacks, deadline, session_id)
                return session
            break
        # A turn goes on with the history it started with (`session()` gives it).
        history = self.trim_history(session.messages) if state.turn else None
        agent_id, prompt = state.agent_id, state.prompt
        # A provider is told from a model as `run_turn` tells it.
        if _is_infer(model):
            _check_resume_mode(session_id, state.mode, "react")
            return await self._run(agent_id, prompt, model, None, session, history, state)
        _check_resume_mode(session_id, state.mode, self._config.mode)
        if self._config.mode == "tools":
            _required("provider", model, ["chat"])
            if history is not None:
                _check_tool_exchanges(session.messages)
            chat = cast("ChatProvider", model)  # it has `chat`: checked just above
            return await self._run(agent_id, prompt, None, chat, session, history, state)
        self._check_provider(model)
        infer, stream = self._text_model(model)
        return await self._run(
            agent_id, prompt, infer, None, session, history, state, stream=stream
        )

    async def settle_call(
        self,
        session_id: str,
        step: int,
        index: int,
        observation: str,
        error_kind: str | None = None,
    ) -> None:
        """Records the outcome of a tool call an interruption left unsettled.

        For a call `resume` refused to repeat (its `ToolError` names the step, index and
        idempotency key): once you have checked what the call did, record what the model
        should see, and `resume` continues with it instead of running the call.

        Args:
            session_id: The interrupted session.
            step: The call's step (an int >= 1), as the `ToolError` names it.
            index: The call's index in its step (an int >= 0).
            observation: What the model is shown of the call's result (cut to
                `config.max_observation_chars`, as a tool's result is).
            error_kind: None for a call that succeeded, else what failed, an `ErrorKind`
                (`"not_found"`, `"transient"` or `"permanent"`).

        Raises:
            AgentRuntimeError: Without a checkpoint backend; when an argument is not as
                described (nothing is written: a session holding such an outcome could not
                be loaded again).
            ToolError: When no unsettled call is journaled at that step and index (the
                session's saved steps hold the outcome of their calls).
        """
        if self._checkpoints is None:
            raise AgentRuntimeError("settle_call needs a checkpoint_backend")
        for name, value, least in (("step", step, 1), ("index", index, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise AgentRuntimeError(f"{name} must be an int >= {least}, got {value!r}")
        if not isinstance(observation, str):
            raise AgentRuntimeError(f"observation must be a string, got {_kind(observation)}")
        if error_kind is not None and error_kind not in _ERROR_KINDS:
            raise AgentRuntimeError(
                f"error_kind must be None or one of {', '.join(map(repr, _ERROR_KINDS))}, "
                f"got {error_kind!r}"
            )
        run = await self._checkpoints.current_run(session_id)  # another run's entry is stale
        entries = await self._checkpoints.load_journal(session_id, step, run)
        entry = next((e for e in entries if e.get("key", "").endswith(f":{step}:{index}")), None)
        if entry is None or entry.get("state") != "intent":
            raise ToolError(f"no unsettled tool call at step {step}, call {index}")
        # A lone call's intent stays one once its step is saved: the step holds the call's
        # outcome, and a resume never reads the journal of a saved step.
        if await self._checkpoints.saved_steps(session_id) >= step:
            raise ToolError(
                f"tool call {index} of step {step} is settled: step {step} is saved already, "
                "with the call's outcome (see AgentSession.load_checkpoint); an unsettled "
                "call is one of the step after the session's last saved step"
            )
        # Cut as a tool's own result is: the model is shown no more of a settled call.
        observation = _truncate(observation, self._config.max_observation_chars)
        settled = {**entry, "state": "done", "observation": observation, "error_kind": error_kind}
        await self._checkpoints.journal(session_id, step, index, settled)

    async def fork(self, session_id: str, step: int, new_id: str | None = None) -> str:
        """Starts a new session from step `step` of a saved one; returns its id.

        The new session has the first `step` steps; `resume` continues it from there.
        `new_id` (a fresh id when None or "", as `create_session` has it) must name no saved
        session: a fork never writes over one (its records would mix with the fork's): to
        retry a fork, fork into a new id.

        Raises:
            AgentRuntimeError: Without a checkpoint backend.
            PersistenceError: When the source is missing or shorter than `step`, when
                `new_id` is neither None nor a string, or when it already has checkpoints
                (the source's own id too).
        """
        if self._checkpoints is None:
            raise AgentRuntimeError("fork needs a checkpoint_backend")
        # Only None and "" ask for a fresh id (0 or [] is refused, as any id not a string).
        fork_id = new_session_id() if new_id is None or new_id == "" else new_id
        await self._checkpoints.fork(session_id, step, fork_id)
        return fork_id

    async def release_resume(self, session_id: str) -> bool:
        """Lets a session whose resumer's process ended be resumed again.

        One worker resumes a session at once: the others are refused (`PersistenceError`)
        until its resumed run ends. The claim of a resumer whose process ended on this host,
        or whose lease passed (`resume_lease_seconds`), is taken over by the next resume, as
        is one this process left (its deletion failed when the run did: a database down);
        one of another host without a lease (or written by an older version) cannot be told
        from a resume under way, so it stays until this deletes it: call it only once that
        process is known to have ended. Returns whether a claim was deleted.

        Raises:
            AgentRuntimeError: Without a checkpoint backend.
        """
        if self._checkpoints is None:
            raise AgentRuntimeError("release_resume needs a checkpoint_backend")
        return await self._checkpoints.release_resume(session_id)

    async def prune(self, session_id: str, keep_last: int) -> int:
        """Folds all but the last `keep_last` step checkpoints of a session.

        Safe while the session runs. Returns how many checkpoints were folded.

        Raises:
            AgentRuntimeError: Without a checkpoint backend.
            PersistenceError: `keep_last` is not an int >= 0, the session cannot be loaded,
                or a sweep deleted it as it was pruned.
        """
        if self._checkpoints is None:
            raise AgentRuntimeError("prune needs a checkpoint_backend")
        return await self._checkpoints.prune(session_id, keep_last)

    async def sweep(self, older_than: float, *, failed: bool = False) -> list[str]:
        """Deletes finished sessions that ended more than `older_than` seconds ago.

        With `failed`, sessions whose latest run failed, timed out or was cancelled (or a
        fork not resumed since it was made) more than `older_than` seconds ago too: they
        can no longer be resumed. Returns the ids of the deleted sessions. The approval
        decisions remembered here for a deleted session go with it (as `delete_session`'s): a
        new session under its id is asked again.

        Raises:
            AgentRuntimeError: Without a checkpoint backend.
            PersistenceError: `older_than` is not a number (or is NaN), `failed` is not a
                bool, or the backend fails; or, after sweeping the others, when sessions'
                final checkpoints are corrupt (see `CheckpointStore.sweep`).
        """
        if self._checkpoints is None:
            raise AgentRuntimeError("sweep needs a checkpoint_backend")
        return await self._checkpoints.sweep(
            older_than, failed=failed, on_deleted=self.forget_approvals
        )

    async def delete_session(self, session_id: str, *, force: bool = False) -> bool:
        """Deletes a saved session whose latest run ended, finished or not.

        Its checkpoints, tool-call journal and event log go, and the approval decisions
        remembered for it here (also when the deletion fails: it may fail once the records
        went, and a decision forgotten wrongly only asks again). A run that failed, timed
        out or was cancelled ended too: its session is deleted, and can no longer be
        resumed. Returns False when nothing of the session is saved. A turn or resume that
        starts while it is deleted is refused (see `CheckpointStore.delete_session`).
        `force` deletes a session whose records are damaged (which a deletion refuses, and
        a sweep leaves): unread and unchecked, so use it only for a session no run uses.

        Raises:
            AgentRuntimeError: Without a checkpoint backend.
            TypeError: `session_id` is not a str.
            PersistenceError: The session's latest run has not ended (it runs, or its
                process ended first: `resume` finishes it), a fork is being copied into it,
                a run or sweep took it as it was deleted, its records are corrupt (`force`
                deletes it), `force` is not a bool, or the backend fails.
        """
        if self._checkpoints is None:
            raise AgentRuntimeError("delete_session needs a checkpoint_backend")
        if not isinstance(session_id, str):
            raise TypeError(
                f"session_id must be a str, got {type(session_id).__name__} (for a session, "
                "pass session.session_id)"
            )
        try:
            return await self._checkpoints.delete_session(session_id, force=force)
        finally:  # also if it failed once its records went: at worst, asked again
            self.forget_approvals(session_id)

    async def session_events(self, session_id: str) -> list[dict[str, Any]]:
        """The logged events of a session, oldest first (type and fields of each).

        Every event of its runs but `LlmTextDelta` (the text is in `LlmResponse`; a streamed
        reply is not saved chunk by chunk) and `CheckpointSaved`. A float JSON has no number
        for (a NaN in a tool call's arguments) is logged as its `str`. Events are written
        with each step's checkpoint and with a failed run's end: a process that dies loses
        those of the step it was in, and a run cancelled (or cut off by `loop_timeout_ms`)
        whose backend takes longer than its cleanup may (a second, or its `loop_timeout_ms`:
        a busy `FileBackend` under load, a hung server) loses those it had not saved, with
        a warning; `resume` runs their steps again. `resume` logs, once, what it reuses of
        the step a dead run was in from the journal (the model's reply, each call that
        finished, or that `settle_call` settled); the dead run's `RunStarted` (when it died
        in its first step) and the start of a call it had not finished stay lost (see the
        `events` module).

        Raises:
            AgentRuntimeError: Without a checkpoint backend.
            PersistenceError: The backend fails, an event record is corrupt or is not an
                event (its key named), or the session has no checkpoint (an unknown id).
        """
        if self._checkpoints is None:
            raise AgentRuntimeError("the event log needs a checkpoint_backend")
        return await self._checkpoints.events(session_id)


def _is_infer(model: InferFn | ChatProvider | CompletionProvider) -> TypeIs[InferFn]:
    """Whether `model` is an `infer` function, not a provider nor a provider's class.

    A provider need not have every method of `LlmProvider`: it has `chat` or `complete`.
    """
    return (
        callable(model)
        and not isinstance(model, type)
        and not callable(getattr(model, "chat", None))
        and not callable(getattr(model, "complete", None))
    )


_SESSIONS_RUNNING: dict[int, object] = {}
"""The sessions with a run in progress, in any runtime of this process: by the session
object's id (not reused meanwhile: the run holds the object), the running run's token."""

_SESSIONS_LOCK = threading.Lock()
"""Guards `_SESSIONS_RUNNING` and the runtimes' `_running` sets: runs of one runtime may
start on several threads (each with its own event loop) at once."""


class _Finishing:
    """A finished run that still holds its session (writing its final checkpoint, say)."""

    __slots__ = ("callbacks", "loop", "waiters")

    def __init__(
        self, callbacks: set[asyncio.Future[Any]], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.callbacks = callbacks
        """The run's async callbacks (`RUN_CALLBACKS`), which tell its entry apart."""
        self.loop = loop
        """The run's loop, where its waiters are woken."""
        self.waiters: list[asyncio.Future[None]] = []
        """The callers waiting to run the next turn (see `AgentRuntime._release_awaited`),
        each woken as the run lets go."""


def _unmark(
    running: set[str],
    session_id: str,
    session: AgentSession,
    mark: object,
    finishing: dict[str, _Finishing] | None = None,
    callbacks: set[asyncio.Future[Any]] | None = None,
) -> None:
    """Takes away a run's marks of its session: only its own (`mark` is the run's token).

    The callers waiting to run the session's next turn are woken (see `_Finishing`, found
    by the run's `callbacks`; `finishing` is the runtime's).
    """
    with _SESSIONS_LOCK:
        if _SESSIONS_RUNNING.get(id(session)) is mark:
            del _SESSIONS_RUNNING[id(session)]
            running.discard(session_id)
        if finishing is not None:
            _let_go(finishing, session_id, callbacks)


def _let_go(
    finishing: dict[str, _Finishing], session_id: str, callbacks: set[asyncio.Future[Any]] | None
) -> None:
    """Wakes the callers waiting for the run of `callbacks` to let go of the session.

    See `_Finishing`. Called with `_SESSIONS_LOCK` held.
    """
    finished = finishing.get(session_id)
    if finished is not None and finished.callbacks is callbacks:
        del finishing[session_id]
        for waiter in finished.waiters:
            if not waiter.done():  # else its caller was cancelled meanwhile
                waiter.set_result(None)


def _add_turn(session: AgentSession, prompt: str, answer: str) -> None:
    """Adds a turn to the session's chat history: the user's message and the answer.

    Raises:
        AgentRuntimeError: The history is no longer a list (a tool or a listener replaced
            it during the run).
    """
    _check_messages_list(session, " (as the run's tools or listeners left it)")
    session.messages.append({"role": "user", "content": prompt})
    session.messages.append({"role": "assistant", "content": answer})


def _history_chars(message: dict[str, Any]) -> int:
    """What a message of a session's chat history takes of a request, in characters.

    Its text (with 2 for the indent of each of its later lines: see `_history_line`), its
    tool calls' `Action:` lines as a ReAct prompt writes them (indented alike, each with
    its line break), and 16 for the rest (role, framing).
    """
    content = message["content"]
    size = len(content) + 16
    if not content.isprintable():  # a line break is not printable: most texts hold none
        size += 2 * (len(content.splitlines()) - 1)
    for call in message.get("tool_calls") or ():
        size += len(_action_line(call)) + 1
    return size


def _action_line(call: dict[str, Any]) -> str:
    """A history tool call as a ReAct prompt shows it: `Action: name {arguments}`.

    Indented after any line break, as a message's text is: a name or an argument holding
    one (a U+2028 too, which JSON leaves as it is) adds no line of the prompt's own.
    """
    arguments = json.dumps(call.get("arguments", {}), ensure_ascii=False, default=str)
    return _indented(f"Action: {call['name']} {arguments}")


def _history_line(message: dict[str, Any]) -> str:
    """A message of a session's chat history as a ReAct prompt shows it: `role: content`.

    The text's later lines are indented, as a recalled memory's are: none reads as another
    message (`assistant: ...`) nor as a line of the prompt's own (`Question: ...`). An
    assistant message's tool calls follow its text as the `Action:` lines that ask for
    them (`_action_line`); the tool messages after it show the results.
    """
    content = _indented(message["content"])
    parts = [content] if content else []
    parts += map(_action_line, message.get("tool_calls") or ())
    return f"{message['role']}: " + "\n".join(parts)


def _chat_message(message: dict[str, Any]) -> Message:
    """A message of a session's chat history as a provider is sent it, tool fields included.

    An assistant message's `tool_calls` (dicts) become `ToolCall`s; a tool message keeps the
    `tool_call_id` and `name` that tie it to its call.
    """
    calls = message.get("tool_calls")
    return Message(
        message["role"],
        message["content"],
        [ToolCall(c["id"], c["name"], c.get("arguments", {})) for c in calls] if calls else None,
        message.get("tool_call_id"),
        message.get("name"),
    )


_LEFT_BY_HOOK = " (as an %s hook left it)"
"""Where a hook left `session.messages` no list (see `_check_messages_list`)."""


def _check_messages_list(session: AgentSession, where: str) -> None:
    """Raises `AgentRuntimeError` unless `session.messages` is a list.

    An answered turn is appended to it: anything else would fail after the model was paid.
    """
    if not isinstance(session.messages, list):
        raise AgentRuntimeError(
            f"session.messages must be a list of messages{where}, got {_kind(session.messages)}"
        )


def _check_tool_exchanges(messages: list[dict[str, Any]]) -> None:
    """Refuses a chat history whose tool exchanges a provider would refuse (tools mode).

    A tool message answers, by its `tool_call_id`, a call of the assistant message before
    it (tool messages between them answer its other calls), and every call is answered
    before the next message that is not a tool result. `trim_history` has checked each
    message's shape; it drops whole turns only, so what it keeps of a valid history is valid.

    Raises:
        AgentRuntimeError: A tool message answers no call of the assistant message before it
            (it has no `tool_call_id`, say), a call is left unanswered, two calls of a message
            share an id, or a call's arguments are not JSON data (a NaN, a set); names the
            message.
    """
    waiting: dict[str, int] = {}  # the ids of calls not answered yet -> their message
    for n, message in enumerate(messages, 1):
        if message["role"] == "tool":
            call_id = message.get("tool_call_id")
            if call_id is None:
                raise AgentRuntimeError(
                    f"session message {n}: a tool message needs the 'tool_call_id' of the call "
                    "it answers in tools mode (providers refuse a tool result that answers no "
                    "call): give it the id of a call of the assistant message before it, or "
                    "make it a user or assistant message"
                )
            if waiting.pop(call_id, None) is None:
                raise AgentRuntimeError(
                    f"session message {n}: tool message answers call {call_id!r}, which the "
                    "assistant message before it did not make (or another tool message "
                    "answered already)"
                )
            continue
        if waiting:
            break
        for call in message.get("tool_calls") or ():
            if call["id"] in waiting:  # one answer would do for both: providers refuse it
                raise AgentRuntimeError(
                    f"session message {n}: two of its tool calls have the id {call['id']!r} "
                    "(each call needs an id of its own, which its tool message answers)"
                )
            waiting[call["id"]] = n
            try:  # as the request carries them: strict JSON (no NaN, no set made a str)
                json.dumps(call.get("arguments", {}), allow_nan=False)
            except (TypeError, ValueError, RecursionError) as error:
                raise AgentRuntimeError(
                    f"session message {n}: the arguments of tool call {call['id']!r} are not "
                    f"JSON data, which a request carries ({error})"
                ) from None
    if waiting:
        ids = ", ".join(map(repr, waiting))
        raise AgentRuntimeError(
            f"session message {next(iter(waiting.values()))}: its tool call(s) {ids} have no "
            "tool message answering them after it (providers refuse a call left unanswered)"
        )


def _replay_rounds(records: list[StepRecord], messages: list[Message]) -> int:
    """Appends the chat messages of saved native rounds; returns how many rounds there were.

    `records` are the interrupted run's own steps. They give the messages it sent: each
    round's corrective re-prompt, if it had one (`StepRecord.reprompt`: the empty reply and
    the nudge, counted as a round, as the run counted it), its reply, with the calls the
    model asked for (`Step.requested` when a middleware or an approval changed one, else
    the call that ran) and its reasoning blocks, and each tool's result, marked as an error
    when the tool failed. A final answer (`StepRecord.is_final`) ends a turn: the rounds
    before one are another turn's (records of older versions did not tell a run's steps), so
    they are dropped.
    """
    rounds = 0
    replayed = len(messages)
    for position, record in enumerate(records):
        step = record.step
        if record.is_final:
            del messages[replayed:]
            rounds = 0
            continue
        if record.round_start:
            rounds += 1
            if record.reprompt is not None:
                rounds += 1
                messages.extend(_reprompt_messages(record.reprompt))
            calls = []
            # By index: a slice from here per round would copy the rest of a long run's
            # records each time (a resume quadratic in its steps).
            for later_position in range(position, len(records)):
                later = records[later_position]
                if later is not record and (later.round_start or later.is_final):
                    break
                name, arguments = _requested_call(later)
                calls.append(ToolCall(id=later.call_id or "", name=name, arguments=arguments))
            text, reasoning = record.round_text or "", record.round_reasoning or ()
            messages.append(Message("assistant", text, calls, None, None, reasoning))
        name = _requested_call(record)[0]
        result = Message("tool", step.observation, [], record.call_id, name)
        result.is_error = step.error_kind is not None
        messages.append(result)
    return rounds


def _requested_call(record: StepRecord) -> tuple[str, Any]:
    """The tool call a saved native step's model asked for: its name and arguments."""
    step = record.step
    requested = step.requested
    if requested is not None:
        return requested["name"], requested["arguments"]
    return step.action, step.action_input


def _unique_call_ids(calls: list[ToolCall]) -> list[ToolCall]:
    """A round's calls, each with its own id.

    A tool's result is matched to its call by id, and providers refuse a message whose
    calls share one: a call whose id an earlier call of the round has is given
    `<id>_<position>` (as often as it takes), as the providers name such calls.
    """
    if len(calls) < 2:
        return calls
    taken: set[str] = set()
    unique = calls
    for position, call in enumerate(calls):
        given = call.id
        while given in taken:
            given += f"_{position}"
        taken.add(given)
        if given != call.id:
            if unique is calls:
                unique = list(calls)
            unique[position] = ToolCall(given, call.name, call.arguments, call.arguments_error)
    return unique


def _requested(
    asked_name: str, asked_arguments: Any, name: str, arguments: Any
) -> dict[str, Any] | None:
    """The call the model asked for when it is not the call that ran (`name`, `arguments`).

    A middleware or an approval may change a call before it runs: its step records the call
    that ran, and this one as its `requested` (which a resumed run sends back as the
    model's). None when the call ran as asked.
    """
    if name == asked_name and arguments is asked_arguments:
        return None
    try:
        same = name == asked_name and _same_value(arguments, asked_arguments)
    except Exception:  # arguments that do not compare (a middleware's own objects)
        same = False
    return None if same else {"name": asked_name, "arguments": asked_arguments}


def _same_handler(a: object, b: object) -> bool:
    """Whether `a` and `b` are one handler: one object, or one object's method taken twice.

    Each `obj.method` is a new bound method, equal to the others.
    """
    if a is b:
        return True
    try:
        return inspect.ismethod(a) and bool(a == b)
    except Exception:  # an `__eq__` of its own that fails
        return False


def _same_value(a: Any, b: Any) -> bool:
    """`a == b`, of values of the same types, inside containers too.

    1, 1.0 and True are three different arguments to a tool (one that takes `Any` tells
    them apart).
    """
    if a is b:  # one NaN object, say (NaN is equal to nothing, not even itself)
        return True
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same_value(v, b[k]) for k, v in a.items())
    if type(a) is list or type(a) is tuple:
        return len(a) == len(b) and all(map(_same_value, a, b))
    return bool(a == b)


# A random per-process prefix plus a counter: unique across processes like a uuid4, without
# a system call per session. A forked child draws a new prefix.
_session_id_prefix = os.urandom(8).hex()
_session_counter = itertools.count(1)


def _new_session_id_prefix() -> None:
    global _session_id_prefix
    _session_id_prefix = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_session_id_prefix)


def new_session_id() -> str:
    """Returns a fresh session id (32 hex characters, unique across processes)."""
    return f"{_session_id_prefix}{next(_session_counter):016x}"


def _rewritten_call(result: Any) -> tuple[str, Any]:
    """An `on_tool_call` hook's rewrite: a (tool name, arguments) pair.

    Raises:
        AgentRuntimeError: The hook returned anything else (None means "keep the call").
    """
    if isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[0], str):
        if nested_deeper_than(result[1], MAX_ARGUMENT_DEPTH):
            raise AgentRuntimeError(
                f"on_tool_call returned arguments {TOO_DEEP}: a session holding them "
                "could not be saved"
            )
        return result[0], result[1]
    shown = f"{result!r:.80}" if isinstance(result, (tuple, list)) else _kind(result)
    raise AgentRuntimeError(
        f"on_tool_call must return None or a (tool name, arguments) pair, got {shown}"
    )


_NO_STREAM_END = object()  # what `_chat_stream` holds until a StreamEnd event comes


class _Streamed:
    """A streamed model call: its response, and what is left for after it is charged.

    `unsent`: the text held back at the stream's end (the tail that might have begun a stop
    sequence), or the reply's whole text when no delta brought any (a provider that sends it
    in its `StreamEnd` alone); `listener_error`: what a listener raised on a delta (no delta
    went out after).
    """

    __slots__ = ("listener_error", "response", "unsent")

    def __init__(
        self, response: ChatResponse, unsent: str, listener_error: Exception | None
    ) -> None:
        self.response = response
        self.unsent = unsent
        self.listener_error = listener_error

    def finish(self, session_id: str, events: EventBus) -> None:
        """Raises the listener's error, if any; else sends the held-back text."""
        if self.listener_error is not None:
            raise self.listener_error
        if self.unsent:
            events.emit(LlmTextDelta(session_id, self.unsent))


class _SentChars:
    """The size of a run's growing message list, each message counted once.

    The loop only appends to its list: counting every message at each model call made a
    long run's estimates quadratic. A list found shorter (a provider cut it) is counted
    afresh.
    """

    __slots__ = ("_chars", "_counted")

    def __init__(self) -> None:
        self._counted = 0
        self._chars = 0

    def chars_of(self, messages: list[Message]) -> int:
        """Characters of `messages`' content (see `messages_chars`)."""
        if len(messages) < self._counted:
            self._counted = self._chars = 0
        self._chars += messages_chars(messages[self._counted :])
        self._counted = len(messages)
        return self._chars


class _BusyTime:
    """The time during which at least one of a round's concurrent tool calls ran (ms).

    A parallel round's calls overlap: the sum of their times is more than the round took.
    """

    __slots__ = ("_running", "_since", "ms")

    def __init__(self) -> None:
        self.ms = 0.0
        self._running = 0
        self._since = 0.0

    def start(self) -> None:
        if not self._running:
            self._since = time.perf_counter()
        self._running += 1

    def stop(self) -> None:
        self._running -= 1
        if not self._running:
            self.ms += (time.perf_counter() - self._since) * 1000.0


def _ids_shown(episodes: Sequence[Any], texts: list[str]) -> list[int]:
    """The ids of the episodes whose contents are `texts` as shown (kept from theirs, in order).

    The texts are `_indented`, as the prompt shows them.
    """
    ids: list[int] = []
    shown = iter(texts)
    wanted = next(shown, None)
    for episode in episodes:
        if wanted is None:
            break
        if _indented(episode.content) == wanted:
            ids.append(episode.id)
            wanted = next(shown, None)
    return ids


def _has_episodes(memory: Any, agent_id: str) -> bool:
    """Whether the store holds episodes of `agent_id` (a store that cannot say: maybe)."""
    count = getattr(memory, "episode_count_for", None)
    return count is None or bool(count(agent_id))


def _interrupted_observation(error: BaseException, what: str, config: AgentConfig) -> Observation:
    """The observation of a call that `error` ended (`what` says how, before the error).

    A cancellation (the run's, or its `loop_timeout_ms`) is `transient`, as a call that may
    work if run again; anything else (a `PolicyDeniedError`, a spent budget) is `permanent`.
    The cancellation of the run's `loop_timeout_ms` says so ("the run's timeout (agent loop
    timed out after N ms)"), as the run's `AgentLoopError` does; another says
    `CancelledError`.
    """
    kind: ErrorKind = "transient" if isinstance(error, asyncio.CancelledError) else "permanent"
    scope = _DEADLINE_SCOPE.get()
    timeout = config.loop_timeout_ms
    if kind == "transient" and scope is not None and scope.expired() and timeout is not None:
        ended = f"the run's timeout ({_timed_out(timeout)})"
    else:
        # Even an error whose `str` fails: building this must not replace the run's error.
        ended = _describe(error, with_type=True)
    content = f"error: {what} {ended}"
    return Observation(_truncate(content, config.max_observation_chars), kind)


def _timed_out(timeout_ms: int) -> str:
    """What a run that `loop_timeout_ms` cut off says (its error, its cut-off calls)."""
    return f"agent loop timed out after {timeout_ms} ms"


class _NotStarted(Exception):
    """A call of a parallel round that never started: `failure` failed the round first."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__(failure)
        self.failure = failure


class _RoundSlots:
    """The slots of a parallel round's calls (`max_parallel_tool_calls` at once).

    Once a call fails the round (a policy error, a listener's, a cancel), no call still
    waiting for a slot starts. The failure is marked before its slot is given back: the
    slot wakes the next waiter before `_all_or_none` hears of the failure.
    """

    def __init__(self, limit: int) -> None:
        self._free = asyncio.Semaphore(limit)
        self._failure: BaseException | None = None

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Marks the round failed when the block raises."""
        try:
            yield
        except BaseException as error:
            if self._failure is None:
                self._failure = error
            raise

    async def run(self, start: Callable[[], Awaitable[T]]) -> T:
        """Awaits `start()` in a slot; raises `_NotStarted` when the round failed meanwhile."""
        async with self._free:
            if self._failure is not None:
                raise _NotStarted(self._failure)
            with self.watch():
                return await start()


async def _through_cancellation(
    write: Callable[[], Awaitable[Any]], cleanup_seconds: Callable[[], float | None]
) -> None:
    """Awaits `write()`, a write that may be made twice (a record written whole, by key).

    Cancelled meanwhile (the run's `loop_timeout_ms` too), the caller writes it again, in a
    task of its own that the cancellation does not cut short, and waits for that as long as
    `cleanup_seconds()` gives (the failed run's cleanup time, see `_cleanup_seconds`; then
    it is dropped, as a failed run's save is); then it raises the cancellation. A failure of
    that write is not raised either: what it would have written over stands. Uncancelled,
    it costs nothing.

    Called as a cancellation is handled (the task is cancelling: an intent's withdrawal),
    nothing else would cut the write short: it is made so from the start, and raises its
    own failure, or `TimeoutError` once that time is up.
    """
    from llm_agent_runtime.persistence._waiting import retrieve_outcome, wait_through_cancellation

    task = asyncio.current_task()
    if task is not None and task.cancelling():
        writing = asyncio.ensure_future(write())
        await wait_through_cancellation(writing, cleanup_seconds)
        if not writing.done():
            writing.cancel()
            raise TimeoutError("not written within the failed run's cleanup time")
        writing.result()
        return
    try:
        await write()
    except asyncio.CancelledError:
        writing = asyncio.ensure_future(write())
        await wait_through_cancellation(writing, cleanup_seconds)
        if writing.done():
            retrieve_outcome(writing)
        else:
            writing.cancel()
        raise


def _run_cancelled() -> bool:
    """Whether the task of the run in progress (`_RUN_TASK`, else this task) is cancelled."""
    task = _RUN_TASK.get() or asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _all_or_none(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Awaits `calls` concurrently; returns their results in order.

    When one fails (or this is cancelled), the others are cancelled and waited for before
    the error propagates: no tool call outlives its round. The error is the failure's, also
    should a call that then did not start (`_NotStarted`) come back first.
    """
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException as error:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not isinstance(error, _NotStarted):
            raise
        failure = error.failure
    raise failure  # outside the handler: its own context stays


def _arguments_key(arguments: Any) -> str:
    """A stable text of a call's arguments, to remember decisions per arguments.

    Arguments JSON cannot sort or encode (keys of several types, a dict holding itself: a
    middleware's rewrite may give them) have their `repr`: a decision is remembered for
    arguments that look alike, rather than the call failing.
    """
    try:
        return json.dumps(arguments, sort_keys=True, default=repr)
    except (TypeError, ValueError, RecursionError):
        return repr(arguments)


class _ProviderReply(str):
    """A provider's reply to a ReAct text prompt: its text, with its stop reason and usage.

    The stop reason tells a reply that stopped before it was complete; the usage is what
    the run charges (steps, metrics, budget) instead of an estimate; the model, the one that
    answered (`ChatResponse.model`), is for the call's span.
    """

    stop_reason: str | None
    usage: Usage
    model: str | None

    def __new__(
        cls, text: str, stop_reason: str | None, usage: Usage, model: str | None
    ) -> _ProviderReply:
        reply = super().__new__(cls, text)
        reply.stop_reason = stop_reason
        reply.usage = usage
        reply.model = model
        return reply


def _charge_refused_reply(
    error: ProviderError, metrics: RuntimeMetrics, budget: CostBudget | None
) -> None:
    """Charges the run for the billed reply a provider refused (`ProviderError.usage`).

    Its metrics and budget count it as a reply the run read: the server billed it. A usage
    that is no `Usage`, or one the metrics or the budget refuse, is left uncharged: the
    provider's error is what the caller must see.
    """
    if type(error.usage) is Usage:
        _charge_billed(metrics, budget, error.usage)


def _charge_billed(metrics: RuntimeMetrics, budget: CostBudget | None, usage: Usage) -> None:
    """Charges the run for a model call's billed `usage` it got no reply for.

    That of a refused reply (see `_charge_refused_reply`), or one a provider hands over with
    `bill_caller`: a call the run closed (at its deadline) or cancelled after the usage came.
    One the metrics or the budget refuse is left uncharged, as the call's end is what the
    caller must see.
    """
    with contextlib.suppress(AgentRuntimeError):
        if budget is not None and usage.cost_usd != 0.0:  # before anything is charged
            _check_cost(usage)
        metrics.record_tokens(usage.input_tokens, usage.output_tokens)
        if budget is not None:
            _charge_budget(budget, usage.input_tokens, usage.output_tokens, usage.cost_usd)


def _charge_budget(
    budget: CostBudget, input_tokens: int, output_tokens: int, cost_usd: float
) -> None:
    """Charges one model call's tokens and its cost (`Usage.cost_usd`) to a run's budget.

    The run's own budget, the one it checks before each call: one set on the runtime
    meanwhile is the next run's. Going past the limit is recorded all the same: the reply
    is paid for and kept, and the next model call is refused.
    """
    with contextlib.suppress(BudgetExceededError):
        budget.record(input_tokens, output_tokens, cost_usd)


def _check_cost(usage: Usage) -> None:
    """Refuses a provider's price of a call (`Usage.cost_usd`) that is no amount of dollars.

    Checked at every model call, with a budget or without, as the token counts are (the
    metrics refuse a count below 0): a provider whose pricing went wrong fails a run the
    same way whether or not a `CostBudget` would charge the cost.

    Raises:
        AgentRuntimeError: The cost is NaN, an infinity, below 0, or not a number.
    """
    cost = usage.cost_usd
    if type(cost) is float and 0.0 <= cost < math.inf:
        return
    try:
        dollars = check_real("cost_usd", cost)
    except ValueError:
        dollars = math.nan
    if not 0 <= dollars < math.inf:  # NaN fails too
        raise AgentRuntimeError(
            "the provider's usage cost (Usage.cost_usd) must be a finite number of US dollars "
            f">= 0, got {cost!r:.60}"
        )


def _entry_problem(entry: dict[str, Any]) -> str | None:
    """What a journal entry lacks of what a resume reads of it; None when it has it all.

    An entry holds its step's model reply (ReAct) or round (its text and calls, and the
    call's index in it), and the step's corrective re-prompt if it had one (`reprompt`); a
    `reprompted` entry holds only that (its step's reply had not come). A settled one's
    outcome is checked as it is read (`_journaled_run`).
    """
    from llm_agent_runtime.persistence.checkpoints import reprompt_problem

    if "reprompt" in entry and (problem := reprompt_problem(entry["reprompt"])) is not None:
        return f"field 'reprompt' {problem}"
    state = entry.get("state", "intent")
    if state not in _ENTRY_STATES:
        return f"state {state!r:.40} is unknown"
    if state == "reprompted":
        if "reprompt" not in entry:
            return "is a re-prompt's but holds no 'reprompt'"
        return None
    if "reply" in entry:
        if not isinstance(entry["reply"], str):
            return "field 'reply' must be a string"
    elif "round" in entry:
        saved = entry["round"]
        if not (
            isinstance(saved, dict)
            and isinstance(saved.get("text"), str)
            and isinstance(saved.get("calls"), list)
            and all(isinstance(call, dict) for call in saved["calls"])
        ):
            return "field 'round' must be an object with a 'text' string and a 'calls' list"
        index = entry.get("index")
        if not (type(index) is int and 0 <= index < len(saved["calls"])):
            return f"field 'index' must be a call of its round, got {index!r:.40}"
        if "decided" in saved and (
            problem := _decisions_problem(saved["decided"], len(saved["calls"]))
        ):
            return problem
    else:
        return "holds neither its step's 'reply' nor its 'round'"
    return None


_REPLY_STATES = frozenset({"received", "reprompted"})  # `checkpoints.REPLY_STATES`
_ENTRY_STATES = frozenset({"intent", "done", *_REPLY_STATES})
"""A journal entry's states: a call's (`intent`, `done`), or its step's reply's (see
`checkpoints.REPLY_STATES`)."""


def _reprompt_part(reprompt: dict[str, Any]) -> str:
    """The ReAct transcript's part of a corrective re-prompt: the reply, then the nudge."""
    return f"{reprompt['reply']}\nObservation: {reprompt['nudge']}"


def _reprompt_messages(reprompt: dict[str, Any]) -> tuple[Message, Message]:
    """The chat messages of a native corrective re-prompt: the reply, then the nudge."""
    reasoning = reprompt.get("reasoning") or ()
    reply = _loop_message("assistant", reprompt["reply"], [], None, reasoning)
    return reply, _loop_message("user", reprompt["nudge"], [], None, ())


def _reprompt_cost(reprompt: dict[str, Any]) -> tuple[int, int, float]:
    """The tokens and model time of a journaled re-prompt's wasted call."""
    tokens = reprompt.get("tokens") or (0, 0)
    return tokens[0], tokens[1], float(reprompt.get("model_ms") or 0.0)


def _replayed_reprompt(
    entry: dict[str, Any],
) -> tuple[dict[str, Any] | None, tuple[int, int, float] | None]:
    """The re-prompt a journal entry holds, as the step that answers it keeps it.

    With the cost of its wasted call when it was in flight (`reprompted`: sent, its answer
    had not come); else None: the entry's reply answered it, its step's tokens hold the cost.
    """
    reprompt = entry["reprompt"]
    if entry.get("state") != "reprompted":
        return reprompt, None
    return _saved_reprompt(reprompt), _reprompt_cost(reprompt)


def _saved_reprompt(reprompt: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a step record keeps of a re-prompt: its step's tokens and time hold the rest."""
    if reprompt is None:
        return None
    return {k: v for k, v in reprompt.items() if k != "tokens" and k != "model_ms"}


def _journaled_usage(entry: dict[str, Any]) -> Usage | None:
    """The token counts a journal entry (a reply or a round) records, None without them."""
    tokens = entry.get("tokens")
    if (
        isinstance(tokens, list)
        and len(tokens) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in tokens)
    ):
        return Usage(input_tokens=tokens[0], output_tokens=tokens[1])
    return None


def _decision_record(
    call: ToolCall, resolved: tuple[str, Any, Observation | None]
) -> list[Any] | None:
    """What the guards decided for a call of a round, as its journal entries keep it.

    None for a call that runs as the model asked; else `[tool, arguments, denial, kind]`,
    the denial's observation and error kind None for a call that runs.
    """
    name, arguments, denial = resolved
    if denial is None and _requested(call.name, call.arguments, name, arguments) is None:
        return None
    if denial is None:
        return [name, arguments, None, None]
    return [name, arguments, denial.content, denial.error_kind]


def _decided_call(
    record: list[Any] | None, name: str, arguments: Any
) -> tuple[str, Any, Observation | None]:
    """The call a `_decision_record` says runs (the model's `name` and `arguments` if None)."""
    if record is None:
        return name, arguments, None
    tool, decided_arguments, content, kind = record
    return tool, decided_arguments, None if content is None else Observation(content, kind)


def _decisions_problem(decided: Any, calls: int) -> str | None:
    """What is wrong with a journaled round's `decided` list (None: nothing)."""
    if not isinstance(decided, list) or len(decided) != calls:
        return f"field 'round.decided' must be a list of one decision a call, got {decided!r:.40}"
    for record in decided:
        if record is None:
            continue
        if not (
            isinstance(record, list)
            and len(record) == 4
            and isinstance(record[0], str)
            and (record[2] is None or isinstance(record[2], str))
            and record[3] in (None, *_ERROR_KINDS)
            and (record[2] is None) == (record[3] is None)
        ):
            return f"field 'round.decided' holds a malformed decision: {record!r:.40}"
    return None


def _journaled_ms(entry: dict[str, Any], field: str) -> float:
    """A time (ms) a journal entry records, 0 without it.

    A reply's or a round's `model_ms`, a finished call's `tool_ms`.
    """
    ms = entry.get(field)
    if type(ms) is float and 0.0 <= ms < math.inf:
        return ms
    return 0.0


def _journaled_calls(calls: list[dict[str, Any]]) -> list[ToolCall]:
    """The tool calls of a journaled round.

    A call journaled without an id (earlier versions kept a provider's missing one) gets
    `call_{n}`, as the built-in providers name such calls.

    Raises:
        PersistenceError: A call's name is not a string.
    """
    rebuilt = []
    for n, call in enumerate(calls):
        name, call_id = call.get("name"), call.get("id")
        if not isinstance(name, str):
            raise PersistenceError(f"journaled tool call {n} has no name: {name!r:.40}")
        call_id = call_id if isinstance(call_id, str) else f"call_{n}"
        error = call.get("arguments_error")  # answered with the error again, never run
        error = error if isinstance(error, str) else None
        rebuilt.append(ToolCall(call_id, name, call.get("arguments", {}), error))
    return rebuilt


def _journaled_call(call: ToolCall) -> dict[str, Any]:
    """A round's tool call as its journal entry keeps it (see `_journaled_calls`)."""
    entry = {"id": call.id, "name": call.name, "arguments": call.arguments}
    if call.arguments_error is not None:
        entry["arguments_error"] = call.arguments_error
    return entry


class _Unreadable(dict[str, Any]):
    """The (empty) arguments of a tool call the model wrote wrong (`ToolCall.arguments_error`).

    The call is answered with the error, a `permanent` one, and never runs (see
    `AgentRuntime._unreadable_answer`). A dict, so whatever shows or saves a call's
    arguments shows `{}`.
    """

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


def _unreadable(call: ToolCall) -> bool:
    """Whether the model wrote `call`'s arguments wrong, or nested too deeply to keep.

    The providers over HTTP refuse such arguments as they read them; a provider of another
    kind (`ScriptedProvider`, a user's) gives them as they are: a session holding them could
    not be saved, after the tool ran (see `MAX_ARGUMENT_DEPTH`).
    """
    arguments = call.arguments
    return call.arguments_error is not None or (
        isinstance(arguments, dict) and nested_deeper_than(arguments, MAX_ARGUMENT_DEPTH)
    )


def _unreadable_marked(calls: list[ToolCall]) -> list[ToolCall]:
    """`calls`, with the arguments of those `_unreadable` finds marked (`_Unreadable`).

    New calls: the provider's reply is not changed.
    """
    marked = []
    for call in calls:
        if _unreadable(call):
            error = call.arguments_error or f"the arguments are {TOO_DEEP}"
            call = ToolCall(call.id, call.name, _Unreadable(error), error)
        marked.append(call)
    return marked


def _logged_of(event: dict[str, Any]) -> tuple[Any, ...] | None:
    """What tells a logged reply or tool call's end apart, as `AgentRuntime._logged` asks."""
    kind = event.get("type")
    if kind == "LlmResponse":
        text = event.get("text")
        return (kind, event.get("step"), text) if isinstance(text, str) else None
    if kind == "ToolCallFinished":
        return (kind, event.get("step"), event.get("tool"), event.get("observation"))
    return None


def _journaled_run(entry: dict[str, Any], name: str, arguments: Any) -> ToolRun:
    """The run of a tool call whose outcome is journaled (it ran, or was settled by hand).

    Raises:
        PersistenceError: The entry holds no outcome of a call (an observation string, a
            known error kind, and the call that ran, if it says).
    """
    observation, error_kind = entry.get("observation"), entry.get("error_kind")
    ran = entry.get("ran") or (entry.get("tool", name), entry.get("arguments", arguments))
    if not (
        isinstance(observation, str)
        and error_kind in (None, *_ERROR_KINDS)
        and isinstance(ran, list | tuple)
        and len(ran) == 2
        and isinstance(ran[0], str)
    ):
        raise PersistenceError(
            f"the journaled outcome of tool call {name!r} is malformed: it needs an "
            "'observation' string, a known 'error_kind' and, if any, a [tool, arguments] 'ran'"
        )
    return Observation(observation, error_kind), _journaled_ms(entry, "tool_ms"), ran[0], ran[1]


def _no_iteration_for_journal(max_iterations: int, taken: int) -> AgentRuntimeError:
    """The error of a resume whose `max_iterations` leaves none for the step it stopped in.

    That step's reply (and the calls that ran of it) are journaled: ending the run there
    would save a session that leaves them out, and seal it.
    """
    return AgentRuntimeError(
        f"max_iterations ({max_iterations}) leaves no iteration for the step this run stopped "
        f"in, after the {taken} it took: its model reply, and the tool calls that ran of it, "
        f"are journaled; resume with max_iterations above {taken} to record them"
    )


def _incomplete_reply(stop_reason: str, what: str, text: str = "") -> AgentLoopError:
    """The error of a reply that stopped early where it counts: `what` was cut off.

    A refusal's `text` (what the model said instead) is quoted.
    """
    if stop_reason == "refusal":
        said = f": {text[:300]!r}" if text else ""
        return AgentLoopError(
            f"the model declined to answer (stop reason 'refusal'), so the run stops and "
            f"{what} is not acted on{said}"
        )
    if stop_reason in PAUSE_STOP_REASONS:
        return AgentLoopError(
            f"the API paused the model's turn (stop reason {stop_reason!r}: its server-side "
            f"tools ran long), so {what} is not whole and the run stops; a paused turn goes "
            "on only with the server tools' blocks, which the runtime does not keep"
        )
    if stop_reason == "content_filter":
        return AgentLoopError(
            f"the provider's content filter cut off the model's reply (stop reason "
            f"'content_filter') in {what}, so the run stops"
        )
    limit, advice = token_limit(stop_reason)
    return AgentLoopError(
        f"the model's reply was cut off by {limit} (stop reason {stop_reason!r}): {what} "
        f"may be incomplete, so the run stops; {advice}"
    )


def _check_resume_mode(session_id: str, saved: str, mode: str) -> None:
    """Raises `AgentRuntimeError` when a resume would go on in another mode than the run's.

    The saved steps and journal of a run are its mode's (ReAct replies or native tool calls).
    """
    if mode != saved:
        how = (
            "a runtime in tools mode and a provider"
            if saved == "tools"
            else "a runtime in react mode, or an async infer function"
        )
        raise AgentRuntimeError(
            f"session {session_id!r} was interrupted in {saved} mode and cannot go on in "
            f"{mode} mode: resume it with {how}"
        )


def _checked_config(config: AgentConfig) -> AgentConfig:
    """Validates `config` again, field by field, as `AgentConfig(...)` does.

    A config may have skipped validation (`model_copy(update=...)` does not validate) or
    had its list or dict changed in place since. Returns `config`, or its validated copy
    when validation changes a value (a `model` with whitespace around it, stripped).

    Raises:
        AgentRuntimeError: Naming the invalid settings.
    """
    try:
        # A subclass by its own fields, and by their aliases (as it is built); a key that is
        # no field (`model_copy` sets any) as it is, to be refused.
        fields = type(config).model_fields
        dumped = config.model_dump(by_alias=True, round_trip=True, warnings=False)
        dumped.update((k, v) for k, v in vars(config).items() if k not in fields)
        validated = type(config).model_validate(dumped)
    except ValidationError as error:
        raise AgentRuntimeError(
            "config is not a valid AgentConfig (changed after it was validated, say by "
            f"model_copy(update=...)?): {error}"
        ) from error
    return config if validated == config else validated


def _check_model_params(params: dict[str, Any]) -> None:
    """`check_model_params` of the config's dict as a run reads it, as an AgentRuntimeError."""
    try:
        check_model_params(params)
    except ValueError as error:
        raise AgentRuntimeError(f"config.{error}") from None


async def _not_found(
    tools: ToolRegistry, name: str, arguments: Any, limit: int
) -> tuple[str, Any, Observation | None]:
    """A call of a tool the registry lacks, as `_decide` returns one: no one is asked."""
    return name, arguments, tools.not_found(name, limit)


async def _answered(
    name: str, arguments: Any, answer: Observation
) -> tuple[str, Any, Observation | None]:
    """A call answered without a question (written wrong), as `_decide` returns one."""
    return name, arguments, answer


def _memories_block(texts: list[str]) -> str:
    """The prompt's block of recalled memories: a header, then a `- ` line a memory.

    `texts` are `_indented` already: a memory's later lines are indented, as working
    memory's, so none reads as a memory of its own, nor as a line of the prompt's own
    (`Question: ...`).
    """
    return "\n- ".join(["Relevant memories:", *texts])


def _indented(text: str) -> str:
    """`text` with its later lines indented by two spaces (any line break ends a line)."""
    if text.isprintable():  # a line break is not printable: most texts hold none
        return text
    return "\n  ".join(text.splitlines())


def _recalled_texts(memory: Any, episodes: Any, limit: int) -> list[str]:
    """The non-blank texts of the first `limit` episodes a memory store recalled.

    The slow path of `_context`: any iterable of objects with a string `content` is taken.

    Raises:
        AgentRuntimeError: Naming the store, when its `recall` returned something else.
    """
    store = type(memory).__name__
    try:
        recalled = list(itertools.islice(episodes, limit))
    except TypeError:
        raise AgentRuntimeError(
            f"memory {store}.recall must return a list of episodes, got {_kind(episodes)}"
        ) from None
    texts = []
    for episode in recalled:
        text = getattr(episode, "content", None)
        if not isinstance(text, str):
            raise AgentRuntimeError(
                f"memory {store}.recall returned an episode without a string content: "
                f"{_kind(episode)}"
            )
        if text.strip():
            texts.append(text)
    return texts


def _entity_count(graph: Any) -> int:
    """`graph.entity_count()` as an int (an integer type such as numpy's converted).

    Raises:
        AgentRuntimeError: The count is not a whole number from 0 up.
    """
    count = graph.entity_count()
    try:
        return check_count("entity_count", count, 0)
    except ValueError:
        raise AgentRuntimeError(
            f"graph {type(graph).__name__}.entity_count() must return a whole number from 0 "
            f"up, got {count!r:.40}"
        ) from None


def _need(infer: InferFn | None) -> InferFn:
    if infer is None:
        raise AgentRuntimeError("no model: give infer or a provider")
    return infer


def _as_model(infer: Any) -> InferFn:
    """`infer`, checked at a run's start to be an async callable.

    An `async def` (function, method, partial of one, or object with an async `__call__`)
    is used as is. Any other callable may still return an awaitable (a lambda returning a
    coroutine), which cannot be told before it is called: it is wrapped (one frame a step)
    so that a synchronous `infer` is a clear `AgentRuntimeError` at its first call.

    Raises:
        AgentRuntimeError: `infer` is None or not callable.
    """
    if infer is None:
        raise AgentRuntimeError("no model: give infer or a provider")
    if not callable(infer):
        raise AgentRuntimeError(
            f"infer must be an async callable (async def infer(prompt) -> str), got {_kind(infer)}"
        )
    if type(infer) is FunctionType and infer.__code__.co_flags & _CO_COROUTINE:
        return infer
    # A method, a partial of one, or an object whose class has an `async def __call__`.
    if inspect.iscoroutinefunction(infer) or inspect.iscoroutinefunction(type(infer).__call__):
        return infer  # type: ignore[no-any-return]
    name = getattr(infer, "__qualname__", None) or type(infer).__name__
    return _awaiting(
        infer,
        f"infer must be async (async def infer(prompt) -> str): {name} is a synchronous callable",
    )


def _async_chat(provider: Any) -> Callable[..., Awaitable[Any]]:
    """The provider's `chat`, checked at a run's start as `_as_model` checks `infer`.

    An async `chat` is used as is. Another may still return an awaitable: it is wrapped so
    that a synchronous `chat` is a clear `AgentRuntimeError` at its first call, not a bare
    `TypeError` from awaiting its reply.
    """
    chat = provider.chat
    # An `async def` method (the usual provider) is told without `inspect`: it runs per run.
    if type(chat) is MethodType and (
        type(chat.__func__) is FunctionType and chat.__func__.__code__.co_flags & _CO_COROUTINE
    ):
        return chat
    if is_async_callable(chat):
        return chat  # type: ignore[no-any-return]
    name = type(provider).__name__
    return _awaiting(
        chat,
        f"a provider's chat must be async (async def chat(messages, ...)): {name}.chat is "
        "synchronous",
    )


def _awaiting(fn: Callable[..., Any], synchronous: str) -> Callable[..., Awaitable[Any]]:
    """`fn` wrapped to await what it returns, which must be an awaitable.

    A reply that is none raises `AgentRuntimeError`: `synchronous`, and what it returned.
    """

    async def awaited(*args: Any, **kwargs: Any) -> Any:
        reply = fn(*args, **kwargs)
        if not inspect.isawaitable(reply):
            raise AgentRuntimeError(f"{synchronous} and returned {_kind(reply)}")
        return await reply

    return awaited


def _streams_text(provider: object) -> bool:
    """Whether a provider's text is streamed while a run's events are listened to.

    Not a provider that cannot stream (no `chat_stream`), nor one whose text exists whole
    (`streams_text = False`, as `ScriptedProvider`'s): its text is one delta event.
    """
    return bool(getattr(provider, "streams_text", True)) and callable(
        getattr(provider, "chat_stream", None)
    )


def _provider_reply(response: ChatResponse) -> _ProviderReply:
    """A provider's response to a ReAct text prompt, as the loop reads it.

    Raises:
        AgentLoopError: As `_check_reply_set_later`.
    """
    _check_reply_set_later(response)
    return _ProviderReply(response.text, response.stop_reason, response.usage, response.model)


def _check_reply_set_later(response: ChatResponse) -> None:
    """Checks the fields of a reply a provider may have set after building it.

    Raises:
        AgentLoopError: `usage` is not a `Usage`, or `stop_reason` neither None nor a str.
    """
    if not isinstance(response.usage, Usage):
        raise AgentLoopError(
            f"the provider's reply: usage must be a Usage, got {_kind(response.usage)}"
        )
    stop_reason = response.stop_reason
    if stop_reason is not None and not isinstance(stop_reason, str):
        raise AgentLoopError(
            f"the provider's reply: stop_reason must be None or a str, got {_kind(stop_reason)}"
        )


def _not_chat_response(response: Any) -> AgentLoopError:
    """The error of a provider's `chat` that returned something else than a `ChatResponse`."""
    return AgentLoopError(f"the provider's chat must return a ChatResponse, got {_kind(response)}")


def _not_text(reply: Any) -> AgentLoopError:
    """The error of a model reply (after the `on_post_llm` hooks) that is not a string."""
    return AgentLoopError(f"the model's reply must be a str, got {_kind(reply)}")


async def _within_deadline(body: Awaitable[Any], seconds: float) -> bool:
    """Awaits `body` in this task; returns whether `seconds` passed first (it is cut).

    `asyncio.timeout` runs `body` in the caller's task: unlike `asyncio.wait_for` on 3.11,
    a cancellation that lands as `body` ends is never swallowed. A `TimeoutError` that
    `body` raises itself propagates as it is.
    """
    try:
        async with asyncio.timeout(seconds) as scope:
            token = _DEADLINE_SCOPE.set(scope)  # see `_interrupted_observation`
            try:
                await body
            finally:
                _DEADLINE_SCOPE.reset(token)
    except TimeoutError:
        if scope.expired():
            return True
        raise
    return False


def _embeds(memory: object) -> bool:
    """Whether a memory store has an embedder.

    That is its `has_embedder`: a property, as `EpisodicStore`'s, or a method of a store of
    the application's own.
    """
    flag = getattr(memory, "has_embedder", False)
    return bool(flag() if callable(flag) else flag)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def _rewrite(result: Any, text: str, hook: str) -> str:
    """A text hook's rewrite of `text`: `text` itself when the hook returned None.

    An empty string is a rewrite like any other (a redaction that removed everything).

    Raises:
        AgentRuntimeError: The hook returned neither a string nor None.
    """
    if inspect.isawaitable(result):
        result = await result
    if result is None:
        return text
    if not isinstance(result, str):
        raise AgentRuntimeError(f"{hook} must return a string or None, got {_kind(result)}")
    return result


def _mark_failed(span: Any, observation: Observation) -> None:
    """Marks a tool's span as failed: its failure became an observation, not an exception."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("tool.error_kind", observation.error_kind or "")
    span.set_status(Status(StatusCode.ERROR, observation.content))


@contextlib.contextmanager
def _traced(tracer: Any, name: str, attributes: dict[str, str] | None = None) -> Iterator[Any]:
    """A span of `tracer` around the block, failed however the block fails.

    OpenTelemetry records an `Exception` that ends a span, not a `CancelledError` (a
    cancelled run, or a call cut off by `loop_timeout_ms`): that span would look successful
    while the events and metrics count a failure. So every error is recorded here, and
    safely: OpenTelemetry's own recording calls the error's `str`, and one that raised
    replaced the run's error. A tool's span says how it ended, as its `ToolCallFinished`
    does (`transient` for a cancellation, else `permanent`).
    """
    from opentelemetry.trace import Status, StatusCode

    with tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as error:
            if isinstance(error, _DeadlinePassed):  # a private signal: said as what it means
                span.set_status(Status(StatusCode.ERROR, _DEADLINE_PASSED))
                raise
            if name == "agent.tool":
                cancelled = isinstance(error, asyncio.CancelledError)
                span.set_attribute("tool.error_kind", "transient" if cancelled else "permanent")
            elif name == "agent.llm" and isinstance(error, ProviderError):
                _describe_llm_call(span, error)  # a billed reply refused: its tokens
            try:
                message = str(error)
                span.record_exception(error)
            except Exception:  # its str raised (or its traceback's text)
                message = "(its str failed)"
                span.add_event("exception", {"exception.type": type(error).__qualname__})
            # As OpenTelemetry describes an `Exception`; another error by its type alone.
            failure = f"{type(error).__name__}: {message}" if isinstance(error, Exception) else ""
            span.set_status(Status(StatusCode.ERROR, failure or type(error).__name__))
            raise


def _llm_attributes(model: str | None) -> dict[str, str] | None:
    """The attributes an `agent.llm` span starts with: the model asked for, when known.

    Named as OpenTelemetry's GenAI conventions name it (`gen_ai.request.model`).
    """
    return {"gen_ai.request.model": model} if model else None


def _requested_model(model: str | None, provider: object) -> str | None:
    """The model a call asks for: the run's (`AgentConfig.model`), else the provider's own."""
    if model:
        return model
    own = getattr(provider, "model", None)
    return own if isinstance(own, str) and own else None


def _name_requested_model(model: str) -> None:
    """Names the model a ReAct call asks for on its `agent.llm` span, which is current.

    For a provider's own model: the span starts with the run's (`_llm_attributes`).
    """
    from opentelemetry import trace

    trace.get_current_span().set_attribute("gen_ai.request.model", model)


def _describe_llm_call(span: Any, reply: object) -> None:
    """Sets an `agent.llm` span's attributes of the answer: the model answering, the tokens.

    Named as OpenTelemetry's GenAI conventions name them (`gen_ai.response.model`,
    `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`). `reply` is what the call
    returned: a `ChatResponse` (native mode), a `_ProviderReply` (ReAct mode through a
    provider), or a plain `infer`'s text, which says neither; or the `ProviderError` it
    raised, whose usage is that of a reply the server billed. Tokens the provider did not
    report are left out: the run's estimate is not its count.
    """
    answered: str | None = None
    usage: Usage | None = None
    if type(reply) is _ProviderReply or isinstance(reply, ChatResponse):
        answered, usage = reply.model, reply.usage
    elif isinstance(reply, ProviderError):
        usage = reply.usage
    if isinstance(answered, str) and answered:
        span.set_attribute("gen_ai.response.model", answered)
    if isinstance(usage, Usage) and (usage.input_tokens or usage.output_tokens):
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)


def _load_tracer() -> Any:
    """Returns a tracer when OpenTelemetry is installed and a tracer provider is set, else None.

    No-op spans are skipped because even they cost microseconds per step: None also for a
    no-op provider, or one that hands out no-op tracers (the SDK's with
    `OTEL_SDK_DISABLED=true`). A runtime built before the provider is set looks again at
    each run's start until it is (see `_tracer_awaited`).
    """
    try:
        from opentelemetry import trace  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    tracer = trace.get_tracer("llm_agent_runtime")
    return None if isinstance(tracer, trace.NoOpTracer) else tracer


def _tracer_awaited() -> bool:
    """Whether OpenTelemetry is installed and no tracer provider has been set yet.

    An application may set it after building its runtime (one made at import, tracing set
    up in `main`): the runtime's next run then traces. Called once a run until then (about
    0.1 µs), never per step; `_load_tracer` has imported OpenTelemetry if it is installed
    (a failed import is no cheap check).
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    # The module's global, read as it is: `get_tracer_provider()` looks an environment
    # variable up at each call (0.7 µs a run). That variable names a provider it loads at
    # the first call, which `_load_tracer` made: only a provider set in code is awaited.
    provider = getattr(trace, "_TRACER_PROVIDER", _NO_SUCH_GLOBAL)
    if provider is _NO_SUCH_GLOBAL:  # another version's layout: the public call
        return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return provider is None


_NO_SUCH_GLOBAL = object()
