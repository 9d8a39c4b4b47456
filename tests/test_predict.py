"""`shoulders predict` for scripts: exit statuses, a pixel limit read from the card, memory bounded by pixels."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from conftest import write_bomb_png
from PIL import Image
from test_untrusted import _tiny_model

from pipeline.cli import shoulders as cli


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    _tiny_model(folder / "model.keras")
    (folder / "card.json").write_text(json.dumps({"classes": ["dark", "light"], "max_image_pixels": 50_000_000}))
    return folder


def _images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img_{index}.png")
    return folder


def _predict(*arguments, capsys=None) -> tuple[int, list[dict]]:
    try:
        cli.main(["predict", *map(str, arguments), "--no-progress"])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out))) if capsys else []
    return status, rows


def test_exit_status_says_whether_everything_something_or_nothing_was_classified(model, tmp_path, capsys):
    good = _images(tmp_path / "good", [(8, 8), (12, 9)])
    assert _predict(model, good, capsys=capsys)[0] == 0
    mixed = _images(tmp_path / "mixed", [(8, 8)])
    (mixed / "broken.jpg").write_bytes(b"not an image")
    status, rows = _predict(model, mixed, capsys=capsys)
    assert status == 3 and len(rows) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not an image")
    (bad / "empty.png").write_bytes(b"")
    status, rows = _predict(model, bad, capsys=capsys)
    assert status == 4 and rows == []
    (tmp_path / "nothing").mkdir()
    assert _predict(model, tmp_path / "nothing", capsys=capsys)[0] == 4
    assert _predict(model, tmp_path / "no-such-folder", capsys=capsys)[0] == 1


def test_an_image_declaring_too_many_pixels_is_refused_from_its_header(model, tmp_path, capsys, caplog):
    folder = _images(tmp_path / "in", [(8, 8)])
    write_bomb_png(folder / "bomb.png", 8000, 8000)  # 64 MP: 192 MB decoded, ~70 KB on disk
    assert (folder / "bomb.png").stat().st_size < 200_000
    status, rows = _predict(model, folder, capsys=capsys)
    assert status == 3 and [r["file"].rsplit("/", 1)[-1] for r in rows] == ["img_0.png"]
    assert "declares 8000×8000 = 64.0 megapixels, more than the limit of 50" in caplog.text
    # The limit comes from the model card (data.max_image_pixels at training) unless --max-pixels says otherwise.
    status, rows = _predict(model, folder, "--max-pixels", "70000000", capsys=capsys)
    assert status == 0 and len(rows) == 2
    card = json.loads((model / "card.json").read_text())
    (model / "card.json").write_text(json.dumps({**card, "max_image_pixels": 50}))
    assert _predict(model, folder, capsys=capsys)[0] == 4


def test_batches_are_bounded_by_pixels_and_give_the_same_probabilities(model, tmp_path):
    from pipeline.export.predict_command import _decoded_batches, image_files, load_model, predict_files

    sizes = [(40, 30)] * 5 + [(100, 80)] * 3 + [(40, 30)] * 2
    files = image_files([_images(tmp_path / "in", sizes)])
    budget = 2 * 100 * 80
    batches = list(_decoded_batches(files, [], max_pixels=10**8, batch_size=32, batch_pixels=budget))
    assert [len(b) for b in batches] and sum(len(b) for b in batches) == len(files)
    assert all(len(b) == 1 or sum(i.shape[0] * i.shape[1] for _, i in b) <= budget for b in batches)
    predictor = load_model(model)
    small, _ = predict_files(predictor, files, batch_pixels=budget, progress=False)
    whole, _ = predict_files(predictor, files, progress=False)
    np.testing.assert_allclose(np.stack([p for _, p in small]), np.stack([p for _, p in whole]), rtol=1e-6)
    assert [f for f, _ in small] == files
