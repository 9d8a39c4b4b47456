"""``shoulders gc`` beside a reader, and what gc says it removes.

gc swaps a rewritten store into place; a reader that opened the old one is
between reading its attributes and its chunks. The tests hold the reader at
that point with events (its manifest is read there), let gc run in another
thread or process, then let the reader go on: deterministic, no sleeps.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tiny_params, write_params

from pipeline.manifest import Record, write_manifest
from pipeline.store.gc import collect_garbage
from pipeline.store.layout import StoreError
from pipeline.store.reader import open_feature_set, read_pooled
from pipeline.store.writer import StoreWriter

FEATURE_SHAPE = (2, 2, 3)
CHUNK_ROWS = 4
IMAGES = 48  # 12 chunks
WAIT_S = 60  # a bound on every wait, so that a broken test fails instead of hanging


def _sha(image: int) -> str:
    return hashlib.sha256(f"image {image}".encode()).hexdigest()


def _record(image: int, split: str = "train") -> Record:
    return Record(
        id=f"c{image % 2}/{image:03d}.png",
        path=f"images/c{image % 2}/{image:03d}.png",
        label=image % 2,
        class_name=f"c{image % 2}",
        split=split,
        sha256=_sha(image),
        width=8,
        height=8,
    )


def _make_store(path: Path, images: int = IMAGES) -> None:
    """A real store of ``images`` rows (rows in content-hash order, as extraction appends them), each row's map
    holding its image number, so that any row read from the wrong place shows."""
    number = {_sha(i): i for i in range(images)}
    with StoreWriter(
        path,
        {"backbone": "test"},
        {"backbone": "test"},
        feature_shape=FEATURE_SHAPE,
        dtype="float16",
        chunk_rows=CHUNK_ROWS,
    ) as writer:
        writes, _ = writer.plan(list(number))
        hashes = writer.row_hashes()
        for write in writes:
            writer.write(
                write,
                np.stack(
                    [
                        number[hashes[r]] + np.arange(12, dtype=np.float16).reshape(FEATURE_SHAPE) / 16
                        for r in write.rows
                    ]
                ),
            )
        writer.finalize()


class PausingManifest(Sequence[Record]):
    """The reader's manifest. The first time the reader goes through it (the store opened, no chunk read yet)
    it calls ``pause()`` — which lets gc run and waits for it — then gives its records."""

    def __init__(self, records: Sequence[Record], pause: Callable[[], None]):
        self.records, self.pause, self.paused = list(records), pause, False

    def __iter__(self) -> Iterator[Record]:
        if not self.paused:
            self.paused = True
            self.pause()
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]


def _expected(store: Path, records: Sequence[Record]) -> np.ndarray:
    return open_feature_set(store, "train", manifest=records, pooling="avg").X


def test_a_reader_during_gc_reads_the_new_store_instead_of_reporting_damage(tmp_path, caplog):
    # The reader reads the even images three times; each time, gc (another thread) removes 8 odd ones while the
    # reader is between opening the store and reading its chunks. Rows shift: chunks go missing and no longer
    # match the digests the reader opened (before the fix: "chunk 11 is missing on disk").
    store = tmp_path / "features" / "s.zarr"
    _make_store(store)
    wanted = [_record(i) for i in range(0, IMAGES, 2)]
    expected = _expected(store, wanted)
    rounds = 3
    opened = [threading.Event() for _ in range(rounds)]
    collected = [threading.Event() for _ in range(rounds)]
    results: list = []
    removed: list[int] = []

    def pause(round_: int) -> None:
        opened[round_].set()
        assert collected[round_].wait(WAIT_S), "gc did not run"

    def reader() -> None:
        try:
            for round_ in range(rounds):
                manifest = PausingManifest(wanted, lambda round_=round_: pause(round_))
                results.append(read_pooled(store, ("train",), poolings=("avg",), manifest=manifest)["train"]["avg"])
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            results.append(error)
            for event in opened:
                event.set()

    def gc() -> None:
        for round_ in range(rounds):
            if not opened[round_].wait(WAIT_S) or len(results) > round_:
                break
            keep = {r.sha256 for r in wanted} | {_sha(i) for i in range(1 + 16 * (round_ + 1), IMAGES, 2)}
            removed.append(collect_garbage(store, keep).removed)
            collected[round_].set()

    threads = [threading.Thread(target=reader), threading.Thread(target=gc)]
    with caplog.at_level(logging.INFO, logger="pipeline.store.reader"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    assert removed == [8, 8, 8] and len(results) == rounds
    for result in results:
        np.testing.assert_array_equal(result.X, expected)
        assert list(result.ids) == [r.id for r in wanted]
    rereads = [r for r in caplog.records if "was rewritten while it was read" in r.getMessage()]
    assert len(rereads) == rounds  # each read met a swapped store, and read it again once
    assert collect_garbage(store, {r.sha256 for r in wanted}).rows_before == len(wanted)
    # Damage in a store nobody rewrites is still reported, at once.
    _first_chunk_file(store).unlink()
    with pytest.raises(StoreError, match="chunk 0 is missing on disk"):
        read_pooled(store, ("train",), poolings=("avg",), manifest=wanted)


def _first_chunk_file(store: Path) -> Path:
    chunk = store / "X" / "c"
    while chunk.is_dir():
        chunk = chunk / "0"
    return chunk


def test_a_dask_array_of_a_store_gc_rewrote_says_so(tmp_path):
    store = tmp_path / "features" / "s.zarr"
    _make_store(store)
    wanted = [_record(i) for i in range(0, IMAGES, 2)]
    lazy = open_feature_set(store, "train", manifest=wanted, as_dask=True)
    collect_garbage(store, {r.sha256 for r in wanted})
    with pytest.raises(
        StoreError, match="was rewritten .* after this dask array was made from it; call open_feature_set again"
    ):
        lazy.X.compute()
    np.testing.assert_array_equal(
        open_feature_set(store, "train", manifest=wanted, as_dask=True).X.compute(), _expected(store, wanted)
    )


# --------------------------------------------------------------------------- the command


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A store of 48 images, a manifest of the even ones (train, val, test), params: the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    write_params(tmp_path / "params.yaml", tiny_params("images"))
    _make_store(tmp_path / "features" / "s.zarr")
    splits = ("train", "val", "test")
    write_manifest([_record(i, splits[i // 2 % 3]) for i in range(0, IMAGES, 2)], tmp_path / "data" / "manifest.csv")
    return tmp_path


def _gc_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.shoulders", "gc", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_shoulders_gc_in_another_process_beside_a_reader(project, caplog):
    records = [_record(i) for i in range(0, IMAGES, 2)]  # the reader's: every kept image, as train
    expected = _expected(Path("features/s.zarr"), records)
    ran: list[subprocess.CompletedProcess] = []
    with caplog.at_level(logging.INFO, logger="pipeline.store.reader"):
        got = open_feature_set(
            "features/s.zarr", "train", manifest=PausingManifest(records, lambda: ran.append(_gc_command()))
        )
    (done,) = ran
    assert done.returncode == 0, done.stderr
    assert "features/s.zarr: 48 rows, 24 of images no longer in data/manifest.csv removed:" in done.stdout
    np.testing.assert_array_equal(got.X, expected)
    assert any("was rewritten while it was read" in r.getMessage() for r in caplog.records)


def test_gc_dry_run_lists_every_row_that_would_go_and_keep_keeps_another_manifests(project):
    other = [_record(i, "train") for i in (1, 3, 5)]  # another experiment's images
    write_manifest(other, project / "other.csv")
    dry = _gc_command("--dry-run")
    assert dry.returncode == 0, dry.stderr
    going = [line.removeprefix("  - sha256 ") for line in dry.stdout.splitlines() if line.startswith("  - sha256 ")]
    assert sorted(going) == sorted(_sha(i) for i in range(1, IMAGES, 2))
    assert "48 rows, 24 of images no longer in data/manifest.csv would be removed:" in dry.stdout
    assert "keep them with --keep ITS_MANIFEST.csv" in dry.stdout
    assert collect_garbage("features/s.zarr", set(), dry_run=True).rows_before == IMAGES  # nothing removed

    kept = _gc_command("--keep", "other.csv")
    assert kept.returncode == 0, kept.stderr
    assert "48 rows, 21 of images no longer in data/manifest.csv nor other.csv removed:" in kept.stdout
    listed = [line for line in kept.stdout.splitlines() if line.startswith("  - ")]
    assert len(listed) == 21 and listed[-1] == "  - … and 1 more (`--dry-run` lists every row before a gc)"
    assert open_feature_set("features/s.zarr", "train", manifest=[_record(0), *other]).X.shape == (4, 3)
