"""The synthetic Sentinel-2 L2A test bed: COGs, STAC items like the real providers', a local API.

Tests, demos and benchmarks build their data here:

    from aef_pipeline.testing import CatalogSpec, build_catalog, serve_catalogs
    catalog = build_catalog(tmp_dir, "earth-search", CatalogSpec(seed=1))
    with serve_catalogs([catalog], tmp_dir / "api") as url:
        pystac_client.Client.open(url).search(collections=[catalog.collection_id], ...)
"""

from aef_pipeline.testing.catalog import SyntheticCatalog, build_catalog, write_item_collection, write_static_catalog
from aef_pipeline.testing.items import EARTH_SEARCH, EARTH_SEARCH_LEGACY, FLAVORS, PLANETARY_COMPUTER, Flavor, footprint
from aef_pipeline.testing.scenes import (
    DEFAULT_SITE,
    CatalogSpec,
    MgrsTile,
    RenderedScene,
    Scene,
    Site,
    covering_tiles,
    mgrs_tile_at,
    render_scene,
)
from aef_pipeline.testing.server import StacServerError, serve_catalogs
from aef_pipeline.testing.world import LandCover, World

__all__ = [
    "DEFAULT_SITE",
    "EARTH_SEARCH",
    "EARTH_SEARCH_LEGACY",
    "FLAVORS",
    "PLANETARY_COMPUTER",
    "CatalogSpec",
    "Flavor",
    "LandCover",
    "MgrsTile",
    "RenderedScene",
    "Scene",
    "Site",
    "StacServerError",
    "SyntheticCatalog",
    "World",
    "build_catalog",
    "covering_tiles",
    "footprint",
    "mgrs_tile_at",
    "render_scene",
    "serve_catalogs",
    "write_item_collection",
    "write_static_catalog",
]
