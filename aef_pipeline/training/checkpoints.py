"""Training checkpoints: safetensors for every tensor, a JSON state beside them, written atomically.

    RUN_DIR/checkpoints/step-000300/model.safetensors      encoder.*, decoder.*, text.* parameters
                                   /optimizer.safetensors  AdamW moments and step counts, by parameter index
                                   /state.json             step, seed, samples seen, the files' sha256
    RUN_DIR/checkpoints/latest                             the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary directory and renamed into place, then `latest`
is replaced: a crash at any point leaves the previous checkpoint whole and named by `latest`.
Nothing is pickled: a checkpoint that is not what its state says (another hash) is refused.

No random state is saved because none is carried: every step draws from generators seeded by
(seed, step, rank) (engine.step_generators), so the step number is the whole random state.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from aef_pipeline.model.weights import CheckpointError

MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, LATEST = "model.safetensors", "optimizer.safetensors", "state.json", "latest"
RNG = (
    "per step and rank: views numpy.random.default_rng([seed, step, rank, 1]); vMF noise torch.Generator seeded "
    "by numpy.random.default_rng([seed, step, rank, 2]); data order numpy.random.default_rng([seed, epoch])"
)
KEEP = 2
"""Complete checkpoints kept; older ones are removed once a newer one is in place."""


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint says of itself, beside its tensors."""

    step: int
    """Optimizer steps taken."""
    samples_seen: int
    """Windows drawn so far (global batch x steps): where the data stream resumes."""
    seed: int
    files: dict[str, str]
    """sha256 of each tensor file."""
    param_groups: list[dict[str, Any]]
    """The optimizer's hyper-parameters (no tensors)."""
    rng: str = RNG
    """How every random draw is seeded: the step number is all the random state there is."""


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, samples_seen: int, seed: int
) -> Path:
    """Write a complete checkpoint for `step` and point `latest` at it; returns its directory."""
    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:06d}"
    staging = root / f".step-{step:06d}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}, staging / MODEL_FILE)
    tensors, groups = _flatten_optimizer(optimizer)
    save_file(tensors, staging / OPTIMIZER_FILE)
    files = {name: sha256_of(staging / name) for name in (MODEL_FILE, OPTIMIZER_FILE)}
    state = TrainingState(step, samples_seen, seed, files, groups)
    (staging / STATE_FILE).write_text(json.dumps(state.__dict__, indent=1))
    _sync(staging)
    if final.exists():  # the same step saved again (a resumed finished run): keep the one there
        shutil.rmtree(staging)
        return final
    os.replace(staging, final)
    _write_atomically(root / LATEST, final.name)
    _prune(root, keep=final.name)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None when the run has none yet: the one `latest` names,
    or, should that be gone (a crash while replacing it), the newest step directory with its state."""
    root = checkpoint_dir(run_dir)
    pointer = root / LATEST
    if pointer.is_file() and (root / pointer.read_text().strip() / STATE_FILE).is_file():
        return root / pointer.read_text().strip()
    complete = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    return complete[-1] if complete else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Restore model and optimizer from `path` after checking every file's hash and every tensor's
    name and shape; nothing is copied until all checks pass."""
    try:
        raw = json.loads((path / STATE_FILE).read_text())
        state = TrainingState(**raw)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(
            f"checkpoint {path} has no readable {STATE_FILE} ({error}): remove it and resume"
        ) from None
    for name, digest in state.files.items():
        if sha256_of(path / name) != digest:
            raise CheckpointError(
                f"checkpoint {path / name} does not have the sha256 its {STATE_FILE} records: the file changed or is "
                "damaged; delete this checkpoint directory and resume from the one before"
            )
    weights, moments = _read(path / MODEL_FILE), _read(path / OPTIMIZER_FILE)
    _check_same(weights, model.state_dict(), path / MODEL_FILE)
    model.load_state_dict(weights, strict=True)
    optimizer.load_state_dict(_unflatten_optimizer(moments, state.param_groups))
    return state


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The optimizer's state as named tensors ("3.exp_avg") and its groups as plain JSON."""
    raw = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": torch.as_tensor(value).detach().contiguous().cpu()
        for index, entry in raw["state"].items()
        for key, value in entry.items()
    }
    return tensors, [dict(group) for group in raw["param_groups"]]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    return {"state": state, "param_groups": groups}


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"checkpoint file {path} cannot be read as safetensors ({error})") from None


def _check_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    wrong = sorted(
        set(got) ^ set(expected) | {k for k in set(got) & set(expected) if got[k].shape != expected[k].shape}
    )
    if wrong:
        raise CheckpointError(
            f"checkpoint {path} does not fit this run's model ({', '.join(wrong[:3])}"
            f"{' ...' if len(wrong) > 3 else ''}): it was made with another spec; start a new run in another --out"
        )


def _prune(root: Path, keep: str) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-KEEP]:
        if old.name != keep:
            shutil.rmtree(old)


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    _sync(partial)
    os.replace(partial, path)


def _sync(path: Path) -> None:
    """Flush a file, or a directory and every file in it, to disk before it is renamed into place:
    after a power cut the rename must not name data still in the page cache."""
    for item in [*path.iterdir(), path] if path.is_dir() else [path]:
        handle = os.open(item, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def sha256_of(path: Path) -> str:
    """A file's sha256, read in blocks (checkpoints of `paper` are GBs)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
