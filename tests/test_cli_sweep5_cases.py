"""Faults of `llm-agent-runtime demo` a user meets through the environment and the keyboard."""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from llm_agent_runtime import demo

CLI = [sys.executable, "-m", "llm_agent_runtime"]


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `args` with no settings but `env` (and PATH)."""
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", **env},
    )


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1/\udcff"}, "OpenAI"),
        (
            {"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/\udcff"},
            "Anthropic",
        ),
    ],
)
def test_a_model_variable_holding_bytes_that_are_not_text_fails_in_one_line(
    settings: dict[str, str], name: str, tmp_path: Path
) -> None:
    # "\udcff" is how Python reads the byte 0xff of a variable; the child gets the byte.
    db = tmp_path / "demo.db"
    failed = run([*CLI, "demo"], {demo.DB_ENV: str(db), **settings})
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert failed.stderr.startswith(f"error: the {name} base URL holds a character that is not")
    assert failed.stderr.count("\n") == 1
    assert not db.exists()  # refused before the database was touched


@pytest.mark.parametrize("home", ["relative-home", " "])
def test_a_relative_home_keeps_the_database_out_of_the_working_directory(
    home: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    temp = tmp_path / "tmp"
    work.mkdir()
    temp.mkdir()
    answered = run([*CLI, "demo"], {"HOME": home, "TMPDIR": str(temp)}, cwd=work)
    assert answered.returncode == 0, answered.stderr
    saved = temp / f"llm-agent-runtime-{os.getuid()}" / "demo.db"
    assert f" saved in SQLite at {saved} under key " in answered.stdout
    assert saved.is_file()
    assert list(work.iterdir()) == []
    # Its own, in a directory every user may write in: no other user reads or blocks it.
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700


def test_the_default_database_ignores_a_blank_home(tmp_path: Path) -> None:
    # Computed, not run: a blank HOME reads as "/", the filesystem's root.
    code = "from llm_agent_runtime.demo import default_db_path; print(default_db_path())"
    shown = run([sys.executable, "-c", code], {"HOME": "", "TMPDIR": str(tmp_path)})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"{tmp_path / f'llm-agent-runtime-{os.getuid()}' / 'demo.db'}\n"


def test_ctrl_c_while_the_demo_loads_exits_130_without_a_traceback(tmp_path: Path) -> None:
    # A real SIGINT, sent as the demo's module starts to load: Ctrl-C pressed just after
    # the command was typed.
    code = (
        "import os, signal, sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'llm_agent_runtime.demo':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from llm_agent_runtime.cli import main\n"
        "sys.exit(main(['demo']))\n"
    )
    db = tmp_path / "demo.db"
    interrupted = run([sys.executable, "-c", code], {demo.DB_ENV: str(db)})
    assert interrupted.returncode == 130
    assert interrupted.stderr == "error: interrupted\n"
    assert interrupted.stdout == ""
    assert not db.exists()


def test_a_database_path_ending_in_slash_dot_is_refused_as_a_directory(tmp_path: Path) -> None:
    # `Path` drops the `/.`, as it drops a trailing `/`: the demo made a file `new.db`.
    given = f"{tmp_path / 'new.db'}/."
    refused = run([*CLI, "demo"], {demo.DB_ENV: given})
    assert refused.returncode == 1
    assert f"error: {demo.DB_ENV}={given!r} is a directory: give the path of the SQLite file" in (
        refused.stderr
    )
    assert list(tmp_path.iterdir()) == []  # no file `new.db` where a directory was meant


def test_a_database_path_ending_in_slash_dot_dot_is_refused_as_a_directory(
    tmp_path: Path,
) -> None:
    # `x.db/..` names the directory holding `x.db`: SQLite said only "unable to open", and
    # the directory `x.db` was made on the way.
    given = f"{tmp_path / 'x.db'}/.."
    refused = run([*CLI, "demo"], {demo.DB_ENV: given})
    assert refused.returncode == 1
    assert f"error: {demo.DB_ENV}={given!r} is a directory: give the path of the SQLite file" in (
        refused.stderr
    )
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_fallback_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    # Its name is known to every user: one made by someone else (a symlink included) would
    # hold, or point, the demo's database where they choose.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / f"llm-agent-runtime-{os.getuid()}").symlink_to(elsewhere)
    code = "from llm_agent_runtime.demo import default_db_path; print(default_db_path())"
    shown = run([sys.executable, "-c", code], {"HOME": "", "TMPDIR": str(tmp_path)})
    assert shown.returncode != 0
    assert "is not a private directory of this user" in shown.stderr


async def test_main_inside_a_running_event_loop_says_to_await_run() -> None:
    # A notebook's cell: asyncio.run refused, with "coroutine was never awaited" warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would fail the test
        with pytest.raises(RuntimeError, match=r"await llm_agent_runtime\.demo\.run\(\)"):
            demo.main()
        gc.collect()  # a coroutine made and dropped warns as it is collected
