"""Logs stay short where stderr is not a terminal, and the long stages say how long they should take here."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_params, write_image_folder, write_params

from pipeline.cli.progress import ProgressLog, progress_bar
from pipeline.estimates import duration, estimate_line, record
from pipeline.stages import extract, prepare
from pipeline.stages import heads as heads_stage

REPO = Path(__file__).resolve().parents[1]


def test_a_stage_logging_to_a_file_writes_no_line_per_update(tmp_path):
    # 450 images take seconds: a tqdm bar redraws itself into a non-terminal stderr every 0.1 s (dozens of
    # fragments); the stage now writes at most one progress line per 30 s, here none.
    write_params(
        tmp_path / "params.yaml", tiny_params("data/synthetic", synthetic={"per_class": 150, "image_size": 64})
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.synthesize", "--out", "data/synthetic"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert len(list((tmp_path / "data/synthetic").rglob("*.png"))) == 450
    fragments = [f for f in re.split(r"[\r\n]", run.stderr) if "synthetic images" in f]
    assert len(fragments) <= 1, fragments
    assert "wrote 450 images" in run.stderr


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_progress_log_writes_one_line_per_interval_and_one_at_the_end(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        with ProgressLog(total=10_000, desc="extract x.zarr", unit="img", every=30, clock=clock) as counter:
            for _ in range(10_000):
                clock.now += 0.03  # 300 s in all
                counter.update()
    lines = [r.getMessage() for r in caplog.records]
    assert 9 <= counter.lines == len(lines) <= 11  # every 30 s of 300, and the end
    assert lines[0].startswith("extract x.zarr: ") and "/10000 (" in lines[0] and "s left" in lines[0]
    assert lines[-1] == "extract x.zarr: 10000 img in 300 s, 33.3 img/s"


def test_a_short_job_and_a_disabled_one_log_nothing(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        assert list(ProgressLog(range(50), desc="short", every=30, clock=clock)) == list(range(50))
        quiet = ProgressLog(total=5, desc="off", enabled=False, every=1, clock=clock)
        for _ in range(5):
            clock.now += 10
            quiet.update()
        quiet.close()
    assert caplog.records == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_anything_else_a_log():
    from tqdm import tqdm

    bar = progress_bar(range(3), desc="bar", stream=Terminal())
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2]
    assert isinstance(progress_bar(total=3, stream=io.StringIO()), ProgressLog)
    assert isinstance(progress_bar(total=3, stream=Terminal(), enabled=False), ProgressLog)
    with pytest.raises(ValueError, match="every=0"):
        progress_bar(total=3, every=0)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SHOULDERS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_an_estimate_comes_from_the_last_run_on_this_machine(cache):
    key = {"backbone": "b"}
    assert estimate_line("job", key, units=10, work="w", unit="image") == (
        "w: no estimate yet on this machine for this much work (this run's time is kept for the next)"
    )
    record("job", key, units=100, seconds=20.0)
    assert estimate_line("job", key, units=900, work="w", unit="image") == (
        "w: about 3 min 00 s on this machine (its last run here took 200 ms per image)"
    )
    # A run ten times larger or smaller is no guide (fixed costs weigh differently): no estimate from it.
    assert "no estimate yet" in estimate_line("job", key, units=1000, work="w", unit="image")
    assert "no estimate yet" in estimate_line("job", key, units=99, work="w", unit="image")
    assert "no estimate yet" in estimate_line("job", {"backbone": "other"}, units=1, work="w", unit="image")
    assert [duration(s) for s in (0.4, 59, 61, 3 * 3600 + 5 * 60)] == ["0 s", "59 s", "1 min 01 s", "3 h 05 min"]


def test_extract_and_heads_log_their_estimate_with_a_number_after_one_run(tmp_path, monkeypatch, cache, caplog):
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "images", classes=3, per_class=10)
    write_params(tmp_path / "params.yaml", tiny_params("images"))
    prepare.main(
        ["--manifest", "data/manifest.csv", "--report", "reports/prepare.json", "--summary", "reports/prepare.md"]
        + ["--metrics", "reports/data_metrics.json", "--no-progress"]
    )
    heads_args = ["--features", "features/mv2.zarr", "--out", "heads/mv2", "--no-progress"]

    def estimates() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if "on this machine" in r.getMessage()]
        caplog.clear()
        return lines

    with caplog.at_level(logging.INFO):
        extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
        assert estimates() == [
            "extract mv2: 30 images to compute: no estimate yet on this machine for this much work (this run's time "
            "is kept for the next)"
        ]
        heads_stage.main(heads_args)
        (first,) = estimates()
        assert first.startswith("heads: 4 variants to fit (72 variant × image fits): no estimate yet on this machine")
        # Another store of the same backbone pass, and every variant refitted: both say how long, in numbers.
        extract.main(["--feature-set", "mv2", "--out", "features/again.zarr", "--no-progress"])
        (line,) = estimates()
        assert re.fullmatch(
            r"extract again: 30 images to compute: about \d+ s on this machine "
            r"\(its last run here took [\d.e+]+ ms per image\)",
            line,
        ), line
        heads_stage.main([*heads_args, "--no-reuse"])
        (line,) = estimates()
        assert re.fullmatch(
            r"heads: 4 variants to fit \(72 variant × image fits\): about \d+ s on this machine "
            r"\(its last run here took [\d.e+]+ ms per variant × image\)",
            line,
        ), line
        # Nothing to fit: no estimate.
        heads_stage.main(heads_args)
        assert estimates() == []
    assert (cache / "run-estimates.json").is_file()
