"""Writing a file so that it is never seen half-written: a temporary name in the same folder, then renamed."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """path gets text whole or not at all (os.replace is atomic within a file system)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: object) -> None:
    """data as indented JSON, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
