"""Converted OpenVINO networks kept on disk, so that an extraction which finds its network there builds nothing.

Building a truncated backbone and converting it for OpenVINO is most of an
extract stage's start-up on a CPU: importing TensorFlow and Keras, building the
network and loading its weights, exporting it through OpenVINO's TensorFlow
frontend (about 8 s on this project's 2-core machine, against 4 s to run 1,000
photos through it: BENCHMARKS.md). The result — an OpenVINO IR (``model.xml``
and ``model.bin``) and what the built network said about itself (its
provenance, output shape, resize) — depends only on things known before
anything is built, so it is kept, per batch size, in ``openvino/<key>/`` under
the shoulders cache folder (``$SHOULDERS_CACHE_DIR``, else
``~/.cache/shoulders``) and read back by the next stage that needs it, which
then imports neither TensorFlow nor Keras.

The key (:func:`entry_key`) is everything the converted graph depends on: the
store identity the features will have (backbone, weights file sha256, cut,
input size, preprocessing, resize, ...), the batch size, the Keras backend it
was converted from, the versions of Keras, TensorFlow and OpenVINO, and the
sha256 of the source of every module that builds or converts a network (the
backbone package, the OpenVINO runtime, this module, and the family's own
factory module). A network whose weights are not pinned by a file hash
(Keras' own ImageNet download, a keras_hub preset fetched by name) is never
cached. An entry is written to a temporary folder and renamed into place, so a
crash leaves no half entry; an entry that fails to read is rebuilt. Deleting
the folder is always safe: it only costs one conversion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.backbones.registry import Resize, family
from pipeline.provenance import fingerprint, library_versions

log = logging.getLogger(__name__)

FOLDER = "openvino"
ENTRY_FILE = "entry.json"
NETWORK_FILE = "model.xml"
# The libraries a converted graph depends on.
CONVERSION_LIBRARIES = ("keras", "tensorflow", "tensorflow-cpu", "openvino")
_PACKAGE = Path(__file__).resolve().parents[1]
# The source that builds or converts a network (besides a family's own factory module).
_SOURCES = (
    *sorted((_PACKAGE / "backbones").glob("*.py")),
    _PACKAGE / "extraction" / "runtimes" / "openvino_runtime.py",
    Path(__file__).resolve(),
)


@dataclass(frozen=True)
class Entry:
    """A converted network on disk, and what its build said about it."""

    folder: Path
    provenance: dict  # the CutModel's provenance
    feature_shape: tuple[int, ...]
    resize: Resize
    outputs: int  # the model's own outputs (a converted graph may carry more)

    @property
    def network(self) -> Path:
        return self.folder / NETWORK_FILE


# Provenance fields that say where something was found, not what it is: the identity pins the content (a preset
# by its weights' sha256), so an entry serves the same preset copied elsewhere, and these come from the params.
WHERE_FOUND = ("preset",)


def provenance_for(entry: Entry, spec: Any) -> dict:
    """The cached provenance with :data:`WHERE_FOUND` fields taken from ``spec`` (the feature set's params)."""
    return {**entry.provenance, **{name: getattr(spec, name) for name in WHERE_FOUND if name in entry.provenance}}


def cache_root() -> Path:
    from pipeline.cache_dir import cache_dir

    return cache_dir() / FOLDER


def cacheable(identity: Mapping[str, Any] | None) -> bool:
    """Whether the network of a planned store identity is pinned well enough to be cached.

    Weights must be random (``weights: none``: seed and scheme in the identity)
    or read from a file whose sha256 the identity holds.
    """
    if not identity:
        return False
    return identity.get("weights") == "none" or bool(identity.get("weights_sha256"))


def _factory_source(backbone: str) -> Path | None:
    """The file of the module that defines a family's factory, if it is not a keras.applications one."""
    module = family(backbone).factory.rsplit(".", 1)[0]
    if module.startswith("keras."):
        return None  # Keras' version is in the key
    found = importlib.util.find_spec(module)
    return Path(found.origin) if found is not None and found.origin else None


def code_digest(backbone: str) -> str:
    """sha256 of the source that builds and converts ``backbone``'s network."""
    digest = hashlib.sha256()
    extra = _factory_source(backbone)
    for path in (*_SOURCES, *([extra] if extra is not None and extra not in _SOURCES else [])):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def entry_key(identity: Mapping[str, Any], *, batch_size: int, keras_backend: str) -> str:
    """The cache key of a converted network (see the module docstring)."""
    return fingerprint(
        {
            "identity": dict(identity),
            "batch_size": batch_size,
            "keras_backend": keras_backend,
            "versions": library_versions(CONVERSION_LIBRARIES),
            "code": code_digest(str(identity["backbone"])),
        },
        length=24,
    )


def lookup(key: str) -> Entry | None:
    """The entry stored under ``key``, or None (none there, or unreadable: it is then rebuilt)."""
    folder = cache_root() / key
    try:
        return _read(folder)
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("the converted network cached in %s is unreadable (%s): converting again", folder, error)
        return None


def _read(folder: Path) -> Entry | None:
    """The entry in ``folder``; None if there is none; raises if it is unreadable."""
    try:
        meta = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    for name in (NETWORK_FILE, Path(NETWORK_FILE).with_suffix(".bin").name):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing")
    return Entry(
        folder=folder,
        provenance=meta["provenance"],
        feature_shape=tuple(meta["feature_shape"]),
        resize=Resize(**meta["resize"]),
        outputs=int(meta["outputs"]),
    )


def _readable(folder: Path) -> bool:
    try:
        return _read(folder) is not None
    except (OSError, ValueError, KeyError, TypeError):
        return False


def save(
    key: str,
    network: Any,
    *,
    provenance: Mapping[str, Any],
    feature_shape: tuple[int, ...],
    resize: Resize,
    outputs: int,
    identity: Mapping[str, Any],
) -> Entry | None:
    """Store a converted ``openvino.Model`` under ``key``, atomically; None if the cache folder cannot be written."""
    import openvino as ov

    root = cache_root()
    final = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            ov.save_model(network, str(tmp / NETWORK_FILE), compress_to_fp16=False)
            meta = {
                "provenance": dict(provenance),
                "feature_shape": list(feature_shape),
                "resize": dataclasses.asdict(resize),
                "outputs": outputs,
                "identity": dict(identity),
                "versions": library_versions(CONVERSION_LIBRARIES),
            }
            (tmp / ENTRY_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.exists():
                    raise
                if not _readable(final):  # an unreadable entry is replaced; a good one (another process's) kept
                    shutil.rmtree(final)
                    os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as error:
        log.warning("could not cache the converted network in %s (%s): the next run converts it again", final, error)
        return None
    return lookup(key)
