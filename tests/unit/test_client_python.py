"""The client runs on the oldest Python pyproject.toml claims (3.9: RHEL 9's python3), whatever the server
needs."""

import ast
import re
import subprocess
import sys
import tomllib
from importlib.util import find_spec
from pathlib import Path

import retrace_server

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(retrace_server.__file__).parent
VERMIN = Path(sys.executable).with_name("vermin")


def claimed_minimum():
    with open(ROOT / "pyproject.toml", "rb") as project:
        return re.fullmatch(r">=(\d+\.\d+)", tomllib.load(project)["project"]["requires-python"])[1]


def client_modules():
    """The client's modules and every first-party module they import, transitively (as installed)."""
    pending, found = sorted((PACKAGE / "client").glob("*.py")), set()
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                if name.split(".")[0] == "retrace_server":
                    pending.append(Path(find_spec(name).origin))
    return sorted(found)


def test_the_client_and_what_it_imports_use_nothing_newer_than_the_claimed_python():
    minimum = claimed_minimum()
    # Annotations are left to the next test: vermin's union-types check cannot tell postponed ones apart.
    ran = subprocess.run([str(VERMIN), "--no-tips", "--violations", f"-t={minimum}-",
                          *map(str, client_modules())], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_annotations_written_x_or_y_are_not_evaluated_where_the_client_imports_them():
    """``str | None`` in a dataclass is evaluated at class creation before Python 3.10, unless the module
    postpones annotations."""
    for path in client_modules():
        tree = ast.parse(path.read_text())
        postponed = any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
                        and any(alias.name == "annotations" for alias in node.names) for node in tree.body)
        unions = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)
                  and any(isinstance(part, ast.BinOp) and isinstance(part.op, ast.BitOr)
                          for part in ast.walk(node.annotation))]
        assert postponed or not unions, f"{path.relative_to(PACKAGE)}:{unions[0]} needs from __future__ import annotations"


def test_the_list_of_client_modules_follows_imports():
    names = {str(path.relative_to(PACKAGE)) for path in client_modules()}
    assert {"client/cli.py", "elf.py", "packaging/release.py", "__init__.py"} <= names
