"""Build a synthetic Sentinel-2 L2A catalog: real COGs on disk plus STAC items that describe them.

    catalog = build_catalog(directory, "earth-search", CatalogSpec(seed=3))
    catalog.items            # item dicts with absolute asset hrefs, ready to serve
    write_static_catalog(catalog)  # catalog.json + collection + items, relative links

The layout on disk follows the STAC best-practice tree that pystac writes:
`DIR/catalog.json`, `DIR/<collection>/collection.json`, `DIR/<collection>/<item>/<item>.json`,
with every asset file next to its item JSON.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray

from aef_pipeline import sentinel2 as s2
from aef_pipeline.testing.items import ASSET_FILES, FLAVORS, AssetFile, Flavor, JsonDict, make_item
from aef_pipeline.testing.scenes import CatalogSpec, RenderedScene, Scene, plan_scenes, render_scene

# Small blocks so even these tiny scenes are genuinely tiled (several blocks per band).
COG_OPTIONS = {"compress": "deflate", "predictor": 2, "blocksize": 64, "overviews": "NONE"}


@dataclass(frozen=True)
class SyntheticCatalog:
    """A synthetic catalog on disk."""

    root: Path
    flavor: Flavor
    spec: CatalogSpec
    collection: JsonDict
    items: tuple[JsonDict, ...]
    """Items in time order, asset hrefs absolute."""
    scenes: tuple[Scene, ...]
    """The scene behind each item, same order."""

    @property
    def collection_id(self) -> str:
        return self.flavor.collection_id

    def scene_of(self, item_id: str) -> Scene:
        return next(scene for scene, item in zip(self.scenes, self.items, strict=True) if item["id"] == item_id)


def build_catalog(
    directory: str | os.PathLike[str], flavor: str, spec: CatalogSpec | None = None, processes: int = 1
) -> SyntheticCatalog:
    """Render every scene of `spec` as COGs under `directory` and describe them as `flavor` items.

    `processes` > 1 renders scenes in that many processes (large benchmark scenes take seconds each).
    """
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}: choose one of {', '.join(FLAVORS)}")
    spec = spec or CatalogSpec()
    chosen = FLAVORS[flavor]
    root = Path(directory).resolve()
    scenes = plan_scenes(spec, chosen.reprocessed_archive, chosen.removes_offset)
    jobs = [(root, flavor, scene) for scene in scenes]
    if processes > 1:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            items = list(pool.map(_build_item, jobs))
    else:
        items = [_build_item(job) for job in jobs]
    return built_catalog(root, flavor, spec, items)


def built_catalog(
    directory: str | os.PathLike[str], flavor: str, spec: CatalogSpec, items: list[JsonDict]
) -> SyntheticCatalog:
    """What `build_catalog(directory, flavor, spec)` returned, from the items it made: for a process
    that reuses a catalog another built (its files and items are all it needs)."""
    chosen = FLAVORS[flavor]
    scenes = plan_scenes(spec, chosen.reprocessed_archive, chosen.removes_offset)
    return SyntheticCatalog(
        Path(directory).resolve(), chosen, spec, make_collection(chosen, items), tuple(items), tuple(scenes)
    )


def _build_item(job: tuple[Path, str, Scene]) -> JsonDict:
    """Render one scene, write its files and return its item."""
    root, flavor, scene = job
    chosen = FLAVORS[flavor]
    item_dir = root / chosen.collection_id / chosen.item_id(scene)
    item_dir.mkdir(parents=True, exist_ok=True)
    rendered = render_scene(scene)
    files = write_scene_files(item_dir, scene, rendered, chosen)
    return make_item(chosen, scene, rendered, files)


def write_scene_files(item_dir: Path, scene: Scene, rendered: RenderedScene, flavor: Flavor) -> dict[str, AssetFile]:
    """Every asset file of one scene: band COGs, SCL, auxiliary rasters and small metadata files."""
    rasters: dict[str, tuple[NDArray[Any], int]] = {
        name: (dn, s2.BAND_BY_NAME[name].resolution) for name, dn in rendered.dn.items()
    }
    aux_res = flavor.aux_resolution
    valid = rendered.dn["B04"] > 0 if aux_res == 10 else rendered.scl > 0
    rasters["SCL"] = (rendered.scl, 20)
    rasters["AOT"] = (np.where(valid, 124, 0).astype(np.uint16), aux_res)  # AOT 0.124
    rasters["WVP"] = (np.where(valid, 1630, 0).astype(np.uint16), aux_res)  # 1.63 cm of water vapour
    rasters["visual"] = (_true_colour(rendered), 10)
    extras = {
        "cloud": (rendered.cloud_probability, 20),
        "snow": (np.zeros_like(rendered.scl), 20),
        "preview": (_true_colour(rendered)[:, ::6, ::6], 60),
    }
    rasters.update({key: extras[key] for key in flavor.extra_rasters})
    files = {key: _write_cog(item_dir / ASSET_FILES[key], array, scene, res) for key, (array, res) in rasters.items()}
    for key in flavor.documents:
        files[key] = _write_small_file(item_dir / ASSET_FILES[key], key, scene)
    return files


def _true_colour(rendered: RenderedScene) -> NDArray[np.uint8]:
    # Top-of-canopy red, green, blue stretched so 0.3 reflectance saturates, 0 stays nodata.
    rgb = np.stack([rendered.reflectance[10][s2.S2_BANDS.index(s2.BAND_BY_NAME[b])] for b in ("B04", "B03", "B02")])
    scaled = np.clip(np.nan_to_num(rgb, nan=0.0) / 0.3 * 254 + 1, 1, 255)
    return np.where(np.isnan(rgb), 0, scaled).astype(np.uint8)


def _write_cog(path: Path, array: NDArray[Any], scene: Scene, resolution: int) -> AssetFile:
    bands = array if array.ndim == 3 else array[None]
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=bands.shape[2],
        height=bands.shape[1],
        count=bands.shape[0],
        dtype=bands.dtype,
        crs=f"EPSG:{scene.tile.epsg}",
        transform=scene.transform(resolution),
        nodata=0,
        **COG_OPTIONS,
    ) as dst:
        dst.write(bands)
    return _describe_file(path)


def _write_small_file(path: Path, key: str, scene: Scene) -> AssetFile:
    # Stand-ins for metadata documents and the JPEG thumbnail: present and hashed, not parsed.
    body = json.dumps({"synthetic": key, "product": scene.processing_baseline, "tile": scene.tile.name})
    path.write_text(body if path.suffix == ".json" else f"<?xml version='1.0'?><!-- {body} --><synthetic/>")
    return _describe_file(path)


def _describe_file(path: Path) -> AssetFile:
    data = path.read_bytes()
    # A file:// URI, not a bare path: pystac (and so odc-stac) would resolve a bare absolute path
    # against an API item's http self link.
    return AssetFile(href=path.as_uri(), size=len(data), sha256=hashlib.sha256(data).hexdigest())


def make_collection(flavor: Flavor, items: list[JsonDict]) -> JsonDict:
    """A collection like the provider's, with item_assets taken from the items and a real extent."""
    west, south, east, north = (
        min(i["bbox"][0] for i in items),
        min(i["bbox"][1] for i in items),
        max(i["bbox"][2] for i in items),
        max(i["bbox"][3] for i in items),
    )
    times = sorted(i["properties"]["datetime"] for i in items)
    transient = ("href", "file:checksum", "file:size", "proj:shape", "proj:transform", "proj:bbox")
    item_assets = {k: {f: v for f, v in a.items() if f not in transient} for k, a in items[0]["assets"].items()}
    title = "Sentinel-2 Collection 1 Level-2A" if flavor.collection_id.endswith("c1-l2a") else "Sentinel-2 Level-2A"
    return {
        "type": "Collection",
        "id": flavor.collection_id,
        "title": f"{title} (synthetic, aef-pipeline test bed)",
        "description": "Synthetic Sentinel-2 L2A scenes rendered by aef_pipeline.testing; not real data.",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
            "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "extent": {
            "spatial": {"bbox": [[west, south, east, north]]},
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "license": "proprietary",
        "keywords": ["sentinel", "earth observation", "esa", "synthetic"],
        "providers": [{"name": "aef-pipeline test bed", "roles": ["producer", "processor", "host"]}],
        "summaries": {
            "platform": ["sentinel-2a", "sentinel-2b"],
            "constellation": ["sentinel-2"],
            "instruments": ["msi"],
        },
        "item_assets": item_assets,
        "links": [],
    }


def write_static_catalog(catalog: SyntheticCatalog, title: str = "aef-pipeline synthetic Sentinel-2") -> Path:
    """Write catalog.json, the collection and every item with relative links and asset hrefs.

    Returns the path of catalog.json; pystac (`pystac.Catalog.from_file`) walks it.
    """
    root = catalog.root
    collection_dir = root / catalog.collection_id
    item_links = []
    for item in catalog.items:
        item_dir = collection_dir / item["id"]
        _write_json(item_dir / f"{item['id']}.json", _relative_item(item, item_dir))
        item_links.append({"rel": "item", "href": f"./{item['id']}/{item['id']}.json", "type": "application/geo+json"})
    _write_json(
        collection_dir / "collection.json",
        catalog.collection
        | {
            "links": [
                {"rel": "root", "href": "../catalog.json", "type": "application/json"},
                {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
                *item_links,
            ]
        },
    )
    catalog_path = root / "catalog.json"
    _write_json(
        catalog_path,
        {
            "type": "Catalog",
            "id": "aef-synthetic",
            "stac_version": "1.0.0",
            "description": title,
            "links": [
                {"rel": "root", "href": "./catalog.json", "type": "application/json"},
                {"rel": "child", "href": f"./{catalog.collection_id}/collection.json", "type": "application/json"},
            ],
        },
    )
    return catalog_path


def write_item_collection(catalog: SyntheticCatalog, path: Path) -> Path:
    """Every item in one GeoJSON FeatureCollection (absolute hrefs), as `rustac serve` loads it."""
    _write_json(path, {"type": "FeatureCollection", "features": list(catalog.items)})
    return path


def _relative_item(item: JsonDict, item_dir: Path) -> JsonDict:
    assets = {key: asset | {"href": _relative(asset["href"], item_dir)} for key, asset in item["assets"].items()}
    links = [
        {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../collection.json", "type": "application/json"},
        {"rel": "collection", "href": "../collection.json", "type": "application/json"},
        *({**link, "href": _relative(link["href"], item_dir)} for link in item["links"]),
    ]
    return item | {"assets": assets, "links": links}


def _relative(href: str, start: Path) -> str:
    if not href.startswith("file://"):
        return href
    return "./" + os.path.relpath(urllib.parse.unquote(urllib.parse.urlparse(href).path), start)


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    # Through a file of its own and a rename: processes that share a test bed (pytest-xdist workers)
    # may rewrite its static catalog while another reads it, and must never see half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(value, indent=1, ensure_ascii=False))
    partial.replace(path)
