"""The documentation: its generated parts are current, and its examples run.

The flag reference, the API pages and the results tables are made by
``scripts/docs_gen.py`` from ``dqnx.Config``, ``dqnx.__all__`` and the records under
``experiments/results/``; the library guide's examples are the files in
``docs/examples/``, run here at tiny sizes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import docs_gen
import numpy as np
import pytest

from dqnx.config import Config

ROOT = Path(__file__).resolve().parents[1]


def test_generated_docs_are_current():
    stale = [str(p.relative_to(ROOT)) for p in docs_gen.stale()]
    assert not stale, f"run python scripts/docs_gen.py: {stale}"


def test_every_flag_and_public_module_is_documented():
    flags = (ROOT / "docs" / "reference" / "flags.md").read_text()
    for field in dataclasses.fields(Config):
        assert f"| `--{field.name}`" in flags
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in docs_gen.api_modules():
        assert f"::: dqnx.{name}\n" in (ROOT / "docs" / "api" / f"{name}.md").read_text()
        assert f"api/{name}.md" in nav


def test_a_record_change_makes_the_tables_stale(tmp_path, monkeypatch):
    """The check compares numbers with their records: a changed record is caught."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(docs_gen.RESULTS, results, ignore=shutil.ignore_patterns("*.png"))
    summary = results / "breakout_host_fixed" / "bo_host_0" / "summary.json"
    record = json.loads(summary.read_text())
    record["eval_return_per_seed"] = [19.6]
    summary.write_text(json.dumps(record))
    before = docs_gen.block_host_breakout()
    monkeypatch.setattr(docs_gen, "RESULTS", results)
    assert "19.6" in docs_gen.block_host_breakout() != before
    assert ROOT / "docs" / "results" / "host-actors.md" in docs_gen.stale()


def _example(name: str):
    path = ROOT / "docs" / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_network_example():
    returns = _example("custom_network").main(total_steps=2_000, chunks=1)
    assert returns.shape == (2, 10) and ((returns >= 1) & (returns <= 500)).all()


@pytest.mark.parametrize("name", ["hand_written_loop", "prioritized_nstep"])
def test_loop_examples(name):
    losses, returns = _example(name).main(num_iterations=40, num_envs=4)
    assert losses.shape == (40,) and np.isfinite(np.asarray(losses)).all()
    assert returns.shape == (5,) and ((returns >= 1) & (returns <= 500)).all()


def test_readme_example_is_the_example_file():
    """README's library example is docs/examples/custom_network.py, word for word."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- example: (\S+) -->\n```python\n(.*?)```", readme, re.S)
    assert m, "README lost its library example"
    assert m.group(2) == (ROOT / m.group(1)).read_text()


def test_readme_links_point_at_files():
    """README's relative links (into docs/) name files that exist."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", readme)
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing
