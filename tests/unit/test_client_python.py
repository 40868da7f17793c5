"""The client runs on the oldest Python setup.py claims (3.9: RHEL 9's python3), whatever the server needs."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("client", "retrace")
VERMIN = Path(sys.executable).with_name("vermin")


def claimed_minimum():
    return re.search(r'python_requires=">=(\d+\.\d+)"', (ROOT / "setup.py").read_text())[1]


def client_modules():
    """The client's modules and every first-party module they import, transitively."""
    pending, found = sorted((ROOT / "client").glob("*.py")), set()
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                if name.split(".")[0] in FIRST_PARTY:
                    module = ROOT.joinpath(*name.split("."))
                    pending += [candidate for candidate in (module.with_suffix(".py"), module / "__init__.py")
                                if candidate.is_file()]
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
        assert postponed or not unions, f"{path.relative_to(ROOT)}:{unions[0]} needs from __future__ import annotations"


def test_the_list_of_client_modules_follows_imports():
    names = {str(path.relative_to(ROOT)) for path in client_modules()}
    assert {"client/cli.py", "retrace/analysis/coredump.py", "retrace/packaging/release.py"} <= names
