"""The files a crash upload may hold, their size caps and what they must say.

Names and caps follow upstream's ``ALLOWED_FILES``; the content rules are
ours.  Text files end up in logs, statistics and (later) command lines, so
each is held to a strict pattern here, at the door, once.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, NamedTuple

from retrace_server.analysis.vmcore import DumpFormat, dump_format_of
from retrace_server.elf import check_elf_core_header
from retrace_server.errors import BadRequest, Conflict, Forbidden, InvalidCrashData
from retrace_server.tasks.task import TaskType

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from retrace_server.intake.archive import HeadCheck

_PATH = re.compile(r"/[A-Za-z0-9._+,:@%=~/-]*", re.ASCII)
# name-[epoch:]version-release (RPM), or name-[epoch:]version[-revision] (Debian: native packages have none)
_NEVR = re.compile(r"[A-Za-z0-9._+~^-]+-([0-9]+:)?[A-Za-z0-9._+~^]+(-[A-Za-z0-9._+~^]+)?", re.ASCII)
_RELEASE_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._,:()/+-]*", re.ASCII)
_PACKAGE_LIST = re.compile(r"[A-Za-z0-9._+~^:-]+(\s+[A-Za-z0-9._+~^:-]+)*", re.ASCII)
_OS_RELEASE_LINE = re.compile(r"#[ -~]*|[A-Z][A-Z0-9_]*=[^\x00-\x1f\x7f`$\\]*", re.ASCII)
# ABRT's dso_list line: a mapped file, then (when a package owns it) its NEVRA, "(vendor)" and install time.
_DSO_LINE = re.compile(r"(?P<path>/[A-Za-z0-9._+,:@%=~/-]*)(?: (?P<package>[A-Za-z0-9._+~^:-]+)(?: \([ -'*-~]*\))?"
                       r"(?: [0-9]+)?)?", re.ASCII)
DSO_LIST_LINES = 20_000

_PATH_RULE = "an absolute path of letters, digits and ._+,:@%=~/- without '..'"
_RELEASE_RULE = "a release line such as 'Fedora release 41 (Forty One)'"


def _is_os_release(text: str) -> bool:
    return all(_OS_RELEASE_LINE.fullmatch(line.strip()) for line in text.splitlines() if line.strip())


def _is_dso_list(text: str) -> bool:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return len(lines) <= DSO_LIST_LINES and all(
        (match := _DSO_LINE.fullmatch(line)) and ".." not in match["path"].split("/") for line in lines)


def parse_dso_list(text: str) -> dict[str, str]:
    """``{mapped path: package name-version-release(.arch)}`` of a dso_list checked at intake (files no package
    owns left out).

    ABRT writes the file into every problem directory (``abrt-action-list-dsos``):
    the exact package each library came from on the crashed machine.
    """
    owners: dict[str, str] = {}
    for line in text.splitlines():
        match = _DSO_LINE.fullmatch(line.strip())
        if match and match["package"]:
            owners[match["path"]] = match["package"]
    return owners


def _is_path(text: str) -> bool:
    return bool(_PATH.fullmatch(text)) and ".." not in text.split("/")


class CrashFile(NamedTuple):
    cap: int | None  # bytes, None: any size
    fits: Callable[[str], object] | None  # on the stripped text; None: a binary file
    rule: str  # what ``fits`` wants, as told to users


_BINARY = CrashFile(None, None, "a binary file")
# The files of a vmcore makedumpfile --split wrote (kdump-compressed, each a range of pages), in their order;
# the worker reassembles them into ``vmcore``.
MAX_SPLIT_PARTS = 32
SPLIT_PARTS = tuple(f"vmcore.{number}" for number in range(1, MAX_SPLIT_PARTS + 1))
CRASH_FILES = {
    "coredump": _BINARY,
    "vmcore": _BINARY,
    **dict.fromkeys(SPLIT_PARTS, _BINARY),
    "executable": CrashFile(512, _is_path, _PATH_RULE),
    "package": CrashFile(128, _NEVR.fullmatch,
                         "a package name-version-release such as 'bash-5.2.26-3.fc41' or 'bash-5.2.15-2+b7'"),
    "os_release": CrashFile(128, _RELEASE_TEXT.fullmatch, _RELEASE_RULE),
    "release": CrashFile(128, _RELEASE_TEXT.fullmatch, _RELEASE_RULE),
    "os_release_in_rootdir": CrashFile(128, _RELEASE_TEXT.fullmatch, _RELEASE_RULE),
    "os_info": CrashFile(4096, _is_os_release, "an os-release file: KEY=value lines such as 'ID=debian'"),
    "rootdir": CrashFile(256, _is_path, _PATH_RULE),
    "packages": CrashFile(1024 * 1024, _PACKAGE_LIST.fullmatch, "package names separated by white space"),
    "dso_list": CrashFile(2 * 1024 * 1024, _is_dso_list,
                          f"at most {DSO_LIST_LINES:,} lines, each a mapped file's absolute path, optionally followed "
                          "by its package's name-version-release, '(vendor)' and install time, as ABRT writes them"),
}


def broken_rule(name: str, text: str) -> str | None:
    """What the crash file ``name`` must hold, when ``text`` (stripped) does not; None when it may be its text.
    The same check whether the text came in an archive, from the manager's form or from an override."""
    cap, fits, rule = CRASH_FILES[name]
    if fits is None or not text or (cap is not None and len(text) > cap) or not fits(text):
        return rule
    return None

_COREDUMP_REQUIRED = ("coredump", "executable", "package")
REQUIRED_FILES = {
    TaskType.COREDUMP: _COREDUMP_REQUIRED,
    TaskType.DEBUG: _COREDUMP_REQUIRED,
    TaskType.COREDUMP_INTERACTIVE: _COREDUMP_REQUIRED,
    TaskType.VMCORE: ("vmcore",),
    TaskType.VMCORE_INTERACTIVE: ("vmcore",),
}
# How each binary file's first bytes are checked: a process core must be an
# ELF core, a vmcore one of the kernel dump formats.  The archive reader
# checks them as the file starts to stream in, so a gigabyte that is not a
# core is refused before it is written.
HEAD_SIZE = 64
def _split_part_head(head: bytes, name: str) -> None:
    if dump_format_of(head, name) is not DumpFormat.KDUMP:
        raise InvalidCrashData(f"The '{name}' file is not kdump-compressed; the parts of a split vmcore are the "
                               "files makedumpfile --split writes")


HEAD_CHECKS: dict[str, HeadCheck] = {"coredump": check_elf_core_header, "vmcore": dump_format_of,
                                     **dict.fromkeys(SPLIT_PARTS, _split_part_head)}


def split_parts(names: Iterable[str]) -> list[str]:
    """The split vmcore's parts among ``names``, in order; InvalidCrashData unless they are vmcore.1 to
    vmcore.N (N >= 2) without a whole ``vmcore`` beside them."""
    parts = [name for name in SPLIT_PARTS if name in names]
    if not parts:
        return []
    if "vmcore" in names:
        raise InvalidCrashData("The upload holds a 'vmcore' and parts of a split one (vmcore.1, ...); send one or "
                               "the other")
    if len(parts) < 2 or parts != list(SPLIT_PARTS[:len(parts)]):
        raise InvalidCrashData(f"A split vmcore's parts must be vmcore.1 to vmcore.N, N at least 2, each once; "
                               f"this upload holds {', '.join(parts)}")
    return parts


def required_files(task_type: TaskType, names: Iterable[str]) -> tuple[str, ...]:
    """The files ``task_type`` needs: a vmcore task's ``vmcore`` may come as the parts of a split one."""
    required = REQUIRED_FILES[task_type]
    if task_type.is_vmcore and split_parts(list(names)):
        return tuple(name for name in required if name != "vmcore")
    return required


def parse_task_type(header: str | None, allow_interactive: bool, allow_vmcore: bool) -> TaskType:
    """The TaskType for an ``X-Task-Type`` header (absent means a coredump)."""
    if header is None or not header.strip():
        return TaskType.COREDUMP
    try:
        value = int(header.strip())
    except ValueError:
        raise BadRequest("X-Task-Type must be a whole number (0 for a coredump retrace)") from None
    try:
        task_type = TaskType(value)
    except ValueError:
        raise BadRequest(
            f"Unknown X-Task-Type {value}; this server accepts 0 (coredump), 1 (debug), 2 (kernel vmcore), "
            "3 (interactive coredump) and 4 (interactive vmcore)"
        ) from None
    if task_type.is_vmcore and not allow_vmcore:
        raise Forbidden("Kernel vmcore tasks were disabled by server administrator")
    if task_type in (TaskType.COREDUMP_INTERACTIVE, TaskType.VMCORE_INTERACTIVE) and not allow_interactive:
        raise Conflict("Interactive tasks were disabled by server administrator")
    return task_type


def size_caps() -> dict[str, int | None]:
    """Allowed file names and their size caps, for the archive reader."""
    return {name: crash_file.cap for name, crash_file in CRASH_FILES.items()}


def read_text_file(path: Path, name: str) -> str:
    """The stripped text of a small crash file, or InvalidCrashData."""
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise InvalidCrashData(f"The '{name}' file must be plain ASCII text") from None
    return text.strip()


def validate_crash_dir(crash_dir: Path, names: Iterable[str]) -> None:
    """Check the content of every uploaded file in ``names``."""
    for name in sorted(names):
        path = crash_dir / name
        if CRASH_FILES[name].fits is None:
            with open(path, "rb") as handle:
                HEAD_CHECKS[name](handle.read(HEAD_SIZE), name)
            continue
        rule = broken_rule(name, read_text_file(path, name))
        if rule is not None:
            raise InvalidCrashData(f"The '{name}' file must hold {rule}")
