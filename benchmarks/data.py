"""The benchmark test bed: one 20.5 km square of Sentinel-2 L2A scenes, cached between runs.

The square is centred where four tiles of the global grid meet (EPSG:32633, x = 537,600 m,
y = 5,126,400 m), inside one MGRS tile (33TWM), so each of the four tiles holds a 1,026 px
quadrant of data and a run can cover 1 or 4 tiles with equal-sized tasks. One year (2022) every
9 days gives 42 products (40 acquisitions: one held twice, one overcast, one cut by a swath edge).
Rendering takes a few seconds per product; the catalog is kept in a cache directory keyed by its
spec and the test bed's source, so later runs start at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pyproj import Transformer

import aef_pipeline.testing as testbed
from aef_pipeline.grid import BBox
from aef_pipeline.testing import CatalogSpec, Site, SyntheticCatalog, build_catalog
from aef_pipeline.testing.catalog import make_collection
from aef_pipeline.testing.items import FLAVORS
from aef_pipeline.testing.scenes import plan_scenes

EPSG = 32633
CORNER = (537_600.0, 5_126_400.0)
"""Where four 1,920 px tiles of the global grid meet."""
SCENE_M = 20_520
"""Side of the imaged square: 2,052 px (a multiple of 60 m, as the test bed needs)."""
YEAR = 2022
FLAVOR = "earth-search"


def bench_spec() -> CatalogSpec:
    lon, lat = Transformer.from_crs(EPSG, 4326, always_xy=True).transform(*CORNER)
    return CatalogSpec(site=Site(lon, lat, SCENE_M), years=(YEAR,), revisit_days=9, seed=7)


def cache_dir() -> Path:
    return Path(os.environ.get("AEF_BENCH_CACHE", Path.home() / ".cache" / "aef-pipeline" / "benchmarks"))


def bench_catalog(processes: int = 2) -> tuple[SyntheticCatalog, bool]:
    """The cached benchmark catalog, built first if needed; True when it was built now."""
    spec = bench_spec()
    root = cache_dir() / _key(spec)
    index = root / "items.json"
    if index.exists():
        items = tuple(json.loads(index.read_text()))
        scenes = plan_scenes(spec, FLAVORS[FLAVOR].reprocessed_archive, FLAVORS[FLAVOR].removes_offset)
        catalog = SyntheticCatalog(
            root, FLAVORS[FLAVOR], spec, make_collection(FLAVORS[FLAVOR], list(items)), items, tuple(scenes)
        )
        return catalog, False
    catalog = build_catalog(root, FLAVOR, spec, processes=processes)
    index.write_text(json.dumps(list(catalog.items)))  # written last: its presence means complete
    return catalog, True


def _key(spec: CatalogSpec) -> str:
    """Changes with the spec and with any source file of the test bed."""
    digest = hashlib.sha256(repr(spec).encode())
    for source in sorted(Path(testbed.__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return f"{FLAVOR}-{YEAR}-{digest.hexdigest()[:12]}"


def utm_bbox(west: float, south: float, east: float, north: float) -> BBox:
    """The lon/lat box inside a square of the bench CRS (metres), so the tasks it plans are the
    square's pixels rounded out to whole window cores and never reach into a neighbouring tile."""
    to_lonlat = Transformer.from_crs(EPSG, 4326, always_xy=True)
    corners = [to_lonlat.transform(x, y) for x, y in ((west, south), (west, north), (east, south), (east, north))]
    lons = sorted(c[0] for c in corners)
    lats = sorted(c[1] for c in corners)
    return BBox(lons[1], lats[1], lons[2], lats[2])


def quadrant_bbox(half_m: float, tiles: int, margin_m: float = 50.0) -> BBox:
    """`tiles` = 4: a square of 2 x half_m centred on the corner (a window in each of 4 tiles);
    `tiles` = 1: the north-east quarter of it (one tile, the same window size)."""
    x, y = CORNER
    if tiles == 4:
        return utm_bbox(x - half_m + margin_m, y - half_m + margin_m, x + half_m - margin_m, y + half_m - margin_m)
    return utm_bbox(x + margin_m, y + margin_m, x + half_m - margin_m, y + half_m - margin_m)
