"""Heads are scikit-learn estimators (the Keras dense head too) and the grid names them stably."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from pipeline.config import parse_params
from pipeline.heads.dense import DenseHead
from pipeline.heads.streaming import StreamingDenseHead, StreamingLinearHead
from pipeline.heads.variants import expand_grid, make_estimator


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(3, 10))
    y = np.repeat(np.arange(3), 40)
    X = centres[y] + rng.normal(size=(120, 10))
    order = rng.permutation(120)
    return X[order].astype(np.float32), y[order]


def test_dense_head_is_a_proper_estimator(blobs):
    X, y = blobs
    head = DenseHead(hidden_units=16, dropout=0.2, learning_rate=0.01, epochs=30, patience=5, random_state=0)
    assert clone(head).get_params() == head.get_params()
    head.fit(X[:90], y[:90])
    assert (head.predict(X[90:]) == y[90:]).mean() > 0.9
    proba = head.predict_proba(X[90:])
    assert proba.shape == (30, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert 1 <= head.n_epochs_ <= 30


def test_dense_head_is_seeded_and_picklable(blobs):
    X, y = blobs
    a = DenseHead(hidden_units=8, epochs=5, random_state=1).fit(X, y).predict_proba(X)
    b = DenseHead(hidden_units=8, epochs=5, random_state=1).fit(X, y)
    np.testing.assert_allclose(a, b.predict_proba(X), rtol=1e-5)
    restored = pickle.loads(pickle.dumps(b))
    np.testing.assert_allclose(restored.predict_proba(X), a, rtol=1e-5)


def test_dense_head_keeps_string_labels(blobs):
    X, y = blobs
    names = np.array(["cat", "dog", "fox"])[y]
    head = DenseHead(hidden_units=0, epochs=20, random_state=0).fit(X, names)
    assert set(head.predict(X[:10])) <= {"cat", "dog", "fox"}


def test_dense_head_refuses_unfitted_and_single_class(blobs):
    X, y = blobs
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        DenseHead().predict(X)
    with pytest.raises(ValueError, match="at least 2 classes"):
        DenseHead(epochs=1).fit(X[:5], np.zeros(5, int))


def test_dense_head_works_in_a_grid_search():
    # XOR: no linear head (hidden_units=0) can beat chance; one hidden layer can, so the search must pick it.
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(400, 2)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    search = GridSearchCV(
        DenseHead(epochs=40, learning_rate=0.03, batch_size=32, patience=0), {"hidden_units": [0, 16]}, cv=2
    )
    search.fit(X, y)
    linear, hidden = search.cv_results_["mean_test_score"]
    assert search.best_params_["hidden_units"] == 16 and search.best_estimator_.hidden_units == 16
    assert hidden > 0.85 and linear < 0.7, (linear, hidden)


def test_dense_head_predicts_in_numpy_what_its_keras_model_predicts(blobs):
    X, y = blobs
    head = DenseHead(hidden_units=16, dropout=0.3, epochs=5, random_state=0).fit(X, y)
    keras_proba = np.asarray(head.model_.predict(X, verbose=0))
    np.testing.assert_allclose(head.predict_proba(X), keras_proba, rtol=1e-4, atol=1e-6)
    # The pickle holds numpy weights only: loading it (evaluate, finetune) needs no TensorFlow.
    state = pickle.loads(pickle.dumps(head)).__dict__
    assert "_keras_model" not in state and [k.shape for k in state["coefs_"]] == [(10, 16), (16, 3)]
    rebuilt = pickle.loads(pickle.dumps(head)).model_
    assert [layer.name for layer in rebuilt.layers] == ["hidden", "dropout", "probabilities"]
    np.testing.assert_allclose(np.asarray(rebuilt.predict(X, verbose=0)), keras_proba, rtol=1e-5, atol=1e-6)


def test_dense_head_without_patience_trains_every_epoch(blobs):
    X, y = blobs
    head = DenseHead(hidden_units=0, dropout=0.0, epochs=7, patience=0, random_state=0).fit(X, y)
    assert head.n_epochs_ == 7 and len(head.loss_curve_) == 7
    assert head.loss_curve_[-1] < head.loss_curve_[0]
    assert not hasattr(DenseHead(), "model_")


def test_grid_ids_are_stable_and_readable():
    heads = parse_params(
        {
            "heads": {
                "kinds": ["logreg", "svm_rbf", "dense"],
                "pooling": ["avg", "max"],
                "logreg": {"C": [0.1, 1.0]},
                "svm_rbf": {"C": [1.0], "gamma": ["scale", 0.01]},
                "dense": {
                    "hidden_units": [256],
                    "dropout": [0.0, 0.5],
                    "weight_decay": [0.0, 1e-3],
                    "learning_rate": [0.001],
                    "epochs": [60],
                },
            }
        }
    ).heads
    ids = [v.id for v in expand_grid(heads)]
    assert len(ids) == 2 * (2 + 2 + 4) and len(set(ids)) == len(ids)
    assert "avg-logreg-C0.1" in ids
    assert "max-svm_rbf-C1-gscale" in ids and "avg-svm_rbf-C1-g0.01" in ids
    assert "avg-dense-h256-d0.5-wd0-lr0.001-e60" in ids and "max-dense-h256-d0-wd0.001-lr0.001-e60" in ids


def test_grid_sweeps_pooling_standardisation_and_pca():
    heads = parse_params(
        {
            "heads": {
                "kinds": ["logreg", "svm_poly"],
                "pooling": ["avg", "avgmax"],
                "standardize": [True, False],
                "pca": [None, 8, 0.9],
                "logreg": {"C": [1.0]},
                "svm_poly": {"degree": [2, 3]},
            }
        }
    ).heads
    variants = expand_grid(heads)
    ids = [v.id for v in variants]
    assert len(ids) == 2 * 2 * 3 * (1 + 2) == len(set(ids))
    assert ids[0] == "avg-logreg-C1"  # default preprocessing adds nothing to the id
    assert {"avgmax-nostd-pca8-logreg-C1", "avg-pca0.9-svm_poly-C1-gscale-deg3", "avg-nostd-logreg-C1"} <= set(ids)
    by_id = dict(zip(ids, variants))
    steps = [name for name, _ in make_estimator(by_id["avgmax-nostd-pca8-logreg-C1"], heads).steps]
    assert steps == ["pca", "head"]
    assert [name for name, _ in make_estimator(by_id["avg-nostd-logreg-C1"], heads).steps] == ["head"]
    assert make_estimator(by_id["avg-logreg-C1"], heads).named_steps["head"].warm_start


def test_grid_refuses_a_value_listed_twice():
    heads = parse_params({"heads": {"kinds": ["logreg"], "logreg": {"C": [0.1, 0.1]}}}).heads
    with pytest.raises(ValueError, match="same variant twice.*avg-logreg-C0.1"):
        expand_grid(heads)


@pytest.mark.parametrize("kind", ["logreg", "svm_linear", "svm_rbf", "svm_poly", "dense"])
def test_every_kind_learns_separable_data(blobs, kind):
    X, y = blobs
    heads = parse_params(
        {
            "heads": {
                "kinds": [kind],
                "dense": {"epochs": [40], "hidden_units": [16], "weight_decay": [0.0], "learning_rate": [0.01]},
            }
        }
    ).heads
    # C = 1 where the kind has a C (the default grids start at 1e-6, the coarse pass of the C search).
    variant = next(v for v in expand_grid(heads) if dict(v.params).get("C", 1.0) == 1.0)
    estimator = make_estimator(variant, heads).fit(X[:90], y[:90])
    assert (estimator.predict(X[90:]) == y[90:]).mean() > 0.9


def test_dense_head_draws_one_view_per_image_per_epoch(blobs):
    X, y = blobs
    rng = np.random.default_rng(1)
    views = np.stack([X] + [X + rng.normal(scale=0.5, size=X.shape).astype(np.float32) for _ in range(3)], axis=1)
    a = DenseHead(hidden_units=8, epochs=25, learning_rate=0.01, random_state=3).fit(views, y)
    b = DenseHead(hidden_units=8, epochs=25, learning_rate=0.01, random_state=3).fit(views, y)
    clean = DenseHead(hidden_units=8, epochs=25, learning_rate=0.01, random_state=3).fit(X, y)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-5)  # seeded draws
    assert not np.allclose(a.predict_proba(X), clean.predict_proba(X))  # the views were used
    assert a.n_features_in_ == X.shape[1] and (a.predict(X) == y).mean() > 0.9


@parametrize_with_checks(
    [
        # Settings small enough to be quick, large enough to pass the checks' training-accuracy bar (0.83).
        DenseHead(hidden_units=8, epochs=10, learning_rate=0.02, batch_size=32, patience=0),
        StreamingLinearHead(epochs=20),
        StreamingDenseHead(hidden_units=8, epochs=10, learning_rate=0.02, batch_size=32),
    ]
)
def test_every_head_estimator_follows_the_scikit_learn_api(estimator, check):
    check(estimator)
