"""What made an output: file digests, library versions, and what a feature store's features depend on.

Every feature store records how its features were made as a flat JSON mapping
(:class:`Provenance`, typed): the network part comes from the backbone registry
(:func:`pipeline.backbones.build_cut_model`), the rest from the extraction plan
(:mod:`pipeline.extraction.plan`). Its :func:`identity_of` — the fields that
determine the features (:data:`IDENTITY`) — is what a store is keyed by: two
runs of the same identity give the same features for the same image bytes, so
their rows may live in one store, whatever the dataset around them. The
runtime that computed them (TensorFlow, OpenVINO or JAX; device, batch size,
library versions) is recorded per run, not in the identity, since float32
runtimes agree within float16 storage rounding (``tests/test_runtimes.py``); the
compute precision is part of the identity when features are stored as float32
or computed in bfloat16. :data:`NETWORK` names the fields of the
truncated network itself: fine-tuning and export rebuild it and must get the
one the heads were trained on. :func:`require_same` compares and names every
difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(mapping: Mapping[str, Any], *, length: int = 16) -> str:
    """A short stable hash of a JSON-able mapping (keys sorted; other objects by ``str``)."""
    blob = json.dumps(mapping, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def library_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``names`` (those not installed are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class Provenance:
    """How the features of a store were made (its ``provenance`` attribute, typed).

    The first group is the truncated network (from the backbone registry), the
    second how it was run and stored (from the extraction plan).
    """

    backbone: str
    weights: str  # imagenet | none | a weights file
    weights_sha256: str | None  # of the weights file read (None: Keras' own ImageNet file, or random)
    cut: str  # layer name
    cut_index: int  # its position in the base model (0 = input)
    n_layers: int
    input_size: int
    alpha: float | None
    preprocessing: str
    seed: int | None  # initialisation of weights: none
    init: str | None = None  # how weights: none are drawn (pipeline.backbones.random_init.SCHEME)
    dtype: str = "float16"  # storage
    compute: str = "float32"  # float32 | mixed_float16 | bfloat16
    resize: str = "bilinear (tf.image.resize)"
    decoder: str = "PIL via pipeline.images.decode_image"
    augment: dict | None = None  # views stores only: the ops and seed of the views
    # keras_hub presets only (None otherwise, and then left out of the stored mapping):
    preset: str | None = None  # the preset as given: a directory or a name (not part of the identity)
    architecture: str | None = None  # the backbone class and the sha256 of its config.json
    blocks: int | None = None  # blocks up to the cut whose token summaries are concatenated
    tokens: str | None = None  # what a token cut stores (class token, mean of patches), if it is one
    # flip: average only (None otherwise, and then left out): each map averaged with its mirror image's
    flip: str | None = None

    def to_json(self) -> dict:
        """The flat mapping stored in a store's attributes (``augment`` only when set)."""
        out = dataclasses.asdict(self)
        for name in ("augment", "flip", *PRESET_FIELDS):
            if out[name] is None:
                del out[name]
        return out

    @classmethod
    def from_json(cls, mapping: Mapping[str, Any]) -> Provenance:
        """Read a stored mapping; keys this version does not know are refused, naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"provenance has fields this version of shoulders does not know: {unknown}")
        return cls(**mapping)


PRESET_FIELDS = ("preset", "architecture", "blocks", "tokens")
# The same truncated network: backbone, weights (and their hash), cut, input size (a preset's architecture), flip.
NETWORK = ("backbone", "weights", "weights_sha256", "cut", "input_size", "architecture", "blocks", "flip")
# What determines the features of an image (besides its bytes); plus the compute precision for float32 storage.
IDENTITY = (
    "backbone",
    "weights",
    "weights_sha256",
    "cut",
    "input_size",
    "alpha",
    "preprocessing",
    "seed",
    "init",
    "resize",
    "decoder",
    "dtype",
    "augment",
)
# Part of the identity only when set (presets, flip averaging), so that every store made before them keeps
# its identity.
OPTIONAL_IDENTITY = ("architecture", "blocks", "flip")


def identity_of(provenance: Mapping[str, Any]) -> dict:
    """The fields of ``provenance`` that determine its features: what a store is keyed by."""
    identity = {name: provenance.get(name) for name in IDENTITY}
    identity.update({name: provenance[name] for name in OPTIONAL_IDENTITY if provenance.get(name) is not None})
    compute = provenance.get("compute")
    if identity["dtype"] == "float32" or compute == "bfloat16":
        # float16 compute (or any float32 runtime) differs from float32 by float16 storage rounding; stored as
        # float32 it differs beyond it, and bfloat16 compute (~1% relative) always does.
        identity["compute"] = compute
    return identity


def features_identity(identity: Mapping[str, Any]) -> dict:
    """An identity without its ``augment`` entry: what a views store and the feature store it extends share."""
    return {k: v for k, v in identity.items() if k != "augment"}


def require_same(
    recorded: Mapping[str, Any],
    current: Mapping[str, Any],
    fields: Sequence[str],
    *,
    what: str,
    fix: str = "run `dvc repro` first",
) -> None:
    """Raise ``ValueError`` naming every field of ``fields`` in which ``current`` differs from ``recorded``.

    Parameters
    ----------
    recorded : mapping
        The provenance something was made with (a store's, a head's).
    current : mapping
        What is at hand now (a rebuilt backbone's, another store's).
    what : str
        Says what ``recorded`` belongs to, e.g. ``"heads/lite0_top were trained on features"``.
    """
    diffs = [
        f"{name}={recorded.get(name)!r}, now {current.get(name)!r}"
        for name in fields
        if recorded.get(name) != current.get(name)
    ]
    if diffs:
        raise ValueError(f"{what} with " + "; ".join(diffs) + f"; {fix}")
