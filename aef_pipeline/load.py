"""Stage 3: read the selected products onto a tile's exact grid with odc-stac, lazily.

One frame per product (odc-stac `groupby="id"`, in the selection's order), so that each product is
harmonised by its own baseline before products of one overpass are fused (preprocess.py).
Reflectance bands are resampled bilinearly, SCL with nearest neighbour; DN 0 stays nodata.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import odc.stac
import pystac
import rasterio
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

from aef_pipeline.errors import AefWarning
from aef_pipeline.providers import SCL
from aef_pipeline.search import SceneSelection

# Rows of a lazy cube's chunks (full width, one frame: each product is its own file).
DEFAULT_CHUNK_ROWS = 512
# Nodata and dtype for every provider: Planetary Computer declares neither (no raster:bands), and
# odc-stac would then load float32 without nodata.
_STAC_CFG = {"*": {"assets": {"*": {"data_type": "uint16", "nodata": 0}, SCL: {"data_type": "uint8", "nodata": 0}}}}


class ReadFailureWarning(AefWarning):
    """An asset could not be read; its pixels stay nodata (masked), the rest of the product is used."""


@dataclass(frozen=True)
class GdalOptions:
    """GDAL settings for reading COGs over HTTP, chosen once at the entry point.

    odc-stac captures the rasterio environment active when the graph is built and ships it inside
    the dask graph, so every worker reads with exactly these settings (no environment variables
    to keep in step across machines).
    """

    http_max_retry: int = 5
    """Retries of a failed range request (GDAL_HTTP_MAX_RETRY)."""
    http_retry_delay_s: float = 1.0
    http_timeout_s: int = 60
    multiplex: bool = True
    """HTTP/2 multiplexing: many range requests on one connection."""
    merge_consecutive_ranges: bool = True
    block_cache_mb: int = 64
    """GDAL_CACHEMAX, in MB."""
    extra: tuple[tuple[str, str], ...] = field(default=())
    """Further GDAL options as (name, value) pairs, e.g. (("AWS_NO_SIGN_REQUEST", "YES"),)."""

    def env(self) -> dict[str, Any]:
        yes_no = {True: "YES", False: "NO"}
        return {
            # Each block is decoded once per task: a large block cache only holds memory (GDAL's
            # default is 5 % of RAM per process), so keep it small.
            "GDAL_CACHEMAX": self.block_cache_mb,  # rasterio wants an int here
            # Never list a COG's directory on open: one request per file instead of hundreds.
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF",
            "GDAL_HTTP_MAX_RETRY": str(self.http_max_retry),
            "GDAL_HTTP_RETRY_DELAY": str(self.http_retry_delay_s),
            "GDAL_HTTP_TIMEOUT": str(self.http_timeout_s),
            "GDAL_HTTP_MULTIPLEX": yes_no[self.multiplex],
            "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": yes_no[self.merge_consecutive_ranges],
            **dict(self.extra),
        }


def load_selection(
    selection: SceneSelection,
    geobox: GeoBox,
    bands: Sequence[str],
    gdal: GdalOptions = GdalOptions(),
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    sign_url: Callable[[str], str] | None = None,
) -> xr.Dataset:
    """A Dataset with one variable per band name (plus SCL), dims (time, y, x) on exactly `geobox`.

    `chunk_rows=None` reads eagerly into numpy; otherwise the arrays are lazy dask chunks of one
    frame, `chunk_rows` rows and the full width (the encoder reads the cube in such row blocks, so
    each chunk is read once). Unreadable assets are skipped (odc-stac `fail_on_error=False`) and
    reported by `report_read_failures`. `sign_url` rewrites asset URLs just before reading
    (Planetary Computer SAS tokens expire, so they are signed at read time, not at search time);
    the default signs when the `planetary-computer` package is installed.

    SCL (20 m, nearest) is read on the 20 m grid that shares the geobox's edges, where odc-stac
    copies pixels without warping, and each pixel repeated 2 x 2: the same values as GDAL's
    nearest warp, at a fraction of the cost (docs/performance.md). A geobox off the 20 m lattice
    is warped by odc-stac. 20 m bands stay bilinear through odc-stac (their edges need the
    neighbouring source pixels, which a per-chunk doubling would not have).
    """
    items = [
        canonical_item(item, dict(info.asset_keys))
        for item, info in zip(selection.items, selection.scenes, strict=True)
    ]
    names = [*bands, SCL]
    coarse = [SCL] if _on_lattice(geobox, 2) else []
    fine = [name for name in names if name not in coarse]
    parts = []
    with rasterio.Env(**gdal.env()):
        for group, box, factor in ((fine, geobox, 1), (coarse, geobox.zoom_out(2), 2)):
            if group:
                chunks: dict[str, int | Literal["auto"]] | None = (
                    None if chunk_rows is None else {"time": 1, "y": max(1, chunk_rows // factor), "x": -1}
                )
                loaded = odc.stac.load(
                    items, bands=group, geobox=box, groupby="id", preserve_original_order=True,
                    resampling={"*": "bilinear", SCL: "nearest"}, chunks=chunks, fail_on_error=False,
                    stac_cfg=_STAC_CFG, patch_url=sign_url or default_url_signer(),
                )  # fmt: skip
                parts.append(loaded if factor == 1 else _doubled(loaded, geobox))
    merged = xr.merge(parts, compat="override", join="override", combine_attrs="override")
    return merged[names]


def _on_lattice(geobox: GeoBox, factor: int) -> bool:
    """True when the geobox's edges lie on the lattice `factor` times coarser than its pixels."""
    affine = geobox.affine
    step = abs(affine.a) * factor
    height, width = geobox.shape
    return (
        affine.b == 0 and affine.d == 0 and height % factor == 0 and width % factor == 0
        and math.isclose(affine.c / step, round(affine.c / step), abs_tol=1e-6)
        and math.isclose(affine.f / step, round(affine.f / step), abs_tol=1e-6)
    )  # fmt: skip


def _doubled(coarse: xr.Dataset, geobox: GeoBox) -> xr.Dataset:
    """Nearest-neighbour doubling onto the 10 m `geobox`: each 20 m pixel becomes 2 x 2 (what
    GDAL's nearest resampling gives on aligned grids, without its warp)."""
    coords = {"time": coarse.time, **xr_coords(geobox, crs_coord_name="spatial_ref")}
    out = {}
    for name, variable in coarse.data_vars.items():
        doubled = variable.data.repeat(2, axis=-2).repeat(2, axis=-1)
        out[name] = xr.DataArray(doubled, dims=("time", "y", "x"), coords=coords, attrs=variable.attrs)
    return xr.Dataset(out, attrs=coarse.attrs)


def canonical_item(item: pystac.Item, asset_keys: dict[str, str]) -> pystac.Item:
    """A copy of the item whose assets are keyed by ESA band name ("B04", "SCL"), holding only the
    assets the pipeline reads, so one odc-stac call loads products of any provider."""
    copy = item.clone()
    copy.assets = {name: item.assets[key].clone() for name, key in asset_keys.items()}
    for asset in copy.assets.values():
        asset.owner = copy
    return copy


def default_url_signer() -> Callable[[str], str] | None:
    """planetary_computer.sign when that package is installed (it leaves other hosts' URLs alone)."""
    try:
        import planetary_computer  # type: ignore[import-not-found]
    except ImportError:
        return None
    signer: Callable[[str], str] = planetary_computer.sign
    return signer


# A URL's query string: where signed URLs carry their tokens (Planetary Computer SAS "sig=", S3
# presigned "X-Amz-Signature="). Never written to a log, warning or report.
_QUERY = re.compile(r"((?:https?|s3|gs|az)://[^\s?'\"]*)\?[^\s'\"]*")


def redact(text: str) -> str:
    """`text` with every URL's query string replaced by "?<redacted>"."""
    return _QUERY.sub(r"\1?<redacted>", text)


class _RedactTokens(logging.Filter):
    """Applied to the loggers whose messages hold the URLs being read (signed ones included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


# odc-stac's read failures, and GDAL's own messages as rasterio logs them (at INFO).
for _name in ("odc.loader._rio", "rasterio._env", "rasterio._base", "rasterio._io", "rasterio.env"):
    logging.getLogger(_name).addFilter(_RedactTokens())

_FAILURE = re.compile(r"Ignoring read failure reading (?P<uri>\S+):\d+ \(reason: '(?P<reason>.*)'\)", re.S)


@contextmanager
def report_read_failures() -> Iterator[list[str]]:
    """Collect the assets odc-stac skipped while computing in this process, and warn for each.

    odc-stac only logs a skipped read; this turns each log record into a ReadFailureWarning naming
    the asset, and yields the list for the run report. Reads on other processes (a distributed
    cluster) are seen by the worker that does them: compute a tile within one task to collect them.
    """
    failures: list[str] = []
    handler = _FailureHandler(failures)
    logger = logging.getLogger("odc.loader._rio")
    logger.addHandler(handler)
    try:
        yield failures
    finally:
        logger.removeHandler(handler)
    for failure in failures:
        warnings.warn(f"unreadable asset skipped, its pixels masked: {failure}", ReadFailureWarning, stacklevel=3)


class _FailureHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.WARNING)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        match = _FAILURE.match(record.getMessage())
        if match and not any(entry.startswith(match["uri"] + " ") for entry in self._sink):  # once per asset
            self._sink.append(f"{match['uri']} ({match['reason'].splitlines()[0][:200]})")
