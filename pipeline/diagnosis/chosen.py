"""The heads evaluate chose, loaded again from its own output files, with their features.

The diagnose stage never chooses. The evaluate stage writes, with
:func:`chosen_heads`, what it replays and nothing else
(``reports/chosen_heads.json``): the chosen variant of each feature set and the
overall best (the best head on cached features when fine-tuning won, since only
a cached-feature head can be replayed on the store), each with its row
(:func:`pipeline.heads.saved.head_row`: with its sha256, without timings),
store and identity, taken from ``heads/<key>/scores.json``. That file changes
only when one of those heads does, so a sweep that leaves every choice alone
does not rerun the diagnose stage. The head is loaded through
:func:`pipeline.heads.saved.load_head`, which checks that sha256.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.heads.saved import head_row, load_head
from pipeline.heads.training import SCORES_FILE
from pipeline.manifest import Record
from pipeline.provenance import features_identity
from pipeline.selection.ensemble import ENSEMBLE_KEY
from pipeline.selection.near_equals import NEAR_KEY
from pipeline.store.reader import FeatureSet, open_feature_set

log = logging.getLogger(__name__)

#: The overall choices that are soft votes of other feature sets' heads (no store, no scores.json of their own).
VOTES = (ENSEMBLE_KEY, NEAR_KEY)


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


def read_chosen_heads(path: Path) -> dict:
    """``reports/chosen_heads.json`` as evaluate wrote it (:func:`chosen_heads`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no chosen heads at {path}; run stage evaluate first (`dvc repro evaluate`)")
    return json.loads(path.read_text(encoding="utf-8"))


def chosen_heads(evaluation: dict, heads_dir: Path) -> dict:
    """What the diagnose stage replays, from evaluate's report and the heads' ``scores.json``, JSON-ready.

    ``best`` (and ``best_cached_head`` when fine-tuning won): the overall choice's feature set, variant and
    soft vote members; ``feature_sets``: each feature set's chosen variant and its validation accuracy; ``heads``:
    for each feature set read (chosen ones, vote members), its folder, store, identity, selection folds (``cv``)
    and the rows of the variants read, or only what it ``combines``. Nothing in it moves with the scores of
    variants not chosen, nor with timings.

    Raises
    ------
    FileNotFoundError
        If a feature set evaluate names has no ``scores.json`` (the heads changed after evaluate ran).
    ValueError
        If a chosen variant is not in its ``scores.json``.
    """
    best = evaluation["best"]
    read: dict[str, set[str]] = {}
    for key, summary in evaluation["feature_sets"].items():
        if key not in VOTES:  # a vote of other feature sets' heads: no store of its own to read
            read.setdefault(key, set()).add(summary["variant"])
    if best["feature_set"] in VOTES:
        for name in best.get("members") or []:
            key, variant = name.split("/", 1)
            read.setdefault(key, set()).add(variant)
    heads = {}
    for key, variants in read.items():
        scores_file = Path(heads_dir) / key / SCORES_FILE
        if not scores_file.is_file():
            raise FileNotFoundError(
                f"no {scores_file}; evaluation.json names feature set {key!r}: "
                "run `dvc repro` so that heads and evaluate agree"
            )
        scores = json.loads(scores_file.read_text(encoding="utf-8"))
        if scores.get("combines"):
            heads[key] = {"combines": scores["combines"]}  # several stores side by side: not replayed
            continue
        rows = {row["variant"]: row for row in scores["variants"]}
        missing = sorted(variants - set(rows))
        if missing:
            raise ValueError(
                f"{scores_file} has no variant {missing[0]!r}, which evaluation.json chose; "
                "run `dvc repro` so that heads and evaluate agree"
            )
        heads[key] = {
            "dir": str(scores_file.parent),
            "store": scores["store"],
            "identity": scores["identity"],
            "cv": scores.get("sweep", {}).get("cv"),
            "variants": {variant: head_row(rows[variant]) for variant in sorted(variants)},
        }
    choice = ("feature_set", "variant", "members")
    return {
        "best": {k: best.get(k) for k in choice},
        **(
            {"best_cached_head": {k: evaluation["best_cached_head"].get(k) for k in choice}}
            if "best_cached_head" in evaluation
            else {}
        ),
        "feature_sets": {
            key: {"variant": s["variant"], "val_accuracy": s["val_accuracy"]}
            for key, s in evaluation["feature_sets"].items()
        },
        "heads": heads,
    }


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


def load_ensemble(chosen: dict) -> list[ChosenHead] | None:
    """The members of the soft vote (the ensemble, or the near-equals vote) chosen overall, each its own head; or None.

    ``chosen`` (:func:`chosen_heads`) names them ``<feature set>/<variant>`` (a
    member is its feature set's best head with probabilities, not always its
    chosen one); each is loaded from its row, its sha256 checked.
    """
    best = chosen["best"]
    if best["feature_set"] not in VOTES or not best.get("members"):
        return None
    return [_head_of(chosen, *name.split("/", 1)) for name in best["members"]]


def _head_of(chosen: dict, key: str, variant: str) -> ChosenHead:
    """The variant's head (its sha256 checked), with its store and identity, as :func:`chosen_heads` lists it."""
    entry = chosen["heads"][key]
    row = entry["variants"][variant]
    return ChosenHead(
        key,
        row,
        load_head(Path(entry["dir"]), row),
        entry["store"],
        features_identity(entry["identity"]),
        entry["cv"],
    )


def load_chosen(chosen: dict) -> dict[str, ChosenHead]:
    """Every feature set's chosen head, by feature set, in the report's order, from ``chosen`` (:func:`chosen_heads`).

    The soft votes and combinations are left out: they have no store of their own to replay on.
    """
    heads = {}
    for key, summary in chosen["feature_sets"].items():
        if key in VOTES or chosen["heads"][key].get("combines"):
            continue
        heads[key] = head = _head_of(chosen, key, summary["variant"])
        if head.row.get("tta") or head.row.get("augment", "none") != "none":
            log.warning(
                "%s: %s was trained or scored with augmented views; the pictures use its predictions on "
                "the clean images",
                key,
                head.row["variant"],
            )
    return heads
