"""The README's Python snippets run, and show what their comments say they return."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README, re.DOTALL | re.MULTILINE)
FRAGMENT = "# In an async function"
"""The first line of a snippet that is a part of a program, not one to run as it is."""
# `expression  # literal`: the README's word for what the expression returns.
SHOWN = re.compile(r"^(?P<expr>[^#\s][^#]*?)\s+#\s+(?P<value>[(\[{'].*)$")


def test_the_readme_snippets_run_and_return_what_they_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # files a snippet creates go there
    namespace: dict[str, object] = {}
    shown = 0
    for snippet in SNIPPETS:
        if snippet.startswith(FRAGMENT):
            compile(snippet, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            continue
        exec(compile(snippet, "README.md", "exec"), namespace)  # one program, in order
        for line in snippet.splitlines():
            match = SHOWN.match(line)
            if match is None:
                continue
            try:
                expression = compile(match["expr"], "README.md", "eval")
                expected = ast.literal_eval(match["value"])
            except (ValueError, SyntaxError):
                continue  # a statement (an assignment), or a comment that is no value
            assert eval(expression, namespace) == expected, line
            shown += 1
    assert len(SNIPPETS) >= 6 and shown >= 5
