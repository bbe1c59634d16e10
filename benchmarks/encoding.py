"""Figure 1: encoder pixels/s and FLOPs per pixel for a spec, on a cube held in memory.

The cube is read once before timing; the timed part is encode_cube alone (windows, batches,
normalisation, forward passes, assembly). FLOPs are counted by torch's FLOP counter for a window
with all the cube's frames (an upper bound: windows without data in a frame drop it).
On CUDA, bf16 autocast is used (as the pipeline does) and the batch size is swept; model FLOP
utilisation is achieved FLOP/s over the GPU's dense bf16 peak.
"""

from __future__ import annotations

import time

import torch
import xarray as xr
from odc.geo.geobox import GeoBox

from aef_pipeline.encode import EncodeOptions, encode_cube, resolve_device
from aef_pipeline.model import build_model, load_spec, parameter_count
from aef_pipeline.model.flops import flops_per_window
from aef_pipeline.plan import Period
from benchmarks.report import Figure

# Dense bf16 tensor-core peaks (NVIDIA data sheets), by a substring of torch's device name.
BF16_PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12))


def encoder_rate(
    cube: xr.Dataset, area: GeoBox, spec_name: str, device: str, batch_sizes: tuple[int, ...], period: Period
) -> Figure:
    spec = load_spec(spec_name)
    model, provenance = build_model(spec)
    frames = cube.sizes["time"]
    pixels = area.shape[0] * area.shape[1]
    windows = (area.shape[0] // spec.core) * (area.shape[1] // spec.core)
    flops = flops_per_window(spec, frames) * windows
    runs = {}
    for batch in batch_sizes:
        options = EncodeOptions(device=device, batch_size=batch)
        if resolve_device(device).type == "cuda":  # warm-up: kernels, allocator
            encode_cube(cube, period, model, spec, options, provenance=provenance)
            torch.cuda.synchronize()
        start = time.perf_counter()
        encode_cube(cube, period, model, spec, options, provenance=provenance)
        runs[batch] = time.perf_counter() - start
    batch, seconds = min(runs.items(), key=lambda kv: kv[1])
    details = {
        "spec": spec.name,
        "parameters": parameter_count(model),
        "device": device,
        "frames": frames,
        "windows": windows,
        "pixels": pixels,
        "seconds": seconds,
        "batch_size": batch,
        "seconds_by_batch": runs,
        "flop_per_pixel": flops / pixels,
        "flop_per_s": flops / seconds,
    }
    note = f"{flops / pixels:.3g} FLOP/px, {flops / seconds / 1e9:.3g} GFLOP/s"
    peak = _peak(device)
    if peak:
        details["mfu"] = flops / seconds / peak
        note += f", MFU {details['mfu']:.1%} of {peak / 1e12:.0f} TFLOP/s bf16"
    return Figure(
        1,
        f"encoder {spec.name} on {device}",
        pixels / seconds,
        "px/s",
        sizes=f"{area.shape[0]}x{area.shape[1]} px, {frames} frames, {windows} windows, batch {batch}",
        note=note,
        details=details,
    )


def _peak(device: str) -> float | None:
    if resolve_device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK_FLOPS if key in name), None)
