"""The command line `python -m lib.common.config show|get|validate ...` (usage in the package docstring)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from lib.common.config.loader import resolve_config
from lib.common.config.merge import get_value
from lib.common.config.paths import ROOT, display_path, find_configs, skipped_configs
from lib.common.errors import ConfigError, UsageError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lib.common.config", description="Resolve and validate configs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the resolved config as JSON")
    show.add_argument("file")
    show.add_argument("overrides", nargs="*", metavar="key=value")
    get = sub.add_parser("get", help="print one value of the resolved config")
    get.add_argument("file")
    get.add_argument("key")
    get.add_argument("overrides", nargs="*", metavar="key=value")
    check = sub.add_parser("validate", help="validate every config under the given files or folders")
    check.add_argument("paths", nargs="*", default=[str(ROOT / "configs")])
    args = parser.parse_args(argv)

    if args.command == "show":
        print(json.dumps(resolve_config(args.file, args.overrides), indent=2))
    elif args.command == "get":
        value = get_value(resolve_config(args.file, args.overrides), args.key)
        print(value if isinstance(value, str) else json.dumps(value))
    else:
        return _validate_paths(args.paths)
    return 0


def _validate_paths(paths: Sequence[str]) -> int:
    files = find_configs(paths)
    skipped = skipped_configs(paths)
    for file, reason in skipped.items():
        print(f"skipped {display_path(file)}: {reason}")
    if not files:
        raise ConfigError(
            f"no experiment config files (*.yaml, *.yml, *.json) under {', '.join(paths)}"
            + (f" ({len(skipped)} skipped: other tools' configs)." if skipped else "."),
            fix="pass a config file or a folder that holds some (configs/ by default).",
        )
    failed = 0
    for file in files:
        try:
            cfg = resolve_config(file)
            print(f"ok      {display_path(file)}  ({cfg['model_type']})")
        except UsageError as exc:  # one bad file is reported, and the others are still checked
            failed += 1
            print(f"FAILED  {display_path(file)}: {exc} {exc.fix}".rstrip())
    note = f"; skipped {len(skipped)} other tools' config(s)" if skipped else ""
    print(f"validated {len(files)} config(s): {len(files) - failed} ok, {failed} failed{note}")
    return 2 if failed else 0
