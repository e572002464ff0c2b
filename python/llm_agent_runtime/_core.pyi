"""Type stubs for the compiled `llm_agent_runtime._core` extension (kept in step with rust/)."""

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Literal, Never, TypeVar, final

import numpy as np
import numpy.typing as npt

from llm_agent_runtime.embeddings import Embedder

__version__: str

_T = TypeVar("_T", bound=tuple[Any, ...])

def _raise_panic(message: str) -> None:
    """Panic inside the Rust core (tests only); raises AgentRuntimeError."""

# --- ReAct parsing (rust/react.rs) ---------------------------------------------------------

@final
class ReActStep:
    """One ReAct step: a thought, then an action with its input or a final answer.

    The action is a string made at parse time. The thought and final answer are read from
    the parsed text, which the step keeps, and the action input decoded from it, on first
    access; each is then cached. A step pickles and copies as the parse of its text.
    """

    def __init__(self, _made_by_the_library: Never, /) -> None: ...
    @property
    def thought(self) -> str:
        """The model's reasoning (may be empty)."""
    @property
    def action(self) -> str | None:
        """The tool to call, or None for a final answer."""
    @property
    def action_input(self) -> Any:
        """Decoded JSON (dict, list or str) or the raw text; None for a final answer.

        A string literal decodes only when nothing but blanks follows it on its line. An
        object or array written as Python writes one, or with trailing commas, decodes too.
        """
    @property
    def action_input_text(self) -> str | None:
        """The action's input as written (trimmed, and out of its code fence), never decoded.

        `""` when none was written (a bare `Action: tool`), None for a final answer.
        """
    @property
    def final_answer(self) -> str | None:
        """The final answer, or None when the step calls a tool.

        `Action: FINAL_ANSWER ...` answers with the text as written (trimmed), or the value
        of a lone JSON string literal (`Action: FINAL_ANSWER "Paris"` answers `Paris`).
        """
    @property
    def end(self) -> int:
        """Where the step ends in the parsed text, in characters: `text[:end]` is the step.

        `len(text)`, unless an `Observation:` line follows the action, or a `Thought:` or
        `Action:` line follows its input (the model invented the observation, or went on
        without it): then the end of the text before that line, trailing whitespace
        excluded. What follows was not read.
        """
    @property
    def is_final(self) -> bool: ...
    def __eq__(self, value: object, /) -> bool:
        """Equal thought, action, input and final answer (wherever the steps end)."""
    __hash__: ClassVar[None]  # type: ignore[assignment]  # equal by value, not hashable

def dicts_with_keys_made_text(value: object) -> list[dict[Any, Any]]:
    """Each dict in `value`, or nested in its dicts, lists and tuples, with a key no `str`.

    JSON writes such a key as text (`1` as "1", `None` as "null"), so two keys of one such
    dict may be written alike, and one lost. Other objects are not looked into; a container
    held twice (or holding itself) is walked once; a dict subclass through its own iteration
    and `values()`. Parents come before what they hold.
    """

def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether `value` nests dicts, lists and tuples (subclasses too) over `limit` levels.

    `value` itself is the first level when it is one of them. A container holding itself is
    nested without end. Each container is looked into once (shared parts cost time linear
    in the data's size), depth first, items in order; the walk stops at the first chain
    found over `limit`. A subclass is read through its own iteration and `values()`, whose
    errors propagate.

    Raises:
        AgentRuntimeError: `limit` is below 0.
        TypeError: `limit` is no int.
    """

def shown_part(value: object, room: int) -> object | None:
    """The part of a tool's result whose text can show in `room` characters, or None when
    that is the whole result.

    A list, tuple or dict (those types exactly, nested too) keeps the items whose text may
    start within `room`, and a numpy `ndarray` the rows (and in them the columns...) that
    may: the text of the part starts as the whole result's does, and is longer than `room`
    when something was left out. A result that holds itself, or is nested over 500 levels
    deep, is left whole (None).
    """

def parse_react_step(text: str) -> ReActStep:
    """Parses one ReAct step from model output.

    Labels are case-insensitive at the start of a line (a line ends at `\n`, `\r\n` or a lone
    `\r`; spaces, Unicode ones included, and invisible format characters such as a byte order
    mark, a zero-width space or a direction mark may come first), may carry a step number
    (`Action 1:`, `Action 1 Input:`), may follow a Markdown list marker (`- `, `* `, `+ `, `• `,
    or a number of up to three digits and `.` or `)`, then a blank), and may be in Markdown
    emphasis, as chat models often write them (`**Action:**`, `**Action**:`, `__Action:__`,
    `*Action:*`, `***Action:***`). Asterisks may also wrap a label's whole line: `**Final
    Answer: Paris**` answers `Paris` (then any lines that follow it); a wrapped thought or
    action line is a label only when its section is that line (blank lines, then a label or the
    end, follow it). The first `Action:` is the step's: numbered plan lines such as `Action 1:
    search for X` are labels too, so the first of them wins over a later `Action:`. When an
    `Action Input:` label follows it (later on its line, written so, case included, as LangChain
    matches it, in asterisks or not, and not inside a JSON string, bracketed value or unclosed
    backtick there; or as the next such line before any other `Action:`), the tool is all the
    text of the action's line before that label, trimmed, as LangChain reads it (`Action: Search
    Tool`), and the input is what follows the label; unless that line is in the seed form: its
    tool is `FINAL_ANSWER` (whose text after an `Action Input:` label there is the answer), or
    an input starts right after the name (`{`, `[`, `(`, `"`, a code fence, `:` or `=`).
    Otherwise the tool name is the run of `[A-Za-z0-9_-]` after `Action:`, with dots between two
    such characters (`github.search_issues`), in backticks or not (a name quoted whole loses its
    backticks in either form); its input follows, after an optional `:`, `=`, `,` or `;`, or
    inside call parentheses (`Action: FINAL_ANSWER(42)`, nothing after them on their line:
    chatter on later lines is ignored), or else is on the `Action Input:` line; with neither (a
    bare `Action: tool`), the input is `{}`, a call without arguments, as it is for an
    `Action Input:` left empty. Text below a bare name
    is its input when it starts on the next line, or, past a blank line, when it opens as an
    input does (JSON, a quoted string, parentheses, a code fence): any other paragraph there
    is the model's chatter ("I'll wait for the result."). `Action: FINAL_ANSWER`
    with no input answers with a `Final Answer:` section (up to the next label), or else a
    `Final Answer:` later on a line after it; with neither, the text is not a step. With no
    action and no `Final Answer:` line, a `Final Answer:` (so capitalized, LangChain's marker)
    later on a line ends the thought and starts the answer (`Thought: I know. Final Answer:
    42`); asterisks opening before that marker and closing after its colon or later on its line
    (`**Final Answer:** 42`, `**Final Answer: 42**.`) are neither thought nor answer. The step
    ends at the first `Observation:` line after the action, or `Thought:` or `Action:` line
    after its input (see `ReActStep.end`).

    Other shapes chat models write are read too: `Action: search[Colorado orogeny]` (the ReAct
    paper's brackets, right after the name, holding no JSON: the input is the text inside;
    `Finish[...]` is a tool like any other); `Action: Final Answer` (its input, or the
    text after `Final Answer:` on its line or a `Final Answer:` section, is the answer, as
    for `FINAL_ANSWER`); LangChain's JSON agent blob, `Action:` then `{"action": "search",
    "action_input": ...}` in a code fence or not (`"action": "Final Answer"` answers); a
    reasoning model's `<think>...</think>` (or `<thinking>`) block opening the text, which is
    not read for labels (its content is the thought when the rest has none; it closes at
    `</think>` or `</thinking>`, ASCII case ignored; a block that never closes holds no
    step: the reply was cut inside it, by a stop sequence its drafts wrote, say, and it is
    refused rather than read); without an
    opening block, a line starting with `</think>` (the opening tag was in the prompt, as
    the chat templates of DeepSeek-R1's distills put it) closes the reasoning, all the text
    before it, in the same way (a closing tag within a line is text); a full-width colon
    after a label (U+FF1A, as models writing Chinese put it). An action and a
    `Final Answer:` line in one step are refused, as LangChain refuses them, unless the action
    says no tool is called (`Action: None`, `N/A`, `null`, `No action`, with no input or the
    same word): then the step is the answer. A `Final Answer:` section runs to the end of the
    text (an `Observation:` after it is part of the answer, as in LangChain), and a `Thought:`
    written after it is not the step's thought. An empty one is refused, as `FINAL_ANSWER`
    with nothing after it is: the reply stopped where its answer was to start. A code fence
    (three backticks) that opens an action's input, or any fence in a final answer (or in
    `Action: FINAL_ANSWER`'s text), is read whole, up to its closing line: a line in it that
    looks like a label (a YAML `action:` key, a Python `thought: str`) is its text. A step
    wrapped whole in a code fence (one left open before its first label) ends at the fence
    line that closes it, the text's last: bare, and at least as long as the opening one
    (fences between are the step's own, an input's or an answer's); that line and what
    follows are not the step's.

    A JSON object or array input may be followed by other text; a string literal is JSON
    only when nothing follows it on its line (`"New York" weather` stays that text; chatter
    on later lines is ignored). JSON input decodes as `json.loads` would: integers of any size
    stay exact ints; numbers beyond the float range (inf), escaped lone surrogates and NaN
    decode too. JSON nesting objects and arrays over 200 levels deep stays raw text, as the
    providers leave such tool arguments (a session holding them could not be copied nor
    saved within Python's recursion limit). An object or array that is not JSON but is written as
    Python writes one (`{'q': 'rust', 'exact': True, 'page': None}`: strings in single quotes
    with Python's escapes, a backslash and slash kept as written, `True`, `False`, `None`),
    or as JSON with trailing commas (`{"a": 1,}`), decodes as `ast.literal_eval` or
    `json.loads` reads it without them, as LlamaIndex and CrewAI read such inputs; anything
    else in braces (unquoted keys, tuples, expressions) stays raw text.

    Raises:
        ParseError: the text is not a ReAct step (message says what; `position` where, as
            an index into `text` in characters, like `ReActStep.end`), or is not valid
            Unicode (`position`: its first lone surrogate).
        TypeError: text is not a `str` (bytes included: decode them first).
    """

# --- Runtime metrics (rust/metrics.rs) -----------------------------------------------------

@final
class MetricsSnapshot:
    """A point-in-time copy of RuntimeMetrics: plain integers and per-name counts.

    The per-tool lookups give 0 for a name that is not valid Unicode (a lone surrogate):
    RuntimeMetrics refuses to record one.
    """

    def __init__(self, _made_by_the_library: Never, /) -> None: ...
    @property
    def active_sessions(self) -> int: ...
    @property
    def total_sessions(self) -> int: ...
    @property
    def total_steps(self) -> int: ...
    @property
    def total_tool_calls(self) -> int: ...
    @property
    def failed_tool_calls(self) -> int: ...
    @property
    def backpressure_shed_count(self) -> int: ...
    @property
    def memory_recall_count(self) -> int: ...
    @property
    def checkpoint_errors(self) -> int: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def tool_calls(self) -> dict[str, int]: ...
    @property
    def tool_failures(self) -> dict[str, int]: ...
    @property
    def agent_calls(self) -> dict[str, int]: ...
    @property
    def agent_failures(self) -> dict[str, int]: ...
    def tool_call_count(self, name: str) -> int: ...
    def tool_failure_count(self, name: str) -> int: ...
    def tool_success_count(self, name: str) -> int: ...
    def tool_names(self) -> list[str]: ...
    def failure_rate(self) -> float: ...
    def success_rate(self) -> float: ...
    def failed_tool_ratio_for(self, name: str) -> float: ...
    def most_called_tool(self) -> str | None: ...
    def tool_names_with_failures(self) -> list[str]: ...
    def avg_failures_per_session(self) -> float: ...
    def steps_per_tool_call(self) -> float: ...
    def tool_diversity(self) -> int: ...
    def total_agent_count(self) -> int: ...
    def agent_with_most_calls(self) -> str | None: ...
    def backpressure_shed_rate(self) -> float: ...
    @staticmethod
    def delta(after: MetricsSnapshot, before: MetricsSnapshot) -> MetricsSnapshot:
        """Counters between two snapshots, saturating at zero; active_sessions (a gauge) is
        after's (so a delta's avg_failures_per_session divides its failures by the sessions
        begun in it less those active at its end).

        Raises:
            TypeError: after or before is not a MetricsSnapshot.
        """
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(text: str) -> MetricsSnapshot:
        """Rebuilds a snapshot from to_json() output.

        Raises:
            AgentRuntimeError: the text is not a snapshot (or not valid Unicode).
        """
    def to_prometheus(self) -> str: ...
    def __reduce__(self) -> tuple[Callable[[str], MetricsSnapshot], tuple[str]]: ...
    def __copy__(self) -> MetricsSnapshot: ...
    def __deepcopy__(self, memo: Any, /) -> MetricsSnapshot: ...
    def __eq__(self, value: object, /) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]  # equal by value, not hashable

@final
class EventFanout:
    """Delivers events to a list of callbacks and a list of queues (`put_nowait`).

    A callback's result other than None is handed to `schedule`, with the event.
    """

    def __new__(
        cls,
        callbacks: list[Callable[[Any], Any]],
        queues: list[Any],
        schedule: Callable[[Any, Any], Any],
    ) -> EventFanout: ...
    def emit(self, event: Any) -> None:
        """Puts `event` on every queue, then calls every callback with it, in list order (so
        an event a callback emits queues after this one); one that raises keeps the event
        from no other (then the first exception propagates)."""
    def emit_new(self, cls: type[tuple[Any, ...]], fields: tuple[Any, ...]) -> None:
        """Builds the event `cls(*fields)` (see `tuple_of`) and delivers it as `emit` does."""

def tuple_of(cls: type[_T], items: tuple[Any, ...]) -> _T:
    """An instance of `cls`, a subclass of `tuple`, holding `items`, as
    `tuple.__new__(cls, items)` makes it (`cls.__new__` is not called).

    Raises:
        TypeError: `cls` is not a subclass of `tuple`.
    """

@final
class RuntimeMetrics:
    """Lock-free counters of an agent runtime, exact under contention."""

    def __new__(cls, *, max_agents: int | None = None) -> RuntimeMetrics:
        """Counters, per tool and per agent.

        Args:
            max_agents: Most agents counted apart (None, or an int beyond 64 bits: every
                one). The calls of agents first seen past it are counted under `"(other)"`
                (as are those of an agent of that name, which takes no place): a bound on
                memory and on the Prometheus output when agent ids come from end users.

        Raises:
            AgentRuntimeError: `max_agents` is below 1 (or a bool).
            TypeError: `max_agents` is no int (nor None).
        """
    def session_started(self) -> None: ...
    def session_finished(self) -> None: ...
    def record_step(self) -> None: ...
    def record_tool_call(self, tool: str, agent_id: str | None = None) -> None:
        """Counts a call of tool (and of agent_id's tools).

        Raises:
            AgentRuntimeError: a name is not valid Unicode (a lone surrogate).
        """
    def record_tool_failure(self, tool: str, agent_id: str | None = None) -> None:
        """Counts a failed call of tool (and of agent_id's tools).

        Raises:
            AgentRuntimeError: a name is not valid Unicode (a lone surrogate).
        """
    def record_backpressure_shed(self) -> None: ...
    def record_memory_recall(self, count: int = 1) -> None:
        """Counts recalled memories; the total saturates at 2**64 - 1.

        Raises:
            AgentRuntimeError: count is negative or not below 2**64.
        """
    def record_checkpoint_error(self) -> None: ...
    def record_tokens(self, input_tokens: int, output_tokens: int) -> None:
        """Adds token usage; each total saturates at 2**64 - 1.

        Raises:
            AgentRuntimeError: a count is negative or not below 2**64.
        """
    def snapshot(self) -> MetricsSnapshot:
        """A point-in-time copy of every counter.

        Taken while other threads record, it is one the counters could have been in: no
        name has more failures than calls, no agent count holds a call the tools' miss, and
        the totals are the sums of the tools' counts.
        """
    def to_prometheus(self) -> str:
        """The counters of a `snapshot` in Prometheus text exposition format."""

# --- Working memory (rust/memory/) -----------------------------------------------------------

@final
class WorkingMemory:
    """Bounded key -> value LRU memory; O(1) operations, thread-safe.

    Iterating gives the keys from most to least recently used (a snapshot, as keys()).
    A key that is not valid Unicode (a lone surrogate) cannot be stored: set refuses it, and
    lookups (in, get, delete, wm[key], del wm[key]) find it absent.

    Raises:
        MemoryStoreError: capacity is below 1 (or too large, or a bool); a key given to set is not
            valid Unicode.
    """

    def __new__(cls, capacity: int) -> WorkingMemory: ...
    @property
    def capacity(self) -> int: ...
    def set(self, key: str, value: Any) -> None: ...
    def get(self, key: str, default: Any | None = None) -> Any: ...
    def delete(self, key: str) -> bool: ...
    def clear(self) -> None: ...
    def items(self) -> list[tuple[str, Any]]:
        """Pairs from most to least recently used."""
    def keys(self) -> list[str]: ...
    def to_prompt(self) -> str: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool:
        """Whether key is held; False for anything not a str (as in a dict)."""
    def __getitem__(self, key: str, /) -> Any: ...
    def __setitem__(self, key: str, value: Any, /) -> None: ...
    def __delitem__(self, key: str, /) -> None: ...
    def __iter__(self) -> Iterator[str]:
        """The keys, most recently used first (a snapshot, as keys())."""

# --- Episodic memory (rust/memory/episodic.rs) -----------------------------------------------

@final
class Episode:
    """One remembered event of an agent (a read-only copy)."""

    def __init__(self, _made_by_the_library: Never, /) -> None: ...
    @property
    def id(self) -> int: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def importance(self) -> float: ...
    @property
    def created_at(self) -> float: ...
    @property
    def last_recalled_at(self) -> float | None: ...
    @property
    def recall_count(self) -> int: ...
    @property
    def embedding(self) -> npt.NDArray[np.float32] | None:
        """Its embedding (L2-normalized float32 array), or None."""
    def __eq__(self, value: object, /) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]  # equal by value, not hashable
    def __copy__(self) -> Episode: ...
    def __deepcopy__(self, memo: Any, /) -> Episode: ...

@final
class DecayPolicy:
    """How episode importance fades with age (immutable; equal policies are equal)."""

    def __init__(self, _made_by_the_library: Never, /) -> None: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __reduce__(self) -> tuple[Callable[[float], DecayPolicy], tuple[float]]: ...
    def __copy__(self) -> DecayPolicy: ...
    def __deepcopy__(self, memo: Any, /) -> DecayPolicy: ...
    @staticmethod
    def exponential(half_life_hours: float) -> DecayPolicy:
        """Importance halves every `half_life_hours`.

        Raises:
            MemoryStoreError: half_life_hours is not a positive number.
        """

@final
class RecallPolicy:
    """How recalled episodes are ranked (immutable; equal policies are equal)."""

    def __init__(self, _made_by_the_library: Never, /) -> None: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __reduce__(self) -> tuple[Callable[..., RecallPolicy], tuple[float, ...]]: ...
    def __copy__(self) -> RecallPolicy: ...
    def __deepcopy__(self, memo: Any, /) -> RecallPolicy: ...
    @staticmethod
    def importance() -> RecallPolicy: ...
    @staticmethod
    def hybrid(recency_weight: float, frequency_weight: float) -> RecallPolicy:
        """Decayed importance + recency_weight/(1+age_h) + frequency_weight*n/(1+n).

        Raises:
            MemoryStoreError: a weight is negative or not finite.
        """

@final
class EpisodicStore:
    """Per-agent episodic memory with decay, ranked recall and per-agent capacity.

    With an embedder, recall(query=...) ranks by
    policy score + similarity_weight * cos(query, episode embedding).
    Adding beyond per_agent_capacity evicts the lowest-importance older episode (the oldest
    among equals), never the one being added. An agent id that is not valid Unicode (a lone
    surrogate) cannot be stored: add_episode refuses it, and the methods reading an agent's
    episodes find none under it.

    Threads share a store (its calls lock it, with the GIL released while they work). A
    fork() taken while another thread is inside such a call copies its lock held into the
    child, where no thread will release it: the child's first call on the store then waits
    for good. Fork before starting such threads, or use the "spawn" or "forkserver" start
    method.

    Raises:
        MemoryStoreError: per_agent_capacity is below 1 (or beyond 64 bits, or a bool),
            similarity_weight is negative or not finite (or beyond the float range), or
            embedder has no embed method or an async one (the store calls it synchronously).
        TypeError: clock cannot be called (a Clock object such as FakeClock(): pass its now
            method), decay is not a DecayPolicy or recall_policy not a RecallPolicy (nor
            None), or a number given where a real number is expected is complex.
    """

    def __new__(
        cls,
        decay: DecayPolicy | None = None,
        recall_policy: RecallPolicy | None = None,
        per_agent_capacity: int | None = None,
        clock: Callable[[], float] | None = None,
        embedder: Embedder | None = None,
        similarity_weight: float = 1.0,
    ) -> EpisodicStore: ...
    def add_episode(
        self,
        agent_id: str,
        content: str,
        importance: float,
        embedding: npt.ArrayLike | None = None,
    ) -> int:
        """Adds an episode (embedded by the store's embedder unless given) and returns its id.

        Raises:
            MemoryStoreError: importance outside [0, 1], a bad embedding (complex numbers
                included), a clock that returned a NaN or infinite time (or not a number),
                agent_id or content not valid Unicode, or ids exhausted (next_id reached
                2**64 - 1).
            TypeError: importance is not a real number (a complex one included).
        """
    @property
    def has_embedder(self) -> bool:
        """Whether the store has an embedder (so `recall` accepts a text query)."""
    def recall(
        self,
        agent_id: str,
        limit: int = 3,
        query: str | npt.ArrayLike | None = None,
        *,
        counted: bool = True,
    ) -> list[Episode]:
        """The agent's best episodes, best first; a query blends in cosine similarity.

        Equal scores keep insertion order (oldest first); a limit beyond 64 bits means all.
        Each one's recall count goes up, unless `counted` is False (the caller then marks
        those it uses with `mark_recalled`).

        Raises:
            MemoryStoreError: a negative limit, a text query without an embedder (or not
                valid Unicode), a bad query vector, or a clock that returned a NaN or
                infinite time (or not a number).
        """
    def mark_recalled(self, agent_id: str, ids: Iterable[int]) -> int:
        """Marks the agent's episodes of `ids` recalled now; returns how many it found.

        Raises:
            MemoryStoreError: an id is not an int >= 0 and at most 2**64 - 1, or the
                clock returned a NaN or infinite time (or not a number).
            TypeError: ids is a `str` or bytes (not a list of ids, though it iterates), or
                not an iterable of ints.
        """
    def episodes(self, agent_id: str) -> list[Episode]: ...
    def clear(self, agent_id: str | None = None) -> int: ...
    def episode_count_for(self, agent_id: str) -> int: ...
    def agents_with_episodes(self) -> list[str]: ...
    def content_lengths(self, agent_id: str) -> list[int]: ...
    def total_content_bytes(self, agent_id: str) -> int: ...
    def avg_content_length(self, agent_id: str) -> float: ...
    def max_content_length(self, agent_id: str) -> int: ...
    def min_content_length(self, agent_id: str) -> int: ...
    def high_importance_count(self, agent_id: str, threshold: float) -> int: ...
    def episodes_by_importance(self, agent_id: str) -> list[str]: ...
    def content_contains_count(self, agent_id: str, needle: str) -> int: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(
        text: str, clock: Callable[[], float] | None = None, embedder: Embedder | None = None
    ) -> EpisodicStore:
        """Rebuilds a store from to_json() output, checked as the constructor and
        add_episode check their input.

        Other embeddings are scaled to unit length, as add_episode stores them. An agent
        listed with no episodes is dropped (to_json never writes one).

        Raises:
            MemoryStoreError: the text is not an exported store (or not valid Unicode), or
                breaks a rule of the store: per_agent_capacity 0 (or an agent over it),
                embedding_dim 0, a half-life that is not a positive number, a negative or
                non-finite weight, importance outside [0, 1], a non-finite time, an episode
                under another agent's id, ids out of order or shared by two episodes,
                embeddings that are zero or of different lengths, or an embedder whose dim
                is not their length.
            TypeError: clock cannot be called.
        """
    def __len__(self) -> int: ...

# --- Vector search (rust/vector.rs) ------------------------------------------------------------

@final
class VectorIndex:
    """Cosine-similarity index (SIMD, multi-core, GIL released); float32, float16 or int8.

    int8 re-scores a shortlist of k * rescore candidates. With exact_rescore (or
    originals_path) recall@10 is >= 0.99 on clustered data too, but rows that are near
    duplicates of each other (cosine about 0.999) need a longer shortlist: rescore=32.

    With originals_path (int8), the float32 copies used for exact re-scoring live in that file
    instead of memory: memory is a quarter of float32's. The file is the index's own: one
    already at that path is emptied (as load writes the copies there anew). The file belongs to the process that
    opened it: in a fork()ed child (a multiprocessing "fork" worker) every use of the copies
    (add, remove, get, search, save) raises PersistenceError, as parent and child would share
    the file's rows and each one's writes would change the other's index; load the index
    again in the child, with an originals_path of its own.

    A numpy masked array given as ids, vectors or a query is refused (MemoryStoreError) when
    it masks a value, as its values under the mask would be read as data; one that masks
    nothing is read as its data.

    Raises:
        MemoryStoreError: dim or rescore not between 1 and 2**32 - 1 (or a bool), an unknown
            dtype, or exact_rescore or originals_path without int8.
        PersistenceError: originals_path cannot be created (or is not valid Unicode), is
            not a regular file (a device or FIFO), or another index uses it.
    """

    def __new__(
        cls,
        dim: int,
        dtype: Literal["float32", "float16", "int8"] = "float32",
        rescore: int = 8,
        exact_rescore: bool = False,
        originals_path: str | os.PathLike[str] | None = None,
    ) -> VectorIndex: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> Literal["float32", "float16", "int8"]:
        """Storage form: "float32", "float16" or "int8"."""
    @property
    def rescore(self) -> int:
        """Shortlist factor of int8 searches."""
    @property
    def exact_rescore(self) -> bool:
        """Whether int8 searches re-score against kept float32 copies."""
    @property
    def originals_path(self) -> str | None:
        """The file holding the float32 copies, or None."""
    @property
    def nbytes(self) -> int:
        """Bytes of memory held by the ids, the stored vectors and in-memory float32 copies."""
    def get(self, id: int) -> npt.NDArray[np.float32] | None:
        """The stored vector of id (normalized, dequantized), or None.

        Raises:
            MemoryStoreError: id is negative or above 2**63 - 1 (no vector can have it), a
                bool, or not an int.
            PersistenceError: float32 copies kept in a file cannot be read (in a forked
                child, never: see the class docs), or were changed from outside the index.
        """
    def add(
        self, ids: Sequence[int] | npt.NDArray[np.integer[Any]], vectors: npt.NDArray[np.float32]
    ) -> None:
        """Adds or replaces vectors (all or nothing); ids go from 0 to 2**63 - 1 (not bools).

        Raises:
            MemoryStoreError: wrong shape or dtype (native-endian float32), not C-contiguous
                or not aligned in memory (a slice such as `x[:, ::2]`, a Fortran-order array:
                pass `np.ascontiguousarray(x)`), an id out of range (or a bool), duplicate id,
                NaN/inf or zero vector; out of memory (the index is left unchanged).
            PersistenceError: float32 copies kept in a file cannot be written, were changed
                from outside the index, are marked broken by an earlier failure, or belong to
                the parent of this forked process (see the class docs; nothing changes).
        """
    def remove(self, ids: Sequence[int] | npt.NDArray[np.integer[Any]]) -> None:
        """Removes vectors by id (all or nothing), with the GIL released.

        Raises:
            MemoryStoreError: an id is not in the index, is given twice (as in `add`), or is
                a bool; nothing changes.
            PersistenceError: float32 copies kept in a file cannot be updated (the vectors
                are removed and the copies marked broken), or belong to the parent of this
                forked process (see the class docs; nothing changes), or the file's length
                was changed from outside (nothing changes; the copies are marked broken).
        """
    def search(
        self, query: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The min(k, len) most similar vectors, best first (any int k >= 1, not a bool).

        Scores are cosine similarities, in [-1, 1] for every dtype: a float16 or int8 row is
        unit length only up to its rounding, and a dot product that rounding carries past 1
        is clamped (after ranking, so the order is that of the unclamped scores).

        Raises:
            MemoryStoreError: k < 1 or a bool, or a bad query (wrong shape or dtype, as for
                `add`: native-endian float32, C-contiguous and aligned in memory; NaN/inf,
                zero); out of memory for the results.
            PersistenceError: float32 copies kept in a file cannot be read for re-scoring
                (in a forked child, never: see the class docs), or were changed from outside
                the index.
        """
    def search_batch(
        self, queries: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """search() for every row of queries; arrays of shape (m, min(k, len)), scores in [-1, 1].

        A row's scores agree with search()'s within float rounding, not bit for bit (a
        float32 index scores two or more queries as one matrix product, summing in another
        order): results whose scores nearly tie may come back in another order. A long
        batch stops on Ctrl-C (in the main thread).

        Raises:
            MemoryStoreError: k < 1 or a bool, queries not of shape (m, dim), or a bad query;
                out of memory for the results.
            PersistenceError: as search().
        """
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the index to path, a str or os.PathLike (versioned, checksummed, atomic replace).

        A symbolic link is followed: the file it points to is replaced, the link kept. Written
        a chunk at a time: saving needs no memory for a copy of the index.

        Raises:
            MemoryStoreError: path is this index's own originals_path (nothing is written).
            PersistenceError: the file cannot be written, the path is not valid Unicode, is
                neither absent nor a regular file (a directory, device or FIFO), or is
                another index's originals_path (nothing is written); or
                float32 copies kept in a file cannot be read (in a forked child: see the
                class docs).
        """
    @staticmethod
    def load(
        path: str | os.PathLike[str], originals_path: str | os.PathLike[str] | None = None
    ) -> VectorIndex:
        """Reads an index written by save(); originals_path puts its float32 copies in a file.

        Read a chunk at a time into the index's own buffers: loading needs memory for the
        index once, not for a copy of the file besides.

        Raises:
            MemoryStoreError: originals_path is the index file itself, or the index does not
                fit in memory.
            PersistenceError: unreadable, not a regular file, not an index, other version,
                truncated or corrupt (including values the index never stores: NaN/inf, int8
                code -128, or a row that is not of unit length, zero rows included),
                originals_path for an index
                without float32 copies, or originals_path cannot be created or is in use by
                another index; a path that is not valid Unicode.
        """
    def __len__(self) -> int: ...
    def __contains__(self, id: object, /) -> bool:
        """Whether id is in the index (False for an int no vector can have, such as -1, a bool,
        or anything not an int)."""

# --- Hashing text embedder (rust/embed.rs) ---------------------------------------------------

@final
class HashingEmbedder:
    """Deterministic text embedder by feature hashing of word and character n-grams.

    Text is NFKC-normalized and lowercased first: composed and decomposed accents, full-width
    letters and ligatures embed like their plain forms. Words are runs of letters, digits and
    combining marks (a Thai tone mark or an Indic virama stays in its word).

    dim goes up to 2**20 (1048576). N-grams are at most 32 long (word_ngrams, and the max
    of char_ngrams), so that embedding stays linear in the length of the text.

    Raises:
        MemoryStoreError: dim is not between 1 and 2**20 (or is a bool), word_ngrams is not
            between 1 and 32, or an invalid char_ngrams range (min above max, min 0 with max
            above 0, a length above 32, a bool in it).
        TypeError: a setting of another type (a float; char_ngrams not a (min, max) tuple).
    """

    def __new__(
        cls, dim: int = 384, word_ngrams: int = 2, char_ngrams: tuple[int, int] = (3, 5)
    ) -> HashingEmbedder: ...
    def __reduce__(self) -> tuple[type[HashingEmbedder], tuple[int, int, tuple[int, int]]]: ...
    def __copy__(self) -> HashingEmbedder: ...
    def __deepcopy__(self, memo: Any, /) -> HashingEmbedder: ...
    @property
    def dim(self) -> int:
        """Output length."""
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embeds texts: float32 (len(texts), dim), rows L2-normalized (zeros for no words).

        Raises:
            MemoryStoreError: texts is one string or holds a non-string (or a string that is
                not valid Unicode), or the result does not fit in memory.
        """

# --- Knowledge graph (rust/graph/) ---------------------------------------------------------

@final
class GraphStore:
    """Directed multigraph of entities and typed, weighted relationships, analytics in Rust.

    Properties are JSON-compatible: str keys; values None, bool (or numpy's bool), str, int
    from -2**63 to 2**64 - 1 (or any integer type with __index__, such as numpy's), finite
    float (or an inexact numbers.Real, such as numpy.float32, stored as a float; not a
    Fraction, which a float would round), and lists, tuples and dicts of them, nested at
    most 64 levels deep (a dict naming each key's text once: two keys of one text, such as a
    str subclass beside an equal str, are refused).

    Threads share a graph (its calls lock it, with the GIL released while they work). A
    fork() taken while another thread is inside such a call copies its lock held into the
    child, where no thread will release it: the child's first call on the graph then waits
    for good. Fork before starting such threads, or use the "spawn" or "forkserver" start
    method.

    Raises:
        GraphError: unknown entities, duplicate ids, non-finite weights (or beyond the float
            range), weights that are not real numbers (a bool, a str), properties that are
            not a dict (or None) or not JSON-compatible as above, negative weights given to
            Dijkstra, a non-positive cycle cap, a negative depth,
            hop count, round count or seed, a negative or non-finite resolution (or a
            bool), an empty source list (or one naming an entity twice) for betweenness_from,
            or a text argument (id, label, kind) that is not valid Unicode (`in` and
            has_entity answer False for such an id); "out of memory" when a graph, or the
            buffers an algorithm needs (a few slots per entity), does not fit in memory (the
            process goes on). A
            depth, hop count, round count or cycle cap beyond 64 bits means no limit.
    """

    def __new__(cls) -> GraphStore: ...
    def add_entity(
        self, id: str, label: str = "", properties: dict[str, Any] | None = None
    ) -> None: ...
    def update_entity(
        self, id: str, label: str | None = None, properties: dict[str, Any] | None = None
    ) -> None: ...
    def remove_entity(self, id: str) -> None: ...
    def remove_entities(self, ids: Sequence[str]) -> None: ...
    def has_entity(self, id: str) -> bool: ...
    def __contains__(self, key: object, /) -> bool:
        """has_entity(key) for a str; False for anything else (as in a dict)."""
    def entity(self, id: str) -> dict[str, Any]: ...
    def entity_ids(self) -> list[str]: ...
    def entity_count(self) -> int: ...
    def relationship_count(self) -> int: ...
    def __len__(self) -> int: ...
    @staticmethod
    def from_edge_list(
        n: int,
        edges: Iterable[tuple[int, int] | tuple[int, int, float] | list[int] | list[float]]
        | npt.NDArray[np.integer[Any]],
        kind: str = "related",
    ) -> GraphStore: ...
    def add_entities(self, ids: Sequence[str]) -> None: ...
    def add_relationship(
        self,
        from_id: str,
        to_id: str,
        kind: str | None = "related",
        weight: float = 1.0,
        properties: dict[str, Any] | None = None,
    ) -> None: ...
    def add_relationships(
        self,
        relationships: Iterable[
            tuple[str, str] | tuple[str, str, str] | tuple[str, str, str, float]
        ],
        create_missing: bool = False,
    ) -> int: ...
    def update_relationship(
        self,
        from_id: str,
        to_id: str,
        kind: str,
        weight: float | None = None,
        properties: dict[str, Any] | None = None,
    ) -> int: ...
    def remove_relationship(self, from_id: str, to_id: str, kind: str | None = None) -> int: ...
    def relationships(self) -> list[dict[str, Any]]: ...
    def edges_from(self, id: str) -> list[dict[str, Any]]: ...
    def bfs(self, start: str, max_depth: int | None = None, directed: bool = True) -> list[str]: ...
    def dfs(self, start: str, max_depth: int | None = None, directed: bool = True) -> list[str]: ...
    def shortest_path(
        self, source: str, target: str, directed: bool = True
    ) -> tuple[list[str], float] | None: ...
    def distances(self, source: str, directed: bool = True) -> dict[str, float]: ...
    def reachable(self, source: str, directed: bool = True) -> set[str]: ...
    def transitive_closure(self) -> dict[str, list[str]]: ...
    def neighborhood(self, id: str, hops: int = 1, directed: bool = False) -> GraphStore: ...
    def subgraph(self, ids: Sequence[str]) -> GraphStore: ...
    def degree_centrality(
        self, mode: Literal["in", "out", "total"] = "total", normalized: bool = True
    ) -> dict[str, float]: ...
    def betweenness_centrality(
        self,
        normalized: bool = True,
        weighted: bool = False,
        directed: bool = True,
        k: int | None = None,
        seed: int = 0,
    ) -> dict[str, float]: ...
    def betweenness_from(
        self,
        sources: Sequence[str],
        normalized: bool = True,
        weighted: bool = False,
        directed: bool = True,
    ) -> dict[str, float]: ...
    def communities(
        self, resolution: float = 1.0, seed: int = 0
    ) -> tuple[list[list[str]], float]: ...
    def label_propagation(self, seed: int = 0, max_rounds: int = 100) -> list[list[str]]: ...
    def modularity(
        self, communities: Sequence[Sequence[str]], resolution: float = 1.0
    ) -> float: ...
    def has_cycle(self) -> bool: ...
    def cycles(self, cap: int = 100) -> list[list[str]]: ...
    def relationship_kinds(self) -> list[str]: ...
    def relationship_kind_count(self) -> int: ...
    def relationship_count_between(self, from_id: str, to_id: str) -> int: ...
    def neighbors_of(self, id: str) -> list[str]: ...
    def entities_with_self_loops(self) -> list[str]: ...
    def bidirectional_count(self) -> int: ...
    def isolated_entity_count(self) -> int: ...
    def total_in_degree(self) -> int: ...
    def avg_relationship_weight(self) -> float: ...
    def avg_out_degree(self) -> float: ...
    def avg_in_degree(self) -> float: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(text: str) -> GraphStore:
        """Rebuilds a graph from `to_json` output.

        Raises:
            GraphError: On a malformed, foreign or newer-version document (one whose
                properties name a key twice in one object is malformed: a value would be
                dropped).
        """
    def copy(self) -> GraphStore: ...
