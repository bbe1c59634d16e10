"""Model construction: deterministic initialisation from a seed, or a strict, hash-checked checkpoint."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from aef_pipeline.errors import UserInputError
from aef_pipeline.model.spec import ModelSpec, load_spec
from aef_pipeline.model.stp import STPEncoder, initial_constants


class CheckpointError(UserInputError):
    """A checkpoint does not match its spec (hash, keys or shapes); nothing was loaded."""


@dataclass(frozen=True)
class Provenance:
    """Where a model's weights came from; written into every output's metadata."""

    trained: bool
    description: str
    """"untrained: deterministic initialisation from seed 0", or "weights tiny.safetensors sha256
    ..." followed, when the spec has its training record, by ", trained by run R for N steps on D"."""


@dataclass(frozen=True)
class LoadedModel:
    """A spec with its built encoder: what a process that encodes holds (a dask worker holds one,
    built when it starts; an in-process run builds one)."""

    spec: ModelSpec
    encoder: STPEncoder
    provenance: Provenance


def load_model(name_or_path: str) -> LoadedModel:
    """The spec by name or path, its encoder built (checkpoint or seeded initialisation)."""
    spec = load_spec(name_or_path)
    encoder, provenance = build_model(spec)
    return LoadedModel(spec, encoder, provenance)


def check_weights(spec: ModelSpec) -> None:
    """Refuse a checkpoint that does not fit its spec (missing, another hash, not safetensors, other
    tensors) without building the model: a run checks this on the client before it writes
    anything, and the workers build the model. The expected shapes come from a model on torch's
    meta device (no memory); the file's from its safetensors header."""
    if not spec.weights.trained:
        return
    path = _weights_path(spec)
    _check_hash(path, spec.weights.sha256)
    with torch.device("meta"):
        expected = _shapes(STPEncoder(spec))
    _check_keys(expected, _stored_shapes(path), path)


def provenance_of(spec: ModelSpec) -> Provenance:
    """Where the spec's weights come from, read from the spec alone (no model is built)."""
    if spec.weights.trained:
        description = f"weights {Path(spec.weights.file).name} sha256 {spec.weights.sha256}"
        if spec.training:
            record = spec.training
            description += f", trained by run {record.run} for {record.steps} steps on {record.data}"
        return Provenance(True, description)
    return Provenance(False, f"untrained: deterministic initialisation from seed {spec.weights.seed}")


def build_model(spec: ModelSpec) -> tuple[STPEncoder, Provenance]:
    """The spec's encoder on CPU in eval mode, with its checkpoint or seeded initialisation."""
    model = STPEncoder(spec)
    if spec.weights.trained:
        path = _weights_path(spec)
        _check_hash(path, spec.weights.sha256)
        with _as_checkpoint_error(path):
            state = load_file(str(path))
        _check_keys(_shapes(model), {name: tuple(t.shape) for name, t in state.items()}, path)
        model.load_state_dict(state, strict=True)
    else:
        initialise(model, spec.weights.seed)
    return model.eval(), provenance_of(spec)


def initialise(model: nn.Module, seed: int) -> None:
    """Fill every parameter from a private generator, in name order: the same seed gives the same
    model on any machine, without touching torch's global random state. Parameters the model
    asks to start at a constant (`stp.initial_constants`) take it and draw nothing."""
    generator = torch.Generator().manual_seed(seed)
    constants = initial_constants(model)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if name in constants:
                parameter.fill_(constants[name])
            elif name.endswith("null"):
                parameter.normal_(0.0, 0.02, generator=generator)
            elif parameter.ndim == 1:  # biases and norm shifts zero, norm scales one
                parameter.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                # Truncated normal with std 1/sqrt(fan_in): unit-scale activations, so attention is
                # not uniform at initialisation and the valid period visibly steers the summary
                # (ViT's 0.02 would make an untrained model all but ignore it).
                fan_in = math.prod(parameter.shape[1:])
                parameter.copy_(_truncated_normal(parameter.shape, 1 / math.sqrt(fan_in), generator))


def _truncated_normal(shape: torch.Size, std: float, generator: torch.Generator) -> torch.Tensor:
    values = torch.randn(shape, generator=generator) * std
    return values.clamp(-2 * std, 2 * std)


def save_weights(model: nn.Module, path: Path) -> str:
    """Write the model's state as safetensors; returns the file's sha256 for the spec."""
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def _weights_path(spec: ModelSpec) -> Path:
    base = spec.path.parent if spec.path else Path.cwd()
    path = (base / spec.weights.file).resolve()
    if not path.is_file():
        raise CheckpointError(f"model {spec.name}: weights file {path} not found")
    return path


def _check_hash(path: Path, sha256: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256.lower():
        raise CheckpointError(
            f"weights {path} have sha256 {digest}, the spec expects {sha256}: refusing to load; fetch the "
            "weights again, or put the file's sha256 in the spec if you trust this file"
        )


@contextmanager
def _as_checkpoint_error(path: Path) -> Iterator[None]:
    """A file safetensors cannot parse becomes a one-line CheckpointError. safetensors only ever
    reads a JSON header and raw tensor bytes: nothing in the file runs."""
    try:
        yield
    except SafetensorError as error:
        raise CheckpointError(
            f"weights {path} are not a safetensors file ({error}): checkpoints load only as safetensors, never "
            "pickle; convert it with safetensors.torch.save_file"
        ) from None


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensors' names and shapes from the file's header, without reading the tensors."""
    with _as_checkpoint_error(path), safe_open(str(path), framework="pt") as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _check_keys(expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]], path: Path) -> None:
    """Refuse before copying anything, so a mismatch never leaves a half-loaded model."""
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = sorted(name for name in expected.keys() & got.keys() if expected[name] != got[name])
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if names
        )
        raise CheckpointError(f"weights {path} do not fit the spec ({detail}): refusing to load")
