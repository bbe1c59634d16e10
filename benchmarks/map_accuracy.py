"""Does `classify`'s cross-validated accuracy tell the truth? Map with 10 labels per class, then
score the map on held-out truth points and compare with the estimate it printed.

    aef-pipeline demo-catalog cat --world labelled --size-km 4.8 --years 2022
    aef-pipeline run --stac cat/catalog.json --bbox W S E N --years 2022 --out tiny.zarr --model tiny
    python benchmarks/map_accuracy.py tiny.zarr cat/truth/labels.geojson [--per-class 10] [--method knn]

Draws `--per-class` training points per class from the truth's train split (seeded), runs the
same code as `aef-pipeline classify` (spatial 5-fold CV by 1.28 km blocks, a block-bootstrap
95 % interval), then reads the written map at every test-split point with rasterio and computes
the balanced accuracy there. The estimate is honest if that held-out accuracy lies within the
printed interval.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from pyproj import Transformer
from sklearn.metrics import balanced_accuracy_score

from aef_pipeline.maps.classify import MapRequest, make_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("field", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--method", default="knn")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    truth = gpd.read_file(args.truth)
    train = _draw(truth[truth["split"] == "train"], args.per_class, args.seed)
    test = truth[truth["split"] == "test"]
    with tempfile.TemporaryDirectory() as tmp:
        labels, out = Path(tmp) / "labels.geojson", Path(tmp) / "map.tif"
        train.to_file(labels)
        report = make_map(MapRequest(args.field, labels, "class", out, method=args.method, folds=5, seed=args.seed))
        held_out = _map_accuracy(Path(report["outputs"][0]), test, report)
    cv = report["cross_validation"]
    low, high = cv["interval_95"]
    inside = low <= held_out <= high
    print(f"{args.field}: {args.method}, {args.per_class} labels per class ({len(train)} points)")
    print(f"  cross-validated balanced accuracy {cv['balanced_accuracy']:.3f} (95 % {low:.3f} to {high:.3f})")
    print(f"  the map on {len(test)} held-out truth points: {held_out:.3f} ({'within' if inside else 'OUTSIDE'} it)")


def _draw(pool: gpd.GeoDataFrame, per_class: int, seed: int) -> gpd.GeoDataFrame:
    """`per_class` points of each class, from as many parcels as possible (points of one parcel
    are near copies of each other)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for _, members in pool.groupby("class"):
        by_parcel = members.sample(frac=1, random_state=int(rng.integers(1 << 31))).drop_duplicates("parcel")
        rest = members.drop(by_parcel.index)
        chosen.append(gpd.GeoDataFrame(np.concatenate([by_parcel, rest])[:per_class], columns=members.columns))
    drawn = gpd.GeoDataFrame(np.concatenate(chosen), columns=pool.columns, geometry="geometry", crs=pool.crs)
    return drawn


def _map_accuracy(path: Path, test: gpd.GeoDataFrame, report: dict[str, object]) -> float:
    names = {entry["code"]: entry["name"] for entry in report["classes"]}  # type: ignore[attr-defined]
    with rasterio.open(path) as raster:
        x, y = Transformer.from_crs(4326, raster.crs, always_xy=True).transform(test.geometry.x, test.geometry.y)
        predicted = np.array([values[0] for values in raster.sample(zip(x, y, strict=True), indexes=1)])
        nodata = raster.nodata
    found = predicted != nodata
    labels = np.array([names.get(int(code), "") for code in predicted[found]])
    return float(balanced_accuracy_score(test["class"].to_numpy()[found], labels))


if __name__ == "__main__":
    main()
