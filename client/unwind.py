"""A coreless report: the crash unwound here, where the crashed binaries are installed, sent as a uReport.

elfutils' ``eu-stack`` unwinds every thread of the core with the call
frame information of the installed binaries (``.eh_frame``; no debuginfo
needed) and prints, per frame, the module's build-id, its lowest mapped
address and the offset in it (``-b``).  That is all the server needs to
symbolize and bucket the crash: no memory contents leave the machine (no
variables, no arguments, no heap), a few kilobytes instead of the core.
The document is ABRT's uReport version 2 (satyr's ``core_backtrace``), as
``reporter-ureport`` sends it; the crashing thread is the first one the
core holds (the kernel writes it first).
"""

from __future__ import annotations  # the client runs on Python 3.9 (RHEL 9)

import gzip
import json
import os
import re
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

from retrace_server.elf import file_build_id, read_core
from retrace_server.errors import InvalidCrashData

if TYPE_CHECKING:
    from collections.abc import Mapping

    from retrace_server.client.crash import Crash
    from retrace_server.elf import CoreInfo
    from retrace_server.paths import StrPath

# Frames sent: the crash thread's innermost CRASH_FRAMES (the bucket needs 5, a person reads a few dozen),
# every other thread's innermost OTHER_FRAMES (what it was doing).
CRASH_FRAMES = 64
OTHER_FRAMES = 16
_TIMEOUT = 120
_THREAD = re.compile(r"^TID (\d+):$")
_FRAME = re.compile(r"^#(\d+)\s+0x[0-9a-f]+(?:\s+-)?\s*(?P<module>\S.*)?$")
_BUILD_ID = re.compile(r"^\s+\[(?P<build_id>[0-9a-f]+)\]@0x(?P<base>[0-9a-f]+)\+0x(?P<offset>[0-9a-f]+)$")


class UnwindError(Exception):
    """The crash cannot be unwound here; the message says why."""


class FilesChanged(UnwindError):
    """A file the crashed process mapped is another build on this machine now (updated since the crash):
    unwinding with its call frame information, and offsets into it, would name other functions than those
    that ran. The core itself holds what the server needs."""


def changed_files(core: CoreInfo) -> list[str]:
    """The mapped files whose copy here has another build-id than the core records for them (a file the
    core gives no build-id of, or that is gone, is left to eu-stack, which then stops unwinding there)."""
    changed = []
    for module in core.modules:
        if module.build_id is None or not os.path.isfile(module.path):
            continue
        try:
            here = file_build_id(module.path)
        except OSError:
            continue
        if here is not None and here != module.build_id:
            changed.append(module.path)
    return changed


def parse_stack(text: str) -> list[list[dict[str, str | int]]]:
    """``[[frame, ...] per thread]`` from ``eu-stack -q -b -m`` output; a frame is a uReport frame dict."""
    threads: list[list[dict[str, str | int]]] = []
    frame: dict[str, str | int] | None = None
    for line in text.splitlines():
        if _THREAD.match(line):
            threads.append([])
            frame = None
        elif (match := _FRAME.match(line)) and threads:
            # No absolute address: it would tell the process's address layout, which symbolization does not need.
            frame = {"file_name": (match["module"] or "").strip() or "??"}
            threads[-1].append(frame)
        elif (match := _BUILD_ID.match(line)) and frame is not None:
            frame["build_id"] = match["build_id"]
            frame["build_id_offset"] = int(match["offset"], 16)
    return [[frame for frame in thread if "build_id_offset" in frame] for thread in threads]


def unwind(core_path: StrPath, executable: str | None = None) -> list[list[dict[str, str | int]]]:
    """The threads of the core, crashing thread first, each a list of uReport frames."""
    program = shutil.which("eu-stack")
    if program is None:
        raise UnwindError("a coreless report needs eu-stack (elfutils: dnf install elfutils, apt install elfutils)")
    argv = [program, "-q", "-b", "-m", "-n", str(CRASH_FRAMES), f"--core={core_path}"]
    if executable:
        argv.append(f"--executable={executable}")
    try:
        ran = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UnwindError(f"eu-stack did not unwind the core within {_TIMEOUT} s") from None
    threads = [thread for thread in parse_stack(ran.stdout) if thread]
    if not threads:
        raise UnwindError(f"eu-stack found no frame in the core: {ran.stderr.strip()[:300] or 'no output'}")
    return [thread if number == 0 else thread[:OTHER_FRAMES] for number, thread in enumerate(threads)]


def _package_fields(nevra: str, arch: str) -> dict[str, str | int]:
    """``{name, epoch, version, release, architecture}`` of ``name-[epoch:]version-release``."""
    name, version, release = nevra.rsplit("-", 2)
    epoch = 0
    if ":" in version:
        epoch_text, version = version.split(":", 1)
        epoch = int(epoch_text) if epoch_text.isdigit() else 0
    return {"name": name, "epoch": epoch, "version": version, "release": release, "architecture": arch,
            "package_role": "affected"}


def ureport(crash: Crash, executable: str, client_version: str) -> dict[str, Any]:
    """The uReport (a dict) of ``crash`` (a client Crash: its problem directory and release)."""
    core_path = crash.directory / "coredump"
    try:
        core = read_core(core_path)
    except InvalidCrashData as err:
        raise UnwindError(str(err)) from None
    changed = changed_files(core)
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise FilesChanged(f"{changed[0]}{more} on this machine is another build than the one that crashed "
                           "(updated since?): unwound here, the report would name other functions")
    threads = unwind(core_path, executable if executable and os.path.exists(executable) else None)
    if crash.release is None:
        raise UnwindError("cannot tell which release crashed; give --os-release")
    os_name, os_version, arch = crash.release.rsplit("-", 2)
    if crash.package is None:
        raise UnwindError("the crash names no package; give --package NAME-VERSION")
    try:
        packages = [_package_fields(crash.package, arch)]
    except ValueError:
        raise UnwindError(f"the package '{crash.package}' is not name-version-release") from None
    return {
        "ureport_version": 2,
        "reason": f"Program {executable} was terminated by signal {core.signal}",
        "reporter": {"name": "retrace-client", "version": client_version},
        "os": {"name": os_name, "version": os_version, "architecture": arch},
        "packages": packages,
        "problem": {
            "type": "core",
            "executable": executable,
            "signal": core.signal or 0,
            "component": packages[0]["name"],
            "user": {"root": False, "local": True},
            "stacktrace": [{"crash_thread": number == 0, "frames": frames} for number, frames in enumerate(threads)],
        },
    }


def encode(report: Mapping[str, Any]) -> bytes:
    """The report as sent: compact JSON, gzip-compressed (a thread's frames repeat their module's build-id and
    name; the server reads plain JSON too, as reporter-ureport sends it)."""
    return gzip.compress(json.dumps(report, separators=(",", ":")).encode("utf-8"), mtime=0)
