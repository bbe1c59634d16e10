"""The synthetic ground truth: land cover, seasonal spectra, clouds and swath edges.

Everything here is a pure function of (lon, lat, time, seed). Two scenes that see the same
ground (overlapping MGRS tiles, two UTM zones, two providers, two processing baselines) therefore
agree on the surface reflectance there, which is what lets tests compare what the pipeline loads
with what the world really holds.

Two worlds share the `Landscape` interface. `World` ("plain") has five classes that per-band
annual means already separate. `LabelledWorld` ("labelled") adds classes that only a time series,
only spatial texture or only the surroundings tell apart, a per-parcel biomass that shows in the
imagery, and noise between acquisitions, so it can test what embeddings capture.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from aef_pipeline import sentinel2 as s2

FloatArray = NDArray[np.float64]

METRES_PER_DEGREE_LAT = 111_320.0
MASK64 = (1 << 64) - 1


class Landscape(Protocol):
    """What scenes and ground truth need from a world: classes on a parcel lattice, reflectance,
    the clear-sky scene classes and a biomass per point."""

    @property
    def seed(self) -> int: ...

    @property
    def parcel_deg(self) -> tuple[float, float]:
        """Parcel size (lon, lat) in degrees; parcels are the cells of this lattice."""
        ...

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, indexed by the values `land_cover` returns."""
        ...

    def land_cover(self, lon: FloatArray, lat: FloatArray) -> NDArray[np.int64]: ...

    def biomass(self, lon: FloatArray, lat: FloatArray) -> FloatArray:
        """Above-ground biomass in t/ha, one value per parcel."""
        ...

    def reflectance(self, lon: FloatArray, lat: FloatArray, when: dt.datetime) -> FloatArray:
        """Cloud-free surface reflectance, shape (band, *lon.shape), bands in S2_BANDS order."""
        ...

    def surface_classes(self, lon: FloatArray, lat: FloatArray, when: dt.datetime) -> NDArray[np.uint8]:
        """Scene classification under a clear sky: vegetation, not vegetated or water."""
        ...


class LandCover(IntEnum):
    """Land-cover classes with distinct spectra and seasonal behaviour."""

    WATER = 0
    FOREST = 1  # evergreen: green all year, slightly darker in winter
    SUMMER_CROP = 2  # sown in spring, green in July, harvested in September
    WINTER_CROP = 3  # green from autumn to June, harvested in July
    BARE = 4  # bare soil and built-up land: bright, no season


# Share of parcels of each class, in LandCover order.
CLASS_WEIGHTS = np.array([0.12, 0.25, 0.28, 0.2, 0.15])

# Surface reflectance per band, in the order of sentinel2.S2_BANDS (B01 ... B12).
_WATER = [0.06, 0.05, 0.04, 0.03, 0.025, 0.02, 0.02, 0.015, 0.012, 0.01, 0.008, 0.005]
_SOIL = [0.1, 0.11, 0.14, 0.18, 0.21, 0.23, 0.25, 0.27, 0.28, 0.1, 0.33, 0.28]
_CROP = [0.03, 0.03, 0.07, 0.03, 0.11, 0.32, 0.4, 0.44, 0.45, 0.14, 0.21, 0.1]
_FOREST = [0.02, 0.02, 0.045, 0.02, 0.07, 0.2, 0.25, 0.28, 0.29, 0.09, 0.13, 0.06]
_URBAN = [0.13, 0.14, 0.16, 0.19, 0.2, 0.21, 0.22, 0.23, 0.24, 0.09, 0.27, 0.24]
# Standing biomass (t/ha) of the plain world's classes: one value per class.
_PLAIN_BIOMASS = np.array([0.0, 150.0, 12.0, 10.0, 0.0])
# Reflectance of an opaque cloud: bright and nearly flat, a little darker in the SWIR.
CLOUD_SPECTRUM = np.array([0.62, 0.6, 0.58, 0.57, 0.57, 0.57, 0.57, 0.56, 0.56, 0.3, 0.42, 0.34])

# (bare state, fully green state) per class; reflectance = bare + greenness * (green - bare).
_ENDMEMBERS = {
    LandCover.WATER: (_WATER, _WATER),
    LandCover.FOREST: (_SOIL, _FOREST),
    LandCover.SUMMER_CROP: (_SOIL, _CROP),
    LandCover.WINTER_CROP: (_SOIL, _CROP),
    LandCover.BARE: (_URBAN, _URBAN),
}


@dataclass(frozen=True)
class World:
    """A deterministic synthetic landscape.

    Parcels are cells of a lon/lat lattice (about 330 m x 300 m at mid latitudes), each with one
    land-cover class drawn from `seed`, so every provider and tile sees the same fields.
    """

    seed: int = 0
    """Changes the land-cover map and, through Acquisition, the clouds."""
    parcel_deg: tuple[float, float] = (0.004, 0.003)
    """Parcel size (lon, lat) in degrees."""

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(c.name.lower() for c in LandCover)

    def land_cover(self, lon: FloatArray, lat: FloatArray) -> NDArray[np.int64]:
        """The LandCover class at each point."""
        col, row = parcel_index(lon, lat, self.parcel_deg)
        u = hash_uniform(col, row, self.seed)
        return np.searchsorted(np.cumsum(CLASS_WEIGHTS), u, side="right").clip(0, len(LandCover) - 1)

    def biomass(self, lon: FloatArray, lat: FloatArray) -> FloatArray:
        """A fixed value per class: the plain world's imagery does not show biomass within a class."""
        biomass: FloatArray = _PLAIN_BIOMASS[self.land_cover(lon, lat)]
        return biomass

    def reflectance(self, lon: FloatArray, lat: FloatArray, when: dt.datetime) -> FloatArray:
        """Cloud-free surface reflectance, shape (band, *lon.shape), bands in S2_BANDS order."""
        cover = self.land_cover(lon, lat)
        doy = when.timetuple().tm_yday
        out = np.empty((len(s2.S2_BANDS), *lon.shape))
        for cls, (bare, green) in _ENDMEMBERS.items():
            g = greenness(cls, doy)
            spectrum = np.asarray(bare) + g * (np.asarray(green) - np.asarray(bare))
            out[:, cover == cls] = spectrum[:, None]
        # A gentle location-bound texture, so fields are not perfectly flat.
        texture = 1.0 + 0.04 * np.sin(lon * 2900.0) * np.cos(lat * 3700.0)
        return out * texture

    def surface_classes(self, lon: FloatArray, lat: FloatArray, when: dt.datetime) -> NDArray[np.uint8]:
        cover = self.land_cover(lon, lat)
        doy = when.timetuple().tm_yday
        green = np.array([greenness(LandCover(c), doy) for c in range(len(LandCover))])[cover]
        return _clear_sky_classes(green, cover == LandCover.WATER)


def greenness(cls: LandCover, doy: int) -> float:
    """Vegetation fraction in [0, 1] of a class on a day of the year (northern hemisphere)."""
    if cls == LandCover.FOREST:
        return 0.85 + 0.15 * math.cos(2 * math.pi * (doy - 200) / 365.25)
    if cls == LandCover.SUMMER_CROP:
        # Emerges in May, peaks mid-July, harvested (bare) from day 250.
        return math.exp(-(((doy - 195) / 35.0) ** 2)) if doy < 250 else 0.0
    if cls == LandCover.WINTER_CROP:
        # Sown in October, green over winter and spring, harvested (bare) from day 190.
        if doy >= 290:
            return 0.4 * (doy - 290) / 75.0
        return 0.4 + 0.6 * math.exp(-(((doy - 130) / 40.0) ** 2)) if doy < 190 else 0.0
    return 0.0


class LabelledCover(IntEnum):
    """Classes of the labelled world. Label files number them from 1 (value + 1)."""

    WATER = 0
    FOREST = 1  # evergreen; its canopy density (red, SWIR, NDVI) follows its biomass
    EARLY_CROP = 2  # the same crop as LATE_CROP sown 7 weeks earlier: only the time series differs
    LATE_CROP = 3
    ORCHARD = 4  # tree rows about 40 m apart in grass: only the spatial pattern tells it from MEADOW
    MEADOW = 5  # the orchard's trees and grass, in the same shares, scattered at random
    RIPARIAN_MEADOW = 6  # a meadow sharing an edge with a water parcel: only its surroundings differ
    BARE = 7  # bare soil and built-up land


# Share of parcels drawn for each class, in LabelledCover order. Riparian meadows are not drawn:
# they are the meadows next to water (about 45 % of meadows with this much water).
_LABELLED_WEIGHTS = np.array([0.14, 0.12, 0.13, 0.13, 0.14, 0.24, 0.0, 0.10])
# Above-ground biomass range (t/ha) per class; a parcel's vigour picks its place in the range.
_BIOMASS_RANGE = np.array([(0, 0), (80, 300), (5, 25), (5, 25), (20, 60), (2, 10), (2, 10), (0, 0)], dtype=float)
# Broadleaf orchard trees and meadow grass, fully green (S2_BANDS order).
_TREE = [0.025, 0.03, 0.06, 0.03, 0.09, 0.27, 0.34, 0.38, 0.39, 0.12, 0.18, 0.08]
_GRASS = [0.035, 0.04, 0.08, 0.05, 0.12, 0.28, 0.34, 0.37, 0.38, 0.12, 0.24, 0.13]
ROW_PERIOD_M = 40.0
"""Spacing of orchard tree rows. Not 30 m: 60 m pixel centres, two periods apart, would all fall on
the same phase of the rows and see only trees or only grass; at 40 m, 10, 20 and 60 m pixels
alternate phases, so every band's parcel mean is the half-and-half mix."""
NOISE = 0.03
"""Relative amplitude of the uniform noise on each band, point and acquisition."""
# Salts that make the labelled world's random draws independent of each other.
_COVER_SALT, _VIGOUR_SALT, _SCATTER_SALT, _NOISE_SALT = 1, 2, 3, 4


def _evergreen(doy: int) -> float:
    return 0.85 + 0.15 * math.cos(2 * math.pi * (doy - 200) / 365.25)


def _crop(peak_doy: int) -> Callable[[int], float]:
    """A crop that greens up to `peak_doy` and is harvested (bare) 45 days after it."""

    def season(doy: int) -> float:
        return math.exp(-(((doy - peak_doy) / 28.0) ** 2)) if doy < peak_doy + 45 else 0.0

    return season


def _deciduous(doy: int) -> float:
    return 0.1 + 0.9 * math.exp(-(((doy - 190) / 55.0) ** 2))


def _grassland(doy: int) -> float:
    return 0.35 + 0.55 * math.exp(-(((doy - 150) / 60.0) ** 2))


def _leafless(doy: int) -> float:
    return 0.0


@dataclass(frozen=True)
class _Layer:
    """A surface that is `bare` without leaves and `green` fully leafed, with a seasonal cycle."""

    bare: list[float]
    green: list[float]
    season: Callable[[int], float]


_WATER_LAYER = _Layer(_WATER, _WATER, _leafless)
_BUILT_LAYER = _Layer(_URBAN, _URBAN, _leafless)
_FOREST_LAYER = _Layer(_SOIL, _FOREST, _evergreen)
# Peaks 49 days apart; the same endmembers, so equal greenness gives equal spectra.
_EARLY_LAYER = _Layer(_SOIL, _CROP, _crop(peak_doy=160))
_LATE_LAYER = _Layer(_SOIL, _CROP, _crop(peak_doy=209))
_TREE_LAYER = _Layer(_SOIL, _TREE, _deciduous)
_GRASS_LAYER = _Layer(_SOIL, _GRASS, _grassland)
# Classes made of one layer over the whole parcel; orchards and meadows mix trees and grass.
_SINGLE_LAYER = {
    LabelledCover.WATER: _WATER_LAYER,
    LabelledCover.FOREST: _FOREST_LAYER,
    LabelledCover.EARLY_CROP: _EARLY_LAYER,
    LabelledCover.LATE_CROP: _LATE_LAYER,
    LabelledCover.BARE: _BUILT_LAYER,
}


@dataclass(frozen=True)
class LabelledWorld:
    """A harder synthetic landscape for judging embeddings, on the same parcel lattice as `World`.

    Each parcel has a class (`LabelledCover`) and a vigour in [0, 1) drawn from `seed`. Vigour sets
    how green the parcel's vegetation gets (60-100 % of full cover) and its biomass, so biomass
    shows in the imagery. Reflectance carries a few percent of noise that changes at every
    acquisition, so no single date is a perfect feature.
    """

    seed: int = 0
    """Changes the land-cover map, the vigour of each parcel, the noise and, through Acquisition, the clouds."""
    parcel_deg: tuple[float, float] = (0.004, 0.003)
    """Parcel size (lon, lat) in degrees."""

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(c.name.lower() for c in LabelledCover)

    def land_cover(self, lon: FloatArray, lat: FloatArray) -> NDArray[np.int64]:
        """The LabelledCover class at each point; meadows sharing an edge with water are riparian."""
        col, row = parcel_index(lon, lat, self.parcel_deg)
        drawn = self._drawn_cover(col, row)
        near_water = np.zeros(drawn.shape, dtype=bool)
        for dcol, drow in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            near_water |= self._drawn_cover(col + dcol, row + drow) == LabelledCover.WATER
        return np.where((drawn == LabelledCover.MEADOW) & near_water, LabelledCover.RIPARIAN_MEADOW, drawn)

    def vigour(self, lon: FloatArray, lat: FloatArray) -> FloatArray:
        """A number in [0, 1) per parcel: how dense its vegetation is and how much biomass it holds."""
        col, row = parcel_index(lon, lat, self.parcel_deg)
        return hash_uniform(col, row, salted(self.seed, _VIGOUR_SALT))

    def biomass(self, lon: FloatArray, lat: FloatArray) -> FloatArray:
        """The class's range (_BIOMASS_RANGE), at the parcel's vigour: 0 for water and bare ground."""
        cover = self.land_cover(lon, lat)
        low, high = _BIOMASS_RANGE[cover, 0], _BIOMASS_RANGE[cover, 1]
        biomass: FloatArray = low + self.vigour(lon, lat) * (high - low)
        return biomass

    def reflectance(self, lon: FloatArray, lat: FloatArray, when: dt.datetime) -> FloatArray:
        """What one acquisition sees: `mean_reflectance` times this acquisition's noise."""
        return self.mean_reflectance(lon, lat, when) * self.acquisition_noise(lon, lat, when)

    def mean_reflectance(self, lon: FloatArray, lat: FloatArray, when: dt.datetime) -> FloatArray:
        """Reflectance without the acquisition noise, shape (band, *lon.shape)."""
        cover = self.land_cover(lon, lat)
        out = np.empty((len(s2.S2_BANDS), *lon.shape))
        for cls in LabelledCover:
            here = cover == cls
            if here.any():
                out[:, here] = self.class_reflectance(cls, lon[here], lat[here], when)
        return out

    def class_reflectance(self, cls: LabelledCover, lon: FloatArray, lat: FloatArray, when: dt.datetime) -> FloatArray:
        """Noise-free reflectance the points would have if their parcels were of class `cls`
        (with their own vigour): lets tests compare classes on the same ground."""
        doy = when.timetuple().tm_yday
        cover = self._canopy_cover(lon, lat)
        out = np.zeros((len(s2.S2_BANDS), *lon.shape))
        for share, layer in self._layers(cls, lon, lat):
            bare, green = (np.reshape(np.asarray(e), (-1, *([1] * lon.ndim))) for e in (layer.bare, layer.green))
            out += share * (bare + cover * layer.season(doy) * (green - bare))
        return out

    def acquisition_noise(self, lon: FloatArray, lat: FloatArray, when: dt.datetime) -> FloatArray:
        """Factors in [1 - NOISE, 1 + NOISE), independent per band, point and acquisition time."""
        x, y, stamp = _micro_degrees(lon), _micro_degrees(lat), _epoch_seconds(when)
        draws = [hash_uniform(x, y, salted(self.seed, _NOISE_SALT, stamp, band)) for band in range(len(s2.S2_BANDS))]
        return 1.0 + NOISE * (2.0 * np.stack(draws) - 1.0)

    def surface_classes(self, lon: FloatArray, lat: FloatArray, when: dt.datetime) -> NDArray[np.uint8]:
        cover = self.land_cover(lon, lat)
        green = np.zeros(lon.shape)
        for cls in LabelledCover:
            here = cover == cls
            if here.any():
                green[here] = self.class_vegetation(cls, lon[here], lat[here], when)
        return _clear_sky_classes(green, cover == LabelledCover.WATER)

    def class_vegetation(self, cls: LabelledCover, lon: FloatArray, lat: FloatArray, when: dt.datetime) -> FloatArray:
        """Share of the ground covered by green leaves if the points' parcels were of class `cls`."""
        doy = when.timetuple().tm_yday
        cover = self._canopy_cover(lon, lat)
        green = np.zeros(lon.shape)
        for share, layer in self._layers(cls, lon, lat):
            green += share * cover * layer.season(doy)
        return green

    def _drawn_cover(self, col: NDArray[np.int64], row: NDArray[np.int64]) -> NDArray[np.int64]:
        u = hash_uniform(col, row, salted(self.seed, _COVER_SALT))
        return np.searchsorted(np.cumsum(_LABELLED_WEIGHTS), u, side="right").clip(0, len(LabelledCover) - 1)

    def _canopy_cover(self, lon: FloatArray, lat: FloatArray) -> FloatArray:
        """Fraction of full leaf cover the parcel reaches at the peak of its season: 0.6-1.0."""
        return 0.6 + 0.4 * self.vigour(lon, lat)

    def _layers(self, cls: LabelledCover, lon: FloatArray, lat: FloatArray) -> list[tuple[FloatArray, _Layer]]:
        """(share of the ground, layer) pairs that make up class `cls` at each point."""
        if cls in _SINGLE_LAYER:
            return [(np.ones(lon.shape), _SINGLE_LAYER[cls])]
        trees = self._row_trees(lon, lat) if cls == LabelledCover.ORCHARD else self._scattered_trees(lon, lat)
        return [(trees, _TREE_LAYER), (1.0 - trees, _GRASS_LAYER)]

    def _row_trees(self, lon: FloatArray, lat: FloatArray) -> FloatArray:
        """Tree share of orchard rows running north-south: a sine with a whole number of periods
        (about ROW_PERIOD_M each) across the parcel, so the parcel's mean share is exactly 1/2."""
        col, row = parcel_index(lon, lat, self.parcel_deg)
        width_m = self.parcel_deg[0] * METRES_PER_DEGREE_LAT * np.cos(np.radians((row + 0.5) * self.parcel_deg[1]))
        periods = np.maximum(1.0, np.round(width_m / ROW_PERIOD_M))
        across = lon / self.parcel_deg[0] - col
        trees: FloatArray = 0.5 + 0.5 * np.sin(2 * np.pi * periods * across)
        return trees

    def _scattered_trees(self, lon: FloatArray, lat: FloatArray) -> FloatArray:
        """Tree share of a wooded meadow: the orchard's distribution of shares (a sine at a uniform
        phase), drawn independently at every point, so a single pixel cannot tell the two apart."""
        phase = hash_uniform(_micro_degrees(lon), _micro_degrees(lat), salted(self.seed, _SCATTER_SALT))
        trees: FloatArray = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
        return trees


WORLD_KINDS = ("plain", "labelled")
"""Names of the worlds a CatalogSpec can choose."""


def make_world(kind: str, seed: int) -> Landscape:
    """The world called `kind` ("plain" or "labelled") with `seed`."""
    if kind == "plain":
        return World(seed=seed)
    if kind == "labelled":
        return LabelledWorld(seed=seed)
    raise ValueError(f"unknown world {kind!r}: choose one of {', '.join(WORLD_KINDS)}")


@dataclass(frozen=True)
class CloudBlob:
    lon: float
    lat: float
    radius_m: float


@dataclass(frozen=True)
class Sky:
    """Clouds and shadows of one acquisition, fixed on the ground."""

    blobs: tuple[CloudBlob, ...] = ()
    overcast: bool = False
    """Every pixel under opaque cloud (the fully cloudy scene)."""
    shadow_shift_m: tuple[float, float] = (-250.0, 180.0)
    """Where shadows fall relative to their cloud (east, north), in metres."""

    def cloud_density(self, lon: FloatArray, lat: FloatArray) -> FloatArray:
        """Optical density in [0, 1]: > 0.6 opaque, 0.35-0.6 medium, 0.2-0.35 thin cirrus."""
        if self.overcast:
            return np.ones_like(lon)
        density = np.zeros_like(lon)
        for blob in self.blobs:
            d2 = _distance_m2(lon, lat, blob.lon, blob.lat)
            density = np.maximum(density, np.exp(-d2 / blob.radius_m**2))
        return density

    def shadow_density(self, lon: FloatArray, lat: FloatArray) -> FloatArray:
        east, north = self.shadow_shift_m
        dlon = east / (METRES_PER_DEGREE_LAT * np.cos(np.radians(lat)))
        return self.cloud_density(lon - dlon, lat - north / METRES_PER_DEGREE_LAT)


@dataclass(frozen=True)
class SwathEdge:
    """The edge of the instrument's swath: ground west of the line lon = lon0 + slope*(lat-lat0)
    was not imaged (DN 0, SCL 0)."""

    lon0: float
    lat0: float
    slope: float = 0.3

    def imaged(self, lon: FloatArray, lat: FloatArray) -> NDArray[np.bool_]:
        return lon >= self.lon0 + self.slope * (lat - self.lat0)


def observe(
    world: Landscape, sky: Sky, swath: SwathEdge | None, lon: FloatArray, lat: FloatArray, when: dt.datetime
) -> tuple[FloatArray, NDArray[np.uint8], FloatArray]:
    """What the satellite sees: (top-of-canopy reflectance with clouds, SCL, cloud density).

    Reflectance is NaN where the swath did not reach."""
    refl = world.reflectance(lon, lat, when)
    cloud = sky.cloud_density(lon, lat)
    shadow = np.where(cloud < 0.2, sky.shadow_density(lon, lat), 0.0)
    refl = refl * (1.0 - 0.6 * shadow)
    alpha = np.clip((cloud - 0.2) / 0.4, 0.0, 1.0)
    refl = (1 - alpha) * refl + alpha * CLOUD_SPECTRUM.reshape(-1, *([1] * lon.ndim))
    scl = _with_clouds(world.surface_classes(lon, lat, when), cloud, shadow)
    if swath is not None:
        outside = ~swath.imaged(lon, lat)
        refl[:, outside] = np.nan
        scl[outside] = s2.SCL_NODATA
    return refl, scl, cloud


def _clear_sky_classes(vegetation: FloatArray, water: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """SCL without clouds: vegetation where more than 30 % of the ground is green."""
    scl = np.where(vegetation > 0.3, s2.SCL_VEGETATION, s2.SCL_NOT_VEGETATED)
    return np.where(water, s2.SCL_WATER, scl).astype(np.uint8)


def _with_clouds(scl: NDArray[np.uint8], cloud: FloatArray, shadow: FloatArray) -> NDArray[np.uint8]:
    scl = np.where(shadow > 0.35, s2.SCL_CLOUD_SHADOW, scl)
    scl = np.where(cloud > 0.2, s2.SCL_THIN_CIRRUS, scl)
    scl = np.where(cloud > 0.35, s2.SCL_CLOUD_MEDIUM, scl)
    scl = np.where(cloud > 0.6, s2.SCL_CLOUD_HIGH, scl)
    return scl.astype(np.uint8)


def _distance_m2(lon: FloatArray, lat: FloatArray, lon0: float, lat0: float) -> FloatArray:
    dx = (lon - lon0) * METRES_PER_DEGREE_LAT * np.cos(np.radians(lat0))
    dy = (lat - lat0) * METRES_PER_DEGREE_LAT
    distance2: FloatArray = dx * dx + dy * dy
    return distance2


def parcel_index(
    lon: FloatArray, lat: FloatArray, parcel_deg: tuple[float, float]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(column, row) of the parcel lattice cell holding each point."""
    col = np.floor(lon / parcel_deg[0]).astype(np.int64)
    row = np.floor(lat / parcel_deg[1]).astype(np.int64)
    return col, row


def salted(seed: int, *parts: int) -> int:
    """A seed for `hash_uniform` derived from `seed` and `parts` (a salt, a time, a band), so each
    random quantity of the world is independent of the others."""
    x = seed & MASK64
    for part in parts:
        x = ((x ^ (part & MASK64)) * 0x9E3779B97F4A7C15) & MASK64
        x ^= x >> 29
    return x


def hash_uniform(col: NDArray[np.int64], row: NDArray[np.int64], seed: int) -> FloatArray:
    """A uniform number in [0, 1) per lattice cell: splitmix64 of (col, row, seed)."""
    with np.errstate(over="ignore"):
        x = col.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= row.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        x ^= np.uint64(seed) * np.uint64(0x165667B19E3779F9)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _micro_degrees(angle: FloatArray) -> NDArray[np.int64]:
    """A coordinate in whole micro-degrees (about 0.1 m): the lattice of point-wise random draws."""
    return np.round(angle * 1e6).astype(np.int64)


def _epoch_seconds(when: dt.datetime) -> int:
    """Seconds since 1970 (naive times are UTC), independent of the machine's time zone."""
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return int((when - dt.datetime(1970, 1, 1)).total_seconds())
