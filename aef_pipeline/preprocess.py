"""Stage 4a: from loaded products to what the encoder consumes.

    cube = preprocess(loaded, selection.scenes, bands=spec.bands, core=tile.geobox)

- harmonise each product by its own processing baseline (DN - offset) / 10000, never by date;
- mask pixels that are nodata in any band or whose SCL class is not a clear observation;
- fuse the products of one overpass (neighbouring MGRS tiles) into one frame, first valid wins;
- drop frames with no valid pixel in the tile's core;
- keep each frame's acquisition time exactly as the item states it.

The result is a Dataset: `reflectance` (time, band, y, x) float32, NaN where invalid; `valid`
(time, y, x) bool; coordinates time (datetime64, microseconds from the items), band, acquisition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from odc.geo.geobox import GeoBox

from aef_pipeline import sentinel2 as s2
from aef_pipeline.providers import SCL, SceneInfo


@dataclass(frozen=True)
class MaskPolicy:
    """Which scene classes count as a clear observation of the ground."""

    invalid_scl: frozenset[int] = frozenset(
        {
            s2.SCL_NODATA,
            s2.SCL_SATURATED,
            s2.SCL_CLOUD_SHADOW,
            s2.SCL_CLOUD_MEDIUM,
            s2.SCL_CLOUD_HIGH,
            s2.SCL_THIN_CIRRUS,
        }
    )
    """Nodata, saturated, cloud shadow, clouds and cirrus. Snow, water, dark and unclassified
    pixels stay valid: they are what the ground looked like."""


# Only pixels without data are invalid: the encoder sees clouds, as the paper's does at inference.
NODATA_ONLY = MaskPolicy(frozenset({s2.SCL_NODATA}))


def mask_policy(mask_clouds: bool) -> MaskPolicy:
    """The policy of a model spec's `[input] mask_clouds`: clouds, shadows, cirrus and saturated
    pixels masked (the default MaskPolicy), or only nodata. Unmasked cloudy pixels reach the
    encoder as they are, and a frame then counts as observed wherever it has data."""
    return MaskPolicy() if mask_clouds else NODATA_ONLY


def preprocess(
    loaded: xr.Dataset,
    scenes: Sequence[SceneInfo],
    bands: Sequence[str],
    core: GeoBox,
    policy: MaskPolicy = MaskPolicy(),
) -> xr.Dataset:
    """The encoder's input cube. `loaded` holds one frame per scene, in the order of `scenes`.

    `core` is the tile without its halo: a frame none of whose core pixels is valid is dropped
    (halo pixels alone belong to the neighbouring tile). This computes the SCL mask; a frame kept
    for its SCL whose bands turn out unreadable is masked, not dropped.
    """
    if loaded.sizes["time"] != len(scenes):
        raise ValueError(f"{loaded.sizes['time']} loaded frames for {len(scenes)} scenes")
    acquisitions = [scene.acquisition for scene in scenes]
    # Decided from SCL alone, which is small (20 m, uint8): the bands are read once, later.
    keep = _kept_frames(loaded[SCL], acquisitions, core, policy).values
    # Only the kept frames are fused and stacked: selecting them after (and sorting by time
    # after) copied every frame twice more on the lazy path.
    reflectance, valid = fuse_overpasses(*harmonise(loaded, scenes, bands, policy), acquisitions, keep)
    cube = xr.Dataset({"reflectance": reflectance, "valid": valid})
    cube.attrs["dropped_frames"] = int((~keep).sum())
    return cube


def harmonise(
    loaded: xr.Dataset, scenes: Sequence[SceneInfo], bands: Sequence[str], policy: MaskPolicy
) -> tuple[xr.DataArray, xr.DataArray]:
    """Reflectance (time, band, y, x) float32 with NaN where invalid, and the validity mask."""
    dn = xr.concat([loaded[name] for name in bands], dim=xr.DataArray(list(bands), dims="band", name="band"))
    dn = dn.transpose("time", "band", "y", "x")
    offset = xr.DataArray(np.array([scene.dn_offset for scene in scenes], dtype=np.float32), dims="time")
    valid = (dn > 0).all("band") & ~masked_classes(loaded[SCL], policy)
    reflectance = xr.apply_ufunc(_reflectance, dn, offset, valid, dask="parallelized", output_dtypes=[np.float32])
    return reflectance, valid


def _reflectance(dn: np.ndarray, offset: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(DN - offset) / 10000 in float32, NaN where invalid: the float32 operations of
    `(dn.astype(float32) - offset) / 10000` then `.where(valid)`, in that order, so the same bits,
    but in one array instead of four (the arguments broadcast: offset per frame, valid per pixel)."""
    out = dn.astype(np.float32)
    out -= offset
    out /= np.float32(s2.QUANTIFICATION)
    np.copyto(out, np.float32(np.nan), where=~valid)
    return out


def masked_classes(scl: xr.DataArray, policy: MaskPolicy) -> xr.DataArray:
    """Where the scene class is one the policy masks. uint8 classes (every loaded SCL) are looked up
    in a 256-entry table, the same answer as `isin` at a third of its time (it sorts)."""
    if scl.dtype != np.uint8:
        return scl.isin(sorted(policy.invalid_scl))
    table = np.zeros(256, bool)
    table[sorted(policy.invalid_scl)] = True
    masked: xr.DataArray = xr.apply_ufunc(table.take, scl, dask="parallelized", output_dtypes=[bool])
    return masked


def fuse_overpasses(
    reflectance: xr.DataArray, valid: xr.DataArray, acquisitions: Sequence[str], keep: np.ndarray | None = None
) -> tuple[xr.DataArray, xr.DataArray]:
    """One frame per overpass, in time order: products of neighbouring MGRS tiles see the same
    ground at the same moment, so where both are valid the first (in selection order) is taken.
    The frame keeps the first product's timestamp. With `keep` (bool per fused frame, in time
    order), only those frames."""
    groups = _kept(_overpasses(acquisitions, reflectance.time.values), keep)
    fused_reflectance, fused_valid = [], []
    for indices in groups.values():
        r, v = reflectance.isel(time=indices[0]), valid.isel(time=indices[0])
        for index in indices[1:]:
            r = r.where(v, reflectance.isel(time=index))
            v = v | valid.isel(time=index)  # where the next product may still fill
        fused_reflectance.append(r)
        fused_valid.append(v)
    return _stack(fused_reflectance, groups, reflectance), _stack(fused_valid, groups, valid)


def fuse_valid(valid: xr.DataArray, acquisitions: Sequence[str]) -> xr.DataArray:
    """The validity of each fused overpass frame (time order): valid in any of its products."""
    groups = _overpasses(acquisitions, valid.time.values)
    fused = []
    for indices in groups.values():
        v = valid.isel(time=indices[0])
        for index in indices[1:]:
            v = v | valid.isel(time=index)
        fused.append(v)
    return _stack(fused, groups, valid)


def _overpasses(acquisitions: Sequence[str], times: np.ndarray) -> dict[str, list[int]]:
    """Product indices per acquisition, in selection order; the acquisitions in the time order of
    their first product (a stable sort: equal times keep the selection's order)."""
    groups: dict[str, list[int]] = {}
    for index, acquisition in enumerate(acquisitions):
        groups.setdefault(acquisition, []).append(index)
    return dict(sorted(groups.items(), key=lambda group: times[group[1][0]]))


def _kept(groups: dict[str, list[int]], keep: np.ndarray | None) -> dict[str, list[int]]:
    if keep is None:
        return groups
    return {acquisition: indices for (acquisition, indices), kept in zip(groups.items(), keep, strict=True) if kept}


def _stack(frames: list[xr.DataArray], groups: dict[str, list[int]], products: xr.DataArray) -> xr.DataArray:
    """Fused frames along time (each keeps its first product's timestamp), in the groups' order;
    no frame at all is the products' array with an empty time axis."""
    stacked = xr.concat(frames, dim="time") if frames else products.isel(time=slice(0, 0))
    return stacked.assign_coords(acquisition=xr.DataArray(list(groups), dims="time"))


def products_of_kept_frames(
    scl: xr.DataArray, scenes: Sequence[SceneInfo], core: GeoBox, policy: MaskPolicy = MaskPolicy()
) -> np.ndarray:
    """Per product (bool, in `scenes` order): whether `preprocess` keeps its overpass's frame,
    decided from SCL alone as preprocess decides it, so the bands of the others need no reading."""
    acquisitions = [scene.acquisition for scene in scenes]
    frames = _kept_frames(scl, acquisitions, core, policy)
    kept = set(frames.acquisition.values[frames.values].tolist())
    return np.array([acquisition in kept for acquisition in acquisitions], dtype=bool)


def _kept_frames(scl: xr.DataArray, acquisitions: Sequence[str], core: GeoBox, policy: MaskPolicy) -> xr.DataArray:
    """Per fused frame (time order, with its acquisition): whether it has a clear pixel in the core."""
    clear = fuse_valid(~masked_classes(scl, policy), acquisitions)
    return xr.DataArray(
        _frames_with_valid_core(clear, core), dims="time", coords={"acquisition": ("time", clear.acquisition.values)}
    )


def _frames_with_valid_core(valid: xr.DataArray, core: GeoBox) -> np.ndarray:
    inside = valid.sel(x=slice(*_span(core, "x")), y=slice(*_span(core, "y")))
    return np.asarray(inside.any(("y", "x")).values, dtype=bool)


def _span(core: GeoBox, axis: str) -> tuple[float, float]:
    """Pixel-centre coordinates of the core's first and last pixel along an axis, in the order the
    cube's coordinate runs (x ascending, y descending)."""
    coords = core.coordinates[axis].values
    return float(coords[0]), float(coords[-1])
