"""Stage 1, pure: what a request needs. Periods, the (tile window, period) tasks on the global grid,
and a printable `Plan` of their cost (`aef-pipeline plan`). No network and no pixels: the scenes a
plan counts are found by the caller (run.dry_run) and handed in.

    tasks = plan_tasks(BBox(15.0, 46.1, 15.3, 46.3), (Period.year(2022),), spec.core)
    tasks = plan_tasks(read_region(Path("areas.gpkg")), (Period.year(2022),), spec.core)

Each task covers the part of one tile the area needs, rounded out to whole window cores (a 1 km^2
request computes a few windows, not a 20 km tile), so windows, and therefore embeddings, do not
depend on the area. A bbox plans every tile it touches; a Region (region.py) only the tiles its
polygons meet, each window the bounding box of the region's part of the tile.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from odc.geo.geobox import GeoBox
from odc.geo.geom import box

from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import DENSIFY_DEGREES, RESOLUTION_M, TILE_M, TILE_PIXELS, BBox, TileId, tiles_for_bbox
from aef_pipeline.region import Region, ZoneCover, zone_covers

# The years the product covers (annual layers, as the published embeddings).
PRODUCT_YEARS = (2017, 2024)
# Throughputs for a plan's time estimate: what the 2-core build machine achieved with `paper`
# (docs/performance.md), and 40 % of an H100's bf16 dense peak (the encoder's target).
CPU_FLOPS = 8e10
GPU_FLOPS = 4e14


@dataclass(frozen=True, order=True)
class Period:
    """A half-open UTC interval [start, end): the valid period of one embedding layer."""

    start: dt.datetime
    """First instant included (timezone-aware UTC)."""
    end: dt.datetime
    """First instant excluded."""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("Period bounds must be timezone-aware (UTC)")
        if self.end <= self.start:
            raise UserInputError(f"period {self.start:%Y-%m-%d}..{self.end:%Y-%m-%d} is empty: end must follow start")

    @classmethod
    def year(cls, year: int) -> Period:
        """The calendar year, as the published annual layers use."""
        return cls(dt.datetime(year, 1, 1, tzinfo=dt.UTC), dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC))

    @property
    def label(self) -> str:
        """ "2021" for a calendar year, else "2021-03-01_2021-06-01"."""
        if self == Period.year(self.start.year):
            return str(self.start.year)
        return f"{self.start:%Y-%m-%d}_{self.end:%Y-%m-%d}"

    def stac_interval(self) -> str:
        """The STAC `datetime` search parameter. STAC intervals are closed, so the end is the last
        millisecond inside the period (Sentinel-2 timestamps carry at most microseconds)."""
        last = self.end - dt.timedelta(milliseconds=1)
        return f"{_iso(self.start)}/{_iso(last)}"

    def contains(self, when: dt.datetime) -> bool:
        return self.start <= when < self.end


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_years(text: str, first: int, last: int) -> tuple[int, ...]:
    """ "2020" -> (2020,); "2017-2019" -> (2017, 2018, 2019); "2018,2020" -> (2018, 2020)."""
    years: list[int] = []
    for part in text.split(","):
        start, sep, end = part.strip().partition("-")
        try:
            span = range(int(start), int(end) + 1) if sep else range(int(start), int(start) + 1)
        except ValueError:
            raise UserInputError(
                f"--years {text!r} is not understood: write a year (2020), a range (2017-2024) or a list (2018,2020)"
            ) from None
        if not span:
            raise UserInputError(f"--years {part.strip()!r} is an inverted range: write the earlier year first")
        if span[0] < first or span[-1] > last:
            raise UserInputError(f"--years {text!r} is outside {first}-{last}: choose years in that range")
        years.extend(span)
    return tuple(sorted(set(years)))


def parse_periods(years: str | None, periods: list[str]) -> tuple[Period, ...]:
    """--years (2017-2024) and repeatable --period START/END (ISO dates, UTC) -> sorted periods."""
    found = [Period.year(y) for y in parse_years(years, *PRODUCT_YEARS)] if years else []
    for text in periods:
        start, sep, end = text.partition("/")
        try:
            if not sep:
                raise ValueError
            found.append(Period(_utc_date(start), _utc_date(end)))
        except ValueError:
            raise UserInputError(
                f"--period {text!r} is not understood: write START/END as ISO dates, e.g. 2021-03-01/2021-09-01"
            ) from None
    if not found:
        raise UserInputError("no period given: pass --years (e.g. 2017-2024) or --period START/END")
    return tuple(sorted(set(found)))


def period_from_text(text: str) -> Period:
    """A period as users and stores name it: a year ("2025", any year), a label
    ("2021-03-01_2021-06-01") or START/END ("2021-03-01/2021-06-01")."""
    text = text.strip()
    if text.isdigit() and len(text) == 4:
        return Period.year(int(text))
    return parse_periods(None, [text.replace("_", "/") if "/" not in text else text])[0]


def _utc_date(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text.strip())
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


Window = tuple[int, int, int, int]
"""(row0, row1, col0, col1) pixels within a tile."""


@dataclass(frozen=True, slots=True)
class TileTask:
    """One unit of work: the window of a tile that an area needs, for one period. (Slots: a global
    plan holds millions.)"""

    tile: TileId
    period: Period
    window: Window

    @property
    def key(self) -> str:
        """The dask key: explicit, because a task writes (it is not pure)."""
        r0, r1, c0, c1 = self.window
        return f"aef-{self.tile}-{self.period.label}-{r0}-{r1}-{c0}-{c1}"

    @property
    def pixels(self) -> int:
        r0, r1, c0, c1 = self.window
        return (r1 - r0) * (c1 - c0)

    def geobox(self) -> GeoBox:
        r0, r1, c0, c1 = self.window
        return self.tile.geobox[r0:r1, c0:c1]


def plan_tasks(area: BBox | Region, periods: tuple[Period, ...], core: int) -> list[TileTask]:
    """Every (tile window, period) the request needs, in a stable order (by tile, then period);
    `core` is the model's window core in pixels (windows are rounded out to whole cores)."""
    return [TileTask(tile, period, window) for tile, window in plan_windows(area, core) for period in periods]


def plan_windows(area: BBox | Region, core: int) -> list[tuple[TileId, Window]]:
    """Every tile the area needs, sorted, with its window (the same for every period)."""
    return region_windows(area, core) if isinstance(area, Region) else bbox_windows(area, core)


def bbox_windows(bbox: BBox, core: int) -> list[tuple[TileId, Window]]:
    """Every tile the bbox touches, sorted, with its task window."""
    return [(tile, window) for tile in tiles_for_bbox(bbox) if (window := task_window(tile, bbox, core)) is not None]


def region_windows(region: Region, core: int) -> list[tuple[TileId, Window]]:
    """Every tile the region meets, sorted, with the bounding box of the region's part of it
    rounded out to whole cores: what task_window gives a bbox with those bounds."""
    return [found for cover in zone_covers(region) for found in _cover_windows(cover, core)]


def _cover_windows(cover: ZoneCover, core: int) -> list[tuple[TileId, Window]]:
    """task_window's rounding (_core_window) on every tile of a zone at once."""
    left, bottom, right, top = cover.bounds.T
    x0, y0 = cover.cols * float(TILE_M), (cover.rows + 1) * float(TILE_M)  # each tile's top-left corner
    edges = _core_window(left, bottom, right, top, x0, y0, core)
    windows = zip(*(edge.tolist() for edge in edges), strict=True)
    tiles = [
        TileId(cover.zone, cover.hemisphere, c, r)
        for c, r in zip(cover.cols.tolist(), cover.rows.tolist(), strict=True)
    ]
    return list(zip(tiles, windows, strict=True))


def task_window(tile: TileId, bbox: BBox, core: int) -> Window | None:
    """The pixels of `tile` inside the bbox, rounded out to whole window cores (so the windows,
    and therefore the embeddings, are the same whatever the bbox); None if it misses the tile."""
    windows = [window for west, east in bbox.spans() if (window := _span_window(tile, bbox, west, east, core))]
    if not windows:
        return None
    rows0, rows1, cols0, cols1 = zip(*windows, strict=True)
    return min(rows0), max(rows1), min(cols0), max(cols1)


def _span_window(tile: TileId, bbox: BBox, west: float, east: float, core: int) -> Window | None:
    geobox = tile.geobox
    area = box(west, bbox.south, east, bbox.north, crs="EPSG:4326")
    projected = area.to_crs(tile.epsg, resolution=DENSIFY_DEGREES).intersection(geobox.extent)
    if projected.is_empty:
        return None
    left, bottom, right, top = projected.boundingbox
    r0, r1, c0, c1 = _core_window(left, bottom, right, top, geobox.affine.c, geobox.affine.f, core)
    return int(r0), int(r1), int(c0), int(c1)


Metres = float | NDArray[np.floating[Any]]


def _core_window(
    left: Metres, bottom: Metres, right: Metres, top: Metres, x0: Metres, y0: Metres, core: int
) -> tuple[NDArray[np.int64], ...]:
    """(row0, row1, col0, col1) of bounds in a tile whose top-left corner is (x0, y0), in metres,
    rounded out to whole cores and kept within the tile: for one tile (task_window) or, as arrays,
    for every tile of a zone at once (region_windows)."""
    return (
        _rounded((y0 - top) / RESOLUTION_M, core, np.floor),
        _rounded((y0 - bottom) / RESOLUTION_M, core, np.ceil),
        _rounded((left - x0) / RESOLUTION_M, core, np.floor),
        _rounded((right - x0) / RESOLUTION_M, core, np.ceil),
    )


def _rounded(pixels: Metres, core: int, direction: Callable[[Any], Any]) -> NDArray[np.int64]:
    """`pixels` rounded to a multiple of `core` (down or up), within 0..TILE_PIXELS."""
    return np.clip(np.asarray(direction(np.asarray(pixels) / core)).astype(np.int64) * core, 0, TILE_PIXELS)


@dataclass(frozen=True)
class TaskCost:
    """What one task will read and compute."""

    task: TileTask
    scenes: int
    """Products the search kept (each read as one frame)."""
    dropped: int
    """Products the search dropped (duplicates, unreadable metadata, cloud cover)."""
    read_bytes: int
    """uint16 bands and the uint8 SCL of every product, on the window plus its halo."""
    flops: int
    """Encoder FLOPs with every product as a frame: an upper bound (fused and empty frames drop)."""


def task_cost(
    task: TileTask, scenes: int, dropped: int, halo: int, bands: int, window_flops: int, core: int
) -> TaskCost:
    """The cost of `task` given what its search found; `window_flops` is one window's FLOPs with
    `scenes` frames (model.flops.flops_per_window)."""
    rows, cols = task.geobox().pad(halo).shape
    read = scenes * rows * cols * (2 * bands + 1)
    return TaskCost(task, scenes, dropped, read, window_flops * task.pixels // core**2)


@dataclass(frozen=True)
class Plan:
    """A dry run's answer: every task with its cost, and the totals a user decides on."""

    costs: tuple[TaskCost, ...]
    model: str
    storage: str
    """"int8", "float16" or "float32": sets the bytes written per pixel."""
    output_dim: int = 64

    @property
    def pixels(self) -> int:
        return sum(cost.task.pixels for cost in self.costs)

    @property
    def read_bytes(self) -> int:
        return sum(cost.read_bytes for cost in self.costs)

    @property
    def flops(self) -> int:
        return sum(cost.flops for cost in self.costs)

    @property
    def store_bytes(self) -> int:
        return store_bytes(self.pixels, self.storage, self.output_dim)

    def lines(self) -> list[str]:
        """The plan as `aef-pipeline plan` prints it: one line per task, then the totals."""
        per_task = [
            f"{c.task.tile} {c.task.period.label} window {c.task.window}: {c.task.pixels:,} px, "
            f"{c.scenes} scenes ({c.dropped} dropped), ~{c.read_bytes / 1e6:.0f} MB to read"
            for c in self.costs
        ]
        return [
            *per_task,
            f"{len(self.costs)} tasks, {self.pixels:,} px, ~{self.read_bytes / 1e9:.2f} GB to read, "
            f"~{self.store_bytes / 1e9:.2f} GB to write ({self.storage}), model {self.model}",
            f"encoding: at most {self.flops:.2e} FLOP, ~{_duration(self.flops / CPU_FLOPS)} on a CPU at "
            f"{CPU_FLOPS / 1e9:.0f} GFLOP/s, ~{_duration(self.flops / GPU_FLOPS)} on a GPU at "
            f"{GPU_FLOPS / 1e12:.0f} TFLOP/s (docs/performance.md)",
        ]


@dataclass(frozen=True)
class PlanCounts:
    """A plan without a search (`aef-pipeline plan --no-search`): what the tasks cover and will
    write. What they read and compute depends on the scenes, which are not looked for."""

    tasks: int
    tiles: int
    zones: int
    """UTM zones and hemispheres (store groups hold a zone each; a hemisphere is part of it)."""
    pixels: int
    model: str
    storage: str
    output_dim: int = 64

    @classmethod
    def of(
        cls, windows: list[tuple[TileId, Window]], periods: int, model: str, storage: str, output_dim: int = 64
    ) -> PlanCounts:
        """The counts of plan_windows' `windows`, each planned for `periods` periods."""
        zones = len({(tile.zone, tile.hemisphere) for tile, _ in windows})
        pixels = sum((r1 - r0) * (c1 - c0) for _, (r0, r1, c0, c1) in windows)
        return cls(len(windows) * periods, len(windows), zones, pixels * periods, model, storage, output_dim)

    @property
    def store_bytes(self) -> int:
        return store_bytes(self.pixels, self.storage, self.output_dim)

    def lines(self) -> list[str]:
        return [
            f"{self.tasks:,} tasks ({self.tiles:,} tile windows in {self.zones} UTM zones/hemispheres), "
            f"{self.pixels:,} px, ~{self.store_bytes / 1e9:,.2f} GB to write ({self.storage}), model {self.model}",
            "no catalog searched (--no-search): plan without it for the scenes, the bytes to read and encoding time",
        ]


def store_bytes(pixels: int, storage: str, output_dim: int) -> int:
    """The free space a run needs: the embedding at the storage's width plus the int16
    observation count per pixel, before compression (which barely shrinks embeddings)."""
    return pixels * (output_dim * np.dtype(storage).itemsize + 2)


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"
