"""``RetraceEnvironment = sysroot``: the host's gdb on a tree of the crashed machine's files from the cache.

The tree is made of directories and symlinks: a regular file is a symlink to its copy in the package cache,
and a directory one package brings whole is one symlink to the package's own (``assemble_sysroot``), so
assembling a root costs a ``symlink`` per file or folded directory and no data is copied.
Tasks whose crashes need the same files share one tree (``SharedTrees``):
a program that crashes again on a release costs its tree once, not once
per report.  A task that keeps its tree for a person's session (debug and
interactive tasks) gets its own, which no cache cleanup can take away.
The package's own symlinks are recreated inside the root, with targets
made relative and clamped to the root (``retrace_server.paths``), so they resolve
among the task's packages and never to the host's files.  Every name joined
to the root, from a package manifest, a core or a program header, goes
through ``retrace_server.paths.inside``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from retrace_server.elf import program_interpreter
from retrace_server.environments.base import Environment, Limits, View, Workload, hide_cache_paths
from retrace_server.environments.sandbox import Sandboxed, require_sandbox, run_sandboxed
from retrace_server.environments.session import Session
from retrace_server.packaging.cache import PackageCache, cache_entries, cached_entry, evict_entry
from retrace_server.packaging.release import merges_usr
from retrace_server.paths import UnsafePath, clamped_link_target, inside, shown

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from retrace_server.config import Config
    from retrace_server.elf import Module
    from retrace_server.packaging.cache import CachedPackage
    from retrace_server.packaging.payload import ManifestEntry
    from retrace_server.paths import StrPath

log = logging.getLogger(__name__)


def assemble_sysroot(root: StrPath, cached_packages: Iterable[CachedPackage], merged: bool = True) -> tuple[int, float]:
    """Build ``root`` from CachedPackages (the first package wins a file both hold), as a merged-/usr root
    unless the release did not merge /usr (``release.merges_usr``: there /bin/x and /usr/bin/x differ).

    A directory whose whole content one package brings, with no symlink in
    it or on its way, is one symlink to the package's own directory
    (``_folded``): libc6-dbg's 450 debug files are 250 links instead of 450
    links and 170 directories, and every link and directory made costs half
    a millisecond on a busy disk.  Returns ``(links made, seconds)``.
    """
    started = time.monotonic()
    root = Path(root)
    root.mkdir(mode=0o755)
    manifests = [(str(package.root), package.manifest()) for package in cached_packages]
    folded = _folded(manifests, merged)
    made_dirs: set[str] = set()
    linked = 0
    for source_root, manifest in manifests:
        for packaged, kind, link_target, _build_id in manifest:
            relative = merged_usr_path(packaged, kind) if merged else packaged
            fold = _folded_above(relative, folded)
            if fold is not None:
                relative, kind = fold, "folded"
                if relative in made_dirs:
                    continue
                made_dirs.add(relative)
            destination = inside(root, relative)
            if kind == "d":
                if relative not in made_dirs:
                    os.makedirs(destination, exist_ok=True)
                    made_dirs.add(relative)
                continue
            parent = os.path.dirname(relative)
            if parent and parent not in made_dirs:
                os.makedirs(os.path.join(root, parent), exist_ok=True)
                made_dirs.add(parent)
            try:
                if kind == "folded":
                    target = os.path.join(source_root, folded[relative])
                elif kind == "f":
                    target = os.path.join(source_root, packaged)
                else:
                    target = clamped_link_target(_resolved_in(root, parent, relative), link_target)
                os.symlink(target, destination)
            except FileExistsError:
                continue
            except UnsafePath as err:
                log.warning("not placed in %s: %s", root, err)
                continue
            linked += 1
    return linked, time.monotonic() - started


def _folded(manifests: Sequence[tuple[str, Sequence[Sequence[str]]]], merged: bool) -> dict[str, str]:
    """``{directory in the tree: the package's directory it is a link to}``, outermost only.

    A directory is folded when every entry below it comes from one package
    and one directory of it (merged /usr joins ``lib/x`` and ``usr/lib/x``
    of a package: not folded), when no package has a symlink in it, at it
    or above it (a link is recreated clamped, never reached through the
    cache, and a path through another package's link lands elsewhere),
    and when no package puts a file where it is.  What the tree shows is
    then exactly what linking each file shows.
    """
    owners: dict[str, set[tuple[int, str]]] = {}
    unfoldable: set[str] = {""}
    links: set[str] = set()
    for number, (_source_root, manifest) in enumerate(manifests):
        for packaged, kind, _target, _build_id in manifest:
            relative = merged_usr_path(packaged, kind) if merged else packaged
            shift = len(relative) - len(packaged)  # "usr/" prepended by merged /usr
            if kind == "l":
                links.add(relative)
            if kind != "d":
                unfoldable.add(relative)
            directory = relative if kind == "d" else os.path.dirname(relative)
            while directory:
                if kind == "l" or len(directory) <= shift:
                    unfoldable.add(directory)
                else:
                    owners.setdefault(directory, set()).add((number, directory[shift:]))
                directory = os.path.dirname(directory)
    folded: dict[str, str] = {}
    for directory in sorted(owners):
        sources = owners[directory]
        if len(sources) != 1 or directory in unfoldable or _folded_above(directory, folded) is not None:
            continue
        if any(ancestor in links for ancestor in _ancestors(directory)):
            continue
        folded[directory] = next(iter(sources))[1]
    return folded


def _ancestors(relative: str) -> Iterator[str]:
    while relative:
        yield relative
        relative = os.path.dirname(relative)


def _folded_above(relative: str, folded: Mapping[str, str]) -> str | None:
    """The folded directory ``relative`` is or lies in, if any."""
    return next((ancestor for ancestor in _ancestors(relative) if ancestor in folded), None) if folded else None


def _resolved_in(root: StrPath, parent: str, relative: str) -> str:
    """Where the entry ``relative`` really lands in the tree: its directory after the links other packages put
    on the way (``usr/share/x -> .`` makes ``usr/share/x/x/L`` land in ``usr/share``).

    A link's target is clamped from where the link really is, so that
    ``..`` never climbs above the tree whatever links lie on its path.
    Every link in the tree was made this way, so the directory resolves
    inside the root.
    """
    real = os.path.realpath(os.path.join(root, parent))
    base = os.path.realpath(root)
    if real != base and not real.startswith(base + os.sep):
        raise UnsafePath(f"'{relative}' lies below a link that leaves the tree")
    return os.path.join(os.path.relpath(real, base), os.path.basename(relative))


def merged_usr_path(relative: str, kind: str) -> str:
    """Where a packaged entry lives on a merged-/usr system: ``lib/x86_64-linux-gnu/libc.so.6`` (Debian's
    libc6 still ships it there) is ``usr/lib/...``, and ``/lib`` becomes a link to ``usr/lib``
    (``add_merged_usr_links``), so the library is found by either name the core uses.  A package's own
    ``lib -> usr/lib`` symlink stays as it is."""
    top, _, rest = relative.partition("/")
    if top not in _MERGED_TOPS or (not rest and kind == "l"):
        return relative
    return f"usr/{relative}"


def place_files(root: StrPath, placements: Iterable[tuple[str, StrPath]]) -> int:
    """Link each ``(path in the tree, file)`` pair into ``root``, keeping what is already there.

    A name that would leave the tree, or whose directory a package made a
    file, is skipped (and logged for the admin): gdb then reports that
    file as missing, which is the truth.
    """
    placed = 0
    for path, target in placements:
        try:
            destination = inside(root, path)
            parent = real_directory(root, os.path.dirname(path.lstrip("/")))
            os.symlink(target, os.path.join(parent, os.path.basename(destination)))
        except FileExistsError:
            continue
        except (UnsafePath, NotADirectoryError) as err:
            log.warning("not placed in %s: %s", root, err)
            continue
        placed += 1
    return placed


def real_directory(root: StrPath, relative: str) -> str:
    """The directory ``relative`` (a checked path) of the tree as a real directory, made if missing.

    A folded directory on the way, or at its end (an absolute link into
    the package cache), is unfolded first, so that nothing is ever written
    into a package's tree; a package's own link on the way (relative,
    clamped when the tree was made) is followed as the kernel would, and
    may not leave the tree.
    """
    parts, hops = [part for part in relative.split("/") if part], 0
    done: list[str] = []
    while parts:
        part = parts.pop(0)
        path = os.path.join(root, *done, part)
        if not os.path.islink(path):
            done.append(part)
            continue
        target = os.readlink(path)
        if os.path.isabs(target):
            if not os.path.isdir(path):
                raise NotADirectoryError(f"'{shown(relative)}' lies below a file")
            _unfold(path, target)
            done.append(part)
            continue
        hops += 1
        landed = os.path.normpath(os.path.join(*done, target))
        if hops > _MAX_LINK_HOPS or landed == ".." or landed.startswith("../"):
            raise UnsafePath(f"'{shown(relative)}' lies below a link that leaves the tree")
        parts, done = [*([] if landed == "." else landed.split("/")), *parts], []
    directory = os.path.join(root, *done)
    os.makedirs(directory, exist_ok=True)
    return directory


def _unfold(path: str, target: str) -> None:
    """The folded directory at ``path`` made a real one: a link per entry of the package's directory (its
    subdirectories folded in turn), which shows the same files."""
    os.unlink(path)
    os.mkdir(path, 0o755)
    for entry in os.scandir(target):
        os.symlink(os.path.join(target, entry.name), os.path.join(path, entry.name))


# As the kernel's limit on links followed in one lookup.
_MAX_LINK_HOPS = 40


# gdb opens shared libraries by their link-map names (/lib/x86_64-linux-gnu/
# libc.so.6), cores and packages name /usr/lib/...: on merged-/usr systems
# both are the same file.
_MERGED_USR = (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin"), ("sbin", "usr/sbin"))
_MERGED_TOPS = {name for name, _ in _MERGED_USR}


def link_program_interpreter(root: StrPath, interpreter: str | None, modules: Iterable[Module]) -> bool:
    """Give the loader at the path the program names (gdb looks it up by that name), if only its
    mapped path (e.g. /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2) is in the tree."""
    try:
        if not interpreter or os.path.lexists(inside(root, interpreter)):
            return False
    except UnsafePath:
        return False
    name = os.path.basename(interpreter)
    for module in modules:
        mapped = inside(root, module.path)
        if os.path.basename(module.path) == name and os.path.exists(mapped):
            # Relative: a shared tree is built elsewhere and renamed into place.
            target = os.path.relpath(mapped, os.path.dirname(inside(root, interpreter)))
            return bool(place_files(root, [(interpreter, target)]))
    return False


def add_merged_usr_links(root: StrPath) -> None:
    """/lib -> usr/lib and friends, where the packages did not bring their own."""
    for name, target in _MERGED_USR:
        link = os.path.join(root, name)
        if not os.path.lexists(link) and os.path.isdir(os.path.join(root, target)):
            os.symlink(target, link)


class SharedTrees:
    """Trees shared by the tasks whose crashes need the same files, in ``<CacheDir>/sysroots/<key>/root``.

    An entry of the same shape as a cached package (built in a temporary
    directory and renamed, under its lock; its manifest's mtime is its last
    use), so it is never seen half built, never changes once there, and the
    cleanup evicts it as it evicts packages: only when unused for longer
    than any task runs.  Its key is everything the tree is made of
    (``tree_key``), so a tree is reused only for exactly the same files.
    """

    def __init__(self, cache_dir: StrPath) -> None:
        self.trees_dir = self.directory(cache_dir)
        self.trees_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def directory(cache_dir: StrPath) -> Path:
        return Path(cache_dir) / "sysroots"

    def get(self, key: str, build: Callable[[Path], object], on_wait: Callable[[], None] = lambda: None,
            ) -> CachedPackage:
        """The tree for ``key``, made by ``build(root)`` first if no task made it yet."""
        def make(tmp: Path) -> list[ManifestEntry]:
            build(tmp / "root")
            return []

        return cached_entry(self.trees_dir / key, self.trees_dir / f"{key}.lock", make, on_wait)

    def entries(self) -> list[tuple[str, float, int]]:
        return cache_entries(self.trees_dir)

    def evict(self, key: str) -> bool:
        return evict_entry(self.trees_dir / key, self.trees_dir / f"{key}.lock")


# Part of every tree's key: a change to how trees are assembled must not reuse trees made the old way.
_TREE_LAYOUT = 2


def tree_key(work: Workload, trees: Iterable[CachedPackage], merged: bool) -> str:
    """What a shared tree is made of, hashed: the packages' cache entries (named by their checksums), the
    placed files, the program (its loader is linked by the name it asks for) and the mapped files."""
    made_of = [_TREE_LAYOUT, merged, work.executable, sorted(module.path for module in work.modules),
               [str(tree.path) for tree in trees], [(path, str(target)) for path, target in work.placements]]
    return hashlib.sha256(json.dumps(made_of).encode()).hexdigest()[:40]


class SysrootEnvironment(Environment):
    """The host's gdb for the core's architecture (gdb-multiarch for a foreign one) on a shared tree, or on
    ``<task>/sysroot`` for a task that keeps it."""

    name = "sysroot"
    # The chroot environment's tree is its gdb's root, with mount points for one task's core: never shared.
    shares_trees: ClassVar[bool] = True

    def __init__(self, config: Config, task_path: Path, task_id: str, log: logging.Logger) -> None:
        super().__init__(config, task_path, task_id, log)
        self._shared: Path | None = None  # the shared tree this task reads, once prepared

    @property
    def tree(self) -> Path:
        return self._shared if self._shared is not None else self.task_path / "sysroot"

    def prepare(self, work: Workload) -> int:
        merged = merges_usr(work.release)
        trees = self._trees(work)
        if not self.shares_trees or work.keeps_tree:
            started = time.monotonic()
            shutil.rmtree(self.tree, ignore_errors=True)
            linked = self._build(self.tree, work, trees, merged)
            self.log.info("Assembled the %s: %d files linked in %.3f s", self.name, linked, time.monotonic() - started)
            return linked
        counted: list[int] = []
        entry = SharedTrees(self.config.CacheDir).get(
            tree_key(work, trees, merged), lambda root: counted.append(self._build(root, work, trees, merged)),
            on_wait=lambda: self.log.info("Waiting for another task assembling the same %s", self.name))
        self._shared = entry.root
        if entry.unpacked:
            self.log.info("Assembled the %s (shared with later tasks needing the same files): %d files linked in "
                          "%.3f s", self.name, counted[0], entry.seconds)
            return counted[0]
        self.log.info("Reused the %s an earlier task assembled from the same files", self.name)
        return 0

    def _build(self, root: Path, work: Workload, trees: list[CachedPackage], merged: bool) -> int:
        linked, _seconds = assemble_sysroot(root, trees, merged)
        linked += place_files(root, work.placements)
        return linked + self._complete(root, work, merged)

    def _trees(self, work: Workload) -> list[CachedPackage]:
        return list(work.trees)

    def _complete(self, root: Path, work: Workload, merged: bool) -> int:
        """What the packages leave out: merged-/usr links (where the release merged /usr) and the loader at the
        path the program names."""
        if merged:
            add_merged_usr_links(root)
        interpreter = program_interpreter(root / work.executable.lstrip("/"))
        return int(link_program_interpreter(root, interpreter, work.modules))

    def view(self, work: Workload) -> View:
        return View(str(self.tree), str(work.core), work.debugger)

    def read_only_paths(self, work: Workload) -> list[Path]:
        """What the sandbox shows besides the host's /usr: the caches the tree's links point into, the core."""
        return [PackageCache.directory(self.config.CacheDir), work.core, self.tree, *work.extra_read_only]

    def run(self, argv: Sequence[str], work: Workload, limits: Limits) -> Sandboxed:
        require_sandbox("gdb")
        return run_sandboxed(list(argv), self.read_only_paths(work), timeout=limits.timeout,
                             memory_bytes=limits.memory_bytes, output_bytes=limits.output_bytes,
                             root=self._root())

    def _root(self) -> Path | None:
        return None

    def session(self, work: Workload, argv: Sequence[str]) -> Session:
        program = self.tree / work.executable.lstrip("/")
        root = self._root()
        return Session("gdb", tuple(argv), tuple(map(str, self.read_only_paths(work))),
                       ((str(work.core), "the coredump"), (str(program), "the crashed program in the package tree")),
                       str(root) if root is not None else None)

    def hide(self, text: str) -> str:
        return hide_cache_paths(text.replace(str(self.tree), ""), self.config.CacheDir)

    def clean(self, keep: bool) -> None:
        """A shared tree stays for the next task (the cache's cleanup evicts it); the task's own goes."""
        if not keep and self._shared is None:
            shutil.rmtree(self.tree, ignore_errors=True)
