"""Packages of the release mirrors, proven and unpacked once into the shared cache.

A retrace and a symbolication need the same thing: a package's files, from
its mirror or (for a metadata-only release) downloaded within
``DownloadDeadline``, its signature (RPM) or index checksum (Debian)
verified before a byte is unpacked, and the unpacked tree shared through
the package cache by every task and process.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server.errors import RetraceError
from retrace_server.packaging.apt import split_version
from retrace_server.packaging.cache import PackageCache
from retrace_server.packaging.download import DOWNLOADS, DownloadError, download_packages, package_url
from retrace_server.packaging.history import HistorySource, Located, Wanted
from retrace_server.packaging.payload import UnpackError
from retrace_server.packaging.repoindex import Package
from retrace_server.packaging.signatures import Keyring, verify_checksum

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Iterable

    from retrace_server.config import Config
    from retrace_server.packaging.cache import CachedPackage
    from retrace_server.packaging.repoindex import RepoIndex
    from retrace_server.stats import TaskRecord


# Packages a task unpacks at once (cached_all).
_UNPACKERS = 2


class PackageUnavailable(RetraceError):
    """A needed package cannot be had or proven; the sentence names it."""

    category = "repository error"


@dataclasses.dataclass
class CacheCounts:
    cache_hits: int = 0
    cache_misses: int = 0


class PackageSupply:
    """One job's packages: ``counts`` (a TaskRecord, or CacheCounts) learns the cache's hits and misses."""

    def __init__(self, config: Config, log: logging.Logger, counts: CacheCounts | TaskRecord | None = None) -> None:
        self.config, self.log = config, log
        self.counts = counts if counts is not None else CacheCounts()
        self.cache = PackageCache(config.CacheDir, config.decoder_memory_bytes)
        self._keyrings: dict[str, Keyring | None] = {}  # None: RequireGPGCheck = 0
        self._verified: set[Path] = set()  # package files whose signatures this job has checked
        self.downloads: dict[str, Path] = {}  # pkgid -> file downloaded for a metadata-only release, until unpacked
        # Where builds the mirror no longer serves are fetched (retrace_server.packaging.history), set by the job.
        self.history: list[HistorySource] = []
        self._counting = threading.Lock()  # cached_all unpacks on two threads

    def forget_downloads(self) -> None:
        """Remove the packages downloaded for this job (the cache keeps their unpacked trees)."""
        for path in self.downloads.values():
            path.unlink(missing_ok=True)

    def cached(self, package: Package, index: RepoIndex) -> CachedPackage:
        """The package unpacked in the shared cache (by this task or an earlier one)."""
        package_path = self.package_file(index, package)
        return self.cached_file(package, package_path, self._verifier(index, package, package_path))

    def cached_all(self, packages: Iterable[Package], index: RepoIndex) -> list[CachedPackage]:
        """``cached`` of each package, in their order, two unpacking at a time: their decoders run outside
        the GIL, so a task's packages unpack in about the time of the larger half."""
        with concurrent.futures.ThreadPoolExecutor(_UNPACKERS, thread_name_prefix="unpack") as pool:
            return list(pool.map(lambda package: self.cached(package, index), packages))

    def cached_file(self, package: Package, package_path: Path,
                    verify: Callable[[Path], None] | None) -> CachedPackage:
        """``package``'s file at ``package_path`` unpacked in the shared cache, ``verify`` checking it first."""
        try:
            entry = self.cache.get(
                package.pkgid, package_path,
                on_wait=lambda: self.log.info("Waiting for another task that is unpacking %s (or for the prefetch "
                                              "while this task uploaded)", package.nevra),
                verify=verify,
            )
        except UnpackError as err:
            # The sentence may name a downloaded file by its temporary name: the package's own name leads.
            raise PackageUnavailable(f"{package.nevra} cannot be unpacked: {err.sentence}", err.category) from None
        with self._counting:
            if entry.unpacked:
                self.counts.cache_misses += 1
            else:
                self.counts.cache_hits += 1
        if entry.unpacked:
            self.log.info("Unpacked %s in %.3f s", package.nevra, entry.seconds)
            return entry
        if entry.waited:
            self.log.info("Reused %s, unpacked meanwhile by another task (waited %.3f s)", package.nevra, entry.seconds)
        else:
            self.log.info("Reused %s from the package cache", package.nevra)
        return entry

    def keyring(self, index: RepoIndex) -> Keyring | None:
        """The keys packages of the index's release must be signed with (None: RequireGPGCheck = 0), loaded once."""
        release = index.release_dir.name
        if release not in self._keyrings:
            self._keyrings[release] = Keyring.for_release(self.config, release)
            if self._keyrings[release] is None:
                self.log.warning("Package signatures are not checked (RequireGPGCheck = 0)")
        return self._keyrings[release]

    def package_file(self, index: RepoIndex, package: Package) -> Path:
        """The package's file: in the mirror, or downloaded for a metadata-only release."""
        package_path = index.package_path(package)
        if package_path.is_file() or self.cache.holds(package.pkgid):
            return package_path
        if package.pkgid not in self.downloads:
            self.download_missing(index, [package])
        if package.pkgid in self.downloads:
            return self.downloads[package.pkgid]
        raise PackageUnavailable(f"{package.nevra} is in the metadata of {index.release_dir.name} but its file is missing "
                         "(the repository is being synchronised?); try again later", "repository error")

    def download_missing(self, index: RepoIndex | None, packages: Iterable[Package]) -> None:
        """Download, in parallel and within DownloadDeadline, the packages a metadata-only release lacks."""
        if index is None:
            return
        wanted: list[tuple[Package, str]] = []
        mirrors: set[str] = set()
        for package in packages:
            path = index.package_path(package)
            found = None if package.pkgid in self.downloads or self.cache.holds(package.pkgid) or path.is_file() \
                else package_url(index.release_dir, path)
            if found:
                mirrors.add(found[0])
                wanted.append((package, found[1]))
        if not wanted:
            return
        started = time.monotonic()
        results = download_packages(wanted, Path(self.config.CacheDir) / DOWNLOADS, self.config.DownloadDeadline)
        failures = [result for result in results.values() if isinstance(result, DownloadError)]
        self.downloads.update({pkgid: path for pkgid, path in results.items() if isinstance(path, Path)})
        failures = [failure for package, _ in wanted if isinstance(failure := results[package.pkgid], DownloadError)
                    and not self._from_history(package, index, failure)]
        size = sum(path.stat().st_size for pkgid, path in self.downloads.items() if pkgid in results)
        self.log.info("Downloaded %d of %d packages (%.1f MiB) from %s in %.3f s", len(wanted) - len(failures),
                      len(wanted), size / 1048576, ", ".join(sorted(mirrors)), time.monotonic() - started)
        if failures:
            raise PackageUnavailable(failures[0].sentence + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""),
                             "repository error")

    def _from_history(self, package: Package, index: RepoIndex, failure: DownloadError) -> bool:
        """Whether a history source gave the file the mirror could not (a superseded build the archive
        deleted), with the index's SHA256: the index vouches for it, the source only carries it."""
        if not self.history:
            return False
        version = f"{package.version}-{package.release}" if package.release else package.version
        epoch = f"{package.epoch}:" if package.epoch not in ("", "0") else ""
        wanted = Wanted(package.name, epoch + version if package.format == "deb" else version,
                        index.release_dir.name.rsplit("-", 1)[-1])
        self.log.info("%s; asking the history sources", failure.sentence)
        for source in (source for source in self.history if source.format == package.format):
            try:
                located = source.binary(wanted)
                if located is None:
                    continue
                fetched = self.fetch_history(source, located)
            except DownloadError as err:
                self.log.warning("%s", err.sentence)
                continue
            if fetched.pkgid == package.pkgid:
                self.downloads[package.pkgid] = self.downloads.pop(fetched.pkgid)
                self.log.info("Downloaded %s from %s", package.nevra, source)
                return True
            self.log.warning("%s served %s with a SHA256 other than the index lists; it was not used", source,
                             package.nevra)
            self.downloads.pop(fetched.pkgid).unlink(missing_ok=True)
        return False

    def fetch_history(self, source: HistorySource, located: Located) -> Package:
        """Download ``located`` from ``source`` (its file kept in ``downloads`` until the job ends); the
        Package it is, named by its SHA256."""
        directory = Path(self.config.CacheDir) / DOWNLOADS
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f".history-{os.getpid()}-{len(self.downloads)}-{located.file_name}"
        try:
            size, digests = source.download(located, target)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        package = history_package(located, digests["sha256"], size, source.format)
        if package.pkgid in self.downloads:
            target.unlink()
        else:
            self.downloads[package.pkgid] = target
        return package

    def _verifier(self, index: RepoIndex, package: Package, package_path: Path) -> Callable[[Path], None] | None:
        """What proves a package before it is unpacked: an RPM's signature (unless this task checked it
        already), a Debian package's SHA256 against the index (apt signs the index, not the package)."""
        if package.format == "deb":
            return lambda path: verify_checksum(path, package)
        keyring = self.keyring(index)
        if keyring is None or package_path in self._verified:
            return None
        return lambda path: keyring.verify(path, package.nevra)

    def verify_signatures(self, index: RepoIndex, packages: Iterable[Package]) -> None:
        """Check the signatures of the RPMs not unpacked yet, all with one rpm process."""
        signed = [package for package in packages if package.format == "rpm"]
        if not signed:
            return  # nothing signed by rpm (a release served by debuginfod only has no index)
        keyring = self.keyring(index)
        pending = [(self.downloads.get(package.pkgid) or index.package_path(package), package.nevra)
                   for package in signed if not self.cache.holds(package.pkgid)]
        if keyring is None or not pending:
            return
        started = time.monotonic()
        keyring.verify_all(pending)
        self._verified.update(path for path, _ in pending)
        self.log.info("Signatures of %d packages verified in %.3f s", len(pending), time.monotonic() - started)


def history_package(located: Located, sha256: str, size: int, package_format: str) -> Package:
    """The Package a history source's file is: its name and version as asked, its architecture from the file
    name, its checksum as computed while it downloaded."""
    stem = located.file_name.rsplit(".", 1)[0]
    if package_format == "deb":
        epoch, version, release = split_version(located.version)
        arch = stem.rsplit("_", 1)[-1]
    else:
        epoch, (version, _, release) = "0", located.version.split(":", 1)[-1].rpartition("-")
        arch = stem.rsplit(".", 1)[-1]
    return Package(sha256, located.name, epoch, version, release, arch, "", f"history/{located.file_name}", size,
                   package_format)
