"""Out-of-core heads: trained block by block from dask arrays, close to the in-memory heads."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.heads.streaming import StreamingDenseHead, StreamingLinearHead, blocks_rows
from pipeline.store.reader import open_feature_set


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
    memory = (
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X_train, y_train).predict(X_test)
        == y_test
    ).mean()
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


def test_heads_stage_trains_out_of_core_when_forced(in_tmp):
    import json

    import joblib
    from conftest import recomputed_best_test_accuracy, tiny_params, write_image_folder, write_params

    from pipeline.stages import evaluate, extract, prepare
    from pipeline.stages import heads as heads_stage

    write_image_folder(in_tmp / "images", classes=3, per_class=12)
    write_params(
        in_tmp / "params.yaml",
        tiny_params(
            "images",
            heads={
                "kinds": ["logreg", "svm_linear", "svm_rbf", "dense"],
                "out_of_core": True,
                "logreg": {"C": [1.0]},
                "svm_linear": {"C": [0.1]},
                "svm_rbf": {"C": [1.0]},
                "dense": {"hidden_units": [8], "dropout": [0.0], "weight_decay": [0.0], "epochs": [3]},
            },
        ),
    )
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
    heads_stage.main(["--features", "features", "--out", "heads", "--no-progress"])
    scores = json.loads((in_tmp / "heads/mv2/scores.json").read_text())
    assert scores["sweep"]["out_of_core"] is True
    assert [r["kind"] for r in scores["variants"]] == ["logreg", "svm_linear", "dense"]  # no RBF SVM out of core
    assert scores["sweep"]["skipped"] == ["avg-svm_rbf-C1-gscale"]
    assert all(r["out_of_core"] for r in scores["variants"])
    # Each recorded score is what the saved streaming head does on the val split.
    val = open_feature_set("features/mv2.zarr", "val", pooling="avg")
    for row in scores["variants"]:
        head = joblib.load(in_tmp / "heads/mv2" / f"{row['variant']}.joblib")
        assert row["val_accuracy"] == float((head.predict(val.X) == val.y).mean()), row["variant"]
    evaluate.main(
        [
            "--heads",
            "heads",
            "--metrics",
            "metrics.json",
            "--report",
            "reports/evaluation.json",
            "--leaderboard",
            "reports/leaderboard.csv",
            "--plots",
            "plots",
        ]
    )
    assert json.loads((in_tmp / "metrics.json").read_text())["test_acc"] == recomputed_best_test_accuracy(in_tmp)


def test_auto_switches_on_the_memory_limit(in_tmp):
    from pathlib import Path

    from conftest import tiny_params, write_image_folder, write_params

    from pipeline.config import parse_params
    from pipeline.heads.training import out_of_core, pooled_bytes
    from pipeline.heads.variants import expand_grid
    from pipeline.manifest import read_manifest
    from pipeline.stages import extract, prepare

    write_image_folder(in_tmp / "images", classes=2, per_class=6)
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
    records = read_manifest("data/manifest.csv")
    train = open_feature_set("features/mv2.zarr", "train", pooling="avg")
    size = pooled_bytes("features/mv2.zarr", "avg", len(train.y))
    assert size == train.X.size * 4  # training images × channels × float32, known without reading them
    small = parse_params({"heads": {"memory_limit_mb": size / 2**20 * 2}}).heads
    tight = parse_params({"heads": {"memory_limit_mb": size / 2**20 / 2}}).heads
    assert not out_of_core(Path("features/mv2.zarr"), expand_grid(small), small, records)
    assert out_of_core(Path("features/mv2.zarr"), expand_grid(tight), tight, records)
