"""keras_hub presets read without Keras: what a preset is, how it preprocesses images, and its digests.

A feature set of backbone ``hub`` names a preset (``preset:``): a local
directory in Keras' preset format — ``config.json`` (the backbone's
serialised config), ``model.weights.h5`` (or its shards ``model_*.weights.h5``
with ``model.weights.json``) and ``image_converter.json`` — or a preset name or
handle (``dinov2_base``, ``kaggle://…``, ``hf://…``), which keras_hub downloads
and which therefore needs a network. :func:`read_preset` checks a directory and
reads what determines its features: the architecture (class and the sha256 of
``config.json``), the weights (one sha256 over every weights file) and its
image converter (input size, resize, per-channel scale and offset), so a
store's identity is known before TensorFlow is imported. The preprocessing is
the preset's and only the preset's: a feature set cannot set another one (its
``size`` must be absent or the converter's).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.backbones.registry import Resize
from pipeline.provenance import file_sha256

CONFIG_FILE = "config.json"
CONVERTER_FILE = "image_converter.json"
WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS = "model_*.weights.h5"
HUB_WEIGHTS = ("preset", "none")
HUB_EXTRA = 'pip install "shoulders[hub]"  (in a checkout: pip install -e ".[hub]")'
COPY_FOR_OFFLINE = (
    "To use a preset offline, save it to a directory on a machine with a network and copy that over: "
    "python -c \"import keras_hub; p = 'dinov2_base'; d = 'dinov2_base'; "
    "keras_hub.models.Backbone.from_preset(p).save_to_preset(d); "
    'keras_hub.layers.ImageConverter.from_preset(p).save_to_preset(d)"; '
    "then set preset: /path/to/dinov2_base"
)


@dataclass(frozen=True)
class Converter:
    """A preset's image converter: raw 0–255 RGB → ``x * scale + offset`` at ``size``, resized by ``resize``."""

    class_name: str
    size: int
    resize: Resize
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]

    def describe(self) -> str:
        """What the preprocessing is, for provenance and the model card."""
        return (
            f"the preset's image converter ({self.class_name}): x * {_fmt(self.scale)} + {_fmt(self.offset)} "
            "per RGB channel, on 0–255 RGB"
        )


@dataclass(frozen=True)
class PresetInfo:
    """A local preset directory, checked: its architecture, weights files and image converter."""

    directory: Path
    class_name: str
    config_sha256: str
    weights_files: tuple[Path, ...]
    converter: Converter

    @property
    def architecture(self) -> str:
        """The backbone class and the digest of its config: identical only for the same network."""
        return f"{self.class_name} (config.json sha256 {self.config_sha256})"

    def weights_sha256(self) -> str:
        """One sha256 over every weights file: names and contents, in name order."""
        digest = hashlib.sha256()
        for path in self.weights_files:
            digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
        return digest.hexdigest()


def keras_hub_available() -> bool:
    """Whether keras_hub is installed (found without importing it, so without TensorFlow)."""
    return importlib.util.find_spec("keras_hub") is not None


def require_keras_hub() -> None:
    """Raise ``ImportError`` naming the extra to install when keras_hub is not installed."""
    if not keras_hub_available():
        raise ImportError(f"backbone 'hub' needs keras_hub, which is not installed: {HUB_EXTRA}")


def local_preset(preset: str) -> Path | None:
    """The directory ``preset`` names, or ``None`` for a preset name or handle (which keras_hub downloads).

    Raises
    ------
    FileNotFoundError
        If ``preset`` looks like a path (it has a ``/`` or starts with ``.`` or ``~``
        and is no ``kaggle://`` or ``hf://`` handle) but is no directory.
    """
    path = Path(preset).expanduser()
    if path.is_dir():
        return path
    if "://" not in preset and ("/" in preset or preset.startswith((".", "~"))):
        raise FileNotFoundError(
            f"preset {preset!r} is not a directory (relative paths are from the project root). {COPY_FOR_OFFLINE}"
        )
    return None


def read_preset(directory: Path) -> PresetInfo:
    """Check a local preset directory and read what determines its features.

    Raises
    ------
    ValueError
        If a file is missing or not in Keras' preset format, naming it and what to do.
    """
    config = _json(directory / CONFIG_FILE, what="the backbone's config")
    if "registered_name" not in config or "class_name" not in config:
        raise ValueError(
            f"{directory / CONFIG_FILE} is not in Keras' preset format (no 'registered_name'; "
            "Transformers and timm checkpoints are not read directly). Convert it once with keras_hub: "
            "keras_hub.models.Backbone.from_preset(<it>).save_to_preset(<directory>)"
        )
    weights = sorted(directory.glob(SHARDED_WEIGHTS)) or sorted(directory.glob(WEIGHTS_FILE))
    if not weights:
        raise ValueError(
            f"preset {directory} has no weights ({WEIGHTS_FILE} or {SHARDED_WEIGHTS}); "
            "save the backbone with backbone.save_to_preset(directory)"
        )
    converter_file = directory / CONVERTER_FILE
    if not converter_file.is_file():
        raise ValueError(
            f"preset {directory} has no {CONVERTER_FILE}, so it does not say how its images are "
            "preprocessed (and shoulders will not guess): save the preset's converter into it with "
            "keras_hub.layers.ImageConverter.from_preset(<preset>).save_to_preset(directory)"
        )
    return PresetInfo(
        directory=directory,
        class_name=str(config["class_name"]),
        config_sha256=file_sha256(directory / CONFIG_FILE),
        weights_files=tuple(weights),
        converter=converter_of(_json(converter_file, what="the image converter"), converter_file),
    )


def converter_of(serialized: dict, where: Any) -> Converter:
    """The settings of a serialised image converter (``image_converter.json``).

    Raises
    ------
    ValueError
        If it does not resize to a square, or uses a layout shoulders does not feed (channels first).
    """
    config = serialized.get("config", serialized)
    size = config.get("image_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1] and isinstance(size[0], int)):
        raise ValueError(
            f"{where}: the image converter must resize to a square (image_size [n, n]); "
            f"shoulders feeds square images. Received: image_size={size!r}"
        )
    if config.get("data_format", "channels_last") not in (None, "channels_last"):
        raise ValueError(f"{where}: data_format {config['data_format']!r}; shoulders feeds channels_last images")
    resize = Resize(
        interpolation=config.get("interpolation", "bilinear"),
        crop_to_aspect_ratio=bool(config.get("crop_to_aspect_ratio", True)),
        pad_to_aspect_ratio=bool(config.get("pad_to_aspect_ratio", False)),
        antialias=bool(config.get("antialias", False)),
    )
    return Converter(
        class_name=str(serialized.get("class_name", "ImageConverter")),
        size=int(size[0]),
        resize=resize,
        scale=_per_channel(config.get("scale"), 1.0, "scale", where),
        offset=_per_channel(config.get("offset"), 0.0, "offset", where),
    )


def check_size(size: int | None, converter: Converter, preset: str) -> None:
    """A hub feature set runs at its preset's size: ``size`` must be absent or the converter's."""
    if size is not None and size != converter.size:
        raise ValueError(
            f"preset {preset!r} resizes to {converter.size} px (its image converter); a hub backbone "
            f"runs at its preset's size and preprocessing, nothing else. Received: size={size} "
            "(remove it)"
        )


def _per_channel(value: Any, neutral: float, name: str, where: Any) -> tuple[float, float, float]:
    if value is None:
        return (neutral,) * 3
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    raise ValueError(f"{where}: {name} must be a number or three (one per RGB channel). Received: {value!r}")


def _json(path: Path, *, what: str) -> dict:
    if not path.is_file():
        raise ValueError(
            f"{path} is missing ({what}); a Keras preset directory has {CONFIG_FILE}, "
            f"{WEIGHTS_FILE} and {CONVERTER_FILE}"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({what}): {error}") from None


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def resolve_preset(preset: str) -> PresetInfo:
    """The checked local preset: the directory given, or where keras_hub downloads a preset name to.

    Raises
    ------
    RuntimeError
        If a preset name cannot be fetched (no network), saying how to copy a preset for offline use.
    """
    directory = local_preset(preset)
    if directory is None:
        require_keras_hub()
        # keras_hub's own resolver: a built-in name, kaggle:// or hf:// handle → the files, downloaded
        # into one directory of its cache (presets of sharded weights: copy them as a directory).
        from keras_hub.src.utils.preset_utils import get_file

        try:
            directory = Path(get_file(preset, CONFIG_FILE)).parent
            for name in (CONVERTER_FILE, WEIGHTS_FILE):
                get_file(preset, name)
        except Exception as error:  # the downloaders raise many kinds; all mean the preset is not to be had
            raise RuntimeError(
                f"preset {preset!r} is not a directory, and keras_hub could not fetch it "
                f"({type(error).__name__}: {error}). {COPY_FOR_OFFLINE}"
            ) from error
    return read_preset(directory)


def validate_spec(spec: Any) -> None:
    """Check a ``hub`` feature set without building it (the registry's ``validate`` hook).

    Raises
    ------
    ValueError
        Naming the bad field and what is allowed; also when keras_hub is not installed (naming the extra).
    FileNotFoundError
        If ``preset`` looks like a path but is no directory.
    """
    if not spec.preset:
        raise ValueError(
            "backbone 'hub' needs preset: a keras_hub preset directory (or a preset name or "
            "kaggle:// / hf:// handle, which keras_hub downloads)"
        )
    if spec.weights not in HUB_WEIGHTS:
        raise ValueError(
            f"a hub backbone's weights are its preset's: weights must be one of {list(HUB_WEIGHTS)} "
            f"(random, seeded). Received: weights={spec.weights!r}"
        )
    if spec.alpha is not None:
        raise ValueError(f"alpha applies to the MobileNet families only, not hub. Received: alpha={spec.alpha}")
    if spec.blocks < 1:
        raise ValueError(
            f"blocks must be an integer >= 1 (the last blocks whose tokens are concatenated). "
            f"Received: blocks={spec.blocks}"
        )
    try:
        require_keras_hub()
    except ImportError as error:
        raise ValueError(str(error)) from None
    directory = local_preset(spec.preset)
    if directory is not None:
        check_size(spec.size, read_preset(directory).converter, spec.preset)


def spec_input_size(spec: Any) -> int:
    """The input size of a ``hub`` feature set: its preset's image converter's."""
    return resolve_preset(spec.preset).converter.size


def network_identity(spec: Any) -> dict | None:
    """What a ``hub`` backbone contributes to a store's identity (``None`` for a preset name: not fetched here)."""
    directory = local_preset(spec.preset)
    if directory is None:
        return None
    info = read_preset(directory)
    return {
        "weights_sha256": info.weights_sha256() if spec.weights == "preset" else None,
        "input_size": info.converter.size,
        "preprocessing": info.converter.describe(),
        "resize": info.converter.resize.describe(),
        "architecture": info.architecture,
        "blocks": spec.blocks,
    }
