"""What happens to a coreless report: symbolized from the release's debuginfo, signed, counted in its bucket.

The answer tells the client whether the crash is known (its bucket existed)
and whether the server wants the core: for a new bucket, or one that has no
full retrace yet, a core upload gives everyone the complete backtrace with
variables; otherwise the symbolized frames are all there is to learn.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from retrace_server.analysis.symbolize import Location, Symbolized, debug_file, symbolize_module
from retrace_server.errors import RetraceError, disk_full_explained
from retrace_server.intake import storage
from retrace_server.lru import LRU
from retrace_server.packaging.debuginfod import BuildIdCache, fetch_all
from retrace_server.packaging.debuginfod import Settings as DebuginfodSettings
from retrace_server.packaging.release import ReleaseId, repository_format, served_releases
from retrace_server.packaging.repoindex import index_digest, release_index
from retrace_server.packaging.supply import PackageSupply
from retrace_server.reports import rules
from retrace_server.reports.buckets import BucketDB, located_functions
from retrace_server.reports.oops import oops_text
from retrace_server.reports.stacks import Stack
from retrace_server.reports.ureport import InvalidReport, Report, ReportFrame, ReportThread

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Sequence

    from retrace_server.config import Config
    from retrace_server.packaging.repoindex import Package, RepoIndex
    from retrace_server.reports.ureport import SymbolicReport

log = logging.getLogger(__name__)
T = TypeVar("T")
_PARALLEL_MODULES = 4
# What a frame's problem says when its module's debuginfo is not (yet) in the release.
_NO_DEBUGINFO = "no debuginfo for build-id"


# What the report path learnt of release indexes, per process, keyed by (release directory, index digest, ...):
# an index changes only with its digest. A package's name in the index (None: not indexed); the debuginfo
# packages of a build-id (most often none: a module the release does not build, asked again by every report).
_INDEXED_NAMES: LRU[tuple[str, str, str], str | None] = LRU(4096)
_DEBUGINFO_PACKAGES: LRU[tuple[str, str, str], list[Package]] = LRU(4096)


class ReportRelease:
    """The release a report names: refused at once unless this server serves it; its package index opened only
    when a frame or the package's name needs it (a known crash of a known package needs neither: answering
    it from the symbol cache alone is what lets a server take tens of thousands of reports a minute)."""

    def __init__(self, config: Config, report: Report | SymbolicReport) -> None:
        storage.ensure_free(config.SaveDir, 0, config.min_storage_left_bytes)
        self.config = config
        self.name = report.release
        self.id = ReleaseId.parse(report.release)
        self.directory = Path(config.RepoDir) / str(self.id) if self.id is not None else None
        self.indexed = self.directory is not None and repository_format(self.directory) is not None
        if not self.indexed and not (self.id is not None and str(self.id) in config.debuginfod_releases):
            served = served_releases(config)
            raise InvalidReport(f"Release {report.release} is not served by this server; it serves "
                                f"{', '.join(map(str, served)) or 'no release'}")
        self._index: RepoIndex | None = None
        self._digest: str | None = None

    def index(self) -> RepoIndex | None:
        """The release's package index, opened (and rebuilt when its metadata changed) on first use; None for a
        release served by debuginfod alone."""
        if self._index is None and self.indexed:
            assert self.id is not None
            self._index = release_index(self.config.RepoDir, self.config.CacheDir, self.id)
            self._digest = self._index.digest if self._index is not None else None
        return self._index

    @property
    def digest(self) -> str | None:
        """What changes when the release's packages do (None: served by debuginfod alone)."""
        if self._digest is None and self.indexed:
            assert self.directory is not None
            self._digest = index_digest(self.directory)
        return self._digest

    def indexed_name(self, package: str) -> str | None:
        """The name of ``package`` (name-version-release) as the release's index holds it, else None."""
        if self.digest is None or self.directory is None:
            return None
        return self._learnt(_INDEXED_NAMES, (str(self.directory), self.digest, package),
                            lambda index: index.indexed_name(package), None)

    def debuginfo_packages(self, build_id: str) -> list[Package]:
        """The release's debuginfo packages holding ``build_id`` (none for a release served by debuginfod
        alone)."""
        if self.digest is None or self.directory is None:
            return []
        return self._learnt(_DEBUGINFO_PACKAGES, (str(self.directory), self.digest, build_id),
                            lambda index: index.by_build_id(build_id, "debuginfo"), [])

    def _learnt(self, learnt: LRU[tuple[str, str, str], T], key: tuple[str, str, str],
                ask: Callable[[RepoIndex], T], unindexed: T) -> T:
        """``learnt[key]``, asked of the index the first time."""
        def asked() -> T:
            index = self.index()
            return ask(index) if index is not None else unindexed
        return learnt.get_or(key, asked)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()

    def __enter__(self) -> ReportRelease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def symbolicate(config: Config, report: Report, buckets: BucketDB,
                release: ReportRelease) -> tuple[list[list[Symbolized]], bool]:
    """``([[Symbolized, ...] per thread], settled)`` of the report; InvalidReport when its crash thread cannot be
    read. Settled: the same frames would symbolize the same while the release's index stays as it is (no
    debuginfo failed to unpack, no debuginfod miss that expires).

    What was symbolized before comes from the symbol cache (``buckets``);
    the rest from the debuginfo, and is remembered: the release's packages,
    then its debuginfod servers (all of it for a release served by
    debuginfod alone).
    """
    threads = [[Symbolized(frame.build_id, frame.offset, frame.file_name) for frame in thread.frames]
               for thread in report.threads]
    known = buckets.symbols({(frame.build_id, frame.offset) for thread in threads for frame in thread
                             if frame.build_id})
    by_build_id: dict[str, list[Symbolized]] = collections.defaultdict(list)
    for thread in threads:
        for frame in thread:
            if frame.build_id is None:
                frame.problem = "the report gives no build-id"
            elif (frame.build_id, frame.offset) in known:
                frame.locations = [Location(*location) for location in known[(frame.build_id, frame.offset)]]
            else:
                by_build_id[frame.build_id].append(frame)
    supply = PackageSupply(config, log)
    settled = True
    try:
        found: dict[str, Path] = {}
        for build_id in by_build_id:
            packages = release.debuginfo_packages(build_id)
            if packages and (index := release.index()) is not None:
                try:
                    if (path := debug_file(supply.cached(packages[0], index), build_id)) is not None:
                        found[build_id] = path
                except RetraceError as err:
                    log.error("debuginfo of %s unavailable: %s", build_id, err)
                    settled = False
        debuginfod = DebuginfodSettings.from_config(config, report.release)
        found.update(_from_debuginfod(config, debuginfod, [bid for bid in by_build_id if bid not in found]))
        for build_id, frames in by_build_id.items():
            if build_id not in found:
                settled = settled and not debuginfod.urls  # its misses expire
                for frame in frames:
                    frame.problem = f"{_NO_DEBUGINFO} {build_id} in {report.release}"
        # One addr2line per module, a few at once: each mostly waits on its own DWARF reading.
        with concurrent.futures.ThreadPoolExecutor(_PARALLEL_MODULES) as pool:
            for done in [pool.submit(symbolize_module, by_build_id[build_id], path) for build_id, path in found.items()]:
                done.result()
    finally:
        supply.forget_downloads()
    buckets.remember_symbols({(build_id, frame.offset): list(frame.locations)
                              for build_id, frames in by_build_id.items() for frame in frames if frame.locations})
    crash = threads[[thread.crash_thread for thread in report.threads].index(True)]
    past = [frame for frame in crash if frame.problem and frame.problem.startswith("offset ")]
    if past:
        raise InvalidReport(f"The crash thread's frame {crash.index(past[0])} is not in its module: {past[0].problem}")
    if not any(frame.locations for frame in crash):
        build_ids = ", ".join(sorted({frame.build_id for frame in crash if frame.build_id}))
        raise InvalidReport(f"None of the crash thread's modules is known to this server (no debuginfo in "
                            f"{report.release} for build-ids {build_ids[:300]})")
    return threads, settled


def _from_debuginfod(config: Config, settings: DebuginfodSettings, build_ids: list[str]) -> dict[str, Path]:
    """``{build-id: debuginfo file}`` the release's debuginfod servers have, fetched in parallel within
    DebuginfodDeadline into the shared build-id cache (which remembers misses for DebuginfodMissTTL)."""
    if not build_ids or not settings.urls:
        return {}
    fetched = fetch_all(settings, BuildIdCache(config.CacheDir), [(build_id, "debuginfo") for build_id in build_ids])
    return {build_id: path for build_id in build_ids if (path := fetched[(build_id, "debuginfo")].path) is not None}


def functions(frames: Iterable[Symbolized]) -> list[str]:
    """The crash thread's function names for its signature, as gdb lists frames (inlined callees before their
    callers), those with a source line only (``located_functions``)."""
    named = []
    for frame in frames:
        named += [(location.function or "??", bool(location.line)) for location in frame.locations] or [("??", False)]
    return located_functions(named)


def gdb_text(threads: Sequence[Sequence[Symbolized]], report_threads: Sequence[ReportThread]) -> str:
    """The symbolized threads in gdb's ``bt`` format (ABRT and satyr read it); offsets stand for addresses."""
    lines = []
    for number, (frames, thread) in enumerate(zip(threads, report_threads), start=1):
        lines.append(f"Thread {number} ({'crashed' if thread.crash_thread else 'report'}):")
        depth = 0
        for frame in frames:
            locations: list[Location | None] = [*frame.locations] or [None]
            for position, location in enumerate(locations):
                inlined = position < len(locations) - 1
                address = "" if position else f"0x{frame.offset:016x} in "
                if location is None or location.function is None:
                    lines.append(f"#{depth:<2} {address}?? () from {frame.module}")
                else:
                    where = f" at {location.file}:{location.line}" if location.file and location.line else ""
                    lines.append(f"#{depth:<2} {address}{location.function} (){where}{' [inlined]' if inlined else ''}")
                depth += 1
        lines.append("")
    return "\n".join(lines)


def frames_json(threads: Sequence[Sequence[Symbolized]], report: Report) -> list[dict[str, Any]]:
    return [{"crash_thread": thread.crash_thread, "frames": [
        {"build_id": frame.build_id, "offset": frame.offset, "module": frame.module, "problem": frame.problem,
         "locations": [{"function": location.function, "file": location.file, "line": location.line}
                       for location in frame.locations]} for frame in frames]}
        for frames, thread in zip(threads, report.threads)]


def missing_build_ids(frames: Iterable[Symbolized]) -> list[str]:
    """The build-ids of the crash thread's modules whose debuginfo the release does not hold (yet)."""
    return sorted({frame.build_id for frame in frames
                   if frame.build_id and frame.problem and frame.problem.startswith(_NO_DEBUGINFO)})


def _kept(report: Report) -> dict[str, Any]:
    """What is kept of a report symbolized in part to symbolize it again: its crash thread and its words."""
    frames = [[frame.build_id, frame.offset, frame.file_name] for frame in report.crash_thread.frames]
    return {"os": [report.os_name, report.os_version, report.arch], "executable": report.executable,
            "component": report.component, "signal": report.signal, "package": report.package,
            "version": report.version, "frames": frames}


def _from_kept(kept: dict[str, Any]) -> Report:
    frames = tuple(ReportFrame(build_id, offset, file_name) for build_id, offset, file_name in kept["frames"])
    os_name, os_version, arch = kept["os"]
    return Report(os_name, os_version, arch, kept["executable"], kept["component"], kept["signal"], kept["package"],
                  kept["version"], (ReportThread(True, frames),))


@dataclasses.dataclass(frozen=True)
class Symbolization:
    """A report's frames symbolized and rendered: what its bucket is signed from and keeps, and the answer's
    ``backtrace`` and ``frames`` members already as JSON."""

    functions: tuple[str, ...]  # the crash thread's, for its signature
    crash_text: str  # the crash thread in gdb's format
    missing: tuple[str, ...]  # build-ids of the crash thread without debuginfo in the release
    rendered: str


# The symbolizations of the reports a process answered last, by their release (and its index's digest) and
# frames. The same build crashing at the same place sends the same frames from every machine, and that is
# most of what a busy server receives: rendering 200 frames again, their gdb text and JSON, was half of such a
# report's time. A report may carry 4,096 frames (a megabyte rendered, as much again as its key): the bytes
# kept are capped too.
_SYMBOLIZATIONS: LRU[Hashable, Symbolization] = LRU(256, weight=32 << 20)
# What a frame weighs in a key: its tuple, build-id and file name.
_KEY_BYTES_PER_FRAME = 256


def symbolization(config: Config, report: Report, buckets: BucketDB, release: ReportRelease) -> Symbolization:
    """The report's frames symbolized (``symbolicate``) and rendered, or an identical report's, answered by this
    process while the release's index stayed the same and its symbolization was settled."""
    key = (release.name, release.digest, tuple((thread.crash_thread, thread.frames) for thread in report.threads))
    if (known := _SYMBOLIZATIONS.get(key)) is not None:
        return known
    threads, settled = symbolicate(config, report, buckets, release)
    crash_number = [thread.crash_thread for thread in report.threads].index(True)
    made = Symbolization(
        tuple(functions(threads[crash_number])), gdb_text([threads[crash_number]], [report.threads[crash_number]]),
        tuple(missing_build_ids(threads[crash_number])),
        json.dumps({"backtrace": gdb_text(threads, report.threads), "frames": frames_json(threads, report)})[1:-1])
    if settled:
        frames = sum(len(thread.frames) for thread in report.threads)
        _SYMBOLIZATIONS.put(key, made, len(made.rendered) + len(made.crash_text) + _KEY_BYTES_PER_FRAME * frames)
    return made


def triage(config: Config, report: Report, buckets: BucketDB, now: float | None = None) -> dict[str, Any]:
    """Symbolize, bucket and count ``report``; the answer's fields (without URLs).

    The bucket keeps the crash thread only, and of the report's own words
    only what the release's index confirms: the package's name and version
    when the index holds that build.  A report whose crash thread the
    release's debuginfo covers in part is kept, to be symbolized again when
    the release's packages change (``resymbolize``).
    """
    started = time.monotonic()
    with ReportRelease(config, report) as release:
        symbolized = symbolization(config, report, buckets, release)
        component = release.indexed_name(report.package) if report.package else None
        with disk_full_explained(storage.NO_STORAGE):
            recorded = buckets.record(
                Stack.core(report.executable, list(symbolized.functions)), rules.load(config.SignatureRules),
                symbolized.crash_text, "report", report.package if component else None,
                report.version if component else None, report.release, report.arch, when=now, component=component)
            if symbolized.missing and release.digest is not None:  # debuginfod alone: its misses expire
                buckets.keep_pending(recorded.occurrence, report.release, _kept(report), release.digest)
    return {"known": recorded.before is not None, "bthash": recorded.bthash, "count": recorded.count,
            "core_wanted": recorded.full_task is None, "rendered": symbolized.rendered,
            "missing_build_ids": list(symbolized.missing), "seconds": round(time.monotonic() - started, 4)}


def resymbolize(config: Config, release: str | None = None) -> tuple[int, int]:
    """Symbolize again the reports kept in part (only ``release``'s when given) whose release's index changed
    since they were last tried, each moving to the bucket its new frames sign into; a report whose crash thread
    is whole now is no longer kept. Returns ``(tried, moved)``; a release this server no longer serves keeps
    its reports waiting."""
    tried = moved = 0
    signature_rules = rules.load(config.SignatureRules)
    with BucketDB.for_config(config) as buckets:
        by_release: dict[str, list[tuple[int, Report, str]]] = collections.defaultdict(list)
        for occurrence, name, kept, digest in buckets.pending(release):
            by_release[name].append((occurrence, _from_kept(kept), digest))
        for name, reports in by_release.items():
            try:
                with ReportRelease(config, reports[0][1]) as served:
                    for occurrence, report, digest in reports:
                        if served.digest is None or digest == served.digest:
                            continue  # nothing new to symbolize it with
                        tried += 1
                        (crash,), _ = symbolicate(config, report, buckets, served)
                        stack = Stack.core(report.executable, functions(crash))
                        recorded = buckets.move(occurrence, stack, signature_rules, gdb_text([crash], report.threads))
                        moved += recorded is not None
                        buckets.tried_pending(recorded.occurrence if recorded else occurrence,
                                              served.digest if missing_build_ids(crash) else None)
            except InvalidReport as err:
                log.warning("reports of %s kept to symbolize again: %s", name, err.sentence)
    return tried, moved


def symbolic_stack(report: SymbolicReport) -> Stack:
    """The stack of a Python exception (its type and frames with their files) or a kernel oops (its call trace's
    functions; modules and offsets are not signed, so any build of the same code agrees)."""
    return Stack(report.kind, report.kind, tuple((frame.function, frame.place) for frame in report.frames),
                 report.headline if report.kind == "python" else "")


def symbolic_text(report: SymbolicReport) -> str:
    """The frames as gdb would list them (the bucket page shows every kind alike)."""
    if report.kind == "kerneloops":
        return oops_text([(frame.function, frame.place) for frame in report.frames])
    lines = [f"Thread 1 ({report.headline}):"]
    for number, frame in enumerate(report.frames):
        where = f" at {frame.place}:{frame.line}" if frame.line is not None else f" at {frame.place}"
        lines.append(f"#{number:<2} {frame.function} (){where}")
    return "\n".join(lines) + "\n"


def triage_symbolic(config: Config, report: SymbolicReport, buckets: BucketDB) -> dict[str, Any]:
    """Bucket and count a Python exception or a kernel oops (named by the client: nothing to symbolize)."""
    started = time.monotonic()
    with ReportRelease(config, report) as release:
        component = release.indexed_name(report.package) if report.package else None
        backtrace = symbolic_text(report)
        with disk_full_explained(storage.NO_STORAGE):
            recorded = buckets.record(symbolic_stack(report), rules.load(config.SignatureRules, report.kind),
                                      backtrace, "report", report.package if component else None,
                                      report.version if component else None, report.release, report.arch,
                                      component=component)
    frames = [{"function": frame.function, "file": frame.place, "line": frame.line} for frame in report.frames]
    return {"known": recorded.before is not None, "bthash": recorded.bthash, "count": recorded.count,
            "core_wanted": False, "rendered": json.dumps({"backtrace": backtrace, "frames": frames})[1:-1],
            "missing_build_ids": [], "seconds": round(time.monotonic() - started, 4)}
