"""A new head kind is one registry entry plus its estimator: params, grid, sweep and leaderboard follow."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import pytest
from conftest import tiny_params, write_image_folder, write_params

from pipeline.config import ParamsError, parse_params
from pipeline.heads.registry import HEAD_KINDS, HeadKind, head_kind, register, unregister
from pipeline.heads.variants import expand_grid, make_head


@dataclass(frozen=True)
class CentroidGrid:
    metric: tuple[str, ...] = ("euclidean",)

    def __post_init__(self):
        for metric in self.metric:
            if metric not in ("euclidean", "manhattan"):
                raise ValueError(f"heads.centroid.metric must be 'euclidean' or 'manhattan'. Received: {metric!r}")


def _centroid(values, grid, seed):
    from sklearn.neighbors import NearestCentroid

    return NearestCentroid(metric=values["metric"])


@pytest.fixture
def centroid_kind():
    # The whole of adding a kind: this entry (and the estimator above).
    register(HeadKind("centroid", CentroidGrid, swept=("metric",), estimator=_centroid))
    yield
    unregister("centroid")


def test_a_registered_kind_gets_its_params_section_and_grid(centroid_kind):
    heads = parse_params({"heads": {"kinds": ["centroid"], "centroid": {"metric": ["euclidean", "manhattan"]}}}).heads
    variants = expand_grid(heads)
    assert [v.id for v in variants] == ["avg-centroid-metriceuclidean", "avg-centroid-metricmanhattan"]
    assert make_head(variants[1], heads).get_params()["metric"] == "manhattan"
    with pytest.raises(ParamsError, match="heads.centroid.metric must be 'euclidean' or 'manhattan'"):
        parse_params({"heads": {"kinds": ["centroid"], "centroid": {"metric": ["cosine"]}}})
    with pytest.raises(ParamsError, match="unknown key 'heads.centroid.metrc'"):
        parse_params({"heads": {"centroid": {"metrc": ["euclidean"]}}})


def test_an_unregistered_kind_is_refused_with_the_valid_ones():
    assert "centroid" not in HEAD_KINDS
    with pytest.raises(ParamsError, match=r"heads.kinds\[0\] must be one of .*'logreg'.*Received: 'centroid'"):
        parse_params({"heads": {"kinds": ["centroid"]}})
    with pytest.raises(ValueError, match="unknown head kind 'centroid'"):
        head_kind("centroid")


def test_a_registered_kind_is_fitted_scored_and_ranked(in_tmp, centroid_kind):
    from pipeline.stages import evaluate, extract, prepare
    from pipeline.stages import heads as heads_stage

    write_image_folder(in_tmp / "images", classes=3, per_class=10)
    write_params(
        in_tmp / "params.yaml",
        tiny_params(
            "images",
            heads={
                "kinds": ["logreg", "centroid"],
                "logreg": {"C": [1.0]},
                "centroid": {"metric": ["euclidean", "manhattan"]},
            },
        ),
    )
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
    heads_stage.main(["--features", "features", "--out", "heads", "--no-progress"])
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
    scores = json.loads((in_tmp / "heads/mv2/scores.json").read_text())
    assert {r["variant"]: r["kind"] for r in scores["variants"]} == {
        "avg-logreg-C1": "logreg",
        "avg-centroid-metriceuclidean": "centroid",
        "avg-centroid-metricmanhattan": "centroid",
    }
    with open(in_tmp / "reports/leaderboard.csv", newline="") as handle:
        board = {row["variant"]: row for row in csv.DictReader(handle)}
    assert {"avg-centroid-metriceuclidean", "avg-centroid-metricmanhattan"} <= set(board)
    assert all(board[v]["kind"] == "centroid" and board[v]["val_accuracy"] != "" for v in board if "centroid" in v)
