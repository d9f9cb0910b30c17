"""`python -m lib.common.config show|get|validate ...`: the command line of lib/common/config/cli.py."""

import sys

from lib.common.config.cli import main
from lib.common.errors import run_cli

sys.exit(run_cli(main))
