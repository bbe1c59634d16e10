"""`ds.aef`: the views on any field Dataset that `open_embeddings` returns (float32 unit vectors,
NaN nodata, dims time?, y, x, band).

    import aef_pipeline.views  # registers the accessor
    ds = aef_pipeline.open_embeddings("field.zarr", bbox=(15.0, 46.1, 15.1, 46.2), period="2022").isel(time=0)
    rgba = ds.aef.pca_rgb()                      # (y, x, 4) uint8: a PCA fitted on this Dataset's vectors
    score = ds.aef.similarity(reference_vectors)  # mean dot product with the references
    moved = ds.aef.change(other_period)           # 1 - dot product, per pixel

These work on what is in memory or lazy in the Dataset; the `quicklook`, `similarity` and
`change` commands do the same over whole stores, zone by zone, with one colour scale.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike
from sklearn.decomposition import PCA

from aef_pipeline.errors import UserInputError

SAMPLE = 20_000
STRETCH = (2.0, 98.0)


@xr.register_dataset_accessor("aef")  # type: ignore[no-untyped-call]
class FieldViews:
    def __init__(self, ds: xr.Dataset) -> None:
        if "embedding" not in ds or "band" not in ds.embedding.dims:
            raise UserInputError("ds.aef needs a field Dataset with `embedding` (..., band): use open_embeddings")
        self._embedding = ds.embedding

    def pca_rgb(self, *, seed: int = 0) -> xr.DataArray:
        """(..., y, x, rgba) uint8, lazy if the Dataset is: three principal components, fitted on a
        strided sample of at most about SAMPLE valid vectors, each stretched by its 2nd-98th
        percentile; alpha 0 where there is no vector. Memory follows a chunk, not the Dataset."""
        embedding = self._embedding.transpose(..., "band")
        pixels = int(np.prod([size for dim, size in embedding.sizes.items() if dim != "band"]))
        stride = max(1, int(np.sqrt(pixels / SAMPLE)))
        thinned = embedding.isel(y=slice(None, None, stride), x=slice(None, None, stride)).values
        flat = thinned.reshape(-1, thinned.shape[-1])
        sample = flat[np.isfinite(flat).all(axis=1)]
        if len(sample) < 3:
            raise UserInputError("fewer than 3 valid vectors: nothing to picture")
        pca = PCA(n_components=3, random_state=seed).fit(sample)
        projected = pca.transform(sample)
        low, high = np.percentile(projected, STRETCH[0], axis=0), np.percentile(projected, STRETCH[1], axis=0)
        picture: xr.DataArray = xr.apply_ufunc(
            _rgba,
            embedding,
            kwargs={"pca": pca, "low": low, "high": high},
            input_core_dims=[["band"]],
            output_core_dims=[["rgba"]],
            dask="parallelized",
            output_dtypes=[np.uint8],
            dask_gufunc_kwargs={"output_sizes": {"rgba": 4}},
        )
        picture.attrs["explained_variance"] = [float(v) for v in pca.explained_variance_ratio_]
        return picture

    def similarity(self, references: ArrayLike) -> xr.DataArray:
        """The mean dot product of every vector with `references` ((n, 64) or (64,)): NaN stays NaN."""
        target = np.atleast_2d(np.asarray(references, dtype=np.float32)).mean(axis=0)
        if target.shape[0] != self._embedding.sizes["band"]:
            dims = self._embedding.sizes["band"]
            raise UserInputError(f"references have {target.shape[0]} dimensions, the field {dims}: give field vectors")
        score: xr.DataArray = xr.dot(self._embedding, xr.DataArray(target, dims=["band"]), dim="band")
        return score

    def change(self, other: xr.Dataset | xr.DataArray) -> xr.DataArray:
        """1 - the dot product with `other` (the same pixels in another period), NaN where either lacks data."""
        first = _one_period(self._embedding)
        second = _one_period(other.embedding if isinstance(other, xr.Dataset) else other)
        try:
            first, second = xr.align(first, second, join="exact")
        except ValueError:
            raise UserInputError("the two fields cover different pixels: open both with the same bbox") from None
        moved: xr.DataArray = 1.0 - xr.dot(first, second, dim="band")
        return moved


def _one_period(embedding: xr.DataArray) -> xr.DataArray:
    """The field without its time axis (two periods must meet pixel by pixel, not by date)."""
    if "time" not in embedding.dims:
        return embedding.drop_vars("time", errors="ignore")
    if embedding.sizes["time"] != 1:
        raise UserInputError("change compares one period with another: select one with .isel(time=...)")
    return embedding.isel(time=0).drop_vars(["time", "time_end"], errors="ignore")


def _rgba(vectors: np.ndarray, pca: PCA, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    flat = vectors.reshape(-1, vectors.shape[-1])
    valid = np.isfinite(flat).all(axis=1)
    rgba = np.zeros((len(flat), 4), np.uint8)
    if valid.any():
        scaled = np.clip((pca.transform(flat[valid]) - low) / np.where(high > low, high - low, 1.0), 0, 1)
        rgba[valid, :3] = np.round(scaled * 255).astype(np.uint8)
        rgba[valid, 3] = 255
    return rgba.reshape(*vectors.shape[:-1], 4)
