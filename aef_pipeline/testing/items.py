"""STAC items for synthetic scenes, field for field like the real providers' items.

Two flavours, each mirroring real items of ../shared/stac-examples (asset keys, property and
extension fields, value types):

- "earth-search": Earth Search v1 `sentinel-2-c1-l2a` (asset keys red, nir, scl...; raster:bands
  with scale 0.0001 and offset -0.1 where the DNs carry the 04.00 offset).
- "planetary-computer": Planetary Computer `sentinel-2-l2a` (asset keys B02...B12, SCL; no
  raster:bands, so nothing but `s2:processing_baseline` tells the offset).
- "earth-search-legacy": Earth Search v1's older `sentinel-2-l2a` (keys like c1 plus `-jp2`
  twins; ids `S2A_33TWM_20220130_0_L2A` with a sequence number). From baseline 04.00 Earth Search
  removed the offset from some products and flagged it with `earthsearch:boa_offset_applied`,
  while raster:bands declares offset -0.1 either way: the metadata users distrust.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from odc.geo.geom import Geometry, box, polygon

from aef_pipeline import sentinel2 as s2
from aef_pipeline.testing.scenes import RenderedScene, Scene

COG = "image/tiff; application=geotiff; profile=cloud-optimized"
JsonDict = dict[str, Any]


@dataclass(frozen=True)
class AssetFile:
    """A file written for an asset: where it lies and what it holds."""

    href: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Flavor:
    """How one provider names and describes Sentinel-2 L2A."""

    name: str
    collection_id: str
    reprocessed_archive: bool
    """Serves ESA's 05.00 reprocessing for acquisitions before 2022-01-25 (Earth Search c1)."""
    item_id: Callable[[Scene], str]
    band_key: Callable[[s2.S2Band], str]
    """Asset key of a spectral band."""
    aux_resolution: int
    """Resolution of the AOT and WVP rasters (PC serves them at 10 m, Earth Search at 20 m)."""
    extra_rasters: tuple[str, ...]
    """Rasters beyond bands, SCL, AOT, WVP and the true-colour image (ASSET_FILES keys)."""
    documents: tuple[str, ...]
    """Metadata and other non-raster assets (ASSET_FILES keys)."""
    removes_offset: bool = False
    """Subtracts the 04.00 offset from the DNs of first products and flags it (legacy Earth Search)."""


EARTH_SEARCH = Flavor(
    name="earth-search",
    collection_id="sentinel-2-c1-l2a",
    reprocessed_archive=True,
    item_id=lambda sc: f"{sc.acquisition.platform}_T{sc.tile.name}_{sc.datastrip_start:%Y%m%dT%H%M%S}_L2A",
    band_key=lambda band: band.earth_search_key,
    aux_resolution=20,
    extra_rasters=("cloud", "snow", "preview"),
    documents=("thumbnail", "granule_metadata", "tileinfo_metadata", "product_metadata"),
)
PLANETARY_COMPUTER = Flavor(
    name="planetary-computer",
    collection_id="sentinel-2-l2a",
    reprocessed_archive=False,
    item_id=lambda sc: (
        f"{sc.acquisition.platform}_MSIL2A_{sc.acquisition.start:%Y%m%dT%H%M%S}"
        f"_R{sc.acquisition.relative_orbit:03d}_T{sc.tile.name}_{sc.generation_time:%Y%m%dT%H%M%S}"
    ),
    band_key=lambda band: band.name,
    aux_resolution=10,
    extra_rasters=(),
    documents=(
        "safe-manifest",
        "granule-metadata",
        "inspire-metadata",
        "product-metadata",
        "datastrip-metadata",
        "tilejson",
    ),
)
EARTH_SEARCH_LEGACY = Flavor(
    name="earth-search-legacy",
    collection_id="sentinel-2-l2a",
    reprocessed_archive=False,
    item_id=lambda sc: f"{sc.acquisition.platform}_{sc.tile.name}_{sc.sensing_time:%Y%m%d}_{sc.sequence}_L2A",
    band_key=lambda band: band.earth_search_key,
    aux_resolution=20,
    extra_rasters=(),
    documents=("thumbnail", "granule_metadata", "tileinfo_metadata"),
    removes_offset=True,
)
FLAVORS = {flavor.name: flavor for flavor in (EARTH_SEARCH, PLANETARY_COMPUTER, EARTH_SEARCH_LEGACY)}

# Earth Search asset titles of the spectral bands.
_ES_TITLES = {
    "B01": "Coastal",
    "B02": "Blue",
    "B03": "Green",
    "B04": "Red",
    "B05": "Red Edge 1",
    "B06": "Red Edge 2",
    "B07": "Red Edge 3",
    "B08": "NIR 1",
    "B8A": "NIR 2",
    "B09": "NIR 3",
    "B11": "SWIR 1.6μm",
    "B12": "SWIR 2.2μm",
}
# Planetary Computer's eo:common_name differs from Earth Search's for two bands.
_PC_COMMON_NAME = {"B8A": "rededge", "B09": None}
_ES_EXTENSIONS = [
    f"https://stac-extensions.github.io/{name}/schema.json"
    for name in (
        "eo/v1.1.0",
        "file/v2.1.0",
        "grid/v1.1.0",
        "mgrs/v1.0.0",
        "processing/v1.1.0",
        "projection/v1.1.0",
        "raster/v1.1.0",
        "sentinel-2/v1.0.0",
        "storage/v1.0.0",
        "view/v1.0.0",
    )
]
_PC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
]
# Asset file names, as both providers' hrefs end (Earth Search style; PC's are longer SAFE paths).
ASSET_FILES = {
    **{band.name: f"{band.name}.tif" for band in s2.S2_BANDS},
    "SCL": "SCL.tif",
    "AOT": "AOT.tif",
    "WVP": "WVP.tif",
    "visual": "TCI.tif",
    "cloud": "CLD_20m.tif",
    "snow": "SNW_20m.tif",
    "preview": "L2A_PVI.tif",
    "thumbnail": "L2A_PVI.jpg",
    "granule_metadata": "metadata.xml",
    "tileinfo_metadata": "tileInfo.json",
    "product_metadata": "product_metadata.xml",
    "granule-metadata": "MTD_TL.xml",
    "product-metadata": "MTD_MSIL2A.xml",
    "safe-manifest": "manifest.safe",
    "inspire-metadata": "INSPIRE.xml",
    "datastrip-metadata": "MTD_DS.xml",
    "tilejson": "tilejson.json",
}


def make_item(flavor: Flavor, scene: Scene, rendered: RenderedScene, files: Mapping[str, AssetFile]) -> JsonDict:
    """The STAC item of a scene, with asset hrefs from `files` (keyed like ASSET_FILES)."""
    builders = {
        EARTH_SEARCH.name: _earth_search_item,
        PLANETARY_COMPUTER.name: _planetary_computer_item,
        EARTH_SEARCH_LEGACY.name: _legacy_earth_search_item,
    }
    return builders[flavor.name](scene, rendered, files)


def footprint(scene: Scene) -> Geometry:
    """Where the scene holds data, in EPSG:4326: its window, cut at the swath edge."""
    x0, y0 = scene.window_origin
    area = box(x0, y0 - scene.size_m, x0 + scene.size_m, y0, crs=f"EPSG:{scene.tile.epsg}")
    area = area.to_crs("EPSG:4326", resolution=scene.size_m / 8)
    swath = scene.acquisition.swath
    if swath is not None:
        lat_lo, lat_hi = swath.lat0 - 1.0, swath.lat0 + 1.0
        imaged = polygon(
            [
                (swath.lon0 + swath.slope * (lat_lo - swath.lat0), lat_lo),
                (swath.lon0 + 2.0, lat_lo),
                (swath.lon0 + 2.0, lat_hi),
                (swath.lon0 + swath.slope * (lat_hi - swath.lat0), lat_hi),
                (swath.lon0 + swath.slope * (lat_lo - swath.lat0), lat_lo),
            ],
            crs="EPSG:4326",
        )
        area = area.intersection(imaged)
    return area


def _earth_search_item(scene: Scene, rendered: RenderedScene, files: Mapping[str, AssetFile]) -> JsonDict:
    acq, tile, shares = scene.acquisition, scene.tile, rendered.percentages
    area = footprint(scene)
    centroid = area.centroid.points[0]
    props: JsonDict = {
        "created": _iso_ms(scene.generation_time + dt.timedelta(minutes=34)),
        "platform": f"sentinel-2{acq.platform[-1].lower()}",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": round(_cloud_cover(shares), 6),
        "proj:epsg": tile.epsg,
        "proj:centroid": {"lat": round(centroid[1], 5), "lon": round(centroid[0], 5)},
        "mgrs:utm_zone": tile.zone,
        "mgrs:latitude_band": tile.band,
        "mgrs:grid_square": tile.square,
        "grid:code": f"MGRS-{tile.zone}{tile.band}{tile.square}",
        "view:azimuth": 104.38 if acq.relative_orbit < 100 else 285.12,
        "view:incidence_angle": 4.71,
        "view:sun_azimuth": _sun_azimuth(scene),
        "view:sun_elevation": 90.0 - _sun_zenith(scene),
        "s2:tile_id": _granule_id(scene),
        **{key: _es_number(key, value) for key, value in _scl_percentages(shares).items()},
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": scene.processing_baseline,
        "s2:product_uri": _product_uri(scene),
        "s2:generation_time": _iso_us(scene.generation_time),
        "s2:datatake_id": _datatake_id(scene),
        "s2:datatake_type": "INS-NOBS",
        "s2:datastrip_id": _datastrip_id(scene),
        "s2:reflectance_conversion_factor": _reflectance_conversion_factor(scene),
        "datetime": _iso_ms(scene.sensing_time),
        "earthsearch:payload_id": f"roda-sentinel-2-c1-l2a/workflow-sentinel-2-c1-l2a-to-stac/{_hex_id(scene)}",
        "storage:platform": "AWS",
        "storage:region": "us-west-2",
        "storage:requester_pays": False,
        "processing:software": {"sentinel-2-c1-l2a-to-stac": "v2024.02.01"},
        "updated": _iso_ms(scene.generation_time + dt.timedelta(minutes=34)),
    }
    return _feature(
        EARTH_SEARCH, scene, area, props, _ES_EXTENSIONS, _earth_search_assets(scene, files), precision=6
    ) | {"links": [{"rel": "thumbnail", "href": files["thumbnail"].href}]}


def _earth_search_assets(scene: Scene, files: Mapping[str, AssetFile]) -> JsonDict:
    offset = -0.1 if scene.has_boa_offset else 0.0

    def raster(key: str, resolution: int, data_type: str = "uint16", **band: Any) -> JsonDict:
        return {
            "gsd": resolution,
            "proj:shape": list(scene.shape(resolution)),
            "proj:transform": _transform_list(scene, resolution, as_int=True),
            "raster:bands": [{"nodata": 0, "data_type": data_type, "spatial_resolution": resolution, **band}],
            **_file_fields(files[key]),
        }

    assets: JsonDict = {}
    for band in s2.S2_BANDS:
        assets[band.earth_search_key] = {
            "href": files[band.name].href,
            "type": COG,
            "title": f"{_ES_TITLES[band.name]} - {band.resolution}m",
            "eo:bands": [_eo_band(band, pc=False)],
            **raster(band.name, band.resolution, scale=0.0001, offset=offset),
            "roles": ["data", "reflectance"],
        }
    visual = raster("visual", 10, "uint8")
    visual["raster:bands"] = visual["raster:bands"] * 3
    assets["visual"] = {
        "href": files["visual"].href,
        "type": COG,
        "title": "True color image",
        "eo:bands": _rgb_bands(pc=False),
        **visual,
        "roles": ["visual"],
    }
    for key, file_key, title, data_type, roles, band_fields in _ES_AUX_RASTERS:
        assets[key] = {
            "href": files[file_key].href,
            "type": COG,
            "title": title,
            **raster(file_key, 20, data_type, **band_fields),
            "roles": roles,
        }
    snow = raster("snow", 20, "uint8")
    del snow["gsd"]  # Earth Search writes no gsd on the snow asset
    assets["snow"] = {
        "href": files["snow"].href,
        "type": COG,
        "title": "Snow Probabilities",
        **snow,
        "roles": ["data", "snow-ice"],
    }
    assets["preview"] = {
        "href": files["preview"].href,
        "type": COG,
        "title": "True color preview",
        "eo:bands": _rgb_bands(pc=False),
        **_file_fields(files["preview"]),
        "roles": ["overview"],
    }
    for key, media in (("granule_metadata", "xml"), ("tileinfo_metadata", "json"), ("product_metadata", "xml")):
        assets[key] = {
            "href": files[key].href,
            "type": f"application/{media}",
            **_file_fields(files[key]),
            "roles": ["metadata"],
        }
    assets["thumbnail"] = {
        "href": files["thumbnail"].href,
        "type": "image/jpeg",
        "title": "Thumbnail of preview image",
        **_file_fields(files["thumbnail"]),
        "roles": ["thumbnail"],
    }
    return dict(sorted(assets.items(), key=lambda kv: _ES_KEY_ORDER.index(kv[0])))


# Earth Search's 20 m auxiliary rasters: key, file, title, data type, roles, raster:bands extras.
_ES_AUX_RASTERS: tuple[tuple[str, str, str, str, list[str], dict[str, Any]], ...] = (
    ("wvp", "WVP", "Water Vapour (WVP)", "uint16", ["data"], {"unit": "cm", "scale": 0.001, "offset": 0}),
    ("aot", "AOT", "Aerosol optical thickness (AOT)", "uint16", ["data"], {"scale": 0.001, "offset": 0}),
    ("scl", "SCL", "Scene classification map (SCL)", "uint8", ["data"], {}),
    ("cloud", "cloud", "Cloud Probabilities", "uint8", ["data", "cloud"], {}),
)

# The asset order of real Earth Search items, for readable diffs against them.
_ES_KEY_ORDER = [
    "red",
    "green",
    "blue",
    "visual",
    "nir",
    "swir22",
    "rededge2",
    "rededge3",
    "rededge1",
    "swir16",
    "wvp",
    "nir08",
    "scl",
    "aot",
    "coastal",
    "nir09",
    "cloud",
    "snow",
    "preview",
    "granule_metadata",
    "tileinfo_metadata",
    "product_metadata",
    "thumbnail",
]


def _planetary_computer_item(scene: Scene, rendered: RenderedScene, files: Mapping[str, AssetFile]) -> JsonDict:
    acq, tile, shares = scene.acquisition, scene.tile, rendered.percentages
    props: JsonDict = {
        "datetime": _iso_us(scene.sensing_time),
        "platform": f"Sentinel-2{acq.platform[-1]}",
        "proj:epsg": tile.epsg,
        "instruments": ["msi"],
        "s2:mgrs_tile": tile.name,
        "constellation": "Sentinel 2",
        "s2:granule_id": _granule_id(scene),
        "eo:cloud_cover": round(_cloud_cover(shares), 6),
        "s2:datatake_id": _datatake_id(scene),
        "s2:product_uri": _product_uri(scene),
        "s2:datastrip_id": _datastrip_id(scene),
        "s2:product_type": "S2MSI2A",
        "sat:orbit_state": "descending",
        "s2:datatake_type": "INS-NOBS",
        "s2:generation_time": _iso_us(scene.generation_time),
        "sat:relative_orbit": acq.relative_orbit,
        "s2:mean_solar_zenith": _sun_zenith(scene),
        "s2:mean_solar_azimuth": _sun_azimuth(scene),
        "s2:processing_baseline": scene.processing_baseline,
        "s2:reflectance_conversion_factor": _reflectance_conversion_factor(scene),
        **{key: round(value, 6) for key, value in _scl_percentages(shares).items()},
    }
    if not scene.has_boa_offset:
        # Products of baselines before 04.00 also report dark features (seen in PC's 2019 items).
        props["s2:dark_features_percentage"] = round(shares[str(s2.SCL_DARK)], 6)
    return _feature(
        PLANETARY_COMPUTER,
        scene,
        footprint(scene),
        props,
        _PC_EXTENSIONS,
        _planetary_computer_assets(scene, files),
        precision=7,
    )


def _planetary_computer_assets(scene: Scene, files: Mapping[str, AssetFile]) -> JsonDict:
    def raster(key: str, resolution: int, title: str) -> JsonDict:
        x0, y0 = scene.window_origin
        bbox = [x0, y0 - scene.size_m, x0 + scene.size_m, y0]
        return {
            "href": files[key].href,
            "proj:bbox": [float(v) for v in bbox],
            "proj:shape": list(scene.shape(resolution)),
            "proj:transform": _transform_list(scene, resolution, as_int=False),
            "gsd": float(resolution),
            "type": COG,
            "roles": ["data"],
            "title": title,
        }

    assets: JsonDict = {"AOT": raster("AOT", 10, "Aerosol optical thickness (AOT)")}
    for band in sorted(s2.S2_BANDS, key=lambda b: b.name):
        title = f"{band.description} - {band.resolution}m"
        assets[band.name] = raster(band.name, band.resolution, title) | {"eo:bands": [_eo_band(band, pc=True)]}
    assets["SCL"] = raster("SCL", 20, "Scene classfication map (SCL)")  # sic: PC's own spelling
    assets["WVP"] = raster("WVP", 10, "Water vapour (WVP)")
    assets["visual"] = raster("visual", 10, "True color image") | {"eo:bands": _rgb_bands(pc=True)}
    for key, title in (
        ("safe-manifest", "SAFE manifest"),
        ("granule-metadata", "Granule metadata"),
        ("inspire-metadata", "INSPIRE metadata"),
        ("product-metadata", "Product metadata"),
        ("datastrip-metadata", "Datastrip metadata"),
    ):
        assets[key] = {"href": files[key].href, "type": "application/xml", "roles": ["metadata"], "title": title}
    assets["tilejson"] = {
        "title": "TileJSON with default rendering",
        "href": files["tilejson"].href,
        "type": "application/json",
        "roles": ["tiles"],
    }
    return assets


_LEGACY_EXTENSIONS = [
    f"https://stac-extensions.github.io/{name}/schema.json"
    for name in (
        "processing/v1.1.0",
        "projection/v1.0.0",
        "eo/v1.0.0",
        "grid/v1.0.0",
        "raster/v1.1.0",
        "mgrs/v1.0.0",
        "view/v1.0.0",
    )
]
# Legacy Earth Search band descriptions: "Red (band 4)", "NIR 2 (band 8A)".
_LEGACY_NAMES = {
    "B01": "Coastal aerosol",
    "B02": "Blue",
    "B03": "Green",
    "B04": "Red",
    "B05": "Red edge 1",
    "B06": "Red edge 2",
    "B07": "Red edge 3",
    "B08": "NIR 1",
    "B8A": "NIR 2",
    "B09": "NIR 3",
    "B11": "SWIR 1",
    "B12": "SWIR 2",
}


def _legacy_earth_search_item(scene: Scene, rendered: RenderedScene, files: Mapping[str, AssetFile]) -> JsonDict:
    acq, tile, shares = scene.acquisition, scene.tile, rendered.percentages
    area = footprint(scene)
    s3_path = (
        f"s3://sentinel-cogs/sentinel-s2-l2a-cogs/{tile.zone}/{tile.band}/{tile.square}/"
        f"{scene.sensing_time:%Y/%-m}/{EARTH_SEARCH_LEGACY.item_id(scene)}"
    )
    props: JsonDict = {
        "created": _iso_ms(scene.generation_time + dt.timedelta(days=1, minutes=2)),
        "platform": f"sentinel-2{acq.platform[-1].lower()}",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": round(_cloud_cover(shares), 6),
        "proj:epsg": tile.epsg,
        "mgrs:utm_zone": tile.zone,
        "mgrs:latitude_band": tile.band,
        "mgrs:grid_square": tile.square,
        "grid:code": f"MGRS-{tile.zone}{tile.band}{tile.square}",
        "view:sun_azimuth": _sun_azimuth(scene),
        "view:sun_elevation": 90.0 - _sun_zenith(scene),
        **{key: _es_number(key, value, _LEGACY_INTEGER_ZEROS) for key, value in _scl_percentages(shares).items()},
        "s2:dark_features_percentage": round(shares[str(s2.SCL_DARK)], 6),
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": scene.processing_baseline,
        "s2:product_uri": _product_uri(scene),
        "s2:generation_time": _iso_us(scene.generation_time),
        "s2:datatake_id": _datatake_id(scene),
        "s2:datatake_type": "INS-NOBS",
        "s2:datastrip_id": _datastrip_id(scene),
        "s2:granule_id": _granule_id(scene),
        "s2:reflectance_conversion_factor": _reflectance_conversion_factor(scene),
        "datetime": _iso_us(scene.sensing_time),
        "s2:sequence": str(scene.sequence),
        "earthsearch:s3_path": s3_path,
        "earthsearch:payload_id": f"roda-sentinel2/workflow-sentinel2-to-stac/{_hex_id(scene)}",
        "earthsearch:boa_offset_applied": scene.offset_removed_by_provider,
        "processing:software": {"sentinel2-to-stac": "0.1.0"},
        "updated": _iso_ms(scene.generation_time + dt.timedelta(days=1, minutes=2)),
    }
    return _feature(
        EARTH_SEARCH_LEGACY, scene, area, props, _LEGACY_EXTENSIONS, _legacy_assets(scene, files), precision=12
    ) | {"links": [{"rel": "thumbnail", "href": files["thumbnail"].href}]}


def _legacy_assets(scene: Scene, files: Mapping[str, AssetFile]) -> JsonDict:
    # The declared offset follows the baseline alone, even where the DNs no longer carry it.
    offset = -0.1 if scene.has_boa_offset else 0

    def raster(key: str, resolution: int, data_type: str = "uint16", **band: Any) -> JsonDict:
        bits = {"bits_per_sample": 15} if data_type == "uint16" else {}
        return {
            "proj:shape": list(scene.shape(resolution)),
            "proj:transform": _transform_list(scene, resolution, as_int=True),
            "raster:bands": [{"nodata": 0, "data_type": data_type, **bits, "spatial_resolution": resolution, **band}],
        }

    def eo_band(band: s2.S2Band) -> JsonDict:
        return {
            "name": band.earth_search_key,
            "common_name": band.common_name,
            "description": f"{_LEGACY_NAMES[band.name]} (band {band.name[1:].lstrip('0')})",
            "center_wavelength": band.center_wavelength,
            "full_width_half_max": band.full_width_half_max,
        }

    cogs: JsonDict = {}
    reflectance_roles = ["data", "reflectance"]
    cogs["aot"] = {
        "href": files["AOT"].href,
        "type": COG,
        "title": "Aerosol optical thickness (AOT)",
        **raster("AOT", 20, scale=0.001, offset=0),
        "roles": reflectance_roles,
    }
    for band in s2.S2_BANDS:
        described = eo_band(band)
        cogs[band.earth_search_key] = {
            "href": files[band.name].href,
            "type": COG,
            "title": f"{described['description']} - {band.resolution}m",
            "eo:bands": [described],
            "gsd": band.resolution,
            **raster(band.name, band.resolution, scale=0.0001, offset=offset),
            "roles": reflectance_roles,
        }
    cogs["scl"] = {
        "href": files["SCL"].href,
        "type": COG,
        "title": "Scene classification map (SCL)",
        **raster("SCL", 20, "uint8"),
        "roles": reflectance_roles,
    }
    visual = raster("visual", 10)
    del visual["raster:bands"]
    rgb = [eo_band(s2.BAND_BY_NAME[name]) for name in ("B04", "B03", "B02")]
    cogs["visual"] = {
        "href": files["visual"].href,
        "type": COG,
        "title": "True color image",
        "eo:bands": rgb,
        **visual,
        "roles": ["visual"],
    }
    cogs["wvp"] = {
        "href": files["WVP"].href,
        "type": COG,
        "title": "Water vapour (WVP)",
        **raster("WVP", 20, unit="cm", scale=0.001, offset=0),
        "roles": reflectance_roles,
    }
    assets: JsonDict = {}
    for key, asset in cogs.items():
        assets[key] = asset
        # The JPEG 2000 originals in ESA's requester-pays bucket: described, never read.
        jp2_name = asset["href"].rsplit("/", 1)[-1].replace(".tif", ".jp2")
        jp2 = f"s3://sentinel-s2-l2a/tiles/{scene.tile.zone}/{scene.tile.band}/{scene.tile.square}/" + (
            f"{scene.sensing_time:%Y/%-m/%-d}/{scene.sequence}/{jp2_name}"
        )
        assets[f"{key}-jp2"] = asset | {"href": jp2, "type": "image/jp2"}
    for key, media in (("granule_metadata", "application/xml"), ("tileinfo_metadata", "application/json")):
        assets[key] = {"href": files[key].href, "type": media, "roles": ["metadata"]}
    assets["thumbnail"] = {
        "href": files["thumbnail"].href,
        "type": "image/jpeg",
        "title": "Thumbnail image",
        "roles": ["thumbnail"],
    }
    return dict(sorted(assets.items()))


def _feature(
    flavor: Flavor,
    scene: Scene,
    area: Geometry,
    props: JsonDict,
    extensions: list[str],
    assets: JsonDict,
    precision: int,
) -> JsonDict:
    geometry = area.json
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": flavor.item_id(scene),
        "stac_extensions": extensions,
        "geometry": _round_coords(geometry, precision),
        "bbox": [round(v, precision) for v in area.boundingbox.bbox],
        "properties": props,
        "links": [],
        "assets": assets,
        "collection": flavor.collection_id,
    }


def _eo_band(band: s2.S2Band, pc: bool) -> JsonDict:
    out: JsonDict = {"name": band.name}
    common = _PC_COMMON_NAME.get(band.name, band.common_name) if pc else band.common_name
    if common:
        out["common_name"] = common
    if pc:
        out["description"] = band.description
    return out | {"center_wavelength": band.center_wavelength, "full_width_half_max": band.full_width_half_max}


def _rgb_bands(pc: bool) -> list[JsonDict]:
    return [_eo_band(s2.BAND_BY_NAME[name], pc) for name in ("B04", "B03", "B02")]


def _transform_list(scene: Scene, resolution: int, as_int: bool) -> list[float]:
    t = scene.transform(resolution)
    values = [t.a, t.b, t.c, t.d, t.e, t.f]
    return [int(v) for v in values] if as_int and all(float(v).is_integer() for v in values) else values


def _file_fields(file: AssetFile) -> JsonDict:
    # file:checksum is a multihash: 0x12 (sha2-256), 0x20 (32 bytes), then the digest.
    return {"file:checksum": "1220" + file.sha256, "file:size": file.size}


def _scl_percentages(shares: Mapping[str, float]) -> dict[str, float]:
    return {
        "s2:degraded_msi_data_percentage": 0.0,
        "s2:nodata_pixel_percentage": shares["nodata"],
        "s2:saturated_defective_pixel_percentage": shares[str(s2.SCL_SATURATED)],
        "s2:cloud_shadow_percentage": shares[str(s2.SCL_CLOUD_SHADOW)],
        "s2:vegetation_percentage": shares[str(s2.SCL_VEGETATION)],
        "s2:not_vegetated_percentage": shares[str(s2.SCL_NOT_VEGETATED)],
        "s2:water_percentage": shares[str(s2.SCL_WATER)],
        "s2:unclassified_percentage": shares[str(s2.SCL_UNCLASSIFIED)],
        "s2:medium_proba_clouds_percentage": shares[str(s2.SCL_CLOUD_MEDIUM)],
        "s2:high_proba_clouds_percentage": shares[str(s2.SCL_CLOUD_HIGH)],
        "s2:thin_cirrus_percentage": shares[str(s2.SCL_THIN_CIRRUS)],
        "s2:snow_ice_percentage": shares[str(s2.SCL_SNOW)],
    }


def _cloud_cover(shares: Mapping[str, float]) -> float:
    # Sen2Cor's cloud cover: medium + high probability clouds + thin cirrus.
    return sum(shares[str(c)] for c in (s2.SCL_CLOUD_MEDIUM, s2.SCL_CLOUD_HIGH, s2.SCL_THIN_CIRRUS))


# Earth Search writes an exact zero of these as a JSON integer ("s2:snow_ice_percentage": 0).
_ES_INTEGER_ZEROS = {
    "s2:degraded_msi_data_percentage",
    "s2:nodata_pixel_percentage",
    "s2:saturated_defective_pixel_percentage",
    "s2:cloud_shadow_percentage",
    "s2:vegetation_percentage",
    "s2:unclassified_percentage",
    "s2:thin_cirrus_percentage",
    "s2:snow_ice_percentage",
}


# The same for the legacy collection (as seen in its real items).
_LEGACY_INTEGER_ZEROS = {
    "s2:cloud_shadow_percentage",
    "s2:degraded_msi_data_percentage",
    "s2:saturated_defective_pixel_percentage",
    "s2:snow_ice_percentage",
    "s2:thin_cirrus_percentage",
}


def _es_number(key: str, value: float, integer_zeros: set[str] = _ES_INTEGER_ZEROS) -> float | int:
    return 0 if value == 0 and key in integer_zeros else round(float(value), 6)


def _granule_id(scene: Scene) -> str:
    sat = scene.acquisition.platform
    return (
        f"{sat}_OPER_MSI_L2A_TL_{sat[1:]}PS_{scene.generation_time:%Y%m%dT%H%M%S}"
        f"_A{scene.acquisition.absolute_orbit:06d}_T{scene.tile.name}_N{scene.processing_baseline}"
    )


def _datastrip_id(scene: Scene) -> str:
    sat = scene.acquisition.platform
    return (
        f"{sat}_OPER_MSI_L2A_DS_{sat[1:]}PS_{scene.generation_time:%Y%m%dT%H%M%S}"
        f"_S{scene.datastrip_start:%Y%m%dT%H%M%S}_N{scene.processing_baseline}"
    )


def _datatake_id(scene: Scene) -> str:
    acq = scene.acquisition
    return f"G{acq.platform}_{acq.start:%Y%m%dT%H%M%S}_{acq.absolute_orbit:06d}_N{scene.processing_baseline}"


def _product_uri(scene: Scene) -> str:
    acq = scene.acquisition
    return (
        f"{acq.platform}_MSIL2A_{acq.start:%Y%m%dT%H%M%S}_N{scene.processing_baseline.replace('.', '')}"
        f"_R{acq.relative_orbit:03d}_T{scene.tile.name}_{scene.generation_time:%Y%m%dT%H%M%S}.SAFE"
    )


def _hex_id(scene: Scene) -> str:
    return hashlib.md5(_product_uri(scene).encode()).hexdigest()


def _sun_zenith(scene: Scene) -> float:
    """Approximate solar zenith at a mid-morning overpass (good to a few degrees)."""
    doy = scene.sensing_time.timetuple().tm_yday
    declination = 23.44 * math.sin(2 * math.pi * (doy - 81) / 365.25)
    lat = scene.centre_lonlat()[1]
    return round(min(89.0, abs(lat - declination) + 8.0), 6)


def _sun_azimuth(scene: Scene) -> float:
    return round(155.0 + 8.0 * math.sin(2 * math.pi * scene.sensing_time.timetuple().tm_yday / 365.25), 6)


def _reflectance_conversion_factor(scene: Scene) -> float:
    # Earth-Sun distance correction, as in the L1C metadata: 1 / (1 - e cos(0.0172 (doy - 4)))^2.
    doy = scene.sensing_time.timetuple().tm_yday
    return 1.0 / (1.0 - 0.01673 * math.cos(0.0172 * (doy - 4))) ** 2


def _iso_ms(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _iso_us(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _round_coords(geometry: JsonDict, precision: int) -> JsonDict:
    def rnd(value: Any) -> Any:
        return round(value, precision) if isinstance(value, float) else [rnd(v) for v in value]

    return {"type": geometry["type"], "coordinates": rnd(geometry["coordinates"])}
