"""The training loop: one process on a laptop, or many under torchrun (PyTorch DDP).

    report = train(TrainRequest(data=Path("train.zarr"), model="tiny", out=Path("runs/r1"), steps=600))

Per step: draw the global batch of windows (a pure function of seed and step), take this rank's
share, split every window into held-out targets, the teacher's and the student's views (views.py),
compute the paper's losses (TrainingModule), step AdamW with warm-up and linear decay and
clipped gradients. Every term is logged per step (logbook.py); checkpoints are written atomically
(checkpoints.py); at the end the encoder is exported as a spec `run --model` uses (export.py).

Precision: bf16 autocast for the encoder on CUDA; the losses, the vMF sampling (float64 inside)
and timecodes (float64 days) in float32 or better; CPU runs stay float32 throughout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from aef_pipeline.encode import autocast_for
from aef_pipeline.errors import UserInputError
from aef_pipeline.model.spec import ModelSpec, Normalisation, load_spec
from aef_pipeline.model.stp import STPEncoder
from aef_pipeline.model.timecode import timecode
from aef_pipeline.model.weights import initialise
from aef_pipeline.training import logbook
from aef_pipeline.training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from aef_pipeline.training.distributed import World, any_rank, barrier, gather_strings, join, leave, mean_over_ranks
from aef_pipeline.training.export import TrainingRecordText, export_model
from aef_pipeline.training.objectives import (
    VMF_KAPPA,
    ImplicitDecoder,
    LossWeights,
    TextHead,
    batch_uniformity,
    clip_loss,
    consistency,
    period_fraction,
    reconstruction_loss,
    sample_vmf,
)
from aef_pipeline.training.text import TextPairs, TextTable, match_texts, read_text_table
from aef_pipeline.training.trainset import TrainingSet, open_training_set
from aef_pipeline.training.views import FrameBatch, StepViews, TargetPolicy, collate, split_views

RUN_FILE, SUMMARY_FILE = "run.json", "summary.json"
OBJECTIVE = "reconstruction (vMF 8e3, shift-invariant L1) + batch uniformity + teacher-student consistency"
EVAL_WINDOWS = 16
"""Windows of the fixed evaluation batch (the first ones of the set, the same views every time)."""


@dataclass(frozen=True)
class TrainRequest:
    """One training run."""

    data: Path
    """A finished training set (`aef-pipeline train-set`)."""
    model: str
    """A spec name ("tiny", "paper") or TOML path: the architecture to train."""
    out: Path
    """The run directory: checkpoints, log, curves, the exported model.toml."""
    steps: int | None = None
    """Optimizer steps; the learning rate decays linearly to zero at this step."""
    minutes: float | None = None
    """Wall-clock budget; without `steps` the rate stays at its peak after warm-up."""
    batch_size: int = 8
    """Windows per step over all ranks together."""
    resume: bool = False
    seed: int = 0
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 50
    """Steps of linear warm-up (shortened to a tenth of `steps` for short runs)."""
    clip_norm: float = 1.0
    checkpoint_every: int = 100
    eval_every: int = 50
    device: str = "auto"
    targets: TargetPolicy = field(default_factory=TargetPolicy)
    text: Path | None = None
    """Text vectors at points and times (training/text.py): adds the CLIP term; off without."""
    progress: bool = True


@dataclass(frozen=True)
class TrainReport:
    run_dir: Path
    steps: int
    """Steps the run has taken in all (resumed runs included)."""
    seconds: float
    """Wall time of this invocation's steps."""
    windows_per_second: float
    spec: Path
    """The exported model.toml."""
    first_eval: dict[str, float]
    last_eval: dict[str, float]


class TrainingModule(nn.Module):
    """The encoder and its implicit decoder; forward computes the paper's loss terms for one step."""

    def __init__(self, spec: ModelSpec, text_dim: int | None = None) -> None:
        super().__init__()
        self.encoder = STPEncoder(spec)
        self.decoder = ImplicitDecoder(embedding_dim=spec.output_dim, bands=len(spec.bands), hidden=decoder_width(spec))
        code = 4 * spec.timecode.frequencies  # the period's start and end, sin and cos
        self.text = TextHead(text_dim, code, embedding_dim=spec.output_dim) if text_dim else None

    def forward(self, views: StepViews, noise: torch.Generator) -> dict[str, torch.Tensor]:
        teacher, student = views.teacher, views.student
        features = self.encoder.features(teacher.x, teacher.valid, teacher.t_ms)
        mu = self.encoder.summarise(features, teacher.support_ms)
        mu_period = self.encoder.summarise(features, views.consistency_ms)
        mu_student = self.encoder.summarise(
            self.encoder.features(student.x, student.valid, student.t_ms), views.consistency_ms
        )
        # The decoders, losses and the text head in float32, whatever the encoder ran in.
        with torch.autocast(mu.device.type, enabled=False):
            terms = {
                "reconstruction": self._reconstruction(mu.float(), views.targets, noise),
                "uniformity": batch_uniformity(mu.float()),
                # Pixels where the student saw no frame at all hold only its null summary: not scored.
                "consistency": consistency(mu_period.float(), mu_student.float(), student.valid.any(dim=1)),
            }
            if self.text is not None:
                terms["text"] = self._text_alignment(mu.float(), teacher.support_ms, views.text)
        return terms

    def _text_alignment(self, mu: torch.Tensor, support_ms: torch.Tensor, pairs: TextPairs | None) -> torch.Tensor:
        """CLIP loss of the texts in this batch's windows; with none, a zero that still reaches every
        parameter of the head (DDP needs a gradient, even zero, for each parameter on every rank)."""
        assert self.text is not None
        code = timecode(support_ms, self.encoder.spec.timecode).reshape(mu.shape[0], -1)
        if pairs is None or pairs.window.numel() == 0:
            unused: torch.Tensor = self.text(mu.new_zeros(1, mu.shape[1]), code[:1])
            return 0.0 * unused.sum()
        predicted = self.text(mu[pairs.window, :, pairs.row, pairs.col], code[pairs.window])
        return clip_loss(predicted, pairs.vectors)

    def _reconstruction(self, mu: torch.Tensor, targets: FrameBatch, noise: torch.Generator) -> torch.Tensor:
        """L1 of the held-out frames decoded from a vMF sample around the embedding."""
        z = sample_vmf(mu.permute(0, 2, 3, 1), VMF_KAPPA, noise).permute(0, 3, 1, 2)
        # Padded target slots get the period's start: a valid instant whose loss weight is zero.
        instants = torch.where(targets.present, targets.t_ms, targets.support_ms[:, :1])
        fractions = period_fraction(instants, targets.support_ms[:, None, :].expand(*instants.shape, 2))
        return reconstruction_loss(self.decoder, z, targets.x, targets.clear, fractions, targets.present)


def decoder_width(spec: ModelSpec) -> int:
    """The implicit decoders' hidden width: the paper's 512 at its widths, narrower for small specs."""
    return min(512, 4 * spec.precision_width)


def train(request: TrainRequest, on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainReport:
    """Train, checkpoint and export; `on_step(step, losses)` is called after each step (tests, UIs).

    Ctrl-C (KeyboardInterrupt) between two steps writes a checkpoint first, so `--resume` goes on
    from the last step taken."""
    check_request(request)
    world = join(request.device)
    try:
        return _train(request, world, on_step)
    finally:
        leave(world)


def check_request(request: TrainRequest) -> None:
    """Refuse what cannot run, before anything is read or written."""
    if request.steps is None and request.minutes is None:
        raise UserInputError("say how long to train: --steps N or --minutes M (or both: whichever ends first)")
    if request.steps is not None and request.steps < 1:
        raise UserInputError(f"--steps {request.steps} must be at least 1")
    if request.minutes is not None and not request.minutes > 0:
        raise UserInputError(f"--minutes {request.minutes:g} must be more than 0: give the wall-clock budget, e.g. 30")
    if request.batch_size < 2:
        raise UserInputError(
            f"--batch-size {request.batch_size} is too small: batch uniformity compares each window with another"
        )
    if request.checkpoint_every < 1 or request.eval_every < 1:
        raise UserInputError("--checkpoint-every and the evaluation interval must be at least 1")


def _train(request: TrainRequest, world: World, on_step: Callable[[int, dict[str, float]], None] | None) -> TrainReport:
    if request.batch_size % world.size:
        raise UserInputError(
            f"--batch-size {request.batch_size} does not split over {world.size} processes: "
            f"use a multiple of {world.size}"
        )
    data = open_training_set(request.data)
    if len(data) < 2:
        raise UserInputError(
            f"training set {request.data} holds {len(data)} window with data: batch uniformity compares windows "
            "with each other; cut more (train-set --windows)"
        )
    spec = training_spec(request.model, data)
    texts = read_text_table(request.text) if request.text else None
    identity = {**run_identity(request, spec, data, world), "text_sha256": texts.sha256 if texts else None}
    start_fresh = prepare_run_dir(request, identity, world)
    torch.manual_seed(request.seed)  # only DDP's own buffers draw from it; our draws are seeded per step
    module = TrainingModule(spec, texts.dim if texts else None)
    initialise(module, request.seed)
    module.encoder.checkpointing = spec.depth > 4 and world.device.type == "cuda"
    module.to(world.device)
    optimizer = make_optimizer(module, request)
    step = 0 if start_fresh else _resume(request.out, module, optimizer, world)
    wrapped: nn.Module = DistributedDataParallel(module) if world.distributed else module
    loop = _Loop(request, world, spec, data, texts, module, wrapped, optimizer)
    return loop.run(step, on_step)


def training_spec(model: str, data: TrainingSet) -> ModelSpec:
    """The spec to train, with the training set's normalisation; refuses a set cut for other bands
    or another window size."""
    spec = load_spec(model)
    if tuple(data.bands) != tuple(spec.bands):
        raise UserInputError(
            f"training set {data.path} holds bands {', '.join(data.bands)} but model {spec.name} reads "
            f"{', '.join(spec.bands)}: cut a training set for this model (aef-pipeline train-set --model {model})"
        )
    if data.window != spec.window:
        raise UserInputError(
            f"training set {data.path} holds {data.window} px windows but model {spec.name} reads {spec.window} px: "
            f"cut a training set for this model (aef-pipeline train-set --model {model})"
        )
    means, stds = data.normalisation
    source = f"clear pixels of training set {data.path.name} (fingerprint {data.fingerprint[:12]})"
    return dataclasses.replace(spec, normalisation=Normalisation(tuple(means), tuple(stds), source))


def run_identity(request: TrainRequest, spec: ModelSpec, data: TrainingSet, world: World) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (the process count too: each rank
    draws its own views, so another count would continue differently)."""
    spec_bytes = spec.path.read_bytes() if spec.path else b""
    return {
        "model": spec.name,
        "spec_sha256": hashlib.sha256(spec_bytes).hexdigest(),
        "data": str(request.data.resolve()),
        "data_fingerprint": data.fingerprint,
        "batch_size": request.batch_size,
        "seed": request.seed,
        "steps": request.steps,
        "learning_rate": request.learning_rate,
        "processes": world.size,
    }


def prepare_run_dir(request: TrainRequest, identity: dict[str, Any], world: World) -> bool:
    """Check the run directory against the request; True when the run starts from step 0. Every
    rank reads before the leader writes: a rank that looked later would find the new run."""
    out = request.out
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file: give a directory for the run")
    recorded = _recorded_identity(out)
    fresh = recorded is None or latest_checkpoint(out) is None
    if recorded is None and out.exists() and any(out.iterdir()):
        raise UserInputError(f"--out {out} holds other files, not a training run: choose an empty or new directory")
    if recorded is not None and not request.resume:
        raise UserInputError(
            f"--out {out} holds a training run already: pass --resume to continue it, or choose another --out"
        )
    if recorded is None and request.resume:
        raise UserInputError(f"--resume: {out} holds no training run to continue; leave out --resume to start one")
    if recorded is not None:
        _check_same_run(out, recorded, identity)
    barrier(world)
    if recorded is None and world.leader:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_FILE).write_text(json.dumps(identity, indent=1))
    elif fresh and world.leader:
        logbook.truncate(out, -1)  # resumed before its first checkpoint: start the log again too
    barrier(world)
    return fresh


def _recorded_identity(out: Path) -> dict[str, Any] | None:
    path = out / RUN_FILE
    if not path.is_file():
        return None
    recorded: dict[str, Any] = json.loads(path.read_text())
    return recorded


def _check_same_run(out: Path, recorded: dict[str, Any], identity: dict[str, Any]) -> None:
    """A resumed run must train the same spec on the same data with the same batch and schedule."""
    differ = [key for key in identity if recorded.get(key) != identity[key]]
    if differ:
        key = differ[0]
        raise UserInputError(
            f"--resume: run {out} was started with {key} = {recorded.get(key)!r}, this request has "
            f"{identity[key]!r}: resume with the run's own settings, or start a new run in another --out"
        )


def make_optimizer(module: nn.Module, request: TrainRequest) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, null keys and position biases (1-d or named tables)."""
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for name, parameter in module.named_parameters():
        (plain if parameter.ndim < 2 or name.endswith(("null", "position_bias")) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": request.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=request.learning_rate, betas=(0.9, 0.95))


def learning_rate(step: int, request: TrainRequest) -> float:
    """Linear warm-up, then linear decay to zero at `steps` (constant after warm-up without `steps`)."""
    warmup = min(request.warmup, max(1, request.steps // 10)) if request.steps else request.warmup
    if step < warmup:
        return request.learning_rate * (step + 1) / warmup
    if request.steps is None:
        return request.learning_rate
    return request.learning_rate * max(0.0, (request.steps - step) / max(1, request.steps - warmup))


def batch_indices(step: int, batch: int, windows: int, seed: int) -> np.ndarray:
    """The windows of global batch `step`: consecutive slices of one permutation per epoch, so a
    run sees every window once per epoch, and the stream is a pure function of (seed, step)."""
    positions = np.arange(step * batch, (step + 1) * batch)
    epochs = positions // windows
    chosen = np.empty(batch, np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(windows)
        here = epochs == epoch
        chosen[here] = order[positions[here] % windows]
    return chosen


def step_generators(
    seed: int, step: int, rank: int, device: torch.device
) -> tuple[np.random.Generator, torch.Generator]:
    """The step's random draws: views (numpy) and vMF noise (torch), from (seed, step, rank) alone."""
    views = np.random.default_rng([seed, step, rank, 1])
    noise = torch.Generator(device=device).manual_seed(
        int(np.random.default_rng([seed, step, rank, 2]).integers(2**62))
    )
    return views, noise


def _resume(out: Path, module: nn.Module, optimizer: torch.optim.Optimizer, world: World) -> int:
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None  # prepare_run_dir returned False only with a checkpoint
    state = load_checkpoint(checkpoint, module, optimizer)
    if world.leader:
        logbook.truncate(out, state.step)
    barrier(world)
    return state.step


class _Loop:
    """The steps of one invocation, with its log, checkpoints, evaluation and export."""

    def __init__(
        self,
        request: TrainRequest,
        world: World,
        spec: ModelSpec,
        data: TrainingSet,
        texts: TextTable | None,
        module: TrainingModule,
        wrapped: nn.Module,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.request, self.world, self.spec, self.data, self.texts = request, world, spec, data, texts
        self.module, self.wrapped, self.optimizer = module, wrapped, optimizer
        self.weights = LossWeights()
        self.first_eval: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.saved_step = -1

    def run(self, step: int, on_step: Callable[[int, dict[str, float]], None] | None) -> TrainReport:
        request, began = self.request, time.perf_counter()
        start = step
        if step == 0:
            self.first_eval = self._evaluate(0)
        bar = self._progress(step)
        between_steps = True
        try:
            with _stop_requests() as stop:
                while not self._done(step, began, start):
                    between_steps = False
                    losses = self._step(step)
                    step += 1
                    between_steps = True
                    self._after_step(step, losses, bar)
                    if on_step is not None:
                        on_step(step, losses)
                    if any_rank(self.world, stop.is_set()):
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            if between_steps:  # parameters and optimizer state are those of `step` steps
                self._checkpoint(step)
            raise
        finally:
            bar.close()
        seconds = time.perf_counter() - began
        self._checkpoint(step)
        if step % request.eval_every or not self.last_eval:
            self.last_eval = self._evaluate(step)
        self.first_eval = self.first_eval or _first_eval(request.out)
        spec_path = self._export(step)
        rate = (step - start) * request.batch_size / max(seconds, 1e-9)
        report = TrainReport(request.out, step, seconds, rate, spec_path, self.first_eval, self.last_eval)
        self._summarise(report)
        return report

    def _summarise(self, report: TrainReport) -> None:
        """summary.json: the figures of this invocation and every rank's parameter digest (under DDP
        they must agree: a rank that drifted would show here)."""
        digests = gather_strings(self.world, parameter_digest(self.module))
        if self.world.leader:
            summary = {
                "steps": report.steps,
                "seconds": report.seconds,
                "windows_per_second": report.windows_per_second,
                "world_size": self.world.size,
                "device": str(self.world.device),
                "first_eval": report.first_eval,
                "last_eval": report.last_eval,
                "parameter_sha256_by_rank": digests,
            }
            (self.request.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))

    def _done(self, step: int, began: float, start: int) -> bool:
        request = self.request
        if request.steps is not None and step >= request.steps:
            return True
        if request.minutes is None or step == start:
            return False
        elapsed = time.perf_counter() - began
        per_step = elapsed / (step - start)
        return any_rank(self.world, elapsed + per_step > request.minutes * 60)

    def _step(self, step: int) -> dict[str, float]:
        self.module.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, self.request)
        views = self._views(step, train=True)
        _, noise = step_generators(self.request.seed, step, self.world.rank, self.world.device)
        with autocast_for(self.world.device):
            terms = self.wrapped(views, noise)
        loss = self._total(terms)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.request.clip_norm)
        self.optimizer.step()
        values = {name: float(value.detach()) for name, value in terms.items()}
        values["loss"] = float(loss.detach())
        values = mean_over_ranks(self.world, values)
        values.update(lr=self.optimizer.param_groups[0]["lr"], grad_norm=float(norm))
        return values

    def _total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum, weights normalised over the terms in use ("normalised prior to training")."""
        weights = {name: getattr(self.weights, name) for name in terms}
        total = sum(weights.values())
        weighted = [(weights[name] / total) * value.float() for name, value in terms.items()]
        return torch.stack(weighted).sum()

    def _views(self, step: int, train: bool) -> StepViews:
        request, world = self.request, self.world
        if train:
            chosen = batch_indices(step, request.batch_size, len(self.data), request.seed)
            share = request.batch_size // world.size
            chosen = chosen[world.rank * share : (world.rank + 1) * share]
            generator, _ = step_generators(request.seed, step, world.rank, world.device)
        else:
            chosen = np.arange(min(EVAL_WINDOWS, len(self.data)))
            generator = np.random.default_rng([request.seed, 0, 0, 99])
        windows = [self.data.window_at(int(i)) for i in chosen]
        views = split_views(collate(windows, self.spec), generator, request.targets)
        if self.texts is not None:
            views = dataclasses.replace(views, text=match_texts(self.texts, windows, self.spec.window))
        return to_device(views, world.device)

    def _evaluate(self, step: int) -> dict[str, float]:
        """The loss terms on the fixed evaluation batch: the same windows and views at every step,
        so its curve shows learning rather than batch-to-batch noise. Every rank computes it alike."""
        self.module.eval()
        views = self._views(step, train=False)
        noise = torch.Generator(device=self.world.device).manual_seed(self.request.seed + 99)
        # Under DDP every rank holds this same batch: the gathered uniformity pairs the same windows.
        with torch.no_grad(), autocast_for(self.world.device):
            terms = self.module(views, noise)
        values = {name: float(value) for name, value in terms.items()}
        if self.world.leader:
            logbook.append(self.request.out, {"step": step, "eval": True, **values})
        return values

    def _after_step(self, step: int, losses: dict[str, float], bar: Any) -> None:
        request = self.request
        if not all(math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"step {step}: a loss is not finite ({losses}); lower --learning-rate")
        if self.world.leader:
            logbook.append(request.out, {"step": step, **losses})
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items() if k in logbook.TERMS})
        if step % request.eval_every == 0:
            self.last_eval = self._evaluate(step)
        if step % request.checkpoint_every == 0:
            self._checkpoint(step)

    def _checkpoint(self, step: int) -> None:
        if step == self.saved_step:
            return
        self.saved_step = step
        if self.world.leader and step > 0:
            save_checkpoint(
                self.request.out, self.module, self.optimizer, step, step * self.request.batch_size, self.request.seed
            )
        barrier(self.world)

    def _export(self, step: int) -> Path:
        out = self.request.out
        if self.world.leader:
            logbook.draw_curves(out)
            record = TrainingRecordText(
                run=str(out.resolve()),
                steps=step,
                data=f"{self.data.path.resolve()} fingerprint {self.data.fingerprint}",
                objective=OBJECTIVE,
            )
            export_model(out, self.module.encoder, self.spec, record)
        barrier(self.world)
        return out / "model.toml"

    def _progress(self, step: int) -> Any:
        from tqdm import tqdm

        enabled = self.request.progress and self.world.leader
        return tqdm(total=self.request.steps, initial=step, disable=not enabled, unit="step", dynamic_ncols=True)


@contextmanager
def _stop_requests() -> Iterator[threading.Event]:
    """SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption) ask the loop to stop after the step in
    progress, checkpoint it and exit; a second SIGINT interrupts at once (without a checkpoint if it
    falls inside a step). Outside the main thread (tests, notebooks' workers) nothing is installed."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parameter_digest(module: nn.Module) -> str:
    """sha256 over every parameter's bytes, in name order."""
    digest = hashlib.sha256()
    for name, parameter in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _first_eval(run_dir: Path) -> dict[str, float]:
    """The evaluation at step 0 as the log recorded it (a resumed run did not compute it)."""
    first = next((r for r in logbook.read(run_dir) if r.get("eval")), {})
    return {k: v for k, v in first.items() if k not in ("step", "eval")}


def to_device(views: StepViews, device: torch.device) -> StepViews:
    def move(batch: FrameBatch) -> FrameBatch:
        return FrameBatch(*(getattr(batch, f.name).to(device) for f in dataclasses.fields(FrameBatch)))

    return StepViews(
        teacher=move(views.teacher),
        student=move(views.student),
        targets=move(views.targets),
        consistency_ms=views.consistency_ms.to(device),
        perturbation=views.perturbation,
        text=None if views.text is None else TextPairs(*(t.to(device) for t in dataclasses.astuple(views.text))),
    )
