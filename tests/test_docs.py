"""Every command that README.md and CLAUDE.md show in a ```bash block runs and succeeds.

The commands run in order, as a user would type them, in a scratch copy of the repository (so datasets and
results land there, not in this checkout), with the checkout's .venv.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

import pytest
from conftest import ROOT, run

DOCS = ("README.md", "CLAUDE.md")
VENV = ROOT / ".venv"

# Commands the docs show that this suite does not run again, each with the reason.
RUN_ELSEWHERE = {
    "make test": "this suite is what it runs (CI runs it from a clean clone)",
    "make demo": "~15 minutes: run from a fresh clone for each change to the pipeline (its report is quoted in "
    "the closing note); test_pipeline.py and test_slurm.py run the same phases on a tiny model",
    "sbatch slurm/pipeline.sh": "needs a SLURM cluster: tests/test_slurm.py submits it to a real single-node SLURM",
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


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory):
    """The tracked files (and new ones not ignored) copied into a fresh folder."""
    copy = tmp_path_factory.mktemp("repo")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


def test_docs_show_the_setup_command():
    assert "make test" in doc_commands()


@pytest.mark.parametrize("command", [c for c in doc_commands() if c not in RUN_ELSEWHERE])
def test_documented_command_succeeds(command, scratch_repo):
    args = shlex.split(command)
    if args[0] == "python":
        args[0] = str(VENV / "bin" / "python")
    # PYTHONPATH: the copy's own lib/, not the checkout's that the venv's editable install points at
    env = {
        "VENV": str(VENV),
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(scratch_repo),
    }
    result = run(args, timeout=300, cwd=scratch_repo, env=env)
    assert result.returncode == 0, f"`{command}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
