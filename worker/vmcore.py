"""One kernel vmcore task (X-Task-Type 2): dump in, kernel log, backtrace and system summary out.

Analysis reads the dump's own VMCOREINFO (any format; a flattened stream is
first laid out with ``makedumpfile -R``), cross-checks it with
``crash --osrelease`` and falls back to a text search of the dump.
Preparation finds the kernel's debuginfo package in the release
repositories (or the vmlinux on a debuginfod server by the kernel's
build-id) and keeps only its vmlinux, once, in the kernel cache; a vmlinux
whose build-id is not the dump's is refused.  ``crash`` then runs in the
sandbox; when its ``mod`` lists loaded modules without debuginfo that the
package has, their files join the kernel cache and crash runs once more
with ``mod -S`` (later dumps of that kernel load them from the start).
Its ``log`` becomes the task's backtrace (as upstream), ``sys``, ``bt`` and
``mod`` go to ``results/``.  The vmcore stays with the task (support
teams come back to it), stripped by makedumpfile when VmcoreDumpLevel asks.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from retrace_server.analysis import crash as crash_tool
from retrace_server.analysis.vmcore import DumpFormat, KernelIdentity, dump_format, read_vmcoreinfo, search_text
from retrace_server.elf import file_build_id
from retrace_server.environments.sandbox import SandboxTimeout, run_sandboxed
from retrace_server.environments.session import Session
from retrace_server.files import write_atomically
from retrace_server.intake.crashdata import SPLIT_PARTS
from retrace_server.packaging import formats
from retrace_server.packaging.debuginfod import BuildIdCache, fetch_all
from retrace_server.packaging.debuginfod import Settings as DebuginfodSettings
from retrace_server.packaging.download import (
    DOWNLOADS,
    UNKNOWN_SIZE_CAP,
    DownloadError,
    download_packages,
    fetch_file,
    read_capped,
    requests_module,
)
from retrace_server.packaging.kernel import (
    KernelCache,
    KernelError,
    KernelPackage,
    KernelPass,
    debuginfo_packages,
    extract_module_debuginfo,
    extract_vmlinux,
    find_debuginfo_package,
    is_debian_kernel,
    kernel_arch,
    kernel_url_directory,
    listed_package,
    package_nevra,
    repository_releases,
)
from retrace_server.packaging.release import RELEASE_FILES, release_from_line, releases_from_dist_tag
from retrace_server.packaging.signatures import Keyring, verify_checksum
from retrace_server.reports.oops import call_trace, oops_text
from retrace_server.reports.stacks import Stack
from retrace_server.worker.job import Job, TaskFailed

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Iterable

    from retrace_server.analysis.crash import CrashOutput
    from retrace_server.config import Config
    from retrace_server.environments.sandbox import Sandboxed
    from retrace_server.packaging.kernel import KernelPackage
    from retrace_server.packaging.release import ReleaseId
    from retrace_server.packaging.repoindex import Package
    from retrace_server.paths import StrPath
    from retrace_server.tasks.task import Task

_PANIC = re.compile(r"^\s*PANIC: (.*)$", re.M)


@dataclasses.dataclass
class _Dump:
    """What analysis found, handed from stage to stage."""

    path: Path
    format: DumpFormat
    kernel: KernelIdentity
    kernel_release: str  # the kernel's, as analysis settled it (an identity may lack one)
    arch: str
    releases: list[ReleaseId]  # whose repositories may hold the kernel's debuginfo
    vmlinux: Path | None = None
    cache_key: str | None = None  # the kernel cache entry (None: the vmlinux came from debuginfod)
    package: KernelPackage | None = None  # the kernel's debuginfo package, if a repository has it
    oops: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)  # its call trace, once crash ran


class VmcoreJob(Job["_Dump"]):
    def __init__(self, config: Config, task: Task, log: logging.Logger) -> None:
        super().__init__(config, task, log)
        self.kernels = KernelCache(config.CacheDir)
        self._downloaded: Path | None = None  # the kernel debuginfo package fetched from a metadata-only release's mirror
        self._pass: KernelPass | None = None  # the pass over a new kernel's package, still taking module files

    @property
    def _vmcore(self) -> Path:
        return self.task.crash_dir / "vmcore"

    def _sandboxed(self, command: list[str], read_only: Iterable[StrPath], writable: Iterable[StrPath] = (),
                   stdin: Path | None = None) -> Sandboxed:
        """A helper program (makedumpfile) on the untrusted dump, in the sandbox; its Sandboxed result."""
        try:
            return run_sandboxed(command, read_only, writable_paths=writable, stdin=stdin,
                                 timeout=self.config.ProcessCommunicateTimeout,
                                 memory_bytes=self.config.gdb_memory_limit_bytes)
        except SandboxTimeout:
            raise TaskFailed(f"{command[0]} did not finish within {self.config.ProcessCommunicateTimeout:g} s "
                             "(ProcessCommunicateTimeout) and was stopped", "crash timeout") from None

    # -- analysis ----------------------------------------------------------------

    def analyze(self) -> _Dump:
        path = self._vmcore
        parts = [self.task.crash_dir / name for name in SPLIT_PARTS if (self.task.crash_dir / name).is_file()]
        if parts and not path.is_file():
            self._join_split(parts, path)
        if not path.is_file():
            raise TaskFailed("the task has no vmcore (it was deleted?)", "bad core")
        fmt = dump_format(path)
        self.record.coresize = path.stat().st_size
        self.log.info("Vmcore: %s format, %d bytes", fmt.value, self.record.coresize)
        if fmt is DumpFormat.FLATTENED:
            self._reassemble(path)
            fmt = dump_format(path)
        forced = self.overrides.kernelver
        kernel = self._forced(path, fmt, forced) if forced else self._identify(path, fmt)
        release = kernel.release
        assert release is not None  # both name it or refuse the dump
        self.log.info("Kernel %s, build-id %s (from %s)", release, kernel.build_id or "unknown", kernel.source)
        # Upstream's file: the manager lists and shows the kernel of each vmcore task.
        write_atomically(self.task.path / "kernelver", release)
        if kernel.build_id is None:
            self.log.warning("The dump records no BUILD-ID (a kernel older than 5.9?): the vmlinux cannot be verified")
        arch = self.overrides.arch or kernel_arch(release)
        if arch is None:
            raise TaskFailed(f"cannot tell the architecture of kernel {release} from its release string; "
                             "an administrator can name it: retrace-server-worker TASK --restart --arch ARCH",
                             "unsupported release")
        self.record.package, self.record.package_version, self.record.arch = "kernel", release, arch
        return _Dump(path, fmt, kernel, release, arch, self._releases(release, arch))

    def _join_split(self, parts: list[Path], path: Path) -> None:
        """One kdump-compressed vmcore of the files makedumpfile --split wrote (``--reassemble``)."""
        started = time.monotonic()
        target = path.with_name("vmcore.reassembled")
        target.unlink(missing_ok=True)
        ran = self._sandboxed(["makedumpfile", "--reassemble", *map(str, parts), str(target)], parts,
                              writable=[path.parent])
        if ran.returncode != 0 or not target.is_file():
            target.unlink(missing_ok=True)
            raise TaskFailed(f"the {len(parts)} parts of the split vmcore cannot be reassembled: makedumpfile "
                             f"said: {crash_tool.gist(self.without_server_paths(ran.text))}", "bad core")
        os.replace(target, path)
        for part in parts:
            part.unlink()
        self.log.info("Reassembled the vmcore from its %d split parts with makedumpfile --reassemble in %.3f s",
                      len(parts), time.monotonic() - started)

    def _reassemble(self, path: Path) -> None:
        """Lay a flattened stream out as the kdump-compressed file it describes (``makedumpfile -R``)."""
        started = time.monotonic()
        target = path.with_name("vmcore.reassembled")
        target.unlink(missing_ok=True)
        ran = self._sandboxed(["makedumpfile", "-R", str(target)], [], writable=[path.parent], stdin=path)
        if ran.returncode != 0 or not target.is_file():
            target.unlink(missing_ok=True)
            raise TaskFailed(f"the flattened vmcore cannot be reassembled: makedumpfile said: "
                             f"{crash_tool.gist(self.without_server_paths(ran.text))}", "bad core")
        os.replace(target, path)
        self.log.info("Reassembled the flattened dump with makedumpfile -R in %.3f s", time.monotonic() - started)

    def _forced(self, path: Path, fmt: DumpFormat, forced: str) -> KernelIdentity:
        """The kernel an administrator named (--kernelver), with the build-id the dump records for it, so
        that a vmlinux of another build is still refused."""
        read = read_vmcoreinfo(path)
        if read is not None and read.release != forced:
            self.log.warning("The dump's %s says kernel %s; using %s as forced", read.source, read.release, forced)
        read = _with_text_search(read, path, fmt, forced)
        if read is None or read.build_id is None:
            return KernelIdentity(forced, None, "--kernelver")
        return KernelIdentity(forced, read.build_id, f"--kernelver, build-id from the dump's {read.source}")

    def _identify(self, path: Path, fmt: DumpFormat) -> KernelIdentity:
        """The kernel release and build-id: VMCOREINFO, checked by crash --osrelease, else a text search."""
        kernel = read_vmcoreinfo(path)
        said = crash_tool.osrelease(self.config.KernelDebuggerPath, path, timeout=self.config.ProcessCommunicateTimeout,
                                    memory_bytes=self.config.gdb_memory_limit_bytes)
        if kernel is not None and said is not None and said != kernel.release:
            self.log.warning("crash --osrelease says %s, the dump's %s says %s; using the latter",
                             said, kernel.source, kernel.release)
        if kernel is None and said is not None:
            kernel = KernelIdentity(said, None, "crash --osrelease")
        kernel = _with_text_search(kernel, path, fmt, kernel.release if kernel else None)
        if kernel is None or kernel.release is None:
            raise TaskFailed(
                "cannot tell which kernel wrote this vmcore: it holds no VMCOREINFO, crash --osrelease says "
                "'unknown' and no OSRELEASE= or 'Linux version' text was found in it", "bad core")
        return kernel

    def _releases(self, kernel_release: str, arch: str) -> list[ReleaseId]:
        """Releases to look in: the task's os_release, the kernel's dist tag, every Debian one for a Debian kernel."""
        candidates = []
        for name in RELEASE_FILES:
            line = self.crash_text(name)
            if line and (release := release_from_line(line, arch)) is not None:
                candidates.append(release)
        candidates += releases_from_dist_tag(kernel_release, arch)
        if is_debian_kernel(kernel_release):
            candidates += [release for release in repository_releases(self.config.RepoDir)
                           if release.distribution == "debian" and release.arch == arch]
        unique = list(dict.fromkeys(candidates))
        self.record.release = str(unique[0]) if unique else None
        self.log.info("Releases to search for the kernel's debuginfo: %s", " ".join(map(str, unique)) or "none")
        return unique

    # -- preparation ---------------------------------------------------------------

    def prepare(self, dump: _Dump) -> None:
        found = dump.package = self._debuginfo_package(dump) or self._from_kernel_url(dump)
        if found is not None:
            self.record.packages = [package_nevra(found.path)]
            if found.release is not None:
                self.record.release = str(found.release)
        key = self.kernels.key(dump.kernel.build_id, dump.kernel_release)
        cached = self.kernels.cached(key)
        if cached is not None:
            self.log.info("Reused the vmlinux of %s from the kernel cache", dump.kernel_release)
            dump.vmlinux, dump.cache_key = cached, key
            return
        if found is None:
            dump.vmlinux = self._from_debuginfod(dump)
            return
        release, name, member, indexed = found.release, found.path.name, found.member, found.indexed

        def fill(vmlinux: Path) -> None:
            package = self._package_file(found)
            started = time.monotonic()
            # A Debian kernel package is trusted with its repository (apt signs indexes, not packages); one from
            # KernelDebuginfoURL by the vmlinux's build-id alone (Koji's packages are unsigned).
            keyring = (Keyring.for_release(self.config, release)
                       if formats.of_file(package) is formats.RPM and release is not None else None)
            if keyring is not None:
                keyring.verify(package, name)
            if indexed is not None:
                verify_checksum(package, indexed)
            self._pass = KernelPass(package, member, dump.kernel_release, self.kernels.kernels_dir,
                                    self.config.decoder_memory_bytes)
            if not (self._pass.vmlinux(vmlinux)
                    or extract_vmlinux(package, member, vmlinux, self.config.decoder_memory_bytes)):
                raise KernelError(f"{name} of {release} holds no /{member}")
            self._verify(vmlinux, dump.kernel, f"{name} of {release}")
            self.log.info("Extracted the vmlinux from %s of %s in %.3f s", name, release or found.url,
                          time.monotonic() - started)

        entry = self.kernels.get(key, fill, on_wait=lambda: self.log.info(
            "Waiting for another task that is extracting the vmlinux of %s", dump.kernel_release))
        if not entry.unpacked:
            self.log.info("Reused the vmlinux of %s, extracted meanwhile by another task", dump.kernel_release)
        dump.vmlinux, dump.cache_key = entry.root / "vmlinux", key

    def _package_file(self, found: KernelPackage) -> Path:
        """The kernel debuginfo package's file; a metadata-only release's is downloaded once per task (it is
        read for the vmlinux, then for module debuginfo) and removed when the task ends."""
        if found.url is None or found.path.is_file():
            return found.path
        if self._downloaded is None:
            started = time.monotonic()
            result = self._download(found.indexed, found.url, found.path.name)
            if isinstance(result, DownloadError):
                raise TaskFailed(result.sentence, "repository error")
            self._downloaded = result
            self.log.info("Downloaded %s (%.1f MiB) from %s in %.3f s", found.path.name,
                          result.stat().st_size / 1048576, found.url, time.monotonic() - started)
        return self._downloaded

    def _download(self, indexed: Package | None, url: str, name: str) -> Path | DownloadError:
        """A package of a metadata-only release (held to its index's SHA256), or one from KernelDebuginfoURL."""
        directory = Path(self.config.CacheDir) / DOWNLOADS
        if indexed is not None:
            return download_packages([(indexed, url)], directory, self.config.DownloadDeadline)[indexed.pkgid]
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f".kernel-{os.getpid()}-{name}"
        try:
            fetch_file(requests_module().Session(), url, target, UNKNOWN_SIZE_CAP,
                       time.monotonic() + self.config.DownloadDeadline, name, "KernelDebuginfoURL",
                       "a package may have")
        except DownloadError as err:
            target.unlink(missing_ok=True)
            return err
        return target

    def _from_kernel_url(self, dump: _Dump) -> KernelPackage | None:
        """The kernel's debuginfo package where KernelDebuginfoURL (upstream's template) lists it, when no
        release has it; only a dump that records its build-id can prove a package from there."""
        template = self.config.KernelDebuginfoURL
        directory = kernel_url_directory(template, dump.kernel_release) if template else None
        if directory is None:
            return None
        if dump.kernel.build_id is None:
            self.log.warning("KernelDebuginfoURL is not asked: the dump records no build-id that could prove a "
                             "package from there")
            return None
        try:
            listing = read_capped(requests_module().Session(), directory, 4 << 20, self.config.DownloadDeadline,
                                  "KernelDebuginfoURL")
        except DownloadError as err:
            self.log.warning("%s", err.sentence)
            return None
        picked = listed_package((listing or b"").decode("utf-8", "replace"), dump.kernel_release)
        if picked is None:
            self.log.info("KernelDebuginfoURL %s lists no debuginfo package of kernel %s", directory,
                          dump.kernel_release)
            return None
        name, member = picked
        self.log.info("The kernel's debuginfo package from KernelDebuginfoURL: %s%s", directory, name)
        return KernelPackage(None, Path(self.config.CacheDir) / DOWNLOADS / name, member, None,
                             directory + quote(name))

    def _debuginfo_package(self, dump: _Dump) -> KernelPackage | None:
        return find_debuginfo_package(self.config.RepoDir, dump.releases, dump.kernel_release, self.config.CacheDir)

    def _verify(self, vmlinux: Path, kernel: KernelIdentity, origin: str) -> None:
        """KernelError unless the vmlinux is the very build that crashed."""
        if kernel.build_id is None:
            return
        build_id = file_build_id(vmlinux)
        if build_id != kernel.build_id:
            raise KernelError(
                f"the vmlinux in {origin} is another build of {kernel.release} (build-id {build_id or 'none'}, "
                f"the crashed kernel's is {kernel.build_id}); crash would show a wrong backtrace with it, so it "
                "is not used")

    def _from_debuginfod(self, dump: _Dump) -> Path:
        searched = " or ".join(sorted({pattern.split("_")[0].replace("*", "") for pattern, _ in
                                       debuginfo_packages(dump.kernel_release)})) or "kernel debuginfo package"
        where = ", ".join(map(str, dump.releases)) or "no repository (no release matches the kernel)"
        releases: list[ReleaseId | None] = [*dump.releases] or [None]
        settings = next((settings for settings in (DebuginfodSettings.from_config(self.config, release)
                                                   for release in releases) if settings.urls), None)
        if settings is None or dump.kernel.build_id is None:
            why = ("no debuginfod server is configured" if settings is None
                   else "the dump has no BUILD-ID to ask debuginfod")
            raise KernelError(f"no vmlinux for kernel {dump.kernel_release} (build-id "
                              f"{dump.kernel.build_id or 'unknown'}): {searched} is in none of {where}, and {why}")
        started = time.monotonic()
        fetched = fetch_all(settings, BuildIdCache(self.config.CacheDir), [(dump.kernel.build_id, "debuginfo")])
        result = fetched[(dump.kernel.build_id, "debuginfo")]
        if not result.path:
            raise KernelError(f"no vmlinux for kernel {dump.kernel_release} (build-id {dump.kernel.build_id}): "
                              f"{searched} is in none of {where}, and debuginfod has none ({result.source})")
        self.log.info("Fetched the vmlinux from debuginfod %s in %.3f s", result.source, time.monotonic() - started)
        return result.path

    # -- analysis with crash -------------------------------------------------------

    def _hide(self, dump: _Dump) -> Callable[[str], str]:
        def hide(text: str) -> str:
            if dump.cache_key is not None:
                text = text.replace(f"{self.kernels.modules_dir(dump.cache_key)}/", "")
            text = text.replace(str(dump.vmlinux), f"vmlinux-{dump.kernel_release}")
            return self.without_server_paths(text.replace(str(dump.path), "vmcore"))

        return hide

    def _module_dir(self, dump: _Dump) -> tuple[Path | None, int]:
        """The cached module debuginfo files for ``mod -S`` and how many there are; None when there are none."""
        if dump.cache_key is None:
            return None, 0
        directory = self.kernels.modules_dir(dump.cache_key)
        count = sum(1 for path in directory.glob("*.ko*")) if directory.is_dir() else 0
        return (directory if count else None), count

    def _run_crash(self, dump: _Dump) -> CrashOutput:
        vmlinux = dump.vmlinux
        assert vmlinux is not None  # prepare found it
        # A cached kernel's whole entry is shown: module files added during the session appear in it.
        readable = [vmlinux.parent] if dump.cache_key is not None else []
        module_dir, count = self._module_dir(dump)
        if count:
            self.log.info("crash loads module debuginfo with mod -S: %d files in the kernel cache", count)
        return crash_tool.analyse(
            self.config.KernelDebuggerPath, vmlinux, dump.path, timeout=self.config.ProcessCommunicateTimeout,
            memory_bytes=self.config.gdb_memory_limit_bytes, hide=self._hide(dump), readable=readable,
            module_dir=module_dir, more_modules=lambda output: self._add_module_debuginfo(dump, output),
            output_bytes=self.config.debugger_output_limit_bytes, extra_commands=self.config.crash_commands,
            extensions=self._extensions)

    @functools.cached_property
    def _extensions(self) -> list[Path]:
        try:
            loadable, refused = crash_tool.find_extensions(self.config.CrashExtensions)
        except OSError as err:
            self.log.warning("No crash extension is loaded: the CrashExtensions directory cannot be read (%s)",
                             err.strerror)
            return []
        for name in refused:
            self.log.warning("crash extension %s is not loaded: its path could not be given to extend safely",
                             name)
        return loadable

    def _log_extensions(self, output: CrashOutput) -> None:
        for path in self._extensions:
            answer = output.sections.get(f"extend {path}", "")
            if crash_tool.extension_loaded(answer):
                self.log.info("Loaded the crash extension %s", path.name)
            else:
                self.log.warning("The crash extension %s was not loaded: %s", path.name,
                                 crash_tool.gist(answer.replace(str(path.parent) + "/", "")))

    def _save_session(self, dump: _Dump) -> None:
        """What ``retrace-server-interact TASK crash`` runs: crash on this vmlinux and dump, with the
        administrator's extensions and the module debuginfo the kernel cache holds loaded first (``-i``)."""
        vmlinux = dump.vmlinux
        assert vmlinux is not None  # prepare found it
        arguments = ["--no_crashrc", str(vmlinux), str(dump.path)]
        readable = [vmlinux.parent] if dump.cache_key is not None else [vmlinux]
        setup = crash_tool.session_setup(self._extensions, self._module_dir(dump)[0])
        if setup:
            init = self.task.path / "crash.init"
            write_atomically(init, "".join(f"{command}\n" for command in setup))
            arguments[:0], readable = ["-i", str(init)], readable + [init]
        binds = crash_tool.crash_binds(self.config.KernelDebuggerPath, dump.path, *readable, extensions=self._extensions)
        Session("crash", (str(self.config.KernelDebuggerPath), *arguments), tuple(map(str, binds)),
                ((str(dump.path), "the vmcore"), (str(vmlinux), "the vmlinux in the kernel cache"))).save(self.task)

    def _add_module_debuginfo(self, dump: _Dump, output: CrashOutput) -> Path | None:
        """Extract the debuginfo of loaded modules crash had none for (once per kernel).

        Returns the directory crash loads them from, or None when none came.
        """
        package = dump.package
        if dump.cache_key is None or package is None:
            return None
        wanted = crash_tool.modules_without_debuginfo(output.sections.get("mod", ""))
        wanted -= self.kernels.missing_modules(dump.cache_key)
        if not wanted:
            return None
        release, name = package.release, package.path.name
        started = time.monotonic()
        how = "read again for them"

        def fill(target: Path) -> set[str]:
            nonlocal how
            taken = self._pass.modules(wanted, target) if self._pass is not None else None
            if taken is not None:
                how = "taken in the pass that extracted the vmlinux"
                return taken
            return extract_module_debuginfo(self._package_file(package), dump.kernel_release, wanted, target,
                                            self.config.decoder_memory_bytes)

        found = self.kernels.add_modules(dump.cache_key, wanted, fill, on_wait=lambda: self.log.info(
            "Waiting for another task that is adding module debuginfo"))
        self.log.info("Module debuginfo: %d of %d loaded modules found in %s of %s (%s) in %.3f s%s", len(found),
                      len(wanted), name, release, how, time.monotonic() - started,
                      "; crash loads them (mod -S) before its commands" if found else "")
        return self.kernels.modules_dir(dump.cache_key) if found else None

    def backtrace(self, dump: _Dump) -> None:
        try:
            output = self._run_crash(dump)
        finally:  # a session helps most when the batch failed
            self._save_session(dump)
        for line in output.preamble.splitlines():
            if line.strip():
                self.log.warning("crash: %s", line.strip())
        if not output.minimal:  # --minimal sessions load no extensions
            self._log_extensions(output)
        if output.minimal:
            self.log.warning("crash could not load the whole dump; only the kernel log (crash --minimal) is available")
        elif output.load == "zero_excluded":
            self.log.warning("crash loaded the dump only with --zero_excluded: pages makedumpfile left out read as "
                             "zeros")
        header = ("crash could only read the kernel log (--minimal): the system summary and the backtrace are "
                  "missing\n\n" if output.minimal else "")
        write_atomically(self.task.path / "retrace_backtrace", header + output.kernel_log)
        dump.oops = call_trace(output.kernel_log)
        extra = [(crash_tool.result_name(command), command) for command in self.config.crash_commands]
        for name, command in (("sys", "sys"), ("mod", "mod"), *extra):
            if output.sections.get(command, "").strip():
                write_atomically(self.task.results_dir / name, output.sections[command])
        if output.backtrace.strip():
            write_atomically(self.task.results_dir / "bt", output.backtrace)
        panic = _PANIC.search(output.sections.get("sys", ""))
        self.log.info("crash finished in %.3f s: %d lines of kernel log%s", output.seconds,
                      output.kernel_log.count("\n"), f", {panic[0].strip()}" if panic else "")

    def count(self, dump: _Dump) -> None:
        """The oops's bucket, shared with kerneloops reports of it."""
        if dump.oops:
            stack = Stack("kerneloops", "kerneloops", tuple(dump.oops))
            self.count_in_bucket(stack, oops_text(dump.oops), str(dump.releases[0]) if dump.releases else None,
                                 "kernel")

    # -- cleaning ------------------------------------------------------------------

    def clean(self, succeeded: bool) -> None:
        """Remove temporary files (a downloaded kernel package too: the kernel cache keeps what it gave);
        after a success, strip the kept vmcore when VmcoreDumpLevel asks."""
        if self._pass is not None:
            self._pass.close()
        if not self.task.task_type.keeps_environment:
            self.task.crash_dir.joinpath("vmcore.reassembled").unlink(missing_ok=True)
        if self._downloaded is not None:
            self._downloaded.unlink(missing_ok=True)
        if self.config.VmcoreDumpLevel and succeeded and self._vmcore.is_file():
            self._strip()

    def _strip(self) -> None:
        path = self._vmcore
        target = path.with_name("vmcore.stripped")
        target.unlink(missing_ok=True)
        started = time.monotonic()
        ran = self._sandboxed(["makedumpfile", "-c", "-d", str(self.config.VmcoreDumpLevel), str(path), str(target)],
                              [path], writable=[path.parent])
        if ran.returncode != 0 or not target.is_file():
            target.unlink(missing_ok=True)
            self.log.warning("The vmcore was not stripped: makedumpfile said: %s",
                             crash_tool.gist(self.without_server_paths(ran.text)))
            return
        before, after = path.stat().st_size, target.stat().st_size
        saved = 100 * (before - after) / before if before else 0
        if saved < self.config.VmcoreDumpSavePercent:
            target.unlink()
            self.log.info("Kept the vmcore as it was: makedumpfile -d %d would save only %.0f %%",
                          self.config.VmcoreDumpLevel, saved)
            return
        os.replace(target, path)
        self.log.info("Stripped the vmcore with makedumpfile -d %d in %.3f s: %d -> %d bytes (%.0f %% saved)",
                      self.config.VmcoreDumpLevel, time.monotonic() - started, before, after, saved)


def _with_text_search(kernel: KernelIdentity | None, path: Path, fmt: DumpFormat,
                      release: str | None) -> KernelIdentity | None:
    """``kernel`` (or None) completed by a text search of an ELF dump: its build-id when the search finds the
    same ``release``, the search's find when nothing else named the kernel."""
    if kernel is not None and kernel.build_id is not None:
        return kernel
    found = search_text(path) if fmt is DumpFormat.ELF else None
    if found is None or (release is not None and found.release != release):
        return kernel
    return found if kernel is None else KernelIdentity(found.release, found.build_id, f"{kernel.source} and text search")
