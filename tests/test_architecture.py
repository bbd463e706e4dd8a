"""The house rules a maintainer relies on when changing the package (issue 21), checked on the
source itself: one concern per file (no file over 600 lines), CLI commands that only parse, call
and render (no command function over 60 lines), and the import contract that keeps zarr inside the
store package covering every module of io."""

from __future__ import annotations

import ast
import inspect
import tomllib
from pathlib import Path

import liftvid
from liftvid.cli.app import app

PACKAGE = Path(liftvid.__file__).parent
ROOT = PACKAGE.parent
MAX_FILE_LINES = 600
MAX_COMMAND_LINES = 60


def test_no_file_of_the_package_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES}
    assert long == {}


def _commands(group) -> list:
    found = []
    for command in group.registered_commands:
        found.append(command.callback)
    for sub in group.registered_groups:
        found += _commands(sub.typer_instance)
    return found


def test_no_cli_command_function_is_over_60_lines():
    commands = _commands(app)
    assert len(commands) >= 15  # extract, info, …, eval and viz subcommands
    lengths = {}
    for callback in commands:
        source = inspect.getsource(callback)
        node = ast.parse(source.lstrip()).body[0]
        lengths[callback.__name__] = node.end_lineno - node.lineno + 1 - len(node.decorator_list)
    assert {name: n for name, n in lengths.items() if n > MAX_COMMAND_LINES} == {}


def test_the_zarr_contract_covers_every_io_module_outside_the_store():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c.get("forbidden_modules") == ["zarr"])
    io_modules = {f"liftvid.io.{p.stem}" for p in (PACKAGE / "io").glob("*.py") if p.stem != "__init__"}
    assert io_modules - set(contract["source_modules"]) == set()


def test_no_test_module_imports_another():
    """Shared helpers live in tests/helpers.py (and fixtures in conftest.py), so that moving one
    test file never breaks another."""
    offenders = []
    for path in Path(__file__).parent.glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and (
                    node.module.startswith("test_") or node.module.startswith("tests.test_")):
                offenders.append(f"{path.name}: from {node.module}")
    assert offenders == []
