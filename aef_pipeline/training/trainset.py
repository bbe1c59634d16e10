"""Training windows cut on the data path of `run`, stored as Zarr v3 (`aef-pipeline train-set`).

    report = build_training_set(TrainingSetRequest(bbox, (Period.year(2021),), Path("train.zarr")))
    windows = open_training_set(Path("train.zarr"))          # what the training engine reads

The tasks are the (tile window, period) tasks `run` plans. Each searches, loads and harmonises as
`run` does (search_tile -> load_selection -> preprocess.harmonise / fuse_overpasses), cuts
`windows_per_task` windows of the model's L x L at positions drawn from (seed, task key), so a
rerun cuts the same windows, and writes them into its own chunks, then its completion record. A
rerun skips recorded tasks and redoes the rest (a task killed mid-write has no record); once
every task is recorded the set gets its normalisation statistics and fingerprint and is marked
finished. The format, its writing and its reader: trainset_read.py, docs/training-set.md.
"""

from __future__ import annotations

import hashlib
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from dask.base import compute
from distributed import Client, Future, WorkerPlugin, as_completed, get_worker
from odc.geo.geobox import GeoBox
from tqdm import tqdm

from aef_pipeline import __version__
from aef_pipeline import sentinel2 as s2
from aef_pipeline.environment import TaskEnvironment, applied
from aef_pipeline.errors import AefError, AefWarning, StorageFullError, TileUnreadableError, UserInputError
from aef_pipeline.grid import BBox
from aef_pipeline.load import load_selection, report_read_failures
from aef_pipeline.lock import store_lock
from aef_pipeline.model import ModelSpec, load_spec
from aef_pipeline.plan import Period, TileTask, plan_tasks
from aef_pipeline.preprocess import MaskPolicy, fuse_overpasses, harmonise
from aef_pipeline.region import Region
from aef_pipeline.report import TaskResult, TaskStatus
from aef_pipeline.run import TaskFailedWarning, out_of_space
from aef_pipeline.search import CatalogConfig, SceneSelection, SceneSource, open_source, search_tile
from aef_pipeline.training import trainset_read as fmt
from aef_pipeline.training.trainset_read import TrainingSet, TrainingWindow, WindowCut, open_training_set

# Rows of a lazy read block: windows are sparse, so blocks are small (a window touches one or two)
# and even, so the 20 m bands stay on their own lattice (load.py).
READ_ROWS = 128
# Pixels harmonised at once (cut_windows): 32 windows of `tiny`, 2 of `paper`; a few hundred MB
# per 100 products.
STRIP_PIXELS = 2 * 128 * 128
# Only nodata is masked: the stored DN keeps cloudy observations (a model may be fed them); the
# default MaskPolicy gives the separate `clear` mask.
OBSERVED = MaskPolicy(frozenset({s2.SCL_NODATA}))


class FramesCappedWarning(AefWarning):
    """Windows had more frames than `max_frames`: an evenly spaced subset of each was kept."""


@dataclass(frozen=True)
class TrainingSetRequest:
    """Everything one `train-set` build needs; the only input of `build_training_set`."""

    bbox: BBox
    """The area, or the bounds of `region` when there is one."""
    periods: tuple[Period, ...]
    """Each task's period is the support period of its windows."""
    output: Path
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    model: str = "tiny"
    """The spec whose bands, window size and core (task windows) the set is cut for."""
    windows_per_task: int = 16
    """Windows cut per (tile window, period); fewer when the task's area has fewer positions."""
    max_frames: int = 64
    """Frames kept per window at most: longer series keep an evenly spaced subset (and warn)."""
    seed: int = 0
    """With the task key, decides where windows sit: the same seed cuts the same windows."""
    max_cloud_cover: float | None = None
    overwrite: bool = False
    """Replace whatever `output` holds (else only a set of the same request is resumed)."""
    environment: TaskEnvironment = field(default_factory=TaskEnvironment)
    region: Region | None = None
    """An area of any shape (region.py): only the tiles it meets are planned, not all of `bbox`."""

    def __post_init__(self) -> None:
        if self.region is not None and self.bbox != self.region.bbox:
            raise ValueError("a TrainingSetRequest with a region needs bbox=region.bbox")
        for name, value in (("--windows", self.windows_per_task), ("--max-frames", self.max_frames)):
            if value < 1:
                raise UserInputError(f"{name} {value} is not a count: give 1 or more")
        if self.seed < 0:
            raise UserInputError(f"--seed {self.seed} is negative: give 0 or more")

    @property
    def area(self) -> BBox | Region:
        """What is planned: the region when there is one, else the bbox."""
        return self.bbox if self.region is None else self.region

    def for_tasks(self) -> TrainingSetRequest:
        """The request as jobs receive it: without the region (see RunRequest.for_tasks)."""
        return replace(self, region=None)

    def describe(self) -> dict[str, Any]:
        """What the set records of its request, and what a resumed build must match (a region by
        its file name and sha256)."""
        region = {} if self.region is None else {"region": self.region.describe()}
        return {
            "bbox": asdict(self.bbox),
            **region,
            "periods": [p.label for p in self.periods],
            "catalog": self.catalog.url,
            "collections": list(self.catalog.collections),
            "max_cloud_cover": self.max_cloud_cover,
            "windows_per_task": self.windows_per_task,
            "max_frames": self.max_frames,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class TrainJob:
    """One task and its place in the set: it owns windows [index * per_task, (index + 1) * per_task)."""

    index: int
    task: TileTask


@dataclass
class TrainingSetReport:
    """What a build did (`tasks`: this build's) and what the set holds (every build's)."""

    output: Path
    planned: int
    tasks: list[TaskResult] = field(default_factory=list)
    windows: int = 0
    """Non-empty windows in the set."""
    frames: int = 0
    capped_frames: int = 0
    """Frames left out by max_frames, over the whole set."""
    finished: bool = False
    fingerprint: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> list[TaskResult]:
        return [task for task in self.tasks if task.status == TaskStatus.FAILED]

    def summary(self) -> str:
        count = {status: sum(t.status == status for t in self.tasks) for status in TaskStatus}
        state = f"finished, fingerprint {self.fingerprint[:12]}" if self.finished else "NOT finished: rerun"
        return "\n".join(
            [
                f"{count[TaskStatus.DONE]} tasks done, {count[TaskStatus.EMPTY]} without scenes, "
                f"{count[TaskStatus.SKIPPED]} already complete, {count[TaskStatus.FAILED]} failed (of "
                f"{self.planned}); {self.windows} windows, {self.frames} frames, {self.capped_frames} frames "
                f"over --max-frames left out; {self.seconds:.1f} s; {state}",
                *(f"  failed {t.tile} {t.period}: {t.error}" for t in self.failed),
            ]
        )


@dataclass
class SourceCache:
    """The catalogs a process has opened, each on first use, then kept (opening one costs requests,
    and a static catalog is walked whole)."""

    sources: dict[CatalogConfig, SceneSource] = field(default_factory=dict)

    def source(self, catalog: CatalogConfig) -> SceneSource:
        if catalog not in self.sources:
            self.sources[catalog] = open_source(catalog)
        return self.sources[catalog]


Submit = Callable[[list[TrainJob], TrainingSetRequest], Generator[TaskResult, None, None]]
"""Runs jobs somewhere and yields their results as they finish (default: in_process())."""


def build_training_set(request: TrainingSetRequest, submit: Submit | None = None) -> TrainingSetReport:
    """Plan, write the template (or check the set being resumed), run every unrecorded task
    through `submit` (default: in this process; cluster_submitter on dask), and finish the set
    once every task is recorded. A failed task leaves the set unfinished: rerun to retry it."""
    started = time.perf_counter()
    spec = load_spec(request.model)
    tasks = plan_tasks(request.area, request.periods, spec.core)
    report = TrainingSetReport(request.output, len(tasks))
    sources = SourceCache()
    with applied(request.environment):
        sources.source(request.catalog)  # a wrong URL or collection is refused before anything is written
    with store_lock(request.output):
        prepare(request, spec, tasks)
        recorded = [fmt.task_recorded(request.output, i) for i in range(len(tasks))]
        report.tasks += [TaskResult.of(t, TaskStatus.SKIPPED) for t, done in zip(tasks, recorded, strict=True) if done]
        jobs = [TrainJob(i, task) for i, task in enumerate(tasks) if not recorded[i]]
        collect((submit or in_process(sources))(jobs, request.for_tasks()), report)
        finish(request.output, report)
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def in_process(sources: SourceCache | None = None) -> Submit:
    """The default submitter: every job in turn, in this process, with the catalogs of `sources`."""
    cache = sources or SourceCache()

    def submit(jobs: list[TrainJob], request: TrainingSetRequest) -> Generator[TaskResult, None, None]:
        for job in jobs:
            yield attempt_job(job, request, cache)

    return submit


def collect(results: Generator[TaskResult, None, None], report: TrainingSetReport) -> None:
    """Add each result to the report as it arrives (a progress bar on a terminal); stop at a full disk."""
    with closing(results), tqdm(total=report.planned - len(report.tasks), unit="task", disable=None) as bar:
        for result in results:
            report.tasks.append(result)
            bar.update(1)
            if result.out_of_space:
                raise StorageFullError(
                    f"no space left on the device of {report.output} ({result.error}): free some space, then "
                    "rerun the same command to resume (recorded tasks are complete and kept)"
                )
            if result.status == TaskStatus.FAILED:
                warnings.warn(f"{result.tile} {result.period} failed: {result.error}", TaskFailedWarning, 2)


def attempt_job(job: TrainJob, request: TrainingSetRequest, sources: SourceCache) -> TaskResult:
    """process_job, with an expected failure (the package's errors, an OSError) recorded for the
    report instead of ending the build; anything else is a bug, recorded with its traceback."""
    try:
        return process_job(job, request, sources)
    except (AefError, OSError) as error:
        last = traceback.extract_tb(error.__traceback__)[-1]
        message = f"{type(error).__name__}: {error} (at {Path(last.filename).name}:{last.lineno})"
        return TaskResult.of(job.task, TaskStatus.FAILED, error=message, out_of_space=out_of_space(error))
    except Exception as error:
        trace = traceback.format_exc()
        print(f"aef-pipeline: bug in task {job.task.key}:\n{trace}", file=sys.stderr)
        message = f"bug: {type(error).__name__}: {error}"
        return TaskResult.of(job.task, TaskStatus.FAILED, error=message, traceback=trace)


def process_job(job: TrainJob, request: TrainingSetRequest, sources: SourceCache) -> TaskResult:
    """One task start to finish, in the request's environment: search, load, cut, write, record."""
    task, result = job.task, TaskResult.of(job.task)
    if fmt.task_recorded(request.output, job.index):
        result.status = TaskStatus.SKIPPED
        return result
    spec = load_spec(request.model)
    area = task.geobox().pad(spec.context)  # a window's core may then sit anywhere in the task's window
    shape = (area.shape.y, area.shape.x)
    positions = window_positions(shape, spec.window, request.windows_per_task, request.seed, task.key)
    with applied(request.environment):
        with result.timed("search"):
            source = sources.source(request.catalog)  # opened in the task's environment (its warning filters)
            selection = search_tile(source, area, task.period, spec.bands, request.max_cloud_cover, tile=str(task.tile))
        result.scenes = [info.item_id for info in selection.scenes]
        result.dropped = [asdict(skip) for skip in selection.skipped]
        cuts = cut_task(selection, area, positions, spec, request, result)
    result.status = TaskStatus.EMPTY if selection.empty else TaskStatus.DONE
    with result.timed("write"):
        write_job(request.output, job, area, positions, cuts, result)
    return result


def window_positions(shape: tuple[int, int], size: int, count: int, seed: int, key: str) -> list[tuple[int, int]]:
    """(row, col) of the top-left pixels of `count` distinct `size` px windows inside `shape`
    (all positions when there are fewer), from a generator seeded by (seed, task key) alone."""
    rows, cols = shape[0] - size + 1, shape[1] - size + 1
    assert min(rows, cols) > 0, "a task's area holds at least one window"
    stream = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    drawn = np.random.default_rng([seed, stream]).choice(rows * cols, size=min(count, rows * cols), replace=False)
    return [(int(p) // cols, int(p) % cols) for p in drawn]


def cut_task(
    selection: SceneSelection,
    area: GeoBox,
    positions: list[tuple[int, int]],
    spec: ModelSpec,
    request: TrainingSetRequest,
    result: TaskResult,
) -> list[WindowCut]:
    """The task's windows, one per position. Only the row blocks holding a window are read, each
    once for all of them (one compute). A task none of whose reads succeeded raises
    TileUnreadableError: nothing is recorded, and a rerun retries it."""
    if selection.empty:
        return []
    with report_read_failures() as failures, result.timed("load"):
        loaded = load_selection(
            selection, area, spec.bands, request.environment.gdal, READ_ROWS, reader=request.environment.reader
        )
        size = spec.window
        pieces = [loaded.isel(y=slice(r, r + size), x=slice(c, c + size)) for r, c in positions]
        # One compute for all windows: a row block several windows share is read once. (Not one
        # concatenated Dataset: xr.concat multiplied the graph 50-fold, and dask's overhead with it.)
        computed: tuple[xr.Dataset, ...] = compute(*pieces)  # type: ignore[no-untyped-call]
        cuts = cut_windows(list(computed), selection, spec.bands, request.max_frames)
    result.read_failures = list(failures)
    if result.read_failures and not any(cut.t_ms.size for cut in cuts):
        raise TileUnreadableError(
            f"nothing of the training windows of {area.extent.boundingbox} could be read ({len(failures)} "
            f"unreadable assets, e.g. {failures[0]}): nothing recorded; rerun to retry"
        )
    return cuts


@dataclass(frozen=True)
class Frames:
    """The fused frames of a task, in time order."""

    t_ms: np.ndarray
    scene_ids: list[str]
    """The products fused into each frame, comma-separated."""


def cut_windows(
    pieces: list[xr.Dataset], selection: SceneSelection, bands: tuple[str, ...], max_frames: int
) -> list[WindowCut]:
    """The loaded windows, harmonised and fused in strips of windows laid side by side along x:
    both are per-pixel operations, so each window gets exactly what it would alone, while xarray's
    overhead per call (a few ms per overpass: a second per window for a year of products) is paid
    once per strip. A strip holds at most STRIP_PIXELS pixels, which bounds its memory."""
    size = pieces[0].sizes["x"] if pieces else 0
    per_strip = max(1, STRIP_PIXELS // max(1, size * size))
    cuts: list[WindowCut] = []
    for start in range(0, len(pieces), per_strip):
        windows = [
            piece.drop_vars(["y", "x", "spatial_ref"], errors="ignore") for piece in pieces[start : start + per_strip]
        ]
        cuts += cut_strip(xr.concat(windows, dim="x"), selection, bands, max_frames, size)
    return cuts


def cut_strip(
    strip: xr.Dataset, selection: SceneSelection, bands: tuple[str, ...], max_frames: int, size: int
) -> list[WindowCut]:
    """Each window of the strip, its overpasses fused as `run` fuses them: where a product saw the
    pixel clear, the first such product; else the first that saw it (its cloudy observation)."""
    scenes, acquisitions = selection.scenes, [scene.acquisition for scene in selection.scenes]
    seen, observed = fuse_overpasses(*harmonise(strip, scenes, bands, OBSERVED), acquisitions)
    clear_values, clear = fuse_overpasses(*harmonise(strip, scenes, bands, MaskPolicy()), acquisitions)
    observed_np, clear_np = np.asarray(observed.values, bool), np.asarray(clear.values, bool)
    reflectance = np.where(clear_np[:, None], clear_values.values, seen.values)
    products: dict[str, list[str]] = {}
    for info in scenes:
        products.setdefault(info.acquisition, []).append(info.item_id)
    frames = Frames(
        t_ms=observed.time.values.astype("datetime64[ms]").astype(np.int64),
        scene_ids=[",".join(products[str(a)]) for a in observed.acquisition.values],
    )
    columns = (slice(x, x + size) for x in range(0, strip.sizes["x"], size))
    return [window_cut(reflectance[..., c], observed_np[..., c], clear_np[..., c], frames, max_frames) for c in columns]


def window_cut(
    reflectance: np.ndarray, observed: np.ndarray, clear: np.ndarray, frames: Frames, max_frames: int
) -> WindowCut:
    """One window: its frames with an observed pixel (at most max_frames of them)."""
    seen = np.flatnonzero(observed.any(axis=(1, 2)))
    kept = evenly_spaced(seen, max_frames)
    return WindowCut(
        dn=harmonised_dn(reflectance[kept], observed[kept]),
        clear=clear[kept],
        t_ms=frames.t_ms[kept],
        scene_ids=[frames.scene_ids[i] for i in kept],
        capped=int(seen.size - kept.size),
    )


def evenly_spaced(frames: np.ndarray, limit: int) -> np.ndarray:
    """`frames` when there are at most `limit`, else `limit` of them evenly spread over the series
    (first and last included), so that the subset still spans the whole support period."""
    if frames.size <= limit:
        return frames
    chosen: np.ndarray = frames[np.round(np.linspace(0, frames.size - 1, limit)).astype(int)]
    return chosen


def harmonised_dn(reflectance: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """round(reflectance * 10000) as uint16 where observed, and at least 1 there, so that 0 always
    means unobserved (a harmonised DN <= 0 is an overshoot of the BOA offset; the shipped specs'
    normalisation clips log1p of 0 and of 1 alike to -6 sigma); 0 elsewhere."""
    dn = np.clip(np.rint(np.nan_to_num(reflectance, nan=0.0) * s2.QUANTIFICATION), 1, 65535)
    return np.where(observed[:, None], dn, 0).astype(np.uint16)


# --- into the store ------------------------------------------------------------------------------


def prepare(request: TrainingSetRequest, spec: ModelSpec, tasks: list[TileTask]) -> None:
    """A new set's template, or the set being resumed once it is known to come from this request;
    anything else at `output` is refused (unless `overwrite`) before anything is written."""
    attrs = fmt.new_set_attrs(spec.bands, spec.window, spec.name, request.describe(), len(tasks))
    per_task, frames = request.windows_per_task, request.max_frames
    layout = fmt.array_layout(len(tasks), per_task, frames, len(spec.bands), spec.window)
    fmt.open_for_writing(request.output, attrs, layout, [task.key for task in tasks], request.overwrite)


def write_job(
    path: Path, job: TrainJob, area: GeoBox, positions: list[tuple[int, int]], cuts: list[WindowCut], result: TaskResult
) -> None:
    """Every slot of the task's range (empty ones too: they replace what a killed attempt left),
    its band sums, then its record."""
    window_shape, per_task = fmt.open_array(path, "dn").shape[1:], fmt.open_array(path, "n_frames").chunks[0]
    size, period = window_shape[-1], job.task.period
    place = fmt.TaskPlace(
        transforms=[tuple(area[r : r + size, c : c + size].affine)[:6] for r, c in positions],
        period_ms=(round(period.start.timestamp() * 1000), round(period.end.timestamp() * 1000)),
        crs=str(area.crs),
        tile=str(job.task.tile),
    )
    record = {
        "key": job.task.key,
        "windows": sum(cut.t_ms.size > 0 for cut in cuts),
        "capped_frames": sum(cut.capped for cut in cuts),
        "scenes": result.scenes,
        "dropped": result.dropped,
        "read_failures": result.read_failures,
        "software": f"aef-pipeline {__version__}",
    }
    blocks = fmt.task_blocks(cuts, place, per_task, window_shape)
    fmt.write_task(path, job.index, blocks, fmt.band_sums(cuts, window_shape[1]), record)


def finish(path: Path, report: TrainingSetReport) -> None:
    """Count what the set holds; once every task is recorded, finish it (normalisation,
    fingerprint, the mark). Warns when this build's windows left frames out over max_frames."""
    records = fmt.records(path)
    frames = fmt.read(path, "n_frames")
    report.windows, report.frames = int((frames > 0).sum()), int(frames.sum())
    report.capped_frames = sum(record["capped_frames"] for record in records if record)
    this_build = {t.key for t in report.tasks if t.status in (TaskStatus.DONE, TaskStatus.EMPTY)}
    capped = sum(record["capped_frames"] for record in records if record and record["key"] in this_build)
    if capped:
        warnings.warn(
            f"{capped} frames of windows holding more than --max-frames were left out (an evenly spaced "
            "subset of each series kept): raise --max-frames to keep them",
            FramesCappedWarning,
            3,
        )
    if all(records):
        report.fingerprint, report.finished = fmt.finish_set(path, report.windows), True


# --- dask ----------------------------------------------------------------------------------------

PLUGIN_NAME = "aef-train-sources"


class SourcePlugin(WorkerPlugin):
    """The catalogs a worker's tasks open, kept for all of them (as cluster.ModelPlugin keeps run's)."""

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self.sources = SourceCache()


def cluster_submitter(client: Client, max_in_flight: int | None = None) -> Submit:
    """One future per job with an explicit key (a job writes: it is not pure), at most
    `max_in_flight` at a time (default: two per worker), results as they complete; closing the
    generator early (the build stopped) cancels what is still queued."""
    workers = client.scheduler_info().get("workers", {})
    limit = max_in_flight or 2 * max(1, len(workers))

    def submit(jobs: list[TrainJob], request: TrainingSetRequest) -> Generator[TaskResult, None, None]:
        client.register_plugin(SourcePlugin())
        pending = list(reversed(jobs))
        in_flight = {_submit(client, pending.pop(), request) for _ in range(min(limit, len(pending)))}
        running = as_completed(in_flight)  # type: ignore[no-untyped-call]
        try:
            for future in running:
                in_flight.discard(future)
                if pending:
                    following = _submit(client, pending.pop(), request)
                    in_flight.add(following)
                    running.add(following)  # type: ignore[no-untyped-call]
                yield future.result()
        finally:
            client.cancel(list(in_flight))  # type: ignore[no-untyped-call]

    return submit


def _submit(client: Client, job: TrainJob, request: TrainingSetRequest) -> Future[TaskResult]:
    return client.submit(_on_worker, job, request, key=f"aef-train-{job.task.key}", pure=False)


def _on_worker(job: TrainJob, request: TrainingSetRequest) -> TaskResult:
    plugin = get_worker().plugins[PLUGIN_NAME]
    assert isinstance(plugin, SourcePlugin), "cluster_submitter registers SourcePlugin on every worker"
    return attempt_job(job, request, plugin.sources)


__all__ = [
    "FramesCappedWarning",
    "TrainingSet",
    "TrainingSetReport",
    "TrainingSetRequest",
    "TrainingWindow",
    "build_training_set",
    "cluster_submitter",
    "open_training_set",
]
