"""Load an exported model and classify image files: ``shoulders predict MODEL IMAGES...``.

An exported model is a folder written by the export stage (``models/``):

- ``model.keras`` — one Keras graph: raw uint8 RGB images of any size →
  resize → preprocessing → truncated backbone → pooling → head → class
  probabilities; or, for heads with no exact Keras form (RBF and polynomial
  SVMs), a bundle: ``features.keras`` (images → pooled features) and
  ``head.joblib`` (features → probabilities);
- ``card.json`` / ``card.md`` — the model card; ``card.json`` gives the class
  names in the order of the probability columns.

Images are decoded with :func:`pipeline.images.decode_image`, as in training.
A file that cannot be read is reported and skipped; it never stops the batch.

Usage: ``shoulders predict models/ photos/ --top-k 3 --out predictions.csv``
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from pipeline.images import BadImageError, decode_image, is_image_name, is_junk_name

log = logging.getLogger(__name__)
CARD_FILE, MODEL_FILE, FEATURES_FILE, HEAD_FILE = "card.json", "model.keras", "features.keras", "head.joblib"


@dataclass
class Predictor:
    """An exported model ready to classify images.

    Attributes
    ----------
    classes : list of str
        Class names, in the order of the probability columns.
    model : keras.Model
        Images → probabilities, or → pooled features for a bundle.
    head : estimator or None
        The scikit-learn head of a bundle.
    card : dict
    """

    classes: list[str]
    model: Any
    head: Optional[Any]
    card: dict

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities for decoded images (uint8, (h, w, 3), any sizes), shape (n, n_classes).

        Images of the same size go through the model together; the model resizes them itself.
        """
        out = np.zeros((len(images), len(self.classes)), np.float32)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.shape, []).append(index)
        for indices in groups.values():
            batch = np.stack([images[i] for i in indices]).astype(np.uint8)
            result = np.asarray(self.model.predict_on_batch(batch))
            if self.head is not None:
                result = self.head.predict_proba(result)
            out[indices] = result
        return out


def load_model(path: Path | str) -> Predictor:
    """Load an exported model folder (or its ``model.keras`` / ``features.keras``).

    Raises
    ------
    FileNotFoundError
        If the folder has no model or no card.
    """
    import joblib
    import keras

    import pipeline.export.layers  # noqa: F401 - registers the custom layers before loading

    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise FileNotFoundError(f"no {CARD_FILE} in {folder}: not a model exported by shoulders (run `dvc repro`)")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    if card.get("backbone", {}).get("family") == "hub":
        # The model holds keras_hub's layers: they are registered by importing it.
        from pipeline.backbones.presets import require_keras_hub

        require_keras_hub()
        import keras_hub  # noqa: F401
    if (folder / MODEL_FILE).is_file():
        return Predictor(card["classes"], keras.saving.load_model(folder / MODEL_FILE), None, card)
    if (folder / FEATURES_FILE).is_file() and (folder / HEAD_FILE).is_file():
        return Predictor(card["classes"], keras.saving.load_model(folder / FEATURES_FILE),
                         joblib.load(folder / HEAD_FILE), card)
    raise FileNotFoundError(f"{folder} has neither {MODEL_FILE} nor {FEATURES_FILE} + {HEAD_FILE}")


def image_files(inputs: Iterable[Path | str]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) under folders; junk skipped."""
    files: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            # Junk is judged below the folder named, so "../photos" is not taken for a hidden folder.
            files.extend(p for p in sorted(entry.rglob("*"))
                         if p.is_file() and is_image_name(p)
                         and not any(is_junk_name(Path(q)) for q in p.relative_to(entry).parts))
        elif entry.exists():
            files.append(entry)
        else:
            raise FileNotFoundError(f"no such file or folder: {entry}")
    return files


def predict_files(predictor: Predictor, files: Sequence[Path], *, batch_size: int = 32,
                  progress: bool = True) -> tuple[list[tuple[Path, np.ndarray]], list[str]]:
    """Classify files in batches.

    Returns
    -------
    results : list of (path, probabilities of shape (n_classes,))
    failures : list of str
        One message per file that could not be read (it is skipped).
    """
    from tqdm.auto import tqdm

    results, failures = [], []
    with tqdm(total=len(files), desc="predict", unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            batch, images = [], []
            for path in files[start:start + batch_size]:
                try:
                    images.append(decode_image(path))
                    batch.append(path)
                except (BadImageError, OSError) as error:
                    failures.append(str(error))
                    log.warning("skipped %s", error)
            if images:
                results.extend(zip(batch, predictor.predict_proba(images)))
            bar.update(len(files[start:start + batch_size]))
    return results, failures


def write_predictions(results, classes: Sequence[str], handle, *, top_k: int = 1) -> None:
    """CSV rows: file, then class and probability for the ``top_k`` most probable classes."""
    writer = csv.writer(handle, lineterminator="\n")
    header = ["file", "predicted", "probability"]
    for rank in range(2, top_k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    writer.writerow(header)
    for path, proba in results:
        order = np.argsort(-proba)[:top_k]
        row = [str(path)]
        for index in order:
            row += [classes[index], f"{proba[index]:.6f}"]
        writer.writerow(row)


def folder_accuracy(results, classes: Sequence[str]) -> Optional[tuple[float, int]]:
    """Accuracy against the files' folder names, when every file sits in a folder named after a class.

    ``shoulders predict models data/test`` on an ImageFolder tree then reports
    how well the model does; files anywhere else give ``None``.
    """
    truth = [path.parent.name for path, _ in results]
    if not results or any(name not in classes for name in truth):
        return None
    predicted = [classes[int(np.argmax(proba))] for _, proba in results]
    return float(np.mean([p == t for p, t in zip(predicted, truth)])), len(results)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shoulders predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an exported model folder, e.g. models/")
    parser.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    parser.add_argument("--top-k", type=int, default=1, help="how many classes to list per image")
    parser.add_argument("--out", type=Path, default=None, help="CSV file to write (default: standard output)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    predictor = load_model(args.model)
    if not 1 <= args.top_k <= len(predictor.classes):
        raise ValueError(f"--top-k must be between 1 and {len(predictor.classes)} (the number of classes). "
                         f"Received: {args.top_k}")
    files = image_files(args.inputs)
    results, failures = predict_files(predictor, files, batch_size=args.batch_size, progress=not args.no_progress)
    if args.out:
        with args.out.open("w", newline="", encoding="utf-8") as handle:
            write_predictions(results, predictor.classes, handle, top_k=args.top_k)
    else:
        write_predictions(results, predictor.classes, sys.stdout, top_k=args.top_k)
    log.info("%d images classified, %d skipped", len(results), len(failures))
    scored = folder_accuracy(results, predictor.classes)
    if scored is not None:
        log.info("accuracy %.4f over %d images (true class = the folder each file is in)", *scored)
