"""What made an output: file digests, library versions, and the provenance of a feature store.

Every feature store records how its features were made as a flat JSON mapping
(the group attribute ``provenance``). :class:`Provenance` is its typed form:
the network part comes from the backbone registry
(:func:`pipeline.backbones.build_cut_model`), the rest from the extraction plan
(:mod:`pipeline.extraction.plan`). Which fields must agree for two things to
be comparable is said once, here: :data:`NETWORK` (the same truncated network:
fine-tuning and export rebuild it and must get the one the heads were trained
on) and :data:`SAME_FEATURES` (a views store and the clean store it extends, a
head and the store it is scored on). :func:`require_same` compares them and
names every difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

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
    weights: str                   # imagenet | none | a weights file
    weights_sha256: Optional[str]  # of the weights file read (None: Keras' own ImageNet file, or random)
    cut: str                       # layer name
    cut_index: int                 # its position in the base model (0 = input)
    n_layers: int
    input_size: int
    alpha: Optional[float]
    preprocessing: str
    seed: Optional[int]            # initialisation of weights: none
    dtype: str = "float16"         # storage
    compute: str = "float32"       # float32 | mixed_float16
    jit_compile: bool = False
    resize: str = "bilinear (tf.image.resize)"
    decoder: str = "PIL via pipeline.images.decode_image"
    chunk_rows: int = 0
    manifest_sha256: Optional[str] = None
    versions: dict = field(default_factory=dict)
    augment: Optional[dict] = None  # views stores only: the ops and seed of the views

    def to_json(self) -> dict:
        """The flat mapping stored in a store's attributes (``augment`` only when set)."""
        out = dataclasses.asdict(self)
        if out["augment"] is None:
            del out["augment"]
        return out

    @classmethod
    def from_json(cls, mapping: Mapping[str, Any]) -> "Provenance":
        """Read a stored mapping; keys this version does not know are refused, naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"provenance has fields this version of shoulders does not know: {unknown}")
        return cls(**mapping)


# The same truncated network: backbone, weights (and their hash), cut and input size.
NETWORK = ("backbone", "weights", "weights_sha256", "cut", "input_size")
# The same features: the same network run on the same manifest's images.
SAME_FEATURES = ("manifest_sha256", *NETWORK)


def require_same(recorded: Mapping[str, Any], current: Mapping[str, Any], fields: Sequence[str], *,
                 what: str, fix: str = "run `dvc repro` first") -> None:
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
    diffs = [f"{name}={recorded.get(name)!r}, now {current.get(name)!r}" for name in fields
             if recorded.get(name) != current.get(name)]
    if diffs:
        raise ValueError(f"{what} with " + "; ".join(diffs) + f"; {fix}")
