"""Training throughput: windows per second of whole training steps, and model FLOP utilisation on GPUs.

    python benchmarks/training_throughput.py                                   # tiny on the CPU
    python benchmarks/training_throughput.py --spec paper --device cuda --batch-sizes 4,8,16 --frames 64

A step is what `aef-pipeline train` does per batch: collate and split the windows into targets,
teacher and student (views.py), the teacher's and the student's encoder passes with three period
summaries, the vMF sample and implicit decoder, the three losses, backward, gradient clipping and
AdamW. The windows are synthetic (random DN, every pixel clear, frames spread over a year) and held
in memory, so the figure is the model's, not the reader's. On CUDA the encoder runs under bf16
autocast, with activation checkpointing for specs deeper than 4 blocks, as the engine does.

FLOPs per step are estimated as 3 x the forward FLOPs (torch's counter, backward = 2 x forward) of
the teacher's and the student's encoder passes; checkpointing recomputes a forward, which this
figure does not count (MFU is then a lower bound of the hardware's use).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import time
from pathlib import Path

import numpy as np
import torch

from aef_pipeline.encode import autocast_for
from aef_pipeline.model import ModelSpec, load_spec
from aef_pipeline.model.flops import flops_per_window
from aef_pipeline.model.timecode import MS_PER_DAY, to_ms
from aef_pipeline.model.weights import initialise, parameter_count
from aef_pipeline.training.engine import TrainingModule, TrainRequest, make_optimizer, to_device
from aef_pipeline.training.trainset import TrainingWindow
from aef_pipeline.training.views import StepViews, TargetPolicy, collate, split_views
from benchmarks.encoding import BF16_PEAK_FLOPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="8", help="comma-separated windows per step")
    parser.add_argument("--frames", type=int, default=32, help="frames per window (the paper: 65 of Sentinel-2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per batch size (after one warm-up step)")
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = load_spec(args.spec)
    module = TrainingModule(spec)
    initialise(module, 0)
    module.encoder.checkpointing = spec.depth > 4 and device.type == "cuda"
    module.to(device)
    optimizer = make_optimizer(module, TrainRequest(Path("."), args.spec, Path(".")))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{spec.name}: {parameter_count(module.encoder):,} encoder parameters, {args.frames} frames, on {name}")
    print(f"{'batch':>6} {'s/step':>8} {'windows/s':>10} {'TFLOP/s':>8} {'MFU':>7}")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        seconds, flops = _time_steps(module, optimizer, spec, batch, args.frames, args.steps, device)
        peak = _peak(name)
        mfu = f"{flops / seconds / peak:.1%}" if peak else "-"
        print(f"{batch:>6} {seconds:>8.3f} {batch / seconds:>10.2f} {flops / seconds / 1e12:>8.3f} {mfu:>7}")


def _time_steps(
    module: TrainingModule,
    optimizer: torch.optim.Optimizer,
    spec: ModelSpec,
    batch: int,
    frames: int,
    steps: int,
    device: torch.device,
) -> tuple[float, float]:
    """Mean seconds per step after a warm-up step, and the step's estimated FLOPs."""
    windows = [_window(frames, spec.window, seed) for seed in range(batch)]
    rng = np.random.default_rng(0)
    counted = 0.0
    elapsed = []
    for step in range(steps + 1):
        start = time.perf_counter()
        views = to_device(split_views(collate(windows, spec), rng, TargetPolicy()), device)
        noise = torch.Generator(device=device).manual_seed(step)
        with autocast_for(device):
            terms = module(views, noise)
        loss = torch.stack(list(terms.values())).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:
            elapsed.append(time.perf_counter() - start)
        counted = _step_flops(spec, views)
    return float(np.mean(elapsed)), counted


def _step_flops(spec: ModelSpec, views: StepViews) -> float:
    """3 x forward FLOPs of the teacher's and student's passes, per window summed over the batch."""
    total = 0.0
    for view in (views.teacher, views.student):
        for count in view.present.sum(dim=1).tolist():
            total += _forward_flops(spec, max(1, int(count)))
    return 3 * total


@functools.cache
def _forward_flops(spec: ModelSpec, frames: int) -> int:
    return flops_per_window(spec, frames)


def _window(frames: int, size: int, seed: int) -> TrainingWindow:
    rng = np.random.default_rng(seed)
    start, end = to_ms(dt.datetime(2022, 1, 1, tzinfo=dt.UTC)), to_ms(dt.datetime(2023, 1, 1, tzinfo=dt.UTC))
    t_ms = np.sort(rng.choice(np.arange(start, end, MS_PER_DAY), size=frames, replace=False))
    dn = rng.integers(500, 4000, size=(frames, 5, size, size)).astype(np.uint16)
    return TrainingWindow(dn=dn, clear=np.ones((frames, size, size), bool), t_ms=t_ms, period_ms=(start, end))


def _peak(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_FLOPS if key in name), None)


if __name__ == "__main__":
    main()
