"""The fine-tune stage end to end on tiny data: warm start, frozen BatchNorm, one test score."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_params, write_image_folder, write_params

from pipeline.config import ParamsError, parse_params
from pipeline.stages import extract, finetune, prepare
from pipeline.stages import heads as heads_stage


def test_finetune_runs_end_to_end_from_the_cached_head(in_tmp):
    write_image_folder(in_tmp / "images", classes=2, per_class=12)
    params = tiny_params(
        "images",
        heads={
            "kinds": ["dense"],
            "n_jobs": 1,
            "dense": {"hidden_units": [8], "dropout": [0.0], "weight_decay": [0.0], "epochs": [5]},
        },
        finetune={
            "feature_set": "mv2",
            "unfreeze": 6,
            "epochs": 2,
            "patience": 1,
            "batch_size": 4,
            "learning_rate": 1e-4,
        },
    )
    write_params(in_tmp / "params.yaml", params)
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
    heads_stage.main(["--features", "features", "--out", "heads", "--no-progress"])
    finetune.main(["--heads", "heads", "--out", "finetune", "--no-progress"])
    result = json.loads((in_tmp / "finetune/result.json").read_text())
    assert result["enabled"] and result["feature_set"] == "mv2"
    assert result["head_variant"].startswith("avg-dense")
    # The warm start predicts what the cached head predicted (features differ by float16 rounding only).
    assert abs(result["val_accuracy_before"] - result["val_accuracy_cached_head"]) <= 0.2
    assert 1 <= result["unfrozen_layers"] <= 6 and 1 <= result["epochs_run"] <= 2
    # Fine-tuning is kept only when it improved validation accuracy; otherwise the warm start is.
    assert result["kept"] == (
        "fine-tuned" if result["val_accuracy_after"] > result["val_accuracy_before"] else "warm start"
    )
    assert result["val_accuracy"] == max(result["val_accuracy_before"], result["val_accuracy_after"])
    low, high = result["test_accuracy_ci95"]
    assert low <= result["test_accuracy"] <= high
    assert (in_tmp / "finetune/model.weights.h5").is_file()
    # Its result joins the leaderboard and the overall choice, made on validation.
    from pipeline.stages import evaluate

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
            "--finetune",
            "finetune/result.json",
            "--best",
            "reports/best",
        ]
    )
    report = json.loads((in_tmp / "reports/evaluation.json").read_text())
    assert report["finetune"]["test_accuracy"] == result["test_accuracy"]
    board = (in_tmp / "reports/leaderboard.csv").read_text()
    assert "finetune-" + result["head_variant"] in board
    metrics = json.loads((in_tmp / "reports/best/finetune.json").read_text())
    assert metrics["val_acc"] == result["val_accuracy"]
    cached_best = report.get("best_cached_head", report["best"])["val_accuracy"]
    assert (report["best"]["variant"].startswith("finetune")) == (result["val_accuracy"] > cached_best)


def test_batch_norm_stays_frozen_and_only_the_top_trains():
    import keras
    import numpy as np
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.backbones import build_cut_model
    from pipeline.config import FeatureSetParams
    from pipeline.finetuning.warm_start import build_finetune_model
    from pipeline.heads.dense import DenseHead

    cut = build_cut_model(
        FeatureSetParams(backbone="mobilenet_v2", weights="none", size=32, alpha=0.35, cut="block_2_add"), seed=0
    )
    X = np.random.default_rng(0).normal(size=(20, 8)).astype("float32")
    head = Pipeline([("s", StandardScaler()), ("head", DenseHead(hidden_units=4, epochs=1))]).fit(X, [0, 1] * 10)
    build_finetune_model(cut, head, "avg", unfreeze=10)
    layers = cut.model.layers
    assert not any(layer.trainable for layer in layers[:-10])
    assert not any(layer.trainable for layer in layers if isinstance(layer, keras.layers.BatchNormalization))
    assert any(layer.trainable for layer in layers[-10:])


def test_finetune_feature_set_must_exist():
    with pytest.raises(ParamsError, match="finetune.feature_set.*'nope'"):
        parse_params({"features": {"a": {"backbone": "vgg16"}}, "finetune": {"feature_set": "nope"}})


def test_disabled_finetune_writes_a_marker(in_tmp):
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    finetune.main(["--heads", "heads", "--out", "finetune"])
    assert json.loads((in_tmp / "finetune/result.json").read_text()) == {"enabled": False}
