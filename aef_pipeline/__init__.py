"""aef-pipeline: AlphaEarth-style annual embedding fields from Sentinel-2, written as Zarr."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aef-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
