"""One Keras graph for one or several feature sets and their heads: a single head, a combination, an ensemble.

A :class:`Branch` is one feature set as a head reads it: its backbone cut, the
store's float16 rounding and a pooling. :func:`build_graph` builds every
branch from one uint8 image input, each backbone once: feature sets that differ
only in their cut (and storage dtype) share one truncated backbone with one
output per distinct cut (``keras.Model(inputs, [layer_a.output, layer_b.output])``),
since the shallower cut's layers are the deeper one's first layers. Each input
size gets its own ``resize`` layer (named ``resize`` when there is only one,
``resize_0``, ``resize_1``... otherwise) and each backbone family its preprocessing.

The heads then read their branches: a single head its one branch, a
combination's head the branches concatenated in the combination's column
order, and an ensemble's heads one branch each, their probabilities averaged
(``keras.layers.Average``), each reading its branch's columns of the layer
named ``features``: the branches' pooled features concatenated (one branch:
its features), which the out-of-domain scorer reads (:mod:`pipeline.export.ood`). Every layer is one of
Keras' or registered (:mod:`pipeline.export.layers`): the graph loads in safe mode.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The layer whose output is the pooled features (all branches concatenated) the out-of-domain scorer reads.
FEATURES_LAYER = "features"


@dataclass(frozen=True)
class Branch:
    """One feature set as a head reads it.

    Attributes
    ----------
    key : str
        The feature set (``features.<key>``).
    spec : FeatureSetParams
        Its entry in ``params.yaml``, which rebuilds its backbone.
    provenance : dict
        What its heads were trained on (its store's provenance): cut, input size, dtype, ...
    pooling : str
        How the head pools the cut's output.
    """

    key: str
    spec: Any
    provenance: dict
    pooling: str


@dataclass(frozen=True)
class HeadPart:
    """A fitted head with ``predict_proba`` and the branches it reads, concatenated in that order."""

    estimator: Any
    kind: str
    branches: tuple[int, ...]
    name: str = "head"


@dataclass
class SharedBackbone:
    """One truncated backbone built once, and the branches that read its outputs."""

    cut: Any  # the CutModel of the deepest cut (pipeline.backbones.CutModel)
    model: Any  # keras.Model: backbone input → one output per cut in ``cuts``
    cuts: list[str]
    branches: list[int]

    def describe(self, branches: Sequence[Branch]) -> dict:
        """For the model card: which backbone, which cuts, which feature sets, whether they share it."""
        provenance = self.cut.provenance
        return {
            "backbone": provenance["backbone"],
            "weights": provenance["weights"],
            "input_size": provenance["input_size"],
            "cuts": list(self.cuts),
            "feature_sets": [branches[i].key for i in self.branches],
            "shared": len(self.branches) > 1,
            "layers": len(self.model.layers),
        }


def network_group(spec: Any) -> str:
    """Feature sets with the same group share one backbone: the same spec but for the cut and the storage dtype.

    A keras_hub preset's cut wraps its whole tower in one layer (``PresetCut``): each is its own group.
    """
    from pipeline.backbones import family

    if family(spec.backbone).from_preset:
        return json.dumps({"preset_cut": dataclasses.asdict(spec)}, sort_keys=True, default=str)
    return json.dumps(dataclasses.asdict(dataclasses.replace(spec, cut=None, dtype=None)), sort_keys=True, default=str)


def build_backbones(branches: Sequence[Branch], *, seed: int) -> list[SharedBackbone]:
    """Each distinct backbone built once, at its deepest cut, with one output per distinct cut of its branches.

    A cut that is not among the deepest cut's layers (on another path of a branching network) gets a
    truncated model of its own.

    Raises
    ------
    ValueError
        If a rebuilt backbone is not the network a branch's heads were trained on.
    """
    import keras

    groups: dict[str, list[int]] = {}
    for index, branch in enumerate(branches):
        groups.setdefault(network_group(branch.spec), []).append(index)
    built: list[SharedBackbone] = []
    waiting = list(groups.values())
    while waiting:
        backbone, left = _shared_backbone(branches, waiting.pop(0), seed=seed, number=len(built))
        built.append(backbone)
        if left:
            waiting.insert(0, left)
    names = [backbone.model.name for backbone in built]
    for number, backbone in enumerate(built):
        if names.count(backbone.model.name) > 1:  # one cut of one family at two input sizes: one name each
            backbone.model = keras.Model(
                backbone.model.inputs, backbone.model.outputs, name=f"{backbone.model.name}_{number}"
            )
    return built


def _shared_backbone(
    branches: Sequence[Branch], members: list[int], *, seed: int, number: int
) -> tuple[SharedBackbone, list[int]]:
    """The truncated backbone of the deepest of ``members`` with an output per cut below it; the members left."""
    import keras

    from pipeline.backbones import build_cut_model
    from pipeline.provenance import NETWORK, require_same

    deepest = max(members, key=lambda i: branches[i].provenance["cut_index"])
    cut = build_cut_model(branches[deepest].spec, seed=seed)
    below = {layer.name for layer in cut.model.layers}
    cuts: list[str] = []
    reading, left = [], []
    for i in members:
        branch = branches[i]
        if i != deepest and branch.provenance["cut"] not in below:  # the deepest's cut is the model's output
            left.append(i)
            continue
        # The network of the deepest cut, at this branch's cut: what this branch's heads were trained on.
        rebuilt = {**cut.provenance, "cut": branch.provenance["cut"]} if i != deepest else cut.provenance
        require_same(
            branch.provenance,
            rebuilt,
            NETWORK,
            what=f"the heads on {branch.key} were trained on features",
            fix=f"features.{branch.key} now builds another network; run `dvc repro` first",
        )
        if i != deepest and branch.spec.cut not in (None, branch.provenance["cut"]):
            raise ValueError(
                f"features.{branch.key}.cut is {branch.spec.cut!r} but its heads were trained on cut "
                f"{branch.provenance['cut']!r}; run `dvc repro` first"
            )
        reading.append(i)
        if branch.provenance["cut"] not in cuts:
            cuts.append(branch.provenance["cut"])
    model = (
        cut.model
        if len(cuts) == 1
        else keras.Model(
            cut.model.inputs,
            [cut.model.get_layer(c).output for c in cuts],
            name=f"{cut.provenance['backbone']}_shared_{number}",
        )
    )
    return SharedBackbone(cut=cut, model=model, cuts=cuts, branches=reading), left


def build_graph(
    branches: Sequence[Branch], heads: Sequence[HeadPart], *, seed: int, average: bool
) -> tuple[Any, list[SharedBackbone]]:
    """uint8 images of any size → class probabilities, and the backbones it holds.

    Parameters
    ----------
    branches : sequence of Branch
    heads : sequence of HeadPart
        One (a single feature set or a combination) or one per branch (an ensemble).
    average : bool
        Average the heads' probabilities (an ensemble); otherwise there must be one head.

    Raises
    ------
    ValueError
        If a head has no exact Keras form (nothing is exported another way: no pickle goes into a model),
        or a backbone cannot be rebuilt as trained.
    """
    import keras

    from pipeline.export.layers import ImagePreprocess, StoreRounding, apply_pooling
    from pipeline.heads.conversion import NotConvertibleError
    from pipeline.heads.keras_form import to_keras_layers

    if not average and len(heads) != 1:
        raise ValueError(f"one head reads the features unless they are averaged; received {len(heads)} heads")
    backbones = build_backbones(branches, seed=seed)
    single = len(branches) == 1
    inputs = keras.Input((None, None, 3), dtype="uint8", name="image")
    resizes = {(b.cut.provenance["input_size"], repr(b.cut.resize)) for b in backbones}
    resized: dict[tuple, Any] = {}
    pooled: list[Any] = [None] * len(branches)
    for number, backbone in enumerate(backbones):
        size = backbone.cut.provenance["input_size"]
        how = (size, repr(backbone.cut.resize))
        if how not in resized:  # the backbone's own resize: bilinear, or a preset converter's
            # predict finds them by name (resize, resize_<n>) and resizes in numpy as extraction did
            name = "resize" if len(resizes) == 1 else f"resize_{len(resized)}"
            resized[how] = backbone.cut.resize.layer(size, name=name)(inputs)
        suffix = "" if len(backbones) == 1 else f"_{number}"
        x = ImagePreprocess(backbone.cut.provenance["backbone"], name=f"preprocess{suffix}")(resized[how])
        outputs = backbone.model(x)
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        for i in backbone.branches:
            branch = branches[i]
            tail = "" if single else f"_{branch.key}"
            y = outputs[backbone.cuts.index(branch.provenance["cut"])]
            if branch.provenance["dtype"] != "float32":
                y = StoreRounding(branch.provenance["dtype"], name=f"store_rounding{tail}")(y)
            if len(y.shape) > 2:  # a map or a token summary; a vector per image has nothing to pool
                y = apply_pooling(y, branch.pooling, suffix=tail)
            pooled[i] = y
    # Named, so that predict can read the features too (the out-of-domain score, pipeline.export.ood).
    features = (
        keras.layers.Identity(name=FEATURES_LAYER)(pooled[0])
        if single
        else keras.layers.Concatenate(axis=-1, name=FEATURES_LAYER)(pooled)
    )
    probabilities = []
    for head in heads:
        x = features if single else _read(pooled, head, features, len(branches))
        try:
            layers = to_keras_layers(head.estimator, head.kind, name=head.name)
        except NotConvertibleError as error:
            reads = ", ".join(branches[i].key for i in head.branches)
            raise ValueError(
                f"the {head.kind} head on {reads} cannot be exported as one Keras graph ({error}); an "
                "exported model holds no pickle, so it is not exported another way: choose another "
                "head with export.variant"
            ) from None
        for layer in layers:
            x = layer(x)
        probabilities.append(x)
    output = probabilities[0] if not average else keras.layers.Average(name="ensemble_mean")(probabilities)
    return keras.Model(inputs, output, name="shoulders_model"), backbones


def _read(pooled: list, head: HeadPart, features: Any, n_branches: int) -> Any:
    """The input of a head: the features layer when it reads every branch in order, else its branches' columns.

    Columns are sliced from the features layer (not taken from the branches) so that the layer stays
    in the graph, which keeps only what leads to the output, for the out-of-domain score to read.
    """
    import keras

    from pipeline.export.layers import ColumnSlice

    if list(head.branches) == list(range(n_branches)):
        return features
    bounds = np.cumsum([0] + [int(p.shape[-1]) for p in pooled])
    parts = [
        ColumnSlice(int(bounds[i]), int(bounds[i + 1]), name=f"{head.name}_columns_{i}")(features)
        for i in head.branches
    ]
    return parts[0] if len(parts) == 1 else keras.layers.Concatenate(axis=-1, name=f"{head.name}_input")(parts)
