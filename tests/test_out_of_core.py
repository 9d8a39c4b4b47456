"""Out-of-core heads: trained block by block from dask arrays, close to the in-memory heads."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.out_of_core import StreamingDenseHead, StreamingLinearHead, blocks_rows


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=2.0, size=(4, 20))
    y = rng.integers(0, 4, size=1200)
    X = (centres[y] + rng.normal(size=(1200, 20)) * 1.5) * rng.uniform(0.2, 20, size=20)
    return X.astype(np.float32), y


def _split(X, y):
    return X[:900], y[:900], X[900:], y[900:]


@pytest.mark.parametrize("loss", ["log_loss", "hinge"])
def test_streaming_linear_heads_match_the_in_memory_result(problem, loss):
    X_train, y_train, X_test, y_test = _split(*problem)
    lazy = da.from_array(X_train, chunks=(128, 20))
    assert len(blocks_rows(lazy)) == 8
    head = StreamingLinearHead(loss=loss, alpha=1e-3, epochs=8).fit(lazy, y_train)
    streamed = (head.predict(da.from_array(X_test, chunks=(100, 20))) == y_test).mean()
    memory = (make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X_train, y_train)
              .predict(X_test) == y_test).mean()
    assert streamed >= memory - 0.03, (streamed, memory)


def test_streaming_linear_head_never_reads_the_whole_array(problem):
    X_train, y_train, _, _ = _split(*problem)
    biggest = []

    def spy(block):
        biggest.append(len(block))
        return block

    lazy = da.from_array(X_train, chunks=(100, 20)).map_blocks(spy, dtype=np.float32)
    StreamingLinearHead(epochs=2).fit(lazy, y_train)
    assert max(biggest) == 100


def test_streaming_dense_head_learns_from_blocks(problem):
    X_train, y_train, X_test, y_test = _split(*problem)
    head = StreamingDenseHead(hidden_units=32, dropout=0.1, epochs=6, learning_rate=3e-3)
    head.fit(da.from_array(X_train, chunks=(150, 20)), y_train)
    accuracy = (head.predict(X_test) == y_test).mean()
    assert accuracy > 0.85
    assert head.predict_proba(X_test[:5]).shape == (5, 4)
    assert head.n_epochs_ == 6


def test_bad_loss_is_named(problem):
    X, y = problem
    with pytest.raises(ValueError, match="loss='squared'"):
        StreamingLinearHead(loss="squared").fit(X, y)
