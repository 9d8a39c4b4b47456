"""The export stage: one deployable model per head kind, checked against the pipeline, with a card."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_params, write_image_folder, write_params
from PIL import Image

from pipeline.cli import shoulders as cli
from pipeline.export.predict_command import folder_accuracy, image_files, load_model, predict_files, write_predictions
from pipeline.manifest import read_manifest
from pipeline.stages import evaluate, export, extract, prepare
from pipeline.stages import heads as heads_stage

pytestmark = pytest.mark.slow
# One variant of every head kind.
HEADS = {
    "kinds": ["logreg", "svm_linear", "svm_rbf", "svm_poly", "dense"],
    "n_jobs": 1,
    "logreg": {"C": [1.0]},
    "svm_linear": {"C": [0.1]},
    "svm_rbf": {"C": [1.0]},
    "svm_poly": {"C": [1.0], "degree": [2]},
    "dense": {"hidden_units": [8], "dropout": [0.0], "weight_decay": [0.0], "epochs": [5]},
}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        write_image_folder(root / "images", classes=3, per_class=12)
        write_params(root / "params.yaml", tiny_params("images", heads=HEADS))
        prepare.main(["--manifest", "data/manifest.csv", "--report", "reports/prepare.json", "--no-progress"])
        extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
        heads_stage.main(["--features", "features/mv2.zarr", "--out", "heads/mv2", "--no-progress"])
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
        yield root
    finally:
        os.chdir(cwd)


def _export(root, variant):
    params = tiny_params("images", heads=HEADS, export={"variant": f"mv2/{variant}"})
    write_params(root / "params.yaml", params)
    out = root / "models" / variant
    target = root / "reports" / f"target-{variant}.json"
    evaluate.main(
        [
            "--heads",
            str(root / "heads"),
            "--metrics",
            str(root / "metrics.json"),
            "--report",
            str(root / "reports/evaluation.json"),
            "--leaderboard",
            str(root / "reports/leaderboard.csv"),
            "--plots",
            str(root / "plots"),
            "--export-target",
            str(target),
            "--params",
            str(root / "params.yaml"),
        ]
    )
    export.main(
        [
            "--target",
            str(target),
            "--manifest",
            str(root / "data/manifest.csv"),
            "--prepare-report",
            str(root / "reports/prepare.json"),
            "--out",
            str(out),
            "--params",
            str(root / "params.yaml"),
        ]
    )
    return out


def shoulders_predict(*arguments) -> int:
    """`shoulders predict ...` in this process; its exit status."""
    try:
        cli.main(["predict", *arguments])
    except SystemExit as exit_:
        return exit_.code
    return 0


def _variant(root, kind):
    scores = json.loads((root / "heads/mv2/scores.json").read_text())
    return next(v["variant"] for v in scores["variants"] if v["kind"] == kind)


@pytest.mark.parametrize("kind", ["logreg", "svm_linear", "svm_rbf", "svm_poly", "dense"])
def test_each_head_kind_exports_as_one_keras_file_that_predict_loads(pipeline_run, kind, capsys):
    """One model.keras and the card, nothing else (no pickle); `shoulders predict` gives the pipeline's class
    (the head on cached features, calibrated as exported) on every test image."""
    from pipeline.export.build import with_probabilities
    from pipeline.heads.saved import load_head
    from pipeline.store.reader import open_feature_set

    variant = _variant(pipeline_run, kind)
    out = _export(pipeline_run, variant)
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "card.md", "model.keras", "ood.keras"]
    scores = json.loads((pipeline_run / "heads/mv2/scores.json").read_text())
    row = next(r for r in scores["variants"] if r["variant"] == variant)
    manifest = pipeline_run / "data/manifest.csv"
    val, test = (
        open_feature_set(pipeline_run / "features/mv2.zarr", split, manifest=manifest, pooling="avg")
        for split in ("val", "test")
    )
    head, _ = with_probabilities(load_head(pipeline_run / "heads/mv2", row), val.X, val.y)
    expected = {i: test.classes[c] for i, c in zip(test.ids, head.predict_proba(test.X).argmax(axis=1))}
    test_dir = pipeline_run / "test-images"
    for record in (r for r in read_manifest(manifest) if r.split == "test"):
        (test_dir / record.id).parent.mkdir(parents=True, exist_ok=True)
        (test_dir / record.id).write_bytes((pipeline_run / record.path).read_bytes())
    assert shoulders_predict(str(out), str(test_dir), "--no-progress") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(expected) > 0
    assert {str(Path(r["file"]).relative_to(test_dir)): r["predicted"] for r in rows} == expected
    card = json.loads((out / "card.json").read_text())
    check = card["check_against_pipeline"]
    assert check["same_class"] == check["images"] > 0
    assert check["max_abs_probability_difference"] <= 0.002
    assert card["classes"] == ["class_0", "class_1", "class_2"]
    assert card["head"]["kind"] == kind
    assert card["form"].startswith("single Keras graph")
    if kind.startswith("svm"):
        assert "temperature" in card["head"]["probability_calibration"]
    assert "## Intended use and limits" in (out / "card.md").read_text()


def test_exported_model_loads_in_a_fresh_process(pipeline_run):
    out = _export(pipeline_run, _variant(pipeline_run, "logreg"))
    image = next((pipeline_run / "images/class_1").iterdir())
    code = (
        "import sys; from pipeline.export.predict_command import load_model; from pipeline.images import decode_image; "
        f"m = load_model({str(out)!r}); p = m.predict_proba([decode_image({str(image)!r})]); "
        "print(m.classes[p.argmax()], round(float(p.sum()), 4))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        cwd="/",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    name, total = result.stdout.split()
    assert name.startswith("class_") and float(total) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("runtime", ["openvino", "jax"])
def test_predict_on_each_runtime_gives_tensorflows_probabilities(pipeline_run, runtime, tmp_path):
    """`shoulders predict --runtime R` in a process of its own: same classes, probabilities within 1e-3.

    The tolerance covers float32 rounding amplified by the store's float16
    rounding of the features (OpenVINO f32 against TensorFlow: 1.7e-4 here).
    """
    out = _export(pipeline_run, _variant(pipeline_run, "svm_rbf"))
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    tables = {}
    for name in ("tensorflow", runtime):
        csv_path = tmp_path / f"{name}.csv"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli.shoulders",
                "predict",
                str(out),
                str(pipeline_run / "images/class_1"),
                "--top-k",
                "3",
                "--runtime",
                name,
                "--no-progress",
                "--out",
                str(csv_path),
            ],
            capture_output=True,
            text=True,
            env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"runtime: {name}" in result.stderr
        tables[name] = list(csv.DictReader(csv_path.open()))
    reference, other = tables["tensorflow"], tables[runtime]
    assert [r["file"] for r in other] == [r["file"] for r in reference] and len(reference) == 12
    assert [r["predicted"] for r in other] == [r["predicted"] for r in reference]
    for key in ("probability", "probability_2", "probability_3"):
        np.testing.assert_allclose([float(r[key]) for r in other], [float(r[key]) for r in reference], atol=1e-3)


def test_predict_skips_bad_files_and_writes_top_k(pipeline_run, tmp_path):
    out = _export(pipeline_run, _variant(pipeline_run, "dense"))
    folder = tmp_path / "incoming"
    folder.mkdir()
    for path in sorted((pipeline_run / "images/class_0").iterdir())[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / ".DS_Store").write_bytes(b"junk")
    predictor = load_model(out)
    files = image_files([folder])
    assert [f.name for f in files][-1] == "img_002.png" and len(files) == 4
    results, failures = predict_files(predictor, files, batch_size=2, progress=False)
    assert len(results) == 3 and len(failures) == 1 and "broken.jpg" in failures[0]
    handle = io.StringIO()
    write_predictions(results, predictor.classes, handle, top_k=2)
    rows = list(csv.reader(io.StringIO(handle.getvalue())))
    assert rows[0] == ["file", "predicted", "probability", "class_2", "probability_2"]
    assert len(rows) == 4 and all(float(r[2]) >= float(r[4]) for r in rows[1:])
    assert np.isclose(sum(predictor.predict_proba([np.zeros((10, 17, 3), np.uint8)])[0]), 1.0, atol=1e-4)
    assert folder_accuracy(results, predictor.classes) is None  # "incoming" names no class


def test_predict_scores_files_in_class_folders(pipeline_run):
    predictor = load_model(_export(pipeline_run, _variant(pipeline_run, "logreg")))
    files = image_files([pipeline_run / "images"])
    results, _ = predict_files(predictor, files, progress=False)
    accuracy, n = folder_accuracy(results, predictor.classes)
    predicted = [predictor.classes[p.argmax()] for _, p in results]
    assert n == len(files) and accuracy == np.mean([q == f.parent.name for q, f in zip(predicted, files)])
    wrong = [
        (path.parent.parent / "class_0" / path.name, proba)
        for path, proba in results
        if predictor.classes[proba.argmax()] != "class_0"
    ]
    assert wrong and folder_accuracy(wrong, predictor.classes) == (0.0, len(wrong))


def test_predict_flags_images_unlike_the_training_images_and_scores_class_folders(pipeline_run, tmp_path, capsys):
    out = _export(pipeline_run, _variant(pipeline_run, "logreg"))
    ood = json.loads((out / "card.json").read_text())["out_of_domain"]
    assert (ood["k"], ood["percentile"], ood["training_images"]) == (5, 95.0, 21)
    assert ood["flagged_validation"] <= 0.2 and "Out of domain" in (out / "card.md").read_text()
    # In domain: the test images, in their class folders. Out: flat colours and stripes, unlike any noise image.
    incoming = tmp_path / "incoming"
    for record in (r for r in read_manifest(pipeline_run / "data/manifest.csv") if r.split == "test"):
        (incoming / record.class_name).mkdir(parents=True, exist_ok=True)
        (incoming / record.class_name / Path(record.path).name).write_bytes((pipeline_run / record.path).read_bytes())
    foreign = tmp_path / "foreign" / "class_0"
    foreign.mkdir(parents=True)
    for i in range(4):
        pixels = np.zeros((40, 48, 3), np.uint8)
        pixels[:, :: 2 + i] = 255 if i % 2 else (40 * i, 200, 90)
        Image.fromarray(pixels).save(foreign / f"pattern_{i}.png")
    assert shoulders_predict(str(out), str(incoming), str(foreign), "--no-progress") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == [
        "file",
        "true_class",
        "correct",
        "predicted",
        "probability",
        "ood_distance",
        "out_of_domain",
    ]
    assert all(r["correct"] == str(r["true_class"] == r["predicted"]).lower() for r in rows)
    flagged = {Path(r["file"]).parent.parent.name: [] for r in rows}
    for r in rows:
        flagged[Path(r["file"]).parent.parent.name].append(r["out_of_domain"] == "true")
        assert (float(r["ood_distance"]) > ood["threshold"]) == (r["out_of_domain"] == "true")
    assert all(flagged["foreign"]) and np.mean(flagged["incoming"]) <= 0.34


def test_image_files_judge_junk_below_the_folder_named(tmp_path, monkeypatch):
    photos = tmp_path / "data" / "photos"
    (photos / ".thumbnails").mkdir(parents=True)
    for path in (photos / "a.png", photos / ".thumbnails" / "b.png", photos / "._a.png"):
        path.write_bytes(b"")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    # "../data/photos" starts with "..": that is where the folder is, not a hidden folder.
    assert image_files([Path("../data/photos")]) == [Path("../data/photos/a.png")]


def test_unknown_variant_is_named(pipeline_run):
    with pytest.raises(ValueError, match="no variant 'avg-nope'"):
        _export(pipeline_run, "avg-nope")


def test_default_target_is_the_best_on_validation(pipeline_run):
    write_params(pipeline_run / "params.yaml", tiny_params("images", heads=HEADS))
    target_file = pipeline_run / "reports/target-default.json"
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
            "--export-target",
            str(target_file),
        ]
    )
    target = json.loads(target_file.read_text())
    report = json.loads((pipeline_run / "reports/evaluation.json").read_text())
    assert (target["feature_set"], target["variant"]) == (report["best"]["feature_set"], report["best"]["variant"])
    assert target["test"]["test_accuracy"] == report["best"]["test_accuracy"]
    assert len(target["head_sha256"]) == 64 and target["chosen"].startswith("best on validation")


def test_a_replaced_heads_file_is_refused_before_it_runs_and_refitted_by_the_heads_stage(pipeline_run, tmp_path):
    import pickle

    from test_untrusted import Payload

    from pipeline.finetuning.warm_start import best_dense_head
    from pipeline.heads.saved import load_head

    marker = tmp_path / "payload-ran"
    write_params(pipeline_run / "params.yaml", tiny_params("images", heads=HEADS))
    evaluate_args = [
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
    best = json.loads((pipeline_run / "reports/evaluation.json").read_text())["best"]["variant"]
    dense = _variant(pipeline_run, "dense")
    files = {v: pipeline_run / "heads/mv2" / f"{v}.joblib" for v in (best, dense)}
    originals = {v: f.read_bytes() for v, f in files.items()}
    for path in files.values():
        path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match=f"{best}.joblib is not the file the heads stage wrote"):
        evaluate.main(evaluate_args)
    with pytest.raises(ValueError, match=f"{dense}.joblib is not the file the heads stage wrote"):
        best_dense_head(pipeline_run / "heads", "mv2", "accuracy")
    assert not marker.exists(), "the pickle's payload ran"
    # export checks the file it exports too
    for variant, path in files.items():
        path.write_bytes(originals[variant])
    write_params(pipeline_run / "params.yaml", tiny_params("images", heads=HEADS, export={"variant": f"mv2/{dense}"}))
    target = pipeline_run / "reports" / "target-tampered.json"
    evaluate.main([*evaluate_args, "--export-target", str(target)])
    files[dense].write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match=f"{dense}.joblib is not the file the heads stage wrote"):
        export.main(["--target", str(target), "--out", str(tmp_path / "models")])
    assert not marker.exists(), "the pickle's payload ran"
    # The heads stage does not reuse a file that is not what it wrote: it refits that variant, and only that.
    heads_stage.main(["--features", "features/mv2.zarr", "--out", "heads/mv2", "--no-progress"])
    rows = {r["variant"]: r for r in json.loads((pipeline_run / "heads/mv2/scores.json").read_text())["variants"]}
    assert [v for v, r in rows.items() if not r["reused"]] == [dense]
    assert not marker.exists()
    load_head(pipeline_run / "heads/mv2", rows[dense])  # the refitted file is what scores.json records
