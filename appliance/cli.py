"""The `appliance` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from appliance.board import PROFILES, BoardError, detect_board, profile_named
from appliance.config.load import ConfigError, load


def default_state_dir() -> Path:
    system = Path("/var/lib/appliance")
    if os.geteuid() == 0 or system.is_dir():
        return system
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "appliance"


def cmd_run(args: argparse.Namespace) -> int:
    from appliance.daemon import run

    return run(args.config, args.state_dir or default_state_dir())


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        # The ladder must fit the board's encoders: check for the one asked for, else ours.
        board = profile_named(args.board) if args.board else detect_board()
        load(args.file, board)
    except BoardError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for err in exc.errors:
            print(f"{args.file}: {err}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK for a {board.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="Edge streaming appliance")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="TOML config (default /etc/appliance/...)")
    run.add_argument("--state-dir", type=Path, help="where state is kept")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file", type=Path)
    check.add_argument("--board", choices=list(PROFILES),
                       help="validate for this board (default: this one, or $APPLIANCE_BOARD)")
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("APPLIANCE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
