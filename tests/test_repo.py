"""The repository as a user meets it: make targets, the self-installing environment, CI."""

from __future__ import annotations

import re

from helpers import ROOT, load_script, run


def make_targets() -> list[str]:
    return re.findall(r"^([a-z][a-z-]*):.*## ", (ROOT / "Makefile").read_text(), flags=re.M)


def test_make_help_is_the_default_and_lists_every_target():
    result = run(["make"])
    assert result.returncode == 0
    listed = re.findall(r"^\s+make (\S+)\s+\S", result.stdout, flags=re.M)
    assert listed == make_targets()
    for required in ("help", "install", "test", "lint", "validate"):
        assert required in listed


def test_second_install_reinstalls_nothing():
    # `make test` ran the install just before this suite, so the stamp must match now.
    result = run(["python3", "scripts/setup_env.py"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("environment up to date")
    assert "installing" not in result.stdout


def test_install_stamp_changes_when_requirements_change(monkeypatch, tmp_path):
    setup_env = load_script("setup_env")
    before = setup_env.install_stamp(setup_env.BASE_FILES)
    for name in (*setup_env.BASE_FILES, "pyproject.toml"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    monkeypatch.setattr(setup_env, "ROOT", tmp_path)
    assert setup_env.install_stamp(setup_env.BASE_FILES) == before
    (tmp_path / "requirements.txt").write_text((ROOT / "requirements.txt").read_text() + "rich==15.0.0\n")
    assert setup_env.install_stamp(setup_env.BASE_FILES) != before


def test_cuda_extra_refuses_a_machine_without_nvidia(tmp_path):
    import shutil

    if shutil.which("nvidia-smi"):
        return  # a GPU machine may install it; the refusal is for everyone else
    result = run(["python3", "scripts/setup_env.py", "--cuda", "--venv", str(tmp_path / "v")])
    assert result.returncode == 2
    assert "nvidia-smi not found" in result.stderr
    assert not (tmp_path / "v").exists()  # nothing was created


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in (ROOT / "README.md").read_text()


def test_pins_are_exact():
    for name in ("requirements.txt", "requirements-cuda.txt", "requirements-model.txt", "constraints.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][\w.+]*", line), f"{name}: unpinned '{line}'"
