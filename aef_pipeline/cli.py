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
from typing import Any, NoReturn

from aef_pipeline import __version__
from aef_pipeline.errors import StorageFullError, UserInputError
from aef_pipeline.plan import parse_periods, parse_years

EXIT_FAILED = 1  # some tile-periods failed, or the disk filled up: rerun to finish
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
# Throughputs for `plan`'s time estimate: what the 2-core build machine achieved with `paper`
# (docs/performance.md), and 40 % of an H100's bf16 dense peak (the encoder's target).
CPU_FLOPS = 8e10
GPU_FLOPS = 4e14


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):
            args = _with_config(args, argv)
        return int(args.handler(args))
    except UserInputError as error:
        print(f"aef-pipeline: error: {error}", file=sys.stderr)
        return EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage text stays behind --help), and no
    abbreviated flags (--config must see every flag the command line gave)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        print(f"aef-pipeline: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aef-pipeline", description="AlphaEarth-style embedding fields from Sentinel-2 L2A.")
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
    _add_run(commands)
    _add_plan(commands)
    info = commands.add_parser("info", help="what an embedding store holds and how complete it is")
    info.add_argument("path", type=Path)
    info.set_defaults(handler=_info)
    verify = commands.add_parser(
        "verify", help="check every tile-period a store records as done; exit 1 if any is wrong"
    )
    verify.add_argument("path", type=Path)
    verify.set_defaults(handler=_verify)
    return parser


def _add_area_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file of these options (bbox = [W, S, E, N], years = "
                        '"2017-2024", ...); flags given on the command line win')  # fmt: skip
    parser.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"),
                        help="area in degrees; W > E means across the antimeridian")  # fmt: skip
    parser.add_argument("--years", help="calendar years: 2020, 2017-2024 or 2018,2020 (2017-2024)")
    parser.add_argument("--period", action="append", default=[], metavar="START/END",
                        help="a custom valid period, e.g. 2021-03-01/2021-09-01 (repeatable)")  # fmt: skip
    parser.add_argument("--stac", default="https://earth-search.aws.element84.com/v1",
                        help="STAC API URL or static catalog path; 'demo' = the offline synthetic catalog")  # fmt: skip
    parser.add_argument("--collection", action="append", default=[], help="default sentinel-2-c1-l2a")
    parser.add_argument("--model", default="tiny", help="spec name in models/ (tiny, paper) or a spec file")
    parser.add_argument("--max-cloud", type=float, default=None, help="drop products above this eo:cloud_cover")


def _add_run(commands: Any) -> None:
    run = commands.add_parser("run", help="compute an embedding field for an area and years into a Zarr store")
    _add_area_arguments(run)
    run.add_argument("--out", type=Path, help="the Zarr store (created, or extended)")
    run.add_argument("--device", default="auto", help="auto (GPU if any, else CPU), cpu, cuda, cuda:N")
    run.add_argument("--scheduler", help="address of an existing dask scheduler (else a local cluster)")
    run.add_argument("--workers", type=int, default=2, help="local cluster worker processes (default 2)")
    run.add_argument("--overwrite", action="store_true", help="replace a store made with another model/grid")
    run.add_argument("--storage", choices=["int8", "float16", "float32"], default="int8")
    run.add_argument("--threads", type=int, default=None,
                     help="torch threads per task (default: each worker's share of its host's cores)")  # fmt: skip
    run.set_defaults(handler=_run)


def _add_plan(commands: Any) -> None:
    plan = commands.add_parser("plan", help="dry run: tiles, periods, scenes found, pixels and bytes to read")
    _add_area_arguments(plan)
    plan.set_defaults(handler=_plan)


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


def _with_config(args: argparse.Namespace, argv: Sequence[str] | None) -> argparse.Namespace:
    """Options from the TOML file, then the command line's flags over them."""
    import tomllib

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
    if name == "out":
        return Path(value)
    if name in ("collection", "period") and isinstance(value, str):
        return [value]
    return value


def _request(args: argparse.Namespace) -> Any:
    from aef_pipeline.environment import TaskEnvironment
    from aef_pipeline.grid import BBox
    from aef_pipeline.run import RunRequest
    from aef_pipeline.search import CatalogConfig

    if not args.bbox or len(args.bbox) != 4:
        raise UserInputError("no area given: pass --bbox W S E N (or bbox = [W, S, E, N] in --config)")
    if hasattr(args, "out") and args.out is None:
        raise UserInputError('no output given: pass --out PATH (or out = "PATH" in --config)')
    west, south, east, north = (float(v) for v in args.bbox)
    bbox = BBox(west, south, east, north, crosses_antimeridian=west > east)
    periods = parse_periods(args.years, args.period)
    catalog = _demo_stac() if args.stac == "demo" else args.stac
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise UserInputError(f"--threads {threads} is not a thread count: give 1 or more, or leave it out")
    collections = tuple(args.collection) or ("sentinel-2-c1-l2a",)
    return RunRequest(
        bbox=bbox, periods=periods, output=getattr(args, "out", Path("unused")),
        catalog=CatalogConfig(catalog, collections), model=args.model, device=getattr(args, "device", "auto"),
        max_cloud_cover=args.max_cloud, overwrite=getattr(args, "overwrite", False),
        storage=getattr(args, "storage", "int8"), environment=TaskEnvironment(torch_threads=threads),
    )  # fmt: skip


def _demo_stac() -> str:
    """The offline demo catalog (built on first use under demo/catalog)."""
    from aef_pipeline.testing import build_catalog, write_static_catalog

    target = Path("demo") / "catalog"
    if not (target / "catalog.json").is_file():
        write_static_catalog(build_catalog(target, "earth-search"))
    return str(target / "catalog.json")


def _run(args: argparse.Namespace) -> int:
    from aef_pipeline.cluster import connect, run_on_cluster
    from aef_pipeline.encode import check_device_name
    from aef_pipeline.model import load_spec

    request = _request(args)
    load_spec(request.model)  # an unknown model is a one-line error before anything starts
    check_device_name(request.device)
    try:
        with connect(args.scheduler, args.workers) as client:
            report = run_on_cluster(client, request)
    except KeyboardInterrupt:
        print(f"aef-pipeline: interrupted: {_progress(request)} in {request.output}; rerun the same command to "
              "resume (finished tile-periods are kept and skipped)", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    except StorageFullError as error:
        print(f"aef-pipeline: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    print(f"wrote {request.output} ({', '.join(p.label for p in request.periods)})")
    return EXIT_FAILED if any(task.status == "failed" for task in report.tasks) else 0


def _progress(request: Any) -> str:
    from aef_pipeline.model import load_spec
    from aef_pipeline.run import plan_tasks, progress

    return progress(request.output, plan_tasks(request.bbox, request.periods, load_spec(request.model)))


def _plan(args: argparse.Namespace) -> int:
    import numpy as np

    from aef_pipeline.encode import required_halo
    from aef_pipeline.model import load_spec
    from aef_pipeline.model.flops import flops_per_window
    from aef_pipeline.run import plan_tasks
    from aef_pipeline.search import open_source, search_tile

    request = _request(args)
    spec = load_spec(request.model)
    tasks = plan_tasks(request.bbox, request.periods, spec)
    source = open_source(request.catalog)
    total_px = total_bytes = total_flops = 0
    for task in tasks:
        area = task.geobox().pad(required_halo(spec, False))
        selection = search_tile(source, area, task.period, spec.bands, request.max_cloud_cover)
        # uint16 bands plus the uint8 SCL per product, read on the load grid
        read = len(selection.items) * area.shape[0] * area.shape[1] * (2 * len(spec.bands) + 1)
        total_px, total_bytes = total_px + task.pixels, total_bytes + read
        # Counted FLOPs with every product as a frame: an upper bound (fused and empty frames drop).
        total_flops += flops_per_window(spec, max(1, len(selection.items))) * task.pixels // spec.core**2
        scenes = f"{len(selection.items)} scenes ({len(selection.skipped)} dropped)"
        print(f"{task.tile} {task.period.label} window {task.window}: {task.pixels:,} px, {scenes}, "
              f"~{read / 1e6:.0f} MB to read")  # fmt: skip
    # The store: 64 values per pixel at the storage's width plus the int16 observation count
    # (before compression, which barely shrinks embeddings): the free space a run needs.
    storage = getattr(args, "storage", "int8")
    written = total_px * (spec.output_dim * np.dtype(storage).itemsize + 2)
    print(f"{len(tasks)} tasks, {total_px:,} px, ~{total_bytes / 1e9:.2f} GB to read, ~{written / 1e9:.2f} GB to "
          f"write ({storage}), model {spec.name}")  # fmt: skip
    print(f"encoding: at most {total_flops:.2e} FLOP, ~{_duration(total_flops / CPU_FLOPS)} on a CPU at "
          f"{CPU_FLOPS / 1e9:.0f} GFLOP/s, ~{_duration(total_flops / GPU_FLOPS)} on a GPU at "
          f"{GPU_FLOPS / 1e12:.0f} TFLOP/s (docs/performance.md)")  # fmt: skip
    return 0


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _info(args: argparse.Namespace) -> int:
    from aef_pipeline.store import describe_store

    print(describe_store(args.path))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from aef_pipeline.verify import verify_store

    result = verify_store(args.path)
    for problem in result.problems:
        print(f"{args.path}: {problem}")
    print(f"{result.checked} tile-periods checked, {len(result.problems)} problems")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
