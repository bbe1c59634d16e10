"""A trained encoder as a model spec that `aef-pipeline run --model RUN_DIR/model.toml` uses as it is.

    RUN_DIR/encoder-<sha256[:12]>.safetensors   the encoder's weights only (decoders stay in the checkpoints)
    RUN_DIR/model.toml            the spec the run trained, with the training set's normalisation,
                                  the weights' file and sha256, and a [training] table saying which
                                  run, how many steps and what data made them

The spec is written field by field from the ModelSpec (a few scalars, lists and tables: no TOML
library is needed to write that much), then read back with `load_spec` and the weights checked
against it before it replaces the previous spec. The weights' file is named by its content, so an
export never overwrites the file an earlier model.toml names: whatever moment a crash comes, the
model.toml there loads, old or new.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from aef_pipeline.model.spec import ModelSpec, load_spec
from aef_pipeline.model.weights import check_weights, save_weights

SPEC_FILE = "model.toml"


@dataclass(frozen=True)
class TrainingRecordText:
    """What the exported spec's [training] table says."""

    run: str
    steps: int
    data: str
    objective: str


def export_model(run_dir: Path, encoder: nn.Module, spec: ModelSpec, record: TrainingRecordText) -> Path:
    """Write the encoder's weights and the spec beside them; returns the spec's path."""
    staging_weights = run_dir / ".encoder.safetensors.partial"
    sha256 = save_weights(encoder, staging_weights)
    weights = f"encoder-{sha256[:12]}.safetensors"
    os.replace(staging_weights, run_dir / weights)
    staging_spec = run_dir / ".model.partial.toml"  # load_spec reads .toml files only
    staging_spec.write_text(spec_text(spec, weights, sha256, record))
    check_weights(load_spec(staging_spec))  # the hash and every tensor's name and shape
    os.replace(staging_spec, run_dir / SPEC_FILE)
    for older in run_dir.glob("encoder-*.safetensors"):
        if older.name != weights:
            older.unlink()
    return run_dir / SPEC_FILE


def spec_text(spec: ModelSpec, weights_file: str, sha256: str, record: TrainingRecordText) -> str:
    """The spec as TOML, laid out like models/tiny.toml."""
    finished = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    norm, code = spec.normalisation, spec.timecode
    lines = [
        f"# STP encoder {spec.name!r} trained by aef-pipeline (run {record.run}, {record.steps} steps).",
        f"name = {_string(spec.name)}",
        f"window = {spec.window}",
        f"context = {spec.context}",
        f"depth = {spec.depth}",
        f"output_dim = {spec.output_dim}",
        f"mlp_ratio = {spec.mlp_ratio}",
        f"bands = [{', '.join(_string(b) for b in spec.bands)}]",
        "",
        "[input]",
        f"mask_clouds = {str(spec.mask_clouds).lower()}",
        "",
        "[widths]",
        f"space = {spec.space_width}",
        f"time = {spec.time_width}",
        f"precision = {spec.precision_width}",
        "",
        "[heads]",
        f"space = {spec.space_heads}",
        f"time = {spec.time_heads}",
        "",
        "[timecode]",
        f"frequencies = {code.frequencies}",
        f"shortest_days = {code.shortest_days!r}",
        f"longest_days = {code.longest_days!r}",
        "",
        "[normalisation]",
        f"mean = [{', '.join(repr(v) for v in norm.mean)}]",
        f"std = [{', '.join(repr(v) for v in norm.std)}]",
        f"source = {_string(norm.source)}",
        "",
        "[weights]",
        f"file = {_string(weights_file)}",
        f"sha256 = {_string(sha256)}",
        f"seed = {spec.weights.seed}",
        "",
        "[training]",
        f"run = {_string(record.run)}",
        f"steps = {record.steps}",
        f"data = {_string(record.data)}",
        f"finished = {_string(finished)}",
        f"objective = {_string(record.objective)}",
    ]
    return "\n".join(lines) + "\n"


def _string(value: str) -> str:
    """A TOML basic string: backslashes and quotes escaped, no control characters."""
    if any(ord(c) < 0x20 for c in value):
        raise ValueError(f"{value!r} holds a control character: not written into a spec")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
