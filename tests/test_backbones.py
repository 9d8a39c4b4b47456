"""The backbone registry: every family builds, cuts are addressable, bad names are explained."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.backbones import build_cut_model, family, layer_names
from pipeline.config import FeatureSetParams

# Every family builds and runs at its minimum size: tests/test_runtimes.py (which runs them on every runtime).


def test_a_cut_truncates_at_the_named_layer():
    spec = FeatureSetParams(backbone="mobilenet_v2", weights="none", size=32, alpha=0.35, cut="block_2_add")
    cut = build_cut_model(spec, seed=0)
    assert cut.model.output_shape == (None, 8, 8, 8)
    assert cut.provenance["cut"] == "block_2_add" and cut.provenance["cut_index"] < cut.n_layers - 1
    assert cut.provenance["seed"] == 0 and cut.provenance["weights"] == "none"


def test_unknown_layer_lists_valid_names_nearest_first():
    spec = FeatureSetParams(backbone="mobilenet_v2", weights="none", size=32, alpha=0.35, cut="block_3_add")
    with pytest.raises(ValueError) as error:
        build_cut_model(spec, seed=0)
    message = str(error.value)
    assert "'block_3_add'" in message
    listed = message.split("nearest first: ")[1].split(", ")
    assert listed[0].endswith("_add") and "out_relu" in listed  # close matches first, then every layer


def test_unknown_backbone_lists_families():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*vgg16"):
        family("vgg")


def test_random_weights_are_seeded():
    import keras

    spec = FeatureSetParams(backbone="mobilenet_v2", weights="none", size=32, alpha=0.35)
    first = build_cut_model(spec, seed=3).model.get_weights()[0]
    keras.backend.clear_session()
    again = build_cut_model(spec, seed=3).model.get_weights()[0]
    other = build_cut_model(spec, seed=4).model.get_weights()[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_weights_from_a_file_are_hashed(tmp_path):
    spec = FeatureSetParams(backbone="mobilenet_v2", weights="none", size=32, alpha=0.35)
    model = build_cut_model(spec, seed=0).model
    path = tmp_path / "mine.weights.h5"
    model.save_weights(path)
    from_file = build_cut_model(
        FeatureSetParams(backbone="mobilenet_v2", weights=str(path), size=32, alpha=0.35), seed=99
    )
    assert len(from_file.provenance["weights_sha256"]) == 64
    np.testing.assert_array_equal(from_file.model.get_weights()[0], model.get_weights()[0])


def test_layer_names_lists_cut_points():
    names = layer_names(FeatureSetParams(backbone="vgg16", weights="none", size=32))
    assert "block4_pool" in names and "block5_pool" in names


def test_shoulders_layers_prints_each_layers_output_shape_and_depth(capsys):
    from pipeline.cli.shoulders import main

    main(["layers", "vgg16", "--size", "32"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["index", "depth", "output", "shape", "features", "layer", "(cut)"]
    rows = {line.split()[-1]: line.split() for line in lines[1:]}
    # VGG16 at 32 px: 19 layers; block4_pool (index 14) halves 4×4 to 2×2 with 512 channels.
    assert len(rows) == 19 and rows["input_layer"][:4] == ["0", "0.00", "32×32×3", "3072"]
    assert rows["block4_pool"][:4] == ["14", f"{14 / 18:.2f}", "2×2×512", "2048"]
    assert rows["block5_pool"][:4] == ["18", "1.00", "1×1×512", "512"]
    assert max(len(line) for line in lines) <= 100


def test_random_weights_do_not_depend_on_other_threads_using_random():
    # A Dask worker's event loop draws from Python's global `random` while models build.
    import random
    import threading
    import time

    import keras

    spec = FeatureSetParams(backbone="mobilenet_v2", weights="none", size=32, alpha=0.35)
    quiet = [w.copy() for w in build_cut_model(spec, seed=5).model.get_weights()]
    keras.backend.clear_session()
    stop = threading.Event()

    def draw():
        while not stop.is_set():
            random.random()
            time.sleep(0.0002)  # let the builder run: interleave, do not starve it

    noise = threading.Thread(target=draw)
    noise.start()
    try:
        noisy = build_cut_model(spec, seed=5).model.get_weights()
    finally:
        stop.set()
        noise.join()
    for a, b in zip(quiet, noisy):
        np.testing.assert_array_equal(a, b)
