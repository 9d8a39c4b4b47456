"""A real `dvc repro` of the project's dvc.yaml in a temporary git repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_params, write_params

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    write_params(root / "params.yaml", tiny_params("data/synthetic"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TF_CPP_MIN_LOG_LEVEL": "2", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    _run(["git", "init", "-q"], root, env)
    _run(["dvc", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "init"], root, env)
    return root, env


def test_repro_runs_every_stage_then_nothing(repo):
    root, env = repo
    first = _run(["dvc", "repro"], root, env)
    for stage in ("synthesize", "prepare", "check", "extract@mv2", "augment@mv2", "heads", "finetune", "evaluate",
                  "export"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["best"]["feature_set"] == "mv2"
    assert (root / "features/mv2.zarr/zarr.json").is_file()
    assert json.loads((root / "models/card.json").read_text())["check_against_pipeline"]["same_class"] > 0
    again = _run(["dvc", "repro"], root, env)
    assert "Running stage" not in again


def test_changing_a_head_parameter_reruns_no_extract_stage(repo):
    root, env = repo
    _run(["dvc", "repro"], root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["heads"]["logreg"]["C"] = [0.5]
    write_params(root / "params.yaml", params)
    out = _run(["dvc", "repro"], root, env)
    assert "Running stage 'heads'" in out
    for stage in ("extract@", "augment@", "prepare", "check"):
        assert f"Running stage '{stage}" not in out
    status = _run(["dvc", "status"], root, env)
    assert "up to date" in status


def test_adding_an_image_reruns_prepare_and_outdates_extraction(repo):
    root, env = repo
    _run(["dvc", "repro"], root, env)
    copy = root / "copy"
    shutil.copytree(root / "data/synthetic", copy)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["source"] = "copy"
    write_params(root / "params.yaml", params)
    _run(["dvc", "repro", "prepare"], root, env)
    assert "up to date" in _run(["dvc", "status", "prepare"], root, env)
    first_class = sorted(p for p in copy.iterdir() if p.is_dir())[0]
    image = sorted(first_class.iterdir())[0]
    from PIL import Image

    with Image.open(image) as im:
        im.rotate(90).save(first_class / "zz_new_image.png")
    status = _run(["dvc", "status", "prepare"], root, env)
    assert "copy" in status and "modified" in status  # DVC sees the new image in the source folder
    out = _run(["dvc", "repro", "prepare"], root, env)
    assert "Running stage 'prepare'" in out
    status = _run(["dvc", "status"], root, env)
    assert "extract@mv2" in status and "data/manifest.csv" in status  # the new manifest outdates extraction
