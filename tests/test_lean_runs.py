"""Lean and quiet runs: a stage with nothing to do starts no framework; library logs only with --verbose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, tiny_params, write_image_folder, write_params

from pipeline.stages import check, prepare, synthesize


def _run(args, cwd: Path, text: bool = True, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", **env}
    for name in ("TF_CPP_MIN_LOG_LEVEL", "SHOULDERS_VERBOSE"):  # the test session sets the first itself
        if name not in env:
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=text, check=True, timeout=300
    )


def test_synthesize_writes_nothing_when_data_source_points_elsewhere(in_tmp):
    write_params(in_tmp / "params.yaml", tiny_params("data/synthetic"))
    synthesize.main(["--out", "data/synthetic", "--no-progress"])
    assert len(list((in_tmp / "data/synthetic").rglob("*.png"))) == 30
    write_image_folder(in_tmp / "images")
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    synthesize.main(["--out", "data/synthetic", "--no-progress"])
    # Its output stays (DVC expects it), with only a note (DVC warns about an empty output): the images are gone.
    assert [p.name for p in (in_tmp / "data/synthetic").iterdir()] == ["UNUSED.txt"]
    synthesize.main(["--out", "data/synthetic", "--no-progress"])  # and the note is its own to replace
    write_params(in_tmp / "params.yaml", tiny_params("data/synthetic"))
    synthesize.main(["--out", "data/synthetic", "--no-progress"])
    assert sorted(p.name for p in (in_tmp / "data/synthetic").iterdir()) == ["ring", "star", "triangle"]


def test_augment_with_no_views_starts_no_framework(in_tmp):
    write_image_folder(in_tmp / "images", classes=2, per_class=4)
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "reports/prepare.json", "--no-progress"])
    check.main(["--out", "reports/checks"])
    code = (
        "import sys, no_tensorflow, runpy; sys.argv = ['augment', '--feature-set', 'mv2', '--out', "
        "'features/views/mv2.zarr', '--check', 'reports/checks/mv2.json', '--no-progress']\n"
        "try: runpy.run_module('pipeline.stages.augment', run_name='__main__')\n"
        "finally: print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'jax', "
        "'openvino')))"
    )
    done = _run(["-c", code], cwd=in_tmp)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "no views asked for" in done.stderr


NOISE = "I0000 00:00:1796186682.399764   19891 port.cc:153] oneDNN custom operations are on."


def test_library_logs_are_quiet_unless_verbose(in_tmp):
    # A real TensorFlow start (the check stage builds the backbone): its C++ logs go, the stage's own line stays.
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    quiet = _run(["-m", "pipeline.stages.check", "--out", "checks"], cwd=in_tmp).stderr
    assert quiet.splitlines() == [
        "INFO __main__: 1 feature set(s) checked",
        "INFO __main__:   mv2 → mobilenet_v2/block_2_add (weights: random)",
    ]
    loud = _run(["-m", "pipeline.stages.check", "--out", "checks", "--verbose"], cwd=in_tmp).stderr
    assert "absl::InitializeLog" in loud and "] " in loud and quiet.splitlines()[0] in loud


def test_the_filter_keeps_every_other_byte_in_order(in_tmp):
    # Written to file descriptor 2 as C++ code does: noise between a progress bar's updates and a fatal line.
    code = (
        "import os; from pipeline.cli.stage_runner import run_stage\n"
        "def main():\n"
        f"    os.write(2, b'bar  0%\\r' + {NOISE.encode()!r} + b'\\nbar 50%\\r')\n"
        "    os.write(2, b'bar 100%\\nF0000 00:00:1.5 7 x.cc:9] fatal\\nno newline at the end')\n"
        "run_stage(main)"
    )
    assert (
        _run(["-c", code], cwd=in_tmp, text=False).stderr
        == b"bar  0%\rbar 50%\rbar 100%\nF0000 00:00:1.5 7 x.cc:9] fatal\nno newline at the end"
    )
    assert NOISE in _run(["-c", code], cwd=in_tmp, SHOULDERS_VERBOSE="1").stderr
