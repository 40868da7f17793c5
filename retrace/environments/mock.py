"""``RetraceEnvironment = mock``: gdb in a mock chroot, for Fedora/RHEL hosts that have mock.

The configuration follows upstream's (section 4.3 of the upstream notes)
with its worst choice reversed: the root cache is on, so a release's base
chroot is installed once and unpacked from the cache for every later task
(upstream disabled every cache and installed a full chroot per task).
mock throws its root cache away whenever a configuration file is newer
than the cache, so each release has one configuration file, rewritten only
when a setting changes; what differs per task (the crash directory bound
into the chroot, the unique root name) goes on the command line.

gdb is the only program the chroot must have: it runs in argv form as the
unprivileged chroot user (``--chroot --unpriv -- gdb ...``), with the argv
the caller made for the environment's view, as in the other environments.  mock puts what a failing step
printed on stdout or stderr depending on the step, so a failure quotes
both.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from retrace_server.environments.base import Environment, View, Workload
from retrace_server.environments.sandbox import Sandboxed, SandboxOutputLimit, SandboxTimeout, read_output
from retrace_server.errors import RetraceError
from retrace_server.files import write_atomically

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from retrace_server.config import Config
    from retrace_server.environments.base import Limits
    from retrace_server.packaging.release import ReleaseId

CHROOT_CRASH_DIR = "/var/spool/abrt/crash"

# Workers started from a WSGI request or cron have PATH=/usr/sbin:/usr/bin:
# /sbin:/bin, but a mock installed by hand (or a sudo wrapper) lives in /usr/local.
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# mock relays SIGTERM to what runs in the chroot and unmounts; a root-owned
# mock (through sudo) cannot be SIGKILLed by the service user anyway.
_TERMINATE_GRACE = 30.0
# Installing a release's gdb into a fresh root cache can take minutes on a
# real mirror; GdbTimeout bounds the gdb step only.
SETUP_SECONDS = 3600.0
_STDERR_KEPT = 64 * 1024
# mock's progress lines ("Start: ...", "Finish: ...", "INFO: ...") say nothing about a failure.
_NOISE = re.compile(r"^\s*(\S+ \S+ - )?(INFO: |Mock Version: |(Start|Finish)(\(\w+\))?: )")
# root.log: "DEBUG util.py:460:  <a line the command printed>", among mock's own notes about running it.
_COMMAND_OUTPUT = re.compile(r"^DEBUG util\.py:\d+:  (.*)$")
_RETURN_CODE = re.compile(r"Child return code was: (-?\d+)")
_BOOKKEEPING = re.compile(r"(kill orphans in chroot|child environment:|Using nspawn|"
                          r"Last metadata expiration check)")
_ROOT_LOG_TAIL = 256 * 1024

_CONFIG = """# Written by retrace-server for {release}; rewritten only when a setting changes,
# because mock rebuilds its root cache whenever this file is newer than the cache.
config_opts['root'] = '{root}'
config_opts['target_arch'] = '{arch}'
config_opts['legal_host_arches'] = ('{arch}',)
config_opts['releasever'] = '{version}'
config_opts['package_manager'] = 'dnf'
config_opts['chroot_setup_cmd'] = 'install {setup_packages}'
config_opts['isolation'] = '{isolation}'
config_opts['use_bootstrap'] = {use_bootstrap}
config_opts['use_bootstrap_image'] = {use_bootstrap_image}
{bootstrap_image}config_opts['plugin_conf']['root_cache_enable'] = True
config_opts['plugin_conf']['ccache_enable'] = False
config_opts['plugin_conf']['bind_mount_enable'] = True
config_opts['dnf.conf'] = \"\"\"
[main]
keepcache=1
debuglevel=1
reposdir=/dev/null
install_weak_deps=0
gpgcheck={gpgcheck}
assumeyes=1

[retrace-{release}]
name=retrace-{release}
baseurl=file://{release_dir}/
enabled=1
{gpgkey}\"\"\"
"""


class MockError(RetraceError):
    category = "environment"


def find_mock(mock_path: str) -> str | None:
    """The mock program ``MockPath`` names, or None."""
    return shutil.which(mock_path, path=os.pathsep.join(filter(None, (os.environ.get("PATH"), SEARCH_PATH))))


def root_name(cache_dir: Path, release: ReleaseId) -> str:
    """mock's name for the release's chroot and root cache (under /var/cache/mock, shared by the host):
    two servers on one host serving a release of the same name keep their caches apart."""
    return f"retrace-{release}-{hashlib.sha256(str(cache_dir).encode()).hexdigest()[:8]}"


class MockEnvironment(Environment):
    """mock installs the crash's packages into a chroot of the release and runs gdb there (the job unpacks
    nothing, and a person cannot reopen the chroot: mock scrubs it)."""

    name = "mock"
    native_only = True
    needs_full_rpm_mirror = True
    unpacks = False

    def prepare(self, work: Workload) -> int:
        return 0

    def view(self, work: Workload) -> View:
        return View("/", f"{CHROOT_CRASH_DIR}/coredump", "gdb")

    def _root(self, work: Workload) -> MockRoot:
        release = str(work.release)
        if work.index is None:
            raise MockError(f"RetraceEnvironment = mock needs a mirror of {release}")
        return MockRoot(self.config, self.task_path, self.task_id, work.release, work.index.release_dir,
                        self.config.required_gpg_keys(release))

    def run(self, argv: Sequence[str], work: Workload, limits: Limits) -> Sandboxed:
        root = self._root(work)
        output, seconds = root.run(work.packages, argv, limits.timeout, limits.output_bytes, self.log.info)
        return Sandboxed(0, root.hide_chroot(output), seconds)


class MockRoot:
    """One task's chroot of its release, as mock makes, uses and scrubs it."""

    def __init__(self, config: Config, task_dir: Path, task_id: str, release: ReleaseId, release_dir: Path,
                 gpg_keys: list[Path] | None = None) -> None:
        self.config = config
        self.task_dir = Path(task_dir)
        self.task_id = task_id
        self.release = release
        self.release_dir = release_dir
        self.gpg_keys = gpg_keys  # None: signatures are not checked (RequireGPGCheck = 0)
        self.config_path = Path(config.CacheDir) / "mock" / f"{release}.cfg"

    @property
    def root_name(self) -> str:
        return root_name(self.config.CacheDir, self.release)

    def hide_chroot(self, text: str) -> str:
        """mock's messages name its chroot by the host path (/var/lib/mock/<root>-<task>/root/usr/...): the
        user reads the path inside it."""
        return re.sub(r"/\S*/" + re.escape(self.root_name) + r"-" + re.escape(self.task_id) + r"/root\b/?", "/", text)

    def config_text(self) -> str:
        keys = " ".join(f"file://{path}" for path in self.gpg_keys or ())
        bootstrap = self.config.MockBootstrap
        image = (f"config_opts['bootstrap_image'] = 'registry.fedoraproject.org/fedora:{self.release.version}'\n"
                 if bootstrap == "image" and self.release.distribution == "fedora" else "")
        return _CONFIG.format(
            release=self.release, root=self.root_name, arch=self.release.arch, version=self.release.version,
            setup_packages=" ".join(self.config.ChrootPackages.split()),
            isolation=self.config.MockIsolation, use_bootstrap=bootstrap != "off",
            use_bootstrap_image=bootstrap == "image", bootstrap_image=image,
            release_dir=self.release_dir, gpgcheck=int(self.gpg_keys is not None),
            gpgkey=f"gpgkey={keys}\n" if keys else "",
        )

    def write_config(self) -> bool:
        """Write the release's configuration if it changed; True when it was (re)written."""
        text = self.config_text()
        try:
            if self.config_path.read_text() == text:
                return False
        except FileNotFoundError:
            self.config_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.config_path, text)
        return True

    @property
    def result_dir(self) -> Path:
        """mock's ``--resultdir``: its logs of the task's steps (root.log holds what commands printed)."""
        return self.task_dir / "mock"

    def _mock(self, program: str, *arguments: str) -> list[str]:
        binds = [(str(self.task_dir / "crash"), CHROOT_CRASH_DIR)]
        return [program, "-r", str(self.config_path), "--uniqueext", self.task_id,
                "--resultdir", str(self.result_dir), "--plugin-option", f"bind_mount:dirs={binds!r}",
                *arguments]

    def commands(self, program: str, packages: Sequence[str], gdb: Sequence[str]) -> list[tuple[str, list[str]]]:
        """``(step, argv)`` of every mock call of one retrace, in order (the last removes the chroot); ``gdb`` is
        the debugger's argv inside the chroot."""
        return [
            ("init", self._mock(program, "--init")),
            ("install", self._mock(program, "--install", *packages)),
            ("gdb", self._mock(program, "--chroot", "--unpriv", "--", *gdb)),
            ("scrub", self._mock(program, "--scrub=chroot")),
        ]

    def run(self, packages: Sequence[str], gdb: Sequence[str], timeout: float, output_bytes: int,
            log: Callable[[str], None]) -> tuple[str, float]:
        """Run ``gdb`` (an argv) in mock; ``(its output, seconds it ran)``.  ``log(sentence)`` hears each step."""
        program = find_mock(self.config.MockPath)
        if program is None:
            raise MockError(f"RetraceEnvironment = mock, but mock ({self.config.MockPath}) is not installed "
                            "on this server")
        _check_mock_can_run()
        if self.write_config():
            log(f"Wrote the mock configuration of {self.release}: mock builds its root cache anew")
        *setup, (_, gdb), scrub = self.commands(program, packages, gdb)
        root_log = self.result_dir / "root.log"
        try:
            for step, command in setup:
                started = time.monotonic()
                result = _run_step(step, command, SETUP_SECONDS, output_bytes, root_log, hide=self.hide_chroot)
                log(f"mock {step}{_cache_use(result.stderr) if step == 'init' else ''}: "
                    f"{time.monotonic() - started:.1f} s")
            started = time.monotonic()
            return _run_step("gdb", gdb, timeout, output_bytes, root_log, hide=self.hide_chroot).stdout, \
                time.monotonic() - started
        finally:
            _run_step(*scrub, SETUP_SECONDS, output_bytes, root_log, check=False)


def _check_mock_can_run() -> None:
    """mock runs only for members of the ``mock`` group (through consolehelper or sudo): say so before
    mock answers with a password prompt or an exit status."""
    user = pwd.getpwuid(os.getuid())
    try:
        group = grp.getgrnam("mock")
    except KeyError:
        raise MockError("RetraceEnvironment = mock, but this server has no mock group; mock is not set up") from None
    if user.pw_gid != group.gr_gid and user.pw_name not in group.gr_mem:
        raise MockError(f"RetraceEnvironment = mock, but the service user {user.pw_name} is not in the mock group; "
                        "mock refuses to run for it")
    if no_new_privileges():
        raise MockError("RetraceEnvironment = mock, but the worker runs with no_new_privs (NoNewPrivileges=yes in "
                        "its systemd unit), so mock's root helper (consolehelper or sudo) cannot gain root; "
                        "give the unit a drop-in with NoNewPrivileges=no")


def no_new_privileges(status: str = "/proc/self/status") -> bool:
    """Whether this process may no longer gain privileges through setuid programs (prctl no_new_privs),
    as the hardened systemd units set it."""
    with open(status, encoding="ascii", errors="replace") as lines:
        return any(line.split() == ["NoNewPrivs:", "1"] for line in lines)


def _cache_use(said: str) -> str:
    """How mock's init made the chroot, from its state lines."""
    if "Start: unpacking root cache" in said:
        return " (from the root cache)"
    if "Start: creating root cache" in said:
        return " (installed, root cache created)"
    return ""


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (sudo relays it to a root mock, which cleans its mounts up), SIGKILL after a grace."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sent)
        try:
            process.wait(timeout=_TERMINATE_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue


class _Tail(threading.Thread):
    """The last bytes a pipe carries, read while the step runs (mock logs to stderr)."""

    def __init__(self, pipe: IO[bytes], keep: int) -> None:
        super().__init__(daemon=True)
        self.pipe, self.keep, self.data = pipe, keep, b""
        self.start()

    def run(self) -> None:
        for chunk in iter(lambda: self.pipe.read(65536), b""):
            self.data = (self.data + chunk)[-self.keep:]

    def text(self) -> str:
        self.join()
        return self.data.decode(errors="replace")


def _run_step(step: str, command: list[str], timeout: float, output_bytes: int, root_log: Path, check: bool = True,
              hide: Callable[[str], str] = str) -> subprocess.CompletedProcess[str]:
    """Run one mock step; its CompletedProcess, or MockError quoting what mock said.

    stdout is where mock prints what the chroot command printed (gdb's
    output: untrusted in size, so capped); stderr is mock's own log.
    """
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    assert process.stdout is not None and process.stderr is not None  # both PIPE
    with process.stdout, process.stderr:
        stderr = _Tail(process.stderr, _STDERR_KEPT)
        try:
            stdout, _ = read_output(process, time.monotonic() + timeout, output_bytes, stop=_terminate)
        except SandboxTimeout:
            raise MockError(f"mock's {step} step did not finish within {timeout:g} s", "gdb timeout") from None
        except SandboxOutputLimit:
            raise MockError(f"mock's {step} step printed more than {output_bytes >> 20} MiB and was stopped",
                            "debugger output limit") from None
        process.wait()
        result = subprocess.CompletedProcess(command, process.returncode, stdout.decode(errors="replace"),
                                             stderr.text())
    if check and result.returncode != 0:
        said = _said(result, root_log)
        raise MockError(f"mock's {step} step failed (exit status {result.returncode}): {hide(said)}")
    return result


def _said(result: subprocess.CompletedProcess[str], root_log: Path, lines: int = 4) -> str:
    """Why a step failed: the failed command's last words (mock logs them only to root.log in the
    result directory), then mock's own on both streams (a chroot command's error is on stdout)."""
    said = _failed_command_output(root_log, lines * 2)
    for text in (result.stdout, result.stderr):
        kept = [line.strip() for line in text.splitlines() if line.strip() and not _NOISE.match(line)]
        said += kept[-lines:]
    return " | ".join(dict.fromkeys(said)) or "no output"


def _failed_command_output(root_log: Path, lines: int) -> list[str]:
    """The output of the last command that failed (mock unmounts after it), from the tail of root.log."""
    try:
        with open(root_log, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _ROOT_LOG_TAIL))
            text = log.read().decode(errors="replace")
    except OSError:
        return []
    output: list[str] = []
    failed: list[str] = []
    for line in text.splitlines():
        said = _COMMAND_OUTPUT.match(line)
        if not said:
            continue
        if said[1].startswith("Executing command:"):
            output = []
        elif ended := _RETURN_CODE.match(said[1]):
            if ended[1] != "0":
                failed = output
        elif not _BOOKKEEPING.match(said[1]) and said[1].strip():
            output.append(said[1].strip())
    return failed[-lines:]
