"""The training-set format (a Zarr v3 group, docs/training-set.md): its layout, how tasks write into
it and how it is finished, and the reader the training engine uses.

    windows = open_training_set(Path("train.zarr"))
    for i in range(len(windows)):
        w = windows.window_at(i)   # dn (T, C, L, L) uint16, clear (T, L, L), t_ms (T,), period_ms

`trainset.py` plans and cuts the windows; this module owns what the group holds. Every big array
has one window per chunk and every small one one task's windows per chunk, so a window costs one
chunk read per array, and a task writes only its own chunks (tasks run on many processes at once).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import zarr

from aef_pipeline import __version__
from aef_pipeline.errors import UserInputError

FORMAT_KEY = "aef:training_set"
FORMAT_VERSION = 1
TIME_PADDING = -1
"""`time_ms` of the frame slots past a window's `n_frames`."""

# Group attributes.
BANDS = "aef:bands"
WINDOW = "aef:window"
MODEL = "aef:model"
REQUEST = "aef:request"
TASKS = "aef:tasks"
FINISHED = "aef:finished"
NORMALISATION = "aef:normalisation"
FINGERPRINT = "aef:fingerprint"
# What a resumed build must share with the set it finishes.
IDENTITY = (FORMAT_KEY, BANDS, WINDOW, MODEL, REQUEST, TASKS)
# The arrays with a leading `window` dimension: a task writes its slots of each.
WINDOW_ARRAYS = ("dn", "clear", "time_ms", "scene_ids", "n_frames", "period_ms", "transform", "crs", "tile")


class ArraySpec(NamedTuple):
    """One array of the format: dimensions, shape, chunks, dtype (`str`: variable-length UTF-8)
    and fill value (what an unwritten or empty window reads as)."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: Any
    fill: Any


def array_layout(tasks: int, per_task: int, frames: int, bands: int, size: int) -> dict[str, ArraySpec]:
    """Every array of a set of `tasks` tasks cutting `per_task` windows of `size` px with at most
    `frames` frames of `bands` bands. Task i owns windows [i * per_task, (i + 1) * per_task)."""
    n, one = tasks * per_task, (1, frames, bands, size, size)
    return {
        "dn": ArraySpec(("window", "frame", "band", "y", "x"), (n, *one[1:]), one, np.uint16, 0),
        "clear": ArraySpec(
            ("window", "frame", "y", "x"), (n, frames, size, size), (1, frames, size, size), bool, False
        ),
        "time_ms": ArraySpec(("window", "frame"), (n, frames), (per_task, frames), np.int64, TIME_PADDING),
        "scene_ids": ArraySpec(("window", "frame"), (n, frames), (per_task, frames), str, ""),
        "n_frames": ArraySpec(("window",), (n,), (per_task,), np.int32, 0),
        "period_ms": ArraySpec(("window", "bound"), (n, 2), (per_task, 2), np.int64, 0),
        "transform": ArraySpec(("window", "coefficient"), (n, 6), (per_task, 6), np.float64, 0.0),
        "crs": ArraySpec(("window",), (n,), (per_task,), str, ""),
        "tile": ArraySpec(("window",), (n,), (per_task,), str, ""),
        "band_sums": ArraySpec(("task", "band", "moment"), (tasks, bands, 3), (1, bands, 3), np.float64, 0.0),
        "task_key": ArraySpec(("task",), (tasks,), (max(1, tasks),), str, ""),
        "task_record": ArraySpec(("task",), (tasks,), (1,), str, ""),
    }


def training_set_attrs(path: Path) -> dict[str, Any] | None:
    """The group attributes of the training set at `path`, or None when it is not one."""
    if not (path / "zarr.json").is_file():
        return None
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except (zarr.errors.GroupNotFoundError, ValueError):  # an array, or not Zarr at all
        return None
    return attrs if FORMAT_KEY in attrs else None


def open_array(path: Path, name: str, mode: Literal["r", "r+"] = "r") -> zarr.Array[Any]:
    """One array of the set at `path`."""
    return zarr.open_array(str(path / name), mode=mode)


def read(path: Path, name: str) -> np.ndarray:
    """A whole array of the set (the small ones: per-window metadata, per-task records)."""
    return np.asarray(open_array(path, name)[...])


# --- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowCut:
    """One cut window, as a task hands it to `task_blocks`: its kept frames, in time order."""

    dn: np.ndarray
    """(T, C, L, L) uint16."""
    clear: np.ndarray
    """(T, L, L) bool."""
    t_ms: np.ndarray
    scene_ids: list[str]
    """Per frame, the products fused into it, comma-separated."""
    capped: int
    """Frames with an observed pixel that max_frames left out."""


@dataclass(frozen=True)
class TaskPlace:
    """Where a task's windows lie: one affine per window position, the task's period, its grid."""

    transforms: list[tuple[float, ...]]
    period_ms: tuple[int, int]
    crs: str
    tile: str


def new_set_attrs(
    bands: Sequence[str], window: int, model: str, request: Mapping[str, Any], tasks: int
) -> dict[str, Any]:
    """The group attributes of a new set; normalisation and fingerprint come when it is finished."""
    return {
        FORMAT_KEY: FORMAT_VERSION,
        BANDS: list(bands),
        WINDOW: window,
        MODEL: model,
        REQUEST: dict(request),
        TASKS: tasks,
        "aef:dn": "harmonised DN = round(reflectance * 10000), at least 1 where observed; 0: not observed",
        "aef:transform": "affine (a, b, c, d, e, f) of each window: x = a col + b row + c, y = d col + e row + f",
        "aef:software": f"aef-pipeline {__version__}",
        FINISHED: False,
    }


def open_for_writing(
    path: Path, attrs: Mapping[str, Any], layout: Mapping[str, ArraySpec], task_keys: list[str], overwrite: bool
) -> None:
    """A new set (its template), or the set at `path` made with the same identity (`IDENTITY`),
    marked unfinished until the build finishes it. Anything else is refused, unless `overwrite`
    (then replaced), before anything is written."""
    if overwrite and path.is_dir():
        shutil.rmtree(path)
    elif overwrite and path.exists():
        path.unlink()
    existing = training_set_attrs(path)
    if existing is not None:
        check_same(path, existing, attrs)
    elif path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserInputError(f"{path} holds something that is not a training set: choose another --out or --overwrite")
    if existing is None or not all((path / name / "zarr.json").is_file() for name in layout):
        create_set(path, attrs, layout, task_keys)  # new, or a template cut off before any task ran
    else:
        set_attributes(path, {FINISHED: False})


def create_set(path: Path, attrs: Mapping[str, Any], layout: Mapping[str, ArraySpec], task_keys: list[str]) -> None:
    """The group, every array's metadata (no chunk: unwritten windows read as fill values) and the
    task keys."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes=dict(attrs))
    for name, spec in layout.items():
        group.create_array(
            name,
            shape=spec.shape,
            chunks=spec.chunks,
            dtype=spec.dtype,
            fill_value=spec.fill,
            dimension_names=spec.dims,
        )
    if task_keys:
        open_array(path, "task_key", "r+")[:] = np.array(task_keys)


def check_same(path: Path, existing: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse to resume a set made by another request (or for other bands, windows, a model)."""
    for key in IDENTITY:
        if existing.get(key) != expected[key]:
            raise UserInputError(
                f"{path} is a training set made with another {key.removeprefix('aef:')} ({existing.get(key)!r}; "
                f"this build asks for {expected[key]!r}): choose another --out or pass --overwrite"
            )


def set_attributes(path: Path, attrs: Mapping[str, Any]) -> None:
    """Add or replace group attributes (only the build's client writes them, under the lock)."""
    zarr.open_group(str(path), mode="r+").update_attributes(dict(attrs))


def task_recorded(path: Path, index: int) -> bool:
    """Whether task `index` has its record: written after its windows, so they are complete."""
    return bool(open_array(path, "task_record")[index])


def task_blocks(
    cuts: Sequence[WindowCut], place: TaskPlace, per_task: int, window_shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """A task's slots of every per-window array. Slots without a cut (a task without scenes) and
    frames past a window's own hold the fill values; `transform` is 0 only for slots without a
    position (an area with fewer positions than windows). `window_shape` is (frames, bands, L, L)."""
    frames, _, size, _ = window_shape
    blocks: dict[str, np.ndarray] = {
        "dn": np.zeros((per_task, *window_shape), np.uint16),
        "clear": np.zeros((per_task, frames, size, size), bool),
        "time_ms": np.full((per_task, frames), TIME_PADDING, np.int64),
        "scene_ids": np.full((per_task, frames), "", dtype=object),
        "n_frames": np.zeros(per_task, np.int32),
        "period_ms": np.tile(np.array(place.period_ms, np.int64), (per_task, 1)),
        "transform": np.zeros((per_task, 6), np.float64),
        "crs": np.full(per_task, place.crs, dtype=object),
        "tile": np.full(per_task, place.tile, dtype=object),
    }
    for slot, cut in enumerate(cuts):
        n = cut.t_ms.size
        blocks["dn"][slot, :n], blocks["clear"][slot, :n] = cut.dn, cut.clear
        blocks["time_ms"][slot, :n], blocks["scene_ids"][slot, :n] = cut.t_ms, cut.scene_ids
        blocks["n_frames"][slot] = n
    blocks["transform"][: len(place.transforms)] = np.array(place.transforms, np.float64).reshape(-1, 6)
    return blocks


def band_sums(cuts: Sequence[WindowCut], bands: int) -> np.ndarray:
    """(bands, 3) float64: count, sum and sum of squares of log1p(DN) over the clear pixels of the
    windows; summed over tasks they give the set's normalisation (nothing recomputed on resume)."""
    sums = np.zeros((bands, 3), np.float64)
    for cut in cuts:
        values = np.log1p(cut.dn.transpose(1, 0, 2, 3)[:, cut.clear].astype(np.float64))  # (C, clear pixels)
        sums += np.stack([np.full(bands, values.shape[1]), values.sum(axis=1), (values**2).sum(axis=1)], axis=1)
    return sums


def write_task(
    path: Path, index: int, blocks: Mapping[str, np.ndarray], sums: np.ndarray, record: Mapping[str, Any]
) -> None:
    """Task `index`'s slots of every per-window array (`blocks`, each `per_task` windows long), its
    band sums, then its record with a digest of everything written (the set's fingerprint is
    made of these, so it never needs the chunks read back)."""
    digest = hashlib.sha256()
    for name in WINDOW_ARRAYS:
        array, block = open_array(path, name, "r+"), blocks[name]
        array[index * len(block) : (index + 1) * len(block)] = block
        digest.update(_as_bytes(name, block))
    open_array(path, "band_sums", "r+")[index] = sums
    digest.update(sums.tobytes())
    open_array(path, "task_record", "r+")[index] = json.dumps({**record, "sha256": digest.hexdigest()})


def _as_bytes(name: str, block: np.ndarray) -> bytes:
    """A block's values as bytes for a digest (strings by their text, not their object pointers)."""
    if block.dtype.kind in "OTU":
        return name.encode() + "\x00".join(str(v) for v in block.ravel()).encode()
    return name.encode() + np.ascontiguousarray(block).tobytes()


def records(path: Path) -> list[dict[str, Any] | None]:
    """Each task's record, None for the tasks not (or not completely) written."""
    return [json.loads(text) if text else None for text in read(path, "task_record").tolist()]


def finish_set(path: Path, windows: int) -> str:
    """Once every task is recorded: the set's normalisation and fingerprint, and the mark that it
    is finished. Returns the fingerprint."""
    sums = read(path, "band_sums").sum(axis=0)
    attrs = training_set_attrs(path) or {}
    digests = [str(record["sha256"]) for record in records(path) if record]
    fingerprint = fingerprint_of(path, attrs, sums, digests)
    set_attributes(path, {NORMALISATION: normalisation_of(sums, windows), FINGERPRINT: fingerprint, FINISHED: True})
    return fingerprint


def normalisation_of(sums: np.ndarray, windows: int) -> dict[str, Any] | None:
    """Per band mean and (population) std of log1p(DN) from summed (count, sum, sum of squares);
    None without a clear pixel. float64 sums of values near 7 lose nothing to cancellation."""
    count, total, squares = sums[:, 0], sums[:, 1], sums[:, 2]
    if not count.min() > 0:
        return None
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return {
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "source": f"log1p(DN) over the clear pixels of this set's {windows} windows ({int(count[0])} pixel-frames)",
    }


def fingerprint_of(path: Path, attrs: Mapping[str, Any], sums: np.ndarray, digests: Sequence[str]) -> str:
    """sha256 of the set's identity (request, bands, window, model), its arrays' shapes, chunks and
    dtypes, the band sums and every task's digest (which covers every value the task wrote). Equal
    sets share it however they were split, resumed or scheduled; it says what was written, it
    does not re-read the chunks (a damaged chunk file is not seen)."""
    layout = {}
    for name in sorted(WINDOW_ARRAYS):
        array = open_array(path, name)
        layout[name] = [list(array.shape), list(array.chunks), str(array.dtype)]
    identity = {key: attrs.get(key) for key in IDENTITY}
    digest = hashlib.sha256(json.dumps({"set": identity, "layout": layout}, sort_keys=True).encode())
    digest.update(sums.tobytes())
    for task_digest in digests:
        digest.update(task_digest.encode())
    return digest.hexdigest()


# --- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingWindow:
    """One window of a training set: the frames of its support period, in time order."""

    dn: np.ndarray
    """(T, C, L, L) uint16: harmonised DN (reflectance * 10000), at least 1 where observed, 0 where
    the pixel was not observed (nodata in some band, or SCL nodata)."""
    clear: np.ndarray
    """(T, L, L) bool: observed and of a clear SCL class (the pipeline's default MaskPolicy)."""
    t_ms: np.ndarray
    """(T,) int64: acquisition times in milliseconds since the epoch, increasing."""
    period_ms: tuple[int, int]
    """The support period [start, end) in milliseconds: the task's period."""
    transform: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    """Affine (a, b, c, d, e, f) of the window's pixel corners: x = a col + b row + c, y = d col + e row + f."""
    crs: str = ""
    """The window's CRS ("EPSG:32633")."""


class TrainingSet:
    """A finished training set, opened for reading: its non-empty windows, numbered 0..len - 1.

    Safe to hand to DataLoader workers (forked or spawned): the Zarr arrays are opened on first
    use in each process, never shared across processes or pickled."""

    def __init__(self, path: Path, attrs: Mapping[str, Any], slots: np.ndarray, frames: np.ndarray) -> None:
        self.path = path
        self.bands: tuple[str, ...] = tuple(attrs[BANDS])
        self.window: int = int(attrs[WINDOW])
        norm = attrs[NORMALISATION]
        self.normalisation: tuple[tuple[float, ...], tuple[float, ...]] = (tuple(norm["mean"]), tuple(norm["std"]))
        """(means, stds) per band of log1p(DN) over the set's clear pixels."""
        self.fingerprint: str = str(attrs[FINGERPRINT])
        self._slots = slots  # the stored window index of each non-empty window
        self._frames = frames  # its frame count
        self._opened: tuple[int, dict[str, zarr.Array[Any]]] | None = None

    def __len__(self) -> int:
        return int(self._slots.size)

    def window_at(self, i: int) -> TrainingWindow:
        """The i-th non-empty window: one chunk read per array."""
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} is outside 0..{len(self) - 1} of {self.path}")
        slot, n = int(self._slots[i]), int(self._frames[i])
        arrays = self._arrays()
        start, end = np.asarray(arrays["period_ms"][slot]).tolist()
        return TrainingWindow(
            dn=np.asarray(arrays["dn"][slot, :n]),
            clear=np.asarray(arrays["clear"][slot, :n]),
            t_ms=np.asarray(arrays["time_ms"][slot, :n]),
            period_ms=(int(start), int(end)),
            transform=tuple(float(v) for v in np.asarray(arrays["transform"][slot])),
            crs=str(arrays["crs"][slot]),
        )

    def _arrays(self) -> dict[str, zarr.Array[Any]]:
        # Opened per process: zarr's I/O runs on an event loop thread that a fork does not copy.
        if self._opened is None or self._opened[0] != os.getpid():
            names = ("dn", "clear", "time_ms", "period_ms", "transform", "crs")
            self._opened = (os.getpid(), {name: open_array(self.path, name) for name in names})
        return self._opened[1]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_opened": None}

    def __repr__(self) -> str:
        return f"TrainingSet({str(self.path)!r}, {len(self)} windows of {self.window} px, bands {self.bands})"


def open_training_set(path: Path) -> TrainingSet:
    """The finished training set at `path`. Refused in one line (UserInputError) when `path` is not
    a training set, is not finished, or holds no window with a clear observation."""
    path = Path(path)
    attrs = training_set_attrs(path)
    if attrs is None:
        raise UserInputError(f"{path} is not a training set: make one with `aef-pipeline train-set --out {path}`")
    if attrs[FORMAT_KEY] != FORMAT_VERSION:
        raise UserInputError(
            f"{path} is a training set of format {attrs[FORMAT_KEY]}, this software reads {FORMAT_VERSION}: "
            "make it again with this version's `aef-pipeline train-set --overwrite`"
        )
    if not attrs.get(FINISHED):
        raise UserInputError(
            f"{path} is not finished (its train-set run stopped early or some tasks failed): "
            "run train-set again to finish it"
        )
    frames = read(path, "n_frames")
    slots = np.flatnonzero(frames > 0)
    if not slots.size or attrs.get(NORMALISATION) is None:
        raise UserInputError(
            f"{path} holds no window with a clear observation (no scene, or only clouds, in its area and "
            "periods): make it again over another bbox, other years or another catalog"
        )
    return TrainingSet(path, attrs, slots, frames[slots])


__all__ = [
    "FORMAT_VERSION",
    "TrainingSet",
    "TrainingWindow",
    "array_layout",
    "open_training_set",
    "training_set_attrs",
]
