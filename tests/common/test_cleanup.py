"""lib/common/cleanup.py (scripts/cleanup_cache.py) and `make clean-cache`: only targets go, dry runs change nothing, nothing outside
the root changes, and the bytes reported are exact.

The property test builds random trees from a pool of names whose fate is written out below (SPEC), an
oracle independent of the script's own tables: target and preserved names, look-alikes (my__pycache__,
models.log, Keep.LOG), folders named like files and files named like folders, virtual environments under
any name, and symbolic links to files and folders outside the root, inside it, and to nowhere.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S, ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib.common import cleanup

# What each name in the pool is, per the rules in lib/common/cleanup.py's docstring (written out, not imported).
SPEC = {
    # folders that go whole (as a folder), or as a link when a link has the name
    "target-dir": [
        "__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        ".mypy_cache",
        ".hypothesis",
        ".ipynb_checkpoints",
        "unsloth_compiled_cache",
        "wandb",
        "tmp_trainer",
        "temp_sft_output",
        "temp__output",
        "sft_pretraining_output",
        "grpo_working_output",
    ],
    # files that go (as a file), or as a link when a link has the name
    "target-file": ["a.log", "b.tmp", "c.temp", "m.pyc", "n.pyo", "models.log", "x.py.log"],
    # folders never entered
    "preserved-dir": ["models", "datasets", "results", "figures", "slurm_logs", ".git", ".venv"],
    # everything else stays unless it sits in a target folder
    "neutral": [
        "src",
        "logs",
        "x.py",
        "README.md",
        "c.yaml",
        "d.json",
        "e.toml",
        "run.sh",
        "notes.txt",
        "Keep.LOG",
        "wandb_notes",
        "my__pycache__",
        "temp_output",
        "pyvenv.cfg",
    ],
}
CLASS = {name: kind for kind, names in SPEC.items() for name in names}
LINK_TARGETS = ("outside-file", "outside-dir", "outside-parent", "inside", "nowhere")

LINE = re.compile(r"^(would remove|removed) +(dir|file|link) +([\d,]+) bytes  (.*?)/?(?: \(\d+ files\))?$")
SUMMARY = re.compile(r"^(?:would free|freed) ([\d,]+) bytes")

# ---------------------------------------------------------------- building trees

leaf = st.one_of(
    st.tuples(st.just("file"), st.integers(0, 300)),
    st.tuples(st.just("link"), st.sampled_from(LINK_TARGETS)),
)
names = st.sampled_from(sorted(CLASS))
trees = st.dictionaries(
    names,
    st.recursive(
        leaf,
        lambda children: st.tuples(st.just("dir"), st.dictionaries(names, children, max_size=4)),
        max_leaves=12,
    ),
    max_size=7,
)


def make_outside(base: Path) -> Path:
    """Things next to the root (not in it) with target-like names, for links to point at."""
    outside = base / "outside"
    (outside / "__pycache__").mkdir(parents=True)
    (outside / "__pycache__" / "o.pyc").write_bytes(b"o" * 7)
    (outside / "file.log").write_bytes(b"l" * 11)
    (outside / "models").mkdir()
    (outside / "models" / "w.bin").write_bytes(b"w" * 13)
    return outside


def link_target(kind: str, root: Path, outside: Path) -> str:
    return {
        "outside-file": str(outside / "file.log"),
        "outside-dir": str(outside / "__pycache__"),
        "outside-parent": "../" * 8 + str(outside).lstrip("/"),  # relative, climbing out of the root
        "inside": str(root / "pyproject.toml"),
        "nowhere": "does/not/exist",
    }[kind]


def build(directory: Path, tree: dict, root: Path, outside: Path) -> None:
    for name, node in tree.items():
        path = directory / name
        if node[0] == "file":
            path.write_bytes(b"x" * node[1])
        elif node[0] == "link":
            path.symlink_to(link_target(node[1], root, outside))
        else:
            path.mkdir()
            build(path, node[1], root, outside)


def node_bytes(node, root: Path, outside: Path) -> int:
    if node[0] == "file":
        return node[1]
    if node[0] == "link":
        return len(os.fsencode(link_target(node[1], root, outside)))
    return sum(node_bytes(child, root, outside) for child in node[1].values())


def expected_removals(tree: dict, root: Path, outside: Path, prefix: str = "") -> dict[str, int]:
    """The oracle: relative path -> bytes of each item the cleanup must remove, from SPEC alone."""
    found: dict[str, int] = {}
    for name, node in tree.items():
        rel, kind = prefix + name, CLASS[name]
        if node[0] == "link":
            if kind in ("target-dir", "target-file"):
                found[rel] = node_bytes(node, root, outside)
        elif node[0] == "file":
            if kind == "target-file":
                found[rel] = node[1]
        else:
            children = node[1]
            virtualenv = children.get("pyvenv.cfg", ("dir",))[0] != "dir"
            if kind == "preserved-dir" or virtualenv:
                continue
            if kind == "target-dir":
                found[rel] = node_bytes(node, root, outside)
            else:
                found.update(expected_removals(children, root, outside, rel + "/"))
    return found


def snapshot(top: Path) -> dict[str, tuple]:
    """Every entry under `top`, links not followed: what it is, its size, where a link points."""
    seen: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(top):  # os.walk does not follow links by default
        for name in dirs + files:
            path = Path(directory) / name
            rel = path.relative_to(top).as_posix()
            if path.is_symlink():
                seen[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[rel] = ("dir",)
            else:
                seen[rel] = ("file", path.stat().st_size)
    return seen


def run_main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cleanup.clean_cache(list(args))
    return code, out.getvalue(), err.getvalue()


def listed(output: str) -> dict[str, int]:
    items = {}
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            items[match.group(4)] = int(match.group(3).replace(",", ""))
    return items


def reported_bytes(output: str) -> int:
    return int(
        next(SUMMARY.match(x) for x in output.splitlines() if SUMMARY.match(x)).group(1).replace(",", "")
    )


# ---------------------------------------------------------------- the property


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees)
def test_only_targets_go_dry_runs_change_nothing_and_outside_is_untouched(tree):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root, outside = base / "repo", make_outside(base)
        root.mkdir()
        (root / "pyproject.toml").write_text("[project]\n")
        build(root, tree, root, outside)
        expected = expected_removals(tree, root, outside)
        before, outside_before = snapshot(root), snapshot(outside)

        code, out, err = run_main("--root", str(root), "--dry-run")
        assert code == 0, err
        assert listed(out) == expected
        assert reported_bytes(out) == sum(expected.values())
        assert snapshot(root) == before and snapshot(outside) == outside_before

        code, out, err = run_main("--root", str(root))
        assert code == 0, err
        assert listed(out) == expected
        assert reported_bytes(out) == sum(expected.values())
        gone = {rel for rel in before if any(rel == r or rel.startswith(r + "/") for r in expected)}
        assert snapshot(root) == {rel: v for rel, v in before.items() if rel not in gone}
        assert snapshot(outside) == outside_before

        code, out, _ = run_main("--root", str(root))  # a second run finds nothing
        assert code == 0 and listed(out) == {} and reported_bytes(out) == 0


# ---------------------------------------------------------------- examples


def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\n")
    return root


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"z" * size)
    return path


def test_precedence_preserved_folders_are_never_entered_targets_go_whole(tmp_path):
    root = repo(tmp_path)
    write(root / "models/x/__pycache__/m.cpython-311.pyc", 10)  # a target under a preserved folder: kept
    write(root / "models/run.log", 10)
    write(root / "wandb/models/adapter.bin", 100)  # a preserved name under a target: goes with it
    write(root / "wandb/run-1/files/config.yaml", 20)
    write(root / "lib/__pycache__/a.pyc", 5)
    write(root / "logs/train.log", 7)
    write(root / "logs/keep.txt", 3)
    write(root / "venv2/pyvenv.cfg", 1)  # a virtual environment under another name
    write(root / "venv2/lib/__pycache__/b.pyc", 9)
    write(root / "src/x.py", 4)
    (root / "folder.log").mkdir()  # a folder named like a log file is not a log
    code, out, _ = run_main("--root", str(root), "--verbose")
    assert code == 0
    assert listed(out) == {"wandb": 120, "lib/__pycache__": 5, "logs/train.log": 7}
    assert "kept          models/  (preserved: never entered)" in out and "venv2/" in out
    for kept in ("models/x/__pycache__/m.cpython-311.pyc", "models/run.log", "logs/keep.txt", "src/x.py"):
        assert (root / kept).is_file()
    assert (root / "venv2/lib/__pycache__/b.pyc").is_file() and (root / "folder.log").is_dir()
    assert "wandb/ (2 files)" in out


def test_a_link_named_like_a_target_goes_as_a_link_and_its_target_stays(tmp_path):
    root = repo(tmp_path)
    outside = make_outside(tmp_path)
    (root / "__pycache__").symlink_to(outside / "__pycache__")
    (root / "old.log").symlink_to(outside / "file.log")
    (root / "src").mkdir()
    (root / "src" / "data").symlink_to(outside)  # a plain link: left alone, never entered
    before = snapshot(outside)
    code, out, _ = run_main("--root", str(root))
    assert code == 0
    assert set(listed(out)) == {"__pycache__", "old.log"}
    assert not (root / "__pycache__").exists() and not (root / "__pycache__").is_symlink()
    assert (root / "src" / "data").is_symlink() and snapshot(outside) == before


def test_bytes_are_exact_and_hard_links_count_once(tmp_path):
    root = repo(tmp_path)
    write(root / "tmp_trainer/a.bin", 1000)
    os.link(root / "tmp_trainer/a.bin", root / "tmp_trainer/b.bin")  # the same 1000 bytes twice
    write(root / "wandb/x/y/z.txt", 234)
    write(root / "t.tmp", 66)
    os.link(root / "t.tmp", root / "u.temp")
    (root / "empty_cache").mkdir()
    (root / "empty_cache" / "__pycache__").mkdir()
    code, out, _ = run_main("--root", str(root), "--dry-run")
    assert code == 0
    assert listed(out) == {
        "tmp_trainer": 1000,
        "wandb": 234,
        "t.tmp": 66,
        "u.temp": 0,
        "empty_cache/__pycache__": 0,
    }
    assert reported_bytes(out) == 1300 and "would free 1,300 bytes (1.3 KB) in 5 item(s)" in out


def test_a_folder_swapped_for_a_link_after_the_scan_is_refused_and_reported(tmp_path, capsys):
    root = repo(tmp_path)
    outside = make_outside(tmp_path)
    write(root / "wandb/run.bin", 5)
    write(root / "a.log", 3)
    plan = cleanup.plan_cleanup(root)
    shutil.rmtree(root / "wandb")
    (root / "wandb").symlink_to(outside / "models")  # what a race (or an attacker) could do
    before = snapshot(outside)
    outcome = cleanup.clean(plan)
    assert outcome.failures == [("wandb", "it changed since the scan (no longer a folder)")]
    assert outcome.done == 1 and outcome.freed == 3
    assert snapshot(outside) == before and (root / "wandb").is_symlink()
    assert "removed       file               3 bytes  a.log" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() == 0, reason="root may delete from a read-only folder")
def test_what_cannot_be_removed_is_reported_with_the_reason_and_exits_1(tmp_path):
    root = repo(tmp_path)
    write(root / "locked/a.log", 3)
    write(root / "b.log", 4)
    (root / "locked").chmod(0o500)
    try:
        code, out, err = run_main("--root", str(root))
    finally:
        (root / "locked").chmod(0o700)
    assert code == 1
    assert "error: could not remove locked/a.log: Permission denied" in err
    assert "freed 4 bytes" in out and "1 could not be removed" in out


def test_a_name_with_a_newline_is_listed_quoted_on_one_line(tmp_path):
    root = repo(tmp_path)
    write(root / "a\nb.log", 2)  # printed raw, it would read as two items "a" and "b.log"
    write(root / "c.log", 3)
    code, out, _ = run_main("--dry-run", "--root", str(root))
    assert code == 0
    lines = [x for x in out.splitlines() if x.startswith("would remove")]
    assert len(lines) == 2
    assert lines[0].endswith('"a\\nb.log"') and lines[1].endswith("c.log")


def _as_nobody(tree: Path, *args: str) -> subprocess.CompletedProcess:
    """cleanup_cache.py run by an unprivileged user (uid 65534), from root through setpriv. That user may not
    be able to enter this checkout (a home folder of mode 0700) nor the .venv in it, so what it runs is
    copied into tree (the script and the stdlib-only modules it imports) and run by the base interpreter."""
    code = tree / "code"
    for name in ("scripts/cleanup_cache.py", "lib/__init__.py", "lib/common/__init__.py",
                 "lib/common/cleanup.py", "lib/common/errors.py"):  # fmt: skip
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, code / name)
    for path in [code, *code.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    python = os.path.realpath(sys.executable)  # the venv's python is a link into the checkout's .venv
    command = [python, "-B", str(code / "scripts" / "cleanup_cache.py"), *args]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *command]
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.run(command, capture_output=True, text=True, cwd=tree, timeout=HANG_GUARD_S, env=env)


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="needs setpriv to drop root")
def test_the_dry_run_does_not_list_what_the_real_run_cannot_remove():
    tree = Path(tempfile.mkdtemp(prefix="cleanup-ro-"))  # /tmp: reachable by the unprivileged user
    try:
        root = repo(tree)
        write(root / "locked/a.log", 3)
        write(root / "locked/__pycache__/m.pyc", 5)
        write(root / "open/b.log", 4)
        for path in [tree, *tree.rglob("*")]:
            if os.geteuid() == 0:
                os.chown(path, 65534, 65534, follow_symlinks=False)
            path.chmod(0o755 if path.is_dir() else 0o644)
        (root / "locked").chmod(0o555)  # its entries cannot be removed by their owner
        dry = _as_nobody(tree, "--dry-run", "--root", str(root))
        real = _as_nobody(tree, "--root", str(root))
        for result in (dry, real):
            assert result.returncode == 1, result.stdout + result.stderr
            assert "could not remove locked/a.log: its folder locked/ is not writable" in result.stderr
            assert "could not remove locked/__pycache__/" in result.stderr
        assert listed(dry.stdout) == {"open/b.log": 4}  # exactly what the real run removed
        assert "removed       file               4 bytes  open/b.log" in real.stdout
        assert (root / "locked/a.log").exists() and not (root / "open/b.log").exists()
    finally:
        (tree / "repo" / "locked").chmod(0o755)
        shutil.rmtree(tree)


def test_a_root_that_is_not_a_repository_is_a_usage_error(tmp_path):
    from lib.common.errors import EXIT_USAGE, run_cli

    write(tmp_path / "x.log", 1)
    assert run_cli(cleanup.clean_cache, ["--root", str(tmp_path)]) == EXIT_USAGE
    assert run_cli(cleanup.clean_cache, ["--root", str(tmp_path / "missing")]) == EXIT_USAGE
    assert (tmp_path / "x.log").is_file()


@pytest.fixture
def bind_mount():
    """mount --bind SOURCE TARGET for a test (unmounted at its end, before its folder is removed); skipped
    where mounting is not permitted (not root, or a container without the capability)."""
    mounted: list[Path] = []

    def bind(source: Path, target: Path) -> None:
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            write(target, 0)  # a file is mounted onto a file
        result = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot make a bind mount here: {result.stderr.strip() or result.returncode}")
        mounted.append(target)

    yield bind
    for target in reversed(mounted):
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=True)


@pytest.mark.parametrize(
    "mount, source, refused",
    [
        ("wandb", "outside", "wandb/: it is a mount point"),  # a target that is a mount point (issue 21)
        ("wandb/run-1", "outside", "wandb/: wandb/run-1 below it is a mount point"),  # a mount below a target
        ("run.log", "outside/keep.log", "run.log: it is a mount point"),  # a target file mounted from outside
        ("src/data", "outside", None),  # a mount in a plain folder: never entered, nothing in it listed
    ],
)
def test_a_mount_is_never_removed_nor_entered_and_the_dry_run_lists_exactly_what_goes(
    tmp_path, bind_mount, mount, source, refused
):
    """Bind mounts of the same file system: the same st_dev, and os.path.ismount misses them."""
    root = repo(tmp_path)
    outside = tmp_path / "outside"
    write(outside / "keep.log", 11)  # a target name, on the other side of the mount
    write(outside / "__pycache__" / "o.pyc", 7)
    write(root / "wandb/run-1/files/x.bin", 3)
    write(root / "a.log", 5)
    bind_mount(tmp_path / source, root / mount)
    before = snapshot(outside)
    dry_code, dry, dry_err = run_main("--dry-run", "--root", str(root))
    code, out, err = run_main("--root", str(root))
    assert snapshot(outside) == before  # nothing across the mount changed
    goes = {"a.log": 5} if mount.startswith("wandb") else {"a.log": 5, "wandb": 3}
    assert listed(dry) == goes and listed(out) == goes  # the dry run lists exactly what the real run removed
    if refused:
        assert dry_code == code == 1
        for stderr in (dry_err, err):
            assert f"error: could not remove {refused}" in stderr
    else:
        assert dry_code == code == 0 and (root / mount / "keep.log").is_file()


def test_a_folder_mounted_after_the_scan_is_refused_at_removal(tmp_path, bind_mount, capsys):
    root = repo(tmp_path)
    write(tmp_path / "outside" / "keep.bin", 9)
    write(root / "wandb/run.bin", 5)
    plan = cleanup.plan_cleanup(root)
    bind_mount(tmp_path / "outside", root / "wandb")  # between the scan and the removal
    outcome = cleanup.clean(plan)
    assert outcome.failures == [
        ("wandb", "it is a mount point: never removed nor entered (unmount it first)")
    ]
    assert (tmp_path / "outside" / "keep.bin").read_bytes() == b"z" * 9 and outcome.freed == 0
    capsys.readouterr()


# ---------------------------------------------------------------- make clean-cache, as typed


def checkout_copy(folder: Path) -> Path:
    """The repository's files (tracked and new, not ignored) copied into folder: a fresh clone, no .venv."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    for name in listed:
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    return folder


def make(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`make ARGS` typed in root, in a user's environment: nothing set for the test (no PYTHON, no
    PYTHONPATH: the Makefile must find lib/ by itself)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHON", "VIRTUAL_ENV", "MAKEFLAGS")
    }
    return subprocess.run(["make", *args], cwd=root, capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env=env)  # fmt: skip


def test_make_clean_cache_dry_lists_and_removes_nothing_then_removes_exactly_that(tmp_path):
    """In a fresh clone, before `make install` (no .venv): the system python3 runs it."""
    root = checkout_copy(tmp_path / "clone")
    assert not (root / ".venv").exists()
    write(root / "lib/__pycache__/a.cpython-311.pyc", 30)
    write(root / ".pytest_cache/v/cache/nodeids", 12)
    write(root / "temp_grpo_output/checkpoint-1/model.safetensors", 400)
    write(root / "wandb/latest-run/files/config.yaml", 9)
    write(root / "notebooks/.ipynb_checkpoints/a-checkpoint.ipynb", 8)
    write(root / "logs/job.log", 5)
    write(root / "models/universal/sft/latest", 4)
    write(root / "datasets/di/train.jsonl", 50)
    write(root / "results/pipeline_1/report.md", 6)
    write(root / "figures/a.png", 6)
    before = snapshot(root)

    dry = make(root, "clean-cache", "DRY=1")
    assert dry.returncode == 0, dry.stderr
    would = listed(dry.stdout)
    assert set(would) == {
        "lib/__pycache__",
        ".pytest_cache",
        "temp_grpo_output",
        "wandb",
        "notebooks/.ipynb_checkpoints",
        "logs/job.log",
    }
    assert "would free 464 bytes" in dry.stdout and snapshot(root) == before  # not even bytecode written

    real = make(root, "clean-cache")
    assert real.returncode == 0, real.stderr
    assert listed(real.stdout) == would and "freed 464 bytes" in real.stdout
    gone = {rel for rel in before if any(rel == r or rel.startswith(r + "/") for r in would)}
    assert snapshot(root) == {rel: v for rel, v in before.items() if rel not in gone}
    assert listed(make(root, "clean-cache", "DRY=1").stdout) == {}


def test_make_help_lists_clean_cache():
    result = make(ROOT, "help")
    assert re.search(r"make clean-cache +remove caches", result.stdout)
