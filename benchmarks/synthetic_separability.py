"""How separable is the built-in synthetic dataset, and by what?

Generates the default synthetic dataset (``SyntheticParams()``: 6 classes x 150
images, 128 px, seed 0) into a temporary folder, reads the PNG files back, and
fits the same standardised logistic regression on four feature sets:

* colour statistics (per-channel mean and std) -- the naive baseline;
* rotation-invariant edge statistics (Fourier magnitudes of the edge-orientation
  histogram, edge densities) -- a simple shape-aware baseline;
* MobileNet alpha=0.25, random initialisation (``keras.utils.set_random_seed(0)``),
  global average pooling;
* the same network with ImageNet weights.

The images are resized bilinearly to 224 px and go through
``keras.applications.mobilenet.preprocess_input``. It prints a table of test
accuracy on a stratified 70/30 split and of 5-fold cross-validated accuracy.

Usage::

    python benchmarks/synthetic_separability.py [--per-class 150] [--image-size 128]
        [--weights ../shared/keras-models/mobilenet_2_5_224_tf_no_top.h5]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.config import SyntheticParams  # noqa: E402
from pipeline.synthetic import CLASS_NAMES, generate_dataset  # noqa: E402

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "shared/keras-models/mobilenet_2_5_224_tf_no_top.h5"


def read_rgb(path: Path) -> np.ndarray:
    """One image file as an array of shape (height, width, 3), uint8."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def colour_statistics(images: np.ndarray) -> np.ndarray:
    """Per-channel mean and std, shape (n_images, 6), of images (n, h, w, 3)."""
    pixels = images.astype(np.float64)
    return np.concatenate([pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2))], axis=1)


def edge_statistics(images: np.ndarray) -> np.ndarray:
    """Rotation-invariant edge statistics, shape (n_images, 14), of images (n, h, w, 3).

    Fourier magnitudes of the magnitude-weighted edge-orientation histogram
    (mod pi, 36 bins) reflect a polygon's symmetry order whatever its rotation;
    edge densities at five thresholds add coarse size and clutter.
    """
    grey = images.astype(np.float64).mean(axis=-1)
    gy, gx = np.gradient(grey, axis=(1, 2))
    magnitude = np.hypot(gx, gy)
    bins = (np.mod(np.arctan2(gy, gx), np.pi) / np.pi * 36).astype(int) % 36
    hist = np.stack([np.bincount(b.ravel(), weights=m.ravel(), minlength=36) for b, m in zip(bins, magnitude)])
    hist /= hist.sum(axis=1, keepdims=True)
    harmonics = np.abs(np.fft.rfft(hist, axis=1))[:, 1:10]
    density = np.stack([(magnitude > t).mean(axis=(1, 2)) for t in (5, 10, 20, 40, 80)], axis=1)
    return np.concatenate([harmonics, density], axis=1)


def mobilenet_features(images: np.ndarray, weights: str | None, batch_size: int = 64) -> np.ndarray:
    """Global-average-pooled MobileNet-0.25 features, shape (n_images, 256), float64."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNet(
        alpha=0.25, include_top=False, input_shape=(224, 224, 3), weights=weights, pooling="avg"
    )
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = images[start : start + batch_size].astype(np.float32)
        batch = tf.image.resize(pixels, (224, 224), method="bilinear")
        pooled = base(keras.applications.mobilenet.preprocess_input(batch), training=False)
        chunks.append(pooled.numpy())
    return np.concatenate(chunks).astype(np.float64)


def linear_head_scores(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, float, float]:
    """Test accuracy on a stratified 70/30 split, and mean and std of 5-fold CV accuracy.

    ``features`` has shape (n_images, n_features), ``labels`` shape (n_images,).
    """
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    rows = np.arange(len(labels))
    train, test = train_test_split(rows, test_size=0.3, stratify=labels, random_state=seed)
    held_out = model.fit(features[train], labels[train]).score(features[test], labels[test])
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    cv = cross_val_score(model, features, labels, cv=folds)
    return float(held_out), float(cv.mean()), float(cv.std())


def main(argv: list[str] | None = None) -> None:
    defaults = SyntheticParams()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=defaults.classes)
    parser.add_argument("--per-class", type=int, default=defaults.per_class)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args(argv)
    if not args.weights.is_file():
        raise FileNotFoundError(f"MobileNet-0.25 ImageNet weights not found. Received: --weights={args.weights}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = generate_dataset(
            Path(tmp) / "synthetic",
            classes=args.classes,
            per_class=args.per_class,
            image_size=args.image_size,
            seed=args.seed,
            progress=True,
        )
        generate_s = time.perf_counter() - start
        images = np.stack([read_rgb(p) for p in paths])
        labels = np.array([CLASS_NAMES.index(p.parent.name) for p in paths])

    rows = []
    for name, extract in [
        ("colour statistics (mean, std per channel)", colour_statistics),
        ("edge-orientation statistics (rotation-invariant)", edge_statistics),
        ("MobileNet-0.25, random init, GAP", lambda x: mobilenet_features(x, None)),
        ("MobileNet-0.25, ImageNet, GAP", lambda x: mobilenet_features(x, str(args.weights))),
    ]:
        start = time.perf_counter()
        features = extract(images)
        seconds = time.perf_counter() - start
        scores = linear_head_scores(features, labels, args.seed)
        rows.append((name, features.shape[1], *scores, seconds))

    print()
    print(
        f"Synthetic dataset: {args.classes} classes x {args.per_class} images, "
        f"{args.image_size} px, seed {args.seed} (generated in {generate_s:.1f} s); "
        f"chance = {1 / args.classes:.1%}"
    )
    print("Linear head: StandardScaler + LogisticRegression; test = stratified 70/30 split")
    print()
    print("| features | dim | test acc | 5-fold CV acc | features time (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, dim, held_out, cv_mean, cv_std, seconds in rows:
        cv = f"{cv_mean:.1%} ± {cv_std:.1%}"
        print(f"| {name} | {dim} | {held_out:.1%} | {cv} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
