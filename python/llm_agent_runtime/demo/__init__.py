"""Demo of llm-agent-runtime on embedded defaults: no keys, no servers.

Run it with `python -m llm_agent_runtime.demo`, `llm-agent-runtime demo` or `make demo`.

An agent answers a question about a small bundled text with three tools (a calculator, a
semantic memory search and a knowledge-graph query). Episodic memory, semantic memory (the
built-in hashing embedder) and a knowledge graph are all seeded from the text; the model is the
offline scripted one, and every step is checkpointed to SQLite.

The same agent runs on a real model when the environment names one (`provider_from_env`):
`OPENAI_API_KEY`, or `OPENAI_BASE_URL` pointing at an OpenAI-compatible server (vLLM, Ollama,
llama.cpp, ...), with the model from `OPENAI_MODEL` (default `gpt-4o-mini`); otherwise
`ANTHROPIC_API_KEY` (and `ANTHROPIC_BASE_URL`), with the model from `ANTHROPIC_MODEL` (default
`claude-sonnet-4-5`).

The checkpoints go to `LLM_AGENT_RUNTIME_DEMO_DB` when set, else to `llm-agent-runtime/demo.db`
in the user's cache directory (`XDG_CACHE_HOME`, else `~/.cache`). Each run first deletes
the sessions earlier demo runs saved there (its agent's only), so the file does not grow run
after run: it holds the latest run's session. Runs on one database take turns: a run holds
a lock (the file `<database>.lock` beside it) from start to end, and a second run says that
it waits, then waits for it.

The demo exits with status 1, saying why on stderr, when the model gives no final answer
within `max_iterations` steps or the run fails with an `AgentRuntimeError` (a real model's
server silent for `MODEL_READ_TIMEOUT` seconds on each of the provider's 3 tries, or a run
longer than `RUN_TIMEOUT_MS`, included); with status 1, quietly, when the reader of its
output closes it early (`... demo | head -1`); and with status 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import math
import operator
import os
import re
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Coroutine
from importlib import resources
from pathlib import Path
from typing import Any

import llm_agent_runtime as ar
from llm_agent_runtime._stdout import _OutputLost, run_printing
from llm_agent_runtime.cli import _discard_stderr
from llm_agent_runtime.persistence.base import session_key, split_session_key
from llm_agent_runtime.persistence.codec import decode
from llm_agent_runtime.providers import provider_from_env

if sys.platform != "win32":
    import fcntl

__all__ = ["AGENT", "QUESTION", "SCRIPT", "default_db_path", "forget_demo_sessions", "main", "run"]

DATA = "solar_system.txt"
"""The bundled text the agent learns from (package data, read with importlib.resources)."""
AGENT = "astro-agent"
QUESTION = (
    "How much farther from the Sun is Mars than Earth, on average, and what are Mars's moons?"
)
MAX_ITERATIONS = 8
DB_ENV = "LLM_AGENT_RUNTIME_DEMO_DB"
MODEL_READ_TIMEOUT = 120.0
"""Seconds a real model's server may stay silent while it answers (a local model on a CPU
may think for long before its first byte), on each try: the provider tries a timed-out
request 3 times in all (its default `RetryPolicy`)."""
RUN_TIMEOUT_MS = 600_000
"""The whole run's limit: a server that accepts requests but never answers ends the demo
with an error, not a wait of the providers' default (10 minutes a read, retried)."""
LOCK_POLL = 0.2
"""Seconds between tries for the database's lock while another run holds it."""

OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}

SCRIPT = [
    "Thought: I need the orbital distances of Earth and Mars.\n"
    'Action: memory_search {"query": "average distance of Earth and Mars from the Sun"}',
    "Thought: Earth is at 150 and Mars at 228 million km; subtract.\n"
    'Action: calculator {"expression": "228 - 150"}',
    "Thought: Now the moons: the knowledge graph links Mars to them.\n"
    'Action: graph_query {"entity": "Mars"}',
    "Thought: I have both parts.\n"
    "Action: FINAL_ANSWER Mars is on average 78 million km farther from the Sun than Earth; "
    "its moons are Phobos and Deimos.",
]
"""What the offline model answers, step by step."""

_ORBIT = re.compile(r"^(\w+) orbits the (\w+) at an average distance of (\d+) million km")
_MOONS = re.compile(r"^(\w+) has .*?moons?, (\w+) and (\w+)")
_SATELLITE = re.compile(r"^(\w+) has one natural satellite, the (\w+)")


def calculator(expression: str) -> float:
    """Evaluates + - * / over numbers, safely (no eval).

    Args:
        expression: Arithmetic such as "228 - 150".
    """

    def walk(node: ast.AST) -> float:
        value = getattr(node, "value", None)
        if isinstance(node, ast.Constant) and isinstance(value, int | float):
            if isinstance(value, bool):  # an int to Python, not a number to a user
                raise ValueError(f"unsupported expression: {expression!r}")
            return float(value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = walk(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return float(OPERATORS[type(node.op)](walk(node.left), walk(node.right)))
        raise ValueError(f"unsupported expression: {expression!r}")

    result = walk(ast.parse(expression, mode="eval").body)
    if not math.isfinite(result):
        raise ValueError(f"{expression!r} has no finite value")
    return result


def build_graph(facts: list[str]) -> ar.GraphStore:
    """Extracts entities and relationships (orbits, has_moon) from the facts."""
    graph = ar.GraphStore()

    def entity(name: str, label: str) -> None:
        if name not in graph:
            graph.add_entity(name, label)

    for fact in facts:
        if match := _ORBIT.match(fact):
            body, center, distance = match.groups()
            entity(center, "star")
            entity(body, "planet")
            graph.add_relationship(body, center, "orbits", float(distance), {"unit": "million km"})
        elif (match := _MOONS.match(fact)) or (match := _SATELLITE.match(fact)):
            planet, *moons = match.groups()
            entity(planet, "planet")
            for moon in moons:
                entity(moon, "moon")
                graph.add_relationship(planet, moon, "has_moon")
    return graph


def build_semantic_search(memory: ar.SemanticStore) -> ar.ToolSpec:
    """A tool searching the semantic memory by meaning (hashing embedder, offline)."""

    def memory_search(query: str) -> list[str]:
        """Finds the remembered facts most similar to the query.

        Args:
            query: What to look for, in words.
        """
        return [str(hit.value) for hit in memory.search(query, k=3)]

    spec: ar.ToolSpec = ar.tool(memory_search)
    return spec


def build_graph_query(graph: ar.GraphStore) -> ar.ToolSpec:
    """A tool listing an entity's relationships in the knowledge graph."""

    def graph_query(entity: str) -> list[str]:
        """Lists the relationships of an entity (from it and to it) in the knowledge graph.

        Args:
            entity: Name of the entity, e.g. "Mars".
        """
        if entity not in graph:
            known = ", ".join(sorted(graph.entity_ids()))
            raise ValueError(f"unknown entity {entity!r}; known: {known}")
        # Both directions: "Sun" is known by the planets that orbit it.
        incoming = [r for r in graph.relationships() if r["to"] == entity and r["from"] != entity]
        return [
            f"{r['from']} {r['kind']} {r['to']}"
            + (f" ({r['weight']:g} {r['properties']['unit']})" if r["properties"] else "")
            for r in [*graph.edges_from(entity), *incoming]
        ]

    spec: ar.ToolSpec = ar.tool(graph_query)
    return spec


def default_db_path() -> Path:
    """Where the demo keeps its checkpoints: `LLM_AGENT_RUNTIME_DEMO_DB`, else a per-user file.

    The per-user file is `llm-agent-runtime/demo.db` in `XDG_CACHE_HOME` (when absolute: the
    XDG spec has a relative one ignored), else in `~/.cache` (in the temporary directory when
    there is no home directory, or `HOME` is set to a blank or relative path: then in a
    directory of the user's own there, `llm-agent-runtime-<uid>`, made private), never in
    the working directory.

    Raises:
        PersistenceError: `LLM_AGENT_RUNTIME_DEMO_DB` starts with `~` or `~user` and there is
            no such home directory, names a directory (an existing one, or any path ending
            in `/`, `/.` or `/..`), or is `:memory:` (the demo shows where its session was
            saved, and a memory database keeps nothing); the temporary directory's is not a
            private directory of this user's.
    """
    if configured := os.environ.get(DB_ENV, "").strip():
        try:
            path = Path(configured).expanduser()
        except RuntimeError:  # `~nosuchuser/...`, or `~` with no home directory to be found
            raise ar.PersistenceError(
                f"{DB_ENV}={configured!r}: no home directory for its '~' (write the path in full)"
            ) from None
        return _database_file(configured, DB_ENV, path)
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not os.path.isabs(cache):  # unset, or relative (`~/.cache` unexpanded, say)
        try:
            home = str(Path.home())
        except RuntimeError:  # no home directory to be found
            home = ""
        # A relative HOME (`HOME=x`, or blank but for spaces) would put the cache in the
        # working directory, and an empty one reads as `/`, the filesystem's root: neither
        # is a home directory.
        if not os.path.isabs(home) or os.environ.get("HOME") == "":
            return _private_temp_dir() / "demo.db"
        cache = os.path.join(home, ".cache")
    return Path(cache) / "llm-agent-runtime" / "demo.db"


def _private_temp_dir() -> Path:
    """`llm-agent-runtime-<uid>` in the temporary directory, made private (mode 0700).

    The temporary directory is every user's: a name of its own keeps one user's database
    from blocking or showing another's, and the checks keep a directory someone else made
    under that known name (or a symlink of theirs) from holding it.

    Raises:
        PersistenceError: The name is taken by what is not a directory of this user's.
    """
    base = Path(tempfile.gettempdir())
    if not hasattr(os, "getuid"):  # Windows: its temporary directory is the user's own
        return base / "llm-agent-runtime"
    path = base / f"llm-agent-runtime-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        status = path.lstat()
        if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
            raise ar.PersistenceError(
                f"{path} is not a private directory of this user (another user's, or a "
                f"link): set {DB_ENV} to where the demo may keep its database"
            )
        if stat.S_IMODE(status.st_mode) & 0o077:
            path.chmod(0o700)
    except OSError as error:
        raise ar.PersistenceError(f"cannot make {path} for the demo's database: {error}") from None
    return path


def _database_file(given: str, setting: str, path: Path | None = None) -> Path:
    """The database file `given` names (as `path`, when expanded), if it names a file.

    Args:
        given: The path as it was given.
        setting: What gave it (`LLM_AGENT_RUNTIME_DEMO_DB`, or `run`'s `db_path`), for errors.
        path: `given` as a `Path` (default: `Path(given)`).

    Raises:
        PersistenceError: `given` is `:memory:` or names a directory (an existing one, or any
            path ending in `/`, `/.` or `/..`).
    """
    if given == ":memory:":
        raise ar.PersistenceError(
            f"{setting}=':memory:' keeps nothing: the demo saves its session to a file "
            "(give its path)"
        )
    path = Path(given) if path is None else path
    # Path() drops a trailing slash (and a trailing `/.`): the demo would create a file where
    # the user meant a directory, and SQLite says no more of an existing one than "unable to
    # open".
    # `os.path.isdir`: False on any OSError (`Path.is_dir` raised a directory's permission
    # error, or a name too long, as a traceback): SQLite then says what is wrong with it.
    if (
        given.endswith(("/", os.sep))
        or os.path.basename(given) in (".", "..")
        or os.path.isdir(path)
    ):
        raise ar.PersistenceError(
            f"{setting}={given!r} is a directory: give the path of the SQLite file "
            f"(e.g. {str(path / 'demo.db')!r})"
        )
    return path


async def forget_demo_sessions(backend: ar.PersistenceBackend) -> int:
    """Deletes every session of the demo's agent saved in `backend`; returns how many.

    Sessions of other agents stay, so a database shared with other programs keeps theirs. A
    session is found by its meta record or its final checkpoint, finished or not. A session
    whose records no longer load as a session (a run cut short, records missing) is the
    demo's when one of those records, or the claim of one of its runs, names the demo's
    agent: all of its keys are deleted too. Keys that no record ties to the demo stay.
    """
    keys = await backend.list_keys(session_key(""))
    ids = {parsed[0] for key in keys if (parsed := split_session_key(key)) is not None}
    doomed = {session_id for session_id in ids if await _is_demo_session(backend, session_id)}
    for key in keys:
        parsed = split_session_key(key)
        if parsed is not None and parsed[0] in doomed and key != session_key(parsed[0]):
            await backend.delete(key)
    for session_id in doomed:  # last: a prune cut short finds the session again
        await backend.delete(session_key(session_id))
    return len(doomed)


async def _is_demo_session(backend: ar.PersistenceBackend, session_id: str) -> bool:
    """Whether the demo's agent ran a saved session, even one that no longer loads."""
    try:
        saved = await ar.AgentSession.load_checkpoint(backend, session_id)
    except ar.PersistenceError:
        pass
    else:
        return saved.agent_id == AGENT
    # What names the agent: the final checkpoint, the meta record, a run's claim (holding
    # that run's meta record).
    base = session_key(session_id)
    for key in [base, f"{base}:meta", *await backend.list_keys(f"{base}:run:")]:
        raw = await backend.load(key)
        try:
            record = None if raw is None else decode(raw, key)
        except ar.PersistenceError:  # corrupt: it names nobody
            continue
        if isinstance(record, dict) and isinstance(record.get("session"), dict):
            record = record["session"]  # a final checkpoint holds the session
        if isinstance(record, dict) and record.get("agent_id") == AGENT:
            return True
    return False


async def _lock_database(db_path: Path) -> int | None:
    """Takes the demo's lock on its database, waiting (and saying so) while another run has it.

    The lock is `flock` on `<database>.lock`, beside the file `db_path` leads to (through
    symlinks): the system drops it when its holder ends, however it ends. Without `flock`
    (Windows) runs do not take turns.

    Returns:
        The lock file's descriptor (closing it releases the lock), or None without `flock`.

    Raises:
        PersistenceError: The lock file cannot be opened.
    """
    if sys.platform == "win32":
        return None
    # Beside the file the path leads to: a run through a symlink to the database takes the
    # lock the runs on the database itself take.
    real = db_path.resolve()
    path = real.with_name(real.name + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise ar.PersistenceError(f"cannot open the demo's lock file {path}: {error}") from None

    def locked() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    try:
        if not locked():
            _say(f"waiting for another demo run on {db_path} to end ...")
            while not locked():
                await asyncio.sleep(LOCK_POLL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _say(message: str) -> None:
    """Writes `message` to stderr, when the process has one and it takes the message.

    Without one (its file descriptor closed), `print(file=sys.stderr)` would write it to
    stdout, among the demo's output; a failed write (a full disk) would replace the exit
    status with a traceback no one sees.
    """
    if sys.stderr is None:
        return
    try:
        print(message, file=sys.stderr)
    except OSError:
        _discard_stderr()


# The runtime logs a run these ended; the demo says why it stopped itself (stdout's reader
# gone, stdout unwritable: see `run_printing`), or stops quietly.
_NOT_WARNED = (asyncio.CancelledError, KeyboardInterrupt, BrokenPipeError, _OutputLost)


class _HeldWarnings(logging.Handler):
    """Holds the runtime's log records during a run, to print them once it has ended.

    A failed run is logged by the runtime and then reported by the demo: held, the record of
    the very error the demo reports is left out, so an error reads as one line. So is that
    of a run cancelled by an interrupt (Ctrl-C), which the demo reports as `interrupted`.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def report(self, reported: BaseException | None) -> None:
        for record in self.records:
            args = record.args if isinstance(record.args, tuple) else ()
            if not any(arg is reported or isinstance(arg, _NOT_WARNED) for arg in args):
                _say(f"warning: {record.getMessage()}")


class _Trace:
    """Prints a run's steps as the runtime saves them (on `CheckpointSaved`).

    It keeps the model's last reply too: a run that fails on one it cannot read shows it.
    """

    def __init__(self, session: ar.AgentSession) -> None:
        self.session = session
        self.printed = 0
        self.last_reply: str | None = None

    def on_event(self, event: ar.Event) -> None:
        if isinstance(event, ar.LlmResponse):
            self.last_reply = event.text
        elif isinstance(event, ar.CheckpointSaved):
            self.print_new_steps()

    def print_new_steps(self) -> None:
        steps = self.session.steps
        for number, step in enumerate(steps[self.printed :], self.printed + 1):
            print(f"step {number}: thought: {_printable(step.thought)}")
            if step.action != "FINAL_ANSWER":
                print(f"        action: {_printable(f'{step.action}({step.action_input})')}")
                kind = step.error_kind or "ok"
                print(f"        observation: {_printable(step.observation)} [{kind}]")
            print(
                f"        model {step.model_ms:.3f} ms, tools {step.tool_ms:.3f} ms, "
                f"runtime overhead {step.overhead_ms:.3f} ms"
            )
        self.printed = len(steps)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Control characters but line breaks and tabs: a terminal acts on them (ESC starts a
sequence that can clear the screen, retitle the window or hide the text after it)."""


def _printable(text: str) -> str:
    r"""`text` with its control characters written as escapes (`\x1b`).

    The model's (or a tool's) text reaches the terminal as text.
    """
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def _shortened(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


async def _print_saved(checkpoints: ar.SqliteBackend, session: ar.AgentSession, path: Path) -> None:
    """Prints where the run's session was saved, as loaded back from there."""
    step_keys = await checkpoints.list_keys(f"{session_key(session.session_id)}:step:")
    reloaded = await ar.AgentSession.load_checkpoint(checkpoints, session.session_id)
    print(
        f"session {session.session_id} saved in SQLite at {path.resolve()} under key "
        f"{session_key(session.session_id)}, with {len(step_keys)} per-step checkpoints; "
        f"reloaded from it: {reloaded.step_count} steps, answer {reloaded.final_answer!r}"
    )


def _facts() -> list[str]:
    text = resources.files(__name__).joinpath(DATA).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


async def run(db_path: str | os.PathLike[str] | None = None) -> int:
    """Runs the demo, printing what the agent does; returns the exit status.

    While another run uses the same database, it waits for that run to end (see the module).

    Args:
        db_path: The SQLite checkpoint database, a file (default: `default_db_path()`); as
            for `LLM_AGENT_RUNTIME_DEMO_DB`, `:memory:` and a directory are refused.

    Returns:
        0 when the agent answered; 1 when it gave no final answer within `max_iterations`
        steps or the run failed (the reason is printed to stderr).
    """
    print(f"llm-agent-runtime {ar.__version__}: an agent end to end on embedded defaults\n")
    checkpoints: ar.SqliteBackend | None = None
    lock: int | None = None
    provider: ar.OpenAIProvider | ar.AnthropicProvider | None = None
    reported: ar.AgentRuntimeError | None = None
    logger = logging.getLogger("llm_agent_runtime")
    # Unless the program running the demo has set up logging, its records wait for the end.
    held = None if logger.hasHandlers() else _HeldWarnings()
    if held is not None:
        logger.addHandler(held)
    try:
        # Checked as the variable is: the demo would say it saved the session in a file
        # named `:memory:` that no one made, or in a directory.
        path = (
            default_db_path() if db_path is None else _database_file(os.fspath(db_path), "db_path")
        )
        # Chosen before the database is touched: a model's settings it refuses (a base URL
        # without its scheme) fail the run before it deletes the previous run's session.
        provider = provider_from_env(timeout=MODEL_READ_TIMEOUT)
        facts = _facts()
        episodes = ar.EpisodicStore(embedder=ar.HashingEmbedder())
        semantic = ar.SemanticStore()
        for number, fact in enumerate(facts):
            episodes.add_episode(AGENT, fact, 0.5)
            semantic.store(f"fact-{number}", fact, tags=["solar-system"])
        graph = build_graph(facts)
        working = ar.WorkingMemory(8)
        working.set("units", "million km")
        print(
            f"seeded {len(facts)} facts from {DATA} into episodic and semantic memory; "
            f"knowledge graph: {graph.entity_count()} entities, "
            f"{graph.relationship_count()} relationships ({', '.join(graph.relationship_kinds())})"
        )

        checkpoints = ar.SqliteBackend(path)
        lock = await _lock_database(path)
        forgotten = await forget_demo_sessions(checkpoints)
        config = ar.AgentConfig(
            max_iterations=MAX_ITERATIONS,
            max_memory_recalls=3,
            max_memory_tokens=200,
            # A real model stops before writing an observation of its own.
            stop_sequences=["\nObservation:"],
            loop_timeout_ms=RUN_TIMEOUT_MS,
        )
        runtime = ar.AgentRuntime(
            config,
            memory=episodes,
            working_memory=working,
            graph=graph,
            tools=[
                ar.tool(calculator),
                build_semantic_search(semantic),
                build_graph_query(graph),
            ],
            checkpoint_backend=checkpoints,
        )
        model: ar.LlmProvider
        if provider is None:
            model = ar.ScriptedProvider(SCRIPT)
            print(
                "model: offline ScriptedProvider (set OPENAI_API_KEY, OPENAI_BASE_URL or "
                "ANTHROPIC_API_KEY for a real one; OPENAI_MODEL / ANTHROPIC_MODEL pick its model)"
            )
        else:
            model = provider
            print(f"model: {model!r}")
        print(f"question: {QUESTION}\n")

        session = runtime.create_session(AGENT)
        trace = _Trace(session)
        runtime.events.on(trace.on_event)  # each step as it is saved, not all at the end
        try:
            await runtime.run_agent_with_provider(AGENT, QUESTION, model, session=session)
        except ar.AgentRuntimeError as error:
            trace.print_new_steps()  # those of the round it failed in, too
            if isinstance(error, ar.AgentLoopError) and trace.last_reply is not None:
                print(f"the model's last reply: {_shortened(trace.last_reply)!r}")
            with contextlib.suppress(ar.AgentRuntimeError):  # the failure is what is reported
                await _print_saved(checkpoints, session, path)
            raise
        trace.print_new_steps()
        if session.final_answer is not None:
            print(f"\nfinal answer: {_printable(session.final_answer)}")
        print(f"memory hits: {session.memory_hits}, steps: {session.step_count}")
        snap = runtime.metrics.snapshot()
        print(
            f"metrics: sessions={snap.total_sessions} steps={snap.total_steps} "
            f"tool_calls={snap.total_tool_calls} failed={snap.failed_tool_calls} "
            f"memory_recalls={snap.memory_recall_count}"
        )
        await _print_saved(checkpoints, session, path)
        if forgotten:
            plural = "s" if forgotten > 1 else ""
            print(f"(it keeps the latest run's: deleted {forgotten} earlier demo session{plural})")
        if session.final_answer is None:
            _say(
                f"error: the model gave no final answer within "
                f"max_iterations={config.max_iterations} steps"
            )
            return 1
        return 0
    except ar.AgentRuntimeError as error:
        reported = error
        return 1
    finally:
        if provider is not None:
            await provider.aclose()
        if checkpoints is not None:
            checkpoints.close()
        if lock is not None:
            os.close(lock)
        if held is not None:
            logger.removeHandler(held)
            held.report(reported)
        if reported is not None:
            _say(f"error: {reported}")


def main() -> int:
    """Runs the demo in a new event loop; returns the exit status (see `run`).

    When the reader of stdout closes it early (`... demo | head -1`), the demo stops
    quietly with status 1; when stdout is closed, or cannot take the output (a full disk),
    it says so on stderr, with status 1 too; interrupted (Ctrl-C), it says so and returns
    130.

    Raises:
        RuntimeError: Called inside a running event loop (a notebook's): `await run()` there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # none: the demo runs its own
    else:  # asyncio.run would refuse, after `run()` was made: "never awaited" warnings too
        raise RuntimeError(
            "the demo's main() runs an event loop of its own, and one is running here: "
            "use `await llm_agent_runtime.demo.run()`"
        )

    def demo() -> int:
        try:
            return asyncio.run(_interruptible(run()))
        except (KeyboardInterrupt, asyncio.CancelledError):
            _say("error: interrupted")
            return 130

    return run_printing(demo)


async def _interruptible(work: Coroutine[Any, Any, int]) -> int:
    """Awaits `work`; a first Ctrl-C cancels it, a second exits at once (status 130).

    asyncio's own handler raised the second `KeyboardInterrupt` wherever the loop was: a
    cancelled task could then wait for good, and the loop's close with it. The run cut short
    by the exit leaves what it had saved, as a killed worker does (`resume` goes on).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1 and task is not None:
            task.cancel()
            return
        _say("error: interrupted again: exiting at once")
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(130)

    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    except (NotImplementedError, RuntimeError, ValueError):  # no such handler here
        return await work
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if previous is not None:  # the handler it replaced, not Python's default
            signal.signal(signal.SIGINT, previous)
