"""Standard metadata for embedding fields: the `geoemb:` Zarr convention and the STAC embeddings extension.

Followed (docs/metadata.md has the table of values and what could not be mapped):
- Zarr: "Geoembeddings Convention" v1 (maturity: proposal), geo-embeddings/embeddings-zarr-convention,
  README.md and schema.json at commit 0655212938f36351245dbd3e5e8868f811d43663.
- STAC: "Embedding" extension v0.0.1 (maturity: proposal), geo-embeddings/embeddings-stac-specification,
  README.md and json-schema/schema.json at commit 0a9cb049734831066afe27d0a8a822eb078745ac (main, 2026-03-20).

Pure functions, no I/O: `geoemb_attributes` gives what a zone group's attributes should carry,
`stac_embeddings_fields` + `apply_stac_embeddings` fill a Collection and its Items, and
`validate_geoemb` checks attributes against the convention's required fields and types.

Neither standard can describe AlphaEarth's int8 scheme (sign-square, not linear): the quantization
object names it and leaves out `scale`, which both define as *linear* dequantisation, and the
formulas travel in `aef:` keys. (The convention's own published AEF example declares a linear scale
of 1/128, the trap users fall into; we do not copy it.)
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pystac

from aef_pipeline import __version__
from aef_pipeline.errors import UserInputError
from aef_pipeline.grid import utm_epsg

# --- the geoemb: Zarr convention -----------------------------------------------------------------

# The registration object exactly as the convention publishes it (README "Convention Registration";
# schema.json pins each of these values with `const`).
GEOEMB_CONVENTION: Mapping[str, str] = {
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": "Geoembeddings convention for geospatial embedding arrays with model provenance",
}
# Our zone groups also carry `proj:code` and `spatial:*` keys, which the geoemb README says to declare
# alongside. These conventions' URLs have moved (zarr-experimental/geo-proj -> zarr-conventions/geo-proj)
# while their UUIDs, the permanent identifiers, have not; the zarr-conventions spec accepts a UUID alone.
PROJ_CONVENTION: Mapping[str, str] = {"uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f", "name": "proj:"}
SPATIAL_CONVENTION: Mapping[str, str] = {"uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4", "name": "spatial:"}

STORAGES = ("int8", "float16", "float32")
NODATA_INT8 = -128  # store.NODATA_INT8, repeated to keep this module free of the store (a test checks)
DEFAULT_SOURCE_DATA = ("https://earth-search.aws.element84.com/v1/collections/sentinel-2-c1-l2a",)
"""search.py's default catalog and collection; pass the collection URLs a run actually searched."""
# Not a registered model URL (we have none to give): a URN, which is a URI as the convention asks,
# naming the model spec (models/<name>.toml) without claiming to be Google's AlphaEarth model.
MODEL_URI_PREFIX = "urn:aef-pipeline:model:"
ARCHITECTURE_PAPER = "https://arxiv.org/abs/2507.22291"
QUANTIZATION_METHOD = "sign_square"
QUANTISE = "q = clip(round(sign(x) * sqrt(|x|) * 127.5), -127, 127); NaN -> -128"
DEQUANTISE = "x = sign(q) * (q / 127.5)^2, after masking q == -128 as nodata (unmasked it becomes -1.0079)"
# Our groups are one per UTM zone AND hemisphere, named like "33N" (EPSG:326zz / 327zz), so the
# convention's `utm_zones` (one group per zone, named "utm33") does not describe them: see geoemb_attributes.
SPATIAL_LAYOUT = "utm_zone_hemisphere"
UNTRAINED_NOTICE = (
    "UNTRAINED MODEL: the encoder's weights are a deterministic random initialisation, so these vectors "
    "carry no learned meaning; they are fit only for testing the pipeline, not for mapping."
)
_ZONE = re.compile(r"(?P<number>\d{2})(?P<hemisphere>[NS])")


def geoemb_attributes(
    *,
    model: str,
    model_weights: str,
    trained: bool,
    storage: str,
    dimensions: int,
    zone: str,
    epsg: int,
    resolution_m: int,
    tile_pixels: int,
    source_data: Sequence[str] = DEFAULT_SOURCE_DATA,
) -> dict[str, Any]:
    """The standard attributes of one zone group (e.g. "33N"), to merge into the group's attributes.

    Carries the `zarr_conventions` registrations (geoemb:, proj:, spatial:), the geoemb: fields,
    `proj:code` and `spatial:dimensions`; the store adds `spatial:transform`, which depends on the
    group's extent. What the convention has no field for is under `aef:`: whether the model is
    trained (an untrained one also gets `aef:notice`), its weights' provenance, nodata, the exact
    int8 formulas and the tiling. `geoemb:spatial_layout` is left out on purpose (see SPATIAL_LAYOUT).
    Raises UserInputError for a storage we do not write, an EPSG code that is not the zone's, or a
    `trained` flag that contradicts `model_weights`.
    """
    _check_storage(storage)
    _check_zone(zone, epsg)
    _check_trained(trained, model_weights)
    attrs: dict[str, Any] = {
        "zarr_conventions": [dict(GEOEMB_CONVENTION), dict(PROJ_CONVENTION), dict(SPATIAL_CONVENTION)],
        "geoemb:type": "pixel",
        "geoemb:dimensions": dimensions,
        "geoemb:model": model_uri(model),
        "geoemb:source_data": list(source_data),
        "geoemb:data_type": storage,
        "geoemb:gsd": float(resolution_m),
        "geoemb:build_version": __version__,
        **_geoemb_quantization(storage),
        "proj:code": f"EPSG:{epsg}",
        "spatial:dimensions": ["y", "x"],
        # Pixel-is-area: the transform's origin is a pixel's outer corner, not its centre.
        "spatial:registration": "pixel",
        **_aef_fields(model=model, model_weights=model_weights, trained=trained, storage=storage),
        "aef:zone": zone,
        "aef:spatial_layout": SPATIAL_LAYOUT,
        "aef:tile_pixels": tile_pixels,
    }
    return attrs


def model_uri(model: str) -> str:
    """The `geoemb:model` reference of a model spec name, e.g. "urn:aef-pipeline:model:tiny"."""
    return MODEL_URI_PREFIX + model


def _geoemb_quantization(storage: str) -> dict[str, Any]:
    if storage != "int8":
        return {}  # float16 / float32 hold the vectors as computed (float16 only rounds them)
    # No `scale`: the convention's scale objects are linear or per-pixel, and ours is neither.
    return {
        "geoemb:quantization": {"method": QUANTIZATION_METHOD, "original_dtype": "float32", "quantized_dtype": "int8"}
    }


def _aef_fields(*, model: str, model_weights: str, trained: bool, storage: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "aef:model": model,
        "aef:model_weights": model_weights,
        "aef:trained": trained,
        "aef:architecture_paper": ARCHITECTURE_PAPER,
        # JSON has no NaN literal: the string is what zarr v3 writes for a NaN fill value too.
        "aef:nodata": NODATA_INT8 if storage == "int8" else "NaN",
    }
    if storage == "int8":
        fields |= {"aef:quantise": QUANTISE, "aef:dequantise": DEQUANTISE}
    if not trained:
        fields["aef:notice"] = UNTRAINED_NOTICE
    return fields


def _check_storage(storage: str) -> None:
    if storage not in STORAGES:
        raise UserInputError(f"storage {storage!r} is not one of {', '.join(STORAGES)}")


def _check_zone(zone: str, epsg: int) -> None:
    match = _ZONE.fullmatch(zone)
    if match is None:
        raise UserInputError(f"zone {zone!r} is not a zone group name like '33N' or '07S'")
    expected = utm_epsg(int(match["number"]), match["hemisphere"])
    if epsg != expected:
        raise UserInputError(f"EPSG:{epsg} is not the CRS of zone {zone} (EPSG:{expected}); pass epsg={expected}")


def _check_trained(trained: bool, model_weights: str) -> None:
    # The store records "untrained: ..." for a seeded initialisation (model/weights.py).
    if trained == model_weights.startswith("untrained"):
        raise UserInputError(f"trained={trained} contradicts model_weights {model_weights!r}")


# --- the geoemb: checker -------------------------------------------------------------------------

Check = Callable[[Any, str], list[str]]
"""Checks a value found at a path (e.g. "geoemb:quantization.method"); returns the problems."""

REQUIRED = (
    "zarr_conventions",
    "geoemb:type",
    "geoemb:dimensions",
    "geoemb:model",
    "geoemb:source_data",
    "geoemb:data_type",
)
REQUIRED_FOR_CHIP = ("geoemb:chip_layout",)


def validate_geoemb(attrs: Mapping[str, Any]) -> list[str]:
    """The ways a group's attributes break the geoemb: convention v1 (README tables and schema.json):
    missing required keys, wrong types, values outside the allowed set, and geoemb: keys the
    convention does not define (the schema allows those, but they are almost always typos).
    Empty when the attributes conform."""
    required = REQUIRED + (REQUIRED_FOR_CHIP if attrs.get("geoemb:type") == "chip" else ())
    problems = [f"{key}: missing (required)" for key in required if key not in attrs]
    if "zarr_conventions" in attrs:
        problems += _check_registrations(attrs["zarr_conventions"], "zarr_conventions")
    for key, value in attrs.items():
        if not key.startswith("geoemb:"):
            continue
        check = _FIELDS.get(key)
        problems += check(value, key) if check else [f"{key}: not a field of the geoemb: convention v1"]
    return problems


def _kind(value: Any) -> str:
    """The JSON type of a Python value, for messages."""
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
        (str, "string"),
        ((list, tuple), "array"),
        (Mapping, "object"),
        (type(None), "null"),
    ]
    return next((name for types, name in kinds if isinstance(value, types)), type(value).__name__)


def _wrong(path: str, expected: str, value: Any) -> list[str]:
    return [f"{path}: expected {expected}, got {reprlib.repr(value)} ({_kind(value)})"]


def _string(value: Any, path: str) -> list[str]:
    return [] if isinstance(value, str) else _wrong(path, "a string", value)


def _uri(value: Any, path: str) -> list[str]:
    # JSON Schema's "uri" format: an absolute URI, i.e. one with a scheme (https:, urn:, ...).
    if isinstance(value, str) and urlsplit(value).scheme:
        return []
    return _wrong(path, "a URI with a scheme (e.g. https://...)", value)


def _integer(minimum: int) -> Check:
    def check(value: Any, path: str) -> list[str]:
        # JSON Schema counts 64.0 as an integer; JSON's true/false are not numbers.
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ok = integral and not isinstance(value, bool) and value >= minimum
        return [] if ok else _wrong(path, f"an integer >= {minimum}", value)

    return check


def _number(*, above: float | None = None) -> Check:
    def check(value: Any, path: str) -> list[str]:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and (above is None or value > above)
        return [] if ok else _wrong(path, "a number" if above is None else f"a number > {above:g}", value)

    return check


def _enum(*allowed: str) -> Check:
    def check(value: Any, path: str) -> list[str]:
        return [] if value in allowed else _wrong(path, "one of " + ", ".join(map(repr, allowed)), value)

    return check


def _array(item: Check, *, min_items: int = 0, max_items: int | None = None) -> Check:
    def check(value: Any, path: str) -> list[str]:
        if not isinstance(value, list | tuple):
            return _wrong(path, "an array", value)
        if len(value) < min_items or (max_items is not None and len(value) > max_items):
            size = f"{min_items}" if max_items == min_items else f"{min_items}..{max_items or 'any'}"
            return _wrong(path, f"an array of {size} items", value)
        return [problem for i, v in enumerate(value) for problem in item(v, f"{path}[{i}]")]

    return check


def _object(fields: Mapping[str, Check], required: Sequence[str]) -> Check:
    """A closed object (the convention's objects all have additionalProperties: false)."""

    def check(value: Any, path: str) -> list[str]:
        if not isinstance(value, Mapping):
            return _wrong(path, "an object", value)
        problems = [f"{path}.{key}: missing (required)" for key in required if key not in value]
        for key, v in value.items():
            known = fields.get(key)
            problems += known(v, f"{path}.{key}") if known else [f"{path}.{key}: not allowed here"]
        return problems

    return check


def _const(expected: str) -> Check:
    def check(value: Any, path: str) -> list[str]:
        return [] if value == expected else _wrong(path, repr(expected), value)

    return check


def _string_or_number(value: Any, path: str) -> list[str]:
    ok = isinstance(value, str | int | float) and not isinstance(value, bool)
    return [] if ok else _wrong(path, "a number or a string", value)


_SCALES: Mapping[str, Check] = {
    "scalar": _object({"type": _const("scalar"), "scale": _number(), "offset": _number()}, ("type", "scale")),
    "array": _object(
        {"type": _const("array"), "array_name": _string, "nodata": _string_or_number}, ("type", "array_name")
    ),
}


def _scale(value: Any, path: str) -> list[str]:
    """The schema's oneOf of a scalar and an array scale, told apart by their `type` const."""
    if not isinstance(value, Mapping):
        return _wrong(path, "an object", value)
    check = _SCALES.get(str(value.get("type")))
    return check(value, path) if check else _wrong(f"{path}.type", "one of 'scalar', 'array'", value.get("type"))


_PAIR = _array(_integer(1), min_items=2, max_items=2)
_FIELDS: Mapping[str, Check] = {
    "geoemb:type": _enum("pixel", "chip"),
    "geoemb:dimensions": _integer(1),
    "geoemb:model": _uri,
    "geoemb:source_data": _array(_uri, min_items=1),
    "geoemb:data_type": _string,
    "geoemb:gsd": _number(above=0),
    "geoemb:chip_layout": _object(
        {
            "layout_type": _enum("regular_grid", "irregular"),
            "chip_size": _PAIR,
            "stride": _PAIR,
            "grid_id": _string,
            "grid_definition": _uri,
        },
        ("layout_type", "chip_size"),
    ),
    "geoemb:quantization": _object(
        {"method": _string, "original_dtype": _string, "quantized_dtype": _string, "scale": _scale, "link": _uri},
        ("method", "original_dtype"),
    ),
    "geoemb:spatial_layout": _enum("utm_zones", "global"),
    "geoemb:build_version": _string,
    "geoemb:benchmark": _array(_uri),
}


def _check_registrations(value: Any, path: str) -> list[str]:
    """`zarr_conventions` must contain an object registering geoemb: (schema `contains`): one with
    any of schema_url / spec_url / uuid, every key it has equal to the published value, no others."""
    if not isinstance(value, list | tuple):
        return _wrong(path, "an array of convention objects", value)
    ours = [(i, entry) for i, entry in enumerate(value) if isinstance(entry, Mapping) and _names_geoemb(entry)]
    if not ours:
        return [f"{path}: no entry registers the geoemb: convention (uuid {GEOEMB_CONVENTION['uuid']})"]
    attempts = [_check_registration(entry, f"{path}[{i}]") for i, entry in ours]
    return [] if any(not problems for problems in attempts) else attempts[0]


def _names_geoemb(entry: Mapping[str, Any]) -> bool:
    return any(entry.get(key) == GEOEMB_CONVENTION[key] for key in ("schema_url", "spec_url", "uuid", "name"))


def _check_registration(entry: Mapping[str, Any], path: str) -> list[str]:
    problems = (
        [] if {"schema_url", "spec_url", "uuid"} & entry.keys() else [f"{path}: needs a schema_url, spec_url or uuid"]
    )
    for key, v in entry.items():
        published = GEOEMB_CONVENTION.get(key)
        problems += [f"{path}.{key}: not allowed here"] if published is None else _const(published)(v, f"{path}.{key}")
    return problems


# --- the STAC embeddings extension ---------------------------------------------------------------

STAC_EMBEDDINGS_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
FIT_FOR_USE_TRAINED = ("classification", "regression", "clustering", "retrieval", "change_detection")
"""What users do with AlphaEarth-style fields (FIELD-NOTES 11), as the extension's free-form use cases."""
FIT_FOR_USE_UNTRAINED = ("pipeline_testing",)


@dataclass(frozen=True)
class StacEmbeddings:
    """The embeddings-extension fields of one store, split by where the extension puts them."""

    collection_fields: Mapping[str, Any]
    """Top-level Collection fields: emb:type, emb:dimensions, data_type (required), gsd, emb:fit_for_use."""
    item_properties: Mapping[str, Any]
    """Item properties: emb:runtime_parameters and, for int8, emb:quantization."""
    collection_links: tuple[Mapping[str, str], ...]
    """The relations a Collection must have: emb:model and emb:source-data."""


def stac_embeddings_fields(
    *,
    model: str,
    model_weights: str,
    trained: bool,
    storage: str,
    dimensions: int,
    resolution_m: int,
    source_data: Sequence[str] = DEFAULT_SOURCE_DATA,
) -> StacEmbeddings:
    """The extension's fields filled for our store, the same facts as `geoemb_attributes`. An
    untrained model's fields say so twice: in emb:runtime_parameters and as the only use it is fit
    for ("pipeline_testing"). Raises UserInputError as geoemb_attributes does."""
    _check_storage(storage)
    _check_trained(trained, model_weights)
    uses = FIT_FOR_USE_TRAINED if trained else FIT_FOR_USE_UNTRAINED
    collection = {
        "emb:type": "pixel",
        "emb:dimensions": dimensions,
        "data_type": storage,
        "gsd": float(resolution_m),
        "emb:fit_for_use": list(uses),
    }
    properties: dict[str, Any] = {
        "emb:runtime_parameters": {"model": model, "model_weights": model_weights, "trained": trained},
    }
    if storage == "int8":
        # As in geoemb_attributes: the extension's scale/offset are linear, so they are left out.
        properties["emb:quantization"] = {
            "method": QUANTIZATION_METHOD,
            "original_dtype": "float32",
            "quantized_dtype": "int8",
        }
    return StacEmbeddings(collection, properties, _stac_links(model, trained, source_data))


def _stac_links(model: str, trained: bool, source_data: Sequence[str]) -> tuple[Mapping[str, str], ...]:
    state = "trained" if trained else "UNTRAINED"
    model_link = {"rel": "emb:model", "href": model_uri(model), "title": f"aef-pipeline model spec {model!r} ({state})"}
    sources = [
        {"rel": "emb:source-data", "href": href, "type": "application/json", "title": "source collection"}
        for href in source_data
    ]
    return (model_link, *sources)


def apply_stac_embeddings(target: pystac.Collection | pystac.Item, fields: StacEmbeddings) -> None:
    """Declare the extension on `target` and set its fields in place: a Collection gets the
    collection fields, their summaries and the two required links; an Item gets the item properties.
    The extension also requires every Item to have an asset keyed "embeddings" (the caller's)."""
    if STAC_EMBEDDINGS_EXTENSION not in target.stac_extensions:
        target.stac_extensions.append(STAC_EMBEDDINGS_EXTENSION)
    if isinstance(target, pystac.Item):
        target.properties.update(fields.item_properties)
        return
    target.extra_fields.update(fields.collection_fields)
    for key in ("emb:type", "emb:dimensions", "data_type"):
        target.summaries.add(key, [fields.collection_fields[key]])
    for rel in {link["rel"] for link in fields.collection_links}:
        target.remove_links(rel)  # applying twice replaces, not duplicates
    for link in fields.collection_links:
        target.add_link(
            pystac.Link(rel=link["rel"], target=link["href"], media_type=link.get("type"), title=link.get("title"))
        )


__all__ = [
    "DEFAULT_SOURCE_DATA",
    "GEOEMB_CONVENTION",
    "STAC_EMBEDDINGS_EXTENSION",
    "StacEmbeddings",
    "apply_stac_embeddings",
    "geoemb_attributes",
    "model_uri",
    "stac_embeddings_fields",
    "validate_geoemb",
]
