"""Model specs: one TOML file per STP encoder variant in `models/`, read into a frozen ModelSpec.

A spec carries the model's contract: window geometry, widths, the input bands in order and
whether clouds are masked in them, the normalisation constants and their source, and where its
weights come from (a safetensors file with its sha256, or "untrained, seed N"); a trained spec
also says which run trained it, for how long, on what.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import EMBEDDING_DIM

# The specs shipped with the package's source tree (models/ beside aef_pipeline/).
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
# The embedding grid is 10 m; every spatial level of the encoder is a power-of-two fraction of L.
COARSEST_FACTOR = 16


@dataclass(frozen=True)
class Normalisation:
    """x = clip((log1p(DN) - mean) / std, -clip, clip), per band, DN = reflectance * 10000."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    clip: float = 6.0


@dataclass(frozen=True)
class TimecodeSpec:
    """Sinusoidal timecode: `frequencies` periods spaced geometrically in days."""

    frequencies: int
    shortest_days: float
    longest_days: float


@dataclass(frozen=True)
class WeightsSpec:
    """A safetensors checkpoint (path relative to the spec file) and its sha256, or none."""

    file: str
    sha256: str
    seed: int
    """Initialisation seed when there is no checkpoint."""

    @property
    def trained(self) -> bool:
        return bool(self.file)


@dataclass(frozen=True)
class TrainingRecord:
    """How a checkpoint was made: the `[training]` table a training run writes into its spec, and
    what every output's provenance then names."""

    run: str
    """The run's directory, e.g. "runs/r1"."""
    steps: int
    """Optimiser steps taken."""
    data: str
    """The training set and its digest, e.g. "train.zarr sha256:..."."""
    finished: str
    """When training ended, ISO 8601 UTC."""
    objective: str = ""
    """The loss, in words (optional)."""


@dataclass(frozen=True)
class ModelSpec:
    """One STP encoder variant."""

    name: str
    window: int
    """L: side of the input window in pixels."""
    context: int
    """Pixels on each side of a window that feed the core but are not written."""
    depth: int
    output_dim: int
    mlp_ratio: int
    bands: tuple[str, ...]
    """Input bands, in the order the model reads them."""
    space_width: int
    time_width: int
    precision_width: int
    space_heads: int
    time_heads: int
    timecode: TimecodeSpec
    normalisation: Normalisation
    weights: WeightsSpec
    mask_clouds: bool = True
    """`[input] mask_clouds`: whether SCL clouds, shadows, cirrus and saturated pixels are masked
    in the input (False: only nodata is; the paper masks nothing at inference, the encoder learns
    to see through clouds and masks only weight its training loss). A spec without it masks."""
    training: TrainingRecord | None = None
    """The `[training]` record of trained weights; None for untrained ones."""
    path: Path | None = None
    """The file the spec was read from."""

    @property
    def core(self) -> int:
        """Side of the written centre of each window."""
        return self.window - 2 * self.context

    def __post_init__(self) -> None:
        _check(self)


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """A spec by name ("tiny", "paper": models/<name>.toml) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = MODELS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in MODELS_DIR.glob("*.toml")))
        raise UserInputError(f"model spec {name_or_path!r} not found ({path}); known specs: {known}")
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise UserInputError(f"model spec {path} is not valid TOML ({error}): see models/tiny.toml") from None
    try:
        return _from_toml(raw, path)
    except KeyError as missing:
        raise UserInputError(f"model spec {path} lacks the field {missing}: see models/tiny.toml") from None
    except (TypeError, ValueError) as error:
        raise UserInputError(
            f"model spec {path} has a value of the wrong kind ({error}): see models/tiny.toml"
        ) from None


def _from_toml(raw: dict[str, Any], path: Path) -> ModelSpec:
    norm, code, weights = raw["normalisation"], raw["timecode"], raw["weights"]
    return ModelSpec(
        name=raw["name"],
        window=int(raw["window"]),
        context=int(raw["context"]),
        depth=int(raw["depth"]),
        output_dim=int(raw["output_dim"]),
        mlp_ratio=int(raw["mlp_ratio"]),
        bands=tuple(raw["bands"]),
        space_width=int(raw["widths"]["space"]),
        time_width=int(raw["widths"]["time"]),
        precision_width=int(raw["widths"]["precision"]),
        space_heads=int(raw["heads"]["space"]),
        time_heads=int(raw["heads"]["time"]),
        timecode=TimecodeSpec(int(code["frequencies"]), float(code["shortest_days"]), float(code["longest_days"])),
        normalisation=Normalisation(
            tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"]), str(norm["source"])
        ),
        weights=WeightsSpec(str(weights.get("file", "")), str(weights.get("sha256", "")), int(weights["seed"])),
        mask_clouds=_mask_clouds(raw.get("input", {})),
        training=_training(raw["training"]) if "training" in raw else None,
        path=path,
    )


def _mask_clouds(table: dict[str, Any]) -> bool:
    value = table.get("mask_clouds", True)  # specs written before the setting existed masked clouds
    if not isinstance(value, bool):
        raise TypeError(f"[input] mask_clouds must be true or false, not {value!r}")
    return value


def _training(table: dict[str, Any]) -> TrainingRecord:
    missing = [key for key in ("run", "steps", "data", "finished") if key not in table]
    if missing:
        raise KeyError(f"[training] {missing[0]}")
    steps = table["steps"]
    if not isinstance(steps, int) or isinstance(steps, bool):
        raise TypeError(f"[training] steps must be a whole number, not {steps!r}")
    run, data, finished = (str(table[key]) for key in ("run", "data", "finished"))
    return TrainingRecord(run, steps, data, finished, str(table.get("objective", "")))


def _check(spec: ModelSpec) -> None:
    where = f"model spec {spec.name!r}"
    if spec.window % COARSEST_FACTOR:
        raise UserInputError(f"{where}: window {spec.window} must be a multiple of {COARSEST_FACTOR}")
    if spec.output_dim != EMBEDDING_DIM:
        raise UserInputError(
            f"{where}: output_dim {spec.output_dim} cannot be stored: embedding stores hold {EMBEDDING_DIM} "
            f"dimensions (A00..A{EMBEDDING_DIM - 1:02d}); set output_dim = {EMBEDDING_DIM}"
        )
    if not 0 <= spec.context < spec.window // 2:
        raise UserInputError(f"{where}: context {spec.context} must leave a core inside the {spec.window} px window")
    if len(spec.normalisation.mean) != len(spec.bands) or len(spec.normalisation.std) != len(spec.bands):
        raise UserInputError(f"{where}: normalisation needs one mean and one std per band ({len(spec.bands)})")
    for width, heads, label in (
        (spec.space_width, spec.space_heads, "space"),
        (spec.time_width, spec.time_heads, "time"),
    ):
        if width % heads:
            raise UserInputError(f"{where}: {label} width {width} is not divisible by its {heads} heads")
    if spec.weights.file and not spec.weights.file.endswith(".safetensors"):
        raise UserInputError(
            f"{where}: weights file {spec.weights.file} is not .safetensors: checkpoints load only as safetensors, "
            "never pickle (.pt/.pth/.ckpt can run code when loaded); convert it with safetensors.torch.save_file"
        )
    if spec.training and not spec.weights.trained:
        raise UserInputError(
            f"{where}: a [training] record (run {spec.training.run}) needs the weights it made: set [weights] file "
            "and sha256, or remove [training]"
        )
    if spec.weights.file and len(spec.weights.sha256) != 64:
        raise UserInputError(f"{where}: weights file {spec.weights.file} needs its 64-hex-digit sha256")
