"""Queued experiments in a real DVC repository: only what changed reruns, and `shoulders exps` compares them.

One cold `dvc repro`, then two `dvc exp run -S` experiments on the baseline commit: one adds an RBF SVM C that
does not change the chosen model (export and diagnose must not run), one changes the chosen model's own C (they
must). The same repository then feeds `shoulders exps`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import tiny_params, write_params
from test_incremental import _ran, _repo, _run

from pipeline.reporting.experiments import experiment_rows, experiments_lines


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    # Two head kinds, so that a change of the losing one (the RBF SVM) leaves the chosen logistic regression
    # alone: ties go to the simpler kind, and a new C of the SVM is a new variant, nothing else is refitted.
    root, env = _repo(tmp_path_factory.mktemp("exps"))
    heads = {"kinds": ["logreg", "svm_rbf"], "logreg": {"C": [1.0]}, "svm_rbf": {"C": [1.0], "gamma": ["scale"]}}
    write_params(root / "params.yaml", tiny_params("images", heads=heads))
    cold = _run(["dvc", "repro"], root, env)
    assert {"export", "diagnose"} <= _ran(cold)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "baseline"], root, env)
    chosen = json.loads((root / "metrics.json").read_text())["head"]
    same = _run(["dvc", "exp", "run", "-n", "more-rbf", "-S", "heads.svm_rbf.C=[1.0,0.001]"], root, env)
    same_chosen = json.loads((root / "metrics.json").read_text())["head"]
    other = _run(
        ["dvc", "exp", "run", "-n", "small-c", "-S", "heads.svm_rbf.C=[1.0]", "-S", "heads.logreg.C=[0.01]"], root, env
    )
    other_chosen = json.loads((root / "metrics.json").read_text())["head"]
    return {
        "root": root,
        "env": env,
        "runs": {"same": (same, chosen, same_chosen), "other": (other, chosen, other_chosen)},
    }


@pytest.mark.slow
def test_a_head_change_that_keeps_the_chosen_model_runs_no_export_and_no_diagnose(experiments):
    out, before, after = experiments["runs"]["same"]
    assert "heads" in _ran(out) and "evaluate" in _ran(out), out  # the sweep did change
    assert after == before, "the test needs an experiment that keeps the chosen model"
    assert not _ran(out) & {"export", "diagnose"}, out
    assert "'export' didn't change, skipping" in out and "'diagnose' didn't change, skipping" in out


@pytest.mark.slow
def test_a_new_chosen_model_is_exported_and_diagnosed(experiments):
    out, before, after = experiments["runs"]["other"]
    assert after != before and after.endswith("C0.01"), after
    assert {"export", "diagnose"} <= _ran(out), out
    card = json.loads((experiments["root"] / "models/card.json").read_text())
    assert card["head"]["variant"] == after.split("/", 1)[1]


@pytest.mark.slow
def test_shoulders_exps_shows_each_experiments_changed_params_and_feature_set_scores_in_120_columns(experiments):
    root, env = experiments["root"], experiments["env"]
    for width in ("200", "80"):  # wider than allowed (capped at 120), and a narrow terminal
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "exps", "--width", width],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert max(len(line) for line in lines) <= min(int(width), 120), done.stdout
        table = done.stdout
        header, baseline = lines[0].split(), lines[1].split()
        assert header[:3] == ["experiment", "chosen", "val"] and "mv2" in header, table
        assert "(baseline)" in lines[1] and "mv2/avg-logreg-C1" in baseline, table
        rbf = next(line for line in lines if line.startswith("more-rbf"))
        assert "mv2/avg-logreg-C1" in rbf and "svm_rbf.C=[1,0.001]" in rbf and "logreg.C" not in rbf, table
        small = next(line for line in lines if line.startswith("small-c"))
        assert "mv2/avg-logreg-C0.01" in small and "logreg.C=[0.01]" in table and "svm_rbf.C" not in small, table
        # The chosen model's val accuracy and the feature set's best, from metrics.json and reports/best/mv2.json.
        val = json.loads((root / "metrics.json").read_text())["val_acc"]
        assert small.split()[2] == small.split()[3] == f"{val:.3f}", table
    print(table)


def _exp(name, params, metrics, **more):
    files = {"params.yaml": {"data": params}}
    return {"rev": name * 5, "name": name, "data": {"params": files, "metrics": metrics}, **more}


def test_exps_rows_diff_each_experiment_against_its_baseline_and_show_queued_and_failed_ones():
    base = {"data": {"source": "data/synthetic"}, "heads": {"svm_rbf": {"C": [1.0]}, "ensemble": 3}}
    long = "/home/someone/datasets/hand-signs/2024/labels.csv"
    scored = {
        "metrics.json": {"data": {"head": "a/avg-logreg-C1", "val_acc": 0.9}},
        "reports/best/a.json": {"data": {"val_acc": 0.9}},
        "reports/best/a_long_feature_set+another_one.json": {"data": {"val_acc": 0.8}},
    }
    shown = [
        {"rev": "workspace", "name": None, "data": {"params": {}, "metrics": {}}},
        {
            **_exp("main", base, scored),
            "experiments": [
                {"revs": [_exp("src", {**base, "data": {"source": long}}, scored)], "executor": None},
                {
                    "revs": [_exp("q", {**base, "heads": {**base["heads"], "ensemble": 0}}, {})],
                    "executor": {"state": "queued"},
                },
                {"revs": [_exp("bad", base, {}, error={"msg": "x"})], "executor": {"state": "failed"}},
            ],
        },
    ]
    rows = experiment_rows(shown)
    assert [(r["name"], r["state"], r["changed"]) for r in rows] == [
        ("main", "", {}),
        ("src", "", {"data.source": long}),
        ("q", "queued", {"heads.ensemble": 0}),
        ("bad", "failed", {}),
    ]
    assert rows[1]["feature_sets"] == {"a": 0.9, "a_long_feature_set+another_one": 0.8}
    for width in (120, 60):
        lines = experiments_lines(rows, width=width)
        assert max(map(len, lines)) <= width, "\n".join(lines)
        text = "\n".join(lines)
        assert "source=labels.csv" in text and "ensemble=0" in text and "queued" in text and "failed" in text
        assert "a_long_feature_set+another_one" in lines[-1]  # the cut header, spelled out
