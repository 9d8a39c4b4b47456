"""A sweep's scores counted directly equal scikit-learn's accuracy and macro-F1."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from pipeline.heads.tally import accuracy_and_macro_f1


def sklearn_scores(y_true, predicted):
    return accuracy_score(y_true, predicted), f1_score(y_true, predicted, average="macro", zero_division=0)


@pytest.mark.parametrize("seed", range(20))
def test_counts_equal_scikit_learns_metrics(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 8))
    y_true = rng.integers(0, n_classes, size=int(rng.integers(5, 200)))
    # Mostly right, some wrong, and sometimes a label only one side has.
    predicted = np.where(rng.random(len(y_true)) < 0.7, y_true, rng.integers(0, n_classes + 1, size=len(y_true)))
    ours = accuracy_and_macro_f1(y_true, predicted)
    assert ours == pytest.approx(sklearn_scores(y_true, predicted), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("y_true", "predicted"),
    [
        (["cat", "dog", "dog", "owl"], ["cat", "dog", "cat", "cat"]),  # owl never predicted: its F1 is 0
        ([0, 0, 1, 1], [2, 2, 2, 2]),  # every answer a label the truth lacks
        ([3, 3, 3], [3, 3, 3]),  # one class, all right
        ([0, 1, 2], [1, 2, 0]),  # all wrong
    ],
)
def test_edge_cases_equal_scikit_learns_metrics(y_true, predicted):
    assert accuracy_and_macro_f1(np.array(y_true), np.array(predicted)) == pytest.approx(
        sklearn_scores(y_true, predicted), rel=1e-12, abs=1e-15
    )


def test_a_wrong_formula_would_be_caught():
    # Micro-F1 (= accuracy) differs from macro-F1 on unbalanced errors: the test above tells them apart.
    y_true, predicted = np.array([0, 0, 0, 0, 1]), np.array([0, 0, 0, 0, 0])
    accuracy, macro_f1 = accuracy_and_macro_f1(y_true, predicted)
    assert accuracy == 0.8 and macro_f1 == pytest.approx((8 / 9 + 0) / 2)
