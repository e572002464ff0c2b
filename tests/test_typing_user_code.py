"""User code type-checks under `mypy --strict` with precise types for tools, retries and breakers.

Mypy runs once, in a subprocess, over the snippets below and the README's examples that use
`RetryPolicy`, `CircuitBreaker` or `@ar.tool`. A result assigned to a wrong type must be
reported: had the API returned `Any`, mypy would accept it.
"""

from __future__ import annotations

import asyncio
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README, re.DOTALL | re.MULTILINE)
FRAGMENT = "# In an async function"
"""The first line of a README snippet that is a part of a program, not one to check alone."""
README_SNIPPETS = [
    snippet
    for snippet in SNIPPETS
    if not snippet.startswith(FRAGMENT)
    and any(word in snippet for word in ("RetryPolicy", "CircuitBreaker", "ar.tool"))
]

COMMON = '''\
from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Mapping, Sequence
from typing import Any

import httpx
import numpy as np
from pydantic import SecretStr
from typing_extensions import assert_type

import llm_agent_runtime as ar
from llm_agent_runtime import CircuitBreaker, Deduplicator, RetryPolicy, ToolSpec, tool


def parse(text: str, base: int = 10) -> int:
    return int(text, base)


async def fetch(query: str) -> str:
    return f"results for {query}"


def deferred(value: int) -> asyncio.Future[int]:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def apply(fn: str) -> str:
    return fn.upper()


@tool
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@tool
async def fetch_page(url: str) -> str:
    """Fetches a page."""
    return url


@tool(idempotent=True)
def lookup(key: str) -> str:
    """Looks a key up."""
    return key


@tool(idempotent=True)
async def store(key: str, value: str) -> None:
    """Stores a value."""


@ar.tool(name="search_web", timeout=5.0, idempotent=True)
async def search(query: str) -> list[str]:
    """Searches the web."""
    return [query]


breaker = CircuitBreaker("svc")


@breaker
async def guarded(query: str) -> str:
    return query


@breaker
def guarded_sync(value: int) -> int:
    return value


class ChatOnly:
    """A provider of the application's own: `chat` is all the runtime needs."""

    async def chat(
        self,
        messages: Sequence[ar.Message],
        tools: Sequence[ar.ToolDefinition] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> ar.ChatResponse:
        return ar.ChatResponse(text="Final Answer: chat")


class CompleteOnly:
    """A text model with `complete` alone: enough for the ReAct mode."""

    async def complete(self, prompt: str, model: str | None = None) -> str:
        return "Final Answer: complete"


bus = ar.EventBus()


@bus.on
def count(event: ar.Event) -> int:
    return 1


class Trimming(ar.Middleware):
    def on_user_message(self, session: ar.AgentSession, text: str) -> str:
        return text.strip()

    async def on_post_llm(self, session: ar.AgentSession, text: str) -> str | None:
        return None

    def on_tool_call(
        self, session: ar.AgentSession, tool: str, arguments: Any
    ) -> tuple[str, Any] | None:
        return (tool, arguments) if tool != "old_name" else ("new_name", arguments)


class SixMethods:
    """A backend with the protocol's six methods, none of the optional fenced ones."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def save(self, key: str, value: bytes) -> None:
        self.data[key] = bytes(value)

    async def load(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        self.data.update(items)

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        return {key: self.data[key] for key in keys if key in self.data}

    async def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(key for key in self.data if key.startswith(prefix))


class Note:
    """A memory of the application's own: a `content` attribute is what a prompt shows."""

    def __init__(self, content: str) -> None:
        self.content = content


class Notes:
    """An episodic store of the application's own: `recall` is all the runtime needs."""

    def recall(self, agent_id: str, limit: int = 3) -> list[Note]:
        return [Note(f"{agent_id} likes tea")][:limit]


class Counted:
    """A graph of the application's own, counting with numpy."""

    def entity_count(self) -> np.int64:
        return np.int64(3)


class Where:
    """A path object of the application's own."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return self.path
'''

CORRECT = (
    COMMON
    + """

assert_type(add, ToolSpec)
assert_type(fetch_page, ToolSpec)
assert_type(lookup, ToolSpec)
assert_type(store, ToolSpec)
assert_type(search, ToolSpec)
assert_type(tool(name="multiply"), Callable[[Callable[..., Any]], ToolSpec])
assert_type(tool(parse, name="parse_int"), ToolSpec)


async def main() -> None:
    retry = RetryPolicy(max_attempts=2, base_delay=0.0)
    assert assert_type(await retry.run(parse, "42"), int) == 42
    assert assert_type(await retry.run(parse, "ff", base=16), int) == 255
    assert assert_type(await retry.run(fetch, "q"), str) == "results for q"
    assert assert_type(await retry.run(fetch, query="q"), str) == "results for q"
    assert assert_type(await retry.run(deferred, 3), int) == 3
    assert assert_type(await retry.run(apply, fn="x"), str) == "X"
    pending = assert_type(retry.run(fetch, "q"), Coroutine[Any, Any, str])
    assert await pending == "results for q"
    assert assert_type(await breaker.call(parse, "7"), int) == 7
    assert assert_type(await breaker.call(fetch, "q"), str) == "results for q"
    assert assert_type(await breaker.call(deferred, 4), int) == 4
    assert assert_type(await breaker.call(apply, fn="y"), str) == "Y"
    assert assert_type(await retry.run(breaker.call, fetch, "q"), str) == "results for q"
    assert assert_type(await retry.run(breaker.call, parse, "9"), int) == 9
    assert assert_type(breaker.call_sync(parse, "8"), int) == 8
    assert assert_type(await guarded("g"), str) == "g"
    assert assert_type(await guarded(query="k"), str) == "k"
    assert assert_type(guarded_sync(5), int) == 5
    dedup = Deduplicator(ttl=0)
    assert assert_type(await dedup.run("k", parse, "6"), int) == 6
    assert assert_type(await dedup.run("q", fetch, query="q"), str) == "results for q"
    assert assert_type(await dedup.run("d", deferred, 2), int) == 2
    assert assert_type(count(ar.RunStarted("s", "a", "p")), int) == 1  # decorated, as it was
    runtime = ar.AgentRuntime(middlewares=(m for m in [Trimming()]))  # any iterable
    for provider in (ChatOnly(), CompleteOnly()):
        session = await runtime.run_agent_with_provider("a", "q", provider)
        assert session.final_answer in ("chat", "complete")
    # The stores a run reads, the library's or the application's own.
    graph = ar.GraphStore()
    graph.add_entity("tea", "drink")
    stored = ar.AgentRuntime(
        memory=ar.EpisodicStore(), working_memory=ar.WorkingMemory(4), graph=graph
    )
    assert assert_type(stored.graph, ar.SupportsEntityCount | None) is graph
    stored.memory = Notes()
    recalled = await stored.run_agent_with_provider("a", "q", ChatOnly())
    assert recalled.memory_hits == 1 and recalled.graph_entity_count == 1
    stored.graph = Counted()
    counted = await stored.run_agent_with_provider("a", "q", ChatOnly())
    assert counted.graph_entity_count == 3
    backend = SixMethods()
    durable = ar.AgentRuntime(checkpoint_backend=backend)
    saved = await durable.run_agent_with_provider("a", "q", ChatOnly())
    loaded = await ar.AgentSession.load_checkpoint(backend, saved.session_id)
    assert loaded.final_answer == "chat"
    parts = ar.Message("user", [{"type": "text", "text": "what is this?"}])
    assert isinstance(parts.content, list) and ar.Message("assistant", None).content is None
    with tempfile.TemporaryDirectory() as folder:
        ar.persistence.SqliteBackend(Where(f"{folder}/a.db")).close()
        ar.FileBackend(Where(f"{folder}/files"))
    index = ar.VectorIndex(2)
    index.add(range(2), np.eye(2, dtype=np.float32))  # ids: ints, or an int array
    index.remove(np.array([0]))
    index.remove((1,))
    # A key kept as a pydantic secret, a URL object (the settings of many applications).
    keyed = ar.OpenAIProvider(api_key=SecretStr("k"), base_url=httpx.URL("http://127.0.0.1:9"))
    await keyed.aclose()


async def closes_the_provider_chosen() -> None:
    chosen = ar.provider_from_env()
    if chosen is not None:
        async with chosen:
            pass
        await chosen.aclose()


def same_storage(index: ar.VectorIndex) -> ar.VectorIndex:
    return ar.VectorIndex(index.dim, dtype=index.dtype)


# The factories of the classes only the library makes (their direct calls are refused).
assert_type(ar.RecallPolicy.hybrid(0.3, 0.2), ar.RecallPolicy)
assert_type(ar.DecayPolicy.exponential(24.0), ar.DecayPolicy)
snapshot_json = ar.RuntimeMetrics().snapshot().to_json()
assert_type(ar.MetricsSnapshot.from_json(snapshot_json), ar.MetricsSnapshot)
assert_type(ar.parse_react_step("Action: FINAL_ANSWER 1"), ar.ReActStep)
assert_type(ar.RuntimeMetrics(max_agents=100), ar.RuntimeMetrics)
"""
)

# Each line marked `# E: <code>` must get exactly that error, and no other line any.
WRONG = (
    COMMON
    + """

spec: int = add  # E: assignment
counted: str = count(ar.RunStarted("s", "a", "p"))  # E: assignment
ar.AgentConfig().max_iterations = 3  # E: misc
ar.AgentRuntme  # E: attr-defined
from llm_agent_runtime.orchestration import CircutBreaker  # E: attr-defined
maker: ToolSpec = tool(idempotent=True)  # E: assignment
tool(name=3)  # E: call-overload


async def wrong() -> None:
    retry = RetryPolicy()
    parsed = await retry.run(parse, "1")
    fetched = await retry.run(fetch, "q")
    settled = await retry.run(deferred, 1)
    called_async = await breaker.call(fetch, "q")
    called_sync = await breaker.call(parse, "1")
    called_now = breaker.call_sync(parse, "1")
    nested = await retry.run(breaker.call, fetch, "q")
    decorated_async = await guarded("q")
    decorated_sync = guarded_sync(1)
    a: str = parsed  # E: assignment
    b: int = fetched  # E: assignment
    c: Awaitable[str] = fetched  # E: assignment
    d: str = settled  # E: assignment
    e: int = called_async  # E: assignment
    f: str = called_sync  # E: assignment
    g: str = called_now  # E: assignment
    h: int = nested  # E: assignment
    i: int = decorated_async  # E: assignment
    j: str = decorated_sync  # E: assignment
    await guarded_sync(1)  # E: misc
    await retry.run(parse, 1)  # E: call-overload
    await breaker.call(fetch)  # E: call-overload
    await retry.run(fetch, "q", "extra")  # E: call-overload
    breaker.call_sync(parse, text=1)  # E: arg-type
    await guarded(1)  # E: arg-type
    shared = await Deduplicator(0).run("k", fetch, "q")
    k: int = shared  # E: assignment
    await Deduplicator(0).run("k", parse, 1)  # E: call-overload
    key: Hashable = ar.parse_react_step("Action: FINAL_ANSWER 1")  # E: assignment
    ar.VectorIndex(4, dtype="f32")  # E: arg-type
    ar.VectorIndex(4).remove(5)  # E: arg-type
    ar.OpenAIProvider(api_key=b"key")  # E: arg-type
    ar.SemanticStore(dtype="int4")  # E: arg-type
    ar.GraphStore().degree_centrality("inbound")  # E: arg-type
    ar.AgentRuntime(memory=ar.GraphStore())  # E: arg-type
    ar.AgentRuntime(graph=ar.EpisodicStore())  # E: arg-type
    ar.AgentRuntime().working_memory = Notes()  # E: assignment


# Hooks of the wrong shape failed the run only (typed Any): the edited arguments alone, a list.
class WrongHooks(ar.Middleware):
    def on_tool_call(  # E: override
        self, session: ar.AgentSession, tool: str, arguments: Any
    ) -> dict[str, Any]:
        return {}

    def on_post_llm(self, session: ar.AgentSession, text: str) -> list[str]:  # E: override
        return [text]


# Classes whose objects only the library makes: a call fails at run time ("cannot create
# instances"), so it must fail the check (one call a function: code after it is unreachable).
def snapshot() -> None:
    ar.MetricsSnapshot()  # E: call-arg


def step() -> None:
    ar.ReActStep()  # E: call-arg


def episode() -> None:
    ar.Episode()  # E: call-arg


def decay() -> None:
    ar.DecayPolicy()  # E: call-arg


def recall() -> None:
    ar.RecallPolicy()  # E: call-arg
"""
)
EXPECTED_WRONG = {
    number: match[1]
    for number, line in enumerate(WRONG.splitlines(), 1)
    if (match := re.search(r"# E: ([\w-]+)$", line))
}

ERROR = re.compile(
    r"^(?P<file>[^:\n]+):(?P<line>\d+): error: (?P<message>.*?)(?:  \[(?P<code>[\w-]+)\])?$"
)


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str, str]]]:
    """Runs mypy --strict once; returns each checked file's errors as (line, code, message)."""
    root = tmp_path_factory.mktemp("typing_user_code")
    files = {"user_correct.py": CORRECT, "user_wrong.py": WRONG}
    for index, snippet in enumerate(README_SNIPPETS):
        files[f"readme_{index}.py"] = "import llm_agent_runtime as ar\n\n" + snippet
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    config = root / "mypy.ini"
    config.write_text("[mypy]\n", encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--strict",
        "--config-file",
        str(config),
        "--cache-dir",
        str(root / ".mypy_cache"),
        "--no-error-summary",
        "--no-color-output",
        "--show-error-codes",
        *files,
    ]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=280)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 2: mypy itself failed
    errors: dict[str, list[tuple[int, str, str]]] = {name: [] for name in files}
    for line in done.stdout.splitlines():
        match = ERROR.match(line)
        if match is not None:
            errors.setdefault(Path(match["file"]).name, []).append(
                (int(match["line"]), match["code"] or "", match["message"])
            )
    unexpected = {name: found for name, found in errors.items() if name not in files and found}
    assert not unexpected, done.stdout
    return errors


def test_correct_user_code_gets_precise_types(
    checked: dict[str, list[tuple[int, str, str]]],
) -> None:
    assert checked["user_correct.py"] == []


def test_wrongly_typed_results_and_arguments_are_reported(
    checked: dict[str, list[tuple[int, str, str]]],
) -> None:
    found = {line: code for line, code, _ in checked["user_wrong.py"]}
    assert found == EXPECTED_WRONG, checked["user_wrong.py"]


def test_readme_examples_type_check(checked: dict[str, list[tuple[int, str, str]]]) -> None:
    assert len(README_SNIPPETS) >= 2
    for index in range(len(README_SNIPPETS)):
        assert checked[f"readme_{index}.py"] == [], README_SNIPPETS[index]


def test_correct_user_code_runs_as_its_types_say(tmp_path: Path) -> None:
    path = tmp_path / "user_correct.py"
    path.write_text(CORRECT, encoding="utf-8")
    namespace = runpy.run_path(str(path), run_name="user_correct")
    asyncio.run(namespace["main"]())


def test_every_lazy_submodule_is_bound_for_pyright_too() -> None:
    # Pyright (Pylance) reported `ar.persistence` as no attribute of the package: it binds
    # a submodule only from `from llm_agent_runtime import persistence as persistence`.
    import ast
    from pathlib import Path

    import llm_agent_runtime as ar

    tree = ast.parse(Path(ar.__file__).read_text(encoding="utf-8"))
    checked = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
    )
    bound = {
        alias.name
        for node in checked.body
        if isinstance(node, ast.ImportFrom) and node.module == "llm_agent_runtime"
        for alias in node.names
        if alias.asname == alias.name
    }
    submodules = {
        name for name, module in ar._LAZY.items() if module == f"llm_agent_runtime.{name}"
    }
    assert submodules and submodules <= bound
