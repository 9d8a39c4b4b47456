"""keras_hub presets as backbones, offline: tiny random presets saved with save_to_preset, the whole pipeline on them.

A tiny ViT (3 transformer blocks, a class token) and a tiny ResNet (two pyramid
levels, a bicubic converter) are built with random weights and saved into
temporary preset directories, each with its image converter; then check,
extract, heads (every pooling), evaluate, export and predict run on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_params, write_image_folder, write_params

keras_hub = pytest.importorskip("keras_hub", reason="keras_hub is not installed (pip install -e '.[test]')")

from pipeline.backbones import build_cut_model  # noqa: E402
from pipeline.backbones.cuts import check_cuts  # noqa: E402
from pipeline.config import FeatureSetParams, ParamsError, parse_params  # noqa: E402

MAP_POOLINGS = ["avg", "max", "avgmax", "flatten"]
TOKEN_POOLINGS = ["cls", "mean", "cls+mean"]


def save_vit(directory, *, crop=True):
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    backbone.save_to_preset(str(directory))
    keras_hub.layers.ViTImageConverter(
        image_size=(32, 32), scale=1 / 127.5, offset=-1.0, crop_to_aspect_ratio=crop
    ).save_to_preset(str(directory))
    return directory


def save_resnet(directory):
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(None, None, 3),
    )
    backbone.save_to_preset(str(directory))
    keras_hub.layers.ResNetImageConverter(
        image_size=(32, 32),
        scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
        offset=[-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))],
        interpolation="bicubic",
    ).save_to_preset(str(directory))
    return directory


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    return {"vit": save_vit(root / "vit"), "resnet": save_resnet(root / "resnet")}


def spec(preset, **fields):
    return FeatureSetParams(backbone="hub", preset=str(preset), **fields)


# --------------------------------------------------------------------------- params and cuts


def test_weights_default_to_the_presets_and_bad_settings_are_refused(presets, tmp_path):
    assert spec(presets["vit"]).weights == "preset"
    assert FeatureSetParams(backbone="vgg16").weights == "imagenet"

    def load(**f):
        return parse_params({"features": {"x": {"backbone": "hub", "preset": str(presets["vit"]), **f}}})

    from pipeline.backbones import validate_feature_set

    with pytest.raises(ValueError, match=r"resizes to 32 px.*Received: size=64"):
        validate_feature_set(load(size=64).features["x"])
    with pytest.raises(ValueError, match=r"weights must be one of \['preset', 'none'\]"):
        validate_feature_set(load(weights="imagenet").features["x"])
    with pytest.raises(ValueError, match="preset applies to backbone 'hub' only"):
        validate_feature_set(FeatureSetParams(backbone="vgg16", preset=str(presets["vit"])))
    with pytest.raises(ValueError, match="a cut index counts the blocks of a preset"):
        validate_feature_set(FeatureSetParams(backbone="vgg16", cut=-1))
    bare = tmp_path / "bare"
    keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8
    ).save_to_preset(str(bare))
    with pytest.raises(ValueError, match="no image_converter.json.*will not guess"):
        validate_feature_set(spec(bare))
    with pytest.raises(FileNotFoundError, match="not a directory.*save_to_preset"):
        validate_feature_set(spec(tmp_path / "absent"))


def test_a_hub_backbone_without_keras_hub_names_the_extra(presets, monkeypatch):
    from pipeline.backbones import validate_feature_set

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # what find_spec sees when it is not installed
    with pytest.raises(ValueError, match=r'needs keras_hub.*pip install "shoulders\[hub\]"'):
        validate_feature_set(spec(presets["vit"]))


def test_a_preset_name_offline_says_how_to_copy_one():
    from pipeline.backbones.presets import resolve_preset

    with pytest.raises(RuntimeError, match="(?s)could not fetch it.*save_to_preset.*preset: /path/to/"):
        resolve_preset("no_such_preset_anywhere")


def test_layers_lists_blocks_and_a_wrong_cut_names_the_valid_ones(presets, capsys):
    from pipeline.cli.shoulders import main

    main(["layers", "hub", "--preset", str(presets["vit"])])
    out = capsys.readouterr().out
    assert "blocks (3;" in out and " -1  transformer_block_3" in out and "(17, 16) tokens" in out
    assert "vit_encoder" in out and "ViTImageConverter" in out
    with pytest.raises(ParamsError) as error:
        check_cuts(
            {
                "typo": spec(presets["vit"], cut="transformer_blok_3"),
                "far": spec(presets["vit"], cut=-4),
                "short": spec(presets["vit"], cut=1, blocks=3),
            }
        )
    message = str(error.value)
    assert "features.typo.cut: preset" in message and "nearest first: transformer_block_3" in message
    assert "features.far.cut" in message and "has 3 blocks (cut -3 to 2)" in message
    assert "features.short.cut" in message and "block 2 or later" in message
    resolved = check_cuts({"last": spec(presets["vit"], cut=-1, blocks=2), "map": spec(presets["resnet"], cut=-2)})
    assert resolved["last"]["cut"] == "transformer_block_3" and resolved["last"]["blocks"] == 2
    assert resolved["map"]["cut"] == "P2" and resolved["map"]["input_size"] == 32


def test_token_cuts_store_the_class_token_and_the_patch_mean(presets):
    import keras

    cut = build_cut_model(spec(presets["vit"], cut=-1, blocks=2), seed=0)
    assert cut.model.output_shape == (None, 2, 32)  # [cls, patch mean] × 2 blocks of 16
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    got = np.asarray(cut.model(cut.preprocess(images)))
    # By hand: the preset's converter scaling, the blocks' token sequences, then the summary.
    tower = keras_hub.models.Backbone.from_preset(str(presets["vit"]))
    encoder = tower.get_layer("vit_encoder")
    x = tower.get_layer("vit_patching_and_embedding")(images / 127.5 - 1.0)
    outputs = []
    for block in encoder.encoder_layers:
        x = block(x)
        outputs.append(np.asarray(x))
    expected = np.concatenate([np.stack([o[:, 0], o[:, 1:].mean(axis=1)], axis=1) for o in outputs[1:]], axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert "class token, mean of patch tokens" in cut.provenance["tokens"]
    keras.backend.clear_session()


def test_identity_is_planned_without_building_and_follows_weights_and_converter(presets, tmp_path):
    from pipeline.extraction.plan import plan_extraction, planned_identity

    settings = load_params_with({}).extract
    planned = planned_identity(spec(presets["vit"], cut=-1), settings, "transformer_block_3")
    built = plan_extraction(spec(presets["vit"], cut=-1), settings, expected=planned)  # raises if they differ
    assert built.plan.identity == planned and planned["blocks"] == 1 and "ViTBackbone" in planned["architecture"]
    assert planned["input_size"] == 32 and "centre crop" in planned["resize"]
    other = save_vit(tmp_path / "other", crop=False)  # new random weights, no crop
    changed = planned_identity(spec(other, cut=-1), settings, "transformer_block_3")
    # A bilinear converter without a crop resizes as the pipeline itself does, and says so.
    assert changed["weights_sha256"] != planned["weights_sha256"] and changed["resize"] == "bilinear (tf.image.resize)"
    random = planned_identity(spec(presets["vit"], cut=-1, weights="none"), settings, "transformer_block_3")
    assert random["weights_sha256"] is None and random["seed"] == settings.seed


def test_a_converted_network_serves_the_same_preset_copied_elsewhere_and_records_the_new_path(
    presets, tmp_path, monkeypatch
):
    import shutil

    from pipeline.extraction.plan import plan_extraction, planned_identity
    from pipeline.extraction.runtime_choice import installed

    if not installed("openvino"):
        pytest.skip("needs openvino")
    monkeypatch.setenv("SHOULDERS_CACHE_DIR", str(tmp_path / "cache"))
    settings = load_params_with({"extract": {"runtime": "openvino", "batch_size": 2}}).extract
    moved = shutil.copytree(presets["vit"], tmp_path / "moved")
    first = plan_extraction(
        spec(presets["vit"], cut=-1),
        settings,
        expected=planned_identity(spec(presets["vit"], cut=-1), settings, "transformer_block_3"),
    )
    first.step()  # converts and caches the network
    again = plan_extraction(
        spec(moved, cut=-1), settings, expected=planned_identity(spec(moved, cut=-1), settings, "transformer_block_3")
    )
    assert first.cached is None and again.cached is not None  # same weights, so the same entry
    assert again.plan.provenance.to_json()["preset"] == str(moved)  # where it was found this time
    assert again.plan.identity == first.plan.identity


def load_params_with(overrides):
    return parse_params(tiny_params("images", **overrides))


def test_random_weights_are_seeded(presets):
    first = build_cut_model(spec(presets["vit"], weights="none"), seed=3).model.get_weights()
    again = build_cut_model(spec(presets["vit"], weights="none"), seed=3).model.get_weights()
    pretrained = build_cut_model(spec(presets["vit"]), seed=3).model.get_weights()
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, pretrained))


# --------------------------------------------------------------------------- the whole pipeline


@pytest.fixture(scope="module")
def hub_run(presets, tmp_path_factory):
    from pipeline.stages import check, evaluate, extract, prepare
    from pipeline.stages import heads as heads_stage

    root = tmp_path_factory.mktemp("hub_pipeline")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        write_image_folder(root / "images", classes=3, per_class=10, size=(40, 48))  # not square: the crop counts
        features = {
            "vit_tokens": {"backbone": "hub", "preset": str(presets["vit"]), "cut": -1, "blocks": 2},
            "vit_mid": {"backbone": "hub", "preset": str(presets["vit"]), "cut": -2},
            "resnet": {"backbone": "hub", "preset": str(presets["resnet"]), "cut": -1},
        }
        params = tiny_params(
            "images",
            features=features,
            heads={"kinds": ["logreg"], "pooling": MAP_POOLINGS + TOKEN_POOLINGS, "logreg": {"C": [1.0]}},
        )
        write_params(root / "params.yaml", params)
        prepare.main(["--manifest", "data/manifest.csv", "--report", "reports/prepare.json", "--no-progress"])
        check.main(["--out", "reports/checks"])
        for key in features:
            extract.main(
                [
                    "--feature-set",
                    key,
                    "--out",
                    f"features/{key}.zarr",
                    "--check",
                    f"reports/checks/{key}.json",
                    "--report",
                    f"reports/extract/{key}.json",
                    "--no-progress",
                ]
            )
            heads_stage.main(["--features", f"features/{key}.zarr", "--out", f"heads/{key}", "--no-progress"])
        evaluate.main(
            [
                "--heads",
                "heads",
                "--metrics",
                "metrics.json",
                "--report",
                "reports/evaluation.json",
                "--leaderboard",
                "reports/leaderboard.csv",
                "--plots",
                "plots",
            ]
        )
        yield root, params
    finally:
        os.chdir(cwd)


def test_stores_hold_token_summaries_and_maps_and_heads_take_the_poolings_that_apply(hub_run):
    from pipeline.store.reader import open_feature_set

    root, _ = hub_run
    tokens = open_feature_set(root / "features/vit_tokens.zarr", "train", pooling="none")
    assert tokens.X.shape[1:] == (2, 32) and tokens.provenance["cut"] == "transformer_block_3"
    assert tokens.provenance["blocks"] == 2 and tokens.provenance["architecture"].startswith("ViTBackbone")
    assert (
        open_feature_set(root / "features/vit_mid.zarr", "train", pooling="none").provenance["cut"]
        == "transformer_block_2"
    )
    cls = open_feature_set(root / "features/vit_tokens.zarr", "train", pooling="cls").X
    np.testing.assert_array_equal(cls, tokens.X[:, 0].astype("float32"))
    assert open_feature_set(root / "features/resnet.zarr", "train", pooling="none").X.shape[1:] == (4, 4, 16)
    with pytest.raises(ValueError, match=r"pooling 'avg' does not apply.*\['cls', 'mean', 'cls\+mean'\]"):
        open_feature_set(root / "features/vit_tokens.zarr", "train", pooling="avg")
    for key, poolings in (("vit_tokens", TOKEN_POOLINGS), ("resnet", MAP_POOLINGS)):
        scores = json.loads((root / f"heads/{key}/scores.json").read_text())
        assert sorted({v["pooling"] for v in scores["variants"]}) == sorted(poolings)
    report = json.loads((root / "reports/extract/vit_tokens.json").read_text())
    assert report["computed"] == 30


def test_a_rerun_finds_every_row_without_building(hub_run):
    from pipeline.stages import extract

    root, _ = hub_run
    os.chdir(root)
    extract.main(
        [
            "--feature-set",
            "vit_tokens",
            "--out",
            "features/vit_tokens.zarr",
            "--check",
            "reports/checks/vit_tokens.json",
            "--report",
            "reports/extract/again.json",
            "--no-progress",
        ]
    )
    again = json.loads((root / "reports/extract/again.json").read_text())
    assert again["computed"] == 0 and again["reused"] == 30


@pytest.mark.parametrize(
    "key, pooling",
    [("vit_tokens", p) for p in TOKEN_POOLINGS] + [("vit_mid", "cls"), ("resnet", "avg"), ("resnet", "flatten")],
)
def test_export_and_predict_match_the_pipeline_for_every_pooling(hub_run, key, pooling):
    from pipeline.export.predict_command import load_model
    from pipeline.images import decode_image
    from pipeline.stages import evaluate, export

    root, params = hub_run
    os.chdir(root)
    variant = f"{pooling}-logreg-C1"
    write_params(root / "params.yaml", {**params, "export": {"variant": f"{key}/{variant}", "tolerance": 0.002}})
    target, out = root / "reports" / f"target-{key}-{pooling}.json", root / "models" / f"{key}-{pooling}"
    evaluate.main(
        [
            "--heads",
            "heads",
            "--metrics",
            "metrics.json",
            "--report",
            "reports/evaluation.json",
            "--leaderboard",
            "reports/leaderboard.csv",
            "--plots",
            "plots",
            "--export-target",
            str(target),
        ]
    )
    export.main(
        [
            "--target",
            str(target),
            "--manifest",
            "data/manifest.csv",
            "--prepare-report",
            "reports/prepare.json",
            "--out",
            str(out),
        ]
    )
    card = json.loads((out / "card.json").read_text())
    check = card["check_against_pipeline"]
    assert check["same_class"] == check["images"] > 0 and check["max_abs_probability_difference"] <= 0.002
    assert card["backbone"]["family"] == "hub" and card["head"]["pooling"] == pooling
    assert card["backbone"]["preset"] == params["features"][key]["preset"]
    image = decode_image(next((root / "images/class_1").iterdir()))
    assert load_model(out).predict_proba([image]).sum() == pytest.approx(1.0, abs=1e-4)


def test_an_exported_preset_model_loads_in_a_fresh_process(hub_run):
    root, _ = hub_run
    out = root / "models" / "vit_tokens-cls+mean"
    if not out.is_dir():
        pytest.skip("needs the export of vit_tokens with cls+mean (test_export_and_predict_…)")
    image = next((root / "images/class_2").iterdir())
    code = (
        "from pipeline.export.predict_command import load_model; from pipeline.images import decode_image; "
        f"m = load_model({str(out)!r}); p = m.predict_proba([decode_image({str(image)!r})]); "
        "print(m.classes[p.argmax()], round(float(p.sum()), 4))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    name, total = result.stdout.split()
    assert name.startswith("class_") and float(total) == pytest.approx(1.0, abs=1e-4)
