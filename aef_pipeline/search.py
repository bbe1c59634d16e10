"""Stage 2: which Sentinel-2 L2A products cover a tile in a period, once each.

    source = open_source(CatalogConfig(url, collections=("sentinel-2-c1-l2a",)))
    selection = search_tile(source, load_geobox, Period.year(2022), bands=("B02", "B03", ...))

A STAC API is searched with pystac-client (POST /search, bounded pages); a static catalog is
walked once and filtered locally. Filters a server may not support (cloud cover) run here, and
duplicates of one acquisition are dropped before anything is loaded, with a record of why.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pystac
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box
from pystac_client import Client, ItemSearch
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from pystac_client.warnings import FallbackToPystac, NoConformsTo
from urllib3 import Retry

from aef_pipeline.errors import AefWarning, UserInputError
from aef_pipeline.plan import Period
from aef_pipeline.providers import ItemSkippedWarning, SceneInfo, SkippedItem, baseline_order, describe_item

DEFAULT_CATALOG = "https://earth-search.aws.element84.com/v1"
DEFAULT_COLLECTION = "sentinel-2-c1-l2a"
# Earth Search rejects very large responses; 100 items per page is safe on every provider.
MAX_PAGE_SIZE = 100
# Retried answers: rate limiting and the transient gateway errors public APIs give under load.
RETRY_STATUSES = (429, 500, 502, 503, 504)


class CatalogUnreachableError(UserInputError):
    """The STAC catalog did not answer, after retries."""


class UnknownCollectionError(UserInputError):
    """A requested collection is not in the catalog."""


class MixedCollectionsError(UserInputError):
    """Legacy Earth Search `sentinel-2-l2a` and `sentinel-2-c1-l2a` were requested together."""


class NoScenesWarning(AefWarning):
    """No usable product covers a tile in a period: the tile gets an empty record, not embeddings.
    The message names the tile (or, without its name, the area's lon/lat bounds) and the period."""


@dataclass(frozen=True)
class CatalogConfig:
    """Where scenes come from and how to ask for them."""

    url: str = DEFAULT_CATALOG
    """A STAC API root URL, or the path/URL of a static catalog.json."""
    collections: tuple[str, ...] = (DEFAULT_COLLECTION,)
    page_size: int = MAX_PAGE_SIZE
    """Items per page (at most 100)."""
    timeout_s: float = 60.0
    """Per request."""
    retries: int = 4
    """Attempts after the first, with exponential backoff from `backoff_s`."""
    backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise UserInputError(f"page size {self.page_size} is outside 1..{MAX_PAGE_SIZE}: choose a smaller page")
        if not self.collections:
            raise UserInputError("no collection given: name at least one, e.g. sentinel-2-c1-l2a")


@dataclass(frozen=True)
class SceneSelection:
    """The products to load for one tile and period, in time order, and what was left out."""

    items: tuple[pystac.Item, ...]
    scenes: tuple[SceneInfo, ...]
    """Same order as `items`."""
    skipped: tuple[SkippedItem, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not self.items


class SceneSource(Protocol):
    """Anything that yields the items of some collections meeting lon/lat boxes in a period."""

    def find(self, bboxes: Sequence[tuple[float, float, float, float]], period: Period) -> list[pystac.Item]: ...

    def sample(self) -> list[pystac.Item]:
        """An item or a few of each collection, to recognise the provider before any search."""
        ...


def open_source(config: CatalogConfig) -> SceneSource:
    """Open the catalog, checking that it answers and holds the collections, and refusing the
    legacy/c1 Earth Search mix up front. A few requests: whoever runs many tasks opens it once and
    keeps it (run.TaskContext: one per dask worker, one per in-process run)."""
    client = _open_client(config)
    source: SceneSource
    if client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        _check_collections(client, config)
        source = StacApiSource(client, config)
    else:
        with warnings.catch_warnings():
            # pystac-client says it falls back to walking a static catalog: that is the intent.
            warnings.simplefilter("ignore", FallbackToPystac)
            source = StaticCatalogSource(client, config)
    sampled = [describe_item(item, ()) for item in source.sample()]
    _refuse_mixed_earth_search([info for info in sampled if isinstance(info, SceneInfo)], config)
    return source


def search_tile(
    source: SceneSource,
    geobox: GeoBox,
    period: Period,
    bands: Sequence[str],
    max_cloud_cover: float | None = None,
    *,
    tile: str | None = None,
) -> SceneSelection:
    """The products to load onto `geobox` (a tile plus halo) for `period`, de-duplicated.

    `max_cloud_cover` drops products whose `eo:cloud_cover` exceeds that percentage, here rather
    than on the server, which may not support the query extension. None keeps all: the encoder
    masks clouds per pixel, so a cloudy product still adds its clear pixels.

    `tile` ("33N_c026_r0266") only names the area in the NoScenesWarning; without it the warning
    gives the area's lon/lat bounds, which a user can map but not look up in the store.
    """
    if max_cloud_cover is not None and not 0 <= max_cloud_cover <= 100:
        raise UserInputError(f"max cloud cover {max_cloud_cover} is not a percentage: give 0..100")
    area = geobox.extent.to_crs("EPSG:4326", resolution=geobox.resolution.x * 20, wrapdateline=True)
    bboxes = _bboxes(area)
    found = [item for item in source.find(bboxes, period) if _meets(item, area)]
    usable, skipped = _describe(found, bands, max_cloud_cover)
    _refuse_mixed_earth_search([info for _, info in usable], None)
    kept, duplicates = drop_duplicates(usable)
    selection = SceneSelection(
        tuple(item for item, _ in kept), tuple(info for _, info in kept), tuple(skipped + duplicates)
    )
    if selection.empty:
        where = f"tile {tile}" if tile else _lon_lat_bounds(bboxes)
        warnings.warn(
            f"no usable Sentinel-2 product for {where} in {period.label} ({len(found)} found, {len(skipped)} unusable)",
            NoScenesWarning,
            stacklevel=2,
        )
    return selection


def drop_duplicates(
    usable: Sequence[tuple[pystac.Item, SceneInfo]],
) -> tuple[list[tuple[pystac.Item, SceneInfo]], list[SkippedItem]]:
    """One product per (MGRS tile, acquisition): the highest processing baseline, then the latest
    generation. Two baselines, two downlinked datastrips and sequence numbers _0_/_1_ of one
    overpass all share the key; odc-stac's groupby would otherwise fuse them silently."""
    best: dict[tuple[str, str], tuple[pystac.Item, SceneInfo]] = {}
    for item, info in usable:
        key = (info.mgrs_tile, info.acquisition)
        if key not in best or _rank(info) > _rank(best[key][1]):
            best[key] = (item, info)
    kept_ids = {info.item_id for _, info in best.values()}
    skipped = [
        SkippedItem(info.item_id, f"duplicate of an acquisition (baseline {info.baseline})", kept.item_id)
        for item, info in usable
        if info.item_id not in kept_ids
        for kept in [best[(info.mgrs_tile, info.acquisition)][1]]
    ]
    kept = sorted(best.values(), key=lambda pair: (str(pair[0].datetime), pair[0].id))
    return kept, skipped


def _rank(info: SceneInfo) -> tuple[tuple[int, int], str, str]:
    return baseline_order(info.baseline), info.generation_time, info.item_id


def _describe(
    items: Iterable[pystac.Item], bands: Sequence[str], max_cloud_cover: float | None
) -> tuple[list[tuple[pystac.Item, SceneInfo]], list[SkippedItem]]:
    usable, skipped = [], []
    for item in items:
        cloud = item.properties.get("eo:cloud_cover")
        if max_cloud_cover is not None and cloud is not None and float(cloud) > max_cloud_cover:
            skipped.append(SkippedItem(item.id, f"eo:cloud_cover {float(cloud):.1f} > {max_cloud_cover:g}"))
            continue
        info = describe_item(item, bands)
        if isinstance(info, SkippedItem):
            warnings.warn(f"item {item.id} skipped: {info.reason}", ItemSkippedWarning, stacklevel=3)
            skipped.append(info)
        else:
            usable.append((item, info))
    return usable, skipped


def _bboxes(area: Geometry) -> list[tuple[float, float, float, float]]:
    """Lon/lat boxes of the area: two where it crosses the antimeridian (odc-geo splits it)."""
    parts = list(area.geoms) if area.geom_type.startswith("Multi") else [area]
    return [(b.left, b.bottom, b.right, b.top) for b in (part.boundingbox for part in parts)]


def _lon_lat_bounds(bboxes: Sequence[tuple[float, float, float, float]]) -> str:
    """ "the area lon 12.3010..12.4020, lat 45.1010..45.2020" (two boxes across the antimeridian)."""
    boxes = [f"lon {west:.4f}..{east:.4f}, lat {south:.4f}..{north:.4f}" for west, south, east, north in bboxes]
    return "the area " + " and ".join(boxes)


def _meets(item: pystac.Item, area: Geometry) -> bool:
    # The API matched bounding boxes; the footprint itself must touch the area (a swath edge or a
    # neighbouring MGRS tile's bbox can reach over a tile it holds no pixel of).
    if item.geometry is None:
        return True
    return bool(Geometry(item.geometry, crs="EPSG:4326").intersects(area))


class StacApiSource:
    """Items from a STAC API's /search, paged."""

    def __init__(self, client: Client, config: CatalogConfig) -> None:
        self._client = client
        self._config = config

    def find(self, bboxes: Sequence[tuple[float, float, float, float]], period: Period) -> list[pystac.Item]:
        found: dict[str, pystac.Item] = {}
        for bbox in bboxes:
            search = self._client.search(
                collections=list(self._config.collections),
                bbox=list(bbox),
                datetime=period.stac_interval(),
                limit=self._config.page_size,
            )
            found.update((item.id, item) for item in self._fetch(search))
        return list(found.values())

    def sample(self) -> list[pystac.Item]:
        items = []
        for name in self._config.collections:
            items += self._fetch(self._client.search(collections=[name], max_items=1, limit=1))
        return items

    def _fetch(self, search: ItemSearch) -> list[pystac.Item]:
        try:
            return list(search.items())
        except APIError as error:
            raise _unreachable(self._config, error) from None


class StaticCatalogSource:
    """Items of a static catalog, walked once and filtered here (it cannot be searched)."""

    def __init__(self, client: Client, config: CatalogConfig) -> None:
        wanted = set(config.collections)
        walked = list(client.get_items(recursive=True))
        self._items = [item for item in walked if item.collection_id in wanted]
        present = {item.collection_id for item in walked}
        missing = wanted - present
        if missing:
            raise UnknownCollectionError(
                f"collection {', '.join(sorted(missing))} not in the static catalog {config.url}; "
                f"it holds: {', '.join(sorted(str(c) for c in present)) or 'no items'}"
            )

    def sample(self) -> list[pystac.Item]:
        return self._items

    def find(self, bboxes: Sequence[tuple[float, float, float, float]], period: Period) -> list[pystac.Item]:
        boxes = [box(*bbox, crs="EPSG:4326") for bbox in bboxes]
        return [
            item
            for item in self._items
            if item.datetime is not None
            and period.contains(item.datetime)
            and any(_intersects_bbox(item, area) for area in boxes)
        ]


def _intersects_bbox(item: pystac.Item, area: Geometry) -> bool:
    if item.bbox is None:
        return False
    west, south, east, north = item.bbox[:4]
    return bool(box(west, south, east, north, crs="EPSG:4326").intersects(area))


def _open_client(config: CatalogConfig) -> Client:
    retry = Retry(
        total=config.retries,
        backoff_factor=config.backoff_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # POST /search is a read: retry it too
        raise_on_status=False,
    )
    io = StacApiIO(timeout=config.timeout_s, max_retries=retry)
    try:
        with warnings.catch_warnings():
            # A static catalog declares no conformance classes; it is walked instead of searched.
            warnings.simplefilter("ignore", NoConformsTo)
            return Client.open(config.url, stac_io=io)
    except (APIError, OSError) as error:
        raise _unreachable(config, error) from None


def _unreachable(config: CatalogConfig, error: Exception) -> CatalogUnreachableError:
    text = str(error).strip()
    # urllib3 buries the cause in "Max retries exceeded ... (Caused by NewConnectionError(...))".
    cause = re.search(r"Caused by (\w+)", text)
    reason = cause.group(1) if cause else (text.splitlines()[0][:160] if text else type(error).__name__)
    return CatalogUnreachableError(
        f"STAC catalog {config.url} did not answer after {config.retries} retries ({reason}): "
        "check the URL and the network, or pass a local static catalog"
    )


def _check_collections(client: Client, config: CatalogConfig) -> None:
    try:
        available = sorted(collection.id for collection in client.get_collections())
    except APIError as error:
        raise _unreachable(config, error) from None
    missing = [name for name in config.collections if name not in available]
    if missing:
        raise UnknownCollectionError(
            f"collection {', '.join(missing)} not found at {config.url}; it has: {', '.join(available)}"
        )


def _refuse_mixed_earth_search(infos: Sequence[SceneInfo], config: CatalogConfig | None) -> None:
    legacy = sorted({info.item_id for info in infos if info.legacy_earth_search})
    c1 = sorted({info.item_id for info in infos if info.collection_1})
    if legacy and c1:
        where = f" at {config.url}" if config else ""
        raise MixedCollectionsError(
            f"legacy Earth Search sentinel-2-l2a products (e.g. {legacy[0]}) and sentinel-2-c1-l2a products "
            f"(e.g. {c1[0]}){where} cannot be mixed: their offsets differ and legacy offset metadata is "
            "unreliable; search sentinel-2-c1-l2a alone"
        )
