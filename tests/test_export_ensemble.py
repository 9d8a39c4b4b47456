"""Exporting the ensemble and a combination as one Keras graph (issue 16): the pipeline's classes on every test image.

A real tiny pipeline: three feature sets of the tiny random MobileNetV2 — two cuts at 32 px (one
backbone, shared in the graph) and one at 48 px (its own backbone and resize) — a combination of the
first two and the soft-voting ensemble of all three.
"""

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

from pipeline.cli import shoulders as cli
from pipeline.manifest import read_manifest
from pipeline.stages import evaluate, export, extract, prepare
from pipeline.stages import heads as heads_stage

pytestmark = pytest.mark.slow
HEADS = {
    "kinds": ["logreg", "svm_linear"],
    "n_jobs": 1,
    "logreg": {"C": [1.0]},
    "svm_linear": {"C": [0.1]},
    "combine": [["mv2", "mv2b"]],
    "ensemble": 3,
}
MEMBERS = ("mv2", "mv2b", "mv2c")


def _params() -> dict:
    params = tiny_params("images", heads=HEADS)
    base = params["features"]["mv2"]
    params["features"]["mv2b"] = {**base, "cut": "block_5_add"}  # deeper on the same backbone
    params["features"]["mv2c"] = {**base, "size": 48}  # another input size: its own backbone
    return params


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-ensemble")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        write_image_folder(root / "images", classes=3, per_class=12)
        write_params(root / "params.yaml", _params())
        prepare.main(["--manifest", "data/manifest.csv", "--report", "reports/prepare.json", "--no-progress"])
        for key in MEMBERS:
            extract.main(["--feature-set", key, "--out", f"features/{key}.zarr", "--no-progress"])
        heads_stage.main(["--features", "features", "--out", "heads", "--no-progress"])
        yield root
    finally:
        os.chdir(cwd)


def _target(root: Path, name: str, variant: str | None = None) -> Path:
    """The export target the evaluate stage writes: the best on validation, or ``variant``.

    params.yaml's loader accepts only a single feature set in ``export.variant`` (pipeline/config), so
    a combination or the ensemble is named to :func:`export_target` itself, on the stage's own report.
    """
    from pipeline.config import load_params
    from pipeline.selection.leaderboard import evaluate as evaluate_heads
    from pipeline.selection.leaderboard import export_target

    write_params(root / "params.yaml", _params())
    target = root / "reports" / f"target-{name}.json"
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
            str(target),
        ]
    )
    if variant is not None:
        params = load_params(root / "params.yaml")
        report, leaderboard, _ = evaluate_heads(
            root / "heads", params.evaluate, read_manifest(root / "data/manifest.csv"), ensemble=params.heads.ensemble
        )
        target.write_text(json.dumps(export_target(report, leaderboard, root / "heads", variant)), encoding="utf-8")
    return target


def _export(root: Path, variant: str) -> Path:
    name = variant.replace("/", "-")
    target = _target(root, name, variant)
    out = root / "models" / name
    export.main(["--target", str(target), "--out", str(out)])
    return out


def _expected_classes(root: Path, heads, average: bool) -> dict[str, str]:
    """The pipeline's class for each test image, from the cached features: ``heads`` is (feature sets, estimator)."""
    from pipeline.store.reader import open_feature_set

    probabilities, test = [], None
    for keys, estimator in heads:
        parts = [
            open_feature_set(root / f"features/{k}.zarr", "test", manifest=root / "data/manifest.csv", pooling="avg")
            for k in keys
        ]
        test = parts[0]
        probabilities.append(estimator.predict_proba(np.concatenate([p.X for p in parts], axis=1)))
    mean = np.mean(probabilities, axis=0) if average else probabilities[0]
    return {i: test.classes[c] for i, c in zip(test.ids, mean.argmax(axis=1))}


def _predicted_classes(root: Path, out: Path, capsys) -> dict[str, str]:
    """`shoulders predict` on a copy of the test images, in this process: class by image id."""
    test_dir = root / "test-images"
    for record in (r for r in read_manifest(root / "data/manifest.csv") if r.split == "test"):
        (test_dir / record.id).parent.mkdir(parents=True, exist_ok=True)
        (test_dir / record.id).write_bytes((root / record.path).read_bytes())
    capsys.readouterr()
    try:
        cli.main(["predict", str(out), str(test_dir), "--no-progress"])
    except SystemExit as exit_:
        assert exit_.code == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {"ood_distance", "out_of_domain"} <= set(rows[0])  # the out-of-domain flag still works
    return {str(Path(r["file"]).relative_to(test_dir)): r["predicted"] for r in rows}


def _nested_models(out: Path) -> list:
    from pipeline.export.predict_command import load_keras_model

    return [layer for layer in load_keras_model(out / "model.keras").layers if hasattr(layer, "layers")]


def test_the_ensemble_exports_as_one_graph_that_predicts_the_pipelines_classes(pipeline_run, capsys):
    """The issue's acceptance test: on every test image the exported ensemble predicts the pipeline's class."""
    from pipeline.heads.saved import load_head

    out = _export(pipeline_run, "ensemble/softvote-3")
    report = json.loads((pipeline_run / "reports/evaluation.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "card.md", "model.keras", "ood.keras"]
    card = json.loads((out / "card.json").read_text())
    members = card["members"]
    assert {m["feature_set"] for m in members} == set(MEMBERS)
    assert all(m["head"] == "logreg" and m["cut"] in ("block_2_add", "block_5_add") for m in members)
    heads = []
    for member in members:
        scores = json.loads((pipeline_run / f"heads/{member['feature_set']}/scores.json").read_text())
        row = next(r for r in scores["variants"] if r["variant"] == member["variant"])
        heads.append(([member["feature_set"]], load_head(pipeline_run / f"heads/{member['feature_set']}", row)))
    expected = _expected_classes(pipeline_run, heads, average=True)
    assert _predicted_classes(pipeline_run, out, capsys) == expected and len(expected) > 0
    check = card["check_against_pipeline"]
    assert check["same_class"] == check["images"] == len(expected)
    assert check["max_abs_probability_difference"] <= 0.002
    # The pipeline the export is checked against is the evaluate stage's ensemble: the same test accuracy.
    assert check["accuracy_cached_head"] == pytest.approx(report["feature_sets"]["ensemble"]["test_accuracy"])
    # Two cuts of the 32 px backbone share one truncated model with two outputs; the 48 px one is its own.
    shared = {tuple(s["feature_sets"]): s for s in card["shared_backbones"]}
    assert set(shared) == {tuple(k for k in (m["feature_set"] for m in members) if k != "mv2c"), ("mv2c",)}
    pair = next(s for k, s in shared.items() if len(k) == 2)
    assert pair["shared"] and sorted(pair["cuts"]) == ["block_2_add", "block_5_add"] and pair["input_size"] == 32
    nested = _nested_models(out)
    assert len(nested) == 2 and sorted(len(m.outputs) for m in nested) == [1, 2]
    # Each backbone layer is in the graph once per network (two networks), not once per feature set (three).
    first_conv = [layer for model in nested for layer in model.layers if layer.name == "Conv1"]
    assert len(first_conv) == 2
    names = {layer.name for layer in load_model_layers(out)}
    assert {"resize_0", "resize_1", "ensemble_mean", "features"} <= names
    text = (out / "card.md").read_text()
    assert "3 members, mean of the members' probabilities" in text and "one truncated backbone shared by" in text
    assert card["out_of_domain"]["features"].startswith("the pooled features of")


def load_model_layers(out: Path) -> list:
    from pipeline.export.predict_command import load_keras_model

    return load_keras_model(out / "model.keras").layers


def test_a_combination_exports_as_one_graph_on_one_shared_backbone(pipeline_run, capsys):
    from pipeline.export.build import with_probabilities
    from pipeline.heads.combination import open_combination
    from pipeline.heads.saved import load_head

    scores = json.loads((pipeline_run / "heads/mv2+mv2b/scores.json").read_text())
    row = next(r for r in scores["variants"] if r["kind"] == "svm_linear")  # calibrated on val as exported
    out = _export(pipeline_run, f"mv2+mv2b/{row['variant']}")
    stores = [pipeline_run / f"features/{k}.zarr" for k in ("mv2", "mv2b")]
    val = open_combination(stores, ["mv2", "mv2b"], "val", manifest=pipeline_run / "data/manifest.csv", pooling="avg")
    head, _ = with_probabilities(load_head(pipeline_run / "heads/mv2+mv2b", row), val.X, val.y)
    expected = _expected_classes(pipeline_run, [(["mv2", "mv2b"], head)], average=False)
    assert _predicted_classes(pipeline_run, out, capsys) == expected
    card = json.loads((out / "card.json").read_text())
    assert [m["feature_set"] for m in card["members"]] == ["mv2", "mv2b"]
    assert card["head"]["kind"] == "svm_linear" and "temperature" in card["head"]["probability_calibration"]
    assert card["combined_by"].startswith("one head on the members' pooled features concatenated")
    (backbone,) = card["shared_backbones"]
    assert backbone["shared"] and backbone["feature_sets"] == ["mv2", "mv2b"]
    (nested,) = _nested_models(out)
    assert len(nested.outputs) == 2 and {"resize", "features"} <= {layer.name for layer in load_model_layers(out)}
    assert card["check_against_pipeline"]["same_class"] == card["check_against_pipeline"]["images"] > 0


def test_the_best_on_validation_is_exported_whatever_it_is(pipeline_run):
    target = json.loads(_target(pipeline_run, "default").read_text())
    report = json.loads((pipeline_run / "reports/evaluation.json").read_text())
    assert (target["feature_set"], target["variant"]) == (report["best"]["feature_set"], report["best"]["variant"])
    assert "not_exported" not in target
    assert target["form"] == {"ensemble": "ensemble", "mv2+mv2b": "combination"}.get(target["feature_set"], "single")


def test_a_model_that_cannot_be_one_graph_is_refused_naming_why(pipeline_run, tmp_path):
    from pipeline.selection.leaderboard import unexportable

    target = json.loads(_target(pipeline_run, "ensemble", "ensemble/softvote-3").read_text())
    member = target["members"][1]
    member["row"] = {**member["row"], "out_of_core": True}
    assert unexportable(target) == (
        f"the ensemble's member {member['feature_set']}/{member['variant']} is a logreg "
        "head trained out of core, which has no exact Keras form (an exported model "
        "holds no pickle)"
    )
    # A member whose backbone params.yaml no longer describes cannot be rebuilt.
    params = _params()
    del params["features"]["mv2c"]
    write_params(tmp_path / "params.yaml", params)
    with pytest.raises(
        ValueError,
        match=r"ensemble / softvote-3 cannot be exported: it reads feature sets "
        r"\['mv2c'\], which params.yaml `features` no longer has",
    ):
        export.main(
            [
                "--target",
                str(pipeline_run / "reports/target-ensemble.json"),
                "--out",
                str(tmp_path / "models"),
                "--params",
                str(tmp_path / "params.yaml"),
            ]
        )
    with pytest.raises(ValueError, match="no variant 'softvote-9' of the ensemble. Known: softvote-3"):
        _target(pipeline_run, "bad", "ensemble/softvote-9")


def test_one_cut_at_two_input_sizes_is_two_backbones_in_one_graph(pipeline_run, tmp_path):
    """An ensemble of mv2 and mv2c (the same cut at 32 and 48 px): two truncated models, each named apart."""
    target = json.loads(_target(pipeline_run, "pair", "ensemble/softvote-3").read_text())
    target["members"] = [m for m in target["members"] if m["feature_set"] != "mv2b"]
    (tmp_path / "target.json").write_text(json.dumps(target))
    export.main(
        [
            "--target",
            str(tmp_path / "target.json"),
            "--manifest",
            str(pipeline_run / "data/manifest.csv"),
            "--prepare-report",
            str(pipeline_run / "reports/prepare.json"),
            "--out",
            str(tmp_path / "models"),
            "--params",
            str(pipeline_run / "params.yaml"),
        ]
    )
    card = json.loads((tmp_path / "models/card.json").read_text())
    assert [s["feature_sets"] for s in card["shared_backbones"]] == [["mv2"], ["mv2c"]]
    assert card["check_against_pipeline"]["same_class"] == card["check_against_pipeline"]["images"] > 0
    nested = _nested_models(tmp_path / "models")
    assert len(nested) == 2 and len({m.name for m in nested}) == 2


@pytest.mark.parametrize("runtime", ["openvino", "jax"])
def test_predict_runs_the_ensemble_on_each_runtime(pipeline_run, runtime, tmp_path):
    """Two input sizes (two resize layers): each runtime gives TensorFlow's classes, probabilities within 1e-3."""
    out = pipeline_run / "models" / "ensemble-softvote-3"
    if not out.is_dir():
        out = _export(pipeline_run, "ensemble/softvote-3")
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
        tables[name] = list(csv.DictReader(csv_path.open()))
    reference, other = tables["tensorflow"], tables[runtime]
    assert [r["file"] for r in other] == [r["file"] for r in reference] and len(reference) == 12
    assert [r["predicted"] for r in other] == [r["predicted"] for r in reference]
    for key in ("probability", "probability_2", "probability_3", "ood_distance"):
        np.testing.assert_allclose([float(r[key]) for r in other], [float(r[key]) for r in reference], atol=1e-3)
