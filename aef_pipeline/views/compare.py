"""Similarity to reference vectors and change between periods, as maps (`similarity`, `change`).

    similarity_map(SimilarityRequest(Path("field.zarr"), Path("refs.geojson"), Path("sim.tif")))
    change_map(ChangeRequest(Path("field.zarr"), "2021", "2022", Path("change.tif")))

Similarity is the mean dot product with the reference vectors (points, or polygons as their
re-normalised mean vector), i.e. the dot product with the references' mean: 1 at a reference
pixel (within quantisation), falling off elsewhere. Change is 1 - the dot product of a pixel's
vectors in two periods: 0 where nothing changed, up to 2. Both are computed chunk by chunk on
dask, NaN where the field (either period, for change) has no vector, and written as a float32
COG with overviews per zone group. With a threshold, the pixels at or beyond it become polygons
(GeoJSON, lon/lat) with their mean score, drawn from the written map window by window.

With `level` k > 0 the map is made from the store's overview level k (pixels of 10 x 2^k m, each
the re-normalised mean of the vectors under it) and reads that level alone: a coarse map of a
large area costs what its pixels do, not the field's. The polygons then follow the coarse pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import xarray as xr
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize, shapes
from rasterio.windows import Window
from shapely.geometry import shape

from aef_pipeline.errors import UserInputError
from aef_pipeline.maps.points import read_points
from aef_pipeline.maps.raster import write_cog
from aef_pipeline.maps.sample import choose_period, sample_field
from aef_pipeline.overviews import OVERVIEW_LEVELS
from aef_pipeline.plan import Period
from aef_pipeline.store import open_embeddings, store_periods, written_part, zones_with
from aef_pipeline.views.outputs import check_cog_path, zone_path

POLYGON_BLOCK_PX = 2048  # polygons are drawn from windows of at most 2048 x 2048 px of the map


@dataclass(frozen=True)
class SimilarityRequest:
    field_path: Path
    references: Path
    out: Path
    period: str | None = None
    threshold: float | None = None
    polygons: Path | None = None
    overwrite: bool = False
    points_crs: str | None = None
    level: int = 0
    """Overview level of the map: pixels of 10 x 2^level m, each the re-normalised mean of the
    vectors under it (0: full resolution). The references are read at full resolution."""


@dataclass(frozen=True)
class ChangeRequest:
    field_path: Path
    before: str
    after: str
    out: Path
    threshold: float | None = None
    polygons: Path | None = None
    force: bool = False
    overwrite: bool = False
    level: int = 0
    """Overview level of the map: both periods read at pixels of 10 x 2^level m (0: full resolution)."""


def similarity_map(request: SimilarityRequest) -> dict[str, Any]:
    """The similarity map(s) and, with a threshold, the polygons; returns what was written."""
    check_cog_path(request.out, "--out", request.overwrite, [request.polygons])
    _check_threshold(request.threshold, (-1.0, 1.0), "similarity")
    _check_level(request.level)
    period = choose_period(request.field_path, request.period)
    references = read_points(request.references, request.points_crs)
    samples = sample_field(request.field_path, references, period)
    if samples.missing:
        first = samples.missing[0]
        raise UserInputError(
            f"{len(samples.missing)} of {len(references)} references have no vector in {request.field_path} "
            f"(e.g. row {first['index']}: {first['reason']}): place references on written, observed pixels"
        )
    target = samples.vectors().mean(axis=0)
    scores = {
        zone: _scored(_field(request.field_path, zone, period, request.level).embedding, target)
        for zone in zones_with(request.field_path, period)
    }
    what = f"similarity to {len(references)} references{_at(request.level)}"
    return _write(scores, request.out, request.threshold, request.polygons, what)


def change_map(request: ChangeRequest) -> dict[str, Any]:
    check_cog_path(request.out, "--out", request.overwrite, [request.polygons])
    _check_threshold(request.threshold, (0.0, 2.0), "change")
    _check_level(request.level)
    before = choose_period(request.field_path, request.before)
    after = choose_period(request.field_path, request.after)
    if before == after:
        raise UserInputError(
            f"--from and --to are the same period ({before.label}): change between a period and itself is 0; "
            "give two different periods"
        )
    if not _comparable(before, after) and not request.force:
        raise UserInputError(
            f"periods {before.label} and {after.label} differ in length: their embeddings summarise different "
            "spans; pass --force to compare them anyway"
        )
    zones = [z for z in zones_with(request.field_path, before) if after in store_periods(request.field_path, z)]
    scores = {zone: _change(request.field_path, zone, before, after, request.level) for zone in zones}
    what = f"change {before.label} -> {after.label}{_at(request.level)}"
    return _write(scores, request.out, request.threshold, request.polygons, what)


def _comparable(before: Period, after: Period) -> bool:
    """Two calendar years (365 or 366 days), or two periods of the same length."""
    years = before == Period.year(before.start.year) and after == Period.year(after.start.year)
    return years or (before.end - before.start) == (after.end - after.start)


def _check_level(level: int) -> None:
    if not 0 <= level <= OVERVIEW_LEVELS:
        raise UserInputError(
            f"--level {level} is not an overview level: give 0 (full resolution, 10 m) to {OVERVIEW_LEVELS} "
            f"({10 * 2**OVERVIEW_LEVELS} m pixels)"
        )


def _at(level: int) -> str:
    return f" at overview level {level} ({10 * 2**level} m pixels)" if level else ""


def _check_threshold(threshold: float | None, bounds: tuple[float, float], what: str) -> None:
    if threshold is not None and not bounds[0] <= threshold <= bounds[1]:
        raise UserInputError(
            f"--threshold {threshold} is outside [{bounds[0]:g}, {bounds[1]:g}], the range of {what} scores"
        )


def _scored(embedding: xr.DataArray, target: NDArray[np.float32]) -> xr.DataArray:
    """The dot product of every vector with `target` (NaN stays NaN)."""
    score: xr.DataArray = xr.dot(embedding, xr.DataArray(target, dims=["band"]), dim="band")
    return score.astype(np.float32)


def _field(store: Path, zone: str, period: Period, level: int) -> xr.Dataset:
    """The period's field at overview `level`, cut to the rectangle its records wrote."""
    field = open_embeddings(store, zone, period=period, level=level).isel(time=0)
    return written_part(field, store, zone, period)


def _change(store: Path, zone: str, before: Period, after: Period, level: int) -> xr.DataArray:
    first = _field(store, zone, before, level).embedding
    second = _field(store, zone, after, level).embedding
    first, second = xr.align(first, second, join="outer")  # the union of both periods' areas
    change: xr.DataArray = (1.0 - xr.dot(first, second, dim="band")).astype(np.float32)
    return change


def _write(
    scores: dict[str, xr.DataArray], out: Path, threshold: float | None, polygons: Path | None, what: str
) -> dict[str, Any]:
    written: dict[str, Any] = {"maps": [], "polygons": None, "what": what}
    areas = []
    for zone, score in scores.items():
        path = zone_path(out, zone, len(scores))
        if path.exists():
            path.unlink()
        band = score.expand_dims(band=[1]).rio.write_nodata(np.nan)
        write_cog(
            band, path, resampling="AVERAGE", descriptions=(what,), tags={"aef_map": what}
        )  # not "aef:": GDAL splits at the colon
        written["maps"].append(str(path))
        if threshold is not None and polygons is not None:
            areas.append(_polygons(path, threshold))
    if polygons is not None and threshold is not None:
        found = gpd.GeoDataFrame(pd.concat(areas, ignore_index=True), crs="EPSG:4326")
        partial = polygons.with_name(f".{polygons.name}.partial")
        found.to_file(partial, driver="GeoJSON")
        partial.replace(polygons)
        written["polygons"] = {"path": str(polygons), "count": len(found)}
    return written


def _polygons(path: Path, threshold: float) -> gpd.GeoDataFrame:
    """Connected pixels scoring at least the threshold as polygons (pixel edges, 4-connected), each
    with its mean score; read back from the written map, one zone at a time.

    The map is read in windows of at most POLYGON_BLOCK_PX x POLYGON_BLOCK_PX px (2048: 16 MB of
    float32, about 50 MB with the mask and labels) aligned to the file's internal blocks, and the
    pieces cut by window edges are merged afterwards: memory is one window plus the polygons,
    whatever the area, and the result equals vectorising the whole map at once."""
    with rasterio.open(path) as raster:
        transform, crs = raster.transform, raster.crs
        # Pieces are drawn in the map's pixel coordinates: whole numbers, so that the edges pieces
        # share across windows are exactly equal and the union joins them, whatever the transform.
        pieces = [
            _pieces(raster.read(1, window=window), Affine.translation(window.col_off, window.row_off), threshold)
            for window in _windows(raster.height, raster.width, raster.block_shapes[0])
        ]
    pieces = [p for p in pieces if len(p)]
    if not pieces:
        return gpd.GeoDataFrame({"score": [], "pixels": []}, geometry=[], crs=crs).to_crs("EPSG:4326")
    found = _merged(pd.concat(pieces, ignore_index=True))
    frame = gpd.GeoDataFrame(
        {"score": found["sum"] / found["pixels"], "pixels": found["pixels"]},
        geometry=found.geometry.affine_transform(transform.to_shapely()),
        crs=crs,
    )
    return frame.to_crs("EPSG:4326")


def _windows(height: int, width: int, block: tuple[int, int]) -> list[Window]:
    """Row-major windows covering the raster, POLYGON_BLOCK_PX square or less, their sides a
    multiple of the file's internal `block` (rows, cols) so that no internal block is read twice."""
    # A side above the limit (a striped file's whole rows) is cut: the memory bound comes first.
    rows, cols = (POLYGON_BLOCK_PX if side > POLYGON_BLOCK_PX else POLYGON_BLOCK_PX // side * side for side in block)
    return [
        Window(c0, r0, min(cols, width - c0), min(rows, height - r0))
        for r0 in range(0, height, rows)
        for c0 in range(0, width, cols)
    ]


def _pieces(score: NDArray[np.float32], transform: Affine, threshold: float) -> gpd.GeoDataFrame:
    """The hit regions of one window as polygons (placed by `transform`) with the sum and count of
    their scores, and whether they reach the window's edge (and may continue in the next window)."""
    hits = np.nan_to_num(score, nan=-np.inf) >= threshold
    outlines = [shape(g) for g, _ in shapes(hits.astype(np.uint8), mask=hits, transform=transform)]
    if not outlines:
        return gpd.GeoDataFrame({"sum": [], "pixels": [], "edge": []}, geometry=[])  # dropped by the caller
    # Each outline's own pixels, by burning its number back: the scores of exactly those.
    labels = rasterize(
        ((outline, i + 1) for i, outline in enumerate(outlines)), out_shape=score.shape, transform=transform
    )
    pixels = np.bincount(labels.ravel(), minlength=len(outlines) + 1)[1:]
    sums = np.bincount(labels.ravel(), weights=np.nan_to_num(score).ravel(), minlength=len(outlines) + 1)[1:]
    edge = np.zeros(len(outlines) + 1, dtype=bool)
    edge[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    return gpd.GeoDataFrame({"sum": sums, "pixels": pixels, "edge": edge[1:]}, geometry=outlines)


def _merged(pieces: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """`pieces` with those that touch across window edges joined into one polygon each, carrying
    the summed sums and counts of the pieces inside it."""
    cut = pieces[pieces["edge"]]
    if cut.empty:
        return pieces
    # The union joins pieces sharing an edge, not those touching at a corner only (4-connected).
    whole = gpd.GeoDataFrame(geometry=[cut.union_all()]).explode(index_parts=False).reset_index(drop=True)
    inside = gpd.sjoin(cut.set_geometry(cut.representative_point()), whole, predicate="within")
    assert len(inside) == len(cut), "every piece lies inside exactly one merged polygon"
    totals = inside.groupby("index_right")[["sum", "pixels"]].sum()
    whole = whole.join(totals)
    return pd.concat([pieces[~pieces["edge"]], whole], ignore_index=True)


def summary(written: dict[str, Any]) -> str:
    lines = [f"wrote {', '.join(written['maps'])} ({written['what']})"]
    if written["polygons"]:
        lines.append(f"wrote {written['polygons']['count']} polygons to {written['polygons']['path']}")
    return "\n".join(lines)
