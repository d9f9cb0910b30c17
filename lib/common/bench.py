"""What the benchmarks under scripts/bench/ share (`make bench`, `bench-train`, `bench-eval`, `bench-blt`):
their argument parser with --output-dir (default results/bench/), the check of count flags, a stopwatch, the
environment every report records (time, commit, machine, Python and package versions) and its one-line form,
and writing a report as <name>.json and <name>.md, each atomically (lib/common/atomic.py)."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from lib.common.atomic import write_json_atomic, write_text_atomic
from lib.common.config import ROOT
from lib.common.errors import UsageError
from lib.common.runs import git_commit, package_versions

BENCH_DIR = ROOT / "results" / "bench"


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser: the first paragraph of `doc` (the script's docstring) as its description,
    and --output-dir (default results/bench/)."""
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    parser.add_argument(
        "--output-dir", type=Path, default=BENCH_DIR, help="where the report goes (default results/bench)"
    )
    return parser


def check_at_least(args: argparse.Namespace, **minimums: int) -> None:
    """UsageError (exit 2) naming the first count flag below its minimum: check_at_least(args, steps=1)."""
    for dest, minimum in minimums.items():
        value = getattr(args, dest)
        if value < minimum:
            flag = "--" + dest.replace("_", "-")
            raise UsageError(
                f"{flag} {value}: must be at least {minimum}.", fix=f"pass {flag} {minimum} or more."
            )


class Stopwatch:
    """The seconds a `with` block took: `seconds` by the wall clock (time.perf_counter) and `cpu_seconds` of
    this process (time.process_time, which other programs on a shared machine do not inflate).

        with Stopwatch() as clock:
            work()
        print(clock.seconds)
    """

    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_seconds, self.seconds = time.process_time() - self._cpu, time.perf_counter() - self._wall


def machine_description() -> str:
    """This machine in one line: architecture, CPU count, platform ('x86_64, 2 CPUs, Linux-6.8-...')."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"


def bench_environment(packages: Sequence[str] | None = None, **extra: object) -> dict:
    """What a report records about where it ran: created_at (UTC), git_commit, machine, processor, python,
    the versions of `packages` (default: lib.common.runs.PACKAGES; missing ones left out), then `extra`."""
    versions = package_versions() if packages is None else package_versions(packages)
    versions.pop("python", None)
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine_description(),
        "processor": platform.processor() or "unknown",
        "python": platform.python_version(),
        "packages": versions,
        **extra,
    }


def environment_line(env: dict) -> str:
    """A report's environment (bench_environment) as the line its markdown starts with."""
    return f"{env['created_at']}, commit {env['git_commit']}, {env['machine']}, Python {env['python']}"


def write_bench_report(
    name: str, data: dict, markdown: str, output_dir: Path = BENCH_DIR
) -> tuple[Path, Path]:
    """output_dir/<name>.json (data, indented) and output_dir/<name>.md (markdown, ending in a newline), each
    whole or not at all; the folder is made when missing. Returns the two paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / f"{name}.json", output_dir / f"{name}.md"
    write_json_atomic(json_path, data)
    write_text_atomic(md_path, markdown if markdown.endswith("\n") else markdown + "\n")
    return json_path, md_path
