"""Stage evaluate: choose the best head per feature set on validation, score it once on test.

Reads  every ``heads/<key>/scores.json`` and the chosen fitted heads, the test
       images of the manifest (``--manifest``) in each feature store, ``--costs`` (the backbone timings of
       stage backbone_cost), ``--finetune`` (the fine-tune stage's result, which
       joins the leaderboard and the overall choice) and ``params.yaml`` sections
       ``evaluate``, ``export.variant``, ``heads.ensemble`` (the soft-voting
       ensemble of the best feature sets' heads, one more row of the leaderboard)
       and ``heads.near_equals`` (the soft vote of the variants indistinguishable
       from the best, one more row too).
Writes ``--metrics`` (``metrics.json``, the headline for ``dvc metrics show`` and
       ``dvc exp show``: the chosen model, its test accuracy with a bootstrap 95%
       interval and its validation accuracy) and ``--best`` (a folder: the same
       few numbers for the best head of each feature set, one file each, so that
       ``dvc metrics show`` prints one short row per model); ``--report`` (the same in full, with per-class recall
       and the cost report); ``--cost`` (the cost report alone: how long the
       sweep took and what its variants would have cost end to end through the
       backbone); ``--leaderboard`` (CSV of every variant, test scores only for
       the chosen ones) and a Markdown twin, which also says whether more
       labelled images would likely help (the learning curve of the overall
       choice's best single feature set, on validation or cross-validation
       only, as the diagnose stage computes it: ``params.yaml`` ``diagnose``); ``--plots`` folder with the data
       of every ``dvc plots`` plot (see :mod:`pipeline.reporting.plots`);
       ``--export-target`` (what the export stage exports: the best head on
       cached features, or the one ``export.variant`` names) and ``--chosen-heads``
       (what the diagnose stage replays: each feature set's chosen head and the
       overall choice). Those two hold only what defines their models, so a sweep
       that leaves them alone reruns neither export nor diagnose.

Only the variant chosen on validation (or by cross-validation on train+val,
with ``heads.cv``) is ever scored on test, so the reported test numbers are not
themselves selected on test; the overall best is chosen on validation too. The
work is :mod:`pipeline.selection.leaderboard`; the files people read are
written by :mod:`pipeline.reporting`.

Usage: ``python -m pipeline.stages.evaluate --heads heads --metrics metrics.json --report reports/evaluation.json
--leaderboard reports/leaderboard.csv --plots plots [--costs reports/backbone_cost.json --cost reports/cost.json]``
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import load_params
from pipeline.diagnosis.chosen import chosen_heads
from pipeline.diagnosis.diagnose import headline_curve
from pipeline.manifest import read_manifest
from pipeline.reporting.plots import write_plots
from pipeline.reporting.tables import leaderboard_markdown, write_csv
from pipeline.selection.leaderboard import add_finetune, evaluate, export_target, metrics_rows

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", required=True, type=Path, help="folder holding heads/<key>/scores.json")
    parser.add_argument("--metrics", required=True, type=Path, help="headline metrics JSON")
    parser.add_argument("--best", type=Path, help="folder for each feature set's best head's metrics, one JSON each")
    parser.add_argument("--report", required=True, type=Path, help="full evaluation JSON")
    parser.add_argument("--leaderboard", required=True, type=Path, help="CSV; a .md twin is written beside it")
    parser.add_argument("--plots", required=True, type=Path, help="folder for dvc plots data")
    parser.add_argument("--costs", type=Path, help="backbone timings (stage backbone_cost), for the cost report")
    parser.add_argument("--cost", type=Path, help="where to write the cost report (needs --costs)")
    parser.add_argument("--finetune", type=Path, help="the fine-tune stage's result.json, joined to the leaderboard")
    parser.add_argument("--export-target", type=Path, help="where to write what the export stage exports")
    parser.add_argument("--chosen-heads", type=Path, help="where to write the heads the diagnose stage replays")
    parser.add_argument("--manifest", default=Path("data/manifest.csv"), type=Path)
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    args = parser.parse_args(argv)
    if args.cost is not None and args.costs is None:
        raise ValueError(f"--cost {args.cost} needs --costs (the backbone timings of stage backbone_cost)")
    params = load_params(args.params)
    settings = params.evaluate
    costs = None
    if args.costs is not None:
        if not args.costs.is_file():
            raise FileNotFoundError(f"no backbone timings at {args.costs}; run stage backbone_cost first")
        costs = json.loads(args.costs.read_text(encoding="utf-8"))
    records = read_manifest(args.manifest)
    report, leaderboard, best = evaluate(
        args.heads, settings, records, costs, ensemble=params.heads.ensemble, near=params.heads.near_equals
    )
    if args.finetune is not None:
        if not args.finetune.is_file():
            raise FileNotFoundError(f"no fine-tune result at {args.finetune}; run stage finetune first")
        add_finetune(report, leaderboard, json.loads(args.finetune.read_text(encoding="utf-8")), settings.select_by)
    rows = metrics_rows(report)
    outputs = [(args.report, report), (args.metrics, rows.pop("chosen"))]
    if args.best is not None:
        for stale in args.best.glob("*.json"):  # a feature set removed since the last run
            stale.unlink()
        outputs += [(args.best / f"{name}.json", row) for name, row in rows.items()]
    if args.export_target is not None:
        outputs.append((args.export_target, export_target(report, leaderboard, args.heads, params.export.variant)))
    if args.chosen_heads is not None:
        outputs.append((args.chosen_heads, chosen_heads(report, args.heads)))
    if args.cost is not None:
        # Flat, so that `dvc metrics show` and `dvc exp show` get a few columns (the full report has the rest).
        outputs.append((args.cost, {k: v for k, v in report["cost"].items() if k != "feature_sets"}))
    for path, content in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    write_csv([{k: v for k, v in row.items() if k != "params"} for row in leaderboard], args.leaderboard)
    curve = headline_curve(report, args.heads, records, params.diagnose, cv=params.heads.cv)
    log.info("%s: learning curve %s", curve["feature_set"], curve["sentence"])
    args.leaderboard.with_suffix(".md").write_text(leaderboard_markdown(leaderboard, report, curve), encoding="utf-8")
    write_plots(args.plots, report, leaderboard, best)
    b = report["best"]
    log.info(
        "best: %s / %s, test accuracy %.4f (95%% CI %s)",
        b["feature_set"],
        b["variant"],
        b["test_accuracy"],
        b["test_accuracy_ci95"],
    )
    if report["cost"]:
        c = report["cost"]
        log.info(
            "sweep: %d variants, heads stages %.1f s wall (%d fitted, %d reused), %.1f s of fitting; "
            "end to end through the backbone they would take ~%.0f s (%.1f ms/image); extracting "
            "the features once ~%.0f s",
            c["variants"],
            c["heads_stage_seconds"],
            c["fitted"],
            c["reused"],
            c["fit_seconds"],
            c["end_to_end_seconds"],
            1000 * c["seconds_per_image_mean"],
            c["extraction_seconds"],
        )


if __name__ == "__main__":
    run_stage(main)
