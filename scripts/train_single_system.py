"""Train on one system (or every system of a dataset) with the original project's flags: main_trainer.py by
its old name (the same flags, keys and defaults; see scripts/main_trainer.py).

Usage:
    python scripts/train_single_system.py --system double_integrator --dataset-name test_di \\
        --training-type sft --sft-max-samples 5
    python scripts/train_single_system.py --list-datasets
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from lib.common.errors import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    main_trainer = runpy.run_path(str(Path(__file__).with_name("main_trainer.py")))["main"]
    return main_trainer(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
