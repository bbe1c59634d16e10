"""How good a field looks, beyond map accuracy: smoothness inside parcels, the 2-pixel lattice, and
teacher-student agreement (issue 18's targets; docs/training.md has the measured values).

    neighbour_cosine_within(embedding, parcel_ids(x, y, crs, world.parcel_deg))   # >= 0.9 wanted
    lattice_ratio(embedding)                                                       # >= 0.98 wanted
    teacher_student_cosine(encoder, windows, np.random.default_rng(0))             # >= 0.9 wanted

`embedding` is (dim, H, W) of unit vectors with NaN where there is no data (renormalise a field
read from int8 with `unit_vectors` first). Every mean is over the pairs or pixels with data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from pyproj import CRS, Transformer

from aef_pipeline.encode import seam_ratio
from aef_pipeline.model.stp import STPEncoder
from aef_pipeline.testing.world import parcel_index
from aef_pipeline.training.trainset_read import TrainingWindow
from aef_pipeline.training.views import FrameBatch, collate, gather_frames

FloatArray = NDArray[np.floating]


def unit_vectors(embedding: FloatArray) -> NDArray[np.float32]:
    """`embedding` (dim, H, W) scaled to unit length per pixel: de-quantised int8 vectors are only
    close to unit length, which would bias every cosine below 1. NaN pixels stay NaN."""
    values = np.asarray(embedding, np.float32)
    norm = np.sqrt(np.nansum(values**2, axis=0, keepdims=True))
    return np.where(norm > 0, values / np.where(norm > 0, norm, 1), np.nan).astype(np.float32)


def neighbour_cosine_within(embedding: FloatArray, labels: NDArray[np.integer]) -> float:
    """Mean cosine of horizontally and vertically adjacent pixel pairs whose two pixels carry the
    same parcel id in `labels` (H, W); pairs with a NaN vector or a negative id are left out.
    A smooth field inside uniform parcels gives 1; independent random vectors give about 0."""
    if labels.shape != embedding.shape[1:]:
        raise ValueError(f"labels {labels.shape} do not match the embedding's pixels {embedding.shape[1:]}")
    values = []
    for axis, cosine in _neighbour_cosines(embedding):
        first, second = _pair_slices(labels, axis)
        same = (first == second) & (first >= 0) & np.isfinite(cosine)
        values.append(cosine[same])
    inside = np.concatenate(values)
    if not inside.size:
        raise ValueError("no pair of neighbouring pixels with data shares a parcel: check labels and nodata")
    return float(inside.mean())


def lattice_ratio(embedding: FloatArray, block: int = 2) -> float:
    """Mean cosine of adjacent pairs that cross a boundary of `block` x `block` blocks, divided by
    the same within blocks, on both axes, with blocks starting at pixel 0. Below 1: the field
    shows a lattice of that period (e.g. 2 px from the encoder's half-resolution maps). Anchor
    `embedding` where the model's lattice starts (a window-core boundary) for the phase to mean
    anything. Same arithmetic as `encode.seam_ratio`, at another period."""
    if block < 2:
        raise ValueError(f"block {block} has no inside: give 2 or more")
    return seam_ratio(np.asarray(embedding, np.float32), block)


def parcel_ids(x: FloatArray, y: FloatArray, crs: str | CRS, parcel_deg: tuple[float, float]) -> NDArray[np.int64]:
    """The parcel (a lon/lat lattice cell of `parcel_deg` degrees, testing.world's) holding each
    pixel centre of a grid with centre coordinates `x` (W,) and `y` (H,) in `crs`: (H, W) ids,
    one int64 per (column, row) of the lattice."""
    to_lonlat = Transformer.from_crs(crs, 4326, always_xy=True)
    xx, yy = np.meshgrid(np.asarray(x, np.float64), np.asarray(y, np.float64))
    lon, lat = to_lonlat.transform(xx, yy)
    col, row = parcel_index(np.asarray(lon), np.asarray(lat), parcel_deg)
    # Rows are below 90 / parcel_deg[1] in magnitude, far inside 2**31: (col, row) -> id is one to one.
    ids: NDArray[np.int64] = (col << 32) + row
    return ids


def teacher_student_cosine(
    encoder: STPEncoder,
    windows: Sequence[TrainingWindow],
    generator: np.random.Generator,
    drop_share: float = 0.5,
    batch_size: int = 8,
) -> float:
    """Mean cosine, per core pixel, between a window's embedding from all its frames and from a
    random `drop_share` of them dropped (the paper's student perturbation), both summarising the
    window's support period. Pixels with no valid frame left in the student's view (nodata in a
    field) are left out; windows are normalised with the encoder's own spec."""
    if not 0 <= drop_share < 1:
        raise ValueError(f"drop_share {drop_share} must be in [0, 1): a student needs a frame")
    device = next(encoder.parameters()).device
    spec, edge = encoder.spec, encoder.spec.context
    core = slice(edge, spec.window - edge)
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = collate(list(windows[start : start + batch_size]), spec)
        kept = [_kept_frames(present, drop_share, generator) for present in batch.present.numpy()]
        student = gather_frames(batch, kept)
        cosine = (_embed(encoder, batch, device) * _embed(encoder, student, device)).sum(dim=1)
        seen = student.valid.any(dim=1)
        inside = cosine[:, core, core][seen[:, core, core]]
        total, count = total + float(inside.double().sum()), count + inside.numel()
    if not count:
        raise ValueError("no window has a pixel with a valid frame: nothing to compare")
    return total / count


def _kept_frames(present: NDArray[np.bool_], drop_share: float, generator: np.random.Generator) -> NDArray[np.int64]:
    """The frames a student keeps: a random `1 - drop_share` of the present ones, in time order."""
    frames = np.flatnonzero(present)
    keep = frames.size - round(drop_share * frames.size)
    return np.sort(generator.choice(frames, size=keep, replace=False))


def _embed(encoder: STPEncoder, batch: FrameBatch, device: torch.device) -> torch.Tensor:
    """(B, dim, L, L) unit vectors of the batch's windows over their support periods, on the CPU."""
    with torch.no_grad():
        out: torch.Tensor = encoder(
            batch.x.to(device), batch.valid.to(device), batch.t_ms.to(device), batch.support_ms.to(device)
        )
    return out.float().cpu()


def _neighbour_cosines(embedding: FloatArray) -> Iterator[tuple[int, FloatArray]]:
    """(axis, cosine) of every vertical (axis 0) and horizontal (axis 1) pair of adjacent pixels."""
    for axis in (0, 1):
        first, second = _pair_slices(np.asarray(embedding), axis + 1)
        yield axis, (first * second).sum(axis=0)


def _pair_slices(array: NDArray[Any], axis: int) -> tuple[NDArray[Any], NDArray[Any]]:
    """The array without its last and without its first index along `axis`: the two members of
    each adjacent pair."""
    size = array.shape[axis]
    return np.take(array, np.arange(size - 1), axis=axis), np.take(array, np.arange(1, size), axis=axis)


__all__ = [
    "lattice_ratio",
    "neighbour_cosine_within",
    "parcel_ids",
    "teacher_student_cosine",
    "unit_vectors",
]
