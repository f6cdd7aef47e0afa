"""The template packages under ``examples/``, installed for the tests without pip.

Each example's entry points are read from its own ``pyproject.toml`` and written into a
``.dist-info`` folder (as pip would), next to the example's source folder on the path, so
importlib.metadata finds its templates exactly as when it is pip-installed, and the test
run needs neither the network nor a change to the virtualenv. That the packages also
build as real wheels with those entry points is checked in tests/test_examples.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.servers import ROOT

EXAMPLES = ROOT / "examples"
NAMES = ("fastapi-notes", "litestar-notes", "datasette-app")


def install_examples(site: Path) -> list[Path]:
    """Write a distribution for every example into ``site``; the folders to put on the
    path (``site`` and each example's source folder)."""
    site.mkdir(parents=True, exist_ok=True)
    paths = [site]
    for name in NAMES:
        folder = EXAMPLES / name
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
            f"Summary: {project['description']}\n"
        )
        lines = []
        for group, entries in project["entry-points"].items():
            lines.append(f"[{group}]")
            lines += [f"{key} = {value}" for key, value in entries.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        paths.append(folder)
    return paths
