"""MkDocs hook: the pages generated from the code when the site is built, so they cannot drift from it.

- ``reference/configuration.md``: every params.yaml key with its type, default,
  allowed values and meaning (:mod:`params_reference`);
- ``reference/cli.md``: the ``shoulders`` command's help (:mod:`cli_reference`).

Listed under ``hooks:`` in mkdocs.yml; MkDocs puts this folder on ``sys.path``
while it loads the hook, so the two generators import as siblings.
"""

from __future__ import annotations

import cli_reference
import params_reference
from mkdocs.structure.files import File

PAGES = {
    "reference/configuration.md": params_reference.page,
    "reference/cli.md": cli_reference.page,
}


def on_files(files, config):
    """Add the generated pages to the site's files (before the navigation is built)."""
    for uri, render in PAGES.items():
        files.append(File.generated(config, uri, content=render()))
    return files
