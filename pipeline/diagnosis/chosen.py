"""The heads evaluate chose, loaded again from its own output files, with their features.

The diagnose stage never chooses: ``reports/evaluation.json`` names the
chosen variant of each feature set and the overall best (the best head on
cached features when fine-tuning won, since only a cached-feature head can be
replayed on the store); ``heads/<key>/scores.json`` gives each variant's row
(with its sha256) and its store. The head is loaded through
:func:`pipeline.heads.saved.load_head`, which checks that sha256.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.heads.saved import load_head
from pipeline.heads.training import SCORES_FILE
from pipeline.manifest import Record
from pipeline.provenance import features_identity
from pipeline.selection.ensemble import ENSEMBLE_KEY
from pipeline.store.reader import FeatureSet, open_feature_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChosenHead:
    """One feature set's chosen variant.

    Attributes
    ----------
    feature_set : str
    row : dict
        The variant's row of ``scores.json`` (``variant``, ``kind``, ``pooling``, ...).
    estimator : fitted scikit-learn estimator
    store : str
        The feature store it was trained on.
    identity : dict
        The identity the store must still have.
    cv : int, optional
        The folds the heads stage selected on (0: the val split), as its ``scores.json`` records
        (``heads.cv: auto`` is resolved per feature set there).
    """

    feature_set: str
    row: dict
    estimator: Any
    store: str
    identity: dict
    cv: int | None = None

    def features(self, split: str, records: Sequence[Record]) -> FeatureSet:
        """The split's pooled features as the head was trained on them (clean images, no views)."""
        return open_feature_set(self.store, split, manifest=records, pooling=self.row["pooling"], expect=self.identity)


def read_evaluation(path: Path) -> dict:
    """``reports/evaluation.json`` as evaluate wrote it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation report at {path}; run stage evaluate first (`dvc repro evaluate`)")
    return json.loads(path.read_text(encoding="utf-8"))


def best_feature_set(evaluation: dict, chosen: dict | None = None) -> str:
    """The feature set of the overall choice among cached-feature heads.

    When that is an ensemble or a combination (several stores; not replayed
    here, see :func:`load_chosen`), the best on validation of the single feature
    sets in ``chosen`` instead, as the export stage does.
    """
    key = evaluation.get("best_cached_head", evaluation["best"])["feature_set"]
    if chosen is None or key in chosen:
        return key
    single = max(chosen, key=lambda k: evaluation["feature_sets"][k]["val_accuracy"])
    log.warning(
        "the best on validation, %s, combines several feature sets; the pictures are of the best single "
        "feature set, %s",
        key,
        single,
    )
    return single


def load_ensemble(heads_dir: Path, evaluation: dict) -> list[ChosenHead] | None:
    """The members of the soft-voting ensemble when it is the overall choice (else None), each its own head.

    ``evaluation.json`` names them ``<feature set>/<variant>`` (a member is
    its feature set's best head with probabilities, not always its chosen one);
    each is loaded from its ``scores.json`` row, its sha256 checked.
    """
    best = evaluation["best"]
    if best["feature_set"] != ENSEMBLE_KEY or not best.get("members"):
        return None
    members = []
    for name in best["members"]:
        key, variant = name.split("/", 1)
        scores_file = Path(heads_dir) / key / SCORES_FILE
        if not scores_file.is_file():
            raise FileNotFoundError(
                f"no {scores_file}; the ensemble evaluation.json chose has {name} as a member: "
                "run `dvc repro` so that heads and evaluate agree"
            )
        members.append(_head_of(key, json.loads(scores_file.read_text(encoding="utf-8")), scores_file, variant))
    return members


def _head_of(key: str, scores: dict, scores_file: Path, variant: str) -> ChosenHead:
    """The variant's head of a feature set's ``scores.json`` (its sha256 checked), with its store and identity."""
    rows = {row["variant"]: row for row in scores["variants"]}
    if variant not in rows:
        raise ValueError(
            f"{scores_file} has no variant {variant!r}, which evaluation.json chose; "
            "run `dvc repro` so that heads and evaluate agree"
        )
    row = rows[variant]
    return ChosenHead(
        key,
        row,
        load_head(scores_file.parent, row),
        scores["store"],
        features_identity(scores["identity"]),
        scores.get("sweep", {}).get("cv"),
    )


def load_chosen(heads_dir: Path, evaluation: dict) -> dict[str, ChosenHead]:
    """Every feature set's chosen head, by feature set, in the report's order.

    Raises
    ------
    ValueError
        If a chosen variant is not in its ``scores.json`` (the heads changed after evaluate ran).
    """
    chosen = {}
    for key, summary in evaluation["feature_sets"].items():
        scores_file = Path(heads_dir) / key / SCORES_FILE
        if key == ENSEMBLE_KEY:
            continue  # a vote of other feature sets' heads: no store of its own to read
        if not scores_file.is_file():
            raise FileNotFoundError(
                f"no {scores_file}; evaluation.json names feature set {key!r}: "
                "run `dvc repro` so that heads and evaluate agree"
            )
        scores = json.loads(scores_file.read_text(encoding="utf-8"))
        if scores.get("combines"):
            continue  # heads on several stores side by side: not replayed on one store
        chosen[key] = head = _head_of(key, scores, scores_file, summary["variant"])
        if head.row.get("tta") or head.row.get("augment", "none") != "none":
            log.warning(
                "%s: %s was trained or scored with augmented views; the pictures use its predictions on "
                "the clean images",
                key,
                head.row["variant"],
            )
    return chosen
