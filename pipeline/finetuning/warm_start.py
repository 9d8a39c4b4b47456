"""Warm-start fine-tuning: the best cached dense head attached to its backbone's top layers, trained further.

The standard recipe, started from the cache instead of from a random head: the
best dense head on validation is attached to the truncated backbone with the
same pooling (so before any step the model predicts what the cached head
predicts), the top ``finetune.unfreeze`` layers are unfrozen (BatchNorm layers
stay frozen, in inference mode), and the whole is trained on augmented training
images at a low learning rate with early stopping on validation loss. The
model kept is the better of before and after on validation accuracy; only it
is scored on test.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import SPLITS, Params
from pipeline.heads.saved import load_head
from pipeline.heads.training import SCORES_FILE
from pipeline.provenance import NETWORK, require_same
from pipeline.selection.scoring import bootstrap_ci, select_best

log = logging.getLogger(__name__)


def build_finetune_model(cut: Any, head: Any, pooling: str, *, unfreeze: int, augment_layers: Sequence = ()):
    """Raw 0–255 images → [augmentation] → preprocess → truncated backbone → pooling → head.

    Parameters
    ----------
    cut : CutModel
        The truncated backbone (its layers are made trainable or not in place).
    head : fitted sklearn Pipeline
        A dense head, converted exactly by :func:`pipeline.heads.keras_form.to_keras_layers`.
    pooling : str
    unfreeze : int
        How many of the backbone's last layers train; BatchNormalization layers never do.
    augment_layers : sequence of keras layers
        Active in training only (Keras random layers are identity at inference).

    Returns
    -------
    keras.Model
    """
    import keras

    from pipeline.export.layers import apply_pooling
    from pipeline.heads.keras_form import to_keras_layers

    size = cut.provenance["input_size"]
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    for layer in augment_layers:
        x = layer(x)
    x = keras.layers.Lambda(cut.preprocess, name="preprocess")(x)
    backbone = cut.model
    backbone.trainable = True
    layers = backbone.layers
    for index, layer in enumerate(layers):
        top = index >= len(layers) - unfreeze
        layer.trainable = top and not isinstance(layer, keras.layers.BatchNormalization)
    x = backbone(x)
    if len(x.shape) > 2:  # a cut that is already a vector per image has nothing to pool
        x = apply_pooling(x, pooling)
    for layer in to_keras_layers(head, "dense"):
        x = layer(x)
    return keras.Model(inputs, x, name="finetuned")


def best_dense_head(heads_dir: Path, key: str, select_by: str) -> tuple[dict, Any, dict]:
    """The dense variant of ``key`` with the best validation score: its row, fitted pipeline and provenance."""
    scores_file = heads_dir / key / SCORES_FILE
    if not scores_file.is_file():
        raise FileNotFoundError(f"no {scores_file}; run the heads stage of feature set {key!r} first")
    scores = json.loads(scores_file.read_text(encoding="utf-8"))
    dense = [row for row in scores["variants"] if row["kind"] == "dense"]
    if not dense:
        raise ValueError(f"finetune needs a dense head on {key!r}: add 'dense' to heads.kinds")
    row = select_best(dense, select_by)
    return row, load_head(heads_dir / key, row), scores["provenance"]


def finetune(params: Params, heads_dir: Path, records, *, progress: bool = True) -> tuple[dict, Any]:
    """Fine-tune and score; returns the result mapping and the kept model."""
    import keras
    from sklearn.metrics import accuracy_score, f1_score

    from pipeline.backbones import build_cut_model
    from pipeline.extraction.augmentation import build_layers
    from pipeline.extraction.inputs import labelled_batches

    settings, key = params.finetune, params.finetune.feature_set
    started = time.perf_counter()
    row, head, provenance = best_dense_head(heads_dir, key, params.evaluate.select_by)
    cut = build_cut_model(params.features[key], seed=params.extract.seed)
    require_same(
        provenance,
        cut.provenance,
        NETWORK,
        what=f"heads/{key} were trained on features",
        fix=f"features.{key} now builds another network; run `dvc repro` first",
    )
    keras.utils.set_random_seed(settings.seed)
    augment_layers = build_layers(params.extract.augment.ops) if settings.augment else []
    model = build_finetune_model(cut, head, row["pooling"], unfreeze=settings.unfreeze, augment_layers=augment_layers)
    size, batch = cut.provenance["input_size"], settings.batch_size
    split = {s: [r for r in records if r.split == s] for s in SPLITS}
    data = {
        s: labelled_batches(
            [r.path for r in rs],
            [r.label for r in rs],
            size=size,
            batch_size=batch,
            shuffle_seed=settings.seed if s == "train" else None,
            resize=cut.resize,
        )
        for s, rs in split.items()
    }
    labels = {s: np.array([r.label for r in rs]) for s, rs in split.items()}
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    warm = model.get_weights()
    before = float(accuracy_score(labels["val"], _predict(model, data["val"])))
    log.info(
        "%s: warm start from %s (cached val accuracy %.4f) → val accuracy %.4f through the backbone; "
        "training %d of %d layers",
        key,
        row["variant"],
        row["val_accuracy"],
        before,
        sum(layer.trainable for layer in cut.model.layers),
        len(cut.model.layers),
    )
    history = model.fit(
        data["train"],
        validation_data=data["val"],
        epochs=settings.epochs,
        shuffle=False,
        verbose=2 if progress else 0,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience, restore_best_weights=True)
        ],
    )
    after = float(accuracy_score(labels["val"], _predict(model, data["val"])))
    kept = "fine-tuned" if after > before else "warm start"
    if kept == "warm start":
        model.set_weights(warm)  # fine-tuning did not help on validation: keep what the cache gave
    val_predicted = _predict(model, data["val"])
    predicted = _predict(model, data["test"])
    low, high = bootstrap_ci(
        labels["test"], predicted, n_resamples=params.evaluate.bootstrap, seed=params.evaluate.seed
    )
    result = {
        "enabled": True,
        "feature_set": key,
        "head_variant": row["variant"],
        "pooling": row["pooling"],
        "unfrozen_layers": sum(layer.trainable for layer in cut.model.layers),
        "trainable_weights": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "epochs_run": len(history.history["loss"]),
        "learning_rate": settings.learning_rate,
        "augment": dict(params.extract.augment.ops) if settings.augment else None,
        "val_accuracy_cached_head": row["val_accuracy"],
        "val_accuracy_before": before,
        "val_accuracy": max(before, after),
        "val_accuracy_after": after,
        "kept": kept,
        "val_macro_f1": float(f1_score(labels["val"], val_predicted, average="macro")),
        "test_accuracy": float(accuracy_score(labels["test"], predicted)),
        "test_accuracy_ci95": [round(low, 4), round(high, 4)],
        "test_macro_f1": float(f1_score(labels["test"], predicted, average="macro")),
        "test_images": int(len(predicted)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    log.info(
        "%s: val accuracy %.4f → %.4f (kept the %s), test accuracy %.4f",
        key,
        before,
        after,
        kept,
        result["test_accuracy"],
    )
    return result, model


def _predict(model, dataset) -> np.ndarray:
    return np.argmax(model.predict(dataset.map(lambda x, y: x), verbose=0), axis=1)
