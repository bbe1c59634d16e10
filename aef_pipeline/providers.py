"""What an item of any Sentinel-2 L2A catalog means, read from its metadata alone.

Earth Search (c1 and legacy) and Planetary Computer name assets differently, declare scale and
offset differently (or not at all) and put the CRS in different fields. Each `resolve_*` helper
reads one of those conventions from the item itself, never from the URL it came from, so a
mirror or a local server behaves like the original.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pystac

from aef_pipeline import sentinel2 as s2
from aef_pipeline.errors import AefWarning, UserInputError

SCL = "SCL"
LEGACY_EARTH_SEARCH_FLAG = "earthsearch:boa_offset_applied"


class ItemSkippedWarning(AefWarning):
    """An item was left out because the pipeline cannot read it correctly (a band is missing, or
    nothing tells whether its pixels carry the 04.00 offset)."""


class ItemMetadataError(UserInputError):
    """An item lacks metadata without which no pixel of it can be placed (its CRS)."""


@dataclass(frozen=True)
class SkippedItem:
    """A product found but not loaded, and why: `describe_item` gives one for an item the pipeline
    cannot read correctly, the search for a cloudy product or a duplicate. The run report lists
    them, so a tile with fewer scenes than its catalog holds says which and why."""

    item_id: str
    reason: str
    """One line, e.g. "no asset for band B11 (looked for B11 or swir16)"."""
    kept: str | None = None
    """The product kept in its place, for duplicates."""


@dataclass(frozen=True)
class SceneInfo:
    """One Sentinel-2 L2A product, described in the pipeline's own terms."""

    item_id: str
    asset_keys: Mapping[str, str]
    """ESA band name ("B04", ..., and "SCL") -> the item's asset key ("red", "B04", "scl")."""
    crs: str
    """"EPSG:32633"."""
    dn_offset: int
    """What to subtract from valid DNs before dividing by 10000: 1000 or 0."""
    mgrs_tile: str
    """"33TWM"; the item id where no field names the tile."""
    acquisition: str
    """The datatake (or platform + sensing minute): equal for every product of one overpass."""
    baseline: str
    generation_time: str
    legacy_earth_search: bool
    """From Earth Search's older `sentinel-2-l2a` collection, whose offset metadata is unreliable."""
    collection_1: bool
    """From a collection-1 (`*-c1-l2a`) collection."""


def describe_item(item: pystac.Item, bands: Sequence[str]) -> SceneInfo | SkippedItem:
    """The item's SceneInfo, or the record of why it cannot be used: one product is left out and
    the search goes on (a band missing, or no way to tell the 04.00 offset).

    Raises ItemMetadataError for an item without a CRS: that is a broken catalog, not a bad scene.
    """
    props = item.properties
    keys = resolve_asset_keys(item, [*bands, SCL])
    if isinstance(keys, SkippedItem):
        return keys
    offset = resolve_dn_offset(item)
    if offset is None:
        return SkippedItem(
            item.id, "no s2:processing_baseline and no raster:bands offset: cannot tell whether DNs carry +1000"
        )
    return SceneInfo(
        item_id=item.id,
        asset_keys=keys,
        crs=resolve_crs(item, keys[bands[0]] if bands else keys[SCL]),
        dn_offset=offset,
        mgrs_tile=resolve_mgrs_tile(item) or item.id,
        acquisition=resolve_acquisition(item),
        baseline=str(props.get("s2:processing_baseline", "")),
        generation_time=str(props.get("s2:generation_time", "")),
        legacy_earth_search=LEGACY_EARTH_SEARCH_FLAG in props,
        collection_1="-c1-" in (item.collection_id or ""),
    )


def resolve_asset_keys(item: pystac.Item, names: Sequence[str]) -> dict[str, str] | SkippedItem:
    """ESA band names -> asset keys: Planetary Computer uses "B04"/"SCL", Earth Search "red"/"scl".
    An item lacking one of them is skipped, naming the first missing band and the keys looked for."""
    found: dict[str, str] = {}
    for name in names:
        candidates = (name, name.lower()) if name == SCL else (name, s2.BAND_BY_NAME[name].earth_search_key)
        key = next((key for key in candidates if key in item.assets), None)
        if key is None:
            return SkippedItem(item.id, f"no asset for band {name} (looked for {' or '.join(candidates)})")
        found[name] = key
    return found


def resolve_crs(item: pystac.Item, asset_key: str) -> str:
    """`proj:code` before `proj:epsg`, on the asset before the item (projection v1.2 moved the code)."""
    asset = item.assets[asset_key].extra_fields
    for fields in (asset, item.properties):
        if fields.get("proj:code"):
            return str(fields["proj:code"])
        if fields.get("proj:epsg"):
            return f"EPSG:{int(fields['proj:epsg'])}"
    raise ItemMetadataError(
        f"item {item.id} has no CRS (proj:code or proj:epsg on the item or its {asset_key!r} asset): "
        "fix the catalog or choose another; the pipeline cannot place its pixels"
    )


def resolve_dn_offset(item: pystac.Item) -> int | None:
    """What valid DNs carry on top of reflectance * 10000, decided by the processing baseline.

    Baselines from 04.00 add 1000, except where legacy Earth Search removed it again and said so
    with `earthsearch:boa_offset_applied` (its raster:bands offset is -0.1 either way, which is why
    raster:bands is only the fallback when an item names no baseline).
    """
    props = item.properties
    baseline = props.get("s2:processing_baseline")
    if baseline:
        carries = s2.baseline_has_offset(str(baseline)) and not props.get(LEGACY_EARTH_SEARCH_FLAG, False)
        return s2.BOA_ADD_OFFSET if carries else 0
    declared = _declared_offset(item)
    return None if declared is None else round(-declared * s2.QUANTIFICATION)


def _declared_offset(item: pystac.Item) -> float | None:
    for asset in item.assets.values():
        for band in asset.extra_fields.get("raster:bands", []):
            if "reflectance" in (asset.roles or []) and band.get("scale") == 1 / s2.QUANTIFICATION:
                return float(band.get("offset", 0.0))
    return None


_MGRS_IN_NAME = re.compile(r"_T?(\d{2}[C-X][A-Z]{2})_")


def resolve_mgrs_tile(item: pystac.Item) -> str | None:
    """ "33TWM" from s2:mgrs_tile (PC), grid:code or mgrs:* (Earth Search), else the product name."""
    props: Mapping[str, Any] = item.properties
    if props.get("s2:mgrs_tile"):
        return str(props["s2:mgrs_tile"])
    if str(props.get("grid:code", "")).startswith("MGRS-"):
        return str(props["grid:code"])[5:]
    if {"mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square"} <= props.keys():
        return f"{int(props['mgrs:utm_zone']):02d}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}"
    match = _MGRS_IN_NAME.search(str(props.get("s2:product_uri", "")))
    return match.group(1) if match else None


def resolve_acquisition(item: pystac.Item) -> str:
    """The datatake id without its baseline suffix ("GS2B_20220226T095029_025988"): two products
    of one overpass (two baselines, two downlinks, sequence _0_/_1_) share it. Without a datatake,
    platform and sensing minute: one tile is never revisited within a minute."""
    datatake = str(item.properties.get("s2:datatake_id", ""))
    if datatake:
        return re.sub(r"_N\d{2}\.\d{2}$", "", datatake)
    when = item.datetime or dt.datetime.fromisoformat(str(item.properties["start_datetime"]))
    return f"{item.properties.get('platform', '?')}_{when:%Y%m%dT%H%M}"


def baseline_order(baseline: str) -> tuple[int, int]:
    """Sort key of a processing baseline: "05.10" -> (5, 10); unknown sorts first."""
    major, _, minor = baseline.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return (-1, -1)
