"""STAC metadata for an embedding field: a Collection and one Item per (UTM zone, period).

Written with pystac next to the store (`field.zarr` -> `field.stac/collection.json`, relative
links; inside the store zarr would take the folder for a broken group), so an
embedding field can be found and read like any other STAC data: each Item's `embeddings` asset
points at its zone group, with the projection, the bands A00..A63 and the model's provenance.
An Item's geometry is the union of the tiles written for its period (a zone group spans the
whole zone, most of it empty), and the Collection's extent the union of its Items.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.projection import ProjectionExtension

from aef_pipeline import __version__
from aef_pipeline.geoemb import StacEmbeddings, apply_stac_embeddings, stac_embeddings_fields
from aef_pipeline.store import (
    BANDS,
    group_geobox,
    planned_tiles,
    store_periods,
    tiles_footprint,
    written_tiles,
    zone_attrs,
    zones_in,
)

COLLECTION_ID = "aef-embedding-field"
ZARR_MEDIA_TYPE = "application/vnd+zarr"


def write_stac(store: Path) -> Path:
    """(Re)write the store's STAC catalog from the store itself; returns collection.json's path."""
    collection = stac_collection(store)
    root = stac_dir(store.absolute())  # pystac places a relative root beside the working directory
    collection.normalize_hrefs(root.as_posix() + "/")  # a folder, though its name has a dot
    collection.make_all_asset_hrefs_relative()
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "collection.json"


def stac_collection(store: Path) -> pystac.Collection:
    """The Collection and Items that describe what `store` holds now (nothing is saved): one Item
    per zone and period with written tiles. A store with nothing written yet has no Items and
    the extent of what was planned."""
    store = store.absolute()
    items = [item for zone in zones_in(store) for item in _zone_items(store, zone)]
    starts = [item.common_metadata.start_datetime for item in items]
    ends = [item.common_metadata.end_datetime for item in items]
    interval: list[dt.datetime | None] = [None, None]
    if items:
        bbox, interval = _union_bbox(items), [min(t for t in starts if t), max(t for t in ends if t)]
    else:
        bbox = _planned_bbox(store)
    collection = pystac.Collection(
        id=COLLECTION_ID,
        description="AlphaEarth-style annual embedding fields of Sentinel-2 L2A, 64-d unit vectors per 10 m pixel.",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval])),
        license="proprietary",
        extra_fields={"aef:software": f"aef-pipeline {__version__}"},
    )
    collection.add_items(items)
    zones = zones_in(store)
    if zones:  # the embeddings STAC extension, on the Collection and each Item (docs/metadata.md)
        embeddings = _embeddings_fields(zone_attrs(store, zones[0]) or {})
        apply_stac_embeddings(collection, embeddings)
        for item in items:
            apply_stac_embeddings(item, embeddings)
    return collection


def _embeddings_fields(attrs: dict[str, Any]) -> StacEmbeddings:
    return stac_embeddings_fields(
        model=attrs["aef:model"],
        model_weights=attrs["aef:model_weights"],
        trained=bool(attrs.get("aef:trained")),
        storage=attrs["aef:storage"],
        dimensions=len(BANDS),
        resolution_m=attrs["aef:resolution_m"],
        **({"source_data": attrs["geoemb:source_data"]} if attrs.get("geoemb:source_data") else {}),
    )


def stac_dir(store: Path) -> Path:
    return store.with_name(store.stem + ".stac")


def _zone_items(store: Path, zone: str) -> list[pystac.Item]:
    attrs = zone_attrs(store, zone) or {}
    group = group_geobox(attrs)
    written = written_tiles(store, zone)
    items = []
    for index, period in enumerate(store_periods(store, zone)):
        if index not in written:
            continue
        footprint = tiles_footprint(written[index])
        item = pystac.Item(
            id=f"{zone}_{period.start:%Y%m%d}_{period.end:%Y%m%d}",
            geometry=footprint.json,
            bbox=list(footprint.boundingbox.bbox),
            datetime=None,
            start_datetime=period.start,
            end_datetime=period.end,
            properties={
                "aef:model": attrs["aef:model"],
                "aef:model_weights": attrs["aef:model_weights"],
                "aef:trained": bool(attrs["aef:trained"]),
                "aef:storage": attrs["aef:storage"],
                "aef:tiles_written": len(written[index]),
            },
        )
        projection = ProjectionExtension.ext(item, add_if_missing=True)
        projection.code = attrs["proj:code"]
        projection.shape = list(group.shape)  # the asset's grid: the whole zone group
        projection.transform = list(group.affine)[:6]
        item.add_asset(
            "embeddings",
            pystac.Asset(
                href=str(store / zone),
                media_type=ZARR_MEDIA_TYPE,
                roles=["data"],
                title=f"embedding field, zone {zone}, time index {index}",
                extra_fields={"aef:time_index": index, "aef:bands": list(BANDS)},
            ),
        )
        items.append(item)
    return items


def _planned_bbox(store: Path) -> list[float]:
    """The lon/lat box of the tiles runs planned (for a store with nothing written yet)."""
    boxes = []
    for zone in zones_in(store):
        tiles = sorted({t for some in planned_tiles(store, zone).values() for t in some})
        if tiles:
            boxes.append(list(tiles_footprint(tiles).boundingbox.bbox))
    if not boxes:
        return [-180.0, -90.0, 180.0, 90.0]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def _union_bbox(items: list[pystac.Item]) -> list[float]:
    boxes = [item.bbox for item in items if item.bbox]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
