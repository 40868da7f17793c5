"""The three ways a crash reaches the client, turned into one problem directory.

``--dir`` is an ABRT problem directory as it is; ``--apport`` an Ubuntu
apport report, turned into one.  ``--core FILE --executable
PATH`` and ``--coredumpctl MATCH`` build one in a private temporary
directory: the core, the executable's path, the owning package from the rpm
or dpkg database and the release from the system's release files (the
whole os-release as ``os_info``, as ABRT saves it on Debian), each
overridable (``--package``, ``--os-release``), and a ``dso_list`` as ABRT
writes it: every file the core maps with the package that owns it here,
so the server knows each library's exact version.
"""

from __future__ import annotations  # the client runs on Python 3.9 (RHEL 9): X | None in annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server.arch import canonical_arch
from retrace_server.client.apport import ApportError, problem_dir_from_apport
from retrace_server.elf import read_core
from retrace_server.errors import InvalidCrashData
from retrace_server.packaging.release import release_from_line, release_from_os_release

if TYPE_CHECKING:
    from retrace_server.paths import StrPath

REQUIRED = ("coredump", "executable", "package")
# One of them names the release: ABRT on Debian leaves os_release empty and saves os_info.
RELEASE_FILES = ("os_release", "os_info")
OPTIONAL = ("rootdir", "os_release_in_rootdir", "dso_list")
_OS_RELEASE_FILES = ("/etc/os-release", "/usr/lib/os-release")
_RELEASE_LINE_FILES = ("/etc/system-release", "/etc/redhat-release")


class CrashInputError(Exception):
    """The crash given on the command line cannot be used; exit status 2."""


@dataclasses.dataclass
class Crash:
    directory: Path
    files: list[str]
    package: str | None  # None: a vmcore (the server reads the kernel from it)
    arch: str | None
    release: str | None  # e.g. fedora-41-x86_64, None when it cannot be told
    temporary: bool = False
    task_type: int = 0  # X-Task-Type: 0 a process coredump, 2 a kernel vmcore
    follow_symlinks: bool = False  # a vmcore is named by a symlink to the user's file

    @property
    def unpacked_size(self) -> int:
        return sum((self.directory / name).stat().st_size for name in self.files)

    def discard(self) -> None:
        if self.temporary:
            shutil.rmtree(self.directory, ignore_errors=True)


def release_id(os_info: str | None, os_release_line: str | None, arch: str) -> str | None:
    """The server's release id: from os-release fields, else from the release line."""
    release = release_from_os_release(os_info or "", arch) or release_from_line(os_release_line or "", arch)
    return str(release) if release else None


def _read(path: StrPath) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def _core_arch(core: StrPath) -> str:
    try:
        return read_core(core).arch
    except (InvalidCrashData, OSError) as err:
        raise CrashInputError(f"{core} is not a usable core file: {err}") from None


def from_problem_dir(directory: StrPath) -> Crash:
    directory = Path(directory)
    if not directory.is_dir():
        raise CrashInputError(f"{directory} is not a directory")
    for name in REQUIRED:
        if not (directory / name).is_file():
            raise CrashInputError(f"'{name}' must be a regular file in order to use Retrace server ({directory})")
    releases = [name for name in RELEASE_FILES if _read(directory / name)]
    if not releases:
        raise CrashInputError(f"'os_release' or 'os_info' must say which release crashed ({directory})")
    files = [*REQUIRED, *releases, *(name for name in OPTIONAL if (directory / name).is_file())]
    arch = canonical_arch(_read(directory / "architecture") or _core_arch(directory / "coredump"))
    release = release_id(_read(directory / "os_info"), _read(directory / "os_release"), arch)
    return Crash(directory, files, _read(directory / "package"), arch, release)


def from_apport(report: StrPath) -> Crash:
    """An Ubuntu apport report (``/var/crash/*.crash``): its core, executable, package and release."""
    try:
        directory, _fields = problem_dir_from_apport(report)
    except ApportError as err:
        raise CrashInputError(str(err)) from None
    crash = from_problem_dir(directory)
    crash.temporary = True
    return crash


def from_vmcore(path: StrPath) -> Crash:
    """A kernel vmcore (ELF, kdump-compressed or flattened): the server tells the kernel from the dump itself."""
    path = Path(path).resolve()
    if not path.is_file():
        raise CrashInputError(f"{path} is not a regular file")
    directory = Path(tempfile.mkdtemp(prefix="retrace-client-vmcore-", dir="/var/tmp"))
    (directory / "vmcore").symlink_to(path)
    return Crash(directory, ["vmcore"], None, None, None, temporary=True, task_type=2, follow_symlinks=True)


def _system_release_line() -> str | None:
    """The release line of RPM systems (``Fedora release 41 (Forty One)``); None elsewhere: the server
    reads os_info there."""
    return next((line for line in map(_read, _RELEASE_LINE_FILES) if line), None)


def _system_os_info() -> str | None:
    return next((text for text in map(_read, _OS_RELEASE_FILES) if text), None)


def _owning_package(executable: str) -> str:
    """``name-[epoch:]version[-release]`` of the package that owns ``executable``, from rpm or dpkg."""
    package = owning_packages([executable], with_arch=False).get(executable)
    if package is None:
        raise CrashInputError(f"{executable} is not owned by any package in the rpm or dpkg database; "
                              "give --package NAME-VERSION")
    return package


def owning_packages(paths: list[str], with_arch: bool = True) -> dict[str, str]:
    """``{path: name-[epoch:]version[-release][.arch]}`` of the paths a package owns, from rpm or dpkg (one
    query for all of them)."""
    if not paths:
        return {}
    if shutil.which("rpm"):
        arch = ".%{ARCH}" if with_arch else ""
        result = subprocess.run(["rpm", "-qf", "--qf", f"%{{NAME}}-%|EPOCH?{{%{{EPOCH}}:}}|%{{VERSION}}-%{{RELEASE}}{arch}\\n",
                                 "--", *paths], capture_output=True, text=True)
        lines = result.stdout.splitlines()
        if len(lines) == len(paths):
            owned = {path: line.strip() for path, line in zip(paths, lines) if " " not in line.strip()}
            if owned:
                return owned
    if shutil.which("dpkg-query"):
        return _dpkg_owners(paths, with_arch)
    return {}


def _dpkg_owners(paths: list[str], with_arch: bool) -> dict[str, str]:
    """dpkg's owners; its database keeps the path a package ships (/bin/sleep) where the system merged /usr
    and the kernel names /usr/bin/sleep: either spelling is the file."""
    spellings: dict[str, list[str]] = {}
    for path in paths:
        for spelling in _merged_usr_spellings(path):
            spellings.setdefault(spelling, []).append(path)
    searched = subprocess.run(["dpkg-query", "-S", "--", *spellings], capture_output=True, text=True).stdout
    names: dict[str, str] = {}
    for line in searched.splitlines():
        owner, sep, spelling = line.partition(": ")
        if sep and spelling.strip() in spellings and "diversion" not in owner:
            for path in spellings[spelling.strip()]:
                names.setdefault(path, owner.split(",")[0].strip())
    if not names:
        return {}
    shown = subprocess.run(["dpkg-query", "-W", "-f=${binary:Package} ${Package} ${Version} ${Architecture}\\n", "--",
                            *sorted(set(names.values()))], capture_output=True, text=True).stdout
    versions: dict[str, str] = {}
    for line in shown.splitlines():
        fields = line.split()
        if len(fields) == 4:
            qualified, name, version, arch = fields
            versions[qualified] = versions.setdefault(name, f"{name}-{version}" + (f".{arch}" if with_arch else ""))
    return {path: versions[name] for path, name in names.items() if name in versions}


def dso_list(core: StrPath) -> str:
    """ABRT's dso_list for ``core``: each mapped file, with its owning package where one owns it here."""
    try:
        paths = sorted({module.path for module in read_core(core).modules})
    except (InvalidCrashData, OSError):
        return ""
    owners = owning_packages(paths)
    return "".join(f"{path} {owners[path]}\n" if path in owners else f"{path}\n" for path in paths)


_MERGED_TOPS = ("/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/")


def _merged_usr_spellings(path: str, root: str = "/") -> list[str]:
    """``path``, then its twin across the /usr merge when this system merged it (``/bin`` a link to usr/bin)."""
    top = next((top for top in _MERGED_TOPS if path.startswith((top, "/usr" + top))), None)
    if top is None or not os.path.islink(os.path.join(root, top.strip("/"))):
        return [path]
    twin = path[len("/usr"):] if path.startswith("/usr/") else "/usr" + path
    return [path, twin]


def _run_first_line(argv: list[str]) -> str | None:
    result = subprocess.run(argv, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def from_core(core: StrPath, executable: str, package: str | None = None, os_release: str | None = None) -> Crash:
    """A problem directory for a bare core of ``executable``."""
    core = Path(core)
    if not core.is_file():
        raise CrashInputError(f"{core} is not a file")
    if not executable.startswith("/"):
        raise CrashInputError(f"--executable must be an absolute path, not {executable!r}")
    arch = _core_arch(core)
    package = package or _owning_package(executable)
    os_info = None if os_release else _system_os_info()
    os_release = os_release or _system_release_line()
    if not os_release and not os_info:
        raise CrashInputError("cannot tell the release of this system; give --os-release 'Fedora release 41'")
    directory = Path(tempfile.mkdtemp(prefix="retrace-client-"))
    try:
        try:
            os.link(core, directory / "coredump")
        except OSError:
            shutil.copyfile(core, directory / "coredump")
        (directory / "executable").write_text(executable)
        (directory / "package").write_text(package)
        releases = {"os_release": os_release and os_release + "\n", "os_info": os_info}
        for name, text in releases.items():
            if text:
                (directory / name).write_text(text)
        mapped = dso_list(core)
        if mapped:
            (directory / "dso_list").write_text(mapped)
    except OSError as err:
        shutil.rmtree(directory, ignore_errors=True)
        raise CrashInputError(f"cannot prepare the crash for upload: {err}") from None
    files = [*REQUIRED, *(name for name, text in releases.items() if text), *(["dso_list"] if mapped else [])]
    return Crash(directory, files, package, arch, release_id(os_info, os_release, arch), temporary=True)


# What coredumpctl's "corefile" says when there is no core to upload, as the sentence's end.
_NO_CORE = {
    "missing": "its core was removed since (systemd-tmpfiles, or coredump.conf's MaxUse or KeepFree)",
    "none": "systemd-coredump stored no core (Storage=none, or the core was over ProcessSizeMax)",
    "truncated": "its core was cut short at coredump.conf's size limits",
    "inaccessible": "this user may not read its core (run retrace-client as root or as the crashed program's user)",
    "error": "coredumpctl could not read its core",
}


def from_coredumpctl(match: str, package: str | None = None, os_release: str | None = None) -> Crash:
    """The newest crash systemd-coredump kept that matches ``match`` (a PID, a program's name or path).

    Read from ``coredumpctl --json`` (systemd 246 or newer), not from the
    text of ``coredumpctl info``, whose layout is for people.
    """
    if shutil.which("coredumpctl") is None:
        raise CrashInputError("coredumpctl is not installed (systemd-coredump keeps no crashes here)")
    listed = subprocess.run(["coredumpctl", "--no-pager", "--json=short", "-1", "list", "--", match],
                            capture_output=True, text=True)
    if listed.returncode != 0:
        raise CrashInputError(f"coredumpctl has no crash matching {match!r}: {listed.stderr.strip() or 'no match'}")
    try:
        [crash] = json.loads(listed.stdout)
        pid, executable, stored = int(crash["pid"]), str(crash["exe"]), crash["corefile"]
    except (ValueError, KeyError, TypeError):
        raise CrashInputError(f"coredumpctl's answer about {match!r} is not the JSON list of systemd 246 or newer: "
                              f"{listed.stdout[:200]!r}") from None
    if stored not in ("present", "journal"):
        raise CrashInputError(f"the newest crash matching {match!r} ({executable}, pid {pid}) cannot be sent: "
                              f"{_NO_CORE.get(stored, f'coredumpctl says its core is {stored}')}")
    directory = Path(tempfile.mkdtemp(prefix="retrace-client-core-"))
    core = directory / "core"
    dump = subprocess.run(["coredumpctl", "--no-pager", "-1", "dump", "--output", str(core), "--", str(pid)],
                          capture_output=True, text=True)
    try:
        if dump.returncode != 0 or not core.is_file():
            raise CrashInputError(f"coredumpctl could not extract the core: {dump.stderr.strip()}")
        return from_core(core, executable, package, os_release)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
