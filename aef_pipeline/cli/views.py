"""`quicklook`: see a field before trusting it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aef_pipeline.errors import UserInputError


def add_commands(commands: Any) -> None:
    look = commands.add_parser(
        "quicklook", help="an RGB picture of a field: a PCA fitted once over every tile and zone (PNG)"
    )
    look.add_argument("field", type=Path, help="an embedding store (Zarr)")
    look.add_argument("--out", type=Path, required=True, help="PNG file to write")
    look.add_argument("--period", help="a year (2022) or START/END; may be left out when the field holds one")
    look.add_argument("--max-size", type=int, default=2048, help="longest side of the picture in px (default 2048)")
    look.add_argument("--overwrite", action="store_true", help="replace an existing picture")
    look.set_defaults(handler=quicklook_command)


def quicklook_command(args: argparse.Namespace) -> int:
    from aef_pipeline.store import zones_in
    from aef_pipeline.views.quicklook import quicklook, save_png

    out: Path = args.out
    if out.suffix.lower() != ".png":
        raise UserInputError(f"--out {out}: end it with .png")
    if out.exists() and not args.overwrite:
        raise UserInputError(f"{out} exists: choose another --out or pass --overwrite")
    if not zones_in(args.field):
        raise UserInputError(f"{args.field} is not an aef-pipeline embedding store (no zone groups found)")
    look = quicklook(args.field, args.period, max_size=args.max_size)
    save_png(look, out)
    rows, cols = look.rgba.shape[:2]
    variance = ", ".join(f"{v:.2f}" for v in look.explained_variance)
    print(
        f"wrote {out}: {cols} x {rows} px ({look.block_px} field px per picture px, {look.crs}), period "
        f"{look.period.label}; PCA explained variance {variance}"
    )
    if look.model_weights.startswith("untrained"):
        print("the field comes from an untrained encoder: colours show image features, not learned embeddings")
    return 0
