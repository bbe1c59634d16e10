"""Planning a region the size of the Earth's land: `aef-pipeline plan --region land.gpkg --years
2017-2024 --no-search`, its wall time and peak memory (target: under a minute on the 2-core build
machine, memory no more than the plan's own).

    python benchmarks/region_plan.py [--seed 0] [--keep land.gpkg]

The land is synthetic and deterministic (seeded): six continents and a Greenland with fractal
coastlines (a power-law spectrum of radial wobbles, 20,000-120,000 vertices each), 400 islands of
64-8,000 vertices, and an Antarctica south of 67-73 S reaching the pole: 408 polygons, 0.74
million vertices, 156 million km^2 (the Earth's land: 149), 431k tiles within the UTM latitudes.
Natural Earth's 1:10m land has a vertex count of the same order but many more, mostly small,
polygons (each costs a little; the work grows with vertices and with tiles met); a global land
plan needs about 400k tiles. The file is a GeoPackage in EPSG:4326; the plan runs in a child
process, so its time and peak resident memory are the command's alone (of which ~370 MB is
importing the package and torch).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from pyproj import Geod

# (lon, lat, radius in degrees of latitude, vertices): roughly where the continents are.
CONTINENTS = (
    (20, 50, 22, 90_000),  # Europe and west Asia
    (95, 45, 24, 120_000),  # Asia
    (20, 5, 28, 60_000),  # Africa
    (-100, 48, 26, 90_000),  # North America
    (-60, -15, 22, 60_000),  # South America
    (134, -25, 16, 40_000),  # Australia
    (-42, 72, 10, 20_000),  # Greenland
)
ISLANDS = 400
ANTARCTICA_VERTICES = 20_000
COMMAND = ("plan", "--years", "2017-2024", "--no-search")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the land here (and keep it) instead of a temporary file")
    args = parser.parse_args()
    land = synthetic_land(args.seed)
    vertices = int(shapely.get_num_coordinates(land).sum())
    area = sum(abs(Geod(ellps="WGS84").geometry_area_perimeter(polygon)[0]) for polygon in land) / 1e12
    print(f"synthetic land (seed {args.seed}): {land.size} polygons, {vertices:,} vertices, {area:.0f} million km^2")
    with tempfile.TemporaryDirectory(prefix="aef-region-") as tmp:
        path = args.keep or Path(tmp) / "land.gpkg"
        gpd.GeoDataFrame(geometry=land, crs="EPSG:4326").to_file(path, driver="GPKG")
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
        argv = ["aef-pipeline", COMMAND[0], "--region", str(path), *COMMAND[1:]]
        print("$ " + " ".join(argv))
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "aef_pipeline.cli", *argv[1:]], capture_output=True, text=True)
        seconds = time.perf_counter() - started
    print(done.stdout + done.stderr, end="")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    verdict = "met" if done.returncode == 0 and seconds < 60 else "NOT met"
    print(f"exit {done.returncode}, {seconds:.1f} s wall, peak RSS {peak_mb:.0f} MB (target < 60 s: {verdict})")


def synthetic_land(seed: int) -> np.ndarray:
    """Continents, islands and an Antarctica in lon/lat, valid and within -180..180."""
    rng = np.random.default_rng(seed)
    polygons = [_blob(rng, *continent) for continent in CONTINENTS]
    for _ in range(ISLANDS):
        radius = min(rng.pareto(1.5) * 0.1 + 0.05, 4.0)
        lon, lat = rng.uniform(-180, 180), rng.uniform(-55, 75)
        polygons.append(_blob(rng, lon, lat, radius, int(np.clip(radius * 3000, 64, 8000))))
    polygons.append(_antarctica(rng))
    clipped = shapely.intersection(np.array(polygons, dtype=object), shapely.box(-180, -90, 180, 90))
    return np.asarray(shapely.get_parts(clipped[~shapely.is_empty(clipped)]), dtype=object)


def _blob(rng: np.random.Generator, lon: float, lat: float, radius: float, vertices: int) -> shapely.Polygon:
    """A star-shaped polygon (so never self-intersecting) whose radius wobbles with a k^-1.2
    spectrum, as coastlines do at every scale; longitudes stretched by 1/cos(latitude)."""
    k = np.arange(vertices // 2 + 1)
    spectrum = np.zeros(k.size, complex)
    spectrum[1:] = k[1:] ** -1.2 * np.exp(2j * np.pi * rng.random(k.size - 1))
    wobble = np.fft.irfft(spectrum, vertices)
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = radius * (1 + 0.5 * wobble / np.abs(wobble).max())
    y = lat + r * np.sin(theta)
    x = lon + r * np.cos(theta) / np.maximum(np.cos(np.radians(y)), 0.2)
    return shapely.Polygon(np.column_stack([x, y]))


def _antarctica(rng: np.random.Generator) -> shapely.Polygon:
    """Everything south of a coast wobbling between about 67 and 73 S, from -180 to 180."""
    lon = np.linspace(-180, 180, ANTARCTICA_VERTICES)
    spectrum = np.zeros(ANTARCTICA_VERTICES // 2 + 1, complex)
    spectrum[1:] = np.arange(1, spectrum.size) ** -1.2 * np.exp(2j * np.pi * rng.random(spectrum.size - 1))
    wobble = np.fft.irfft(spectrum, ANTARCTICA_VERTICES)
    coast = -70 + 3 * wobble / np.abs(wobble).max()
    return shapely.Polygon([*zip(lon, coast, strict=True), (180, -90), (-180, -90)])


if __name__ == "__main__":
    main()
