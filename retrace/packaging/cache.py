"""Unpacked packages, shared by every task: each package is unpacked once.

``<CacheDir>/rpms/<pkgid>/`` holds ``root/`` (the payload),
``manifest.json`` (every entry with the build-id of each ELF file, so
assembling a task's root needs no directory walk and a file can be matched
to a core's build-id without reading it again; its mtime is the entry's
last use) and ``size`` (bytes unpacked, for the cleanup's budget).  The pkgid is the package's checksum from the repository
metadata, so a rebuilt package with the same name never reuses a stale tree.
An entry appears by one rename of a finished temporary directory, under a
per-package lock, so two tasks that need the same package at once unpack it
once and neither sees half a tree.

What a package holds is read by its format (``retrace_server.packaging.formats``),
never installed: names are checked (no ``..``, nothing below the package's
own symlinks) and only directories, regular files and symlinks are created.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server import locking
from retrace_server.compression import DEFAULT_DECODER_MEMORY
from retrace_server.packaging import formats
from retrace_server.packaging.payload import ManifestEntry, UnpackError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

MANIFEST = "manifest.json"
SIZE_FILE = "size"


@dataclasses.dataclass(frozen=True)
class CachedPackage:
    path: Path
    unpacked: bool  # False: it was already in the cache
    seconds: float
    waited: bool  # another task held the package's lock first

    @property
    def root(self) -> Path:
        return self.path / "root"

    def build_id_of(self, paths: Iterable[str]) -> str | None:
        """The build-id of the first of ``paths`` this package holds, or None."""
        wanted = [path.lstrip("/") for path in paths]
        for entry_path, kind, _target, build_id in self.manifest():
            if kind == "f" and entry_path in wanted:
                return build_id or None
        return None

    def manifest(self) -> list[list[str]]:
        """``[[relative path, kind ("d", "f" or "l"), link target or "", build-id or ""], ...]``."""
        with open(self.path / MANIFEST, encoding="utf-8") as handle:
            entries: list[list[str]] = json.load(handle)
        return entries


# A cache entry being built lives in ``.tmp-<name>-*`` beside the entries,
# with ``.building`` locked by its builder; a builder that was killed leaves
# it unlocked, and cleanup removes it (``abandoned_partial_entries``).
_PARTIAL_PREFIX = ".tmp-"
_BUILDING = ".building"
_LOCKLESS_GRACE_SECONDS = 60


def abandoned_partial_entries(directory: Path, now: float | None = None) -> list[Path]:
    """The partial entries in ``directory`` whose builder died (for cleanup to remove)."""
    now = now if now is not None else time.time()
    abandoned: list[Path] = []
    try:
        entries = [entry for entry in os.scandir(directory)
                   if entry.name.startswith(_PARTIAL_PREFIX) and entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return abandoned
    for entry in entries:
        path = Path(entry.path)
        if locking.is_held(path / _BUILDING):
            continue
        try:
            if now - path.stat().st_mtime < _LOCKLESS_GRACE_SECONDS:
                continue  # between mkdtemp and flock, or the rename is about to happen
        except FileNotFoundError:
            continue
        abandoned.append(path)
    return abandoned


def cached_entry(path: Path, lock_path: Path, build: Callable[[Path], list[ManifestEntry]],
                 on_wait: Callable[[], None] = lambda: None) -> CachedPackage:
    """The cache entry at ``path``, made by ``build(tmp)`` first if it is not there.

    ``build`` fills ``tmp/root`` and returns its manifest entries; the entry
    appears by one rename, under ``lock_path``, with its size and manifest.
    Finding the entry refreshes its last-use time.
    """
    started = time.monotonic()
    with locking.exclusive(lock_path, on_wait) as waited:
        if (path / MANIFEST).exists():
            os.utime(path / MANIFEST)
            return CachedPackage(path, False, time.monotonic() - started, waited)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{_PARTIAL_PREFIX}{path.name}-"))
        building = locking.try_exclusive(tmp / _BUILDING)
        assert building is not None  # a directory made just now
        try:
            os.chmod(tmp, 0o755)
            entries = build(tmp)
            (tmp / SIZE_FILE).write_text(str(tree_bytes(tmp / "root")))
            with open(tmp / MANIFEST, "w", encoding="utf-8") as handle:
                json.dump(entries, handle)
            os.unlink(tmp / _BUILDING)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(building)
    return CachedPackage(path, True, time.monotonic() - started, waited)


class PackageCache:
    def __init__(self, cache_dir: str | Path, decoder_memory: int = DEFAULT_DECODER_MEMORY) -> None:
        self.decoder_memory = decoder_memory
        self.rpms_dir = self.directory(cache_dir)
        self.rpms_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def directory(cache_dir: str | Path) -> Path:
        """Where the unpacked packages are (what a debugger's sandbox must show for a tree's links)."""
        return Path(cache_dir) / "rpms"

    def entry_path(self, pkgid: str) -> Path:
        if not pkgid.isalnum():
            raise UnpackError(f"invalid package checksum {pkgid!r} in the repository metadata")
        return self.rpms_dir / pkgid

    def lock_path(self, pkgid: str) -> Path:
        return self.rpms_dir / f"{pkgid}.lock"

    def holds(self, pkgid: str) -> bool:
        """Whether ``pkgid`` is unpacked already (a hint: eviction may take it before ``get``)."""
        return (self.rpms_dir / pkgid / MANIFEST).exists()

    def get(self, pkgid: str, package_path: Path, on_wait: Callable[[], None] = lambda: None,
            verify: Callable[[Path], None] | None = None) -> CachedPackage:
        """The unpacked tree of the package ``pkgid``, unpacking it if needed.

        Always under the package's lock, which is also what eviction takes:
        an entry is never removed while a task is fetching it, and fetching
        refreshes the entry's last-use time (the manifest's mtime), so
        ``retrace-server-cleanup`` leaves it alone while that task runs.
        ``on_wait`` is called before blocking on another task; ``verify(path)``
        (its signature) before unpacking, so the cache holds only verified packages.
        """
        def unpack(tmp: Path) -> list[ManifestEntry]:
            if verify is not None:
                verify(package_path)
            return formats.unpack(package_path, tmp / "root", self.decoder_memory)

        return cached_entry(self.entry_path(pkgid), self.lock_path(pkgid), unpack, on_wait)

    def entries(self) -> list[tuple[str, float, int]]:
        """``(pkgid, last use (epoch seconds), bytes)`` of every complete cache entry."""
        return cache_entries(self.rpms_dir)

    def evict(self, pkgid: str) -> bool:
        """Remove an entry unless a task holds its lock right now; whether it was removed."""
        return evict_entry(self.entry_path(pkgid), self.lock_path(pkgid))


def cache_entries(directory: Path) -> list[tuple[str, float, int]]:
    """``(name, last use, bytes)`` of the complete entries (manifest and size) in ``directory``."""
    found = []
    for entry in os.scandir(directory):
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            last_use = os.stat(os.path.join(entry.path, MANIFEST)).st_mtime
            size = int(Path(entry.path, SIZE_FILE).read_text())
        except (OSError, ValueError):
            continue
        found.append((entry.name, last_use, size))
    return found


def evict_entry(path: Path, lock_path: Path) -> bool:
    """Remove the entry at ``path`` unless a task holds ``lock_path``; whether it was removed."""
    fd = locking.try_exclusive(lock_path)
    if fd is None:
        return False
    try:
        trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".evict-{path.name}-"))
        os.rename(path, trash / "entry")
    finally:
        os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def tree_bytes(root: Path) -> int:
    """Bytes of every file under ``root`` (symlinks count as themselves, those to directories too)."""
    total = 0
    for directory, dirs, files in os.walk(root):
        for name in (*files, *dirs):
            status = os.lstat(os.path.join(directory, name))
            total += 0 if stat.S_ISDIR(status.st_mode) else status.st_size
    return total
