"""Figure 8: overlap of loading and encoding across the tasks of a run, as on a GPU node.

    python -m benchmarks.overlap [--tasks 4] [--slots 2] [--read-ahead 1] [--read-threads 1]
    python -m benchmarks.overlap --device cuda --spec paper --read-threads 8   # on a GPU node

On a GPU node the encoder is one device and the node's CPU cores load; a run keeps the device
busy only if the next tile-period is searched and read while the current one encodes. This
machine has no GPU, so one CPU core stands in for the device and the other for the loader:

- load alone: the tasks' cubes searched, read and preprocessed into memory one after another,
  one read thread (one core);
- encode alone: those in-memory cubes encoded as the run's worker encodes: `slots` at a time, one
  torch thread each, one forward pass at a time (until 2026-12-04: one after another, one thread);
- end to end: the same tasks run by the pipeline on a LocalCluster of one worker process with
  `--slots` task slots (two: one task's forward passes run while the other searches, reads and
  writes; the encoder takes turns by TaskContext.encoder_turn), one torch thread and one read
  thread per task, reading `--read-ahead` row blocks ahead: two cores;
- without overlap, same run: one slot and no read-ahead (the pipeline before issue 20).

The figure is max(load alone, encode alone) / end to end: 1.0 means the slower stage never waits
for the other (target >= 0.9); a pipeline that reads, then encodes, then writes scores about
max / (load + encode) = 0.5 when the two are equal. `tiny` takes 13x as long to encode as to load
on a CPU, where any pipeline scores near 1, so the figure uses benchmarks/specs/light.toml, a
narrowed one-block `tiny` that encodes in 0.5-2x the load time, as a GPU encoder does next to its
node's loaders (say which ratio held: it is printed). The tasks are 1,008 px squares in four tiles
of the benchmark test bed (two 512-row blocks each).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import torch
import xarray as xr

from aef_pipeline.cluster import connect, dask_submitter
from aef_pipeline.encode import EncodeOptions, encode_cube, required_halo
from aef_pipeline.environment import TaskEnvironment
from aef_pipeline.load import GdalOptions, load_kept_frames
from aef_pipeline.model import load_model
from aef_pipeline.plan import Period, TileTask, plan_tasks
from aef_pipeline.preprocess import mask_policy
from aef_pipeline.run import RunRequest, run
from aef_pipeline.search import CatalogConfig, open_source, search_tile
from aef_pipeline.testing import serve_catalogs
from benchmarks.data import YEAR, bench_catalog, quadrant_bbox
from benchmarks.report import Figure

LIGHT_SPEC = Path(__file__).parent / "specs" / "light.toml"
TASK_HALF_M = 10_000  # 1,008 px per task: two 512-row read blocks with the halo


def overlap_figure(request: RunRequest, slots: int = 2, read_ahead: int = 1, read_threads: int = 1) -> Figure:
    """The figure for the request's tasks (its model, bbox, periods and device)."""
    loaded = load_model(request.model)
    tasks = plan_tasks(request.bbox, request.periods, loaded.spec.core)
    # Each stage's time is printed as it ends: a run stopped later (a time cap) still tells them.
    cubes, load_s = _load_alone(tasks, request, read_threads)
    print(f"load alone: {load_s:.1f} s", flush=True)
    encode_s = _encode_alone(tasks, cubes, request, slots)
    print(f"encode alone: {encode_s:.1f} s (encode/load {encode_s / load_s:.2f})", flush=True)
    del cubes
    end_to_end_s = _end_to_end(request, slots, read_ahead, read_threads)
    print(f"end to end: {end_to_end_s:.1f} s", flush=True)
    sequential_s = _end_to_end(request, 1, 0, read_threads)  # the pipeline before overlapping
    slower = max(load_s, encode_s)
    return Figure(
        8,
        "overlap: max(load alone, encode alone) / end to end",
        slower / end_to_end_s,
        "",
        ">= 0.9",
        sizes=f"{len(tasks)} tasks of {tasks[0].pixels:,} px, spec {loaded.spec.name}, {slots} task slots, "
        f"read-ahead {read_ahead}, 1 torch + {read_threads} read thread(s) per task, {request.device}",
        note=f"load alone {load_s:.1f} s, encode alone {encode_s:.1f} s (encode/load {encode_s / load_s:.2f}), "
        f"end to end {end_to_end_s:.1f} s; without overlap (1 slot, no read-ahead) {sequential_s:.1f} s, "
        f"figure {slower / sequential_s:.2f}; bound of a sequential pipeline {slower / (load_s + encode_s):.2f}",
        details={
            "load_alone_s": load_s,
            "encode_alone_s": encode_s,
            "end_to_end_s": end_to_end_s,
            "without_overlap_s": sequential_s,
            "tasks": len(tasks),
            "slots": slots,
            "read_ahead": read_ahead,
        },
    )


def _load_alone(tasks: list[TileTask], request: RunRequest, threads: int) -> tuple[list[xr.Dataset], float]:
    spec = load_model(request.model).spec
    halo = required_halo(spec, request.overlap)
    source = open_source(request.catalog)
    cubes = []
    start = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=threads):
        for task in tasks:
            area = task.geobox()
            selection = search_tile(source, area.pad(halo), task.period, spec.bands)
            cube = load_kept_frames(
                selection,
                area.pad(halo),
                area,
                spec.bands,
                mask_policy(spec.mask_clouds),
                GdalOptions(),
                chunk_rows=EncodeOptions().read_rows,
            )
            cubes.append(cube.compute())
    return cubes, time.perf_counter() - start


def _encode_alone(tasks: list[TileTask], cubes: list[xr.Dataset], request: RunRequest, slots: int) -> float:
    """The cubes encoded as the run's worker encodes them: `slots` tasks at a time, one torch
    thread each, taking turns on the model one forward pass at a time (run.TaskContext), so one
    task prepares its windows while the other's pass runs, as in the end-to-end run."""
    loaded = load_model(request.model)
    options = EncodeOptions(device=request.device, batch_size=request.batch_size)
    turn = threading.Lock()

    def encode(task: TileTask, cube: xr.Dataset) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # per thread, as the run applies it in each task's thread
        try:
            encode_cube(
                cube, task.period, loaded.encoder, loaded.spec, options, provenance=loaded.provenance, turn=turn
            )
        finally:
            torch.set_num_threads(before)

    start = time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        list(pool.map(encode, tasks, cubes))
    return time.perf_counter() - start


def _end_to_end(request: RunRequest, slots: int, read_ahead: int, read_threads: int) -> float:
    environment = TaskEnvironment(torch_threads=1, read_threads=read_threads, read_ahead=read_ahead)
    request = dataclasses.replace(request, environment=environment, overwrite=True)
    with connect(None, workers=1, slots=slots) as client:
        client.run(warnings.simplefilter, "ignore")
        start = time.perf_counter()
        report = run(request, submit=dask_submitter(client, max_in_flight=len(request.periods) * 8, progress=False))
        seconds = time.perf_counter() - start
    if any(task.status != "done" for task in report.tasks):
        raise RuntimeError(f"benchmark run did not complete: {report.summary()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4, choices=(1, 4), help="tiles of the test bed (1 or 4)")
    parser.add_argument("--slots", type=int, default=2, help="tasks a worker runs at once")
    parser.add_argument("--read-ahead", type=int, default=1, help="row blocks read ahead of the encoder")
    parser.add_argument("--read-threads", type=int, default=1, help="read threads per task (a GPU node: its cores)")
    parser.add_argument("--spec", default=str(LIGHT_SPEC), help="model spec (default: the light benchmark spec)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    catalog, _ = bench_catalog()
    with tempfile.TemporaryDirectory(prefix="aef-overlap-") as tmp, serve_catalogs([catalog], Path(tmp) / "api") as url:
        request = RunRequest(
            quadrant_bbox(TASK_HALF_M, args.tasks),
            (Period.year(YEAR),),
            Path(tmp) / "field.zarr",
            CatalogConfig(url),
            model=args.spec,
            device=args.device,
        )
        figure = overlap_figure(request, args.slots, args.read_ahead, args.read_threads)
    print(f"[{figure.number}] {figure.name}: {figure.value:.2f} (target {figure.target})")
    print(f"    {figure.sizes}\n    {figure.note}")


if __name__ == "__main__":
    main()
