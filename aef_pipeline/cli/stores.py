"""`info` and `verify`: what a store holds, and whether what it records is intact."""

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


def info_command(args: argparse.Namespace) -> int:
    from aef_pipeline.store import describe_store

    print(describe_store(args.path))
    return 0


def verify_command(args: argparse.Namespace) -> int:
    from aef_pipeline.verify import verify_store

    result = verify_store(args.path)
    for problem in result.problems:
        print(f"{args.path}: {problem}")
    print(f"{result.checked} tile-periods checked, {len(result.problems)} problems")
    return 0 if result.ok else EXIT_FAILED
