"""STAC metadata for an embedding field: a Collection and one Item per (UTM zone, period).

Written with pystac next to the store (`field.zarr` -> `field.stac/collection.json`, relative
links; inside the store zarr would take the folder for a broken group), so an
embedding field can be found and read like any other STAC data: each Item's `embeddings` asset
points at its zone group, with the projection, the bands A00..A63 and the model's provenance.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pystac
from odc.geo.geom import box
from pystac.extensions.projection import ProjectionExtension

from aef_pipeline import __version__
from aef_pipeline.store import BANDS, open_embeddings, zones_in

COLLECTION_ID = "aef-embedding-field"
ZARR_MEDIA_TYPE = "application/vnd+zarr"


def write_stac(store: Path) -> Path:
    """(Re)write the store's STAC catalog from the store itself; returns catalog.json's path."""
    store = store.absolute()  # pystac places a relative root beside the working directory, not in it
    items = [item for zone in zones_in(store) for item in _zone_items(store, zone)]
    starts = [item.common_metadata.start_datetime for item in items]
    ends = [item.common_metadata.end_datetime for item in items]
    collection = pystac.Collection(
        id=COLLECTION_ID,
        description="AlphaEarth-style annual embedding fields of Sentinel-2 L2A, 64-d unit vectors per 10 m pixel.",
        extent=pystac.Extent(
            pystac.SpatialExtent([_union_bbox(items)]),
            pystac.TemporalExtent([[min(t for t in starts if t), max(t for t in ends if t)]]),
        ),
        license="proprietary",
        extra_fields={"aef:software": f"aef-pipeline {__version__}"},
    )
    collection.add_items(items)
    root = stac_dir(store)
    collection.normalize_hrefs(root.as_posix() + "/")  # a folder, though its name has a dot
    collection.make_all_asset_hrefs_relative()
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "collection.json"


def stac_dir(store: Path) -> Path:
    return store.with_name(store.stem + ".stac")


def _zone_items(store: Path, zone: str) -> list[pystac.Item]:
    ds = open_embeddings(store, zone)
    epsg = int(ds.rio.crs.to_epsg())
    left, bottom, right, top = (float(v) for v in ds.rio.bounds())
    footprint = box(left, bottom, right, top, crs=f"EPSG:{epsg}").to_crs("EPSG:4326", resolution=1000)
    items = []
    for index in range(ds.sizes["time"]):
        start = _utc(ds.time.values[index])
        end = _utc(ds.time_end.values[index])
        item = pystac.Item(
            id=f"{zone}_{start:%Y%m%d}_{end:%Y%m%d}",
            geometry=footprint.json,
            bbox=list(footprint.boundingbox.bbox),
            datetime=None,
            start_datetime=start,
            end_datetime=end,
            properties={
                "aef:model": ds.attrs["aef:model"],
                "aef:model_weights": ds.attrs["aef:model_weights"],
                "aef:trained": bool(ds.attrs["aef:trained"]),
                "aef:storage": ds.attrs["aef:storage"],
            },
        )
        projection = ProjectionExtension.ext(item, add_if_missing=True)
        projection.code = f"EPSG:{epsg}"
        projection.shape = [ds.sizes["y"], ds.sizes["x"]]
        projection.transform = list(ds.rio.transform())[:6]
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


def _utc(value: object) -> dt.datetime:
    return dt.datetime.fromisoformat(str(value)[:26]).replace(tzinfo=dt.UTC)


def _union_bbox(items: list[pystac.Item]) -> list[float]:
    boxes = [item.bbox for item in items if item.bbox]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
