"""Every command that README.md and CLAUDE.md show in a ```bash block runs and succeeds."""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import ROOT, run

DOCS = ("README.md", "CLAUDE.md")

# Commands the docs show that this suite does not run again, each with the reason.
RUN_ELSEWHERE = {
    "make test": "this suite is what it runs (CI runs it from a clean clone)",
}


def doc_commands() -> list[str]:
    commands = []
    for name in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", (ROOT / name).read_text(), flags=re.S):
            for line in block.splitlines():
                command = line.split("#", 1)[0].strip()
                if command and command not in commands:
                    commands.append(command)
    return commands


def test_docs_show_commands():
    assert "make test" in doc_commands()


@pytest.mark.parametrize("command", [c for c in doc_commands() if c not in RUN_ELSEWHERE])
def test_documented_command_succeeds(command):
    args = shlex.split(command)
    if args[0] == "python":
        args[0] = str(ROOT / ".venv" / "bin" / "python")
    result = run(args, timeout=300)
    assert result.returncode == 0, f"`{command}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
