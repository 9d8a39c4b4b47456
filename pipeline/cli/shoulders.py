"""The ``shoulders`` command: look into feature stores and backbones.

    shoulders ls [FEATURES_DIR]          every store: rows, backbone / cut, shape
    shoulders show STORE                 one store's identity, runs and shapes
    shoulders layers BACKBONE [--size N] the layers a feature set can cut at: index, depth, output shape, name
    shoulders layers hub --preset DIR    a keras_hub preset's blocks (by index too) and layers, with shapes
    shoulders check                      every feature set's cut against its backbone, and where its weights
                                         come from (checked to be there, or downloadable)
    shoulders check-params               every value of params.yaml, and the names under data.source that DVC
                                         could not hash (what the params_check stage checks), without DVC
    shoulders verify [FEATURES_DIR]      every store: chunks as written, made with the current params,
                                         a row for every image of the manifest? (exit status 1 if not)
    shoulders gc [FEATURES_DIR]          remove rows of images no longer in the manifest (named; --dry-run
                                         lists them first, --keep OTHER.csv keeps another experiment's)
    shoulders predict MODEL INPUTS...    classify image files/folders with an exported model (CSV)
    shoulders summary [--top N]          the chosen model and the top of the leaderboard, in 100 columns
    shoulders exps                       experiments side by side (`dvc exp show`): changed params, the chosen
                                         model and each feature set's best val accuracy, in <= 120 columns

``--debug`` (anywhere) shows the traceback of an error instead of its one line.
Also available as ``python -m pipeline``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage, take_debug_flag


def _ls(args) -> None:
    from pipeline.store.reader import list_feature_sets

    infos = list_feature_sets(args.features)
    if not infos:
        print(f"no feature stores under {args.features}/")
        return
    print(f"{'feature set':<24} {'rows':>7} {'state':<11} {'shape':<16} backbone (weights) / cut")
    for info in infos:
        p = info.identity
        shape = "×".join(str(d) for d in info.feature_shape)
        state = "INTERRUPTED" if info.pending else "ok"
        print(
            f"{info.key:<24} {info.rows:>7} {state:<11} {shape:<16} {p.get('backbone')} ({p.get('weights')}) / "
            f"{p.get('cut')}"
        )


def _show(args) -> None:
    from pipeline.store.reader import open_store

    group = open_store(args.store)
    attrs = dict(group.attrs)
    attrs.pop("chunk_digests", None)
    attrs["arrays"] = {
        name: {"shape": list(group[name].shape), "chunks": list(group[name].chunks), "dtype": str(group[name].dtype)}
        for name in ("X", "sha256", "done")
        if name in group
    }
    print(json.dumps(attrs, indent=2, default=str))


def _layers(args) -> None:
    from pipeline.backbones import family, validate_feature_set
    from pipeline.backbones.registry import layer_shapes
    from pipeline.config import FeatureSetParams

    spec = FeatureSetParams(
        backbone=args.backbone, weights="none", size=args.size, alpha=args.alpha, preset=args.preset
    )
    if family(args.backbone).from_preset:
        from pipeline.backbones.hub import describe_cuts

        validate_feature_set(spec)
        print("\n".join(describe_cuts(spec)))
        return
    if args.preset is not None:
        raise ValueError(f"--preset applies to backbone 'hub' only. Received: {args.backbone!r}")
    print("\n".join(layer_table(layer_shapes(spec))))


def layer_table(shapes: Sequence[tuple[str, tuple]]) -> list[str]:
    """One line per layer: its index, its depth (index / last index: 0 the input, 1 the last layer, as
    ``cut_depth`` in the reports), its output shape for one image and its name (what ``cut`` takes)."""
    last = max(1, len(shapes) - 1)
    lines = [f"{'index':>5}  {'depth':>5}  {'output shape':<16}  {'features':>9}  layer (cut)"]
    for index, (name, shape) in enumerate(shapes):
        size = 1
        for d in shape:
            size *= d if d is not None else 0
        text = "×".join(str(d) for d in shape) if shape else "(several)"
        lines.append(f"{index:>5}  {index / last:>5.2f}  {text:<16}  {size if shape else '':>9}  {name}")
    return lines


def _check(args) -> None:
    from pipeline.backbones.cuts import check_cuts
    from pipeline.backbones.weights import weights_sources
    from pipeline.config import load_params

    features = load_params(args.params).features
    resolved, sources = check_cuts(features), weights_sources(features)
    for key, entry in resolved.items():
        print(
            f"{key:<24} {entry['backbone']} / {entry['cut']} (layer {entry['cut_index']} of "
            f"{entry['n_layers']}), input {entry['input_size']}, weights from {sources[key].describe()}"
        )


def _check_params(args) -> None:
    # The stage's own checks: this command is how to get them when DVC stops before running that stage
    # (its hashing of data.source fails on a name that is not UTF-8 without naming the file).
    from pipeline.stages.params_check import check_params

    params = check_params(args.params, args.synthetic)
    print(
        f"{args.params}: every value valid; data.source {params.data.source}: "
        + (
            "the synthesize stage's folder"
            if Path(params.data.source).resolve() == args.synthetic.resolve()
            else "exists, and DVC can hash every name under it"
        )
    )


def _verify(args) -> None:
    from pipeline.config import load_params
    from pipeline.store.layout import StoreError
    from pipeline.store.verify import render, verify_features

    reports = verify_features(args.features, load_params(args.params), args.manifest, checks=args.checks, progress=True)
    print(render(reports))
    failing = [r for r in reports if r.failing]
    if failing:
        raise StoreError(
            f"{len(failing)} store(s) not ok: "
            + ", ".join(f"{r.key} ({r.state})" for r in failing)
            + "; `dvc repro` re-extracts stale stores and recomputes the rows of damaged chunks"
        )


# Removed rows a gc names one by one (a dry run names all of them).
GC_LISTED = 20


def _gc(args) -> None:
    from pipeline.config import load_params
    from pipeline.extraction.wanted import view_images
    from pipeline.manifest import read_manifest
    from pipeline.store.gc import collect_garbage
    from pipeline.store.layout import VIEWS_DIR

    manifests = [args.manifest, *args.keep]
    records = [record for manifest in manifests for record in read_manifest(manifest)]
    named = " nor ".join(str(m) for m in manifests)
    tta = load_params(args.params).extract.augment.tta
    keep, keep_views = {r.sha256 for r in records}, set(view_images(records, tta=tta))
    removed = 0
    stores = sorted(args.features.glob("*.zarr")) + sorted((args.features / VIEWS_DIR).glob("*.zarr"))
    for path in stores:
        views = path.parent.name == VIEWS_DIR
        done = collect_garbage(path, keep_views if views else keep, dry_run=args.dry_run)
        removed += done.removed
        why = f"of images no longer in {named}" + (
            " (views: of its training images only, val and test too with extract.augment.tta)" if views else ""
        )
        print(
            f"{path}: {done.rows_before} rows, {done.removed} {why} "
            + ("would be removed" if args.dry_run else "removed")
            + (":" if done.removed else "")
        )
        shown = done.removed_hashes if args.dry_run else done.removed_hashes[:GC_LISTED]
        for content_hash in shown:
            print(f"  - sha256 {content_hash}")
        if len(shown) < done.removed:
            print(f"  - … and {done.removed - len(shown)} more (`--dry-run` lists every row before a gc)")
    if removed:
        print(
            "another experiment that needs these rows (queued, or on another split or dataset) computes them "
            "again: keep them with --keep ITS_MANIFEST.csv (repeatable)"
            + (
                ""
                if args.dry_run
                else "; the stores changed: `dvc commit` records them (or `dvc repro`, which finds nothing to compute)"
            )
        )


def _summary(args) -> None:
    import csv

    from pipeline.reporting.summary import summary_lines

    for path in (args.report, args.leaderboard):
        if not path.is_file():
            raise FileNotFoundError(f"no {path}: the evaluate stage writes it (`dvc repro`)")
    report = json.loads(args.report.read_text(encoding="utf-8"))
    with open(args.leaderboard, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    print("\n".join(summary_lines(report, rows, top=args.top)))


def _exps(args) -> None:
    import shutil
    import subprocess

    from pipeline.reporting.experiments import experiment_rows, experiments_lines

    if args.json is not None:
        text = args.json.read_text(encoding="utf-8")
    else:
        command = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["--all-commits"] if args.all else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ValueError(f"`dvc exp show --json` failed (exit status {done.returncode}): {done.stderr.strip()}")
        text = done.stdout
    width = args.width or shutil.get_terminal_size((120, 24)).columns
    print("\n".join(experiments_lines(experiment_rows(json.loads(text)), width=width)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoulders",
        description="Look into shoulders' feature stores and "
        "backbones, verify them, and classify images with an exported model.",
        epilog="--debug (anywhere): show an error's traceback instead of its one line",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("ls", help="list the feature stores")
    ls.add_argument("features", nargs="?", default="features", help="a folder, or an fsspec URL (s3://…)")
    ls.set_defaults(run=_ls)
    show = commands.add_parser("show", help="print one store's provenance and array shapes")
    show.add_argument("store", help="a store: features/KEY.zarr, or an fsspec URL")
    show.set_defaults(run=_show)
    layers = commands.add_parser("layers", help="list the layers a backbone can be cut at")
    layers.add_argument("backbone")
    layers.add_argument("--size", type=int, default=None, help="input size (default: the family's)")
    layers.add_argument("--alpha", type=float, default=None, help="width multiplier (MobileNets)")
    layers.add_argument("--preset", default=None, help="backbone hub: a keras_hub preset directory (or name)")
    layers.set_defaults(run=_layers)
    check = commands.add_parser(
        "check", help="check every feature set's cut against its backbone's layers, and that its weights can be had"
    )
    check.add_argument("--params", type=Path, default=Path("params.yaml"))
    check.set_defaults(run=_check)
    check_params = commands.add_parser(
        "check-params",
        help="check every value of params.yaml, and that DVC can "
        "hash every name under data.source (UTF-8 names, no dangling link)",
    )
    check_params.add_argument("--params", type=Path, default=Path("params.yaml"))
    check_params.add_argument(
        "--synthetic", type=Path, default=Path("data/synthetic"), help="the synthesize stage's folder (need not exist)"
    )
    check_params.set_defaults(run=_check_params)
    verify = commands.add_parser("verify", help="check every store's chunks, shapes and provenance")
    verify.add_argument("features", nargs="?", default=Path("features"), type=Path)
    verify.add_argument("--params", type=Path, default=Path("params.yaml"))
    verify.add_argument("--manifest", type=Path, default=Path("data/manifest.csv"))
    verify.add_argument(
        "--checks", type=Path, default=Path("reports/checks"), help="the check stage's folder, which resolves cut: null"
    )
    verify.set_defaults(run=_verify)
    gc = commands.add_parser("gc", help="remove rows of images no longer in the manifest")
    gc.add_argument("features", nargs="?", default=Path("features"), type=Path)
    gc.add_argument("--manifest", type=Path, default=Path("data/manifest.csv"))
    gc.add_argument("--params", type=Path, default=Path("params.yaml"))
    gc.add_argument(
        "--keep",
        type=Path,
        action="append",
        default=[],
        metavar="MANIFEST",
        help="also keep the rows of this manifest's images (another experiment's; repeatable)",
    )
    gc.add_argument("--dry-run", action="store_true", help="only list the rows that would go (by content hash)")
    gc.set_defaults(run=_gc)
    summary = commands.add_parser("summary", help="the chosen model and the top of the leaderboard (100 columns)")
    summary.add_argument("--top", type=int, default=10, help="leaderboard rows shown (default 10)")
    summary.add_argument("--report", type=Path, default=Path("reports/evaluation.json"))
    summary.add_argument("--leaderboard", type=Path, default=Path("reports/leaderboard.csv"))
    summary.set_defaults(run=_summary)
    exps_help = (
        "experiments side by side (`dvc exp show --json`): the params each changed against its baseline, the "
        "chosen model and its val accuracy (metrics.json), and each feature set's best val accuracy "
        "(reports/best/), in at most 120 columns (the terminal's width if narrower)"
    )
    exps = commands.add_parser("exps", help=exps_help, description=exps_help)
    exps.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="read this saved `dvc exp show --json` output instead"
    )
    exps.add_argument("--all", action="store_true", help="experiments of every commit (`dvc exp show --all-commits`)")
    exps.add_argument("--width", type=int, default=None, help="columns (default: the terminal's, at most 120)")
    exps.set_defaults(run=_exps)
    predict = commands.add_parser(
        "predict", add_help=False, help="classify images with an exported model (`shoulders predict -h`)"
    )
    predict.add_argument("arguments", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    debug, argv = take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    if argv[:1] == ["predict"]:
        # predict has its own parser (options such as -h would not pass through a subparser).
        from pipeline.export.predict_command import main as predict_main

        run_stage(lambda: predict_main(argv[1:]), debug=debug)
        return
    args = build_parser().parse_args(argv)
    run_stage(lambda: args.run(args), debug=debug)


if __name__ == "__main__":
    main(sys.argv[1:])
