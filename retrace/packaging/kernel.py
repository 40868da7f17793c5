"""The vmlinux of a crashed kernel: found by its release string, proven by its build-id, kept once.

A vmlinux with DWARF is hundreds of MB inside a package of hundreds more,
so only that one file is extracted, once, into ``<CacheDir>/kernel/<build-id>/``
(the same lock-tmp-rename entries as the package cache, evicted by
``retrace-server-cleanup`` under the same CacheSize budget).  Packages are
found by name in the release repositories, as the distributions name them:

* Fedora, RHEL, CentOS: ``kernel[-<flavour>]-debuginfo-<V>-<R>.<A>.rpm`` with
  ``/usr/lib/debug/lib/modules/<release>/vmlinux``;
* Debian: ``linux-image-<release>-dbg_*.deb`` with
  ``/usr/lib/debug/boot/vmlinux-<release>``.

A vmlinux of the same release string but another build (a rebuilt package)
only makes ``crash`` warn, and its backtrace is wrong, so the build-id the
dump records must be the vmlinux's, or the vmlinux is refused.

Module debuginfo (``.ko`` on Debian, ``.ko.debug`` on Fedora) joins the
entry only for the modules a dump has loaded: ``crash``'s ``mod`` names
them, their files join the kernel's entry (``root/modules/``, flat, which is
what ``mod -S`` searches), and modules the package lacks are remembered so
that no later task searches the package for them again.  The first dump of
a kernel has them from the pass that took its vmlinux (``KernelPass``); a
later dump that loaded others reads the package again for those.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import tempfile
import threading
import typing
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from retrace_server import locking
from retrace_server.arch import canonical_arch
from retrace_server.compression import DEFAULT_DECODER_MEMORY
from retrace_server.elf import file_build_id
from retrace_server.errors import RetraceError
from retrace_server.packaging import formats
from retrace_server.packaging.cache import MANIFEST, SIZE_FILE, cache_entries, cached_entry, evict_entry, tree_bytes
from retrace_server.packaging.download import package_url
from retrace_server.packaging.release import ReleaseId
from retrace_server.packaging.repoindex import RepositoryError, release_index

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from retrace_server.packaging.cache import CachedPackage
    from retrace_server.packaging.payload import ManifestEntry
    from retrace_server.packaging.repoindex import Package

_RPM_ARCH = re.compile(r"\.(x86_64|aarch64|ppc64le|s390x|i686|armv7hl)(?:\+(\w+))?$")
_DEBIAN_ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "686": "i386", "686-pae": "i386", "ppc64el": "ppc64le",
                  "s390x": "s390x", "armmp": "armhfp", "armmp-lpae": "armhfp"}
_DEBIAN_FLAVOUR = re.compile(r"-(?:rt-|cloud-)?(" + "|".join(map(re.escape, _DEBIAN_ARCHES)) + r")$")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_MAX_MODULES = 4096
MISSING_MODULES = ".missing"


class KernelError(RetraceError):
    """The crashed kernel's vmlinux cannot be had."""

    category = "missing kernel debuginfo"


def kernel_arch(release: str) -> str | None:
    """The canonical architecture a kernel release string names (``.x86_64``, ``-amd64``), or None."""
    match = _RPM_ARCH.search(release)
    if match:
        return canonical_arch(match[1])
    match = _DEBIAN_FLAVOUR.search(release)
    return _DEBIAN_ARCHES[match[1]] if match else None


def is_debian_kernel(release: str) -> bool:
    return _RPM_ARCH.search(release) is None and _DEBIAN_FLAVOUR.search(release) is not None


def debuginfo_packages(release: str) -> list[tuple[str, str]]:
    """``[(package file glob, vmlinux path inside it)]`` for a kernel release string."""
    if is_debian_kernel(release):
        return [(f"linux-image-{release}-dbg_*.deb", f"usr/lib/debug/boot/vmlinux-{release}")]
    match = _RPM_ARCH.search(release)
    if match is None:
        return []
    base = release[:match.start(2) - 1] if match[2] else release
    flavour = match[2] or ("rt" if ".rt" in base else None)
    name = f"kernel-{flavour}-debuginfo" if flavour else "kernel-debuginfo"
    return [(f"{name}-{base}.rpm", f"usr/lib/debug/lib/modules/{release}/vmlinux")]


def repository_releases(repo_dir: str | Path) -> list[ReleaseId]:
    """Every release directory under RepoDir (a Debian one has no RPM metadata), sorted."""
    try:
        names = os.listdir(repo_dir)
    except FileNotFoundError:
        return []
    return sorted(release for release in map(ReleaseId.parse, names)
                  if release is not None and os.path.isdir(os.path.join(repo_dir, str(release))))


class KernelPackage(typing.NamedTuple):
    """A kernel debuginfo package found in a release.  ``indexed`` is its index entry, whose SHA256 the
    file must have; ``url`` where its mirror serves it when the release keeps metadata only (``path`` is
    then where the file would be, and the worker downloads it).  ``release`` None: it came from
    KernelDebuginfoURL, outside every release, and only the vmlinux's build-id proves it."""

    release: ReleaseId | None
    path: Path
    member: str
    indexed: Package | None = None
    url: str | None = None


_URL_FIELD = re.compile(r"[A-Za-z0-9._+~-]+")


def kernel_url_fields(release: str) -> dict[str, str] | None:
    """``$BASENAME $VERSION $RELEASE $ARCH`` of a kernel release string for KernelDebuginfoURL (upstream's
    template): Fedora's 6.5.6-300.fc39.x86_64 is kernel, 6.5.6, 300.fc39, x86_64 (kernel-rt for a real-time
    kernel); Debian's 6.1.0-57-cloud-amd64 is linux, 6.1.0, 57-cloud, amd64."""
    rpm = _RPM_ARCH.search(release)
    if rpm is not None:
        base = release[:rpm.start()]
        version, _, package_release = base.partition("-")
        basename = "kernel-rt" if rpm[2] == "rt" or ".rt" in base else "kernel"
        fields = {"BASENAME": basename, "VERSION": version, "RELEASE": package_release, "ARCH": rpm[1]}
    elif (debian := _DEBIAN_FLAVOUR.search(release)) is not None:
        version, _, abi = release[:debian.start()].partition("-")
        fields = {"BASENAME": "linux", "VERSION": version, "RELEASE": abi, "ARCH": debian[1]}
    else:
        return None
    return fields if all(_URL_FIELD.fullmatch(value) for value in fields.values()) else None


def kernel_url_directory(template: str, release: str) -> str | None:
    """KernelDebuginfoURL with the kernel's fields put in (a directory: it ends with /), or None."""
    fields = kernel_url_fields(release)
    if fields is None:
        return None
    for name, value in sorted(fields.items(), key=lambda item: -len(item[0])):
        template = template.replace(f"${name}", value)
    return template if template.endswith("/") else template + "/"


_HREF = re.compile(r"""href=["']?([^"' >]+)""", re.I)


def listed_package(listing: str, release: str) -> tuple[str, str] | None:
    """``(file name, member)`` of the kernel's debuginfo package among a directory listing's links, the
    newest name first; RPM names are exact, so an RPM is also tried when the listing does not link it."""
    names = {unquote(link.rsplit("/", 1)[-1]) for link in _HREF.findall(listing)}
    for pattern, member in debuginfo_packages(release):
        found = sorted((name for name in names if fnmatch.fnmatchcase(name, pattern)), reverse=True)
        if found:
            return found[0], member
        if not any(char in pattern for char in "*?["):
            return pattern, member
    return None


def find_debuginfo_package(repo_dir: str | Path, releases: Iterable[ReleaseId], kernel_release: str,
                           cache_dir: str | Path | None = None) -> KernelPackage | None:
    """The KernelPackage of the first repository holding the kernel's debuginfo: a file beside the
    release's packages, or a package its index lists (an apt release spreads them over ``pool/``; a
    metadata-only release has them on its mirror)."""
    for release in releases:
        release_dir = Path(repo_dir) / str(release)
        for pattern, member in debuginfo_packages(kernel_release):
            for directory in (release_dir / "Packages", release_dir):
                found = sorted(directory.glob(pattern))
                if found:
                    return KernelPackage(release, found[-1], member)
            indexed = _indexed_package(repo_dir, release, cache_dir, pattern) if cache_dir is not None else None
            if indexed is not None:
                return KernelPackage(release, indexed[0], member, *indexed[1:])
    return None


def _indexed_package(repo_dir: str | Path, release: ReleaseId, cache_dir: str | Path,
                     pattern: str) -> tuple[Path, Package, str | None] | None:
    """``(path, Package, mirror URL or None)`` of the newest package of the release's index whose file name
    fits ``pattern`` and that is on disk or on the release's mirror."""
    try:
        index = release_index(repo_dir, cache_dir, release)
    except RepositoryError:
        return None
    if index is None:
        return None
    release_dir = index.release_dir
    try:
        for package in sorted(index.by_file_name(pattern), key=lambda package: package.file_name, reverse=True):
            path = index.package_path(package)
            if path.is_file():
                return path, package, None
            mirrored = package_url(release_dir, path)
            if mirrored is not None:
                return path, package, mirrored[1]
    except RepositoryError:
        return None
    finally:
        index.close()
    return None


def package_nevra(path: Path) -> str:
    """``name-version-release.arch`` of a package file, the form the statistics split.

    RPM file names already have it; a .deb is ``name_version_arch.deb``, and
    its name (``linux-image-6.1.0-56-cloud-amd64-dbg``) is full of dashes.
    """
    name = Path(path).name
    if formats.of_file(path) is formats.DEB:
        package, version, arch = Path(name).stem.split("_", 2)
        return f"{package}-{version}.{arch}"
    return name.removesuffix(".rpm")


def extract_vmlinux(package: Path, member: str, target: Path, memlimit: int = DEFAULT_DECODER_MEMORY) -> bool:
    return formats.extract_file(package, member, target, memlimit)


def module_files(package: Path, names: Iterable[str]) -> dict[str, str]:
    """``{file name: module name}`` a package may hold for ``names`` (``_`` and ``-`` are one in module names)."""
    suffix = ".ko" if formats.of_file(package) is formats.DEB else ".ko.debug"
    files: dict[str, str] = {}
    for name in sorted(names)[:_MAX_MODULES]:
        if _MODULE_NAME.fullmatch(name):
            files[name + suffix] = name
            files[name.replace("_", "-") + suffix] = name
    return files


def extract_module_debuginfo(package: Path, release: str, names: Iterable[str], target: Path,
                             memlimit: int = DEFAULT_DECODER_MEMORY) -> set[str]:
    """Write the debuginfo files of modules ``names`` found in ``package`` into ``target``; the names found."""
    files = module_files(package, names)
    directory = f"usr/lib/debug/lib/modules/{release}"
    formats.extract_files(package, directory, set(files), target, memlimit)
    return {files[path.name] for path in target.iterdir() if path.name in files}


class KernelPass:
    """One pass over a kernel debuginfo package for a dump of a new kernel: the vmlinux, then in the same
    pass, in a thread of its own while crash reads that vmlinux, every module's debuginfo file into a
    directory beside the kernel entries (``.tmp-modules-*``, locked, so the cleanup's sweep leaves it).

    Which modules the dump loaded is known only once crash has read the
    dump; taking them in a second pass over the package read it all again
    (hundreds of MB of xz) after crash's first batch, where this pass
    decompresses while crash works, and writes only the loaded ones once
    crash named them.  ``modules`` moves those into the kernel's entry;
    ``close`` stops the pass and removes the rest.
    """

    def __init__(self, package: Path, member: str, kernel_release: str, kernels_dir: Path,
                 memlimit: int = DEFAULT_DECODER_MEMORY) -> None:
        self.package, self.member, self.memlimit = package, member, memlimit
        self.directory = f"usr/lib/debug/lib/modules/{kernel_release}/"
        self.suffix = ".ko" if formats.of_file(package) is formats.DEB else ".ko.debug"
        self.modules_tmp = Path(tempfile.mkdtemp(dir=kernels_dir, prefix=".tmp-modules-"))
        self._building = locking.try_exclusive(self.modules_tmp / ".building")
        (self.modules_tmp / "modules").mkdir()
        self._vmlinux: Path | None = None
        self._vmlinux_written = False
        self._vmlinux_known = threading.Event()  # set once the vmlinux is whole, or the pass ended without it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wanted: set[str] | None = None  # the module files the dump needs, once crash said
        self.error: BaseException | None = None  # what ended the pass early

    def vmlinux(self, target: Path) -> bool:
        """Start the pass and wait until the vmlinux is at ``target``; False when the pass ended without it
        (the package lacks it, or holds it as a hard link: ``extract_vmlinux`` follows those)."""
        self._vmlinux = target
        self._thread = threading.Thread(target=self._run, name="kernel-package-pass", daemon=True)
        self._thread.start()
        self._vmlinux_known.wait()
        if not self._vmlinux_written and isinstance(self.error, RetraceError):
            raise self.error
        return self._vmlinux_written

    def _run(self) -> None:
        try:
            formats.extract_each(self.package, self._place, self._written, self.memlimit)
        except _Stopped:
            pass
        except BaseException as err:  # told to the task by vmlinux() or modules()
            self.error = err
        finally:
            self._vmlinux_known.set()

    def _place(self, relative: str) -> Path | None:
        if self._stop.is_set():
            raise _Stopped
        if relative == self.member and not self._vmlinux_written:
            return self._vmlinux
        name = relative.rsplit("/", 1)[-1]
        wanted = self._wanted
        if (relative.startswith(self.directory) and name.endswith(self.suffix) and (wanted is None or name in wanted)
                and _MODULE_NAME.fullmatch(name.removesuffix(self.suffix))):
            destination = self.modules_tmp / "modules" / name
            return None if destination.exists() else destination
        return None

    def _written(self, relative: str) -> None:
        if relative == self.member:
            self._vmlinux_written = True
            self._vmlinux_known.set()

    def modules(self, names: Iterable[str], target: Path) -> set[str] | None:
        """Wait for the pass to end, then move the files of modules ``names`` into ``target``; the names
        found, or None when the pass failed (the caller reads the package again)."""
        if self._thread is None:
            return None
        files = module_files(self.package, names)
        self._wanted = set(files)  # from now on the pass writes only these
        self._thread.join()
        if self.error is not None:
            return None
        found = set()
        for file_name, module in files.items():
            source = self.modules_tmp / "modules" / file_name
            if source.is_file() and not (target / file_name).exists():
                os.replace(source, target / file_name)
                found.add(module)
        return found

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._building is not None:
            os.close(self._building)
            self._building = None
        shutil.rmtree(self.modules_tmp, ignore_errors=True)


class _Stopped(Exception):
    """The pass is no longer wanted (the task ended)."""


class KernelCache:
    """``<CacheDir>/kernel/<key>/root/vmlinux``; the key is the build-id (``release-<r>`` without one)."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.kernels_dir = Path(cache_dir) / "kernel"
        self.kernels_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(build_id: str | None, release: str) -> str:
        return build_id or f"release-{release}"

    def entry_path(self, key: str) -> Path:
        return self.kernels_dir / key

    def lock_path(self, key: str) -> Path:
        return self.kernels_dir / f"{key}.lock"

    def cached(self, key: str) -> Path | None:
        """The cached vmlinux for ``key`` (its last use refreshed, for the cleanup), or None."""
        path = self.entry_path(key) / "root" / "vmlinux"
        if not ((self.entry_path(key) / SIZE_FILE).exists() and path.is_file()):
            return None
        os.utime(self.entry_path(key) / MANIFEST)
        return path

    def get(self, key: str, fill: Callable[[Path], object], on_wait: Callable[[], None] = lambda: None) -> CachedPackage:
        """The entry for ``key``, made by ``fill(vmlinux path)`` if missing (KernelError from fill aborts it)."""
        def build(tmp: Path) -> list[ManifestEntry]:
            (tmp / "root").mkdir()
            vmlinux = tmp / "root" / "vmlinux"
            fill(vmlinux)
            return [("vmlinux", "f", "", file_build_id(vmlinux) or "")]

        return cached_entry(self.entry_path(key), self.lock_path(key), build, on_wait)

    def modules_dir(self, key: str) -> Path:
        return self.entry_path(key) / "root" / "modules"

    def missing_modules(self, key: str) -> set[str]:
        """Modules an earlier task looked for in the package and did not find."""
        try:
            return set((self.modules_dir(key) / MISSING_MODULES).read_text().split())
        except FileNotFoundError:
            return set()

    def add_modules(self, key: str, names: Iterable[str], fill: Callable[[Path], set[str]],
                    on_wait: Callable[[], None] = lambda: None) -> set[str]:
        """Add the module debuginfo ``fill(directory)`` writes for ``names``; the names it found.

        Under the entry's lock (the one eviction takes), into a temporary
        directory first, so a task never sees half a file; the entry's size
        is updated for the cleanup's budget.
        """
        with locking.exclusive(self.lock_path(key), on_wait):
            entry = self.entry_path(key)
            if not (entry / SIZE_FILE).exists():
                return set()
            modules = self.modules_dir(key)
            modules.mkdir(exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=entry, prefix=".modules-"))
            try:
                found = fill(tmp)
                for path in tmp.iterdir():
                    if path.is_file() and not path.is_symlink() and not (modules / path.name).exists():
                        os.replace(path, modules / path.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            missing = (self.missing_modules(key) | set(names)) - found
            (modules / MISSING_MODULES).write_text("\n".join(sorted(missing)) + "\n")
            (entry / SIZE_FILE).write_text(str(tree_bytes(entry / "root")))
            return found

    def entries(self) -> list[tuple[str, float, int]]:
        return cache_entries(self.kernels_dir)

    def evict(self, key: str) -> bool:
        return evict_entry(self.entry_path(key), self.lock_path(key))
