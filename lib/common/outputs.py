"""Files a tool owns in a folder it shares with the user (docs/ARCHITECTURE.md, "Files on disk").

An evaluation writes into a folder the user names (`--output-dir`, default figures/), where other files may
lie. The tool records what it wrote, with each file's sha256, in a manifest beside them; a later run
replaces or removes only files listed there whose content is unchanged, and refuses up front a file of a name
it would write that it did not write. One rule, one place: every writer into a shared folder uses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from lib.common.atomic import check_writable_folder, write_json_atomic
from lib.common.errors import UsageError

log = logging.getLogger(__name__)

MANIFEST = ".main_eval_manifest.json"
MANIFEST_TOOL = "scripts/main_eval.py"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain_name(name: object) -> bool:
    return (
        isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
    )


def owned_files(folder: Path) -> dict[str, set[str]]:
    """{file name: sha256 values} of the files main_eval wrote into folder, from its manifest (MANIFEST, with
    tool = MANIFEST_TOOL); {} when there is none or it is not ours. Only these files are ever removed or
    replaced, and only while their content is still what main_eval wrote (docs/evaluation.md, "Outputs")."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict) or manifest.get("tool") != MANIFEST_TOOL:
        return {}
    files = manifest.get("files")
    if not isinstance(files, dict):
        return {}
    owned = {}
    for name, hashes in files.items():
        hashes = [hashes] if isinstance(hashes, str) else hashes
        if _plain_name(name) and isinstance(hashes, list):
            owned[name] = {h for h in hashes if isinstance(h, str)}
    return owned


def _legacy_names(folder: Path) -> set[str]:
    """The files a metrics.json written by main_eval before the manifest existed lists (its context.command
    says so): these may be replaced by files of the same name, never removed (nothing proves their content)."""
    try:
        document = json.loads((Path(folder) / "metrics.json").read_text())
        command = document["context"]["command"]
        files = document["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    if not (isinstance(command, str) and command.startswith("python scripts/main_eval.py")):
        return set()
    return {name for name in files if _plain_name(name)} if isinstance(files, list) else set()


def _is_ours(folder: Path, name: str, owned: Mapping[str, set[str]]) -> bool:
    path = Path(folder) / name
    return name in owned and path.is_file() and sha256_of(path) in owned[name]


def _not_ours(folder: Path, names, owned: Mapping[str, set[str]]) -> list[str]:
    no_manifest = not owned and not (Path(folder) / MANIFEST).exists()
    legacy = (
        _legacy_names(folder) if no_manifest else set()
    )  # main_eval's metrics.json of before the manifest
    return [
        name
        for name in names
        if (Path(folder) / name).exists() and not _is_ours(folder, name, owned) and name not in legacy
    ]


def _refuse_foreign(folder: Path, foreign: Sequence[str], when: str) -> UsageError:
    listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return UsageError(
        f"--output-dir {folder} already holds {listed}, not written by main_eval.py (no {MANIFEST} entry "
        f"with this content){when}; main_eval replaces only files it wrote itself.",
        fix="pass another --output-dir (eval.output_dir), e.g. results/eval, or move those files away.",
    )


def check_output_folder(folder: Path, planned: Sequence[str], save_plots: bool) -> None:
    """Refuse, before any model is loaded, an --output-dir that cannot take the evaluation: a file, a path
    below a file, a folder this process cannot write, or one holding files of the names it writes that
    another tool (or a person) wrote. Creates nothing."""
    folder = Path(folder)
    fix = "pass a folder you can write to as --output-dir (eval.output_dir), e.g. results/eval; it is created if missing."
    check_writable_folder(folder, "--output-dir", fix)
    if not folder.is_dir():
        return
    owned = owned_files(folder)
    curves = [p.name for p in folder.glob("training_curves_*.png")] if save_plots else []
    foreign = _not_ours(folder, [*planned, *sorted(curves)], owned)
    if foreign:
        raise _refuse_foreign(folder, foreign, "")


def _write_manifest(folder: Path, files: Mapping[str, set[str] | list[str]]) -> None:
    write_json_atomic(
        Path(folder) / MANIFEST,
        {
            "tool": MANIFEST_TOOL,
            "about": "files main_eval.py wrote here and their sha256; it replaces or removes only these, and only "
            "while their content is unchanged",
            "files": {name: sorted(hashes) for name, hashes in sorted(files.items())},
        },
    )


def replace_outputs(folder: Path, staged: Path, files: Sequence[str]) -> list[str]:
    """Move the staged files into folder and remove the files of main_eval's previous evaluation there that
    this one does not write again; returns the names removed. Only files of main_eval's manifest whose content
    is still what it wrote are replaced or removed: a file of the same name from anyone else stops the move
    before anything is touched. The manifest lists old and new hashes while files move, so an interruption
    leaves every file either recognised or untouched."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    owned = owned_files(folder)
    foreign = _not_ours(folder, files, owned)
    if foreign:
        raise _refuse_foreign(folder, foreign, " (they appeared while the evaluation ran)")
    new = {name: sha256_of(Path(staged) / name) for name in files}
    _write_manifest(
        folder, {n: owned.get(n, set()) | ({new[n]} if n in new else set()) for n in {*owned, *new}}
    )
    for name in files:
        os.replace(Path(staged) / name, folder / name)
    removed = []
    for name in sorted(set(owned) - set(new)):
        if _is_ours(folder, name, owned):
            (folder / name).unlink()
            removed.append(name)
        elif (folder / name).exists():
            log.warning("kept %s: changed since main_eval.py wrote it", folder / name)
    _write_manifest(folder, {name: {digest} for name, digest in new.items()})
    return removed
