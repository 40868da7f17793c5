"""A crash's missing builds from the release's history sources, proven by their build-ids.

What the synced index cannot give (a program one update behind the
mirror, a library of a version the archive deleted) is named by the crash
itself: its package for the program, the ``dso_list`` for each library.
Each reading of that name and version is asked of the history sources in
order (``retrace_server.packaging.history``); a binary package is used only
when its file at the mapped path has the core's build-id, a debug package
only when it holds ``/usr/lib/debug/.build-id/`` of that build-id.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from retrace_server.errors import RetraceError
from retrace_server.packaging.history import Wanted, wanted_of
from retrace_server.packaging.packages import Unresolved, build_id_debug_path, usr_merge_variants

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from retrace_server.packaging.cache import CachedPackage
    from retrace_server.packaging.history import HistorySource, Located
    from retrace_server.packaging.packages import Resolution
    from retrace_server.packaging.repoindex import Package
    from retrace_server.packaging.supply import PackageSupply


@dataclasses.dataclass
class Backfill:
    """One job's use of its history sources: ``owner_of(path)`` is the crash's package of a mapped file,
    ``source_of(name)`` the source package of a binary the release knows (Koji trees are by source)."""

    supply: PackageSupply
    arch: str
    package_format: str  # deb or rpm: the release's
    owner_of: Callable[[str], str | None]
    source_of: Callable[[str], str | None]
    log: logging.Logger
    merged: bool = True  # the release merged /usr: a package may ship the file under the other spelling

    def fill(self, resolution: Resolution) -> list[CachedPackage]:
        """The trees that supply what ``resolution`` still misses; its unresolved list is updated."""
        sources = [source for source in self.supply.history if source.format == self.package_format]
        if not sources:
            return []
        trees: list[CachedPackage] = []
        for missing in list(resolution.unresolved):
            owner = self.owner_of(missing.path) if missing.build_id else None
            if owner is None:
                continue
            readings = [dataclasses.replace(reading, source=self.source_of(reading.name))
                        for reading in wanted_of(owner, self.arch, self.package_format)]
            filled = self._fill_one(missing, readings, sources, resolution, trees)
            position = resolution.unresolved.index(missing)
            if filled.binary_found and filled.debuginfo_found:
                del resolution.unresolved[position]
            else:
                resolution.unresolved[position] = filled
        return trees

    def _fill_one(self, missing: Unresolved, readings: list[Wanted], sources: list[HistorySource],
                  resolution: Resolution, trees: list[CachedPackage]) -> Unresolved:
        """``missing`` as it stands after asking every source for every reading of its package."""
        assert missing.build_id is not None
        need_binary, need_debug = not missing.binary_found, not missing.debuginfo_found
        for wanted in readings:
            for source in sources:
                try:
                    if need_binary and (located := source.binary(wanted)) is not None:
                        need_binary = not self._use_binary(source, located, missing, resolution, trees)
                    if need_debug and not need_binary:  # debuginfo is of no use to gdb without its binary
                        need_debug = not any(self._use_debug(source, located, missing, resolution, trees)
                                             for located in source.debug(wanted))
                except RetraceError as err:
                    self.log.warning("%s", err.sentence)
                if not need_binary and not need_debug:
                    break
            if not need_binary and not need_debug:
                break
        if (need_binary, need_debug) == (not missing.binary_found, not missing.debuginfo_found):
            self.log.info("No history source (%s) has %s of %s", ", ".join(map(str, sources)),
                          "the build" if need_binary else "debuginfo", " or ".join(map(str, readings)) or "it")
            return missing
        problem = missing.problem if need_binary or need_debug else ""
        if need_debug:
            problem = "no debuginfo in the repository or the history sources (the file is from a history source)"
        return dataclasses.replace(missing, problem=problem, binary_found=not need_binary,
                                   debuginfo_found=not need_debug)

    def _unpacked(self, source: HistorySource, located: Located) -> tuple[CachedPackage, Package]:
        """``located`` downloaded and unpacked; a history package is proven by the build-id the caller checks
        in its tree (Koji's packages are unsigned until a release signs them, snapshot's were never signed)."""
        package = self.supply.fetch_history(source, located)
        return self.supply.cached_file(package, self.supply.downloads[package.pkgid], None), package

    def _use_binary(self, source: HistorySource, located: Located, missing: Unresolved, resolution: Resolution,
                    trees: list[CachedPackage]) -> bool:
        entry, package = self._unpacked(source, located)
        build_id = entry.build_id_of(usr_merge_variants(missing.path, self.merged))
        if build_id != missing.build_id:
            self.log.warning("%s served %s, whose %s has build-id %s, not the core's %s; it was not used", source,
                             package.nevra, missing.path, build_id or "none", missing.build_id)
            return False
        self.log.info("Matched %s to %s from %s by its build-id", missing.path, package.nevra, source)
        trees.append(entry)
        resolution.add(package)
        resolution.note_source(missing.path, "binary", f"{package.nevra} ({source})")
        return True

    def _use_debug(self, source: HistorySource, located: Located, missing: Unresolved, resolution: Resolution,
                   trees: list[CachedPackage]) -> bool:
        assert missing.build_id is not None
        entry, package = self._unpacked(source, located)
        wanted_path = build_id_debug_path(missing.build_id).lstrip("/")
        if not any(path == wanted_path for path, kind, _target, _id in entry.manifest() if kind in "fl"):
            self.log.info("%s from %s holds no debuginfo of build-id %s", package.nevra, source, missing.build_id)
            return False
        self.log.info("Debuginfo of %s (build-id %s) from %s of %s", missing.path, missing.build_id, package.nevra,
                      source)
        trees.append(entry)
        resolution.add(package)
        resolution.note_source(missing.path, "debuginfo", f"{package.nevra} ({source})")
        return True
