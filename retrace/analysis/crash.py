"""``crash``, the kernel debugger, on an uploaded vmcore, in the same sandbox as gdb.

One load of the dump (seconds, hundreds of MB of memory) runs every
command, each after an ``echo`` of a marker line that splits the output:
``sys``, ``bt -a`` and ``bt`` (``bt -a`` names every CPU's active task,
plain ``bt`` is kept for when it fails), ``log`` and ``mod``, then the
administrator's ``CrashCommands``, after the administrator's extensions
(``CrashExtensions``) are loaded with ``extend``.  When the full load fails (a kernel newer
than this ``crash`` understands, a damaged dump), ``--zero_excluded`` (pages
makedumpfile left out read as zeros: upstream's fallback, which rescued
about 30% of those dumps) is tried, then ``crash --minimal``, which still
reads the kernel log; the result says which load it is.

crash is driven batch by batch over a pipe (it answers each command at
once): loading a dump takes seconds, a batch milliseconds, so the module
debuginfo found after the first batch is loaded into the same session with
``mod -S`` instead of loading the dump again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server.analysis.vmcore import KERNEL_RELEASE
from retrace_server.environments.sandbox import (
    DEFAULT_OUTPUT_BYTES,
    SandboxOutputLimit,
    SandboxTimeout,
    check_started,
    kill_group,
    read_output,
    require_sandbox,
    run_sandboxed,
    start_sandboxed,
)
from retrace_server.errors import RetraceError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from retrace_server.environments.sandbox import Sandboxed
    from retrace_server.paths import StrPath

COMMANDS = ("sys", "bt -a", "bt", "log", "mod")
MINIMAL_COMMANDS = ("log",)
_MARKER_LINE = re.compile(r"^==RETRACE-\w+ (SECTION .+|BATCH-END)==$")
_FRAME = re.compile(r"^\s*#\d+ \[", re.M)
_HOST_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib/")
# A ``mod`` line: address, name, base, size, object file ("(not loaded)  [CONFIG_KALLSYMS]" without debuginfo).
_MOD_LINE = re.compile(r"^\s*[0-9a-f]+\s+(\S+)\s+[0-9a-f]+\s+\d+\s+(.*)$", re.M)


class CrashError(RetraceError):
    """crash could not read the dump, hung, or was killed."""

    category = "crash failed"


@dataclasses.dataclass(frozen=True)
class CrashOutput:
    sections: dict[str, str]  # command -> its output
    preamble: str  # what crash said while loading (warnings), and why a fuller load failed
    load: str  # "full", "zero_excluded" or "minimal"
    seconds: float

    @property
    def minimal(self) -> bool:
        return self.load == "minimal"

    @property
    def kernel_log(self) -> str:
        return self.sections.get("log", "")

    @property
    def backtrace(self) -> str:
        """``bt -a`` when it shows frames, else plain ``bt``, else whichever said something."""
        for command in ("bt -a", "bt"):
            if _FRAME.search(self.sections.get(command, "")):
                return self.sections[command]
        return self.sections.get("bt -a") or self.sections.get("bt") or ""


def modules_without_debuginfo(mod_output: str) -> set[str]:
    """Names of the loaded modules ``mod`` lists without a debuginfo file."""
    return {name for name, loaded in _MOD_LINE.findall(mod_output) if loaded.startswith("(not loaded)")}


class Markers:
    """The lines that split crash's output, random for each run.

    The kernel log is written by whoever owns the crashed machine: a fixed
    marker printed into it would split our output where they chose.
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_hex(8)
        self._section = re.compile(rf"^==RETRACE-{self.token} SECTION (.+)==$", re.M)

    def section(self, command: str) -> str:
        return f"==RETRACE-{self.token} SECTION {command}=="

    @property
    def batch_end(self) -> str:
        return f"==RETRACE-{self.token} BATCH-END=="

    def script(self, commands: Sequence[str], then: str = "quit") -> str:
        """crash's stdin: each command after its marker line, then ``then``."""
        lines = []
        for command in commands:
            lines += [f"echo {self.section(command)}", command]
        return "\n".join(lines + [then, ""])

    def split(self, text: str) -> tuple[str, dict[str, str]]:
        """``(what came before the first marker, {command: output})``."""
        parts = self._section.split(text)
        preamble, rest = parts[0], parts[1:]
        return preamble, {rest[i]: rest[i + 1].strip("\n") + "\n" for i in range(0, len(rest) - 1, 2)}


def crash_binds(crash_path: StrPath, *files: StrPath, extensions: Iterable[Path] = ()) -> list[StrPath]:
    """What the sandbox shows besides the host's /usr: ``files``, the directories of the ``extensions``, and
    crash's directory if it lives elsewhere."""
    binds = list(files) + list(dict.fromkeys(path.parent for path in extensions))
    if not str(crash_path).startswith(_HOST_PREFIXES):
        binds.append(os.path.dirname(os.path.realpath(crash_path)))
    return binds


class _Session:
    """One crash process, fed a batch of commands at a time, within one deadline and one output cap for all."""

    def __init__(self, process: subprocess.Popen[bytes], timeout: float, memory_bytes: int,
                 output_bytes: int = DEFAULT_OUTPUT_BYTES) -> None:
        self.process, self.timeout, self.memory_bytes = process, timeout, memory_bytes
        self.output_bytes = output_bytes
        assert process.stdin is not None and process.stdout is not None  # both PIPE
        self.stdin, self.stdout = process.stdin, process.stdout
        self.markers = Markers()
        self.received = 0
        self.started = time.monotonic()
        self.deadline = self.started + timeout

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def batch(self, commands: Sequence[str]) -> str:
        """What crash printed for ``commands`` (with their markers); less when it ended on the way."""
        end = self.markers.batch_end
        try:
            self.stdin.write(self.markers.script(commands, then=f"echo {end}").encode())
            self.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            received, ended = read_output(self.process, self.deadline, self.output_bytes - self.received,
                                          until=f"\n{end}\n".encode())
        except SandboxTimeout:
            raise _timed_out(self.timeout) from None
        except SandboxOutputLimit:
            raise _too_much(self.output_bytes) from None
        self.received += len(received)
        if ended:
            return self._ended(received)
        return received.decode("utf-8", errors="replace").replace(end, "")

    def _ended(self, received: bytearray) -> str:
        """crash left before the end of the batch: why, if not by its own choice."""
        self.process.wait()
        text = received.decode("utf-8", errors="replace")
        check_started(self.process.returncode, text)
        if self.process.returncode < 0:
            raise _killed(signal.Signals(-self.process.returncode).name, self.memory_bytes, text)
        return text

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.stdin.write(b"quit\n")
            self.stdin.flush()
        with contextlib.suppress(BrokenPipeError):
            self.stdin.close()
        try:
            self.process.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(self.process)
        self.stdout.close()


@contextlib.contextmanager
def _session(crash_path: StrPath, arguments: list[str], binds: list[StrPath], *, timeout: float, memory_bytes: int,
             output_bytes: int) -> Iterator[_Session]:
    process = start_sandboxed([str(crash_path), *arguments], binds, cpu_seconds=int(timeout) + 1,
                              memory_bytes=memory_bytes, stdin=subprocess.PIPE)
    session = _Session(process, timeout, memory_bytes, output_bytes)
    try:
        yield session
    finally:
        session.close()


def _run(crash_path: StrPath, arguments: list[str], binds: list[StrPath], script: str, *, timeout: float,
         memory_bytes: int, output_bytes: int, hide: Callable[[str], str]) -> tuple[Sandboxed, str]:
    try:
        ran = run_sandboxed([str(crash_path), *arguments], binds, timeout=timeout, memory_bytes=memory_bytes,
                            stdin=script, output_bytes=output_bytes)
    except SandboxTimeout:
        raise _timed_out(timeout) from None
    except SandboxOutputLimit:
        raise _too_much(output_bytes) from None
    text = hide(ran.text)
    if ran.killed_by:
        raise _killed(ran.killed_by, memory_bytes, text)
    return ran, text


def _too_much(output_bytes: int) -> CrashError:
    return CrashError(f"crash printed more than {output_bytes >> 20} MiB (DebuggerOutputLimit) and was stopped",
                      "crash output too large")


def _timed_out(timeout: float) -> CrashError:
    return CrashError(f"crash did not finish within {timeout:g} s (ProcessCommunicateTimeout) and was stopped",
                      "crash timeout")


def _killed(signal_name: str, memory_bytes: int, text: str) -> CrashError:
    return CrashError(f"crash was killed by {signal_name} (memory limit {memory_bytes >> 20} MiB?); "
                      f"crash said: {gist(text)}")


def gist(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.splitlines() if line.strip() and not _MARKER_LINE.match(line.strip())]
    return " | ".join(kept[-lines:]) or "(nothing)"


def analyse(crash_path: StrPath, vmlinux: StrPath, vmcore: StrPath, *, timeout: float, memory_bytes: int,
            hide: Callable[[str], str], readable: Iterable[StrPath] = (), module_dir: StrPath | None = None,
            more_modules: Callable[[CrashOutput], StrPath | None] = lambda output: None,
            output_bytes: int = DEFAULT_OUTPUT_BYTES, extra_commands: Iterable[str] = (),
            extensions: Sequence[Path] = ()) -> CrashOutput:
    """The CrashOutput of the full batch (``extra_commands`` after ours, the ``extensions`` loaded first);
    of the same with ``--zero_excluded`` when the full load fails; of ``--minimal`` + ``log`` when that
    fails too (extensions need the full session).

    With ``module_dir`` (debuginfo files of modules), ``mod -S`` loads them
    first.  The session then lists the modules (``mod``), and
    ``more_modules(output)`` may bring the files of those without debuginfo
    and return their directory (inside ``readable``, which the sandbox
    shows): the same session loads them before it runs the batch, once.
    """
    require_sandbox(str(crash_path))
    binds = crash_binds(crash_path, vmlinux, vmcore, *readable, *([module_dir] if module_dir else []),
                        extensions=extensions)
    common = ["-s", "--no_crashrc", str(vmlinux), str(vmcore)]
    batch = COMMANDS + tuple(extra_commands)
    failures: list[str] = []
    for load, options in (("full", []), ("zero_excluded", ["--zero_excluded"])):
        with _session(crash_path, options + common, binds, timeout=timeout, memory_bytes=memory_bytes,
                      output_bytes=output_bytes) as session:
            split = session.markers.split
            text = hide(session.batch((*session_setup(extensions, module_dir), "mod")))
            preamble, sections = split(text)
            if sections.get("mod", "").strip():
                directory = more_modules(CrashOutput(sections, preamble, load, session.seconds))
                text = hide(session.batch(((f"mod -S {directory}",) if directory is not None else ()) + batch))
                _, answered = split(text)
                sections = {**sections, **answered}  # the session setup (extend) ran in the first batch
            if sections.get("log", "").strip():
                notes = "".join(f"\n{failure}" for failure in failures)
                return CrashOutput(sections, preamble + notes, load, session.seconds)
        failures.append(f"The {load.replace('_', ' ')} load failed: {gist(text)}")
    markers = Markers()
    ran, text = _run(crash_path, ["--minimal", *common], binds, markers.script(MINIMAL_COMMANDS), timeout=timeout,
                     memory_bytes=memory_bytes, output_bytes=output_bytes, hide=hide)
    minimal_preamble, sections = markers.split(text)
    if not sections.get("log", "").strip() or "command not available" in sections.get("log", ""):
        raise CrashError(f"crash cannot read this vmcore with this vmlinux: {'; '.join(failures)}; "
                         f"crash --minimal said: {gist(text)}")
    return CrashOutput(sections, "\n".join([preamble, minimal_preamble, *failures]), "minimal", ran.seconds)


def session_setup(extensions: Iterable[Path], module_dir: StrPath | None = None) -> tuple[str, ...]:
    """The commands that open every session: ``extend`` each extension, ``mod -S`` the module debuginfo."""
    return (*(f"extend {path}" for path in extensions), *((f"mod -S {module_dir}",) if module_dir else ()))


def find_extensions(directory: StrPath | None) -> tuple[list[Path], list[str]]:
    """``(paths, refused names)``: the crash extensions (``*.so``) in ``directory``, in name order; OSError
    when the directory cannot be read.

    Their paths become crash command lines, so a path that could end or
    extend a command (spaces, newlines, ``;``, ``|``) is refused, not loaded.
    """
    if not directory:
        return [], []
    found = sorted(path for path in Path(directory).iterdir() if path.suffix == ".so" and path.is_file())
    loadable = [path for path in found if re.fullmatch(r"[A-Za-z0-9_./+-]+", str(path))]
    return loadable, [path.name for path in found if path not in loadable]


def extension_loaded(output: str) -> bool:
    """Whether crash's answer to ``extend`` says the shared object was loaded."""
    return "shared object loaded" in output


def result_name(command: str) -> str:
    """The results/ file of an administrator's crash command: ``kmem -i`` -> ``crash-kmem-i``."""
    return "crash-" + "-".join(re.findall(r"[a-z0-9]+", command.lower()))[:60]


def osrelease(crash_path: StrPath, vmcore: StrPath, *, timeout: float, memory_bytes: int) -> str | None:
    """``crash --osrelease``: the kernel release crash reads in the dump, or None ("unknown", or not a release)."""
    require_sandbox(str(crash_path))
    try:
        ran = run_sandboxed([str(crash_path), "--osrelease", str(vmcore)], crash_binds(crash_path, vmcore),
                            timeout=timeout, memory_bytes=memory_bytes)
    except SandboxTimeout:
        return None
    answer = ran.text.strip().splitlines()[-1:] if ran.returncode == 0 else []
    # What crash read came from the dump: believed only if it looks like a kernel release.
    return answer[0] if answer and KERNEL_RELEASE.fullmatch(answer[0]) else None
