"""A real STAC API on 127.0.0.1 for tests and demos: `rustac serve` over a synthetic catalog.

rustac's in-memory backend answers POST /search with bbox, datetime, ids, collections, limit
and paging, which is what pystac-client sends. It does not evaluate `query`/CQL2 filters (they
silently match nothing), so the pipeline filters cloud cover and baselines on the client side.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aef_pipeline.testing.catalog import SyntheticCatalog


class StacServerError(RuntimeError):
    """The local STAC server could not be started."""


@contextmanager
def serve_catalogs(
    catalogs: Sequence[SyntheticCatalog], workdir: Path, startup_timeout_s: float = 15.0
) -> Iterator[str]:
    """Serve the catalogs' collections and items; yields the API's root URL.

    The server process is stopped (terminate, then kill) when the block exits, whatever happens.
    """
    paths = []
    workdir.mkdir(parents=True, exist_ok=True)
    for catalog in catalogs:
        collection = workdir / f"{catalog.collection_id}.collection.json"
        collection.write_text(json.dumps(catalog.collection))
        items = workdir / f"{catalog.collection_id}.items.json"
        items.write_text(json.dumps({"type": "FeatureCollection", "features": list(catalog.items)}))
        paths += [str(collection), str(items)]
    port = free_port()
    log = (workdir / "rustac.log").open("w")
    process = subprocess.Popen(
        [_rustac_executable(), "serve", "--addr", f"127.0.0.1:{port}", *paths],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, process, startup_timeout_s, workdir / "rustac.log")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _rustac_executable() -> str:
    # Next to the running interpreter first: a virtual environment need not be on PATH.
    beside = Path(sys.executable).parent / "rustac"
    found = str(beside) if beside.exists() else shutil.which("rustac")
    if not found:
        raise StacServerError("the `rustac` command was not found: install the package with `pip install rustac`")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StacServerError(f"rustac serve exited with code {process.returncode}: {log.read_text()[-500:]}")
        try:
            with urllib.request.urlopen(f"{url}/collections", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise StacServerError(f"rustac serve did not answer at {url} within {timeout_s:.0f} s; log: {log}")
