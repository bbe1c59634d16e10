"""Quicklooks: an RGB picture of a field from a PCA fitted once over the whole field.

    look = quicklook(Path("field.zarr"), period="2022", max_size=2048)
    save_png(look, Path("quick.png"))          # every zone group on the first one's grid
    save_cogs(look, Path("quick.tif"))         # RGBA COG(s): one per zone group, in its UTM CRS
    save_cogs(look, Path("quick.tif"), "EPSG:4326")  # or every zone reprojected into one

The three principal components are fitted on vectors drawn from every written tile of every
zone group, and stretched by the 2nd-98th percentiles of that same sample, so every tile and
zone shares one colour scale (a PCA per tile would shift colours at tile edges). The picture is
the field averaged over blocks of 2^k pixels (mean of the unit vectors, re-normalised): read from
the coarsest stored overview level that still gives `max_size` pixels (a 100 km field at 2048 px
reads level 3, 1/64 of the field), averaged further on dask where the levels stop, so what is
read and held follows `max_size`, not the area. The PCA sample comes from that same level. A
store without overviews is averaged from full resolution. Nodata is transparent.

The COGs carry the same colours: the PNG's pixels, zone by zone, at the picture's pixel size
(10 x block m: the overview level's own grid when the block is a level's), alpha 0 for no data.
Reprojected (`crs`), each zone's pixels are resampled by nearest neighbour (colours stay colours).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from affine import Affine
from numpy.typing import NDArray
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pyproj import CRS
from pyproj.exceptions import CRSError
from sklearn.decomposition import PCA

from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import TILE_PIXELS
from aef_pipeline.maps.classify import mosaic
from aef_pipeline.maps.raster import write_cog
from aef_pipeline.maps.sample import choose_period, vectors_as_float
from aef_pipeline.overviews import OVERVIEW_CHUNK_PX, overview_group, overview_levels
from aef_pipeline.plan import Period
from aef_pipeline.store import (
    CHUNK_PX,
    READ_CHUNK_PX,
    open_embeddings,
    store_periods,
    written_areas,
    written_part,
    zone_attrs,
    zones_with,
)
from aef_pipeline.views.outputs import zone_path

SAMPLE_CHUNKS = 64  # stored 128 px chunks the PCA is fitted on, drawn across every written tile
SAMPLE_VECTORS = 20_000
STRETCH = (2.0, 98.0)
COG_BANDS = ("red: principal component 1", "green: principal component 2", "blue: principal component 3", "alpha")


@dataclass
class Quicklook:
    rgba: NDArray[np.uint8]
    """(rows, cols, 4): the three components stretched to 0-255, alpha 0 where there is no data."""
    period: Period
    explained_variance: list[float]
    crs: str
    """Of `rgba`: the first zone group's UTM CRS."""
    transform: Affine
    """Of `rgba` in `crs`: picture pixels of 10 x block_px m."""
    block_px: int
    """Field pixels averaged into one picture pixel (along each axis)."""
    model_weights: str
    zones: dict[str, xr.Dataset]
    """Per zone group: the three components c1, c2, c3 at the picture's pixel size, in the zone's
    UTM CRS (in memory: what `rgba` is drawn from, before the stretch)."""
    stretch: tuple[NDArray[np.float64], NDArray[np.float64]]
    """Each component's 2nd and 98th percentile over the PCA's sample: the values drawn as 0 and 255."""


def quicklook(store: Path, period: Period | str | None = None, *, max_size: int = 2048, seed: int = 0) -> Quicklook:
    if max_size < 16:
        raise UserInputError(f"--max-size {max_size} is below 16 px: ask for a larger picture")
    chosen = choose_period(store, period)
    zones = [zone for zone in zones_with(store, chosen) if written_areas(store, zone, chosen)]
    if not zones:
        raise UserInputError(f"{store} has no finished tile for {chosen.label}: run `aef-pipeline run` first")
    full = [written_part(open_embeddings(store, z, period=chosen).isel(time=0), store, z, chosen) for z in zones]
    block = _block_px(_extent_px(full), max_size)  # opening is lazy: no pixel read so far
    level = _level(block, min(overview_levels(zone_attrs(store, z) or {}) for z in zones))
    sample = _sample(store, zones, chosen, seed, level)
    pca = PCA(n_components=3, random_state=seed).fit(sample)
    low, high = _stretch(pca, sample)
    fields = [
        written_part(open_embeddings(store, z, period=chosen, level=level).isel(time=0), store, z, chosen)
        for z in zones
    ]
    pictures = {z: _components(ds, pca, block >> level, 10.0 * 2**level) for z, ds in zip(zones, fields, strict=True)}
    first = pictures[zones[0]]
    picture = first if len(pictures) == 1 else mosaic(list(pictures.values()), str(first.rio.crs), _resolution(block))
    attrs = zone_attrs(store, zones[0]) or {}
    return Quicklook(
        _rgba(picture, low, high),
        chosen,
        [round(float(v), 4) for v in pca.explained_variance_ratio_],
        str(picture.rio.crs),
        picture.rio.transform(),
        block,
        str(attrs.get("aef:model_weights")),
        pictures,
        (low, high),
    )


def save_png(look: Quicklook, out: Path) -> None:
    """The picture as PNG, with the period, the explained variance and the weights in its text chunks."""
    info = PngInfo()
    info.add_text("aef:period", look.period.label)
    info.add_text("aef:explained_variance", json.dumps(look.explained_variance))
    info.add_text("aef:block_px", str(look.block_px))
    info.add_text("aef:crs", look.crs)
    info.add_text("aef:transform", json.dumps(list(look.transform)[:6]))
    info.add_text("aef:model_weights", look.model_weights)
    partial = out.with_name(f".{out.name}.partial")
    Image.fromarray(look.rgba, "RGBA").save(partial, format="PNG", pnginfo=info)
    partial.replace(out)


def save_cogs(look: Quicklook, out: Path, crs: str | None = None) -> list[Path]:
    """The picture as RGBA COGs with overviews: one per zone group in its UTM CRS, named like the
    similarity maps (`out` for one zone, else `quick_33N.tif`, ...), each exactly the PNG's colours;
    with `crs`, every zone reprojected by nearest neighbour onto one grid of that CRS, in `out`.
    Returns the paths written."""
    pictures = look.zones if crs is None else {"": mosaic(list(look.zones.values()), crs, _resolution(look.block_px))}
    # GDAL reads "aef:period" as item "period" of domain "aef": underscores keep the names whole.
    tags = {
        "aef_period": look.period.label,
        "aef_explained_variance": json.dumps(look.explained_variance),
        "aef_block_px": str(look.block_px),
        "aef_model_weights": look.model_weights,
    }
    written = []
    for zone, picture in pictures.items():
        path = zone_path(out, zone, len(pictures))
        write_cog(_rgba_bands(picture, *look.stretch), path, resampling="AVERAGE", descriptions=COG_BANDS, tags=tags)
        written.append(path)
    return written


def checked_crs(text: str) -> str:
    """`text` (EPSG:4326, a WKT, a PROJ string) as pyproj spells it, or a one-line refusal."""
    try:
        return str(CRS.from_user_input(text).to_string())
    except CRSError:
        raise UserInputError(f"--cog-crs {text!r} is not a CRS pyproj knows: give one like EPSG:4326") from None


def _level(block: int, levels: int) -> int:
    """The coarsest overview level whose pixels fit in a picture pixel of `block` field pixels."""
    return min(levels, int(math.log2(block)))


def _sample(store: Path, zones: list[str], period: Period, seed: int, level: int = 0) -> NDArray[np.float32]:
    """Valid vectors from up to SAMPLE_CHUNKS stored chunks of overview `level`, drawn from the
    written areas of every tile and zone (chunks of a tile that no run computed hold nothing to
    sample)."""
    factor = 2**level
    chunk = CHUNK_PX if level == 0 else min(OVERVIEW_CHUNK_PX, TILE_PIXELS // factor)
    candidates = sorted(
        {
            (zone, r, c)
            for zone in zones
            for r0, r1, c0, c1 in written_areas(store, zone, period)
            for r in range(r0 // factor // chunk * chunk, -(-r1 // factor), chunk)
            for c in range(c0 // factor // chunk * chunk, -(-c1 // factor), chunk)
        }
    )
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(candidates), size=min(SAMPLE_CHUNKS, len(candidates)), replace=False)
    opened = {  # per zone: the period's time index, the array and its storage (opened once each)
        zone: (
            store_periods(store, zone).index(period),
            zarr.open_array(str(store / overview_group(zone, level) / "embedding"), mode="r"),
            (zone_attrs(store, zone) or {})["aef:storage"],
        )
        for zone in zones
    }
    vectors = []
    for i in sorted(picked):
        zone, r0, c0 = candidates[i]
        index, embedding, storage = opened[zone]
        stored = np.asarray(embedding[index, r0 : r0 + chunk, c0 : c0 + chunk])
        floats = vectors_as_float(stored.reshape(-1, stored.shape[-1]), storage)
        vectors.append(floats[np.isfinite(floats).all(axis=1)])
    sample = np.concatenate(vectors)
    if len(sample) < 3:
        raise UserInputError(f"{store} has fewer than 3 valid vectors for {period.label}: nothing to picture")
    if len(sample) > SAMPLE_VECTORS:
        sample = sample[rng.choice(len(sample), SAMPLE_VECTORS, replace=False)]
    return sample


def _stretch(pca: PCA, sample: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    projected = pca.transform(sample)
    return np.percentile(projected, STRETCH[0], axis=0), np.percentile(projected, STRETCH[1], axis=0)


def _block_px(extent_px: int, max_size: int) -> int:
    """A power of two (so blocks nest in the 640 px read chunks), or a multiple of 640 beyond."""
    needed = max(1, math.ceil(extent_px / max_size))
    block = 1 << math.ceil(math.log2(needed))
    return block if block <= READ_CHUNK_PX else READ_CHUNK_PX * math.ceil(needed / READ_CHUNK_PX)


def _extent_px(fields: list[xr.Dataset]) -> int:
    """The longest side, in 10 m pixels, of the fields' union on the first one's grid (where a
    mosaic of several zones is drawn)."""
    crs = fields[0].odc.geobox.crs
    boxes = [field.odc.geobox.extent.to_crs(crs).boundingbox for field in fields]
    width: float = max(b.right for b in boxes) - min(b.left for b in boxes)
    height: float = max(b.top for b in boxes) - min(b.bottom for b in boxes)
    return math.ceil(max(width, height) / 10.0)


def _resolution(block: int) -> float:
    return 10.0 * block


def _components(field: xr.Dataset, pca: PCA, block: int, resolution: float = 10.0) -> xr.Dataset:
    """The three components of the field (pixels of `resolution` m) averaged over `block` x `block`
    pixels and re-normalised; NaN where nothing is valid. Beyond the overviews, a block's mean
    weighs each overview pixel alike, whatever number of valid pixels it stands for."""
    embedding = field.embedding.transpose("y", "x", "band")
    if block > 1:
        half = resolution / 2
        left, top = float(field.x[0]) - half, float(field.y[0]) + half  # the region's corner
        embedding = embedding.coarsen(y=block, x=block, boundary="pad").mean()
        embedding = embedding / np.sqrt((embedding**2).sum("band"))
        # A padded last block's mean coordinate is off the grid: centres of the coarse grid instead.
        step = resolution * block
        embedding = embedding.assign_coords(
            x=left + (np.arange(embedding.sizes["x"]) + 0.5) * step,
            y=top - (np.arange(embedding.sizes["y"]) + 0.5) * step,
        )
    projected = xr.apply_ufunc(
        _project,
        embedding,
        kwargs={"pca": pca},
        input_core_dims=[["band"]],
        output_core_dims=[["component"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"component": 3}},
    )
    ds = xr.Dataset({name: projected.isel(component=i) for i, name in enumerate(("c1", "c2", "c3"))}).compute()
    step = resolution * block
    corner = (float(embedding.x[0]) - step / 2, float(embedding.y[0]) + step / 2)
    located: xr.Dataset = ds.rio.write_crs(field.rio.crs).rio.write_transform(
        Affine(step, 0.0, corner[0], 0.0, -step, corner[1])
    )
    return located


def _project(vectors: NDArray[np.float32], pca: PCA) -> NDArray[np.float64]:
    flat = vectors.reshape(-1, vectors.shape[-1])
    out = np.full((len(flat), 3), np.nan)
    valid = np.isfinite(flat).all(axis=1)
    if valid.any():
        out[valid] = pca.transform(flat[valid])
    return out.reshape(*vectors.shape[:-1], 3)


def _rgba_bands(picture: xr.Dataset, low: NDArray[np.float64], high: NDArray[np.float64]) -> xr.DataArray:
    """The picture as (band, y, x) uint8 red, green, blue, alpha, with its CRS and transform."""
    ys, xs = (picture[dim].values for dim in picture.c1.dims)
    bands = xr.DataArray(
        np.moveaxis(_rgba(picture, low, high), -1, 0),
        dims=("band", "y", "x"),
        coords={"band": [1, 2, 3, 4], "y": ys, "x": xs},
    )
    located: xr.DataArray = bands.rio.write_crs(picture.rio.crs).rio.write_transform(picture.rio.transform())
    return located


def _rgba(picture: xr.Dataset, low: NDArray[np.float64], high: NDArray[np.float64]) -> NDArray[np.uint8]:
    components = np.stack([picture[name].values for name in ("c1", "c2", "c3")], axis=-1)
    valid = np.isfinite(components).all(axis=-1)
    scaled = np.clip((components - low) / np.where(high > low, high - low, 1.0), 0.0, 1.0)
    rgb = np.where(valid[..., None], np.round(scaled * 255), 0).astype(np.uint8)
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)
