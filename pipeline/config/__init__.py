"""params.yaml → frozen dataclasses, and every check on parameters (shared plumbing of every stage).

``params.yaml`` is the one source of truth of the pipeline, sectioned by stage;
its sections are the dataclasses of :mod:`pipeline.config.schema`.
:func:`load_params` reads the file; :func:`parse_params` builds :class:`Params`
from a parsed mapping by walking the dataclasses' type hints: an unknown or
misspelled key, a value of the wrong type or out of range raises
:class:`ParamsError` naming the key, the value received and the allowed choices
("did you mean"), before any image is read or any backbone runs. Feature sets
are also checked against the backbone registry (without building anything),
through the check it registers (:func:`add_check`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pipeline.config.schema import (
    MAP_POOLINGS,
    POOLINGS,
    SPLITS,
    TOKEN_POOLINGS,
    AugmentParams,
    DataParams,
    DiagnoseParams,
    EvaluateParams,
    ExportParams,
    ExtractParams,
    FeatureSetParams,
    FinetuneParams,
    HeadsParams,
    NearDuplicateParams,
    Params,
    ParamsError,
    SplitRatios,
    SyntheticParams,
    add_check,
    add_default_weights,
    add_head_kind,
    did_you_mean,
    join_key,
    load_registrations,
    remove_head_kind,
    run_checks,
    suggest,
)

__all__ = [
    "DEFAULT_PARAMS",
    "MAP_POOLINGS",
    "POOLINGS",
    "SPLITS",
    "TOKEN_POOLINGS",
    "AugmentParams",
    "DataParams",
    "DiagnoseParams",
    "EvaluateParams",
    "ExportParams",
    "ExtractParams",
    "FeatureSetParams",
    "FinetuneParams",
    "HeadsParams",
    "NearDuplicateParams",
    "Params",
    "ParamsError",
    "SplitRatios",
    "SyntheticParams",
    "add_check",
    "add_default_weights",
    "add_head_kind",
    "dask_address",
    "feature_set",
    "load_params",
    "parse_params",
    "remove_head_kind",
]

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate a params.yaml file.

    Parameters
    ----------
    path : path-like
        The YAML file; sections that are missing take their defaults.

    Returns
    -------
    Params
        Frozen, validated parameters.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ParamsError
        For unknown keys, wrong types and bad values; the message names the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path} (run from the project root)")
    with path.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    # A section that must not be empty must not be missing from a params file either (parse_params
    # gives it its default, for tests and defaults).
    if isinstance(raw, dict):
        for f in dataclasses.fields(Params):
            if "non_empty" in f.metadata and f.name not in raw:
                raise ParamsError(f"{path}: missing key {f.name!r}: a params file needs {f.metadata['non_empty']}")
    params = parse_params(raw, source=str(path))
    _check_feature_sets(params)
    return params


def parse_params(raw: Any, *, source: str = "params") -> Params:
    """Build :class:`Params` from an already parsed mapping (see :func:`load_params`)."""
    load_registrations()
    try:
        return _build(Params, raw, "")
    except ParamsError as error:
        raise ParamsError(f"{source}: {error}") from None


def feature_set(params: Params, key: str) -> FeatureSetParams:
    """Look up one feature set by its key in ``features``, with suggestions if unknown."""
    if key not in params.features:
        raise ParamsError(f"unknown feature set {key!r}. {suggest(key, params.features)}")
    return params.features[key]


def _check_feature_sets(params: Params) -> None:
    for key, spec in params.features.items():
        try:
            run_checks("features", spec)
        except (ValueError, FileNotFoundError) as error:  # a weights path that is not a file, too
            raise ParamsError(f"features.{key}: {error}") from None


def _build(cls: type, raw: Any, keypath: str) -> Any:
    where = keypath or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{where} must be a mapping of keys. Received: {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if "sections" not in f.metadata}
    # A field with "sections" metadata (heads.grids) is filled from keys named after its registry's
    # entries (heads.logreg, heads.dense, ...), each parsed by that entry's own dataclass.
    sectioned = {f.name: f.metadata["sections"]() for f in dataclasses.fields(cls) if "sections" in f.metadata}
    section_of = {key: (name, entry) for name, registry in sectioned.items() for key, entry in registry.items()}
    unknown = [k for k in raw if k not in fields and k not in section_of]
    if unknown:
        key = unknown[0]
        raise ParamsError(f"unknown key {join_key(keypath, str(key))!r}. {suggest(str(key), [*fields, *section_of])}")
    missing = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in raw
    ]
    if missing:
        raise ParamsError(f"missing key {join_key(keypath, missing[0])!r} (required)")
    values = {k: _coerce(v, hints[k], join_key(keypath, k)) for k, v in raw.items() if k in fields}
    for name, f in fields.items():
        if "non_empty" in f.metadata and name in values and not values[name]:
            raise ParamsError(
                f"{join_key(keypath, name)} must define {f.metadata['non_empty']}. Received: {raw[name]!r}"
            )
    for name, registry in sectioned.items():
        values[name] = {
            key: _build(settings, raw.get(key), join_key(keypath, key)) for key, settings in registry.items()
        }
    try:
        return cls(**values)
    except ValueError as error:  # a section's own checks (e.g. a head kind's settings)
        message = str(error)
        # Most checks name their full key; those of a mapping's entries (features.<key>) cannot know it.
        if keypath and not message.startswith(keypath):
            message = f"{keypath}: {message}"
        raise ParamsError(message) from None


def _coerce(value: Any, annotation: Any, keypath: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, keypath)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, keypath)
            except ParamsError as error:
                errors.append(str(error))
        raise ParamsError(
            errors[0]
            if len(errors) == 1
            else f"{keypath} has the wrong type. Received: {value!r}; expected one of "
            + ", ".join(_describe(o) for o in options)
            + (" or null" if type(None) in args else "")
        )
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{keypath} must be one of {list(args)}. Received: {value!r}" + did_you_mean(value, args))
        return value
    if origin is tuple:
        item_type = args[0]
        items = value if isinstance(value, list) else [value]
        return tuple(_coerce(v, item_type, f"{keypath}[{i}]") for i, v in enumerate(items))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{keypath} must be a mapping. Received: {value!r}")
        return {str(k): _coerce(v, args[1], join_key(keypath, str(k))) for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{keypath} must be true or false. Received: {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{keypath} must be an integer. Received: {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{keypath} must be a number. Received: {value!r}")
        if not math.isfinite(value):
            raise ParamsError(f"{keypath} must be a finite number. Received: {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ParamsError(f"{keypath} must be a string. Received: {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {keypath}")  # a bug, not user input


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def dask_address(configured: str | None) -> str | None:
    """A Dask scheduler address: the one in params (``extract.scheduler``, ``heads.scheduler``), else
    ``$DASK_SCHEDULER_ADDRESS``, else none (work in this process)."""
    return configured or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
