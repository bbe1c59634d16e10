"""Stage 4b: the encoder over a cube of any size, in fixed windows on the global grid.

    field = encode_cube(cube, Period.year(2022), model, spec, EncodeOptions(device="auto"))

Windows are L x L pixels whose cores (L - 2 * context) sit on a lattice anchored at the UTM grid's
origin, so a pixel's embedding comes from the same window whichever task, tile piece or batch
computes it: results do not depend on how an area is split. With `overlap`, windows step by half
a core and their unit vectors are blended with a sin^2 taper and renormalised.

Per window, frames without any valid pixel are left out (exactly equivalent to masking them), and
windows with similar frame counts are batched together, padded with masked frames to a multiple
of `frame_bucket`; memory per batch is bounded by batch_size x frames x L^2.

A window's embedding is bit-identical whatever its batch-mates: every forward pass of a frame
bucket has the same shape, because CPU and GPU kernels pick their blocking, and so their
rounding, by shape (measured: a window alone vs in a batch of 8 differed by 1.5e-7). Windows wait
for their bucket's batch across window rows, so only the last batch of each bucket in a cube is
filled up with masked dummy windows (0.2 % of the windows of a 1,008 px `tiny` task). Within a
shape, the model computes each window alike whatever its place in the batch and the thread count
(its linear layers multiply each window's rows on their own: `model.stp.WindowLinear`;
tests/test_encoder.py checks every place, 1 and 2 threads, and the AVX2 kernels), so how tasks
split an area never changes a value.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from aef_pipeline.errors import AefWarning, UserInputError
from aef_pipeline.grid import RESOLUTION_M
from aef_pipeline.model import ModelSpec, Provenance, STPEncoder
from aef_pipeline.model.timecode import to_ms
from aef_pipeline.plan import Period
from aef_pipeline.sentinel2 import QUANTIFICATION


class DeviceFallbackWarning(AefWarning):
    """`device="auto"` found no GPU and runs on the CPU."""


@dataclass(frozen=True)
class EncodeOptions:
    """How to run the encoder; none of these change the result beyond float rounding."""

    device: str = "auto"
    """"auto" (CUDA when present, else CPU with a warning), "cpu", "cuda" or "cuda:N"."""
    batch_size: int = 8
    """Windows per forward pass."""
    overlap: bool = False
    """Windows every half core, blended; needs `required_halo(spec, True)` pixels of halo."""
    frame_bucket: int = 8
    """Frame counts are padded up to a multiple of this, so windows batch together."""
    read_rows: int = 512
    """Cube rows read at once, each once: set it to the lazy cube's chunk rows (the pipeline
    loads chunks of this many rows). Memory: about (read_rows + L) x width x frames x bands x 4 bytes."""
    frames_per_batch: int = 1024
    """At most this many (window, frame) pairs per forward: a batch of long time series shrinks so
    memory stays bounded whatever a year holds (a full year is 70-150 frames per window). As many
    at most wait, across window rows, for their batch to fill."""
    read_ahead: int = 1
    """Row blocks read on a background thread while the encoder works on the current one, so that
    reads and forward passes overlap; 0 reads each block only when it is needed. Memory: this
    many more blocks."""


@dataclass(frozen=True)
class _Window:
    row: int
    """Top-left pixel of the window in the cube."""
    col: int
    frames: np.ndarray
    """Indices of the cube frames with a valid pixel in this window."""


@dataclass(frozen=True)
class _Batch:
    windows: list[_Window]
    size: int
    """Windows in the forward pass, dummies included: fixed per frame bucket."""
    frames: int
    """Frames per window in the forward pass: the bucket's padded count."""


def required_halo(spec: ModelSpec, overlap: bool) -> int:
    """Pixels a cube needs around the area it encodes: the window context, plus half a core when
    overlapping windows reach past the area's edge."""
    return spec.context + (spec.core // 2 if overlap else 0)


def check_device_name(name: str) -> None:
    """Refuse a device name no machine could have, before a run starts (whether CUDA exists is
    decided where the encoder runs: the workers may have GPUs the client lacks)."""
    if name not in ("auto", "cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise UserInputError(f"device {name!r} is not understood: use auto, cpu, cuda or cuda:N")


def resolve_device(name: str) -> torch.device:
    """The torch device for `name`; a missing GPU is an error unless "auto" was asked for."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        warnings.warn("no CUDA device found: encoding on the CPU (slow for large areas)", DeviceFallbackWarning, 2)
        return torch.device("cpu")
    check_device_name(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"device {name!r} requested but CUDA is not available: use --device cpu or auto")
    return torch.device(name)


def encode_cube(
    cube: xr.Dataset,
    period: Period,
    model: STPEncoder,
    spec: ModelSpec,
    options: EncodeOptions = EncodeOptions(),
    *,
    provenance: Provenance,
    turn: AbstractContextManager[Any] | None = None,
) -> xr.Dataset:
    """Embeddings of the cube's inner area (the cube minus `required_halo` on each side).

    `turn` is held around each forward pass: tasks that share a model in one process (a worker
    running two tasks per GPU) pass the same lock, so their passes never compete for the device,
    and one task's reads and window preparation (cutting, normalising: a third of `encode_cube`'s
    time on a CPU) run while the other's pass does. Holding it for a task's whole cube instead
    left that preparation serial: figure 8 of docs/performance.md fell from 0.87 to 0.66.

    Returns `embedding` (dim, y, x) float32 unit vectors, NaN where a pixel had no valid
    observation, and `observations` (y, x) int16, the valid frames per pixel. The attributes say
    which model made them and whether its weights are trained (`provenance`, from build_model).
    """
    _check_bands(cube, spec)
    halo = required_halo(spec, options.overlap)
    height, width = _inner_shape(cube, spec, halo)
    device = resolve_device(options.device)
    model = model.to(device)
    stride = spec.core // 2 if options.overlap else spec.core
    times = cube.time.values.astype("datetime64[ms]").astype(np.int64)
    period_ms = torch.tensor([to_ms(period.start), to_ms(period.end)], dtype=torch.int64)
    # Sums of at most four tapered unit vectors. Filled, not np.zeros: zeros are mapped lazily,
    # and adding into them faults every page twice (read the shared zero page, then copy on write):
    # 0.9 s instead of 0.2 s per 1,008^2 px task (2026-12-06).
    total = np.full((spec.output_dim, height, width), 0, np.float32)
    observations = np.zeros((cube.sizes["y"], cube.sizes["x"]), np.int16)  # filled as the cube is read
    held: dict[tuple[int, int], _WindowInput] = {}  # inputs of the windows waiting for their batch

    def windows() -> Iterator[_Window]:
        for row_block, row in _window_rows(cube, spec, stride, (height, width), options, observations):
            for window in row:
                held[window.row, window.col] = _window_input(row_block, window, times, spec)
                yield window

    for batch in _batches(windows(), options):
        stacked = _stack(batch, [held.pop((window.row, window.col)) for window in batch.windows])
        with turn or nullcontext():  # the batch is stacked before: the device never waits for it
            vectors = _run(model, stacked, len(batch.windows), period_ms, device)
        _accumulate(total, vectors, batch.windows, spec, halo, options.overlap)
    field = _assemble(cube, total, observations, halo, height, width, spec)
    field.attrs.update(
        model=spec.name,
        model_weights=provenance.description,
        model_trained=int(provenance.trained),
        valid_period=f"[{period.start.isoformat()}, {period.end.isoformat()})",
    )
    return field


def _check_bands(cube: xr.Dataset, spec: ModelSpec) -> None:
    got = tuple(str(b) for b in cube.band.values)
    if got != spec.bands:
        raise UserInputError(
            f"the cube's bands {', '.join(got)} do not match model {spec.name}'s {', '.join(spec.bands)} "
            "(count and order): preprocess with the spec's bands"
        )


def _inner_shape(cube: xr.Dataset, spec: ModelSpec, halo: int) -> tuple[int, int]:
    rows, cols = cube.sizes["y"], cube.sizes["x"]
    height, width = rows - 2 * halo, cols - 2 * halo
    if height < spec.core or width < spec.core:
        raise UserInputError(
            f"the cube ({rows} x {cols} px) is smaller than one {spec.window} px window of model {spec.name} "
            f"with its {halo} px halo: load at least {spec.core + 2 * halo} px per side"
        )
    affine = cube.odc.geobox.affine
    col0 = round(affine.c / RESOLUTION_M) + halo
    row0 = round(affine.f / RESOLUTION_M) - halo  # northing index of the inner area's top edge
    if height % spec.core or width % spec.core or col0 % spec.core or row0 % spec.core:
        raise UserInputError(
            f"the cube's inner area ({height} x {width} px at column {col0}, northing row {row0}) is not made "
            f"of whole {spec.core} px window cores of the global grid: load a tile (or a piece of one on "
            f"{spec.core} px boundaries) padded by {halo} px"
        )
    return height, width


def _window_rows(
    cube: xr.Dataset,
    spec: ModelSpec,
    stride: int,
    shape: tuple[int, int],
    options: EncodeOptions,
    observations: np.ndarray,
) -> Iterator[tuple[tuple[np.ndarray, np.ndarray], list[_Window]]]:
    """One row of windows at a time (bounded memory).

    The cube is read in consecutive blocks of `read_rows` rows (a lazy cube's chunk rows, see
    load_selection), each block exactly once and up to `read_ahead` blocks ahead; the rows a later
    window row still needs (windows overlap by their context) stay in memory instead of being read
    again. `observations` (the cube's rows x columns) receives each pixel's count of valid frames
    as its block is read.

    Window k's input starts at cube pixel k * stride on each axis: without overlap its core is
    the k-th core of the inner area; with overlap the cores start half a core before the area
    and step by half a core, one more per axis.
    """
    height, width = shape
    extra = 0 if stride == spec.core else 1
    tops = list(range(0, (height // stride + extra) * stride, stride))
    held = _Rows(0, *_no_rows(cube))  # the rows a later window row needs, from blocks already read
    pending = 0  # index of the next window row to yield
    for start, block in _read_blocks(cube, options.read_rows, options.read_ahead):
        reflectance = np.asarray(block.reflectance.values, dtype=np.float32)  # (T, C, rows, W)
        valid = np.asarray(block.valid.values, dtype=bool) & np.isfinite(reflectance).all(axis=1)
        observations[start : start + block.sizes["y"]] = valid.sum(axis=0)
        read = _Rows(start, reflectance, valid)
        while pending < len(tops) and tops[pending] + spec.window <= read.end:
            row = _rows(held, read, tops[pending], spec.window)
            yield (row.reflectance, row.valid), _row_windows(tops[pending], row.valid, spec, stride, width, extra)
            pending += 1
        # A copy: a view would keep the whole block in memory while the next one is read.
        held = _rows(held, read, tops[pending] if pending < len(tops) else read.end, copy=True)


@dataclass(frozen=True)
class _Rows:
    """Consecutive rows of the cube in memory, from cube row `first`."""

    first: int
    reflectance: np.ndarray
    """(T, C, rows, W)"""
    valid: np.ndarray
    """(T, rows, W)"""

    @property
    def end(self) -> int:
        return self.first + int(self.valid.shape[1])


def _no_rows(cube: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    frames, bands, cols = cube.sizes["time"], cube.sizes["band"], cube.sizes["x"]
    return np.zeros((frames, bands, 0, cols), np.float32), np.zeros((frames, 0, cols), bool)


def _rows(held: _Rows, read: _Rows, top: int, count: int | None = None, copy: bool = False) -> _Rows:
    """Cube rows [top, top + count) (count None: to the end of `read`) from the rows held, which
    end where the block just read starts, and that block: a view of the block where they lie in it
    (unless `copy`), else one copy of just those rows (not of the whole block, which took a second
    per 1,008^2 px task, 2026-12-06)."""
    stop = read.end if count is None else top + count
    if top >= read.first:
        cut = slice(top - read.first, stop - read.first)
        reflectance, valid = read.reflectance[:, :, cut], read.valid[:, cut]
        return _Rows(top, reflectance.copy(), valid.copy()) if copy else _Rows(top, reflectance, valid)
    before, after = slice(top - held.first, None), slice(0, stop - read.first)
    return _Rows(
        top,
        np.concatenate([held.reflectance[:, :, before], read.reflectance[:, :, after]], axis=2),
        np.concatenate([held.valid[:, before], read.valid[:, after]], axis=1),
    )


def _read_blocks(cube: xr.Dataset, rows: int, ahead: int) -> Iterator[tuple[int, xr.Dataset]]:
    """(first row, block in memory) of each `rows`-row block of the cube, in order, with up to
    `ahead` blocks computed on a background thread while the caller works on the current one.
    Each block is one compute of both variables: they share their reads (the mask needs every
    band). The reads run on the dask scheduler the caller set (a task's read threads)."""
    starts = list(range(0, cube.sizes["y"], rows))

    def read(start: int) -> xr.Dataset:
        return cube[["reflectance", "valid"]].isel(y=slice(start, start + rows)).compute()

    if ahead < 1:
        yield from ((start, read(start)) for start in starts)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="aef-read-ahead") as pool:
        queued = deque(pool.submit(read, start) for start in starts[:ahead])
        following = iter(starts[ahead:])
        try:
            for start in starts:
                block = queued.popleft().result()
                if (later := next(following, None)) is not None:
                    queued.append(pool.submit(read, later))  # read while the caller encodes this block
                yield start, block
        finally:
            for future in queued:
                future.cancel()


def _row_windows(top: int, valid: np.ndarray, spec: ModelSpec, stride: int, width: int, extra: int) -> list[_Window]:
    """The windows of one row that have any valid pixel, each with the frames that have one."""
    windows = []
    for left in range(0, (width // stride + extra) * stride, stride):
        frames = np.flatnonzero(valid[:, :, left : left + spec.window].any(axis=(1, 2)))
        if frames.size:
            windows.append(_Window(top, left, frames))
    return windows


def _batches(windows: Iterable[_Window], options: EncodeOptions) -> Iterator[_Batch]:
    """Windows grouped by padded frame count into batches whose shape depends only on that count.

    A bucket's batch runs as soon as it is full; windows wait for it across window rows, so only
    the last batch of each bucket in a cube is filled up with dummy windows (see the module's
    docstring). At most `frames_per_batch` (window, frame) pairs wait: past that, the bucket
    holding most of them runs, short, to keep memory bounded.
    """
    waiting: dict[int, list[_Window]] = defaultdict(list)
    for window in windows:
        frames = math.ceil(window.frames.size / options.frame_bucket) * options.frame_bucket
        waiting[frames].append(window)
        if len(waiting[frames]) == _batch_size(frames, options):
            yield _Batch(waiting.pop(frames), _batch_size(frames, options), frames)
        elif sum(len(members) * f for f, members in waiting.items()) > options.frames_per_batch:
            largest = max(waiting, key=lambda f: len(waiting[f]) * f)
            yield _Batch(waiting.pop(largest), _batch_size(largest, options), largest)
    for frames in sorted(waiting):
        yield _Batch(waiting[frames], _batch_size(frames, options), frames)


def _batch_size(frames: int, options: EncodeOptions) -> int:
    """Windows per forward pass for windows of `frames` (padded) frames: fixed per bucket."""
    return max(1, min(options.batch_size, options.frames_per_batch // frames))


@dataclass(frozen=True)
class _WindowInput:
    x: np.ndarray
    """(frames, bands, L, L) normalised, zero where invalid."""
    valid: np.ndarray
    """(frames, L, L) bool."""
    t_ms: np.ndarray
    """(frames,) acquisition times."""


def _window_input(
    row_block: tuple[np.ndarray, np.ndarray], window: _Window, times: np.ndarray, spec: ModelSpec
) -> _WindowInput:
    """The window's frames, cut from its row block and normalised on their own (so a value never
    depends on what else is in the batch). Only the frames with a valid pixel in the window are
    normalised: normalising each block once instead, though windows overlap, was slower on the
    test bed (3.2 vs 2.2 s per 1,024^2 px cube of 40 frames)."""
    reflectance, valid = row_block
    cols = slice(window.col, window.col + spec.window)
    # Columns first (a view), then the frames: a copy of the window, not of the whole row of
    # windows (which took half of encode_cube's host time, 2026-12-06).
    mask = valid[:, :, cols][window.frames]
    x = normalise(reflectance[:, :, :, cols][window.frames][None], mask[None], spec)[0]
    return _WindowInput(x, mask, times[window.frames])


def _stack(batch: _Batch, inputs: list[_WindowInput]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch's inputs, (batch.size, frames, ...) each. Rows past the windows are dummies: no
    valid pixel, so they compute but influence nothing."""
    bands, size = inputs[0].x.shape[1], inputs[0].x.shape[-1]
    x = np.zeros((batch.size, batch.frames, bands, size, size), np.float32)
    mask = np.zeros((batch.size, batch.frames, size, size), bool)
    t = np.zeros((batch.size, batch.frames), np.int64)
    for i, window in enumerate(inputs):
        n = window.t_ms.size
        x[i, :n], mask[i, :n], t[i, :n] = window.x, window.valid, window.t_ms
    return x, mask, t


def _run(
    model: STPEncoder,
    stacked: tuple[np.ndarray, np.ndarray, np.ndarray],
    windows: int,
    period_ms: torch.Tensor,
    device: torch.device,
) -> np.ndarray:
    """(windows, dim, L, L) unit vectors of the first `windows` rows of a stacked batch."""
    x, mask, t = (torch.from_numpy(array).to(device) for array in stacked)
    with torch.inference_mode(), autocast_for(device):
        out: torch.Tensor = model(x, mask, t, period_ms.expand(x.shape[0], 2).to(device))
    vectors: np.ndarray = out[:windows].float().cpu().numpy()
    return vectors


def normalise(reflectance: np.ndarray, valid: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The spec's input scaling: log1p of the harmonised DN (reflectance * 10000, negatives at 0),
    per-band z-score, clipped; zero where invalid (and the mask says so). Valid pixels must be
    finite (encode_cube's mask says so); NaN elsewhere is replaced by the zero, not cleaned first
    (nan_to_num was a third of this function's time)."""
    shape = (1, 1, len(spec.bands), 1, 1)
    mean = np.asarray(spec.normalisation.mean, np.float32).reshape(shape)
    std = np.asarray(spec.normalisation.std, np.float32).reshape(shape)
    clip = spec.normalisation.clip
    with np.errstate(invalid="ignore"):
        dn = np.clip(reflectance * QUANTIFICATION, 0, None)
        scaled = np.clip((np.log1p(dn) - mean) / std, -clip, clip).astype(np.float32)
    return np.where(valid[:, :, None], scaled, np.float32(0.0))


def autocast_for(device: torch.device) -> torch.autocast:
    # bf16 on CUDA (tensor cores); float32 on CPU, where bf16 is slower and less exact.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _accumulate(
    total: np.ndarray, vectors: np.ndarray, batch: list[_Window], spec: ModelSpec, halo: int, overlap: bool
) -> None:
    """Add each window's core (tapered when overlapping) into the inner-area total."""
    core, context = spec.core, spec.context
    taper = _taper(core) if overlap else np.ones((core, core), np.float32)
    for window, vector in zip(batch, vectors, strict=True):
        top, left = window.row + context - halo, window.col + context - halo  # core origin, inner coords
        rows = slice(max(top, 0), min(top + core, total.shape[1]))
        cols = slice(max(left, 0), min(left + core, total.shape[2]))
        crop_r = slice(rows.start - top, rows.stop - top)
        crop_c = slice(cols.start - left, cols.stop - left)
        weight = taper[crop_r, crop_c]
        total[:, rows, cols] += (
            vector[:, context : context + core, context : context + core][:, crop_r, crop_c] * weight
        )


def _taper(core: int) -> np.ndarray:
    """sin^2 weights over a core: with half-core steps they sum to one along each axis."""
    ramp = np.sin(np.pi * (np.arange(core) + 0.5) / core) ** 2
    return np.outer(ramp, ramp).astype(np.float32)


def _assemble(
    cube: xr.Dataset, total: np.ndarray, counts: np.ndarray, halo: int, height: int, width: int, spec: ModelSpec
) -> xr.Dataset:
    inner = cube.isel(y=slice(halo, halo + height), x=slice(halo, halo + width))
    observations = xr.DataArray(counts[halo : halo + height, halo : halo + width], dims=("y", "x"))
    norm = np.linalg.norm(total, axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.divide(total, norm, out=total)  # in place: a new array of this size costs its page faults
    unit[:, observations.values == 0] = np.nan
    unit[:, (norm[0] == 0)] = np.nan
    embedding = xr.DataArray(unit, dims=("dim", "y", "x"), coords={"dim": np.arange(spec.output_dim)})
    out = xr.Dataset({"embedding": embedding, "observations": observations}).assign_coords(
        y=inner.y, x=inner.x, spatial_ref=inner.spatial_ref
    )
    return out.drop_vars([name for name in out.coords if name not in ("dim", "y", "x", "spatial_ref")])


def seam_ratio(embedding: np.ndarray, core: int) -> float:
    """Mean cosine similarity of neighbouring pixels across window-core boundaries divided by the
    same within cores (1.0: no visible seams). `embedding` (dim, H, W) starts on a core boundary."""
    across, within = [], []
    for axis in (1, 2):
        a = np.take(embedding, np.arange(embedding.shape[axis] - 1), axis=axis)
        b = np.take(embedding, np.arange(1, embedding.shape[axis]), axis=axis)
        cosine = (a * b).sum(axis=0)  # unit vectors
        boundary = (np.arange(embedding.shape[axis] - 1) + 1) % core == 0
        lines = cosine if axis == 2 else cosine.T
        across.append(lines[:, boundary].ravel())
        within.append(lines[:, ~boundary].ravel())
    return float(np.nanmean(np.concatenate(across)) / np.nanmean(np.concatenate(within)))


__all__ = [
    "DeviceFallbackWarning",
    "EncodeOptions",
    "Provenance",
    "encode_cube",
    "required_halo",
    "resolve_device",
    "seam_ratio",
]
