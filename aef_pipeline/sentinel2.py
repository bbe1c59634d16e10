"""Sentinel-2 L2A facts the pipeline and its test bed share: bands, SCL classes, the BOA offset.

One table, so the synthetic item flavours, the truth model and the preprocessing cannot drift
apart. Wavelengths and widths are the values both providers publish in `eo:bands` (micrometres).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class S2Band:
    """One spectral band of the MSI instrument."""

    name: str
    """ESA band name, e.g. "B04"."""
    common_name: str
    """`eo:common_name` as Earth Search writes it (PC omits it for B09)."""
    earth_search_key: str
    """Asset key in Earth Search v1 items."""
    resolution: int
    """Native ground sampling distance in metres."""
    center_wavelength: float
    full_width_half_max: float
    description: str
    """PC's band description, e.g. "Band 4 - Red"."""


S2_BANDS: tuple[S2Band, ...] = (
    S2Band("B01", "coastal", "coastal", 60, 0.443, 0.027, "Band 1 - Coastal aerosol"),
    S2Band("B02", "blue", "blue", 10, 0.49, 0.098, "Band 2 - Blue"),
    S2Band("B03", "green", "green", 10, 0.56, 0.045, "Band 3 - Green"),
    S2Band("B04", "red", "red", 10, 0.665, 0.038, "Band 4 - Red"),
    S2Band("B05", "rededge", "rededge1", 20, 0.704, 0.019, "Band 5 - Vegetation red edge 1"),
    S2Band("B06", "rededge", "rededge2", 20, 0.74, 0.018, "Band 6 - Vegetation red edge 2"),
    S2Band("B07", "rededge", "rededge3", 20, 0.783, 0.028, "Band 7 - Vegetation red edge 3"),
    S2Band("B08", "nir", "nir", 10, 0.842, 0.145, "Band 8 - NIR"),
    S2Band("B8A", "nir08", "nir08", 20, 0.865, 0.033, "Band 8A - Vegetation red edge 4"),
    S2Band("B09", "nir09", "nir09", 60, 0.945, 0.026, "Band 9 - Water vapor"),
    S2Band("B11", "swir16", "swir16", 20, 1.61, 0.143, "Band 11 - SWIR (1.6)"),
    S2Band("B12", "swir22", "swir22", 20, 2.19, 0.242, "Band 12 - SWIR (2.2)"),
)
BAND_BY_NAME = {band.name: band for band in S2_BANDS}
RESOLUTIONS = (10, 20, 60)

# Scene classification (SCL) classes of the L2A processor (ESA Sen2Cor).
SCL_NODATA = 0
SCL_SATURATED = 1
SCL_DARK = 2
SCL_CLOUD_SHADOW = 3
SCL_VEGETATION = 4
SCL_NOT_VEGETATED = 5
SCL_WATER = 6
SCL_UNCLASSIFIED = 7
SCL_CLOUD_MEDIUM = 8
SCL_CLOUD_HIGH = 9
SCL_THIN_CIRRUS = 10
SCL_SNOW = 11

# Processing baseline 04.00 (acquisitions from 2022-01-25, and every later reprocessing) adds
# this radiometric offset to every valid digital number: reflectance = (DN - 1000) / 10000.
BOA_ADD_OFFSET = 1000
QUANTIFICATION = 10000


def baseline_has_offset(processing_baseline: str) -> bool:
    """Whether DNs of this `s2:processing_baseline` carry the +1000 offset ("04.00" and later)."""
    major, _, minor = processing_baseline.partition(".")
    return (int(major), int(minor or 0)) >= (4, 0)
