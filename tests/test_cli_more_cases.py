"""The installed console script and `python -m llm_agent_runtime` do what their help says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from providers.fake_server import FakeLlmServer, Turn

import llm_agent_runtime as ar
from llm_agent_runtime import demo

SCRIPT = Path(sys.executable).parent / "llm-agent-runtime"
"""The console script `pip install` puts beside the interpreter."""
FORMS = {"script": [str(SCRIPT)], "module": [sys.executable, "-m", "llm_agent_runtime"]}


def cli(
    form: str, *args: str, db: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Runs the command line with no model settings but the given ones."""
    settings = {"PATH": "/usr/bin:/bin", **env}
    if db is not None:
        settings[demo.DB_ENV] = str(db)
    return subprocess.run(
        [*FORMS[form], *args], capture_output=True, text=True, timeout=60, env=settings
    )


def test_the_console_script_is_installed() -> None:
    assert SCRIPT.is_file(), "reinstall the package: its console script is missing"


@pytest.mark.parametrize("form", FORMS)
def test_help_lists_the_commands_and_exits_0(form: str) -> None:
    shown = cli(form, "--help")
    assert shown.returncode == 0 and shown.stderr == ""
    assert shown.stdout.startswith("usage: llm-agent-runtime [-h] [--version] command ...")
    assert "run the bundled agent demo" in shown.stdout
    assert "print the version" in shown.stdout


@pytest.mark.parametrize("form", FORMS)
def test_version_prints_the_installed_version(form: str) -> None:
    for args in (["version"], ["--version"]):
        shown = cli(form, *args)
        assert shown.returncode == 0 and shown.stderr == ""
        assert shown.stdout == f"llm-agent-runtime {ar.__version__}\n"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: command"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["version", "extra"], "unrecognized arguments: extra"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["--verison"], "unrecognized arguments: --verison"),  # not "command is required"
        (["--bogus", "demo"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_exit_2_with_the_usage_and_the_reason(
    form: str, args: list[str], message: str, tmp_path: Path
) -> None:
    refused = cli(form, *args, db=tmp_path / "demo.db")
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.startswith("usage: llm-agent-runtime")
    assert message in refused.stderr
    assert not (tmp_path / "demo.db").exists()  # the demo did not run


@pytest.mark.parametrize("form", FORMS)
def test_demo_answers_with_status_0_and_saves_where_the_variable_says(
    form: str, tmp_path: Path
) -> None:
    db = tmp_path / "nested" / "demo.db"
    run = cli(form, "demo", db=db, XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert "model: offline ScriptedProvider" in run.stdout
    assert "final answer: Mars is on average 78 million km farther" in run.stdout
    assert f"saved in SQLite at {db} " in run.stdout and db.is_file()
    assert not (tmp_path / "cache").exists()  # the variable wins over the cache directory


@pytest.mark.parametrize(
    ("wire", "settings"),
    [
        ("openai", {"OPENAI_API_KEY": "sk-test", "OPENAI_MODEL": "my-openai-model"}),
        ("openai", {"OPENAI_MODEL": "my-local-model"}),  # a base URL alone: no key needed
        ("anthropic", {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_MODEL": "my-claude"}),
    ],
)
def test_the_demo_runs_on_the_model_its_variables_name(
    wire: str, settings: dict[str, str], tmp_path: Path
) -> None:
    """`demo --help`: `*_BASE_URL` and `*_MODEL` pick the server and the model."""
    with FakeLlmServer() as server:
        server.script(*(Turn(text=reply) for reply in demo.SCRIPT))
        url = server.url + "/v1" if wire == "openai" else server.url
        base = "OPENAI_BASE_URL" if wire == "openai" else "ANTHROPIC_BASE_URL"
        run = cli("script", "demo", db=tmp_path / "demo.db", **{base: url}, **settings)
        requests = list(server.requests)
    assert run.returncode == 0, run.stderr
    model = settings.get("OPENAI_MODEL") or settings["ANTHROPIC_MODEL"]
    assert f"model='{model}'" in run.stdout
    assert "final answer: Mars is on average 78 million km farther" in run.stdout
    assert len(requests) == len(demo.SCRIPT)
    assert {request.wire for request in requests} == {wire}
    assert {request.json["model"] for request in requests} == {model}


def test_a_model_variable_without_its_key_leaves_the_offline_model(tmp_path: Path) -> None:
    run = cli(
        "script",
        "demo",
        db=tmp_path / "demo.db",
        OPENAI_MODEL="gpt-x",
        ANTHROPIC_MODEL="claude-x",
        ANTHROPIC_BASE_URL="http://127.0.0.1:9",
    )
    assert run.returncode == 0, run.stderr
    assert "model: offline ScriptedProvider" in run.stdout


def test_a_failed_run_exits_1_saying_why_on_stderr(tmp_path: Path) -> None:
    """`demo --help`: "1 when ... the run failed (the reason goes to stderr)"."""
    with FakeLlmServer() as server:  # nothing scripted: every request gets an error status
        run = cli("script", "demo", db=tmp_path / "demo.db", OPENAI_BASE_URL=server.url + "/v1")
    assert run.returncode == 1
    assert run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert "final answer:" not in run.stdout
