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

Module debuginfo (``.ko`` on Debian, ``.ko.debug`` on Fedora) is taken
later, and only for the modules a dump has loaded: ``crash``'s ``mod`` names
them, their files join the kernel's entry (``root/modules/``, flat, which is
what ``mod -S`` searches), and modules the package lacks are remembered so
that no later task searches the package for them again.
"""

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from retrace import locking
from retrace.analysis.coredump import file_build_id
from retrace.errors import RetraceError
from retrace.packaging.cache import (MANIFEST, SIZE_FILE, cache_entries, cached_entry, evict_entry, extract_rpm_file,
                                     rpm_payload, safe_relative, tree_bytes, write_content)
from retrace.packaging.release import ReleaseId, canonical_arch

_RPM_ARCH = re.compile(r"\.(x86_64|aarch64|ppc64le|s390x|i686|armv7hl)(?:\+(\w+))?$")
_DEBIAN_ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "686": "i386", "686-pae": "i386", "ppc64el": "ppc64le",
                  "s390x": "s390x", "armmp": "armhfp", "armmp-lpae": "armhfp"}
_DEBIAN_FLAVOUR = re.compile(r"-(?:rt-|cloud-)?(" + "|".join(map(re.escape, _DEBIAN_ARCHES)) + r")$")
_DEB_EXTRACT_TIMEOUT = 1800
_MODULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_MAX_MODULES = 4096
MISSING_MODULES = ".missing"


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


def package_nevra(path):
    """``name-version-release.arch`` of a package file, the form the statistics split.

    RPM file names already have it; a .deb is ``name_version_arch.deb``, and
    its name (``linux-image-6.1.0-56-cloud-amd64-dbg``) is full of dashes.
    """
    name = Path(path).name
    if name.endswith(".deb"):
        package, version, arch = name.removesuffix(".deb").split("_", 2)
        return f"{package}-{version}.{arch}"
    return name.removesuffix(".rpm")


def _tar_from_deb(deb_path, tar_arguments, stdout):
    """Run ``tar`` with ``tar_arguments`` on a .deb's data; tar's exit status.

    dpkg-deb dies of a broken pipe when tar stops early, which is expected.
    """
    unpacker = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        return subprocess.run(["tar", *tar_arguments], stdin=unpacker.stdout, stdout=stdout,
                              stderr=subprocess.DEVNULL, timeout=_DEB_EXTRACT_TIMEOUT).returncode
    finally:
        unpacker.stdout.close()
        unpacker.kill()
        unpacker.wait()


def extract_deb_file(deb_path, member, target):
    """Write ``member`` of a .deb to ``target``; whether it was there.

    ``tar --occurrence=1`` stops reading the xz stream at the file (3 s
    instead of 18 s for a Debian -dbg package).
    """
    with open(target, "wb") as out:
        status = _tar_from_deb(deb_path, ["x", "-O", "--occurrence=1", f"./{member}"], out)
    return status == 0 and os.path.getsize(target) > 0


def extract_vmlinux(package, member, target):
    extract = extract_deb_file if package.suffix == ".deb" else extract_rpm_file
    return extract(package, member, target)


def module_files(package, names):
    """``{file name: module name}`` a package may hold for ``names`` (``_`` and ``-`` are one in module names)."""
    suffix = ".ko" if package.suffix == ".deb" else ".ko.debug"
    files = {}
    for name in sorted(names)[:_MAX_MODULES]:
        if _MODULE_NAME.fullmatch(name):
            files[name + suffix] = name
            files[name.replace("_", "-") + suffix] = name
    return files


def _extract_deb_modules(deb_path, directory, files, target):
    """One pass over the .deb: the wanted files under ``directory``, flat into ``target``."""
    patterns = [f"./{directory}/*/{name}" for name in sorted(files)]
    # tar fails for the name variants that are not there; what it found is what counts.
    _tar_from_deb(deb_path, ["x", "-C", str(target), "--wildcards", "--transform", "s,.*/,,", "--", *patterns],
                  subprocess.DEVNULL)


def _extract_rpm_modules(rpm_path, directory, files, target):
    with rpm_payload(rpm_path) as archive:
        for entry in archive:
            relative = safe_relative(entry.name)
            name = relative.rsplit("/", 1)[-1]
            if (relative.startswith(directory + "/") and name in files and stat.S_ISREG(entry.mode)
                    and archive.hascontent() and not (target / name).exists()):
                write_content(archive, target / name, entry.mode)


def extract_module_debuginfo(package, release, names, target):
    """Write the debuginfo files of modules ``names`` found in ``package`` into ``target``; the names found."""
    files = module_files(package, names)
    directory = f"usr/lib/debug/lib/modules/{release}"
    extract = _extract_deb_modules if package.suffix == ".deb" else _extract_rpm_modules
    extract(package, directory, files, target)
    return {files[path.name] for path in target.iterdir() if path.name in files}


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
        """The cached vmlinux for ``key`` (its last use refreshed, for the cleanup), or None."""
        path = self.entry_path(key) / "root" / "vmlinux"
        if not ((self.entry_path(key) / SIZE_FILE).exists() and path.is_file()):
            return None
        os.utime(self.entry_path(key) / MANIFEST)
        return path

    def get(self, key, fill, on_wait=lambda: None):
        """The entry for ``key``, made by ``fill(vmlinux path)`` if missing (KernelError from fill aborts it)."""
        def build(tmp):
            (tmp / "root").mkdir()
            vmlinux = tmp / "root" / "vmlinux"
            fill(vmlinux)
            return [("vmlinux", "f", "", file_build_id(vmlinux) or "")]

        return cached_entry(self.entry_path(key), self.lock_path(key), build, on_wait)

    def modules_dir(self, key):
        return self.entry_path(key) / "root" / "modules"

    def missing_modules(self, key):
        """Modules an earlier task looked for in the package and did not find."""
        try:
            return set((self.modules_dir(key) / MISSING_MODULES).read_text().split())
        except FileNotFoundError:
            return set()

    def add_modules(self, key, names, fill, on_wait=lambda: None):
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

    def entries(self):
        return cache_entries(self.kernels_dir)

    def evict(self, key):
        return evict_entry(self.entry_path(key), self.lock_path(key))
