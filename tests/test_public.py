"""The public face (issue 11): dir(liftvid) lists what users call, and the notebook and workflows
import nothing else."""

import ast
import json
from pathlib import Path

import liftvid

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves():
    names = dir(liftvid)
    assert {"open_store", "Backbone", "LiFT", "propagate_labels", "track_points", "extract_videos", "viz"} <= set(names)
    for name in names:
        assert getattr(liftvid, name) is not None, name


def _imports(source: str):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("liftvid"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("liftvid"):
                    yield a.name, []


def test_the_notebook_and_workflows_import_only_public_names():
    sources = {p.name: p.read_text() for p in (ROOT / "workflows").glob("*.py")}
    notebook = json.loads((ROOT / "workflows" / "explore_features.ipynb").read_text())
    sources["explore_features.ipynb"] = "\n".join("".join(c["source"]) for c in notebook["cells"]
                                                   if c["cell_type"] == "code")
    public = set(dir(liftvid))
    for name, source in sources.items():
        for module, names in _imports(source):
            if module == "liftvid.cli":  # the benchmark workflow runs the CLI's own bench command
                continue
            assert module == "liftvid", f"{name}: imports {module}"
            assert set(names) <= public, f"{name}: {set(names) - public} not public"
