"""The synthetic ground truth: land cover, seasonal spectra, clouds and swath edges.

Everything here is a pure function of (lon, lat, time, seed). Two scenes that see the same
ground (overlapping MGRS tiles, two UTM zones, two providers, two processing baselines) therefore
agree on the surface reflectance there, which is what lets tests compare what the pipeline loads
with what the world really holds.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from aef_pipeline import sentinel2 as s2

FloatArray = NDArray[np.float64]

METRES_PER_DEGREE_LAT = 111_320.0


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

    def land_cover(self, lon: FloatArray, lat: FloatArray) -> NDArray[np.int64]:
        """The LandCover class at each point."""
        col = np.floor(lon / self.parcel_deg[0]).astype(np.int64)
        row = np.floor(lat / self.parcel_deg[1]).astype(np.int64)
        u = _hash_uniform(col, row, self.seed)
        return np.searchsorted(np.cumsum(CLASS_WEIGHTS), u, side="right").clip(0, len(LandCover) - 1)

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
    world: World, sky: Sky, swath: SwathEdge | None, lon: FloatArray, lat: FloatArray, when: dt.datetime
) -> tuple[FloatArray, NDArray[np.uint8], FloatArray]:
    """What the satellite sees: (top-of-canopy reflectance with clouds, SCL, cloud density).

    Reflectance is NaN where the swath did not reach."""
    refl = world.reflectance(lon, lat, when)
    cloud = sky.cloud_density(lon, lat)
    shadow = np.where(cloud < 0.2, sky.shadow_density(lon, lat), 0.0)
    refl = refl * (1.0 - 0.6 * shadow)
    alpha = np.clip((cloud - 0.2) / 0.4, 0.0, 1.0)
    refl = (1 - alpha) * refl + alpha * CLOUD_SPECTRUM.reshape(-1, *([1] * lon.ndim))
    scl = _scene_classes(world.land_cover(lon, lat), when, cloud, shadow)
    if swath is not None:
        outside = ~swath.imaged(lon, lat)
        refl[:, outside] = np.nan
        scl[outside] = s2.SCL_NODATA
    return refl, scl, cloud


def _scene_classes(
    cover: NDArray[np.int64], when: dt.datetime, cloud: FloatArray, shadow: FloatArray
) -> NDArray[np.uint8]:
    doy = when.timetuple().tm_yday
    green = np.array([greenness(LandCover(c), doy) for c in range(len(LandCover))])[cover]
    scl = np.where(green > 0.3, s2.SCL_VEGETATION, s2.SCL_NOT_VEGETATED)
    scl = np.where(cover == LandCover.WATER, s2.SCL_WATER, scl)
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


def _hash_uniform(col: NDArray[np.int64], row: NDArray[np.int64], seed: int) -> FloatArray:
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
