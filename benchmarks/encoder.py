"""Encoder throughput, FLOPs per pixel and seams, on the synthetic test bed's site.

    python -m benchmarks.encoder --spec tiny [--year 2022] [--cores 12] [--device auto]

Loads the site (a square of `cores` x `cores` window cores on the global grid, with the halo each
setting needs), encodes it without and with overlap, and prints for each: wall time, pixels/s,
counted FLOPs per output pixel and achieved FLOP/s, and the seam ratio (mean cosine of
neighbours across core boundaries / within cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import xarray as xr
from odc.geo.geobox import GeoBox

from aef_pipeline.encode import EncodeOptions, encode_cube, required_halo, resolve_device, seam_ratio
from aef_pipeline.grid import BBox, tiles_for_bbox
from aef_pipeline.model import ModelSpec, Provenance, STPEncoder, build_model, load_spec, parameter_count
from aef_pipeline.model.flops import flops_per_window
from aef_pipeline.plan import Period
from aef_pipeline.search import CatalogConfig, open_source, search_tile
from aef_pipeline.testing import DEFAULT_SITE, SyntheticCatalog, build_catalog, serve_catalogs
from benchmarks.pipeline import task_cube


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tiny")
    parser.add_argument("--year", type=int, default=2022)
    parser.add_argument("--cores", type=int, default=0, help="area side in window cores (default: ~1.9 km)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--overlap", choices=["both", "off", "on"], default="both")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    spec = load_spec(args.spec)
    model, provenance = build_model(spec)
    device = resolve_device(args.device)
    print(f"spec {spec.name}: {parameter_count(model):,} parameters, {provenance.description}, device {device}")
    cores = args.cores or max(2, 192 // spec.core)
    workdir = Path(tempfile.mkdtemp(prefix="aef-bench-"))
    catalog = build_catalog(workdir / "es", "earth-search")
    with serve_catalogs([catalog], workdir / "api") as url:
        for overlap in {"both": (False, True), "off": (False,), "on": (True,)}[args.overlap]:
            cube, area = _site_cube(url, catalog, spec, cores, required_halo(spec, overlap), args.year)
            options = EncodeOptions(device=str(device), batch_size=args.batch_size, overlap=overlap)
            _report(cube, area, spec, (model, provenance), options, args.year)


def _site_cube(
    url: str, catalog: SyntheticCatalog, spec: ModelSpec, cores: int, halo: int, year: int
) -> tuple[xr.Dataset, GeoBox]:
    bbox = BBox(DEFAULT_SITE.lon - 0.001, DEFAULT_SITE.lat - 0.001, DEFAULT_SITE.lon + 0.001, DEFAULT_SITE.lat + 0.001)
    (tile,) = tiles_for_bbox(bbox)
    scene = catalog.scenes[0]
    col = int((scene.window_origin[0] - tile.geobox.affine.c) // 10) // spec.core * spec.core + spec.core
    row = int((tile.geobox.affine.f - scene.window_origin[1]) // 10) // spec.core * spec.core + spec.core
    area = tile.geobox[row : row + cores * spec.core, col : col + cores * spec.core]
    selection = search_tile(open_source(CatalogConfig(url)), area.pad(halo), Period.year(year), spec.bands)
    return task_cube(selection, area, halo, spec.bands), area


def _report(
    cube: xr.Dataset,
    area: GeoBox,
    spec: ModelSpec,
    built: tuple[STPEncoder, Provenance],
    options: EncodeOptions,
    year: int,
) -> None:
    frames = cube.sizes["time"]
    start = time.perf_counter()
    field = encode_cube(cube, Period.year(year), built[0], spec, options, provenance=built[1])
    seconds = time.perf_counter() - start
    pixels = area.shape[0] * area.shape[1]
    windows = (area.shape[0] // (spec.core // (2 if options.overlap else 1)) + int(options.overlap)) ** 2
    flops = flops_per_window(spec, frames) * windows  # upper bound: windows may drop frames without data
    print(
        f"overlap={options.overlap}: {area.shape[0]}x{area.shape[1]} px, {frames} frames, {windows} windows, "
        f"batch {options.batch_size}: {seconds:.2f} s, {pixels / seconds:,.0f} px/s, "
        f"{flops / pixels:.3e} FLOP/px, {flops / seconds / 1e9:.1f} GFLOP/s, "
        f"seam ratio {seam_ratio(field.embedding.values, spec.core):.4f}"
    )


if __name__ == "__main__":
    main()
