"""Stage 5: the embedding field store, Zarr v3 written through xarray.

    store = create_store(path, tiles, periods, layout)       # template, once, before any task
    write_tile(path, tile, period, field, record)             # one task: whole shards, then a record
    finalize(path)                                            # consolidated metadata, once at the end
    ds = open_embeddings(path, zone="33N")                    # float32 unit vectors, NaN nodata

One group per UTM zone and hemisphere ("33N"), spanning every tile of the zone from creation
(grid.zone_tile_extent): any later run can add any area of the zone, and unwritten chunks are
simply absent on disk (nodata when read). In it, `embedding` (time, y, x, band) holds int8 with
the AlphaEarth quantisation (nodata -128) or float16/float32; `observations` (time, y, x) counts
the valid frames behind each pixel. A shard is exactly one work tile for one period, so every task
writes whole shards and never touches a neighbour's. `tile_record` (time, tile_row, tile_col)
holds one JSON string per tile-period, each in its own chunk, written after the tile's data: a
record says the tile is complete and how it was made (scenes, model, software). `tile_planned`
marks the tile-periods some run asked for, so `info` can say how much of it is done.
docs/store-growth.md says why zone-wide and how it was measured. The overview levels under
`{zone}/overviews/` are overviews.py's (this module makes their templates and calls it), the
int8 scheme quantisation.py's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401 (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, unary_union
from odc.geo.xr import xr_coords

from aef_pipeline import __version__
from aef_pipeline.errors import UserInputError
from aef_pipeline.geoemb import geoemb_attributes
from aef_pipeline.grid import (
    DENSIFY_DEGREES,
    EMBEDDING_DIM,
    RESOLUTION_M,
    TILE_PIXELS,
    BBox,
    TileId,
    utm_epsg,
    zone_parts,
    zone_tile_extent,
)
from aef_pipeline.overviews import (
    OVERVIEW_DIMS,
    OVERVIEW_LEVELS,
    OVERVIEW_READ_PX,
    check_level,
    overview_chunks,
    overview_group,
    overview_levels,
    overview_template,
    register_multiscales,
    write_overviews,
)
from aef_pipeline.plan import Period, period_from_text
from aef_pipeline.quantisation import NODATA_INT8, dequantise, quantise

BANDS = tuple(f"A{i:02d}" for i in range(EMBEDDING_DIM))
# Inner chunk: 128 x 128 px x 64 bands = 1 MiB of int8. A pixel's whole vector sits in one chunk
# (per-pixel reads touch one chunk per year), and an area read of a 1.28 km window is one chunk.
# 15 x 15 of them make a 1920 px shard (one work tile).
CHUNK_PX = 128
# The `aef:layout` of a zone group spanning its whole zone; groups without it span the bbox of
# the run that made them (the layout before issue 21) and are migrated by `migrate_store`.
ZONE_WIDE = "zone-wide"


@dataclass(frozen=True)
class StoreLayout:
    """What makes two runs' output compatible: the same grid, model and encoding."""

    model: str
    """Model spec name."""
    model_weights: str
    """Provenance: "untrained: deterministic initialisation from seed 0" or the weights' sha256."""
    storage: str = "int8"
    """"int8" (AlphaEarth quantisation, 64 B/px), "float16" or "float32"."""
    resolution_m: int = RESOLUTION_M
    tile_pixels: int = TILE_PIXELS
    source_data: tuple[str, ...] = ()
    """STAC collections the vectors come from (for `geoemb:source_data`; not part of compatibility:
    runs over another mirror of the same data may add to a store). Empty: Earth Search's."""

    def __post_init__(self) -> None:
        if self.storage not in ("int8", "float16", "float32"):
            raise UserInputError(f"storage {self.storage!r} is not one of int8, float16, float32")


def zone_name(tile: TileId) -> str:
    return f"{tile.zone:02d}{tile.hemisphere}"


def create_store(
    path: Path, tiles: Sequence[TileId], periods: Sequence[Period], layout: StoreLayout, overwrite: bool = False
) -> None:
    """Make sure every zone group of `tiles` exists with every period, and mark the tile-periods
    as planned. A new zone gets a zone-wide template (metadata and coordinates, no data); an
    existing one gets the periods it lacks. Everything is checked before anything is written:
    a store made with another model, weights, grid or encoding, a period that overlaps one of the
    store's without equalling it, or a group of the older bbox-extent layout is refused (unless
    `overwrite`)."""
    if overwrite and path.exists():
        shutil.rmtree(path)
    _check_writable(path)
    if path.with_name(path.name + ".migrating").exists():
        raise UserInputError(f"a migration of {path} was interrupted: run `aef-pipeline migrate {path}` to finish it")
    _check_disjoint(periods)
    zones = _by_zone(tiles)
    for zone in zones:
        existing = zone_attrs(path, zone)
        if existing is not None:
            _check_compatible(path, zone, existing, layout)
            _check_periods(path, zone, periods)
    unconsolidate(path)
    for zone, zone_tiles in zones.items():
        if zone_attrs(path, zone) is None:
            zone_template(zone, periods, layout).to_zarr(
                path, group=zone, mode="a", compute=False, encoding=zone_encoding(layout, zone), consolidated=False
            )
            create_overviews(path, zone, periods, layout)
        else:
            missing = [p for p in periods if _period_index(path, zone, p) is None]
            levels = overview_levels(zone_attrs(path, zone) or {})
            if missing:
                # Only what grows along time: rewriting x and y would cost 1.3 MB per new period.
                appended = zone_template(zone, missing, layout).drop_vars(["x", "y", "band", "spatial_ref"])
                appended.to_zarr(path, group=zone, mode="a", append_dim="time", compute=False, consolidated=False)
                for level in range(1, levels + 1):
                    template = _level_template(zone, missing, layout, level)
                    more = template.drop_vars([*OVERVIEW_DIMS.values(), "band", "spatial_ref"])
                    more.to_zarr(
                        path,
                        group=overview_group(zone, level),
                        mode="a",
                        append_dim="time",
                        compute=False,
                        consolidated=False,
                    )
                if levels:  # the append rewrote the group's attributes from the template
                    _register_multiscales(path, zone)
        mark_planned(path, zone, zone_tiles, periods)


def write_tile(path: Path, tile: TileId, period: Period, field: xr.Dataset, record: Mapping[str, Any]) -> None:
    """Write one tile-period as whole shards, then its completion record.

    `field` holds `embedding` (dim, y, x) float32 unit vectors with NaN nodata and `observations`
    (y, x) on the tile's grid: the whole tile, or a window of it (a small request computes only
    what it needs). A window is merged into what the shard already holds, and the shard written
    whole: one task per tile, so no other writer shares it. The record (scenes, model, the
    areas written) lands only after the data write returned, so it always means complete data.
    """
    zone = zone_name(tile)
    attrs = zone_attrs(path, zone)
    if attrs is None:
        raise UserInputError(f"{path} has no group {zone}: create the store for this tile first")
    index = _period_index(path, zone, period)
    if index is None:
        raise UserInputError(f"{path} group {zone} has no period {period.label}: create it first")
    rows, cols = tile_region(tile, attrs["aef:tiles"])
    window = field_window(field, tile)
    embedding = field.embedding.transpose("y", "x", "dim").values
    values = quantise(embedding) if attrs["aef:storage"] == "int8" else embedding.astype(attrs["aef:storage"])
    observations = field.observations.values.astype(np.int16)
    if window != (0, TILE_PIXELS, 0, TILE_PIXELS):
        values, observations = _merge_into_shard(path, zone, index, rows, cols, window, values, observations)
    data = xr.Dataset(
        {
            "embedding": (("time", "y", "x", "band"), values[None]),
            "observations": (("time", "y", "x"), observations[None]),
        }
    )
    data.to_zarr(
        path, group=zone, region={"time": slice(index, index + 1), "y": rows, "x": cols}, mode="r+", consolidated=False
    )
    # Before the record: a record means level 0 and every level of the tile-period are written.
    write_overviews(path, zone, index, (rows, cols), values, observations, overview_levels(attrs))
    _write_record(path, tile, period, index, attrs, {**record, "sha256": shard_digest(values, observations)}, window)


def shard_digest(embedding: np.ndarray, observations: np.ndarray) -> str:
    """SHA-256 of a tile-period's stored values (embedding (y, x, band) then observations (y, x)),
    kept in its record so `aef-pipeline verify` can tell a damaged shard from a good one.

    Hashed CHUNK_PX rows at a time, straight from the arrays' memory: the bytes of a C-ordered
    whole, without a copy of the shard (236 MB int8) or of more than a strip of one laid out
    otherwise (a whole tile quantised from its band-major field)."""
    digest = hashlib.sha256()
    for array, dtype in ((embedding, embedding.dtype), (observations, np.int16)):
        for row in range(0, len(array), CHUNK_PX):
            digest.update(np.ascontiguousarray(array[row : row + CHUNK_PX], dtype=dtype).data)
    return digest.hexdigest()


def field_window(field: xr.Dataset, tile: TileId) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the field within the tile; it must sit exactly on the tile grid."""
    xs, ys = tile.geobox.coordinates["x"].values, tile.geobox.coordinates["y"].values
    col0 = int(np.searchsorted(xs, field.x.values[0]))
    row0 = int(np.searchsorted(-ys, -field.y.values[0]))
    row1, col1 = row0 + field.sizes["y"], col0 + field.sizes["x"]
    if not (
        row1 <= TILE_PIXELS
        and col1 <= TILE_PIXELS
        and np.allclose(field.x.values, xs[col0:col1])
        and np.allclose(field.y.values, ys[row0:row1])
    ):
        raise ValueError(f"the field is not a window of tile {tile}'s grid")
    return row0, row1, col0, col1


def _merge_into_shard(
    path: Path,
    zone: str,
    index: int,
    rows: slice,
    cols: slice,
    window: tuple[int, int, int, int],
    values: np.ndarray,
    observations: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The tile's stored shard (embedding and observations) with the window's observed pixels put in.
    The shard is read CHUNK_PX rows at a time into one array: zarr decodes a whole-shard read into
    a shard of its own and copies that out, two shards (472 MB int8) at once."""
    r0, r1, c0, c1 = window
    stored = zarr.open_array(str(path / zone / "embedding"), mode="r")
    shard = np.empty((rows.stop - rows.start, cols.stop - cols.start, stored.shape[-1]), stored.dtype)
    for row in range(0, len(shard), CHUNK_PX):
        start = rows.start + row
        shard[row : row + CHUNK_PX] = stored[index, start : min(start + CHUNK_PX, rows.stop), cols, :]
    counts = np.asarray(zarr.open_array(str(path / zone / "observations"), mode="r")[index, rows, cols])
    computed = observations > 0  # pixels this task saw; elsewhere keep what an earlier run wrote
    shard[r0:r1, c0:c1][computed] = values[computed]
    counts[r0:r1, c0:c1][computed] = observations[computed]
    return shard, counts


def _write_record(
    path: Path,
    tile: TileId,
    period: Period,
    index: int,
    attrs: Mapping[str, Any],
    record: Mapping[str, Any],
    window: tuple[int, int, int, int],
) -> None:
    earlier = json.loads(_record_at(path, tile, index, attrs["aef:tiles"]) or "{}")
    areas = [*earlier.get("areas", []), list(window)]
    full = {
        "tile": str(tile),
        "period": period.label,
        **record,
        "areas": areas,
        "written": dt.datetime.now(dt.UTC).isoformat(),
    }
    text = np.array([[[json.dumps(full, default=str)]]], dtype=object)
    region = {"time": slice(index, index + 1), **tile_index(tile, attrs["aef:tiles"])}
    xr.Dataset({"tile_record": (("time", "tile_row", "tile_col"), text)}).to_zarr(
        path, group=zone_name(tile), region=region, mode="r+", consolidated=False
    )


def finished(path: Path, tile: TileId, period: Period, window: tuple[int, int, int, int] | None = None) -> bool:
    """Whether the tile-period's completion record exists (its data was written before it), and
    covers `window` (row0, row1, col0, col1) when one is given."""
    text = _record_text(path, tile, period)
    if not text or window is None:
        return bool(text)
    r0, r1, c0, c1 = window
    return any(a[0] <= r0 and r1 <= a[1] and a[2] <= c0 and c1 <= a[3] for a in json.loads(text).get("areas", []))


def unfinished(path: Path, tiles: Iterable[TileId], periods: Iterable[Period]) -> list[tuple[TileId, Period]]:
    """The tile-periods without a completion record: after a crash, exactly what must be redone
    (a tile cut off mid-write has no record, and rewriting its whole shards repairs it)."""
    periods = list(periods)
    return [(tile, period) for tile in tiles for period in periods if not finished(path, tile, period)]


def read_record(path: Path, tile: TileId, period: Period) -> dict[str, Any]:
    text = _record_text(path, tile, period)
    if not text:
        raise UserInputError(f"tile {tile} has no record for {period.label} in {path}: it was not finished")
    record: dict[str, Any] = json.loads(text)
    return record


def _record_text(path: Path, tile: TileId, period: Period) -> str:
    zone = zone_name(tile)
    attrs, index = zone_attrs(path, zone), _period_index(path, zone, period)
    if attrs is None or index is None or not _inside(tile, attrs["aef:tiles"]):
        return ""
    return _record_at(path, tile, index, attrs["aef:tiles"])


def _record_at(path: Path, tile: TileId, index: int, extent: Mapping[str, int]) -> str:
    where = tile_index(tile, extent)
    array = zarr.open_array(str(path / zone_name(tile) / "tile_record"), mode="r")
    return str(array[index, where["tile_row"].start, where["tile_col"].start])


def finalize(path: Path) -> None:
    """Consolidate metadata once, after every task (zarr v3 calls it an extension: we say so)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata is currently not part", UserWarning)
        zarr.consolidate_metadata(str(path))


def open_embeddings(
    path: str | os.PathLike[str],
    zone: str | None = None,
    *,
    bbox: BBox | tuple[float, float, float, float] | None = None,
    period: Period | str | None = None,
    as_stored: bool = False,
    level: int = 0,
) -> xr.Dataset:
    """One zone's embeddings as float32 (de-quantised lazily), nodata NaN, CRS set, time sorted;
    with `as_stored`, the values as stored (int8 with nodata -128: mask before de-quantising).

    Without `bbox`: the tiles runs planned (or wrote) in that zone; with `bbox` (W, S, E N in
    degrees): the zone's pixels under it. `zone` may be left out when the store, or the part of
    it under `bbox`, has one zone; `period` (a Period or its label, "2022") keeps one period.
    Only the region's coordinates are built (from the group's affine), and its dask chunks
    follow the stored grid (640 px, three to a shard), so a zone-wide group opens as fast as a
    one-tile one. `level` k > 0 reads overview k instead: pixels 2^k times larger (10 * 2^k m),
    each the re-normalised mean of the vectors under it, on the same CRS and corner; the region
    is the coarse pixels touching it, and dask chunks are 480 px.
    """
    root = Path(path)
    box = bbox if bbox is None or isinstance(bbox, BBox) else BBox(*bbox)
    zone = _chosen_zone(root, zone, box)
    attrs = zone_attrs(root, zone) or {}
    rows, cols = _region(root, zone, attrs, box)
    group_attrs, step = attrs, READ_CHUNK_PX
    if level:
        check_level(root, zone, attrs, level)
        rows, cols = _coarse(rows, 2**level), _coarse(cols, 2**level)
        group_attrs, step = (
            dict(zarr.open_group(str(root / overview_group(zone, level)), mode="r").attrs),
            OVERVIEW_READ_PX,
        )
    group = group_geobox(group_attrs)
    ds: xr.Dataset = xr.open_dataset(
        root,
        engine="zarr",
        group=overview_group(zone, level),
        chunks=None,  # lazy indexing first: no dask graph over the whole zone
        cache=False,  # else the first block read loads the whole region into memory
        decode_coords="all",
        consolidated=_consolidated(root),
        drop_variables=["x", "y", *OVERVIEW_DIMS.values(), "tile_record", "tile_planned"],
    )
    if level:
        ds = ds.rename({name: dim for dim, name in OVERVIEW_DIMS.items()})
    ds = ds.isel(y=rows, x=cols).assign_coords(xr_coords(group[rows, cols], crs_coord_name="spatial_ref"))
    if period is not None:
        index = _time_index(root, zone, period)
        ds = ds.isel(time=slice(index, index + 1))  # a slice: zarr's fast path (a list is orthogonal indexing)
    ds = ds.chunk({"time": 1, "y": _aligned(rows, step), "x": _aligned(cols, step), "band": -1})
    if as_stored:
        return ds.sortby("time")
    if attrs.get("aef:storage") == "int8":
        embedding_attrs = ds.embedding.attrs
        ds["embedding"] = xr.apply_ufunc(dequantise, ds.embedding, dask="parallelized", output_dtypes=[np.float32])
        ds.embedding.attrs.update(embedding_attrs)
    else:
        ds["embedding"] = ds.embedding.astype(np.float32)
    return ds.sortby("time")


READ_CHUNK_PX = 640
"""Dask chunk of `open_embeddings`: 5 x 5 stored chunks, 3 x 3 to a shard (26 MB int8 per period,
105 MB as float32), aligned with the stored grid so no dask chunk straddles two shards."""


def _aligned(span: slice, step: int = READ_CHUNK_PX) -> tuple[int, ...]:
    """Chunk sizes along `span` (pixel indices of the group) with edges on multiples of `step`."""
    edges = [span.start, *range((span.start // step + 1) * step, span.stop, step)]
    return tuple(np.diff([*edges, span.stop]).tolist())


def _coarse(span: slice, factor: int) -> slice:
    """The pixels of a grid `factor` times coarser that touch `span` (level-0 pixel indices)."""
    return slice(span.start // factor, -(-span.stop // factor))


def group_geobox(attrs: Mapping[str, Any]) -> GeoBox:
    """The pixel grid of a whole zone group, from its attributes (no coordinate array read)."""
    extent, size = attrs["aef:tiles"], attrs["aef:tile_pixels"]
    shape = ((extent["row_max"] - extent["row_min"] + 1) * size, (extent["col_max"] - extent["col_min"] + 1) * size)
    return GeoBox(shape, Affine(*attrs["spatial:transform"]), attrs["proj:code"])


def _chosen_zone(root: Path, zone: str | None, bbox: BBox | None) -> str:
    zones = required_zones(root)
    if zone is not None:
        if zone not in zones:
            raise UserInputError(f"{root} has no zone {zone}; it holds {', '.join(zones)}")
        return zone
    under = [] if bbox is None else sorted({f"{n:02d}{h}" for n, h, _ in zone_parts(bbox)})
    candidates = zones if bbox is None else [z for z in zones if z in under]
    if not candidates:
        raise UserInputError(
            f"the bbox lies in zone {', '.join(under)}, which {root} does not hold; it holds {', '.join(zones)}"
        )
    if len(candidates) != 1:
        where = "" if bbox is None else " under the bbox"
        raise UserInputError(f"{root} holds zones {', '.join(candidates) or 'none'}{where}: pass zone= one of them")
    return candidates[0]


def _region(root: Path, zone: str, attrs: Mapping[str, Any], bbox: BBox | None) -> tuple[slice, slice]:
    """(rows, cols) of the group to open: under `bbox`, else around the tiles planned or written."""
    group = group_geobox(attrs)
    if bbox is None:
        listed = [*planned_tiles(root, zone).values(), *written_tiles(root, zone).values()]
        tiles = [tile for some in listed for tile in some]
        if not tiles:  # a group of the older layout, or nothing asked for yet: the whole group
            return slice(0, group.shape[0]), slice(0, group.shape[1])
        return tiles_region(tiles, attrs["aef:tiles"])
    parts = [geom for n, h, geom in zone_parts(bbox) if f"{n:02d}{h}" == zone]
    projected = unary_union(
        [part.to_crs(group.crs or attrs["proj:code"], resolution=DENSIFY_DEGREES) for part in parts]
    )
    if projected is None:
        raise UserInputError(f"bbox {bbox} does not reach zone {zone}")
    rows, cols = group.overlap_roi(group.enclosing(projected))
    if rows.stop <= rows.start or cols.stop <= cols.start:
        raise UserInputError(f"bbox {bbox.west} {bbox.south} {bbox.east} {bbox.north} lies outside {root} group {zone}")
    return slice(rows.start, rows.stop), slice(cols.start, cols.stop)


def tiles_region(tiles: Sequence[TileId], extent: Mapping[str, int]) -> tuple[slice, slice]:
    """The (y, x) pixel slices of the smallest rectangle of a group holding `tiles`."""
    around = _extent(tiles)
    zone, hemisphere = tiles[0].zone, tiles[0].hemisphere
    top, _ = tile_region(TileId(zone, hemisphere, around["col_min"], around["row_max"]), extent)
    bottom, _ = tile_region(TileId(zone, hemisphere, around["col_min"], around["row_min"]), extent)
    _, left = tile_region(TileId(zone, hemisphere, around["col_min"], around["row_min"]), extent)
    _, right = tile_region(TileId(zone, hemisphere, around["col_max"], around["row_min"]), extent)
    return slice(top.start, bottom.stop), slice(left.start, right.stop)


def _time_index(root: Path, zone: str, period: Period | str) -> int:
    periods = store_periods(root, zone)
    wanted = period if isinstance(period, Period) else period_from_text(period)
    for index, stored in enumerate(periods):
        if stored == wanted:
            return index
    label = period.label if isinstance(period, Period) else period
    raise UserInputError(
        f"{root} group {zone} has no period {label}; it holds {', '.join(p.label for p in periods) or 'none'}"
    )


def describe_store(path: Path) -> str:
    """What a store holds and how complete it is (`aef-pipeline info`): per zone, the layout and
    model, the extent written (tiles, pixels, degrees) and tile-periods written / planned by period."""
    zones = required_zones(path)
    lines = [f"{path}: {len(zones)} zone group(s)"]
    for zone in zones:
        lines += _describe_zone(path, zone)
    if not _consolidated(path):
        lines.append("  not finalised: a run is writing this store or stopped early (rerun it to finish)")
    return "\n".join(lines)


def _describe_zone(path: Path, zone: str) -> list[str]:
    attrs = zone_attrs(path, zone) or {}
    written, planned = written_tiles(path, zone), planned_tiles(path, zone)
    layout = "zone-wide" if attrs.get("aef:layout") == ZONE_WIDE else "bbox-extent (older; `aef-pipeline migrate`)"
    lines = [
        f"  {zone}: {attrs['proj:code']}, {attrs['aef:storage']}, model {attrs['aef:model']} "
        f"({attrs['aef:model_weights']}), {layout} layout"
    ]
    every = sorted({t for tiles in written.values() for t in tiles})
    if every:
        extent, footprint = _extent(every), tiles_footprint(every)
        west, south, east, north = footprint.boundingbox
        lines.append(
            f"    written extent: tiles c{extent['col_min']:03d}-c{extent['col_max']:03d} x "
            f"r{extent['row_min']:04d}-r{extent['row_max']:04d} ({len(every)} tiles, "
            f"{len(every) * TILE_PIXELS**2 / 1e6:.1f} Mpx), lon {west:.4f} to {east:.4f}, "
            f"lat {south:.4f} to {north:.4f}"
        )
    else:
        lines.append("    written extent: nothing written yet")
    done = asked = 0
    for index, period in enumerate(store_periods(path, zone)):
        got, wanted = set(written.get(index, [])), set(planned.get(index, [])) | set(written.get(index, []))
        done, asked = done + len(got), asked + len(wanted)
        lines.append(f"    {period.label}: tile-periods written {len(got)}/{len(wanted)} planned")
    lines.append(f"    tile-periods written {done}/{asked}")
    return lines


def written_tiles(path: Path, zone: str) -> dict[int, list[TileId]]:
    """The tiles with a completion record, by time index. Found by listing the record chunks
    (what is written), not by reading the record array: at zone scale a read costs seconds per
    period whatever the store holds."""
    attrs = zone_attrs(path, zone)
    folder = path / zone / "tile_record" / "c"
    found: dict[int, list[TileId]] = {}
    if attrs is None or not folder.is_dir():
        return found
    for chunk in sorted(folder.glob("*/*/*")):
        parts = chunk.relative_to(folder).parts
        if not all(part.isdigit() for part in parts):  # zarr's `<key>.<uuid>.partial` of a write cut off
            continue
        index, row, col = (int(part) for part in parts)
        found.setdefault(index, []).append(_tile_at(zone, attrs["aef:tiles"], row, col))
    return found


def planned_tiles(path: Path, zone: str) -> dict[int, list[TileId]]:
    """The tiles some run planned, by time index (none for a group of the older layout)."""
    attrs = zone_attrs(path, zone)
    if attrs is None or not (path / zone / "tile_planned" / "zarr.json").is_file():
        return {}
    marks = np.asarray(zarr.open_array(str(path / zone / "tile_planned"), mode="r")[:])
    return {
        index: [_tile_at(zone, attrs["aef:tiles"], row, col) for row, col in np.argwhere(plane)]
        for index, plane in enumerate(marks)
        if plane.any()
    }


def written_areas(store: Path, zone: str, period: Period) -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) in the group's pixels of every area the period's records list (a
    record without `areas`, from before they were kept, counts as its whole tile)."""
    index = store_periods(store, zone).index(period)
    extent = (zone_attrs(store, zone) or {})["aef:tiles"]
    found = []
    for tile in written_tiles(store, zone).get(index, []):
        rows, cols = tile_region(tile, extent)
        whole = [[0, TILE_PIXELS, 0, TILE_PIXELS]]
        record = json.loads(_record_at(store, tile, index, extent))  # listed, so written: no lookup per tile
        for r0, r1, c0, c1 in record.get("areas", whole):
            found.append((rows.start + r0, rows.start + r1, cols.start + c0, cols.start + c1))
    return found


def written_part(field: xr.Dataset, store: Path, zone: str, period: Period) -> xr.Dataset:
    """The field cut to the rectangle of the areas its records say were written (a small run
    writes a window of a tile; the rest of the tile is nodata and would only shrink the picture).
    A field of an overview level keeps every coarse pixel the rectangle touches."""
    affine = group_geobox(zone_attrs(store, zone) or {}).affine
    areas = written_areas(store, zone, period)
    factor = int(field.attrs.get("aef:overview_factor", 1))
    r0, c0 = (min(a[i] for a in areas) // factor * factor for i in (0, 2))
    r1, c1 = (-(-max(a[i] for a in areas) // factor) * factor for i in (1, 3))
    top, bottom = affine.f + r0 * affine.e, affine.f + r1 * affine.e
    left, right = affine.c + c0 * affine.a, affine.c + c1 * affine.a
    return field.sel(x=slice(left, right), y=slice(top, bottom))


def tiles_footprint(tiles: Sequence[TileId]) -> Geometry:
    """The lon/lat outline of tiles of one zone: their union in UTM (exact squares), projected
    once with its edges densified, so a curved tile edge stays curved."""
    union = unary_union([tile.geobox.extent for tile in tiles])
    assert union is not None, "no tiles"
    return union.to_crs("EPSG:4326", resolution=RESOLUTION_M * 100)


def _tile_at(zone: str, extent: Mapping[str, int], row: int, col: int) -> TileId:
    """The tile at (row, col) of a group's tile axes (rows count southwards from row_max)."""
    return TileId(int(zone[:-1]), zone[-1], extent["col_min"] + int(col), extent["row_max"] - int(row))


def mark_planned(path: Path, zone: str, tiles: Sequence[TileId], periods: Sequence[Period]) -> None:
    """Set `tile_planned` for these tile-periods (one small chunk per period, read and rewritten:
    the run holds the store's lock)."""
    extent = (zone_attrs(path, zone) or {})["aef:tiles"]
    marks = zarr.open_array(str(path / zone / "tile_planned"), mode="r+")
    stored = store_periods(path, zone)
    for period in periods:
        index = stored.index(period)
        plane = np.asarray(marks[index])
        before = plane.copy()
        for tile in tiles:
            where = tile_index(tile, extent)
            plane[where["tile_row"].start, where["tile_col"].start] = 1
        if not np.array_equal(plane, before):  # a rerun rewrites nothing
            marks[index] = plane


def unconsolidate(path: Path) -> None:
    """Drop the consolidated metadata before a run changes the store: `finalize` writes it again
    at the end, so a store whose run stopped early does not show readers a stale snapshot (new
    periods or zones missing) and is visibly unfinished."""
    if _consolidated(path):
        zarr.open_group(str(path), mode="r+", use_consolidated=False).update_attributes({})


def is_finalised(path: Path) -> bool:
    """Whether the last run finished: `finalize` consolidated the metadata, and no run has begun since."""
    return _consolidated(path)


def _consolidated(path: Path) -> bool:
    root = path / "zarr.json"
    return root.is_file() and "consolidated_metadata" in json.loads(root.read_text())


def zones_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if (p / "zarr.json").is_file()) if path.is_dir() else []


def required_zones(path: Path) -> list[str]:
    """The store's zone groups; a path holding none is refused in one line (every command that
    reads a store starts here)."""
    zones = zones_in(path)
    if not zones:
        raise UserInputError(f"{path} is not an aef-pipeline embedding store (no zone groups found)")
    return zones


def zones_with(path: Path, period: Period) -> list[str]:
    """The zone groups that hold `period`."""
    return [zone for zone in zones_in(path) if period in store_periods(path, zone)]


# --- template ------------------------------------------------------------------------------------


def _by_zone(tiles: Iterable[TileId]) -> dict[str, list[TileId]]:
    zones: dict[str, list[TileId]] = {}
    for tile in tiles:
        zones.setdefault(zone_name(tile), []).append(tile)
    return zones


def _extent(tiles: Sequence[TileId]) -> dict[str, int]:
    return {
        "col_min": min(t.col for t in tiles),
        "col_max": max(t.col for t in tiles),
        "row_min": min(t.row for t in tiles),
        "row_max": max(t.row for t in tiles),
    }


def zone_template(
    zone: str, periods: Sequence[Period], layout: StoreLayout, extent: Mapping[str, int] | None = None
) -> xr.Dataset:
    """A zone-wide group (or one of `extent`, the older layout, which tests rebuild) with no data:
    written with compute=False, only its metadata and coordinates reach the disk. Each data
    variable is one lazy chunk, so making the template of a zone (17,496 shards per period) costs
    what one tile's did (a graph of shards, or a numpy record array, took 6 s at zone scale:
    docs/store-growth.md)."""
    number, hemisphere = int(zone[:-1]), zone[-1]
    extent = extent or zone_tile_extent(hemisphere)
    size, res = layout.tile_pixels, layout.resolution_m
    tile_rows, tile_cols = extent["row_max"] - extent["row_min"] + 1, extent["col_max"] - extent["col_min"] + 1
    rows, cols = tile_rows * size, tile_cols * size
    x = (extent["col_min"] * size + np.arange(cols) + 0.5) * res  # pixel centres
    y = ((extent["row_max"] + 1) * size - np.arange(rows) - 0.5) * res  # north-up: y decreases
    dtype = np.int8 if layout.storage == "int8" else np.dtype(layout.storage)
    fill = NODATA_INT8 if layout.storage == "int8" else np.nan
    shape, tiles_shape = (len(periods), rows, cols, len(BANDS)), (len(periods), tile_rows, tile_cols)
    base = xr.Dataset(
        {
            "embedding": (("time", "y", "x", "band"), da.full(shape, fill, dtype=dtype, chunks=shape)),  # type: ignore[no-untyped-call]
            "observations": (("time", "y", "x"), da.zeros(shape[:3], dtype=np.int16, chunks=shape[:3])),
            "tile_record": (
                ("time", "tile_row", "tile_col"),
                da.full(tiles_shape, "", dtype=np.dtypes.StringDType(), chunks=tiles_shape),  # type: ignore[no-untyped-call]
            ),
            "tile_planned": (
                ("time", "tile_row", "tile_col"),
                da.zeros(tiles_shape, dtype=np.uint8, chunks=tiles_shape),
            ),
        },
        coords={
            "time": np.array([np.datetime64(p.start.replace(tzinfo=None), "ns") for p in periods]),
            "time_end": ("time", np.array([np.datetime64(p.end.replace(tzinfo=None), "ns") for p in periods])),
            "y": y,
            "x": x,
            "band": np.array(BANDS, dtype=object),
        },
    )
    ds: xr.Dataset = base.rio.write_crs(f"EPSG:{utm_epsg(number, hemisphere)}")
    ds = ds.rio.write_transform(ds.rio.transform(recalc=True))
    ds.attrs = _zone_metadata(zone, layout, extent)
    ds.embedding.attrs.update(_embedding_attrs(layout))
    ds.observations.attrs.update({"long_name": "valid Sentinel-2 observations used per pixel", "units": "1"})
    ds.tile_record.attrs.update({"long_name": "completion record per tile and period (JSON); empty: not written"})
    ds.tile_planned.attrs.update({"long_name": "1 where a run planned this tile and period"})
    for name in ("embedding", "observations"):
        # As an attribute: rioxarray keeps it in `encoding`, which to_zarr's own encoding replaces.
        ds[name].attrs["grid_mapping"] = "spatial_ref"
        ds[name].encoding.pop("grid_mapping", None)
    return ds


def pixel_encoding(layout: StoreLayout, chunk: int, shard: int) -> dict[str, dict[str, Any]]:
    """Encoding of the per-pixel arrays (embedding, observations) of level 0 or an overview level:
    square inner chunks of `chunk` px in shards of `shard` px (one tile's block), nodata fill."""
    fill = NODATA_INT8 if layout.storage == "int8" else np.nan
    return {
        "embedding": {
            "chunks": (1, chunk, chunk, len(BANDS)),
            "shards": (1, shard, shard, len(BANDS)),
            "fill_value": fill,
        },
        "observations": {"chunks": (1, chunk, chunk), "shards": (1, shard, shard), "fill_value": 0},
    }


def zone_encoding(layout: StoreLayout, zone: str, extent: Mapping[str, int] | None = None) -> dict[str, dict[str, Any]]:
    size, extent = layout.tile_pixels, extent or zone_tile_extent(zone[-1])
    zone_shape = (extent["row_max"] - extent["row_min"] + 1, extent["col_max"] - extent["col_min"] + 1)
    return {
        **pixel_encoding(layout, CHUNK_PX, size),
        "tile_record": {"chunks": (1, 1, 1), "fill_value": ""},
        "tile_planned": {"chunks": (1, *zone_shape), "fill_value": 0},
    }


def _zone_metadata(zone: str, layout: StoreLayout, extent: Mapping[str, int]) -> dict[str, Any]:
    """Ours (`aef:`), with the community's embeddings Zarr convention (`geoemb:`, docs/metadata.md)
    under it, so that tools written for other embedding products read the group."""
    epsg = utm_epsg(int(zone[:-1]), zone[-1])
    standard = geoemb_attributes(
        model=layout.model,
        model_weights=layout.model_weights,
        trained=not layout.model_weights.startswith("untrained"),
        storage=layout.storage,
        dimensions=EMBEDDING_DIM,
        zone=zone,
        epsg=epsg,
        resolution_m=layout.resolution_m,
        tile_pixels=layout.tile_pixels,
        **({"source_data": layout.source_data} if layout.source_data else {}),
    )
    return standard | {
        "title": f"AlphaEarth-style embedding field, UTM zone {zone}",
        "aef:layout": ZONE_WIDE,
        "aef:model": layout.model,
        "aef:model_weights": layout.model_weights,
        "aef:trained": int(not layout.model_weights.startswith("untrained")),
        "aef:storage": layout.storage,
        "aef:resolution_m": layout.resolution_m,
        "aef:tile_pixels": layout.tile_pixels,
        "aef:tiles": dict(extent),
        "aef:software": f"aef-pipeline {__version__}",
        "proj:code": f"EPSG:{epsg}",
        "spatial:dimensions": ["y", "x"],
        # GeoZarr / spatial convention: the affine of the group's pixel grid (a, b, c, d, e, f).
        "spatial:transform": [
            layout.resolution_m,
            0.0,
            extent["col_min"] * layout.tile_pixels * layout.resolution_m,
            0.0,
            -layout.resolution_m,
            (extent["row_max"] + 1) * layout.tile_pixels * layout.resolution_m,
        ],
    }


def _embedding_attrs(layout: StoreLayout) -> dict[str, Any]:
    attrs: dict[str, Any] = {"long_name": "64-d unit embedding vector", "aef:storage": layout.storage}
    if layout.storage == "int8":
        attrs["aef:dequantise"] = "x = sign(q) * (q / 127.5)^2 after masking q == -128 (nodata)"
    return attrs


# --- overview templates (issue 19; the pyramid itself is overviews.py) ---------------------------


def create_overviews(path: Path, zone: str, periods: Sequence[Period], layout: StoreLayout) -> None:
    """The templates of levels 1..OVERVIEW_LEVELS under `{zone}/overviews/`, then the zone group's
    `multiscales` attribute (zarr-conventions/multiscales) describing the pyramid."""
    for level in range(1, OVERVIEW_LEVELS + 1):
        _level_template(zone, periods, layout, level).to_zarr(
            path,
            group=overview_group(zone, level),
            mode="a",
            compute=False,
            encoding=pixel_encoding(layout, *overview_chunks(layout.tile_pixels, level)),
            consolidated=False,
        )
    _register_multiscales(path, zone)


def _level_template(zone: str, periods: Sequence[Period], layout: StoreLayout, level: int) -> xr.Dataset:
    """Level `level`'s template: the zone template on a grid 2^level times coarser (same corner,
    same tiles, 1920 / 2^level px each), made into the level's by overviews.overview_template."""
    factor = 2**level
    coarse = replace(layout, resolution_m=layout.resolution_m * factor, tile_pixels=layout.tile_pixels // factor)
    return overview_template(zone_template(zone, periods, coarse), level)


def _register_multiscales(path: Path, zone: str) -> None:
    register_multiscales(path, zone, group_geobox(zone_attrs(path, zone) or {}))


# --- checks and records --------------------------------------------------------------------------


def _check_writable(path: Path) -> None:
    parent = path if path.exists() else path.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as error:
            raise UserInputError(f"cannot create {parent} ({error.strerror}): choose a writable --out") from None
    if not os.access(parent, os.W_OK):
        raise UserInputError(f"{parent} is not writable: choose another --out")
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{path} exists and is not a directory (a Zarr store): choose another --out")
    if path.is_dir() and any(path.iterdir()) and not (path / "zarr.json").is_file():
        raise UserInputError(f"{path} holds something that is not an embedding store: choose another --out")


def zone_attrs(path: Path, zone: str) -> dict[str, Any] | None:
    """A zone group's attributes (layout, model, tile extent `aef:tiles`), or None without the group."""
    if not (path / zone / "zarr.json").is_file():
        return None
    return dict(zarr.open_group(str(path / zone), mode="r").attrs)


def _check_compatible(path: Path, zone: str, attrs: Mapping[str, Any], layout: StoreLayout) -> None:
    if attrs.get("aef:layout") != ZONE_WIDE:
        raise UserInputError(
            f"{path} group {zone} has the older bbox-extent layout, which cannot take new tiles or periods: "
            f"run `aef-pipeline migrate {path}` once (it moves the shards, nothing is recomputed), "
            "or write to a new path"
        )
    expected = _zone_metadata(zone, layout, attrs["aef:tiles"])
    for key in ("aef:model", "aef:model_weights", "aef:storage", "aef:resolution_m", "aef:tile_pixels"):
        if attrs.get(key) != expected[key]:
            raise UserInputError(
                f"{path} was made with {key.removeprefix('aef:')} {attrs.get(key)!r}, this run uses {expected[key]!r}: "
                "write to a new path or pass --overwrite"
            )


def _check_disjoint(periods: Sequence[Period]) -> None:
    for i, first in enumerate(periods):
        for second in periods[i + 1 :]:
            if first != second and first.start < second.end and second.start < first.end:
                raise UserInputError(
                    f"periods {first.label} and {second.label} overlap: a store's periods must be equal or "
                    "disjoint; ask for them in two stores"
                )


def _check_periods(path: Path, zone: str, periods: Sequence[Period]) -> None:
    """A new period must equal one of the store's or not overlap any: one pixel, one value per instant."""
    for period in periods:
        for stored in store_periods(path, zone):
            if stored != period and stored.start < period.end and period.start < stored.end:
                raise UserInputError(
                    f"period {period.label} overlaps {stored.label}, which {path} group {zone} already holds: "
                    f"a store's periods must be equal or disjoint; ask for {stored.label} or write to a new path"
                )


def _inside(tile: TileId, extent: Mapping[str, int]) -> bool:
    return extent["col_min"] <= tile.col <= extent["col_max"] and extent["row_min"] <= tile.row <= extent["row_max"]


def store_periods(path: Path, zone: str) -> list[Period]:
    """The group's periods in stored order (time index), read from `time` and `time_end` alone."""
    if not (path / zone / "time" / "zarr.json").is_file():
        return []
    others = [
        name for name in zarr.open_group(str(path / zone), mode="r").array_keys() if name not in ("time", "time_end")
    ]
    ds = xr.open_zarr(path, group=zone, consolidated=False, chunks=None, drop_variables=others)
    starts, ends = (ds[name].values.astype("datetime64[us]").tolist() for name in ("time", "time_end"))
    return [
        Period(start.replace(tzinfo=dt.UTC), end.replace(tzinfo=dt.UTC))
        for start, end in zip(starts, ends, strict=True)
    ]


def _period_index(path: Path, zone: str, period: Period) -> int | None:
    periods = store_periods(path, zone)
    return periods.index(period) if period in periods else None


def tile_region(tile: TileId, extent: Mapping[str, int]) -> tuple[slice, slice]:
    """The tile's (y, x) pixel slices in its zone group, whose tile extent is `extent`."""
    if not _inside(tile, extent):
        raise UserInputError(f"tile {tile} lies outside the store's extent {dict(extent)}")
    row0 = (extent["row_max"] - tile.row) * TILE_PIXELS
    col0 = (tile.col - extent["col_min"]) * TILE_PIXELS
    return slice(row0, row0 + TILE_PIXELS), slice(col0, col0 + TILE_PIXELS)


def tile_index(tile: TileId, extent: Mapping[str, int]) -> dict[str, slice]:
    """The tile's position on the (tile_row, tile_col) axes of `tile_record`."""
    row, col = extent["row_max"] - tile.row, tile.col - extent["col_min"]
    return {"tile_row": slice(row, row + 1), "tile_col": slice(col, col + 1)}


__all__ = [
    "BANDS",
    "NODATA_INT8",
    "StoreLayout",
    "create_store",
    "dequantise",
    "describe_store",
    "finalize",
    "finished",
    "open_embeddings",
    "quantise",
    "read_record",
    "unfinished",
    "write_tile",
    "zone_name",
    "zones_in",
]
