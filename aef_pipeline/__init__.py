"""aef-pipeline: AlphaEarth-style annual embedding fields from Sentinel-2, written as Zarr."""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("aef-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # `aef_pipeline.open_embeddings` without importing xarray/zarr for every CLI call.
    if name == "open_embeddings":
        from aef_pipeline.store import open_embeddings

        return open_embeddings
    raise AttributeError(f"module 'aef_pipeline' has no attribute {name!r}")
