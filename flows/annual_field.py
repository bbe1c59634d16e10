"""Annual embedding fields for the areas of a region file, on an existing dask scheduler.

    python -m flows.annual_field --region areas.geojson --years 2017-2024 --out field.zarr \\
        --scheduler tcp://scheduler:8786 [--stac URL] [--model tiny]

The region file holds polygons (GeoJSON, GeoPackage or GeoParquet, in any CRS it declares). Their
union is planned as one run (region.py): only the tiles the areas meet, however far apart they
lie, each task writing whole shards of one store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from aef_pipeline.cli.fields import run_and_summarise
from aef_pipeline.cluster import connect, run_on_cluster
from aef_pipeline.errors import UserInputError
from aef_pipeline.plan import parse_periods
from aef_pipeline.region import read_region
from aef_pipeline.report import RunReport
from aef_pipeline.run import RunRequest
from aef_pipeline.search import DEFAULT_CATALOG, CatalogConfig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--region", type=Path, required=True, help="GeoJSON, GeoPackage or GeoParquet polygons")
    parser.add_argument("--years", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scheduler", required=True, help="address of the running dask scheduler")
    parser.add_argument("--stac", default=DEFAULT_CATALOG)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        region = read_region(args.region)
        request = RunRequest(
            region.bbox,
            parse_periods(args.years, []),
            args.out,
            CatalogConfig(args.stac),
            model=args.model,
            device=args.device,
            region=region,
        )

        def on_scheduler() -> RunReport:
            with connect(args.scheduler, workers=0) as client:
                return run_on_cluster(client, request)

        return run_and_summarise(request, on_scheduler, prog="annual_field")
    except UserInputError as error:
        print(f"annual_field: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
