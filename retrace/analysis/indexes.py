"""gdb's symbol indexes of the debug files that ship without one (Debian's, Ubuntu's), built once for every later gdb.

Without an index gdb reads every DWARF unit of a debug file before it can
print the first frame; with ``set index-cache`` on it first looks for
``<build-id>.gdb-index`` in one directory (``<CacheDir>/gdb-index``).  The
server fills that directory itself and never from a task's gdb: after a
task has its answer, a gdb of its own, in the sandbox, shown only one
debug file of a verified package (never a core), saves that file's index
(``save gdb-index``, what ``gdb-add-index`` does), which is renamed into
place.  A debug file that needs none (it has an index, or no DWARF) gets a
``.none`` marker so it is not looked at again.

A task's gdb reads the directory read-only, and only when every debug file
the core needs has its index or marker: with one missing, gdb would spend
time building an index it cannot store.  A hostile package could ship a
debug file under another build's build-id; its index then misleads only
gdb's symbol lookup for that build-id, the way its debug file would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server import locking
from retrace_server.elf import debug_alt_link, needs_gdb_index
from retrace_server.environments.sandbox import SandboxOutputLimit, SandboxTimeout, SandboxUnavailable, run_sandboxed
from retrace_server.packaging.packages import build_id_debug_path

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Iterable, Mapping

    from retrace_server.elf import Module
    from retrace_server.packaging.cache import CachedPackage
    from retrace_server.paths import StrPath

_SUFFIX = ".gdb-index"
_NONE = ".none"
_DEBUG_DIR = "usr/lib/debug/"
# One debug file's index: gdb reads all its DWARF once (libxul-sized files take a minute).
_INDEX_SECONDS = 300
_INDEX_MEMORY = 4 << 30


def debug_files(modules: Iterable[Module], trees: Iterable[CachedPackage],
                placements: Iterable[tuple[str, Path]] = ()) -> dict[str, Path]:
    """``{build-id: debug file in the cache}`` of the mapped files whose debuginfo the task's packages (or the
    debuginfod files placed in its tree) hold."""
    wanted = {module.build_id for module in modules if module.build_id}
    found: dict[str, Path] = {}
    for tree in trees:
        for path, kind, _target, build_id in tree.manifest():
            if kind == "f" and build_id in wanted and build_id not in found and path.startswith(_DEBUG_DIR):
                found[build_id] = tree.root / path
    placed = dict(placements)
    for build_id in wanted - found.keys():
        target = placed.get(build_id_debug_path(build_id))
        if target is not None:
            found[build_id] = Path(target)
    return found


class GdbIndexes:
    def __init__(self, cache_dir: StrPath) -> None:
        self.root = self.directory(cache_dir)

    @staticmethod
    def directory(cache_dir: StrPath) -> Path:
        return Path(cache_dir) / "gdb-index"

    def _index(self, build_id: str) -> Path:
        return self.root / f"{build_id}{_SUFFIX}"

    def _marker(self, build_id: str) -> Path:
        return self.root / f"{build_id}{_NONE}"

    def missing(self, files: Mapping[str, Path]) -> dict[str, Path]:
        """The debug files of ``files`` that were never indexed nor found to need no index."""
        return {build_id: path for build_id, path in files.items()
                if not (self._index(build_id).exists() or self._marker(build_id).exists())}

    def read_commands(self, files: Mapping[str, Path]) -> list[str]:
        """gdb's ``-iex`` commands that read the indexes, when every one of ``files`` has its index (or needs
        none) and at least one exists; refreshes their last use for the cache's cleanup."""
        if not files or self.missing(files):
            return []
        indexes = [self._index(build_id) for build_id in files if self._index(build_id).exists()]
        if not indexes:
            return []
        for index in indexes:
            with contextlib.suppress(OSError):
                os.utime(index)
        return [f"set index-cache directory {self.root}", "set index-cache enabled on"]

    def build(self, files: Mapping[str, Path], log: logging.Logger, go_on: Callable[[], bool] = lambda: True) -> int:
        """Index each of ``files`` that has none yet (see the module's docstring), while ``go_on()``; how many
        were built."""
        built = 0
        for build_id, path in self.missing(files).items():
            if not go_on():
                break
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                needed = needs_gdb_index(path) and debug_alt_link(path) is None
            except OSError as err:  # evicted from the cache since the task read it: a later task indexes it
                log.info("No gdb index for the debug file of build-id %s: %s", build_id, err.strerror)
                continue
            if not needed:  # indexed already, no DWARF, or DWARF shared (dwz) with a file the sandbox does not
                self._marker(build_id).touch()  # show: its index would lack that part
                continue
            try:
                built += self._save(build_id, path)
            except (SandboxTimeout, SandboxOutputLimit, SandboxUnavailable) as err:
                log.warning("No gdb index for the debug file of build-id %s: %s", build_id, type(err).__name__)
        return built

    def _save(self, build_id: str, path: Path) -> bool:
        """gdb saves the index into a directory of its own, beside ``.building`` (locked: the cleanup's
        sweep of half-built entries leaves it alone while this runs)."""
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-"))
        building = locking.try_exclusive(tmp / ".building")
        try:
            out = tmp / "out"
            out.mkdir()
            argv = ["gdb", "-batch", "-nx", "-iex", "set auto-load off", "-iex", "set debuginfod enabled off",
                    "-ex", f"save gdb-index {out}", str(path)]
            run_sandboxed(argv, [path], writable_paths=[out], timeout=_INDEX_SECONDS, memory_bytes=_INDEX_MEMORY)
            made = out / f"{path.name}{_SUFFIX}"
            if not made.is_file() or made.stat().st_size == 0:
                self._marker(build_id).touch()  # gdb could not index it (e.g. DWARF it cannot index)
                return False
            made.chmod(0o644)
            os.replace(made, self._index(build_id))
            return True
        finally:
            if building is not None:
                os.close(building)
            shutil.rmtree(tmp, ignore_errors=True)

    def entries(self) -> list[tuple[str, float, int]]:
        """``(build-id, last use, bytes)`` of every index (for the cache's budget)."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if entry.name.endswith(_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        stat = entry.stat()
                        found.append((entry.name.removesuffix(_SUFFIX), stat.st_mtime, stat.st_size))
        return found

    def evict(self, build_id: str) -> bool:
        """Remove an index (a gdb reading it keeps its open file; a later one rebuilds it after its answer)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._index(build_id))
        return True

