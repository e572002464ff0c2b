"""The packaging metadata in pyproject.toml: the license and its file, the extras."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "llm_agent_runtime"


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        table: dict[str, Any] = tomllib.load(file)["project"]
    return table


def test_the_license_file_is_declared_and_exists(project: dict[str, Any]) -> None:
    # The metadata said MIT, but no license text shipped in the wheel or the sdist.
    assert project["license"] == "MIT"  # an SPDX expression (PEP 639)
    patterns = project["license-files"]
    assert patterns
    for pattern in patterns:
        found = sorted(ROOT.glob(pattern))
        assert found, f"license-files pattern {pattern!r} matches no file"
        for path in found:
            text = path.read_text(encoding="utf-8")
            assert text.startswith("MIT License")
            assert "Permission is hereby granted, free of charge" in text


def test_every_extra_an_error_message_names_exists(project: dict[str, Any]) -> None:
    extras = project["optional-dependencies"]
    named = {
        name
        for path in PACKAGE.rglob("*.py")
        for name in re.findall(r"llm-agent-runtime\[([\w-]+)\]", path.read_text(encoding="utf-8"))
    }
    assert {"embeddings", "networkx", "postgres", "redis"} <= named
    assert named <= set(extras), f"extras named but not declared: {named - set(extras)}"
    assert any(spec.startswith("networkx") for spec in extras["networkx"])
