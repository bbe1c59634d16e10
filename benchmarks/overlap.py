"""Figure 8: overlap of loading and encoding across the tasks of a run, as on a GPU node.

    python -m benchmarks.overlap [--tasks 4] [--slots 2] [--read-ahead 1] [--read-threads 1] [--no-stand-in]
    python -m benchmarks.overlap --device cuda --spec paper --read-threads 8   # on a GPU node

On a GPU node the encoder is one device and the node's CPU cores load; a run keeps the device
busy only if the next tile-period is searched and read while the current one encodes. This
machine has no GPU, so one CPU core stands in for the device and the others for the node's CPU
(`--stand-in`, the default on a CPU): every thread of the benchmark, its cluster and workers runs
on the host cores, and a thread holding the encoder's turn (TaskContext.encoder_turn: one forward
pass with its copies to and from the device; the batch is stacked before) moves to the device
core for the pass and back after it, as a GPU runs the passes and nothing else. Each stage is
given the cores it has end to end:

- load alone: the tasks' cubes searched and read into memory one after another, one read thread,
  on the host cores;
- encode alone: those in-memory cubes encoded as the run's worker encodes them: `slots` at a time,
  one torch thread each, taking turns on the model one forward pass at a time; the windows are
  cut and normalised on the host cores (as on a GPU node), the passes run on the device core;
- end to end: the same tasks run by the pipeline on a LocalCluster of one worker process with
  `--slots` task slots (two: one task's forward passes run while the other searches, reads and
  writes), one torch thread and one read thread per task, reading `--read-ahead` row blocks ahead;
- without overlap, same run: one slot and no read-ahead (the pipeline before issue 20).

The figure is max(load alone, encode alone) / end to end: 1.0 means the slower stage never waits
for the other (target >= 0.9); a pipeline that reads, then encodes, then writes scores about
max / (load + encode) = 0.5 when the two are equal. `tiny` takes 13x as long to encode as to load
on a CPU, where any pipeline scores near 1, so the figure uses benchmarks/specs/light.toml, a
narrowed one-block `tiny` that encodes within 2x of the load time, as a GPU encoder does next to
its node's loaders (the ratio that held is printed). The tasks are 1,008 px squares in four tiles
of the benchmark test bed (two 512-row blocks each). Without `--stand-in` (and on a GPU) nothing
is pinned: every stage shares every core.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import dask
import torch
import xarray as xr

from aef_pipeline.cluster import PLUGIN_NAME, ModelPlugin, connect, dask_submitter
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


def overlap_figure(
    request: RunRequest, slots: int = 2, read_ahead: int = 1, read_threads: int = 1, stand_in: bool = False
) -> Figure:
    """The figure for the request's tasks (its model, bbox, periods and device); with `stand_in`,
    one CPU core stands in for the device (module docstring)."""
    loaded = load_model(request.model)
    tasks = plan_tasks(request.bbox, request.periods, loaded.spec.core)
    cores = StandInCores.split() if stand_in else None
    with pinned_process(cores.host if cores else None):
        # Each stage's time is printed as it ends: a run stopped later (a time cap) still tells them.
        cubes, load_s = _load_alone(tasks, request, read_threads)
        print(f"load alone: {load_s:.1f} s", flush=True)
        encode_s, encode_busy_s = _encode_alone(tasks, cubes, request, slots, cores)
        print(
            f"encode alone: {encode_s:.1f} s (encode/load {encode_s / load_s:.2f}), {_busy(encode_busy_s)}", flush=True
        )
        del cubes
        end_to_end_s, busy_s = _end_to_end(request, slots, read_ahead, read_threads, cores)
        busy_share = f"{busy_s / end_to_end_s:.0%}"
        print(f"end to end: {end_to_end_s:.1f} s, {_busy(busy_s)} ({busy_share})", flush=True)
        sequential_s, _ = _end_to_end(request, 1, 0, read_threads, cores)  # the pipeline before overlapping
    slower = max(load_s, encode_s)
    where = f"device core {sorted(cores.device)}, host cores {sorted(cores.host)}" if cores else request.device
    busy = f"; {_busy(encode_busy_s)} encoding alone, {busy_s:.1f} s end to end ({busy_share})"
    return Figure(
        8,
        "overlap: max(load alone, encode alone) / end to end",
        slower / end_to_end_s,
        "",
        ">= 0.9",
        sizes=f"{len(tasks)} tasks of {tasks[0].pixels:,} px, spec {loaded.spec.name}, {slots} task slots, "
        f"read-ahead {read_ahead}, 1 torch + {read_threads} read thread(s) per task, {where}",
        note=f"load alone {load_s:.1f} s, encode alone {encode_s:.1f} s (encode/load {encode_s / load_s:.2f}), "
        f"end to end {end_to_end_s:.1f} s; without overlap (1 slot, no read-ahead) {sequential_s:.1f} s, "
        f"figure {slower / sequential_s:.2f}; bound of a sequential pipeline {slower / (load_s + encode_s):.2f}{busy}",
        details={
            "load_alone_s": load_s,
            "encode_alone_s": encode_s,
            "end_to_end_s": end_to_end_s,
            "without_overlap_s": sequential_s,
            "tasks": len(tasks),
            "slots": slots,
            "read_ahead": read_ahead,
            "stand_in": where if cores else None,
            "device_busy_encode_alone_s": encode_busy_s,
            "device_busy_end_to_end_s": busy_s,
        },
    )


def _busy(seconds: float) -> str:
    return f"encoder busy {seconds:.1f} s"


@dataclasses.dataclass(frozen=True)
class StandInCores:
    """The CPU cores of a machine without a GPU, split into the node's CPU (`host`) and one core
    standing in for its device."""

    host: frozenset[int]
    device: frozenset[int]

    @classmethod
    def split(cls) -> StandInCores:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise SystemExit("--stand-in needs two CPU cores or more (one stands in for the device)")
        return cls(frozenset(cores[:-1]), frozenset(cores[-1:]))


class TimedTurn:
    """The encoder's turn (TaskContext.encoder_turn), timed: `busy_s` is the seconds it was held,
    the device's busy time (a forward pass ends with its output copied to the host, so on a GPU
    the pass has finished when the turn is released). With stand-in `cores`, its holder runs on
    the device core while it holds it and on the host cores otherwise (Linux sets a thread's
    affinity alone: pid 0 is the calling thread, the process's other threads stay put)."""

    def __init__(self, cores: StandInCores | None = None) -> None:
        self.cores = cores
        self.busy_s = 0.0
        self._lock = threading.Lock()
        self._since = 0.0

    def __enter__(self) -> None:
        self._lock.acquire()
        if self.cores:
            os.sched_setaffinity(0, self.cores.device)
        self._since = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.busy_s += time.perf_counter() - self._since
        if self.cores:
            os.sched_setaffinity(0, self.cores.host)
        self._lock.release()


class TimedTurnPlugin(ModelPlugin):
    """The worker's model (ModelPlugin), its tasks taking turns on a TimedTurn. With stand-in
    cores, the worker process starts on the host cores: it inherits them from the pinned
    benchmark process."""

    def __init__(self, model: str, cores: StandInCores | None) -> None:
        super().__init__(model)
        self.cores = cores

    def setup(self, worker: Any) -> None:
        super().setup(worker)
        assert self.context is not None, "ModelPlugin.setup builds the context"
        self.context.encoder_turn = TimedTurn(self.cores)


@contextmanager
def pinned_process(cores: frozenset[int] | None) -> Iterator[None]:
    """Every thread of this process on `cores` (and every thread or process it starts, which
    inherit it), the affinity before restored after; nothing when `cores` is None."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    _set_all_threads(cores)
    try:
        yield
    finally:
        _set_all_threads(before)


def _set_all_threads(cores: set[int] | frozenset[int]) -> None:
    for tid in os.listdir("/proc/self/task"):
        with suppress(ProcessLookupError):  # the thread ended since the listing
            os.sched_setaffinity(int(tid), cores)


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


def _encode_alone(
    tasks: list[TileTask], cubes: list[xr.Dataset], request: RunRequest, slots: int, cores: StandInCores | None
) -> tuple[float, float]:
    """The cubes encoded as the run's worker encodes them: `slots` tasks at a time, one torch
    thread each, taking turns on the model one forward pass at a time (run.TaskContext), so one
    task prepares its windows while the other's pass runs, as in the end-to-end run."""
    loaded = load_model(request.model)
    options = EncodeOptions(device=request.device, batch_size=request.batch_size)
    turn = TimedTurn(cores)

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
    return time.perf_counter() - start, turn.busy_s


def _end_to_end(
    request: RunRequest, slots: int, read_ahead: int, read_threads: int, cores: StandInCores | None
) -> tuple[float, float]:
    """Seconds end to end, and the encoder's busy seconds (its worker's TimedTurn)."""
    environment = TaskEnvironment(torch_threads=1, read_threads=read_threads, read_ahead=read_ahead)
    request = dataclasses.replace(request, environment=environment, overwrite=True)
    plugin = functools.partial(TimedTurnPlugin, cores=cores)
    with connect(None, workers=1, slots=slots) as client:
        client.run(warnings.simplefilter, "ignore")
        start = time.perf_counter()
        submit = dask_submitter(client, max_in_flight=len(request.periods) * 8, progress=False, plugin=plugin)
        report = run(request, submit=submit)
        seconds = time.perf_counter() - start
        busy: dict[str, float] = client.run(_encoder_busy_s)
    if any(task.status != "done" for task in report.tasks):
        raise RuntimeError(f"benchmark run did not complete: {report.summary()}")
    print(f"  {slots} slot(s), tasks' seconds: {[task.seconds for task in report.tasks]}", flush=True)
    return seconds, next(iter(busy.values()))


def _encoder_busy_s(dask_worker: Any) -> float:
    """In a worker (client.run): the seconds its encoder's turn was held."""
    turn = dask_worker.plugins[PLUGIN_NAME].context.encoder_turn
    assert isinstance(turn, TimedTurn), "the benchmark registers TimedTurnPlugin"
    return turn.busy_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4, choices=(1, 4), help="tiles of the test bed (1 or 4)")
    parser.add_argument("--slots", type=int, default=2, help="tasks a worker runs at once")
    parser.add_argument("--read-ahead", type=int, default=1, help="row blocks read ahead of the encoder")
    parser.add_argument("--read-threads", type=int, default=1, help="read threads per task (a GPU node: its cores)")
    parser.add_argument("--spec", default=str(LIGHT_SPEC), help="model spec (default: the light benchmark spec)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--stand-in",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one CPU core stands in for the device (default: on with --device cpu)",
    )
    args = parser.parse_args()
    stand_in = args.device == "cpu" if args.stand_in is None else args.stand_in
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
        figure = overlap_figure(request, args.slots, args.read_ahead, args.read_threads, stand_in)
    print(f"[{figure.number}] {figure.name}: {figure.value:.2f} (target {figure.target})")
    print(f"    {figure.sizes}\n    {figure.note}")


if __name__ == "__main__":
    main()
