"""The docs are true and findable: every command that README.md, CLAUDE.md and docs/*.md show in a ```bash
block runs and succeeds; README.md stays a short front door; every docs page is linked; docstrings cite
sections of docs/ARCHITECTURE.md that exist; nothing cites a file outside the repository.

The commands run in order (README.md, CLAUDE.md, then docs/*.md by name; within a page top to bottom; a
command already run is not run again), as a user would type them, in a scratch copy of the repository (so
datasets and results land there, not in this checkout), with the checkout's .venv. Each page lists its
prerequisites before the commands that need them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT, run

VENV = ROOT / ".venv"
README_MAX_LINES = 150
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

# Commands the docs show that this suite does not run again, each with the reason. Only long-running or
# cluster commands belong here; anything else is run, or shown in a ```text block.
RUN_ELSEWHERE = {
    "make test": "this suite is what it runs (CI runs it from a clean clone)",
    "make test-slow": "the slow half of this suite (CI runs it after make test)",
    "make demo": "a pipeline of minutes (configs/scratch/demo_cpu.yaml): run from a fresh clone for each change to the pipeline (its report is quoted in "
    "docs/TRAINING_APPROACHES.md); test_pipeline.py and test_slurm.py run the same phases on a tiny model, test_corrected.py the RFT stage",
    "make demo-smollm2": "a pipeline of minutes (configs/smollm2/demo_cpu.yaml gives its time): run for each change to the SmolLM2 path (its report is quoted in "
    "docs/TRAINING_APPROACHES.md); tests/llm/test_training.py trains the embedded model",
    "sbatch slurm/pipeline.sh": "needs a SLURM cluster: tests/llm/test_slurm.py submits it to a real single-node SLURM",
}


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CLAUDE.md", *sorted((ROOT / "docs").glob("*.md"))]


def bash_commands(page: Path) -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


def doc_commands() -> list[str]:
    commands: list[str] = []
    for page in doc_pages():
        commands += [c for c in bash_commands(page) if c not in commands]
    return commands


def repo_files() -> list[Path]:
    """The tracked files and the new ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory):
    """The repository's files copied into a fresh folder."""
    # The copy shares the checkout's .venv: bring it up to date for the checkout first, so that the
    # copy's `make` targets find it installed and do not reinstall it (or re-point its editable install).
    subprocess.run(["python3", "scripts/setup_env.py", "--venv", str(VENV)], cwd=ROOT, check=True)
    copy = tmp_path_factory.mktemp("repo")
    for path in repo_files():
        name = path.relative_to(ROOT)
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy / name)
    return copy


def test_docs_show_the_setup_commands():
    readme = bash_commands(ROOT / "README.md")
    assert "make install" in readme and "make test" in readme


def test_commands_run_elsewhere_are_still_in_the_docs():
    assert set(RUN_ELSEWHERE) <= set(doc_commands())


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


def _link_targets(page: Path) -> set[Path]:
    """The local files a page's markdown links point to."""
    targets = set()
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        target = target.split("#", 1)[0]
        if target and "://" not in target:
            targets.add((page.parent / target).resolve())
    return targets


def test_every_docs_page_is_linked_and_every_link_resolves():
    linked = _link_targets(ROOT / "README.md") | _link_targets(ARCHITECTURE)
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page != ARCHITECTURE:
            assert page.resolve() in linked, (
                f"{page.name} is linked from neither README.md nor ARCHITECTURE.md"
            )
    for page in doc_pages():
        for target in _link_targets(page):
            assert target.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def test_cited_architecture_sections_exist():
    headings = set(re.findall(r"^##+ (.+?)\s*$", ARCHITECTURE.read_text(), flags=re.M))
    for path in repo_files():
        if path.suffix in (".py", ".md", ".sh", ".yaml", ".json"):
            for section in re.findall(r'ARCHITECTURE\.md, "([^"<]+)"', path.read_text(errors="replace")):
                assert section in headings, f'{path.relative_to(ROOT)} cites "{section}", not a heading'


def test_nothing_cites_files_outside_the_repository():
    # spelled in two parts so that this file does not match itself
    forbidden = ("DESIGN" + ".md", ".." + "/shared")
    for path in repo_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for word in forbidden:
            assert word not in text, f"{path.relative_to(ROOT)} cites {word}, which is not in the repository"


# Commands that load or train a model, or solve thousands of problems, take from 10 s to a minute each here
# (pytest --durations): they run with `make test-slow`.
SLOW_COMMANDS = re.compile(
    r"^make (train|train-mps|eval|data)\b"
    r"|scripts/(main_trainer|main_eval|verify_grpo_format|train_single_system)\.py(?!.*--list-datasets)"
)
RUNNABLE = [c for c in doc_commands() if c not in RUN_ELSEWHERE]


def run_documented(command: str, scratch_repo: Path) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    if args[0] == "python":
        args[0] = str(VENV / "bin" / "python")
    # PYTHONPATH: the copy's own lib/, not the checkout's that the venv's editable install points at
    env = {
        "VENV": str(VENV),
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(scratch_repo),
    }
    return run(args, cwd=scratch_repo, env=env)  # helpers.HANG_GUARD_S: a busy machine is slow, not broken


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.slow) if SLOW_COMMANDS.search(c) else c for c in RUNNABLE],
)
def test_documented_command_succeeds(command, scratch_repo):
    """Each command runs after the fast ones the docs show before it (its prerequisites, such as making a
    dataset): those not run yet in this session (as under `make test-slow`, which selects only the slow
    ones) run first, in order; the slow ones run in their own order, after the fast ones before them."""
    done = scratch_repo / ".docs_commands_done"
    ran = set(done.read_text().splitlines()) if done.exists() else set()
    for earlier in RUNNABLE[: RUNNABLE.index(command)]:
        if earlier not in ran and not SLOW_COMMANDS.search(earlier):
            result = run_documented(earlier, scratch_repo)
            assert result.returncode == 0, f"prerequisite `{earlier}` failed:\n{result.stderr[-2000:]}"
            ran.add(earlier)
    result = run_documented(command, scratch_repo)
    assert result.returncode == 0, f"`{command}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    done.write_text("\n".join([*ran, command]) + "\n")
