"""`aef-pipeline verify`: check every tile-period a store records as done, and name what is wrong.

For each completion record: it sits where its tile is, it names the store's model and weights,
the stored values hash to the checksum written with them, pixels are nodata exactly where no
frame was observed (and outside the areas the record lists), and observed vectors have unit
norm within the storage's rounding.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import TileId
from aef_pipeline.store import NODATA_INT8, dequantise, shard_digest, tile_index, tile_region, zone_attrs, zones_in

# Unit-norm tolerance per storage: int8's quantisation moves a norm by up to ~0.02.
NORM_TOLERANCE = {"int8": 0.03, "float16": 2e-3, "float32": 1e-4}


@dataclass
class Verification:
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: Path) -> Verification:
    zones = zones_in(path)
    if not zones:
        raise UserInputError(f"{path} is not an aef-pipeline embedding store (no zone groups found)")
    result = Verification()
    for zone in zones:
        attrs = zone_attrs(path, zone)
        if attrs is None:
            result.problems.append(f"{zone}: zone metadata missing")
            continue
        records = zarr.open_array(str(path / zone / "tile_record"), mode="r")
        embedding = zarr.open_array(str(path / zone / "embedding"), mode="r")
        observations = zarr.open_array(str(path / zone / "observations"), mode="r")
        for index in range(records.shape[0]):
            for tile in _tiles(zone, attrs["aef:tiles"]):
                where = tile_index(tile, attrs["aef:tiles"])
                text = str(records[index, where["tile_row"].start, where["tile_col"].start])
                if not text:
                    continue
                rows, cols = tile_region(tile, attrs["aef:tiles"])
                stored = np.asarray(embedding[index, rows, cols, :]), np.asarray(observations[index, rows, cols])
                result.checked += 1
                result.problems += [f"{tile} period {index}: {p}" for p in _check(text, tile, attrs, *stored)]
    return result


def _tiles(zone: str, extent: dict[str, int]) -> Iterator[TileId]:
    number, hemisphere = int(zone[:-1]), zone[-1]
    for row in range(extent["row_min"], extent["row_max"] + 1):
        for col in range(extent["col_min"], extent["col_max"] + 1):
            yield TileId(number, hemisphere, col, row)


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
