"""Synthetic items carry the same asset keys, fields and value types as the real providers' items."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from aef_pipeline.testing import SyntheticCatalog

REAL_PATTERN = {
    "earth-search": "earthsearch_v1_s2c1l2a__*.json",
    "planetary-computer": "planetarycomputer_s2l2a__*.json",
    "earth-search-legacy": "earthsearch_v1_s2l2a__*.json",
}


def _real_items(folder: Path, flavor: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for path in sorted(folder.glob(REAL_PATTERN[flavor])):
        doc = json.loads(path.read_text())
        items += doc["features"] if doc["type"] == "FeatureCollection" else [doc]
    assert items, f"no real {flavor} items in {folder}"
    return items


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "int" if isinstance(value, int) else "float"
    return type(value).__name__


def _common(sets: list[set[str]]) -> set[str]:
    return set.intersection(*sets)


def test_asset_keys_match_real(any_flavor_catalog: SyntheticCatalog, real_examples: Path) -> None:
    catalog = any_flavor_catalog
    real = _real_items(real_examples, catalog.flavor.name)
    required = _common([set(item["assets"]) for item in real])
    allowed = set.union(*(set(item["assets"]) for item in real))
    for item in catalog.items:
        assert required <= set(item["assets"]) <= allowed, item["id"]


def test_property_names_match_real(any_flavor_catalog: SyntheticCatalog, real_examples: Path) -> None:
    catalog = any_flavor_catalog
    real = _real_items(real_examples, catalog.flavor.name)
    required = _common([set(item["properties"]) for item in real])
    allowed = set.union(*(set(item["properties"]) for item in real))
    for item in catalog.items:
        names = set(item["properties"])
        assert required <= names, (item["id"], required - names)
        assert names <= allowed, (item["id"], names - allowed)


def test_extensions_and_top_level_match_real(any_flavor_catalog: SyntheticCatalog, real_examples: Path) -> None:
    catalog = any_flavor_catalog
    real = _real_items(real_examples, catalog.flavor.name)
    for item in catalog.items:
        assert set(item) == set(real[0]) | {"links"}
        assert any(set(item["stac_extensions"]) == set(r["stac_extensions"]) for r in real)
        assert item["collection"] == real[0]["collection"]


def test_value_types_match_real(any_flavor_catalog: SyntheticCatalog, real_examples: Path) -> None:
    catalog = any_flavor_catalog
    """Each property, asset field and raster:bands field has a JSON type a real item also uses."""
    real = _real_items(real_examples, catalog.flavor.name)
    seen: dict[str, set[str]] = {}
    for item in real:
        for path, value in _fields(item):
            seen.setdefault(path, set()).add(_json_type(value))
    for item in catalog.items:
        for path, value in _fields(item):
            if path in seen:
                assert _json_type(value) in seen[path], (item["id"], path, value, seen[path])


def _fields(item: dict[str, Any]) -> list[tuple[str, Any]]:
    out = [(f"properties.{k}", v) for k, v in item["properties"].items()]
    for key, asset in item["assets"].items():
        out += [(f"assets.{key}.{k}", v) for k, v in asset.items()]
        for band in asset.get("raster:bands", []):
            out += [(f"assets.{key}.raster:bands.{k}", v) for k, v in band.items()]
        for band in asset.get("eo:bands", []):
            out += [(f"assets.{key}.eo:bands.{k}", v) for k, v in band.items()]
    return out


def test_earth_search_raster_bands_declare_the_offset_the_pixels_carry(earth_search_catalog: SyntheticCatalog) -> None:
    for item, scene in zip(earth_search_catalog.items, earth_search_catalog.scenes, strict=True):
        band = item["assets"]["red"]["raster:bands"][0]
        assert band["scale"] == 0.0001
        assert band["offset"] == (-0.1 if scene.has_boa_offset else 0.0)


def test_planetary_computer_items_have_no_raster_bands(planetary_computer_catalog: SyntheticCatalog) -> None:
    for item in planetary_computer_catalog.items:
        assert not any("raster:bands" in asset for asset in item["assets"].values())


def test_legacy_earth_search_declares_the_offset_by_baseline_and_flags_its_removal(
    legacy_earth_search_catalog: SyntheticCatalog,
) -> None:
    """The raster:bands offset follows the baseline even where the provider removed it from the DNs."""
    flags = set()
    for item, scene in zip(legacy_earth_search_catalog.items, legacy_earth_search_catalog.scenes, strict=True):
        assert item["assets"]["red"]["raster:bands"][0]["offset"] == (-0.1 if scene.has_boa_offset else 0)
        flags.add((scene.has_boa_offset, item["properties"]["earthsearch:boa_offset_applied"], scene.dn_offset))
    assert flags == {(False, False, 0), (True, True, 0), (True, False, 1000)}


def test_crs_is_declared_like_real(any_flavor_catalog: SyntheticCatalog) -> None:
    catalog = any_flavor_catalog
    for item, scene in zip(catalog.items, catalog.scenes, strict=True):
        assert item["properties"]["proj:epsg"] == scene.tile.epsg


def test_reading_real_items_prints_no_pystac_migration_noise(real_examples: Path) -> None:
    # A fresh process with default warning filters, as a user's: pystac's storage-extension
    # migration warns for every real Earth Search item unless a task's environment silences it.
    code = (
        "import json, pathlib, sys, pystac\n"
        "from aef_pipeline.environment import TaskEnvironment, applied\n"
        "with applied(TaskEnvironment()):\n"
        "    for path in sys.argv[1:]:\n"
        "        pystac.Item.from_dict(json.loads(pathlib.Path(path).read_text()))\n"
    )
    items = [str(p) for p in sorted(real_examples.glob("earthsearch_v1_s2c1l2a__S2*.json"))]
    assert items
    shown = subprocess.run([sys.executable, "-W", "default", "-c", code, *items], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "Could not parse bucket" not in shown.stderr
    control_code = code.replace("applied(TaskEnvironment())", "open(sys.argv[1])")
    control = subprocess.run(
        [sys.executable, "-W", "default", "-c", control_code, *items], capture_output=True, text=True
    )
    assert "Could not parse bucket" in control.stderr  # the warning is real without the filter
