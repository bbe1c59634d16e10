"""Does a store's overhead grow with what it holds? Metadata bytes, open time, info and verify
time for stores with 1 and 16 tiles of one zone, and 16 tiles spread over 3 zones.

    python benchmarks/store_growth.py

Zone groups span their whole zone (docs/store-growth.md), so metadata and open time should not
depend on how many tiles are written; `info` and `verify` list the records written and should
grow with them only. Each tile gets a 128 px window of unit vectors and its completion record
(what is written does not change the metadata; whole tiles would only make the run slower).
`open s` opens everything planned (a region that grows with the tiles), `open 1 tile s` the
same one-tile bbox in every store, `plain open s` is `xr.open_zarr` of the zone group.
Metadata bytes: every file of the store except data chunks and records (zarr.json files, the
x/y/time/band coordinates, consolidated metadata). Times are medians of 5.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from aef_pipeline.catalog import write_stac
from aef_pipeline.grid import BBox, TileId
from aef_pipeline.plan import Period
from aef_pipeline.store import StoreLayout, create_store, describe_store, finalize, open_embeddings, write_tile
from aef_pipeline.verify import verify_store

LAYOUT = StoreLayout("tiny", "untrained: benchmark")
PERIOD = Period.year(2022)
DATA = ("embedding", "observations", "tile_record", "tile_planned")


def main() -> None:
    warnings.simplefilter("ignore")
    one_zone = [TileId(33, "N", 26 + i % 4, 266 + i // 4) for i in range(16)]
    three_zones = [TileId(zone, "N", 26 + i % 3, 266 + i // 3) for zone in (32, 33, 34) for i in range(5)][:16]
    cases = {"1 tile, 1 zone": one_zone[:1], "16 tiles, 1 zone": one_zone, "16 tiles, 3 zones": three_zones}
    first_tile = one_zone[0].geobox.geographic_extent.boundingbox  # the same region in every store
    print(
        f"{'store':<20} {'metadata B':>11} {'open s':>8} {'open 1 tile s':>14} {'plain open s':>13} "
        f"{'info s':>7} {'verify s':>9}"
    )
    rows = {}
    for name, tiles in cases.items():
        with tempfile.TemporaryDirectory(prefix="aef-growth-") as tmp:
            path = Path(tmp) / "field.zarr"
            _write(path, tiles)
            rows[name] = (
                _metadata_bytes(path),
                _median(functools.partial(open_embeddings, path, "33N")),
                _median(functools.partial(open_embeddings, path, "33N", bbox=BBox(*first_tile))),
                _median(functools.partial(xr.open_zarr, path, group="33N")),
                _median(functools.partial(describe_store, path)),
                _median(functools.partial(verify_store, path), repeats=1),
            )
        meta, opened, region, plain, info, verify = rows[name]
        print(f"{name:<20} {meta:>11,} {opened:>8.3f} {region:>14.3f} {plain:>13.3f} {info:>7.3f} {verify:>9.2f}")
    first, many = rows["1 tile, 1 zone"], rows["16 tiles, 1 zone"]
    print(
        f"16 tiles / 1 tile: metadata {many[0] / first[0]:.2f}x, open of one tile's bbox {many[2] / first[2]:.2f}x, "
        f"plain open {many[3] / first[3]:.2f}x (zone-wide groups: ~1x expected); open of everything planned "
        f"{many[1] / first[1]:.2f}x (its region is 16x larger)"
    )


def _write(path: Path, tiles: Sequence[TileId]) -> None:
    create_store(path, tiles, [PERIOD], LAYOUT)
    for tile in tiles:
        write_tile(path, tile, PERIOD, _window(tile), {"model": LAYOUT.model, "model_weights": LAYOUT.model_weights})
    finalize(path)
    write_stac(path)


def _window(tile: TileId, size: int = 128) -> xr.Dataset:
    vectors = np.random.default_rng(tile.col * 1000 + tile.row).normal(size=(64, size, size)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=0, keepdims=True)
    coords = tile.geobox.coordinates
    return xr.Dataset(
        {"embedding": (("dim", "y", "x"), vectors), "observations": (("y", "x"), np.full((size, size), 7, np.int16))},
        coords={"y": coords["y"].values[:size], "x": coords["x"].values[:size]},
    )


def _metadata_bytes(path: Path) -> int:
    """Bytes of every file but the chunks of data and records (`<zone>/<array>/c/...`, and the same
    arrays of the overview levels, `<zone>/overviews/<k>/<array>/c/...`)."""
    total = 0
    for file in path.rglob("*"):
        parts = file.relative_to(path).parts
        if file.is_file() and not _is_data_chunk(parts):
            total += file.stat().st_size
    return total


def _is_data_chunk(parts: tuple[str, ...]) -> bool:
    if len(parts) > 4 and parts[1] == "overviews":
        return parts[3] in DATA and parts[4] == "c"
    return len(parts) > 2 and parts[1] in DATA and parts[2] == "c"


def _median(call: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
