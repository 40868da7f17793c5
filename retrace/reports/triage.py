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
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from retrace_server.analysis.symbolize import Location, Symbolized, debug_file, symbolize_module
from retrace_server.errors import RetraceError, disk_full_explained
from retrace_server.intake import storage
from retrace_server.packaging.release import ReleaseId, supported_releases
from retrace_server.packaging.repoindex import release_index
from retrace_server.packaging.supply import PackageSupply
from retrace_server.reports import rules
from retrace_server.reports.buckets import BucketDB, located_functions, signature
from retrace_server.reports.ureport import InvalidReport

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from retrace_server.config import Config
    from retrace_server.packaging.repoindex import RepoIndex
    from retrace_server.reports.ureport import Report, ReportThread, SymbolicReport

log = logging.getLogger(__name__)
_PARALLEL_MODULES = 4


@contextlib.contextmanager
def _release_index(config: Config, report: Report | SymbolicReport) -> Iterator[RepoIndex]:
    """The index of the report's release, open for the block, once the spool has room for the report;
    InvalidReport when this server does not serve that release."""
    storage.ensure_free(config.SaveDir, 0, config.min_storage_left_bytes)
    release = ReleaseId.parse(report.release)
    index = release_index(config.RepoDir, config.CacheDir, release) if release is not None else None
    if index is None:
        served = supported_releases(config.RepoDir)
        raise InvalidReport(f"Release {report.release} is not served by this server; it serves "
                            f"{', '.join(map(str, served)) or 'no release'}")
    try:
        yield index
    finally:
        index.close()


def symbolicate(config: Config, report: Report, buckets: BucketDB, index: RepoIndex) -> list[list[Symbolized]]:
    """``[[Symbolized, ...] per thread]`` of the report; InvalidReport when its crash thread cannot be read.

    What was symbolized before comes from the symbol cache (``buckets``);
    the rest from the debuginfo, and is remembered.
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
        found = []
        for build_id, frames in by_build_id.items():
            packages = index.by_build_id(build_id, "debuginfo")
            path = None
            if packages:
                try:
                    path = debug_file(supply.cached(packages[0], index), build_id)
                except RetraceError as err:
                    log.error("debuginfo of %s unavailable: %s", build_id, err)
            if path is None:
                for frame in frames:
                    frame.problem = f"no debuginfo for build-id {build_id} in {report.release}"
            else:
                found.append((frames, path))
        # One eu-addr2line per module, a few at once: each mostly waits on its own DWARF reading.
        with concurrent.futures.ThreadPoolExecutor(_PARALLEL_MODULES) as pool:
            for done in [pool.submit(symbolize_module, frames, path) for frames, path in found]:
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


def triage(config: Config, report: Report, now: float | None = None) -> dict[str, Any]:
    """Symbolize, bucket and count ``report``; the answer's fields (without URLs).

    The bucket keeps the crash thread only, and of the report's own words
    only what the release's index confirms: the package's name and version
    when the index holds that build.
    """
    started = time.monotonic()
    with _release_index(config, report) as index, BucketDB.for_config(config) as buckets:
        threads = symbolicate(config, report, buckets, index)
        crash_number = [thread.crash_thread for thread in report.threads].index(True)
        bthash, text = signature(report.executable, functions(threads[crash_number]), rules.load(config.SignatureRules))
        backtrace = gdb_text(threads, report.threads)
        component = index.indexed_name(report.package) if report.package else None
        with disk_full_explained(storage.NO_STORAGE):
            before = buckets.record(
                bthash, text, report.executable_name, gdb_text([threads[crash_number]],
                                                              [report.threads[crash_number]]),
                "report", report.package if component else None, report.version if component else None,
                report.release, report.arch, when=now, component=component)
        after = buckets.bucket(bthash)
        assert after is not None  # recorded just now
    return {"known": before is not None, "bthash": bthash, "count": after["count"],
            "core_wanted": after["full_task"] is None, "backtrace": backtrace,
            "frames": frames_json(threads, report), "seconds": round(time.monotonic() - started, 4)}


def symbolic_signature(report: SymbolicReport, rules_for_kind: rules.Rules) -> tuple[str, str]:
    """``(bthash, text)`` of a Python exception (its type and the innermost frames' file and function) or a kernel
    oops (its call trace's functions; modules and offsets left out, so any build of the same code agrees)."""
    start, end = rules_for_kind.span([frame.function for frame in report.frames])
    kept = report.frames[start:end]
    if report.kind == "python":
        lines = ["python", report.headline, *(f"{(frame.place or '').rsplit('/', 1)[-1]}:{frame.function}"
                                              for frame in kept)]
    else:
        lines = ["kerneloops", *(frame.function for frame in kept)]
    text = "\n".join(lines)
    return hashlib.sha1(text.encode("utf-8")).hexdigest(), text


def symbolic_text(report: SymbolicReport) -> str:
    """The frames as gdb would list them (the bucket page shows every kind alike)."""
    lines = [f"Thread 1 ({report.headline}):"]
    for number, frame in enumerate(report.frames):
        if report.kind == "python":
            where = f" at {frame.place}:{frame.line}" if frame.line is not None else f" at {frame.place}"
        else:
            where = f" [{frame.place}]" if frame.place else ""
        lines.append(f"#{number:<2} {frame.function} (){where}")
    return "\n".join(lines) + "\n"


def triage_symbolic(config: Config, report: SymbolicReport) -> dict[str, Any]:
    """Bucket and count a Python exception or a kernel oops (named by the client: nothing to symbolize)."""
    started = time.monotonic()
    with _release_index(config, report) as index:
        bthash, text = symbolic_signature(report, rules.load(config.SignatureRules, report.kind))
        component = index.indexed_name(report.package) if report.package else None
        backtrace = symbolic_text(report)
        with BucketDB.for_config(config) as buckets, disk_full_explained(storage.NO_STORAGE):
            before = buckets.record(bthash, text, report.kind, backtrace, "report",
                                    report.package if component else None, report.version if component else None,
                                    report.release, report.arch, component=component, problem_type=report.kind)
            after = buckets.bucket(bthash)
            assert after is not None  # recorded just now
    frames = [{"function": frame.function, "file": frame.place, "line": frame.line} for frame in report.frames]
    return {"known": before is not None, "bthash": bthash, "count": after["count"], "core_wanted": False,
            "backtrace": backtrace, "frames": frames, "seconds": round(time.monotonic() - started, 4)}
