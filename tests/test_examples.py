"""The bundled demo (`llm_agent_runtime.demo`), the console script and the public namespace."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
from importlib import resources
from pathlib import Path

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime import demo

PACKAGE = Path(ar.__file__).resolve().parent
ENV = {"PATH": "/usr/bin:/bin"}


def run_demo(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, **env},
        cwd=cwd,
    )


def assert_answered(out: str) -> None:
    assert "seeded 7 facts from solar_system.txt into episodic and semantic memory" in out
    assert "final answer: Mars is on average 78 million km farther" in out


def test_demo_runs_an_agent_end_to_end(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    run = run_demo("-m", "llm_agent_runtime.demo", env={"LLM_AGENT_RUNTIME_DEMO_DB": str(db)})
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert_answered(out)
    assert "knowledge graph: 7 entities, 6 relationships (has_moon, orbits)" in out
    assert "model: offline ScriptedProvider" in out
    # The semantic search finds both distances among the facts, by meaning.
    assert "action: memory_search(" in out
    assert "Earth orbits the Sun at an average distance of 150 million km." in out
    assert "Mars orbits the Sun at an average distance of 228 million km." in out
    assert "action: calculator({'expression': '228 - 150'})" in out
    assert "observation: 78.0 [ok]" in out
    assert "action: graph_query({'entity': 'Mars'})" in out
    assert '"Mars has_moon Phobos", "Mars has_moon Deimos"' in out
    assert '"Mars orbits Sun (228 million km)"' in out
    assert "metrics: sessions=1 steps=4 tool_calls=3 failed=0 memory_recalls=3" in out
    assert f"saved in SQLite at {db}" in out and db.exists()
    assert "with 4 per-step checkpoints" in out
    assert "reloaded from it: 4 steps, answer 'Mars is on average 78 million km" in out
    assert run.stderr == ""


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_demo_whose_reader_closes_early_stops_quietly(tmp_path: Path, unbuffered: str) -> None:
    """`... demo | head -1`: no BrokenPipeError traceback, status 1.

    The reader here closes before the demo writes anything, so its first write (unbuffered)
    or its flush of the buffered output fails, every time.
    """
    reader, writer = os.pipe()
    os.close(reader)
    env = {**ENV, "LLM_AGENT_RUNTIME_DEMO_DB": str(tmp_path / "demo.db")}
    try:
        run = subprocess.run(
            [sys.executable, "-m", "llm_agent_runtime.demo"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**env, "PYTHONUNBUFFERED": unbuffered},
        )
    finally:
        os.close(writer)
    assert run.stderr == ""
    assert run.returncode == 1


@pytest.mark.parametrize("unbuffered", ["1", ""])
@pytest.mark.parametrize(
    "command", [["demo"], ["version"], ["--help"], ["--version"], ["demo", "--help"]]
)
@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_a_lost_output_is_said_on_stderr_with_status_1(
    tmp_path: Path, unbuffered: str, command: list[str], stdout: str
) -> None:
    # A full disk was a traceback (or, for --help, status 0: argparse drops a failed
    # write); a closed stdout (no file at all) failed on its flush.
    env = {**ENV, "LLM_AGENT_RUNTIME_DEMO_DB": str(tmp_path / "demo.db")}
    with open(os.devnull if stdout == "closed" else "/dev/full", "w") as target:
        run = subprocess.run(
            [sys.executable, "-m", "llm_agent_runtime", *command],
            stdout=target if stdout == "full" else None,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**env, "PYTHONUNBUFFERED": unbuffered},
            preexec_fn=(lambda: os.close(1)) if stdout == "closed" else None,
        )
    expected = "cannot write the output" if stdout == "full" else "no standard output"
    assert run.stderr.strip() == f"error: {expected}" + (
        ": No space left on device" if stdout == "full" else " to write to"
    )
    assert run.returncode == 1


def test_demo_data_is_package_data() -> None:
    """The text ships inside the package (maturin puts the python-source files in the wheel)."""
    data = resources.files("llm_agent_runtime.demo").joinpath("solar_system.txt")
    assert data.is_file()
    assert "Mars has two small moons, Phobos and Deimos." in data.read_text(encoding="utf-8")


def test_demo_runs_from_an_install_without_the_source_tree(tmp_path: Path) -> None:
    """As from a wheel: the package alone, the demo run from elsewhere, no DB path given.

    The console script used to look for `examples/demo.py` next to the package's parent, which
    only a source checkout has; and the demo wrote `.demo/checkpoints.db` into the working
    directory.
    """
    site = tmp_path / "site"
    shutil.copytree(
        PACKAGE, site / "llm_agent_runtime", ignore=shutil.ignore_patterns("__pycache__")
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    where = run_demo("-c", "import llm_agent_runtime.cli as c; print(c.__file__)", env=env)
    assert where.stdout.startswith(str(site)), where  # the copy runs, not the source tree
    run = run_demo("-m", "llm_agent_runtime.cli", "demo", env=env, cwd=elsewhere)
    assert run.returncode == 0, run.stderr
    assert_answered(run.stdout)
    db = tmp_path / "cache" / "llm-agent-runtime" / "demo.db"
    assert f"saved in SQLite at {db} " in run.stdout and db.is_file()
    assert list(elsewhere.iterdir()) == []  # nothing left in the working directory


async def sessions_in(db: Path) -> dict[str, str]:
    backend = ar.SqliteBackend(db)
    try:
        keys = await backend.list_keys("session:")
        ids = {key.split(":")[1] for key in keys}
        return {sid: (await ar.AgentSession.load_checkpoint(backend, sid)).agent_id for sid in ids}
    finally:
        backend.close()


async def save_other_agents_session(db: Path) -> None:
    backend = ar.SqliteBackend(db)
    try:
        runtime = ar.AgentRuntime(ar.AgentConfig(max_iterations=2), checkpoint_backend=backend)
        model = ar.ScriptedProvider(["Thought: done\nAction: FINAL_ANSWER 42"])
        await runtime.run_agent_with_provider("someone-else", "?", model)
    finally:
        backend.close()


def test_demo_database_does_not_grow_run_after_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each run deletes the demo sessions earlier runs saved; other agents' sessions stay."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "demo.db"
    monkeypatch.setenv("LLM_AGENT_RUNTIME_DEMO_DB", str(db))
    asyncio.run(save_other_agents_session(db))
    sizes = []
    for _ in range(4):
        assert demo.main() == 0
        sizes.append(db.stat().st_size)
        agents = sorted(asyncio.run(sessions_in(db)).values())
        assert agents == ["astro-agent", "someone-else"]
    out = capsys.readouterr().out
    assert out.count("final answer: Mars is on average 78 million km") == 4
    assert out.count("(it keeps the latest run's: deleted 1 earlier demo session)") == 3
    assert sizes[1] == sizes[2] == sizes[3], sizes  # freed pages are reused: no growth


def test_default_database_is_per_user_not_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLM_AGENT_RUNTIME_DEMO_DB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo.default_db_path() == tmp_path / "xdg" / "llm-agent-runtime" / "demo.db"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert demo.default_db_path() == Path.home() / ".cache" / "llm-agent-runtime" / "demo.db"
    # A relative cache directory (a `~` no shell expanded, in a unit file say) is ignored, as
    # the XDG spec says: it put the database in the working directory.
    for relative in ("~/.cache", "relcache"):
        monkeypatch.setenv("XDG_CACHE_HOME", relative)
        assert demo.default_db_path() == Path.home() / ".cache" / "llm-agent-runtime" / "demo.db"
    monkeypatch.setenv("LLM_AGENT_RUNTIME_DEMO_DB", str(tmp_path / "mine.db"))
    assert demo.default_db_path() == tmp_path / "mine.db"


def test_the_demo_refuses_a_memory_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said the session was saved at `<cwd>/:memory:`, kept nothing, and left a
    # `:memory:.lock` in the working directory.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLM_AGENT_RUNTIME_DEMO_DB", ":memory:")
    with pytest.raises(ar.PersistenceError, match="':memory:' keeps nothing"):
        demo.default_db_path()
    assert demo.main() == 1
    assert "keeps nothing" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_console_script_demo_and_version() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "llm_agent_runtime.cli", "version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert version.startswith("llm-agent-runtime ")
    bad = subprocess.run(
        [sys.executable, "-m", "llm_agent_runtime.cli", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2


def test_console_script_help_names_the_demo_settings(capsys: pytest.CaptureFixture[str]) -> None:
    """`--version` works, and the demo's help names the variables that change what it does."""
    from llm_agent_runtime import cli

    with pytest.raises(SystemExit) as version:
        cli.main(["--version"])
    assert version.value.code == 0
    assert capsys.readouterr().out == f"llm-agent-runtime {ar.__version__}\n"
    with pytest.raises(SystemExit) as shown:
        cli.main(["demo", "--help"])
    assert shown.value.code == 0
    text = capsys.readouterr().out
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", demo.DB_ENV, "exit status"):
        assert name in text
    with pytest.raises(SystemExit) as missing:
        cli.main([])
    assert missing.value.code == 2
    assert "required: command" in capsys.readouterr().err


def test_public_namespace_is_all_and_submodules() -> None:
    """No helper (`lazy_exports`, `annotations`, `TYPE_CHECKING`) leaks into `dir(ar)`.

    Public names are `__all__`'s, plus the package's own submodules (an imported submodule is
    an attribute of its package, whatever the package does).
    """
    public = {name for name in dir(ar) if not name.startswith("_")}
    assert set(ar.__all__) - {"__version__"} <= public
    extra = {
        name
        for name in public - set(ar.__all__)
        if not (
            isinstance(getattr(ar, name), types.ModuleType)
            and getattr(ar, name).__name__ == f"llm_agent_runtime.{name}"
        )
    }
    assert extra == set()
    leaked = {name for name in vars(ar) if not name.startswith("_")} - set(ar.__all__)
    assert all(isinstance(getattr(ar, name), types.ModuleType) for name in leaked), leaked


def test_a_provider_can_be_written_from_the_public_api() -> None:
    # `LlmProvider` was public but the types its methods take and return were not: writing
    # one (or scripting tool calls) needed the private `providers.base`.
    from llm_agent_runtime.providers import base

    for name in (
        "ChatProvider",
        "ChatResponse",
        "CompletionProvider",
        "Message",
        "StreamEnd",
        "StreamEvent",
        "TextDelta",
        "ToolCall",
        "ToolCallDelta",
        "ToolDefinition",
        "Usage",
    ):
        assert name in ar.__all__ and getattr(ar, name) is getattr(base, name)
        assert getattr(ar.providers, name) is getattr(base, name)


def test_the_module_forms_go_through_the_console_scripts_parser() -> None:
    def python_m(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *args], capture_output=True, text=True, timeout=60
        )

    version = python_m("llm_agent_runtime", "--version")
    assert version.returncode == 0 and version.stdout == f"llm-agent-runtime {ar.__version__}\n"
    # `--help` must not run the demo (a run deletes the last demo session).
    shown = python_m("llm_agent_runtime.demo", "--help")
    assert shown.returncode == 0 and "usage: llm-agent-runtime demo" in shown.stdout
    assert "question:" not in shown.stdout
    bad = python_m("llm_agent_runtime.demo", "--bogus")
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr


@pytest.mark.parametrize(
    ("expression", "value"),
    [("228 - 150", 78.0), ("-5 + 3", -2.0), ("-(150 - 228)", 78.0), ("+2 * 3", 6.0)],
)
def test_the_demo_calculator_takes_signed_numbers(expression: str, value: float) -> None:
    assert demo.calculator(expression) == value


@pytest.mark.parametrize("expression", ["True + 1", "1e400 - 1e400", "2 ** 8", "x + 1"])
def test_the_demo_calculator_refuses_what_is_no_arithmetic_on_numbers(expression: str) -> None:
    with pytest.raises(ValueError, match=r"unsupported expression|no finite value"):
        demo.calculator(expression)


def test_an_interrupted_demo_says_so_and_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    async def interrupted() -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run", interrupted)
    assert demo.main() == 130


def test_the_demo_bounds_a_silent_models_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that accepts the connection and never answers fails the demo in time."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts (the kernel does), never reads nor answers
    monkeypatch.setattr(demo, "MODEL_READ_TIMEOUT", 0.5)
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{listener.getsockname()[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv(demo.DB_ENV, str(tmp_path / "demo.db"))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    try:
        start = time.monotonic()
        assert demo.main() == 1
        assert time.monotonic() - start < 30
    finally:
        listener.close()


def test_the_demo_graph_tool_lists_relationships_to_an_entity_too() -> None:
    graph = ar.GraphStore()
    for name in ("Sun", "Mars", "Phobos"):
        graph.add_entity(name, "body")
    graph.add_relationship("Mars", "Sun", "orbits")
    graph.add_relationship("Mars", "Phobos", "has_moon")
    registry = ar.ToolRegistry([demo.build_graph_query(graph)])
    for entity, expected in [
        ("Sun", ["Mars orbits Sun"]),
        ("Phobos", ["Mars has_moon Phobos"]),
        ("Mars", ["Mars orbits Sun", "Mars has_moon Phobos"]),
    ]:
        observation = asyncio.run(registry.call("graph_query", {"entity": entity}))
        assert observation.error_kind is None
        assert sorted(json.loads(observation.content)) == sorted(expected)


def test_the_subpackages_type_checkers_see_load_on_first_use() -> None:
    # mypy sees `ar.persistence` and the rest (the package imports from them when type
    # checking), but in a fresh process they raised AttributeError until something else
    # imported them.
    script = (
        "import llm_agent_runtime as ar\n"
        "print(ar.persistence.SqliteBackend.__name__, ar.orchestration.RetryPolicy.__name__,"
        " ar.runtime.AgentRuntime.__name__, ar.config.AgentConfig.__name__,"
        " ar.graph.to_networkx.__name__, ar.memory.fit_to_token_budget.__name__,"
        " ar.semantic.SemanticStore.__name__, ar.tools.tool.__name__,"
        " ar.embeddings.OpenAIEmbedder.__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [
        "SqliteBackend",
        "RetryPolicy",
        "AgentRuntime",
        "AgentConfig",
        "to_networkx",
        "fit_to_token_budget",
        "SemanticStore",
        "tool",
        "OpenAIEmbedder",
    ]
