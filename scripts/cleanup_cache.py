"""Remove caches, temporary training outputs, wandb folders, temporary files and logs; keep everything else.

Usage:
    make clean-cache DRY=1                               # list what would go, and the bytes; remove nothing
    make clean-cache                                     # remove exactly that
    python scripts/cleanup_cache.py --dry-run --verbose  # the same, with what was kept and why
    python scripts/cleanup_cache.py --root PATH          # another checkout (it needs a .git or pyproject.toml)

The rules (what goes, what never does, precedence, links, mounts) are the docstring of lib/common/cleanup.py.
It needs the standard library only: `make clean-cache` runs it with the system python3 and the checkout on
PYTHONPATH, so it works before `make install` as after. Exit codes: 0 done, 1 something could not be
removed (each listed with the reason), 2 bad --root.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# A dry run must change nothing, not even by writing bytecode for the modules it imports.
sys.dont_write_bytecode = True

from lib.common.cleanup import clean_cache  # noqa: E402  (after dont_write_bytecode)
from lib.common.errors import run_cli  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    return clean_cache(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
