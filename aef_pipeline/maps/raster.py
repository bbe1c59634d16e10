"""Writing maps: a lazy raster as a Cloud-Optimized GeoTIFF, chunk by chunk, whole or not at all."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import rasterio
import rasterio.shutil
import xarray as xr


def write_cog(
    bands: xr.DataArray, out: Path, *, resampling: str, descriptions: Sequence[str], tags: Mapping[str, str]
) -> None:
    """`bands` (band, y, x), with CRS, transform and nodata set, as a COG with overviews
    (`resampling`: MODE for classes, AVERAGE for values). Written as a tiled GeoTIFF chunk by chunk
    (dask computes one block at a time), then copied by GDAL's COG driver, which streams blocks,
    and renamed into place: `out` is never a half-written map."""
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        tiled, partial = Path(tmp) / "tiled.tif", Path(tmp) / out.name
        bands.rio.to_raster(
            tiled, tiled=True, blockxsize=512, blockysize=512, compress="DEFLATE", lock=threading.Lock()
        )
        with rasterio.open(tiled, "r+") as raster:
            raster.descriptions = tuple(descriptions)
            raster.update_tags(**tags)
        rasterio.shutil.copy(
            tiled,
            partial,
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=512,
            OVERVIEW_RESAMPLING=resampling,
            BIGTIFF="IF_SAFER",  # compressed maps over 4 GB would otherwise fail at the very end
        )
        partial.replace(out)
