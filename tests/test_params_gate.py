"""A bad params value, or a data.source DVC cannot hash, stops `dvc repro` before DVC deletes any output.

DVC deletes a stage's outputs before it runs the stage's command; the params_check
stage runs before every other one (each first stage of dvc.yaml depends on its
file), so a refusal there comes while every output is still in place. These run
the real `dvc repro` and `dvc exp run` in a temporary git repository (marked slow:
several seconds each).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_params, write_image_folder, write_params
from test_incremental import _ran, _repo, _run, _set

GATE_FILE = "reports/params_check.json"
# What `dvc repro prepare` leaves: each must come through a refused run byte for byte.
PREPARED = (
    "data/manifest.csv",
    "data/content_hashes.txt",
    "reports/prepare.json",
    "reports/prepare.md",
    "reports/data_metrics.json",
)


def _failing(cmd, cwd, env) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode != 0, f"{' '.join(cmd)} should have failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _prepared(tmp_path: Path) -> tuple[Path, dict, dict[str, bytes]]:
    """A repository after `dvc repro prepare`, committed, and the bytes of prepare's outputs."""
    root, env = _repo(tmp_path)
    env = {**env, "DVC_NO_ANALYTICS": "1"}
    assert "prepare" in _ran(_run(["dvc", "repro", "prepare"], root, env))
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "prepared"], root, env)
    return root, env, {name: (root / name).read_bytes() for name in PREPARED}


def _one_line_naming(output: str, *parts: str) -> str:
    lines = [line for line in output.splitlines() if all(p in line for p in parts)]
    assert len(lines) == 1, output
    return lines[0]


def _first_stages(spec: dict) -> set[str]:
    """Stages of dvc.yaml that depend on no output of a stage other than the gate (paths cut at their first ``${``)."""

    def cut(path) -> str:
        return str(path).split("${")[0].rstrip("/")

    outs = {}
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        outs[name] = [
            cut(next(iter(o)) if isinstance(o, dict) else o) for o in body.get("outs", []) + body.get("metrics", [])
        ]
    first = set()
    for name, stage in spec["stages"].items():
        deps = [cut(d) for d in stage.get("do", stage).get("deps", []) if cut(d)]
        upstream = [
            other
            for other, paths in outs.items()
            if other not in (name, "params_check")
            and any(d == o or d.startswith(o + "/") or o.startswith(d + "/") for d in deps for o in paths if o)
        ]
        if not upstream:
            first.add(name)
    return first


def test_every_first_stage_waits_for_the_params_gate():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    first = _first_stages(spec)
    assert first >= {"params_check", "synthesize", "prepare", "check", "backbone_cost", "plots_page"}, first
    for name in first - {"params_check"}:
        assert GATE_FILE in spec["stages"][name].get("deps", []), f"stage {name} does not wait for the params gate"
    gate = spec["stages"]["params_check"]
    assert gate["params"] == [{"params.yaml": None}]  # every key, those added later too
    assert gate["outs"] == [{GATE_FILE: {"cache": False}}]  # no run cache: the names check runs whenever it runs


@pytest.mark.slow
def test_a_bad_value_stops_dvc_repro_before_it_deletes_any_output(tmp_path):
    root, env, before = _prepared(tmp_path)
    _set(root, "data", "split", {"train": 0.6, "val": 1.5, "test": 0.2})
    out = _failing(["dvc", "repro", "prepare"], root, env)
    assert {name: (root / name).read_bytes() for name in PREPARED if (root / name).exists()} == before, out
    _one_line_naming(out, "data.split.val must be between 0 and 1. Received: val=1.5")
    assert _ran(out) == {"params_check"}, out
    # The whole pipeline too: no stage runs (synthesize, first before, would delete data/synthetic).
    out = _failing(["dvc", "repro"], root, env)
    assert _ran(out) == {"params_check"}, out
    assert {name: (root / name).read_bytes() for name in PREPARED} == before
    # Fixed, the next repro finishes, and prepare's outputs are what they were.
    _set(root, "data", "split", {"train": 0.6, "val": 0.2, "test": 0.2})
    out = _run(["dvc", "repro", "prepare"], root, env)
    assert "params_check" in _ran(out)
    assert {name: (root / name).read_bytes() for name in PREPARED} == before


@pytest.mark.slow
def test_a_data_source_that_does_not_exist_stops_dvc_repro_before_it_deletes_any_output(tmp_path):
    root, env, before = _prepared(tmp_path)
    _set(root, "data", "source", "imgs")
    out = _failing(["dvc", "repro", "prepare"], root, env)
    assert {name: (root / name).read_bytes() for name in PREPARED if (root / name).exists()} == before, out
    _one_line_naming(out, "data.source must name a folder", "Received: 'imgs', which does not exist")
    assert _ran(out) == {"params_check"}, out


@pytest.mark.slow
def test_dvc_exp_run_with_a_bad_value_deletes_nothing(tmp_path):
    root, env, before = _prepared(tmp_path)
    out = _failing(["dvc", "exp", "run", "prepare", "-S", "data.small_image_side=0"], root, env)
    assert {name: (root / name).read_bytes() for name in PREPARED if (root / name).exists()} == before, out
    _one_line_naming(out, "data.small_image_side must be an integer >= 1. Received: 0")
    assert _ran(out) == {"params_check"}, out
    out = _run(["dvc", "exp", "run", "prepare", "-S", "data.small_image_side=32"], root, env)
    assert {name: (root / name).read_bytes() for name in PREPARED} == before


@pytest.mark.slow
def test_a_name_dvc_cannot_hash_is_named_before_prepare_runs(tmp_path):
    root, env, before = _prepared(tmp_path)
    write_image_folder(root / "new", classes=1, per_class=1, size=(36, 36), seed=9)
    bad = root / "images" / "class_0" / os.fsdecode(b"\xff\xfe.png")
    (root / "new/class_0/img_000.png").rename(bad)
    # The gate runs when params.yaml changes (a file added alone: see pipeline/stages/params_check.py).
    _set(root, "heads", "seed", 1)
    out = _failing(["dvc", "repro"], root, env)
    line = _one_line_naming(out, r"b'class_0/\xff\xfe.png': the name is not valid UTF-8; rename it")
    assert re.search(r"data\.source images: 1 path\(s\) DVC cannot hash: ", line), line
    assert "surrogates not allowed" not in out
    assert {name: (root / name).read_bytes() for name in PREPARED if (root / name).exists()} == before, out
    assert _ran(out) == {"params_check"}, out
    bad.rename(bad.with_name("renamed.png"))
    out = _run(["dvc", "repro", "prepare"], root, env)
    assert "renamed.png" in (root / "data/manifest.csv").read_text()


@pytest.mark.slow
def test_a_valid_change_of_a_head_param_reruns_the_gate_and_no_extraction(tmp_path):
    root, env, before = _prepared(tmp_path)
    out = _run(["dvc", "repro", "extract@mv2"], root, env)
    assert {"catalog", "check", "extract@mv2"} <= _ran(out)
    gate = (root / GATE_FILE).read_bytes()
    _set(root, "heads", "seed", 1)
    out = _run(["dvc", "repro", "extract@mv2"], root, env)
    assert "params_check" in _ran(out) and not _ran(out) & {"catalog", "check", "extract@mv2"}, out
    prepare = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["prepare"]
    if not prepare.get("always_changed"):  # a prepare that runs on every repro reruns for its own reason
        assert "prepare" not in _ran(out), out
    assert (root / GATE_FILE).read_bytes() == gate
    assert {name: (root / name).read_bytes() for name in ("data/manifest.csv", "data/content_hashes.txt")} == {
        name: before[name] for name in ("data/manifest.csv", "data/content_hashes.txt")
    }


def test_shoulders_check_params_names_a_path_dvc_cannot_hash_at_any_time(tmp_path):
    # After a good repro, a file added alone does not rerun the gate: DVC then fails hashing data.source
    # (no file named); this command names it.
    write_image_folder(tmp_path / "images", classes=2, per_class=2)
    (tmp_path / "images" / "class_1" / os.fsdecode(b"\xff\xfe.jpg")).write_bytes(b"x")
    write_params(tmp_path / "params.yaml", tiny_params("images"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "check-params"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    _one_line_naming(
        result.stderr,
        r"data.source images: 1 path(s) DVC cannot hash: b'class_1/\xff\xfe.jpg': "
        "the name is not valid UTF-8; rename it",
    )
    (tmp_path / "images" / "class_1" / os.fsdecode(b"\xff\xfe.jpg")).rename(tmp_path / "images/class_1/ok.jpg")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "check-params"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and "params.yaml: every value valid" in result.stdout, result.stderr
