"""The overview pyramid of a zone group (issue 19): level k is the field averaged over 2^k x 2^k px.

    blocks = overview_blocks(values, observations, levels)             # one tile's levels, in memory
    write_overviews(path, zone, index, region, values, observations, levels)  # ... as whole shards
    register_multiscales(path, zone, base)                             # the `multiscales` attribute

What a level is lives here: its group, grid, chunking, attributes and the arithmetic of its means.
Each level's template is made by the store (`create_store`), from the zone template on the level's
grid, which `overview_template` turns into the level's. Depends on numpy, xarray, zarr and the
quantisation, never on `store`: the store calls this module, not the other way round.
docs/store.md (Overviews) says why 7 levels, these chunks and this layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from affine import Affine
from odc.geo.geobox import GeoBox

from aef_pipeline.errors import UserInputError
from aef_pipeline.quantisation import DEQUANTISED, NODATA_INT8, quantise

# Level k averages 2^k x 2^k pixels. 1920 = 2^7 x 15, so 7 is the deepest level a tile divides
# into exactly (15 px of 1.28 km): every level's block of a tile-period is whole shards, written
# by that tile's own task. Levels 1-7 cost 1/3 of level 0 (sum of 4^-k).
OVERVIEW_LEVELS = 7
# Inner chunk of the levels: 120 px (900 KB int8) divides the tile block of levels 1-4 (960, 480,
# 240, 120 px), so no chunk straddles two tiles; levels 5-7 (60, 30, 15 px) are one chunk per tile.
OVERVIEW_CHUNK_PX = 120
# Dask chunk of `open_embeddings(level=k)`: a multiple of every level's tile block and inner chunk.
OVERVIEW_READ_PX = 480
# The community's multiscales convention (zarr-conventions/multiscales v0.1.0, README at
# github.com/zarr-conventions/multiscales; a Proposal): registered in `zarr_conventions`, the
# pyramid described by `multiscales.layout` in the zone group's attributes.
MULTISCALES_CONVENTION: Mapping[str, str] = {
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v0.1.0/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v0.1.0/README.md",
    "name": "multiscales",
    "description": "Multiscale layout of zarr datasets",
}
# Named apart from level 0's y and x: a child group's dimensions must match its parent's in
# xarray's DataTree, so `xr.open_datatree` of the store would fail on y/x of another size.
OVERVIEW_DIMS = {"y": "y_overview", "x": "x_overview"}
OVERVIEW_METHOD = "mean of the unit vectors over the block (nodata excluded), re-normalised; observations summed"
# Rows of a tile de-quantised at once for the level-1 sums: 16 x 1920 px of float32 is 7.9 MB, so
# the lookup, the mask and the three additions of a strip stay in cache (128 rows took 2x longer).
SUM_STRIP_PX = 16
# Rows of a level normalised at once: bounds the float64 temporaries of the norms (16 rows of a
# whole tile's level 1 are 7.9 MB each; a whole level 1 would make two of 472 MB).
NORM_STRIP_PX = 16
# Rows of level 0 taken through every level at once (rounded up to whole blocks of the coarsest
# level): bounds the float32 sums to 64 rows of level 1 (15.7 MB for a whole tile's width).
OVERVIEW_STRIP_PX = 128


def overview_group(zone: str, level: int) -> str:
    """The group of overview level `level` (level 0 is the zone group itself)."""
    return zone if level == 0 else f"{zone}/overviews/{level}"


def overview_levels(attrs: Mapping[str, Any]) -> int:
    """How many overview levels a zone group has (0 for a group made before they existed, or migrated)."""
    layout = attrs.get("multiscales", {}).get("layout", [])
    return max(0, len(layout) - 1)


def check_level(root: Path, zone: str, attrs: Mapping[str, Any], level: int) -> None:
    """Refuse, in one line, a level the zone group (attributes `attrs`) does not hold."""
    levels = overview_levels(attrs)
    if not 0 <= level <= levels:
        held = f"levels 0-{levels}" if levels else "no overviews (made before they existed, or migrated)"
        raise UserInputError(f"{root} group {zone} has {held}: ask for level 0 to {levels}, not {level}")


def overview_chunks(tile_pixels: int, level: int) -> tuple[int, int]:
    """(inner chunk, shard) in px of `level`: the shard is one tile's block of the level, the inner
    chunk OVERVIEW_CHUNK_PX or the whole block where that is smaller."""
    block = tile_pixels // 2**level
    chunk = min(OVERVIEW_CHUNK_PX, block)
    assert block * 2**level == tile_pixels, f"a tile does not divide into level {level}"
    assert block % chunk == 0, (block, chunk)
    return chunk, block


def overview_template(template: xr.Dataset, level: int) -> xr.Dataset:
    """Level `level`'s template, from the zone template made on that level's grid (2^level times
    coarser, same corner, same tiles): without records, observations as int32 sums, attributes
    saying which level it is and how it was made, dimensions y_overview and x_overview."""
    factor = 2**level
    ds = template.drop_vars(["tile_record", "tile_planned"])
    ds["observations"] = ds.observations.astype(np.int32)
    ds.observations.attrs["long_name"] = f"valid Sentinel-2 observations summed over {factor} x {factor} px"
    ds.attrs |= {
        "aef:overview_level": level,
        "aef:overview_factor": factor,
        "aef:overview_method": OVERVIEW_METHOD,
        "spatial:dimensions": list(OVERVIEW_DIMS.values()),
    }
    return ds.rename(OVERVIEW_DIMS)


def register_multiscales(path: Path, zone: str, base: GeoBox) -> None:
    """Register the convention in the zone group's `zarr_conventions` and describe its pyramid
    over `base`, the group's level-0 grid."""
    group = zarr.open_group(str(path / zone), mode="r+")
    attrs: dict[str, Any] = dict(group.attrs)
    registered: list[dict[str, Any]] = attrs.get("zarr_conventions", [])
    others = [c for c in registered if c.get("uuid") != MULTISCALES_CONVENTION["uuid"]]
    conventions = [*others, dict(MULTISCALES_CONVENTION)]
    group.update_attributes({"zarr_conventions": conventions, "multiscales": multiscales_attribute(base)})


def multiscales_attribute(base: GeoBox) -> dict[str, Any]:
    """The `multiscales` object: one array-based layout entry per level (level 0 is the zone
    group's own `embedding`), each with its scale relative to the level it was derived from and its
    absolute `spatial:transform` / `spatial:shape` (the convention puts absolute positioning there)."""
    entries: list[dict[str, Any]] = []
    for level in range(OVERVIEW_LEVELS + 1):
        factor = 2**level
        affine = base.affine * Affine.scale(factor)
        entry: dict[str, Any] = {
            "asset": "embedding" if level == 0 else f"overviews/{level}/embedding",
            "transform": {"scale": [1.0, 1.0] if level == 0 else [2.0, 2.0], "translation": [0.0, 0.0]},
            "spatial:transform": [affine.a, affine.b, affine.c, affine.d, affine.e, affine.f],
            "spatial:shape": [base.shape[0] // factor, base.shape[1] // factor],
        }
        if level:
            entry["derived_from"] = entries[-1]["asset"]
        entries.append(entry)
    return {"layout": entries, "resampling_method": "average", "aef:method": OVERVIEW_METHOD}


def write_overviews(
    path: Path,
    zone: str,
    index: int,
    region: tuple[slice, slice],
    values: np.ndarray,
    observations: np.ndarray,
    levels: int,
) -> None:
    """Every level's block of one tile-period, computed from its stored level-0 values (a whole
    tile: (y, x, band) as stored, and its counts), each written as whole shards."""
    rows, cols = region
    blocks = overview_blocks(values, observations, levels)
    for level in range(1, levels + 1):
        stored, counts = blocks.pop(0)  # each level let go once written
        factor, group = 2**level, path / overview_group(zone, level)
        coarse_rows = slice(rows.start // factor, rows.stop // factor)
        coarse_cols = slice(cols.start // factor, cols.stop // factor)
        zarr.open_array(str(group / "embedding"), mode="r+")[index, coarse_rows, coarse_cols, :] = stored
        zarr.open_array(str(group / "observations"), mode="r+")[index, coarse_rows, coarse_cols] = counts
        del stored, counts


def overview_blocks(values: np.ndarray, observations: np.ndarray, levels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(stored values, summed counts) of levels 1..`levels` of one tile: each block the mean of the
    de-quantised unit vectors of its valid pixels, re-normalised and stored like level 0; a block
    with no valid pixel is nodata. Each level is summed from the previous level's sums (not its
    re-normalised vectors), so every level is the exact mean over its 2^k x 2^k pixels. Only the
    box around the valid pixels is computed: a window written into a tile costs what the window does.

    The box is taken OVERVIEW_STRIP_PX rows at a time (whole blocks of the coarsest level), each
    strip through every level: a level's sums never exist for more than a strip (a whole valid
    tile's level-1 sums are 236 MB of float32), only the blocks as stored (1/3 of level 0).
    Every pixel of every level adds the same terms in the same order as when the whole box is
    summed at once, so the bits do not depend on the strips (tests/test_overviews.py).
    `verify` recomputes these and compares bits: any change here must keep them."""
    if levels == 0:  # a group made before overviews, or migrated
        return []
    int8 = values.dtype == np.int8
    valid = values[..., 0] != NODATA_INT8 if int8 else np.isfinite(values[..., 0])
    coarsest = 2**levels
    r0, r1, c0, c1 = _valid_box(valid, coarsest)
    blocks, counts = [], observations.astype(np.int32)
    for level in range(1, levels + 1):
        factor = 2**level
        shape = (values.shape[0] // factor, values.shape[1] // factor, values.shape[2])
        counts = _sum_2x2(counts)
        nodata = np.full(shape, NODATA_INT8 if int8 else np.nan, values.dtype)  # stays where not computed
        blocks.append((nodata, counts))
    step = -(-OVERVIEW_STRIP_PX // coarsest) * coarsest
    for row in range(r0, r1, step):
        end = min(row + step, r1)
        sums = _level_one_sums(values[row:end, c0:c1], valid[row:end, c0:c1])
        weights = _sum_2x2(valid[row:end, c0:c1].astype(np.int32))
        for level, (block, _) in enumerate(blocks, start=1):
            if level > 1:
                sums, weights = _sum_2x2(sums), _sum_2x2(weights)
            factor = 2**level
            _store_means(sums, weights, block[row // factor : end // factor, c0 // factor : c1 // factor])
    return blocks


def _valid_box(valid: np.ndarray, align: int) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) around the True pixels, widened to multiples of `align` (empty: 0, 0, 0, 0)."""
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if not len(rows):
        return 0, 0, 0, 0
    start, stop = (int(rows[0]), int(cols[0])), (int(rows[-1]) + 1, int(cols[-1]) + 1)
    (r0, c0), (r1, c1) = ((i // align * align for i in start), (-(-i // align) * align for i in stop))
    return r0, r1, c0, c1


def _level_one_sums(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Sums of the valid de-quantised vectors over 2 x 2 px, SUM_STRIP_PX rows at a time into one
    reused buffer: a whole tile never exists as float32 (944 MB), only its level-1 sums (236 MB).
    int8 is de-quantised by table lookup (the same bits as `dequantise`'s formula)."""
    rows, cols, bands = values.shape
    sums = np.empty((rows // 2, cols // 2, bands), np.float32)
    floats = np.empty((min(SUM_STRIP_PX, rows), cols, bands), np.float32)
    for row in range(0, rows, SUM_STRIP_PX):
        part, strip = values[row : row + SUM_STRIP_PX], floats[: min(SUM_STRIP_PX, rows - row)]
        if values.dtype == np.int8:
            np.take(DEQUANTISED, part.view(np.uint8), out=strip)
        else:
            strip[...] = part
        np.copyto(strip, 0, where=~valid[row : row + SUM_STRIP_PX, :, None])
        _sum_2x2(strip, out=sums[row // 2 : (row + SUM_STRIP_PX) // 2])
    return sums


def _sum_2x2(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Sums over 2 x 2 pixel blocks of (y, x, ...), added as ((a00 + a01) + a10) + a11 whatever
    the memory layout of `a`: float sums depend on the order of their terms, and `verify` must get
    the bits `write_tile` got. (numpy's `reshape(y/2, 2, x/2, 2, ...).sum(axis=(1, 3))` adds in
    this order for C-ordered input, in another for the band-major array a whole tile is quantised
    into, so levels written from it failed `verify`.)"""
    summed: np.ndarray = np.add(a[0::2, 0::2], a[0::2, 1::2], out=out)
    summed += a[1::2, 0::2]
    summed += a[1::2, 1::2]
    return summed


def _store_means(sums: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """Write into `out` (int8, float16 or float32 as stored) the re-normalised `sums`, NaN (-128)
    where no pixel was valid or the mean is zero; NORM_STRIP_PX rows at a time."""
    for row in range(0, len(sums), NORM_STRIP_PX):
        part = sums[row : row + NORM_STRIP_PX]
        norms = np.sqrt((part.astype(np.float64) ** 2).sum(axis=-1, keepdims=True))
        with np.errstate(invalid="ignore", divide="ignore"):
            vectors = (part / norms).astype(np.float32)
        vectors[~((weights[row : row + NORM_STRIP_PX, :, None] > 0) & (norms > 0))[..., 0]] = np.nan
        out[row : row + NORM_STRIP_PX] = quantise(vectors) if out.dtype == np.int8 else vectors
