"""`run` and `plan`: compute an embedding field, or say what computing it would take."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aef_pipeline.cli.options import EXIT_FAILED, EXIT_INTERRUPTED, add_area_arguments, request_from
from aef_pipeline.errors import StorageFullError

if TYPE_CHECKING:
    from aef_pipeline.report import RunReport
    from aef_pipeline.run import RunRequest


def add_commands(commands: Any) -> None:
    run = commands.add_parser("run", help="compute an embedding field for an area and years into a Zarr store")
    add_area_arguments(run)
    run.add_argument("--out", type=Path, help="the Zarr store (created, or extended)")
    run.add_argument("--device", default="auto", help="auto (GPU if any, else CPU), cpu, cuda, cuda:N")
    run.add_argument("--scheduler", help="address of an existing dask scheduler (else a local cluster)")
    run.add_argument("--workers", type=int, default=2, help="local cluster worker processes (default 2)")
    run.add_argument(
        "--tasks-per-worker",
        type=int,
        default=None,
        help="tasks a local worker runs at once (default: 2 with a GPU, so one reads while the other encodes; else 1)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace a store made with another model/grid")
    run.add_argument("--storage", choices=["int8", "float16", "float32"], default="int8")
    run.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per task (default: each worker's share of its host's cores)",
    )
    run.set_defaults(handler=run_command)
    plan = commands.add_parser("plan", help="dry run: tiles, periods, scenes found, pixels and bytes to read")
    add_area_arguments(plan)
    plan.add_argument(
        "--no-search",
        action="store_true",
        help="only count tasks, pixels and the store's size, without searching the catalog (no network): for "
        "areas too large to search tile by tile",
    )
    plan.set_defaults(handler=plan_command)


def run_command(args: argparse.Namespace) -> int:
    from aef_pipeline.cluster import connect, on_local_cluster, run_on_cluster
    from aef_pipeline.encode import check_device_name
    from aef_pipeline.model import load_spec
    from aef_pipeline.run import run

    request = request_from(args)
    load_spec(request.model)  # an unknown model is a one-line error before anything starts
    check_device_name(request.device)

    def on_cluster() -> RunReport:
        if not args.scheduler:  # started once the store has taken the run and there is work to do
            return run(request, submit=on_local_cluster(args.workers, args.tasks_per_worker, args.submitter))
        with connect(args.scheduler, args.workers, slots=args.tasks_per_worker) as client:
            return run_on_cluster(client, request, args.submitter)

    return run_and_summarise(request, on_cluster)


def run_and_summarise(request: RunRequest, start: Callable[[], RunReport], prog: str = "aef-pipeline") -> int:
    """Run (`start`), print the summary, and return the exit status: 0, or 1 when tile-periods
    failed. A full disk and Ctrl-C are one line each (exit 1 and 130), saying how to resume.
    The command line and the flows end their runs alike through this."""
    try:
        report = start()
    except KeyboardInterrupt:
        print(
            f"{prog}: interrupted: {_progress(request)} in {request.output}; rerun the same command to resume "
            "(finished tile-periods are kept and skipped)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except StorageFullError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    print(f"wrote {request.output} ({', '.join(p.label for p in request.periods)})")
    return EXIT_FAILED if report.failed else 0


def _progress(request: RunRequest) -> str:
    from aef_pipeline.model import load_spec
    from aef_pipeline.plan import plan_tasks
    from aef_pipeline.run import progress

    return progress(request.output, plan_tasks(request.area, request.periods, load_spec(request.model).core))


def plan_command(args: argparse.Namespace) -> int:
    from aef_pipeline.run import count_tasks, dry_run

    request = request_from(args)
    for line in (count_tasks(request) if args.no_search else dry_run(request)).lines():
        print(line)
    return 0
