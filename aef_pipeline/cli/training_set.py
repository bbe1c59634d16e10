"""`train-set`: cut training windows on the data path of `run` into a Zarr training set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aef_pipeline.cli.options import EXIT_FAILED, EXIT_INTERRUPTED, add_area_arguments, request_from
from aef_pipeline.errors import StorageFullError, UserInputError

if TYPE_CHECKING:
    from aef_pipeline.training.trainset import TrainingSetReport, TrainingSetRequest


def add_commands(commands: Any) -> None:
    cut = commands.add_parser(
        "train-set", help="cut training windows (search, load, preprocess as `run` does) into a Zarr training set"
    )
    add_area_arguments(cut)
    cut.add_argument("--out", type=Path, help="the training set (Zarr), created or resumed")
    cut.add_argument("--windows", type=int, default=16, help="windows cut per tile window and period (default 16)")
    cut.add_argument(
        "--max-frames", type=int, default=64, help="frames kept per window; more: an evenly spaced subset (default 64)"
    )
    cut.add_argument("--seed", type=int, default=0, help="with each task's key, where windows sit (default 0)")
    cut.add_argument("--workers", type=int, default=None, help="run tasks on a local dask cluster of N processes")
    cut.add_argument("--scheduler", help="address of an existing dask scheduler (default: tasks run in this process)")
    cut.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    cut.set_defaults(handler=train_set_command)


def train_set_command(args: argparse.Namespace) -> int:
    from aef_pipeline.model import load_spec

    request = training_request(args)
    load_spec(request.model)  # an unknown model is a one-line error before anything starts
    try:
        report = _build(request, args.scheduler, args.workers)
    except KeyboardInterrupt:
        print(
            f"aef-pipeline: interrupted: {request.output} is not finished; rerun the same command to resume "
            "(recorded tasks are kept and skipped)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except StorageFullError as error:
        print(f"aef-pipeline: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    if report.finished:
        print(f"wrote {request.output} ({report.windows} windows; read it with open_training_set)")
    return EXIT_FAILED if report.failed or not report.finished else 0


def training_request(args: argparse.Namespace) -> TrainingSetRequest:
    """The request the options describe, through `run`'s own option checks (bbox or region, years,
    periods, catalog, model)."""
    from aef_pipeline.training.trainset import TrainingSetRequest

    if args.workers is not None and args.workers < 1:
        raise UserInputError(f"--workers {args.workers} is not a process count: give 1 or more, or leave it out")
    run = request_from(args)
    return TrainingSetRequest(
        bbox=run.bbox,
        region=run.region,
        periods=run.periods,
        output=run.output,
        catalog=run.catalog,
        model=run.model,
        windows_per_task=args.windows,
        max_frames=args.max_frames,
        seed=args.seed,
        max_cloud_cover=run.max_cloud_cover,
        overwrite=args.overwrite,
    )


def _build(request: TrainingSetRequest, scheduler: str | None, workers: int | None) -> TrainingSetReport:
    """In this process, or on dask when a scheduler or workers are asked for."""
    from aef_pipeline.training.trainset import build_training_set, cluster_submitter

    if scheduler is None and workers is None:
        return build_training_set(request)
    from aef_pipeline.cluster import connect

    with connect(scheduler, workers or 2) as client:
        return build_training_set(request, cluster_submitter(client))
