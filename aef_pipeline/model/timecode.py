"""Sinusoidal timecodes that resolve days across decades.

Timestamps are integer milliseconds since the Unix epoch. They are turned into days since a fixed
epoch in float64 *before* any multiplication by a frequency, and cast to float32 only after the
sine: float32 milliseconds (~1.6e12) are spaced 131 s apart, and their products with high
frequencies lose the date entirely (the bug of the community sketch, FIELD-NOTES section 1).
"""

from __future__ import annotations

import datetime as dt
import math

import torch

from aef_pipeline.model.spec import TimecodeSpec

# Days are counted from here: recent enough that float64 keeps sub-millisecond resolution.
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
EPOCH_MS = int(EPOCH.timestamp() * 1000)
MS_PER_DAY = 86_400_000


def periods_days(spec: TimecodeSpec, device: torch.device | None = None) -> torch.Tensor:
    """The sinusoids' periods in days, spaced geometrically from shortest to longest (float64)."""
    return torch.logspace(
        math.log10(spec.shortest_days),
        math.log10(spec.longest_days),
        spec.frequencies,
        dtype=torch.float64,
        device=device,
    )


def timecode(t_ms: torch.Tensor, spec: TimecodeSpec) -> torch.Tensor:
    """(..., ) int64 milliseconds -> (..., 2 * frequencies) float32 [sin..., cos...]."""
    days = (t_ms.to(torch.float64) - EPOCH_MS) / MS_PER_DAY
    # Made on the timestamps' device: a host tensor copied in would break CUDA graph capture.
    phase = 2 * math.pi * days.unsqueeze(-1) / periods_days(spec, days.device)
    return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1).to(torch.float32)


def to_ms(when: dt.datetime) -> int:
    """A timezone-aware datetime as integer milliseconds since the Unix epoch."""
    if when.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return round(when.timestamp() * 1000)
