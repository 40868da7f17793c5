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
"""

import os
import re
import subprocess
from pathlib import Path

from retrace.cache import SIZE_FILE, cache_entries, cached_entry, evict_entry, extract_rpm_file
from retrace.coredump import file_build_id
from retrace.errors import RetraceError
from retrace.release import ReleaseId, canonical_arch

_RPM_ARCH = re.compile(r"\.(x86_64|aarch64|ppc64le|s390x|i686|armv7hl)(?:\+(\w+))?$")
_DEBIAN_ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "686": "i386", "686-pae": "i386", "ppc64el": "ppc64le",
                  "s390x": "s390x", "armmp": "armhfp", "armmp-lpae": "armhfp"}
_DEBIAN_FLAVOUR = re.compile(r"-(?:rt-|cloud-)?(" + "|".join(map(re.escape, _DEBIAN_ARCHES)) + r")$")
_DEB_EXTRACT_TIMEOUT = 1800


class KernelError(RetraceError):
    """The crashed kernel's vmlinux cannot be had."""

    category = "missing kernel debuginfo"


def kernel_arch(release):
    """The canonical architecture a kernel release string names (``.x86_64``, ``-amd64``), or None."""
    match = _RPM_ARCH.search(release)
    if match:
        return canonical_arch(match[1])
    match = _DEBIAN_FLAVOUR.search(release)
    return _DEBIAN_ARCHES[match[1]] if match else None


def is_debian_kernel(release):
    return _RPM_ARCH.search(release) is None and _DEBIAN_FLAVOUR.search(release) is not None


def debuginfo_packages(release):
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


def repository_releases(repo_dir):
    """Every release directory under RepoDir (a Debian one has no RPM metadata), sorted."""
    try:
        names = os.listdir(repo_dir)
    except FileNotFoundError:
        return []
    return sorted(release for release in map(ReleaseId.parse, names)
                  if release is not None and os.path.isdir(os.path.join(repo_dir, str(release))))


def find_debuginfo_package(repo_dir, releases, kernel_release):
    """``(release, package path, vmlinux member)`` of the first repository holding the kernel's debuginfo."""
    for release in releases:
        release_dir = Path(repo_dir) / str(release)
        for pattern, member in debuginfo_packages(kernel_release):
            for directory in (release_dir / "Packages", release_dir):
                found = sorted(directory.glob(pattern))
                if found:
                    return release, found[-1], member
    return None


def extract_deb_file(deb_path, member, target):
    """Write ``member`` of a .deb to ``target``; whether it was there.

    ``tar --occurrence=1`` stops reading the xz stream at the file (3 s
    instead of 18 s for a Debian -dbg package); dpkg-deb then dies of a
    broken pipe, which is expected.
    """
    with open(target, "wb") as out:
        unpacker = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb_path)], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            tar = subprocess.run(["tar", "x", "-O", "--occurrence=1", f"./{member}"], stdin=unpacker.stdout,
                                 stdout=out, stderr=subprocess.PIPE, timeout=_DEB_EXTRACT_TIMEOUT)
        finally:
            unpacker.stdout.close()
            unpacker.kill()
            unpacker.wait()
    return tar.returncode == 0 and os.path.getsize(target) > 0


def extract_vmlinux(package, member, target):
    extract = extract_deb_file if package.suffix == ".deb" else extract_rpm_file
    return extract(package, member, target)


class KernelCache:
    """``<CacheDir>/kernel/<key>/root/vmlinux``; the key is the build-id (``release-<r>`` without one)."""

    def __init__(self, cache_dir):
        self.kernels_dir = Path(cache_dir) / "kernel"
        self.kernels_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(build_id, release):
        return build_id or f"release-{release}"

    def entry_path(self, key):
        return self.kernels_dir / key

    def lock_path(self, key):
        return self.kernels_dir / f"{key}.lock"

    def cached(self, key):
        """The cached vmlinux for ``key``, or None."""
        path = self.entry_path(key) / "root" / "vmlinux"
        return path if (self.entry_path(key) / SIZE_FILE).exists() and path.is_file() else None

    def get(self, key, fill, on_wait=lambda: None):
        """The entry for ``key``, made by ``fill(vmlinux path)`` if missing (KernelError from fill aborts it)."""
        def build(tmp):
            (tmp / "root").mkdir()
            vmlinux = tmp / "root" / "vmlinux"
            fill(vmlinux)
            return [("vmlinux", "f", "", file_build_id(vmlinux) or "")]

        return cached_entry(self.entry_path(key), self.lock_path(key), build, on_wait)

    def entries(self):
        return cache_entries(self.kernels_dir)

    def evict(self, key):
        return evict_entry(self.entry_path(key), self.lock_path(key))
