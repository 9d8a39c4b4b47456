"""The configuration reference: every params.yaml key with its type, default, allowed values and meaning.

Everything on the page is read from the code when the site is built, so the
page cannot drift from what :func:`pipeline.config.load_params` accepts:

- the keys, their types and defaults: the sections' frozen dataclasses
  (:mod:`pipeline.config.schema`) and each registered head kind's settings
  (``heads.<kind>``, :data:`pipeline.heads.registry.HEAD_KINDS`), walked the way
  the loader walks them;
- the allowed values: ``Literal`` choices in the type hints, and the checks of
  each ``__post_init__`` — the ``_require``/``_one``/``_each``/``_seed`` calls
  and the ``ParamsError``/``ValueError`` messages, read from the source with
  :mod:`ast` and their f-strings evaluated against the module (a name known
  only at run time shows as ``…``);
- what a key does: the comment beside it in the project's ``params.yaml``
  (written for the people who edit that file), else the comment beside (or
  just above) its field in the code, else its entry in
  ``params_descriptions.yaml`` beside this file — which may describe only keys
  that exist and that have no comment in either place, so it cannot go stale.

Three lists of choices live in registries rather than in the schema (the
backbone families, the augmentation ops and the built-in dataset's classes);
:data:`REGISTRY_CHOICES` adds them.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pipeline.backbones.registry import FAMILIES
from pipeline.config import schema
from pipeline.extraction.augmentation import FLIP_MODES, OPS
from pipeline.heads.registry import HEAD_KINDS
from pipeline.synthetic import CLASS_NAMES

# What evaluating a check's message outside its method raises for a value known only at run time (self.x, a
# loop variable): the part is shown as "…".
UNKNOWN_AT_BUILD = (NameError, AttributeError, TypeError, KeyError, IndexError, ValueError, ImportError)
# checker function -> (position of the key argument, position of the "expected" text)
CHECKERS = {"_require": (1, 3), "_one": (0, 3), "_each": (0, 3)}
SEED_TEXT = f"an integer from 0 to {schema.MAX_SEED} (2**32 - 1)"
FEATURE_SET = "features.<key>"
ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = ROOT / "params.yaml"
DESCRIPTIONS_FILE = Path(__file__).with_name("params_descriptions.yaml")
REGISTRY_CHOICES = {
    f"{FEATURE_SET}.backbone": "a family of the backbone registry (pipeline/backbones/registry.py): "
    + ", ".join(f"`{name}`" for name in FAMILIES),
    "extract.augment.ops": "op names "
    + ", ".join(f"`{name}`" for name in OPS)
    + "; `flip` is one of "
    + ", ".join(f"`{mode}`" for mode in FLIP_MODES)
    + ", every other op a factor in (0, 1) (pipeline/extraction/augmentation.py)",
    "synthetic.classes": f"at most {len(CLASS_NAMES)}: the first `classes` of the shapes pipeline/synthetic.py draws, "
    + ", ".join(f"`{name}`" for name in CLASS_NAMES),
}


@dataclass
class Row:
    key: str
    type: str
    default: str
    allowed: list[str] = field(default_factory=list)
    what: str = ""
    nested: bool = False  # a mapping whose keys have a section of their own


@dataclass
class Section:
    key: str
    text: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    level: int = 2


def page() -> str:
    """The Markdown of ``reference/configuration.md``."""
    lines = [
        "# Configuration reference",
        "",
        (
            "Every key of `params.yaml`, generated from the code when this site is built "
            "(`pipeline/config/schema.py` and the head kinds of `pipeline/heads/registry.py`), "
            "so it always matches what the pipeline accepts. A key left out takes its default "
            "(the project's `params.yaml` sets many of them explicitly). Lists marked *swept* "
            "are grids: every value is tried. An unknown or misspelled key, a wrong type or a "
            "value out of range stops the pipeline before any image is read, with a message "
            "naming the key, the value and the allowed choices."
        ),
        "",
    ]
    for section in sections():
        lines += [f"{'#' * section.level} `{section.key}`", ""]
        if section.text:
            lines += [section.text, ""]
        if section.rows:
            lines += ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
            lines += [
                f"| `{row.key}` | {_cell(row.type)} | {_code(row.default)} | {_cell('; '.join(row.allowed))} "
                f"| {_cell(row.what)} |"
                for row in section.rows
            ]
            lines.append("")
        if section.notes:
            lines += ["Also checked:", ""] + [f"- {_cell(note)}" for note in section.notes] + [""]
    return "\n".join(lines)


def all_keys() -> list[str]:
    """Every key the page lists (``features.<key>.…`` for a feature set's keys)."""
    return [row.key for section in sections() for row in section.rows]


def sections() -> list[Section]:
    """The sections of params.yaml in the loader's order, nested sections after their parent."""
    out: list[Section] = []
    top = Section("params.yaml", "Checks that join several sections.", level=2)
    for f in dataclasses.fields(schema.Params):
        hint = typing.get_type_hints(schema.Params)[f.name]
        if typing.get_origin(hint) is dict:  # features: one entry per feature set
            value_type = typing.get_args(hint)[1]
            out += list(_walk(value_type, FEATURE_SET, _doc(value_type) + " " + _metadata_note(f), level=2))
        else:
            out += list(_walk(hint, f.name, _doc(hint), level=2))
    top.notes = _checks(schema.Params, "")[1]
    out.append(top)
    _describe(out)
    return out


def _describe(out: list[Section]) -> None:
    """Fill each row's "what it does": params.yaml's comment, else the code's, else params_descriptions.yaml."""
    from_params = params_file_comments(PARAMS_FILE)
    extra = yaml.safe_load(DESCRIPTIONS_FILE.read_text(encoding="utf-8")) or {}
    rows = {row.key: row for section in out for row in section.rows}
    unknown = sorted(set(extra) - set(rows))
    if unknown:
        raise ValueError(
            f"{DESCRIPTIONS_FILE}: no such params key {unknown[0]!r}; remove its entry "
            f"(keys: {', '.join(sorted(rows))})"
        )
    for key, row in rows.items():
        said = from_params.get(key) or row.what
        if key in extra and said:
            raise ValueError(
                f"{DESCRIPTIONS_FILE}: {key!r} is described by a comment in params.yaml or the "
                f"code now ({said!r}); remove its entry"
            )
        row.what = said or extra.get(key, "")
        if row.nested:
            said = row.what.rstrip(".")
            row.what = (said + ". " if said else "") + f"Its keys: `{key}` below."


def params_file_comments(path: Path) -> dict[str, str]:
    """The comment of each key in a params.yaml, by full key (``features.<key>.…`` for any feature set).

    A comment is the text after ``#`` on the key's line and on the comment-only
    lines right below it that start in the same column (a comment wrapped onto
    the next lines).
    """
    key_line = re.compile(r"^(\s*)([A-Za-z_][\w.+-]*):")
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last: tuple[str, int] | None = None  # (key, column of its comment)
    for line in path.read_text(encoding="utf-8").splitlines():
        match = key_line.match(line)
        column = line.find("#")
        if match is None:
            if last and line.strip().startswith("#") and column == last[1]:
                comments[last[0]] += " " + line[column + 1 :].strip()
            else:
                last = None
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        parts = [name for _, name in stack]
        if parts[0] == "features" and len(parts) > 1:
            parts[1] = "<key>"
        key = ".".join(parts)
        last = None
        if column > 0 and key not in comments:
            comments[key] = line[column + 1 :].strip()
            last = (key, column)
    return comments


def _metadata_note(f: dataclasses.Field) -> str:
    need = f.metadata.get("non_empty")
    return f"`features` must define {need}; each entry's key names its store `features/<key>.zarr`." if need else ""


def _walk(cls: type, prefix: str, text: str, *, level: int) -> Iterator[Section]:
    """One section for ``cls`` (a dataclass) at ``prefix``, then one per nested dataclass field."""
    section = Section(prefix, text.strip(), level=min(level, 4))
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    checks, notes = _checks(cls, prefix)
    section.notes = notes
    nested: list[tuple[str, type, str]] = []
    for f in dataclasses.fields(cls):
        registry = f.metadata.get("sections")
        if registry is not None:  # heads.<kind>: each registered kind's settings
            for name in registry():
                kind = HEAD_KINDS[name]
                nested.append(
                    (
                        f"{prefix}.{name}",
                        kind.grid,
                        f"The settings of head kind `{name}` (swept: " + ", ".join(f"`{s}`" for s in kind.swept) + ").",
                    )
                )
            continue
        key = f"{prefix}.{f.name}"
        hint = hints[f.name]
        inner = _dataclass_in(hint)
        row = Row(key, _type_text(hint), _default_text(f), what=comments.get(f.name, ""))
        row.allowed += checks.pop(key, [])
        if key in REGISTRY_CHOICES:
            row.allowed.append(REGISTRY_CHOICES[key])
        if inner is not None:
            row.nested = True
            nested.append((key, inner, _doc(inner)))
        section.rows.append(row)
    section.notes += [f"{key} must be {text}" for key, texts in checks.items() for text in texts]
    yield section
    for key, inner, doc in nested:
        yield from _walk(inner, key, doc, level=level + 1)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds (also through ``Optional``), if any."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return found[0] if found else None
    return None


def _doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    # Dataclasses without a docstring get their signature as __doc__: not a description.
    if doc.startswith(cls.__name__ + "("):
        return ""
    return " ".join(doc.split("\n\n")[0].split())


# --------------------------------------------------------------------------- types and defaults


def _type_text(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(f"`{_value_text(a)}`" for a in args)
    if origin in (Union, types.UnionType):
        parts = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is tuple:
        return (
            f"list of ({_type_text(args[0])})"
            if typing.get_origin(args[0]) in (Literal, Union, tuple)
            else f"list of {_type_text(args[0])}"
        )
    if origin is dict:
        return f"mapping of {_type_text(args[0])} to {_type_text(args[1])}"
    if dataclasses.is_dataclass(hint):
        return "mapping"
    return {str: "string", int: "integer", float: "number", bool: "true or false", Any: "any"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return "(its defaults)"
    return _value_text(value)


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _value_text(value: Any) -> str:
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()


# --------------------------------------------------------------------------- comments


def _field_comments(cls: type) -> dict[str, str]:
    """The comment on a field's line(s), after any comment lines right above it, by field name."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    out = {}
    body = ast.parse(source).body[0].body
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        line = node.lineno - 1
        while line >= 1 and line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        out[node.target.id] = " ".join(above + beside)
    return out


# --------------------------------------------------------------------------- checks


def _checks(cls: type, prefix: str) -> tuple[dict[str, list[str]], list[str]]:
    """What each key of ``cls`` must be, by full key; and the checks that name no single key."""
    module = sys.modules[cls.__module__]
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    by_key: dict[str, list[str]] = {}
    notes: list[str] = []
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__post_init__"):
        namespace = _namespace(function, vars(module))
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                name = node.func.id
                if name == "_seed" and node.args:
                    by_key.setdefault(_full_key(_text(node.args[0], namespace), prefix), []).append(SEED_TEXT)
                elif name in CHECKERS and len(node.args) > max(CHECKERS[name]):
                    key_at, expected_at = CHECKERS[name]
                    key = _full_key(_text(node.args[key_at], namespace), prefix)
                    by_key.setdefault(key, []).append(_text(node.args[expected_at], namespace))
            elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                message = _text(node.exc.args[0], namespace).split(". Received", 1)[0].strip()
                key, must, expected = message.partition(" must be ")
                if must and " " not in key.strip():
                    by_key.setdefault(_full_key(key, prefix), []).append(expected)
                elif message.strip("… "):  # a re-raised message known only at run time says nothing here
                    notes.append(message)
    return {key: list(dict.fromkeys(texts)) for key, texts in by_key.items()}, notes


def _full_key(key: str, prefix: str) -> str:
    key = key.split("[", 1)[0].strip()  # heads.kinds[…] -> heads.kinds
    if prefix and not key.startswith(prefix.split(".", 1)[0] + "."):
        return f"{prefix}.{key}"  # a feature set's checks name the key without features.<key>
    return key


def _namespace(function: ast.FunctionDef, module_globals: dict) -> dict:
    """The module's globals, plus the imports and simple assignments a check function makes before its checks."""
    namespace = dict(module_globals)
    for statement in function.body:
        if isinstance(statement, (ast.Import, ast.ImportFrom)) or (
            isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets)
        ):
            # A value known only at run time (from self) stays unknown: its messages show it as …
            with contextlib.suppress(*UNKNOWN_AT_BUILD):
                exec(compile(ast.Module([statement], []), "<check>", "exec"), namespace)  # noqa: S102 (our own code)
    return namespace


def _text(node: ast.AST, namespace: dict) -> str:
    """The text a message argument evaluates to; parts that need run-time values become ``…``."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v, namespace) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _text(node.left, namespace) + _text(node.right, namespace)
    expression = node.value if isinstance(node, ast.FormattedValue) else node
    try:
        value = eval(compile(ast.Expression(expression), "<check>", "eval"), namespace)
    except UNKNOWN_AT_BUILD:
        return "…"
    if isinstance(node, ast.FormattedValue) and node.conversion == ord("r"):
        return repr(value)
    return str(value)


def _code(text: str) -> str:
    return _cell(text) if text.startswith("(") else "`" + " ".join(text.split()).replace("|", "\\|") + "`"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped, ``<``/``>`` escaped outside code spans."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside `code`
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)
