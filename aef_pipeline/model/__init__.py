"""The STP encoder: specs (models/*.toml), the network, timecodes and weights."""

from aef_pipeline.model.spec import ModelSpec, TrainingRecord, load_spec
from aef_pipeline.model.stp import EncoderFeatures, STPEncoder
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
    "EncoderFeatures",
    "LoadedModel",
    "ModelSpec",
    "Provenance",
    "STPEncoder",
    "TrainingRecord",
    "build_model",
    "check_weights",
    "load_model",
    "load_spec",
    "parameter_count",
    "provenance_of",
    "save_weights",
]
