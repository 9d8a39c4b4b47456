"""What a model folder and a heads file are trusted to do (SECURITY.md): nothing but hold data.

A crafted pickle must never run: each test plants one whose payload writes a
file, and checks that the file does not exist afterwards.
"""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import shoulders as cli
from pipeline.export.predict_command import load_model


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the payload ran')",)


def _tiny_model(path):
    """A real Keras model from uint8 images to 2 probabilities, saved at ``path``."""
    import keras

    inputs = keras.Input((None, None, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(path)


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps({"classes": ["a", "b"]}))
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(image)
    return folder, image, tmp_path / "payload-ran"


@pytest.mark.parametrize("layout", ["bundle", "beside", "disguised"])
def test_a_crafted_pickle_in_a_model_folder_is_refused_and_never_runs(model_folder, layout, caplog):
    folder, image, marker = model_folder
    if layout == "bundle":  # the old form: features.keras + head.joblib (the pickle was loaded)
        _tiny_model(folder / "features.keras")
        (folder / "head.joblib").write_bytes(pickle.dumps(Payload(marker)))
    elif layout == "beside":
        _tiny_model(folder / "model.keras")
        (folder / "head.joblib").write_bytes(pickle.dumps(Payload(marker)))
    else:  # named as anything, protocol 0: found by parsing, never by loading
        _tiny_model(folder / "model.keras")
        (folder / "README.txt").write_bytes(pickle.dumps(Payload(marker), protocol=0))
    with caplog.at_level(logging.ERROR):
        try:
            cli.main(["predict", str(folder), str(image), "--no-progress"])
            status = 0
        except SystemExit as exit_:
            status = exit_.code
    assert not marker.exists(), "the pickle's payload ran"
    assert status == 1
    assert "never loads one from a model folder" in caplog.text and "runs whatever code" in caplog.text


def test_pickles_are_found_by_name_or_by_parsing_and_a_clean_folder_loads(model_folder):
    from pipeline.export.predict_command import pickles_in

    folder, image, marker = model_folder
    _tiny_model(folder / "model.keras")
    (folder / "card.md").write_text("# Model card\n")
    assert pickles_in(folder) == []
    predictor = load_model(folder)
    assert predictor.predict_proba([np.zeros((5, 7, 3), np.uint8)]).shape == (1, 2)
    (folder / "weights.pkl").write_bytes(b"anything")
    (folder / "notes").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert pickles_in(folder) == ["notes (parses as a pickle)", "weights.pkl (a pkl file: a pickle)"]


def test_a_heads_file_is_loaded_only_with_the_digest_scores_json_records(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from pipeline.heads.saved import load_head, save_head

    marker = tmp_path / "payload-ran"
    head = LogisticRegression().fit(np.arange(8.0).reshape(4, 2), [0, 0, 1, 1])
    row = {"variant": "avg-logreg-C1", "sha256": save_head(head, tmp_path / "avg-logreg-C1.joblib")}
    np.testing.assert_array_equal(load_head(tmp_path, row).coef_, head.coef_)
    (tmp_path / "avg-logreg-C1.joblib").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match="is not the file the heads stage wrote.*it is a pickle, so it is not loaded"):
        load_head(tmp_path, row)
    with pytest.raises(ValueError, match="records no sha256"):
        load_head(tmp_path, {"variant": "avg-logreg-C1"})
    assert not marker.exists()


def test_a_model_keras_that_is_not_a_keras_archive_is_not_loaded(model_folder):
    import keras

    from pipeline.export.predict_command import UnsafeModelError

    folder, _, _ = model_folder
    inputs = keras.Input((2,))
    # An HDF5 model under the name model.keras: Keras would load it by a route where safe mode does not hold.
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(folder / "legacy.h5")
    (folder / "legacy.h5").rename(folder / "model.keras")
    with pytest.raises(UnsafeModelError, match="is not a .keras archive"):
        load_model(folder)
