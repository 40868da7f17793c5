"""One coredump task, from crash data to backtrace: packages by build-id, an environment, gdb."""

import dataclasses
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path

from retrace_server.analysis.coredump import CoreInfo, debug_alt_link, program_interpreter, read_core
from retrace_server.analysis.debuggers import HOST_ARCH, NoDebugger, gdb_for, runs_natively
from retrace_server.analysis.exploitable import rate
from retrace_server.analysis.gdb import USABLE_FRAME, interactive_argv, interpret_output, run_gdb
from retrace_server.environments.chroot import GdbRoots, root_key
from retrace_server.environments.mock import MockEnvironment
from retrace_server.environments.sandbox import prepare_mount_points
from retrace_server.environments.sysroot import (add_merged_usr_links, assemble_sysroot, build_id_debug_path,
                                          link_program_interpreter, place_files)
from retrace_server.packaging.debuginfod import BuildIdCache, Settings as DebuginfodSettings, fetch_all
from retrace_server.packaging.packages import (Resolution, Unresolved, resolve_modules, unresolved_everything,
                                        usr_merge_variants)
from retrace_server.packaging.release import (RELEASE_FILES, ReleaseId, detect_release, rpm_repositories, served_releases,
                                      supported_releases)
from retrace_server.packaging.repoindex import RepoIndex
from retrace_server.packaging.supply import PackageSupply
from retrace_server.reports.buckets import BucketDB, gdb_crash_thread, gdb_crash_thread_functions, signature
from retrace_server.tasks.session import Session
from retrace_server.tasks.task import write_atomically
from retrace_server.worker.job import Job, TaskFailed

_THREAD_HEADER = re.compile(r"^Thread \d+ ", re.M)


class RetraceJob(Job):
    """A coredump: packages by build-id, a sysroot (or chroot, or mock), gdb."""

    def __init__(self, config, task, log):
        super().__init__(config, task, log)
        self.supply = PackageSupply(config, log, self.record)
        self.sysroot = task.path / "sysroot"
        self.debuginfod = DebuginfodSettings.from_config(config)

    # -- stages ----------------------------------------------------------------

    def analyze(self):
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
        exe_module = core.module_at(executable)
        if exe_module is None:
            raise TaskFailed(
                f"the coredump does not map the executable {executable} named in the crash data", "bad crash data"
            )
        modules = [exe_module, *(m for m in core.modules if m is not exe_module)]
        index = None
        if release in supported_releases(self.config.RepoDir):
            index = RepoIndex.open(self.config.RepoDir / str(release), self.config.CacheDir)
            if index.rebuilt:
                self.log.info("Rebuilt the package index of %s (its metadata changed)", release)
            resolution = resolve_modules(index, modules)
        else:
            self.log.info("%s has no mirror here; every file comes from debuginfod", release)
            resolution = unresolved_everything(modules, f"no mirror of {release}")
        crash = _Crash(core, core_path, executable, index, resolution, exe_module, debugger)
        if not self.debuginfod.urls:
            self._check_executable(crash)
        for unresolved in resolution.unresolved:
            self._log_missing(unresolved)
        self.log.info("Packages needed: %s", " ".join(p.nevra for p in resolution.packages) or "none")
        return crash

    def _debugger(self, arch):
        """The gdb for the core's architecture (sysroot), or the release's own, which must run here."""
        if self.environment != "sysroot":
            if not runs_natively(arch):
                raise TaskFailed(f"RetraceEnvironment = {self.environment} runs the release's own gdb, which cannot "
                                 f"run on this {HOST_ARCH} server for {arch} cores; the administrator can use "
                                 "RetraceEnvironment = sysroot", "unsupported architecture")
            return "gdb"
        try:
            gdb = gdb_for(arch, self.config.debugger(arch), self.config.CacheDir)
        except NoDebugger as err:
            raise TaskFailed(err.sentence, err.category) from None
        if arch != HOST_ARCH:
            self.log.info("Debugger for %s cores: %s", arch, os.path.basename(gdb))
        return gdb

    def _check_executable(self, crash):
        """TaskFailed unless the crashed executable itself can be given to gdb."""
        exe_problem = next(
            (u for u in crash.resolution.unresolved if u.path == crash.executable and not u.binary_found), None
        )
        if exe_problem is not None:
            raise _no_executable_package(self.record.release, crash.exe_module, self.record.package, exe_problem.problem)

    def _executable(self):
        """The crashed executable's path as mapped (upstream strips ``rootdir``)."""
        executable = self.crash_text("executable")
        rootdir = (self.crash_text("rootdir") or "").rstrip("/")
        if rootdir and executable.startswith(rootdir + "/"):
            return executable[len(rootdir):]
        return executable

    def _release(self, arch, package):
        supported = served_releases(self.config)
        if self.overrides.release:
            release, how = ReleaseId.parse(self.overrides.release), "forced with --release"
        else:
            lines = [(name, text) for name in RELEASE_FILES if (text := self.crash_text(name))]
            release, how = detect_release(lines, package, arch, supported)
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

    def _log_missing(self, unresolved):
        self.log.warning(
            "Missing for %s (build-id %s): %s", unresolved.path, unresolved.build_id or "unknown", unresolved.problem
        )

    def _verify_candidates(self, crash, module, candidates):
        """The cached candidate whose file at the module's path has the module's build-id, with the debug
        package of its build where the index names one by name and version (Ubuntu's ddebs)."""
        for package in candidates:
            entry = self.supply.cached(package, crash.index)
            if entry.build_id_of(usr_merge_variants(module.path)) != module.build_id:
                continue
            self.log.info("Matched %s to %s by its build-id", module.path, package.nevra)
            crash.resolution.add(package)
            crash.resolution.note_source(module.path, "binary", package.nevra)
            debuginfo = crash.index.debug_package_of(package)
            if debuginfo is None:
                crash.resolution.unresolved.append(Unresolved.debuginfo_only(module, package))
                self._log_missing(crash.resolution.unresolved[-1])
                return [entry]
            crash.resolution.add(debuginfo)
            crash.resolution.note_source(module.path, "debuginfo", debuginfo.nevra)
            return [entry, self.supply.cached(debuginfo, crash.index)]
        problem = f"no package in the repository ({len(candidates)} own the path, none with this build-id)"
        if module.path == crash.executable:
            raise _no_executable_package(self.record.release, module, self.record.package, problem)
        crash.resolution.unresolved.append(Unresolved(module.path, module.build_id, problem))
        self._log_missing(crash.resolution.unresolved[-1])
        return []

    @property
    def environment(self):
        return self.config.RetraceEnvironment

    def prepare(self, crash):
        """Unpack every needed package once (shared cache), then link the task's root.

        In the chroot environment the release's gdb root joins the tree
        (the crash's own files win), and the tree becomes gdb's ``/``; mock
        installs the packages itself.
        """
        if self.environment != "sysroot":
            self._check_full_rpm_mirror(crash.index)
        if self.environment == "mock":
            self.record.packages = [package.nevra for package in crash.resolution.packages]
            return
        self.supply.download_missing(crash.index, crash.resolution.packages)
        self.supply.verify_signatures(crash.index, crash.resolution.packages)
        cached = [self.supply.cached(package, crash.index) for package in crash.resolution.packages]
        for module, candidates in crash.resolution.unverified:
            cached += self._verify_candidates(crash, module, candidates)
        placements = self._from_debuginfod(crash) if self.debuginfod.urls else []
        self._check_executable(crash)
        self.record.packages = [package.nevra for package in crash.resolution.packages]
        self.record.missing = [(u.path, u.build_id) for u in crash.resolution.unresolved if u.build_id]
        if self.environment == "chroot":
            cached.append(self._gdb_root(crash))
        shutil.rmtree(self.sysroot, ignore_errors=True)
        linked, seconds = assemble_sysroot(self.sysroot, cached)
        linked += place_files(self.sysroot, placements)
        if self.environment == "chroot":
            prepare_mount_points(self.sysroot, self._read_only_paths(crash))
        else:
            add_merged_usr_links(self.sysroot)
            interpreter = program_interpreter(self.sysroot / crash.executable.lstrip("/"))
            linked += link_program_interpreter(self.sysroot, interpreter, crash.core.modules)
        self.log.info("Assembled the %s: %d files linked in %.3f s", self.environment, linked, seconds)

    def _check_full_rpm_mirror(self, index):
        """chroot and mock install gdb with dnf from the release's own RPM repository on this host."""
        repositories = rpm_repositories(index.release_dir) if index is not None else None
        if index is None:
            served = "through debuginfod only"
        elif not repositories:
            served = "as an apt repository"
        elif repositories != [index.release_dir]:
            served = "from its metadata only (its packages stay on the mirror)"
        else:
            return
        raise TaskFailed(
            f"RetraceEnvironment = {self.environment} installs gdb from a full RPM mirror of {self.record.release}, "
            f"and this server serves that release {served}; the administrator must mirror it in full "
            "or use RetraceEnvironment = sysroot", "configuration")

    def _from_debuginfod(self, crash):
        """Fetch what the packages did not give; ``[(path in the tree, cached file)]`` to link."""
        wanted = []
        for unresolved in crash.resolution.unresolved:
            if unresolved.build_id is None:
                continue
            if not unresolved.binary_found:
                wanted.append((unresolved.build_id, "executable"))
            if not unresolved.debuginfo_found:
                wanted.append((unresolved.build_id, "debuginfo"))
        if not wanted:
            return []
        started = time.monotonic()
        fetched = fetch_all(self.debuginfod, BuildIdCache(self.config.CacheDir), wanted)
        got = sum(1 for result in fetched.values() if result.path)
        self.log.info("debuginfod: %d of %d files found in %.3f s", got, len(wanted), time.monotonic() - started)
        placements = []
        still_missing = []
        for unresolved in crash.resolution.unresolved:
            if unresolved.build_id is None:
                still_missing.append(unresolved)
                continue
            binary = fetched.get((unresolved.build_id, "executable"))
            debuginfo = fetched.get((unresolved.build_id, "debuginfo"))
            if binary and binary.path:
                placements += [(path, binary.path) for path in usr_merge_variants(unresolved.path)]
                crash.resolution.note_source(unresolved.path, "binary", f"debuginfod {binary.source}")
            if debuginfo and debuginfo.path:
                placements.append((build_id_debug_path(unresolved.build_id), debuginfo.path))
                crash.resolution.note_source(unresolved.path, "debuginfo", f"debuginfod {debuginfo.source}")
            has_binary = unresolved.binary_found or bool(binary and binary.path)
            has_debuginfo = unresolved.debuginfo_found or bool(debuginfo and debuginfo.path)
            if has_binary and has_debuginfo:
                continue
            missing = [kind for kind, present in (("executable", has_binary), ("debuginfo", has_debuginfo)) if not present]
            reasons = "; ".join(result.source for result in (binary, debuginfo) if result and not result.path)
            still_missing.append(Unresolved(
                unresolved.path, unresolved.build_id,
                f"{unresolved.problem}; debuginfod has no {' or '.join(missing)} ({reasons})",
                has_binary, has_debuginfo,
            ))
            self._log_missing(still_missing[-1])
        crash.resolution.unresolved = still_missing
        return placements + self._dwz_files_from_debuginfod(
            [result.path for (_, kind), result in fetched.items() if kind == "debuginfo" and result.path])

    def _dwz_files_from_debuginfod(self, debuginfo_files):
        """The dwz files (``.gnu_debugaltlink``) the fetched debuginfo shares its types and lines with: gdb
        finds them by build-id, and without them a frame has no file:line."""
        wanted = {link[1]: link[0] for link in map(debug_alt_link, debuginfo_files) if link}
        if not wanted:
            return []
        fetched = fetch_all(self.debuginfod, BuildIdCache(self.config.CacheDir),
                            [(build_id, "debuginfo") for build_id in wanted])
        placements = []
        for build_id, name in wanted.items():
            result = fetched.get((build_id, "debuginfo"))
            if result and result.path:
                placements += [(build_id_debug_path(build_id), result.path), (name, result.path)]
            else:
                self.log.warning("Missing the dwz file %s (build-id %s) that debuginfo shares: debuginfod has "
                                 "none (%s); frames may lack file:line", name, build_id, result.source if result else "")
        return placements

    def _gdb_root(self, crash):
        packages = self.config.ChrootPackages.split()
        key = root_key(crash.index, packages)
        release = crash.index.release_dir.name
        entry = GdbRoots(self.config.CacheDir).get(
            release, release.split("-")[1], crash.index.release_dir, key, packages, hidden=[self.config.SaveDir],
            on_wait=lambda: self.log.info("Waiting for another task building the gdb root of %s", release),
            gpg_keys=self.config.required_gpg_keys(release),
        )
        if entry.unpacked:
            self.log.info("Built the gdb root of %s (%s) with dnf in %.3f s", release, " ".join(packages), entry.seconds)
        else:
            self.log.info("Reused the gdb root of %s", release)
        return entry

    def _read_only_paths(self, crash):
        """What gdb's sandbox shows besides its root: the cache the links point into, and the core."""
        paths = [self.supply.cache.rpms_dir, crash.core_path]
        if self.debuginfod.urls:
            paths.append(BuildIdCache(self.config.CacheDir).root)
        if self.environment == "chroot":
            paths.append(GdbRoots(self.config.CacheDir).roots_dir)
        else:
            paths.append(self.sysroot)
        return paths

    def _hide_server_paths(self, text):
        text = text.replace(str(self.sysroot), "")
        cache = re.escape(str(self.config.CacheDir))
        text = re.sub(cache + r"/buildid/\w+/(\w+)/(executable|debuginfo)", r"debuginfod:\1/\2", text)
        text = re.sub(cache + r"/(rpms/[0-9A-Za-z]+|roots/[^/\s]+)/root", "", text)
        return self.without_server_paths(text)

    def _save_session(self, crash):
        """What ``retrace-server-interact TASK gdb`` runs: this gdb on this tree (mock's roots are mock's)."""
        if self.environment == "mock":
            return
        chroot = self.environment == "chroot"
        argv = interactive_argv("/" if chroot else str(self.sysroot), crash.executable, str(crash.core_path),
                                "gdb" if chroot else crash.debugger)
        program = self.sysroot / crash.executable.lstrip("/")
        Session("gdb", tuple(argv), tuple(map(str, self._read_only_paths(crash))),
                ((str(crash.core_path), "the coredump"), (str(program), "the crashed program in the package tree")),
                str(self.sysroot) if chroot else None).save(self.task)

    def _run_gdb(self, crash):
        if self.environment == "mock":
            release = self.record.release
            mock = MockEnvironment(self.config, self.task.path, self.task.task_id, ReleaseId.parse(release),
                                   crash.index.release_dir, self.config.required_gpg_keys(release))
            output, seconds = mock.run(self.record.packages, crash.executable, self.config.GdbTimeout,
                                       self.config.debugger_output_limit_bytes, self.log.info)
            return interpret_output(self._hide_server_paths(output), seconds, mock.marker)
        return run_gdb(
            self.sysroot, crash.executable, crash.core_path,
            read_only_paths=self._read_only_paths(crash),
            timeout=self.config.GdbTimeout, memory_bytes=self.config.gdb_memory_limit_bytes,
            output_bytes=self.config.debugger_output_limit_bytes, hide=self._hide_server_paths,
            root=self.sysroot if self.environment == "chroot" else None, gdb=crash.debugger,
        )

    def backtrace(self, crash):
        self._save_session(crash)
        result = self._run_gdb(crash)
        threads = len(_THREAD_HEADER.findall(result.backtrace))
        frames = len(USABLE_FRAME.findall(result.backtrace))
        self.log.info("gdb finished in %.3f s: %d threads, %d frames", result.seconds, threads, frames)
        write_atomically(self.task.path / "retrace_backtrace", _missing_header(crash.resolution) + result.backtrace)
        rating = rate(crash.core.signal, crash.core.fault_address, result.exploitable_section, result.backtrace,
                      crash.core.arch)
        write_atomically(self.task.results_dir / "exploitable", rating.report())
        self.log.info("Exploitable rating %d: %s", rating.value, rating.reason)
        self._bucket(crash, result.backtrace)

    def _bucket(self, crash, backtrace):
        """Count the retrace in its crash bucket (/problems), where coreless reports of the crash land too."""
        functions = gdb_crash_thread_functions(backtrace)
        if not functions:
            return
        bthash, text = signature(crash.executable, functions)
        try:
            with BucketDB.for_config(self.config) as buckets:
                package = self.record.package or ""
                component = crash.index.indexed_name(package) if crash.index is not None and package else None
                version = "-".join(package.rsplit("-", 2)[1:]) if component and package.count("-") >= 2 else None
                buckets.record(bthash, text, os.path.basename(crash.executable), gdb_crash_thread(backtrace),
                               "retrace", package if component else None, version, self.record.release,
                               self.record.arch, self.task.task_id, component=component)
        except sqlite3.Error as err:
            self.log.warning("Not counted in the crash buckets: %s", err)
            return
        self.log.info("Crash bucket %s", bthash)

    def clean(self, succeeded):
        """Remove the task's root and crash data, unless the task keeps them (debug and interactive tasks:
        retrace-server-interact opens them), and the packages downloaded for it (the cache keeps them)."""
        self.supply.forget_downloads()
        if not self.task.task_type.keeps_environment:
            shutil.rmtree(self.sysroot, ignore_errors=True)
            shutil.rmtree(self.task.crash_dir, ignore_errors=True)


@dataclasses.dataclass
class _Crash:
    """What analysis found, handed from stage to stage."""

    core: CoreInfo
    core_path: Path
    executable: str
    index: RepoIndex | None  # None: the release has no mirror, only debuginfod
    resolution: Resolution
    exe_module: object
    debugger: str  # the gdb that reads this core's architecture


def _no_executable_package(release, module, package, problem):
    return TaskFailed(
        f"no package of {release} provides the crashing executable {module.path} "
        f"(build-id {module.build_id or 'unknown'}: {problem}); is {package} from the official repositories?",
        "missing package",
    )


def _missing_header(resolution):
    """The lines above the backtrace: where each file came from, and what gdb could not be given."""
    lines = []
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
            lines.append(f"  {unresolved.path} (build-id {unresolved.build_id or 'unknown'}): {unresolved.problem}")
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")
