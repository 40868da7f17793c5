"""gdb on an untrusted core, in a sandbox, with the batch script upstream used.

gdb parses the uploaded core and the repository's DWARF, both large inputs
from outside, so it runs under bubblewrap: as an unprivileged uid in a new
user namespace, without network, with the host's ``/usr`` and the task's
files read-only, a private ``/tmp``, address-space and CPU limits, and a
wall-clock timeout after which the whole process group is killed.

The commands follow upstream's ``gdb.sh`` (section 4.4 of the upstream
notes): every thread in ascending order, so the crashing thread (thread 1
in a kernel core) comes first, then shared libraries, the abort and GLib
assertion messages, registers and the disassembly around the crash.
Upstream's Python sections (py-bt) and ``abrt-exploitable`` are left out:
the rating is computed by ``retrace.exploitable`` from the section after
the ``== EXPLOITABLE ==`` marker.
"""

import dataclasses
import os
import re
import resource
import shutil
import signal
import subprocess
import time

from retrace.errors import RetraceError

EXPLOITABLE_MARKER = "== EXPLOITABLE =="
# A stack frame with an address; "#0  <unavailable> in ?? ()" is none.
USABLE_FRAME = re.compile(r"^#\d+\s+(?!<unavailable>)\S", re.M)
_BWRAP_FAILURE = re.compile(r"^bwrap: (.*)$", re.M)
_HOST_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
_HOST_FILES = ("/etc/ld.so.cache", "/etc/localtime")
_SANDBOX_UID = 65534


class GdbError(RetraceError):
    """gdb failed, hung or said nothing useful."""

    category = "gdb failed"


class SandboxUnavailable(GdbError):
    """bubblewrap cannot create its namespaces on this host."""

    category = "sandbox unavailable"


@dataclasses.dataclass(frozen=True)
class GdbResult:
    backtrace: str
    exploitable_section: str
    seconds: float


def batch_commands(sysroot, executable, core):
    """The ``-ex`` commands, in order (each fails on its own, as in upstream).

    ``sysroot`` "/" means gdb runs inside the crashed release's root, where
    every file is at its own path and gdb's defaults are right.
    """
    where = [] if sysroot == "/" else [
        f"set sysroot {sysroot}",
        f"set debug-file-directory {sysroot}/usr/lib/debug",
        f"set substitute-path /usr/src/debug {sysroot}/usr/src/debug",
    ]
    return [
        "set pagination off",
        "set width 0",
        "set confirm off",
        *where,
        f"file {str(sysroot).rstrip('/')}{executable}",
        f"core-file {core}",
        "thread apply all -ascending backtrace full 2048",
        "info sharedlib",
        "print (char*)__abort_msg",
        "print (char*)__glib_assert_msg",
        "info registers",
        "disassemble",
        f"echo {EXPLOITABLE_MARKER}\\n",
        "x/i $pc",
    ]


def gdb_argv(sysroot, executable, core):
    """gdb's argv; ``-iex`` lines run before anything is loaded.

    Auto-loading is off: a debuginfo package could ship gdb scripts, and
    they would run with gdb's rights.  debuginfod is off: everything gdb
    may use is in the sysroot.
    """
    argv = ["gdb", "-batch", "-nx", "-iex", "set auto-load off", "-iex", "set debuginfod enabled off"]
    for command in batch_commands(sysroot, executable, core):
        argv += ["-ex", command]
    return argv


def _host_binds():
    """Read-only binds (or symlinks, for merged /usr) of what gdb itself needs."""
    binds = []
    for path in _HOST_DIRS:
        if os.path.islink(path):
            binds += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            binds += ["--ro-bind", path, path]
    for path in _HOST_FILES:
        binds += ["--ro-bind-try", path, path]
    return binds


def sandbox_argv(command, read_only_paths, root=None):
    """bwrap around ``command``; ``read_only_paths`` appear at their own paths.

    Without ``root`` the host's /usr provides gdb; with it, ``root`` is
    mounted read-only as ``/`` (it must hold the mount points of /proc,
    /dev, /tmp and of ``read_only_paths``: see ``prepare_mount_points``).
    """
    system = ["--ro-bind", str(root), "/"] if root is not None else _host_binds()
    argv = [
        "bwrap", "--unshare-all", "--unshare-user", "--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID),
        "--die-with-parent", "--new-session", "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/tmp",
        *system,
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp",
    ]
    for path in read_only_paths:
        argv += ["--ro-bind", str(path), str(path)]
    return argv + ["--", *command]


def _limits(memory_bytes, cpu_seconds):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def require_sandbox():
    """SandboxUnavailable unless bwrap and gdb are installed."""
    for program in ("bwrap", "gdb"):
        if shutil.which(program) is None:
            raise SandboxUnavailable(f"{program} is not installed on the retrace server")


def prepare_mount_points(root, paths):
    """Create, inside a root bubblewrap will mount read-only, where ``paths`` get mounted."""
    for name in ("proc", "dev", "tmp"):
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for path in map(str, paths):
        target = os.path.join(root, path.lstrip("/"))
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()


def run_gdb(sysroot, executable, core, *, read_only_paths, timeout, memory_bytes, hide, root=None):
    """Run the batch script sandboxed; the backtrace and the exploitable section.

    ``hide`` rewrites gdb's output before anyone sees it: server paths (the
    sysroot, the cache) go, so that paths read as on the crashed machine.
    With ``root`` (the chroot environment) gdb is the root's own.
    """
    require_sandbox()
    argv = sandbox_argv(gdb_argv("/" if root is not None else sysroot, executable, core), read_only_paths, root)
    started = time.monotonic()
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, close_fds=True, preexec_fn=_limits(memory_bytes, int(timeout) + 1),
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise GdbError(f"gdb did not finish within {timeout:g} s (GdbTimeout) and was stopped", "gdb timeout") from None
    seconds = time.monotonic() - started
    text = output.decode("utf-8", errors="replace")
    text = hide(text).replace(str(core), "coredump")
    sandbox_failure = _BWRAP_FAILURE.search(text)
    if process.returncode != 0 and sandbox_failure:
        raise SandboxUnavailable(
            f"the gdb sandbox (bubblewrap) cannot start on this server: {sandbox_failure[1]}"
        )
    if process.returncode < 0:
        name = signal.Signals(-process.returncode).name
        raise GdbError(f"gdb was killed by {name} (memory limit {memory_bytes >> 20} MiB?); gdb said: {_gist(text)}")
    return interpret_output(text, seconds)


def interpret_output(text, seconds):
    """The GdbResult of the batch script's output, or GdbError when it holds no usable stack."""
    backtrace, _, exploitable = text.partition(EXPLOITABLE_MARKER)
    if not USABLE_FRAME.search(backtrace):
        raise GdbError(
            f"gdb output is unusable: it holds no stack frame with an address; gdb said: {_gist(backtrace)}",
            "gdb output unusable",
        )
    return GdbResult(backtrace.rstrip() + "\n", exploitable.strip(), seconds)


def _gist(text, warnings=3, lines=3):
    """gdb's first warnings and last lines: where it says why it could not read the core."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    first = [line for line in kept if line.startswith("warning:")][:warnings]
    return " | ".join(dict.fromkeys(first + kept[-lines:])) or "(nothing)"
