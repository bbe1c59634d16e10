"""The synthetic Sentinel-2 L2A test bed: COGs, STAC items like the real providers', a local API.

Tests, demos and benchmarks build their data here:

    from aef_pipeline.testing import CatalogSpec, build_catalog, serve_catalogs
    catalog = build_catalog(tmp_dir, "earth-search", CatalogSpec(seed=1))
    with serve_catalogs([catalog], tmp_dir / "api") as url:
        pystac_client.Client.open(url).search(collections=[catalog.collection_id], ...)

The labelled world (`CatalogSpec(world="labelled")`) and its ground truth judge embeddings:

    spec = CatalogSpec(world="labelled", site=Site(15.065, 46.2, size_m=4800))
    catalog = build_catalog(tmp_dir, "earth-search", spec)
    write_truth(catalog.root, truth_points(spec))   # tmp_dir/truth/labels.geojson
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
from aef_pipeline.testing.truth import TruthPoint, count_by_class, truth_points, write_truth
from aef_pipeline.testing.world import (
    WORLD_KINDS,
    LabelledCover,
    LabelledWorld,
    LandCover,
    Landscape,
    World,
    make_world,
)

__all__ = [
    "DEFAULT_SITE",
    "EARTH_SEARCH",
    "EARTH_SEARCH_LEGACY",
    "FLAVORS",
    "PLANETARY_COMPUTER",
    "WORLD_KINDS",
    "CatalogSpec",
    "Flavor",
    "LabelledCover",
    "LabelledWorld",
    "LandCover",
    "Landscape",
    "MgrsTile",
    "RenderedScene",
    "Scene",
    "Site",
    "StacServerError",
    "SyntheticCatalog",
    "TruthPoint",
    "World",
    "build_catalog",
    "count_by_class",
    "covering_tiles",
    "footprint",
    "make_world",
    "mgrs_tile_at",
    "render_scene",
    "serve_catalogs",
    "truth_points",
    "write_item_collection",
    "write_static_catalog",
    "write_truth",
]
