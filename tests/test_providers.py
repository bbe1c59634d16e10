"""Provider conventions read from item metadata, checked on the real items in ../shared."""

from __future__ import annotations

from pathlib import Path

import pystac
import pytest

from aef_pipeline.providers import (
    ItemMetadataError,
    SceneInfo,
    SkippedItem,
    describe_item,
    resolve_acquisition,
    resolve_crs,
    resolve_dn_offset,
    resolve_mgrs_tile,
)

BANDS = ("B02", "B03", "B04", "B08", "B11")


def _item(folder: Path, name: str) -> pystac.Item:
    return pystac.Item.from_file(str(folder / name))


# (file, DN offset the pixels carry, MGRS tile, asset key of B04, SCL key)
REAL_CASES = [
    ("earthsearch_v1_s2l2a__S2A_33TWN_20220122_0_L2A.json", 0, "33TWN", "red", "scl"),  # 03.01
    ("earthsearch_v1_s2l2a__S2B_33TWN_20220130_0_L2A.json", 0, "33TWN", "red", "scl"),  # 04.00, removed by E84
    ("earthsearch_v1_s2l2a__S2B_33TWN_20220226_0_L2A.json", 1000, "33TWN", "red", "scl"),  # 04.00, kept
    ("earthsearch_v1_s2c1l2a__S2B_T24MUV_20250731T130245_L2A.json", 1000, "24MUV", "red", "scl"),
    ("planetarycomputer_s2l2a__S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json", 0, "06VVN", "B04", "SCL"),
    (
        "planetarycomputer_s2l2a__S2B_MSIL2A_20240825T173909_R098_T13TDE_20240825T215747.json",
        1000,
        "13TDE",
        "B04",
        "SCL",
    ),
]


@pytest.mark.parametrize(("name", "offset", "mgrs", "red_key", "scl_key"), REAL_CASES)
def test_real_items_are_understood(
    real_examples: Path, name: str, offset: int, mgrs: str, red_key: str, scl_key: str
) -> None:
    info = describe_item(_item(real_examples, name), BANDS)
    assert isinstance(info, SceneInfo), info
    assert info.dn_offset == offset
    assert info.mgrs_tile == mgrs
    assert info.asset_keys["B04"] == red_key
    assert info.asset_keys["SCL"] == scl_key
    assert info.crs.startswith("EPSG:32")


def test_cross_collection_duplicates_share_their_acquisition_key(real_examples: Path) -> None:
    """Legacy and c1 Earth Search hold the same 24MUV product (same s2:product_uri)."""
    legacy = _item(real_examples, "earthsearch_v1_s2l2a__S2B_24MUV_20250731_0_L2A.json")
    c1 = _item(real_examples, "earthsearch_v1_s2c1l2a__S2B_T24MUV_20250731T130245_L2A.json")
    assert resolve_acquisition(legacy) == resolve_acquisition(c1)
    assert resolve_mgrs_tile(legacy) == resolve_mgrs_tile(c1) == "24MUV"
    legacy_info, c1_info = describe_item(legacy, BANDS), describe_item(c1, BANDS)
    assert isinstance(legacy_info, SceneInfo)
    assert isinstance(c1_info, SceneInfo)
    assert legacy_info.legacy_earth_search
    assert not legacy_info.collection_1
    assert c1_info.collection_1
    assert not c1_info.legacy_earth_search


def test_acquisition_key_drops_the_baseline_suffix(real_examples: Path) -> None:
    item = _item(real_examples, "earthsearch_v1_s2l2a__S2B_33TWN_20220226_0_L2A.json")
    assert resolve_acquisition(item) == "GS2B_20220226T095029_025988"


def test_proj_code_wins_over_proj_epsg_and_asset_over_item(real_examples: Path) -> None:
    item = _item(real_examples, "earthsearch_v1_s2c1l2a__S2B_T24MUV_20250731T130245_L2A.json")
    item.properties["proj:code"] = "EPSG:32724"
    item.properties["proj:epsg"] = 32799
    assert resolve_crs(item, "red") == "EPSG:32724"
    item.assets["red"].extra_fields["proj:code"] = "EPSG:32624"
    assert resolve_crs(item, "red") == "EPSG:32624"


def test_item_without_crs_is_an_error_naming_it(real_examples: Path) -> None:
    item = _item(real_examples, "planetarycomputer_s2l2a__S2B_MSIL2A_20240825T173909_R098_T13TDE_20240825T215747.json")
    # pystac migrates proj:epsg to proj:code on reading: remove whichever is there, everywhere.
    for fields in (item.properties, *(asset.extra_fields for asset in item.assets.values())):
        fields.pop("proj:epsg", None)
        fields.pop("proj:code", None)
    with pytest.raises(ItemMetadataError, match=f"item {item.id} has no CRS"):
        describe_item(item, BANDS)


def test_without_a_baseline_the_declared_offset_decides(real_examples: Path) -> None:
    item = _item(real_examples, "earthsearch_v1_s2c1l2a__S2B_T24MUV_20250731T130245_L2A.json")
    del item.properties["s2:processing_baseline"]
    assert resolve_dn_offset(item) == 1000
    pc = _item(real_examples, "planetarycomputer_s2l2a__S2B_MSIL2A_20240825T173909_R098_T13TDE_20240825T215747.json")
    del pc.properties["s2:processing_baseline"]
    assert resolve_dn_offset(pc) is None
    skip = describe_item(pc, BANDS)
    assert isinstance(skip, SkippedItem)
    assert skip.item_id == pc.id
    assert "cannot tell whether DNs carry +1000" in skip.reason


def test_missing_band_is_a_reason_not_a_crash(real_examples: Path) -> None:
    item = _item(real_examples, "earthsearch_v1_s2c1l2a__S2B_T24MUV_20250731T130245_L2A.json")
    del item.assets["swir16"]
    assert describe_item(item, BANDS) == SkippedItem(item.id, "no asset for band B11 (looked for B11 or swir16)")
