"""The chosen head and its backbone cut as one deployable model, checked against the pipeline, with a card.

:func:`export` builds ``model.keras`` — raw uint8 images of any size → resize
→ preprocessing → truncated backbone → [float16 rounding as in the store] →
pooling → head, one Keras graph giving class probabilities, loaded with Keras'
safe mode — and the model card. Every head kind has an exact Keras form (see
:mod:`pipeline.heads.registry`); a head without one is refused rather than
exported as a pickle, since a model folder is what people pass around and
unpickling a file runs whatever code it names (``SECURITY.md``). The chosen
head is loaded through :func:`pipeline.heads.saved.load_head`, which checks
its file against the sha256 the heads stage recorded.

Heads without probabilities (SVMs) are calibrated by temperature scaling on
the validation split, which keeps their predicted class. Before writing the
card the exported model is checked against the pipeline: on every test image
it must predict the class the cached-feature head predicts, with probabilities
within ``export.tolerance``; otherwise export fails.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.config import Params
from pipeline.export.ood import OOD_FILE, build_ood_model, ood_card, ood_distances
from pipeline.heads.saved import load_head
from pipeline.provenance import NETWORK, features_identity, require_same
from pipeline.store.reader import open_feature_set

log = logging.getLogger(__name__)
FORM = "single Keras graph (model.keras, loaded in Keras' safe mode)"
# The layer of model.keras whose output is the pooled features the head reads.
FEATURES_LAYER = "features"


def with_probabilities(estimator: Any, X_val: np.ndarray, y_val: np.ndarray) -> tuple[Any, Optional[str]]:
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


def feature_model(cut: Any, pooling: str, store_dtype: str):
    """uint8 images of any size → the pooled features the head was trained on."""
    import keras

    from pipeline.export.layers import ImagePreprocess, StoreRounding, apply_pooling

    size = cut.provenance["input_size"]
    inputs = keras.Input((None, None, 3), dtype="uint8", name="image")
    x = cut.resize.layer(size, name="resize")(inputs)   # the backbone's own: bilinear, or a preset converter's
    x = ImagePreprocess(cut.provenance["backbone"], name="preprocess")(x)
    x = cut.model(x)
    if store_dtype != "float32":
        x = StoreRounding(store_dtype, name="store_rounding")(x)
    if len(x.shape) > 2:  # a map or a token summary; a vector per image has nothing to pool
        x = apply_pooling(x, pooling)
    # Named, so that predict can read the features too (the out-of-domain score, pipeline.export.ood).
    return inputs, keras.layers.Identity(name=FEATURES_LAYER)(x)


def build_exported(cut: Any, head: Any, kind: str, pooling: str, store_dtype: str) -> Any:
    """One Keras model, images → probabilities, for a fitted head of kind ``kind`` with ``predict_proba``.

    Raises
    ------
    ValueError
        If the head has no exact Keras form: it is not exported another way (no pickle goes into a model).
    """
    import keras

    from pipeline.heads.conversion import NotConvertibleError
    from pipeline.heads.keras_form import to_keras_layers

    inputs, features = feature_model(cut, pooling, store_dtype)
    try:
        layers = to_keras_layers(head, kind)
    except NotConvertibleError as error:
        raise ValueError(f"this {kind} head cannot be exported as one Keras graph ({error}); an exported model "
                         "holds no pickle, so it is not exported another way: choose another head with "
                         "export.variant") from None
    x = features
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name="shoulders_model")


def check_equivalence(predictor: Any, paths: Sequence[str], labels: np.ndarray, expected: np.ndarray,
                      tolerance: float) -> dict:
    """Run the exported model on image files and compare with the cached-feature head's probabilities.

    Raises
    ------
    ValueError
        If any image gets another class, or a probability differs by more than ``tolerance``.
    """
    from pipeline.export.predict import predict_files

    results, failures = predict_files(predictor, [Path(p) for p in paths], progress=False)
    if failures:
        raise ValueError(f"the equivalence check could not read {len(failures)} test image(s): {failures[:3]}")
    got = np.stack([proba for _, proba in results])
    same = got.argmax(axis=1) == expected.argmax(axis=1)
    largest = float(np.abs(got - expected).max()) if len(got) else 0.0
    check = {"images": int(len(got)), "same_class": int(same.sum()), "max_abs_probability_difference": largest,
             "tolerance": tolerance, "accuracy_exported": float((got.argmax(axis=1) == labels).mean()),
             "accuracy_cached_head": float((expected.argmax(axis=1) == labels).mean())}
    if not same.all() or largest > tolerance:
        bad = [paths[i] for i in np.flatnonzero(~same)[:5]]
        raise ValueError(f"the exported model disagrees with the pipeline on the test split: {check}; "
                         f"first images with another class: {bad}")
    return check


def export(params: Params, target: dict, records, prepare_report: dict, out: Path, *,
           manifest_sha256: Optional[str] = None) -> dict:
    """Build, check and write the exported model and its card; returns the card.

    Parameters
    ----------
    target : dict
        What to export, as the evaluate stage wrote it (``reports/export_target.json``).
    """
    from pipeline.backbones import build_cut_model
    from pipeline.export.model_card import build_card, card_markdown
    from pipeline.export.predict import CARD_FILE, MODEL_FILE, Predictor, load_keras_model

    key, row, provenance = target["feature_set"], target["row"], target["provenance"]
    head_file = Path(target["head"])
    if row.get("sha256") != target["head_sha256"]:
        raise ValueError(f"{head_file} changed since the evaluate stage chose it; run `dvc repro`")
    expect = features_identity(target["identity"])
    val = open_feature_set(target["store"], "val", manifest=records, pooling=row["pooling"], expect=expect)
    head, calibration = with_probabilities(load_head(head_file.parent, row), val.X, val.y)
    cut = build_cut_model(params.features[key], seed=params.extract.seed)
    require_same(provenance, cut.provenance, NETWORK, what=f"heads/{key} were trained on features",
                 fix=f"features.{key} now builds another network; run `dvc repro` first")
    model = build_exported(cut, head, row["kind"], row["pooling"], provenance["dtype"])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save(out / MODEL_FILE)
    test = open_feature_set(target["store"], "test", manifest=records, pooling=row["pooling"], expect=expect)
    train = open_feature_set(target["store"], "train", manifest=records, pooling=row["pooling"], expect=expect)
    build_ood_model(np.asarray(train.X), params.export.ood_k).save(out / OOD_FILE)
    scorer = load_keras_model(out / OOD_FILE)   # as predict will load it
    ood = ood_card(k=params.export.ood_k, percentile=params.export.ood_percentile,
                   val_distances=ood_distances(scorer, np.asarray(val.X)),
                   test_distances=ood_distances(scorer, np.asarray(test.X)), train_images=len(train.X),
                   features_layer=FEATURES_LAYER)
    by_id = {r.id: r for r in records}
    # The model as it will be loaded (safe mode, from the file), not the one in memory.
    predictor = Predictor(list(test.classes), load_keras_model(out / MODEL_FILE), {})
    check = check_equivalence(predictor, [by_id[i].path for i in test.ids], test.y, head.predict_proba(test.X),
                              params.export.tolerance)
    card = build_card(target=target, classes=list(test.classes), records=records, prepare_report=prepare_report,
                      form=FORM, calibration=calibration, check=check, model=model, manifest_sha256=manifest_sha256,
                      max_image_pixels=params.data.max_image_pixels)
    card["out_of_domain"] = ood
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (out / "card.md").write_text(card_markdown(card), encoding="utf-8")
    log.info("exported %s / %s as %s to %s; equivalence on %d test images: %d same class, max |Δp| %.2g",
             key, target["variant"], FORM, out, check["images"], check["same_class"],
             check["max_abs_probability_difference"])
    return card
