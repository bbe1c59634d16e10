"""Where the views' rasters go: one COG per zone group, named after the path asked for.

    check_cog_path(Path("sim.tif"), "--out", overwrite=False)   # before anything is computed
    zone_path(Path("sim.tif"), "33N", zones=2)                  # sim_33N.tif (sim.tif for one zone)

A field over several UTM zones gets one COG per zone group in its own CRS (no resampling of the
values); `quicklook --cog-crs` reprojects them into one instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from aef_pipeline.errors import UserInputError


def zone_path(out: Path, zone: str, zones: int) -> Path:
    """`out` itself for a one-zone output, else `out` with the zone before the suffix (`sim_33N.tif`)."""
    return out if zones == 1 else out.with_name(f"{out.stem}_{zone}{out.suffix}")


def check_cog_path(out: Path, flag: str, overwrite: bool, others: Iterable[Path | None] = ()) -> None:
    """Refuse, in one line, a COG path that is not a .tif in an existing folder, or that exists
    (itself or as any zone's file) without `overwrite`; `others` are further outputs of the same
    command checked alike."""
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise UserInputError(f"{flag} {out}: end it with .tif (a COG)")
    if not out.parent.is_dir():
        raise UserInputError(f"{out.parent} does not exist: create it or choose another {flag}")
    per_zone = sorted(out.parent.glob(f"{out.stem}_??[NS]{out.suffix}"))
    for path in (out, *others, *per_zone):
        if path is not None and path.exists() and not overwrite:
            raise UserInputError(f"{path} exists: choose another path or pass --overwrite")
