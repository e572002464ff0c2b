"""`make demo` / `llm-agent-runtime demo` as a new user runs it, on a real model's wire format.

The model is the loopback server of `tests/providers` (real HTTP, the OpenAI and Anthropic
wire formats), behaving other than the offline script does; the demo runs as a subprocess
with the environment pointing at it.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
from providers.fake_server import FakeLlmServer, Turn

from llm_agent_runtime.demo import DB_ENV

WIRES = ["openai", "anthropic"]


def model_env(wire: str, url: str) -> dict[str, str]:
    """The variables that point `provider_from_env` at the loopback server."""
    if wire == "openai":
        return {"OPENAI_API_KEY": "sk-demo-key", "OPENAI_BASE_URL": url + "/v1"}
    return {"ANTHROPIC_API_KEY": "sk-ant-demo-key", "ANTHROPIC_BASE_URL": url}


def run_demo(env: dict[str, str], db: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_agent_runtime.demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", DB_ENV: str(db), **env},
    )


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("encoding", ["ascii", "utf-8"])
def test_a_reply_stdout_cannot_encode_is_escaped_not_a_traceback(
    tmp_path: Path, wire: str, encoding: str
) -> None:
    """A non-ASCII reply under `PYTHONIOENCODING=ascii` ended in a UnicodeEncodeError traceback.

    So did a database path holding bytes that are not UTF-8 (a surrogate to Python) on a
    stdout encoding UTF-8 strictly.
    """
    answer = "Phobos \u2014 Deimos \u2603 \U0001f680"
    folder = tmp_path / ("caf\u00e9" if encoding == "ascii" else "raw-\udcff")
    with FakeLlmServer() as server:
        server.script(Turn(text=f"Thought: moons \u00e9\nAction: FINAL_ANSWER {answer}"))
        env = {**model_env(wire, server.url), "PYTHONIOENCODING": encoding}
        run = subprocess.run(
            [sys.executable, "-m", "llm_agent_runtime.demo"],
            capture_output=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", DB_ENV: str(folder / "d.db"), **env},
        )
    out, err = run.stdout.decode(encoding), run.stderr.decode(encoding, "replace")
    assert run.returncode == 0, err
    assert "Traceback" not in err and err == ""
    if encoding == "ascii":
        assert "step 1: thought: moons \\xe9\n" in out
        assert "final answer: Phobos \\u2014 Deimos \\u2603 \\U0001f680\n" in out
        assert "saved in SQLite at " + str(folder).replace("\u00e9", "\\xe9") in out
    else:
        assert f"final answer: {answer}\n" in out
        assert "saved in SQLite at " + str(folder).replace("\udcff", "\\udcff") in out
    assert "reloaded from it: 1 steps" in out


def test_with_both_models_configured_the_help_says_which_one_runs(tmp_path: Path) -> None:
    """Both key sets set: OpenAI's runs, which `demo --help` did not say.

    Nor did it say that `ANTHROPIC_BASE_URL` without `ANTHROPIC_API_KEY` is ignored (the
    offline model runs), while `OPENAI_BASE_URL` alone is enough.
    """
    final = Turn(text="Thought: done\nAction: FINAL_ANSWER 78")
    with FakeLlmServer() as openai, FakeLlmServer() as anthropic:
        openai.script(final)
        anthropic.script(final)
        both = {**model_env("openai", openai.url), **model_env("anthropic", anthropic.url)}
        run = run_demo(both, tmp_path / "d.db")
        assert [r.wire for r in openai.requests] == ["openai"] and anthropic.requests == []
    assert run.returncode == 0, run.stderr
    assert f"model: OpenAIProvider(base_url='{openai.url}/v1'" in run.stdout
    url_alone = run_demo({"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}, tmp_path / "d.db")
    assert "model: offline ScriptedProvider" in url_alone.stdout

    shown = run_demo({}, tmp_path / "d.db", "--help")
    assert shown.returncode == 0
    help_text = " ".join(shown.stdout.split())  # as one line, however it is wrapped
    assert "OPENAI_BASE_URL alone" in help_text
    assert "needs ANTHROPIC_API_KEY" in help_text
    assert "the OPENAI_* variables win when both are set" in help_text


def test_a_demo_on_a_symlink_to_the_database_waits_for_a_run_on_the_database(
    tmp_path: Path,
) -> None:
    """Its lock was `<symlink>.lock`, not the database's: both ran, and the second deleted
    the first's session as it ran."""
    db = tmp_path / "d.db"
    link = tmp_path / "link.db"
    link.symlink_to(db)
    holder = os.open(tmp_path / "d.db.lock", os.O_RDWR | os.O_CREAT)  # as a running demo
    fcntl.flock(holder, fcntl.LOCK_EX)
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", DB_ENV: str(link)}
    with subprocess.Popen(
        [sys.executable, "-m", "llm_agent_runtime.demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as second:
        try:
            assert second.stderr is not None
            said = second.stderr.readline()  # the end of its output if it does not wait
        finally:
            os.close(holder)  # the first run ends
        out, err = second.communicate(timeout=60)
    assert said == f"waiting for another demo run on {link} to end ...\n"
    assert second.returncode == 0, err
    assert "final answer: Mars is on average 78 million km" in out
