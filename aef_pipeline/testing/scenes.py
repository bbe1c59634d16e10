"""Synthetic Sentinel-2 acquisitions: which MGRS tiles see the site, when, under which sky.

A `CatalogSpec` says what the catalog holds (site, years, revisit, hard cases); `plan_scenes`
turns it into `Scene`s, one per (acquisition, MGRS tile, processing); `render_scene` turns a scene
into the digital numbers of every band, exactly as the COGs will hold them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from pyproj import Transformer

from aef_pipeline import sentinel2 as s2
from aef_pipeline.grid import utm_epsg, utm_zone
from aef_pipeline.testing.world import CloudBlob, Landscape, Sky, SwathEdge, World, make_world, observe

MGRS_TILE_SIZE_M = 109_800  # a Sentinel-2 tile: a 100 km MGRS square plus 9.8 km of overlap
# Sentinel-2A has imaged since mid 2015, 2B joined in March 2017.
LAUNCH = {"S2A": dt.datetime(2015, 6, 23), "S2B": dt.datetime(2017, 3, 7)}
ORBITS_PER_DAY = 143 / 10  # 143 orbits per 10-day repeat cycle

# Original processing baselines by acquisition date (approximate ESA history).
BASELINE_HISTORY = (
    (dt.date(2015, 1, 1), "02.06"),
    (dt.date(2018, 11, 6), "02.09"),
    (dt.date(2019, 7, 8), "02.12"),
    (dt.date(2021, 3, 30), "03.00"),
    (dt.date(2021, 6, 30), "03.01"),
    (dt.date(2022, 1, 25), "04.00"),
    (dt.date(2022, 12, 6), "05.09"),
    (dt.date(2023, 12, 13), "05.10"),
    (dt.date(2024, 7, 23), "05.11"),
)
REPROCESSED_ARCHIVE_BASELINE = "05.00"  # ESA's collection-1 reprocessing of 2015-2021


@dataclass(frozen=True)
class MgrsTile:
    """A Sentinel-2 tile: an MGRS 100 km square in its UTM zone, with the S2 origin rule."""

    zone: int
    band: str
    square: str
    epsg: int
    x0: float
    """Easting of the tile's upper-left corner."""
    y0: float
    """Northing of the tile's upper-left corner."""

    @property
    def name(self) -> str:
        """e.g. "33TWL"."""
        return f"{self.zone:02d}{self.band}{self.square}"


def mgrs_tile_at(lon: float, lat: float, zone: int | None = None) -> MgrsTile:
    """The MGRS tile whose 100 km square holds (lon, lat) (AA lettering, as Sentinel-2 uses).

    `zone` picks a UTM zone other than the point's own, for tiles that reach across a zone edge
    (every zone's tiles overlap its neighbours', and zone 1's reach past the antimeridian).
    """
    zone, epsg, x, y = _utm(lon, lat, zone)
    return _tile_of_square(zone, lat, epsg, int(x // 100_000), int(y // 100_000))


def covering_tiles(lon: float, lat: float) -> list[MgrsTile]:
    """Every tile of (lon, lat)'s UTM zone whose 109.8 km extent holds the point."""
    zone, epsg, x, y = _utm(lon, lat, None)
    col0, row0 = int(x // 100_000), int(y // 100_000)
    tiles = []
    for dcol, drow in ((0, 0), (-1, 0), (0, 1), (-1, 1)):
        tile = _tile_of_square(zone, lat, epsg, col0 + dcol, row0 + drow)
        if tile.x0 <= x < tile.x0 + MGRS_TILE_SIZE_M and tile.y0 - MGRS_TILE_SIZE_M < y <= tile.y0:
            tiles.append(tile)
    return tiles


def _utm(lon: float, lat: float, zone: int | None) -> tuple[int, int, float, float]:
    """(zone, EPSG code, easting, northing) of a point, in `zone` or else its own zone."""
    zone = zone or utm_zone(lon)
    epsg = utm_epsg(zone, "N" if lat >= 0 else "S")
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    return zone, epsg, float(x), float(y)


def _tile_of_square(zone: int, lat: float, epsg: int, col: int, row: int) -> MgrsTile:
    column_letters = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3]
    row_letters = "ABCDEFGHJKLMNPQRSTUV"
    row_letter = row_letters[(row + (5 if zone % 2 == 0 else 0)) % 20]
    lat_band = "CDEFGHJKLMNPQRSTUVWX"[min(int((lat + 80) // 8), 19)]
    square = column_letters[col - 1] + row_letter
    # Sentinel-2 puts a tile's origin 40 m west and 40 m north of its MGRS square's NW corner.
    return MgrsTile(zone, lat_band, square, epsg, col * 100_000 - 40.0, (row + 1) * 100_000 + 40.0)


@dataclass(frozen=True)
class Site:
    """The square of ground the synthetic catalog images."""

    lon: float
    lat: float
    size_m: int = 2400
    """Side of the imaged square; a multiple of 60 so 10, 20 and 60 m pixels share its edges."""


# On the overlap of MGRS tiles 33TVM and 33TWM (Slovenia): two tiles of one zone see it.
DEFAULT_SITE = Site(lon=15.065, lat=46.2)


@dataclass(frozen=True)
class CatalogSpec:
    """What a synthetic catalog holds. Defaults give a small catalog that builds in seconds."""

    site: Site = DEFAULT_SITE
    years: tuple[int, ...] = (2021, 2022)
    """Calendar years of acquisitions; 2021-2022 straddles baseline 04.00 (2022-01-25)."""
    revisit_days: int = 30
    """Days between acquisitions (the real constellation revisits every 5 days)."""
    seed: int = 0
    """Land cover and clouds."""
    world: str = "plain"
    """Which world the scenes image: "plain" (five classes that annual means separate) or "labelled"
    (eight classes, some told apart only by time series, texture or surroundings; see world.py)."""
    mean_cloud_blobs: float = 1.5
    """Average number of cloud blobs over the site per acquisition."""
    overcast_index: int = 3
    """Acquisition number that is fully cloudy (-1: none)."""
    swath_edge_index: int = 5
    """Acquisition number whose swath edge leaves part of the site unimaged (-1: none)."""
    duplicate_index: int = 1
    """Acquisition number that the catalog holds twice, processed with two baselines (-1: none)."""


@dataclass(frozen=True)
class Acquisition:
    """One overpass of one satellite: a datatake, seen by every tile under its swath."""

    platform: str
    """"S2A" or "S2B"."""
    start: dt.datetime
    """Datatake sensing start (UTC)."""
    relative_orbit: int
    sky: Sky
    swath: SwathEdge | None

    @property
    def absolute_orbit(self) -> int:
        return int((self.start - LAUNCH[self.platform]).total_seconds() / 86400 * ORBITS_PER_DAY)


@dataclass(frozen=True)
class Scene:
    """One L2A product of one tile: what becomes one STAC item and its COGs."""

    acquisition: Acquisition
    tile: MgrsTile
    processing_baseline: str
    generation_time: dt.datetime
    datastrip_start: dt.datetime
    """Sensing start of the datastrip; a second downlink of the same datatake differs here."""
    window_origin: tuple[float, float]
    """(x, y) of the imaged window's upper-left corner, in the tile's CRS."""
    size_m: int
    world: Landscape = field(default=World())
    sequence: int = 0
    """Product version of this acquisition and tile: 0, then 1 for a second processing."""
    offset_removed_by_provider: bool = False
    """The provider subtracted the 04.00 offset from the DNs (legacy Earth Search's
    `earthsearch:boa_offset_applied`), so the pixels no longer carry it whatever the baseline."""

    @property
    def sensing_time(self) -> dt.datetime:
        """The item's `datetime`: when the tile centre was imaged."""
        return self.acquisition.start + dt.timedelta(seconds=13.5)

    @property
    def has_boa_offset(self) -> bool:
        """The processing baseline defines the +1000 offset (04.00 and later)."""
        return s2.baseline_has_offset(self.processing_baseline)

    @property
    def dn_offset(self) -> int:
        """What the stored DNs carry on top of reflectance * 10000."""
        return s2.BOA_ADD_OFFSET if self.has_boa_offset and not self.offset_removed_by_provider else 0

    def transform(self, resolution: int) -> Affine:
        return Affine(resolution, 0, self.window_origin[0], 0, -resolution, self.window_origin[1])

    def shape(self, resolution: int) -> tuple[int, int]:
        return (self.size_m // resolution, self.size_m // resolution)

    def centre_lonlat(self) -> tuple[float, float]:
        x0, y0 = self.window_origin
        half = self.size_m / 2
        lon, lat = Transformer.from_crs(self.tile.epsg, 4326, always_xy=True).transform(x0 + half, y0 - half)
        return float(lon), float(lat)

    def lonlat(self, resolution: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Longitude and latitude of every pixel centre at a resolution."""
        rows, cols = np.indices(self.shape(resolution), dtype=np.float64)
        x, y = self.transform(resolution) @ (cols + 0.5, rows + 0.5)  # type: ignore[operator]
        lon, lat = Transformer.from_crs(self.tile.epsg, 4326, always_xy=True).transform(x, y)
        return np.asarray(lon), np.asarray(lat)


@dataclass(frozen=True)
class RenderedScene:
    """The pixel content of a scene, as the COGs store it."""

    dn: dict[str, NDArray[np.uint16]]
    """Digital numbers per band name (B01...B12) at the band's native resolution; 0 = nodata."""
    scl: NDArray[np.uint8]
    """Scene classification at 20 m."""
    cloud_probability: NDArray[np.uint8]
    """Percent at 20 m."""
    reflectance: dict[int, NDArray[np.float64]]
    """Truth (band, y, x) surface reflectance with clouds per resolution; NaN where not imaged."""

    @cached_property
    def percentages(self) -> dict[str, float]:
        """Share of each SCL class among imaged pixels, and the nodata share, in percent."""
        counts = np.bincount(self.scl.ravel(), minlength=12).astype(float)
        imaged = max(counts[1:].sum(), 1.0)
        shares = {str(c): 100.0 * counts[c] / imaged for c in range(1, 12)}
        shares["nodata"] = 100.0 * counts[0] / counts.sum()
        return shares


def render_scene(scene: Scene) -> RenderedScene:
    """Digital numbers of every band, SCL and cloud probability for one scene."""
    offset = scene.dn_offset
    dn: dict[str, NDArray[np.uint16]] = {}
    reflectance = {}
    scl = cloud = None
    for res in s2.RESOLUTIONS:
        lon, lat = scene.lonlat(res)
        refl, classes, density = observe(
            scene.world, scene.acquisition.sky, scene.acquisition.swath, lon, lat, scene.sensing_time
        )
        reflectance[res] = refl
        for i, band in enumerate(s2.S2_BANDS):
            if band.resolution == res:
                dn[band.name] = to_digital_numbers(refl[i], offset)
        if res == 20:
            scl = classes
            cloud = np.where(classes == s2.SCL_NODATA, 0, np.clip(np.round(density * 100), 1, 100)).astype(np.uint8)
    assert scl is not None
    assert cloud is not None
    return RenderedScene(dn=dn, scl=scl, cloud_probability=cloud, reflectance=reflectance)


def to_digital_numbers(reflectance: NDArray[np.float64], offset: int) -> NDArray[np.uint16]:
    """L2A quantisation: DN = reflectance * 10000 + offset, at least 1; NaN (not imaged) -> 0."""
    dn = np.round(np.nan_to_num(reflectance, nan=0.0) * s2.QUANTIFICATION) + offset
    dn = np.clip(dn, 1, 65535)
    return np.where(np.isnan(reflectance), 0, dn).astype(np.uint16)


def plan_scenes(
    spec: CatalogSpec, flavor_reprocessed_archive: bool, flavor_removes_offset: bool = False
) -> list[Scene]:
    """Every scene of the catalog, in time order.

    `flavor_reprocessed_archive`: the provider serves ESA's collection-1 reprocessing (baseline
    05.00) for acquisitions before 2022-01-25, as Earth Search's `sentinel-2-c1-l2a` does, instead
    of the original processing (Planetary Computer).
    `flavor_removes_offset`: the provider subtracted the 04.00 offset from the DNs of the
    first product of each acquisition and flags it (legacy Earth Search `sentinel-2-l2a`).
    """
    rng = np.random.default_rng(spec.seed)
    tiles = covering_tiles(spec.site.lon, spec.site.lat)
    scenes = []
    for index, acquisition in enumerate(_acquisitions(spec, rng)):
        baseline = _baseline(acquisition.start.date(), flavor_reprocessed_archive)
        versions = [baseline]
        if index == spec.duplicate_index:
            versions.append(REPROCESSED_ARCHIVE_BASELINE if not s2.baseline_has_offset(baseline) else "05.11")
        for version_number, version in enumerate(versions):
            for tile in tiles:
                scene = _scene(spec, acquisition, tile, version, version_number)
                if flavor_removes_offset and version_number == 0 and scene.has_boa_offset:
                    scene = dataclasses.replace(scene, offset_removed_by_provider=True)
                scenes.append(scene)
    return scenes


def _acquisitions(spec: CatalogSpec, rng: np.random.Generator) -> list[Acquisition]:
    out: list[Acquisition] = []
    # Morning overpass: about 10:30 local solar time.
    utc_hour = 10.5 - spec.site.lon / 15.0
    for year in spec.years:
        day = dt.datetime(year, 1, 3) + dt.timedelta(hours=utc_hour)
        while day.year == year:
            index = len(out)
            platform = "S2A" if index % 2 == 0 or day < LAUNCH["S2B"] else "S2B"
            start = day.replace(microsecond=0) + dt.timedelta(seconds=int(rng.integers(0, 60)))
            out.append(
                Acquisition(platform, start, 22 + 100 * (index % 2), _sky(spec, rng, index), _swath(spec, index))
            )
            day += dt.timedelta(days=spec.revisit_days)
    return out


def _sky(spec: CatalogSpec, rng: np.random.Generator, index: int) -> Sky:
    half_deg = spec.site.size_m / 2 / 111_320.0
    blobs = tuple(
        CloudBlob(
            lon=spec.site.lon + rng.uniform(-1.5, 1.5) * half_deg / np.cos(np.radians(spec.site.lat)),
            lat=spec.site.lat + rng.uniform(-1.5, 1.5) * half_deg,
            radius_m=float(rng.uniform(150, 450)),
        )
        for _ in range(rng.poisson(spec.mean_cloud_blobs))
    )
    return Sky(blobs=blobs, overcast=index == spec.overcast_index)


def _swath(spec: CatalogSpec, index: int) -> SwathEdge | None:
    # The edge runs through the middle of the site: its western part was not imaged.
    return SwathEdge(spec.site.lon, spec.site.lat) if index == spec.swath_edge_index else None


def _baseline(day: dt.date, reprocessed_archive: bool) -> str:
    if reprocessed_archive and day < dt.date(2022, 1, 25):
        return REPROCESSED_ARCHIVE_BASELINE
    return [baseline for start, baseline in BASELINE_HISTORY if start <= day][-1]


def _scene(spec: CatalogSpec, acquisition: Acquisition, tile: MgrsTile, baseline: str, version: int) -> Scene:
    site_x, site_y = Transformer.from_crs(4326, tile.epsg, always_xy=True).transform(spec.site.lon, spec.site.lat)
    half = spec.site.size_m / 2
    # Snap the window to the tile's 60 m lattice, so every band's pixels start at the same corner.
    x = tile.x0 + 60 * np.floor((site_x - half - tile.x0) / 60)
    y = tile.y0 - 60 * np.floor((tile.y0 - site_y - half) / 60)
    generation = (
        acquisition.start + dt.timedelta(hours=3, minutes=17) if version == 0 else dt.datetime(2023, 5, 2, 8, 41, 7)
    )
    return Scene(
        acquisition=acquisition,
        tile=tile,
        processing_baseline=baseline,
        generation_time=generation,
        datastrip_start=acquisition.start + dt.timedelta(seconds=40 + 7 * version),
        window_origin=(float(x), float(y)),
        size_m=spec.site.size_m,
        world=make_world(spec.world, spec.seed),
        sequence=version,
    )


__all__ = [
    "Acquisition",
    "CatalogSpec",
    "MgrsTile",
    "RenderedScene",
    "Scene",
    "Site",
    "covering_tiles",
    "mgrs_tile_at",
    "plan_scenes",
    "render_scene",
]
