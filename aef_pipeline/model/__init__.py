"""The STP encoder: specs (models/*.toml), the network, timecodes and weights."""

from aef_pipeline.model.spec import ModelSpec, load_spec
from aef_pipeline.model.stp import STPEncoder
from aef_pipeline.model.weights import (
    CheckpointError,
    LoadedModel,
    Provenance,
    build_model,
    check_weights,
    load_model,
    parameter_count,
    provenance_of,
    save_weights,
)

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "ModelSpec",
    "Provenance",
    "STPEncoder",
    "build_model",
    "check_weights",
    "load_model",
    "load_spec",
    "parameter_count",
    "provenance_of",
    "save_weights",
]
