"""Do `sample`, `classify`, `quicklook` and `similarity` scale with the area of a field? Time and
peak memory of each over a 1-tile field and a 4-tile field (2 x 2 whole tiles of zone 33N, 1920 px
each).

    python benchmarks/maps.py                                   # every case
    python benchmarks/maps.py --cases similarity similarity-coarse

- sample: 100,000 points uniformly random over the written area, read with `sample_field`.
  Target: seconds, and peak memory independent of the tiles (4 tiles / 1 tile ~1x): points are
  grouped by stored chunk, so only the chunks holding points are read.
- classify: `make_map`, kNN (k=3), COG out, on 200 labelled points per tile (the same density on
  both fields: 200 and 800 points), two classes. Target: peak memory 4 tiles / 1 tile <= 1.10
  (prediction runs chunk by chunk on dask; only the time should grow with the area).
- quicklook: a 512 px picture of the whole field. Target (issue 19): peak memory 4 tiles / 1 tile
  <= 1.10: each field is read at the overview level the picture needs (level 2 for one tile,
  level 3 for four), so both read about the same number of vectors.
- similarity: a COG of the dot product with one reference point per tile, at full resolution
  (`similarity`) and at overview level 3 (`similarity-coarse`, 80 m pixels, `--level 3`). Target:
  peak memory 4 tiles / 1 tile <= 1.10 for both (chunk by chunk on dask); the coarse map reads
  1/64 of the pixels, so it should cost a small fraction of the full one's time.

The fields are written straight into a store (no encoder): two classes in stripes 320 m wide,
each a noisy direction on the sphere, as tests/test_maps.py does, built once per run under a
temporary directory. Each measurement runs in a fresh subprocess, twice: once plain (wall time
and resident memory) and once under tracemalloc (the peak of Python and numpy allocations, which
slows it down). Resident memory is read from /proc/self/status: `peak RSS` is VmHWM over the
call (the high-water mark is reset just before it, through /proc/self/clear_refs), `growth` is
that peak minus the RSS just before the call (imports and inputs excluded). VmHWM and not
getrusage's ru_maxrss: Linux carries the parent's high-water mark over fork+exec into a child's
ru_maxrss, so a child of this (multi-GB while building) process would report the parent's peak.
Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import xarray as xr
from numpy.typing import NDArray
from pyproj import Transformer
from shapely.geometry import Point

from aef_pipeline.grid import TILE_PIXELS, TileId
from aef_pipeline.plan import Period
from aef_pipeline.store import StoreLayout, create_store, finalize, write_tile
from benchmarks.memory_probes import reset_peak, status_kb

TILES = (TileId(33, "N", 26, 266), TileId(33, "N", 27, 266), TileId(33, "N", 26, 267), TileId(33, "N", 27, 267))
FIELDS = {"1 tile": 1, "4 tiles": 4}  # name -> the first n of TILES
LAYOUT = StoreLayout("tiny", "untrained: benchmark")
PERIOD = Period.year(2022)
POINTS = 100_000
LABELS_PER_TILE = 200
STRIPE_PX = 32  # 320 m stripes: a 1.28 km cross-validation block holds both classes
EDGE_PX = 1e-3  # points stay 1 cm inside the written area: the lon/lat round trip must not leave it
MB = 1e6
QUICKLOOK_PX = 512  # the picture's longest side: each field is read at the overview level this needs
COARSE_LEVEL = 3  # `similarity-coarse`: 80 m pixels
CASES = ["sample", "classify", "quicklook", "similarity", "similarity-coarse"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES, help="the cases to run (default: all)")
    parser.add_argument("--measure", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--field", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tiles", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.measure:  # a child: one measurement, one JSON line
        print(json.dumps(_measure(args.measure, args.field, TILES[: args.tiles], args.traced)))
        return
    with tempfile.TemporaryDirectory(prefix="aef-maps-") as tmp:
        start = time.perf_counter()
        fields = _build_fields(Path(tmp))
        print(f"fields built in {time.perf_counter() - start:.0f} s ({', '.join(FIELDS)}, whole tiles, int8)")
        print(
            f"{'case':<30} {'field':<8} {'points':>7} {'seconds':>8} {'peak RSS MB':>12} {'growth MB':>10} "
            f"{'tracemalloc MB':>15}"
        )
        for kind in args.cases:
            rows = {name: _case(kind, fields[name], n) for name, n in FIELDS.items()}
            print(_ratios(kind, rows["1 tile"], rows["4 tiles"]))


def _case(kind: str, field: Path, n_tiles: int) -> dict[str, float]:
    """Run the measurement plain and traced, each in a fresh process; print and return its row."""
    plain, traced = _child(kind, field, n_tiles, False), _child(kind, field, n_tiles, True)
    row = {**plain, "traced_mb": traced["traced_mb"]}
    label = {
        "sample": f"sample {POINTS:,} points",
        "classify": "classify knn -> COG",
        "quicklook": f"quicklook {QUICKLOOK_PX} px",
        "similarity": "similarity -> COG, 10 m",
        "similarity-coarse": f"similarity -> COG, {10 * 2**COARSE_LEVEL} m",
    }[kind]
    name = next(name for name, n in FIELDS.items() if n == n_tiles)
    print(
        f"{label:<30} {name:<8} {row['points']:>7,.0f} {row['seconds']:>8.1f} {row['peak_mb']:>12,.0f} "
        f"{row['growth_mb']:>10,.0f} {row['traced_mb']:>15,.0f}"
    )
    return row


def _child(kind: str, field: Path, n_tiles: int, traced: bool) -> dict[str, float]:
    command = [sys.executable, __file__, "--measure", kind, "--field", str(field), "--tiles", str(n_tiles)]
    done = subprocess.run([*command, *(["--traced"] if traced else [])], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def _ratios(kind: str, one: dict[str, float], four: dict[str, float]) -> str:
    ratio = {key: four[key] / one[key] for key in ("seconds", "peak_mb", "growth_mb", "traced_mb")}
    figures = (
        f"time {ratio['seconds']:.2f}x, peak RSS {ratio['peak_mb']:.2f}x, RSS growth {ratio['growth_mb']:.2f}x, "
        f"tracemalloc peak {ratio['traced_mb']:.2f}x"
    )
    if kind == "sample":
        return f"sample 4 tiles / 1 tile: {figures} (target: seconds, memory ~1x)"
    checks = (("peak", "peak_mb"), ("growth", "growth_mb"))
    verdict = ", ".join(f"{name} {'met' if ratio[key] <= 1.10 else 'MISSED'}" for name, key in checks)
    return f"{kind} 4 tiles / 1 tile: {figures} (target: memory <= 1.10x: {verdict})"


# --- the fields -----------------------------------------------------------------------------------


def _build_fields(root: Path) -> dict[str, Path]:
    """Both fields, each tile's vectors generated once and written into every field holding it."""
    paths = {name: root / f"{name.replace(' ', '-')}.zarr" for name in FIELDS}
    for name, n in FIELDS.items():
        create_store(paths[name], TILES[:n], [PERIOD], LAYOUT)
    record = {"model": LAYOUT.model, "model_weights": LAYOUT.model_weights}
    for i, tile in enumerate(TILES):
        stripes = _stripes(tile)
        for name, n in FIELDS.items():
            if i < n:
                write_tile(paths[name], tile, PERIOD, stripes, record)
        del stripes  # a tile of float32 vectors is ~1 GB: one at a time
    for path in paths.values():
        finalize(path)
    return paths


def _stripes(tile: TileId) -> xr.Dataset:
    """A whole tile of class 1 or 2 by stripe of columns, each class a noisy direction."""
    directions = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    vectors = np.random.default_rng(tile.col * 1000 + tile.row).standard_normal(
        (TILE_PIXELS, TILE_PIXELS, 64), dtype=np.float32
    )
    vectors *= 0.15
    vectors += directions[_stripe_class(np.arange(TILE_PIXELS))][None, :, :]
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    coords = tile.geobox.coordinates
    return xr.Dataset(
        {
            "embedding": (("dim", "y", "x"), vectors.transpose(2, 0, 1)),
            "observations": (("y", "x"), np.full((TILE_PIXELS, TILE_PIXELS), 9, np.int16)),
        },
        coords={"y": coords["y"].values, "x": coords["x"].values},
    )


def _stripe_class(cols: NDArray[np.int64]) -> NDArray[np.int64]:
    classes: NDArray[np.int64] = 1 + (cols // STRIPE_PX) % 2
    return classes


# --- one measurement (in a child process) ---------------------------------------------------------


def _measure(kind: str, field: Path, tiles: Sequence[TileId], traced: bool) -> dict[str, float]:
    from aef_pipeline.maps.classify import MapRequest, make_map
    from aef_pipeline.maps.sample import sample_field
    from aef_pipeline.views.compare import SimilarityRequest, similarity_map
    from aef_pipeline.views.quicklook import quicklook

    with tempfile.TemporaryDirectory(prefix="aef-maps-case-") as tmp:
        if kind == "sample":
            points = _random_points(tiles, POINTS, seed=1)
        elif kind.startswith("similarity"):
            points = _random_points(tiles, len(tiles), seed=3)
            references = Path(tmp) / "references.geojson"
            points.to_file(references)
        else:
            points = _random_points(tiles, LABELS_PER_TILE * len(tiles), seed=2)
            labels = Path(tmp) / "labels.geojson"
            points.to_file(labels)
        before = status_kb("VmRSS")
        reset_peak()
        if traced:
            tracemalloc.start()
        start = time.perf_counter()
        if kind == "sample":
            read = len(sample_field(field, points).table)
        elif kind == "quicklook":
            read = int(np.count_nonzero(quicklook(field, max_size=QUICKLOOK_PX).rgba[..., 3]))
        elif kind.startswith("similarity"):
            level = COARSE_LEVEL if kind == "similarity-coarse" else 0
            similarity_map(SimilarityRequest(field, references, Path(tmp) / "sim.tif", level=level))
            read = len(points)
        else:
            make_map(MapRequest(field, labels, "cover", Path(tmp) / "map.tif", method="knn"))
            read = len(points)
        seconds = time.perf_counter() - start
        traced_peak = tracemalloc.get_traced_memory()[1] if traced else 0
        peak = status_kb("VmHWM")
    return {
        "points": read,
        "seconds": seconds,
        "peak_mb": peak * 1024 / MB,
        "growth_mb": (peak - before) * 1024 / MB,
        "traced_mb": traced_peak / MB,
    }


def _random_points(tiles: Sequence[TileId], n: int, seed: int) -> gpd.GeoDataFrame:
    """`n` points uniformly random over the tiles (all of one zone, of equal area), in EPSG:4326,
    with the class of the stripe under each as `cover`."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(tiles), n)
    rows, cols = rng.uniform(EDGE_PX, TILE_PIXELS - EDGE_PX, size=(2, n))
    left = np.array([tile.geobox.affine.c for tile in tiles])[which]
    top = np.array([tile.geobox.affine.f for tile in tiles])[which]
    x, y = left + cols * 10, top - rows * 10
    lon, lat = Transformer.from_crs(tiles[0].epsg, 4326, always_xy=True).transform(x, y)
    geometry = [Point(a, b) for a, b in zip(lon, lat, strict=True)]
    return gpd.GeoDataFrame({"cover": _stripe_class(cols.astype(np.int64))}, geometry=geometry, crs="EPSG:4326")


if __name__ == "__main__":
    main()
