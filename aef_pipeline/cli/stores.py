"""`info`, `verify` and `migrate`: what a store holds, whether what it records is intact, and
moving a store of the older bbox-extent layout to zone-wide groups."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aef_pipeline.cli.options import EXIT_FAILED


def add_commands(commands: Any) -> None:
    info = commands.add_parser("info", help="what an embedding store holds and how complete it is")
    info.add_argument("path", type=Path)
    info.set_defaults(handler=info_command)
    verify = commands.add_parser(
        "verify", help="check every tile-period a store records as done; exit 1 if any is wrong"
    )
    verify.add_argument("path", type=Path)
    verify.set_defaults(handler=verify_command)
    migrate = commands.add_parser(
        "migrate", help="rewrite zone groups of the older bbox-extent layout zone-wide (moves shards, no recompute)"
    )
    migrate.add_argument("path", type=Path)
    migrate.set_defaults(handler=migrate_command)


def info_command(args: argparse.Namespace) -> int:
    from aef_pipeline.store import describe_store

    print(describe_store(args.path))
    return 0


def verify_command(args: argparse.Namespace) -> int:
    from aef_pipeline.verify import verify_store

    result = verify_store(args.path)
    for problem in result.problems:
        print(f"{args.path}: {problem}")
    for note in result.notes:
        print(f"{args.path}: note: {note}")
    print(f"{result.checked} tile-periods checked, {len(result.problems)} problems")
    return 0 if result.ok else EXIT_FAILED


def migrate_command(args: argparse.Namespace) -> int:
    from aef_pipeline.migrate import migrate_store

    zones = migrate_store(args.path)
    print(f"{args.path}: " + (f"zone groups {', '.join(zones)} are zone-wide now" if zones else "already zone-wide"))
    return 0
