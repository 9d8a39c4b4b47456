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
    for stage in ("synthesize", "prepare", "extract@mv2", "heads@mv2", "evaluate"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["best"]["feature_set"] == "mv2"
    assert (root / "features/mv2.zarr/zarr.json").is_file()
    again = _run(["dvc", "repro"], root, env)
    assert "Running stage" not in again


def test_changing_a_head_parameter_reruns_no_extract_stage(repo):
    root, env = repo
    _run(["dvc", "repro"], root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["heads"]["logreg"]["C"] = [0.5]
    write_params(root / "params.yaml", params)
    out = _run(["dvc", "repro"], root, env)
    assert "Running stage 'heads@mv2'" in out
    assert "Running stage 'extract@" not in out and "Running stage 'prepare'" not in out
    status = _run(["dvc", "status"], root, env)
    assert "up to date" in status


def test_adding_an_image_reruns_prepare(repo):
    root, env = repo
    _run(["dvc", "repro"], root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    source = root / "data/synthetic"
    copy = root / "copy"
    if not copy.exists():
        shutil.copytree(source, copy)
    params["data"]["source"] = "copy"
    write_params(root / "params.yaml", params)
    _run(["dvc", "repro"], root, env)
    first_class = sorted(p for p in copy.iterdir() if p.is_dir())[0]
    image = sorted(first_class.iterdir())[0]
    from PIL import Image

    with Image.open(image) as im:
        im.rotate(90).save(first_class / "zz_new_image.png")
    out = _run(["dvc", "repro"], root, env)
    assert "Running stage 'prepare'" in out and "Running stage 'extract@mv2'" in out
