"""Config imports nothing above it: the registries register what params validation needs from them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.config import ParamsError, parse_params, schema


def _pipeline_modules_after(code: str) -> list[str]:
    listing = "import sys; print(' '.join(sorted(m for m in sys.modules if m.startswith('pipeline'))))"
    result = subprocess.run(
        [sys.executable, "-c", f"{code}; {listing}"], capture_output=True, text=True, check=True, timeout=120
    )
    return result.stdout.split()


def test_importing_config_imports_no_stage_registry_or_backbone():
    assert _pipeline_modules_after("import pipeline.config") == [
        "pipeline",
        "pipeline.config",
        "pipeline.config.schema",
    ]


def test_parsing_params_loads_the_registering_modules_named_as_entry_points():
    loaded = _pipeline_modules_after("import pipeline.config as c; c.parse_params({})")
    for module in ("pipeline.heads.registry", "pipeline.backbones.registry", "pipeline.extraction.augmentation"):
        assert module in loaded
    assert "pipeline.synthetic" in loaded


def test_each_registered_check_names_the_bad_value():
    # heads.registry: the kinds and each kind's section
    with pytest.raises(ParamsError, match=r"heads.kinds\[0\] must be one of \['logreg'.*Received: 'logrg'"):
        parse_params({"heads": {"kinds": ["logrg"]}})
    with pytest.raises(ParamsError, match="heads.logreg.C must be numbers > 0"):
        parse_params({"heads": {"logreg": {"C": [-1.0]}}})
    # synthetic: the classes it can draw
    with pytest.raises(ParamsError, match=r"synthetic.classes must be an integer from 2 to 8 \(ring, .*Received: 9"):
        parse_params({"synthetic": {"classes": 9}})
    # extraction.augmentation: the ops
    with pytest.raises(ParamsError, match="unknown op 'blur'. Valid ops: flip, rotation"):
        parse_params({"extract": {"augment": {"ops": {"blur": 0.1}}}})
    # backbones.registry: a family's default weights (hub's is its preset)
    features = parse_params({"features": {"a": {"backbone": "hub", "preset": "x"}, "b": {"backbone": "mobilenet"}}})
    assert (features.features["a"].weights, features.features["b"].weights) == ("preset", "imagenet")


def test_a_missing_entry_point_group_says_how_to_install(monkeypatch):
    monkeypatch.setattr(schema, "_loaded", False)
    monkeypatch.setattr(schema, "ENTRY_POINT_GROUP", "shoulders.no-such-group")
    with pytest.raises(RuntimeError, match=r"no modules registered .*'shoulders.no-such-group'.*pip install -e \."):
        schema.load_registrations()
