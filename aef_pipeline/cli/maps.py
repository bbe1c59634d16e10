"""`sample`, `classify` and `evaluate`: from a field to vectors at points, maps, and measurements."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aef_pipeline.errors import UserInputError

if TYPE_CHECKING:
    from aef_pipeline.maps.protocol import LabelsPerClass

POINTS_HELP = "GeoJSON, GeoPackage, GeoParquet, Shapefile, or CSV/Parquet with lon/lat (or x/y) columns"


def add_commands(commands: Any) -> None:
    sample = commands.add_parser("sample", help="the field's vectors at labelled points or polygons (GeoParquet)")
    sample.add_argument("field", type=Path, help="an embedding store (Zarr)")
    sample.add_argument("--points", type=Path, required=True, help=POINTS_HELP)
    sample.add_argument("--out", type=Path, required=True, help="GeoParquet file to write")
    _common(sample)
    sample.set_defaults(handler=sample_command)

    classify = commands.add_parser(
        "classify", help="fit on labelled points, map every written pixel (COG or Zarr), cross-validated accuracy"
    )
    classify.add_argument("field", type=Path, help="an embedding store (Zarr)")
    classify.add_argument("--labels", type=Path, required=True, help=POINTS_HELP)
    classify.add_argument("--property", required=True, help="the labels' column: a class, or a value with --regress")
    classify.add_argument("--out", type=Path, required=True, help="map.tif (a COG with overviews) or map.zarr")
    classify.add_argument("--method", default="knn", help="knn (default), linear or forest")
    classify.add_argument("--k", type=int, default=3, help="neighbours for knn (default 3)")
    classify.add_argument("--regress", action="store_true", help="a continuous property: R2 and RMSE")
    classify.add_argument("--folds", type=int, default=5, help="spatial cross-validation folds (default 5)")
    classify.add_argument("--crs", help="one mosaic in this CRS (e.g. EPSG:3035) instead of one map per UTM zone")
    _common(classify)
    classify.set_defaults(handler=classify_command)

    evaluate = commands.add_parser(
        "evaluate", help="the paper's protocol (kNN, linear probe; 1, 10, max labels) on fields and a raw baseline"
    )
    evaluate.add_argument("--points", type=Path, required=True, help=f"labelled points: {POINTS_HELP}")
    evaluate.add_argument("--fields", type=Path, nargs="+", required=True, help="embedding stores to compare")
    evaluate.add_argument("--property", help="the label column (default: label)")
    evaluate.add_argument("--labels-per-class", default="1,10,max", help="training-set sizes (default 1,10,max)")
    evaluate.add_argument("--regress", action="store_true", help="a continuous label: R2")
    evaluate.add_argument("--baseline-stac", help="STAC catalog (URL or path) for the raw-pixel baseline")
    evaluate.add_argument("--json", type=Path, help="also write the table and counts as JSON")
    evaluate.add_argument("--period", help="a year (2022) or START/END; may be left out when the fields hold one")
    evaluate.add_argument("--points-crs", help="CRS of a table's x/y columns, or of a file that declares none")
    evaluate.set_defaults(handler=evaluate_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--period", help="a year (2022) or START/END; may be left out when the field holds one")
    parser.add_argument("--points-crs", help="CRS of a table's x/y columns, or of a file that declares none")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def sample_command(args: argparse.Namespace) -> int:
    from aef_pipeline.maps.points import read_points
    from aef_pipeline.maps.sample import sample_field

    out: Path = args.out
    if out.exists() and not args.overwrite:
        raise UserInputError(f"{out} exists: choose another --out or pass --overwrite")
    _check_field(args.field)
    points = read_points(args.points, args.points_crs)
    samples = sample_field(args.field, points, args.period)
    samples.require_some(args.field)
    partial = out.with_name(f".{out.name}.partial")
    samples.table.to_parquet(partial)
    partial.replace(out)
    report = out.with_name(out.name + ".json")
    report.write_text(json.dumps({"period": samples.period.label, "missing": samples.missing}, indent=1))
    print(
        f"sampled {len(samples.table)} of {len(points)} points ({samples.period.label}) into {out}; "
        f"{len(samples.missing)} without a vector, listed in {report}"
    )
    return 0


def classify_command(args: argparse.Namespace) -> int:
    from aef_pipeline.maps.classify import MapRequest, UntrainedFieldWarning, make_map

    _check_field(args.field)
    request = MapRequest(
        args.field,
        args.labels,
        args.property,
        args.out,
        method=args.method,
        k=args.k,
        period=args.period,
        regress=args.regress,
        folds=args.folds,
        overwrite=args.overwrite,
        points_crs=args.points_crs,
        crs=args.crs,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UntrainedFieldWarning)
        report = make_map(request)
    print(_summary(report))
    for warning in caught:
        print(f"aef-pipeline: warning: {warning.message}")
    return 0


def _check_field(path: Path) -> None:
    from aef_pipeline.store import required_zones

    required_zones(path)


def _summary(report: dict[str, Any]) -> str:
    cv = report["cross_validation"]
    low, high = cv["interval_95"]
    if "r2" in cv:
        score = f"R2 {cv['r2']:.3f} (95 % {low:.3f} to {high:.3f}), RMSE {cv['rmse']:.4g}"
    else:
        score = f"balanced accuracy {cv['balanced_accuracy']:.3f} (95 % {low:.3f} to {high:.3f})"
    missing, blocks = len(report["labels_missing"]), f"{cv['blocks']} blocks of {cv['block_m'] / 1000:g} km"
    return "\n".join(
        [
            f"{report['labels_used']} labels ({missing} not on the field), period {report['period']}",
            f"spatial {cv['folds']}-fold cross-validation ({blocks}): {score}",
            f"wrote {', '.join(report['outputs'])}; report {report['report']}",
        ]
    )


def evaluate_command(args: argparse.Namespace) -> int:
    from aef_pipeline.maps.evaluate import EvaluationRequest, evaluate, render

    request = EvaluationRequest(
        args.points,
        tuple(args.fields),
        property=args.property,
        period=args.period,
        labels_per_class=_labels_per_class(args.labels_per_class),
        regress=args.regress,
        baseline_stac=args.baseline_stac,
        points_crs=args.points_crs,
    )
    results, report = evaluate(request)
    print(render(results, report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


def _labels_per_class(text: str) -> tuple[LabelsPerClass, ...]:
    sizes: list[LabelsPerClass] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "max":
            sizes.append("max")
        elif part.isdigit() and int(part) > 0:
            sizes.append(int(part))
        else:
            raise UserInputError(f"--labels-per-class {text!r}: write positive numbers and max, e.g. 1,10,max")
    return tuple(sizes)
