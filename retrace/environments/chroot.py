"""``RetraceEnvironment = chroot``: gdb from the crashed release's own userland.

Per release, a *gdb root* (``ChrootPackages``, by default just gdb, with
everything it requires) is installed once with ``dnf --installroot`` from
the release's repository into ``<CacheDir>/roots/``, and kept until the
repository's versions of those packages change.  dnf runs as the service
user inside a user namespace where it is root (bubblewrap with a uid 0
mapping), so no real root is needed and nothing it installs can touch the
host; the spool is hidden from it.

Per task, the gdb root and the crash's packages (from the unpacked package
cache) are linked into one tree (``retrace_server.environments.sysroot``), which bubblewrap
then mounts as ``/`` for gdb: no copying, no installing per task.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server.environments.base import View, Workload
from retrace_server.environments.sysroot import SysrootEnvironment, real_directory
from retrace_server.errors import RetraceError
from retrace_server.packaging.cache import CachedPackage, PackageCache, cache_entries, cached_entry, evict_entry

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable

    from retrace_server.packaging.payload import ManifestEntry
    from retrace_server.packaging.repoindex import RepoIndex
    from retrace_server.paths import StrPath

_DNF_TIMEOUT = 3600
# Mount points bubblewrap needs inside a root it mounts read-only.
MOUNT_POINTS = ("proc", "dev", "tmp")


class ChrootError(RetraceError):
    """The release's gdb root cannot be built."""

    category = "environment"


def root_key(index: RepoIndex, names: Collection[str]) -> str:
    """A digest of every repository package named in ``names``: it changes when any version does."""
    packages = [package for package in index.all_packages() if package.name in names]
    missing = set(names) - {package.name for package in packages}
    if missing:
        raise ChrootError(
            f"the repository of {index.release_dir.name} has no {', '.join(sorted(missing))} "
            "to build the gdb root from (ChrootPackages)"
        )
    return hashlib.sha256(" ".join(sorted(package.pkgid for package in packages)).encode()).hexdigest()[:16]


def manifest_of(root: StrPath) -> list[ManifestEntry]:
    """Every directory, file and symlink under ``root`` in the package cache's manifest form."""
    entries: list[ManifestEntry] = []
    for directory, dirs, files in os.walk(root):
        relative_dir = os.path.relpath(directory, root)
        for name in list(dirs):
            relative = os.path.normpath(os.path.join(relative_dir, name))
            path = os.path.join(directory, name)
            if os.path.islink(path):
                entries.append((relative, "l", os.readlink(path), ""))
                dirs.remove(name)
            else:
                entries.append((relative, "d", "", ""))
        for name in files:
            relative = os.path.normpath(os.path.join(relative_dir, name))
            path = os.path.join(directory, name)
            if os.path.islink(path):
                entries.append((relative, "l", os.readlink(path), ""))
            elif os.path.isfile(path):
                entries.append((relative, "f", "", ""))
    return entries


def prepare_mount_points(root: StrPath, paths: Iterable[StrPath]) -> None:
    """Create, inside a root bubblewrap will mount read-only, where ``paths`` get mounted: real directories,
    never a folded one (bubblewrap would follow its link out of the root, and a directory made through it
    would land in the package cache)."""
    for name in ("proc", "dev", "tmp"):
        real_directory(root, name)
    for path in map(str, paths):
        if os.path.isdir(path):
            real_directory(root, path)
        else:
            directory = real_directory(root, os.path.dirname(path))
            open(os.path.join(directory, os.path.basename(path)), "a").close()


def dnf_argv(root: Path, cache: Path, release_dir: Path, version: str, packages: Iterable[str],
             gpg_keys: Iterable[StrPath] | None = None) -> list[str]:
    """dnf installing ``packages``; with ``gpg_keys`` (RequireGPGCheck) only packages signed by them."""
    if gpg_keys is None:
        signatures = ["--nogpgcheck"]
    else:
        signatures = ["--setopt=retrace.gpgcheck=1",
                      "--setopt=retrace.gpgkey=" + ",".join(f"file://{path}" for path in gpg_keys)]
    return [
        "dnf", "--installroot", str(root), "--releasever", version, "--setopt=reposdir=/dev/null",
        f"--setopt=cachedir={cache}", "--setopt=install_weak_deps=False", "--setopt=tsflags=nodocs",
        "--setopt=keepcache=False", "--repofrompath", f"retrace,file://{release_dir}", "--repo", "retrace",
        *signatures, "-y", "-q", "install", *packages,
    ]


def fakeroot_argv(command: list[str], writable: Iterable[StrPath], hidden: Iterable[StrPath]) -> list[str]:
    """bubblewrap making the caller root of a private user namespace, network off.

    The host is visible read-only (dnf and rpm come from it); ``writable``
    paths are bound read-write and ``hidden`` ones replaced by empty tmpfs.
    """
    argv = ["bwrap", "--unshare-user", "--uid", "0", "--gid", "0", "--cap-add", "ALL", "--unshare-net",
            "--unshare-ipc", "--unshare-pid", "--die-with-parent", "--ro-bind", "/", "/",
            "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev"]
    for path in hidden:
        argv += ["--tmpfs", str(path)]
    # Last, so that no tmpfs above can cover a writable path below it.
    for path in writable:
        argv += ["--bind", str(path), str(path)]
    return argv + ["--", *command]


class GdbRoots:
    def __init__(self, cache_dir: StrPath) -> None:
        self.roots_dir = self.directory(cache_dir)
        self.roots_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def directory(cache_dir: StrPath) -> Path:
        return Path(cache_dir) / "roots"

    def get(self, release: str, version: str, release_dir: Path, key: str, packages: list[str],
            hidden: Iterable[StrPath] = (), on_wait: Callable[[], None] = lambda: None,
            gpg_keys: Iterable[StrPath] | None = None) -> CachedPackage:
        """The gdb root of ``release`` for ``key``, built with dnf if it is not there yet.

        It has the shape of a cache entry (``root/``, ``manifest.json``), so
        it joins a task's tree like any unpacked package; ``unpacked`` says
        that this call built it.  ``gpg_keys``: the keys its packages must be
        signed with (None: not checked).
        """
        def install(tmp: Path) -> list[ManifestEntry]:
            self._install(tmp, version, release_dir, packages, hidden, gpg_keys)
            return manifest_of(tmp / "root")

        return cached_entry(self.roots_dir / f"{release}-{key}", self.roots_dir / f"{release}.lock", install, on_wait)

    def entries(self) -> list[tuple[str, float, int]]:
        """``(name, last use, bytes)`` of every built gdb root."""
        return cache_entries(self.roots_dir)

    def evict(self, name: str) -> bool:
        release = name.rsplit("-", 1)[0]
        return evict_entry(self.roots_dir / name, self.roots_dir / f"{release}.lock")

    @staticmethod
    def _install(tmp: Path, version: str, release_dir: Path, packages: list[str], hidden: Iterable[StrPath],
                 gpg_keys: Iterable[StrPath] | None) -> None:
        if shutil.which("dnf") is None:
            raise ChrootError("RetraceEnvironment = chroot needs dnf, which is not installed on this server")
        root, cache = tmp / "root", tmp / "dnf-cache"
        root.mkdir()
        cache.mkdir()
        command = fakeroot_argv(dnf_argv(root, cache, release_dir, version, packages, gpg_keys), [tmp], hidden)
        try:
            result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                    timeout=_DNF_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ChrootError(f"dnf did not install {' '.join(packages)} within {_DNF_TIMEOUT} s") from None
        if result.returncode != 0:
            said = " | ".join(line for line in result.stderr.strip().splitlines()[-4:] if line.strip())
            said = said.replace(str(tmp), "<gdb root>")
            raise ChrootError(f"dnf could not install {' '.join(packages)} for the gdb root: {said or 'no output'}")
        shutil.rmtree(cache, ignore_errors=True)
        if not (root / "usr" / "bin" / "gdb").exists():
            raise ChrootError(f"the gdb root has no /usr/bin/gdb after installing {' '.join(packages)}")


class ChrootEnvironment(SysrootEnvironment):
    """The release's own gdb (ChrootPackages, installed once per release with dnf) with the crash's packages
    linked around it, the whole tree mounted as gdb's ``/``."""

    name = "chroot"
    native_only = True
    needs_full_rpm_mirror = True
    shares_trees = False

    def _trees(self, work: Workload) -> list[CachedPackage]:
        return [*work.trees, self._gdb_root(work)]

    def _gdb_root(self, work: Workload) -> CachedPackage:
        if work.index is None:
            raise ChrootError(f"RetraceEnvironment = chroot needs a mirror of {work.release}")
        packages = self.config.ChrootPackages.split()
        release = work.index.release_dir.name
        entry = GdbRoots(self.config.CacheDir).get(
            release, release.split("-")[1], work.index.release_dir, root_key(work.index, packages), packages,
            hidden=[self.config.SaveDir], gpg_keys=self.config.required_gpg_keys(release),
            on_wait=lambda: self.log.info("Waiting for another task building the gdb root of %s", release))
        if entry.unpacked:
            self.log.info("Built the gdb root of %s (%s) with dnf in %.3f s", release, " ".join(packages),
                          entry.seconds)
        else:
            self.log.info("Reused the gdb root of %s", release)
        return entry

    def _complete(self, root: Path, work: Workload, merged: bool) -> int:
        prepare_mount_points(root, self.read_only_paths(work))
        return 0

    def view(self, work: Workload) -> View:
        return View("/", str(work.core), "gdb")

    def read_only_paths(self, work: Workload) -> list[Path]:
        return [PackageCache.directory(self.config.CacheDir), work.core, GdbRoots.directory(self.config.CacheDir),
                *work.extra_read_only]

    def _root(self) -> Path:
        return self.tree
