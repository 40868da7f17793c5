"""``crash``, the kernel debugger, on an uploaded vmcore, in the same sandbox as gdb.

One load of the dump (seconds, hundreds of MB of memory) runs every
command, each after an ``echo`` of a marker line that splits the output:
``sys``, ``bt -a`` and ``bt`` (``bt -a`` names every CPU's active task,
plain ``bt`` is kept for when it fails), ``log`` and ``mod``.  When the full
load fails (a kernel newer than this ``crash`` understands, a damaged
dump), ``crash --minimal`` still reads the kernel log, which upstream
made the task's backtrace; the result says it is minimal.
"""

import dataclasses
import os
import re

from retrace.errors import RetraceError
from retrace.sandbox import SandboxTimeout, require_sandbox, run_sandboxed
from retrace.vmcore import KERNEL_RELEASE

COMMANDS = ("sys", "bt -a", "bt", "log", "mod")
MINIMAL_COMMANDS = ("log",)
_MARKER = "==RETRACE-SECTION {}=="
_SECTION = re.compile(r"^==RETRACE-SECTION (.+)==$", re.M)
_FRAME = re.compile(r"^\s*#\d+ \[", re.M)
_HOST_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib/")
# A ``mod`` line: address, name, base, size, object file ("(not loaded)  [CONFIG_KALLSYMS]" without debuginfo).
_MOD_LINE = re.compile(r"^\s*[0-9a-f]+\s+(\S+)\s+[0-9a-f]+\s+\d+\s+(.*)$", re.M)


class CrashError(RetraceError):
    """crash could not read the dump, hung, or was killed."""

    category = "crash failed"


@dataclasses.dataclass(frozen=True)
class CrashOutput:
    sections: dict  # command -> its output
    preamble: str  # what crash said while loading (warnings)
    minimal: bool
    seconds: float

    @property
    def kernel_log(self):
        return self.sections.get("log", "")

    @property
    def backtrace(self):
        """``bt -a`` when it shows frames, else plain ``bt``, else whichever said something."""
        for command in ("bt -a", "bt"):
            if _FRAME.search(self.sections.get(command, "")):
                return self.sections[command]
        return self.sections.get("bt -a") or self.sections.get("bt", "")


def modules_without_debuginfo(mod_output):
    """Names of the loaded modules ``mod`` lists without a debuginfo file."""
    return {name for name, loaded in _MOD_LINE.findall(mod_output) if loaded.startswith("(not loaded)")}


def batch_script(commands):
    """crash's stdin: each command after its marker line, then quit."""
    lines = []
    for command in commands:
        lines += [f"echo {_MARKER.format(command)}", command]
    return "\n".join(lines + ["quit", ""])


def split_sections(text):
    """``(what came before the first marker, {command: output})``."""
    parts = _SECTION.split(text)
    preamble, rest = parts[0], parts[1:]
    return preamble, {rest[i]: rest[i + 1].strip("\n") + "\n" for i in range(0, len(rest) - 1, 2)}


def crash_binds(crash_path, *files):
    """What the sandbox shows besides the host's /usr: ``files``, and crash's directory if it lives elsewhere."""
    binds = list(files)
    if not str(crash_path).startswith(_HOST_PREFIXES):
        binds.append(os.path.dirname(os.path.realpath(crash_path)))
    return binds


def _run(crash_path, arguments, binds, script, *, timeout, memory_bytes, hide):
    try:
        ran = run_sandboxed([str(crash_path), *arguments], binds, timeout=timeout, memory_bytes=memory_bytes,
                            stdin=script)
    except SandboxTimeout:
        raise CrashError(f"crash did not finish within {timeout:g} s (ProcessCommunicateTimeout) and was stopped",
                         "crash timeout") from None
    text = hide(ran.text)
    if ran.killed_by:
        raise CrashError(f"crash was killed by {ran.killed_by} (memory limit {memory_bytes >> 20} MiB?); "
                         f"crash said: {gist(text)}")
    return ran, text


def gist(text, lines=3):
    kept = [line.strip() for line in text.splitlines() if line.strip() and not _SECTION.match(line.strip())]
    return " | ".join(kept[-lines:]) or "(nothing)"


def analyse(crash_path, vmlinux, vmcore, *, timeout, memory_bytes, hide, module_dir=None):
    """The CrashOutput of the full batch, or of ``--minimal`` + ``log`` when the full load fails.

    With ``module_dir`` (debuginfo files of modules), ``mod -S`` loads them first.
    """
    require_sandbox(str(crash_path))
    binds = crash_binds(crash_path, vmlinux, vmcore, *([module_dir] if module_dir else []))
    common = ["-s", "--no_crashrc", str(vmlinux), str(vmcore)]
    commands = ((f"mod -S {module_dir}",) if module_dir else ()) + COMMANDS
    ran, text = _run(crash_path, common, binds, batch_script(commands), timeout=timeout,
                     memory_bytes=memory_bytes, hide=hide)
    preamble, sections = split_sections(text)
    if sections.get("log", "").strip():
        return CrashOutput(sections, preamble, False, ran.seconds)
    full_failure = gist(text)
    ran, text = _run(crash_path, ["--minimal", *common], binds, batch_script(MINIMAL_COMMANDS), timeout=timeout,
                     memory_bytes=memory_bytes, hide=hide)
    minimal_preamble, sections = split_sections(text)
    if not sections.get("log", "").strip() or "command not available" in sections.get("log", ""):
        raise CrashError(f"crash cannot read this vmcore with this vmlinux: {full_failure}; "
                         f"crash --minimal said: {gist(text)}")
    return CrashOutput(sections, f"{preamble}\n{minimal_preamble}\nFull load failed: {full_failure}", True,
                       ran.seconds)


def osrelease(crash_path, vmcore, *, timeout, memory_bytes):
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
