"""`quicklook`, `similarity`, `change`: see a field before trusting it, and compare within it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aef_pipeline.errors import UserInputError

LEVEL_HELP = "read overview level K: pixels of 10 x 2^K m, a coarse map of a large area (default 0: 10 m)"


def add_commands(commands: Any) -> None:
    look = commands.add_parser(
        "quicklook", help="an RGB picture of a field: a PCA fitted once over every tile and zone (PNG)"
    )
    look.add_argument("field", type=Path, help="an embedding store (Zarr)")
    look.add_argument("--out", type=Path, required=True, help="PNG file to write")
    look.add_argument("--period", help="a year (2022) or START/END; may be left out when the field holds one")
    look.add_argument("--max-size", type=int, default=2048, help="longest side of the picture in px (default 2048)")
    look.add_argument(
        "--cog",
        type=Path,
        metavar="TIF",
        help="also write the picture as RGBA COG(s), one per zone group in its UTM CRS (quick_33N.tif, ...)",
    )
    look.add_argument(
        "--cog-crs", metavar="CRS", help="with --cog: every zone group reprojected into one COG of this CRS (EPSG:4326)"
    )
    look.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    look.set_defaults(handler=quicklook_command)

    similar = commands.add_parser("similarity", help="mean dot product with reference points or polygons (COG)")
    similar.add_argument("field", type=Path, help="an embedding store (Zarr)")
    similar.add_argument("--points", type=Path, required=True, help="reference points or polygons (any vector file)")
    similar.add_argument("--out", type=Path, required=True, help="sim.tif (a COG per zone group)")
    similar.add_argument("--period", help="a year (2022) or START/END; may be left out when the field holds one")
    similar.add_argument("--threshold", type=float, help="score from which pixels count as similar, in [-1, 1]")
    similar.add_argument("--polygons", type=Path, help="GeoJSON of the pixels at or above --threshold")
    similar.add_argument("--points-crs", help="CRS of a table's x/y columns, or of a file that declares none")
    similar.add_argument("--level", type=int, default=0, metavar="K", help=LEVEL_HELP)
    similar.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    similar.set_defaults(handler=similarity_command)

    change = commands.add_parser("change", help="1 - dot product between two periods of a field (COG)")
    change.add_argument("field", type=Path, help="an embedding store (Zarr)")
    change.add_argument("--from", dest="before", required=True, help="the earlier period: 2021 or START/END")
    change.add_argument("--to", dest="after", required=True, help="the later period")
    change.add_argument("--out", type=Path, required=True, help="change.tif (a COG per zone group)")
    change.add_argument("--threshold", type=float, help="change from which pixels count as changed, in [0, 2]")
    change.add_argument("--polygons", type=Path, help="GeoJSON of the pixels at or above --threshold")
    change.add_argument("--force", action="store_true", help="compare periods of different lengths")
    change.add_argument("--level", type=int, default=0, metavar="K", help=LEVEL_HELP)
    change.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    change.set_defaults(handler=change_command)


def quicklook_command(args: argparse.Namespace) -> int:
    from aef_pipeline.views.quicklook import quicklook, save_cogs, save_png

    out: Path = args.out
    if out.suffix.lower() != ".png":
        raise UserInputError(f"--out {out}: end it with .png")
    if out.exists() and not args.overwrite:
        raise UserInputError(f"{out} exists: choose another --out or pass --overwrite")
    cog_crs = _check_cog(args)
    _check_field(args.field)
    look = quicklook(args.field, args.period, max_size=args.max_size)
    save_png(look, out)
    rows, cols = look.rgba.shape[:2]
    variance = ", ".join(f"{v:.2f}" for v in look.explained_variance)
    print(
        f"wrote {out}: {cols} x {rows} px ({look.block_px} field px per picture px, {look.crs}), period "
        f"{look.period.label}; PCA explained variance {variance}"
    )
    if args.cog is not None:
        print(f"wrote {', '.join(str(p) for p in save_cogs(look, args.cog, cog_crs))} (RGBA COG)")
    if look.model_weights.startswith("untrained"):
        print("the field comes from an untrained encoder: colours show image features, not learned embeddings")
    return 0


def similarity_command(args: argparse.Namespace) -> int:
    from aef_pipeline.views.compare import SimilarityRequest, similarity_map, summary

    _check_field(args.field)
    _check_polygons(args)
    request = SimilarityRequest(
        args.field,
        args.points,
        args.out,
        args.period,
        args.threshold,
        args.polygons,
        args.overwrite,
        args.points_crs,
        args.level,
    )
    print(summary(similarity_map(request)))
    return 0


def change_command(args: argparse.Namespace) -> int:
    from aef_pipeline.views.compare import ChangeRequest, change_map, summary

    _check_field(args.field)
    _check_polygons(args)
    request = ChangeRequest(
        args.field,
        args.before,
        args.after,
        args.out,
        args.threshold,
        args.polygons,
        args.force,
        args.overwrite,
        args.level,
    )
    print(summary(change_map(request)))
    return 0


def _check_field(path: Path) -> None:
    from aef_pipeline.store import required_zones

    required_zones(path)


def _check_cog(args: argparse.Namespace) -> str | None:
    """--cog and --cog-crs, checked before anything is read or written; the CRS as pyproj spells it."""
    from aef_pipeline.views.outputs import check_cog_path
    from aef_pipeline.views.quicklook import checked_crs

    if args.cog is None:
        if args.cog_crs is not None:
            raise UserInputError("--cog-crs needs --cog: say where the reprojected COG goes")
        return None
    check_cog_path(args.cog, "--cog", args.overwrite)
    return None if args.cog_crs is None else checked_crs(args.cog_crs)


def _check_polygons(args: argparse.Namespace) -> None:
    if args.polygons is not None and args.threshold is None:
        raise UserInputError("--polygons needs --threshold: say which scores count")
