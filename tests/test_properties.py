"""Property tests: task windows on the tile grid, the planned tasks, the encoder's window lattice
and its batches (pure arithmetic: the network runs only in the last test, on a few cubes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import xarray as xr
from hypothesis import example, given, settings
from hypothesis import strategies as st
from odc.geo.xr import xr_coords
from pyproj import Transformer

from aef_pipeline.encode import (
    EncodeOptions,
    _accumulate,
    _batches,
    _inner_shape,
    _Window,
    _window_rows,
    encode_cube,
    required_halo,
)
from aef_pipeline.grid import RESOLUTION_M, TILE_PIXELS, BBox, TileId, tiles_for_bbox, utm_zone
from aef_pipeline.model import ModelSpec, Provenance, STPEncoder, build_model, load_spec
from aef_pipeline.plan import Period, TileTask, Window, plan_tasks, task_window

TINY, PAPER = load_spec("tiny"), load_spec("paper")
CORES = (16, 32, 96)
TILE = TileId(33, "N", 26, 266)

# --- bboxes ---------------------------------------------------------------------------------------

plain_bboxes = st.tuples(
    st.floats(-179.5, 179.0), st.floats(-79.0, 83.0), st.floats(0.001, 0.5), st.floats(0.001, 0.5)
).map(lambda t: BBox(t[0], t[1], min(t[0] + t[2], 180.0), min(t[1] + t[3], 84.0)))
# Across the edge between zone k and k + 1 (the meridian -180 + 6 k).
zone_edge_bboxes = st.tuples(
    st.integers(1, 59), st.floats(-79.0, 83.0), st.floats(0.001, 0.3), st.floats(0.001, 0.3), st.floats(0.001, 0.5)
).map(lambda t: BBox(-180.0 + 6 * t[0] - t[2], t[1], -180.0 + 6 * t[0] + t[3], min(t[1] + t[4], 84.0)))
antimeridian_bboxes = st.tuples(
    st.floats(-79.0, 83.0), st.floats(0.001, 0.3), st.floats(0.001, 0.3), st.floats(0.001, 0.5)
).map(lambda t: BBox(180.0 - t[1], t[0], -180.0 + t[2], min(t[0] + t[3], 84.0), crosses_antimeridian=True))
bboxes = st.one_of(plain_bboxes, zone_edge_bboxes, antimeridian_bboxes)
cores = st.sampled_from(CORES)


@lru_cache(maxsize=256)
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


def _unwrapped(bbox: BBox) -> tuple[float, float]:
    """(west, east) with east > west: past 180 for a bbox across the antimeridian."""
    return bbox.west, bbox.east + (360.0 if bbox.crosses_antimeridian else 0.0)


def _wrap(lon: float) -> float:
    return lon - 360.0 if lon > 180.0 else lon


def _boundary_and_inside(bbox: BBox, n: int = 33) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat points along all four edges of the bbox (corners included) and on an inner grid."""
    west, east = _unwrapped(bbox)
    along = np.linspace(0.0, 1.0, n)
    u = np.concatenate([along, np.ones(n), along, np.zeros(n), np.repeat(along[1:-1:4], 8)])
    v = np.concatenate([np.zeros(n), along, np.ones(n), along, np.tile(along[1:-1:4], 8)])
    lons = west + u * (east - west)
    lons = np.where(lons > 180.0, lons - 360.0, lons)
    return lons, bbox.south + v * (bbox.north - bbox.south)


def _corners(bbox: BBox) -> tuple[np.ndarray, np.ndarray]:
    return np.array([bbox.west, bbox.east, bbox.east, bbox.west]), np.array([bbox.south] * 2 + [bbox.north] * 2)


def _uncovered(bbox: BBox, core: int, lons: np.ndarray, lats: np.ndarray) -> list[str]:
    """Points outside the task window of a planned tile of their own UTM zone and hemisphere that
    holds them. A point strictly inside a tile must be in its window; one on a tile's edge, in the
    window of one of the tiles that share that edge (pixel coordinates are fractional, windows closed)."""
    # A point on a zone's west edge (a multiple of 6 degrees) belongs to both zones, and one on the
    # equator to both hemispheres, as in grid.zone_parts.
    zones = np.array([utm_zone(float(lon)) for lon in lons])
    on_edge = ((lons + 180.0) % 6 == 0) & (np.abs(lons) < 180.0)
    west_zones = np.where(on_edge, zones - 1, zones)
    north = lats >= 0
    covered = np.zeros(lons.shape, bool)
    problems = []
    for tile in tiles_for_bbox(bbox):
        own = ((zones == tile.zone) | (west_zones == tile.zone)) & ((north == (tile.hemisphere == "N")) | (lats == 0))
        x, y = _to_utm(tile.epsg).transform(lons, lats)
        affine = tile.geobox.affine
        col, row = (x - affine.c) / RESOLUTION_M, (affine.f - y) / RESOLUTION_M
        r0, r1, c0, c1 = task_window(tile, bbox, core) or (0, 0, 0, 0)
        inside = own & (r0 <= row) & (row <= r1) & (c0 <= col) & (col <= c1) & (r0 < r1)
        covered |= inside
        strictly = own & (row > 0) & (row < TILE_PIXELS) & (col > 0) & (col < TILE_PIXELS)
        for i in np.flatnonzero(strictly & ~inside):
            problems.append(
                f"({lons[i]}, {lats[i]}) -> {tile} pixel row {row[i]:.2f} col {col[i]:.2f} "
                f"outside window {task_window(tile, bbox, core)}"
            )
    problems += [f"({lons[i]}, {lats[i]}) is in no task window of its zone" for i in np.flatnonzero(~covered)]
    return problems


def _union(windows: list[Window | None]) -> Window | None:
    found = [w for w in windows if w is not None]
    if not found:
        return None
    return min(w[0] for w in found), max(w[1] for w in found), min(w[2] for w in found), max(w[3] for w in found)


def _contains(outer: Window | None, inner: Window | None) -> bool:
    if inner is None:
        return True
    return (
        outer is not None
        and outer[0] <= inner[0]
        and inner[1] <= outer[1]
        and outer[2] <= inner[2]
        and inner[3] <= outer[3]
    )


# --- task_window ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(bbox=bboxes, core=cores)
def test_task_windows_are_whole_cores_inside_the_tile(bbox: BBox, core: int) -> None:
    tiles = tiles_for_bbox(bbox)
    assert tiles
    for tile in tiles:
        window = task_window(tile, bbox, core)
        if window is None:
            continue
        r0, r1, c0, c1 = window
        assert 0 <= r0 < r1 <= TILE_PIXELS, (str(tile), window)
        assert 0 <= c0 < c1 <= TILE_PIXELS, (str(tile), window)
        assert all(edge % core == 0 for edge in window), (str(tile), window)  # 1920 is a whole number of cores
        assert task_window(tile, bbox, core) == window  # pure


@settings(max_examples=30, deadline=None)
@given(bbox=bboxes, core=cores)
def test_task_windows_hold_the_bbox_corners(bbox: BBox, core: int) -> None:
    """The corners are vertices of the projected bbox, so its bounding box holds them exactly."""
    assert _uncovered(bbox, core, *_corners(bbox)) == []


# The next three tests found a real bug (fixed: grid.DENSIFY_DEGREES): the bbox was projected with
# `to_crs(..., resolution=RESOLUTION_M * 10)`, but odc-geo's `resolution` is in the source CRS's
# units, degrees, so nothing was densified: edges projected as straight chords between the corners
# and the bulge of the true parallels fell outside the window (0.5 px for a 0.5 degree bbox, 38 px
# for 2 x 1 degrees, 435 px for a zone-wide one), and tiles_for_bbox missed whole tiles along it
# (BBox(6.0, 46.1, 11.99999, 46.6): the row 32N_c017..c034_r0265). The @example rows are those
# counterexamples.


@settings(max_examples=30, deadline=None)
@given(bbox=bboxes, core=cores)
@example(bbox=BBox(-20.0, 20.0, -19.5, 20.5), core=16)
def test_task_windows_cover_every_pixel_the_bbox_touches(bbox: BBox, core: int) -> None:
    assert _uncovered(bbox, core, *_boundary_and_inside(bbox)) == []


margins = st.tuples(*[st.floats(0.0, 0.2)] * 4)


@settings(max_examples=30, deadline=None)
@given(bbox=bboxes, grow=margins, core=cores)
@example(bbox=BBox(179.75, 0.0, -179.999, 0.5, crosses_antimeridian=True), grow=(0.0, 0.0, 0.0, 0.125), core=16)
def test_growing_the_bbox_never_shrinks_a_window(
    bbox: BBox, grow: tuple[float, float, float, float], core: int
) -> None:
    west, east = _unwrapped(bbox)
    west, east = max(west - grow[0], -180.0), east + grow[2]
    east = east if bbox.crosses_antimeridian else min(east, 180.0)
    bigger = BBox(
        west, max(bbox.south - grow[1], -80.0), _wrap(east), min(bbox.north + grow[3], 84.0), bbox.crosses_antimeridian
    )
    bigger_tiles = tiles_for_bbox(bigger)
    for tile in tiles_for_bbox(bbox):
        assert tile in bigger_tiles, str(tile)
        small, large = task_window(tile, bbox, core), task_window(tile, bigger, core)
        assert _contains(large, small), (str(tile), small, large)


@settings(max_examples=30, deadline=None)
@given(bbox=bboxes, cut=st.floats(0.05, 0.95), core=cores)
@example(bbox=BBox(-20.0, 20.0, -19.5, 20.5), cut=0.5, core=16)
def test_the_halves_of_a_bbox_need_the_windows_of_the_whole(bbox: BBox, cut: float, core: int) -> None:
    west, east = _unwrapped(bbox)
    at = west + cut * (east - west)
    if at < 180.0 or not bbox.crosses_antimeridian:
        left = BBox(bbox.west, bbox.south, at, bbox.north)
        right = BBox(at, bbox.south, bbox.east, bbox.north, bbox.crosses_antimeridian)
    else:
        left = BBox(bbox.west, bbox.south, at - 360.0, bbox.north, crosses_antimeridian=True)
        right = BBox(at - 360.0, bbox.south, bbox.east, bbox.north)
    whole = tiles_for_bbox(bbox)
    assert sorted(set(tiles_for_bbox(left)) | set(tiles_for_bbox(right))) == whole
    for tile in whole:
        halves = _union([task_window(tile, left, core), task_window(tile, right, core)])
        assert halves == task_window(tile, bbox, core), str(tile)


# --- plan_tasks -----------------------------------------------------------------------------------

periods = st.lists(st.integers(2017, 2024), min_size=1, max_size=3, unique=True).map(
    lambda years: tuple(Period.year(y) for y in years)
)


@settings(max_examples=20, deadline=None)
@given(bbox=bboxes, periods=periods, core=cores)
def test_plan_tasks_are_unique_stable_and_use_task_window(bbox: BBox, periods: tuple[Period, ...], core: int) -> None:
    tasks = plan_tasks(bbox, periods, core)
    assert tasks == plan_tasks(bbox, periods, core)
    pairs = [(task.tile, task.period) for task in tasks]
    assert len(set(pairs)) == len(pairs)
    assert len({task.key for task in tasks}) == len(tasks)
    windows = {tile: task_window(tile, bbox, core) for tile in tiles_for_bbox(bbox)}
    expected = [TileTask(tile, period, w) for tile, w in windows.items() if w is not None for period in periods]
    assert tasks == expected  # tile-major in the grid's sorted order, periods in the order given
    assert all(task.window == windows[task.tile] and task.pixels > 0 for task in tasks)


# --- the encoder's window lattice -----------------------------------------------------------------


@st.composite
def specs(draw: st.DrawFn) -> ModelSpec:
    """The shipped specs, or another window geometry (only window and context matter here)."""
    if draw(st.booleans()):
        spec: ModelSpec = draw(st.sampled_from([TINY, PAPER]))
        return spec
    window = draw(st.sampled_from([32, 48, 64, 128]))
    context = draw(st.integers(0, window // 2 - 1))
    return dataclasses.replace(TINY, name="lattice", window=window, context=context)


def _lattice_cube(
    spec: ModelSpec,
    n_rows: int,
    n_cols: int,
    halo: int,
    offset: tuple[int, int],
    frames: int,
    fraction: float,
    seed: int,
) -> xr.Dataset:
    """A cube whose inner area is n_rows x n_cols cores of the global lattice, `offset` cores into
    TILE, padded by `halo` (as tests/test_encoder.py builds its cubes, but anywhere on the lattice)."""
    core, tile = spec.core, TILE.geobox
    # Rows count down from the tile's top edge: the inner area's top northing is a core multiple.
    row0 = round(tile.affine.f / RESOLUTION_M) % core + offset[0] * core
    col0 = -round(tile.affine.c / RESOLUTION_M) % core + offset[1] * core
    geobox = tile[row0 : row0 + n_rows * core, col0 : col0 + n_cols * core].pad(halo)
    rng = np.random.default_rng(seed)
    shape = (frames, len(spec.bands), *geobox.shape)
    reflectance = rng.uniform(0.01, 0.4, shape).astype(np.float32)
    valid = rng.random((frames, *geobox.shape)) < fraction
    reflectance[~np.broadcast_to(valid[:, None], shape)] = np.nan
    reflectance[:, rng.integers(len(spec.bands))][rng.random((frames, *geobox.shape)) < 0.05] = np.nan  # valid but NaN
    times = np.array([np.datetime64("2021-01-03T09:30:16.500") + np.timedelta64(40 * i, "D") for i in range(frames)])
    coords = {"time": times, "band": list(spec.bands), **xr_coords(geobox)}
    return xr.Dataset(
        {"reflectance": (("time", "band", "y", "x"), reflectance), "valid": (("time", "y", "x"), valid)}, coords=coords
    )


@settings(max_examples=30, deadline=None)
@given(
    spec=specs(),
    n_rows=st.integers(1, 4),
    n_cols=st.integers(1, 4),
    offset=st.tuples(st.integers(0, 8), st.integers(0, 8)),
    overlap=st.booleans(),
    frames=st.integers(1, 3),
    fraction=st.one_of(st.just(1.0), st.floats(0.0, 1.0)),
    read_rows=st.integers(1, 300),
    seed=st.integers(0, 2**16),
)
def test_window_cores_tile_the_inner_area_on_the_global_lattice(
    spec: ModelSpec,
    n_rows: int,
    n_cols: int,
    offset: tuple[int, int],
    overlap: bool,
    frames: int,
    fraction: float,
    read_rows: int,
    seed: int,
) -> None:
    core, context, window = spec.core, spec.context, spec.window
    halo = required_halo(spec, overlap)
    cube = _lattice_cube(spec, n_rows, n_cols, halo, offset, frames, fraction, seed)
    height, width = _inner_shape(cube, spec, halo)  # accepted as whole cores of the global grid
    assert (height, width) == (n_rows * core, n_cols * core)
    stride = core // 2 if overlap else core
    observations = np.zeros((cube.sizes["y"], cube.sizes["x"]), np.int16)
    options = EncodeOptions(read_rows=read_rows, read_ahead=seed % 3)  # read ahead by 0, 1 or 2 blocks
    rows = list(_window_rows(cube, spec, stride, (height, width), options, observations))

    reflectance = cube.reflectance.values
    valid = cube.valid.values & np.isfinite(reflectance).all(axis=1)
    assert (observations == valid.sum(axis=0)).all()
    per_axis = (n_rows if not overlap else 2 * n_rows + 1, n_cols if not overlap else 2 * n_cols + 1)
    assert len(rows) == per_axis[0]  # each window row once, whatever read_rows
    windows = []
    for i, ((row_reflectance, row_valid), row_windows) in enumerate(rows):
        top = i * stride
        np.testing.assert_array_equal(row_reflectance, reflectance[:, :, top : top + window])
        np.testing.assert_array_equal(row_valid, valid[:, top : top + window])
        assert all(w.row == top for w in row_windows)
        windows += row_windows

    # Exactly the windows with a valid pixel, each with exactly the frames that have one.
    expected = {}
    for top in range(0, per_axis[0] * stride, stride):
        for left in range(0, per_axis[1] * stride, stride):
            frames_here = np.flatnonzero(valid[:, top : top + window, left : left + window].any(axis=(1, 2)))
            if frames_here.size:
                expected[top, left] = frames_here.tolist()
    assert {(w.row, w.col): w.frames.tolist() for w in windows} == expected
    assert len(windows) == len(expected)
    assert all(w.row + window <= cube.sizes["y"] and w.col + window <= cube.sizes["x"] for w in windows)

    # Global core origins (easting and northing pixel index of a core's top-left corner): multiples
    # of the core from the grid's origin, of half a core with overlap, whatever the cube.
    north, east = round(cube.odc.geobox.affine.f / RESOLUTION_M), round(cube.odc.geobox.affine.c / RESOLUTION_M)
    for w in windows:
        assert (east + w.col + context) % stride == 0, (w.row, w.col)
        assert (north - w.row - context) % stride == 0, (w.row, w.col)

    if len(windows) == per_axis[0] * per_axis[1]:
        # Every window present: cores cover each inner pixel once (four times with overlap, where a
        # core may reach half a core past the inner area), and the blending weights sum to one.
        count = np.zeros((height + 2 * core, width + 2 * core), int)
        for w in windows:
            top, left = w.row + context - halo + core, w.col + context - halo + core
            count[top : top + core, left : left + core] += 1
        inner = count[core : core + height, core : core + width]
        assert (inner == (4 if overlap else 1)).all()
        assert count.sum() == len(windows) * core * core
        reach = core // 2 if overlap else 0
        assert count[: core - reach].sum() == count[core + height + reach :].sum() == 0
        assert count[:, : core - reach].sum() == count[:, core + width + reach :].sum() == 0
        total = np.zeros((1, height, width), np.float32)
        _accumulate(total, np.ones((len(windows), 1, window, window), np.float32), windows, spec, halo, overlap)
        np.testing.assert_allclose(total[0], 1.0, atol=1e-5)


# --- batches --------------------------------------------------------------------------------------

options = st.builds(
    EncodeOptions,
    device=st.just("cpu"),
    batch_size=st.integers(1, 8),
    frame_bucket=st.integers(1, 8),
    frames_per_batch=st.integers(1, 256),
)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 150), max_size=40), options=options)
def test_batches_hold_every_window_once_in_shapes_fixed_per_bucket(counts: list[int], options: EncodeOptions) -> None:
    windows = [_Window(0, i, np.arange(n)) for i, n in enumerate(counts)]
    batches = list(_batches(windows, options))
    placed = [w.col for batch in batches for w in batch.windows]
    assert sorted(placed) == list(range(len(windows)))  # each window exactly once
    shapes: dict[int, int] = {}
    for batch in batches:
        assert shapes.setdefault(batch.frames, batch.size) == batch.size  # the size depends only on the frames
        assert 1 <= len(batch.windows) <= batch.size <= options.batch_size
        assert batch.frames % options.frame_bucket == 0
        assert batch.size * batch.frames <= options.frames_per_batch or batch.size == 1
        for w in batch.windows:
            assert batch.frames - options.frame_bucket < w.frames.size <= batch.frames
    for frames in shapes:
        order = [w.col for b in batches if b.frames == frames for w in b.windows]
        assert order == sorted(order)  # windows keep their order within a bucket


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 150), max_size=40), options=options)
def test_batches_hold_few_windows_back_and_pad_only_at_the_end(counts: list[int], options: EncodeOptions) -> None:
    windows = [_Window(0, i, np.arange(n)) for i, n in enumerate(counts)]
    consumed = 0

    def fed() -> Iterator[_Window]:
        nonlocal consumed
        for window in windows:
            consumed += 1
            yield window

    done, short, most_waiting = 0, [], 0
    for batch in _batches(fed(), options):
        # (window, frame) pairs fed but not yet batched, this batch included.
        most_waiting = max(most_waiting, sum(w.frames.size for w in windows[:consumed]) - done)
        done += sum(w.frames.size for w in batch.windows)
        if len(batch.windows) < batch.size:
            short.append(consumed)
    # Memory: what waits is at most one batch's worth of (window, frame) pairs, plus the newcomer.
    assert most_waiting <= options.frames_per_batch + max(counts, default=0) + options.frame_bucket * len(counts)
    if options.frames_per_batch >= sum(counts) + options.frame_bucket * len(counts):
        # Nothing forced a batch out early: short (padded) batches come only at the end, one per bucket.
        assert all(at == len(windows) for at in short)
        buckets = {-(-n // options.frame_bucket) for n in counts}
        assert len(short) <= len(buckets)


# --- the encoder, end to end on a few cubes -------------------------------------------------------


@lru_cache(maxsize=1)
def _tiny_model() -> tuple[STPEncoder, Provenance]:
    return build_model(TINY)


@settings(max_examples=4, deadline=None)
@given(
    n_cols=st.integers(1, 2),
    offset=st.tuples(st.integers(0, 8), st.integers(0, 8)),
    read_rows=st.integers(1, 48),
    seed=st.integers(0, 2**16),
)
def test_encoding_does_not_depend_on_read_rows(n_cols: int, offset: tuple[int, int], read_rows: int, seed: int) -> None:
    model, provenance = _tiny_model()
    cube = _lattice_cube(TINY, 2, n_cols, required_halo(TINY, False), offset, 3, 0.8, seed)
    encode = [
        encode_cube(
            cube, Period.year(2021), model, TINY, EncodeOptions(device="cpu", read_rows=rows), provenance=provenance
        )
        for rows in (read_rows, 10_000)
    ]
    xr.testing.assert_identical(encode[0], encode[1])
