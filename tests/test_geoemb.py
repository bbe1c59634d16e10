"""Standard metadata: geoemb: Zarr attributes and STAC embeddings-extension fields, checked against
the published examples and schemas (copied below as Python, with their sources)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import zarr

from aef_pipeline.errors import UserInputError
from aef_pipeline.geoemb import (
    FIT_FOR_USE_TRAINED,
    GEOEMB_CONVENTION,
    STAC_EMBEDDINGS_EXTENSION,
    apply_stac_embeddings,
    geoemb_attributes,
    stac_embeddings_fields,
    validate_geoemb,
)
from aef_pipeline.store import NODATA_INT8, dequantise, quantise

UNTRAINED = "untrained: deterministic initialisation from seed 0"
TRAINED = "weights tiny.safetensors sha256 " + "0" * 64

# --- published geoemb: examples ------------------------------------------------------------------
# geo-embeddings/embeddings-zarr-convention @ 0655212938f36351245dbd3e5e8868f811d43663, the
# "attributes" object of each file in examples/, copied as published.
REGISTRATION = {
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": "Geoembeddings convention for geospatial embedding arrays with model provenance",
}
# examples/aef_example.json. Its linear scale of 1/128 is wrong for AlphaEarth's int8 (sign-square),
# but it is what the convention publishes, and it is valid against the schema.
AEF_EXAMPLE: dict[str, Any] = {
    "zarr_conventions": [REGISTRATION],
    "geoemb:type": "pixel",
    "geoemb:dimensions": 64,
    "geoemb:model": "https://arxiv.org/abs/2507.22291",
    "geoemb:source_data": [
        "https://developers.google.com/earth-engine/datasets/catalog/GOOGLE_SATELLITE_EMBEDDING_V1_ANNUAL"
    ],
    "geoemb:data_type": "int8",
    "geoemb:gsd": 10.0,
    "geoemb:quantization": {
        "method": "linear",
        "original_dtype": "float32",
        "quantized_dtype": "int8",
        "scale": {"type": "scalar", "scale": 0.0078125, "offset": 0.0},
    },
}
# examples/tessera_example.json
TESSERA_EXAMPLE: dict[str, Any] = {
    "zarr_conventions": [
        REGISTRATION,
        {
            "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
            "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
            "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
            "name": "spatial:",
            "description": "Spatial coordinate information",
        },
        {
            "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
            "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
            "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
            "name": "proj:",
            "description": "Coordinate reference system information for geospatial data",
        },
    ],
    "geoemb:type": "pixel",
    "geoemb:dimensions": 128,
    "geoemb:model": "https://geotessera.org/model/1.0",
    "geoemb:source_data": [
        "https://sentinel.esa.int/web/sentinel/missions/sentinel-1",
        "https://sentinel.esa.int/web/sentinel/missions/sentinel-2",
    ],
    "geoemb:data_type": "int8",
    "geoemb:gsd": 10.0,
    "geoemb:spatial_layout": "utm_zones",
    "geoemb:build_version": "0.7.5",
    "geoemb:quantization": {
        "method": "per_pixel_scale",
        "original_dtype": "float32",
        "quantized_dtype": "int8",
        "scale": {"type": "array", "array_name": "scales", "nodata": "+inf"},
    },
    "proj:code": "EPSG:32630",
    "spatial:dimensions": ["y", "x"],
    "spatial:transform": [10.0, 0.0, 167130.0, 0.0, -10.0, 6765170.0],
    "spatial:shape": [856064, 69632],
    "spatial:bbox": [167130.0, -1795470.0, 863450.0, 6765170.0],
    "spatial:registration": "pixel",
}
# examples/clay_example.json
CLAY_EXAMPLE: dict[str, Any] = {
    "zarr_conventions": [REGISTRATION],
    "geoemb:type": "chip",
    "geoemb:dimensions": 768,
    "geoemb:model": "https://huggingface.co/made-with-clay/Clay",
    "geoemb:source_data": ["https://registry.opendata.aws/sentinel-2-l2a-cogs/"],
    "geoemb:data_type": "float32",
    "geoemb:gsd": 10.0,
    "geoemb:chip_layout": {"layout_type": "regular_grid", "chip_size": [256, 256], "stride": [256, 256]},
    "geoemb:benchmark": ["https://clay-foundation.github.io/model/benchmarks"],
}
# README.md, "Example (Minimal Pixel Embedding)": a registration by name and uuid only.
MINIMAL_EXAMPLE: dict[str, Any] = {
    "zarr_conventions": [{"name": "geoemb:", "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c"}],
    "geoemb:type": "pixel",
    "geoemb:dimensions": 768,
    "geoemb:model": "https://huggingface.co/made-with-clay/Clay",
    "geoemb:source_data": ["https://registry.opendata.aws/sentinel-2-l2a-cogs/"],
    "geoemb:data_type": "float32",
}


def ours(storage: str = "int8", trained: bool = False) -> dict[str, Any]:
    return geoemb_attributes(
        model="tiny",
        model_weights=TRAINED if trained else UNTRAINED,
        trained=trained,
        storage=storage,
        dimensions=64,
        zone="33N",
        epsg=32633,
        resolution_m=10,
        tile_pixels=1920,
    )


def kind(value: Any) -> str:
    """JSON type, with integers counted as numbers where the schema says "number"."""
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}[type(value)]


@pytest.mark.parametrize(
    "example", [AEF_EXAMPLE, TESSERA_EXAMPLE, CLAY_EXAMPLE, MINIMAL_EXAMPLE], ids=["aef", "tessera", "clay", "minimal"]
)
def test_published_examples_pass(example: dict[str, Any]) -> None:
    assert validate_geoemb(example) == []


@pytest.mark.parametrize("storage", ["int8", "float16", "float32"])
@pytest.mark.parametrize("trained", [False, True])
def test_ours_pass_with_the_published_keys_and_types(storage: str, trained: bool) -> None:
    attrs = ours(storage, trained)
    assert validate_geoemb(attrs) == []
    shared = AEF_EXAMPLE.keys() - {"geoemb:quantization"}  # quantization only where there is one
    assert shared <= attrs.keys()
    assert {key: kind(attrs[key]) for key in shared} == {key: kind(AEF_EXAMPLE[key]) for key in shared}
    assert attrs["geoemb:data_type"] == storage
    assert attrs["geoemb:dimensions"] == 64
    assert attrs["geoemb:gsd"] == 10.0
    assert {
        key for key in attrs if ":" in key and not key.startswith(("geoemb:", "aef:", "proj:", "spatial:"))
    } == set()


def test_int8_names_the_sign_square_scheme_not_a_linear_scale() -> None:
    attrs = ours("int8")
    quantization = attrs["geoemb:quantization"]
    published = AEF_EXAMPLE["geoemb:quantization"]
    assert quantization.keys() <= published.keys()
    assert {k: kind(v) for k, v in quantization.items()} == {k: kind(published[k]) for k in quantization}
    assert quantization == {"method": "sign_square", "original_dtype": "float32", "quantized_dtype": "int8"}
    assert attrs["aef:nodata"] == NODATA_INT8
    assert "sign(q) * (q / 127.5)^2" in attrs["aef:dequantise"]
    assert "masking q == -128" in attrs["aef:dequantise"]


def test_the_described_scheme_is_the_one_the_store_writes() -> None:
    q = np.arange(-127, 128, dtype=np.int8)
    expected = np.sign(q) * (q.astype(np.float64) / 127.5) ** 2
    np.testing.assert_allclose(dequantise(q), expected, rtol=1e-6)
    x = np.array([-1.0, -0.25, 0.0, 0.25, 1.0, np.nan], dtype=np.float32)
    assert quantise(x).tolist() == [-127, -64, 0, 64, 127, NODATA_INT8]  # sqrt(0.25) * 127.5 = 63.75


@pytest.mark.parametrize("storage", ["float16", "float32"])
def test_float_storage_has_no_quantization_and_nan_nodata(storage: str) -> None:
    attrs = ours(storage)
    assert "geoemb:quantization" not in attrs
    assert "aef:dequantise" not in attrs
    assert attrs["aef:nodata"] == "NaN"


def test_untrained_output_says_so() -> None:
    untrained, trained = ours(trained=False), ours(trained=True)
    assert untrained["aef:trained"] is False
    assert untrained["aef:notice"].startswith("UNTRAINED MODEL")
    assert trained["aef:trained"] is True
    assert "aef:notice" not in trained
    assert untrained["geoemb:model"] == "urn:aef-pipeline:model:tiny"  # never Google's AlphaEarth model


def test_registration_and_layout() -> None:
    attrs = ours()
    assert attrs["zarr_conventions"][0] == GEOEMB_CONVENTION
    assert [c["name"] for c in attrs["zarr_conventions"]] == ["geoemb:", "proj:", "spatial:"]
    assert attrs["proj:code"] == "EPSG:32633"
    assert attrs["spatial:dimensions"] == ["y", "x"]
    assert "geoemb:spatial_layout" not in attrs  # our groups are "33N", not the convention's "utm33"
    assert (attrs["aef:zone"], attrs["aef:tile_pixels"]) == ("33N", 1920)


def test_attributes_survive_a_zarr_group(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "field.zarr"), mode="w", zarr_format=3)
    group.update_attributes(ours())
    stored = dict(zarr.open_group(str(tmp_path / "field.zarr"), mode="r").attrs)
    assert stored == ours()
    assert validate_geoemb(stored) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"storage": "int4"}, "storage 'int4' is not one of int8, float16, float32"),
        ({"epsg": 32733}, "EPSG:32733 is not the CRS of zone 33N (EPSG:32633); pass epsg=32633"),
        ({"zone": "utm33"}, "zone 'utm33' is not a zone group name like '33N'"),
        ({"trained": True}, "trained=True contradicts model_weights 'untrained: "),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "model": "tiny",
        "model_weights": UNTRAINED,
        "trained": False,
        "storage": "int8",
        "dimensions": 64,
        "zone": "33N",
        "epsg": 32633,
        "resolution_m": 10,
        "tile_pixels": 1920,
    }
    with pytest.raises(UserInputError, match="^" + re.escape(message)):
        geoemb_attributes(**(arguments | kwargs))


# --- the checker ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "zarr_conventions",
        "geoemb:type",
        "geoemb:dimensions",
        "geoemb:model",
        "geoemb:source_data",
        "geoemb:data_type",
    ],
)
def test_a_missing_required_key_is_reported(key: str) -> None:
    attrs = {k: v for k, v in ours().items() if k != key}
    assert validate_geoemb(attrs) == [f"{key}: missing (required)"]


def test_a_chip_needs_a_chip_layout() -> None:
    attrs = {k: v for k, v in CLAY_EXAMPLE.items() if k != "geoemb:chip_layout"}
    assert validate_geoemb(attrs) == ["geoemb:chip_layout: missing (required)"]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("geoemb:dimensions", "64", "geoemb:dimensions: expected an integer >= 1, got '64' (string)"),
        ("geoemb:dimensions", True, "geoemb:dimensions: expected an integer >= 1, got True (boolean)"),
        ("geoemb:dimensions", 0, "geoemb:dimensions: expected an integer >= 1, got 0 (integer)"),
        ("geoemb:type", "patch", "geoemb:type: expected one of 'pixel', 'chip', got 'patch' (string)"),
        ("geoemb:model", "tiny", "geoemb:model: expected a URI with a scheme (e.g. https://...), got 'tiny' (string)"),
        # The fork avsm/embeddings-zarr-convention once had a single string here; v1 wants an array.
        ("geoemb:source_data", "https://x.org/s2", "geoemb:source_data: expected an array, got 'https://x.org/s2'"),
        ("geoemb:source_data", [], "geoemb:source_data: expected an array of 1..any items, got []"),
        ("geoemb:source_data", [3], "geoemb:source_data[0]: expected a URI with a scheme"),
        ("geoemb:data_type", 8, "geoemb:data_type: expected a string, got 8 (integer)"),
        ("geoemb:gsd", 0, "geoemb:gsd: expected a number > 0, got 0 (integer)"),
        ("geoemb:spatial_layout", "quadkey", "geoemb:spatial_layout: expected one of 'utm_zones', 'global'"),
        ("geoemb:build_version", 1.0, "geoemb:build_version: expected a string, got 1.0 (number)"),
        ("geoemb:quantization", {"method": "linear"}, "geoemb:quantization.original_dtype: missing (required)"),
        (
            "geoemb:quantization",
            {"method": "sign_square", "original_dtype": "float32", "nodata": -128},
            "geoemb:quantization.nodata: not allowed here",
        ),
        (
            "geoemb:quantization",
            {"method": "linear", "original_dtype": "float32", "scale": {"type": "scalar"}},
            "geoemb:quantization.scale.scale: missing (required)",
        ),
        (
            "geoemb:quantization",
            {"method": "linear", "original_dtype": "float32", "scale": 0.0078125},
            "geoemb:quantization.scale: expected an object, got 0.0078125 (number)",
        ),
        (
            "geoemb:quantization",
            {"method": "linear", "original_dtype": "float32", "scale": {"type": "square"}},
            "geoemb:quantization.scale.type: expected one of 'scalar', 'array', got 'square'",
        ),
        (
            "geoemb:chip_layout",
            {"layout_type": "regular_grid", "chip_size": [256]},
            "geoemb:chip_layout.chip_size: expected an array of 2 items, got [256] (array)",
        ),
        ("geoemb:dimension", 64, "geoemb:dimension: not a field of the geoemb: convention v1"),
    ],
)
def test_a_wrong_value_is_reported(key: str, value: Any, problem: str) -> None:
    problems = validate_geoemb(ours() | {key: value})
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem)


@pytest.mark.parametrize(
    ("conventions", "problem"),
    [
        ("geoemb:", "zarr_conventions: expected an array of convention objects, got 'geoemb:' (string)"),
        ([{"name": "proj:", "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f"}], "zarr_conventions: no entry registers"),
        ([{"name": "geoemb:"}], "zarr_conventions[0]: needs a schema_url, spec_url or uuid"),
        (
            [REGISTRATION | {"uuid": "0000"}],
            "zarr_conventions[0].uuid: expected '61c12cc5-0e28-4056-999a-480cf3fb7e4c'",
        ),
        ([REGISTRATION | {"version": "1"}], "zarr_conventions[0].version: not allowed here"),
    ],
)
def test_a_bad_registration_is_reported(conventions: Any, problem: str) -> None:
    problems = validate_geoemb(ours() | {"zarr_conventions": conventions})
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem)


# --- STAC ----------------------------------------------------------------------------------------
# geo-embeddings/embeddings-stac-specification @ 0a9cb049734831066afe27d0a8a822eb078745ac:
# json-schema/schema.json's field definitions (jsonschema is not installed here, so by hand), and the
# JSON types its examples/collection.json and examples/item.json use for them.
COLLECTION_FIELDS = {
    "emb:type": "string",
    "emb:dimensions": "number",
    "data_type": "string",
    "gsd": "number",
    "emb:chip_layout": "object",
    "emb:temporal_resolution": "string",
    "emb:fit_for_use": "array",
    "emb:uncertainty": "object",
}
COLLECTION_REQUIRED = {"emb:type", "emb:dimensions", "data_type"}
COLLECTION_REQUIRED_RELS = {"emb:model", "emb:source-data"}
SUMMARY_FIELDS = {
    "emb:type",
    "emb:dimensions",
    "data_type",
    "gsd",
    "emb:temporal_resolution",
    "emb:fit_for_use",
    "emb:uncertainty",
}
ITEM_PROPERTY_FIELDS = {
    "emb:runtime_parameters": "object",
    "emb:preprocessing": "object",
    "emb:postprocessing": "object",
    "emb:fit_for_use": "array",
    "emb:spatial_coverage": "string",
    "emb:uncertainty": "object",
    "emb:quantization": "object",
    "emb:energy": "object",
}
QUANTIZATION_FIELDS = {
    "method": "string",
    "original_dtype": "string",
    "quantized_dtype": "string",
    "scale": "array",
    "offset": "array",
    "link": "object",
}
QUANTIZATION_REQUIRED = {"method", "original_dtype"}


def stac_pair(storage: str, trained: bool) -> tuple[pystac.Collection, pystac.Item]:
    fields = stac_embeddings_fields(
        model="tiny",
        model_weights=TRAINED if trained else UNTRAINED,
        trained=trained,
        storage=storage,
        dimensions=64,
        resolution_m=10,
    )
    start, end = dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    collection = pystac.Collection(
        id="aef-embedding-field",
        description="test",
        extent=pystac.Extent(pystac.SpatialExtent([[14.0, 45.0, 15.0, 46.0]]), pystac.TemporalExtent([[start, end]])),
    )
    item = pystac.Item(
        id="33N_20240101_20250101",
        geometry={"type": "Point", "coordinates": [14.5, 45.5]},
        bbox=[14.5, 45.5, 14.5, 45.5],
        datetime=None,
        start_datetime=start,
        end_datetime=end,
        properties={},
    )
    item.add_asset("embeddings", pystac.Asset(href="../field.zarr/33N", media_type="application/vnd+zarr"))
    apply_stac_embeddings(collection, fields)
    apply_stac_embeddings(item, fields)
    collection.add_item(item)
    return collection, item


def check_fields(values: Mapping[str, Any], schema: Mapping[str, str]) -> list[str]:
    """The extension's `^(?!emb:)` pattern plus additionalProperties: false: any non-emb: key, and
    only the defined emb: keys, each of its type."""
    problems = [f"{k}: not defined" for k in values if k.startswith("emb:") and k not in schema]
    return problems + [f"{k}: not {schema[k]}" for k, v in values.items() if k in schema and kind(v) != schema[k]]


@pytest.mark.parametrize("storage", ["int8", "float16", "float32"])
@pytest.mark.parametrize("trained", [False, True])
def test_stac_collection_matches_the_extension(storage: str, trained: bool) -> None:
    collection = stac_pair(storage, trained)[0].to_dict(include_self_link=False)
    assert STAC_EMBEDDINGS_EXTENSION in collection["stac_extensions"]
    assert collection.keys() >= COLLECTION_REQUIRED
    assert check_fields(collection, COLLECTION_FIELDS) == []
    assert {link["rel"] for link in collection["links"]} >= COLLECTION_REQUIRED_RELS
    emb_links = [link for link in collection["links"] if link["rel"].startswith("emb:")]
    # As in examples/collection.json: rel, href, type and title, all strings.
    assert all(kind(value) == "string" for link in emb_links for value in link.values())
    assert all(link.keys() <= {"rel", "href", "type", "title"} for link in emb_links)
    assert collection["summaries"].keys() <= SUMMARY_FIELDS
    assert (collection["emb:type"], collection["emb:dimensions"], collection["data_type"]) == ("pixel", 64, storage)
    assert collection["emb:fit_for_use"] == list(FIT_FOR_USE_TRAINED if trained else ["pipeline_testing"])


@pytest.mark.parametrize("storage", ["int8", "float16", "float32"])
def test_stac_item_matches_the_extension(storage: str) -> None:
    item = stac_pair(storage, trained=False)[1].to_dict(include_self_link=False)
    assert STAC_EMBEDDINGS_EXTENSION in item["stac_extensions"]
    assert "embeddings" in item["assets"]
    assert check_fields(item["properties"], ITEM_PROPERTY_FIELDS) == []
    assert item["properties"]["emb:runtime_parameters"] == {
        "model": "tiny",
        "model_weights": UNTRAINED,
        "trained": False,
    }
    quantization = item["properties"].get("emb:quantization")
    if storage != "int8":
        assert quantization is None
        return
    assert quantization.keys() >= QUANTIZATION_REQUIRED
    assert (
        check_fields(
            {f"emb:{k}": v for k, v in quantization.items()}, {f"emb:{k}": t for k, t in QUANTIZATION_FIELDS.items()}
        )
        == []
    )
    assert quantization["method"] == "sign_square"


def test_stac_links_survive_saving(tmp_path: Path) -> None:
    collection, _ = stac_pair("int8", trained=False)
    collection.normalize_hrefs(str(tmp_path / "stac"))
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    read = pystac.Collection.from_file(str(tmp_path / "stac" / "collection.json"))
    model = read.get_single_link("emb:model")
    assert model is not None
    assert model.href == "urn:aef-pipeline:model:tiny"
    assert "UNTRAINED" in (model.title or "")
    assert read.extra_fields["emb:dimensions"] == 64


def test_stac_applying_twice_declares_the_extension_once() -> None:
    collection, item = stac_pair("int8", trained=True)
    fields = stac_embeddings_fields(
        model="tiny", model_weights=TRAINED, trained=True, storage="int8", dimensions=64, resolution_m=10
    )
    apply_stac_embeddings(item, fields)
    apply_stac_embeddings(collection, fields)
    assert item.stac_extensions.count(STAC_EMBEDDINGS_EXTENSION) == 1
    assert collection.stac_extensions.count(STAC_EMBEDDINGS_EXTENSION) == 1
    assert [link.rel for link in collection.links if link.rel.startswith("emb:")] == ["emb:model", "emb:source-data"]
