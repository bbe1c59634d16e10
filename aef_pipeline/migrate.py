"""`aef-pipeline migrate STORE`: rewrite zone groups of the older bbox-extent layout zone-wide.

Before zone-wide groups (docs/store-growth.md), a zone group spanned the tiles of the run that
made it, and could take no other tile. Migrating moves what is written; nothing is recomputed. A
shard is one tile-period, so in the zone-wide group it is the same file under a key shifted by the
old group's corner in the zone; its bytes, and so the checksums in the records, do not change.

Per zone, so that a crash never loses a shard:
1. build the zone-wide group in `<store>.migrating/<zone>` (same periods, model and encoding) for
   every zone, and check that its arrays read chunks exactly as the old ones do (data type, shards,
   codecs, key encoding, fill value); a difference stops the migration before the store is touched;
2. hard-link every chunk file of `embedding`, `observations` and `tile_record` into it at its new
   key (a copy where links are not possible), and mark the written tiles as planned;
3. swap: the old group goes to `<store>.migrating/<zone>.old`, the new one takes its place, and
   the staging folder is removed. A rerun after a crash puts a half-swapped old group back and
   starts that zone again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from aef_pipeline.catalog import write_stac
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import zone_tile_extent
from aef_pipeline.lock import store_lock
from aef_pipeline.store import (
    ZONE_WIDE,
    StoreLayout,
    finalize,
    mark_planned,
    required_zones,
    store_periods,
    unconsolidate,
    written_tiles,
    zone_attrs,
    zone_encoding,
    zone_template,
)

# Arrays whose chunk files move, and how many leading key parts are (time, row, col) indices;
# the shard grid of embedding/observations and the record grid both count whole tiles.
MOVED = ("embedding", "observations", "tile_record")


def migrate_store(path: Path) -> list[str]:
    """Rewrite every zone group of the older layout zone-wide; returns the zones migrated."""
    zones = required_zones(path)
    staging = path.with_name(path.name + ".migrating")
    with store_lock(path):
        _recover(path, staging)
        older = [zone for zone in zones if (zone_attrs(path, zone) or {}).get("aef:layout") != ZONE_WIDE]
        if not older:
            return []
        try:  # every zone's new template made and checked before the store is touched
            for zone in older:
                _stage_zone(path, zone, staging)
        except UserInputError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        unconsolidate(path)
        for zone in older:
            _migrate_zone(path, zone, staging)
        shutil.rmtree(staging, ignore_errors=True)
        finalize(path)
        write_stac(path)
    return older


def _stage_zone(path: Path, zone: str, staging: Path) -> None:
    """The zone-wide template of an older group, beside the store, checked to read its chunks alike."""
    attrs = zone_attrs(path, zone) or {}
    layout = StoreLayout(attrs["aef:model"], attrs["aef:model_weights"], attrs["aef:storage"])
    shutil.rmtree(staging / zone, ignore_errors=True)
    zone_template(zone, store_periods(path, zone), layout).to_zarr(
        staging, group=zone, mode="a", compute=False, encoding=zone_encoding(layout, zone), consolidated=False
    )
    _check_same_encoding(path / zone, staging / zone)


def _migrate_zone(path: Path, zone: str, staging: Path) -> None:
    """Link the older group's chunks into its staged template, then swap the two."""
    attrs = zone_attrs(path, zone) or {}
    periods, written = store_periods(path, zone), written_tiles(path, zone)
    old, new = attrs["aef:tiles"], zone_tile_extent(zone[-1])
    shift = (new["row_max"] - old["row_max"], old["col_min"] - new["col_min"])
    for name in MOVED:
        _move_chunks(path / zone / name / "c", staging / zone / name / "c", shift)
    for index, tiles in written.items():
        mark_planned(staging, zone, tiles, [periods[index]])
    os.replace(path / zone, staging / f"{zone}.old")
    os.replace(staging / zone, path / zone)
    shutil.rmtree(staging / f"{zone}.old")


def _check_same_encoding(old: Path, new: Path) -> None:
    """A chunk file moves only into an array that reads it the same way: the same data type,
    chunk grid (shards), codecs and key encoding. Anything else would misplace or garble data."""
    keys = ("data_type", "chunk_grid", "chunk_key_encoding", "codecs", "fill_value")
    for name in MOVED:
        before, after = (json.loads((group / name / "zarr.json").read_text()) for group in (old, new))
        differ = [key for key in keys if before.get(key) != after.get(key)]
        if differ:
            raise UserInputError(
                f"{old}/{name} is stored with another {', '.join(differ)} than this version writes: it cannot be "
                "migrated by moving its chunks; write the area again into a new store"
            )


def _move_chunks(source: Path, target: Path, shift: tuple[int, int]) -> None:
    """Link each chunk file `t/row/col[/...]` of `source` to `t/row+dr/col+dc[/...]` in `target`."""
    if not source.is_dir():
        return
    for chunk in source.rglob("*"):
        if not chunk.is_file():
            continue
        parts = chunk.relative_to(source).parts
        if not all(part.isdigit() for part in parts):  # a write cut off: not part of the group
            continue
        index, row, col, *rest = parts
        moved = target.joinpath(index, str(int(row) + shift[0]), str(int(col) + shift[1]), *rest)
        moved.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(chunk, moved)
        except OSError:  # a file system without hard links
            shutil.copy2(chunk, moved)


def _recover(path: Path, staging: Path) -> None:
    """After a crash mid-swap, put the old group back (its chunks were only linked, never moved)."""
    if not staging.is_dir():
        return
    for old in staging.glob("*.old"):
        zone = old.name.removesuffix(".old")
        if not (path / zone).exists():
            os.replace(old, path / zone)
    shutil.rmtree(staging)
