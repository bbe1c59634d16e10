"""FLOPs of one forward pass, counted by torch's FlopCounterMode on the meta device (no memory,
no arithmetic: the paper-size model is counted in seconds on a laptop)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from aef_pipeline.model.spec import ModelSpec
from aef_pipeline.model.stp import STPEncoder


def flops_per_window(spec: ModelSpec, frames: int) -> int:
    """FLOPs (multiply and add counted separately) of encoding one window of `frames` frames."""
    with torch.device("meta"):
        model = STPEncoder(spec)
        size = spec.window
        x = torch.zeros(1, frames, len(spec.bands), size, size)
        valid = torch.ones(1, frames, size, size, dtype=torch.bool)
        t_ms = torch.zeros(1, frames, dtype=torch.int64)
        period = torch.zeros(1, 2, dtype=torch.int64)
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            model(x, valid, t_ms, period)
    return int(counter.get_total_flops())
