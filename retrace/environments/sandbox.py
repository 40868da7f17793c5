"""Running a debugger on untrusted input: bubblewrap, resource limits, a wall-clock timeout.

gdb reads uploaded cores and repository DWARF, ``crash`` reads uploaded
vmcores and a vmlinux: large inputs from outside.  Both run as an
unprivileged uid in a new user namespace (which cannot make further ones),
without network, with the host's ``/usr`` (or a release's root) and the
task's files read-only, a private ``/tmp`` of bounded size, a seccomp
filter that refuses the system calls a debugger never needs (ptrace,
mount, keyrings, bpf, ...), address-space, CPU, process-count and
file-size limits, a cap on what they print, and a timeout after which the
whole process group is killed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable

from retrace_server.errors import MissingSystemModule, RetraceError, system_module

if TYPE_CHECKING:
    from collections.abc import Iterable

    from retrace_server.paths import StrPath

_BWRAP_FAILURE = re.compile(r"^bwrap: (.*)$", re.M)
_HOST_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
_HOST_FILES = ("/etc/ld.so.cache", "/etc/localtime")
_SANDBOX_UID = 65534
_TMPFS_BYTES = 256 << 20
# RLIMIT_NPROC counts every task (thread) of the real user outside the
# namespace, the service user's daemons and other workers included, so the
# sandbox may start this many more than the user runs when it starts: a
# fork bomb stops there.
_EXTRA_PROCESSES = 1024
# What a debugger may write to a file when no writable path is given (its /tmp).
_MAX_FILE_BYTES = 256 << 20
# System calls a debugger reading files never makes; refused with EPERM.
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "keyctl", "add_key", "request_key", "mount",
    "umount2", "pivot_root", "chroot", "unshare", "setns", "bpf", "perf_event_open", "userfaultfd", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "swapon", "swapoff", "reboot", "acct",
    "quotactl", "open_by_handle_at", "name_to_handle_at", "fanotify_init", "syslog", "io_uring_setup",
)


class SandboxUnavailable(RetraceError):
    """bubblewrap (or the debugger) cannot run on this host."""

    category = "sandbox unavailable"


class SandboxTimeout(Exception):
    """The sandboxed command outlived its timeout and was killed."""


class SandboxOutputLimit(Exception):
    """The sandboxed command printed more than it may (``args[0]`` bytes) and was killed."""


# What a debugger may print unless told otherwise (DebuggerOutputLimit).
DEFAULT_OUTPUT_BYTES = 64 << 20
_READ_SIZE = 65536


@dataclasses.dataclass(frozen=True)
class Sandboxed:
    returncode: int
    text: str
    seconds: float

    @property
    def killed_by(self) -> str | None:
        """The signal's name when the command was killed (a limit, usually), else None."""
        return signal.Signals(-self.returncode).name if self.returncode < 0 else None


def host_binds() -> list[str]:
    """Read-only binds (or symlinks, for merged /usr) of what the debugger itself needs."""
    binds = []
    for path in _HOST_DIRS:
        if os.path.islink(path):
            binds += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            binds += ["--ro-bind", path, path]
    for path in _HOST_FILES:
        binds += ["--ro-bind-try", path, path]
    return binds


def sandbox_argv(command: list[str], read_only_paths: Iterable[StrPath], root: StrPath | None = None,
                 writable_paths: Iterable[StrPath] = (), seccomp_fd: int | None = None, new_session: bool = True,
                 terminal: str | None = None) -> list[str]:
    """bwrap around ``command``; ``read_only_paths`` (and ``writable_paths``) appear at their own paths.

    ``new_session`` False keeps the caller's terminal as the command's controlling one (a person's
    debugger session: Ctrl-C reaches gdb); the seccomp filter refuses TIOCSTI either way, so the
    command cannot type into that terminal; ``terminal`` is its TERM (the environment is cleared).

    Without ``root`` the host's /usr provides gdb; with it, ``root`` is
    mounted read-only as ``/`` (it must hold the mount points of /proc,
    /dev, /tmp and of ``read_only_paths``: see ``chroot.prepare_mount_points``).
    ``seccomp_fd``: an inherited descriptor holding the filter (``seccomp_filter``).
    """
    system = ["--ro-bind", str(root), "/"] if root is not None else host_binds()
    argv = [
        "bwrap", "--unshare-all", "--unshare-user", "--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID),
        "--disable-userns", "--assert-userns-disabled",
        "--die-with-parent", *(["--new-session"] if new_session else []), "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/tmp",
        *(["--setenv", "TERM", terminal] if terminal else []),
        *system,
        "--proc", "/proc", "--dev", "/dev", "--size", str(_TMPFS_BYTES), "--tmpfs", "/tmp", "--chdir", "/tmp",
    ]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    for path in read_only_paths:
        argv += ["--ro-bind", str(path), str(path)]
    for path in writable_paths:
        argv += ["--bind", str(path), str(path)]
    return argv + ["--", *command]


def _tasks_of_this_user() -> int:
    """How many tasks (threads) this process's real user runs now."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"/proc/{entry.name}/status", encoding="ascii", errors="replace") as status:
                count += next((int(line.split()[1]) for line in status if line.startswith("Threads:")), 1)
        except (OSError, ValueError):
            continue
    return count


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int | None) -> Callable[[], None]:
    processes = _tasks_of_this_user() + _EXTRA_PROCESSES

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
        if file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))

    return apply


@functools.lru_cache(maxsize=1)
def seccomp_program() -> bytes:
    """The seccomp filter as BPF bytes: allow all but ``DENIED_SYSCALLS`` and the TIOCSTI ioctl."""
    try:
        seccomp = system_module("seccomp")
    except MissingSystemModule as err:
        raise SandboxUnavailable(err.sentence) from None
    refused = seccomp.ERRNO(errno.EPERM)
    syscall_filter = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            syscall_filter.add_rule(refused, name)
        except (RuntimeError, ValueError):
            continue  # not a system call on this architecture
    syscall_filter.add_rule(refused, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, termios.TIOCSTI))
    with tempfile.TemporaryFile() as out:
        syscall_filter.export_bpf(out)
        out.seek(0)
        return out.read()


def seccomp_filter() -> int:
    """A new descriptor to read the filter from (bwrap reads it to the end), for ``pass_fds``."""
    program = seccomp_program()
    fd = os.memfd_create("retrace-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def require_sandbox(program: str) -> None:
    """SandboxUnavailable unless bwrap and ``program`` are installed."""
    for needed in ("bwrap", program):
        if shutil.which(needed) is None:
            raise SandboxUnavailable(f"{needed} is not installed on the retrace server")


def start_sandboxed(command: list[str], read_only_paths: Iterable[StrPath], *, cpu_seconds: int, memory_bytes: int,
                    stdin: int | IO[bytes] = subprocess.DEVNULL, root: StrPath | None = None,
                    writable_paths: Iterable[StrPath] = (),
                    stderr: int | IO[bytes] = subprocess.STDOUT) -> subprocess.Popen[bytes]:
    """Start ``command`` in the sandbox, in a process group of its own; its Popen (output and errors merged,
    unless ``stderr`` says where the errors go: a program whose output is data).

    For a debugger driven batch by batch (``retrace_server.analysis.crash``); the caller
    owns the timeout and kills the group when it passes.
    """
    filter_fd = seccomp_filter()
    try:
        return subprocess.Popen(
            sandbox_argv(command, read_only_paths, root, writable_paths, seccomp_fd=filter_fd), stdin=stdin,
            stdout=subprocess.PIPE, stderr=stderr, start_new_session=True, close_fds=True,
            pass_fds=(filter_fd,),
            preexec_fn=_limits(memory_bytes, cpu_seconds, None if writable_paths else _MAX_FILE_BYTES),
        )
    finally:
        os.close(filter_fd)


def run_interactive(command: list[str], read_only_paths: Iterable[StrPath], *, time_limit: float, memory_bytes: int,
                    root: StrPath | None = None) -> int:
    """Run ``command`` in the sandbox on this process's terminal (stdin, stdout, stderr) until it exits or
    ``time_limit`` seconds pass (then its process group is killed); its exit status."""
    filter_fd = seccomp_filter()
    try:
        process = subprocess.Popen(
            sandbox_argv(command, read_only_paths, root, seccomp_fd=filter_fd, new_session=False,
                         terminal=os.environ.get("TERM", "vt100")), close_fds=True,
            pass_fds=(filter_fd,), preexec_fn=_limits(memory_bytes, int(time_limit) + 1, _MAX_FILE_BYTES))
    finally:
        os.close(filter_fd)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the debugger, not for us
    try:
        return process.wait(timeout=time_limit)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        raise SandboxTimeout(command[0]) from None
    finally:
        signal.signal(signal.SIGINT, previous)


def check_started(returncode: int, text: str) -> None:
    """SandboxUnavailable when bubblewrap itself failed (its own message is in ``text``)."""
    failure = _BWRAP_FAILURE.search(text)
    if returncode != 0 and failure:
        raise SandboxUnavailable(f"the debugger sandbox (bubblewrap) cannot start on this server: {failure[1]}")


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's whole process group (bwrap, the debugger, anything it started) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def read_output(process: subprocess.Popen[bytes], deadline: float, limit: int, until: bytes | None = None,
                stop: Callable[[subprocess.Popen[bytes]], None] = kill_group) -> tuple[bytearray, bool]:
    """Read the command's output until it ends (or ``until`` appears).

    The output is untrusted in size: a forged core makes gdb print without
    end, so past ``limit`` bytes the command is stopped (``stop(process)``,
    by default SIGKILL to its group; SandboxOutputLimit); past ``deadline``
    too (SandboxTimeout).  Returns ``(received, ended)``.
    """
    received = bytearray()
    assert process.stdout is not None  # started with stdout=PIPE
    fd = process.stdout.fileno()
    searched = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            stop(process)
            raise SandboxTimeout()
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, _READ_SIZE)
        if not chunk:
            return received, True
        received += chunk
        if len(received) > limit:
            stop(process)
            raise SandboxOutputLimit(limit)
        if until is not None and received.find(until, max(0, searched - len(until))) >= 0:
            return received, False
        searched = len(received)


def _feed(pipe: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        pipe.write(data)
    with contextlib.suppress(BrokenPipeError, OSError):
        pipe.close()


def run_sandboxed(command: list[str], read_only_paths: Iterable[StrPath], *, timeout: float, memory_bytes: int,
                  stdin: str | Path | None = None, root: StrPath | None = None, writable_paths: Iterable[StrPath] = (),
                  output_bytes: int = DEFAULT_OUTPUT_BYTES) -> Sandboxed:
    """Run ``command`` in the sandbox; its Sandboxed result (output and errors merged).

    ``stdin`` is text to feed it, or a Path whose content it reads.
    SandboxTimeout when it outlives ``timeout``, SandboxOutputLimit when it
    prints more than ``output_bytes``; SandboxUnavailable when bubblewrap
    itself could not start.
    """
    with contextlib.ExitStack() as stack:
        source: int | IO[bytes]
        if isinstance(stdin, Path):
            source, data = stack.enter_context(open(stdin, "rb")), None
        else:
            source = subprocess.PIPE if stdin is not None else subprocess.DEVNULL
            data = stdin.encode() if stdin is not None else None
        started = time.monotonic()
        process = start_sandboxed(command, read_only_paths, cpu_seconds=int(timeout) + 1, memory_bytes=memory_bytes,
                                  stdin=source, root=root, writable_paths=writable_paths)
        assert process.stdout is not None  # started with stdout=PIPE
        stack.callback(process.stdout.close)
        if data is not None:
            threading.Thread(target=_feed, args=(process.stdin, data), daemon=True).start()
        deadline = started + timeout
        output, _ = read_output(process, deadline, output_bytes)
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(process)
            raise SandboxTimeout(command[0]) from None
    text = output.decode("utf-8", errors="replace")
    check_started(process.returncode, text)
    return Sandboxed(process.returncode, text, time.monotonic() - started)
