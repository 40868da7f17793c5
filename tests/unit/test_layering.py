"""The layers of docs/architecture.md hold: no module imports from a layer above its own, and no service
imports another service."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
# The repository's folders and the names they have once installed (pyproject.toml maps them).
FOLDERS = {"retrace": "", "worker": "worker", "wsgi": "wsgi", "cleanup": "cleanup", "reposync": "reposync",
           "client": "client"}


def layers():
    """``{part: layer number}`` from the table in docs/architecture.md."""
    found = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        row = re.match(r"\| (\d+) [a-z ]+ \| (.*?) \|", line)
        if row:
            for part in re.findall(r"`([a-z_]+)`", row[2]):
                found[part] = int(row[1])
    return found


def part_of(module):
    """``retrace_server.packaging.cache`` -> ``packaging``; ``retrace_server.errors`` -> ``errors``."""
    return module.split(".")[1]


def modules():
    """``(dotted module name, path)`` of every module of the library and the services."""
    for folder, installed in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = [installed] if installed else []
            parts += [part for part in relative if part != "__init__"]
            yield ".".join(["retrace_server", *parts]), path


def imported(path):
    """The ``retrace_server`` modules (or names in them) ``path`` imports, with their line numbers."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("retrace_server"):
            if node.module == "retrace_server":
                for alias in node.names:
                    yield f"retrace_server.{alias.name}", node.lineno
            else:
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("retrace_server."):
                    yield alias.name, node.lineno


def test_every_part_of_the_library_and_every_service_has_a_layer():
    table = layers()
    parts = {part_of(module) for module, _ in modules() if module.count(".") >= 1}
    parts.discard("__version__")
    missing = sorted(parts - set(table) - {"add_version_argument", "installed_commands"})
    assert not missing, f"docs/architecture.md gives no layer to {missing}"


def test_no_module_imports_from_a_layer_above_its_own_and_no_service_from_another():
    table = layers()
    services = {part for part, layer in table.items() if layer == max(table.values())}
    upward = []
    for module, path in modules():
        if module == "retrace_server":
            continue
        own = part_of(module)
        for target, line in imported(path):
            other = part_of(target)
            if other not in table or other == own:
                continue
            if table[other] > table[own] or (own in services and other in services):
                upward.append(f"{path.relative_to(ROOT)}:{line} ({own}, layer {table[own]}) imports {target} "
                              f"(layer {table[other]})")
    assert not upward, "imports against the layers of docs/architecture.md:\n" + "\n".join(upward)
