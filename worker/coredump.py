"""One coredump task, from crash data to backtrace: packages by build-id, an environment, gdb."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from typing import TYPE_CHECKING

from retrace_server.analysis.debuggers import NoDebugger, gdb_for, runs_natively
from retrace_server.analysis.exploitable import rate
from retrace_server.analysis.gdb import USABLE_FRAME, retrace, session_argv
from retrace_server.analysis.indexes import GdbIndexes, debug_files
from retrace_server.analysis.python import find_extension, interpreters, results_text
from retrace_server.arch import HOST_ARCH
from retrace_server.elf import CoreInfo, read_core
from retrace_server.environments.base import Limits, Workload
from retrace_server.environments.choice import environment_for
from retrace_server.files import write_atomically
from retrace_server.intake.crashdata import parse_dso_list
from retrace_server.packaging.backfill import Backfill
from retrace_server.packaging.debuginfod import BuildIdCache, fill_gaps, log_missing
from retrace_server.packaging.debuginfod import Settings as DebuginfodSettings
from retrace_server.packaging.history import sources_for
from retrace_server.packaging.packages import (
    Resolution,
    Unresolved,
    names_package,
    resolve_modules,
    unresolved_everything,
    usr_merge_variants,
)
from retrace_server.packaging.release import (
    RELEASE_FILES,
    ReleaseId,
    RepositoryFormat,
    detect_release,
    merges_usr,
    served_releases,
)
from retrace_server.packaging.repoindex import RepoIndex, release_index
from retrace_server.packaging.supply import PackageSupply
from retrace_server.reports.buckets import gdb_crash_thread, gdb_crash_thread_functions
from retrace_server.reports.stacks import Stack
from retrace_server.worker.job import Job, TaskFailed

if TYPE_CHECKING:
    import logging
    from collections.abc import Sequence
    from pathlib import Path

    from retrace_server.config import Config
    from retrace_server.elf import Module
    from retrace_server.environments.base import Environment
    from retrace_server.packaging.cache import CachedPackage
    from retrace_server.packaging.repoindex import Package
    from retrace_server.tasks.task import Task

_THREAD_HEADER = re.compile(r"^Thread \d+ ", re.M)


class RetraceJob(Job["_Crash"]):
    """A coredump: packages by build-id, an environment (``RetraceEnvironment``), gdb.

    ``supply`` and ``environment`` are the job's two boundaries (the
    release's packages, where gdb runs); a test may hand in its own.
    """

    def __init__(self, config: Config, task: Task, log: logging.Logger, supply: PackageSupply | None = None,
                 environment: Environment | None = None) -> None:
        super().__init__(config, task, log)
        self.supply = supply if supply is not None else PackageSupply(config, log, self.record)
        self.environment = environment or environment_for(config)(config, task.path, task.task_id, log)
        self.debuginfod = DebuginfodSettings.from_config(config)

    # -- stages ----------------------------------------------------------------

    def analyze(self) -> _Crash:
        """Architecture, release, mapped modules and the packages they come from."""
        core_path = self.task.crash_dir / "coredump"
        if not core_path.is_file():
            raise TaskFailed("the task has no coredump (it was deleted when the task ended the first time)", "bad core")
        core = read_core(core_path)
        self.log.info("Coredump: %s, %d mapped files, signal %s", core.arch, len(core.modules), core.signal)
        for module in core.modules:
            self.log.debug("Mapped %s, build-id %s", module.path, module.build_id or "unknown")
        executable = self._executable()
        package = self.overrides.package or self.crash_text("package")
        arch = self.overrides.arch or core.arch
        if arch != core.arch:
            self.log.warning("Retraced as %s, as forced; the core's header says %s", arch, core.arch)
        self.record.package, self.record.arch, self.record.coresize = package, arch, core_path.stat().st_size
        release = self._release(arch, package)
        debugger = self._debugger(arch)
        self.debuginfod = DebuginfodSettings.from_config(self.config, release)
        # Users (and dpkg's database) may name /bin/sleep where the kernel wrote /usr/bin/sleep (merged /usr).
        merged = merges_usr(release)
        exe_module = next(filter(None, map(core.module_at, usr_merge_variants(executable, merged))), None)
        if exe_module is not None and exe_module.path != executable:
            self.log.info("The core maps the executable %s as %s (merged /usr)", executable, exe_module.path)
            executable = exe_module.path
        if exe_module is None:
            raise TaskFailed(
                f"the coredump does not map the executable {executable} named in the crash data", "bad crash data"
            )
        modules = [exe_module, *(m for m in core.modules if m is not exe_module)]
        index = release_index(self.config.RepoDir, self.config.CacheDir, release)
        if index is not None:
            if index.rebuilt:
                self.log.info("Rebuilt the package index of %s (its metadata changed)", release)
            resolution = resolve_modules(index, modules)
        else:
            self.log.info("%s has no mirror here; every file comes from debuginfod", release)
            resolution = unresolved_everything(modules, f"no mirror of {release}")
        owners = parse_dso_list(self.crash_text("dso_list") or "")
        if owners:
            self.log.info("dso_list names the packages of %d mapped files", len(owners))
        if package:
            owners[exe_module.path] = package
        crash = _Crash(core, core_path, executable, release, index, resolution, exe_module, debugger, owners, merged)
        self.supply.history = sources_for(self.config, release)
        if self.supply.history:
            self.log.info("History sources: %s", ", ".join(map(str, self.supply.history)))
        if not self.debuginfod.urls and not self.supply.history:
            self._check_executable(crash, bool(self._libraries_given(crash) or resolution.unverified))
        for unresolved in resolution.unresolved:
            log_missing(self.log, unresolved)
        self.log.info("Packages needed: %s", " ".join(p.nevra for p in resolution.packages) or "none")
        return crash

    def _debugger(self, arch: str) -> str:
        """The gdb for the core's architecture, or the release's own, which must then run here."""
        if self.environment.native_only:
            if not runs_natively(arch):
                raise TaskFailed(f"RetraceEnvironment = {self.environment.name} runs the release's own gdb, which "
                                 f"cannot run on this {HOST_ARCH} server for {arch} cores; the administrator can use "
                                 "RetraceEnvironment = sysroot", "unsupported architecture")
            return "gdb"
        try:
            gdb = gdb_for(arch, self.config.debugger(arch), self.config.CacheDir)
        except NoDebugger as err:
            raise TaskFailed(err.sentence, err.category) from None
        if arch != HOST_ARCH:
            self.log.info("Debugger for %s cores: %s", arch, os.path.basename(gdb))
        return gdb

    def _check_executable(self, crash: _Crash, something_else: bool) -> None:
        """Whether the crashed executable itself can be given to gdb: without it the backtrace is partial (the
        frames gdb unwinds through the libraries it has); with nothing else either, TaskFailed."""
        exe_problem = next(
            (u for u in crash.resolution.unresolved if u.path == crash.executable and not u.binary_found), None
        )
        if exe_problem is None:
            return
        if not something_else:
            raise _no_executable_package(self.record.release, crash.exe_module, self.record.package, exe_problem.problem)
        crash.executable_missing = exe_problem

    @staticmethod
    def _libraries_given(crash: _Crash) -> bool:
        """Whether gdb gets the binary of some mapped file besides the program: else it has nothing to unwind."""
        return any(path != crash.executable and "binary" in sources for path, sources in crash.resolution.sources.items())

    def _executable(self) -> str:
        """The crashed executable's path as mapped (upstream strips ``rootdir``)."""
        executable = self.crash_text("executable")
        if executable is None:
            raise TaskFailed("the crash data names no executable (the crashed program's path)", "bad crash data")
        rootdir = (self.crash_text("rootdir") or "").rstrip("/")
        if rootdir and executable.startswith(rootdir + "/"):
            return executable[len(rootdir):]
        return executable

    def _release(self, arch: str, package: str | None) -> ReleaseId:
        supported = served_releases(self.config)
        if self.overrides.release:
            release, how = ReleaseId.parse(self.overrides.release), "forced with --release"
        else:
            lines = [(name, text) for name in RELEASE_FILES if (text := self.crash_text(name))]
            release, how = detect_release(lines, package or "", arch, supported)
        self.record.release = str(release) if release else None
        names = ", ".join(str(known) for known in supported) or "none"
        if release is None:
            raise TaskFailed(f"cannot tell which release crashed: {how}; this server supports: {names}",
                             "unsupported release")
        if release not in supported:
            raise TaskFailed(f"release {release} ({how}) is not supported by this server; it supports: {names}",
                             "unsupported release")
        self.log.info("Release %s (%s); crashed package %s", release, how, package)
        return release

    def _verify_candidates(self, crash: _Crash, index: RepoIndex, module: Module,
                           candidates: Sequence[Package]) -> list[CachedPackage]:
        """The cached candidate whose file at the module's path has the module's build-id, with the debug
        package of its build where the index names one by name and version (Ubuntu's ddebs); the version the
        crashed machine had (dso_list, the crash's package) is tried first."""
        named = crash.owner_of(module.path)
        if named:
            candidates = sorted(candidates, key=lambda candidate: not names_package(named, candidate))
        for package in candidates:
            entry = self.supply.cached(package, index)
            if entry.build_id_of(usr_merge_variants(module.path, crash.merged)) != module.build_id:
                continue
            self.log.info("Matched %s to %s by its build-id", module.path, package.nevra)
            crash.resolution.add(package)
            crash.resolution.note_source(module.path, "binary", package.nevra)
            debuginfo = index.debug_package_of(package)
            if debuginfo is None:
                crash.resolution.unresolved.append(Unresolved.debuginfo_only(module, package))
                log_missing(self.log, crash.resolution.unresolved[-1])
                return [entry]
            crash.resolution.add(debuginfo)
            crash.resolution.note_source(module.path, "debuginfo", debuginfo.nevra)
            return [entry, self.supply.cached(debuginfo, index)]
        problem = f"no package in the repository ({len(candidates)} own the path, none with this build-id)"
        crash.resolution.unresolved.append(Unresolved(module.path, module.build_id, problem))
        log_missing(self.log, crash.resolution.unresolved[-1])
        return []

    def prepare(self, crash: _Crash) -> None:
        """Unpack every needed package once (shared cache) and have the environment build what gdb reads."""
        if self.environment.needs_full_rpm_mirror:
            self._check_full_rpm_mirror(crash.index)
        crash.work = work = Workload(crash.executable, crash.core_path, crash.debugger, crash.release, crash.index,
                                     modules=crash.core.modules,
                                     keeps_tree=self.task.task_type.keeps_environment)
        with self.part("init.packages"):
            self._supply_packages(crash, work)
        self.record.packages = work.packages = [package.nevra for package in crash.resolution.packages]
        self._read_indexes(crash, work)
        with self.part("init.environment"):
            self.environment.prepare(work)

    def _read_indexes(self, crash: _Crash, work: Workload) -> None:
        """gdb reads the prebuilt indexes of the debug files (``retrace_server.analysis.indexes``) when all of
        them have one; the ones missing are built after the answer (``improve``)."""
        if not self.environment.unpacks:
            return
        crash.debug_files = debug_files(work.modules, work.trees, work.placements)
        indexes = GdbIndexes(self.config.CacheDir)
        work.gdb_settings = indexes.read_commands(crash.debug_files)
        if work.gdb_settings:
            work.extra_read_only.append(indexes.root)
            self.log.info("gdb reads the prebuilt indexes of the %d debug files", len(crash.debug_files))

    def improve(self, crash: _Crash) -> None:
        """The gdb indexes of the debug files this crash needed that have none, for the next retrace."""
        indexes = GdbIndexes(self.config.CacheDir)
        missing = indexes.missing(crash.debug_files)
        if missing:
            built = indexes.build(missing, self.log)
            self.log.info("Built the gdb indexes of %d of %d debug files for later retraces", built, len(missing))

    def _supply_packages(self, crash: _Crash, work: Workload) -> None:
        """Every package the environment needs unpacked in the cache (or fetched from history or debuginfod),
        what is still missing decided (a partial backtrace, or TaskFailed)."""
        if self.environment.unpacks:
            if crash.index is not None:  # else every file comes from debuginfod
                index = crash.index
                self.supply.download_missing(index, crash.resolution.packages)
                self.supply.verify_signatures(index, crash.resolution.packages)
                work.trees = self.supply.cached_all(crash.resolution.packages, index)
                for module, candidates in crash.resolution.unverified:
                    work.trees += self._verify_candidates(crash, index, module, candidates)
            work.trees += self._backfill(crash).fill(crash.resolution)
            if self.debuginfod.urls:
                cache = BuildIdCache(self.config.CacheDir)
                work.placements = fill_gaps(self.debuginfod, cache, crash.resolution, self.log)
                work.extra_read_only.append(cache.root)
            self._check_executable(crash, self._libraries_given(crash))
            self.record.missing = [(u.path, u.build_id) for u in crash.resolution.unresolved if u.build_id]
        if crash.executable_missing is not None:
            work.executable_missing = True
            self.log.warning("The backtrace will be partial: no source has the crashed executable %s (%s, build-id "
                             "%s: %s); gdb unwinds with the %d packages it has", crash.executable,
                             crash.owner_of(crash.executable) or "package unknown", crash.exe_module.build_id or
                             "unknown", crash.executable_missing.problem, len(crash.resolution.packages))

    def _backfill(self, crash: _Crash) -> Backfill:
        """What the history sources may still give, by the packages the crash names (retrace.packaging.backfill)."""
        index = crash.index
        package_format = "deb" if index is not None and index.format is RepositoryFormat.APT else "rpm"

        def source_of(name: str) -> str | None:
            known = index.by_name(name) if index is not None else []
            source = known[0].sourcerpm if known else ""
            return source.rsplit("-", 2)[0] if source.endswith(".src.rpm") else source or None

        return Backfill(self.supply, crash.release.arch, package_format, crash.owner_of, source_of, self.log,
                        crash.merged)

    def _check_full_rpm_mirror(self, index: RepoIndex | None) -> None:
        """chroot and mock install gdb with dnf from the release's own RPM repository on this host."""
        if index is not None and index.format is RepositoryFormat.RPM_MD:
            return
        served = {None: "through debuginfod only", RepositoryFormat.APT: "as an apt repository",
                  RepositoryFormat.RPM_MD_METADATA: "from its metadata only (its packages stay on the mirror)",
                  }[index.format if index is not None else None]
        raise TaskFailed(
            f"RetraceEnvironment = {self.environment.name} installs gdb from a full RPM mirror of "
            f"{self.record.release}, and this server serves that release {served}; the administrator must mirror it "
            "in full or use RetraceEnvironment = sysroot", "configuration")

    def backtrace(self, crash: _Crash) -> None:
        assert crash.work is not None  # prepare gave it
        work = crash.work
        script = self._python_extension(crash, work)
        session = self.environment.session(work, session_argv(self.environment, work, script))
        if session is not None:
            session.save(self.task)
        limits = Limits(self.config.GdbTimeout, self.config.gdb_memory_limit_bytes,
                        self.config.debugger_output_limit_bytes)
        with self.part("backtrace.gdb"):
            result = retrace(self.environment, work, limits, self.without_server_paths, script)
        threads = len(_THREAD_HEADER.findall(result.backtrace))
        frames = len(USABLE_FRAME.findall(result.backtrace))
        self.log.info("gdb finished in %.3f s: %d threads, %d frames", result.seconds, threads, frames)
        if script:
            self.log.info("Python tracebacks: %d threads run Python", len(result.python))
            if result.python:
                write_atomically(self.task.results_dir / "py-bt", results_text(result.python))
        write_atomically(self.task.path / "retrace_backtrace", _missing_header(crash) + result.backtrace)
        rating = rate(crash.core.signal, crash.core.fault_address, result.exploitable_section, result.backtrace,
                      crash.core.arch)
        write_atomically(self.task.results_dir / "exploitable", rating.report())
        self.log.info("Exploitable rating %d: %s", rating.value, rating.reason)
        crash.backtrace = result.backtrace

    def count(self, crash: _Crash) -> None:
        if crash.backtrace is not None:
            self._bucket(crash, crash.backtrace)

    def _python_extension(self, crash: _Crash, work: Workload) -> str | None:
        """CPython's gdb extension from the task's verified packages, when the core runs the interpreter."""
        running = interpreters(work.modules)
        if not running:
            return None
        if not self.environment.unpacks:
            self.log.info("The core runs CPython (%s); RetraceEnvironment = %s installs the packages itself, so its "
                          "gdb extension is not looked for and there are no Python frames", running[0],
                          self.environment.name)
            return None
        extension = find_extension(work.trees, work.modules)
        if extension is None:
            self.log.info("The core runs CPython (%s); no package of the task ships its gdb extension (Debian's "
                          "python3.X-dbg, Fedora's python3-debuginfo), so there are no Python frames", running[0])
            return None
        package = next((p.nevra for p in crash.resolution.packages if p.pkgid == extension.pkgid), extension.pkgid)
        self.log.info("Python frames through %s from %s", extension.path, package)
        return extension.path

    def _bucket(self, crash: _Crash, backtrace: str) -> None:
        """Count the retrace in its crash bucket (/problems), where coreless reports of the crash land too."""
        functions = gdb_crash_thread_functions(backtrace)
        if not functions or crash.executable_missing is not None:
            return  # a partial stack would make a bucket of its own
        package = self.record.package or ""
        component = crash.index.indexed_name(package) if crash.index is not None and package else None
        version = "-".join(package.rsplit("-", 2)[1:]) if component and package.count("-") >= 2 else None
        self.count_in_bucket(Stack.core(crash.executable, functions), gdb_crash_thread(backtrace), self.record.release,
                             component, package if component else None, version)

    def clean(self, succeeded: bool) -> None:
        """Remove what the environment built and the crash data, unless the task keeps them (debug and
        interactive tasks: retrace-server-interact opens them), and the packages downloaded for it (the cache
        keeps them)."""
        self.supply.forget_downloads()
        keep = self.task.task_type.keeps_environment
        self.environment.clean(keep)
        if not keep:
            shutil.rmtree(self.task.crash_dir, ignore_errors=True)


@dataclasses.dataclass
class _Crash:
    """What analysis found, handed from stage to stage."""

    core: CoreInfo
    core_path: Path
    executable: str
    release: ReleaseId
    index: RepoIndex | None  # None: the release has no mirror, only debuginfod
    resolution: Resolution
    exe_module: Module
    debugger: str  # the gdb that reads this core's architecture
    owners: dict[str, str]  # mapped path: its package on the crashed machine (dso_list, the crash's package)
    merged: bool  # the release merged /usr: /bin/x is /usr/bin/x (release.merges_usr)
    work: Workload | None = None  # what the environment was given (from prepare on)
    executable_missing: Unresolved | None = None  # why no source had the program (the backtrace is partial)
    backtrace: str | None = None  # gdb's, once it ran (its crash thread signs the bucket)
    debug_files: dict[str, Path] = dataclasses.field(default_factory=dict)  # build-id: what gdb reads for it

    def owner_of(self, path: str) -> str | None:
        return next((self.owners[variant] for variant in usr_merge_variants(path, self.merged)
                     if variant in self.owners), None)


def _no_executable_package(release: str | None, module: Module, package: str | None, problem: str) -> TaskFailed:
    return TaskFailed(
        f"no package of {release} provides the crashing executable {module.path} "
        f"(build-id {module.build_id or 'unknown'}: {problem}); is {package} from the official repositories?",
        "missing package",
    )


def _missing_header(crash: _Crash) -> str:
    """The lines above the backtrace: whether it is partial, where each file came from, and what gdb could not
    be given (with its package on the crashed machine, when the crash data names it)."""
    resolution = crash.resolution
    lines = []
    if crash.executable_missing is not None:
        lines += [f"Partial backtrace: no source has the crashed executable {crash.executable} "
                  f"({crash.owner_of(crash.executable) or 'package unknown'}, build-id "
                  f"{crash.exe_module.build_id or 'unknown'}); its frames have no names and gdb may stop "
                  "unwinding in them.", ""]
    if resolution.sources:
        lines.append("Files given to gdb (binary; debuginfo):")
        for path, sources in resolution.sources.items():
            lines.append(f"  {path}: {sources.get('binary', '-')}; {sources.get('debuginfo', '-')}")
        lines.append("")
    if resolution.unresolved:
        lines.append(
            f"Missing debuginfo or binaries for {len(resolution.unresolved)} mapped files; their frames may lack names:"
        )
        for unresolved in resolution.unresolved:
            owner = crash.owner_of(unresolved.path)
            lines.append(f"  {unresolved.path} ({f'{owner}, ' if owner else ''}build-id "
                         f"{unresolved.build_id or 'unknown'}): {unresolved.problem}")
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")
