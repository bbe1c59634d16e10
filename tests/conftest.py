"""Shared fixtures: the synthetic catalogs of both provider flavours and a real local STAC API."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from aef_pipeline.run import RunRequest, run
from aef_pipeline.search import CatalogConfig
from aef_pipeline.testing import CatalogSpec, SyntheticCatalog, build_catalog, serve_catalogs, write_static_catalog
from aef_pipeline.testing.catalog import built_catalog
from tests.sites import BOTH_YEARS, SMALL

# ../shared beside the checkout holds real provider items to compare against.
SHARED = Path(os.environ.get("AEF_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def shared_catalog(tmp_path_factory: pytest.TempPathFactory, flavor: str) -> SyntheticCatalog:
    """The default test bed of `flavor`, built once for the whole test session: the first pytest-xdist
    worker to ask builds it (10 s) under a file lock, the others load what it saved. Tests only read
    it (one that damages files works on a copy)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: one folder per worker
    folder, items = shared / f"catalog-{flavor}", shared / f"catalog-{flavor}-items.json"
    with FileLock(shared / f"catalog-{flavor}.lock"):
        if not items.exists():
            items.write_text(json.dumps(list(build_catalog(folder, flavor, CatalogSpec()).items)))
        return built_catalog(folder, flavor, CatalogSpec(), json.loads(items.read_text()))


@pytest.fixture(scope="session")
def earth_search_catalog(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCatalog:
    return shared_catalog(tmp_path_factory, "earth-search")


@pytest.fixture(scope="session")
def planetary_computer_catalog(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCatalog:
    return shared_catalog(tmp_path_factory, "planetary-computer")


@pytest.fixture(scope="session")
def legacy_earth_search_catalog(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCatalog:
    return shared_catalog(tmp_path_factory, "earth-search-legacy")


@pytest.fixture(scope="session", params=["earth-search", "planetary-computer", "earth-search-legacy"])
def any_flavor_catalog(
    request: pytest.FixtureRequest,
    earth_search_catalog: SyntheticCatalog,
    planetary_computer_catalog: SyntheticCatalog,
    legacy_earth_search_catalog: SyntheticCatalog,
) -> SyntheticCatalog:
    """Every provider flavour of the test bed, the legacy Earth Search collection included."""
    return {
        "earth-search": earth_search_catalog,
        "planetary-computer": planetary_computer_catalog,
        "earth-search-legacy": legacy_earth_search_catalog,
    }[request.param]


@pytest.fixture(scope="session", params=["earth-search", "planetary-computer"])
def catalog(
    request: pytest.FixtureRequest, earth_search_catalog: SyntheticCatalog, planetary_computer_catalog: SyntheticCatalog
) -> SyntheticCatalog:
    return earth_search_catalog if request.param == "earth-search" else planetary_computer_catalog


@pytest.fixture(scope="session")
def stac_api(
    tmp_path_factory: pytest.TempPathFactory,
    earth_search_catalog: SyntheticCatalog,
    planetary_computer_catalog: SyntheticCatalog,
) -> Iterator[str]:
    """URL of a rustac STAC API serving the c1 and Planetary Computer synthetic collections."""
    with serve_catalogs([earth_search_catalog, planetary_computer_catalog], tmp_path_factory.mktemp("api")) as url:
        yield url


@pytest.fixture(scope="session")
def real_examples() -> Path:
    folder = SHARED / "stac-examples"
    if not folder.is_dir():
        message = f"real STAC examples not found at {folder} (set AEF_SHARED to the shared/ folder)"
        if os.environ.get("CI"):  # CI always has ../shared beside the clone: its absence is an error
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def static_catalog(earth_search_catalog: SyntheticCatalog) -> CatalogConfig:
    """The Earth Search test bed as a static catalog: files any process, or host, can read."""
    return CatalogConfig(str(write_static_catalog(earth_search_catalog)))


@pytest.fixture(scope="session")
def clean_two_years(tmp_path_factory: pytest.TempPathFactory, static_catalog: CatalogConfig) -> Path:
    """The field of tests.sites.SMALL for 2021-2022, run in this process with nothing going wrong:
    what runs that were interrupted, lost a host or filled a disk must end up equal to. Read only."""
    out = tmp_path_factory.mktemp("clean2") / "field.zarr"
    run(RunRequest(SMALL, BOTH_YEARS, out, static_catalog, device="cpu"))
    return out
