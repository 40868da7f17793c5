"""The files a crash upload may hold, their size caps and what they must say.

Names and caps follow upstream's ``ALLOWED_FILES``; the content rules are
ours.  Text files end up in logs, statistics and (later) command lines, so
each is held to a strict pattern here, at the door, once.
"""

import re

from retrace_server.analysis.coredump import check_elf_core_header
from retrace_server.analysis.vmcore import dump_format_of
from retrace_server.errors import BadRequest, Conflict, Forbidden, InvalidCrashData
from retrace_server.tasks.task import TaskType

_PATH = re.compile(r"/[A-Za-z0-9._+,:@%=~/-]*", re.ASCII)
# name-[epoch:]version-release (RPM), or name-[epoch:]version[-revision] (Debian: native packages have none)
_NEVR = re.compile(r"[A-Za-z0-9._+~^-]+-([0-9]+:)?[A-Za-z0-9._+~^]+(-[A-Za-z0-9._+~^]+)?", re.ASCII)
_RELEASE_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._,:()/+-]*", re.ASCII)
_PACKAGE_LIST = re.compile(r"[A-Za-z0-9._+~^:-]+(\s+[A-Za-z0-9._+~^:-]+)*", re.ASCII)
_OS_RELEASE_LINE = re.compile(r"#[ -~]*|[A-Z][A-Z0-9_]*=[^\x00-\x1f\x7f`$\\]*", re.ASCII)

_PATH_RULE = "an absolute path of letters, digits and ._+,:@%=~/- without '..'"
_RELEASE_RULE = "a release line such as 'Fedora release 41 (Forty One)'"


def _is_os_release(text):
    return all(_OS_RELEASE_LINE.fullmatch(line.strip()) for line in text.splitlines() if line.strip())


def _is_path(text):
    return bool(_PATH.fullmatch(text)) and ".." not in text.split("/")


# name: (size cap in bytes or None, predicate on the stripped text or None for binary, rule shown to users)
CRASH_FILES = {
    "coredump": (None, None, None),
    "vmcore": (None, None, None),
    "executable": (512, _is_path, _PATH_RULE),
    "package": (128, _NEVR.fullmatch, "a package name-version-release such as 'bash-5.2.26-3.fc41' or 'bash-5.2.15-2+b7'"),
    "os_release": (128, _RELEASE_TEXT.fullmatch, _RELEASE_RULE),
    "release": (128, _RELEASE_TEXT.fullmatch, _RELEASE_RULE),
    "os_release_in_rootdir": (128, _RELEASE_TEXT.fullmatch, _RELEASE_RULE),
    "os_info": (4096, _is_os_release, "an os-release file: KEY=value lines such as 'ID=debian'"),
    "rootdir": (256, _is_path, _PATH_RULE),
    "packages": (1024 * 1024, _PACKAGE_LIST.fullmatch, "package names separated by white space"),
}

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
HEAD_CHECKS = {"coredump": check_elf_core_header, "vmcore": dump_format_of}


def parse_task_type(header, allow_interactive, allow_vmcore):
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


def size_caps():
    """Allowed file names and their size caps, for the archive reader."""
    return {name: cap for name, (cap, _, _) in CRASH_FILES.items()}


def read_text_file(path, name):
    """The stripped text of a small crash file, or InvalidCrashData."""
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise InvalidCrashData(f"The '{name}' file must be plain ASCII text") from None
    return text.strip()


def validate_crash_dir(crash_dir, names):
    """Check the content of every uploaded file in ``names``."""
    for name in sorted(names):
        _, predicate, rule = CRASH_FILES[name]
        path = crash_dir / name
        if predicate is None:
            with open(path, "rb") as handle:
                HEAD_CHECKS[name](handle.read(HEAD_SIZE), name)
            continue
        text = read_text_file(path, name)
        if not text or not predicate(text):
            raise InvalidCrashData(f"The '{name}' file must hold {rule}")
