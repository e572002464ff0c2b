"""`make demo` on a real provider: the demo talks to the loopback server as it would to an API."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime import AnthropicProvider, OpenAIProvider, SqliteBackend, demo
from llm_agent_runtime.persistence.base import session_key

from .fake_server import FakeLlmServer, Reply, Turn, render_openai

REPLIES = [
    'Thought: look it up\nAction: memory_search {"query": "Mars distance"}',
    'Thought: moons\nAction: graph_query {"entity": "Mars"}',
    "Thought: done\nAction: FINAL_ANSWER Phobos and Deimos, 228 million km out.",
]
KEYS = {"openai": "sk-demo-key", "anthropic": "sk-ant-demo-key"}
ENVIRONMENT = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "ANTHROPIC_API_KEY")
ENVIRONMENT += ("ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL")


def model_env(wire: str, url: str) -> dict[str, str]:
    """The variables that point `provider_from_env` at the loopback server."""
    if wire == "openai":
        return {"OPENAI_API_KEY": KEYS[wire], "OPENAI_BASE_URL": url + "/v1"}
    return {"ANTHROPIC_API_KEY": KEYS[wire], "ANTHROPIC_BASE_URL": url}


def demo_env(env: dict[str, str], db: Path | str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LLM_AGENT_RUNTIME_DEMO_DB": str(db), **env}


def run_demo(env: dict[str, str], db: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_agent_runtime.demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env=demo_env(env, db),
    )


def start_demo(env: dict[str, str], db: Path) -> subprocess.Popen[str]:
    """The demo in the background, its output unbuffered (read as it comes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "llm_agent_runtime.demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=demo_env({"PYTHONUNBUFFERED": "1", **env}, db),
    )


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_demo_uses_the_real_model_when_a_key_is_set(tmp_path: Path, wire: str) -> None:
    with FakeLlmServer() as server:
        server.script(*(Turn(text=reply) for reply in REPLIES))
        run = run_demo(model_env(wire, server.url), tmp_path / "d.db")
        requests = list(server.requests)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "model: " in out and "ScriptedProvider" not in out
    assert "sk-" not in out  # the key never reaches the output
    assert 'observation: ["Mars orbits Sun (228 million km)"' in out
    assert "final answer: Phobos and Deimos, 228 million km out." in out
    assert len(requests) == 3 and all(r.wire == wire for r in requests)
    # The model sees the tools, the recalled memories and the observations so far.
    last_prompt = str(requests[-1].json)
    assert "graph_query" in last_prompt and "Relevant memories" in last_prompt
    assert "Mars has_moon Phobos" in last_prompt


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_demo_without_a_final_answer_says_so_and_fails(tmp_path: Path, wire: str) -> None:
    """A model that never answers used to end in `final answer: None` and exit status 0."""
    with FakeLlmServer() as server:
        server.fallback = Turn(text='Thought: again\nAction: calculator {"expression": "1 + 1"}')
        run = run_demo(model_env(wire, server.url), tmp_path / "d.db")
        requests = len(server.requests)
    assert run.returncode == 1
    assert requests == demo.MAX_ITERATIONS == 8
    assert "final answer" not in run.stdout
    assert run.stdout.count("action: calculator({'expression': '1 + 1'})") == 8
    assert "with 8 per-step checkpoints; reloaded from it: 8 steps, answer None" in run.stdout
    assert run.stderr == "error: the model gave no final answer within max_iterations=8 steps\n"


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_demo_reports_a_provider_error_in_one_line(tmp_path: Path, wire: str) -> None:
    """A model's error used to end in a long traceback."""
    body = b'{"error": {"type": "authentication_error", "message": "invalid x-api-key"}}'
    with FakeLlmServer() as server:
        server.script(Reply(status=401, body=body, headers={"content-type": "application/json"}))
        run = run_demo(model_env(wire, server.url), tmp_path / "d.db")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert "401" in run.stderr and "invalid x-api-key" in run.stderr
    assert KEYS[wire] not in run.stderr + run.stdout


def test_a_demo_run_that_fails_shows_the_steps_it_took_and_where_they_are(
    tmp_path: Path,
) -> None:
    """A run the model's server failed part way printed none of its steps, though they were
    saved, nor where."""
    broken = Reply(status=500, body=b'{"error": {"type": "server_error", "message": "down"}}')
    with FakeLlmServer() as server:
        server.script(*(Turn(text=reply) for reply in REPLIES[:2]), broken, broken, broken)
        run = run_demo(model_env("openai", server.url), tmp_path / "d.db")
    assert run.returncode == 1
    assert "action: memory_search({'query': 'Mars distance'})" in run.stdout
    assert "action: graph_query({'entity': 'Mars'})" in run.stdout
    assert "final answer" not in run.stdout
    assert f"saved in SQLite at {(tmp_path / 'd.db').resolve()}" in run.stdout
    assert "reloaded from it: 2 steps, answer None" in run.stdout
    assert run.stderr.startswith("error: OpenAI API error: server_error: down")


def test_a_demo_run_that_fails_on_a_reply_it_cannot_read_shows_the_reply(
    tmp_path: Path,
) -> None:
    chatter = "I would rather talk about the weather on Mars."
    with FakeLlmServer() as server:
        server.fallback = Turn(text=chatter)
        run = run_demo(model_env("openai", server.url), tmp_path / "d.db")
    assert run.returncode == 1
    assert "not a ReAct step" in run.stderr
    assert f"the model's last reply: {chatter!r}" in run.stdout


def test_the_demo_prints_each_step_as_it_is_taken(tmp_path: Path) -> None:
    """The trace came out only once the run was over: with a slow model, nothing for minutes."""
    slow = Turn(text=REPLIES[2])
    with FakeLlmServer() as server:
        server.script(
            Turn(text=REPLIES[0]),
            Turn(text=REPLIES[1]),
            # As it was asked (the demo listens to the run's events: its calls stream).
            lambda request: dataclasses.replace(
                render_openai(slow, request.streamed), first_byte_delay=3.0
            ),
        )
        running = start_demo(model_env("openai", server.url), tmp_path / "d.db")
        with running:
            try:
                assert running.stdout is not None
                lines = [running.stdout.readline()]
                while not lines[-1].startswith("step 2: thought: moons"):
                    assert running.poll() is None
                    lines.append(running.stdout.readline())
                shown = time.monotonic()
                rest, _ = running.communicate(timeout=60)
                ended = time.monotonic()
            finally:
                if running.poll() is None:
                    running.kill()
    assert running.returncode == 0
    assert ended - shown > 1.5  # shown while the last reply (3 s late) was on its way
    assert "final answer: Phobos and Deimos" in rest


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_demo_closes_the_provider_and_the_database_when_the_model_fails(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    wire: str,
) -> None:
    closed: list[str] = []

    def recording(cls: type[Any], name: str, what: str) -> None:
        original: Callable[..., Any] = getattr(cls, name)

        def close(self: Any) -> Any:
            closed.append(what)
            return original(self)

        monkeypatch.setattr(cls, name, close)

    recording(OpenAIProvider if wire == "openai" else AnthropicProvider, "aclose", "provider")
    recording(SqliteBackend, "close", "database")
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLM_AGENT_RUNTIME_DEMO_DB", str(tmp_path / "d.db"))
    with FakeLlmServer() as server:
        server.script(Reply(status=401, body=b'{"error": {"message": "invalid key"}}'))
        for name, value in model_env(wire, server.url).items():
            monkeypatch.setenv(name, value)
        assert demo.main() == 1
    assert sorted(closed) == ["database", "provider"]
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "invalid key" in err


def test_demo_shows_no_password_of_its_base_url(tmp_path: Path) -> None:
    """`model: OpenAIProvider(base_url='http://alice:password@...')` went to the output."""
    with FakeLlmServer() as server:
        server.script(*(Turn(text=reply) for reply in REPLIES))
        url = server.url.replace("http://", "http://alice:S3cret-PW@") + "/v1"
        run = run_demo({"OPENAI_BASE_URL": url}, tmp_path / "d.db")
        requests = list(server.requests)
    assert run.returncode == 0, run.stderr
    assert f"model: OpenAIProvider(base_url='{server.url}/v1', model='gpt-4o-mini')" in run.stdout
    assert "S3cret" not in run.stdout + run.stderr
    basic = "Basic " + base64.b64encode(b"alice:S3cret-PW").decode()
    assert [r.headers["authorization"] for r in requests] == [basic] * 3


def test_a_second_demo_on_one_database_waits_for_the_first(tmp_path: Path) -> None:
    """A second run deleted the first's session as it ran (the first then failed)."""
    db = tmp_path / "d.db"
    holder = os.open(tmp_path / "d.db.lock", os.O_RDWR | os.O_CREAT)  # as a running demo
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        second = start_demo({}, db)
    except BaseException:
        os.close(holder)
        raise
    with second:  # its pipes are closed however the test ends (a leak warns in a later test)
        try:
            try:
                assert second.stderr is not None
                said = second.stderr.readline()  # the end of its output if it does not wait
                assert said == f"waiting for another demo run on {db} to end ...\n"
                time.sleep(0.5)
                assert second.poll() is None  # it waits
            finally:
                os.close(holder)  # the first run ends
            out, err = second.communicate(timeout=60)
        finally:
            if second.poll() is None:
                second.kill()
    assert second.returncode == 0, err
    assert err == "" and "final answer: Mars is on average 78 million km" in out


async def run_agent(backend: ar.PersistenceBackend, agent: str) -> str:
    runtime = ar.AgentRuntime(ar.AgentConfig(max_iterations=2), checkpoint_backend=backend)
    model = ar.ScriptedProvider(
        ["Thought: look\nAction: lookup {}", "Thought: done\nAction: FINAL_ANSWER 42"]
    )
    return (await runtime.run_agent_with_provider(agent, "?", model)).session_id


async def test_forget_demo_sessions_deletes_demo_sessions_that_no_longer_load(
    tmp_path: Path,
) -> None:
    """A session left without some of its records stayed for good, run after run."""
    backend = SqliteBackend(tmp_path / "d.db")
    try:
        kept = await run_agent(backend, "someone-else")
        named_by_final = await run_agent(backend, demo.AGENT)
        named_by_meta = await run_agent(backend, demo.AGENT)
        # Records each loses: step 1 (the steps after it no longer load), and the meta
        # record or the final checkpoint.
        broken = {
            kept: [":meta", ":step:1"],
            named_by_final: [":meta", ":step:1"],
            named_by_meta: ["", ":step:1"],
        }
        for session_id, tails in broken.items():
            for tail in tails:
                assert await backend.delete(session_key(session_id) + tail)
            with pytest.raises(ar.PersistenceError):
                await ar.AgentSession.load_checkpoint(backend, session_id)
        others = await backend.list_keys(session_key(kept))
        assert await demo.forget_demo_sessions(backend) == 2
        assert await backend.list_keys("session:") == others  # the other agent's stay
    finally:
        backend.close()


def test_demo_database_path_with_no_home_for_its_tilde_fails_in_one_line(tmp_path: Path) -> None:
    """`~nosuchuser/demo.db` ended in a RuntimeError traceback."""
    run = run_demo({}, "~no-such-user-llm-agent-runtime/demo.db")
    assert run.returncode == 1
    assert run.stderr == (
        "error: LLM_AGENT_RUNTIME_DEMO_DB='~no-such-user-llm-agent-runtime/demo.db': no home "
        "directory for its '~' (write the path in full)\n"
    )


def test_an_interrupted_demo_says_so_in_one_line(tmp_path: Path) -> None:
    """Ctrl-C printed a warning about the cancelled run, then "error: interrupted"."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts (the kernel does), never answers: the run waits
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    running = start_demo({"OPENAI_BASE_URL": url}, tmp_path / "d.db")
    with running:  # its pipes are closed however the test ends (a leak warns in a later test)
        try:
            assert running.stdout is not None
            while not running.stdout.readline().startswith("question:"):
                assert running.poll() is None
            time.sleep(0.5)  # the model's request is on its way
            running.send_signal(signal.SIGINT)
            _, err = running.communicate(timeout=60)
        finally:
            if running.poll() is None:
                running.kill()
            listener.close()
    assert running.returncode == 130
    assert err == "error: interrupted\n"


def test_control_characters_of_the_model_reach_the_terminal_as_escapes(tmp_path: Path) -> None:
    """A reply's escape sequences went to the terminal as they were: a model (or a server)
    could clear the screen, retitle the window, or hide the text after it."""
    thought = "ok\x1b]0;pwned\x07\x1b[2J"
    replies = [f"Thought: {thought}\nAction: FINAL_ANSWER 42\x1b[8m hidden"]
    with FakeLlmServer() as server:
        server.script(*(Turn(text=reply) for reply in replies))
        run = run_demo(model_env("openai", server.url), tmp_path / "d.db")
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stdout and "\x07" not in run.stdout
    assert "step 1: thought: ok\\x1b]0;pwned\\x07\\x1b[2J\n" in run.stdout
    assert "final answer: 42\\x1b[8m hidden\n" in run.stdout


def test_a_demo_interrupted_twice_at_once_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """Two Ctrl-C a moment apart (a launcher forwarding one as the terminal sends it): the
    second raised KeyboardInterrupt wherever asyncio's loop was, which at times left the
    cancelled run waiting for good, then a traceback at a third."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts (the kernel does), never answers: the run waits
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    try:
        for gap in (0.0, 0.002):
            running = start_demo({"OPENAI_BASE_URL": url}, tmp_path / "d.db")
            with running:
                try:
                    assert running.stdout is not None
                    while not running.stdout.readline().startswith("question:"):
                        assert running.poll() is None
                    time.sleep(0.3)  # the model's request is on its way
                    running.send_signal(signal.SIGINT)
                    time.sleep(gap)
                    running.send_signal(signal.SIGINT)
                    _, err = running.communicate(timeout=30)
                finally:
                    if running.poll() is None:
                        running.kill()
            assert running.returncode == 130, err
            assert err in (
                "error: interrupted\n",
                "error: interrupted again: exiting at once\n",
            )
    finally:
        listener.close()


def test_the_demo_puts_back_the_interrupt_handler_it_replaced() -> None:
    # Python's default came back, not the caller's own handler.
    def mine(signum: int, frame: Any) -> None:
        pass

    async def work() -> int:
        return 0

    previous = signal.signal(signal.SIGINT, mine)
    try:
        assert asyncio.run(demo._interruptible(work())) == 0
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_demo_whose_output_is_lost_mid_run_warns_of_no_failed_run(tmp_path: Path) -> None:
    """A write of the trace failing in the run (its first step past stdout's buffer) failed
    the run, and the runtime's "agent run ... failed: BrokenPipeError" warning was printed:
    of a closed pipe, the demo stops quietly; of a full disk, it says so in one line."""
    long = "Thought: " + "long thought " * 800 + '\nAction: calculator {"expression": "1+1"}'
    with FakeLlmServer() as server:
        server.fallback = Turn(text=long)
        env = demo_env(model_env("openai", server.url), tmp_path / "d.db")
        reader, writer = os.pipe()
        os.close(reader)
        try:
            closed = subprocess.run(
                [sys.executable, "-m", "llm_agent_runtime.demo"],
                stdout=writer,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                env=env,
            )
        finally:
            os.close(writer)
        with open("/dev/full", "w") as full:
            lost = subprocess.run(
                [sys.executable, "-m", "llm_agent_runtime.demo"],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                env=env,
            )
    assert (closed.returncode, closed.stderr) == (1, "")
    assert lost.returncode == 1
    assert lost.stderr == "error: cannot write the output: No space left on device\n"


def test_a_second_interrupt_exits_while_the_first_ones_cleanup_goes_on() -> None:
    """The first Ctrl-C cancels the demo's run; one more exits at once, whatever the run's
    cleanup is waiting for."""
    script = (
        "import asyncio, os, signal, sys\n"
        "from llm_agent_runtime.demo import _interruptible\n"
        "async def work():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        await asyncio.sleep(60)\n"
        "    except asyncio.CancelledError:\n"
        "        print('cancelled', flush=True)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        await asyncio.sleep(60)  # a cleanup that takes its time\n"
        "    return 0\n"
        "sys.exit(asyncio.run(_interruptible(work())))\n"
    )
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert (run.returncode, run.stdout) == (130, "cancelled\n")
    assert run.stderr == "error: interrupted again: exiting at once\n"
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("unbuffered", ["1", ""])
@pytest.mark.parametrize("args", [["version"], ["--version"], ["--help"], ["demo", "--help"]])
def test_the_console_script_stops_quietly_when_its_reader_has_gone(
    args: list[str], unbuffered: str
) -> None:
    """`llm-agent-runtime --help | head -0`: no BrokenPipeError traceback, status 1."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "llm_agent_runtime.cli", *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": unbuffered},
        )
    finally:
        os.close(writer)
    assert run.stderr == ""
    # `--help` and `--version` too: argparse dropped a failed write of its own, and exited
    # with status 0 when the output, unbuffered, was written (and lost) at once.
    assert run.returncode == 1
