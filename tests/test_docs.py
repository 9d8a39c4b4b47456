"""The manual (docs/, mkdocs.yml): built strictly, its generated reference complete, one page seen in a browser."""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from conftest import REPO

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
)
# Material prints a banner about MkDocs 2.0 on every build; it says nothing about this site.
QUIET = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of ``config`` into ``site``, run from the config's folder (snippets are read
    relative to it)."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        env=QUIET,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The project's site, built once for the tests of this module."""
    out = tmp_path_factory.mktemp("site")
    result = mkdocs_build(REPO / "mkdocs.yml", out)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def _nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_of_the_navigation_is_built(site):
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    pages = _nav_pages(nav)
    assert "reference/configuration.md" in pages and "examples/explore_features.ipynb" in pages
    for page in pages:
        built = site / ("index.html" if page == "index.md" else f"{page.rsplit('.', 1)[0]}/index.html")
        assert built.is_file(), f"{page} was not built ({built})"
    # The screenshots the getting-started page shows are in the site.
    started = (site / "getting-started/index.html").read_text(encoding="utf-8")
    for name in ("plots_page_top", "plots_page_search", "plots_page_map"):
        assert f"images/{name}.png" in started and (site / f"images/{name}.png").is_file()


def test_the_api_page_documents_the_feature_store_functions(site):
    api = (site / "reference/api/index.html").read_text(encoding="utf-8")
    for name in (
        "pipeline.store.reader.open_feature_set",
        "pipeline.store.reader.list_feature_sets",
        "pipeline.store.reader.FeatureSet",
        "pipeline.export.predict_command.load_model",
    ):
        assert f'id="{name}"' in api, f"no API entry for {name}"
    # The docstrings themselves, not only the headings: a parameter of open_feature_set and its meaning.
    assert "as_dask" in api and "joined from the manifest by content hash" in api


def test_the_cli_page_is_the_commands_own_help(site):
    from pipeline.cli.shoulders import build_parser

    cli = html.unescape((site / "reference/cli/index.html").read_text(encoding="utf-8"))
    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in subcommands:
        assert f"shoulders {name}" in cli
    assert "--top-k" in cli and "exit status: 0 every image classified" in cli  # predict's own parser


def test_the_readme_is_a_short_front_door_into_the_manual():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150, "README.md is the front door: 150 lines at most; the rest is in docs/"
    links = [
        target.split("#")[0]
        for target in re.findall(r"\]\(([^)\s]+)\)", readme)
        if "://" not in target and not target.startswith("#")
    ]
    broken = [link for link in links if not (REPO / link).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    guides = next(entry["Guides"] for entry in nav if isinstance(entry, dict) and "Guides" in entry)
    wanted = ["docs/getting-started.md"] + [f"docs/{page}" for page in _nav_pages(guides)]
    assert not set(wanted) - set(links), f"README.md does not link to {sorted(set(wanted) - set(links))}"
    for command in ('pip install -e ".[test]" && dvc repro', "python -m pytest"):
        assert command in readme


def _schema_keys(cls: type, prefix: str) -> list[str]:
    """Every key a params.yaml may hold, walked from the schema's dataclasses independently of the docs hook."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "sections" in f.metadata:
            for name, settings in f.metadata["sections"]().items():
                keys += _schema_keys(settings, f"{prefix}{name}.")
            continue
        hint = hints[f.name]
        inner = [a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)]
        if typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            keys += _schema_keys(typing.get_args(hint)[1], f"{prefix}{f.name}.<key>.")
            continue
        if prefix:
            keys.append(prefix + f.name)
        if inner:
            keys += _schema_keys(inner[0], f"{prefix}{f.name}.")
    return keys


def _params_file_keys(mapping: dict, leaves: set[str], prefix: str = "") -> list[str]:
    """The leaf keys of a parsed params.yaml; a mapping value is a leaf where the schema has that key
    (extract.augment.ops, heads.control_values), else its keys are walked."""
    keys = []
    for key, value in mapping.items():
        path = "features.<key>" if prefix == "features." else f"{prefix}{key}"
        if isinstance(value, dict) and path not in leaves:
            keys += _params_file_keys(value, leaves, path + ".")
        else:
            keys.append(path)
    return keys


def test_the_configuration_reference_lists_every_key_with_type_default_and_range(site):
    from pipeline.config import schema

    page = html.unescape((site / "reference/configuration/index.html").read_text(encoding="utf-8"))
    rows = {}
    for row in page.split("<tr>")[1:]:
        cells = [c.split("</td>")[0] for c in row.split("<td>")[1:]]
        if cells and cells[0].startswith("<code>"):
            rows[cells[0].removeprefix("<code>").removesuffix("</code>")] = cells
    expected = set(_schema_keys(schema.Params, ""))
    in_params_file = set(
        _params_file_keys(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")), expected)
    )
    assert in_params_file <= expected, in_params_file - expected  # the walk sees every key the project sets
    assert not expected - set(rows), f"keys missing from the reference: {sorted(expected - set(rows))}"
    for key in expected:
        _, type_cell, default_cell, _, what_cell = rows[key]
        assert type_cell.strip() and default_cell.strip() and what_cell.strip(), (key, rows[key])
    # Ranges and choices come from the checks in the code: a few that a reader looks up.
    assert "an integer from 0 to 4294967295" in rows["data.seed"][3]
    assert "numbers in [0, 1)" in rows["heads.dense.dropout"][3]
    assert "<code>auto</code> or <code>openvino</code>" in rows["extract.runtime"][1].replace(
        "<code>tensorflow</code> or ", ""
    )
    assert "<code>efficientnet_lite0</code>" in rows["features.<key>.backbone"][3]


def _load_hook_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "docs/hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    sys.path.insert(0, str(REPO / "docs/hooks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "docs/hooks"))
    return module


def test_a_description_of_a_key_that_does_not_exist_stops_the_reference(tmp_path, monkeypatch):
    reference = _load_hook_module("params_reference")
    stale = tmp_path / "params_descriptions.yaml"
    stale.write_text("heads.dense.dropuot: a key that was renamed\n", encoding="utf-8")
    monkeypatch.setattr(reference, "DESCRIPTIONS_FILE", stale)
    with pytest.raises(ValueError, match=r"no such params key 'heads.dense.dropuot'"):
        reference.page()


def test_the_projects_strict_settings_fail_a_broken_link_and_a_broken_anchor(tmp_path):
    """The project's mkdocs.yml (its validation and Markdown settings) on two tiny pages, without the plugins."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    small = {key: config[key] for key in ("site_name", "validation", "markdown_extensions")}
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/index.md").write_text("# Home\n\n[ok](other.md#a-section)\n", encoding="utf-8")
    (tmp_path / "docs/other.md").write_text("# Other\n\n## A section\n", encoding="utf-8")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(small), encoding="utf-8")
    assert mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site").returncode == 0
    for broken in ("[gone](missing.md)", "[gone](other.md#no-such-section)"):
        (tmp_path / "docs/index.md").write_text(f"# Home\n\n{broken}\n", encoding="utf-8")
        result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
        assert result.returncode != 0 and broken.split("(")[1].rstrip(")").split("#")[-1] in result.stderr, (
            result.stderr
        )


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_the_getting_started_page_renders_in_a_browser(site, tmp_path):
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (site / "getting-started/index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    dom = result.stdout
    assert "<title>Getting started - shoulders</title>" in dom, dom[:2000]
    body = dom.split("<body", 1)[1]
    assert 'id="getting-started"' in body and "Install and run" in body
    assert "dvc repro" in body and "plots_page_top.png" in body
    # The theme's script ran (offline, from the file): it wraps every table to scroll (absent from the HTML built).
    assert "md-typeset__scrollwrap" in body
    assert "md-typeset__scrollwrap" not in (site / "getting-started/index.html").read_text(encoding="utf-8")
