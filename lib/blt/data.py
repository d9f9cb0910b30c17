"""The byte-level model's data (docs/ARCHITECTURE.md, "The byte-level model"): a folder of files as one
token stream, its .npy cache, and the demo corpus built from this project's own text.

Vocabulary: the 256 byte values are their own ids, then three specials: PAD = 256 (fills a short evaluation
window, never a target), BOS = 257 (starts every file), EOS = 258 (ends every file). Bits per byte count
byte targets only; the training loss also counts EOS and BOS (the model learns where files end).

Data policy: every regular file under the folder (recursively, in sorted path order) is read raw, as bytes:
nothing is decoded, so UTF-8, Latin-1 and binary files all train as they are and a non-UTF-8 file is neither
an error nor altered (bytes are bytes). Names starting with a dot (.DS_Store, .git/) are skipped. A missing
folder, or one without any non-empty file, is a UsageError.

Cache: the token stream of a folder (BOS, the file's bytes, EOS, file after file) is stored once as a uint16
.npy under `cache_dir`, named by a hash of the folder, the files' relative names, sizes and modification
times; any change makes a new file. Read back with np.load(mmap_mode="r") (never pickle).

The demo corpus uses lib/control only to write problem statements (the one use of lib/control in lib/blt).

Usage:
    python -m lib.blt.data corpus [--output data/blt_corpus] [--overwrite]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.common.atomic import atomic_dir, write_bytes_atomic, write_json_atomic
from lib.common.config import ROOT, repo_path
from lib.common.errors import EXIT_OK, UsageError, run_cli
from lib.common.outputs import check_replaceable_folder
from lib.common.runs import git_commit

log = logging.getLogger(__name__)

PAD, BOS, EOS = 256, 257, 258
VOCAB_SIZE = 259
CACHE_FORMAT = 1  # bump when the layout of the cached stream changes

DEFAULT_CORPUS = Path("data/blt_corpus")  # relative to the repository root; gitignored, built on first use
CORPUS_SEED = 0
CORPUS_TRAIN_PROBLEM_BYTES = 90_000  # problem statements in train/ (~1.3 KB each, systems taken in turn)
CORPUS_EVAL_PROBLEM_BYTES = 12_000  # in eval/, for initial states train/ does not use
CORPUS_STATES = 64  # initial states drawn per system: train takes them from the front, eval from the back


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class ByteData:
    """A folder's files as one token stream: BOS, bytes, EOS for each file, in `files` order."""

    directory: Path
    files: tuple[str, ...]  # relative paths
    sizes: tuple[int, ...]  # bytes per file
    tokens: np.ndarray  # uint16 [n_tokens], memory-mapped from the cache
    cache_path: Path

    @property
    def n_bytes(self) -> int:
        return sum(self.sizes)

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def document_spans(self) -> list[tuple[str, int, int]]:
        """(file, first stream index of its bytes, number of bytes) for each file."""
        spans, start = [], 0
        for name, size in zip(self.files, self.sizes, strict=True):
            spans.append((name, start + 1, size))  # + 1: the BOS before the bytes
            start += size + 2
        return spans


def data_files(directory: Path, key: str) -> list[Path]:
    """Every regular file under `directory` (recursively, sorted), skipping names that start with a dot."""
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "does not exist"
        raise UsageError(
            f"{key}: {directory} {what}.",
            fix=f"set {key} to a folder of text files (e.g. {key}=path/to/texts), or leave it at its default "
            f"({DEFAULT_CORPUS}/...) to use the corpus built from this project's own text.",
        )
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )
    if not any(p.stat().st_size for p in files):
        found = f"only empty files ({len(files)})" if files else "no files"
        raise UsageError(
            f"{key}: {directory} holds {found}; there is nothing to train or evaluate on.",
            fix=f"put text files (any encoding: they are read as raw bytes) under {directory}, or point {key} "
            "at another folder.",
        )
    return files


def _cache_name(directory: Path, files: Sequence[Path], stats: Sequence[os.stat_result]) -> str:
    listing = [
        [str(f.relative_to(directory)), s.st_size, s.st_mtime_ns] for f, s in zip(files, stats, strict=True)
    ]
    text = json.dumps([CACHE_FORMAT, str(directory.resolve()), listing])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load_byte_data(directory: str | Path, cache_dir: str | Path, key: str) -> ByteData:
    """The token stream of every file under `directory`, from the cache or built (and cached) now."""
    directory = repo_path(directory)
    files = data_files(directory, key)
    stats = [f.stat() for f in files]
    sizes = tuple(s.st_size for s in stats)
    n_tokens = sum(sizes) + 2 * len(files)
    cache_root = repo_path(cache_dir)
    cache_path = cache_root / f"{directory.name or 'data'}-{_cache_name(directory, files, stats)}.npy"
    tokens = None
    if cache_path.is_file():
        tokens = np.load(cache_path, mmap_mode="r", allow_pickle=False)
        if tokens.dtype != np.uint16 or tokens.shape != (n_tokens,):
            log.warning("cache %s does not match its files: rebuilding it", cache_path)
            tokens = None
    if tokens is None:
        stream = np.empty(n_tokens, dtype=np.uint16)
        at = 0
        for path, size in zip(files, sizes, strict=True):
            raw = path.read_bytes()
            if len(raw) != size:
                raise UsageError(
                    f"{path} changed while it was being read ({size} bytes listed, {len(raw)} read).",
                    fix="run again once the files under the data folder stop changing.",
                )
            stream[at] = BOS
            stream[at + 1 : at + 1 + size] = np.frombuffer(raw, dtype=np.uint8)
            stream[at + 1 + size] = EOS
            at += size + 2
        cache_root.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, stream, allow_pickle=False)
        write_bytes_atomic(cache_path, buffer.getvalue())
        log.info("cached %d files (%d bytes) of %s in %s", len(files), sum(sizes), directory, cache_path)
        tokens = np.load(cache_path, mmap_mode="r", allow_pickle=False)
    names = tuple(str(f.relative_to(directory)) for f in files)
    return ByteData(directory, names, sizes, tokens, cache_path)


# ---------------------------------------------------------------- the default corpus


def _docstrings(folder: Path) -> str:
    parts = []
    for path in sorted(folder.rglob("*.py")):
        text = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if text:
            parts.append(f"# {path.relative_to(ROOT)}\n\n{text}\n")
    return "\n".join(parts)


def _problem_statements(budget: int, from_back: bool) -> str:
    """Problem statements (lib.control.answer.build_prompt), one system after the other, until `budget` bytes."""
    from lib.control.answer import build_prompt
    from lib.control.dataset import sample_initial_states
    from lib.control.systems import SYSTEMS

    states = {name: sample_initial_states(s, CORPUS_STATES, CORPUS_SEED) for name, s in SYSTEMS.items()}
    texts, size = [], 0
    for k in range(CORPUS_STATES // 2):  # at most half of the states each, so train and eval never share one
        for name, system in SYSTEMS.items():
            x0 = states[name][CORPUS_STATES - 1 - k if from_back else k]
            text = "\n\n".join(m["content"] for m in build_prompt(system, x0)) + "\n"
            if size + len(text) > budget:
                return "\n".join(texts)
            texts.append(text)
            size += len(text) + 1
    return "\n".join(texts)


def corpus_files(folder: Path) -> set[str] | None:
    """The top-level names build_default_corpus wrote in folder ("train/", "eval/", "info.json"), leaving out a
    sub-folder that holds a file its info.json does not list; None when folder is not a corpus of ours."""
    try:
        info = json.loads((folder / "info.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(info, dict) or "what" not in info or not isinstance(info.get("files"), dict):
        return None
    listed = set(info["files"])
    own = {"info.json"}
    for top in {name.split("/")[0] for name in listed}:
        found = {p.relative_to(folder).as_posix() for p in (folder / top).rglob("*") if not p.is_dir()}
        if found <= listed:
            own.add(top + "/")
    return own


def build_default_corpus(output: str | Path = DEFAULT_CORPUS, overwrite: bool = False) -> Path:
    """Write the demo corpus from this project's own text: `<output>/{train,eval}/` and info.json.

    train/: README.md, the module docstrings of lib/ and scripts/, and about CORPUS_TRAIN_PROBLEM_BYTES of
    problem statements (lib.control.answer.build_prompt). eval/: CLAUDE.md and about CORPUS_EVAL_PROBLEM_BYTES of
    statements for other initial states. About 160 KB in all. The folder is built under a temporary name and renamed, so it is
    complete or absent.
    """
    output = repo_path(output)
    if output.exists() and not overwrite:
        raise UsageError(f"{output} already exists.", fix="pass --overwrite to rebuild it.")
    check_replaceable_folder(output, corpus_files, "--overwrite", "lib.blt.data",
                             fix="pass another output folder, or move that folder away first.")  # fmt: skip
    sources = {
        "train/readme.md": (ROOT / "README.md").read_text(encoding="utf-8"),
        "train/docstrings_lib.txt": _docstrings(ROOT / "lib"),
        "train/docstrings_scripts.txt": _docstrings(ROOT / "scripts"),
        "train/problems.txt": _problem_statements(CORPUS_TRAIN_PROBLEM_BYTES, from_back=False),
        "eval/claude.md": (ROOT / "CLAUDE.md").read_text(encoding="utf-8"),
        "eval/problems.txt": _problem_statements(CORPUS_EVAL_PROBLEM_BYTES, from_back=True),
    }
    info = {
        "what": "the BLT demo corpus, built by lib.blt.data.build_default_corpus from this project's own text",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "seed": CORPUS_SEED,
        "files": {},
    }
    with atomic_dir(output) as tmp:
        for name, text in sources.items():
            data = text.encode("utf-8")
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
            info["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        write_json_atomic(tmp / "info.json", info)
    log.info("built the default corpus in %s (%d files)", output, len(sources))
    return output


def ensure_default_corpus(*directories: str | Path) -> None:
    """Build the default corpus when a configured data folder is inside it and it is missing."""
    corpus = repo_path(DEFAULT_CORPUS).resolve()
    for directory in directories:
        path = repo_path(directory).resolve()
        if (path == corpus or corpus in path.parents) and not corpus.exists():
            build_default_corpus(corpus)
            return


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lib.blt.data", description="The byte-level model's corpus."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    corpus = sub.add_parser("corpus", help="build the default corpus from this project's own text")
    corpus.add_argument("--output", default=str(DEFAULT_CORPUS), help=f"folder (default {DEFAULT_CORPUS})")
    corpus.add_argument("--overwrite", action="store_true", help="rebuild an existing corpus")
    args = parser.parse_args(argv)
    out = build_default_corpus(args.output, overwrite=args.overwrite)
    info = json.loads((out / "info.json").read_text())
    for name, entry in info["files"].items():
        print(f"{entry['bytes']:>8}  {out / name}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_cli(main))
