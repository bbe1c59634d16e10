"""What each network pass of a training step sees: held-out targets, the teacher's view, the student's.

    batch = collate(windows, spec)                          # training windows -> padded tensors
    step = split_views(batch, generator, TargetPolicy())     # targets, teacher, student, periods

Per window (the paper's supplement S2.2-S2.4; FIELD-NOTES section 9):
- **Targets**: a share of the window's frames is held out. They are decoded from the embedding
  and are removed from every encoder input: the teacher's and student's frame tensors are
  gathered from the kept frames only, so no value of a held-out frame reaches the encoder (the
  seed repository decoded frames it also fed in: an identity leak).
- **Teacher**: every other frame. It is summarised twice, over the support period (the
  reconstruction: every target's summary period is the support, which contains it and lasts more
  than 4 days) and over the consistency period below.
- **Student**: the teacher's frames, perturbed per window by one of three, drawn with equal odds:
  `drop`: half of the frames dropped at random, summarised over a random period of more than
  4 days inside the support; `forecast`: the last six months dropped, and summarised (the period is
  those six months); `backcast`: the first six months, likewise. Teacher and student share this
  consistency period.

All draws come from the generator passed in, so a step's views are a function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch

from aef_pipeline.encode import normalise
from aef_pipeline.model.spec import ModelSpec
from aef_pipeline.model.timecode import MS_PER_DAY
from aef_pipeline.sentinel2 import QUANTIFICATION
from aef_pipeline.training.text import TextPairs
from aef_pipeline.training.trainset import TrainingWindow

# The paper's shortest summary period: "> 4 days".
MIN_PERIOD_MS = 4 * MS_PER_DAY + 1
# Half a year, for forecasting and backcasting.
HALF_YEAR_MS = round(365.25 / 2 * MS_PER_DAY)


class Perturbation(IntEnum):
    """How the student's view differs from the teacher's."""

    DROP = 0
    FORECAST = 1
    BACKCAST = 2


@dataclass(frozen=True)
class TargetPolicy:
    """How many frames of a window are held out as reconstruction targets."""

    share: float = 0.25
    """Held-out share of a window's frames (at least one)."""
    most: int = 4
    """At most this many per window: decoding costs one decoder pass per target pixel."""
    drop_share: float = 0.5
    """Share of the teacher's frames the `drop` perturbation removes (the paper's 50 %)."""


@dataclass(frozen=True)
class FrameBatch:
    """Windows of frames as the encoder takes them, padded to the batch's longest window."""

    x: torch.Tensor
    """(B, T, C, L, L) float32, normalised, zero where not valid."""
    valid: torch.Tensor
    """(B, T, L, L) bool: what the encoder may read (clear pixels, or every observed pixel when
    the spec does not mask clouds); padded frames are all False."""
    clear: torch.Tensor
    """(B, T, L, L) bool: clear-sky pixels, the loss weights of a decoded frame."""
    t_ms: torch.Tensor
    """(B, T) int64 acquisition times; padding repeats nothing meaningful (0)."""
    present: torch.Tensor
    """(B, T) bool: a real frame, not padding."""
    support_ms: torch.Tensor
    """(B, 2) int64: the support period [start, end) of each window."""


@dataclass(frozen=True)
class StepViews:
    """Everything one training step feeds the networks."""

    teacher: FrameBatch
    student: FrameBatch
    targets: FrameBatch
    """The held-out frames (x holds their normalised values, clear their loss weights)."""
    consistency_ms: torch.Tensor
    """(B, 2) int64: the period teacher and student both summarise for the consistency term."""
    perturbation: torch.Tensor
    """(B,) int64: the Perturbation drawn for each window."""
    text: TextPairs | None = None
    """Text vectors at pixels of the windows, when the run aligns with text."""


def collate(windows: list[TrainingWindow], spec: ModelSpec) -> FrameBatch:
    """Training windows as one padded batch, normalised with the spec's constants."""
    frames = max(w.t_ms.size for w in windows)
    b, c, size = len(windows), len(spec.bands), spec.window
    dn = np.zeros((b, frames, c, size, size), np.uint16)
    clear = np.zeros((b, frames, size, size), bool)
    t_ms = np.zeros((b, frames), np.int64)
    present = np.zeros((b, frames), bool)
    for i, window in enumerate(windows):
        n = window.t_ms.size
        dn[i, :n], clear[i, :n], t_ms[i, :n], present[i, :n] = window.dn, window.clear, window.t_ms, True
    # DN 0 is nodata; an observed pixel has at least one band above it.
    observed: np.ndarray = np.any(dn > 0, axis=2)
    valid = clear if spec.mask_clouds else observed
    x = normalise(dn.astype(np.float32) / QUANTIFICATION, valid, spec)
    support = np.asarray([w.period_ms for w in windows], np.int64)
    return FrameBatch(*(torch.from_numpy(a) for a in (x, valid, clear, t_ms, present, support)))


def split_views(batch: FrameBatch, generator: np.random.Generator, policy: TargetPolicy) -> StepViews:
    """Held-out targets, the teacher's frames and the student's perturbed frames, per window."""
    present = batch.present.numpy()
    t_ms, support = batch.t_ms.numpy(), batch.support_ms.numpy()
    targets, kept, student, periods, kinds = [], [], [], [], []
    for i in range(present.shape[0]):
        frames = np.flatnonzero(present[i])
        held = _held_out(frames, generator, policy)
        teacher = np.setdiff1d(frames, held)
        kind = Perturbation(int(generator.integers(3)))
        period = _consistency_period(kind, support[i], generator)
        targets.append(held)
        kept.append(teacher)
        student.append(_student_frames(kind, teacher, t_ms[i], support[i], generator, policy))
        periods.append(period)
        kinds.append(kind)
    return StepViews(
        teacher=gather_frames(batch, kept),
        student=gather_frames(batch, student),
        targets=gather_frames(batch, targets),
        consistency_ms=torch.as_tensor(np.asarray(periods, np.int64)),
        perturbation=torch.as_tensor(np.asarray(kinds, np.int64)),
    )


def gather_frames(batch: FrameBatch, frames: list[np.ndarray]) -> FrameBatch:
    """A batch holding, for window i, only its frames `frames[i]` (in order), padded with empty
    frames. Indexing copies: a frame left out has no path to the result, so its gradient is zero."""
    width = max(1, max(len(f) for f in frames))
    index = np.zeros((len(frames), width), np.int64)
    present = np.zeros((len(frames), width), bool)
    for i, chosen in enumerate(frames):
        index[i, : len(chosen)], present[i, : len(chosen)] = chosen, True
    rows = torch.arange(len(frames))[:, None]
    pick, keep = torch.from_numpy(index), torch.from_numpy(present)
    image_keep = keep[:, :, None, None]
    return FrameBatch(
        x=torch.where(image_keep[:, :, None], batch.x[rows, pick], 0.0),
        valid=batch.valid[rows, pick] & image_keep,
        clear=batch.clear[rows, pick] & image_keep,
        t_ms=torch.where(keep, batch.t_ms[rows, pick], 0),
        present=keep,
        support_ms=batch.support_ms,
    )


def _held_out(frames: np.ndarray, generator: np.random.Generator, policy: TargetPolicy) -> np.ndarray:
    """The target frames: a random share, at least one, at most `policy.most`; never every frame
    of a window that has more than one (the teacher must see something)."""
    if frames.size < 2:
        return frames[:0]
    count = min(policy.most, frames.size - 1, max(1, round(policy.share * frames.size)))
    return np.sort(generator.choice(frames, size=count, replace=False))


def _consistency_period(kind: Perturbation, support: np.ndarray, generator: np.random.Generator) -> tuple[int, int]:
    """The period teacher and student summarise: random (> 4 days) for `drop`, else the dropped half-year."""
    start, end = int(support[0]), int(support[1])
    if kind == Perturbation.FORECAST:
        return max(start, end - HALF_YEAR_MS), end
    if kind == Perturbation.BACKCAST:
        return start, min(end, start + HALF_YEAR_MS)
    length = int(generator.integers(min(MIN_PERIOD_MS, end - start), end - start + 1))
    first = start + int(generator.integers(0, end - start - length + 1))
    return first, first + length


def _student_frames(
    kind: Perturbation,
    teacher: np.ndarray,
    t_ms: np.ndarray,
    support: np.ndarray,
    generator: np.random.Generator,
    policy: TargetPolicy,
) -> np.ndarray:
    """The teacher's frames the student keeps."""
    times = t_ms[teacher]
    if kind == Perturbation.FORECAST:
        kept: np.ndarray = teacher[times < int(support[1]) - HALF_YEAR_MS]
        return kept
    if kind == Perturbation.BACKCAST:
        kept = teacher[times >= int(support[0]) + HALF_YEAR_MS]
        return kept
    keep = teacher.size - round(policy.drop_share * teacher.size)
    return np.sort(generator.choice(teacher, size=keep, replace=False))
