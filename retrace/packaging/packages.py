"""Which packages a release's repository holds, and which a crash needs."""
from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from retrace_server.arch import ARCH_FAMILIES, canonical_arch

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from retrace_server.elf import Module
    from retrace_server.packaging.release import ReleaseId
    from retrace_server.packaging.repoindex import Package, RepoIndex

_EPOCH = re.compile(r"-[0-9]+:")


def strip_epoch(nvr: str) -> str:
    """``bash-1:5.2-3`` -> ``bash-5.2-3``: RPM file names carry no epoch."""
    return _EPOCH.sub("-", nvr, count=1)


def _candidate_names(nvr: str, arch: str) -> list[str]:
    family = ARCH_FAMILIES.get(canonical_arch(arch), (arch,))
    base = strip_epoch(nvr)
    return [f"{base}.{rpm_arch}.rpm" for rpm_arch in (*family, "noarch")]


def is_package_known(repo_dir: Path, releases: list[ReleaseId], nvr: str, arch: str) -> bool:
    """Whether any of ``releases`` holds the RPM of ``nvr`` built for ``arch``.

    Looks where reposync and Fedora put packages: flat in ``Packages/``,
    in ``Packages/<first letter>/``, or at the top of the release directory.
    Unlike upstream, noarch packages count too (upstream issue #189).
    """
    for release in releases:
        root = repo_dir / str(release)
        for file_name in _candidate_names(nvr, arch):
            places = (root / "Packages" / file_name, root / "Packages" / file_name[0].lower() / file_name, root / file_name)
            if any(place.is_file() for place in places):
                return True
    return False


def build_id_debug_path(build_id: str) -> str:
    """Where a build's separate debuginfo lives (``debug-file-directory``: packages ship it there, gdb looks
    for it there)."""
    return f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"


def usr_merge_variants(path: str, merged: bool = True) -> list[str]:
    """``path`` and its twin across the /lib -> /usr/lib merge (packages use either), on a release that
    ``merged`` /usr (``release.merges_usr``); elsewhere the two are different files."""
    variants = [path]
    if not merged:
        return variants
    if not path.startswith("/usr/"):
        variants.append("/usr" + path)
    elif path.startswith(("/usr/lib", "/usr/bin", "/usr/sbin")):
        variants.append(path[len("/usr"):])
    return variants


def names_package(text: str, package: Package) -> bool:
    """Whether ``name-[epoch:]version[-release][.arch]`` (a dso_list's or a crash's package) is ``package``."""
    version = f"{package.version}-{package.release}" if package.release else package.version
    forms = {f"{package.name}-{version}"}
    if package.epoch not in ("", "0"):
        forms.add(f"{package.name}-{package.epoch}:{version}")
    return bool({text, text.rsplit(".", 1)[0]} & forms)


@dataclasses.dataclass(frozen=True)
class Unresolved:
    """A mapped file we could not fully supply, and why (shown to the user).

    ``binary_found``: the file itself is in the sysroot, only its debuginfo
    is missing (frames get names from the symbol table, without lines);
    ``debuginfo_found``: the other way round.
    """

    path: str
    build_id: str | None
    problem: str
    binary_found: bool = False
    debuginfo_found: bool = False

    @classmethod
    def debuginfo_only(cls, module: Module, binary: Package) -> Unresolved:
        return cls(module.path, module.build_id, f"no debuginfo package (the file is in {binary.nevra})", True)


@dataclasses.dataclass
class Resolution:
    """What a crash needs: packages, files we cannot supply, and files to verify.

    ``unverified`` holds ``(module, candidates)`` for files that neither a
    build-id link nor a debuginfo package ties to a package: the packages
    owning that path, to be matched by the build-id of the unpacked file.
    """

    packages: list[Package] = dataclasses.field(default_factory=list)
    unresolved: list[Unresolved] = dataclasses.field(default_factory=list)
    unverified: list[tuple[Module, list[Package]]] = dataclasses.field(default_factory=list)
    # path -> {"binary": source, "debuginfo": source}; a source is a NEVRA or a debuginfod URL.
    sources: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    def add(self, package: Package) -> None:
        if all(known.pkgid != package.pkgid for known in self.packages):
            self.packages.append(package)

    def note_source(self, path: str, kind: str, source: str) -> None:
        self.sources.setdefault(path, {})[kind] = source


def _binary_package(index: RepoIndex, module: Module, build_id: str, debuginfo: Package | None) -> Package | None:
    """The package whose file was mapped: by its build-id link, else by path and build.

    A package that merely owns the path is no proof (a mismatched library
    gives wrong symbols); such candidates are verified after unpacking.
    """
    linked = index.by_build_id(build_id, "binary")
    if linked:
        return linked[0]
    if debuginfo is None:
        return None
    return next((owner for owner in index.owners(module.path) if owner.same_build(debuginfo)), None)


def resolve_modules(index: RepoIndex, modules: Iterable[Module]) -> Resolution:
    """The binary and debuginfo packages for every mapped module (the order of ``modules``)."""
    resolution = Resolution()
    for module in modules:
        if module.build_id is None:
            resolution.unresolved.append(Unresolved(module.path, None, "the core does not hold its build-id"))
            continue
        debuginfo = next(iter(index.by_build_id(module.build_id, "debuginfo")), None)
        binary = _binary_package(index, module, module.build_id, debuginfo)
        if binary is None:
            if debuginfo is None:
                candidates = index.owners(module.path)
                if candidates:
                    resolution.unverified.append((module, candidates))
                else:
                    resolution.unresolved.append(Unresolved(module.path, module.build_id,
                                                            "no package in the repository"))
                continue
            resolution.unresolved.append(Unresolved(
                module.path, module.build_id, f"no binary package (debuginfo is in {debuginfo.nevra})",
                debuginfo_found=True,
            ))
        else:
            resolution.add(binary)
            resolution.note_source(module.path, "binary", binary.nevra)
            debuginfo = debuginfo or index.debug_package_of(binary)
            if debuginfo is None:
                resolution.unresolved.append(Unresolved.debuginfo_only(module, binary))
        if debuginfo is not None:
            resolution.add(debuginfo)
            resolution.note_source(module.path, "debuginfo", debuginfo.nevra)
    return resolution


def unresolved_everything(modules: Iterable[Module], why: str) -> Resolution:
    """The Resolution of a release without a mirror: every file is still to be found."""
    resolution = Resolution()
    for module in modules:
        resolution.unresolved.append(Unresolved(module.path, module.build_id, why if module.build_id else
                                                "the core does not hold its build-id"))
    return resolution
