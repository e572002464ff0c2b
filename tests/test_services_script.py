"""`scripts/services.sh check`: what `make test` needs for its servers and cannot install is
named before any build (it failed only after the whole build, at the servers' start)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"
BASICS = ["ls", "sort", "tail", "xargs", "dirname", "id"]


def _check(tmp_path: Path, commands: list[str]) -> subprocess.CompletedProcess[str]:
    """The check, run with only `commands` on its PATH: no redis-server among them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in commands:
        found = shutil.which(name)
        assert found is not None, f"{name} is not installed here"
        (bin_dir / name).symlink_to(found)
    return subprocess.run(
        ["/bin/bash", str(SCRIPT), "check"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(bin_dir)},
        check=False,
    )


def test_a_host_without_apt_or_flock_is_told_what_is_missing(tmp_path: Path) -> None:
    run = _check(tmp_path, BASICS)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "missing: flock, which keeps two runs of one checkout apart: apt-get install util-linux",
        "missing: PostgreSQL and Redis servers for the tests, from Debian's packages "
        "(postgresql, redis-server): this host has no apt-get to install them",
    ]


def test_a_debian_host_that_can_install_the_servers_passes(tmp_path: Path) -> None:
    sudo = ["sudo"] if shutil.which("sudo") else []
    run = _check(tmp_path, [*BASICS, "flock", "apt-get", *sudo])
    if os.geteuid() == 0 or sudo:
        assert (run.returncode, run.stderr) == (0, "")
    else:
        assert run.returncode == 1 and "missing: root or sudo" in run.stderr
