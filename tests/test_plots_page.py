"""`dvc plots show` with the project's plots, templates and offline page, checked in a real headless browser."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO, write_image_folder

from pipeline.reporting.plots import hyperparameter_rows, write_plots
from pipeline.reporting.tables import write_csv

pytestmark = pytest.mark.slow

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
)


def _plot_data(plots: Path) -> tuple[list[dict], list[dict]]:
    """Plot data the way the evaluate stage writes it, for two backbones and three feature sets."""
    sets = {
        "a_top": ("net (imagenet)", 1.0, 0.9),
        "a_mid": ("net (imagenet)", 0.6, 0.8),
        "b_top": ("net (none)", 1.0, 0.3),
    }
    report = {
        "feature_sets": {
            key: {
                "backbone": backbone.split()[0],
                "weights": backbone.split()[1][1:-1],
                "cut": f"cut_{key}",
                "cut_depth": depth,
                "val_accuracy": acc,
                "test_accuracy": acc - 0.02,
                "test_accuracy_ci95": [acc - 0.09, acc + 0.03],
            }
            for key, (backbone, depth, acc) in sets.items()
        },
        "best": {"feature_set": "a_top"},
    }
    leaderboard = []
    for key, (_, _, acc) in sets.items():
        for c in (0.1, 1.0, 10.0):
            leaderboard.append(
                {
                    "feature_set": key,
                    "variant": f"avg-logreg-C{c:g}",
                    "kind": "logreg",
                    "pooling": "avg",
                    "standardize": True,
                    "pca": None,
                    "params": {"C": c},
                    "searched": "C",
                    "val_accuracy": acc - 0.01 * c,
                    "selected": c == 0.1,
                }
            )
        leaderboard.append(
            {
                "feature_set": key,
                "variant": "max-svm_linear-C1",
                "kind": "svm_linear",
                "pooling": "max",
                "standardize": True,
                "pca": None,
                "params": {"C": 1.0},
                "val_accuracy": acc - 0.05,
            }
        )
    best = {"classes": ("cat", "dog", "fox"), "y": [0, 1, 2, 2, 1], "result": {"predicted": [0, 1, 2, 1, 1]}}
    write_plots(plots, report, leaderboard, best)
    return leaderboard, hyperparameter_rows(leaderboard)


def _diagnose_data(root: Path) -> tuple[list[dict], list[dict]]:
    """The diagnose stage's plot data and contact sheets, made by its own functions on small seeded data."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from pipeline.diagnosis.gallery import contact_sheet, write_thumbnail
    from pipeline.diagnosis.learning_curve import learning_curve
    from pipeline.diagnosis.projection import project
    from pipeline.manifest import Record

    out = root / "reports/diagnose"
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    X = rng.normal(size=(60, 8)) + y[:, None]
    rows = np.arange(60)
    folds = [(rows[rows % 4 != 0], rows[rows % 4 == 0])]
    curve = [
        {"feature_set": key, **point}
        for key in ("a_top", "b_top")
        for point in learning_curve(LogisticRegression(), X, y, folds, [1, 2, 5], draws=2, seed=0)
    ]
    write_csv(curve, out / "learning_curve.csv")
    points = []
    for key in ("a_top", "b_top"):
        for (x, y_coord), label, i in zip(project(X, max_iter=250, seed=0), y, rows):
            points.append(
                {
                    "feature_set": key,
                    "x": x,
                    "y": y_coord,
                    "class": f"class_{label}",
                    "split": "val",
                    "status": ("ok", "misclassified", "suspected label issue")[i % 3],
                    "id": f"img_{i}",
                }
            )
    write_csv(points, out / "map.csv")
    images = write_image_folder(root / "images", classes=2, per_class=3)
    records = [
        Record(str(p), str(p), 0, "class_0", "val", hashlib.sha256(p.read_bytes()).hexdigest(), 48, 40) for p in images
    ]
    tiles = [(write_thumbnail(r, out / "thumbs", 48), ["true a", "pred b", "0.91 · val"]) for r in records]
    for name in ("errors", "least_confident", "label_issues"):
        contact_sheet(tiles, out / f"{name}.jpg", size=48, title=name, empty="none")
    return curve, points


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_dvc_plots_render_offline_with_data(tmp_path):
    pytest.importorskip("vl_convert")
    from pipeline.reporting.plots_page import page_template

    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    shutil.copytree(REPO / ".dvc/plots", tmp_path / ".dvc/plots")
    shutil.copy(REPO / ".dvc/config", tmp_path / ".dvc/config")
    plots_only = {"plots": yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(plots_only, sort_keys=False))
    leaderboard, swept = _plot_data(tmp_path / "plots")
    curve, points = _diagnose_data(tmp_path)
    (tmp_path / "reports").mkdir(exist_ok=True)
    (tmp_path / "reports/plots_page.html").write_text(page_template(), encoding="utf-8")
    subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "-o", "dvc_plots"], cwd=tmp_path, check=True, capture_output=True
    )
    page = (tmp_path / "dvc_plots/index.html").read_text()
    assert not re.search(r"<script[^>]+src=", page), "the page must not load scripts from the network"

    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            (tmp_path / "dvc_plots/index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = result.stdout
    assert "data-script-errors" not in dom.split("<head", 1)[0], dom.split("<head", 1)[0]
    plots = dict(re.findall(r'<div id="([^"]+)"[^>]*data-rendered="([^"]*)"', dom))
    assert len(plots) == 7 and set(plots.values()) == {"ok"}, plots
    images = re.findall(r"<img [^>]*>", dom.split("<body", 1)[1])
    assert len(images) == 3 and all('data-loaded="ok"' in tag for tag in images), images
    marks = {}
    for chunk in dom.split('<div id="')[1:]:
        marks[chunk[: chunk.index('"')]] = Counter(re.findall(r'aria-roledescription="([^"]+)"', chunk))
    by_title = {
        next(k for k in marks if k.startswith(prefix)): prefix
        for prefix in (
            "Leaderboard",
            "Validation_accuracy_against_cut",
            "Confusion",
            "Validation_accuracy_against_each",
            "Learning_curve",
            "Map_of_each",
            "Search_of_C",
        )
    }
    counts = {by_title[k]: v for k, v in marks.items() if k in by_title}
    assert counts["Leaderboard"]["bar"] == len(leaderboard)  # one bar per variant
    # One validation point per feature set and one line per backbone; test only on the chosen model (♦, interval).
    assert counts["Validation_accuracy_against_cut"]["point"] == 3 + 1
    assert counts["Validation_accuracy_against_cut"]["line mark"] == 2
    assert counts["Validation_accuracy_against_cut"]["rule mark"] == 1
    # kind and pooling; the searched logreg.C is in the search plot (log axis), not here as 3 ordinal labels.
    assert {r["hyperparameter"] for r in swept} == {"kind", "pooling"}
    assert counts["Validation_accuracy_against_each"]["point"] == len(swept)
    assert counts["Confusion"]["rect mark"] >= 9  # 3 × 3 cells
    assert counts["Learning_curve"]["point"] == len(curve)  # one point per size and set
    assert counts["Learning_curve"]["area mark"] == 2  # one band per feature set
    assert counts["Map_of_each"]["point"] == len(points)  # every image in every panel
    searched = [r for r in leaderboard if r.get("searched")]
    assert counts["Search_of_C"]["line mark"] == 3  # one line per feature set's logreg
    assert counts["Search_of_C"]["point"] == len(searched) + 3  # every C tried + each choice marked
