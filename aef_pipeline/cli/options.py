"""What `run` and `plan` share: the area options, --config files, and the RunRequest they make."""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aef_pipeline.errors import UserInputError
from aef_pipeline.plan import parse_periods

if TYPE_CHECKING:
    from aef_pipeline.grid import BBox
    from aef_pipeline.region import Region
    from aef_pipeline.run import RunRequest

EXIT_FAILED = 1  # some tile-periods failed, or the disk filled up: rerun to finish
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def add_area_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help='TOML file of these options (bbox = [W, S, E, N], years = "2017-2024", ...); flags given on the '
        "command line win",
    )
    parser.add_argument(
        "--bbox",
        nargs=4,
        type=float,
        metavar=("W", "S", "E", "N"),
        help="area in degrees; W > E means across the antimeridian",
    )
    parser.add_argument(
        "--region",
        type=Path,
        metavar="FILE",
        help="area of any shape instead of --bbox: polygons in a GeoJSON, GeoPackage or GeoParquet file (any CRS); "
        "only the tiles they meet are planned",
    )
    parser.add_argument("--years", help="calendar years: 2020, 2017-2024 or 2018,2020 (2017-2024)")
    parser.add_argument(
        "--period",
        action="append",
        default=[],
        metavar="START/END",
        help="a custom valid period, e.g. 2021-03-01/2021-09-01 (repeatable)",
    )
    parser.add_argument(
        "--stac",
        default="https://earth-search.aws.element84.com/v1",
        help="STAC API URL or static catalog path; 'demo' = the offline synthetic catalog",
    )
    parser.add_argument("--collection", action="append", default=[], help="default sentinel-2-c1-l2a")
    parser.add_argument(
        "--stac-retries",
        type=int,
        default=None,
        help="attempts after the first for a failed STAC request, backing off 1, 2, 4 ... s (default 4)",
    )
    parser.add_argument("--model", default="tiny", help="spec name in models/ (tiny, paper) or a spec file")
    parser.add_argument("--max-cloud", type=float, default=None, help="drop products above this eo:cloud_cover")


def with_config(args: argparse.Namespace, argv: Sequence[str] | None) -> argparse.Namespace:
    """Options from the TOML file, then the command line's flags over them."""
    try:
        config = tomllib.loads(args.config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UserInputError(f"--config {args.config} cannot be read: {error}") from None
    known = vars(args)
    unknown = sorted(key for key in config if key.replace("-", "_") not in known)
    if unknown:
        raise UserInputError(f"--config {args.config}: unknown option {', '.join(unknown)}")
    tokens = list(argv if argv is not None else sys.argv[1:])
    on_command_line = {token[2:].split("=")[0].replace("-", "_") for token in tokens if token.startswith("--")}
    merged = vars(args)
    for key, value in config.items():
        name = key.replace("-", "_")
        if name not in on_command_line:
            merged[name] = _config_value(name, value)
    return argparse.Namespace(**merged)


def _config_value(name: str, value: Any) -> Any:
    """A TOML value as argparse would have given it: paths as Path, repeatable options as lists."""
    if name in ("out", "region") and isinstance(value, str):
        return Path(value)
    if name in ("collection", "period") and isinstance(value, str):
        return [value]
    return value


def request_from(args: argparse.Namespace) -> RunRequest:
    """The RunRequest the options describe (plan's has no output)."""
    from aef_pipeline.environment import TaskEnvironment
    from aef_pipeline.run import RunRequest
    from aef_pipeline.search import CatalogConfig

    if args.bbox and args.region:
        raise UserInputError("both --bbox and --region given (one may come from --config): give one of them")
    if not args.bbox and not args.region:
        raise UserInputError("no area given: pass --bbox W S E N or --region FILE (or bbox = [W, S, E, N] in --config)")
    if hasattr(args, "out") and args.out is None:
        raise UserInputError('no output given: pass --out PATH (or out = "PATH" in --config)')
    bbox, region = _area(args)
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise UserInputError(f"--threads {threads} is not a thread count: give 1 or more, or leave it out")
    slots = getattr(args, "tasks_per_worker", None)
    if slots is not None and slots < 1:
        raise UserInputError(f"--tasks-per-worker {slots} is not a task count: give 1 or more, or leave it out")
    retries = CatalogConfig.retries if args.stac_retries is None else args.stac_retries
    if retries < 0:
        raise UserInputError(f"--stac-retries {retries} is not a count: give 0 or more")
    catalog = CatalogConfig(
        _demo_stac() if args.stac == "demo" else args.stac,
        tuple(args.collection) or ("sentinel-2-c1-l2a",),
        retries=retries,
    )
    return RunRequest(
        bbox=bbox,
        region=region,
        periods=parse_periods(args.years, args.period),
        output=getattr(args, "out", Path("unused")),
        catalog=catalog,
        model=args.model,
        device=getattr(args, "device", "auto"),
        max_cloud_cover=args.max_cloud,
        overwrite=getattr(args, "overwrite", False),
        storage=getattr(args, "storage", "int8"),
        environment=TaskEnvironment(torch_threads=threads),
    )


def _area(args: argparse.Namespace) -> tuple[BBox, Region | None]:
    """The bbox of --bbox, or the region of --region with its bounds."""
    from aef_pipeline.grid import BBox
    from aef_pipeline.region import read_region

    if args.region:
        region = read_region(Path(args.region))
        return region.bbox, region
    west, south, east, north = _four_numbers(args.bbox)
    return BBox(west, south, east, north, crosses_antimeridian=west > east), None


def _four_numbers(bbox: Any) -> tuple[float, float, float, float]:
    """--bbox's four floats; a --config file's `bbox` may hold anything."""
    problem = UserInputError(
        f"bbox {bbox!r} is not four numbers: give bbox = [W, S, E, N] in --config, or --bbox W S E N"
    )
    if isinstance(bbox, str | bytes) or not isinstance(bbox, Sequence) or len(bbox) != 4:
        raise problem
    try:
        west, south, east, north = (float(value) for value in bbox)
    except (TypeError, ValueError):
        raise problem from None
    return west, south, east, north


def _demo_stac() -> str:
    """The offline demo catalog (built on first use under demo/catalog)."""
    from aef_pipeline.testing import build_catalog, write_static_catalog

    target = Path("demo") / "catalog"
    if not (target / "catalog.json").is_file():
        write_static_catalog(build_catalog(target, "earth-search"))
    return str(target / "catalog.json")
