"""Ground truth for judging embeddings: labelled points over a synthetic catalog's site.

    points = truth_points(spec)                 # what the world holds at a grid of points
    path = write_truth(directory, points)       # directory/truth/labels.geojson

Points lie on a regular grid in the site's UTM zone, only where a 10 m pixel and its neighbours
fall wholly inside one parcel and inside every scene's window. Each point carries its class, the
parcel's biomass and a train/test split drawn per parcel, so no test point shares a parcel (and
so a field, its vigour and its noise-free spectrum) with a training point.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pyproj import Transformer

from aef_pipeline.grid import utm_epsg, utm_zone
from aef_pipeline.testing.scenes import CatalogSpec, Site
from aef_pipeline.testing.world import (
    METRES_PER_DEGREE_LAT,
    FloatArray,
    hash_uniform,
    make_world,
    parcel_index,
    salted,
)

TRUTH_FILE = Path("truth") / "labels.geojson"
"""Where `write_truth` puts the labels, relative to the catalog directory."""
POINT_SPACING_M = 100.0
"""Distance between neighbouring grid points: about six points per 300 m parcel."""
EDGE_MARGIN_M = 30.0
"""Least distance from a point to its parcel's edge: the point's 10 m pixel and its eight
neighbours (reaching at most about 22 m from the point) lie inside the parcel."""
SITE_MARGIN_M = 90.0
"""Least distance from a point to the nominal site square's edge: scene windows snap up to 60 m
off that square (to the tile's 60 m lattice), and the point's pixel neighbours need 30 m more."""
_SPLIT_SALT = 5  # independent of the world's own draws (world.py uses salts 1-4)


@dataclass(frozen=True)
class TruthPoint:
    """One labelled point."""

    lon: float
    lat: float
    class_name: str
    """The world's class name, e.g. "late_crop"."""
    class_id: int
    """1..number of classes: the world's land-cover value + 1."""
    biomass: float
    """Above-ground biomass of the parcel, t/ha (0 for water and bare ground)."""
    split: str
    """"train" or "test"; every point of a parcel has the same."""
    parcel: str
    """The parcel's lattice cell, "column_row": the group for grouped cross-validation."""


@dataclass(frozen=True)
class ClassCount:
    """How many points of one class each split holds, and in how many parcels."""

    train: int
    test: int
    parcels: int


def truth_points(spec: CatalogSpec, spacing_m: float = POINT_SPACING_M) -> list[TruthPoint]:
    """The labelled points of the catalog `spec` describes (its site, world and seed)."""
    world = make_world(spec.world, spec.seed)
    lon, lat = site_grid(spec.site, spacing_m)
    inside = away_from_parcel_edges(lon, lat, world.parcel_deg, EDGE_MARGIN_M)
    lon, lat = lon[inside], lat[inside]
    col, row = parcel_index(lon, lat, world.parcel_deg)
    cover = world.land_cover(lon, lat)
    biomass = world.biomass(lon, lat)
    train = hash_uniform(col, row, salted(spec.seed, _SPLIT_SALT)) < 0.5
    return [
        TruthPoint(
            lon=round(float(lon[i]), 7),
            lat=round(float(lat[i]), 7),
            class_name=world.classes[cover[i]],
            class_id=int(cover[i]) + 1,
            biomass=round(float(biomass[i]), 2),
            split="train" if train[i] else "test",
            parcel=f"{col[i]}_{row[i]}",
        )
        for i in range(len(lon))
    ]


def site_grid(site: Site, spacing_m: float) -> tuple[FloatArray, FloatArray]:
    """(lon, lat) of grid points every `spacing_m` on the site's UTM grid, centred on the site and
    at least SITE_MARGIN_M inside its square, so every scene images them."""
    epsg = utm_epsg(utm_zone(site.lon), "N" if site.lat >= 0 else "S")
    x0, y0 = Transformer.from_crs(4326, epsg, always_xy=True).transform(site.lon, site.lat)
    count = max(0, int((site.size_m - 2 * SITE_MARGIN_M) // spacing_m) + 1)
    offsets = (np.arange(count) - (count - 1) / 2) * spacing_m
    x, y = np.meshgrid(x0 + offsets, y0 - offsets)
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(x.ravel(), y.ravel())
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def away_from_parcel_edges(
    lon: FloatArray, lat: FloatArray, parcel_deg: tuple[float, float], margin_m: float
) -> NDArray[np.bool_]:
    """Whether each point lies at least `margin_m` from every edge of its parcel."""
    col, row = parcel_index(lon, lat, parcel_deg)
    across = lon / parcel_deg[0] - col
    up = lat / parcel_deg[1] - row
    width_m = parcel_deg[0] * METRES_PER_DEGREE_LAT * np.cos(np.radians(lat))
    height_m = parcel_deg[1] * METRES_PER_DEGREE_LAT
    inside: NDArray[np.bool_] = (np.minimum(across, 1 - across) * width_m >= margin_m) & (
        np.minimum(up, 1 - up) * height_m >= margin_m
    )
    return inside


def truth_collection(points: Sequence[TruthPoint]) -> dict[str, Any]:
    """The points as a GeoJSON FeatureCollection (EPSG:4326 lon/lat)."""
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [p.lon, p.lat]},
                "properties": {
                    "class": p.class_name,
                    "class_id": p.class_id,
                    "biomass": p.biomass,
                    "split": p.split,
                    "parcel": p.parcel,
                },
            }
            for p in points
        ],
    }


def write_truth(directory: str | os.PathLike[str], points: Sequence[TruthPoint]) -> Path:
    """Write the points to `directory`/truth/labels.geojson and return that path."""
    path = Path(directory) / TRUTH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(truth_collection(points), indent=1))
    return path


def count_by_class(points: Sequence[TruthPoint], classes: Sequence[str]) -> dict[str, ClassCount]:
    """Train and test points and parcels of every class in `classes`, absent ones included."""
    counts = {}
    for name in classes:
        mine = [p for p in points if p.class_name == name]
        counts[name] = ClassCount(
            train=sum(p.split == "train" for p in mine),
            test=sum(p.split == "test" for p in mine),
            parcels=len({p.parcel for p in mine}),
        )
    return counts


__all__ = [
    "TRUTH_FILE",
    "ClassCount",
    "TruthPoint",
    "count_by_class",
    "site_grid",
    "truth_collection",
    "truth_points",
    "write_truth",
]
