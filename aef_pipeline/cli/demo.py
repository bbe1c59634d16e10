"""`demo-catalog`: a synthetic Sentinel-2 L2A catalog, with ground-truth labels, for offline runs."""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aef_pipeline.errors import UserInputError
from aef_pipeline.plan import parse_years

if TYPE_CHECKING:
    from aef_pipeline.testing import Site, SyntheticCatalog
    from aef_pipeline.testing.truth import TruthPoint

# Spelled out rather than imported from testing.world, which would load rasterio for every command;
# a test checks they match WORLD_KINDS.
WORLDS = ("labelled", "plain")
SIZE_KM = (0.6, 20.0)
"""Smallest and largest side of the imaged square: below 0.6 km no parcel interior is left for
labels; above 20 km the demo takes many minutes to render."""
# Training points per class an evaluation wants at least (the linear probes train on 10 labels).
MIN_TRAIN_POINTS = 10


def add_commands(commands: Any) -> None:
    demo = commands.add_parser(
        "demo-catalog",
        help="write a synthetic Sentinel-2 L2A static STAC catalog (COGs + items) and ground-truth labels",
        description="Write a synthetic Sentinel-2 L2A catalog: real COGs and STAC items shaped like "
        "the chosen provider's, as a static catalog (catalog.json) that pystac and the pipeline read, "
        "and labelled points of the synthetic world in truth/labels.geojson.",
    )
    demo.add_argument("directory", type=Path, help="new or empty directory to write into")
    demo.add_argument(
        "--flavor", choices=["earth-search", "planetary-computer", "earth-search-legacy"], default="earth-search"
    )
    demo.add_argument("--seed", type=int, default=0, help="land cover and clouds (default 0)")
    demo.add_argument(
        "--years", default="2021-2022", help="calendar years of acquisitions: 2022, 2021-2022 or 2019,2022"
    )
    demo.add_argument(
        "--world",
        choices=WORLDS,
        default="labelled",
        help="labelled (default): 8 classes, some told apart only by time series, texture or surroundings, "
        "and a biomass per parcel; plain: the 5 easy classes the tests use",
    )
    demo.add_argument(
        "--site",
        nargs=2,
        type=float,
        metavar=("LON", "LAT"),
        help="centre of the imaged square in degrees (default 15.065 46.2, in Slovenia)",
    )
    demo.add_argument(
        "--size-km",
        type=float,
        default=2.4,
        help="side of the imaged square, 0.6-20 km, rounded to 60 m (default 2.4; 4.8 gives enough labels to evaluate)",
    )
    demo.set_defaults(handler=demo_catalog_command)


def demo_catalog_command(args: argparse.Namespace) -> int:
    from aef_pipeline.testing import CatalogSpec, build_catalog, write_static_catalog
    from aef_pipeline.testing.truth import TRUTH_FILE, truth_points, write_truth

    target: Path = args.directory
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserInputError(f"{target} exists and is not an empty directory: choose a new path")
    spec = CatalogSpec(
        site=resolve_site(args.site, args.size_km),
        seed=args.seed,
        years=parse_years(args.years, first=2015, last=2100),
        world=args.world,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and move it into place at the end: an interrupted run leaves no
    # half-written catalog behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        catalog = build_catalog(staging, args.flavor, spec)
        write_static_catalog(catalog)
        points = truth_points(spec)
        write_truth(staging, points)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(_catalog_summary(catalog, target, args.flavor))
    print(_truth_summary(points, target / TRUTH_FILE, args.world, args.seed))
    return 0


def resolve_site(lonlat: Sequence[float] | None, size_km: float) -> Site:
    """The imaged square from --site and --size-km; a UserInputError names a bad value and the fix."""
    from aef_pipeline.testing import DEFAULT_SITE, Site

    lon, lat = lonlat if lonlat is not None else (DEFAULT_SITE.lon, DEFAULT_SITE.lat)
    if not -180 <= lon < 180:
        raise UserInputError(f"--site longitude {lon} is outside -180..180: give LON LAT in degrees, e.g. 15.065 46.2")
    if not -80 <= lat <= 84:
        raise UserInputError(
            f"--site latitude {lat} is outside -80..84, where Sentinel-2 tiles are UTM: give LON LAT in degrees, "
            "e.g. 15.065 46.2"
        )
    if not SIZE_KM[0] <= size_km <= SIZE_KM[1]:
        raise UserInputError(
            f"--size-km {size_km} is outside {SIZE_KM[0]}-{SIZE_KM[1]:g}: give the side of the imaged square in km, "
            "e.g. 4.8"
        )
    # A multiple of 60 m, so 10, 20 and 60 m pixels share the square's edges.
    return Site(lon, lat, size_m=60 * math.floor(size_km * 1000 / 60 + 0.5))


def _catalog_summary(catalog: SyntheticCatalog, target: Path, flavor: str) -> str:
    west, south, east, north = catalog.collection["extent"]["spatial"]["bbox"][0]
    first, last = catalog.collection["extent"]["temporal"]["interval"][0]
    return (
        f"wrote {len(catalog.items)} synthetic {catalog.collection_id} items ({flavor} flavour) "
        f"to {target / 'catalog.json'}\n"
        f"  bbox {west:.4f} {south:.4f} {east:.4f} {north:.4f}, {first[:10]} to {last[:10]}"
    )


def _truth_summary(points: Sequence[TruthPoint], path: Path, world: str, seed: int) -> str:
    from aef_pipeline.testing.truth import count_by_class
    from aef_pipeline.testing.world import make_world

    counts = count_by_class(points, make_world(world, seed).classes)
    lines = [f"wrote {len(points)} truth points of the {world} world to {path}"]
    lines += [f"  {name:<16} train {c.train:4d}  test {c.test:4d}  ({c.parcels} parcels)" for name, c in counts.items()]
    if min(c.train for c in counts.values()) < MIN_TRAIN_POINTS or min(c.test for c in counts.values()) == 0:
        lines.append(
            f"  some classes have fewer than {MIN_TRAIN_POINTS} training points or no test points: "
            "a larger --size-km (4.8) gives enough to evaluate"
        )
    return "\n".join(lines)
