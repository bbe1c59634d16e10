"""The pipeline: plan -> per (tile window, period) task: search -> load -> preprocess -> encode -> write.

    report = run(RunRequest(BBox(15.0, 46.1, 15.3, 46.3), (Period.year(2022),), Path("field.zarr")))
    region = read_region(Path("areas.gpkg"))  # or an area of any shape: only the tiles it meets
    report = run(RunRequest(region.bbox, (Period.year(2022),), Path("field.zarr"), region=region))

`run` plans on the client, writes the store's template, hands the tasks to a submitter (this
process by default; cluster.run_on_cluster plugs in dask) and records the report. `process_task`
is one task from search to write, run wherever the submitter sends it.
"""

from __future__ import annotations

import datetime as dt
import errno
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager, closing, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import xarray as xr

from aef_pipeline import __version__
from aef_pipeline.catalog import write_stac
from aef_pipeline.encode import EncodeOptions, encode_cube, required_halo
from aef_pipeline.environment import TaskEnvironment, applied, available_cores, release_free_memory
from aef_pipeline.errors import AefError, AefWarning, StorageFullError, TileUnreadableError
from aef_pipeline.grid import BBox, TileId
from aef_pipeline.load import load_kept_frames, report_read_failures, selection_hrefs
from aef_pipeline.lock import store_lock
from aef_pipeline.model import LoadedModel, ModelSpec, check_weights, load_model, load_spec, provenance_of
from aef_pipeline.plan import Period, Plan, PlanCounts, TileTask, plan_tasks, plan_windows, task_cost
from aef_pipeline.preprocess import mask_policy
from aef_pipeline.region import Region
from aef_pipeline.report import RunReport, TaskResult, TaskStatus
from aef_pipeline.search import CatalogConfig, SceneSelection, SceneSource, open_source, search_tile
from aef_pipeline.store import (
    StoreLayout,
    create_store,
    finalize,
    finished,
    store_periods,
    write_tile,
    written_tiles,
    zone_name,
)

# A full disk or an exhausted quota: the run cannot go on until someone frees space.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class RunRequest:
    """Everything one run needs; the only input of `run`."""

    bbox: BBox
    """The area, or the bounds of `region` when there is one."""
    periods: tuple[Period, ...]
    output: Path
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    model: str = "tiny"
    """A spec name from models/ or a path to a spec file."""
    device: str = "auto"
    max_cloud_cover: float | None = None
    overwrite: bool = False
    storage: str = "int8"
    overlap: bool = False
    batch_size: int = 8
    """Windows per forward pass; part of what a field is (see encode.py): keep it for a store."""
    environment: TaskEnvironment = field(default_factory=TaskEnvironment)
    """Threads and GDAL settings of every task; torch threads are fixed when the run starts."""
    region: Region | None = None
    """An area of any shape (region.py): only the tiles it meets are planned, not all of `bbox`."""

    def __post_init__(self) -> None:
        if self.region is not None and self.bbox != self.region.bbox:
            raise ValueError("a RunRequest with a region needs bbox=region.bbox")

    @property
    def area(self) -> BBox | Region:
        """What is planned: the region when there is one, else the bbox."""
        return self.bbox if self.region is None else self.region

    def for_tasks(self) -> RunRequest:
        """The request as tasks receive it: without the region, which they do not need (each
        carries its window) and which would be shipped with every task (megabytes for a land mask)."""
        return replace(self, region=None)


@dataclass
class TaskContext:
    """What a process that runs tasks holds for them: the model, built once, and the catalogs it
    has opened (each on first use, then kept: opening one costs a few requests). A dask worker
    holds one (cluster.ModelPlugin), an in-process run builds one."""

    model: LoadedModel
    sources: dict[CatalogConfig, SceneSource] = field(default_factory=dict)
    encoder_turn: AbstractContextManager[Any] = field(default_factory=threading.Lock)
    """Held around each forward pass: tasks running side by side in this process (two per GPU)
    take turns on the encoder, one task's pass running while the other searches, reads, prepares
    its windows and writes (encode.encode_cube)."""

    def source(self, catalog: CatalogConfig) -> SceneSource:
        if catalog not in self.sources:
            self.sources[catalog] = open_source(catalog)
        return self.sources[catalog]


class TaskFailedWarning(AefWarning):
    """A tile-period failed; the others went on, and the report says why."""


Submit = Callable[[list[TileTask], RunRequest], Generator[TaskResult, None, None]]
"""Runs a request's tasks somewhere and yields their results as they finish (default: in_process)."""


def run(request: RunRequest, submit: Submit | None = None) -> RunReport:
    """Plan, write the template, run every task (through `submit`, default: in this process),
    record the report. `submit` is how a cluster plugs in (cluster.run_on_cluster).

    A full disk stops the run with StorageFullError: every tile-period recorded so far is complete
    (records are written after their data, and zarr replaces chunk files atomically), the rest are
    redone by rerunning the same command once there is space."""
    started = time.perf_counter()
    spec = load_spec(request.model)
    check_weights(spec)  # a bad checkpoint is refused before anything is written
    tasks = plan_tasks(request.area, request.periods, spec.core)
    report = RunReport(dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), describe(request))
    with store_lock(request.output):
        try:
            create_store(
                request.output,
                sorted({t.tile for t in tasks}),
                request.periods,
                layout(request, spec),
                overwrite=request.overwrite,
            )
            to_do = tasks_to_do(request.output, tasks)
            keys = {t.key for t in to_do}
            report.tasks += [TaskResult.of(t, TaskStatus.SKIPPED) for t in tasks if t.key not in keys]
            collect((submit or in_process)(to_do, request.for_tasks()), report)
            finalize(request.output)
            write_stac(request.output)
        except (OSError, StorageFullError) as error:
            if not out_of_space(error):
                raise
            raise _full_disk(request, tasks, report) from error
    report.seconds = round(time.perf_counter() - started, 2)
    report.save(request.output)
    return report


def layout(request: RunRequest, spec: ModelSpec) -> StoreLayout:
    """What the store records of the model and encoding (from the spec: no model is built)."""
    return StoreLayout(spec.name, provenance_of(spec).description, request.storage, source_data=sources(request))


def sources(request: RunRequest) -> tuple[str, ...]:
    """URIs of the STAC collections a run reads: an API's collections, or a static catalog's file."""
    url = request.catalog.url
    if url.startswith(("http://", "https://")):
        return tuple(f"{url.rstrip('/')}/collections/{c}" for c in request.catalog.collections)
    return (Path(url).resolve().as_uri(),)


def tasks_to_do(output: Path, tasks: list[TileTask]) -> list[TileTask]:
    """The tasks whose window no completion record of the store covers: what a run still has to
    do (a rerun skips the rest without handing them to a worker, or starting one). The records are
    found by listing them per zone (store.written_tiles), and only those of written tiles are read:
    a plan of millions of tasks costs a listing per zone, not a read per task."""
    written: dict[str, set[tuple[Period, TileId]]] = {}
    to_do = []
    for task in tasks:
        zone = zone_name(task.tile)
        if zone not in written:
            periods = store_periods(output, zone)
            written[zone] = {(periods[i], t) for i, tiles in written_tiles(output, zone).items() for t in tiles}
        done = (task.period, task.tile) in written[zone] and finished(output, task.tile, task.period, task.window)
        if not done:
            to_do.append(task)
    return to_do


def fixed_threads(request: RunRequest, cores: int) -> RunRequest:
    """The request with its tasks' torch thread count fixed (`cores` unless it already is), so that
    every task of the run, retries included, computes with the same kernels."""
    if request.environment.torch_threads is not None:
        return request
    return replace(request, environment=replace(request.environment, torch_threads=max(1, cores)))


def in_process(tasks: list[TileTask], request: RunRequest) -> Generator[TaskResult, None, None]:
    """The default submitter: every task in turn, in this process, with the model built once."""
    if not tasks:
        return
    request = fixed_threads(request, available_cores())
    context = TaskContext(load_model(request.model))
    for task in tasks:
        yield attempt_task(task, request, context)


def collect(results: Generator[TaskResult, None, None], report: RunReport) -> None:
    """Add each result to the report as it arrives; stop at the first full disk (and close the
    submitter, which cancels what is still queued)."""
    with closing(results):
        for result in results:
            report.tasks.append(result)
            if result.out_of_space:
                raise StorageFullError(result.error)
            if result.status == TaskStatus.FAILED:
                warnings.warn(f"{result.tile} {result.period} failed: {result.error}", TaskFailedWarning, 2)


def attempt_task(task: TileTask, request: RunRequest, context: TaskContext) -> TaskResult:
    """process_task, with an expected failure (the package's errors, an OSError) recorded for the
    report instead of ending the run. Anything else is a bug: it is recorded too, with its whole
    traceback in the report and on stderr, so one bad tile does not hide the others' results."""
    try:
        return process_task(task, request, context)
    except (AefError, OSError) as error:
        last = traceback.extract_tb(error.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        return TaskResult.of(
            task,
            TaskStatus.FAILED,
            error=f"{type(error).__name__}: {error} (at {where})",
            out_of_space=out_of_space(error),
        )
    except Exception as error:
        trace = traceback.format_exc()
        print(f"aef-pipeline: bug in task {task.key}:\n{trace}", file=sys.stderr)
        return TaskResult.of(task, TaskStatus.FAILED, error=f"bug: {type(error).__name__}: {error}", traceback=trace)


def process_task(task: TileTask, request: RunRequest, context: TaskContext) -> TaskResult:
    """One tile window and period, start to finish, in this process and the request's environment."""
    result = TaskResult.of(task, torch_threads=request.environment.torch_threads)
    if finished(request.output, task.tile, task.period, task.window):
        result.status = TaskStatus.SKIPPED
        return result
    with applied(request.environment):
        selection = search(task, request, context, result)
        if selection.empty:
            result.status = TaskStatus.EMPTY
            return result
        embeddings = load_and_encode(task, request, context.model, selection, result, context.encoder_turn)
        release_free_memory()  # the write's whole-tile buffers need not come on top of the encoder's leftovers
        write(task, request, context.model, embeddings, result)
    return result


def search(task: TileTask, request: RunRequest, context: TaskContext, result: TaskResult) -> SceneSelection:
    """The task's scenes (its window plus the model's halo), recorded in `result`."""
    spec = context.model.spec
    area = task.geobox().pad(required_halo(spec, request.overlap))
    with result.timed("search"):
        selection = search_tile(
            context.source(request.catalog), area, task.period, spec.bands, request.max_cloud_cover, tile=str(task.tile)
        )
    result.scenes = [info.item_id for info in selection.scenes]
    result.dropped = [asdict(skip) for skip in selection.skipped]
    return selection


def load_and_encode(
    task: TileTask,
    request: RunRequest,
    model: LoadedModel,
    selection: SceneSelection,
    result: TaskResult,
    turn: AbstractContextManager[Any] | None = None,
) -> xr.Dataset:
    """The task's embeddings. The cube stays lazy: encode_cube reads it one row of windows at a
    time, so a task's memory is a row block (L rows x the window's width x frames x bands) plus the
    model's activations, whatever the tile holds. Reads run on this process's threads, where read
    failures are seen; a task none of whose pixels could be read raises TileUnreadableError."""
    spec, area = model.spec, task.geobox()
    options = EncodeOptions(
        device=request.device,
        batch_size=request.batch_size,
        overlap=request.overlap,
        read_ahead=request.environment.read_ahead,
    )
    load_area = area.pad(required_halo(spec, request.overlap))
    with report_read_failures(selection_hrefs(selection)) as failures:
        with result.timed("load"):
            cube = load_kept_frames(
                selection,
                load_area,
                area,
                spec.bands,
                mask_policy(spec.mask_clouds),
                request.environment.gdal,
                chunk_rows=options.read_rows,
                reader=request.environment.reader,
            )
        with result.timed("encode"):  # includes the lazy reads of the reflectance bands
            embeddings = encode_cube(
                cube, task.period, model.encoder, spec, options, provenance=model.provenance, turn=turn
            )
    result.read_failures = list(failures)
    if result.read_failures and not int(embeddings.observations.max()):
        raise TileUnreadableError(
            f"nothing of tile {task.tile} {task.period.label} could be read ({len(result.read_failures)} unreadable "
            f"assets, e.g. {result.read_failures[0]}): nothing written; rerun to retry"
        )
    return embeddings


def write(task: TileTask, request: RunRequest, model: LoadedModel, embeddings: xr.Dataset, result: TaskResult) -> None:
    """The task's shards, then its completion record (what made them: scenes, model, software)."""
    with result.timed("write"):
        record = {
            "scenes": result.scenes,
            "dropped": result.dropped,
            "read_failures": result.read_failures,
            "model": model.spec.name,
            "model_weights": model.provenance.description,
            "software": f"aef-pipeline {__version__}",
            "seconds": result.seconds,
        }
        write_tile(request.output, task.tile, task.period, embeddings, record)


def dry_run(request: RunRequest) -> Plan:
    """`aef-pipeline plan`: every task with the scenes its search finds and what it would read,
    write and compute; reads no pixel, but searches once per task (see count_tasks)."""
    from aef_pipeline.model.flops import flops_per_window  # builds the model on torch's meta device

    spec = load_spec(request.model)
    source, halo = open_source(request.catalog), required_halo(spec, request.overlap)
    costs, window_flops = [], {}  # FLOPs by frame count: tasks of one area mostly share theirs
    with applied(request.environment):
        for task in plan_tasks(request.area, request.periods, spec.core):
            found = search_tile(
                source, task.geobox().pad(halo), task.period, spec.bands, request.max_cloud_cover, tile=str(task.tile)
            )
            frames = max(1, len(found.items))
            if frames not in window_flops:
                window_flops[frames] = flops_per_window(spec, frames)
            scenes, dropped = len(found.items), len(found.skipped)
            costs.append(task_cost(task, scenes, dropped, halo, len(spec.bands), window_flops[frames], spec.core))
    return Plan(tuple(costs), spec.name, request.storage, spec.output_dim)


def count_tasks(request: RunRequest) -> PlanCounts:
    """`aef-pipeline plan --no-search`: the tasks, pixels and store size of a request, without
    asking the catalog anything (a global land mask plans in seconds; searching its 3 million
    tile-periods one by one would take days)."""
    spec = load_spec(request.model)
    windows = plan_windows(request.area, spec.core)
    return PlanCounts.of(windows, len(request.periods), spec.name, request.storage, spec.output_dim)


def out_of_space(error: BaseException) -> bool:
    """Whether `error`, or an error that led to it, is a full disk or quota."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, StorageFullError) or (isinstance(seen, OSError) and seen.errno in OUT_OF_SPACE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _full_disk(request: RunRequest, tasks: list[TileTask], report: RunReport) -> StorageFullError:
    """The one-line error a full disk ends the run with, once the report is saved (if it fits)."""
    with suppress(OSError):  # on a full disk the report may not fit either
        report.save(request.output)
    return StorageFullError(
        f"no space left on the device of {request.output} ({progress(request.output, tasks)} and "
        "recorded; the write that failed left no record): "
        "free some space or move the store, then rerun the same command to resume"
    )


def progress(output: Path, tasks: list[TileTask]) -> str:
    """ "N of M tile-periods complete": how many of `tasks` the store records as complete. Safe on a
    store whose template was cut off half-written (a run stopped or interrupted while making it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr's, about an array without its metadata yet
            done = str(sum(finished(output, t.tile, t.period, t.window) for t in tasks) if output.exists() else 0)
    except Exception as error:
        done = f"? (the store could not be read: {type(error).__name__})"
    return f"{done} of {len(tasks)} tile-periods complete"


def describe(request: RunRequest) -> dict[str, Any]:
    """The request as the run report records it (a region by its file name and sha256)."""
    region = {} if request.region is None else {"region": request.region.describe()}
    return {
        "bbox": asdict(request.bbox),
        **region,
        "periods": [p.label for p in request.periods],
        "output": str(request.output),
        "catalog": request.catalog.url,
        "collections": list(request.catalog.collections),
        "model": request.model,
        "torch_threads": request.environment.torch_threads,
    }
