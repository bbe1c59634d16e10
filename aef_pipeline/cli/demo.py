"""`demo-catalog`: a synthetic Sentinel-2 L2A catalog for offline runs."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from aef_pipeline.errors import UserInputError
from aef_pipeline.plan import parse_years


def add_commands(commands: Any) -> None:
    demo = commands.add_parser(
        "demo-catalog",
        help="write a synthetic Sentinel-2 L2A static STAC catalog (COGs + items) for offline use",
        description="Write a synthetic Sentinel-2 L2A catalog: real COGs and STAC items shaped like "
        "the chosen provider's, as a static catalog (catalog.json) that pystac and the pipeline read.",
    )
    demo.add_argument("directory", type=Path, help="new or empty directory to write into")
    demo.add_argument(
        "--flavor", choices=["earth-search", "planetary-computer", "earth-search-legacy"], default="earth-search"
    )
    demo.add_argument("--seed", type=int, default=0, help="land cover and clouds (default 0)")
    demo.add_argument(
        "--years", default="2021-2022", help="calendar years of acquisitions: 2022, 2021-2022 or 2019,2022"
    )
    demo.set_defaults(handler=demo_catalog_command)


def demo_catalog_command(args: argparse.Namespace) -> int:
    from aef_pipeline.testing import CatalogSpec, build_catalog, write_static_catalog

    target: Path = args.directory
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserInputError(f"{target} exists and is not an empty directory: choose a new path")
    spec = CatalogSpec(seed=args.seed, years=parse_years(args.years, first=2015, last=2100))
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and move it into place at the end: an interrupted run leaves no
    # half-written catalog behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        catalog = build_catalog(staging, args.flavor, spec)
        write_static_catalog(catalog)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    west, south, east, north = catalog.collection["extent"]["spatial"]["bbox"][0]
    first, last = catalog.collection["extent"]["temporal"]["interval"][0]
    print(
        f"wrote {len(catalog.items)} synthetic {catalog.collection_id} items ({args.flavor} flavour) "
        f"to {target / 'catalog.json'}\n"
        f"  bbox {west:.4f} {south:.4f} {east:.4f} {north:.4f}, {first[:10]} to {last[:10]}"
    )
    return 0
