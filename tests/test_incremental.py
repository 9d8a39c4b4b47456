"""One image, one backbone pass, ever: re-split, relabel, add, remove, switch datasets — in a real `dvc repro`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from conftest import REPO, tiny_params, write_image_folder, write_params
from test_resume import FEATURES, chunk_files, kill_after

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


# The scenarios are about what reruns upstream of the leaderboard: `dvc repro evaluate` (export, downstream of it
# and a Keras build each time, is left out to keep the suite short).


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def _report(root: Path) -> dict:
    return json.loads((root / "reports/extract/mv2.json").read_text())


def _repo(tmp_path: Path, **params) -> tuple[Path, dict]:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    write_image_folder(root / "images", classes=3, per_class=10, size=(36, 36))
    # A one-head grid: these tests are about what reruns, not about heads.
    write_params(
        root / "params.yaml", tiny_params("images", heads={"kinds": ["logreg"], "logreg": {"C": [1.0]}}, **params)
    )
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        _run(cmd, root, env)
    return root, env


def _set(root: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section][key] = value
    write_params(root / "params.yaml", params)


def test_repro_then_curating_the_dataset_runs_the_backbone_on_new_images_only(tmp_path):
    root, env = _repo(tmp_path)
    cold = _run(["dvc", "repro"], root, env)
    assert _ran(cold) == {
        "params_check",
        "synthesize",
        "prepare",
        "catalog",
        "check",
        "extract@mv2",
        "augment@mv2",
        "heads",
        "backbone_cost",
        "plots_page",
        "finetune",
        "evaluate",
        "export",
        "diagnose",
    }
    report = _report(root)
    assert (report["images"], report["reused"], report["computed"], report["rows"]) == (30, 0, 30, 30)
    assert json.loads((root / "metrics.json").read_text())["head"].startswith("mv2/")
    assert json.loads((root / "models/card.json").read_text())["check_against_pipeline"]["same_class"] > 0
    assert _ran(_run(["dvc", "repro"], root, env)) == {"prepare"}  # prepare looks at the images every time

    # A head parameter: heads and what follows rerun; no extraction, preparation or check.
    _set(root, "heads", "logreg", {"C": [0.5], "max_iter": 2000})
    out = _run(["dvc", "repro", "evaluate"], root, env)
    assert "heads" in _ran(out) and not _ran(out) & {"catalog", "check", "extract@mv2", "augment@mv2"}

    # (a) another split: prepare, heads and evaluate rerun; no extract stage starts.
    _set(root, "data", "seed", 1)
    out = _run(["dvc", "repro", "evaluate"], root, env)
    assert "prepare" in _ran(out) and "heads" in _ran(out)
    # augment@ reruns (views are of training images), but with views: 0 it builds no backbone.
    assert not any(s.startswith("extract@") for s in _ran(out)) and "catalog" not in _ran(out)

    # (b) five images relabelled (moved to the right class folder): no extract stage starts either.
    for path in sorted((root / "images/class_0").glob("*.png"))[:5]:
        path.rename(root / "images/class_1" / f"moved_{path.name}")
    out = _run(["dvc", "repro", "evaluate"], root, env)
    assert "prepare" in _ran(out) and "heads" in _ran(out) and not any(s.startswith("extract@") for s in _ran(out))
    assert sum(1 for line in (root / "data/manifest.csv").read_text().splitlines() if "/moved_" in line) == 5

    # (c) 10% new images: exactly they go through the backbone.
    write_image_folder(root / "new", classes=3, per_class=1, size=(36, 36), seed=9)
    for path in (root / "new").rglob("*.png"):
        shutil.move(path, root / "images" / path.parent.name / f"new_{path.name}")
    out = _run(["dvc", "repro", "evaluate"], root, env)
    assert "extract@mv2" in _ran(out)
    report = _report(root)
    assert (report["images"], report["reused"], report["computed"], report["rows"]) == (33, 30, 3, 33)

    # (d) 10% of the images removed: nothing to compute, and no extract stage starts.
    for path in sorted((root / "images/class_2").glob("*.png"))[:3]:
        path.unlink()
    out = _run(["dvc", "repro", "evaluate"], root, env)
    assert "prepare" in _ran(out) and "catalog" in _ran(out) and "heads" in _ran(out)
    assert not any(s.startswith("extract@") for s in _ran(out))
    assert "up to date" in _run(["dvc", "status", "evaluate"], root, env)
    # Their rows stay until gc, which then removes exactly them.
    gc = _run([sys.executable, "-m", "pipeline", "gc"], root, env)
    assert "features/mv2.zarr: 33 rows, 3 of images no longer in data/manifest.csv removed" in gc
    out = _run(["dvc", "repro", "evaluate"], root, env)
    assert _report(root)["computed"] == 0 and _report(root)["rows"] == 30
    assert "up to date" in _run(["dvc", "status", "evaluate"], root, env)


def test_switching_datasets_back_and_forth_costs_no_backbone_pass(tmp_path):
    root, env = _repo(tmp_path)
    # B shares 20 of A's 30 images and has 6 of its own.
    for path in sorted((root / "images").rglob("*.png")):
        if int(path.stem.split("_")[1]) < 7 or path.parent.name == "class_0":
            (root / "other" / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / "other" / path.parent.name / path.name)
    write_image_folder(root / "fresh", classes=3, per_class=2, size=(36, 36), seed=5)
    for path in (root / "fresh").rglob("*.png"):
        shutil.move(path, root / "other" / path.parent.name / f"b_{path.name}")
    shared = len(list((root / "other").rglob("img_*.png")))
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "B"], root, env)
    _run(["dvc", "repro", "evaluate"], root, env)
    assert _report(root)["computed"] == 30
    out = _run(["dvc", "exp", "run", "evaluate", "-S", "data.source=other"], root, env)
    assert "extract@mv2" in _ran(out)
    assert (_report(root)["reused"], _report(root)["computed"]) == (shared, 6)
    out = _run(["dvc", "exp", "run", "evaluate", "-S", "data.source=images"], root, env)
    assert not any(s.startswith("extract@") for s in _ran(out)), out  # A's images are all there already
    assert json.loads((root / "metrics.json").read_text())["head"].startswith("mv2/")


def test_an_image_row_does_not_depend_on_the_run_or_its_batch_neighbours(in_tmp):
    from pipeline.stages import extract, prepare

    write_image_folder(in_tmp / "images", classes=3, per_class=7, size=(40, 40))
    write_params(in_tmp / "params.yaml", tiny_params("images", extract={"batch_size": 4, "chunk_mb": 0.004}))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    hashes = (in_tmp / "data/content_hashes.txt").read_text().split()
    extract.main(["--feature-set", "mv2", "--out", "cold/mv2.zarr", "--no-progress"])
    # An incremental history: 5 images first, then 9 more, then the rest (other batches, other neighbours).
    for count in (5, 14, len(hashes)):
        (in_tmp / "part.txt").write_text("".join(f"{h}\n" for h in hashes[::-1][:count]))
        extract.main(["--feature-set", "mv2", "--hashes", "part.txt", "--out", "incremental/mv2.zarr", "--no-progress"])
    cold, incremental = (zarr.open_group(f"{name}/mv2.zarr", mode="r") for name in ("cold", "incremental"))
    rows = {h: i for i, h in enumerate(incremental["sha256"][...].tolist())}
    assert len(incremental.attrs["runs"]) == 3 and len(rows) == len(hashes)
    for i, h in enumerate(cold["sha256"][...].tolist()):
        np.testing.assert_array_equal(cold["X"][i], incremental["X"][rows[h]], err_msg=h)  # bit for bit


def test_sigkill_in_the_middle_of_an_incremental_run_resumes_and_keeps_old_rows(in_tmp):
    from pipeline.stages import extract, prepare

    write_image_folder(in_tmp / "images", classes=3, per_class=60, size=(64, 64))
    write_params(
        in_tmp / "params.yaml", tiny_params("images", features=FEATURES, extract={"batch_size": 4, "chunk_mb": 0.02})
    )
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    hashes = (in_tmp / "data/content_hashes.txt").read_text().split()
    first = "".join(f"{h}\n" for h in hashes[:50])
    (in_tmp / "first.txt").write_text(first)
    for out in ("reference", "features"):
        extract.main(["--feature-set", "mv2", "--hashes", "first.txt", "--out", f"{out}/mv2.zarr", "--no-progress"])
    extract.main(["--feature-set", "mv2", "--out", "reference/mv2.zarr", "--no-progress"])
    store = in_tmp / "features/mv2.zarr"
    old = chunk_files(store)
    command = [
        sys.executable,
        "-m",
        "pipeline.stages.extract",
        "--feature-set",
        "mv2",
        "--out",
        "features/mv2.zarr",
        "--no-progress",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    before = int(zarr.open_group(store, mode="r")["done"][...].sum())
    kill_after(command, env, in_tmp / "features", "mv2.zarr", before + 2)
    assert zarr.open_group(store, mode="r").attrs["pending"] is not None
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming an interrupted extraction" in result.stderr
    resumed, reference = zarr.open_group(store, mode="r"), zarr.open_group(in_tmp / "reference/mv2.zarr", mode="r")
    np.testing.assert_array_equal(resumed["X"][...], reference["X"][...])
    np.testing.assert_array_equal(resumed["sha256"][...], reference["sha256"][...])
    # Chunks wholly made of old rows were never rewritten (the chunk shared with new rows is).
    boundary = 50 // zarr.open_group(store, mode="r").attrs["chunk_rows"]
    after = chunk_files(store)
    for key, stamp in old.items():
        if int(key.split("/")[0]) < boundary:
            assert after[key] == stamp, key


def test_an_extraction_with_nothing_to_do_imports_no_framework(in_tmp):
    from pipeline.stages import extract, prepare

    write_image_folder(in_tmp / "images", classes=2, per_class=5)
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    (in_tmp / "reports/checks").mkdir(parents=True)
    (in_tmp / "reports/checks/mv2.json").write_text(
        json.dumps({"backbone": "mobilenet_v2", "weights": "none", "alpha": 0.35, "cut": "block_2_add"})
    )
    args = [
        "--feature-set",
        "mv2",
        "--check",
        "reports/checks/mv2.json",
        "--out",
        "features/mv2.zarr",
        "--report",
        "reports/extract/mv2.json",
        "--no-progress",
    ]
    extract.main(args)
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO); from pipeline.stages import extract; "
        f"extract.main({args!r}); print('tensorflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=in_tmp)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert "10 images, 10 reused, 0 computed" in done.stderr
    assert json.loads((in_tmp / "reports/extract/mv2.json").read_text())["computed"] == 0
