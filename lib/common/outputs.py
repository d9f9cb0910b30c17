"""What a tool may replace or remove in a folder it shares with the user (docs/ARCHITECTURE.md, "Files on disk").

The one rule: a tool deletes or overwrites only what it can show it wrote itself. Anything else in its way
stops it up front (exit 2, UsageError naming the path and the fix), before any work and with nothing touched.

Files in a shared folder (main_eval.py's --output-dir, the byte-level analysis, a pipeline folder's report):
the tool records what it wrote, with each file's sha256, in its manifest beside them (`Writer.manifest`); a
later run replaces or removes only files listed there whose content is unchanged, and refuses a file of a
name it would write that it did not write (check_output_folder up front, replace_outputs again at the end).
Files written before manifests existed are recognised by the tool's own record of them (`Writer.legacy`):
they may be replaced, never removed.

A folder a tool replaces whole (a dataset with --overwrite): only an empty folder, or one the tool recognises
as its own that holds nothing else (check_replaceable_folder).

Every writer into a folder shared with the user goes through these functions: lib/llm/evaluate.py and
lib/blt/analysis.py (MAIN_EVAL), lib/llm/pipeline_report.py (its PIPELINE writer), lib/control/dataset.py
(a dataset folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lib.common.atomic import check_writable_folder, write_json_atomic
from lib.common.errors import UsageError

log = logging.getLogger(__name__)

MANIFEST = ".main_eval_manifest.json"  # main_eval.py's manifest: the name today's folders already hold


def _plain_name(name: object) -> bool:
    return (
        isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
    )


def _metrics(folder: Path) -> dict:
    try:
        document = json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def main_eval_legacy(folder: Path) -> set[str]:
    """The files main_eval.py listed in its metrics.json before the manifest existed: a control evaluation's
    (its context.command says main_eval.py) or a byte-level analysis's (model_type blt, its figures)."""
    document = _metrics(folder)
    context = document.get("context")
    command = context.get("command") if isinstance(context, dict) else None
    if isinstance(command, str) and command.startswith("python scripts/main_eval.py"):
        files = document.get("files")
        return {name for name in files if _plain_name(name)} if isinstance(files, list) else set()
    figures = document.get("figures")
    if document.get("model_type") == "blt" and isinstance(figures, dict):
        return {"metrics.json", "report.md", *(n for n in figures.values() if _plain_name(n))}
    return set()


@dataclass(frozen=True)
class Writer:
    """A tool that writes into a folder it shares with the user: its manifest, and how its refusals read."""

    tool: str  # recorded in the manifest: a manifest of another tool proves nothing
    manifest: str  # the manifest's file name in the folder
    folder: str  # how messages name the folder ("--output-dir")
    fix: str  # what to do when a file in the way is not the tool's
    fix_unwritable: str  # what to do when the folder cannot take files
    legacy: Callable[[Path], set[str]] = lambda folder: set()  # its files of before the manifest


MAIN_EVAL = Writer(
    tool="scripts/main_eval.py",
    manifest=MANIFEST,
    folder="--output-dir",
    fix="pass another --output-dir (eval.output_dir), e.g. results/eval, or move those files away.",
    fix_unwritable="pass a folder you can write to as --output-dir (eval.output_dir), e.g. results/eval; it is "
    "created if missing.",
    legacy=main_eval_legacy,
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def owned_files(folder: Path, writer: Writer) -> dict[str, set[str]]:
    """{file name: sha256 values} of the files `writer` wrote into folder, from its manifest; {} when there
    is none or it is not the writer's. Only these files are ever removed or replaced, and only while their
    content is still what the writer wrote."""
    try:
        manifest = json.loads((Path(folder) / writer.manifest).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict) or manifest.get("tool") != writer.tool:
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


def _is_ours(folder: Path, name: str, owned: Mapping[str, set[str]]) -> bool:
    path = Path(folder) / name
    return name in owned and path.is_file() and sha256_of(path) in owned[name]


def _not_ours(folder: Path, names: Sequence[str], owned: Mapping[str, set[str]], writer: Writer) -> list[str]:
    no_manifest = not owned and not (Path(folder) / writer.manifest).exists()
    legacy = writer.legacy(folder) if no_manifest else set()  # the writer's own files of before the manifest
    return [
        name
        for name in names
        if (Path(folder) / name).exists() and not _is_ours(folder, name, owned) and name not in legacy
    ]


def _refuse_foreign(folder: Path, foreign: Sequence[str], writer: Writer, when: str) -> UsageError:
    name = Path(writer.tool).name
    return UsageError(
        f"{writer.folder} {folder} already holds {_listed(foreign)}, not written by {name} (no {writer.manifest} entry "
        f"with this content){when}; {name} replaces only files it wrote itself.",
        fix=writer.fix,
    )


def check_output_folder(
    folder: Path, planned: Sequence[str], writer: Writer, patterns: Sequence[str] = ()
) -> None:
    """Refuse, before any work, a folder that cannot take `writer`'s files: a file, a path below a file, a
    folder this process cannot write, or one holding a file of a name it would write (`planned`, or matching
    one of the glob `patterns` for names known only later) that it did not write. Creates nothing."""
    folder = Path(folder)
    check_writable_folder(folder, writer.folder, writer.fix_unwritable)
    if not folder.is_dir():
        return
    matched = sorted({p.name for pattern in patterns for p in folder.glob(pattern)})
    foreign = _not_ours(folder, [*planned, *matched], owned_files(folder, writer), writer)
    if foreign:
        raise _refuse_foreign(folder, foreign, writer, "")


@contextmanager
def staging(folder: Path, writer: Writer) -> Iterator[Path]:
    """An empty hidden folder beside `folder` to write the outputs into, for replace_outputs to move them in
    once all are written; removed at the end, whatever happens."""
    folder = Path(folder)
    staged = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        staged.mkdir(parents=True)
    except OSError as exc:
        raise UsageError(
            f"{writer.folder} {folder}: cannot create {staged.parent}/ ({exc.strerror or exc}).",
            fix=writer.fix_unwritable,
        ) from None
    try:
        yield staged
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _write_manifest(folder: Path, files: Mapping[str, set[str]], writer: Writer) -> None:
    name = Path(writer.tool).name
    write_json_atomic(
        Path(folder) / writer.manifest,
        {
            "tool": writer.tool,
            "about": f"files {name} wrote here and their sha256; it replaces or removes only these, and only "
            "while their content is unchanged",
            "files": {name: sorted(hashes) for name, hashes in sorted(files.items())},
        },
    )


def replace_outputs(folder: Path, staged: Path, files: Sequence[str], writer: Writer) -> list[str]:
    """Move the staged files into folder and remove the files of the writer's previous run there that this
    one does not write again; returns the names removed. Only files of the writer's manifest whose content is
    still what it wrote are replaced or removed: a file of the same name from anyone else stops the move
    before anything is touched. The manifest lists old and new hashes while files move, so an interruption
    leaves every file either recognised or untouched."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    owned = owned_files(folder, writer)
    foreign = _not_ours(folder, files, owned, writer)
    if foreign:
        raise _refuse_foreign(folder, foreign, writer, " (they appeared while it ran)")
    new = {name: sha256_of(Path(staged) / name) for name in files}
    _write_manifest(
        folder, {n: owned.get(n, set()) | ({new[n]} if n in new else set()) for n in {*owned, *new}}, writer
    )
    for name in files:
        os.replace(Path(staged) / name, folder / name)
    removed = []
    for name in sorted(set(owned) - set(new)):
        if _is_ours(folder, name, owned):
            (folder / name).unlink()
            removed.append(name)
        elif (folder / name).exists():
            log.warning("kept %s: changed since %s wrote it", folder / name, Path(writer.tool).name)
    _write_manifest(folder, {name: {digest} for name, digest in new.items()}, writer)
    return removed


def check_replaceable_folder(folder: Path, own_names: Callable[[Path], Collection[str] | None], flag: str,
                             made_by: str, fix: str) -> None:  # fmt: skip
    """Refuse replacing `folder` as a whole (UsageError, exit 2, nothing touched) unless it is missing, empty,
    or a folder `made_by` made and holds nothing else: `own_names(folder)` gives the names it wrote there, None
    when the folder is not its own at all. `flag` is what asked for the replacement ("--overwrite")."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        kind = "link" if folder.is_symlink() else "file"
        raise UsageError(f"{flag} would replace {folder}, a {kind}, not a folder {made_by} made; nothing was "
                         "touched.", fix=fix)  # fmt: skip
    entries = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in os.scandir(folder))
    if not entries:
        return
    own = own_names(folder)
    if own is None:
        raise UsageError(f"{flag} would replace {folder}, which {made_by} did not make (it holds "
                         f"{_listed(entries)}); nothing was touched.", fix=fix)  # fmt: skip
    foreign = [name for name in entries if name not in own]
    if foreign:
        raise UsageError(f"{flag} would replace {folder}, which holds {_listed(foreign)} besides what {made_by} "
                         "wrote there; nothing was touched.", fix=fix)  # fmt: skip


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
