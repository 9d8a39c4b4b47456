"""The chosen model as one deployable Keras graph, checked against the pipeline, with a card.

:func:`export` builds ``model.keras`` — raw uint8 images of any size → resize
→ preprocessing → truncated backbone → [float16 rounding as in the store] →
pooling → head, one Keras graph giving class probabilities, loaded with Keras'
safe mode — and the model card. The chosen model may be a single feature set's
head, a combination's head or a soft vote (the ensemble, the near-equals vote): :func:`plan_export`
loads its branches (feature sets) and heads, :mod:`pipeline.export.graph`
builds them into one graph, each backbone once. Every head kind has an exact Keras form (see
:mod:`pipeline.heads.registry`); a head without one is refused rather than
exported as a pickle, since a model folder is what people pass around and
unpickling a file runs whatever code it names (``SECURITY.md``). The chosen
head is loaded through :func:`pipeline.heads.saved.load_head`, which checks
its file against the sha256 the heads stage recorded.

Heads without probabilities (SVMs) are calibrated by temperature scaling on
the validation split, which keeps their predicted class. Before writing the
card the exported model is checked against the pipeline: on every test image
it must predict the class the cached-feature head predicts (a combination's
head on its members' rows; the mean of the ensemble members' probabilities),
with probabilities within ``export.tolerance``; otherwise export fails.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Params
from pipeline.export.graph import FEATURES_LAYER, Branch, HeadPart, build_graph
from pipeline.export.model_card import graph_card
from pipeline.export.ood import OOD_FILE, build_ood_model, ood_card, ood_distances
from pipeline.heads.combination import concatenate
from pipeline.heads.saved import load_head
from pipeline.provenance import features_identity
from pipeline.store.reader import open_feature_set

log = logging.getLogger(__name__)
FORM = "single Keras graph (model.keras, loaded in Keras' safe mode)"


def with_probabilities(estimator: Any, X_val: np.ndarray, y_val: np.ndarray) -> tuple[Any, str | None]:
    """The head itself if it gives probabilities, else it calibrated on validation by temperature scaling."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    if hasattr(estimator, "predict_proba"):
        try:
            estimator.predict_proba(X_val[:1])
            return estimator, None
        except AttributeError:  # e.g. an SVC without probability estimates
            pass
    # The frozen head is not refitted, so one "fold" holding every validation image is enough
    # (scikit-learn's default 5-fold split would refuse classes with fewer images).
    everything = [(np.arange(len(y_val)), np.arange(len(y_val)))]
    calibrated = CalibratedClassifierCV(FrozenEstimator(estimator), method="temperature", cv=everything)
    calibrated.fit(X_val, y_val)
    return calibrated, "temperature scaling on the validation split (keeps the predicted class)"


def check_equivalence(
    predictor: Any, paths: Sequence[str], labels: np.ndarray, expected: np.ndarray, tolerance: float
) -> dict:
    """Run the exported model on image files and compare with the cached-feature head's probabilities.

    Raises
    ------
    ValueError
        If any image gets another class, or a probability differs by more than ``tolerance``.
    """
    from pipeline.export.predict_command import predict_files

    results, failures = predict_files(predictor, [Path(p) for p in paths], progress=False)
    if failures:
        raise ValueError(f"the equivalence check could not read {len(failures)} test image(s): {failures[:3]}")
    got = np.stack([proba for _, proba in results])
    same = got.argmax(axis=1) == expected.argmax(axis=1)
    largest = float(np.abs(got - expected).max()) if len(got) else 0.0
    check = {
        "images": int(len(got)),
        "same_class": int(same.sum()),
        "max_abs_probability_difference": largest,
        "tolerance": tolerance,
        "accuracy_exported": float((got.argmax(axis=1) == labels).mean()),
        "accuracy_cached_head": float((expected.argmax(axis=1) == labels).mean()),
    }
    if not same.all() or largest > tolerance:
        bad = [paths[i] for i in np.flatnonzero(~same)[:5]]
        raise ValueError(
            f"the exported model disagrees with the pipeline on the test split: {check}; "
            f"first images with another class: {bad}"
        )
    return check


@dataclass
class Plan:
    """What one exported graph holds, loaded and checked: its branches, their rows, the fitted heads."""

    branches: list[Branch]
    heads: list[HeadPart]
    average: bool
    splits: dict  # split → FeatureSet of every branch's rows side by side, in branch order
    widths: list[int]  # columns of each branch in those rows
    calibration: list[str | None]

    def columns(self, split: str, head: HeadPart) -> np.ndarray:
        """The rows of ``split`` that ``head`` reads: its branches' columns, in its order."""
        bounds = np.cumsum([0, *self.widths])
        X = np.asarray(self.splits[split].X)
        return np.concatenate([X[:, bounds[i] : bounds[i + 1]] for i in head.branches], axis=1)

    def expected(self, split: str) -> np.ndarray:
        """The pipeline's probabilities on ``split`` (n, n_classes): the head's, or the heads' mean (an ensemble)."""
        probabilities = [head.estimator.predict_proba(self.columns(split, head)) for head in self.heads]
        return np.mean(probabilities, axis=0) if self.average else probabilities[0]


def plan_export(params: Params, target: dict, records) -> Plan:
    """The branches and heads of ``target`` (a single feature set, a combination or a soft vote), loaded.

    Each head file is checked against the sha256 the heads stage recorded, each store against its
    identity; heads without probabilities are calibrated on validation (:func:`with_probabilities`).

    Raises
    ------
    ValueError
        If a head file changed since the evaluate stage chose it, or a member is no longer in ``features``.
    """
    parts = target.get("members") or [target]
    for part in parts:
        if part["row"].get("sha256") != part["head_sha256"]:
            raise ValueError(f"{part['head']} changed since the evaluate stage chose it; run `dvc repro`")
    if target.get("members"):  # a soft vote: one head per member; members on one feature set share its branch
        members = list(
            {
                p["feature_set"]: (p["feature_set"], p["store"], p["identity"], p["provenance"], p["row"]["pooling"])
                for p in parts
            }.values()
        )
        pooled = {(key, pooling) for key, *_, pooling in members}
        mixed = [p for p in parts if (p["feature_set"], p["row"]["pooling"]) not in pooled]
        if mixed:
            raise ValueError(
                f"{target['feature_set']} / {target['variant']} cannot be exported: its members read feature set "
                f"{mixed[0]['feature_set']} pooled two ways, and one graph pools each feature set one way"
            )
    elif target.get("combines"):  # a combination: one head on its members' rows side by side
        members = [
            (key, store, identity, provenance, target["row"]["pooling"])
            for key, store, identity, provenance in zip(
                target["combines"], target["store"], target["identity"], target["provenance"]["members"]
            )
        ]
    else:
        members = [
            (target["feature_set"], target["store"], target["identity"], target["provenance"], target["row"]["pooling"])
        ]
    missing = [key for key, *_ in members if key not in params.features]
    if missing:
        raise ValueError(
            f"{target['feature_set']} / {target['variant']} cannot be exported: it reads feature sets "
            f"{missing}, which params.yaml `features` no longer has (known: {sorted(params.features)}), so "
            "their backbones cannot be rebuilt; restore them or run `dvc repro`"
        )
    branches = [Branch(key, params.features[key], provenance, pooling) for key, _, _, provenance, pooling in members]
    splits, widths = {}, []
    for split in ("train", "val", "test"):
        rows = [
            open_feature_set(store, split, manifest=records, pooling=pooling, expect=features_identity(identity))
            for _, store, identity, _, pooling in members
        ]
        splits[split] = rows[0] if len(rows) == 1 else concatenate(rows, [m[0] for m in members])
        widths = [r.X.shape[1] for r in rows]
    # A vote's heads read one branch each (their feature set's); a single head (a combination's too) reads them
    # all, in order.
    branch_of = {key: i for i, (key, *_) in enumerate(members)}
    reads = [(branch_of[p["feature_set"]],) for p in parts] if target.get("members") else [tuple(range(len(members)))]
    plan = Plan(branches, [], bool(target.get("members")), splits, widths, [])
    for number, (part, branches_read) in enumerate(zip(parts, reads)):
        head = HeadPart(
            load_head(Path(part["head"]).parent, part["row"]),
            part["row"]["kind"],
            branches_read,
            name="head" if len(parts) == 1 else f"head_{number}",
        )
        fitted, how = with_probabilities(head.estimator, plan.columns("val", head), splits["val"].y)
        plan.heads.append(HeadPart(fitted, head.kind, head.branches, head.name))
        plan.calibration.append(how)
    return plan


def export(
    params: Params, target: dict, records, prepare_report: dict, out: Path, *, manifest_sha256: str | None = None
) -> dict:
    """Build, check and write the exported model and its card; returns the card.

    Parameters
    ----------
    target : dict
        What to export, as the evaluate stage wrote it (``reports/export_target.json``): a single
        feature set's head, a combination's head or the ensemble.
    """
    from pipeline.export.model_card import build_card, card_markdown
    from pipeline.export.predict_command import CARD_FILE, MODEL_FILE, Predictor, load_keras_model

    started = time.perf_counter()
    plan = plan_export(params, target, records)
    model, backbones = build_graph(plan.branches, plan.heads, seed=params.extract.seed, average=plan.average)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save(out / MODEL_FILE)
    train, val, test = (plan.splits[s] for s in ("train", "val", "test"))
    build_ood_model(np.asarray(train.X), params.export.ood_k).save(out / OOD_FILE)
    scorer = load_keras_model(out / OOD_FILE)  # as predict will load it
    ood = ood_card(
        k=params.export.ood_k,
        percentile=params.export.ood_percentile,
        val_distances=ood_distances(scorer, np.asarray(val.X)),
        test_distances=ood_distances(scorer, np.asarray(test.X)),
        train_images=len(train.X),
        features_layer=FEATURES_LAYER,
    )
    if len(plan.branches) > 1:
        ood["features"] = (
            "the pooled features of "
            + ", ".join(b.key for b in plan.branches)
            + " concatenated in that order (the graph's `features` layer)"
        )
    by_id = {r.id: r for r in records}
    # The model as it will be loaded (safe mode, from the file), not the one in memory.
    card_input = {"backbone": {"input_size": max(b.cut.provenance["input_size"] for b in backbones)}}
    predictor = Predictor(list(test.classes), load_keras_model(out / MODEL_FILE), card_input)
    check = check_equivalence(
        predictor, [by_id[i].path for i in test.ids], test.y, plan.expected("test"), params.export.tolerance
    )
    check["seconds"] = round(time.perf_counter() - started, 1)
    # One head: how it gives probabilities (None: its own). Several: those calibrated, by feature set.
    calibration = (
        plan.calibration[0]
        if len(plan.heads) == 1
        else {plan.branches[head.branches[0]].key: how for head, how in zip(plan.heads, plan.calibration) if how}
        or None
    )
    card = build_card(
        target=target,
        classes=list(test.classes),
        records=records,
        prepare_report=prepare_report,
        form=FORM,
        calibration=calibration,
        check=check,
        model=model,
        manifest_sha256=manifest_sha256,
        max_image_pixels=params.data.max_image_pixels,
    )
    if len(plan.branches) > 1:
        card.update(graph_card(target, plan, backbones))
    card["out_of_domain"] = ood
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (out / "card.md").write_text(card_markdown(card), encoding="utf-8")
    log.info(
        "exported %s / %s as %s to %s in %.1f s; equivalence on %d test images: %d same class, max |Δp| %.2g",
        target["feature_set"],
        target["variant"],
        FORM,
        out,
        check["seconds"],
        check["images"],
        check["same_class"],
        check["max_abs_probability_difference"],
    )
    return card
