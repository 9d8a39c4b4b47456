"""Every stage's main() end to end on tiny data, in a temporary working directory."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import sys

import numpy as np
import pytest
from conftest import recomputed_best_test_accuracy, tiny_params, write_image_folder, write_params

from pipeline.manifest import read_manifest
from pipeline.stages import backbone_cost, evaluate, extract, prepare
from pipeline.stages import heads as heads_stage
from pipeline.store.layout import StoreError
from pipeline.store.reader import open_feature_set

PREPARE_ARGS = [
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
EXTRACT_ARGS = ["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"]


@pytest.fixture
def prepared(in_tmp):
    write_image_folder(in_tmp / "images", classes=3, per_class=10)
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    prepare.main(PREPARE_ARGS)
    return in_tmp


def test_prepare_writes_manifest_and_reports(prepared):
    records = read_manifest("data/manifest.csv")
    assert len(records) == 30 and records[0].path.startswith("images/")
    report = json.loads((prepared / "reports/prepare.json").read_text())
    assert report["per_split"] == {"train": 18, "val": 6, "test": 6}
    assert "| class_0 |" in (prepared / "reports/prepare.md").read_text()
    headline = json.loads((prepared / "reports/data_metrics.json").read_text())["data"]
    assert headline["images"] == 30 and headline["test"] == 6 and headline["duplicates_removed_cross_split"] == 0


def test_extract_stores_what_the_model_computes(prepared):
    import tensorflow as tf

    from pipeline.backbones import build_cut_model
    from pipeline.config import load_params
    from pipeline.images import decode_image

    extract.main(EXTRACT_ARGS)
    records = read_manifest("data/manifest.csv")
    test = open_feature_set("features/mv2.zarr", "test", pooling="none")
    expected_ids = [r.id for r in records if r.split == "test"]
    assert test.ids.tolist() == expected_ids
    assert test.y.tolist() == [r.label for r in records if r.split == "test"]
    # Keyed by what the features are, not by the dataset: no manifest in the identity, the cut in it.
    assert test.provenance["cut"] == "block_2_add" and "manifest_sha256" not in test.provenance
    # The same image through the model by hand, without tf.data or the store.
    cut = build_cut_model(load_params().features["mv2"], seed=0)
    first = next(r for r in records if r.split == "test")
    pixels = tf.image.resize(decode_image(first.path)[None], (32, 32), method="bilinear")
    by_hand = cut.model(cut.preprocess(pixels), training=False).numpy()[0]
    np.testing.assert_allclose(np.asarray(test.X[0], np.float32), by_hand, rtol=2e-3, atol=2e-3)


def test_heads_and_evaluate_end_to_end(prepared, capsys):
    extract.main(EXTRACT_ARGS)
    heads_stage.main(["--features", "features/mv2.zarr", "--out", "heads/mv2", "--no-progress"])
    scores = json.loads((prepared / "heads/mv2/scores.json").read_text())
    assert [v["variant"] for v in scores["variants"]] == [
        "avg-logreg-C0.1",
        "avg-logreg-C1",
        "avg-svm_linear-C0.1",
        "avg-dense-h8-d0-wd0-lr0.001-e3",
    ]
    assert all((prepared / "heads/mv2" / f"{v['variant']}.joblib").is_file() for v in scores["variants"])
    assert scores["sweep"]["fitted"] == 4 and scores["rows"] == {"train": 18, "val": 6}
    assert all(v["fit_seconds"] > 0 and v["peak_rss_mib"] is not None for v in scores["variants"])
    assert scores["variants"][-1]["n_epochs"] == 3
    backbone_cost.main(["--out", "reports/backbone_cost.json"])
    (prepared / "reports/best").mkdir(parents=True)
    (prepared / "reports/best/gone.json").write_text("{}")  # a feature set no longer in params.yaml
    evaluate.main(
        [
            "--heads",
            "heads",
            "--metrics",
            "metrics.json",
            "--best",
            "reports/best",
            "--report",
            "reports/evaluation.json",
            "--leaderboard",
            "reports/leaderboard.csv",
            "--plots",
            "plots",
            "--costs",
            "reports/backbone_cost.json",
            "--cost",
            "reports/cost.json",
        ]
    )
    # One short row per model, the same keys in each file: `dvc metrics show` prints one column per key.
    metrics = json.loads((prepared / "metrics.json").read_text())
    assert list(metrics) == ["head", "test_acc", "test_ci_lo", "test_ci_up", "val_acc"]
    assert sorted(p.name for p in (prepared / "reports/best").iterdir()) == ["mv2.json"]
    of_mv2 = json.loads((prepared / "reports/best/mv2.json").read_text())
    assert metrics == {**of_mv2, "head": "mv2/" + of_mv2["head"]}
    best = json.loads((prepared / "reports/evaluation.json").read_text())["best"]
    assert (metrics["test_acc"], [metrics["test_ci_lo"], metrics["test_ci_up"]]) == (
        best["test_accuracy"],
        best["test_accuracy_ci95"],
    )
    assert best["feature_set"] == "mv2"
    assert best["test_accuracy"] == recomputed_best_test_accuracy(prepared)
    assert set(best["test_recall"]) == {"class_0", "class_1", "class_2"}
    low, high = best["test_accuracy_ci95"]
    assert low <= best["test_accuracy"] <= high
    with open(prepared / "reports/leaderboard.csv", newline="") as handle:
        board = list(csv.DictReader(handle))
    assert len(board) == 4 and [row["selected"] for row in board].count("True") == 1
    assert all(row["test_accuracy"] == "" for row in board if row["selected"] == "False")
    markdown = (prepared / "reports/leaderboard.md").read_text()
    assert markdown.startswith("# Leaderboard") and "**Cost.**" in markdown
    confusion = (prepared / "plots/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 1 + 6
    with open(prepared / "plots/accuracy_by_cut.csv", newline="") as handle:
        (cut,) = csv.DictReader(handle)
    assert float(cut["val_accuracy"]) == pytest.approx(best["val_accuracy"])  # the chart plots the selection score
    assert float(cut["test_ci95_low"]) <= float(cut["chosen_test_accuracy"]) <= float(cut["test_ci95_high"])
    from pipeline.cli.shoulders import main as shoulders

    shoulders(["summary", "--top", "3"])
    summary = capsys.readouterr().out.splitlines()
    assert summary[0] == (
        f"Chosen: mv2 / {best['variant']}  val {best['val_accuracy']:.3f}, "
        f"test {best['test_accuracy']:.3f} (95% CI {low:.3f}-{high:.3f})"
    )
    assert summary[1].startswith("  on validation (val split) accuracy") and "6 images" in summary[1]
    assert "Top 3 of 4 variants" in summary[3] and summary[5].split()[:3] == ["1", "mv2", board[0]["variant"]]
    assert max(map(len, summary)) <= 100
    swept = (prepared / "plots/hyperparameters.csv").read_text().splitlines()
    assert swept[0] == "hyperparameter,value,order,feature_set,val_accuracy"
    assert {line.split(",")[0] for line in swept[1:]} == {"kind", "logreg.C"}  # the only lists of 2+
    report = json.loads((prepared / "reports/cost.json").read_text())
    # 3 closed-form heads read 18 train + 6 val images once; the dense head 3 epochs of 18 + 6.
    per_image = json.loads((prepared / "reports/backbone_cost.json").read_text())["mv2"]["seconds_per_image"]
    assert report["end_to_end_seconds"] == pytest.approx(per_image * (3 * 24 + 3 * 18 + 6), rel=1e-3, abs=0.05)
    assert report["variants"] == 4 and report["fitted"] == 4 and report["heads_stage_seconds"] > 0


def test_heads_refit_only_what_changed(prepared):
    extract.main(EXTRACT_ARGS)
    args = ["--features", "features/mv2.zarr", "--out", "heads/mv2", "--no-progress"]
    heads_stage.main(args)
    first = json.loads((prepared / "heads/mv2/scores.json").read_text())["variants"]
    heads_stage.main(args)
    again = json.loads((prepared / "heads/mv2/scores.json").read_text())
    assert again["sweep"]["fitted"] == 0 and all(v["reused"] for v in again["variants"])
    assert [v["val_accuracy"] for v in again["variants"]] == [v["val_accuracy"] for v in first]
    write_params(prepared / "params.yaml", tiny_params("images", heads={"logreg": {"C": [1.0, 3.0]}}))
    heads_stage.main(args)
    changed = json.loads((prepared / "heads/mv2/scores.json").read_text())
    fitted = {v["variant"] for v in changed["variants"] if not v["reused"]}
    assert fitted == {"avg-logreg-C1", "avg-logreg-C3"}  # the C path is refitted whole
    assert not (prepared / "heads/mv2/avg-logreg-C0.1.joblib").exists()
    assert sorted(p.name for p in (prepared / "heads/mv2").glob("*.joblib")) == sorted(
        f"{v['variant']}.joblib" for v in changed["variants"]
    )
    # Another cv_below that keeps cross-validation: nothing is refitted, and every row says why with the
    # threshold now set (a reused row must not keep the old one's words).
    for below in (50, 60):
        write_params(
            prepared / "params.yaml", tiny_params("images", heads={"cv": "auto", "cv_below": below, "cv_folds": 2})
        )
        heads_stage.main(args)
    last = json.loads((prepared / "heads/mv2/scores.json").read_text())
    assert last["sweep"]["fitted"] == 0 and last["variants"]
    assert all(v["selection"].startswith("2-fold CV") and v["selection"].endswith("< 60)") for v in last["variants"])


def test_heads_refuse_a_store_lacking_images_of_the_manifest(prepared):
    from pipeline.manifest import write_manifest

    extract.main(EXTRACT_ARGS)
    records = read_manifest("data/manifest.csv")
    extra = records[0].__class__(**{**records[0].__dict__, "id": "class_0/new.png", "sha256": "f" * 64})
    write_manifest([*records, extra], "data/manifest.csv")
    with pytest.raises(StoreError, match=r"no features for 1 image\(s\) of the manifest \(first: class_0/new.png"):
        heads_stage.main(["--features", "features/mv2.zarr", "--out", "heads/mv2", "--no-progress"])


def test_unknown_feature_set_is_named(prepared):
    with pytest.raises(ValueError, match="unknown feature set 'mv3'.*mv2"):
        extract.main(["--feature-set", "mv3", "--out", "features/mv3.zarr"])


def test_undecodable_image_stops_prepare(in_tmp):
    write_image_folder(in_tmp / "images", classes=3, per_class=10)
    (in_tmp / "images/class_2/bad.png").write_bytes(b"\x89PNG truncated")
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    with pytest.raises(ValueError, match="bad.png"):
        prepare.main(PREPARE_ARGS)


def test_float16_underflow_is_refused_and_float32_works(in_tmp):
    # A random-init MobileNet α0.25 computes activations near 1e-16: float16 would store zeros.
    write_image_folder(in_tmp / "images", classes=3, per_class=10)
    features = {"tiny": {"backbone": "mobilenet", "alpha": 0.25, "weights": "none", "size": 32}}
    write_params(in_tmp / "params.yaml", tiny_params("images", features=features))
    prepare.main(PREPARE_ARGS)
    with pytest.raises(ValueError, match="underflow float16.*dtype: float32"):
        extract.main(["--feature-set", "tiny", "--out", "features/tiny.zarr", "--no-progress"])
    features["tiny"]["dtype"] = "float32"
    write_params(in_tmp / "params.yaml", tiny_params("images", features=features))
    extract.main(["--feature-set", "tiny", "--out", "features/tiny.zarr", "--no-progress"])
    train = open_feature_set("features/tiny.zarr", "train", pooling="avg")
    assert train.provenance["dtype"] == "float32" and np.abs(train.X).max() > 0


# --------------------------------------------------------------------------- errors people read


def _error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_full_disk_during_extraction_ends_in_one_line_and_debug_shows_the_traceback(prepared, monkeypatch, caplog):
    from zarr.storage import LocalStore

    from pipeline.cli.stage_runner import run_stage

    original = LocalStore.set

    async def full(self, key, value):
        if key.startswith("X/c"):  # the first chunk of features written: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / key))
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", full)
    monkeypatch.setattr(sys, "argv", ["extract"])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        run_stage(lambda: extract.main(EXTRACT_ARGS))
    assert exit_.value.code == 1
    (line,) = _error_lines(caplog)
    assert line.startswith("No space left on device while writing features/.incomplete/mv2-") and "\n" not in line
    assert "free space on that disk" in line and "resumes from its last written chunk" in line
    monkeypatch.setattr(sys, "argv", ["extract", "--debug"])
    with pytest.raises(OSError, match="No space left on device"):
        run_stage(lambda: extract.main(EXTRACT_ARGS))


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "features/a.zarr"),
            "Permission denied: features/a.zarr: this user (",
        ),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "data/manifest.csv"),
            "No such file or directory: data/manifest.csv: a missing input; `dvc repro` makes",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "heads/a"),
            "Read-only file system: heads/a: write the outputs on",
        ),
        (
            OSError(errno.EDQUOT, "Disk quota exceeded", "models/model.keras"),
            "Disk quota exceeded while writing models/model.keras: free space on that disk (or raise the quota)",
        ),
        (
            StoreError("features/a.zarr: chunk 3 is corrupt (RuntimeError: Zstd decompression error)"),
            "features/a.zarr: chunk 3 is corrupt (RuntimeError: Zstd decompression error)",
        ),
    ],
)
def test_expected_failures_end_in_one_line_naming_what_where_and_what_to_do(error, expected, caplog, monkeypatch):
    from pipeline.cli.stage_runner import run_stage

    def fail():
        raise error

    monkeypatch.delenv("SHOULDERS_DEBUG", raising=False)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        run_stage(fail, debug=False)
    assert exit_.value.code == 1
    (line,) = _error_lines(caplog)
    assert line.startswith(expected) and line.endswith("(--debug shows the traceback)")
    monkeypatch.setenv("SHOULDERS_DEBUG", "1")
    with pytest.raises(type(error)):
        run_stage(fail, debug=False)


def test_a_bug_keeps_its_traceback():
    from pipeline.cli.stage_runner import run_stage

    def bug():
        raise KeyError("test")

    with pytest.raises(KeyError):
        run_stage(bug, debug=False)


def test_a_second_extraction_of_a_store_stops_in_one_line_naming_the_first(prepared, caplog):
    from pathlib import Path

    from pipeline.cli.stage_runner import run_stage
    from pipeline.store.lock import store_lock

    with store_lock(Path("features/mv2.zarr")), caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        run_stage(lambda: extract.main(EXTRACT_ARGS), debug=False)
    assert exit_.value.code == 1
    (line,) = _error_lines(caplog)
    assert line.startswith(f"another extraction of mv2 is running (pid {os.getpid()}); this extraction stopped")
    assert not Path("features/mv2.zarr").exists() and not list(Path("features/.incomplete").glob("*.zarr"))


def test_backbone_timings_are_measured_once_per_machine_and_dated(prepared, monkeypatch, tmp_path):
    # One timing taken on a busy spell made the cost report swing 10× between runs: now one per machine, dated.
    from pipeline.reporting.tables import cost_markdown
    from pipeline.selection.cost import sweep_cost

    monkeypatch.setenv("SHOULDERS_CACHE_DIR", str(tmp_path / "cache"))
    backbone_cost.main(["--out", "first.json"])
    backbone_cost.main(["--out", "second.json"])
    first, second = (json.loads((prepared / name).read_text())["mv2"] for name in ("first.json", "second.json"))
    assert first["cached"] is False and second["cached"] is True
    assert second["seconds_per_image"] == first["seconds_per_image"] and second["measured_at"] == first["measured_at"]
    scores = {
        "feature_set": "mv2",
        "variants": [{"kind": "logreg", "fit_seconds": 1.0, "params": {}}],
        "rows": {"train": 18, "val": 6},
        "sweep": {"fitted": 1, "stage_seconds": 2.0},
    }
    text = cost_markdown(sweep_cost([scores], {"mv2": second}, {"mv2": 6}))
    assert f"(measured on this machine on {first['measured_at'][:10]})" in text


@pytest.mark.parametrize(
    "layout, data, heads",
    [
        # The most common published layout: train/ and val/, no test/ (test is drawn from train/).
        ({"train": 8, "val": 3}, {}, {}),
        # No validation split at all, compared by cross-validation instead (crashed on the empty val split).
        ({"train": 8, "test": 3}, {"split": {"train": 0.8, "val": 0.0, "test": 0.2}}, {"cv": 2}),
    ],
)
def test_a_pre_split_source_missing_a_split_runs_to_evaluate(in_tmp, layout, data, heads):
    for seed, (split, n) in enumerate(layout.items()):
        write_image_folder(in_tmp / "images" / split, classes=3, per_class=n, seed=seed)
    params = tiny_params("images", data=data, heads={"kinds": ["logreg"], **heads})
    params["data"]["split"] = data.get("split", {"train": 0.7, "val": 0.15, "test": 0.15})
    write_params(in_tmp / "params.yaml", params)
    prepare.main(PREPARE_ARGS)
    extract.main(EXTRACT_ARGS)
    heads_stage.main(["--features", "features/mv2.zarr", "--out", "heads/mv2", "--no-progress"])
    backbone_cost.main(["--out", "reports/backbone_cost.json"])
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
            "--costs",
            "reports/backbone_cost.json",
            "--cost",
            "reports/cost.json",
        ]
    )
    per_split = json.loads((in_tmp / "reports/prepare.json").read_text())["per_split"]
    best = json.loads((in_tmp / "reports/evaluation.json").read_text())["best"]
    assert best["test_accuracy"] == recomputed_best_test_accuracy(in_tmp)
    if "val" in layout:
        assert per_split == {"train": 21, "val": 9, "test": 3}  # 1 of each class's 8 drawn into test
    else:
        assert per_split == {"train": 24, "val": 0, "test": 9}
        assert 0 <= best["val_accuracy"] <= 1  # the mean over the folds
