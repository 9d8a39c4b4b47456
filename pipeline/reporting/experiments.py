"""Experiments side by side, for a terminal: what each changed and how every feature set scored, in <= 120 columns.

``shoulders exps`` prints :func:`experiments_lines` of :func:`experiment_rows` of
``dvc exp show --json``: one row per baseline commit and per experiment on it,
with the params that differ from its baseline (``heads.svm_rbf.C`` shown as
``svm_rbf.C``; a long path by its file name), the chosen model and its
validation score (``metrics.json``) and each feature set's best validation
score (``reports/best/<feature set>.json``, the evaluate stage's ``--best``).
``dvc exp show`` itself puts every param and metric in a column of its own,
which a sweep across feature sets makes too wide to read.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

#: The widest table printed, whatever the terminal.
MAX_WIDTH = 120
#: The headline metrics file and the folder of each feature set's best (as dvc.yaml declares them).
CHOSEN_METRICS = "metrics.json"
BEST_METRICS = "reports/best/"
#: A string param longer than this that looks like a path is shown by its last part.
LONG_VALUE = 24
_GAP = " "
#: The narrowest the chosen model's column and the changed params' column get before the params move below.
_CHOSEN_MIN, _PARAMS_MIN = 14, 24


def experiment_rows(shown: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One row per baseline commit and per experiment of ``dvc exp show --json`` (the workspace left out).

    Parameters
    ----------
    shown : sequence of mapping
        ``dvc exp show --json`` as parsed: one entry per commit (``rev``, ``name``, ``data`` with ``params``
        and ``metrics`` by file), each with its ``experiments`` (ranges of ``revs``, and their ``executor``).

    Returns
    -------
    list of dict
        ``name``, ``baseline`` (bool), ``state`` (``""``, or ``queued``, ``running``, ``failed``),
        ``changed`` (dotted param key → value, against the baseline; the baseline's own is empty),
        ``chosen`` (``<feature set>/<variant>`` or None), ``val`` (its validation accuracy or None) and
        ``feature_sets`` (feature set → its best head's validation accuracy).
    """
    rows = []
    for commit in shown:
        if commit.get("rev") == "workspace":
            continue
        base = _params(commit.get("data"))
        rows.append(_row(commit.get("name") or str(commit.get("rev", ""))[:7], commit, {}, baseline=True))
        for exp_range in commit.get("experiments") or []:
            executor = exp_range.get("executor") or {}
            state = "" if executor.get("state") in (None, "success") else executor["state"]
            for exp in exp_range.get("revs") or []:
                name = exp.get("name") or exp_range.get("name") or str(exp.get("rev", ""))[:7]
                params = _params(exp.get("data"))
                changed = {
                    key: params.get(key) for key in sorted(set(params) | set(base)) if params.get(key) != base.get(key)
                }
                rows.append(
                    _row(name, exp, changed, baseline=False, state=state or ("failed" if exp.get("error") else ""))
                )
    return rows


def _row(name: str, entry: Mapping[str, Any], changed: dict, *, baseline: bool, state: str = "") -> dict:
    metrics = {
        path: (result or {}).get("data") or {}
        for path, result in ((entry.get("data") or {}).get("metrics") or {}).items()
    }
    chosen = metrics.get(CHOSEN_METRICS, {})
    best = {
        path[len(BEST_METRICS) :].removesuffix(".json"): values.get("val_acc")
        for path, values in sorted(metrics.items())
        if path.startswith(BEST_METRICS)
    }
    return {
        "name": name,
        "baseline": baseline,
        "state": state,
        "changed": changed,
        "chosen": chosen.get("head"),
        "val": chosen.get("val_acc"),
        "feature_sets": best,
    }


def _params(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every param of every params file, as dotted keys (``heads.svm_rbf.C``) to values; lists stay values."""
    flat: dict[str, Any] = {}
    for result in ((data or {}).get("params") or {}).values():
        _flatten((result or {}).get("data") or {}, "", flat)
    return flat


def _flatten(tree: Mapping[str, Any], prefix: str, into: dict[str, Any]) -> None:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            _flatten(value, f"{prefix}{key}.", into)
        else:
            into[f"{prefix}{key}"] = value


def short_key(key: str, others: Iterable[str] = ()) -> str:
    """A param key by its last two parts (``heads.svm_rbf.C`` → ``svm_rbf.C``), whole if that is ambiguous."""
    short = ".".join(key.split(".")[-2:])
    clash = any(other != key and ".".join(other.split(".")[-2:]) == short for other in others)
    return key if clash else short


def short_value(value: Any) -> str:
    """A param value in a few characters: YAML-like scalars, lists without spaces, a long path by its last part."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(short_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{short_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if len(text) > LONG_VALUE and ("/" in text or "\\" in text):
        return PurePosixPath(text.replace("\\", "/")).name or text
    return text


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _headers(names: Sequence[str], width: int) -> list[str]:
    """Column headers of at most ``width`` characters, distinct (a numbered suffix where two cuts agree)."""
    headers: list[str] = []
    for name in names:
        header = _cut(name, width)
        number = 2
        while header in headers:
            header = _cut(name, width - len(str(number))) + str(number)
            number += 1
        headers.append(header)
    return headers


def experiments_lines(rows: Sequence[Mapping[str, Any]], *, width: int = MAX_WIDTH) -> list[str]:
    """The table of :func:`experiment_rows`: every line at most ``min(width, MAX_WIDTH)`` characters.

    Columns: the experiment, the chosen model, its validation accuracy, each feature set's best validation
    accuracy, and the changed params (wrapped under their column; on lines of their own below the row when
    the numbers leave them too little room). A feature set's name longer than its column is cut in the header
    and spelled out on a legend line.
    """
    width = max(40, min(width, MAX_WIDTH))
    if not rows:
        return ["no experiments: `dvc exp run` makes one (`dvc exp show` lists them)"]
    feature_sets = sorted({key for row in rows for key in row["feature_sets"]})
    name_w = min(max(len("experiment"), *(len(r["name"]) for r in rows)), 18)
    chosen_full = min(max(len("chosen"), *(len(_chosen(r)) for r in rows)), 30)

    def before_params(chosen: int, columns: dict[str, int]) -> int:
        """Width of the experiment, chosen, val and feature set columns, with their gaps."""
        return name_w + 1 + chosen + 1 + 5 + sum(w + 1 for w in columns.values())

    # Headed by their names (cut to 9) while they fit, else numbered (fs1, fs2, ...) and named on the legend line.
    fs_width = {key: min(max(len(key), 5), 9) for key in feature_sets}
    headers = _headers(feature_sets, 9)
    if before_params(_CHOSEN_MIN, fs_width) > width:
        fs_width = dict.fromkeys(feature_sets, 5)
        headers = [f"fs{i}" for i in range(1, len(feature_sets) + 1)]
    # The changed params on the row when at least _PARAMS_MIN columns are left (the chosen model's name cut
    # for them down to _CHOSEN_MIN), else on lines of their own and the chosen model's name whole.
    room = width - before_params(0, fs_width) - 1
    inline = room - _CHOSEN_MIN >= _PARAMS_MIN
    chosen_w = min(chosen_full, room - _PARAMS_MIN) if inline else max(_CHOSEN_MIN, min(chosen_full, room + 1))
    head = [_cut("experiment", name_w).ljust(name_w), "chosen".ljust(chosen_w), "  val"]
    head += [h.rjust(fs_width[k]) for h, k in zip(headers, feature_sets)]
    if inline:
        head.append("changed params")
    lines = [_GAP.join(head).rstrip()]
    legend = [f"{h}={k}" for h, k in zip(headers, feature_sets) if h != k]
    keys = {key for row in rows for key in row["changed"]}
    for row in rows:
        cells = [
            _cut(row["name"], name_w).ljust(name_w),
            _cut(_chosen(row), chosen_w).ljust(chosen_w),
            _number(row["val"]).rjust(5),
        ]
        cells += [_number(row["feature_sets"].get(k)).rjust(fs_width[k]) for k in feature_sets]
        changed = (
            "(baseline)"
            if row["baseline"]
            else " ".join(f"{short_key(k, keys)}={short_value(v)}" for k, v in row["changed"].items()) or "(none)"
        )
        if inline:
            indent = len(_GAP.join(cells)) + len(_GAP)
            wrapped = textwrap.wrap(changed, width - indent, break_on_hyphens=False) or [""]
            lines.append(_GAP.join([*cells, wrapped[0]]).rstrip())
            lines += [" " * indent + more for more in wrapped[1:]]
        else:
            lines.append(_GAP.join(cells).rstrip())
            lines += textwrap.wrap(
                changed, width, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False
            )
    if legend:
        lines += textwrap.wrap("columns: " + ", ".join(legend), width, subsequent_indent="  ")
    return [_cut(line, width) for line in lines]


def _chosen(row: Mapping[str, Any]) -> str:
    return row["state"] or row["chosen"] or "-"


def _number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"
