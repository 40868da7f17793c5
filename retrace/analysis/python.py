"""Python frames in a crashed CPython: its own gdb extension turns ``_PyEval_EvalFrameDefault`` frames into ``py-bt``.

A crash in the interpreter (an extension module's segfault, an abort in
CPython) is, to gdb, a C stack of evaluation-loop frames; its owner needs
the Python traceback.  CPython ships a gdb extension that reads it from
the interpreter's structures: Debian's ``python3.X-dbg`` installs it as
``/usr/share/gdb/auto-load/usr/bin/python3.X-gdb.py`` (and beside
libpython), Fedora's ``python3-debuginfo`` as
``/usr/lib/debug/usr/lib64/libpython3.X.so.1.0-<version>.debug-gdb.py``.
gdb's auto-load stays off (``retrace_server.analysis.gdb``): the script is
found here, in the manifest of a package the job verified and unpacked,
and named to gdb explicitly; scripts of any other package are never run.

The extension prints each frame's source line by opening the file the
core names; in the sandbox that would be a file of the server, so
``current_line`` is replaced before anything runs (file, line and
function stay).  Each thread's ``py-bt`` is introduced by a line with a
random marker, so text a crashed program put in its own frames cannot
pose as another thread's traceback.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from retrace_server.elf import Module
    from retrace_server.packaging.cache import CachedPackage

# The interpreter as a program (/usr/bin/python3.11, python3.11d) or as the library embedders link.
_INTERPRETER = re.compile(r"^/(?:usr/)?(?:bin|lib(?:64)?(?:/[\w.+-]+)?)/(?:lib)?python3\.\d+d?(?:\.so(?:\.[\d.]+)?)?$")
# What a package may name as the extension: plain names only, since the path goes into a gdb command.
_SAFE_PATH = re.compile(r"^[\w.+/-]+$")
# The most lines kept of one thread's traceback, and of one line (a frame names a function and a file).
MAX_LINES = 2048
MAX_LINE = 512
_NO_PYTHON = "Unable to locate python frame"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclasses.dataclass(frozen=True)
class Extension:
    """CPython's gdb extension for the crashed interpreter: its path in the tree and the package holding it."""

    path: str  # absolute, as on the crashed machine
    pkgid: str  # the package holding it (its package cache entry's name)


def interpreters(modules: Iterable[Module]) -> list[str]:
    """The mapped files that are a CPython interpreter (the program or libpython)."""
    return [module.path for module in modules if _INTERPRETER.match(module.path)]


def find_extension(trees: Iterable[CachedPackage], modules: Iterable[Module]) -> Extension | None:
    """The extension a verified package ships for one of the core's interpreters, or None (no
    CPython in the core, or no debug package with its extension among the task's packages)."""
    wanted = interpreters(modules)
    if not wanted:
        return None
    patterns = [re.compile(pattern) for path in wanted for variant in _usr_variants(path) for pattern in (
        rf"^usr/share/gdb/auto-load/{re.escape(variant)}-gdb\.py$",
        rf"^usr/lib/debug/{re.escape(variant)}(?:-[\w.+~-]+)?\.debug-gdb\.py$",
    )]
    for tree in trees:
        for entry_path, kind, _target, _build_id in tree.manifest():
            if kind in "fl" and _SAFE_PATH.match(entry_path) and any(p.match(entry_path) for p in patterns):
                return Extension("/" + entry_path, tree.path.name)
    return None


def _usr_variants(path: str) -> list[str]:
    """``usr/bin/python3.11`` and ``bin/python3.11``: a package may name either on a merged-/usr release."""
    relative = path.lstrip("/")
    return [relative, relative.removeprefix("usr/")] if relative.startswith("usr/") else [relative, f"usr/{relative}"]


def load_commands(script: str) -> list[str]:
    """gdb commands that load the extension at ``script`` (as gdb sees it) with source lines left unread."""
    return [
        f"source {script}",
        'python exec("for _value in list(globals().values()):\\n'
        " if isinstance(_value, type) and 'current_line' in vars(_value): _value.current_line = lambda self: ''\")",
    ]


def traceback_commands(marker: str) -> list[str]:
    """gdb commands that print every thread's ``py-bt``, each after a ``<marker> <thread number>`` line."""
    return [
        'python exec("for _thread in sorted(gdb.selected_inferior().threads(), key=lambda t: t.num):\\n'
        " _thread.switch()\\n"
        f" print('{marker}', _thread.num, flush=True)\\n"
        " try: gdb.execute('py-bt')\\n"
        ' except gdb.error as error: print(error)")',
    ]


def new_marker() -> str:
    return f"== PYTHON {secrets.token_hex(8)} =="


def parse_tracebacks(text: str, marker: str) -> dict[int, list[str]]:
    """``{thread number: traceback lines}`` of the threads that run Python, from the output after ``marker``."""
    tracebacks: dict[int, list[str]] = {}
    heading = re.compile(rf"^{re.escape(marker)} (\d+)$", re.M)
    found = list(heading.finditer(text))
    for match, following in zip(found, [*found[1:], None]):
        section = text[match.end():following.start() if following else len(text)]
        lines = [_CONTROL.sub("?", line.rstrip())[:MAX_LINE] for line in section.splitlines()]
        lines = [line for line in lines if line.strip()]
        if lines and not any(_NO_PYTHON in line for line in lines) and any(line.startswith("  ") for line in lines):
            tracebacks[int(match[1])] = lines[:MAX_LINES]
    return tracebacks


_THREAD = re.compile(r"^Thread (\d+) \(", re.M)


def with_tracebacks(threads: str, tracebacks: dict[int, list[str]]) -> str:
    """gdb's ``thread apply all backtrace`` output with each thread's Python traceback after its C frames."""
    if not tracebacks:
        return threads
    pieces: list[str] = []
    position = 0
    for match in _THREAD.finditer(threads):
        lines = tracebacks.get(int(match[1]))
        if lines is None:
            continue
        end = threads.find("\n\nThread ", match.end())
        end = len(threads.rstrip("\n")) if end < 0 else end
        pieces += [threads[position:end], "\n", _as_block(lines)]
        position = end
    return "".join([*pieces, threads[position:]])


def _as_block(lines: Sequence[str]) -> str:
    """A traceback under a thread: gdb's "Traceback (most recent call first):" named as Python's."""
    return "\n".join(line.replace("Traceback (most recent call first):", "Python traceback (most recent call first):")
                     for line in lines)


def results_text(tracebacks: dict[int, list[str]]) -> str:
    """The task's ``py-bt`` result: every Python thread's traceback, the crashed thread (1) first."""
    return "".join(f"Thread {number} (py-bt):\n" + "\n".join(lines) + "\n\n"
                   for number, lines in sorted(tracebacks.items()))
