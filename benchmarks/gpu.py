"""The encoder on a GPU: px/s and model FLOP utilisation over batch sizes, frame counts and variants.

    python -m benchmarks.gpu --spec paper --device cuda --batch-sizes 4,8,16,32 --frames 16,40,100 \\
        --variants eager,compile,cudagraphs --seconds-per-case 8 --budget-s 420 --json gpu.json
    python -m benchmarks.gpu --spec tiny --device cpu --batch-sizes 2,4 --frames 8 --variants eager \\
        --seconds-per-case 2                                                 # a check of the script

Meant for one short call on a lent H100/H200 (benchmarks/gpu_session.sh runs it), so it is bounded:
cases start only while `--budget-s` lasts (counted from the start, setup included), the most
telling first, and every row is printed and written to the JSON as soon as it is measured.

Each case is (variant, batch, frames): synthetic windows of the spec's size held on the device
(normalised values, cloud-like invalid blobs, increasing timestamps in 2022, period = 2022), one
forward pass per iteration under inference mode and the pipeline's autocast (bf16 on CUDA, as
`encode._run`), timed with a device synchronisation after each iteration for about
`--seconds-per-case` after warm-up calls; the figure is the median iteration. Output pixels are
the windows' cores (spec.core^2 per window), as the encoder figure counts them. FLOPs are counted
by torch's counter (`flops_per_window`); MFU is over the GPU's dense bf16 datasheet peak, and also
over a bf16 matrix product measured here (the achievable ceiling). `io s` is what the pipeline
adds per batch outside the model: the inputs copied from pageable host memory and the output back.

Variants: `eager` (the model as the pipeline runs it; which SDPA kernels it uses is printed first,
and each SDPA backend is tried alone on one case), `compile` (torch.compile, default mode: the
autotuning modes take minutes per shape), `compile-max` (mode max-autotune-no-cudagraphs),
`cudagraphs` (torch.compile mode reduce-overhead: CUDA graphs of the compiled model), `graph` (a
torch.cuda.CUDAGraph captured from the eager model). Compiled variants start from a reset compiler
per case (fixed shapes, no recompilation limit); their build time is printed apart, not in the
rate. A failing case prints one line and the sweep goes on; an out-of-memory case prints OOM and
the larger batches of its variant and frame count are skipped.

Order: eager at the frame count closest to a real year (`--year-frames`) over all batch sizes;
the other variants there at eager's best batch; eager at the other frame counts; the other
variants at the remaining batch sizes; then the other variants at the other frame counts.

Last, the global annual layer at the best rate of the year's frame count: GPU-hours for all land.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from aef_pipeline.encode import EncodeOptions, autocast_for, resolve_device
from aef_pipeline.errors import UserInputError
from aef_pipeline.model import ModelSpec, STPEncoder, build_model, load_spec, parameter_count
from aef_pipeline.model.flops import flops_per_window
from aef_pipeline.model.timecode import MS_PER_DAY, to_ms
from benchmarks.cost import TESSERA_KM2_PER_GPU_HOUR
from benchmarks.encoding import BF16_PEAK_FLOPS
from benchmarks.report import machine

VARIANTS = ("eager", "compile", "compile-max", "cudagraphs", "graph")
COMPILED = {"compile": "default", "compile-max": "max-autotune-no-cudagraphs", "cudagraphs": "reduce-overhead"}
CUDA_ONLY = ("cudagraphs", "graph")
# Land area of the Earth, Antarctica and Greenland included (~1.49e8 km^2): 1.49e12 pixels of
# 10 m (1e4 px per km^2) for one annual layer. benchmarks/cost.py counts 1.4e12 (ice sheets aside).
LAND_KM2 = 1.49e8
PX_PER_KM2 = 1e4
# Sentinel-2 A and B revisit a place every 5 days: 73 acquisitions a year (70-150 per pixel where
# orbits overlap). The frame count closest to this is the "real year" of the sweep.
YEAR_FRAMES = 73
YEAR = 2022
WARMUP_CALLS = 3  # reduce-overhead records its graphs on the 2nd-3rd call; eager warms its kernels
MIN_TIMED_CALLS = 3
PROFILE_ROWS = 14  # ops printed from the profile of one eager pass
COMPILE_GUESS_S = 90.0  # budgeted for a compiled case's build before one has been measured
MATMUL_SIDE = 8192


@dataclass(frozen=True)
class Case:
    variant: str
    batch: int
    frames: int


@dataclass
class Row:
    """One case's outcome: measured figures, or why there are none (`status`)."""

    variant: str
    batch: int
    frames: int
    status: str = "ok"
    """ok, OOM, skipped: <why>, or error: <first line of the exception>."""
    s_per_iter: float | None = None
    windows_per_s: float | None = None
    px_per_s: float | None = None
    """Core pixels (spec.core^2 per window) per second: the output the pipeline writes."""
    flop_per_window: int | None = None
    tflop_per_s: float | None = None
    mfu: float | None = None
    """Over the datasheet's dense bf16 peak; None on an unknown GPU or the CPU."""
    mfu_matmul: float | None = None
    """Over the bf16 matrix product measured on this GPU at the start."""
    peak_gib: float | None = None
    build_s: float | None = None
    """Compilation or graph capture, with the first call; not in the rate."""
    io_s: float | None = None
    """Per batch: inputs from pageable host memory to the device, the output back."""
    iterations: int = 0


@dataclass
class Sweep:
    """What the cases share: the model, the device and the ceilings to compare with."""

    spec: ModelSpec
    model: STPEncoder
    device: torch.device
    seconds: float
    peak_flops: float | None
    matmul_flops: float | None
    flops: dict[int, int] = field(default_factory=dict)

    def flop_per_window(self, frames: int) -> int:
        if frames not in self.flops:
            self.flops[frames] = flops_per_window(self.spec, frames)
        return self.flops[frames]


def main() -> None:
    args = _parser().parse_args()
    started = time.perf_counter()
    try:
        device = resolve_device(args.device)
        spec = load_spec(args.spec)
        variants = _variants(args.variants, device)
        batches, frames = _ints(args.batch_sizes), _ints(args.frames)
    except UserInputError as error:
        sys.exit(f"error: {error}")
    model, _ = build_model(spec)  # on the CPU, in eval mode
    sweep = Sweep(spec, model.to(device), device, args.seconds_per_case, _datasheet_peak(device), None)
    year = min(frames, key=lambda f: abs(f - args.year_frames))
    report = _report_head(args, sweep, year)
    _print_setup(sweep, year, args)
    if device.type == "cuda":
        sweep.matmul_flops = _matmul_rate(device)
        report["matmul_tflop_per_s"] = sweep.matmul_flops / 1e12
        print(f"bf16 matrix product {MATMUL_SIDE}^3 measured: {sweep.matmul_flops / 1e12:.0f} TFLOP/s")
    if args.sdpa_probe:
        report["sdpa"] = _sdpa_report(sweep, min(batches), year)
    rows = _sweep(sweep, variants, batches, frames, year, started + args.budget_s, report, args.json)
    report["projection"] = _projection(rows, spec, year)
    _save(report, args.json)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="paper")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu or auto")
    parser.add_argument("--batch-sizes", default="4,8,16,32", help="comma-separated windows per forward pass")
    parser.add_argument("--frames", default="16,40,100", help="comma-separated frames per window")
    parser.add_argument("--variants", default="eager,compile,cudagraphs", help=f"comma-separated, of {VARIANTS}")
    parser.add_argument("--seconds-per-case", type=float, default=8.0, help="timed seconds per case, after warm-up")
    parser.add_argument("--budget-s", type=float, default=420.0, help="no case starts past this, from the start")
    parser.add_argument("--year-frames", type=int, default=YEAR_FRAMES, help="frames of a real year")
    parser.add_argument("--sdpa-probe", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", type=Path, help="write every row, the machine and the command here")
    return parser


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise UserInputError(f"{text!r}: give positive integers, e.g. 4,8,16")
    return values


def _variants(text: str, device: torch.device) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise UserInputError(f"unknown variant(s) {unknown or text!r}: choose from {', '.join(VARIANTS)}")
    if device.type != "cuda":
        for name in (n for n in names if n in CUDA_ONLY):
            print(f"variant {name}: skipped, CUDA graphs need a CUDA device (this is {device})")
        names = [name for name in names if name not in CUDA_ONLY]
    return names


def _datasheet_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_FLOPS if key in name), None)


def _report_head(args: argparse.Namespace, sweep: Sweep, year: int) -> dict[str, Any]:
    return {
        "command": shlex.join(["python", "-m", "benchmarks.gpu", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "spec": sweep.spec.name,
        "parameters": parameter_count(sweep.model),
        "device": str(sweep.device),
        "year_frames": year,
        "datasheet_bf16_flop_per_s": sweep.peak_flops,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": [],
    }


def _print_setup(sweep: Sweep, year: int, args: argparse.Namespace) -> None:
    spec, device = sweep.spec, sweep.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = f"{sweep.peak_flops / 1e12:.0f} TFLOP/s dense bf16" if sweep.peak_flops else "unknown: MFU n/a"
    print(f"{spec.name}: {parameter_count(sweep.model):,} parameters, window {spec.window} px, core {spec.core} px")
    print(f"device {device} ({name}), torch {torch.__version__}, datasheet peak {peak}")
    print(f"real year: {year} frames (closest of --frames to {args.year_frames}); budget {args.budget_s:.0f} s")
    cap = max(1, EncodeOptions().frames_per_batch // year)  # as encode._batch_size
    print(f"the pipeline's batch at {year} frames is at most {cap} windows (EncodeOptions.frames_per_batch)")


def synthetic_inputs(
    spec: ModelSpec, batch: int, frames: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """x (B, T, C, L, L) float32 normalised and zero where invalid, valid (B, T, L, L) bool,
    t_ms (B, T) int64 increasing within 2022, period_ms (B, 2) int64: the year. Drawn on the
    device (a paper batch of 100 frames is 1 GB: seconds of numpy per case).

    Invalid pixels come in 16 px blobs, as clouds do, a share up to 90 % drawn per frame (a year
    has clear and overcast days); every frame keeps valid pixels, as the pipeline drops empty ones."""
    generator = torch.Generator(device=device).manual_seed(seed)
    size, blob = spec.window, 16
    coarse = -(-size // blob)
    cloudy = 0.9 * torch.rand(batch, frames, 1, 1, generator=generator, device=device)
    clouds = torch.rand(batch, frames, coarse, coarse, generator=generator, device=device) < cloudy
    clouds[..., 0, 0] &= ~clouds.flatten(2).all(dim=2)
    valid = ~clouds.repeat_interleave(blob, dim=2).repeat_interleave(blob, dim=3)[:, :, :size, :size]
    shape = (batch, frames, len(spec.bands), size, size)
    x = torch.randn(shape, generator=generator, device=device).clamp_(-6, 6) * valid[:, :, None]
    start = to_ms(dt.datetime(YEAR, 1, 1, tzinfo=dt.UTC))
    end = to_ms(dt.datetime(YEAR + 1, 1, 1, tzinfo=dt.UTC))
    days = torch.rand(batch, frames, generator=generator, device=device).sort(dim=1).values * 365
    t_ms = start + (days * MS_PER_DAY).to(torch.int64)
    period = torch.tensor([[start, end]], dtype=torch.int64, device=device).expand(batch, 2).contiguous()
    return x, valid, t_ms, period


def _sweep(
    sweep: Sweep,
    variants: list[str],
    batches: list[int],
    frames: list[int],
    year: int,
    deadline: float,
    report: dict[str, Any],
    json_path: Path | None,
) -> list[Row]:
    rows: list[Row] = []
    build_s: dict[str, float] = {}
    print(_HEADER)
    try:
        for case in _schedule(variants, batches, frames, year, rows):
            row = _skip_reason(case, rows, build_s, deadline - time.perf_counter(), sweep.seconds)
            if row is None:
                row = run_case(case, sweep)
                if row.build_s is not None and case.variant in COMPILED:
                    build_s[case.variant] = max(build_s.get(case.variant, 0.0), row.build_s)
            rows.append(row)
            print(_format(row), flush=True)
            report["rows"].append(asdict(row))
            _save(report, json_path)
    except KeyboardInterrupt:  # the caller's time cap (timeout --signal=INT): keep what was measured
        print("interrupted: the sweep stops here; the projection uses the rows above", flush=True)
    skipped = [r for r in rows if r.status.startswith("skipped: budget")]
    if skipped:
        print(f"{len(skipped)} case(s) not run, budget spent: " + ", ".join(_label(r) for r in skipped))
    return rows


def _schedule(variants: list[str], batches: list[int], frames: list[int], year: int, rows: list[Row]) -> Iterator[Case]:
    """The cases, most telling first (see the module docstring). Reads `rows` as they are filled
    in: the other variants start at eager's best batch size at the year's frame count."""
    others = [v for v in variants if v != "eager"]
    other_frames = [f for f in frames if f != year]
    if "eager" in variants:
        yield from (Case("eager", b, year) for b in batches)
    best = _best_batch(rows, year) or batches[-1]
    yield from (Case(v, best, year) for v in others)
    if "eager" in variants:
        yield from (Case("eager", b, f) for f in other_frames for b in batches)
    yield from (Case(v, b, year) for v in others for b in batches if b != best)
    yield from (Case(v, b, f) for f in other_frames for v in others for b in batches)


def _best_batch(rows: list[Row], frames: int) -> int | None:
    measured = [r for r in rows if r.frames == frames and r.px_per_s is not None]
    return max(measured, key=lambda r: r.px_per_s or 0.0).batch if measured else None


def _skip_reason(
    case: Case, rows: list[Row], build_s: dict[str, float], remaining: float, seconds: float
) -> Row | None:
    """A skipped row, or None to run the case."""
    oom = [r.batch for r in rows if (r.variant, r.frames) == (case.variant, case.frames) and r.status == "OOM"]
    if oom and case.batch > min(oom):
        return Row(case.variant, case.batch, case.frames, f"skipped: OOM at batch {min(oom)}")
    needed = 1.5 * seconds + (build_s.get(case.variant, COMPILE_GUESS_S) if case.variant in COMPILED else 0.0)
    if remaining < needed:
        return Row(case.variant, case.batch, case.frames, f"skipped: budget ({remaining:.0f} s left, ~{needed:.0f} s)")
    return None


def run_case(case: Case, sweep: Sweep) -> Row:
    """Measure one case; out of memory and other failures become the row's status."""
    row = Row(case.variant, case.batch, case.frames)
    try:
        _measure(case, sweep, row)
    except torch.cuda.OutOfMemoryError:
        row.status = "OOM"
    except Exception as error:  # a variant that fails is reported and the sweep goes on
        row.status = "error: " + (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    finally:
        gc.collect()
        if sweep.device.type == "cuda":
            torch.cuda.empty_cache()
        if case.variant in COMPILED:
            torch.compiler.reset()
    return row


def _measure(case: Case, sweep: Sweep, row: Row) -> None:
    spec, device = sweep.spec, sweep.device
    inputs = synthetic_inputs(spec, case.batch, case.frames, device)
    row.io_s = _io_seconds(inputs, spec, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), autocast_for(device):
        start = time.perf_counter()
        step = _prepare(case.variant, sweep.model, inputs, device)
        row.build_s = time.perf_counter() - start if case.variant != "eager" else None
        for _ in range(WARMUP_CALLS):
            step()
        _sync(device)
        times = _timed(step, sweep.seconds, device)
    median = statistics.median(times)
    flop = sweep.flop_per_window(case.frames)
    row.iterations, row.s_per_iter, row.flop_per_window = len(times), median, flop
    row.windows_per_s = case.batch / median
    row.px_per_s = row.windows_per_s * spec.core**2
    row.tflop_per_s = flop * row.windows_per_s / 1e12
    row.mfu = flop * row.windows_per_s / sweep.peak_flops if sweep.peak_flops else None
    row.mfu_matmul = flop * row.windows_per_s / sweep.matmul_flops if sweep.matmul_flops else None
    if device.type == "cuda":
        row.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30


def _prepare(
    variant: str, model: STPEncoder, inputs: tuple[torch.Tensor, ...], device: torch.device
) -> Callable[[], Any]:
    """One forward pass of the variant on the resident inputs, built (compiled, captured) and
    called once."""
    if variant == "graph":
        return _captured(model, inputs, device)
    if variant in COMPILED:
        compiled = torch.compile(model, mode=COMPILED[variant], dynamic=False)

        def step() -> Any:
            if variant == "cudagraphs":  # a new step: the last replay's outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
            return compiled(*inputs)

        step()
        _sync(device)
        return step
    return lambda: model(*inputs)


def _captured(model: STPEncoder, inputs: tuple[torch.Tensor, ...], device: torch.device) -> Callable[[], Any]:
    """A CUDA graph of the eager forward (torch.cuda.graphs' recipe: warm up on a side stream).
    Captured inside the case's autocast, whose cast cache outlives the replays."""
    side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            model(*inputs)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(*inputs)
    graph.replay()
    _sync(device)
    return graph.replay


def _timed(step: Callable[[], Any], seconds: float, device: torch.device) -> list[float]:
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < MIN_TIMED_CALLS:
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _io_seconds(inputs: tuple[torch.Tensor, ...], spec: ModelSpec, device: torch.device) -> float | None:
    """The copies `encode._run` makes per batch: inputs from pageable memory, the output back."""
    if device.type != "cuda":
        return None
    host = [tensor.cpu().numpy() for tensor in inputs]
    batch, size = host[0].shape[0], spec.window
    out = torch.empty((batch, spec.output_dim, size, size), dtype=torch.bfloat16, device=device)
    times = []
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        moved = [torch.from_numpy(a).to(device) for a in host]
        out.float().cpu()
        _sync(device)
        times.append(time.perf_counter() - start)
        del moved
    return min(times[1:])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _matmul_rate(device: torch.device, calls: int = 10) -> float:
    """FLOP/s of a large bf16 matrix product on random data: the ceiling this GPU reaches."""
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (
        torch.randn(MATMUL_SIDE, MATMUL_SIDE, device=device, dtype=torch.bfloat16, generator=generator) for _ in "ab"
    )
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        a @ b
    _sync(device)
    return 2 * MATMUL_SIDE**3 * calls / (time.perf_counter() - start)


def _sdpa_report(sweep: Sweep, batch: int, frames: int) -> dict[str, Any]:
    """Which SDPA kernels the eager model runs, and each backend tried alone on one case."""
    report: dict[str, Any] = {"enabled": _sdpa_flags()}
    print("SDPA backends enabled: " + ", ".join(f"{k} {v}" for k, v in report["enabled"].items()))
    case = Case("eager", batch, frames)
    try:
        report["eager_ops"] = _sdpa_ops(sweep, case)
        print(f"SDPA ops the eager model runs (batch {batch}, {frames} frames): {report['eager_ops']}")
    except Exception as error:  # diagnostics only: the sweep does not depend on them
        print(f"SDPA op profile failed: {error}".splitlines()[0])
    report["backends"] = {}
    for name, context in _sdpa_backends(sweep.device):
        row, said = _with_context(context, case, sweep)
        report["backends"][name] = {**asdict(row), "warnings": said}
        rate = f"{row.px_per_s:,.0f} px/s, {row.s_per_iter:.4f} s/iter" if row.px_per_s else row.status
        print(f"SDPA {name} alone: {rate}", flush=True)
        for line in said[:3]:
            print(f"    warning: {line[:200]}")
    return report


def _sdpa_flags() -> dict[str, bool]:
    queries = {
        "flash": "flash_sdp_enabled",
        "mem_efficient": "mem_efficient_sdp_enabled",
        "cudnn": "cudnn_sdp_enabled",
        "math": "math_sdp_enabled",
    }
    backends = torch.backends.cuda
    return {name: bool(getattr(backends, query)()) for name, query in queries.items() if hasattr(backends, query)}


def _sdpa_ops(sweep: Sweep, case: Case) -> list[str]:
    """The aten SDPA implementations one forward pass dispatches to (their names say the backend);
    prints where that pass spends its device time (the top ops by self time)."""
    inputs = synthetic_inputs(sweep.spec, case.batch, case.frames, sweep.device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if sweep.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.inference_mode(), autocast_for(sweep.device):
        sweep.model(*inputs)  # warm: the profile then holds one plain pass
        with torch.profiler.profile(activities=activities) as profile:
            sweep.model(*inputs)
            _sync(sweep.device)
    averages = profile.key_averages()
    by = "self_device_time_total" if sweep.device.type == "cuda" else "self_cpu_time_total"
    print(f"one eager pass (batch {case.batch}, {case.frames} frames), top ops by {by}:")
    print(averages.table(sort_by=by, row_limit=PROFILE_ROWS, max_name_column_width=60))
    names = {event.key for event in averages}
    return sorted(n for n in names if "scaled_dot_product" in n and n != "aten::scaled_dot_product_attention")


def _sdpa_backends(device: torch.device) -> Iterator[tuple[str, AbstractContextManager[Any]]]:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as error:
        print(f"SDPA backends cannot be forced on torch {torch.__version__}: {error}")
        return
    backends = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"]
    for name in backends if device.type == "cuda" else ["MATH"]:
        if hasattr(SDPBackend, name):
            yield name.lower(), sdpa_kernel(getattr(SDPBackend, name))


def _with_context(context: AbstractContextManager[Any], case: Case, sweep: Sweep) -> tuple[Row, list[str]]:
    """The case, briefly, under `context`; with the warnings it raised (SDPA says there why a
    backend does not apply)."""
    short = Sweep(sweep.spec, sweep.model, sweep.device, min(1.0, sweep.seconds), sweep.peak_flops, sweep.matmul_flops)
    short.flops = sweep.flops
    with warnings.catch_warnings(record=True) as caught, context:
        warnings.simplefilter("always")
        row = run_case(case, short)
    return row, list(dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()))


def _projection(rows: list[Row], spec: ModelSpec, year: int) -> dict[str, Any] | None:
    """GPU-hours for one global annual layer at the best measured rate of the year's frame count."""
    measured = [r for r in rows if r.px_per_s]
    if not measured:
        print("global layer: no case was measured, no projection")
        return None
    at_year = [r for r in measured if r.frames == year] or measured
    best = max(at_year, key=lambda r: r.px_per_s or 0.0)
    rate = best.px_per_s or 0.0
    pixels = LAND_KM2 * PX_PER_KM2
    hours = pixels / rate / 3600
    km2_per_hour = rate * 3600 / PX_PER_KM2
    print(
        f"\nglobal annual layer, {spec.name}, {best.frames} frames a year (best: {_label(best)}, {rate:,.0f} px/s):\n"
        f"  land {LAND_KM2:.3g} km^2 at 10 m = {pixels:.3g} px -> {hours:,.0f} device-hours "
        f"({km2_per_hour:,.0f} km^2/h; TESSERA {TESSERA_KM2_PER_GPU_HOUR:,.0f} km^2/GPU-h on an L40S).\n"
        "  Model only: inputs resident, every frame of every window encoded; loading, padding to frame\n"
        "  buckets and writing are not counted (they run beside the encoder: benchmarks/overlap.py)."
    )
    return {"row": asdict(best), "land_km2": LAND_KM2, "pixels": pixels, "hours": hours, "km2_per_hour": km2_per_hour}


_HEADER = (
    f"{'variant':<11} {'batch':>5} {'frames':>6} {'s/iter':>8} {'win/s':>8} {'px/s':>10} {'GFLOP/win':>10} "
    f"{'TFLOP/s':>8} {'MFU':>6} {'MFU/mm':>6} {'peak GiB':>8} {'build s':>7} {'io s':>6}  status"
)


def _format(row: Row) -> str:
    def num(value: float | None, spec: str, missing: str = "-") -> str:
        return missing if value is None else format(value, spec)

    na = "n/a" if row.px_per_s is not None else "-"  # measured, but no peak to compare with

    return (
        f"{row.variant:<11} {row.batch:>5} {row.frames:>6} {num(row.s_per_iter, '8.4f'):>8} "
        f"{num(row.windows_per_s, '8.2f'):>8} {num(row.px_per_s, '10,.0f'):>10} "
        f"{num(row.flop_per_window and row.flop_per_window / 1e9, '10.4g'):>10} {num(row.tflop_per_s, '8.3g'):>8} "
        f"{num(row.mfu, '6.1%', na):>6} {num(row.mfu_matmul, '6.1%', na):>6} {num(row.peak_gib, '8.1f'):>8} "
        f"{num(row.build_s, '7.1f'):>7} {num(row.io_s, '6.3f'):>6}  {row.status}"
    )


def _label(row: Row) -> str:
    return f"{row.variant} b{row.batch} t{row.frames}"


def _save(report: dict[str, Any], path: Path | None) -> None:
    """Rewritten whole after every case: a run stopped by its caller's timeout keeps what it measured."""
    if path is None:
        return
    partial = path.with_suffix(path.suffix + ".part")
    partial.write_text(json.dumps(report, indent=1, default=str))
    partial.replace(path)


if __name__ == "__main__":
    main()
