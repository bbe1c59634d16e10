"""The `aef-pipeline` command line.

User mistakes print one line (`aef-pipeline: error: ...`) and exit with status 2 having written
nothing; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aef_pipeline import __version__
from aef_pipeline.errors import UserInputError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except UserInputError as error:
        print(f"aef-pipeline: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aef-pipeline", description="AlphaEarth-style embedding fields from Sentinel-2 L2A."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    demo.set_defaults(handler=_demo_catalog)
    return parser


def _demo_catalog(args: argparse.Namespace) -> int:
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


def parse_years(text: str, first: int, last: int) -> tuple[int, ...]:
    """ "2020" -> (2020,); "2017-2019" -> (2017, 2018, 2019); "2018,2020" -> (2018, 2020)."""
    years: list[int] = []
    for part in text.split(","):
        start, sep, end = part.strip().partition("-")
        try:
            span = range(int(start), int(end) + 1) if sep else range(int(start), int(start) + 1)
        except ValueError:
            raise UserInputError(
                f"--years {text!r} is not understood: write a year (2020), a range (2017-2024) or a list (2018,2020)"
            ) from None
        if not span:
            raise UserInputError(f"--years {part.strip()!r} is an inverted range: write the earlier year first")
        if span[0] < first or span[-1] > last:
            raise UserInputError(f"--years {text!r} is outside {first}-{last}: choose years in that range")
        years.extend(span)
    return tuple(sorted(set(years)))


if __name__ == "__main__":
    sys.exit(main())
