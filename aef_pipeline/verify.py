"""`aef-pipeline verify`: check every tile-period a store records as done, and name what is wrong.

For each completion record (found by listing the record chunks, so a zone-wide group costs what
it holds): it sits where its tile is, it names the store's model and weights, the stored values
hash to the checksum written with them, pixels are nodata exactly where no frame was observed
(and outside the areas the record lists), observed vectors have unit norm within the
storage's rounding, and every overview level of the tile equals what its level 0 gives. For a
finalised store, also: the consolidated metadata matches the groups, and the STAC catalog beside
the store describes what is written (its Items and extents).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import zarr

from aef_pipeline.catalog import stac_collection, stac_dir
from aef_pipeline.grid import TileId
from aef_pipeline.overviews import overview_blocks, overview_group, overview_levels
from aef_pipeline.store import (
    NODATA_INT8,
    dequantise,
    is_finalised,
    required_zones,
    shard_digest,
    tile_index,
    tile_region,
    written_tiles,
    zone_attrs,
)

# Unit-norm tolerance per storage: int8's quantisation moves a norm by up to ~0.02.
NORM_TOLERANCE = {"int8": 0.03, "float16": 2e-3, "float32": 1e-4}


@dataclass
class Verification:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What could not be checked and why (not problems)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: Path) -> Verification:
    zones = required_zones(path)
    result = Verification()
    for zone in zones:
        attrs = zone_attrs(path, zone)
        if attrs is None:
            result.problems.append(f"{zone}: zone metadata missing")
            continue
        _check_records(path, zone, attrs, result)
    if is_finalised(path):
        result.problems += _metadata_problems(path, zones) + _stac_problems(path)
    else:
        result.notes.append("not finalised (a run is writing it or stopped early): metadata and STAC not checked")
    return result


def _check_records(path: Path, zone: str, attrs: dict[str, Any], result: Verification) -> None:
    records = zarr.open_array(str(path / zone / "tile_record"), mode="r")
    embedding = zarr.open_array(str(path / zone / "embedding"), mode="r")
    observations = zarr.open_array(str(path / zone / "observations"), mode="r")
    for index, tiles in sorted(written_tiles(path, zone).items()):
        for tile in tiles:
            where = tile_index(tile, attrs["aef:tiles"])
            text = str(records[index, where["tile_row"].start, where["tile_col"].start])
            if not text:
                continue
            rows, cols = tile_region(tile, attrs["aef:tiles"])
            stored = np.asarray(embedding[index, rows, cols, :]), np.asarray(observations[index, rows, cols])
            result.checked += 1
            result.problems += [f"{tile} period {index}: {p}" for p in _check(text, tile, attrs, *stored)]
            stale = _stale_levels(path, zone, index, (rows, cols), *stored, overview_levels(attrs))
            result.problems += [f"{tile} period {index}: overview level {k} does not match level 0" for k in stale]


def _stale_levels(
    path: Path, zone: str, index: int, region: tuple[slice, slice], values: np.ndarray, counts: np.ndarray, levels: int
) -> list[int]:
    """The overview levels whose block of this tile-period differs from what its stored level 0
    gives (the computation is deterministic: equal means written from these values)."""
    rows, cols = region
    stale = []
    for level, (want, want_counts) in enumerate(overview_blocks(values, counts, levels), start=1):
        factor, group = 2**level, path / overview_group(zone, level)
        where = (
            index,
            slice(rows.start // factor, rows.stop // factor),
            slice(cols.start // factor, cols.stop // factor),
        )
        got = np.asarray(zarr.open_array(str(group / "embedding"), mode="r")[(*where, slice(None))])
        got_counts = np.asarray(zarr.open_array(str(group / "observations"), mode="r")[where])
        if not (np.array_equal(got, want, equal_nan=True) and np.array_equal(got_counts, want_counts)):
            stale.append(level)
    return stale


def _metadata_problems(path: Path, zones: list[str]) -> list[str]:
    """The consolidated metadata (what readers see first) must match the groups themselves."""
    consolidated = zarr.open_group(str(path), mode="r", use_consolidated=True)
    problems = []
    seen = sorted(name for name, _ in consolidated.groups())
    if seen != zones:
        problems.append(f"consolidated metadata lists zones {seen}, the store holds {zones}: rerun the last run")
    for zone in set(seen) & set(zones):
        live = dict(zarr.open_group(str(path / zone), mode="r").arrays())
        for name, array in consolidated[zone].arrays():  # type: ignore[union-attr]
            if name in live and live[name].shape != array.shape:
                problems.append(
                    f"consolidated metadata gives {zone}/{name} shape {array.shape}, the store "
                    f"{live[name].shape}: rerun the last run to finalise it"
                )
    return problems


def _stac_problems(path: Path) -> list[str]:
    """The STAC catalog beside the store must describe what is written now."""
    saved_path = stac_dir(path.absolute()) / "collection.json"
    if not saved_path.is_file():
        return [f"no STAC catalog at {saved_path}: rerun the last run to write it"]
    saved = pystac.Collection.from_file(str(saved_path))
    expected = stac_collection(path)
    problems = []
    have = {item.id: item for item in saved.get_items()}
    want = {item.id: item for item in expected.get_items()}
    if set(have) != set(want):
        problems.append(f"STAC Items {sorted(have)} do not match the periods written {sorted(want)}")
    for name in set(have) & set(want):
        if not np.allclose(have[name].bbox or [], want[name].bbox or [], atol=1e-9):
            problems.append(f"STAC Item {name} has bbox {have[name].bbox}, the tiles written {want[name].bbox}")
    if not np.allclose(saved.extent.spatial.bboxes[0], expected.extent.spatial.bboxes[0], atol=1e-9):
        problems.append(
            f"STAC Collection extent {saved.extent.spatial.bboxes[0]} is not that of what is written "
            f"{expected.extent.spatial.bboxes[0]}"
        )
    return problems


def _check(text: str, tile: TileId, attrs: dict[str, Any], values: np.ndarray, counts: np.ndarray) -> list[str]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return ["completion record is not JSON"]
    problems = []
    if record.get("tile") != str(tile):
        problems.append(f"record names tile {record.get('tile')!r}, not this one")
    for key, attr in (("model", "aef:model"), ("model_weights", "aef:model_weights")):
        if record.get(key) != attrs[attr]:
            problems.append(f"record says {key} {record.get(key)!r}, the store {attrs[attr]!r}")
    if record.get("sha256") != shard_digest(values, counts):
        problems.append("stored values do not match the checksum written with them (damaged or changed)")
    storage = attrs["aef:storage"]
    nodata = (values == NODATA_INT8).all(axis=-1) if storage == "int8" else np.isnan(values).all(axis=-1)
    partly = (values == NODATA_INT8).any(axis=-1) if storage == "int8" else np.isnan(values).any(axis=-1)
    written = np.zeros(counts.shape, bool)
    for r0, r1, c0, c1 in record.get("areas", []):
        written[r0:r1, c0:c1] = True
    observed = counts > 0
    if (observed & ~written).any():
        problems.append(f"{int((observed & ~written).sum())} px observed outside the areas the record lists")
    if (observed & nodata).any() or (~observed & ~nodata).any():
        problems.append(
            f"{int((observed & nodata).sum())} observed px are nodata and "
            f"{int((~observed & ~nodata).sum())} unobserved px hold values"
        )
    if (partly & ~nodata).any():
        problems.append(f"{int((partly & ~nodata).sum())} px have some bands nodata and others not")
    vectors = values[observed & ~partly]
    if vectors.size:
        floats = dequantise(vectors) if storage == "int8" else vectors.astype(np.float32)
        error = np.abs(np.linalg.norm(floats, axis=-1) - 1)
        if error.max() > NORM_TOLERANCE[storage]:
            problems.append(
                f"{int((error > NORM_TOLERANCE[storage]).sum())} px are not unit vectors "
                f"(norm off by up to {error.max():.3f})"
            )
    return problems
