"""Augmentation and fine-tuning without giving up the cache: accuracy and wall time, same run.

On one dataset (``--source``: ``../shared/datasets/signs``, or ``synthetic2`` for
a cats-vs-dogs-like binary task of 2 × 500 generated images) with one feature
set (EfficientNet-Lite0, ImageNet weights, ``--cut``), through the pipeline's
own stage functions in a temporary folder:

(a) clean cached features — the heads grid on the clean store;
(b) clean + K cached augmented views, K = 2, 4, 8 — the augment stage grown
    from 2 to 4 to 8 views (each step computes only the new views), heads
    trained with ``augment: stack`` and (dense) ``draw``, with and without TTA;
(c) the fine-tune stage, warm-started from the best dense head of (a).

Each row is the best variant on validation, scored once on test; wall time is
what that row added (for (b) the new views plus the heads; for (c) the stage).

Usage::

    python benchmarks/augment.py --source ../shared/datasets/signs
    python benchmarks/augment.py --source synthetic2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_params(
    folder: Path,
    source: str,
    *,
    cut: str,
    views: int,
    augment: list[str],
    tta: list[bool],
    finetune: dict | None = None,
) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = source
    params["features"] = {"lite0": {"backbone": "efficientnet_lite0", "weights": "imagenet", "cut": cut}}
    params["extract"]["augment"] = {
        "views": views,
        "seed": 0,
        "tta": True,
        "ops": {"flip": "horizontal", "rotation": 0.05, "zoom": 0.1, "translation": 0.1, "contrast": 0.2},
    }
    params["heads"].update(
        {
            "kinds": ["logreg", "svm_linear", "dense"],
            "augment": augment,
            "tta": tta,
            "logreg": {"C": [0.01, 0.1, 1.0], "max_iter": 2000},
            "svm_linear": {"C": [0.01, 0.1]},
        }
    )
    params["heads"]["dense"].update({"hidden_units": [256], "dropout": [0.5], "weight_decay": [0.0], "epochs": [60]})
    if finetune:
        params["finetune"].update(finetune)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def best(folder: Path, *, keep=lambda variant: True) -> dict:
    """The best variant on validation among those ``keep`` accepts, scored on test (evaluate's own code)."""
    import joblib
    import numpy as np

    from pipeline.config import load_params
    from pipeline.selection.scoring import score_test, select_best
    from pipeline.store.reader import open_feature_set, open_views

    scores = json.loads((folder / "heads/lite0/scores.json").read_text())
    rows = [r for r in scores["variants"] if keep(r["variant"])]
    pick = select_best(rows, "accuracy")
    test = open_feature_set(folder / "features/lite0.zarr", "test", pooling=pick["pooling"])
    X = test.X
    if pick.get("tta"):
        views = open_views(folder / "features/views/lite0.zarr", "test", pooling=pick["pooling"]).X
        X = np.concatenate([X[:, None], views], axis=1)
    estimator = joblib.load(folder / "heads/lite0" / f"{pick['variant']}.joblib")
    # score_test averages over views (TTA) as the evaluate stage does.
    result = score_test(estimator, X, test.y, test.classes, load_params(folder / "params.yaml").evaluate)
    return {
        "variant": pick["variant"],
        "val": pick["val_accuracy"],
        "test": result["test_accuracy"],
        "ci": result["test_accuracy_ci95"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared/datasets/signs"))
    parser.add_argument("--cut", default="top_activation")
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--unfreeze", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from pipeline.stages import augment, extract, finetune, prepare, synthesize
    from pipeline.stages import heads as heads_stage

    rows = []
    with tempfile.TemporaryDirectory(prefix="shoulders-augment-") as tmp:
        folder = Path(tmp)
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            source = os.path.abspath(os.path.join(cwd, args.source)) if args.source != "synthetic2" else "data/syn"
            write_params(folder, source, cut=args.cut, views=0, augment=["none"], tta=[False])
            if args.source == "synthetic2":
                params = yaml.safe_load((folder / "params.yaml").read_text())
                params["synthetic"] = {"classes": 2, "per_class": 500, "image_size": 128, "seed": 1}
                (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                synthesize.main(["--out", "data/syn", "--no-progress"])
            prepare.main(["--manifest", "data/manifest.csv", "--report", "reports/prepare.json", "--no-progress"])
            started = time.perf_counter()
            extract.main(["--feature-set", "lite0", "--out", "features/lite0.zarr", "--no-progress"])
            extract_seconds = time.perf_counter() - started
            started = time.perf_counter()
            heads_stage.main(["--features", "features", "--out", "heads", "--no-progress"])
            rows.append(
                {"setting": "(a) clean cached features", **best(folder), "seconds": time.perf_counter() - started}
            )
            for views in (2, 4, 8):
                write_params(folder, source, cut=args.cut, views=views, augment=["stack", "draw"], tta=[False, True])
                started = time.perf_counter()
                augment.main(["--feature-set", "lite0", "--out", "features/views/lite0.zarr", "--no-progress"])
                grown = time.perf_counter() - started
                heads_stage.main(["--features", "features", "--out", "heads", "--no-progress"])
                spent = time.perf_counter() - started
                rows.append(
                    {
                        "setting": f"(b) clean + {views} views (stack/draw, ±TTA)",
                        **best(folder),
                        "seconds": spent,
                        "views_seconds": grown,
                    }
                )
                rows.append(
                    {
                        "setting": "    same, without TTA",
                        **best(folder, keep=lambda v: "tta" not in v),
                        "seconds": spent,
                    }
                )
            write_params(
                folder,
                source,
                cut=args.cut,
                views=0,
                augment=["none"],
                tta=[False],
                finetune={
                    "feature_set": "lite0",
                    "epochs": args.finetune_epochs,
                    "patience": 2,
                    "unfreeze": args.unfreeze,
                    "learning_rate": 1e-5,
                },
            )
            heads_stage.main(["--features", "features", "--out", "heads", "--no-progress"])
            started = time.perf_counter()
            finetune.main(["--heads", "heads", "--out", "finetune", "--no-progress"])
            result = json.loads((folder / "finetune/result.json").read_text())
            rows.append(
                {
                    "setting": f"(c) fine-tune top {args.unfreeze} layers from {result['head_variant']}",
                    "variant": f"kept the {result['kept']}, {result['epochs_run']} epochs",
                    "val": result["val_accuracy"],
                    "test": result["test_accuracy"],
                    "ci": result["test_accuracy_ci95"],
                    "seconds": time.perf_counter() - started,
                    "val_before": result["val_accuracy_before"],
                }
            )
        finally:
            os.chdir(cwd)
    print(
        f"\nsource: {args.source}; EfficientNet-Lite0 (ImageNet) cut at {args.cut}; extraction of the clean "
        f"features: {extract_seconds:.0f} s"
    )
    print(f"{'setting':<58} {'best on val':<44} {'val':>6} {'test':>6} {'95% CI':>15} {'seconds':>8}")
    for r in rows:
        low, high = r["ci"]
        print(
            f"{r['setting']:<58} {r['variant']:<44} {r['val']:>6.4f} {r['test']:>6.4f} "
            f"{low:>7.4f}-{high:<7.4f} {r['seconds']:>8.0f}"
            + (f"  (views {r['views_seconds']:.0f} s)" if "views_seconds" in r else "")
        )


if __name__ == "__main__":
    main()
