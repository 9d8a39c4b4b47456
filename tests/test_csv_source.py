"""A CSV source is as safe as a folder: one file one row, plain labels, and an image changed in place is seen.

Issue 28, items 2 and 3: the duplicate check compares normalised paths and the
files they open; labels are plain names; prepare's record of file stats
(:mod:`pipeline.dataset.stat_cache`) lets it re-read only changed files on every
run, and a real ``dvc repro`` re-extracts an image overwritten in place.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tiny_params, write_image_folder, write_params
from PIL import Image

from pipeline.config import DataParams
from pipeline.dataset.curation import build_manifest
from pipeline.dataset.label_table import scan_table
from pipeline.dataset.stat_cache import RACY_NS, record_file
from pipeline.images import BadImageError
from pipeline.manifest import read_manifest
from pipeline.stages import prepare


def _table(folder: Path, rows, header=("path", "label")) -> Path:
    path = folder / "list.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _dataset(folder: Path, per_class: int = 4) -> list[tuple[str, str]]:
    """Images under ``folder/class_<c>/`` and their rows (path relative to ``folder``, class)."""
    paths = write_image_folder(folder, classes=2, per_class=per_class, size=(16, 16))
    return [(p.relative_to(folder).as_posix(), p.parent.name) for p in paths]


def _scan_error(table: Path) -> str:
    with pytest.raises(ValueError) as error:
        scan_table(table)
    return str(error.value)


# --------------------------------------------------------------------------- one file, one row


@pytest.mark.parametrize(
    "alias",
    [
        "class_0//img_001.png",
        "./class_0/img_001.png",
        "class_0/./img_001.png",
        "class_1/../class_0/img_001.png",
        "class_0/img_001.png",
    ],
)
def test_a_file_listed_twice_with_two_labels_is_an_error_naming_both_lines(tmp_path, alias):
    rows = _dataset(tmp_path)
    table = _table(tmp_path, rows + [(alias, "class_1")])
    message = _scan_error(table)
    first = 2 + rows.index(("class_0/img_001.png", "class_0"))
    assert f"line {len(rows) + 2} ({alias}): the same path as line {first}" in message
    assert f"'class_0' on line {first}, 'class_1' here" in message


def test_a_path_spelled_twice_with_one_label_is_refused_as_the_same_path_twice_is(tmp_path):
    rows = _dataset(tmp_path)
    message = _scan_error(_table(tmp_path, rows + [("class_0//img_001.png", "class_0")]))
    assert f"line {len(rows) + 2} (class_0//img_001.png): the same path as line 3 (class_0/img_001.png)" in message
    assert "another label" not in message


@pytest.mark.parametrize(
    "link", [os.link, lambda target, name: os.symlink(Path(target).name, name)], ids=["hard link", "symbolic link"]
)
def test_two_names_of_one_file_are_one_file(tmp_path, link):
    # What a file system that folds case does to Class_0/IMG_001.png: another name, the same file.
    rows = _dataset(tmp_path)
    link(tmp_path / "class_0/img_001.png", tmp_path / "class_0/other_name.png")
    message = _scan_error(_table(tmp_path, rows + [("class_0/other_name.png", "class_1")]))
    assert f"line {len(rows) + 2} (class_0/other_name.png): the same file as line 3 (class_0/img_001.png)" in message
    assert "'class_0' on line 3, 'class_1' here" in message


def test_paths_are_normalised_into_the_manifest_ids(tmp_path):
    rows = _dataset(tmp_path, per_class=5)
    spelled = [(f"./{path}" if i % 2 else path.replace("/", "//"), label) for i, (path, label) in enumerate(rows)]
    records, _ = build_manifest(DataParams(source=str(_table(tmp_path, spelled))), progress=False)
    assert sorted(r.id for r in records) == sorted(path for path, _ in rows)
    assert all(r.path == f"{tmp_path}/{r.id}" for r in records)


@pytest.mark.parametrize(
    "label, why",
    [
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "starts with '.'"),
        ("../../evil", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("tab\there", "control character"),
    ],
)
def test_labels_are_plain_class_names(tmp_path, label, why):
    rows = _dataset(tmp_path)
    rows[3] = (rows[3][0], label)
    message = _scan_error(_table(tmp_path, rows))
    assert f"line 5 ({rows[3][0]}): label {label!r} is not a plain class name" in message and why in message


# --------------------------------------------------------------------------- the record of file stats


def _prepare(root: Path, source: str, **data) -> None:
    """Run the prepare stage in ``root`` on ``source``."""
    write_params(root / "params.yaml", tiny_params(source, data=data))
    prepare.main(
        [
            "--manifest",
            "data/manifest.csv",
            "--report",
            "reports/prepare.json",
            "--no-progress",
            "--params",
            str(root / "params.yaml"),
        ]
    )


def _read_counts(caplog) -> tuple[int, int]:
    """(unchanged, read) from the last inspection's log line."""
    line = [r.getMessage() for r in caplog.records if "unchanged since prepare's last run" in r.getMessage()][-1]
    words = line.split()
    return int(words[3]), int(words[-2])


def _overwrite_keeping_stat(path: Path, seed: int) -> None:
    """Other pixels, the same size in bytes and the same mtime: what ``cp -p`` of a same-size file does."""
    before = path.stat()
    pixels = np.random.default_rng(seed).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=0)  # raw: every 16×16 RGB PNG has one size
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.fixture
def csv_project(tmp_path, monkeypatch, caplog):
    """A project in tmp_path whose CSV source's images are old enough for the record to be trusted."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHOULDERS_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="pipeline.dataset.sources")
    folder = tmp_path / "images"
    rows = []
    for c in range(2):
        for i in range(4):
            path = folder / f"class_{c}" / f"img_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.random.default_rng(10 * c + i).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, compress_level=0)
            rows.append((f"class_{c}/img_{i}.png", f"class_{c}"))
    _table(folder, rows)
    time.sleep(RACY_NS / 1e9 + 0.1)  # the files' last change must be RACY_NS older than their read
    return tmp_path


def test_an_image_changed_in_place_is_read_again_and_only_it(csv_project, caplog):
    _prepare(csv_project, "images/list.csv")
    assert _read_counts(caplog) == (0, 8)
    _prepare(csv_project, "images/list.csv")
    assert _read_counts(caplog) == (8, 0)  # nothing re-read
    changed = csv_project / "images/class_1/img_2.png"
    before = {r.id: r.sha256 for r in read_manifest("data/manifest.csv")}
    _overwrite_keeping_stat(changed, seed=99)
    _prepare(csv_project, "images/list.csv")
    assert _read_counts(caplog) == (7, 1)  # its ctime moved: the one file is read again
    after = {r.id: r.sha256 for r in read_manifest("data/manifest.csv")}
    assert after["class_1/img_2.png"] == hashlib.sha256(changed.read_bytes()).hexdigest() != before["class_1/img_2.png"]
    assert {k: v for k, v in after.items() if k != "class_1/img_2.png"} == {
        k: v for k, v in before.items() if k != "class_1/img_2.png"
    }
    # A touched file (same bytes) is hashed again, and what was found in those bytes is kept.
    os.utime(changed)
    _prepare(csv_project, "images/list.csv")
    assert _read_counts(caplog) == (7, 1) and {r.id: r.sha256 for r in read_manifest("data/manifest.csv")} == after


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "garbage", "another format"])
def test_a_damaged_record_costs_a_full_read_never_a_wrong_hash(csv_project, caplog, damage):
    _prepare(csv_project, "images/list.csv")
    record = record_file("images/list.csv")
    raw = record.read_bytes()
    changed = csv_project / "images/class_0/img_1.png"
    _overwrite_keeping_stat(changed, seed=7)
    # The damage makes the record claim the overwritten file is unchanged: its stat is the new one.
    header, _, body = raw.partition(b"\n")
    entries = json.loads(body)["entries"]
    entry = entries[os.path.abspath("images/class_0/img_1.png")]
    entry[:4] = [changed.stat().st_size, changed.stat().st_mtime_ns, changed.stat().st_ctime_ns, changed.stat().st_ino]
    entry[4] = time.time_ns() + 10 * RACY_NS
    body = json.dumps({**json.loads(body), "entries": entries}).encode()
    damaged = {
        "flip a byte": header + b"\n" + body,  # the digest no longer matches the body
        "truncate": (header + b"\n" + body)[: len(raw) // 2],
        "garbage": b"\x00\xff" * 50,
        "another format": (
            b"shoulders-prepare-stat-cache 0 " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
        ),
    }[damage]
    record.write_bytes(damaged)
    _prepare(csv_project, "images/list.csv")
    assert _read_counts(caplog) == (0, 8)
    sha = {r.id: r.sha256 for r in read_manifest("data/manifest.csv")}["class_0/img_1.png"]
    assert sha == hashlib.sha256(changed.read_bytes()).hexdigest()
    rewritten = json.loads(record.read_bytes().partition(b"\n")[2])["entries"]
    assert rewritten[os.path.abspath("images/class_0/img_1.png")][5] == sha


def test_an_unwritable_record_is_logged_and_prepare_goes_on(csv_project, monkeypatch, caplog):
    (csv_project / "not_a_folder").write_text("x")
    monkeypatch.setenv("SHOULDERS_CACHE_DIR", str(csv_project / "not_a_folder" / "cache"))
    _prepare(csv_project, "images/list.csv")
    _prepare(csv_project, "images/list.csv")
    assert _read_counts(caplog) == (0, 8) and len(read_manifest("data/manifest.csv")) == 8
    assert any("cannot write prepare's record of file stats" in r.getMessage() for r in caplog.records)


def test_what_the_record_holds_is_checked_against_today_s_params(csv_project, caplog):
    _prepare(csv_project, "images/list.csv")
    # Perceptual hashes were not computed: asking for them reads every file.
    _prepare(csv_project, "images/list.csv", near_duplicates={"method": "phash", "max_distance": 4})
    assert _read_counts(caplog) == (0, 8)
    # A lower pixel limit refuses the images the record holds, with the decoder's message.
    write_params(csv_project / "params.yaml", tiny_params("images/list.csv", data={"max_image_pixels": 100}))
    with pytest.raises(BadImageError, match=r"class_0/img_0.png: declares 16×16 = 0.0 megapixels"):
        prepare.main(["--manifest", "data/manifest.csv", "--report", "reports/prepare.json", "--no-progress"])


# --------------------------------------------------------------------------- a real dvc repro


def _run(cmd, cwd, env) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.mark.slow
def test_dvc_repro_re_extracts_an_image_of_a_csv_source_overwritten_in_place(tmp_path):
    import shutil

    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    rows = _dataset(root / "images", per_class=5)
    _table(root / "images", rows)
    write_params(root / "params.yaml", tiny_params("images/list.csv", heads={"kinds": ["logreg"]}))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "SHOULDERS_CACHE_DIR": str(tmp_path / "cache"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        _run(cmd, root, env)
    report = root / "reports/extract/mv2.json"

    assert "extract@mv2" in _ran(_run(["dvc", "repro", "extract@mv2"], root, env))
    assert json.loads(report.read_text())["computed"] == 10
    # Nothing changed: prepare looks (always), finds the same dataset, and nothing after it runs.
    assert _ran(_run(["dvc", "repro", "extract@mv2"], root, env)) == {"prepare"}
    status = subprocess.run(
        ["dvc", "status", "--json", "--with-deps", "extract@mv2"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(status.stdout) == {"prepare": ["always changed"]}  # what `dvc status` says of it

    changed = root / "images/class_1/img_003.png"
    pixels = np.random.default_rng(5).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(changed)
    out = _run(["dvc", "repro", "extract@mv2"], root, env)
    assert {"prepare", "catalog", "extract@mv2"} <= _ran(out), out
    extracted = json.loads(report.read_text())
    assert (extracted["computed"], extracted["reused"]) == (1, 9)  # its new bytes, and only them
    manifest = {r.id: r.sha256 for r in read_manifest(root / "data/manifest.csv")}
    assert manifest["class_1/img_003.png"] == hashlib.sha256(changed.read_bytes()).hexdigest()
