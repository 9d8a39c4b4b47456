"""The leaderboard: every feature set's choice on validation, scored once on test, and the overall best.

:func:`evaluate` reads every ``heads/<key>/scores.json``, chooses per feature
set (:mod:`pipeline.selection.scoring`), scores each choice on its store's test
split, ranks every variant and picks the overall best on validation;
:func:`add_finetune` joins the fine-tune stage's result; :func:`metrics_rows`
condenses it all for ``dvc metrics show``; :func:`export_target` says what the
export stage exports. Loading the chosen heads imports no TensorFlow (see
:mod:`pipeline.heads.dense`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.config import EvaluateParams
from pipeline.heads.combination import open_combination
from pipeline.heads.saved import head_file, head_row, load_head
from pipeline.heads.training import SCORES_FILE
from pipeline.manifest import Record
from pipeline.provenance import features_identity, file_sha256
from pipeline.selection.cost import sweep_cost
from pipeline.selection.ensemble import ENSEMBLE_KEY, soft_vote
from pipeline.selection.near_equals import NEAR_KEY, near_equals
from pipeline.selection.scoring import indistinguishable, rank, score_test, select_best
from pipeline.store.layout import views_path
from pipeline.store.reader import open_feature_set, open_views

log = logging.getLogger(__name__)

#: The chosen model's test result as the export target carries it (its card's): not ``indistinguishable``,
#: which counts other variants.
TEST_KEYS = ("feature_set", "variant", "test_accuracy", "test_accuracy_ci95", "test_macro_f1", "test_recall")
TEST_KEYS += ("test_images",)
#: The soft votes, by key, and why the evaluate stage may have made none.
VOTES = {
    ENSEMBLE_KEY: "heads.ensemble below 2, or fewer than 2 feature sets with a head giving probabilities",
    NEAR_KEY: "heads.near_equals below 2, or fewer than 2 variants with probabilities indistinguishable from the best",
}


def load_scores(heads_dir: Path) -> list[dict]:
    """Every feature set's ``scores.json`` under ``heads_dir``, sorted by feature set."""
    files = sorted(Path(heads_dir).glob(f"*/{SCORES_FILE}"))
    if not files:
        raise FileNotFoundError(f"no {SCORES_FILE} under {heads_dir}/; run the heads stages first")
    return [json.loads(f.read_text(encoding="utf-8")) | {"dir": str(f.parent)} for f in files]


def evaluate(
    heads_dir: Path,
    settings: EvaluateParams,
    records: Sequence[Record],
    costs: dict | None = None,
    ensemble: int = 0,
    near: int = 0,
) -> tuple[dict, list[dict], dict]:
    """Select per feature set, score the selections on test, pick the overall best on validation.

    Parameters
    ----------
    heads_dir : Path
        Holds ``<key>/scores.json`` and the fitted heads.
    settings : EvaluateParams
    records : sequence of Record
        The manifest: which images are test images, and their labels.
    costs : dict, optional
        Backbone timings by feature set (stage backbone_cost); adds ``cost`` to the report.
    ensemble : int
        ``heads.ensemble``: members of the soft-voting ensemble (:mod:`pipeline.selection.ensemble`),
        which joins as one more feature set; below 2, none.
    near : int
        ``heads.near_equals``: members of the soft vote of the variants indistinguishable from the best
        (:mod:`pipeline.selection.near_equals`), one more feature set too; below 2, none.

    Returns
    -------
    report : dict
        Everything about the selections (:func:`metrics_rows` condenses it for ``dvc metrics show``).
    leaderboard : list of dict
        One row per variant over all feature sets, best validation score first.
    best : dict
        The overall best selection with its test labels and predictions, for plots.
    """
    chosen, leaderboard = {}, []
    all_scores = load_scores(heads_dir)
    for scores in all_scores:
        key, provenance = scores["feature_set"], scores["provenance"]
        pick = select_best(scores["variants"], settings.select_by)
        if scores.get("combines"):
            # A combination: its members' test rows side by side, each store checked against its identity.
            test = open_combination(
                scores["store"],
                scores["combines"],
                "test",
                manifest=records,
                pooling=pick["pooling"],
                expect=[features_identity(i) for i in scores["identity"]],
            )
            expect = None
        else:
            # The heads were trained on this store's rows: refuse a store rebuilt since with another identity.
            expect = features_identity(scores["identity"])
            test = open_feature_set(scores["store"], "test", manifest=records, pooling=pick["pooling"], expect=expect)
        X_test = test.X
        if pick.get("tta"):
            # Test-time augmentation: the clean features and every cached view of each test image.
            views = open_views(
                views_path(Path(scores["store"]).parent, key),
                "test",
                manifest=records,
                pooling=pick["pooling"],
                expect=expect,
            )
            X_test = np.concatenate([test.X[:, None], views.X], axis=1)
        estimator = load_head(Path(scores["dir"]), pick)  # checked against the sha256 scores.json records
        result = score_test(estimator, X_test, test.y, test.classes, settings)
        chosen[key] = {"pick": pick, "result": result, "provenance": provenance, "y": test.y, "classes": test.classes}
        tied = indistinguishable(pick, scores["variants"])
        chosen[key]["indistinguishable"] = tied
        chosen[key]["selection"] = pick.get("selection", "val split")
        log.info(
            "%s: chose %s (val %s %.4f, %s; %s other variants indistinguishable) → test accuracy %.4f",
            key,
            pick["variant"],
            settings.select_by,
            pick[f"val_{settings.select_by}"],
            chosen[key]["selection"],
            "?" if tied is None else tied,
            result["test_accuracy"],
        )
        for row in scores["variants"]:
            selected = row["variant"] == pick["variant"]
            leaderboard.append(
                {
                    "feature_set": key,
                    "backbone": provenance["backbone"],
                    "weights": provenance["weights"],
                    "cut": provenance["cut"],
                    "variant": row["variant"],
                    "kind": row["kind"],
                    "pooling": row["pooling"],
                    "standardize": row.get("standardize", True),
                    "pca": row.get("pca"),
                    "augment": row.get("augment", "none"),
                    "tta": row.get("tta", False),
                    "params": row.get("params", {}),
                    "searched": row.get("searched"),
                    "val_accuracy": row["val_accuracy"],
                    "val_macro_f1": row["val_macro_f1"],
                    "val_accuracy_std": row.get("val_accuracy_std"),
                    "test_accuracy": result["test_accuracy"] if selected else None,
                    "fit_seconds": row["fit_seconds"],
                    "peak_rss_mib": row.get("peak_rss_mib"),
                    "n_epochs": row.get("n_epochs"),
                    "not_converged": row.get("not_converged"),
                    "raced_out": row.get("raced_out"),
                    "selected": selected,
                    "selection": row.get("selection", "val split"),
                    "indistinguishable": tied if selected else None,
                }
            )
    votes = (
        soft_vote(all_scores, ensemble, settings.select_by, records),
        near_equals(all_scores, near, settings.select_by, records),
    )
    for voted in (v for v in votes if v is not None):
        pick, test = voted["row"], voted["test"]
        key = pick["feature_set"]
        result = score_test(voted["estimator"], test.X, test.y, test.classes, settings)
        chosen[key] = {
            "pick": pick,
            "result": result,
            "provenance": voted["provenance"],
            "y": test.y,
            "classes": test.classes,
            "selection": pick["selection"],
            "indistinguishable": None,
        }
        log.info(
            "%s: %s (val %s %.4f) → test accuracy %.4f",
            key,
            ", ".join(pick["params"]["members"]),
            settings.select_by,
            pick[f"val_{settings.select_by}"],
            result["test_accuracy"],
        )
        provenance = voted["provenance"]
        leaderboard.append(
            {
                "feature_set": key,
                "backbone": provenance["backbone"],
                "weights": provenance["weights"],
                "cut": provenance["cut"],
                **{k: pick[k] for k in ("variant", "kind", "pooling", "standardize", "pca")},
                "augment": "none",
                "tta": False,
                "params": pick["params"],
                "val_accuracy": pick["val_accuracy"],
                "val_macro_f1": pick["val_macro_f1"],
                "val_accuracy_std": None,
                "test_accuracy": result["test_accuracy"],
                "fit_seconds": 0.0,
                "peak_rss_mib": None,
                "n_epochs": None,
                "selected": True,
                "selection": pick["selection"],
                "indistinguishable": None,
            }
        )
    best_key = min(chosen, key=lambda k: rank({**chosen[k]["pick"], "feature_set": k}, settings.select_by))
    leaderboard.sort(key=lambda r: rank(r, settings.select_by))
    report = {
        "best": _summary(best_key, chosen[best_key]),
        "feature_sets": {k: _summary(k, c) for k, c in sorted(chosen.items())},
        "variants_trained": len(leaderboard),
        "selected_by": f"{_selection(all_scores)} {settings.select_by}",
        "cost": None if costs is None else sweep_cost(all_scores, costs, {k: len(c["y"]) for k, c in chosen.items()}),
    }
    return report, leaderboard, {"key": best_key, **chosen[best_key]}


def _selection(all_scores: Sequence[dict]) -> str:
    schemes = sorted({row.get("selection", "val split") for s in all_scores for row in s["variants"]})
    return " / ".join(f"validation ({scheme})" for scheme in schemes)


def _summary(key: str, chosen: dict) -> dict:
    result, pick, provenance = chosen["result"], chosen["pick"], chosen["provenance"]
    return {
        "feature_set": key,
        "variant": pick["variant"],
        "backbone": provenance["backbone"],
        "weights": provenance["weights"],
        "cut": provenance["cut"],
        "cut_depth": round(provenance["cut_index"] / max(1, provenance["n_layers"] - 1), 4),
        "val_accuracy": pick["val_accuracy"],
        "val_macro_f1": pick["val_macro_f1"],
        "selection": chosen.get("selection", pick.get("selection", "val split")),
        "indistinguishable": chosen.get("indistinguishable"),
        **({"members": pick["params"]["members"]} if pick.get("kind") == "ensemble" else {}),
        **{k: v for k, v in result.items() if k != "predicted"},
    }


# The columns of `dvc metrics show` (sorted by name there): short, so a row fits a terminal.
METRIC_KEYS = ("head", "test_acc", "test_ci_lo", "test_ci_up", "val_acc")


def metrics_rows(report: dict) -> dict[str, dict]:
    """The rows of ``dvc metrics show``: the chosen model, then the best of each feature set (and fine-tuning).

    Every row has the same few keys (:data:`METRIC_KEYS`), one metrics file each
    (``metrics.json`` for ``chosen``, ``reports/best/<name>.json`` for the others),
    so that the table has one column per key and a row per model and reads in a
    terminal; everything else is in ``reports/evaluation.json``. A row added later
    (a combination, an ensemble) is one more entry here.

    Returns
    -------
    dict of str to dict
        ``chosen`` first, then one entry per feature set key (and ``finetune``), each
        ``{"head", "test_acc", "test_ci_lo", "test_ci_up", "val_acc"}`` (``head``: ``<feature set>/<variant>``
        for ``chosen``, the variant for the others).
    """

    def row(summary: dict, head: str) -> dict:
        low, high = summary["test_accuracy_ci95"]
        return {
            "head": head,
            "test_acc": summary["test_accuracy"],
            "test_ci_lo": low,
            "test_ci_up": high,
            "val_acc": summary["val_accuracy"],
        }

    best = report["best"]
    rows = {"chosen": row(best, f"{best['feature_set']}/{best['variant']}")}
    rows.update({key: row(summary, summary["variant"]) for key, summary in report["feature_sets"].items()})
    if report.get("finetune"):
        rows["finetune"] = row(
            report["finetune"], f"{report['finetune']['feature_set']}/{report['finetune']['variant']}"
        )
    return rows


def add_finetune(report: dict, leaderboard: list[dict], result: dict, select_by: str) -> None:
    """Put the fine-tune stage's result on the leaderboard and into the overall choice (on validation)."""
    if not result.get("enabled"):
        return
    summary = {
        "feature_set": result["feature_set"],
        "variant": f"finetune-{result['head_variant']}",
        "kind": "finetune",
        "val_accuracy": result["val_accuracy"],
        "val_macro_f1": result["val_macro_f1"],
        **{k: result[k] for k in ("test_accuracy", "test_accuracy_ci95", "test_macro_f1", "test_images")},
        "kept": result["kept"],
        "epochs_run": result["epochs_run"],
        "unfrozen_layers": result["unfrozen_layers"],
    }
    report["finetune"] = summary
    head_row = next(
        r for r in leaderboard if r["feature_set"] == result["feature_set"] and r["variant"] == result["head_variant"]
    )
    leaderboard.append(
        {
            **head_row,
            "variant": summary["variant"],
            "kind": "finetune",
            "params": {},
            "val_accuracy": result["val_accuracy"],
            "val_macro_f1": result["val_macro_f1"],
            "val_accuracy_std": None,
            "test_accuracy": result["test_accuracy"],
            "fit_seconds": result["seconds"],
            "peak_rss_mib": None,
            "n_epochs": result["epochs_run"],
            "selected": True,
        }
    )
    leaderboard.sort(key=lambda r: rank(r, select_by))
    best = report["best"]
    if (summary[f"val_{select_by}"], summary["feature_set"]) > (best[f"val_{select_by}"], best["feature_set"]):
        report["best_cached_head"] = best
        report["best"] = {**best, **summary}
        log.info(
            "best overall: fine-tuning %s (val %s %.4f) → test accuracy %.4f",
            result["feature_set"],
            select_by,
            summary[f"val_{select_by}"],
            summary["test_accuracy"],
        )


def export_target(report: dict, leaderboard: Sequence[dict], heads_dir: Path, requested: str | None) -> dict:
    """What the export stage exports: the best model on cached features, or the one ``export.variant`` names.

    The best may be a single feature set's head, a combination's head (``heads.combine``), the
    soft-voting ensemble (``ensemble/<variant>``) or the vote of the near-equals
    (``near-equals/<variant>``): the export builds any of them as one Keras graph
    (:mod:`pipeline.export.graph`). Only when that is impossible (a head without an exact Keras form,
    such as one trained out of core, or a vote's members on one feature set pooled two ways: see
    :func:`unexportable`) is the best single feature set's head exported instead, and
    ``not_exported`` says what was not and why; a model ``export.variant`` names is refused then.

    Everything the export and its model card need is here (each head file and its sha256, the
    stores, the head's own rows, the test result if the model was scored), and nothing that moves
    with other variants' scores or with timings (no runners-up, :func:`pipeline.heads.saved.head_row`
    of each row), so that the export stage reruns only when the exported model changes.
    """
    best = report.get("best_cached_head", report["best"])
    key, variant = requested.split("/", 1) if requested else (best["feature_set"], best["variant"])
    target = _target(report, leaderboard, heads_dir, key, variant)
    reason = unexportable(target)
    not_exported = None
    if reason and requested:
        raise ValueError(f"export.variant {requested!r} cannot be exported: {reason}")
    if reason:
        not_exported = {
            "feature_set": key,
            "variant": variant,
            "reason": f"{reason}; the best head on a single feature set is exported instead",
        }
        # The leaderboard is ranked best first: its first chosen row of a single feature set.
        several = combinations(heads_dir) | {ENSEMBLE_KEY, NEAR_KEY}
        row = next(
            (r for r in leaderboard if r["selected"] and r["kind"] != "finetune" and r["feature_set"] not in several),
            None,
        )
        if row is None:
            raise ValueError(f"nothing to export: {reason}, and every feature set under {heads_dir}/ is a combination")
        log.warning("export: %s / %s is best on validation but is not exported: %s", key, variant, reason)
        key, variant = row["feature_set"], report["feature_sets"][row["feature_set"]]["variant"]
        target = _target(report, leaderboard, heads_dir, key, variant)
    summary = report["feature_sets"].get(key)
    target["row"] = head_row(target["row"])
    for member in target.get("members") or []:
        member["row"] = head_row(member["row"])
    return {
        **target,
        "chosen": "named by export.variant" if requested else "best on validation among cached-feature heads",
        "test": {k: summary.get(k) for k in TEST_KEYS} if summary and summary["variant"] == variant else None,
        "finetune": report.get("finetune"),
        **({"not_exported": not_exported} if not_exported else {}),
    }


def _target(report: dict, leaderboard: Sequence[dict], heads_dir: Path, key: str, variant: str) -> dict:
    """The heads, stores and score rows of one model: a feature set's or a combination's variant, or a soft vote."""
    if key not in VOTES:
        return _head_target(heads_dir, leaderboard, key, variant)
    voted = next((r for r in leaderboard if r["feature_set"] == key), None)
    if voted is None:
        raise ValueError(
            f"export.variant names the {key} vote ({key}/{variant}), but the evaluate stage made none ({VOTES[key]})"
        )
    if voted["variant"] != variant:
        raise ValueError(f"no variant {variant!r} of the {key}. Known: {voted['variant']}")
    members = [_head_target(heads_dir, leaderboard, *name.split("/", 1)) for name in voted["params"]["members"]]
    provenance = report["feature_sets"][key]
    return {
        "feature_set": key,
        "variant": variant,
        "form": "ensemble",
        "head": None,
        "head_sha256": None,
        "store": [m["store"] for m in members],
        "identity": [m["identity"] for m in members],
        "provenance": {k: provenance.get(k) for k in ("backbone", "weights", "cut", "cut_depth")},
        "row": voted,
        "members": members,
    }


def _head_target(heads_dir: Path, leaderboard: Sequence[dict], key: str, variant: str) -> dict:
    scores_file = heads_dir / key / SCORES_FILE
    if not scores_file.is_file():
        raise ValueError(f"export.variant names feature set {key!r}, which has no heads in {heads_dir}/")
    scores = json.loads(scores_file.read_text(encoding="utf-8"))
    rows = {row["variant"]: row for row in scores["variants"]}
    if variant not in rows:
        raise ValueError(
            f"no variant {variant!r} in {heads_dir}/{key}. Known, best first: "
            + ", ".join(r["variant"] for r in leaderboard if r["feature_set"] == key)[:2000]
        )
    raced = rows[variant].get("raced_out")
    if raced:
        raise ValueError(
            f"export.variant {key}/{variant} was stopped by racing after {raced['after_folds']} of "
            f"{raced['folds']} folds (significantly less accurate than {raced['leader']}), so it has no "
            "fitted head; set heads.race: 0 to fit every variant fully, or name another variant"
        )
    head = head_file(heads_dir / key, variant)
    combines = scores.get("combines")
    return {
        "feature_set": key,
        "variant": variant,
        "form": "combination" if combines else "single",
        "head": str(head),
        "head_sha256": file_sha256(head),
        "store": scores["store"],
        "identity": scores["identity"],
        "provenance": scores["provenance"],
        "row": rows[variant],
        **({"combines": combines} if combines else {}),
    }


def unexportable(target: dict) -> str | None:
    """Why a target's model cannot be one Keras graph, or None.

    A head without an exact Keras form, or a soft vote with members on one feature set pooled two ways (the
    graph has one branch per feature set).
    """
    from pipeline.heads.registry import head_kind

    owner = (
        "the ensemble"
        if target["feature_set"] == ENSEMBLE_KEY
        else f"the soft vote {target['feature_set']}/{target['variant']}"
    )
    poolings: dict[str, list[str]] = {}
    for part in target.get("members") or []:
        poolings.setdefault(part["feature_set"], []).append(part["row"]["pooling"])
    for key, pooled in poolings.items():
        if len(set(pooled)) > 1:
            return (
                f"{owner} has members on feature set {key} pooled {' and '.join(sorted(set(pooled)))}, and one "
                "graph pools each feature set one way; name one of its members with export.variant, or sweep "
                "a single heads.pooling"
            )
    for part in target.get("members") or [target]:
        row, name = part["row"], f"{part['feature_set']}/{part['variant']}"
        what = f"{owner}'s member {name}" if target.get("members") else name
        if row.get("out_of_core"):
            return (
                f"{what} is a {row['kind']} head trained out of core, which has no exact Keras form "
                "(an exported model holds no pickle)"
            )
        if head_kind(row["kind"]).keras is None:
            return f"{what} is a {row['kind']} head, which has no exact Keras form (an exported model holds no pickle)"
    return None


def combinations(heads_dir: Path) -> set[str]:
    """The feature sets under ``heads_dir`` that are combinations (``heads.combine``)."""
    return {s["feature_set"] for s in load_scores(heads_dir) if s.get("combines")}
