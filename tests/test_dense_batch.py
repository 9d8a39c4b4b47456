"""Many dense heads trained as one Keras model give what each gives trained alone; the sweep batches them."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import tiny_params, write_image_folder, write_params

from pipeline.config import parse_params
from pipeline.heads import dense_training
from pipeline.heads.dense import DenseHead
from pipeline.heads.dense_batch import fit_dense_heads
from pipeline.heads.registry import HeadKind
from pipeline.heads.sweep import Splits, plan_jobs, run_sweep
from pipeline.heads.variants import expand_grid

# Batched and lone fits run the same float32 operations on the same rows in the same order; what
# is left is the order of summation inside the kernels, far below this.
TOLERANCE = 1e-5


def _blobs(n_per_class: int, n_features: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(3, n_features))
    y = np.repeat(np.arange(3), n_per_class)
    X = (centres[y] + rng.normal(size=(len(y), n_features))).astype(np.float32)
    order = rng.permutation(len(y))
    return X[order], y[order]


@pytest.fixture(params=["together", "one at a time"])
def members_run(request, monkeypatch):
    """Both ways a program runs its members: vmapped together (a GPU) and one after another (a CPU)."""
    monkeypatch.setattr(dense_training, "_one_member_per_program", lambda: request.param == "one at a time")
    return request.param


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_batched_heads_predict_what_each_predicts_trained_alone(dropout, members_run):
    X, y = _blobs(60, 20, 1.0)
    X2 = np.concatenate([X, np.abs(X)], axis=1)  # a second input (another pooling, say), same rows
    settings = [
        dict(hidden_units=16, dropout=dropout, epochs=30, patience=3),
        dict(hidden_units=0, dropout=0.0, epochs=12, patience=0),  # no held-out rows: its own group
        dict(hidden_units=16, dropout=dropout, epochs=30, patience=5),
        dict(hidden_units=8, dropout=dropout, epochs=20, patience=2, learning_rate=0.01),
    ]  # its own Adam
    inputs = [X, X, X2, X2]

    def make(options):
        return DenseHead(batch_size=32, random_state=0, **options)

    lone = [make(options).fit(Xi, y) for options, Xi in zip(settings, inputs)]
    batched = fit_dense_heads([make(options) for options in settings], inputs, y)
    for alone, together, Xi in zip(lone, batched, inputs):
        assert together.n_epochs_ == alone.n_epochs_
        np.testing.assert_allclose(together.predict_proba(Xi), alone.predict_proba(Xi), atol=TOLERANCE)
        for a, b in zip(together.coefs_ + together.intercepts_, alone.coefs_ + alone.intercepts_):
            np.testing.assert_allclose(a, b, atol=TOLERANCE)
        assert together.n_features_in_ == Xi.shape[1] and list(together.classes_) == [0, 1, 2]
        assert len(together.loss_curve_) == together.n_epochs_


def test_weight_decay_shrinks_the_kernels_and_batched_members_keep_their_own():
    X, y = _blobs(40, 24, 1.0)
    decays = [0.0, 1e-3, 3e-2]

    def make(decay, hidden_units=16):
        return DenseHead(
            hidden_units=hidden_units,
            dropout=0.3,
            weight_decay=decay,
            epochs=15,
            patience=3,
            batch_size=32,
            random_state=0,
        )

    lone = [make(decay).fit(X, y) for decay in decays]
    norms = [sum(float(np.sum(k**2)) for k in head.coefs_) for head in lone]
    assert norms[0] > norms[1] > norms[2], norms
    # One stack of three members, each with its own penalty, and a softmax regression with one: as alone.
    batched = fit_dense_heads([make(decay) for decay in decays] + [make(1e-2, hidden_units=0)], [X] * 4, y)
    for together, alone in zip(batched, lone + [make(1e-2, hidden_units=0).fit(X, y)]):
        assert together.n_epochs_ == alone.n_epochs_
        for a, b in zip(together.coefs_ + together.intercepts_, alone.coefs_ + alone.intercepts_):
            np.testing.assert_allclose(a, b, atol=TOLERANCE)
        # The loss curve is the cross-entropy, penalty left out, batched or alone.
        np.testing.assert_allclose(together.loss_curve_, alone.loss_curve_, atol=TOLERANCE)
    with pytest.raises(ValueError, match="weight_decay >= 0. Received: weight_decay=-1"):
        make(-1.0).fit(X, y)


def test_each_branch_stops_on_its_own_patience_and_keeps_its_best_weights(members_run):
    X, y = _blobs(30, 30, 0.6)  # barely separable: a high learning rate overfits within epochs

    def make(**options):
        return DenseHead(batch_size=16, learning_rate=0.03, random_state=0, **{"epochs": 40, **options})

    settings = [
        dict(hidden_units=64, dropout=0.0, patience=1),
        dict(hidden_units=64, dropout=0.3, patience=4),
        dict(hidden_units=0, dropout=0.0, patience=40),
    ]
    batched = fit_dense_heads([make(**options) for options in settings], [X, X, X], y)
    epochs = [head.n_epochs_ for head in batched]
    assert len(set(epochs)) == 3 and epochs[0] < epochs[1] < epochs[2] == 40, epochs
    for head, options in zip(batched, settings):
        alone = make(**options).fit(X, y)
        assert alone.n_epochs_ == head.n_epochs_
        np.testing.assert_allclose(head.predict_proba(X), alone.predict_proba(X), atol=TOLERANCE)
    # The first branch ran 2 epochs with patience 1, so its first epoch was its best: what it keeps is
    # the weights after that epoch, not the last ones.
    assert epochs[0] == 2
    first_epoch = make(**{**settings[0], "epochs": 1}).fit(X, y)
    np.testing.assert_allclose(batched[0].predict_proba(X), first_epoch.predict_proba(X), atol=TOLERANCE)


def test_fit_dense_heads_refuses_what_it_cannot_batch():
    X, y = _blobs(10, 4, 3.0)
    with pytest.raises(ValueError, match="one input per head. Received: 2 heads, 1 inputs"):
        fit_dense_heads([DenseHead(), DenseHead()], [X], y)
    with pytest.raises(ValueError, match="views.*Received: shape \\(30, 2, 4\\)"):
        fit_dense_heads([DenseHead()], [np.stack([X, X], axis=1)], y)
    with pytest.raises(ValueError, match="DenseHead objects only. Received: str"):
        fit_dense_heads(["logreg"], [X], y)


def _grid(batched: bool):
    return parse_params(
        {
            "heads": {
                "kinds": ["logreg", "dense"],
                "pooling": ["avg", "max"],
                "n_jobs": 1,
                "cv": 0,
                "logreg": {"C": [1.0], "refine": 0},
                "dense": {
                    "hidden_units": [8, 0],
                    "dropout": [0.0, 0.3],
                    "weight_decay": [0.0],
                    "epochs": [15],
                    "patience": 3,
                    "batched": batched,
                },
            }
        }
    ).heads


def test_the_sweep_fits_the_dense_variants_of_a_feature_set_as_one_job():
    X, y = _blobs(40, 12, 1.5)
    X_max = np.abs(X) + 0.5 * X  # another pooling of the same images: same rows, same labels
    data = {"avg": Splits(X[:90], y[:90], X[90:], y[90:]), "max": Splits(X_max[:90], y[:90], X_max[90:], y[90:])}
    heads = _grid(batched=True)
    jobs = plan_jobs(expand_grid(heads), heads)
    [dense] = [job for job in jobs if job.kind == "dense"]
    assert dense.together and len(dense.variants) == 8 and len(dense.features_keys) == 2
    assert len(jobs) == 3  # the two logreg inputs, one dense batch
    assert not any(job.together for job in plan_jobs(expand_grid(_grid(batched=False)), _grid(batched=False)))
    together = {v.id: (estimator, row) for v, estimator, row in run_sweep(expand_grid(heads), heads, data)}
    alone = {v.id: (estimator, row) for v, estimator, row in run_sweep(expand_grid(_grid(False)), _grid(False), data)}
    assert sorted(together) == sorted(alone) and len(together) == 10
    for variant_id, (estimator, row) in together.items():
        estimator_alone, row_alone = alone[variant_id]
        assert list(row) == list(row_alone)  # the same row, key for key
        assert row["n_epochs"] == row_alone["n_epochs"] and row["val_correct"] == row_alone["val_correct"]
        assert row["val_accuracy"] == row_alone["val_accuracy"] and row["fit_seconds"] > 0
        if row["val_proba"] is not None:
            np.testing.assert_allclose(row["val_proba"], row_alone["val_proba"], atol=TOLERANCE)
        pooled = data[variant_id.split("-")[0]].X_val
        np.testing.assert_allclose(
            estimator.predict_proba(pooled), estimator_alone.predict_proba(pooled), atol=TOLERANCE
        )


def test_a_batched_heads_stage_refits_only_the_dense_variant_that_changed(in_tmp):
    from pipeline.stages import extract, prepare
    from pipeline.stages import heads as heads_stage

    write_image_folder(in_tmp / "images", classes=3, per_class=10)
    dense = {"hidden_units": [8], "dropout": [0.0, 0.5], "weight_decay": [0.0], "epochs": [3], "patience": 2}
    write_params(in_tmp / "params.yaml", tiny_params("images", heads={"dense": dense}))
    prepare.main(
        [
            "--manifest",
            "data/manifest.csv",
            "--report",
            "reports/prepare.json",
            "--summary",
            "reports/prepare.md",
            "--metrics",
            "reports/data_metrics.json",
            "--no-progress",
        ]
    )
    extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
    args = ["--features", "features/mv2.zarr", "--out", "heads/mv2", "--no-progress"]
    heads_stage.main(args)
    first = {v["variant"]: v for v in json.loads((in_tmp / "heads/mv2/scores.json").read_text())["variants"]}
    assert {"avg-dense-h8-d0-wd0-lr0.001-e3", "avg-dense-h8-d0.5-wd0-lr0.001-e3"} <= set(first)
    write_params(in_tmp / "params.yaml", tiny_params("images", heads={"dense": {**dense, "dropout": [0.0, 0.3]}}))
    heads_stage.main(args)
    changed = json.loads((in_tmp / "heads/mv2/scores.json").read_text())
    fitted = {v["variant"] for v in changed["variants"] if not v["reused"]}
    assert fitted == {"avg-dense-h8-d0.3-wd0-lr0.001-e3"}
    kept = next(v for v in changed["variants"] if v["variant"] == "avg-dense-h8-d0-wd0-lr0.001-e3")
    assert kept["fingerprint"] == first["avg-dense-h8-d0-wd0-lr0.001-e3"]["fingerprint"]
    assert not (in_tmp / "heads/mv2/avg-dense-h8-d0.5-wd0-lr0.001-e3.joblib").exists()


def test_batched_is_a_checked_setting_and_needs_a_field_to_exist():
    with pytest.raises(ValueError, match="heads.dense.batched"):
        parse_params({"heads": {"dense": {"batched": "often"}}})

    @dataclass(frozen=True)
    class NoSwitch:
        width: tuple[int, ...] = (1,)

    with pytest.raises(ValueError, match="fit_together needs a `batched` field in NoSwitch"):
        HeadKind(
            "toy",
            NoSwitch,
            swept=("width",),
            estimator=lambda p, g, s: None,
            fit_together=lambda heads, inputs, y: heads,
        )


def test_held_out_loss_is_keras_sparse_crossentropy_on_probabilities():
    import keras

    from pipeline.heads.dense import held_out_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(50, 6)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probabilities[0] = [1.0, 0, 0, 0, 0, 0]  # clipped, as Keras clips: a zero would give an infinite loss
    labels = rng.integers(0, 6, size=50)
    labels[0] = 3
    expected = float(
        keras.ops.convert_to_numpy(keras.ops.mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities)))
    )
    assert np.isfinite(held_out_loss(probabilities, labels))
    assert held_out_loss(probabilities, labels) == pytest.approx(expected, rel=1e-6)
