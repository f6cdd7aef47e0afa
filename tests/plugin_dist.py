"""Third-party plugins "installed" for a test: a module plus a ``.dist-info`` directory
with its entry point, in a folder the test puts on ``PYTHONPATH``. importlib.metadata finds
it exactly as it finds a pip-installed distribution, so nocosup loads it through the
``nocosup`` entry-point group like any real plugin."""

from __future__ import annotations

import textwrap
from pathlib import Path


def install_plugin(site: Path, name: str, source: str, version: str = "0.1") -> Path:
    """Write module ``name`` and its distribution into ``site``; returns ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{name}.py").write_text(textwrap.dedent(source))
    dist = site / f"{name}-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[nocosup]\n{name} = {name}\n")
    return site


def install_templates(
    site: Path,
    dist: str,
    modules: dict[str, str],
    templates: dict[str, str],
    version: str = "0.1",
    summary: str = "",
) -> Path:
    """Write ``modules`` (name -> source) and a distribution ``dist`` whose entry points
    register ``templates`` (name -> ``module:attr``) in ``nocosup.templates``."""
    site.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\nSummary: {summary}\n"
    )
    lines = [f"{name} = {value}" for name, value in templates.items()]
    (info / "entry_points.txt").write_text("[nocosup.templates]\n" + "\n".join(lines) + "\n")
    return site
