"""Time the first half of the data path on the synthetic test bed: search, graph, cube compute.

    python benchmarks/cube.py [--year 2021]

Prints one line per step with its time, and the cube's size and the peak memory of this process.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aef_pipeline.grid import BBox, tiles_for_bbox
from aef_pipeline.load import load_selection
from aef_pipeline.plan import Period
from aef_pipeline.preprocess import preprocess
from aef_pipeline.search import CatalogConfig, open_source, search_tile
from aef_pipeline.testing import DEFAULT_SITE, build_catalog, serve_catalogs, write_static_catalog

BANDS = ("B02", "B03", "B04", "B08", "B11")
T = TypeVar("T")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--year", type=int, default=2021)
    year = parser.parse_args().year
    warnings.simplefilter("ignore")  # third-party deprecations would drown the figures
    workdir = Path(tempfile.mkdtemp(prefix="aef-bench-"))
    catalog = build_catalog(workdir / "es", "earth-search")
    site = BBox(DEFAULT_SITE.lon - 0.001, DEFAULT_SITE.lat - 0.001, DEFAULT_SITE.lon + 0.001, DEFAULT_SITE.lat + 0.001)
    (tile,) = tiles_for_bbox(site)
    geobox, period = tile.load_geobox(), Period.year(year)
    with serve_catalogs([catalog], workdir / "api") as url:
        source = _timed("open API (conformance, collections, sample)", lambda: open_source(CatalogConfig(url)))
        for _ in range(3):
            selection = _timed(
                "search one tile-year through the API", lambda: search_tile(source, geobox, period, BANDS)
            )
    static = str(write_static_catalog(catalog))
    source = _timed(
        f"open static catalog (walk {len(catalog.items)} items)", lambda: open_source(CatalogConfig(static))
    )
    selection = _timed("search the static catalog", lambda: search_tile(source, geobox, period, BANDS))
    print(f"  {len(selection.items)} products, {len(selection.skipped)} skipped")
    loaded = load_selection(selection, geobox, BANDS)
    cube = _timed("graph + SCL frame selection", lambda: preprocess(loaded, selection.scenes, BANDS, tile.geobox))
    cube = _timed("compute the cube", cube.compute)
    print(f"  cube {dict(cube.sizes)}, {cube.nbytes / 1e6:.0f} MB")
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


def _timed(label: str, step: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = step()
    print(f"{label}: {time.perf_counter() - start:.3f} s")
    return result


if __name__ == "__main__":
    main()
