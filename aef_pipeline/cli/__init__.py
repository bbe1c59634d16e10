"""The `aef-pipeline` command line: one module per family of commands, each a thin wrapper over a
library function.

    fields.py   run, plan      (run.run / cluster.run_on_cluster, run.dry_run)
    stores.py   info, verify, migrate   (store.describe_store, verify.verify_store, migrate.migrate_store)
    maps.py     sample, classify, evaluate   (maps.sample, maps.classify, maps.protocol)
    views.py    quicklook, similarity, change   (views.quicklook, views.compare)
    training_set.py  train-set   (training.trainset.build_training_set)
    train.py    train   (training.engine.train; also under torchrun)
    demo.py     demo-catalog   (testing.build_catalog)
    options.py  the options run and plan share, --config files, the request they make

User mistakes print one line (`aef-pipeline: error: ...`) and exit with status 2 having written
nothing; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from aef_pipeline import __version__
from aef_pipeline.cli import demo, fields, maps, stores, train, training_set, views
from aef_pipeline.cli.options import EXIT_USAGE, with_config
from aef_pipeline.errors import UserInputError

if TYPE_CHECKING:
    from aef_pipeline.cluster import Submitter


def main(argv: Sequence[str] | None = None, *, submitter: Submitter | None = None) -> int:
    """Run the command line; `submitter` replaces how `run` hands tasks to the cluster (tests)."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.submitter = submitter
    try:
        if getattr(args, "config", None):
            args = with_config(args, argv)
        return int(args.handler(args))
    except UserInputError as error:
        print(f"aef-pipeline: error: {error}", file=sys.stderr)
        return EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage text stays behind --help), and no
    abbreviated flags (--config must see every flag the command line gave)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        print(f"aef-pipeline: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aef-pipeline", description="AlphaEarth-style embedding fields from Sentinel-2 L2A.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_commands(commands)
    fields.add_commands(commands)
    stores.add_commands(commands)
    maps.add_commands(commands)
    views.add_commands(commands)
    training_set.add_commands(commands)
    train.add_commands(commands)
    return parser
