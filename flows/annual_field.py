"""Annual embedding fields for the areas of a region file, on an existing dask scheduler.

    python -m flows.annual_field --region areas.geojson --years 2017-2024 --out field.zarr \\
        --scheduler tcp://scheduler:8786 [--stac URL] [--model tiny]

The region file is GeoJSON (a FeatureCollection, a Feature or a geometry) in EPSG:4326. Its
features' common bounding box is planned as one run, so every task writes whole shards of one
store; areas far apart belong in separate stores (run the flow once per group).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from odc.geo.geom import Geometry

from aef_pipeline.cli.fields import run_and_summarise
from aef_pipeline.cluster import connect, run_on_cluster
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import BBox
from aef_pipeline.plan import parse_periods
from aef_pipeline.report import RunReport
from aef_pipeline.run import RunRequest
from aef_pipeline.search import DEFAULT_CATALOG, CatalogConfig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--region", type=Path, required=True, help="GeoJSON file of the areas")
    parser.add_argument("--years", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scheduler", required=True, help="address of the running dask scheduler")
    parser.add_argument("--stac", default=DEFAULT_CATALOG)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        request = RunRequest(
            region_bbox(args.region),
            parse_periods(args.years, []),
            args.out,
            CatalogConfig(args.stac),
            model=args.model,
            device=args.device,
        )

        def on_scheduler() -> RunReport:
            with connect(args.scheduler, workers=0) as client:
                return run_on_cluster(client, request)

        return run_and_summarise(request, on_scheduler, prog="annual_field")
    except UserInputError as error:
        print(f"annual_field: error: {error}", file=sys.stderr)
        return 2


def region_bbox(path: Path) -> BBox:
    """The common bounding box of the file's geometries."""
    document = json.loads(path.read_text())
    features = document.get("features") or [document]
    geometries = [Geometry(f.get("geometry", f), crs="EPSG:4326") for f in features]
    boxes = [g.boundingbox for g in geometries]
    return BBox(
        min(b.left for b in boxes), min(b.bottom for b in boxes), max(b.right for b in boxes), max(b.top for b in boxes)
    )


if __name__ == "__main__":
    sys.exit(main())
