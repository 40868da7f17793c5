"""A coredump's packages unpacked while the core still uploads.

A large core takes seconds to minutes to arrive, but what its retrace
needs is known from its first bytes: the kernel writes the notes (every
mapped file's path) at the start of a core, and each mapped file's
headers (its build-id) in the first page of its memory, in address order.
So the dispatcher starts ``prefetch`` as soon as an upload's ``coredump``
begins: it reads the file as it is written, waiting for bytes not yet
there, names the packages as their paths and build-ids appear, and
unpacks them into the shared package cache, where the task's worker
finds them (or waits, under the package's lock, for the one still being
unpacked).  It is an early guess made on untrusted bytes, so it never
decides anything: packages are the release index's own, verified before a
byte is unpacked as the worker verifies them, and whatever it cannot do it
logs and leaves to the worker, which resolves everything again from the
whole core.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time
from typing import TYPE_CHECKING

from retrace_server.elf import Module, core_map
from retrace_server.errors import RetraceError
from retrace_server.packaging.packages import resolve_modules, usr_merge_variants
from retrace_server.packaging.release import RELEASE_FILES, ReleaseId, detect_release, merges_usr, served_releases
from retrace_server.packaging.repoindex import release_index
from retrace_server.packaging.supply import PackageSupply

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from retrace_server.config import Config
    from retrace_server.elf import CoreMap
    from retrace_server.packaging.cache import CachedPackage
    from retrace_server.packaging.repoindex import Package, RepoIndex

# A real crash maps a few hundred files at most; a forged core may name thousands (the worker reads them all).
MAX_PACKAGES = 256
MAX_MAPPED_FILES = 1024
# Build-ids read (from the start of the core) to tell which served release a core without a release file is of.
_GUESS_MODULES = 4
_POLL_SECONDS = 0.05
_TEXT_CAP = 4096  # the crash files that name a release are smaller (retrace_server.intake.crashdata)


class UploadEnded(RetraceError):
    """The upload stopped (refused, cut, or dead) before the bytes a read waits for arrived."""

    category = "upload ended"


class GrowingFile:
    """A file an upload is still writing, read at offsets as its bytes land: enough of ``BinaryIO`` for the
    core reader.  ``size`` is what the archive declared for it; ``still_uploading()`` says whether to wait."""

    def __init__(self, fd: int, size: int, still_uploading: Callable[[], bool], deadline: float) -> None:
        self.fd, self.size, self.still_uploading, self.deadline = fd, size, still_uploading, deadline
        self.position = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.position = offset if whence == os.SEEK_SET else self.size + offset
        return self.position

    def read(self, length: int = -1) -> bytes:
        end = self.size if length < 0 else min(self.size, self.position + length)
        self._wait_for(end)
        data = os.pread(self.fd, max(0, end - self.position), self.position)
        self.position += len(data)
        return data

    def _wait_for(self, end: int) -> None:
        while os.fstat(self.fd).st_size < end:
            # Checked before the size is read again: an upload that ended after writing its last byte still
            # gets its bytes read.
            uploading = self.still_uploading() and time.monotonic() < self.deadline
            if os.fstat(self.fd).st_size >= end:
                return
            if not uploading:
                raise UploadEnded(f"the upload ended {os.fstat(self.fd).st_size} bytes into the core's {self.size}")
            time.sleep(_POLL_SECONDS)


@dataclasses.dataclass
class Prefetched:
    """What one prefetch did, for the dispatcher's log."""

    release: ReleaseId | None = None
    how: str = ""
    packages: list[Package] = dataclasses.field(default_factory=list)
    trees: list[CachedPackage] = dataclasses.field(default_factory=list)  # the packages now in the cache
    modules: list[Module] = dataclasses.field(default_factory=list)  # the mapped files whose build-ids it read
    unpacked: int = 0
    failed: int = 0
    skipped: int = 0  # not begun when the upload ended: left to the worker, if it became a task
    stopped: str = ""  # why it stopped naming packages early (the upload ended, the core is unusable)

    def summary(self) -> str:
        if self.release is None:
            return f"nothing prefetched: {self.how}"
        text = (f"{len(self.packages)} packages of {self.release} ({self.how}), {self.unpacked} unpacked, "
                f"{len(self.packages) - self.unpacked - self.failed - self.skipped} already cached")
        if self.failed:
            text += f", {self.failed} failed (the worker will say why)"
        if self.skipped:
            text += f", {self.skipped} not begun before the upload ended"
        return text + (f"; stopped early: {self.stopped}" if self.stopped else "")


def _crash_text(crash_dir: Path, name: str) -> str:
    """A small crash file the archive brought before the core, or "" (never waits: later files come too late)."""
    try:
        with open(crash_dir / name, "rb") as handle:
            return handle.read(_TEXT_CAP).decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def named_release(crash_dir: Path, arch: str, served: list[ReleaseId]) -> tuple[ReleaseId | None, str] | None:
    """The served release the crash files uploaded before the core name, as the worker will read them; None
    when none came before it."""
    lines = [(name, text) for name in RELEASE_FILES if (text := _crash_text(crash_dir, name))]
    package = _crash_text(crash_dir, "package")
    if not lines and not package:
        return None
    release, how = detect_release(lines, package, arch, served)
    return (release, how) if release in served else (None, f"{how}, which is not a release served here")


def guessed_release(mapped: CoreMap, indexes: dict[ReleaseId, RepoIndex]) -> tuple[ReleaseId | None, str]:
    """The release among ``indexes`` whose packages hold the build-id of one of the first mapped files.

    A build-id names one build, so a release that lists it is the crash's;
    several that list the same build (a package shared between releases)
    give the same package, so the first of them does.
    """
    for path, start in mapped.bases[:_GUESS_MODULES]:
        build_id = mapped.build_id_at(start)
        if build_id is None:
            continue
        for release, index in indexes.items():
            if index.by_build_id(build_id, "debuginfo") or index.by_build_id(build_id, "binary"):
                return release, f"its index lists the build-id of {path}"
    return None, f"no {mapped.arch} release served here lists the build-id of the core's first mapped files"


def owned_packages(index: RepoIndex, paths: Iterable[str]) -> list[Package]:
    """Packages named by paths alone (the notes, before any build-id): a path exactly one package of the
    release owns gives that package and its debug package.  A path several versions own waits for its
    build-id."""
    found: list[Package] = []
    for path in paths:
        owners = index.owners(path)
        if len(owners) == 1:
            found.append(owners[0])
            debug = index.debug_package_of(owners[0])
            if debug is not None:
                found.append(debug)
    return found


class _Unpacker:
    """Packages unpacked two at a time as they are named, each once, at most MAX_PACKAGES; one not begun
    when the upload ends is left alone (an upload cut short leaves no work behind it; a task does its own)."""

    def __init__(self, supply: PackageSupply, index: RepoIndex, result: Prefetched, log: logging.Logger,
                 still_uploading: Callable[[], bool]) -> None:
        self.supply, self.index, self.result, self.log = supply, index, result, log
        self.still_uploading = still_uploading
        self.counting = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="prefetch")
        self.futures: list[concurrent.futures.Future[None]] = []

    def add(self, packages: Iterable[Package]) -> None:
        for package in packages:
            if len(self.result.packages) >= MAX_PACKAGES:
                return
            if all(known.pkgid != package.pkgid for known in self.result.packages):
                self.result.packages.append(package)
                self.futures.append(self.pool.submit(self._unpack, package))

    def _unpack(self, package: Package) -> None:
        if not self.still_uploading():
            with self.counting:
                self.result.skipped += 1
            return
        try:
            self.result.trees.append(self.supply.cached(package, self.index))
        except (RetraceError, OSError) as err:
            with self.counting:
                self.result.failed += 1
            self.log.warning("%s not prefetched: %s", package.nevra, err)

    def wait(self) -> None:
        concurrent.futures.wait(self.futures)
        self.result.unpacked = self.supply.counts.cache_misses

    def finish(self) -> None:
        self.wait()
        self.pool.shutdown()


def packaged_modules(bases: Iterable[tuple[str, int]], trees: Iterable[CachedPackage], merged: bool) -> list[Module]:
    """The mapped files with the build-id of the file at their path in the unpacked packages: known long
    before the core's memory brings the files' own (a library's headers come after the program's heap)."""
    wanted = {variant.lstrip("/"): (path, start) for path, start in bases for variant in usr_merge_variants(path, merged)}
    found: dict[str, Module] = {}
    for tree in trees:
        for entry_path, kind, _target, build_id in tree.manifest():
            mapped = wanted.get(entry_path)
            if kind == "f" and build_id and mapped is not None and mapped[0] not in found:
                found[mapped[0]] = Module(*mapped, build_id)
    return sorted(found.values(), key=lambda module: module.start)


def prefetch(config: Config, crash_dir: Path, size: int, still_uploading: Callable[[], bool],
             log: logging.Logger, seconds: float = 3600.0,
             meanwhile: Callable[[Prefetched], None] = lambda _result: None) -> Prefetched:
    """Unpack the packages of the ``size``-byte core being written to ``crash_dir/coredump``; what it did.

    Waits for the core's bytes while ``still_uploading()`` and for at most
    ``seconds``; returns once every package it named is in the cache.  In
    order: the packages its notes name by path, then the debug packages of
    the build-ids those packages hold at the mapped paths, ``meanwhile(what
    it did so far)``, then the packages of the build-ids the core's memory
    brings (a build other than the release's, a path several packages own).
    """
    result = Prefetched()
    try:
        fd = os.open(crash_dir / "coredump", os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        result.how = "the upload had ended (stored as a task, or refused) before the prefetch began"
        return result
    except OSError as err:
        result.how = f"the core cannot be read ({err.strerror})"
        return result
    supply = PackageSupply(config, log)
    try:
        core = GrowingFile(fd, size, still_uploading, time.monotonic() + seconds)
        try:
            mapped = core_map(core, size)
        except RetraceError as err:
            result.how = str(err)
            return result
        try:
            _choose_release(config, crash_dir, mapped, result)
            index = release_index(config.RepoDir, config.CacheDir, result.release) if result.release else None
        except RetraceError as err:  # a repository being synchronised, metadata that cannot be read
            result.how, result.release = f"{result.how}; {err}" if result.how else str(err), None
            return result
        if result.release is None:
            return result
        if index is None:
            result.how += "; it has no mirror here"
            result.release = None
            return result
        unpacker = _Unpacker(supply, index, result, log, still_uploading)
        bases = mapped.bases[:MAX_MAPPED_FILES]
        try:
            unpacker.add(owned_packages(index, (path for path, _start in bases)))
            unpacker.wait()
            result.modules = packaged_modules(bases, result.trees, merges_usr(result.release))
            unpacker.add(resolve_modules(index, result.modules).packages)
            unpacker.wait()
            meanwhile(result)
            result.modules = []
            for path, start in bases:  # each as its bytes land
                module = Module(path, start, mapped.build_id_at(start))
                result.modules.append(module)
                unpacker.add(resolve_modules(index, [module]).packages)
        except RetraceError as err:
            result.stopped = str(err)
        finally:
            unpacker.finish()
            index.close()
    finally:
        os.close(fd)
        supply.forget_downloads()
    return result


def _choose_release(config: Config, crash_dir: Path, mapped: CoreMap, result: Prefetched) -> None:
    """The release named before the core, else the only one of its architecture, else the one whose index
    lists its first build-ids (indexes built as a task would, when the metadata changed)."""
    served = [release for release in served_releases(config) if release.arch == mapped.arch]
    named = named_release(crash_dir, mapped.arch, served)
    if named is not None:
        result.release, result.how = named
    elif len(served) == 1:
        result.release, result.how = served[0], f"no release named before the core; the only {mapped.arch} one served"
    else:
        indexes = {release: index for release in served
                   if (index := release_index(config.RepoDir, config.CacheDir, release)) is not None}
        try:
            result.release, result.how = guessed_release(mapped, indexes)
        finally:
            for index in indexes.values():
                index.close()
