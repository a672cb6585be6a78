"""MkDocs hooks (``mkdocs.yml``: ``hooks``).

* The result plots stay where the runs wrote them (``experiments/results/*.png``)
  and are added to the site under the same path, so a page links
  ``../experiments/results/NAME.png`` and no image is copied into ``docs/``.
* The generated parts (``scripts/docs_gen.py``) are checked before the build: a
  stale one is a warning, which ``mkdocs build --strict`` turns into a failure.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mkdocs.plugins.dqnx")


def _docs_gen():
    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "scripts" / "docs_gen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_pre_build(config, **kwargs):
    for path in _docs_gen().stale():
        log.warning("generated %s is stale: run python scripts/docs_gen.py", path.relative_to(ROOT))


def on_files(files, config, **kwargs):
    for png in sorted((ROOT / "experiments" / "results").rglob("*.png")):
        path = png.relative_to(ROOT).as_posix()
        files.append(File(path, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
