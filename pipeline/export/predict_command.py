"""Load an exported model and classify image files: ``shoulders predict MODEL IMAGES...``.

An exported model is a folder written by the export stage (``models/``):

- ``model.keras`` — one Keras graph: raw uint8 RGB images of any size →
  resize → preprocessing → truncated backbone → pooling → head → class
  probabilities, loaded with Keras' safe mode (no Python code is deserialised);
- ``card.json`` / ``card.md`` — the model card; ``card.json`` gives the class
  names in the order of the probability columns, and the pixel limit;
- ``ood.keras`` — the out-of-domain score (:mod:`pipeline.export.ood`): each image's
  features' distance to the k-th nearest training image's; beyond the card's
  threshold the image is flagged ``out_of_domain`` in the CSV instead of being
  answered as if it were one of the classes.

The CSV has one row per image: file, [true class and correct, when every file sits
in a folder named after a class], predicted class and probability (top-k),
[ood distance and out_of_domain].

A model folder is something people pass around, so :func:`load_model` trusts
it with nothing but data: it refuses a folder holding any pickle (``.joblib``,
``.pkl``… or any file that parses as one), since unpickling runs whatever code
the file names, and never unpickles anything (``SECURITY.md``).

Images are decoded with :func:`pipeline.images.decode_image` for the
backbone's input size, as in extraction (so a large JPEG gets the same DCT
draft decoding its training features had);
one whose header declares more pixels than the limit (the card's
``max_image_pixels``, i.e. ``data.max_image_pixels``, or ``--max-pixels``) is
refused before it is decoded. Decoded images are batched by pixels, not only
by count, so memory stays bounded whatever their sizes. A file that cannot be
read is reported and skipped; it never stops the batch. Each image is then
resized in numpy exactly as in extraction (:func:`pipeline.extraction.inputs.resize_image`,
the model's own ``resize`` layer's settings; a combination's or an ensemble's
graph has one per input size) and the rest of the graph runs on the batch: the
same pixels on every runtime (:class:`pipeline.export.predictor.Predictor`).

``--runtime`` chooses the Keras backend the graph runs on, as ``extract.runtime``
does for the backbone pass (``auto``: JAX on a visible GPU, else OpenVINO,
else TensorFlow; see :mod:`pipeline.extraction.runtime_choice`). The probabilities
agree across runtimes within float32 rounding (``tests/test_predict.py``).

Exit status: 0 every image classified; 3 some images skipped (unreadable or
too large), the others classified; 4 no image classified (every input failed,
or none found); 1 an error before classifying (a model folder refused or
missing, a bad option); 2 a usage error.

Usage: ``shoulders predict models/ photos/ --top-k 3 --out predictions.csv``
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import pickletools
import sys
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.export.ood import OOD_FILE
from pipeline.export.predictor import BATCH_PIXELS, Predictor
from pipeline.extraction.runtime_choice import RUNTIMES, keras_backend_for
from pipeline.images import BadImageError, decode_image, is_image_name, is_junk_name

log = logging.getLogger(__name__)
CARD_FILE, MODEL_FILE = "card.json", "model.keras"
# Exit statuses of `shoulders predict` (1 and 2 are the runner's and argparse's).
EXIT_SOME_SKIPPED, EXIT_NONE_CLASSIFIED = 3, 4
# Names pickles go by; a file named otherwise is refused too when it parses as a pickle.
PICKLE_SUFFIXES = frozenset({".joblib", ".pkl", ".pickle", ".pck", ".dill", ".npy", ".pt", ".pth"})
# How much of a file is parsed (never executed) to tell whether it is a pickle.
_SNIFF_BYTES = 1 << 20


class UnsafeModelError(ValueError):
    """A model folder holds a file that would run code when loaded (a pickle)."""


def load_keras_model(path: Path) -> Any:
    """``keras.saving.load_model`` in safe mode, with the project's layers registered."""
    import keras

    import pipeline.export.layers  # noqa: F401 - registers the custom layers before loading
    import pipeline.heads.kernel_layers  # noqa: F401 - the kernel SVMs' layers

    if not zipfile.is_zipfile(path):
        # Keras loads other formats (HDF5) by other routes, where safe mode does not hold.
        raise UnsafeModelError(f"{path} is not a .keras archive (a zip file); it is not loaded")
    return keras.saving.load_model(path, safe_mode=True)


def pickles_in(folder: Path) -> list[str]:
    """Every file under ``folder`` that is, or may be, a pickle: by its name, or because it parses as one.

    Files are only parsed (:func:`pickletools.genops` reads opcodes), never unpickled.
    """
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() in PICKLE_SUFFIXES:
            found.append(f"{path.name} (a {path.suffix.lstrip('.')} file: a pickle)")
        elif path.name not in (MODEL_FILE, OOD_FILE) and _parses_as_pickle(path):  # both: loaded in safe mode
            found.append(f"{path.name} (parses as a pickle)")
    return found


def _parses_as_pickle(path: Path) -> bool:
    with path.open("rb") as handle:
        data = handle.read(_SNIFF_BYTES)
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True  # the header of pickle protocols 2 to 5
    try:
        return any(opcode.name == "STOP" for opcode, _, _ in pickletools.genops(io.BytesIO(data)))
    except (ValueError, EOFError, UnicodeDecodeError, OverflowError):  # not a pickle (or not in its first MB)
        return False


def load_model(path: Path | str, runtime: str | None = None) -> Predictor:
    """Load an exported model folder (or its ``model.keras``); ``runtime="openvino"`` runs it through OpenVINO.

    Raises
    ------
    UnsafeModelError
        If the folder holds a pickle: nothing in it is loaded then.
    FileNotFoundError
        If the folder has no model or no card.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    unsafe = pickles_in(folder)
    if unsafe:
        raise UnsafeModelError(
            f"{folder} holds {', '.join(unsafe)}; loading a pickle runs whatever code its author put in it, so "
            "shoulders never loads one from a model folder (and its models have none: every head exports as one "
            f"{MODEL_FILE}). Refused without loading anything. Re-export the model (`dvc repro export`), or "
            "remove the file if you trust the rest of the folder"
        )
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise FileNotFoundError(f"no {CARD_FILE} in {folder}: not a model exported by shoulders (run `dvc repro`)")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    if not (folder / MODEL_FILE).is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in {folder}: not a model exported by shoulders (run `dvc repro`)")
    backbone = card.get("backbone", {})
    if "hub" in backbone.get("families", [backbone.get("family")]):
        # The model holds keras_hub's layers: they are registered by importing it.
        from pipeline.backbones.presets import require_keras_hub

        require_keras_hub()
        import keras_hub  # noqa: F401
    ood = None
    if "out_of_domain" in card:
        ood_file = folder / card["out_of_domain"]["file"]
        if ood_file.name != OOD_FILE or not ood_file.is_file():
            raise FileNotFoundError(
                f"the card of {folder} names the out-of-domain scorer {ood_file.name}, which is "
                f"not there (expected {OOD_FILE}); re-export the model (`dvc repro export`)"
            )
        ood = load_keras_model(ood_file)
    return Predictor(card["classes"], load_keras_model(folder / MODEL_FILE), card, ood, runtime=runtime)


def image_files(inputs: Iterable[Path | str]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) under folders; junk skipped."""
    files: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            # Junk is judged below the folder named, so "../photos" is not taken for a hidden folder.
            files.extend(
                p
                for p in sorted(entry.rglob("*"))
                if p.is_file()
                and is_image_name(p)
                and not any(is_junk_name(Path(q)) for q in p.relative_to(entry).parts)
            )
        elif entry.exists():
            files.append(entry)
        else:
            raise FileNotFoundError(f"no such file or folder: {entry}")
    return files


def predict_files(
    predictor: Predictor,
    files: Sequence[Path],
    *,
    batch_size: int = 32,
    max_pixels: int | None = None,
    batch_pixels: int = BATCH_PIXELS,
    progress: bool = True,
    with_distance: bool = False,
) -> tuple[list[tuple], list[str]]:
    """Classify files in batches of at most ``batch_size`` images and ``batch_pixels`` decoded pixels.

    Parameters
    ----------
    max_pixels : int, optional
        Refuse (skip) images declaring more pixels; default: the model card's limit.

    with_distance : bool
        Also score each image out of domain (:meth:`Predictor.predict_scored`).

    Returns
    -------
    results : list of (path, probabilities of shape (n_classes,)[, out-of-domain distance])
    failures : list of str
        One message per file that could not be read or was too large (it is skipped).
    """
    from pipeline.cli.progress import progress_bar

    limit = predictor.max_pixels if max_pixels is None else max_pixels
    results, failures = [], []
    with progress_bar(total=len(files), desc="predict", unit="img", enabled=progress) as bar:
        for batch in _decoded_batches(
            files,
            failures,
            max_pixels=limit,
            batch_size=batch_size,
            batch_pixels=batch_pixels,
            target=predictor.input_size,
        ):
            paths, images = zip(*batch) if batch else ((), ())
            if images and with_distance:
                results.extend(zip(paths, *predictor.predict_scored(list(images), batch_pixels=batch_pixels)))
            elif images:
                results.extend(zip(paths, predictor.predict_proba(list(images), batch_pixels=batch_pixels)))
            bar.update(len(batch))
        bar.update(len(files) - bar.n)
    return results, failures


def _decoded_batches(
    files: Sequence[Path],
    failures: list[str],
    *,
    max_pixels: int,
    batch_size: int,
    batch_pixels: int,
    target: int | None = None,
) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Decode files one at a time into batches, cut when full by count or by pixels (memory stays bounded).

    ``target`` (the model's input side) lets JPEGs decode at a reduced scale that stays at least twice it.
    """
    batch: list[tuple[Path, np.ndarray]] = []
    pixels = 0
    for path in files:
        try:
            image = decode_image(path, max_pixels=max_pixels, target=target)
        except (BadImageError, OSError) as error:
            failures.append(str(error))
            log.warning("skipped %s", error)
            continue
        if batch and (len(batch) >= batch_size or pixels + image.shape[0] * image.shape[1] > batch_pixels):
            yield batch
            batch, pixels = [], 0
        batch.append((path, image))
        pixels += image.shape[0] * image.shape[1]
    if batch:
        yield batch


def write_predictions(
    results, classes: Sequence[str], handle, *, top_k: int = 1, ood_threshold: float | None = None
) -> None:
    """CSV rows: file, [true class, correct], then class and probability for the ``top_k`` most probable
    classes, [out-of-domain distance, out_of_domain].

    ``true_class`` and ``correct`` are there when every file sits in a folder named after a class
    (:func:`true_classes`); the distance columns when results carry one (``with_distance``), flagged
    beyond ``ood_threshold``.
    """
    writer = csv.writer(handle, lineterminator="\n")
    truth = true_classes(results, classes)
    header = ["file"] + (["true_class", "correct"] if truth else []) + ["predicted", "probability"]
    for rank in range(2, top_k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    scored = bool(results) and len(results[0]) == 3
    writer.writerow(header + (["ood_distance", "out_of_domain"] if scored else []))
    for i, (path, proba, *distance) in enumerate(results):
        order = np.argsort(-proba)[:top_k]
        row = [str(path)]
        if truth:
            row += [truth[i], str(classes[order[0]] == truth[i]).lower()]
        for index in order:
            row += [classes[index], f"{proba[index]:.6f}"]
        if scored:
            row += [f"{distance[0]:.6f}", str(ood_threshold is not None and distance[0] > ood_threshold).lower()]
        writer.writerow(row)


def true_classes(results, classes: Sequence[str]) -> list[str] | None:
    """Each file's folder name, when every file sits in a folder named after a class; else ``None``."""
    truth = [Path(r[0]).parent.name for r in results]
    return truth if results and all(name in classes for name in truth) else None


def folder_accuracy(results, classes: Sequence[str]) -> tuple[float, int] | None:
    """Accuracy against the files' folder names, when every file sits in a folder named after a class.

    ``shoulders predict models data/test`` on an ImageFolder tree then reports
    how well the model does; files anywhere else give ``None``.
    """
    truth = true_classes(results, classes)
    if truth is None:
        return None
    predicted = [classes[int(np.argmax(r[1]))] for r in results]
    return float(np.mean([p == t for p, t in zip(predicted, truth)])), len(results)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``shoulders predict``; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="shoulders predict",
        description=__doc__.splitlines()[0],
        epilog="exit status: 0 every image classified; 3 some skipped, the rest "
        "classified; 4 none classified; 1 error; 2 usage error",
    )
    parser.add_argument("model", type=Path, help="an exported model folder, e.g. models/")
    parser.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    parser.add_argument("--top-k", type=int, default=1, help="how many classes to list per image")
    parser.add_argument("--out", type=Path, default=None, help="CSV file to write (default: standard output)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse images declaring more pixels (width × height) than this, before decoding "
        "(default: the model card's max_image_pixels, i.e. data.max_image_pixels)",
    )
    parser.add_argument(
        "--runtime",
        choices=("auto", *RUNTIMES),
        default="auto",
        help="the Keras backend the model runs on (default: auto — JAX on a visible GPU, else "
        "OpenVINO, else TensorFlow)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    runtime = keras_backend_for(args.runtime, option="--runtime")
    log.info("runtime: %s", runtime)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be an integer >= 1. Received: {args.batch_size}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be an integer >= 1. Received: {args.max_pixels}")
    predictor = load_model(args.model, runtime=runtime)
    if not 1 <= args.top_k <= len(predictor.classes):
        raise ValueError(
            f"--top-k must be between 1 and {len(predictor.classes)} (the number of classes). Received: {args.top_k}"
        )
    files = image_files(args.inputs)
    scored = predictor.ood is not None
    results, failures = predict_files(
        predictor,
        files,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
        progress=not args.no_progress,
        with_distance=scored,
    )
    options = {"top_k": args.top_k, "ood_threshold": predictor.ood_threshold}
    if args.out:
        with args.out.open("w", newline="", encoding="utf-8") as handle:
            write_predictions(results, predictor.classes, handle, **options)
    else:
        write_predictions(results, predictor.classes, sys.stdout, **options)
    log.info("%d images classified, %d skipped", len(results), len(failures))
    if scored:
        far = sum(r[2] > predictor.ood_threshold for r in results)
        ood = predictor.card["out_of_domain"]
        (log.warning if far else log.info)(
            "%d of %d image(s) out of domain (out_of_domain=true in the CSV): their features are farther from the "
            "training images' (distance to the nearest k=%d) than %g%% of the validation images' (> %.4f); do not "
            "trust their predicted class",
            far,
            len(results),
            ood["k"],
            ood["percentile"],
            ood["threshold"],
        )
    elif results:
        log.warning(
            "this model has no out-of-domain scorer (exported before it existed): every image gets a "
            "class, however unlike the training images; re-export it (`dvc repro export`)"
        )
    scored = folder_accuracy(results, predictor.classes)
    if scored is not None:
        log.info("accuracy %.4f over %d images (true class = the folder each file is in)", *scored)
    if not results:
        log.error(
            "no image classified (%s); exit status %d",
            f"{len(failures)} skipped" if failures else "no image files among the inputs",
            EXIT_NONE_CLASSIFIED,
        )
        return EXIT_NONE_CLASSIFIED
    if failures:
        log.warning("%d image(s) skipped; exit status %d", len(failures), EXIT_SOME_SKIPPED)
        return EXIT_SOME_SKIPPED
    return 0
