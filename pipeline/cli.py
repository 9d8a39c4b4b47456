"""The ``shoulders`` command: look into feature stores and backbones.

    shoulders ls [FEATURES_DIR]          every store: complete?, rows per split, backbone, cut
    shoulders show STORE                 one store's provenance and shapes
    shoulders layers BACKBONE [--size N] the layer names a feature set can cut at
    shoulders check                      every feature set's cut against its backbone (no weights needed)
    shoulders verify [FEATURES_DIR]      every store: complete, uncorrupted, made with the current
                                         params and manifest? (exit status 1 if not)
    shoulders predict MODEL INPUTS...    classify image files/folders with an exported model (CSV)

Also available as ``python -m pipeline``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from pipeline.stage import run_stage


def _ls(args) -> None:
    from pipeline.store.reader import list_feature_sets

    infos = list_feature_sets(args.features)
    if not infos:
        print(f"no feature stores under {args.features}/")
        return
    print(f"{'feature set':<24} {'state':<10} {'train':>6} {'val':>5} {'test':>5}  {'shape':<16} backbone / cut")
    for info in infos:
        p = info.provenance
        state = "complete" if info.complete else "INCOMPLETE"
        shape = "×".join(str(d) for d in info.feature_shape)
        print(f"{info.key:<24} {state:<10} {info.rows.get('train', 0):>6} {info.rows.get('val', 0):>5} "
              f"{info.rows.get('test', 0):>5}  {shape:<16} {p.get('backbone')} ({p.get('weights')}) / {p.get('cut')}")


def _show(args) -> None:
    from pipeline.store.reader import open_store

    group = open_store(args.store)
    attrs = dict(group.attrs)
    attrs["arrays"] = {f"{split}/{name}": {"shape": list(group[split][name].shape),
                                           "chunks": list(group[split][name].chunks),
                                           "dtype": str(group[split][name].dtype)}
                       for split in ("train", "val", "test") for name in ("X", "y", "ids")}
    print(json.dumps(attrs, indent=2, default=str))


def _layers(args) -> None:
    from pipeline.backbones import layer_names
    from pipeline.config import FeatureSetParams

    for name in layer_names(FeatureSetParams(backbone=args.backbone, weights="none", size=args.size,
                                             alpha=args.alpha)):
        print(name)


def _check(args) -> None:
    from pipeline.backbones.cuts import check_cuts
    from pipeline.config import load_params

    for key, entry in check_cuts(load_params(args.params).features).items():
        print(f"{key:<24} {entry['backbone']} / {entry['cut']} (layer {entry['cut_index']} of "
              f"{entry['n_layers']}), input {entry['input_size']}")


def _verify(args) -> None:
    from pipeline.config import load_params
    from pipeline.store.layout import StoreError
    from pipeline.store.verify import render, verify_features

    reports = verify_features(args.features, load_params(args.params), args.manifest, progress=True)
    print(render(reports))
    failing = [r for r in reports if r.failing]
    if failing:
        raise StoreError(f"{len(failing)} store(s) not ok: " + ", ".join(f"{r.key} ({r.state})" for r in failing)
                         + "; `dvc repro` re-extracts stale and damaged stores")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoulders", description="Look into shoulders' feature stores and "
                                     "backbones, verify them, and classify images with an exported model.")
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
    layers.set_defaults(run=_layers)
    check = commands.add_parser("check", help="check every feature set's cut against its backbone's layers")
    check.add_argument("--params", type=Path, default=Path("params.yaml"))
    check.set_defaults(run=_check)
    verify = commands.add_parser("verify", help="check every store's chunks, shapes and provenance")
    verify.add_argument("features", nargs="?", default=Path("features"), type=Path)
    verify.add_argument("--params", type=Path, default=Path("params.yaml"))
    verify.add_argument("--manifest", type=Path, default=Path("data/manifest.csv"))
    verify.set_defaults(run=_verify)
    predict = commands.add_parser("predict", add_help=False,
                                  help="classify images with an exported model (`shoulders predict -h`)")
    predict.add_argument("arguments", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["predict"]:
        # predict has its own parser (options such as -h would not pass through a subparser).
        from pipeline.export.predict import main as predict_main

        run_stage(lambda: predict_main(argv[1:]))
        return
    args = build_parser().parse_args(argv)
    run_stage(lambda: args.run(args))


if __name__ == "__main__":
    main(sys.argv[1:])
