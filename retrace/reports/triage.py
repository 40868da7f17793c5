"""What happens to a coreless report: symbolized from the release's debuginfo, signed, counted in its bucket.

The answer tells the client whether the crash is known (its bucket existed)
and whether the server wants the core: for a new bucket, or one that has no
full retrace yet, a core upload gives everyone the complete backtrace with
variables; otherwise the symbolized frames are all there is to learn.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from retrace_server.analysis.symbolize import Location, Symbolized, debug_file, symbolize_module
from retrace_server.errors import RetraceError, disk_full_explained
from retrace_server.intake import storage
from retrace_server.packaging.debuginfod import BuildIdCache, fetch_all
from retrace_server.packaging.debuginfod import Settings as DebuginfodSettings
from retrace_server.packaging.release import ReleaseId, served_releases
from retrace_server.packaging.repoindex import release_index
from retrace_server.packaging.supply import PackageSupply
from retrace_server.reports import rules
from retrace_server.reports.buckets import BucketDB, located_functions
from retrace_server.reports.oops import oops_text
from retrace_server.reports.stacks import Stack
from retrace_server.reports.ureport import InvalidReport, Report, ReportFrame, ReportThread

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from pathlib import Path

    from retrace_server.config import Config
    from retrace_server.packaging.repoindex import RepoIndex
    from retrace_server.reports.ureport import SymbolicReport

log = logging.getLogger(__name__)
_PARALLEL_MODULES = 4
# What a frame's problem says when its module's debuginfo is not (yet) in the release.
_NO_DEBUGINFO = "no debuginfo for build-id"


@contextlib.contextmanager
def _release_index(config: Config, report: Report | SymbolicReport) -> Iterator[RepoIndex | None]:
    """The index of the report's release, open for the block, once the spool has room for the report (None
    for a release served by debuginfod alone); InvalidReport when this server does not serve that release."""
    storage.ensure_free(config.SaveDir, 0, config.min_storage_left_bytes)
    release = ReleaseId.parse(report.release)
    index = release_index(config.RepoDir, config.CacheDir, release) if release is not None else None
    if index is None:
        if release is not None and str(release) in config.debuginfod_releases:
            yield None
            return
        served = served_releases(config)
        raise InvalidReport(f"Release {report.release} is not served by this server; it serves "
                            f"{', '.join(map(str, served)) or 'no release'}")
    try:
        yield index
    finally:
        index.close()


def symbolicate(config: Config, report: Report, buckets: BucketDB,
                index: RepoIndex | None) -> list[list[Symbolized]]:
    """``[[Symbolized, ...] per thread]`` of the report; InvalidReport when its crash thread cannot be read.

    What was symbolized before comes from the symbol cache (``buckets``);
    the rest from the debuginfo, and is remembered: the release's packages,
    then its debuginfod servers (all of it for a release served by
    debuginfod alone, ``index`` None).
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
    try:
        found: dict[str, Path] = {}
        for build_id in by_build_id:
            packages = index.by_build_id(build_id, "debuginfo") if index is not None else []
            if packages:
                assert index is not None
                try:
                    if (path := debug_file(supply.cached(packages[0], index), build_id)) is not None:
                        found[build_id] = path
                except RetraceError as err:
                    log.error("debuginfo of %s unavailable: %s", build_id, err)
        found.update(_from_debuginfod(config, report.release, [bid for bid in by_build_id if bid not in found]))
        for build_id, frames in by_build_id.items():
            if build_id not in found:
                for frame in frames:
                    frame.problem = f"{_NO_DEBUGINFO} {build_id} in {report.release}"
        # One eu-addr2line per module, a few at once: each mostly waits on its own DWARF reading.
        with concurrent.futures.ThreadPoolExecutor(_PARALLEL_MODULES) as pool:
            for done in [pool.submit(symbolize_module, by_build_id[build_id], path) for build_id, path in found.items()]:
                done.result()
    finally:
        supply.forget_downloads()
    buckets.remember_symbols({(build_id, frame.offset): [dataclasses.astuple(location) for location in frame.locations]
                              for build_id, frames in by_build_id.items() for frame in frames if frame.locations})
    crash = threads[[thread.crash_thread for thread in report.threads].index(True)]
    past = [frame for frame in crash if frame.problem and frame.problem.startswith("offset ")]
    if past:
        raise InvalidReport(f"The crash thread's frame {crash.index(past[0])} is not in its module: {past[0].problem}")
    if not any(frame.locations for frame in crash):
        build_ids = ", ".join(sorted({frame.build_id for frame in crash if frame.build_id}))
        raise InvalidReport(f"None of the crash thread's modules is known to this server (no debuginfo in "
                            f"{report.release} for build-ids {build_ids[:300]})")
    return threads


def _from_debuginfod(config: Config, release: str, build_ids: list[str]) -> dict[str, Path]:
    """``{build-id: debuginfo file}`` the release's debuginfod servers have, fetched in parallel within
    DebuginfodDeadline into the shared build-id cache (which remembers misses for DebuginfodMissTTL)."""
    settings = DebuginfodSettings.from_config(config, release)
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


def triage(config: Config, report: Report, now: float | None = None) -> dict[str, Any]:
    """Symbolize, bucket and count ``report``; the answer's fields (without URLs).

    The bucket keeps the crash thread only, and of the report's own words
    only what the release's index confirms: the package's name and version
    when the index holds that build.  A report whose crash thread the
    release's debuginfo covers in part is kept, to be symbolized again when
    the release's packages change (``resymbolize``).
    """
    started = time.monotonic()
    with _release_index(config, report) as index, BucketDB.for_config(config) as buckets:
        threads = symbolicate(config, report, buckets, index)
        crash_number = [thread.crash_thread for thread in report.threads].index(True)
        stack = Stack.core(report.executable, functions(threads[crash_number]))
        missing = missing_build_ids(threads[crash_number])
        component = index.indexed_name(report.package) if report.package and index is not None else None
        with disk_full_explained(storage.NO_STORAGE):
            recorded = buckets.record(
                stack, rules.load(config.SignatureRules), gdb_text([threads[crash_number]],
                                                                   [report.threads[crash_number]]),
                "report", report.package if component else None, report.version if component else None,
                report.release, report.arch, when=now, component=component)
            if missing and index is not None:  # debuginfod alone: its misses expire, the next report asks again
                buckets.keep_pending(recorded.occurrence, report.release, _kept(report), index.digest)
        after = buckets.bucket(recorded.bthash)
        assert after is not None  # recorded just now
    return {"known": recorded.before is not None, "bthash": recorded.bthash, "count": after["count"],
            "core_wanted": after["full_task"] is None, "backtrace": gdb_text(threads, report.threads),
            "frames": frames_json(threads, report), "missing_build_ids": missing,
            "seconds": round(time.monotonic() - started, 4)}


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
                with _release_index(config, reports[0][1]) as index:
                    for occurrence, report, digest in reports:
                        if index is None or digest == index.digest:
                            continue  # nothing new to symbolize it with
                        tried += 1
                        (crash,) = symbolicate(config, report, buckets, index)
                        stack = Stack.core(report.executable, functions(crash))
                        recorded = buckets.move(occurrence, stack, signature_rules, gdb_text([crash], report.threads))
                        moved += recorded is not None
                        buckets.tried_pending(recorded.occurrence if recorded else occurrence,
                                              index.digest if missing_build_ids(crash) else None)
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


def triage_symbolic(config: Config, report: SymbolicReport) -> dict[str, Any]:
    """Bucket and count a Python exception or a kernel oops (named by the client: nothing to symbolize)."""
    started = time.monotonic()
    with _release_index(config, report) as index:
        component = index.indexed_name(report.package) if report.package and index is not None else None
        backtrace = symbolic_text(report)
        with BucketDB.for_config(config) as buckets, disk_full_explained(storage.NO_STORAGE):
            recorded = buckets.record(symbolic_stack(report), rules.load(config.SignatureRules, report.kind),
                                      backtrace, "report", report.package if component else None,
                                      report.version if component else None, report.release, report.arch,
                                      component=component)
            after = buckets.bucket(recorded.bthash)
            assert after is not None  # recorded just now
    frames = [{"function": frame.function, "file": frame.place, "line": frame.line} for frame in report.frames]
    return {"known": recorded.before is not None, "bthash": recorded.bthash, "count": after["count"],
            "core_wanted": False, "backtrace": backtrace, "frames": frames, "missing_build_ids": [],
            "seconds": round(time.monotonic() - started, 4)}
