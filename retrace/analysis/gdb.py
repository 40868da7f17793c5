"""gdb on an untrusted core, in the sandbox (``retrace_server.environments.sandbox``), with the batch script upstream used.

The commands follow upstream's ``gdb.sh`` (section 4.4 of the upstream
notes): every thread in ascending order, so the crashing thread (thread 1
in a kernel core) comes first, then shared libraries, the abort and GLib
assertion messages, registers and the disassembly around the crash.
Upstream's ``abrt-exploitable`` is left out: the rating is computed by
``retrace_server.analysis.exploitable`` from the section after the
``== EXPLOITABLE ==`` marker.  A crashed CPython gets every thread's
``py-bt`` after that section, through the interpreter's own extension
(``retrace_server.analysis.python``).
"""
from __future__ import annotations

import dataclasses
import re
import secrets
from typing import TYPE_CHECKING

from retrace_server.analysis import python
from retrace_server.environments.sandbox import SandboxOutputLimit, SandboxTimeout
from retrace_server.errors import RetraceError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from retrace_server.environments.base import Environment, Limits, Workload

# Before anything is loaded: no scripts from debuginfo packages, no network.
_SAFE_START = ("-nx", "-iex", "set auto-load off", "-iex", "set debuginfod enabled off")
# A stack frame with an address; "#0  <unavailable> in ?? ()" is none.
USABLE_FRAME = re.compile(r"^#\d+\s+(?!<unavailable>)\S", re.M)


def exploitable_marker() -> str:
    """The line between the backtrace and the exploitable section, random for each run:
    gdb prints strings from the core (locals, ``__abort_msg``), so a fixed
    marker could be planted by the crashed program to cut the backtrace."""
    return f"== EXPLOITABLE {secrets.token_hex(8)} =="


def threads_end(marker: str) -> str:
    """The line after the threads' stacks (where a thread's Python traceback goes), taken out again."""
    return marker.replace("EXPLOITABLE", "THREADS END")


class GdbError(RetraceError):
    """gdb failed, hung or said nothing useful."""

    category = "gdb failed"



@dataclasses.dataclass(frozen=True)
class GdbResult:
    backtrace: str  # with each Python thread's traceback under its C frames
    exploitable_section: str
    seconds: float
    python: dict[int, list[str]] = dataclasses.field(default_factory=dict)  # thread number: py-bt lines


def session_commands(sysroot: str, executable: str | None, core: str) -> list[str]:
    """The ``-ex`` commands that load the core with its program and libraries, for a batch or a person.

    ``sysroot`` "/" means gdb runs inside the crashed release's root, where
    every file is at its own path and gdb's defaults are right.  Without
    the program (``executable`` None: no source had it) gdb still finds
    the libraries through the core's link map once asked to load them.
    """
    where = [] if sysroot == "/" else [
        f"set sysroot {sysroot}",
        f"set debug-file-directory {sysroot}/usr/lib/debug",
        f"set substitute-path /usr/src/debug {sysroot}/usr/src/debug",
    ]
    if executable is None:
        return [*where, f"core-file {core}", "sharedlibrary"]
    return [*where, f"file {str(sysroot).rstrip('/')}{executable}", f"core-file {core}"]


def batch_commands(sysroot: str, executable: str | None, core: str, marker: str,
                   python_extension: tuple[str, str] | None = None) -> list[str]:
    """The ``-ex`` commands, in order (each fails on its own, as in upstream).

    ``python_extension``: CPython's gdb extension (its path on the crashed
    machine, found by ``retrace_server.analysis.python``) and the marker of
    the ``py-bt`` section it adds at the end.
    """
    script, python_marker = python_extension or ("", "")
    return [
        "set pagination off",
        "set width 0",
        "set confirm off",
        *(python.load_commands(f"{sysroot.rstrip('/')}{script}") if script else []),
        *session_commands(sysroot, executable, core),
        "thread apply all -ascending backtrace full 2048",
        f"echo {threads_end(marker)}\\n",
        "info sharedlib",
        "print (char*)__abort_msg",
        "print (char*)__glib_assert_msg",
        "info registers",
        "disassemble",
        f"echo {marker}\\n",
        "x/i $pc",
        *(python.traceback_commands(python_marker) if script else []),
    ]


def gdb_argv(sysroot: str, executable: str | None, core: str, marker: str, gdb: str = "gdb",
             python_extension: tuple[str, str] | None = None, before_loading: Sequence[str] = ()) -> list[str]:
    """The argv of ``gdb`` (retrace.analysis.debuggers picks it); ``-iex`` lines run before anything is loaded.

    Auto-loading is off: a debuginfo package could ship gdb scripts, and
    they would run with gdb's rights.  debuginfod is off: everything gdb
    may use is in the sysroot.  ``before_loading``: more settings for then
    (where the debug files' indexes are, ``retrace_server.analysis.indexes``).
    """
    argv = [gdb, "-batch", *_SAFE_START]
    for command in before_loading:
        argv += ["-iex", command]
    for command in batch_commands(sysroot, executable, core, marker, python_extension):
        argv += ["-ex", command]
    return argv


def interactive_argv(sysroot: str, executable: str | None, core: str, gdb: str = "gdb",
                     python_script: str | None = None) -> list[str]:
    """gdb for a person (retrace-server-interact): the core loaded as the batch loads it (with CPython's
    extension, so ``py-bt`` works), then a prompt."""
    argv = [gdb, "-q", *_SAFE_START]
    load = python.load_commands(f"{sysroot.rstrip('/')}{python_script}") if python_script else []
    for command in [*load, *session_commands(sysroot, executable, core)]:
        argv += ["-ex", command]
    return argv


def session_argv(environment: Environment, work: Workload, python_script: str | None = None) -> list[str]:
    """gdb for a person on what ``environment`` prepared, the core loaded as the batch loads it."""
    view = environment.view(work)
    return interactive_argv(view.sysroot, work.program, view.core, view.gdb, python_script)


def retrace(environment: Environment, work: Workload, limits: Limits, hide: Callable[[str], str] = str,
            python_script: str | None = None) -> GdbResult:
    """Run the batch script in ``environment`` (``retrace_server.environments.base``); the backtrace and the
    exploitable section, and with ``python_script`` (CPython's extension, ``retrace_server.analysis.python``)
    the Python tracebacks.

    ``hide`` rewrites gdb's output before anyone sees it, after the
    environment's own paths went: server paths read as on the crashed machine.
    """
    marker = exploitable_marker()
    extension = (python_script, python.new_marker()) if python_script else None
    view = environment.view(work)
    try:
        ran = environment.run(gdb_argv(view.sysroot, work.program, view.core, marker, view.gdb, extension,
                                       work.gdb_settings), work, limits)
    except SandboxTimeout:
        raise GdbError(f"gdb did not finish within {limits.timeout:g} s (GdbTimeout) and was stopped",
                       "gdb timeout") from None
    except SandboxOutputLimit:
        raise GdbError(f"gdb printed more than {limits.output_bytes >> 20} MiB (DebuggerOutputLimit) and was "
                       "stopped; the core has more threads or frames than this server shows",
                       "gdb output too large") from None
    text = hide(environment.hide(ran.text)).replace(view.core, "coredump")
    if ran.killed_by:
        raise GdbError(f"gdb was killed by {ran.killed_by} (memory limit {limits.memory_bytes >> 20} MiB?); "
                       f"gdb said: {gist(text)}")
    return interpret_output(text, ran.seconds, marker, extension[1] if extension else None)


def interpret_output(text: str, seconds: float, marker: str, python_marker: str | None = None) -> GdbResult:
    """The GdbResult of the batch script's output, or GdbError when it holds no usable stack."""
    backtrace, _, exploitable = text.partition(marker)
    if not USABLE_FRAME.search(backtrace):
        raise GdbError(
            f"gdb output is unusable: it holds no stack frame with an address; gdb said: {gist(backtrace)}",
            "gdb output unusable",
        )
    tracebacks: dict[int, list[str]] = {}
    if python_marker and python_marker in exploitable:
        start = exploitable.index(python_marker)
        exploitable, tracebacks = exploitable[:start], python.parse_tracebacks(exploitable[start:], python_marker)
    threads, _, rest = backtrace.partition(threads_end(marker) + "\n")
    backtrace = python.with_tracebacks(threads, tracebacks) + rest
    return GdbResult(backtrace.rstrip() + "\n", exploitable.strip(), seconds, tracebacks)


def gist(text: str, warnings: int = 3, lines: int = 3) -> str:
    """gdb's first warnings and last lines: where it says why it could not read the core."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    first = [line for line in kept if line.startswith("warning:")][:warnings]
    return " | ".join(dict.fromkeys(first + kept[-lines:])) or "(nothing)"
