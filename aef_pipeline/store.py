"""Stage 5: the embedding field store, Zarr v3 written through xarray.

    store = create_store(path, tiles, periods, layout)       # template, once, before any task
    write_tile(path, tile, period, field, record)             # one task: whole shards, then a record
    finalize(path)                                            # consolidated metadata, once at the end
    ds = open_embeddings(path, zone="33N")                    # float32 unit vectors, NaN nodata

One group per UTM zone and hemisphere ("33N"). In it, `embedding` (time, y, x, band) holds int8
with the AlphaEarth quantisation (nodata -128) or float16/float32; `observations` (time, y, x)
counts the valid frames behind each pixel. A shard is exactly one work tile for one period, so
every task writes whole shards and never touches a neighbour's. `tile_record` (time, tile_row,
tile_col) holds one JSON string per tile-period, each in its own chunk, written after the tile's
data: a non-empty record says the tile is complete and how it was made (scenes, model, software).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401 (registers the .rio accessor)
import xarray as xr
import zarr

from aef_pipeline import __version__
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import EMBEDDING_DIM, RESOLUTION_M, TILE_PIXELS, TileId, utm_epsg
from aef_pipeline.plan import Period

NODATA_INT8 = -128
BANDS = tuple(f"A{i:02d}" for i in range(EMBEDDING_DIM))
# Inner chunk: 128 x 128 px x 64 bands = 1 MiB of int8. A pixel's whole vector sits in one chunk
# (per-pixel reads touch one chunk per year), and an area read of a 1.28 km window is one chunk.
# 15 x 15 of them make a 1920 px shard (one work tile).
CHUNK_PX = 128


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

    def __post_init__(self) -> None:
        if self.storage not in ("int8", "float16", "float32"):
            raise UserInputError(f"storage {self.storage!r} is not one of int8, float16, float32")


def quantise(x: np.ndarray) -> np.ndarray:
    """AlphaEarth int8: q = clip(round(sign(x) sqrt(|x|) 127.5), -127, 127); NaN -> -128."""
    q = np.clip(np.round(np.sign(x) * np.sqrt(np.abs(x)) * 127.5), -127, 127)
    return np.where(np.isnan(x), NODATA_INT8, q).astype(np.int8)


def dequantise(q: np.ndarray) -> np.ndarray:
    """x = sign(q) (q / 127.5)^2, with -128 masked to NaN *before* (else it becomes -1.0079)."""
    values = np.sign(q) * (q.astype(np.float32) / np.float32(127.5)) ** 2
    return np.where(q == NODATA_INT8, np.float32(np.nan), values).astype(np.float32)


def zone_name(tile: TileId) -> str:
    return f"{tile.zone:02d}{tile.hemisphere}"


def create_store(
    path: Path, tiles: Sequence[TileId], periods: Sequence[Period], layout: StoreLayout, overwrite: bool = False
) -> None:
    """Write the template of every zone group (metadata and coordinates, no data), or add the
    periods an existing compatible store lacks. Refuses a store made with another model, grid or
    encoding, unless `overwrite`."""
    if overwrite and path.exists():
        shutil.rmtree(path)
    _check_writable(path)
    _unconsolidate(path)
    for zone, zone_tiles in _by_zone(tiles).items():
        existing = zone_attrs(path, zone)
        if existing is None:
            _template(zone_tiles, periods, layout).to_zarr(
                path, group=zone, mode="a", compute=False, encoding=_encoding(layout), consolidated=False
            )
            continue
        _check_compatible(path, zone, existing, layout, zone_tiles)
        missing = [p for p in periods if _period_index(path, zone, p) is None]
        if missing:
            _template(zone_tiles, missing, layout, existing["aef:tiles"]).to_zarr(
                path, group=zone, mode="a", append_dim="time", compute=False, consolidated=False
            )


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
    _write_record(path, tile, period, index, attrs, {**record, "sha256": shard_digest(values, observations)}, window)


def shard_digest(embedding: np.ndarray, observations: np.ndarray) -> str:
    """SHA-256 of a tile-period's stored values (embedding (y, x, band) then observations (y, x)),
    kept in its record so `aef-pipeline verify` can tell a damaged shard from a good one."""
    digest = hashlib.sha256(np.ascontiguousarray(embedding).tobytes())
    digest.update(np.ascontiguousarray(observations.astype(np.int16)).tobytes())
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
    r0, r1, c0, c1 = window
    shard = np.asarray(zarr.open_array(str(path / zone / "embedding"), mode="r")[index, rows, cols, :])
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


def open_embeddings(path: str | os.PathLike[str], zone: str | None = None) -> xr.Dataset:
    """One zone's embeddings as float32 (de-quantised lazily), nodata NaN, CRS set, time sorted."""
    root = Path(path)
    zones = zones_in(root)
    if zone is None:
        if len(zones) != 1:
            raise UserInputError(f"{root} holds zones {', '.join(zones) or 'none'}: pass zone= one of them")
        zone = zones[0]
    if zone not in zones:
        raise UserInputError(f"{root} has no zone {zone}; it holds {', '.join(zones) or 'none'}")
    ds: xr.Dataset = xr.open_zarr(root, group=zone, decode_coords="all", consolidated=_consolidated(root))
    if ds.attrs.get("aef:storage") == "int8":
        attrs = ds.embedding.attrs
        ds["embedding"] = xr.apply_ufunc(dequantise, ds.embedding, dask="parallelized", output_dtypes=[np.float32])
        ds.embedding.attrs.update(attrs)
    else:
        ds["embedding"] = ds.embedding.astype(np.float32)
    return ds.sortby("time")


def describe_store(path: Path) -> str:
    """A few lines on what a store holds and how complete it is (`aef-pipeline info`)."""
    zones = zones_in(path)
    if not zones:
        raise UserInputError(f"{path} is not an aef-pipeline embedding store (no zone groups found)")
    lines = [f"{path}: {len(zones)} zone group(s)"]
    for zone in zones:
        ds = xr.open_zarr(path, group=zone, consolidated=_consolidated(path))
        records = ds.tile_record.values
        done, total = int((records != "").sum()), records.size
        lines.append(
            f"  {zone}: {ds.sizes['y']} x {ds.sizes['x']} px, periods "
            f"{', '.join(str(t)[:10] for t in ds.time.values)}, {ds.attrs['aef:storage']}, model "
            f"{ds.attrs['aef:model']} ({ds.attrs['aef:model_weights']}); tile-periods written {done}/{total}"
        )
    if not _consolidated(path):
        lines.append("  not finalised: a run is writing this store or stopped early (rerun it to finish)")
    return "\n".join(lines)


def _unconsolidate(path: Path) -> None:
    """Drop the consolidated metadata before a run changes the store: `finalize` writes it again
    at the end, so a store whose run stopped early does not show readers a stale snapshot (new
    periods or zones missing) and is visibly unfinished."""
    if _consolidated(path):
        zarr.open_group(str(path), mode="r+", use_consolidated=False).update_attributes({})


def _consolidated(path: Path) -> bool:
    root = path / "zarr.json"
    return root.is_file() and "consolidated_metadata" in json.loads(root.read_text())


def zones_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if (p / "zarr.json").is_file()) if path.is_dir() else []


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


def _template(
    tiles: Sequence[TileId], periods: Sequence[Period], layout: StoreLayout, extent: Mapping[str, int] | None = None
) -> xr.Dataset:
    ext = dict(extent or _extent(tiles))
    size, res = layout.tile_pixels, layout.resolution_m
    cols, rows = (ext["col_max"] - ext["col_min"] + 1) * size, (ext["row_max"] - ext["row_min"] + 1) * size
    x = (ext["col_min"] * size + np.arange(cols) + 0.5) * res  # pixel centres
    y = ((ext["row_max"] + 1) * size - np.arange(rows) - 0.5) * res  # north-up: y decreases
    dtype = np.int8 if layout.storage == "int8" else np.dtype(layout.storage)
    fill = NODATA_INT8 if layout.storage == "int8" else np.nan
    shape, chunks = (len(periods), rows, cols, len(BANDS)), (1, size, size, len(BANDS))
    tile = tiles[0]
    lazy_fill = da.full(shape, fill, dtype=dtype, chunks=chunks)  # type: ignore[no-untyped-call]
    base = xr.Dataset(
        {
            "embedding": (("time", "y", "x", "band"), lazy_fill),
            "observations": (("time", "y", "x"), da.zeros(shape[:3], dtype=np.int16, chunks=chunks[:3])),
            # Small (tiles x periods), so numpy: written with the template, one chunk per element.
            "tile_record": (
                ("time", "tile_row", "tile_col"),
                np.full((len(periods), rows // size, cols // size), "", dtype=object),
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
    ds: xr.Dataset = base.rio.write_crs(f"EPSG:{utm_epsg(tile.zone, tile.hemisphere)}")
    ds = ds.rio.write_transform(ds.rio.transform(recalc=True))
    ds.attrs = _zone_metadata(tile, layout, ext)
    ds.embedding.attrs.update(_embedding_attrs(layout))
    ds.observations.attrs.update({"long_name": "valid Sentinel-2 observations used per pixel", "units": "1"})
    ds.tile_record.attrs.update({"long_name": "completion record per tile and period (JSON); empty: not written"})
    for name in ("embedding", "observations"):
        # As an attribute: rioxarray keeps it in `encoding`, which to_zarr's own encoding replaces.
        ds[name].attrs["grid_mapping"] = "spatial_ref"
        ds[name].encoding.pop("grid_mapping", None)
    return ds


def _encoding(layout: StoreLayout) -> dict[str, dict[str, Any]]:
    size = layout.tile_pixels
    fill = NODATA_INT8 if layout.storage == "int8" else np.nan
    return {
        "embedding": {
            "chunks": (1, CHUNK_PX, CHUNK_PX, len(BANDS)),
            "shards": (1, size, size, len(BANDS)),
            "fill_value": fill,
        },
        "observations": {"chunks": (1, CHUNK_PX, CHUNK_PX), "shards": (1, size, size), "fill_value": 0},
        "tile_record": {"chunks": (1, 1, 1), "fill_value": ""},
    }


def _zone_metadata(tile: TileId, layout: StoreLayout, extent: Mapping[str, int]) -> dict[str, Any]:
    epsg = utm_epsg(tile.zone, tile.hemisphere)
    return {
        "title": f"AlphaEarth-style embedding field, UTM zone {zone_name(tile)}",
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


def _check_compatible(
    path: Path, zone: str, attrs: Mapping[str, Any], layout: StoreLayout, tiles: Sequence[TileId]
) -> None:
    expected = _zone_metadata(tiles[0], layout, attrs["aef:tiles"])
    for key in ("aef:model", "aef:model_weights", "aef:storage", "aef:resolution_m", "aef:tile_pixels"):
        if attrs.get(key) != expected[key]:
            raise UserInputError(
                f"{path} was made with {key.removeprefix('aef:')} {attrs.get(key)!r}, this run uses {expected[key]!r}: "
                "write to a new path or pass --overwrite"
            )
    outside = [str(t) for t in tiles if not _inside(t, attrs["aef:tiles"])]
    if outside:
        raise UserInputError(
            f"{path} group {zone} does not cover tiles {', '.join(outside[:3])}: write the new area to a new path "
            "or pass --overwrite"
        )


def _inside(tile: TileId, extent: Mapping[str, int]) -> bool:
    return extent["col_min"] <= tile.col <= extent["col_max"] and extent["row_min"] <= tile.row <= extent["row_max"]


def _period_index(path: Path, zone: str, period: Period) -> int | None:
    group = zarr.open_group(str(path / zone), mode="r")
    starts = xr.open_zarr(path, group=zone, consolidated=False).time.values if "time" in group else []
    target = np.datetime64(period.start.replace(tzinfo=None), "ns")
    matches = np.flatnonzero(np.asarray(starts) == target)
    return int(matches[0]) if matches.size else None


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
