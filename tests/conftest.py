"""Shared fixtures: tiny seeded image folders and params files in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The test session runs Keras on TensorFlow (dense heads, export, fine-tuning); extraction in it then uses the
# TensorFlow backend for every runtime that allows it (OpenVINO converts through it). Stage subprocesses pick
# their own backend: the variable is removed from their environment where a test needs that.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SIGNS = SHARED / "datasets" / "signs"
MOBILENET_025 = SHARED / "keras-models" / "mobilenet_2_5_224_tf_no_top.h5"


def write_image_folder(
    root: Path, *, classes: int = 3, per_class: int = 10, size=(40, 48), seed: int = 0, fmt: str = "png"
) -> list[Path]:
    """Write ``root/<class>/<i>.<fmt>``: noisy images whose mean brightness depends on the class."""
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        for i in range(per_class):
            path = root / f"class_{c}" / f"img_{i:03d}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(rng.normal(50 + 70 * c, 30, size=(*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path)
            paths.append(path)
    return paths


def write_bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid grey PNG of ``width`` × ``height`` zeros: a few KB on disk, width × height × 3 bytes decoded as RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte, then the row's pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )
    return path


def tiny_params(source: str, **overrides) -> dict:
    """The repository's params.yaml made small enough for tests: one tiny random-weights backbone.

    Starting from the real file keeps every key that dvc.yaml lists present.
    ``overrides`` are merged section by section (nested mappings too), except
    ``features``, which is replaced.
    """
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    small = {
        "data": {"source": source, "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 0},
        "synthetic": {"classes": 3, "per_class": 10, "image_size": 32, "seed": 0},
        "extract": {"batch_size": 4, "dtype": "float16", "chunk_mb": 0.004, "seed": 0},
        # The val split and the listed C only: tests of other stages stay fast and their rows fixed
        # (tests/test_selection.py runs the default selection: cv auto and the C search).
        "heads": {
            "kinds": ["logreg", "svm_linear", "dense"],
            "pooling": ["avg"],
            "n_jobs": 1,
            "cv": 0,
            "combine": [],
            "near_equals": 0,  # tests/test_near_equals.py turns it on
            "logreg": {"C": [0.1, 1.0], "refine": 0},
            "svm_linear": {"C": [0.1], "refine": 0},
            "dense": {"hidden_units": [8], "dropout": [0.0], "weight_decay": [0.0], "epochs": [3], "patience": 2},
        },
        "evaluate": {"bootstrap": 50},
    }
    params["features"] = {
        "mv2": {"backbone": "mobilenet_v2", "weights": "none", "cut": "block_2_add", "size": 32, "alpha": 0.35}
    }
    for layer in (small, overrides):
        for section, values in layer.items():
            if section == "features" or not isinstance(values, dict):
                params[section] = values
            else:
                params[section] = _merge(params.get(section) or {}, values)
    return params


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write_image_folder(root)
    return root


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch) -> Path:
    """Run the test with tmp_path as the working directory (stages use paths relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def recomputed_best_test_accuracy(root: Path) -> float:
    """Test accuracy of the best head in ``reports/evaluation.json``, recomputed from its saved file and the store.

    A reported number must equal what the saved head does on the store's test
    split; comparing the two catches a head saved other than scored, a wrong
    split, or a scoring bug, which a range check such as ``0 <= acc <= 1`` cannot.
    """
    import json

    import joblib

    from pipeline.heads.variants import predict_views
    from pipeline.store.reader import open_feature_set

    best = json.loads((root / "reports/evaluation.json").read_text())["best"]
    scores = json.loads((root / "heads" / best["feature_set"] / "scores.json").read_text())
    row = next(r for r in scores["variants"] if r["variant"] == best["variant"])
    head = joblib.load(root / "heads" / best["feature_set"] / f"{best['variant']}.joblib")
    test = open_feature_set(
        root / scores["store"] if not Path(scores["store"]).is_absolute() else scores["store"],
        "test",
        pooling=row["pooling"],
    )
    return float((predict_views(head, test.X) == test.y).mean())


def run_to_evaluate(root: Path) -> Path:
    """Run prepare, extract (feature set ``mv2``), heads and evaluate in ``root`` (the cwd, its params.yaml written)."""
    from pipeline.stages import evaluate, extract, prepare
    from pipeline.stages import heads as heads_stage

    prepare.main(
        [
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
    )
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
            "--chosen-heads",
            "reports/chosen_heads.json",
        ]
    )
    return root
